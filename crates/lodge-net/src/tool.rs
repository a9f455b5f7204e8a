//! Running `nft` and `tc`: their input languages are the stable interfaces of
//! nftables and traffic control, so lodge writes those rather than encoding
//! the kernel's netlink messages for them by hand. Only their exit status and
//! stderr are read; their normal output is never parsed for state.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::error::NetError;

/// Runs `prog args…` with `stdin` fed in, failing with its stderr.
pub(crate) async fn run(prog: &str, args: &[&str], stdin: Option<&str>) -> Result<(), NetError> {
    let shown = format!("{prog} {}", args.join(" "));
    let mut child = Command::new(prog)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                NetError::ToolMissing {
                    cmd: prog.to_string(),
                    package: match prog {
                        "nft" => "nftables",
                        _ => "iproute2",
                    }
                    .to_string(),
                }
            } else {
                NetError::io(format!("run {shown}"), e)
            }
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .await
            .map_err(|e| NetError::io(format!("write to {prog}"), e))?;
        // Dropping the pipe closes it so the tool sees end of input.
        drop(pipe);
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| NetError::io(format!("wait for {shown}"), e))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if stderr.contains("Operation not permitted") {
        return Err(NetError::PermissionDenied);
    }
    Err(NetError::Command {
        cmd: shown,
        status: out.status.to_string(),
        stderr,
    })
}
