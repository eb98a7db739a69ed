//! Client channels between milvus-dr parties (agent ↔ agent, agent →
//! witness, witness ↔ witness, drctl → both), with liveness checks sized to
//! the failover timing.
//!
//! A path that silently drops packets does not refuse anything: without
//! checks of its own, a client notices it only by TCP's retransmission
//! back-off (minutes), and keeps using the dead connection for a while
//! after the path heals. Every channel therefore sends HTTP/2 PINGs (also
//! while idle) and drops the connection when one is not answered in time,
//! bounds the connection attempt, and turns TCP keep-alive on, so a broken
//! path is noticed within about one lease and a healed one is used again
//! within a heartbeat or two. Every party builds its channels here.
//!
//! TLS is ours, not tonic's: [`connector`] dials TCP, then does the rustls
//! handshake with the party's live certificates ([`crate::tls::Tls`]), so
//! every new connection uses the files as they are now.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tonic::codegen::http::{uri::Scheme, Uri};
use tonic::transport::{Channel, Endpoint};

use crate::tls::ClientTls;

/// How quickly a channel notices a dead path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// HTTP/2 PING interval (and TCP keep-alive idle time).
    pub ping_every: Duration,
    /// A PING not answered within this drops the connection.
    pub ping_timeout: Duration,
    /// Bound of one connection attempt (TCP and TLS).
    pub connect_timeout: Duration,
}

impl Liveness {
    /// Sized to a failover timing: a PING every heartbeat (at least
    /// 100 ms), a dead path noticed within about one lease.
    pub fn for_lease(heartbeat: Duration, lease: Duration) -> Liveness {
        let ping_every = heartbeat.max(Duration::from_millis(100));
        let half = (lease / 2).max(Duration::from_millis(200));
        Liveness {
            ping_every,
            ping_timeout: half,
            connect_timeout: half,
        }
    }
}

impl Default for Liveness {
    /// For channels outside failover timing (drctl, no witnesses): a dead
    /// path noticed within about 15 s.
    fn default() -> Liveness {
        Liveness {
            ping_every: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// An endpoint to `addr` (`https://host:port`) with `l`'s HTTP/2
/// keep-alive and connect timeout (which covers TCP *and* the TLS
/// handshake). Connect it with [`connector`] (see [`lazy`] and
/// [`connect`]), which does the mutual TLS.
pub fn endpoint(addr: &str, l: Liveness) -> anyhow::Result<Endpoint> {
    let origin: Uri = addr
        .parse()
        .map_err(|e| anyhow::anyhow!("'{addr}' is not a URL: {e}"))?;
    // tonic refuses an https URL without its own TLS; ours is in the
    // connector. Dial the same host and port; requests keep the origin.
    let mut dial = origin.clone().into_parts();
    dial.scheme = Some(Scheme::HTTP);
    if dial.path_and_query.is_none() {
        dial.path_and_query = Some("/".parse()?);
    }
    let dial = Uri::from_parts(dial).map_err(|e| anyhow::anyhow!("'{addr}': {e}"))?;
    Ok(Endpoint::from(dial)
        .origin(origin)
        .connect_timeout(l.connect_timeout)
        .http2_keep_alive_interval(l.ping_every)
        .keep_alive_timeout(l.ping_timeout)
        .keep_alive_while_idle(true))
}

/// Dials TCP ([`tcp`]) and does the mutual TLS handshake with the live
/// certificates of `tls`, insisting on HTTP/2 (ALPN `h2`).
#[derive(Clone)]
pub struct Connector {
    tcp: HttpConnector,
    tls: ClientTls,
}

/// The connector for `tls` with `l`'s TCP options.
pub fn connector(tls: &ClientTls, l: Liveness) -> Connector {
    Connector {
        tcp: tcp(l),
        tls: tls.clone(),
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tonic::codegen::Service<Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tcp = self.tcp.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let io = tcp.await?.into_inner();
            let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
                .connect(tls.server_name.clone(), io)
                .await?;
            if stream.get_ref().1.alpn_protocol() != Some(crate::tls::ALPN_H2) {
                return Err(format!(
                    "{} did not negotiate HTTP/2 (ALPN h2)",
                    tls.server_name.to_str()
                )
                .into());
            }
            Ok(TokioIo::new(stream))
        })
    }
}

/// The TCP side: no Nagle delay, a bounded connect, keep-alive probes from
/// `ping_every` idle (the kernel counts whole seconds: at least one) giving
/// up after about `ping_every + ping_timeout`, and (Linux) a user timeout
/// of `ping_timeout` for data sent and never acknowledged.
pub fn tcp(l: Liveness) -> HttpConnector {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(l.connect_timeout));
    let probe = Duration::from_secs(l.ping_every.as_secs_f64().ceil().max(1.0) as u64);
    let probes = (l.ping_timeout.as_secs_f64() / probe.as_secs_f64())
        .ceil()
        .max(1.0) as u32;
    tcp.set_keepalive(Some(probe));
    tcp.set_keepalive_interval(Some(probe));
    tcp.set_keepalive_retries(Some(probes));
    #[cfg(target_os = "linux")]
    tcp.set_tcp_user_timeout(Some(l.ping_timeout));
    tcp
}

/// A channel that connects on first use (and again after a dead path, or
/// after the server asked it to go away, e.g. after a certificate
/// rotation).
pub fn lazy(addr: &str, tls: &ClientTls, l: Liveness) -> anyhow::Result<Channel> {
    Ok(endpoint(addr, l)?.connect_with_connector_lazy(connector(tls, l)))
}

/// A channel connected now.
pub async fn connect(addr: &str, tls: &ClientTls, l: Liveness) -> anyhow::Result<Channel> {
    Ok(endpoint(addr, l)?
        .connect_with_connector(connector(tls, l))
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_path_is_noticed_within_a_lease() {
        for (hb, lease) in [(250, 2_000), (1_000, 10_000), (10, 300)] {
            let l = Liveness::for_lease(Duration::from_millis(hb), Duration::from_millis(lease));
            // Worst case: the path dies just after a PING was answered.
            let noticed = l.ping_every + l.ping_timeout;
            assert!(
                noticed <= Duration::from_millis(lease).max(Duration::from_millis(300)),
                "heartbeat {hb} lease {lease}: {noticed:?}"
            );
            assert!(
                l.connect_timeout <= Duration::from_millis(lease).max(Duration::from_millis(200))
            );
        }
    }
}
