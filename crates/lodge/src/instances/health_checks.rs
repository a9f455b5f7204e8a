//! Scheduling the health checks (`health`) of running instances: the
//! daemon's supervisor calls [`Manager::run_health_checks`] once a second;
//! each instance whose interval has passed gets one probe on its own task,
//! so a slow guest never holds up another's checks. Exec probes run
//! through the guest agent like an API exec, with stdin closed and output
//! kept only for the error message.

use std::sync::Arc;
use std::time::SystemTime;

use super::health::{probe_net, record, Entry, HealthCheck, HealthStatus, Probe, MAX_ERROR};
use super::manager::Manager;
use super::observe::observe;
use super::state::{self, State};
use super::store::Metadata;

impl Manager {
    /// The health view of an instance: `disabled` without a check, else
    /// the latest result while its VM runs, `unknown` when it does not.
    pub(super) fn health_of(&self, meta: &Metadata, st: State) -> Option<HealthStatus> {
        meta.health_check.as_ref()?;
        if !matches!(st, State::Running | State::Initializing) {
            return Some(HealthStatus::named("unknown"));
        }
        let book = self.health.lock();
        Some(match book.get(&meta.id) {
            Some(e) if e.boot == meta.started_at => e.status.clone(),
            _ => HealthStatus::named("starting"),
        })
    }

    /// One pass: probe every running instance whose check is due.
    pub async fn run_health_checks(self: &Arc<Self>) {
        let now = SystemTime::now();
        let Ok(all) = self.all() else {
            return;
        };
        let mut live = Vec::new();
        for meta in all {
            let Some(check) = meta.health_check.clone() else {
                continue;
            };
            let st = state::derive(&observe(&self.paths(&meta.id), &meta));
            if !matches!(st, State::Running) {
                continue;
            }
            live.push(meta.id.clone());
            {
                let mut book = self.health.lock();
                let e = book
                    .entry(meta.id.clone())
                    .or_insert_with(|| Entry::new(meta.started_at, now));
                if e.boot != meta.started_at {
                    *e = Entry::new(meta.started_at, now);
                }
                if e.running || e.next_at > now {
                    continue;
                }
                e.running = true;
            }
            let manager = self.clone();
            tokio::spawn(async move {
                let result = manager.probe(&meta, &check).await;
                let done = SystemTime::now();
                let in_start = meta.started_at.is_some_and(|t| {
                    done.duration_since(t).unwrap_or_default() < check.start_period
                });
                let mut book = manager.health.lock();
                if let Some(e) = book.get_mut(&meta.id) {
                    if e.boot == meta.started_at {
                        e.status = record(&e.status, &check, result, done, in_start);
                    }
                    e.running = false;
                    e.next_at = done + check.interval;
                }
            });
        }
        // Forget instances that stopped or went away.
        self.health.lock().retain(|id, _| live.contains(id));
    }

    async fn probe(&self, meta: &Metadata, check: &HealthCheck) -> Result<(), String> {
        match &check.probe {
            Probe::Exec {
                command,
                working_dir,
            } => {
                let run = self.exec_probe(meta, command, working_dir.as_deref());
                match tokio::time::timeout(check.timeout, run).await {
                    Ok(r) => r,
                    Err(_) => Err(format!(
                        "timed out after {}",
                        super::policy::format_go_duration(check.timeout)
                    )),
                }
            }
            net => {
                let ip = meta.network.as_ref().map(|n| n.ip.to_string());
                probe_net(net, ip.as_deref(), check.timeout).await
            }
        }
    }

    /// `command` in the guest through its agent; success is exit code 0.
    async fn exec_probe(
        &self,
        meta: &Metadata,
        command: &[String],
        cwd: Option<&str>,
    ) -> Result<(), String> {
        use crate::agent::{Inbound, UnixSocket};
        use lodge_guest::agent::{Event, ExecStart, Request};
        let ep = self
            .agent_endpoint(&meta.id, "a health check")
            .map_err(|e| e.to_string())?;
        let conn = self
            .agents()
            .connect(&ep.id, &UnixSocket(ep.socket), crate::agent::MIN_WAIT)
            .await
            .map_err(|e| e.to_string())?;
        let start = ExecStart {
            command: command.to_vec(),
            cwd: cwd.map(str::to_string),
            ..ExecStart::default()
        };
        let (tx, mut rx) = conn
            .open(&Request::Exec(start))
            .await
            .map_err(|e| e.to_string())?;
        if let Err(e) = tx.eof().await {
            tracing::debug!("health check of {}: closing stdin: {e}", meta.id);
        }
        let mut output = Vec::new();
        loop {
            match rx.recv().await.map_err(|e| e.to_string())? {
                Inbound::Stdout(b) | Inbound::Stderr(b) => {
                    let n = b.len();
                    if output.len() < MAX_ERROR {
                        output.extend_from_slice(&b);
                    }
                    rx.consumed(n).await.map_err(|e| e.to_string())?;
                }
                Inbound::Event(Event::Exit { code: 0, .. }) => return Ok(()),
                Inbound::Event(Event::Exit { code, .. }) => {
                    let out = String::from_utf8_lossy(&output).trim().to_string();
                    return Err(if out.is_empty() {
                        format!("exit code {code}")
                    } else {
                        format!("exit code {code}: {out}")
                    });
                }
                Inbound::Event(Event::Failed { message, .. })
                | Inbound::Event(Event::Error { message, .. }) => return Err(message),
                Inbound::Closed => return Err("the guest agent ended the session".into()),
                _ => {}
            }
        }
    }
}
