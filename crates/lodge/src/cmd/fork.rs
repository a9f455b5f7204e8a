//! `lodge fork SOURCE NAME`: the fork API of an instance or a snapshot;
//! prints the new instance's id.

use anyhow::Result;
use reqwest::Method;

use crate::cli::ForkArgs;
use crate::client::{encode, Client};
use crate::instances::Instance;

pub fn run(args: ForkArgs) -> Result<u8> {
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        let mut body = serde_json::json!({ "name": args.name });
        if let Some(s) = &args.state {
            body["target_state"] = match s.as_str() {
                "running" => "Running",
                "standby" => "Standby",
                _ => "Stopped",
            }
            .into();
        }
        let path = if args.snapshot {
            format!("/snapshots/{}/fork", encode(&args.source))
        } else {
            if args.from_running {
                body["from_running"] = true.into();
            }
            format!("/instances/{}/fork", encode(&args.source))
        };
        let inst: Instance = client.call_with(Method::POST, &path, &body).await?;
        println!("{}", inst.id);
        Ok(0)
    })
}
