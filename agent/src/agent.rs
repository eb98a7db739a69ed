//! The agent runtime: builds every subsystem from a validated config, runs
//! them until `shutdown`, and tears them down in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::AdminService;
use crate::config::Config;
use crate::metrics::{self, MetricsSource};
use crate::milvus::{self as mv, Milvus};
use crate::replication::{base::Base, catalog::Filter, sink::Sink, source, SharedState};
use crate::tls::TlsFiles;
use dr_proto::pb::{admin_server::AdminServer, replication_server::ReplicationServer};

/// Addresses the agent actually bound (useful with port 0).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Bound {
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    /// The front door, when configured.
    #[serde(default)]
    pub frontdoor: Option<SocketAddr>,
    pub pid: u32,
}

/// The capture base's file in a state directory.
pub fn capture_base_path(cfg: &Config) -> std::path::PathBuf {
    cfg.state_dir.join("capture-base.redb")
}

/// `dr-agent reset-capture-base`: forgets what the standby holds. The
/// file is recreated if it cannot be opened at all (corrupt); a running
/// agent holds it locked, so this refuses while the agent runs.
pub fn reset_capture_base(cfg: &Config) -> Result<String> {
    let path = capture_base_path(cfg);
    if !path.exists() {
        return Ok(format!(
            "{}: no capture base; nothing to reset",
            path.display()
        ));
    }
    match Base::open(&path) {
        Ok(base) => {
            let lineage = base.reset()?;
            Ok(format!(
                "{}: capture base reset (new lineage {lineage}); the next pass as primary resends every row once",
                path.display()
            ))
        }
        Err(e)
            if e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<redb::DatabaseError>(),
                    Some(redb::DatabaseError::DatabaseAlreadyOpen)
                )
            }) =>
        {
            Err(e.context("the agent is running: stop it first, then reset the capture base"))
        }
        Err(e) => {
            let aside = path.with_extension(format!("redb.corrupt-{}", dr_proto::now_ms()));
            std::fs::rename(&path, &aside)
                .with_context(|| format!("move the unreadable {} aside", path.display()))?;
            Base::open(&path)?;
            Ok(format!(
                "{}: unreadable ({e:#}); moved to {} and started afresh; the next pass as primary resends every row once",
                path.display(),
                aside.display()
            ))
        }
    }
}

/// `addr` as this host reaches it (a wildcard address: loopback).
fn loopback(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, addr.port()))
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

/// Connects to a configured Milvus.
pub fn milvus_for(ep: &crate::config::MilvusEndpoint) -> Result<Milvus> {
    Ok(Milvus::connect(mv::Connection {
        endpoint: ep.endpoint.clone(),
        health_url: ep.health_url.clone(),
        authorization: ep.authorization()?,
        request_timeout: ep.request_timeout,
    })?)
}

/// Runs the agent until `shutdown` is cancelled. `on_bound` is called once
/// every listener is bound; `systemd` hears when the agent is ready, alive
/// (its watchdog) and stopping.
pub async fn run(
    cfg: Config,
    shutdown: CancellationToken,
    systemd: dr_proto::systemd::Notifier,
    on_bound: impl FnOnce(&Bound),
) -> Result<()> {
    crate::tls::install_crypto_provider();
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("create the state directory {}", cfg.state_dir.display()))?;
    let local = cfg.local();
    let milvus = milvus_for(&local.milvus)?;
    // Reloaded when the files change: certificates rotate without a restart.
    let tls = TlsFiles {
        ca: cfg.tls.ca.clone(),
        cert: cfg.tls.cert.clone(),
        key: cfg.tls.key.clone(),
    }
    .load()?;
    let state: SharedState = Default::default();
    if cfg.witnesses.is_empty() {
        // Without witnesses the configured initial primary stays primary.
        state.lock().unwrap().primary = cfg.initial_primary.clone();
    }
    let health = crate::health::not_probed();

    // Every channel notices a dead path within about one lease.
    let timing = if cfg.witnesses.is_empty() {
        None
    } else {
        Some(cfg.failover.resolve().map_err(|e| anyhow::anyhow!("{e}"))?)
    };
    let liveness = timing.map_or_else(Default::default, |t| t.liveness());

    // Listeners first: a bad address fails before anything starts.
    let grpc_listener = TcpListener::bind(cfg.listen.grpc)
        .await
        .with_context(|| format!("bind listen.grpc {}", cfg.listen.grpc))?;
    let metrics_listener = TcpListener::bind(cfg.listen.metrics)
        .await
        .with_context(|| format!("bind listen.metrics {}", cfg.listen.metrics))?;
    let frontdoor_listener = match &cfg.frontdoor {
        Some(fd) => Some(
            TcpListener::bind(fd.listen)
                .await
                .with_context(|| format!("bind frontdoor.listen {}", fd.listen))?,
        ),
        None => None,
    };
    let bound = Bound {
        grpc: grpc_listener.local_addr()?,
        metrics: metrics_listener.local_addr()?,
        frontdoor: frontdoor_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?,
        pid: std::process::id(),
    };
    std::fs::write(
        cfg.state_dir.join("bound.json"),
        serde_json::to_vec(&bound)?,
    )?;
    info!(grpc = %bound.grpc, metrics = %metrics::describe(bound.metrics), frontdoor = ?bound.frontdoor, datacenter = %cfg.datacenter, "listening");

    let sink = Sink::new(
        cfg.datacenter.clone(),
        cfg.agent_identity(cfg.peer_id()),
        milvus.clone(),
        &cfg.state_dir,
        state.clone(),
    )?;
    let alerts = crate::alert::sender(&cfg);
    let dns = crate::dns::Switcher::from_config(&cfg, alerts.clone())
        .await
        .context("dns")?;
    if let Some(d) = &dns {
        info!(provider = %d.provider.describe(), values = ?d.values.iter().map(ToString::to_string).collect::<Vec<_>>(), "DNS switching on: the service name follows the primary");
    }
    // The capture base: what the standby holds, as this agent last sent
    // it as primary (the divergent-writes export compares with it).
    let base = Arc::new(Base::open(&capture_base_path(&cfg))?);
    let witness_clients = match timing {
        Some(t) => Some(crate::failover::witness_clients(&tls, &cfg.witnesses, &t)?),
        None => None,
    };
    let divergence = match &witness_clients {
        // Without witnesses nobody is ever demoted.
        None => None,
        Some(w) => {
            let dest = match &cfg.backup.s3 {
                Some(s3) => crate::replication::divergent::Dest::S3(
                    crate::backup::Store::connect(
                        s3,
                        (cfg.backup.part_size_mib as usize) * 1024 * 1024,
                    )
                    .await
                    .context("backup.s3 (divergent writes are kept there)")?,
                ),
                None => crate::replication::divergent::Dest::Dir(cfg.state_dir.join("divergent")),
            };
            let w = w.clone();
            let reporter: crate::replication::divergent::Reporter =
                Arc::new(move |req: dr_proto::pb::AgentReport| {
                    let w = w.clone();
                    Box::pin(async move { crate::failover::send_report(&w, &req).await })
                });
            let d = crate::replication::divergent::Divergence::new(
                cfg.datacenter.clone(),
                milvus.clone(),
                base.clone(),
                Filter {
                    databases: cfg.replication.databases.clone(),
                    exclude: cfg.replication.exclude.clone(),
                },
                cfg.replication.page_rows,
                dest,
                &cfg.state_dir,
                Some(reporter),
            )?;
            sink.set_divergence(d.clone());
            Some(d)
        }
    };
    let sink_handle = sink.clone();
    // A drill's markers are writes like a client's: with a front door they
    // go through it (logged, replicated from the change log, refused when
    // fenced), else straight into Milvus.
    let drills = crate::drill::Drills::new(match bound.frontdoor {
        Some(door) => milvus_for(&crate::config::MilvusEndpoint {
            endpoint: format!("http://{}", loopback(door)),
            ..local.milvus.clone()
        })?,
        None => milvus.clone(),
    });
    let lease: crate::metrics::Lease = Default::default();
    let frontdoor_stats = cfg
        .frontdoor
        .as_ref()
        .map(|_| crate::frontdoor::Stats::default());
    // The change log: opened before the door serves and the source starts.
    let changelog = match &cfg.frontdoor {
        Some(fd) => Some(Arc::new(crate::frontdoor::changelog::ChangeLog::open(
            &cfg.state_dir.join("changelog.redb"),
            fd.change_log_max_mb * 1024 * 1024,
        )?)),
        None => None,
    };
    let sync = Arc::new(crate::frontdoor::capture::Sync::new(
        cfg.replication.mode == crate::config::Mode::Sync,
        cfg.replication.sync_timeout,
        cfg.replication.sync_on_timeout == crate::config::SyncOnTimeout::Refuse,
    ));
    if let Some(log) = &changelog {
        let mut s = state.lock().unwrap();
        s.change_log = true;
        s.log_depth = log.depth();
    }
    let gate = crate::frontdoor::Gate {
        datacenter: cfg.datacenter.clone(),
        state: state.clone(),
        lease: timing.is_some().then(|| lease.clone()),
        reads: cfg
            .frontdoor
            .as_ref()
            .map_or(Default::default(), |fd| fd.reads_when_not_primary),
    };
    let admin = AdminService {
        datacenter: cfg.datacenter.clone(),
        peer: cfg.peer_id().to_string(),
        operators: cfg.tls.operator_identities.clone(),
        milvus: milvus.clone(),
        health: health.clone(),
        state: state.clone(),
        page_rows: cfg.replication.page_rows,
        filter: Filter {
            databases: cfg.replication.databases.clone(),
            exclude: cfg.replication.exclude.clone(),
        },
        sink: sink.clone(),
        drills: drills.clone(),
        dns: dns.as_ref().map(|d| d.provider.describe()),
        frontdoor: bound.frontdoor.map(|addr| crate::frontdoor::Described {
            listen: addr.to_string(),
            stats: frontdoor_stats.clone().unwrap_or_default(),
            sync: sync.clone(),
            gate: gate.clone(),
        }),
    };
    let server_shutdown = CancellationToken::new();
    let tls_watch = tls.watch(server_shutdown.clone());
    let grpc = tokio::spawn(dr_proto::tls::serve(
        grpc_listener,
        tls.clone(),
        move || {
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(liveness.ping_every))
                .http2_keepalive_timeout(Some(liveness.ping_timeout))
                .add_service(
                    ReplicationServer::new(sink.clone())
                        .max_decoding_message_size(mv::MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(mv::MAX_MESSAGE_BYTES),
                )
                .add_service(
                    AdminServer::new(admin.clone())
                        .max_decoding_message_size(mv::MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(mv::MAX_MESSAGE_BYTES),
                )
        },
        server_shutdown.clone(),
    ));
    let backup_stats: crate::backup::SharedStats = Default::default();
    // Stopped first on shutdown: no client call is taken once replication
    // starts stopping.
    let frontdoor_stop = CancellationToken::new();
    let frontdoor_task = match (&cfg.frontdoor, frontdoor_listener) {
        (Some(_), Some(listener)) => {
            let door = crate::frontdoor::Frontdoor::new(
                gate.clone(),
                &local.milvus.endpoint,
                frontdoor_stats.clone().unwrap_or_default(),
                changelog.as_ref().map(|log| {
                    Arc::new(crate::frontdoor::capture::Capture::new(
                        log.clone(),
                        milvus.clone(),
                        sync.clone(),
                        state.clone(),
                        frontdoor_stats.clone().unwrap_or_default().log_seconds,
                    ))
                }),
            )
            .context("frontdoor")?;
            Some(tokio::spawn(crate::frontdoor::serve(
                listener,
                door,
                frontdoor_stop.clone(),
            )))
        }
        _ => None,
    };
    let metrics_task = tokio::spawn(metrics::serve(
        metrics_listener,
        MetricsSource {
            datacenter: cfg.datacenter.clone(),
            state: state.clone(),
            health: health.clone(),
            backup: backup_stats.clone(),
            lease: timing.is_some().then(|| lease.clone()),
            tls: Some(tls.clone()),
            frontdoor: frontdoor_stats,
        },
        server_shutdown.clone(),
    ));
    let milvus_last_ok_ms = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let probing = crate::health::Probing::new(
        cfg.monitoring.health_interval,
        cfg.monitoring.failure_threshold,
        timing.map(|t| Duration::from_millis(t.heartbeat_ms)),
    );
    info!(
        interval = ?probing.interval,
        threshold = probing.threshold,
        detection_bound = ?probing.detection_bound(),
        "probing the local Milvus"
    );
    let prober = crate::health::spawn_prober(
        milvus.clone(),
        health.clone(),
        milvus_last_ok_ms.clone(),
        probing,
        shutdown.clone(),
    );

    let source_stop = CancellationToken::new();
    let base_source_cfg = || -> Result<source::SourceConfig> {
        let peer = cfg.peer();
        Ok(source::SourceConfig {
            datacenter: cfg.datacenter.clone(),
            epoch: 1,
            peer_address: peer.agent.clone(),
            peer_tls: tls.client_config(&cfg.agent_identity(cfg.peer_id()))?,
            page_rows: cfg.replication.page_rows,
            max_in_flight: cfg.replication.max_in_flight,
            poll_interval: cfg.replication.poll_interval,
            reconnect_backoff: cfg.replication.reconnect_backoff,
            filter: Filter {
                databases: cfg.replication.databases.clone(),
                exclude: cfg.replication.exclude.clone(),
            },
            acting_until: None,
            liveness,
            held_retry: cfg.replication.held_retry,
            drill: Some(drills.clone()),
            anti_entropy_interval: cfg.replication.anti_entropy_interval,
            log: changelog.clone(),
            scan_interval: cfg
                .frontdoor
                .as_ref()
                .map_or(cfg.replication.poll_interval, |fd| fd.scan_interval),
        })
    };
    let mut failover_task = None;
    let source_task = if let Some(timing) = timing {
        // The witness quorum decides who is primary.
        let (fo, task) = crate::failover::start(
            crate::failover::Runtime {
                datacenter: cfg.datacenter.clone(),
                timing,
                witnesses: cfg.witnesses.clone(),
                tls: tls.clone(),
                liveness,
                peer_address: cfg.peer().agent.clone(),
                peer_identity: cfg.agent_identity(cfg.peer_id()),
                state_dir: cfg.state_dir.clone(),
                source_cfg: base_source_cfg()?,
                milvus: milvus.clone(),
                health: health.clone(),
                milvus_last_ok_ms: milvus_last_ok_ms.clone(),
                state: state.clone(),
                sink: sink_handle.clone(),
                on_promote: cfg.hooks.on_promote.clone(),
                hook_timeout: cfg.hooks.timeout,
                dns: dns.clone(),
                drills: drills.clone(),
                base: base.clone(),
                divergence: divergence.clone(),
            },
            source_stop.clone(),
        )?;
        let _ = lease.set(fo.acting_until());
        sink_handle.set_failsafe(fo);
        failover_task = Some(task);
        None
    } else if cfg.datacenter == cfg.initial_primary {
        // Without witnesses, the configured initial primary is the source
        // at epoch 1.
        if let Some(d) = dns.clone() {
            let stop = source_stop.child_token();
            let drills = drills.clone();
            tokio::spawn(async move {
                if let Some(r) = d.run(1, stop).await {
                    crate::failover::record_dns(&drills, 1, &r);
                }
            });
        }
        Some(tokio::spawn(source::run(
            base_source_cfg()?,
            milvus.clone(),
            base,
            state.clone(),
            source_stop.clone(),
        )))
    } else {
        None
    };

    tokio::spawn(crate::alert::watch::run(
        state.clone(),
        alerts.clone(),
        cfg.monitoring.lag_alert,
        cfg.datacenter.clone(),
        Duration::from_secs(1),
        shutdown.clone(),
    ));
    if cfg.backup.enabled {
        let (c, m, st) = (cfg.clone(), milvus.clone(), state.clone());
        tokio::spawn(crate::backup::schedule::run(
            c,
            m,
            st,
            backup_stats,
            alerts.clone(),
            shutdown.clone(),
        ));
    }

    on_bound(&bound);
    systemd.ready();
    // The main loop: the systemd watchdog hears from it only while the
    // servers and the failover runtime run and the shared state is not
    // stuck.
    let mut broken = false;
    loop {
        let Some(every) = systemd.watchdog_every() else {
            shutdown.cancelled().await;
            break;
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every / 2) => {}
        }
        let stopped = [
            ("the gRPC server", grpc.is_finished()),
            ("the metrics server", metrics_task.is_finished()),
            (
                "the front door",
                frontdoor_task.as_ref().is_some_and(|t| t.is_finished()),
            ),
            (
                "the failover runtime",
                failover_task.as_ref().is_some_and(|t| t.is_finished()),
            ),
        ]
        .into_iter()
        .find(|(_, done)| *done);
        match stopped {
            Some((what, _)) => {
                if !broken {
                    broken = true;
                    tracing::error!("{what} stopped unexpectedly; no longer answering the systemd watchdog (systemd restarts the agent)");
                }
            }
            None => {
                drop(state.lock().unwrap());
                drop(health.lock().unwrap());
                systemd.alive();
            }
        }
    }
    systemd.stopping();
    info!("shutting down: stopping replication first");
    // Order: stop taking client calls, then stop being a source, then the
    // probes, then the APIs.
    frontdoor_stop.cancel();
    if let Some(t) = frontdoor_task {
        let _ = tokio::time::timeout(Duration::from_secs(6), t).await;
    }
    source_stop.cancel();
    if let Some(t) = failover_task {
        if tokio::time::timeout(Duration::from_secs(15), t)
            .await
            .is_err()
        {
            warn!("the failover runtime did not stop within 15s");
        }
    }
    if let Some(t) = source_task {
        if tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .is_err()
        {
            warn!("the replication source did not stop within 10s");
        }
    }
    prober.abort();
    server_shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), grpc).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), metrics_task).await;
    tls_watch.abort();
    info!("stopped");
    Ok(())
}
