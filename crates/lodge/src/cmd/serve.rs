//! `lodge serve`: the API daemon.
//!
//! Start-up order matters for networking: the default network is set up
//! (or converged) before the manager exists and before the API listens, and
//! leftovers are reaped once before the first request; any failure there
//! ends the start, so the daemon never serves half-configured. The reaper
//! then runs every `REAP_INTERVAL`, whether or not any VM runs. The
//! supervisor of lifecycle policies (expiry, restart) runs every second.

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::api::{self, AppState};
use crate::auth::Auth;
use crate::config::Config;
use crate::instances::net::{DaemonNet, REAP_INTERVAL};
use crate::instances::Manager;

pub fn run() -> Result<u8> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LODGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = Arc::new(Config::from_env()?);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(serve(cfg))?;
    Ok(0)
}

async fn serve(cfg: Arc<Config>) -> Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let auth = Arc::new(Auth::load(&cfg.data_dir)?);
    let accel = crate::accel::decide(&cfg).await?;
    let images = crate::api::open_images(&cfg)?;
    let volumes = crate::api::volumes::open(&cfg)?;
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
    let ingresses = Arc::new(crate::ingress::Ingresses::open(&cfg)?);
    ingresses.start().await;
    let app = api::router(AppState {
        manager,
        auth,
        images,
        volumes,
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
    // Follow streams may stay open for days, so a signal ends the daemon at
    // once instead of waiting for them; VMs live on under their monitors.
    tokio::select! {
        r = api::server::serve(listener, app, api::server::Limits::from_env()?) => r?,
        _ = shutdown_signal() => tracing::info!("lodge: shutting down; VMs keep running"),
    }
    Ok(())
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
