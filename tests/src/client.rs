//! An application that follows the service name: it finds Milvus through
//! the authoritative DNS server and writes one new key at a steady rate,
//! recording which address acknowledged each write.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dr_agent::milvus::{Connection, Milvus};
use tokio_util::sync::CancellationToken;

use crate::data::{self, Shape};

/// How the client behaves.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// The authoritative server and the name's label in [`crate::dns::ZONE`].
    pub dns: SocketAddr,
    pub label: String,
    /// The Milvus port behind each address the name may answer (in
    /// production every datacenter listens on the same port).
    pub ports: BTreeMap<String, u16>,
    pub database: String,
    pub collection: String,
    pub shape: Shape,
    /// Writes per second (one key each).
    pub rate: u32,
    /// Resolve again after this long (a TTL); always after a failed write.
    pub resolve_every: Duration,
}

/// A running client; [`NameClient::stop`] returns every acknowledged
/// write as (key, address).
pub struct NameClient {
    pub spec: ClientSpec,
    acked: Arc<Mutex<Vec<(i64, String)>>>,
    failed: Arc<AtomicU64>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl NameClient {
    /// Starts writing keys from `first_key` up.
    pub fn start(spec: ClientSpec, first_key: i64) -> NameClient {
        let acked: Arc<Mutex<Vec<(i64, String)>>> = Default::default();
        let failed: Arc<AtomicU64> = Default::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            spec.clone(),
            first_key,
            acked.clone(),
            failed.clone(),
            stop.clone(),
        ));
        NameClient {
            spec,
            acked,
            failed,
            stop,
            task,
        }
    }

    /// Writes acknowledged through `addr` so far.
    pub fn acked_at(&self, addr: &str) -> usize {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, a)| a == addr)
            .count()
    }

    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    pub async fn stop(self) -> Vec<(i64, String)> {
        self.stop.cancel();
        let _ = self.task.await;
        self.acked.lock().unwrap().clone()
    }
}

async fn run(
    spec: ClientSpec,
    mut key: i64,
    acked: Arc<Mutex<Vec<(i64, String)>>>,
    failed: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut clients: BTreeMap<String, Milvus> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / spec.rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut resolved: Option<(String, Instant)> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if resolved
            .as_ref()
            .is_none_or(|(_, at)| at.elapsed() >= spec.resolve_every)
        {
            resolved = crate::dns::answer(spec.dns, &spec.label)
                .await
                .ok()
                .and_then(|a| a.first().cloned())
                .map(|ip| (ip, Instant::now()));
        }
        let Some((ip, _)) = resolved.clone() else {
            failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let Some(port) = spec.ports.get(&ip) else {
            failed.fetch_add(1, Ordering::Relaxed);
            resolved = None;
            continue;
        };
        let m = clients.entry(ip.clone()).or_insert_with(|| {
            Milvus::connect(Connection {
                endpoint: format!("http://{ip}:{port}"),
                health_url: None,
                authorization: None,
                request_timeout: Duration::from_secs(2),
            })
            .expect("a Milvus client")
        });
        key += 1;
        let r = tokio::time::timeout(
            Duration::from_secs(3),
            data::insert(m, &spec.database, &spec.collection, spec.shape, &[key], 1),
        )
        .await;
        match r {
            Ok(Ok(())) => acked.lock().unwrap().push((key, ip)),
            _ => {
                failed.fetch_add(1, Ordering::Relaxed);
                resolved = None;
            }
        }
    }
}
