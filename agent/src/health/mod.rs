//! The local Milvus health prober: how this agent knows whether its own
//! Milvus serves (gRPC `CheckHealth` and the `/healthz` endpoint).
//!
//! The verdict turns unhealthy only after `threshold` failed probes in a
//! row (a blip is not an outage) and healthy again at the first good one.
//! Each probe is bounded by the interval, so a frozen Milvus counts as a
//! failure on time instead of hanging the prober. With witnesses, the
//! interval follows the failover profile (at most one heartbeat): a
//! primary whose Milvus died stops acting within `threshold` heartbeats.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::milvus::{Health, Milvus};

/// The thresholded verdict, shared with the failover runtime, the admin
/// API and the metrics.
pub type SharedHealth = Arc<Mutex<Health>>;

/// What the prober starts from.
pub fn not_probed() -> SharedHealth {
    Arc::new(Mutex::new(Health {
        healthy: false,
        detail: "not probed yet".into(),
    }))
}

/// How often to probe, and after how many failures in a row to call the
/// local Milvus unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probing {
    pub interval: Duration,
    pub threshold: u32,
}

impl Probing {
    /// The configured probing, no slower than one failover heartbeat when
    /// witnesses decide (`heartbeat`).
    pub fn new(interval: Duration, threshold: u32, heartbeat: Option<Duration>) -> Probing {
        let interval = match heartbeat {
            Some(hb) => interval.min(hb.max(Duration::from_millis(100))),
            None => interval,
        };
        Probing {
            interval,
            threshold: threshold.max(1),
        }
    }

    /// Longest time from a Milvus death to an unhealthy verdict.
    pub fn detection_bound(&self) -> Duration {
        // Each failed probe takes at most one interval, then waits one.
        self.interval * (2 * self.threshold)
    }
}

/// The verdict logic, apart from the clock and the network.
#[derive(Debug, Default)]
pub struct Verdict {
    failures: u32,
    probed: bool,
}

impl Verdict {
    /// Folds one probe result into `cur`; returns whether it changed.
    pub fn fold(&mut self, probe: Health, threshold: u32, cur: &mut Health) -> bool {
        self.failures = if probe.healthy { 0 } else { self.failures + 1 };
        let first = !self.probed;
        self.probed = true;
        if probe.healthy || self.failures >= threshold || first {
            let changed = cur.healthy != probe.healthy;
            *cur = probe;
            return changed;
        }
        false
    }
}

/// Probes until `stop`: updates `health` (thresholded) and `last_ok_ms`
/// (wall-clock ms of the last good probe, raw: the data-loss estimate
/// needs it promptly).
pub fn spawn_prober(
    milvus: Milvus,
    health: SharedHealth,
    last_ok_ms: Arc<AtomicI64>,
    probing: Probing,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut verdict = Verdict::default();
        loop {
            let h = match tokio::time::timeout(probing.interval, milvus.health()).await {
                Ok(h) => h,
                Err(_) => Health {
                    healthy: false,
                    detail: format!(
                        "no answer to the health probe within {:?}",
                        probing.interval
                    ),
                },
            };
            if h.healthy {
                last_ok_ms.store(dr_proto::now_ms(), Ordering::Relaxed);
            }
            {
                let mut cur = health.lock().unwrap();
                let (healthy, detail) = (h.healthy, h.detail.clone());
                if verdict.fold(h, probing.threshold, &mut cur) {
                    info!(healthy, %detail, "local Milvus health changed");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(probing.interval) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(ok: bool) -> Health {
        Health {
            healthy: ok,
            detail: if ok { "ok" } else { "down" }.into(),
        }
    }

    #[test]
    fn unhealthy_after_threshold_failures_healthy_at_the_first_success() {
        let mut v = Verdict::default();
        let mut cur = Health {
            healthy: false,
            detail: "not probed yet".into(),
        };
        assert!(v.fold(probe(true), 3, &mut cur));
        assert!(cur.healthy);
        assert!(!v.fold(probe(false), 3, &mut cur));
        assert!(!v.fold(probe(false), 3, &mut cur));
        assert!(cur.healthy, "two failures are a blip");
        assert!(v.fold(probe(false), 3, &mut cur));
        assert!(!cur.healthy);
        assert!(v.fold(probe(true), 3, &mut cur));
        assert!(cur.healthy);
    }

    #[test]
    fn the_first_probe_decides_at_once() {
        let mut v = Verdict::default();
        let mut cur = Health {
            healthy: false,
            detail: "not probed yet".into(),
        };
        v.fold(probe(false), 3, &mut cur);
        assert_eq!(cur.detail, "down");
    }

    #[test]
    fn witnesses_make_probing_follow_the_heartbeat() {
        let fast = Probing::new(Duration::from_secs(5), 3, Some(Duration::from_millis(250)));
        assert_eq!(fast.interval, Duration::from_millis(250));
        assert_eq!(fast.detection_bound(), Duration::from_millis(1500));
        let default = Probing::new(Duration::from_secs(5), 3, Some(Duration::from_secs(1)));
        assert_eq!(default.detection_bound(), Duration::from_secs(6));
        let alone = Probing::new(Duration::from_secs(5), 3, None);
        assert_eq!(alone.interval, Duration::from_secs(5));
        // A faster configured interval is kept.
        let quick = Probing::new(Duration::from_millis(200), 2, Some(Duration::from_secs(1)));
        assert_eq!(quick.interval, Duration::from_millis(200));
    }
}
