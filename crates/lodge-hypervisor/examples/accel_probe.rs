//! Runs lodge's accelerator probe by hand and prints the decision:
//! `cargo run -p lodge-hypervisor --example accel_probe -- [SYSTEM_DIR] [tcg]`.
//! SYSTEM_DIR (default `$LODGE_SYSTEM_DIR`, else /var/lib/lodge/system) holds
//! `vmlinuz` and `initrd.img`. With `tcg` as second argument it instead runs
//! the self-test under TCG, to time a known-good boot.

use std::path::PathBuf;
use std::time::Duration;

use lodge_hypervisor::accel::{self, ProbeOptions};
use lodge_hypervisor::Accel;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let dir = args
        .next()
        .or_else(|| std::env::var_os("LODGE_SYSTEM_DIR"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/lodge/system"));
    let opts = ProbeOptions::for_system_dir(&dir);
    if args.next().is_some_and(|a| a == "tcg") {
        let mut opts = opts;
        opts.timeout = Duration::from_secs(60);
        let elapsed = accel::self_test(Accel::Tcg, &opts).await?;
        println!("tcg self-test: marker after {} ms", elapsed.as_millis());
        return Ok(());
    }
    let result = Accel::from_env_or_probe(&opts).await?;
    println!("{result}");
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
