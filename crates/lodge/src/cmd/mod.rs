//! One file per verb (or group of small verbs): turns parsed arguments into
//! calls and an exit code.

mod auto_standby;
mod completion;
mod cp;
mod device;
mod exec;
mod fork;
mod format;
mod images;
mod ingress;
mod instance_verbs;
mod logs_dir;
mod logs_escape;
mod progress;
mod push;
mod rt;
mod run;
mod serve;
mod snapshot;
mod standby;
mod stats;
mod supervise;
mod system;
mod volume;
mod wait;
mod ws;

use anyhow::Result;

use crate::cli::{Cli, Command};

/// Exit code for bad usage or input (what clap itself uses).
pub const EXIT_USAGE: u8 = 2;

/// The monitor and `logs --dir` parse their plain spellings by hand, before
/// clap is touched: they run once per VM (the monitor's memory is budgeted)
/// and `logs --dir --tail` is measured against GNU tail. Anything unusual
/// (help, odd spellings) returns `None` and goes through clap as usual.
pub fn fast_path(args: &[std::ffi::OsString]) -> Option<Result<u8>> {
    match args.get(1)?.to_str()? {
        "supervise" => supervise::fast(&args[2..]),
        "logs" => logs_dir::fast(&args[2..]),
        _ => None,
    }
}

pub fn dispatch(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Supervise(args) => supervise::run(args),
        Command::Logs(args) => match (&args.dir, &args.instance) {
            (Some(dir), _) => logs_dir::run(dir, &args),
            (None, Some(instance)) => instance_verbs::logs(instance, &args),
            (None, None) => anyhow::bail!("give an INSTANCE or --dir DIR"),
        },
        Command::Serve(args) => serve::run(args),
        Command::Token(args) => {
            let auth = crate::auth::Auth::load(&crate::config::data_dir_from_env())?;
            println!("{}", auth.mint("lodge", args.ttl)?);
            Ok(0)
        }
        Command::Run(args) => run::run(*args),
        Command::Ps(args) => instance_verbs::ps(args),
        Command::Stop(args) => instance_verbs::stop(args),
        Command::Start(args) => instance_verbs::start(args),
        Command::Rm(args) => instance_verbs::rm(args),
        Command::Standby(args) => standby::standby(args),
        Command::Restore(args) => standby::restore(args),
        Command::Wait(args) => wait::run(args),
        Command::Snapshot(cmd) => snapshot::run(cmd),
        Command::Fork(args) => fork::run(args),
        Command::Inspect(args) => instance_verbs::inspect(args),
        Command::Stats(args) => stats::run(args),
        Command::Update(args) => instance_verbs::update(args),
        Command::Tag(args) => images::tag(args),
        Command::System(args) => system::run(args),
        Command::Exec(args) => exec::run(args),
        Command::Cp(args) => cp::run(args),
        Command::Pull(args) => images::pull(args),
        Command::Push(args) => push::run(args),
        Command::Images(args) => images::images(args),
        Command::Rmi(args) => images::rmi(args),
        Command::MkImage(args) => images::mk_image(args),
        Command::Volume(args) => volume::run(args),
        Command::Device(cmd) => device::run(cmd),
        Command::AutoStandby(cmd) => auto_standby::run(cmd),
        Command::Completion(args) => completion::completion(args),
        Command::Man(args) => completion::man(args),
        Command::Ingress(cmd) => ingress::run(cmd),
        Command::IngressProxy(args) => ingress::proxy(args),
    }
}
