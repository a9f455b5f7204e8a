//! `lodge standby` (optionally compressing the saved memory) and `lodge
//! restore`: one API call each; prints the id.

use anyhow::Result;
use reqwest::Method;

use crate::cli::{InstanceArg, StandbyArgs};
use crate::client::{encode, Client};
use crate::instances::Instance;

async fn verb(instance: &str, verb: &str, body: serde_json::Value) -> Result<u8> {
    let client = Client::from_env()?;
    let inst: Instance = client
        .call_with(
            Method::POST,
            &format!("/instances/{}/{verb}", encode(instance)),
            &body,
        )
        .await?;
    println!("{}", inst.id);
    Ok(0)
}

pub fn standby(args: StandbyArgs) -> Result<u8> {
    let mut body = serde_json::json!({});
    if let Some(alg) = &args.compress {
        body["compression"] = serde_json::json!({ "enabled": true, "algorithm": alg });
        if let Some(level) = args.level {
            body["compression"]["level"] = level.into();
        }
        if let Some(delay) = &args.compress_after {
            body["compression_delay"] = delay.clone().into();
        }
    }
    super::rt::runtime()?.block_on(verb(&args.instance, "standby", body))
}

pub fn restore(args: InstanceArg) -> Result<u8> {
    super::rt::runtime()?.block_on(verb(&args.instance, "restore", serde_json::json!({})))
}
