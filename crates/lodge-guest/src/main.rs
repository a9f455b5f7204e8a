//! `lodge-init`, the guest's PID 1 (see `init`), its guest agent (see
//! `agentd`), plus one host-side helper.
//!
//! Modules: `init` (PID 1) and `agentd` (the agent) share the OS-call layer
//! `sys`, the rtnetlink client `netlink`, the process starter `spawn` and the
//! virtio-serial port finder `virtio_ports`; `init` knows the agent only as
//! the configuration it hands over (`agentd::AgentConfig`), and `agentd`
//! imports nothing of `init`.
//!
//! Run as PID 1 it boots the guest. PID 1 runs the same binary again as
//! `lodge-init agent CONFIG` for the guest agent. Run as anything else it
//! refuses to touch the machine, except for `--print-config-image JSON`,
//! which writes the config-disk image for JSON to stdout: a small tool for
//! scripts and manual tests that need a config disk without the lodge daemon.

mod agentd;
mod init;
mod netlink;
mod spawn;
mod sys;
mod virtio_ports;

use std::io::Write;
use std::process::ExitCode;

use lodge_guest::GuestConfig;

const USAGE: &str = "\
usage: lodge-init                          (only as PID 1 inside a lodge guest)
       lodge-init agent CONFIG              (the guest agent, started by PID 1)
       lodge-init --print-config-image JSON   write a config-disk image to stdout";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if std::process::id() == 1 {
        init::pid1();
    }
    match args.as_slice() {
        [mode, config] if mode == "agent" => agentd::main(config),
        [flag, json] if flag == "--print-config-image" => print_config_image(json),
        [flag] if flag == "--help" || flag == "-h" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn print_config_image(json: &str) -> ExitCode {
    match GuestConfig::decode(json.as_bytes()) {
        Ok(config) => match std::io::stdout().lock().write_all(&config.encode()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lodge-init: write config image: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("lodge-init: {e}");
            ExitCode::from(2)
        }
    }
}
