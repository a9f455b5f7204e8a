//! `lodge wait INSTANCE STATE`: the API's wait, printed as the state
//! reached; exit code 1 when the timeout expired first (or the instance
//! ended up Unknown), so scripts can branch on it.

use anyhow::{bail, Result};

use crate::cli::WaitArgs;
use crate::client::{encode, Client};
use crate::instances::wait::WaitOutcome;
use crate::instances::State;

pub fn run(args: WaitArgs) -> Result<u8> {
    let Some(target) = State::parse(&args.state) else {
        bail!(
            "unknown state {:?} (Created, Initializing, Running, Paused, Shutdown, Stopped, Standby, Unknown)",
            args.state
        );
    };
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        let out: WaitOutcome = client
            .get_with(
                &format!("/instances/{}/wait", encode(&args.instance)),
                &[("state", args.state.as_str()), ("timeout", &args.timeout)],
            )
            .await?;
        println!("{:?}", out.state);
        if let Some(e) = &out.state_error {
            eprintln!("lodge: {e}");
        }
        if out.state == target {
            Ok(0)
        } else {
            if out.timed_out {
                eprintln!(
                    "lodge: timed out after {} waiting for {:?}",
                    args.timeout, target
                );
            }
            Ok(1)
        }
    })
}
