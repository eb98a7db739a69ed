//! A TCP proxy for fault injection. It can fail a path the easy way (cut
//! every connection, refuse new ones) or the hard way: go **silent**, like a
//! link that drops every packet. A silent proxy keeps every connection open
//! and accepts new ones, but forwards nothing in either direction until it
//! is healed; bytes sent meanwhile stay queued (as in the senders' socket
//! buffers behind a black hole) and flow again after the heal, as TCP's
//! retransmissions would deliver them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Proxy {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    accept: JoinHandle<()>,
}

struct Inner {
    target: Mutex<Option<SocketAddr>>,
    conns: Mutex<Vec<JoinHandle<()>>>,
    blocked: AtomicBool,
    /// `true` while the path drops everything silently.
    silent: watch::Sender<bool>,
    accepted: AtomicU64,
}

impl Proxy {
    pub async fn start() -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            target: Mutex::new(None),
            conns: Mutex::new(vec![]),
            blocked: AtomicBool::new(false),
            silent: watch::channel(false).0,
            accepted: AtomicU64::new(0),
        });
        let i2 = inner.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let target = *i2.target.lock().unwrap();
                let Some(target) = target.filter(|_| !i2.blocked.load(Ordering::SeqCst)) else {
                    drop(client);
                    continue;
                };
                i2.accepted.fetch_add(1, Ordering::SeqCst);
                let silent = i2.silent.subscribe();
                let h = tokio::spawn(async move {
                    // A silent path: the connection is not even attempted
                    // until the heal (the SYN is lost, as it were).
                    if wait_heard(&mut silent.clone()).await.is_err() {
                        return;
                    }
                    if let Ok(server) = TcpStream::connect(target).await {
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        tokio::select! {
                            _ = pump(cr, sw, silent.clone()) => {}
                            _ = pump(sr, cw, silent) => {}
                        }
                    }
                });
                i2.conns.lock().unwrap().push(h);
            }
        });
        Ok(Proxy {
            addr,
            inner,
            accept,
        })
    }

    pub fn set_target(&self, target: SocketAddr) {
        *self.inner.target.lock().unwrap() = Some(target);
    }

    /// Closes every connection through the proxy now.
    pub fn cut(&self) {
        for h in self.inner.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    /// While blocked, new connections are closed at once.
    pub fn block(&self, on: bool) {
        self.inner.blocked.store(on, Ordering::SeqCst);
        if on {
            self.cut();
        }
    }

    /// While silent, nothing passes in either direction and nothing is
    /// closed: the path behaves like one that drops every packet. Healing
    /// (`false`) lets the queued bytes through.
    pub fn silence(&self, on: bool) {
        self.inner.silent.send_replace(on);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::SeqCst)
    }
}

/// Waits until the path is not silent. Errs if the proxy is gone.
async fn wait_heard(silent: &mut watch::Receiver<bool>) -> Result<(), ()> {
    silent.wait_for(|s| !*s).await.map(|_| ()).map_err(|_| ())
}

/// Copies one direction, reading nothing while the path is silent.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut silent: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if wait_heard(&mut silent).await.is_err() {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // Went silent while waiting: stop reading.
            _ = silent.wait_for(|s| *s) => continue,
        };
        // Bytes read just before the path went silent are held until the heal.
        if wait_heard(&mut silent).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
