//! `lodge standby` and `lodge restore`: one API call each; prints the id.

use anyhow::Result;
use reqwest::Method;

use crate::cli::InstanceArg;
use crate::client::{encode, Client};
use crate::instances::Instance;

async fn verb(instance: &str, verb: &str) -> Result<u8> {
    let client = Client::from_env()?;
    let inst: Instance = client
        .call(
            Method::POST,
            &format!("/instances/{}/{verb}", encode(instance)),
        )
        .await?;
    println!("{}", inst.id);
    Ok(0)
}

pub fn standby(args: InstanceArg) -> Result<u8> {
    super::rt::runtime()?.block_on(verb(&args.instance, "standby"))
}

pub fn restore(args: InstanceArg) -> Result<u8> {
    super::rt::runtime()?.block_on(verb(&args.instance, "restore"))
}
