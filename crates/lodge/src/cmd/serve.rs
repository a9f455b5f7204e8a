//! `lodge serve`: the API daemon.
//!
//! Start-up order matters for networking: the default network is set up
//! (or converged) before the manager exists and before the API listens, and
//! leftovers are reaped once before the first request; any failure there
//! ends the start, so the daemon never serves half-configured. The reaper
//! then runs every `REAP_INTERVAL`, whether or not any VM runs. The
//! supervisor of lifecycle policies (expiry, restart) runs every second,
//! and so does auto-standby's watch of idle instances.
//!
//! Under systemd (`packaging/lodge.service`, `Type=notify`) the daemon
//! says `READY=1` once its socket listens, after all of the above, so
//! units ordered after it find the API answering; `STOPPING=1` on a
//! signal. The daemon's own log is text, or one JSON object per line with
//! `--log-format json` (or `LODGE_LOG_FORMAT=json`). Traces go out over
//! OTLP when the `OTEL_*` settings ask (`telemetry`), flushed at exit.

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::api::{self, AppState};
use crate::auth::Auth;
use crate::cli::{LogFormat, ServeArgs};
use crate::config::Config;
use crate::instances::net::{DaemonNet, REAP_INTERVAL};
use crate::instances::Manager;

pub fn run(args: ServeArgs) -> Result<u8> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;

    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("LODGE_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    // Built before any runtime: the exporter's client lives on its own
    // thread (see `telemetry`).
    let (telemetry, pending) = crate::telemetry::from_env();
    let log = match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter())
            .boxed(),
        // One JSON object per line; the fields of the request's span
        // (`op`, `instance`, see `metrics::track`) ride along.
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter())
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(log)
        .with(telemetry.as_ref().map(|t| t.layer()))
        .init();
    if let Some(p) = pending {
        p.log();
    }
    if telemetry.is_some() {
        tracing::info!("traces: exported over OTLP/HTTP (OTEL_* settings)");
    }
    let cfg = Arc::new(Config::from_env()?);
    let rt = tokio::runtime::Runtime::new()?;
    let served = rt.block_on(serve(cfg));
    drop(rt);
    if let Some(t) = telemetry {
        t.shutdown();
    }
    served?;
    Ok(0)
}

async fn serve(cfg: Arc<Config>) -> Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let auth = Arc::new(Auth::load(&cfg.data_dir)?);
    let accel = crate::accel::decide(&cfg).await?;
    let images = crate::api::open_images(&cfg)?;
    let pushes = lodge_images::push::Pushes::open(
        &cfg.paths().images().dir,
        images.clone(),
        lodge_images::registry::RegistryOptions::from_env(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let volumes = crate::api::volumes::open(&cfg)?;
    let devices = crate::api::devices::open(&cfg)?;
    let net = match &cfg.network {
        Some(net_cfg) => {
            let dn = DaemonNet::setup(net_cfg, &cfg.paths().network_leases())
                .await
                .map_err(network_setup_error)?;
            tracing::info!(
                "network: bridge {} ({} via gateway {}), uplink {}",
                dn.network.bridge,
                dn.network.subnet,
                dn.network.gateway(),
                dn.network.uplink
            );
            Some(Arc::new(dn))
        }
        None => {
            tracing::info!("network: off (LODGE_NETWORK=off or not root); instances get no NIC");
            None
        }
    };
    let manager = Arc::new(Manager::new(
        cfg.clone(),
        accel,
        images.clone(),
        net,
        volumes.clone(),
    )?);
    manager.sweep();
    manager.reconcile_standby().await;
    tokio::spawn(manager.clone().run_schedules());
    // Auto-standby: its countdowns and holds are in the records.
    tokio::spawn(manager.clone().run_auto_standby());
    manager
        .reap_network()
        .await
        .context("removing network leftovers of instances that are gone")?;
    if manager.network().is_some() {
        let reaper = manager.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REAP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is immediate; that reap just ran
            loop {
                tick.tick().await;
                if let Err(e) = reaper.reap_network().await {
                    tracing::warn!("network reaper: {e}");
                }
            }
        });
    }
    // The supervisor: expiries and restart policies (survives restarts: the
    // policies are in the records; the first pass runs at once).
    let supervisor = manager.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::instances::policies::POLICY_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            supervisor.enforce_policies().await;
            supervisor.run_health_checks().await;
        }
    });
    crate::metrics::init(cfg.paths());
    let metrics_export = crate::api::metrics::start_otlp_export(images.clone());
    let ingresses = Arc::new(crate::ingress::Ingresses::open(&cfg)?);
    ingresses.start().await;
    let app = api::router(AppState {
        manager,
        auth,
        pushes,
        images,
        volumes,
        devices,
        ingresses,
        bench_endpoints: cfg.bench_endpoints,
    });
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    tracing::info!(
        "lodge listening on http://{} (data dir {})",
        cfg.listen,
        cfg.data_dir.display()
    );
    let server = api::server::serve(listener, app, api::server::Limits::from_env()?);
    // The socket listens: connections wait in its backlog and are
    // answered as soon as the loop below polls the server, so a service
    // manager may start clients now.
    notify(&[sd_notify::NotifyState::Ready]);
    // Follow streams may stay open for days, so a signal ends the daemon at
    // once instead of waiting for them; VMs live on under their monitors.
    let served = tokio::select! {
        r = server => r,
        _ = shutdown_signal() => {
            notify(&[sd_notify::NotifyState::Stopping]);
            tracing::info!("lodge: shutting down; VMs keep running");
            Ok(())
        }
    };
    // What was counted since the last metrics batch goes out too.
    if let Some(export) = metrics_export {
        export.finish().await;
    }
    served?;
    Ok(())
}

/// Tells systemd (`Type=notify`) how the start goes; nothing without
/// `NOTIFY_SOCKET`. A failed notification is logged, not fatal: the
/// daemon serves either way. The monitors it starts inherit the variable,
/// which is harmless: the unit says `NotifyAccess=main`.
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("telling the service manager {state:?}: {e}");
    }
}

/// The setup error, with what to do about it when that is clear.
fn network_setup_error(e: lodge_net::NetError) -> anyhow::Error {
    match e {
        lodge_net::NetError::PermissionDenied => {
            anyhow::anyhow!("networking needs root (CAP_NET_ADMIN); set LODGE_NETWORK=off")
        }
        lodge_net::NetError::NoUplink => anyhow::anyhow!(
            "setting up the default network: {e} (or set LODGE_NETWORK=off to run without a network)"
        ),
        other => anyhow::Error::new(other).context("setting up the default network"),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
