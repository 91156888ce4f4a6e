//! The accept loops: `serve` (mini-redis's `serve(listener, shutdown)`)
//! and `serve_with`, which runs the admin and metrics listeners beside the
//! main port.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::http::{admin_app, app, metrics_app};
use crate::isolation::Peer;
use crate::runner::Runner;

/// Listeners besides the main port, each serving its own routes.
#[derive(Debug, Default)]
pub struct ExtraListeners {
    /// [`admin_app`], on a TCP port or a unix socket.
    pub admin: Option<AdminListener>,
    /// [`metrics_app`].
    pub metrics: Option<tokio::net::TcpListener>,
}

#[derive(Debug)]
pub enum AdminListener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Peer {
        let remote = *stream.remote_addr();
        // An accepted socket has a local address; if the kernel will not
        // say it, no client socket can match it and the peer is refused.
        let local = stream.io().local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        Peer::Tcp { local, remote }
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::UnixListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Peer {
        let cred = stream.io().peer_cred().ok();
        Peer::Unix { uid: cred.map(|c| c.uid()), pid: cred.and_then(|c| c.pid()) }
    }
}

/// Serves until `shutdown` resolves, then stops accepting, undeploys
/// (stopping the worker, which ends its open streams, and taking the final
/// snapshot) and returns within `stop_grace + final_snapshot_timeout`,
/// whatever clients still hold open.
pub async fn serve(
    listener: tokio::net::TcpListener,
    runner: Arc<Runner>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, ExtraListeners::default(), runner, shutdown).await
}

/// [`serve`], with an admin listener and a metrics listener beside the
/// main port; they stop when it does.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    extra: ExtraListeners,
    runner: Arc<Runner>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(target: "sandbox", "listening on http://{addr}");
    // Idle from the start: with `--prewarm`, the base goes into DENO_DIR.
    runner.start_prewarm();
    let mut side = tokio::task::JoinSet::new();
    match extra.admin {
        Some(AdminListener::Tcp(l)) => {
            tracing::info!(target: "sandbox", "admin API on http://{}", l.local_addr()?);
            let app = admin_app(runner.clone()).into_make_service_with_connect_info::<Peer>();
            side.spawn(async move { axum::serve(l, app).await });
        }
        Some(AdminListener::Unix(l)) => {
            let path = l.local_addr()?.as_pathname().map(|p| p.display().to_string()).unwrap_or_default();
            tracing::info!(target: "sandbox", "admin API on unix socket {path}");
            let app = admin_app(runner.clone()).into_make_service_with_connect_info::<Peer>();
            side.spawn(async move { axum::serve(l, app).await });
        }
        None => {}
    }
    if let Some(l) = extra.metrics {
        tracing::info!(target: "sandbox", "metrics on http://{}/metrics", l.local_addr()?);
        let app = metrics_app(runner.clone()).into_make_service_with_connect_info::<Peer>();
        side.spawn(async move { axum::serve(l, app).await });
    }
    let app = app(runner.clone()).into_make_service_with_connect_info::<Peer>();
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    });
    let mut server = std::pin::pin!(server.into_future());
    // The server ends on its own only after the shutdown began (with no
    // connection open, at once) or on an error; either way, undeploy.
    let mut drained = false;
    tokio::select! {
        biased;
        _ = stopping_rx => {}
        r = &mut server => {
            drained = true;
            r?;
        }
    }
    tracing::info!(target: "sandbox", "shutting down: no new connections; stopping the worker, then the final snapshot");
    // Undeploy while the server drains: stopping the worker ends the
    // streams it serves. The undeploy has its own bounds (grace, final
    // snapshot); connections still open after it are dropped.
    let mut undeploy = std::pin::pin!(runner.shutdown());
    loop {
        tokio::select! {
            _ = &mut undeploy => break,
            r = &mut server, if !drained => {
                drained = true;
                r?;
            }
        }
    }
    if !drained {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), &mut server).await;
    }
    side.abort_all();
    tracing::info!(target: "sandbox", "stopped");
    Ok(())
}
