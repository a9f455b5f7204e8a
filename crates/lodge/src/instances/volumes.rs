//! Volumes on instances: planning the attachments of a create, and
//! attaching or detaching a volume later, while the instance is stopped
//! (the record changes; the next boot mounts it) or running (the disk is
//! hot-plugged through the backend and the guest agent mounts it).
//!
//! The instance records are the one record of who holds a volume
//! (lodge-volumes reads them back through `volume_users`), so every
//! decision that depends on them is made under the volume store's lock,
//! held until the record that settles it is written: two attaches never
//! both see a volume free. Each attachment has hot-plug slots of its own
//! (its serial, its device's place), kept in the record, so the VM's
//! command line is the same at every boot and after a restore.
//!
//! The guest is untrusted: its answers to mount and unmount are checked
//! for their kind, and a refusal's message is bounded and stripped of
//! control characters before it reaches a client.

use std::time::Duration;

use lodge_guest::protocol::{Event, Request};
use lodge_hypervisor::{Feature, Hypervisor};
use lodge_volumes::rules;

use super::error::{io, Error, Result};
use super::manager::{Locked, Manager};
use super::monitor::HOTPLUG_SLOTS;
use super::observe::observe;
use super::oplog::oplog;
use super::spec::VolumeRequest;
use super::state::{self, State};
use super::store::{self, upper_disk, Metadata, VolumeAttachment};
use super::view::Instance;
use crate::agent::{Inbound, UnixSocket};
use crate::disks;

/// How long the guest may take to release an unplugged disk.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the guest agent may take to mount or unmount.
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest guest message passed on to a client.
const MAX_GUEST_MESSAGE: usize = 300;

/// The volumes of an instance as its guest config lists them.
pub(super) fn guest_volumes(meta: &Metadata) -> Vec<lodge_guest::VolumeMount> {
    meta.volumes
        .iter()
        .map(|v| lodge_guest::VolumeMount {
            serial: lodge_guest::serial_for_slot(v.slot),
            mount_path: v.mount_path.clone(),
            readonly: v.readonly || v.overlay,
            overlay_serial: v.upper_slot.map(lodge_guest::serial_for_slot),
        })
        .collect()
}

/// The lowest hot-plug slot no attachment of `volumes` uses.
fn free_slot(volumes: &[VolumeAttachment], also: &[u32]) -> Option<u32> {
    (0..HOTPLUG_SLOTS).find(|s| {
        !also.contains(s)
            && !volumes
                .iter()
                .any(|v| v.slot == *s || v.upper_slot == Some(*s))
    })
}

/// A guest's message, made safe to show: bounded, one line, printable.
fn guest_text(message: &str) -> String {
    let mut out: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_GUEST_MESSAGE)
        .collect();
    if message.chars().count() > MAX_GUEST_MESSAGE {
        out.push('…');
    }
    out
}

/// The lock a create takes (and holds until its record is in place) while
/// it decides its volumes.
pub(super) type VolumeGuard = tokio::sync::OwnedMutexGuard<()>;

impl Manager {
    /// Resolves a create's volumes and checks each against the volume's
    /// other attachments; returns them with their slots, and the volume
    /// lock for the caller to hold until the record is written. No lock
    /// when there are no volumes.
    pub(super) async fn plan_volumes(
        &self,
        id: &str,
        reqs: &[VolumeRequest],
    ) -> Result<(Option<VolumeGuard>, Vec<VolumeAttachment>)> {
        if reqs.is_empty() {
            return Ok((None, Vec::new()));
        }
        let guard = self.volumes.lock().await;
        let mut planned: Vec<VolumeAttachment> = Vec::new();
        for r in reqs {
            let record = self.volumes.resolve(&r.volume)?;
            let mut existing = self.volumes.attachments_of(&record.id)?;
            existing.extend(
                planned
                    .iter()
                    .filter(|p| p.volume_id == record.id)
                    .map(|p| lodge_volumes::Attachment {
                        instance_id: id.to_string(),
                        mount_path: p.mount_path.clone(),
                        readonly: p.readonly || p.overlay,
                    }),
            );
            rules::check_share(&record.id, &existing, id, r.readonly || r.overlay.is_some())?;
            let slot = free_slot(&planned, &[]).ok_or_else(no_slot)?;
            let upper_slot = match r.overlay {
                Some(_) => Some(free_slot(&planned, &[slot]).ok_or_else(no_slot)?),
                None => None,
            };
            planned.push(VolumeAttachment {
                volume_id: record.id,
                mount_path: r.mount_path.clone(),
                readonly: r.readonly,
                overlay: r.overlay.is_some(),
                overlay_bytes: r.overlay,
                slot,
                upper_slot,
            });
        }
        Ok((Some(guard), planned))
    }

    /// Attaches a volume: at once to a stopped instance (mounted at its
    /// next boot), or hot-plugged and mounted in a running one.
    pub async fn attach_volume(
        &self,
        key: &str,
        volume: &str,
        mount_path: &str,
        readonly: bool,
    ) -> Result<Instance> {
        let Locked {
            _guard,
            id,
            paths,
            mut meta,
        } = self.lock_instance(key).await?;
        rules::check_mount_path(mount_path)?;
        rules::check_no_collision(
            mount_path,
            meta.volumes.iter().map(|v| v.mount_path.as_str()),
        )?;
        let state = state::derive(&observe(&paths, &meta));
        let running = match state {
            State::Running => true,
            State::Stopped | State::Created | State::Shutdown => false,
            state => {
                return Err(Error::WrongState {
                    id,
                    state,
                    action: "attach a volume",
                    needs: "running or stopped",
                })
            }
        };
        let _volumes = self.volumes.lock().await;
        let record = self.volumes.resolve(volume)?;
        let existing = self.volumes.attachments_of(&record.id)?;
        rules::check_share(&record.id, &existing, &id, readonly)?;
        if readonly {
            self.volumes.settle_for_readers(&record.id).await?;
        }
        let slot = free_slot(&meta.volumes, &[]).ok_or_else(no_slot)?;
        let attachment = VolumeAttachment {
            volume_id: record.id.clone(),
            mount_path: mount_path.to_string(),
            readonly,
            overlay: false,
            overlay_bytes: None,
            slot,
            upper_slot: None,
        };
        if running {
            self.hot_attach(&paths, &meta, &attachment).await?;
        }
        meta.volumes.push(attachment);
        store::save(&paths, &meta).map_err(io("writing instance record"))?;
        oplog(
            &paths,
            &format!(
                "attached volume {} at {mount_path}{}{}",
                record.id,
                if readonly { " read-only" } else { "" },
                if running { " (hot-plugged)" } else { "" }
            ),
        );
        Ok(self.view(&meta))
    }

    /// Plugs the attachment's disk in and has the guest mount it; undoes
    /// the plug when the mount fails.
    async fn hot_attach(
        &self,
        paths: &store::Paths,
        meta: &Metadata,
        v: &VolumeAttachment,
    ) -> Result<()> {
        let backend = self.launcher.backend(meta.hypervisor)?;
        backend
            .capabilities()
            .require(backend.kind(), Feature::DiskHotplug)?;
        let vm = self.launcher.vm_config(&backend, paths, meta)?;
        let disk = self
            .launcher
            .volume_disks(paths, v)
            .into_iter()
            .next()
            .ok_or_else(no_slot)?;
        backend
            .attach_disk(&vm, &disk)
            .await
            .map_err(Error::Hotplug)?;
        let mount = Request::Mount(lodge_guest::VolumeMount {
            serial: lodge_guest::serial_for_slot(v.slot),
            mount_path: v.mount_path.clone(),
            readonly: v.readonly,
            overlay_serial: None,
        });
        if let Err(e) = self
            .ask_guest(paths, meta, mount, "mount", &v.mount_path)
            .await
        {
            if let Err(c) = backend.detach_disk(&vm, v.slot, UNPLUG_TIMEOUT).await {
                return Err(Error::with_cleanup(e, vec![Error::Hotplug(c)]));
            }
            return Err(e);
        }
        Ok(())
    }

    /// Detaches a volume: from a stopped instance at once, from a running
    /// one once the guest has unmounted it (refused while it is busy) and
    /// let go of the disk. An overlay's upper disk is deleted with it.
    pub async fn detach_volume(&self, key: &str, volume: &str) -> Result<Instance> {
        let Locked {
            _guard,
            id,
            paths,
            mut meta,
        } = self.lock_instance(key).await?;
        let pos = meta
            .volumes
            .iter()
            .position(|v| v.volume_id == volume)
            .or_else(|| {
                let record = self.volumes.resolve(volume).ok()?;
                meta.volumes.iter().position(|v| v.volume_id == record.id)
            })
            .ok_or_else(|| Error::NotAttached {
                volume: volume.to_string(),
                instance: id.clone(),
            })?;
        let v = meta.volumes[pos].clone();
        let state = state::derive(&observe(&paths, &meta));
        match state {
            State::Running => {
                if v.overlay {
                    return Err(Error::WrongState {
                        id,
                        state,
                        action: "detach an overlay volume",
                        needs: "stopped",
                    });
                }
                self.hot_detach(&paths, &meta, &v).await?;
            }
            State::Stopped | State::Created | State::Shutdown => {}
            state => {
                return Err(Error::WrongState {
                    id,
                    state,
                    action: "detach a volume",
                    needs: "running or stopped",
                })
            }
        }
        meta.volumes.remove(pos);
        store::save(&paths, &meta).map_err(io("writing instance record"))?;
        if let Some(up) = v.upper_slot {
            let upper = upper_disk(&paths, up);
            if let Err(e) = std::fs::remove_file(&upper) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("removing {}: {e}", upper.display());
                }
            }
        }
        oplog(
            &paths,
            &format!("detached volume {} from {}", v.volume_id, v.mount_path),
        );
        Ok(self.view(&meta))
    }

    async fn hot_detach(
        &self,
        paths: &store::Paths,
        meta: &Metadata,
        v: &VolumeAttachment,
    ) -> Result<()> {
        let backend = self.launcher.backend(meta.hypervisor)?;
        backend
            .capabilities()
            .require(backend.kind(), Feature::DiskHotplug)?;
        let unmount = Request::Unmount {
            mount_path: v.mount_path.clone(),
        };
        match self
            .ask_guest(paths, meta, unmount, "unmount", &v.mount_path)
            .await
        {
            Err(Error::GuestVolume { message, .. }) if message.contains("is busy") => {
                return Err(Error::VolumeBusy(message))
            }
            other => other?,
        }
        let vm = self.launcher.vm_config(&backend, paths, meta)?;
        backend
            .detach_disk(&vm, v.slot, UNPLUG_TIMEOUT)
            .await
            .map_err(Error::Hotplug)
    }

    /// Sends a mount or unmount to the guest agent and waits for its one
    /// answer: `Result` is success, `Error` a refusal; anything else, or
    /// silence past [`AGENT_TIMEOUT`], is a failure.
    async fn ask_guest(
        &self,
        paths: &store::Paths,
        meta: &Metadata,
        request: Request,
        action: &'static str,
        mount_path: &str,
    ) -> Result<()> {
        self.launcher.require_agent(meta)?;
        let transport = UnixSocket(paths.agent_socket());
        let conn = self
            .agents()
            .connect(&meta.id, &transport, Duration::from_secs(10))
            .await?;
        let (_tx, mut rx) = conn.open(&request).await?;
        let refused = |message: String| Error::GuestVolume {
            action,
            mount_path: mount_path.to_string(),
            message,
        };
        let answer = tokio::time::timeout(AGENT_TIMEOUT, async {
            loop {
                match rx.recv().await? {
                    Inbound::Event(Event::Result { .. }) => return Ok(()),
                    Inbound::Event(Event::Error { message, .. }) => {
                        return Err(refused(guest_text(&message)))
                    }
                    Inbound::Event(_) => {
                        return Err(refused("the guest agent answered out of turn".into()))
                    }
                    Inbound::Closed => {
                        return Err(refused("the guest agent closed the request".into()))
                    }
                    _ => {}
                }
            }
        })
        .await;
        match answer {
            Ok(r) => r,
            Err(_) => Err(refused(format!(
                "no answer within {}s",
                AGENT_TIMEOUT.as_secs()
            ))),
        }
    }
}

fn no_slot() -> Error {
    Error::Volume(lodge_volumes::Error::AttachConflict {
        volume: "(any)".into(),
        reason: format!(
            "the instance has no free volume slot (at most {HOTPLUG_SLOTS} volume disks; an overlay takes two)"
        ),
    })
}

/// Makes the upper disks of a create's overlay attachments in `dir`.
pub(super) fn make_upper_disks(dir: &store::Paths, volumes: &[VolumeAttachment]) -> Result<()> {
    for v in volumes {
        if let (Some(up), Some(size)) = (v.upper_slot, v.overlay_bytes) {
            disks::empty_ext4(&upper_disk(dir, up), size)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(slot: u32, upper: Option<u32>) -> VolumeAttachment {
        VolumeAttachment {
            volume_id: format!("v{slot}"),
            mount_path: format!("/m{slot}"),
            readonly: true,
            overlay: upper.is_some(),
            overlay_bytes: upper.map(|_| 1 << 26),
            slot,
            upper_slot: upper,
        }
    }

    #[test]
    fn slots_are_the_lowest_free() {
        assert_eq!(free_slot(&[], &[]), Some(0));
        assert_eq!(free_slot(&[att(0, Some(1))], &[]), Some(2));
        assert_eq!(free_slot(&[att(1, None)], &[0]), Some(2));
        let full: Vec<_> = (0..HOTPLUG_SLOTS).map(|s| att(s, None)).collect();
        assert_eq!(free_slot(&full, &[]), None);
    }

    #[test]
    fn guest_messages_are_bounded_and_one_line() {
        assert_eq!(guest_text("busy\n\x1b[2J"), "busy  [2J");
        let long = "x".repeat(10_000);
        assert_eq!(guest_text(&long).chars().count(), MAX_GUEST_MESSAGE + 1);
    }
}
