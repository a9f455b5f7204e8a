//! Auto-standby's types and its one decision, kept pure: hypeman's
//! `auto_standby` policy as the record stores and the API shows it, the
//! runtime facts the record keeps between daemon runs (idle since, last
//! inbound activity, a hold), the kernel's conntrack table as parsed flows,
//! and [`decide`], a function of those and the clock.
//!
//! An instance is idle when nothing is open through lodge's ingress (its
//! activity record, `lodge_common::activity`) and no inbound TCP flow to
//! the guest's address is live in conntrack; it goes to standby once it has
//! been idle for `idle_timeout` and no hold says otherwise. Flows that
//! already closed still tell when they last moved a packet (their
//! remaining conntrack timeout against the state's full timeout), so a
//! burst of short requests between two checks keeps the instance awake.
//!
//! A leaf module: the record (`store`), the manager (which holds the
//! [`Book`] of standbys under way) and the API name these types without
//! depending on the daemon task that acts on them (`auto_standby_watch`),
//! which makes every decision through [`decide`].

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lodge_common::activity::Activity;
use serde::{Deserialize, Serialize};

use super::policy::{format_go_duration, parse_go_duration_at_most};

/// Longest `idle_timeout` taken (about 31 years; beyond that it is a typo).
const MAX_IDLE_SECS: f64 = 1e9;

/// hypeman's `AutoStandbyPolicy`, normalised: disabled is `{enabled:
/// false}` alone; enabled has a positive `idle_timeout` (Go form), sorted
/// and deduplicated masked CIDRs and ports. The record stores it and the
/// instance view shows it as is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AutoStandbyPolicy {
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_source_cidrs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_destination_ports: Vec<u16>,
}

impl AutoStandbyPolicy {
    /// The idle timeout of an enabled policy.
    pub fn timeout(&self) -> Option<Duration> {
        if !self.enabled {
            return None;
        }
        let text = self.idle_timeout.as_deref()?;
        parse_go_duration_at_most(text, MAX_IDLE_SECS).ok()
    }

    /// hypeman's `auto_standby` object from a create or update body.
    pub fn parse(value: &serde_json::Value) -> Result<Self, String> {
        let obj = value.as_object().ok_or("auto_standby must be an object")?;
        let known = [
            "enabled",
            "idle_timeout",
            "ignore_source_cidrs",
            "ignore_destination_ports",
        ];
        if let Some(k) = obj.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(format!("auto_standby: unknown field `{k}`"));
        }
        let enabled = match obj.get("enabled") {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(_) => return Err("auto_standby.enabled must be a boolean".into()),
        };
        if !enabled {
            return Ok(AutoStandbyPolicy::default());
        }
        let timeout = match obj.get("idle_timeout") {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s,
            None | Some(serde_json::Value::Null) | Some(serde_json::Value::String(_)) => {
                return Err("auto_standby.idle_timeout is required when enabled".into())
            }
            Some(_) => return Err("auto_standby.idle_timeout must be a string".into()),
        };
        let d = parse_go_duration_at_most(timeout, MAX_IDLE_SECS)
            .map_err(|e| format!("auto_standby.idle_timeout {timeout:?}: {e}"))?;
        if d.is_zero() {
            return Err("auto_standby.idle_timeout must be positive".into());
        }
        let mut cidrs = Vec::new();
        for raw in list(obj.get("ignore_source_cidrs"), "ignore_source_cidrs")? {
            let s = raw
                .as_str()
                .ok_or("auto_standby.ignore_source_cidrs must hold strings")?;
            if s.trim().is_empty() {
                continue;
            }
            let c = Cidr::parse(s.trim())
                .map_err(|e| format!("auto_standby.ignore_source_cidrs {s:?}: {e}"))?;
            cidrs.push(c.to_string());
        }
        cidrs.sort();
        cidrs.dedup();
        let mut ports = Vec::new();
        for raw in list(
            obj.get("ignore_destination_ports"),
            "ignore_destination_ports",
        )? {
            let port = raw
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    format!("auto_standby.ignore_destination_ports: {raw} is not a port (1-65535)")
                })?;
            ports.push(port);
        }
        ports.sort_unstable();
        ports.dedup();
        Ok(AutoStandbyPolicy {
            enabled: true,
            idle_timeout: Some(format_go_duration(d)),
            ignore_source_cidrs: cidrs,
            ignore_destination_ports: ports,
        })
    }

    /// Whether a flow from `src` to port `dport` counts as activity.
    fn counts(&self, src: Ipv4Addr, dport: u16) -> bool {
        !self.ignore_destination_ports.contains(&dport)
            && !self
                .ignore_source_cidrs
                .iter()
                .filter_map(|c| Cidr::parse(c).ok())
                .any(|c| c.contains(IpAddr::V4(src)))
    }
}

fn list<'a>(
    v: Option<&'a serde_json::Value>,
    field: &str,
) -> Result<&'a [serde_json::Value], String> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(&[]),
        Some(serde_json::Value::Array(a)) => Ok(a),
        Some(_) => Err(format!("auto_standby.{field} must be a list")),
    }
}

/// An IPv4 or IPv6 prefix (`10.0.0.0/8`, `::1/128`), masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, len) = s.split_once('/').ok_or("expected ADDRESS/LENGTH")?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("prefix length {len:?} is not 0-{max}"))?;
        Ok(Cidr {
            addr: mask(addr, len),
            len,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.len) == self.addr
    }
}

fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// How long a failed auto-standby waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Auto-standbys under way, and those that failed recently.
#[derive(Default)]
pub struct Book {
    inner: Mutex<BookInner>,
}

#[derive(Default)]
struct BookInner {
    in_flight: HashSet<String>,
    retry_at: HashMap<String, Instant>,
}

impl Book {
    fn lock(&self) -> std::sync::MutexGuard<'_, BookInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `id` as going to standby, unless it already is or failed
    /// too recently.
    pub fn claim(&self, id: &str) -> bool {
        let mut b = self.lock();
        if b.retry_at.get(id).is_some_and(|t| Instant::now() < *t) {
            return false;
        }
        b.retry_at.remove(id);
        b.in_flight.insert(id.to_string())
    }

    pub fn release(&self, id: &str, failed: bool) {
        let mut b = self.lock();
        b.in_flight.remove(id);
        if failed {
            b.retry_at
                .insert(id.to_string(), Instant::now() + RETRY_AFTER);
        }
    }

    pub fn in_flight(&self, id: &str) -> bool {
        self.lock().in_flight.contains(id)
    }
}

/// What the record keeps between checks and daemon runs (unix ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoStandbyRuntime {
    /// When the instance was last seen become idle; `None` while active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_inbound_ms: Option<u64>,
    /// No auto-standby before this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_until_ms: Option<u64>,
}

impl AutoStandbyRuntime {
    pub fn is_empty(&self) -> bool {
        *self == AutoStandbyRuntime::default()
    }
}

/// One TCP flow of the conntrack table, in its original direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub dport: u16,
    /// Being opened or established (not closing or closed).
    pub open: bool,
    /// How long since its last packet, when the state's timeout is known.
    pub quiet_for: Option<Duration>,
}

/// The kernel's TCP timeouts per conntrack state (`/proc/sys/net/
/// netfilter/nf_conntrack_tcp_timeout_*`), which say how long ago a flow
/// last moved: its timer restarts at the full value on every packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpTimeouts(pub Vec<(String, u64)>);

impl Default for TcpTimeouts {
    /// The kernel's defaults.
    fn default() -> Self {
        TcpTimeouts(
            [
                ("SYN_SENT", 120),
                ("SYN_RECV", 60),
                ("ESTABLISHED", 432_000),
                ("FIN_WAIT", 120),
                ("CLOSE_WAIT", 60),
                ("LAST_ACK", 30),
                ("TIME_WAIT", 120),
                ("CLOSE", 10),
            ]
            .into_iter()
            .map(|(s, t)| (s.to_string(), t))
            .collect(),
        )
    }
}

impl TcpTimeouts {
    /// The sysctl file of each state, as in `/proc/sys/net/netfilter`.
    pub fn sysctl_name(state: &str) -> String {
        format!("nf_conntrack_tcp_timeout_{}", state.to_ascii_lowercase())
    }

    fn of(&self, state: &str) -> Option<u64> {
        self.0.iter().find(|(s, _)| s == state).map(|(_, t)| *t)
    }
}

/// The IPv4 TCP flows of `/proc/net/nf_conntrack`'s text; other lines are
/// skipped (the daemon reads the table a line at a time instead).
#[cfg(test)]
pub fn parse_conntrack(text: &str, timeouts: &TcpTimeouts) -> Vec<Flow> {
    text.lines()
        .filter_map(|line| parse_flow(line, timeouts))
        .collect()
}

/// One line of `/proc/net/nf_conntrack`, if it is an IPv4 TCP flow.
pub fn parse_flow(line: &str, timeouts: &TcpTimeouts) -> Option<Flow> {
    let mut words = line.split_ascii_whitespace();
    if words.next()? != "ipv4" || words.next()? != "2" || words.next()? != "tcp" {
        return None;
    }
    let _proto_number = words.next()?;
    let remaining: u64 = words.next()?.parse().ok()?;
    let state = words.next()?;
    let (mut src, mut dst, mut dport) = (None, None, None);
    // The first src/dst/dport are the original direction's.
    for w in words {
        match w.split_once('=') {
            Some(("src", v)) if src.is_none() => src = v.parse().ok(),
            Some(("dst", v)) if dst.is_none() => dst = v.parse().ok(),
            Some(("dport", v)) if dport.is_none() => dport = v.parse().ok(),
            _ => {}
        }
    }
    let open = matches!(state, "SYN_SENT" | "SYN_RECV" | "ESTABLISHED");
    let quiet_for = timeouts
        .of(state)
        .map(|full| Duration::from_secs(full.saturating_sub(remaining)));
    Some(Flow {
        src: src?,
        dst: dst?,
        dport: dport?,
        open,
        quiet_for,
    })
}

/// Everything [`decide`] looks at besides the policy and the record.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    pub now_ms: u64,
    /// The instance is Running (not booting, stopped or in standby).
    pub running: bool,
    /// When its VMM last started (a boot or a restore; unix ms): no idle
    /// time counts from before.
    pub booted_ms: Option<u64>,
    /// Its address on lodge's network; `None` without one (then only the
    /// ingress counts).
    pub guest_ip: Option<Ipv4Addr>,
    /// What lodge's ingress recorded for it, if anything, or why its
    /// record could not be read.
    pub ingress: Result<Option<Activity>, String>,
    /// The conntrack flows, or why they could not be read.
    pub flows: Result<&'a [Flow], String>,
}

/// hypeman's auto-standby statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = AutoStandbyState)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Unsupported,
    Disabled,
    Ineligible,
    Active,
    IdleCountdown,
    ReadyForStandby,
    StandbyRequested,
    Error,
}

/// hypeman's reasons for a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = AutoStandbyReason)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    UnsupportedPlatform,
    PolicyMissing,
    PolicyDisabled,
    InstanceNotRunning,
    NetworkDisabled,
    MissingIp,
    HasVgpu,
    ActiveInboundConnections,
    IdleTimeoutNotElapsed,
    ObserverError,
    ReadyForStandby,
}

/// What [`decide`] concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub status: Status,
    pub reason: Reason,
    /// Auto-standby applies to the instance now (enabled and running).
    pub eligible: bool,
    /// Open ingress connections plus live inbound flows that count.
    pub active: u32,
    /// What the record should hold from now on.
    pub runtime: AutoStandbyRuntime,
    pub next_standby_ms: Option<u64>,
    /// Why observing failed, for `observer_error`.
    pub error: Option<String>,
    /// Put it in standby now.
    pub standby: bool,
}

impl Decision {
    fn plain(status: Status, reason: Reason, runtime: AutoStandbyRuntime) -> Self {
        Decision {
            status,
            reason,
            eligible: false,
            active: 0,
            runtime,
            next_standby_ms: None,
            error: None,
            standby: false,
        }
    }
}

/// The decision for an instance with `policy` whose record holds `rt`,
/// observed as `obs`.
pub fn decide(
    policy: Option<&AutoStandbyPolicy>,
    rt: &AutoStandbyRuntime,
    obs: &Observation<'_>,
) -> Decision {
    let now = obs.now_ms;
    // A hold that has ended is forgotten.
    let mut rt = AutoStandbyRuntime {
        hold_until_ms: rt.hold_until_ms.filter(|h| *h > now),
        ..*rt
    };
    let Some(policy) = policy else {
        return Decision::plain(
            Status::Disabled,
            Reason::PolicyMissing,
            AutoStandbyRuntime::default(),
        );
    };
    let Some(timeout) = policy.timeout() else {
        return Decision::plain(
            Status::Disabled,
            Reason::PolicyDisabled,
            AutoStandbyRuntime::default(),
        );
    };
    if !obs.running {
        // The countdown starts again at the next boot or restore.
        rt.idle_since_ms = None;
        return Decision::plain(Status::Ineligible, Reason::InstanceNotRunning, rt);
    }
    let ingress = match &obs.ingress {
        Ok(a) => *a,
        Err(e) => {
            return Decision {
                eligible: true,
                error: Some(e.clone()),
                ..Decision::plain(Status::Error, Reason::ObserverError, rt)
            };
        }
    };
    let mut active = ingress.map_or(0, |a| a.open);
    let mut last = ingress.map(|a| a.last_active_unix_ms).filter(|t| *t > 0);
    if let Some(ip) = obs.guest_ip {
        let flows = match &obs.flows {
            Ok(flows) => *flows,
            Err(e) => {
                return Decision {
                    eligible: true,
                    error: Some(e.clone()),
                    ..Decision::plain(Status::Error, Reason::ObserverError, rt)
                };
            }
        };
        for f in flows
            .iter()
            .filter(|f| f.dst == ip && policy.counts(f.src, f.dport))
        {
            if f.open {
                active = active.saturating_add(1);
            } else if let Some(quiet) = f.quiet_for {
                let at = now.saturating_sub(u64::try_from(quiet.as_millis()).unwrap_or(u64::MAX));
                last = last.max(Some(at));
            }
        }
    }
    if active > 0 {
        rt.idle_since_ms = None;
        rt.last_inbound_ms = Some(now);
        return Decision {
            eligible: true,
            active,
            ..Decision::plain(Status::Active, Reason::ActiveInboundConnections, rt)
        };
    }
    // Activity never lies in the future (clock skew between processes).
    let last = last.map(|t| t.min(now));
    rt.last_inbound_ms = rt.last_inbound_ms.max(last);
    let idle_since = rt
        .idle_since_ms
        .unwrap_or(now)
        .max(obs.booted_ms.unwrap_or(0).min(now))
        .max(last.unwrap_or(0));
    rt.idle_since_ms = Some(idle_since);
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let next = idle_since
        .saturating_add(timeout_ms)
        .max(rt.hold_until_ms.unwrap_or(0));
    let due = next <= now;
    Decision {
        eligible: true,
        next_standby_ms: Some(next),
        standby: due,
        ..Decision::plain(
            if due {
                Status::ReadyForStandby
            } else {
                Status::IdleCountdown
            },
            if due {
                Reason::ReadyForStandby
            } else {
                Reason::IdleTimeoutNotElapsed
            },
            rt,
        )
    }
}

/// hypeman's `AutoStandbyStatus`, the answer of `GET …/auto-standby/status`
/// and of a hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = AutoStandbyStatus)]
pub struct StatusView {
    pub supported: bool,
    pub configured: bool,
    pub enabled: bool,
    pub eligible: bool,
    pub status: Status,
    pub reason: Reason,
    pub active_inbound_connections: u32,
    /// What is watched: `ingress` alone for an instance without a network,
    /// else also the kernel's conntrack table.
    pub tracking_mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_inbound_activity_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_standby_at: Option<String>,
    /// Go duration until `next_standby_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countdown_remaining: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_until: Option<String>,
    /// Why the observer failed (a lodge extension, with `observer_error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The tracking mode of an instance with or without an address.
pub fn tracking_mode(has_ip: bool) -> &'static str {
    if has_ip {
        "ingress+conntrack_proc_v4_tcp"
    } else {
        "ingress"
    }
}

/// Unix ms as a time.
pub fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A time as unix ms (0 before the epoch).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl StatusView {
    /// The view of `d`, for an instance with `policy` (`requested`: the
    /// daemon is putting it in standby right now).
    pub fn of(
        policy: Option<&AutoStandbyPolicy>,
        d: &Decision,
        has_ip: bool,
        requested: bool,
        now_ms: u64,
    ) -> Self {
        let time = |ms: Option<u64>| ms.map(|m| lodge_common::time::rfc3339(at_ms(m)));
        let (status, reason) = if requested {
            (Status::StandbyRequested, Reason::ReadyForStandby)
        } else {
            (d.status, d.reason)
        };
        let counting = d.eligible && d.active == 0 && d.error.is_none();
        StatusView {
            supported: true,
            configured: policy.is_some(),
            enabled: policy.is_some_and(|p| p.enabled),
            eligible: d.eligible,
            status,
            reason,
            active_inbound_connections: d.active,
            tracking_mode: tracking_mode(has_ip).to_string(),
            idle_timeout: policy.and_then(|p| p.idle_timeout.clone()),
            idle_since: time(d.runtime.idle_since_ms.filter(|_| counting)),
            last_inbound_activity_at: time(d.runtime.last_inbound_ms),
            next_standby_at: time(d.next_standby_ms.filter(|_| counting)),
            countdown_remaining: d
                .next_standby_ms
                .filter(|_| counting)
                .map(|n| format_go_duration(Duration::from_millis(n.saturating_sub(now_ms)))),
            hold_until: time(d.runtime.hold_until_ms),
            error: d.error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T0: u64 = 1_780_000_000_000;

    fn policy(extra: serde_json::Value) -> AutoStandbyPolicy {
        let mut v = json!({"enabled": true, "idle_timeout": "10s"});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        AutoStandbyPolicy::parse(&v).expect("policy")
    }

    fn guest() -> Ipv4Addr {
        Ipv4Addr::new(10, 100, 0, 5)
    }

    fn obs(now_ms: u64, flows: &[Flow]) -> Observation<'_> {
        Observation {
            now_ms,
            running: true,
            booted_ms: Some(T0),
            guest_ip: Some(guest()),
            ingress: Ok(None),
            flows: Ok(flows),
        }
    }

    fn flow(src: [u8; 4], dport: u16, open: bool, quiet_secs: u64) -> Flow {
        Flow {
            src: Ipv4Addr::from(src),
            dst: guest(),
            dport,
            open,
            quiet_for: Some(Duration::from_secs(quiet_secs)),
        }
    }

    /// Runs the checks a daemon would, one a second from `from` to `to`
    /// (seconds after T0), carrying the record; the first second it decides
    /// standby, if any.
    fn run(
        p: &AutoStandbyPolicy,
        rt: &mut AutoStandbyRuntime,
        from: u64,
        to: u64,
        mut at: impl FnMut(u64) -> (Vec<Flow>, Option<Activity>),
    ) -> Option<u64> {
        for s in from..=to {
            let (flows, ingress) = at(s);
            let mut o = obs(T0 + s * 1000, &flows);
            o.ingress = Ok(ingress);
            let d = decide(Some(p), rt, &o);
            *rt = d.runtime;
            if d.standby {
                return Some(s);
            }
        }
        None
    }

    #[test]
    fn policies_normalise_like_hypeman() {
        let p = AutoStandbyPolicy::parse(&json!({
            "enabled": true, "idle_timeout": "90s",
            "ignore_source_cidrs": ["10.1.2.3/8", "10.0.0.0/8", " "],
            "ignore_destination_ports": [22, 9100, 22],
        }))
        .expect("valid");
        assert_eq!(p.idle_timeout.as_deref(), Some("1m30s"));
        assert_eq!(p.ignore_source_cidrs, vec!["10.0.0.0/8"]);
        assert_eq!(p.ignore_destination_ports, vec![22, 9100]);
        let off = AutoStandbyPolicy::parse(&json!({"enabled": false, "idle_timeout": "5m"}))
            .expect("valid");
        assert_eq!(
            serde_json::to_value(&off).expect("json"),
            json!({"enabled": false})
        );
        for bad in [
            json!({"enabled": true}),
            json!({"enabled": true, "idle_timeout": "0s"}),
            json!({"enabled": true, "idle_timeout": "soon"}),
            json!({"enabled": true, "idle_timeout": "1s", "ignore_source_cidrs": ["10.0.0.0"]}),
            json!({"enabled": true, "idle_timeout": "1s", "ignore_source_cidrs": ["10.0.0.0/33"]}),
            json!({"enabled": true, "idle_timeout": "1s", "ignore_destination_ports": [0]}),
            json!({"enabled": true, "idle_timeout": "1s", "ignore_destination_ports": [70000]}),
            json!({"enabled": "yes"}),
            json!({"enabled": true, "idle_timeout": "1s", "wake": true}),
            json!("1s"),
        ] {
            assert!(AutoStandbyPolicy::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn conntrack_lines_parse_in_the_original_direction() {
        let text = "\
ipv4     2 tcp      6 431990 ESTABLISHED src=10.100.0.1 dst=10.100.0.5 sport=40000 dport=8080 src=10.100.0.5 dst=10.100.0.1 sport=8080 dport=40000 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 100 TIME_WAIT src=10.100.0.1 dst=10.100.0.5 sport=40001 dport=8080 src=10.100.0.5 dst=10.100.0.1 sport=8080 dport=40001 [ASSURED] mark=0 zone=0 use=2
ipv4     2 udp      17 20 src=10.100.0.5 dst=10.100.0.1 sport=5353 dport=53 src=10.100.0.1 dst=10.100.0.5 sport=53 dport=5353 mark=0 use=2
ipv6     10 tcp      6 300 ESTABLISHED src=::1 dst=::1 sport=1 dport=2 src=::1 dst=::1 sport=2 dport=1 mark=0 use=2
ipv4     2 tcp      6 117 SYN_SENT src=10.100.0.1 dst=10.100.0.5 sport=40002 dport=22 [UNREPLIED] src=10.100.0.5 dst=10.100.0.1 sport=22 dport=40002 mark=0 use=2
garbage
";
        let flows = parse_conntrack(text, &TcpTimeouts::default());
        assert_eq!(flows.len(), 3, "{flows:?}");
        assert_eq!(flows[0].src, Ipv4Addr::new(10, 100, 0, 1));
        assert_eq!((flows[0].dport, flows[0].open), (8080, true));
        assert_eq!(flows[0].quiet_for, Some(Duration::from_secs(10)));
        assert_eq!(
            (flows[1].open, flows[1].quiet_for),
            (false, Some(Duration::from_secs(20)))
        );
        assert_eq!((flows[2].dport, flows[2].open), (22, true));
    }

    #[test]
    fn an_idle_instance_goes_after_the_timeout_and_not_before() {
        let p = policy(json!({}));
        let mut rt = AutoStandbyRuntime::default();
        // Booted at T0, seen idle from the first check.
        assert_eq!(run(&p, &mut rt, 0, 30, |_| (vec![], None)), Some(10));
        assert_eq!(rt.idle_since_ms, Some(T0));
    }

    #[test]
    fn open_connections_keep_it_awake_and_the_countdown_starts_at_their_end() {
        let p = policy(json!({}));
        let mut rt = AutoStandbyRuntime::default();
        let got = run(&p, &mut rt, 0, 60, |s| {
            // An open conntrack flow for 20 s, then one open through the
            // ingress until 30 s (which recorded activity at 30 s).
            let flows = if s < 20 {
                vec![flow([10, 100, 0, 1], 8080, true, 0)]
            } else {
                vec![]
            };
            let ingress = Activity {
                open: u32::from(s < 30),
                last_active_unix_ms: T0 + s.min(30) * 1000,
            };
            (flows, Some(ingress))
        });
        assert_eq!(got, Some(40));
    }

    #[test]
    fn closed_flows_date_the_last_activity() {
        let p = policy(json!({}));
        let mut rt = AutoStandbyRuntime::default();
        // A short request at 5 s, seen only as TIME_WAIT afterwards.
        let got = run(&p, &mut rt, 0, 60, |s| {
            let flows = if s > 5 {
                vec![flow([10, 100, 0, 1], 80, false, s - 5)]
            } else {
                vec![]
            };
            (flows, None)
        });
        assert_eq!(got, Some(15));
        assert_eq!(rt.last_inbound_ms, Some(T0 + 5_000));
    }

    #[test]
    fn ignored_sources_ports_and_other_guests_do_not_count() {
        let p = policy(json!({
            "ignore_source_cidrs": ["192.168.0.0/16"],
            "ignore_destination_ports": [9100],
        }));
        let mut rt = AutoStandbyRuntime::default();
        let got = run(&p, &mut rt, 0, 30, |_| {
            let other = Flow {
                dst: Ipv4Addr::new(10, 100, 0, 9),
                ..flow([10, 100, 0, 1], 80, true, 0)
            };
            let probe = flow([192, 168, 1, 1], 80, true, 0);
            let metrics = flow([10, 100, 0, 1], 9100, true, 0);
            (vec![other, probe, metrics], None)
        });
        assert_eq!(got, Some(10));
    }

    #[test]
    fn a_hold_postpones_and_then_lapses() {
        let p = policy(json!({}));
        let mut rt = AutoStandbyRuntime {
            hold_until_ms: Some(T0 + 25_000),
            ..AutoStandbyRuntime::default()
        };
        assert_eq!(run(&p, &mut rt, 0, 60, |_| (vec![], None)), Some(25));
        let d = decide(Some(&p), &rt, &obs(T0 + 26_000, &[]));
        assert_eq!(d.runtime.hold_until_ms, None, "an ended hold is forgotten");
    }

    #[test]
    fn a_persisted_countdown_survives_a_restart_but_not_a_new_boot() {
        let p = policy(json!({}));
        let rt = AutoStandbyRuntime {
            idle_since_ms: Some(T0 + 2_000),
            ..AutoStandbyRuntime::default()
        };
        // A daemon back at 12 s: the countdown from 2 s has run out.
        assert!(decide(Some(&p), &rt, &obs(T0 + 12_000, &[])).standby);
        // Booted again at 8 s (a stop and start between two checks).
        let mut o = obs(T0 + 12_000, &[]);
        o.booted_ms = Some(T0 + 8_000);
        let d = decide(Some(&p), &rt, &o);
        assert!(!d.standby);
        assert_eq!(d.next_standby_ms, Some(T0 + 18_000));
    }

    #[test]
    fn states_and_reasons() {
        let p = policy(json!({}));
        let rt = AutoStandbyRuntime::default();
        let d = decide(None, &rt, &obs(T0, &[]));
        assert_eq!(
            (d.status, d.reason),
            (Status::Disabled, Reason::PolicyMissing)
        );
        let off = AutoStandbyPolicy::default();
        let d = decide(Some(&off), &rt, &obs(T0, &[]));
        assert_eq!(
            (d.status, d.reason),
            (Status::Disabled, Reason::PolicyDisabled)
        );
        let mut o = obs(T0, &[]);
        o.running = false;
        let d = decide(Some(&p), &rt, &o);
        assert_eq!(
            (d.status, d.reason, d.eligible),
            (Status::Ineligible, Reason::InstanceNotRunning, false)
        );
        let mut o = obs(T0, &[]);
        o.flows = Err("no conntrack".into());
        let d = decide(Some(&p), &rt, &o);
        assert_eq!(
            (d.status, d.reason, d.standby),
            (Status::Error, Reason::ObserverError, false)
        );
        let mut o2 = obs(T0, &[]);
        o2.ingress = Err("unreadable".into());
        assert_eq!(decide(Some(&p), &rt, &o2).reason, Reason::ObserverError);
        // Without a network, conntrack is not looked at (nor its errors).
        o.guest_ip = None;
        let d = decide(Some(&p), &rt, &o);
        assert_eq!(d.status, Status::IdleCountdown);
        let open = [flow([10, 100, 0, 1], 80, true, 0)];
        let d = decide(Some(&p), &rt, &obs(T0 + 1000, &open));
        assert_eq!((d.status, d.active), (Status::Active, 1));
        let view = StatusView::of(Some(&p), &d, true, false, T0 + 1000);
        assert_eq!(view.active_inbound_connections, 1);
        assert_eq!(view.idle_since, None);
        let d = decide(Some(&p), &rt, &obs(T0 + 4000, &[]));
        let view = StatusView::of(Some(&p), &d, true, false, T0 + 4000);
        assert_eq!(view.countdown_remaining.as_deref(), Some("10s"));
        assert_eq!(view.status, Status::IdleCountdown);
        let view = StatusView::of(Some(&p), &d, true, true, T0 + 4000);
        assert_eq!(view.status, Status::StandbyRequested);
    }
}
