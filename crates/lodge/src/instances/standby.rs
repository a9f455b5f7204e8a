//! Standby and restore: a VM that sleeps to disk and wakes where it was.
//!
//! Standby, under the instance lock:
//! 1. refuse unless Running; record `pending: standby` and `paused`;
//! 2. the backend pauses the guest and saves memory + device state to
//!    `standby/memory.partial` (the VMM stays, paused);
//! 3. end the VMM (its monitor records the exit and releases the logs);
//! 4. fsync the file, rename it to `standby/memory`, record the saved
//!    state (with the VMM identity it needs) and clear `pending`;
//! 5. delete the TAP (the address stays leased to the instance).
//!
//! A failure in 2 or 3 cancels the save and continues the guest.
//!
//! Restore, under the lock:
//! 1. refuse unless Standby; check the VMM binary against the identity
//!    recorded with the state (version, machine, accelerator) before
//!    anything starts; record `pending: restore`;
//! 2. recreate the TAP (same name, MAC and address), start a monitor whose
//!    VMM waits for the state (same arguments, so the console appends to
//!    the same `app.log`), load the file (the CPU model is checked once
//!    the VMM runs);
//! 3. the point of no return: record that the state has been used (the
//!    guest is loaded and paused), delete the file, continue the guest.
//!
//! A failure before 3 ends the new VMM, deletes the TAP and leaves the
//! instance in Standby with its state and the reason in `state_error`.
//! Disks are used in place throughout: the VMM flushes them when the save
//! completes, and nothing runs on them between standby and restore.
//!
//! A daemon killed in the middle leaves `pending` in the record (and,
//! once a save has completed, the identity the state needs);
//! [`Manager::reconcile_standby`] settles it when the daemon starts.
//!
//! Where the memory goes: with `VmConfig::memory_file` (lodge's default)
//! the guest RAM *is* `memory.ram`, mapped shared, so the save holds only
//! the devices (~0.5 MB) and the restore maps the RAM back lazily; without
//! it, the whole RAM goes through the migration stream both ways (a 1 GiB
//! guest with 640 MiB touched: restore to an answering guest in 0.75 s
//! against 2.8 s here, see scripts/bench-standby.sh).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use lodge_hypervisor::{Backend, BackendError, Feature, Hypervisor};

use super::compress::{self, CompressionSpec};
use super::error::{io, Error, Result};
use super::manager::{Locked, Manager};
use super::net;
use super::observe::{monitor_alive, observe};
use super::oplog::oplog;
use super::state::{self, State};
use super::store::{self, Metadata, Paths, PendingOp, SavedState, StandbyState, RAM_FILE};
use super::view::Instance;

/// Directory of the saved state, inside the instance directory.
const STATE_DIR: &str = "standby";
/// The saved memory and device state.
const STATE_FILE: &str = "memory";
/// The state file while it is being written.
const PARTIAL_FILE: &str = "memory.partial";

/// Makes the guest RAM file durable (its pages are in the page cache
/// once the VMM exits; the state is only complete with them on disk).
fn sync_ram_file(path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .sync_all()
}

/// How long a restored fork's guest agent has to take its new address.
const READDRESS_TIMEOUT: Duration = Duration::from_secs(20);

/// Time allowed to save or load a state: generous, as the stream runs at
/// disk speed (hundreds of MiB/s) and the host may be busy.
fn transfer_timeout(memory_bytes: u64) -> Duration {
    Duration::from_secs(30) + Duration::from_secs(30 * memory_bytes.div_ceil(1 << 30))
}

fn state_dir(paths: &Paths) -> PathBuf {
    paths.dir.join(STATE_DIR)
}

/// An error and its causes as one line (for `state_error`).
fn chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !msg.contains(&part) {
            msg.push_str(": ");
            msg.push_str(&part);
        }
        source = s.source();
    }
    msg
}

/// Waits up to `timeout` for the instance's monitor (and so its VMM) to
/// be gone.
async fn wait_monitor_exit(paths: &Paths, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while monitor_alive(&paths.logs()) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Removes `path` if it exists.
fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes `file` durable and gives it its final name; returns its size.
fn commit_state_file(file: &Path, to: &Path) -> std::io::Result<u64> {
    let f = std::fs::File::open(file)?;
    f.sync_all()?;
    let size = f.metadata()?.len();
    std::fs::rename(file, to)?;
    if let Some(dir) = to.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(size)
}

/// The last line of the live `vmm.log` (read within its last 2 KiB).
fn last_vmm_line(paths: &Paths) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(paths.logs().join("vmm.log")).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(2048))).ok()?;
    let mut buf = Vec::new();
    f.take(2048).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// A failed load with the VMM's own last words added (QEMU logs why a
/// load failed, e.g. "load of migration failed: Invalid argument").
fn with_vmm_reason(err: Error, paths: &Paths) -> Error {
    let Error::Backend(BackendError::StateTransfer { op, vm, reason }) = err else {
        return err;
    };
    let reason = match last_vmm_line(paths) {
        Some(line) => format!("{reason}; the VMM said: {line}"),
        None => reason,
    };
    Error::Backend(BackendError::StateTransfer { op, vm, reason })
}

impl Manager {
    /// Puts a running instance in standby (see the module doc), then
    /// compresses the saved memory in the background when `compression`
    /// asks for it (see `compress`).
    #[tracing::instrument(name = "instance.standby", skip_all, fields(instance = %key))]
    pub async fn standby(
        &self,
        key: &str,
        compression: Option<CompressionSpec>,
    ) -> Result<Instance> {
        let mut locked = self.lock_instance(key).await?;
        self.standby_locked(&mut locked).await?;
        if let (Some(spec), Some(saved)) = (compression, locked.meta.standby.snapshot.as_mut()) {
            compress::mark(saved, &spec);
            store::save(&locked.paths, &locked.meta).map_err(io("writing instance record"))?;
            compress::spawn(self.lock_for(&locked.id), locked.paths.clone(), spec.delay);
        }
        Ok(self.view(&locked.meta))
    }

    /// [`Manager::standby`] of an instance whose lock the caller holds.
    pub(super) async fn standby_locked(&self, locked: &mut Locked) -> Result<()> {
        let _timer = crate::metrics::time(crate::metrics::Op::Standby);
        let id = locked.id.clone();
        let paths = locked.paths.clone();
        let meta = &mut locked.meta;
        // A backend that cannot save a VM says so whatever the state.
        let backend = self.launcher.backend(meta.hypervisor)?;
        backend
            .capabilities()
            .require(backend.kind(), Feature::Snapshot)?;
        let state = state::derive(&observe(&paths, meta));
        if state != State::Running {
            return Err(Error::WrongState {
                id,
                state,
                action: "standby",
                needs: "running",
            });
        }
        let vm = self.launcher.vm_config(&backend, &paths, meta)?;
        let dir = state_dir(&paths);
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let partial = dir.join(PARTIAL_FILE);
        remove_if_present(&partial).map_err(io("removing an unfinished state file"))?;

        meta.paused = true;
        meta.standby.pending = Some(PendingOp::Standby);
        meta.standby.error = None;
        store::save(&paths, meta).map_err(io("writing instance record"))?;
        oplog(&paths, "standby: saving the VM state");
        let started = Instant::now();

        let saved = backend
            .save(&vm, &partial, transfer_timeout(meta.memory_bytes))
            .await;
        let identity = match saved {
            Ok(identity) => identity,
            Err(e) => return Err(self.undo_standby(&backend, &paths, meta, e.into()).await),
        };
        let saved_in = started.elapsed();
        // The state file is whole: a daemon restarted from here on commits it.
        meta.standby.saved_identity = Some(identity.clone());
        store::save(&paths, meta).map_err(io("writing instance record"))?;
        // Paused after a completed save: QEMU's `quit` ends it at once.
        if let Err(e) = self.launcher.force_stop(&paths, meta).await {
            return Err(self.undo_standby(&backend, &paths, meta, e).await);
        }
        let file = dir.join(STATE_FILE);
        let ram_file = meta.standby.ram_file.then(|| PathBuf::from(RAM_FILE));
        let committed = {
            let (partial, file) = (partial.clone(), file.clone());
            let ram = ram_file.as_ref().map(|f| paths.dir.join(f));
            tokio::task::spawn_blocking(move || {
                if let Some(ram) = &ram {
                    sync_ram_file(ram)?;
                }
                commit_state_file(&partial, &file)
            })
            .await
            .map_err(|e| Error::Task {
                what: "state file sync",
                source: Some(e),
            })
            .and_then(|r| r.map_err(io("writing the state file")))
        };
        let size = match committed {
            Ok(size) => size,
            Err(e) => {
                // The VMM is gone and its state could not be kept: the
                // instance is stopped (its disks were flushed by the save).
                let mut cleanup = Vec::new();
                if let Err(c) = remove_if_present(&partial) {
                    cleanup.push(io("removing an unfinished state file")(c));
                }
                if let Err(c) = self.tap_down(meta).await {
                    cleanup.push(c);
                }
                meta.paused = false;
                meta.standby.pending = None;
                meta.standby.saved_identity = None;
                if let Err(c) = store::save(&paths, meta) {
                    cleanup.push(io("writing instance record")(c));
                }
                oplog(
                    &paths,
                    &format!(
                        "standby failed after the VMM exited; stopped: {}",
                        chain(&e)
                    ),
                );
                return Err(Error::with_cleanup(e, cleanup));
            }
        };
        meta.paused = false;
        meta.standby = StandbyState {
            ram_file: meta.standby.ram_file,
            snapshot: Some(SavedState {
                file: PathBuf::from(STATE_DIR).join(STATE_FILE),
                size_bytes: size,
                ram_file,
                created_at: SystemTime::now(),
                identity,
                compression: None,
            }),
            ..StandbyState::default()
        };
        // Auto-standby counts afresh from the restore.
        meta.auto_standby_runtime = Default::default();
        store::save(&paths, meta).map_err(io("writing instance record"))?;
        // The VMM has exited: nothing holds the TAP any more.
        self.tap_down(meta).await?;
        oplog(
            &paths,
            &format!(
                "standby: saved {} MiB of state in {} ms ({} ms with the VMM's exit and sync)",
                size >> 20,
                saved_in.as_millis(),
                started.elapsed().as_millis()
            ),
        );
        Ok(())
    }

    /// A standby failed (`err`) before the state was committed: cancel the
    /// save, continue the guest and clear the record's marks.
    async fn undo_standby(
        &self,
        backend: &Backend,
        paths: &Paths,
        meta: &mut Metadata,
        err: Error,
    ) -> Error {
        let mut cleanup = Vec::new();
        if monitor_alive(&paths.logs()) {
            match self.launcher.vm_config(backend, paths, meta) {
                Ok(vm) => {
                    if let Err(e) = backend.abort_save(&vm).await {
                        cleanup.push(e.into());
                    }
                }
                Err(e) => cleanup.push(e.into()),
            }
        } else if let Err(e) = self.tap_down(meta).await {
            // The VMM is gone (the instance is Stopped): so is its TAP.
            cleanup.push(e);
        }
        if let Err(e) = remove_if_present(&state_dir(paths).join(PARTIAL_FILE)) {
            cleanup.push(io("removing an unfinished state file")(e));
        }
        meta.paused = false;
        meta.standby.pending = None;
        meta.standby.saved_identity = None;
        if let Err(e) = store::save(paths, meta) {
            cleanup.push(io("writing instance record")(e));
        }
        oplog(
            paths,
            &format!("standby failed, guest continued: {}", chain(&err)),
        );
        Error::with_cleanup(err, cleanup)
    }

    /// Restores an instance from standby (see the module doc).
    #[tracing::instrument(name = "instance.restore", skip_all, fields(instance = %key))]
    pub async fn restore(&self, key: &str) -> Result<Instance> {
        let mut locked = self.lock_instance(key).await?;
        self.restore_locked(&mut locked).await?;
        Ok(self.view(&locked.meta))
    }

    /// [`Manager::restore`] of an instance whose lock the caller holds.
    pub(super) async fn restore_locked(&self, locked: &mut Locked) -> Result<()> {
        let _timer = crate::metrics::time(crate::metrics::Op::Restore);
        let id = locked.id.clone();
        let paths = locked.paths.clone();
        let meta = &mut locked.meta;
        let state = state::derive(&observe(&paths, meta));
        if state == State::Standby {
            compress::ensure_uncompressed(&paths, meta).await?;
        }
        let saved = match (&state, &meta.standby.snapshot) {
            (State::Standby, Some(saved)) => saved.clone(),
            _ => {
                return Err(Error::WrongState {
                    id,
                    state,
                    action: "restore",
                    needs: "in standby",
                })
            }
        };
        let file = paths.dir.join(&saved.file);
        for needed in std::iter::once(&saved.file).chain(&saved.ram_file) {
            let path = paths.dir.join(needed);
            if !path.exists() {
                return Err(Error::StateFileMissing {
                    id,
                    path: path.display().to_string(),
                });
            }
        }
        let backend = self.launcher.backend(meta.hypervisor)?;
        backend
            .capabilities()
            .require(backend.kind(), Feature::Snapshot)?;
        saved.identity.check(&backend.snapshot_identity().await?)?;

        meta.standby.pending = Some(PendingOp::Restore);
        meta.standby.error = None;
        store::save(&paths, meta).map_err(io("writing instance record"))?;
        oplog(&paths, "restore: loading the saved state");
        let started = Instant::now();
        let loaded = self.load_saved(&backend, &paths, meta, &file, &saved).await;
        let vmm_up_in = match loaded {
            Ok(up) => up,
            Err(e) => {
                let e = with_vmm_reason(e, &paths);
                let mut cleanup = Vec::new();
                if let Err(c) = self.launcher.force_stop(&paths, meta).await {
                    cleanup.push(c);
                }
                if let Err(c) = self.tap_down(meta).await {
                    cleanup.push(c);
                }
                meta.standby.pending = None;
                meta.standby.error = Some(chain(&e));
                if let Err(c) = store::save(&paths, meta) {
                    cleanup.push(io("writing instance record")(c));
                }
                oplog(
                    &paths,
                    &format!("restore failed, still in standby: {}", chain(&e)),
                );
                return Err(Error::with_cleanup(e, cleanup));
            }
        };
        let loaded_in = started.elapsed();
        // The guest is loaded and paused: the saved state has served. From
        // here on, its disks move on, so the state must never load again.
        meta.standby.snapshot = None;
        meta.standby.resumed = true;
        meta.paused = true;
        store::save(&paths, meta).map_err(io("writing instance record"))?;
        if let Err(e) = std::fs::remove_dir_all(state_dir(&paths)) {
            tracing::warn!("removing the used state of {id}: {e}");
        }
        let vm = self.launcher.vm_config(&backend, &paths, meta)?;
        backend.resume(&vm).await?;
        meta.paused = false;
        meta.standby.pending = None;
        store::save(&paths, meta).map_err(io("writing instance record"))?;
        if let Some(old) = meta.standby.readdress_from {
            self.readdress_guest(&id, &paths, meta, old).await?;
            meta.standby.readdress_from = None;
            store::save(&paths, meta).map_err(io("writing instance record"))?;
        }
        oplog(
            &paths,
            &format!(
                "restore: VMM up in {} ms, state loaded in {} ms, guest continued after {} ms",
                vmm_up_in.as_millis(),
                loaded_in.as_millis(),
                started.elapsed().as_millis()
            ),
        );
        Ok(())
    }

    /// Asks the guest agent of a restored fork to move the guest from the
    /// address it was saved with (`old`, its source's) onto the fork's own
    /// (MAC, address, host name), retrying while the agent reconnects.
    async fn readdress_guest(
        &self,
        id: &str,
        paths: &Paths,
        meta: &Metadata,
        old: std::net::Ipv4Addr,
    ) -> Result<()> {
        let net = self.net.as_deref().map(|dn| &dn.network);
        let Some(network) = super::lifecycle::guest_config(meta, net)?.network else {
            return Ok(());
        };
        let req = lodge_guest::protocol::Request::Readdress(lodge_guest::protocol::Readdress {
            network,
            old_ip: Some(old),
        });
        let transport = crate::agent::UnixSocket(paths.agent_socket());
        let deadline = Instant::now() + READDRESS_TIMEOUT;
        loop {
            let attempt = async {
                let conn = self
                    .agents()
                    .connect(id, &transport, Duration::from_secs(5))
                    .await
                    .map_err(|e| e.to_string())?;
                let (_tx, mut rx) = conn.open(&req).await.map_err(|e| e.to_string())?;
                loop {
                    match rx.recv().await.map_err(|e| e.to_string())? {
                        crate::agent::Inbound::Event(lodge_guest::protocol::Event::Result {
                            ..
                        }) => return Ok(()),
                        crate::agent::Inbound::Event(lodge_guest::protocol::Event::Error {
                            message,
                            ..
                        }) => return Err(format!("the guest agent: {message}")),
                        crate::agent::Inbound::Closed => {
                            return Err("the guest agent closed the request".to_string())
                        }
                        _ => {}
                    }
                }
            };
            match attempt.await {
                Ok(()) => {
                    oplog(
                        paths,
                        &format!("restore: guest moved from {old} to its own address"),
                    );
                    return Ok(());
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("readdressing {id}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return Err(Error::Readdress {
                        id: id.to_string(),
                        reason: e,
                    })
                }
            }
        }
    }

    /// Restore steps 2 (see the module doc): TAP, monitor, load. Returns
    /// how long the VMM took to be up (the rest is the load).
    async fn load_saved(
        &self,
        backend: &Backend,
        paths: &Paths,
        meta: &Metadata,
        file: &Path,
        saved: &SavedState,
    ) -> Result<Duration> {
        let started = Instant::now();
        if let Some(rec) = &meta.network {
            let dn = self.net.as_deref().ok_or(Error::NetworkDisabled)?;
            net::tap_up(dn, meta, rec).await?;
        }
        self.launcher.start_restore(paths, meta).await?;
        let up = started.elapsed();
        let vm = self.launcher.vm_config(backend, paths, meta)?;
        backend
            .load(
                &vm,
                file,
                &saved.identity,
                transfer_timeout(meta.memory_bytes),
            )
            .await?;
        Ok(up)
    }

    /// Settles standbys and restores a daemon crash cut short (called once
    /// when the daemon starts, before it serves):
    ///
    /// - a standby whose VMM still runs is cancelled and the guest
    ///   continued; one whose VMM is gone is committed when its save had
    ///   completed (the record names the identity then), else it leaves a
    ///   Stopped instance (its disks were flushed; the partial state is
    ///   dropped);
    /// - a restore that had not used the state yet ends its VMM and stays
    ///   in Standby with the state; one that had continues the guest.
    pub async fn reconcile_standby(&self) {
        let all = match self.all() {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!("reconciling standby: {e}");
                return;
            }
        };
        for meta in all {
            let compressing = meta
                .standby
                .snapshot
                .as_ref()
                .and_then(|s| s.compression.as_ref())
                .is_some_and(|c| c.state == store::CompressionState::Compressing);
            if compressing {
                // Cut short (or never started): the memory stays as it is.
                match self.lock_instance(&meta.id).await {
                    Ok(mut locked) => {
                        let done =
                            compress::ensure_uncompressed(&locked.paths, &mut locked.meta).await;
                        if let Err(e) = done {
                            tracing::warn!("instance {}: dropping a compression: {e}", meta.id);
                        }
                    }
                    Err(e) => tracing::warn!("instance {}: {e}", meta.id),
                }
            }
            let Some(op) = meta.standby.pending else {
                continue;
            };
            let id = meta.id.clone();
            match self.reconcile_one(&id, op).await {
                Ok(what) => tracing::warn!("instance {id}: {what}"),
                Err(e) => tracing::warn!("instance {id}: settling an interrupted {op:?}: {e}"),
            }
        }
    }

    async fn reconcile_one(&self, id: &str, op: PendingOp) -> Result<&'static str> {
        let Locked {
            _guard,
            paths,
            mut meta,
            ..
        } = self.lock_instance(id).await?;
        let mut alive = monitor_alive(&paths.logs());
        let backend = self.launcher.backend(meta.hypervisor)?;
        if op == PendingOp::Standby && alive {
            let vm = self.launcher.vm_config(&backend, &paths, &meta)?;
            if let Err(e) = backend.abort_save(&vm).await {
                // The crash may have come as the VMM was told to quit:
                // then it is ending, and the save is settled as below.
                if !wait_monitor_exit(&paths, Duration::from_secs(5)).await {
                    return Err(e.into());
                }
                alive = false;
            }
        }
        let what = match (op, alive, meta.standby.snapshot.is_some()) {
            (PendingOp::Standby, true, _) => {
                meta.paused = false;
                "a standby cut short by a daemon restart was cancelled; the guest continues"
            }
            (PendingOp::Standby, false, _) => {
                self.tap_down(&meta).await?;
                meta.paused = false;
                let dir = state_dir(&paths);
                let partial = dir.join(PARTIAL_FILE);
                let file = dir.join(STATE_FILE);
                match meta.standby.saved_identity.take() {
                    Some(identity) if partial.exists() || file.exists() => {
                        // The save had completed: keep it (the crash may
                        // have come before or after the file's rename).
                        let ram_file = meta.standby.ram_file.then(|| PathBuf::from(RAM_FILE));
                        if let Some(ram) = &ram_file {
                            sync_ram_file(&paths.dir.join(ram))
                                .map_err(io("writing the guest RAM file"))?;
                        }
                        let size = if partial.exists() {
                            commit_state_file(&partial, &file)
                        } else {
                            std::fs::metadata(&file).map(|m| m.len())
                        }
                        .map_err(io("writing the state file"))?;
                        meta.standby.snapshot = Some(SavedState {
                            file: PathBuf::from(STATE_DIR).join(STATE_FILE),
                            size_bytes: size,
                            ram_file,
                            created_at: SystemTime::now(),
                            identity,
                            compression: None,
                        });
                        "a standby cut short by a daemon restart after its save was finished; in standby"
                    }
                    _ => {
                        "a standby cut short by a daemon restart lost its VMM; the instance is stopped"
                    }
                }
            }
            (PendingOp::Restore, _, true) => {
                self.launcher.force_stop(&paths, &meta).await?;
                self.tap_down(&meta).await?;
                meta.standby.error = Some(
                    "a daemon restart interrupted the restore; the saved state is kept".into(),
                );
                "a restore cut short by a daemon restart was undone; still in standby"
            }
            (PendingOp::Restore, true, false) => {
                let vm = self.launcher.vm_config(&backend, &paths, &meta)?;
                backend.resume(&vm).await?;
                meta.paused = false;
                "a restore cut short by a daemon restart was finished; the guest continues"
            }
            (PendingOp::Restore, false, false) => {
                meta.paused = false;
                "a restore cut short by a daemon restart lost its VMM; the instance is stopped"
            }
        };
        if op == PendingOp::Standby {
            remove_if_present(&state_dir(&paths).join(PARTIAL_FILE))
                .map_err(io("removing an unfinished state file"))?;
        }
        meta.standby.pending = None;
        meta.standby.saved_identity = None;
        store::save(&paths, &meta).map_err(io("writing instance record"))?;
        oplog(&paths, what);
        Ok(what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_timeouts_grow_with_memory() {
        assert_eq!(transfer_timeout(256 << 20), Duration::from_secs(60));
        assert_eq!(transfer_timeout(4 << 30), Duration::from_secs(150));
    }

    #[test]
    fn a_committed_state_file_has_its_final_name() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let partial = dir.path().join(PARTIAL_FILE);
        std::fs::write(&partial, b"state")?;
        let file = dir.path().join(STATE_FILE);
        assert_eq!(commit_state_file(&partial, &file)?, 5);
        assert!(!partial.exists());
        assert_eq!(std::fs::read(&file)?, b"state");
        remove_if_present(&partial)?;
        remove_if_present(&file)?;
        assert!(!file.exists());
        Ok(())
    }
}
