//! Prometheus metrics at `GET /metrics` (plain HTTP on `listen.metrics`).
//!
//! Values are read from the live state at scrape time, so lag keeps growing
//! on every scrape while nothing new is applied.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::milvus::Health;
use crate::replication::SharedState;
use dr_proto::now_ms;

#[derive(Clone)]
pub struct MetricsSource {
    pub datacenter: String,
    pub state: SharedState,
    pub health: Arc<Mutex<Health>>,
    pub backup: crate::backup::SharedStats,
    /// With witnesses: the lease (until when this agent may act as
    /// primary), set once the failover runtime starts. `None`: no
    /// witnesses, the initial primary acts without a lease.
    pub lease: Option<Lease>,
    /// The certificates in use, for their expiry.
    pub tls: Option<dr_proto::tls::Tls>,
    /// The front door's counters, when it is on.
    pub frontdoor: Option<crate::frontdoor::Stats>,
}

/// Until when this agent may act as primary (set once failover starts).
pub type Lease = Arc<std::sync::OnceLock<tokio::sync::watch::Receiver<Option<std::time::Instant>>>>;

/// `GET /dr/primary`: 200 only while this agent acts as the replication
/// source at its epoch and (with witnesses) holds an unexpired lease; 503
/// otherwise. For health checks that route clients (Route 53 failover
/// records, load balancers) without calling any control plane.
pub fn primary_answer(src: &MetricsSource) -> (u16, String) {
    let (role, epoch) = {
        let st = src.state.lock().unwrap();
        (st.role, st.epoch)
    };
    let dc = &src.datacenter;
    if role != crate::replication::Role::Source {
        return (
            503,
            format!("{dc} is not primary (role {role}, epoch {epoch})\n"),
        );
    }
    match &src.lease {
        None => (
            200,
            format!("{dc} is primary at epoch {epoch} (no witnesses)\n"),
        ),
        Some(lease) => {
            let until = lease.get().and_then(|rx| *rx.borrow());
            let now = std::time::Instant::now();
            match until {
                Some(t) if t > now => (
                    200,
                    format!(
                        "{dc} is primary at epoch {epoch}, lease valid for {} ms\n",
                        (t - now).as_millis()
                    ),
                ),
                _ => (503, format!("{dc} holds no valid lease at epoch {epoch}\n")),
            }
        }
    }
}

fn gauge_f(reg: &mut Registry, name: &str, help: &str, v: f64) {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(v);
    reg.register(name, help, g);
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

/// The exposition text for the current state.
pub fn render(src: &MetricsSource) -> String {
    let s = src.state.lock().unwrap().clone();
    let h = src.health.lock().unwrap().clone();
    let now = now_ms();
    let mut reg = Registry::with_prefix_and_labels(
        "milvus_dr",
        [(
            std::borrow::Cow::Borrowed("datacenter"),
            std::borrow::Cow::Owned(src.datacenter.clone()),
        )]
        .into_iter(),
    );
    let role = Family::<Vec<(String, String)>, Gauge>::default();
    for r in crate::replication::Role::ALL {
        role.get_or_create(&vec![("role".into(), r.as_str().into())])
            .set(i64::from(s.role == r));
    }
    reg.register("role", "1 for the role this agent has now", role);
    gauge_f(
        &mut reg,
        "lease_remaining_seconds",
        "Primary lease time left (0 when not acting as primary)",
        s.lease_remaining_ms as f64 / 1000.0,
    );
    gauge_f(
        &mut reg,
        "epoch",
        "Newest epoch this agent knows",
        s.epoch as f64,
    );
    gauge_f(
        &mut reg,
        "milvus_healthy",
        "1 when the local Milvus passed its last health probe",
        f64::from(u8::from(h.healthy)),
    );
    gauge_f(
        &mut reg,
        "replication_connected",
        "1 while the replication stream is up",
        f64::from(u8::from(s.connected)),
    );
    if let Some(lag) = s.lag_ms(now) {
        gauge_f(
            &mut reg,
            "replication_lag_seconds",
            "Age of the newest primary state known to be applied on the standby",
            lag as f64 / 1000.0,
        );
    }
    gauge_f(
        &mut reg,
        "replication_applied_snapshot_timestamp_seconds",
        "Primary time up to which every acknowledged write is applied on the standby",
        s.applied_snapshot_ms as f64 / 1000.0,
    );
    gauge_f(
        &mut reg,
        "replication_sent_seq",
        "Last batch sequence sent",
        s.sent_seq as f64,
    );
    gauge_f(
        &mut reg,
        "replication_acked_seq",
        "Last batch sequence applied and acknowledged",
        s.acked_seq as f64,
    );
    gauge_f(
        &mut reg,
        "replication_last_pass_duration_seconds",
        "Duration of the last capture pass",
        s.last_pass_duration_ms as f64 / 1000.0,
    );
    let rows = Family::<Vec<(String, String)>, Counter>::default();
    rows.get_or_create(&vec![("op".into(), "upsert".into())])
        .inc_by(s.rows_upserted);
    rows.get_or_create(&vec![("op".into(), "delete".into())])
        .inc_by(s.rows_deleted);
    reg.register(
        "replication_rows_applied",
        "Rows applied on the standby",
        rows,
    );
    counter(
        &mut reg,
        "replication_bytes_sent",
        "Change batch bytes sent",
        s.bytes_sent,
    );
    counter(
        &mut reg,
        "replication_passes",
        "Capture passes completed",
        s.passes,
    );
    anti_entropy_metrics(&mut reg, &s);
    backup_metrics(&mut reg, &src.backup.lock().unwrap().clone());
    if s.change_log {
        change_log_metrics(&mut reg, &s);
    }
    if let Some(fd) = &src.frontdoor {
        frontdoor_metrics(&mut reg, fd);
    }
    if let Some(tls) = &src.tls {
        reg.register(
            CERT_EXPIRY.0,
            CERT_EXPIRY.1,
            certificate_expiry(&tls.expiry()),
        );
    }
    let mut out = String::new();
    let _ = encode(&mut out, &reg);
    out
}

/// `milvus_dr_certificate_expiry_timestamp_seconds` without its prefix,
/// and its help.
pub const CERT_EXPIRY: (&str, &str) = (
    "certificate_expiry_timestamp_seconds",
    "notAfter of the certificate in use (role cert) and the earliest of its CA bundle (role ca), Unix seconds",
);

/// The expiry gauge family, labelled by file and role.
pub fn certificate_expiry(
    expiry: &[dr_proto::tls::Expiry],
) -> Family<Vec<(String, String)>, Gauge> {
    let f = Family::<Vec<(String, String)>, Gauge>::default();
    for e in expiry {
        f.get_or_create(&vec![
            ("path".into(), e.path.display().to_string()),
            ("role".into(), e.role.into()),
        ])
        .set(e.not_after);
    }
    f
}

fn anti_entropy_metrics(reg: &mut Registry, s: &crate::replication::ReplicationState) {
    let ae = &s.anti_entropy;
    counter(
        reg,
        "anti_entropy_runs",
        "Anti-entropy runs completed (the standby's inventory compared with what was sent)",
        ae.runs,
    );
    let repairs = Family::<Vec<(String, String)>, Counter>::default();
    if ae.enabled && s.role == crate::replication::Role::Source {
        // A series from the start (0) for every collection the source
        // replicates, so that the first repair is an increase.
        for c in &s.collections {
            let _ = repairs.get_or_create(&vec![(
                "collection".into(),
                format!("{}.{}", c.database, c.collection),
            )]);
        }
    }
    for (collection, n) in &ae.repairs {
        repairs
            .get_or_create(&vec![("collection".into(), collection.clone())])
            .inc_by(*n);
    }
    reg.register(
        "anti_entropy_repairs",
        "Rows anti-entropy found otherwise on the standby than replication left them, and resent",
        repairs,
    );
    if ae.last_run_ms > 0 {
        gauge_f(
            reg,
            "anti_entropy_last_run_timestamp_seconds",
            "End of the newest anti-entropy run",
            ae.last_run_ms as f64 / 1000.0,
        );
    }
}

fn change_log_metrics(reg: &mut Registry, s: &crate::replication::ReplicationState) {
    gauge_f(
        reg,
        "change_log_entries",
        "Writes acknowledged to clients through the front door and not yet applied on the standby",
        s.log_depth.entries as f64,
    );
    gauge_f(
        reg,
        "change_log_bytes",
        "Size of those writes in the change log",
        s.log_depth.bytes as f64,
    );
    counter(
        reg,
        "change_log_overflows",
        "Times the change log reached frontdoor.change_log_max_mb and was cleared (a full scan pass then replicates what it held)",
        s.log_overflows,
    );
    let bypass = Family::<Vec<(String, String)>, Counter>::default();
    if s.role == crate::replication::Role::Source {
        // A series from the start (0) for every replicated collection, so
        // that the first rows found are an increase.
        for c in &s.collections {
            let _ = bypass.get_or_create(&vec![(
                "collection".into(),
                format!("{}.{}", c.database, c.collection),
            )]);
        }
    }
    for (collection, n) in &s.bypass.total {
        bypass
            .get_or_create(&vec![("collection".into(), collection.clone())])
            .inc_by(*n);
    }
    reg.register(
        "bypass_rows",
        "Rows a scan pass found on the primary that did not come through the front door (then replicated by the scan)",
        bypass,
    );
}

fn frontdoor_metrics(reg: &mut Registry, fd: &crate::frontdoor::Stats) {
    // The families are shared with the front door: registered by clone.
    reg.register(
        "frontdoor_requests",
        "Calls through the front door, by method and outcome (ok, error: a non-zero grpc-status from Milvus or no answer, refused: fenced here)",
        fd.requests.clone(),
    );
    reg.register(
        "frontdoor_request_duration_seconds",
        "Time from a call's arrival at the front door to the end of its response",
        fd.duration.clone(),
    );
    reg.register(
        "frontdoor_refused_writes",
        "Write calls refused because this agent was not the acting primary",
        fd.refused_writes.clone(),
    );
    reg.register(
        "change_log_write_seconds",
        "Time the change log takes per write, by step: prepare (rows or keys written and flushed, while Milvus applies them), acknowledge (Milvus's answer recorded: after the client has it in async mode, before in sync mode), append (a catalog change)",
        fd.log_seconds.clone(),
    );
}

fn backup_metrics(reg: &mut Registry, b: &crate::backup::BackupStats) {
    if b.last_success_ms > 0 {
        gauge_f(
            reg,
            "backup_last_success_timestamp_seconds",
            "End of the last scheduled backup that succeeded",
            b.last_success_ms as f64 / 1000.0,
        );
    }
    gauge_f(
        reg,
        "backup_last_duration_seconds",
        "Duration of the last scheduled backup run",
        b.last_duration_ms as f64 / 1000.0,
    );
    gauge_f(
        reg,
        "backup_last_bytes",
        "Bytes written by the last successful scheduled backup",
        b.last_bytes as f64,
    );
    gauge_f(
        reg,
        "backup_running",
        "1 while a scheduled backup runs",
        f64::from(u8::from(b.running)),
    );
    counter(reg, "backup_runs", "Scheduled backup runs", b.runs);
    counter(
        reg,
        "backup_failures",
        "Scheduled backup runs that failed",
        b.failures,
    );
    counter(
        reg,
        "backup_skipped",
        "Scheduled backup times passed while this datacenter was not the primary",
        b.skipped,
    );
}

/// Serves `/metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    src: MetricsSource,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use axum::{routing::get, Router};
    let primary_src = src.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let src = src.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        render(&src),
                    )
                }
            }),
        )
        .route(
            "/dr/primary",
            get(move || {
                let src = primary_src.clone();
                async move {
                    let (code, text) = primary_answer(&src);
                    (
                        axum::http::StatusCode::from_u16(code)
                            .unwrap_or(axum::http::StatusCode::SERVICE_UNAVAILABLE),
                        text,
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "OK" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

pub fn describe(addr: SocketAddr) -> String {
    format!("http://{addr}/metrics")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::ReplicationState;

    #[test]
    fn lag_metric_is_absent_until_something_is_applied_and_then_grows() {
        let state: SharedState = Default::default();
        let src = MetricsSource {
            datacenter: "dc-b".into(),
            state: state.clone(),
            health: Arc::new(Mutex::new(Health {
                healthy: true,
                detail: "ok".into(),
            })),
            backup: Default::default(),
            lease: None,
            tls: None,
            frontdoor: None,
        };
        let text = render(&src);
        assert!(
            !text.contains("milvus_dr_replication_lag_seconds"),
            "{text}"
        );
        assert!(
            text.contains("milvus_dr_milvus_healthy{datacenter=\"dc-b\"} 1"),
            "{text}"
        );
        *state.lock().unwrap() = ReplicationState {
            role: crate::replication::Role::Sink,
            applied_snapshot_ms: now_ms() - 90_000,
            ..Default::default()
        };
        let text = render(&src);
        let line = text
            .lines()
            .find(|l| l.starts_with("milvus_dr_replication_lag_seconds"))
            .expect("lag metric");
        let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((89.0..200.0).contains(&v), "{line}");
        assert!(
            text.contains("milvus_dr_role{datacenter=\"dc-b\",role=\"sink\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn anti_entropy_metrics_count_runs_and_repairs_by_collection() {
        let state: SharedState = Default::default();
        let src = MetricsSource {
            datacenter: "dc-a".into(),
            state: state.clone(),
            health: Arc::new(Mutex::new(Health {
                healthy: true,
                detail: "ok".into(),
            })),
            backup: Default::default(),
            lease: None,
            tls: None,
            frontdoor: None,
        };
        let text = render(&src);
        assert!(
            text.contains("milvus_dr_anti_entropy_runs_total{datacenter=\"dc-a\"} 0"),
            "{text}"
        );
        assert!(
            !text.contains("milvus_dr_anti_entropy_repairs_total{"),
            "{text}"
        );
        {
            let mut st = state.lock().unwrap();
            st.role = crate::replication::Role::Source;
            st.anti_entropy.enabled = true;
            st.collections = vec![dr_proto::pb::CollectionStatus {
                database: "db".into(),
                collection: "e".into(),
                state: "replicating".into(),
                ..Default::default()
            }];
        }
        let text = render(&src);
        assert!(
            text.contains(
                "milvus_dr_anti_entropy_repairs_total{datacenter=\"dc-a\",collection=\"db.e\"} 0"
            ),
            "a series from the start: {text}"
        );
        assert!(
            !text.contains("milvus_dr_anti_entropy_last_run_timestamp_seconds{"),
            "no run yet: {text}"
        );
        {
            let mut st = state.lock().unwrap();
            st.anti_entropy.runs = 4;
            st.anti_entropy.last_run_ms = 1_700_000_000_500;
            st.anti_entropy.repairs.insert("db.c".into(), 3);
            st.anti_entropy.repairs.insert("db.d".into(), 0);
        }
        let text = render(&src);
        for want in [
            "milvus_dr_anti_entropy_runs_total{datacenter=\"dc-a\"} 4",
            "milvus_dr_anti_entropy_repairs_total{datacenter=\"dc-a\",collection=\"db.c\"} 3",
            "milvus_dr_anti_entropy_repairs_total{datacenter=\"dc-a\",collection=\"db.d\"} 0",
            "milvus_dr_anti_entropy_repairs_total{datacenter=\"dc-a\",collection=\"db.e\"} 0",
            "milvus_dr_anti_entropy_last_run_timestamp_seconds{datacenter=\"dc-a\"} 1700000000.5",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
    }

    #[test]
    fn frontdoor_metrics_appear_only_with_the_front_door() {
        let mut src = MetricsSource {
            datacenter: "dc-b".into(),
            state: Default::default(),
            health: Arc::new(Mutex::new(Health {
                healthy: true,
                detail: "ok".into(),
            })),
            backup: Default::default(),
            lease: None,
            tls: None,
            frontdoor: None,
        };
        assert!(!render(&src).contains("frontdoor"));
        let fd = crate::frontdoor::Stats::default();
        src.frontdoor = Some(fd.clone());
        let text = render(&src);
        assert!(
            text.contains("milvus_dr_frontdoor_refused_writes_total{datacenter=\"dc-b\"} 0"),
            "a series from the start: {text}"
        );
        fd.refused_writes.inc();
        fd.requests
            .get_or_create(&vec![
                ("method".into(), "Insert".into()),
                ("outcome".into(), "refused".into()),
            ])
            .inc();
        fd.duration
            .get_or_create(&vec![("method".into(), "Insert".into())])
            .observe(0.002);
        let text = render(&src);
        for want in [
            "milvus_dr_frontdoor_refused_writes_total{datacenter=\"dc-b\"} 1",
            "milvus_dr_frontdoor_requests_total{datacenter=\"dc-b\",method=\"Insert\",outcome=\"refused\"} 1",
            "milvus_dr_frontdoor_request_duration_seconds_count{datacenter=\"dc-b\",method=\"Insert\"} 1",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
    }

    #[test]
    fn dr_primary_is_200_only_for_the_acting_source_with_a_valid_lease() {
        use crate::replication::Role;
        use std::time::{Duration, Instant};
        let state: SharedState = Default::default();
        let lease: Lease = Default::default();
        let mut src = MetricsSource {
            datacenter: "dc-a".into(),
            state: state.clone(),
            health: Arc::new(Mutex::new(Health {
                healthy: true,
                detail: "ok".into(),
            })),
            backup: Default::default(),
            lease: Some(lease.clone()),
            tls: None,
            frontdoor: None,
        };
        let set = |role: Role, epoch: u64| {
            let mut st = state.lock().unwrap();
            st.role = role;
            st.epoch = epoch;
        };
        set(Role::Sink, 3);
        assert_eq!(primary_answer(&src).0, 503, "a standby");
        set(Role::Source, 3);
        assert_eq!(
            primary_answer(&src).0,
            503,
            "failover not started: no lease known"
        );
        let (tx, rx) = tokio::sync::watch::channel(Some(Instant::now() + Duration::from_secs(5)));
        lease.set(rx).unwrap();
        let (code, text) = primary_answer(&src);
        assert_eq!(code, 200, "{text}");
        assert!(text.contains("epoch 3"), "{text}");
        tx.send_replace(Some(Instant::now() - Duration::from_millis(1)));
        assert_eq!(primary_answer(&src).0, 503, "the lease ran out");
        tx.send_replace(None);
        assert_eq!(primary_answer(&src).0, 503, "not acting");
        set(Role::Fenced, 3);
        assert_eq!(primary_answer(&src).0, 503, "fenced");
        src.lease = None;
        set(Role::Source, 1);
        assert_eq!(
            primary_answer(&src).0,
            200,
            "no witnesses: the initial primary"
        );
    }
}
