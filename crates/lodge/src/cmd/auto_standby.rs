//! `lodge auto-standby status|hold|release ID`, and the `--auto-standby
//! DURATION|off` flag of `run` and `update` as hypeman's `auto_standby`
//! object: one API call each.

use anyhow::Result;
use reqwest::Method;

use crate::cli::{AutoStandbyCommand, AutoStandbyHoldArgs, AutoStandbyStatusArgs, InstanceArg};
use crate::client::{encode, Client};
use crate::instances::auto_standby::StatusView;

/// `--auto-standby 30s` as hypeman's policy; `off` disables it (the
/// daemon checks the duration).
pub fn policy(flag: &str) -> serde_json::Value {
    match flag.trim() {
        "off" | "no" | "false" => serde_json::json!({ "enabled": false }),
        idle => serde_json::json!({ "enabled": true, "idle_timeout": idle }),
    }
}

pub fn run(cmd: AutoStandbyCommand) -> Result<u8> {
    super::rt::runtime()?.block_on(async {
        match cmd {
            AutoStandbyCommand::Status(args) => status(args).await,
            AutoStandbyCommand::Hold(args) => hold(args).await,
            AutoStandbyCommand::Release(InstanceArg { instance }) => {
                hold(AutoStandbyHoldArgs {
                    duration: Some("0s".into()),
                    instance,
                })
                .await
            }
        }
    })
}

fn route(instance: &str, verb: &str) -> String {
    format!("/instances/{}/auto-standby/{verb}", encode(instance))
}

async fn status(args: AutoStandbyStatusArgs) -> Result<u8> {
    let client = Client::from_env()?;
    let path = route(&args.instance, "status");
    if args.json {
        let v: serde_json::Value = client.call(Method::GET, &path).await?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let s: StatusView = client.call(Method::GET, &path).await?;
    print_status(&s);
    Ok(0)
}

async fn hold(args: AutoStandbyHoldArgs) -> Result<u8> {
    let client = Client::from_env()?;
    let body = match &args.duration {
        Some(d) => serde_json::json!({ "duration": d }),
        None => serde_json::json!({}),
    };
    let s: StatusView = client
        .call_with(Method::POST, &route(&args.instance, "hold"), &body)
        .await?;
    print_status(&s);
    Ok(0)
}

fn print_status(s: &StatusView) {
    println!("status:       {} ({})", wire(&s.status), wire(&s.reason));
    if let Some(t) = &s.idle_timeout {
        println!("idle timeout: {t}");
    }
    println!("connections:  {}", s.active_inbound_connections);
    for (label, v) in [
        ("idle since:  ", &s.idle_since),
        ("last inbound:", &s.last_inbound_activity_at),
        ("standby at:  ", &s.next_standby_at),
        ("remaining:   ", &s.countdown_remaining),
        ("held until:  ", &s.hold_until),
        ("error:       ", &s.error),
    ] {
        if let Some(v) = v {
            println!("{label} {v}");
        }
    }
    println!("tracking:     {}", s.tracking_mode);
}

/// A serde enum's wire name.
fn wire<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_is_a_duration_or_off() {
        assert_eq!(
            policy("30s"),
            serde_json::json!({"enabled": true, "idle_timeout": "30s"})
        );
        assert_eq!(policy("off"), serde_json::json!({"enabled": false}));
    }
}
