//! gRPC over mutual TLS with certificates that rotate under a running
//! server.
//!
//! Our own acceptor does the TLS handshakes (with [`Tls`]'s reloading
//! resolver and verifier) and hands tonic the finished
//! `tokio_rustls::server::TlsStream`s; tonic's `Connected` impl for them
//! keeps `Request::peer_certs` (and so [`super::authorize`]) working.
//!
//! After a rotation the server asks every open connection to go away
//! (HTTP/2 GOAWAY: calls in progress, streams included, finish
//! undisturbed); clients open their next call on a new connection, with
//! the new certificates on both sides. Underneath, each certificate
//! generation is served by its own tonic server instance: a rotation stops
//! the current instance gracefully and starts the next on the same
//! listener.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Tls;

/// Bound of one TLS handshake on the server.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type Generation = (mpsc::Sender<TlsStream<TcpStream>>, CancellationToken);

fn start_generation(
    servers: &mut JoinSet<Result<()>>,
    router: tonic::transport::server::Router,
    shutdown: &CancellationToken,
) -> Generation {
    let (tx, rx) = mpsc::channel::<TlsStream<TcpStream>>(64);
    let stop = shutdown.child_token();
    // Handshake failures never reach tonic: every item is a stream.
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        Ok::<_, std::io::Error>,
    );
    let signal = stop.clone().cancelled_owned();
    servers.spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, signal)
            .await
            .context("gRPC server")
    });
    (tx, stop)
}

/// Serves the router that `router` builds on `listener`, over mutual TLS
/// with `tls`'s current certificates, until `shutdown`; then lets open
/// calls finish (the caller bounds how long it waits). `router` is called
/// once per certificate generation.
pub async fn serve(
    listener: TcpListener,
    tls: Tls,
    router: impl Fn() -> tonic::transport::server::Router,
    shutdown: CancellationToken,
) -> Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config()?);
    let mut rotated = tls.subscribe();
    let mut servers = JoinSet::new();
    let (mut tx, mut stop) = start_generation(&mut servers, router(), &shutdown);
    let mut handshakes: JoinSet<(std::net::SocketAddr, Result<TlsStream<TcpStream>, String>)> =
        JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let acceptor = acceptor.clone();
                    handshakes.spawn(async move {
                        let r = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => Ok(s),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err(format!("no handshake within {HANDSHAKE_TIMEOUT:?}")),
                        };
                        (peer, r)
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(done) = handshakes.join_next() => match done {
                Ok((_, Ok(stream))) => {
                    let _ = tx.send(stream).await;
                }
                Ok((peer, Err(e))) => debug!(%peer, error = %e, "TLS handshake failed"),
                Err(e) => debug!(error = %e, "TLS handshake task failed"),
            },
            Ok(()) = rotated.changed() => {
                info!("certificates rotated: new connections use them; open connections are asked to reconnect once their calls finish");
                stop.cancel();
                (tx, stop) = start_generation(&mut servers, router(), &shutdown);
            }
            Some(done) = servers.join_next() => match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(anyhow::anyhow!("gRPC server task: {e}")),
            },
        }
    }
    stop.cancel();
    drop(tx);
    handshakes.shutdown().await;
    while let Some(done) = servers.join_next().await {
        if let Ok(Err(e)) = done {
            return Err(e);
        }
    }
    Ok(())
}
