//! Workload health checks (hypeman's `health_check` / `health_status`),
//! run by the daemon, reported beside the lifecycle state (never changing
//! it).
//!
//! - `http`: `GET http://<instance ip>:<port><path>`, healthy on the
//!   expected status (any 2xx or 3xx when none is given);
//! - `tcp`: a connection to `<instance ip>:<port>` opens;
//! - `exec`: the command, run through the guest agent, exits 0.
//!
//! Every probe is bounded by the check's `timeout`. The policy is in the
//! instance record; the results are runtime state kept in memory by the
//! [`Book`] (after a daemon restart a check starts over from `starting`).
//! Failures inside `start_period` (counted from the boot) do not count, as
//! docker's. How results move the status is one pure function
//! ([`record`]). This file knows no manager: `health_checks` schedules the
//! probes and runs the exec ones through the guest agent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use lodge_common::time::rfc3339;
use serde::{Deserialize, Serialize};

/// A validated health check policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub probe: Probe,
    #[serde(with = "millis")]
    pub interval: Duration,
    #[serde(with = "millis")]
    pub timeout: Duration,
    #[serde(with = "millis")]
    pub start_period: Duration,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

impl HealthCheck {
    /// hypeman's `HealthCheck` JSON for this policy.
    pub fn view(&self) -> serde_json::Value {
        use super::policy::format_go_duration as go;
        let mut v = serde_json::json!({
            "interval": go(self.interval),
            "timeout": go(self.timeout),
            "start_period": go(self.start_period),
            "failure_threshold": self.failure_threshold,
            "success_threshold": self.success_threshold,
        });
        let (kind, probe) = match &self.probe {
            Probe::Http {
                port,
                path,
                expected_status,
            } => (
                "http",
                serde_json::json!({"port": port, "path": path, "expected_status": expected_status, "scheme": "http"}),
            ),
            Probe::Tcp { port } => ("tcp", serde_json::json!({ "port": port })),
            Probe::Exec {
                command,
                working_dir,
            } => (
                "exec",
                serde_json::json!({"command": command, "working_dir": working_dir}),
            ),
        };
        v["type"] = kind.into();
        v[kind] = probe;
        v
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// What one check does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Probe {
    Http {
        port: u16,
        path: String,
        expected_status: Option<u16>,
    },
    Tcp {
        port: u16,
    },
    Exec {
        command: Vec<String>,
        working_dir: Option<String>,
    },
}

/// hypeman's `InstanceHealthStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthStatus {
    /// `disabled`, `starting`, `healthy`, `unhealthy` or `unknown`.
    pub status: String,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checked_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<String>,
}

impl HealthStatus {
    pub fn named(status: &str) -> Self {
        HealthStatus {
            status: status.to_string(),
            consecutive_failures: 0,
            consecutive_successes: 0,
            last_checked_at: None,
            last_error: None,
            last_failure_at: None,
            last_success_at: None,
        }
    }
}

/// Longest `last_error` kept.
pub const MAX_ERROR: usize = 256;

/// The status after one probe's `result` at `now`; `in_start_period` when
/// the boot was less than `start_period` ago.
pub fn record(
    before: &HealthStatus,
    check: &HealthCheck,
    result: Result<(), String>,
    now: SystemTime,
    in_start_period: bool,
) -> HealthStatus {
    let mut s = before.clone();
    let at = rfc3339(now);
    s.last_checked_at = Some(at.clone());
    match result {
        Ok(()) => {
            s.consecutive_successes += 1;
            s.consecutive_failures = 0;
            s.last_success_at = Some(at);
            if s.consecutive_successes >= check.success_threshold.max(1) {
                s.status = "healthy".into();
            }
        }
        Err(e) => {
            let mut e = e;
            if e.len() > MAX_ERROR {
                let mut cut = MAX_ERROR;
                while !e.is_char_boundary(cut) {
                    cut -= 1;
                }
                e.truncate(cut);
            }
            s.last_error = Some(e);
            s.last_failure_at = Some(at);
            s.consecutive_successes = 0;
            if !in_start_period {
                s.consecutive_failures += 1;
                if s.consecutive_failures >= check.failure_threshold.max(1) {
                    s.status = "unhealthy".into();
                }
            }
        }
    }
    s
}

/// Health results of the running instances, in memory.
#[derive(Debug, Default)]
pub struct Book {
    entries: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub status: HealthStatus,
    /// The boot this status belongs to (a new boot starts over).
    pub boot: Option<SystemTime>,
    pub next_at: SystemTime,
    /// A probe is under way.
    pub running: bool,
}

impl Entry {
    /// A fresh entry for the boot at `boot`, due at `now`.
    pub fn new(boot: Option<SystemTime>, now: SystemTime) -> Entry {
        Entry {
            status: HealthStatus::named("starting"),
            boot,
            next_at: now,
            running: false,
        }
    }
}

impl Book {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One probe against `ip` (http, tcp); exec probes are `health_checks`'.
pub async fn probe_net(probe: &Probe, ip: Option<&str>, timeout: Duration) -> Result<(), String> {
    let ip = ip.ok_or_else(|| "the instance has no network address".to_string())?;
    match probe {
        Probe::Tcp { port } => {
            let addr: SocketAddr = format!("{ip}:{port}")
                .parse()
                .map_err(|e| format!("address {ip}:{port}: {e}"))?;
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("connect to {addr}: {e}")),
                Err(_) => Err(format!("connect to {addr}: timed out")),
            }
        }
        Probe::Http {
            port,
            path,
            expected_status,
        } => {
            let url = format!("http://{ip}:{port}{path}");
            let client = reqwest::Client::builder()
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .build()
                .map_err(|e| e.to_string())?;
            let resp = client
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            let code = resp.status().as_u16();
            let ok = match expected_status {
                Some(want) => code == *want,
                None => (200..400).contains(&code),
            };
            if ok {
                Ok(())
            } else {
                Err(format!("GET {url}: status {code}"))
            }
        }
        Probe::Exec { .. } => Err("exec probes run through the guest agent".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(fail: u32, ok: u32) -> HealthCheck {
        HealthCheck {
            probe: Probe::Tcp { port: 1 },
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            start_period: Duration::ZERO,
            failure_threshold: fail,
            success_threshold: ok,
        }
    }

    #[test]
    fn thresholds_move_the_status() {
        let c = check(2, 2);
        let now = SystemTime::UNIX_EPOCH;
        let s = HealthStatus::named("starting");
        let s = record(&s, &c, Ok(()), now, false);
        assert_eq!(
            (s.status.as_str(), s.consecutive_successes),
            ("starting", 1)
        );
        let s = record(&s, &c, Ok(()), now, false);
        assert_eq!(s.status, "healthy");
        let s = record(&s, &c, Err("refused".into()), now, false);
        assert_eq!((s.status.as_str(), s.consecutive_failures), ("healthy", 1));
        assert_eq!(s.consecutive_successes, 0);
        let s = record(&s, &c, Err("refused".into()), now, false);
        assert_eq!(s.status, "unhealthy");
        assert_eq!(s.last_error.as_deref(), Some("refused"));
        assert!(s.last_failure_at.is_some() && s.last_success_at.is_some());
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let c = check(1, 1);
        let s = record(
            &HealthStatus::named("starting"),
            &c,
            Err("not yet".into()),
            SystemTime::UNIX_EPOCH,
            true,
        );
        assert_eq!((s.status.as_str(), s.consecutive_failures), ("starting", 0));
        let long = "é".repeat(400);
        let s = record(&s, &c, Err(long), SystemTime::UNIX_EPOCH, false);
        assert!(s.last_error.as_ref().is_some_and(|e| e.len() <= MAX_ERROR));
    }

    #[tokio::test]
    async fn tcp_and_http_probes_reach_a_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let answer = if req.starts_with("GET /ok ") {
                    "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
                } else {
                    "HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n"
                };
                s.write_all(answer.as_bytes()).await.ok();
            }
        });
        let t = Duration::from_secs(5);
        let ip = Some("127.0.0.1");
        assert_eq!(probe_net(&Probe::Tcp { port }, ip, t).await, Ok(()));
        let http = |path: &str, expected_status| Probe::Http {
            port,
            path: path.into(),
            expected_status,
        };
        assert_eq!(probe_net(&http("/ok", None), ip, t).await, Ok(()));
        assert!(probe_net(&http("/down", None), ip, t)
            .await
            .is_err_and(|e| e.contains("503")));
        assert_eq!(probe_net(&http("/down", Some(503)), ip, t).await, Ok(()));
        // Nothing listens on a port just freed.
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        assert!(probe_net(&Probe::Tcp { port: free }, ip, t).await.is_err());
        assert!(probe_net(&Probe::Tcp { port }, None, t).await.is_err());
    }
}
