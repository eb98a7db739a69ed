//! A TCP proxy that can cut every connection through it, or refuse new ones.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
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
            accepted: AtomicU64::new(0),
        });
        let i2 = inner.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = *i2.target.lock().unwrap();
                if i2.blocked.load(Ordering::SeqCst) || target.is_none() {
                    drop(client);
                    continue;
                }
                i2.accepted.fetch_add(1, Ordering::SeqCst);
                let h = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target.unwrap()).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
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

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
