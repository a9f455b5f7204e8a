//! `lodge serve`: the API daemon.

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::api::{self, AppState};
use crate::auth::Auth;
use crate::config::Config;
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
    let manager = Arc::new(Manager::new(cfg.clone(), accel, images.clone())?);
    manager.sweep();
    let app = api::router(AppState {
        manager,
        auth,
        images,
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
