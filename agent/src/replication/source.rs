//! The source side: capture passes and the stream to the sink.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use prost::Message;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::antientropy::{self, Schedule};
use super::base::{self, Base, Change};
use super::catalog::{self, Catalog, CollectionEntry, Filter};
use super::SharedState;
use crate::frontdoor::changelog::ChangeLog;
use crate::milvus::retry;
use crate::milvus::{self as mv, rows, Milvus, Pk};
use dr_proto::now_ms;
use dr_proto::pb::{self, replication_client::ReplicationClient, sink_message, source_message};
use milvus::proto::schema::FieldData;

/// Everything the source needs.
#[derive(Clone)]
pub struct SourceConfig {
    pub datacenter: String,
    pub epoch: u64,
    pub peer_address: String,
    /// The live certificates (a rotation reopens the stream with them).
    pub peer_tls: dr_proto::tls::ClientTls,
    pub page_rows: usize,
    pub max_in_flight: usize,
    pub poll_interval: Duration,
    pub reconnect_backoff: Duration,
    pub filter: Filter,
    /// With witnesses: the instant this agent must stop acting as primary
    /// unless its lease is renewed. Nothing is sent past it.
    pub acting_until: Option<tokio::sync::watch::Receiver<Option<Instant>>>,
    /// How quickly the stream notices a dead path to the sink.
    pub liveness: dr_proto::channel::Liveness,
    /// How long a collection the sink refused for a permanent reason is
    /// left out before it is tried again.
    pub held_retry: Duration,
    /// A drilled outage stops what is sent, as a dead Milvus would.
    pub drill: Option<crate::drill::Drills>,
    /// How often the standby's content is checked against the capture
    /// base ([`antientropy`](super::antientropy)); zero: never.
    pub anti_entropy_interval: Duration,
    /// With the front door: its change log, the stream's main source;
    /// scan passes then run every `scan_interval` (and when the log asks),
    /// as the backstop for writes that bypass the door.
    pub log: Option<Arc<ChangeLog>>,
    pub scan_interval: Duration,
}

/// Collections the sink holds: `database.collection` -> (why, retry at).
type Held = Arc<std::sync::Mutex<BTreeMap<String, (String, Instant)>>>;

/// Runs the source until `shutdown`: reconnects with backoff after any
/// failure, and resumes from the sink's checkpoint.
pub async fn run(
    cfg: SourceConfig,
    milvus: Milvus,
    base: Arc<Base>,
    state: SharedState,
    shutdown: CancellationToken,
) {
    {
        let mut s = state.lock().unwrap();
        if s.role != super::Role::Source {
            // The snapshot it applied as a sink is not what its standby
            // has: lag is unknown until the standby acknowledges a pass.
            s.applied_snapshot_ms = 0;
        }
        if s.role != super::Role::Source || s.epoch != cfg.epoch {
            // A drain belonged to the primary role it handed over.
            s.draining_until = None;
        }
        s.role = super::Role::Source;
        s.epoch = cfg.epoch;
        s.anti_entropy.enabled = !cfg.anti_entropy_interval.is_zero();
    }
    let mut backoff = cfg.reconnect_backoff;
    let held: Held = Default::default();
    let mut anti_entropy = Schedule::new(cfg.anti_entropy_interval);
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        match session(
            &cfg,
            &milvus,
            &base,
            &state,
            &held,
            &mut anti_entropy,
            &shutdown,
        )
        .await
        {
            Ok(Ended::Shutdown) => break,
            Ok(Ended::Rotated) => {
                // Between passes, as after any disconnect: resumes from
                // the sink's checkpoint.
                info!("certificates rotated: reopening the replication stream with the new ones");
                state.lock().unwrap().connected = false;
                backoff = cfg.reconnect_backoff;
            }
            Err(e) => {
                let msg = format!("{e:#}");
                warn!(error = %msg, "replication stream to {} ended; reconnecting in {backoff:?}", cfg.peer_address);
                {
                    let mut s = state.lock().unwrap();
                    s.connected = false;
                    s.last_error = msg;
                }
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = cfg.reconnect_backoff;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    state.lock().unwrap().connected = false;
    info!("replication source stopped");
}

/// Why a session ended without an error.
enum Ended {
    Shutdown,
    /// This agent's certificates were rotated: reopen with them.
    Rotated,
}

/// What the ack reader learned.
struct Acks {
    /// seq -> snapshot time, for pass marks not yet acknowledged.
    pass_marks: std::sync::Mutex<BTreeMap<u64, i64>>,
    /// seq -> the newest change-log position the batch completes.
    log_marks: std::sync::Mutex<BTreeMap<u64, u64>>,
}

async fn session(
    cfg: &SourceConfig,
    milvus: &Milvus,
    base: &Arc<Base>,
    state: &SharedState,
    held: &Held,
    anti_entropy: &mut Schedule,
    shutdown: &CancellationToken,
) -> Result<Ended> {
    let mut rotated = cfg.peer_tls.tls().subscribe();
    rotated.mark_unchanged();
    if let Some(log) = &cfg.log {
        let dropped = log.keep_only_epoch(cfg.epoch)?;
        if dropped > 0 {
            info!(entries = dropped, epoch = cfg.epoch, "dropped change-log entries of an older epoch (kept as that epoch's divergent writes)");
        }
    }
    let recovered = base.recover_pending()?;
    if recovered > 0 {
        info!(keys = recovered, "unacknowledged changes will be resent");
    }
    let channel = dr_proto::channel::connect(&cfg.peer_address, &cfg.peer_tls, cfg.liveness)
        .await
        .with_context(|| format!("connect to the peer agent {}", cfg.peer_address))?;
    let mut client = ReplicationClient::new(channel)
        .max_decoding_message_size(mv::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(mv::MAX_MESSAGE_BYTES);

    let (tx, rx) = mpsc::channel::<pb::SourceMessage>(cfg.max_in_flight + 2);
    tx.send(pb::SourceMessage {
        msg: Some(source_message::Msg::Hello(pb::SourceHello {
            source_dc: cfg.datacenter.clone(),
            epoch: cfg.epoch,
            lineage: base.lineage()?,
        })),
    })
    .await?;
    let mut inbound = client
        .replicate(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .context("open the replication stream")?
        .into_inner();
    let hello = match inbound.message().await? {
        Some(pb::SinkMessage {
            msg: Some(sink_message::Msg::Hello(h)),
        }) => h,
        other => bail!("the sink did not start with a hello: {other:?}"),
    };
    if hello.epoch > cfg.epoch {
        bail!(
            "the sink knows epoch {} but this source is at epoch {}: not acting as source",
            hello.epoch,
            cfg.epoch
        );
    }
    let mut lineage = base.lineage()?;
    // A base written in an older epoch describes the sink as it was then;
    // another primary may have changed it since (rows it inserted would
    // come back as inserts: duplicate keys). Never trust it.
    let base_epoch = base.epoch()?;
    let stale = base_epoch < cfg.epoch && base.next_seq()? > 1;
    if hello.lineage != lineage || stale {
        if stale {
            info!(base_epoch, epoch = cfg.epoch, "the capture base is from an older epoch; starting a resync from the standby's inventory");
        } else if !hello.lineage.is_empty() || base.next_seq()? > 1 {
            warn!(sink = %hello.lineage, ours = %lineage, "the sink's data is not from this capture base; starting a resync from its inventory");
        }
        lineage = base.reset()?;
        base.set_epoch(cfg.epoch)?;
        // Tell the sink which lineage the coming batches belong to.
        tx.send(pb::SourceMessage {
            msg: Some(source_message::Msg::Hello(pb::SourceHello {
                source_dc: cfg.datacenter.clone(),
                epoch: cfg.epoch,
                lineage: lineage.clone(),
            })),
        })
        .await?;
    }
    if base.epoch()? != cfg.epoch {
        base.set_epoch(cfg.epoch)?;
    }
    let first_seq = base.next_seq()?.max(hello.applied_seq + 1);
    info!(
        peer = %cfg.peer_address, sink_dc = %hello.sink_dc, applied_seq = hello.applied_seq,
        next_seq = first_seq, %lineage, "replication stream open"
    );
    {
        let mut s = state.lock().unwrap();
        s.connected = true;
        s.lineage = lineage.clone();
        s.acked_seq = hello.applied_seq;
        s.last_error.clear();
    }

    let window = Arc::new(Semaphore::new(cfg.max_in_flight));
    let acks = Arc::new(Acks {
        pass_marks: Default::default(),
        log_marks: Default::default(),
    });
    let broken = CancellationToken::new();
    let mut reader = {
        let (base, state, window, acks, broken, held, retry, log) = (
            base.clone(),
            state.clone(),
            window.clone(),
            acks.clone(),
            broken.clone(),
            held.clone(),
            cfg.held_retry,
            cfg.log.clone(),
        );
        tokio::spawn(async move {
            let r: Result<()> = async {
                while let Some(m) = inbound.message().await? {
                    let Some(sink_message::Msg::Ack(a)) = m.msg else {
                        bail!("unexpected message from the sink: {m:?}");
                    };
                    if !a.held.is_empty() {
                        // Not applied: resend those keys when retried.
                        base.unapply(a.seq)?;
                        let mut h = held.lock().unwrap();
                        for x in a.held {
                            if !h.contains_key(&x.collection) {
                                warn!(collection = %x.collection, error = %x.error, retry_in = ?retry, "the standby holds this collection (refused for a permanent reason); the others go on");
                            }
                            h.insert(x.collection, (x.error, Instant::now() + retry));
                        }
                    }
                    base.ack(a.seq)?;
                    window.add_permits(1);
                    let snap = {
                        let mut marks = acks.pass_marks.lock().unwrap();
                        let done: Vec<u64> = marks.range(..=a.seq).map(|(k, _)| *k).collect();
                        done.iter().filter_map(|k| marks.remove(k)).max()
                    };
                    let applied_log = {
                        let mut marks = acks.log_marks.lock().unwrap();
                        let done: Vec<u64> = marks.range(..=a.seq).map(|(k, _)| *k).collect();
                        done.iter().filter_map(|k| marks.remove(k)).max()
                    };
                    if let (Some(log), Some(upto)) = (&log, applied_log) {
                        log.trim(upto)?;
                    }
                    let mut s = state.lock().unwrap();
                    if let Some(log) = &log {
                        s.log_depth = log.depth();
                        if s.sync_degraded && s.log_depth.entries == 0 {
                            info!("sync mode: the standby applied every logged write; writes wait for it again");
                            s.sync_degraded = false;
                        }
                    }
                    s.acked_seq = a.seq;
                    if let Some(t) = snap {
                        s.applied_snapshot_ms = s.applied_snapshot_ms.max(t);
                    }
                }
                bail!("the sink closed the stream")
            }
            .await;
            broken.cancel();
            r
        })
    };

    let mut sender = Sender {
        cfg,
        base,
        held: held.clone(),
        client: client.clone(),
        catalog_seq: 0,
        tx,
        window,
        acks,
        state,
        seq: first_seq,
        lineage: lineage.clone(),
        catalog: None,
        milvus: milvus.clone(),
        log_sent: cfg.log.as_ref().map_or(0, |l| l.applied()),
        log_snapshot_sent: 0,
        touched: None,
        bypass: BTreeMap::new(),
    };
    let mut appended = cfg.log.as_ref().map(|l| l.subscribe_appended());
    let mut rescan = cfg.log.as_ref().map(|l| l.subscribe_rescan());
    // With the change log, scan passes are the slow backstop; the first
    // runs at once (it finds writes Milvus took while no agent logged them,
    // e.g. one killed between Milvus's answer and its log entry).
    let mut next_scan = Instant::now();
    let result = async {
        loop {
            let scan_now = match &cfg.log {
                None => true,
                Some(log) => {
                    let asked = log.take_rescan()?;
                    if let Some(why) = &asked {
                        info!(%why, "scan pass: asked for");
                    }
                    asked.is_some() || Instant::now() >= next_scan
                }
            };
            if scan_now {
                tokio::select! {
                    r = pass(&mut sender, milvus) => r?,
                    _ = broken.cancelled() => break,
                    _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
                }
                next_scan = Instant::now() + cfg.scan_interval;
            }
            tokio::select! {
                r = drain(&mut sender) => r?,
                _ = broken.cancelled() => break,
                _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
            }
            if anti_entropy.due() {
                tokio::select! {
                    r = check_standby(&mut sender) => r?,
                    _ = broken.cancelled() => break,
                    _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
                }
                anti_entropy.ran();
            }
            if !rotated.has_changed().unwrap_or(false) {
                let wait = if cfg.log.is_some() {
                    // Woken by writes; otherwise every poll_interval, to
                    // send the log's applied time (see `drain`).
                    next_scan
                        .saturating_duration_since(Instant::now())
                        .min(cfg.poll_interval)
                } else {
                    cfg.poll_interval
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    Some(_) = changed(&mut appended) => continue,
                    Some(_) = changed(&mut rescan) => continue,
                    _ = broken.cancelled() => break,
                    _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
                    Ok(()) = rotated.changed() => {}
                }
            }
            // Rotated: let what is in flight be acknowledged first (else it
            // is resent, harmlessly, on the new stream).
            let all = u32::try_from(cfg.max_in_flight).unwrap_or(u32::MAX);
            tokio::select! {
                _ = sender.window.acquire_many(all) => {}
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                _ = broken.cancelled() => break,
                _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
            }
            return Ok(Ended::Rotated);
        }
        Err(anyhow!("stream broken"))
    }
    .await;
    match result {
        Ok(Ended::Rotated) => {
            // Close the stream cleanly (the sink sees its end, not an
            // error), then reopen.
            drop(sender);
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut reader).await;
            reader.abort();
            Ok(Ended::Rotated)
        }
        Ok(ended) => {
            reader.abort();
            Ok(ended)
        }
        Err(e) => {
            reader.abort();
            match reader.await {
                Ok(Err(re)) => Err(re),
                _ => Err(e),
            }
        }
    }
}

struct Sender<'a> {
    cfg: &'a SourceConfig,
    base: &'a Arc<Base>,
    held: Held,
    /// For the sink's inventory when the base must be seeded.
    client: ReplicationClient<tonic::transport::Channel>,
    /// Seq of the current pass's catalog batch.
    catalog_seq: u64,
    tx: mpsc::Sender<pb::SourceMessage>,
    window: Arc<Semaphore>,
    acks: Arc<Acks>,
    state: &'a SharedState,
    seq: u64,
    lineage: String,
    /// The catalog of the newest pass (for anti-entropy).
    catalog: Option<Catalog>,
    milvus: Milvus,
    /// The newest change-log position sent on this stream.
    log_sent: u64,
    /// The newest `log_snapshot_ms` sent on this stream.
    log_snapshot_sent: i64,
    /// While a scan pass runs: keys the change log sent since it began.
    /// The pass, pinned to its start, must not undo them.
    touched: Option<std::collections::HashSet<(u64, Pk)>>,
    /// Rows the current pass found that did not come through the front
    /// door, by collection.
    bypass: BTreeMap<String, (u64, Vec<String>)>,
}

/// Resolves when the watched value changes; never if there is none or
/// its sender is gone.
async fn changed<T>(rx: &mut Option<tokio::sync::watch::Receiver<T>>) -> Option<()> {
    match rx {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

impl Sender<'_> {
    /// Stages the batch's changes in the base, then sends it (waiting for a
    /// free slot in the in-flight window).
    async fn send(&mut self, batch: pb::ChangeBatch, scope: u64, changes: &[Change]) -> Result<()> {
        self.send_staged(batch, &[(scope, changes)], None).await
    }

    /// [`Sender::send`] for changes in several scopes; `log_upto`: the
    /// newest change-log position the batch completes.
    async fn send_staged(
        &mut self,
        mut batch: pb::ChangeBatch,
        staged: &[(u64, &[Change])],
        log_upto: Option<u64>,
    ) -> Result<()> {
        if let Some(d) = &self.cfg.drill {
            d.check_source()?;
        }
        let permit = self.window.acquire().await?;
        permit.forget();
        if let Some(until) = &self.cfg.acting_until {
            let valid = until.borrow().is_some_and(|t| Instant::now() < t);
            if !valid {
                bail!("the lease is not valid: this agent must not act as primary");
            }
        }
        let seq = self.seq;
        batch.seq = seq;
        batch.epoch = self.cfg.epoch;
        batch.produced_ms = now_ms();
        self.base.stage_scopes(seq, staged)?;
        if let Some(upto) = log_upto {
            self.acks.log_marks.lock().unwrap().insert(seq, upto);
            if let Some(t) = &mut self.touched {
                for (scope, changes) in staged {
                    t.extend(changes.iter().map(|(k, _)| (*scope, k.clone())));
                }
            }
        }
        if batch.pass_snapshot_ms > 0 {
            self.acks
                .pass_marks
                .lock()
                .unwrap()
                .insert(seq, batch.pass_snapshot_ms);
        }
        let len = batch.encoded_len() as u64;
        self.tx
            .send(pb::SourceMessage {
                msg: Some(source_message::Msg::Batch(batch)),
            })
            .await
            .map_err(|_| anyhow!("stream closed"))?;
        self.seq += 1;
        let mut s = self.state.lock().unwrap();
        s.sent_seq = seq;
        s.bytes_sent += len;
        Ok(())
    }
}

/// The capture base's name for a collection, or one of its partitions.
pub fn scope_name(e: &CollectionEntry, partition: Option<&str>) -> String {
    format!(
        "{}/{}/{}",
        e.info.database,
        e.info.name,
        partition.unwrap_or("")
    )
}

/// One capture pass over every replicated collection.
async fn pass(s: &mut Sender<'_>, milvus: &Milvus) -> Result<()> {
    let started = Instant::now();
    let ts = retry("AllocTimestamp", 5, || milvus.alloc_timestamp()).await?;
    let snapshot_ms = mv::hybrid_ts_to_ms(ts);
    if s.cfg.log.is_some() {
        s.touched = Some(Default::default());
        s.bypass.clear();
    }
    let cat = send_catalog(s, milvus).await?;

    let mut statuses = Vec::new();
    for entry in &cat.collections {
        let mut st = pb::CollectionStatus {
            database: entry.info.database.clone(),
            collection: entry.info.name.clone(),
            ..Default::default()
        };
        if !entry.loaded {
            st.state = "not-loaded (not replicated until loaded on the primary)".into();
            statuses.push(st);
            continue;
        }
        let hold = {
            let mut h = s.held.lock().unwrap();
            match h.get(&entry.key()) {
                Some((why, at)) if Instant::now() < *at => Some(format!(
                    "held: the standby refuses it ({why}); retrying in {}s",
                    at.saturating_duration_since(Instant::now()).as_secs()
                )),
                Some(_) => {
                    // Time to try again: a refusal puts it back.
                    h.remove(&entry.key());
                    None
                }
                None => None,
            }
        };
        if let Some(state) = hold {
            st.state = state;
            statuses.push(st);
            continue;
        }
        let mut rows_seen = 0;
        for part in entry.scan_partitions() {
            rows_seen += scan_scope(s, milvus, entry, part.as_deref(), ts).await?;
        }
        st.state = "replicating".into();
        st.rows = rows_seen;
        statuses.push(st);
    }

    // The pass mark: once acked, everything acknowledged by the primary
    // before `snapshot_ms` is applied on the sink.
    s.send(
        pb::ChangeBatch {
            pass_snapshot_ms: snapshot_ms,
            ..Default::default()
        },
        0,
        &[],
    )
    .await?;
    let mut st = s.state.lock().unwrap();
    st.collections = statuses;
    st.last_pass_snapshot_ms = snapshot_ms;
    st.last_pass_duration_ms = started.elapsed().as_millis() as i64;
    st.passes += 1;
    st.lineage = s.lineage.clone();
    if s.cfg.log.is_some() {
        let found: u64 = s.bypass.values().map(|(n, _)| *n).sum();
        for (c, (n, _)) in &s.bypass {
            *st.bypass.total.entry(c.clone()).or_default() += n;
        }
        st.bypass.passes += 1;
        st.bypass.last_pass_rows = found;
        st.bypass.findings = s
            .bypass
            .iter()
            .map(|(c, (n, sample))| (c.clone(), *n, sample.clone()))
            .collect();
    }
    drop(st);
    if !s.bypass.is_empty() {
        for (c, (n, sample)) in &s.bypass {
            warn!(collection = %c, rows = n, sample = ?sample, "the scan found writes that did not come through the front door (written straight into the primary's Milvus, or the door was bypassed); replicated now");
        }
    }
    s.touched = None;
    s.catalog = Some(cat);
    Ok(())
}

/// Reads the catalog and sends it, so that every collection exists on the
/// standby before its rows; forgets the base of collections dropped or
/// recreated on the primary.
async fn send_catalog(s: &mut Sender<'_>, milvus: &Milvus) -> Result<Catalog> {
    send_catalog_marked(s, milvus, None).await
}

async fn send_catalog_marked(
    s: &mut Sender<'_>,
    milvus: &Milvus,
    log_upto: Option<u64>,
) -> Result<Catalog> {
    let mut cat: Catalog =
        retry("read catalog", 5, || catalog::read(milvus, &s.cfg.filter)).await?;
    if log_upto.is_some() {
        // A load through the front door is answered before it completes:
        // wait for it (up to 2 minutes), so that the standby loads too.
        let mut waited = false;
        for e in cat.collections.iter().filter(|e| !e.loaded) {
            let until = Instant::now() + Duration::from_secs(120);
            while Instant::now() < until
                && milvus
                    .load_state(&e.info.database, &e.info.name)
                    .await
                    .is_ok_and(|st| st == milvus::proto::common::LoadState::Loading)
            {
                waited = true;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if waited {
            cat = retry("read catalog", 5, || catalog::read(milvus, &s.cfg.filter)).await?;
        }
    }
    let known: BTreeMap<String, i64> = match s.base.meta("catalog_ids")? {
        None => BTreeMap::new(),
        Some(raw) => serde_json::from_slice(&raw).map_err(|e| {
            anyhow!(
                "the capture base's collection list is corrupt ({e}); fix: stop the agent and run \
                 `dr-agent --config FILE reset-capture-base` (everything is then resent once)"
            )
        })?,
    };
    let now_ids: BTreeMap<String, i64> = cat
        .collections
        .iter()
        .map(|c| (format!("{}/{}/", c.info.database, c.info.name), c.info.id))
        .collect();
    for (prefix, id) in &known {
        if now_ids.get(prefix) != Some(id) {
            for (scope, _) in s.base.scopes_with_prefix(prefix)? {
                s.base.drop_scope(&scope)?;
            }
            debug!(collection = %prefix, "forgot the capture base of a dropped or recreated collection");
        }
    }
    s.base
        .set_meta("catalog_ids", &serde_json::to_vec(&now_ids)?)?;
    let ddl = catalog::to_ddl(&cat);
    s.send_staged(
        pb::ChangeBatch {
            ddl,
            catalog: true,
            unreplicated: cat.unreplicated.clone(),
            ..Default::default()
        },
        &[(0, &[])],
        log_upto,
    )
    .await?;
    s.catalog_seq = s.seq - 1;
    Ok(cat)
}

/// An anti-entropy run, once the sink has acknowledged every batch sent (so
/// it holds exactly what the base says); nothing is sent meanwhile.
async fn check_standby(s: &mut Sender<'_>) -> Result<()> {
    let all = u32::try_from(s.cfg.max_in_flight).unwrap_or(u32::MAX);
    let _quiet = s.window.acquire_many(all).await?;
    let held = s.held.lock().unwrap().keys().cloned().collect();
    let Some(cat) = &s.catalog else {
        return Ok(());
    };
    let cx = antientropy::Ctx {
        base: s.base,
        client: s.client.clone(),
        epoch: s.cfg.epoch,
        page_rows: s.cfg.page_rows,
        state: s.state,
    };
    antientropy::run(cx, cat, &held).await
}

/// Seeds the base's scope `name` with what the sink holds of it (its
/// inventory), once the sink has applied this pass's catalog (so the
/// collection it reports is the one this pass replicates into). Returns
/// `false`, seeding nothing, if the sink refused the collection's catalog
/// entry (it is held).
async fn seed_scope(
    s: &mut Sender<'_>,
    entry: &CollectionEntry,
    partition: Option<&str>,
    name: &str,
    scope: u64,
) -> Result<bool> {
    let started = Instant::now();
    loop {
        if s.state.lock().unwrap().acked_seq >= s.catalog_seq {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the standby did not apply the catalog within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if s.held.lock().unwrap().contains_key(&entry.key()) {
        return Ok(false);
    }
    if s.cfg.log.is_some() {
        // Change-log batches may be in flight for this scope: the
        // inventory must include them.
        let all = u32::try_from(s.cfg.max_in_flight).unwrap_or(u32::MAX);
        drop(s.window.acquire_many(all).await?);
    }
    let mut pages = Inventory::open(
        &mut s.client,
        s.cfg.epoch,
        entry,
        partition,
        s.cfg.page_rows,
    )
    .await?;
    let (mut first, mut rows) = (true, 0usize);
    while let Some(entries) = pages.next().await? {
        rows += entries.len();
        s.base.seed(scope, first, &entries)?;
        first = false;
    }
    if first {
        s.base.seed(scope, true, &[])?;
    }
    s.base.mark_seeded(name)?;
    info!(
        collection = %entry.key(), partition = partition.unwrap_or(""), rows,
        ms = started.elapsed().as_millis() as u64,
        "capture base seeded from the standby's inventory: only differences will be sent"
    );
    Ok(true)
}

/// The standby's inventory of one scope: its keys with their row hashes,
/// in key order, page by page.
pub struct Inventory {
    pages: tonic::Streaming<pb::InventoryPage>,
    what: String,
}

impl Inventory {
    pub async fn open(
        client: &mut ReplicationClient<tonic::transport::Channel>,
        epoch: u64,
        entry: &CollectionEntry,
        partition: Option<&str>,
        page_rows: usize,
    ) -> Result<Inventory> {
        let req = pb::InventoryRequest {
            epoch,
            database: entry.info.database.clone(),
            collection: entry.info.name.clone(),
            partition: partition.unwrap_or_default().to_string(),
            source_id: entry.info.id,
            page_rows: page_rows as u32,
        };
        let pages = client
            .inventory(req)
            .await
            .with_context(|| format!("ask the standby what it holds of {}", entry.key()))?
            .into_inner();
        Ok(Inventory {
            pages,
            what: entry.key(),
        })
    }

    /// The next page, `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Vec<(Pk, u64)>>> {
        let Some(p) = self.pages.message().await? else {
            return Ok(None);
        };
        let keys = base::keys_from_pb(p.keys.as_ref().unwrap_or(&pb::Keys::default()));
        if keys.len() != p.hashes.len() {
            bail!(
                "the standby's inventory of {} has {} keys but {} hashes",
                self.what,
                keys.len(),
                p.hashes.len()
            );
        }
        Ok(Some(keys.into_iter().zip(p.hashes).collect()))
    }
}

/// Scans one scope in key order, one page ahead, and sends its changes.
/// Returns the number of rows seen.
async fn scan_scope(
    s: &mut Sender<'_>,
    milvus: &Milvus,
    entry: &CollectionEntry,
    partition: Option<&str>,
    ts: u64,
) -> Result<u64> {
    let info = &entry.info;
    let pk_type = info
        .pk_type()
        .ok_or_else(|| anyhow!("{}: primary key is neither Int64 nor VarChar", entry.key()))?;
    let is_str = pk_type == mv::PkType::Str;
    let name = scope_name(entry, partition);
    let scope = s.base.scope_id(&name)?;
    let seeded_now = if s.base.seeded(&name)? {
        false
    } else {
        if !seed_scope(s, entry, partition, &name, scope).await? {
            // The standby refused its catalog entry: held, not scanned.
            return Ok(0);
        }
        true
    };
    let mut deleted_extra = 0usize;
    let mut pages = mv::scan_pages(milvus, info, partition, ts, s.cfg.page_rows);

    let mut after: Option<Pk> = None;
    let mut seen = 0u64;
    while let Some(page) = pages.recv().await {
        let mv::Page { fields, keys } = page?;
        if keys.is_empty() {
            break;
        }
        debug!(collection = %entry.key(), rows = keys.len(), "scanned page");
        let hashes = rows::row_hashes(&fields)?;
        let last = keys.last().cloned();
        let page = base::indexed(keys, &hashes);
        seen += page.len() as u64;
        let base_rows = s.base.range(scope, after.as_ref(), last.as_ref(), is_str)?;
        let mut diff = base::diff_page(&page, &base_rows);
        after = last;
        if let Some(t) = &s.touched {
            // Sent by the change log since the pass began: newer than this
            // page.
            diff.inserts
                .retain(|&i| !t.contains(&(scope, page[i].0.clone())));
            diff.upserts
                .retain(|&i| !t.contains(&(scope, page[i].0.clone())));
            diff.deletes.retain(|k| !t.contains(&(scope, k.clone())));
            if !seeded_now {
                let known = |k: &Pk| {
                    base_rows
                        .binary_search_by(|(b, _)| b.cmp(k))
                        .is_ok_and(|i| base_rows[i].1 != base::UNKNOWN)
                };
                let found: Vec<&Pk> = diff
                    .inserts
                    .iter()
                    .map(|&i| &page[i].0)
                    .chain(
                        diff.upserts
                            .iter()
                            .map(|&i| &page[i].0)
                            .filter(|k| known(k)),
                    )
                    .chain(diff.deletes.iter().filter(|k| known(k)))
                    .collect();
                note_bypass(s, entry, &found);
            }
        }
        if diff.is_empty() {
            if s.cfg.log.is_some() {
                drain(s).await?;
            }
            continue;
        }
        deleted_extra += diff.deletes.len();
        let mut changes: Vec<Change> =
            Vec::with_capacity(diff.inserts.len() + diff.upserts.len() + diff.deletes.len());
        for &i in diff.inserts.iter().chain(diff.upserts.iter()) {
            changes.push((page[i].0.clone(), Some(page[i].1)));
        }
        for k in &diff.deletes {
            changes.push((k.clone(), None));
        }
        let encode = |idx: &[usize]| -> Option<pb::Rows> {
            if idx.is_empty() {
                return None;
            }
            let cols = if idx.len() == page.len() {
                fields.clone()
            } else {
                rows::take(&fields, idx)
            };
            Some(pb::Rows {
                num_rows: idx.len() as u64,
                fields: cols.iter().map(|f| f.encode_to_vec()).collect(),
            })
        };
        let batch = pb::ChangeBatch {
            database: info.database.clone(),
            collection: info.name.clone(),
            partition: partition.unwrap_or_default().to_string(),
            inserts: encode(&diff.inserts),
            upserts: encode(&diff.upserts),
            deletes: (!diff.deletes.is_empty()).then(|| base::keys_to_pb(&diff.deletes)),
            ..Default::default()
        };
        s.send(batch, scope, &changes).await?;
        if s.cfg.log.is_some() {
            drain(s).await?;
        }
    }

    // Whatever the base still has after the last key is gone from the primary.
    let mut rest = s.base.range(scope, after.as_ref(), None, is_str)?;
    if let Some(t) = &s.touched {
        rest.retain(|(k, _)| !t.contains(&(scope, k.clone())));
        if !seeded_now {
            let found: Vec<&Pk> = rest
                .iter()
                .filter(|(_, h)| *h != base::UNKNOWN)
                .map(|(k, _)| k)
                .collect();
            note_bypass(s, entry, &found);
        }
    }
    deleted_extra += rest.len();
    if seeded_now && deleted_extra > 0 {
        warn!(
            collection = %entry.key(), partition = partition.unwrap_or(""), rows = deleted_extra,
            "the standby held rows the primary does not (written there, or deleted on the primary since it last replicated): deleting them on the standby"
        );
    }
    for chunk in rest.chunks(8192) {
        let keys: Vec<Pk> = chunk.iter().map(|(k, _)| k.clone()).collect();
        let changes: Vec<Change> = keys.iter().map(|k| (k.clone(), None)).collect();
        s.send(
            pb::ChangeBatch {
                database: info.database.clone(),
                collection: info.name.clone(),
                partition: partition.unwrap_or_default().to_string(),
                deletes: Some(base::keys_to_pb(&keys)),
                ..Default::default()
            },
            scope,
            &changes,
        )
        .await?;
    }
    Ok(seen)
}

/// Counts rows a scan pass found that the change log did not send.
fn note_bypass(s: &mut Sender<'_>, entry: &CollectionEntry, found: &[&Pk]) {
    if found.is_empty() {
        return;
    }
    let (n, sample) = s.bypass.entry(entry.key()).or_default();
    *n += found.len() as u64;
    for k in found.iter().take(5usize.saturating_sub(sample.len())) {
        sample.push(k.to_string());
    }
}

/// Rows or deletes of one target being gathered into one batch.
struct Gathered {
    database: String,
    collection: String,
    partition: String,
    rows: Option<Vec<FieldData>>,
    deletes: Vec<Pk>,
    n: usize,
}

impl Gathered {
    /// A batch for `e`'s target, starting with its rows or deletes.
    fn start(
        e: &pb::ChangeLogEntry,
        rows: Option<Vec<FieldData>>,
        n: usize,
        deletes: Vec<Pk>,
    ) -> Gathered {
        Gathered {
            database: e.database.clone(),
            collection: e.collection.clone(),
            partition: e.partition.clone(),
            rows,
            deletes,
            n,
        }
    }
}

/// Sends what the change log holds beyond what this stream sent:
/// consecutive writes to one collection (and partition) are gathered into
/// one batch of upserts, or of deletes, in log order.
/// How often an idle change log tells the standby how far it is applied.
const LOG_SNAPSHOT_EVERY_MS: i64 = 250;

async fn drain(s: &mut Sender<'_>) -> Result<()> {
    let Some(log) = s.cfg.log.clone() else {
        return Ok(());
    };
    loop {
        let as_of = log.readable_as_of();
        let entries = log.read_after(s.log_sent, 1024, 32 << 20)?;
        let Some(&(last, _)) = entries.last() else {
            // Every write acknowledged through the door before `as_of` is
            // on the stream: say so after it, so that the standby's applied
            // time (its lag, the witnesses' data-loss estimate, `verify
            // --settle`) advances between scan passes, writes or none.
            if as_of >= s.log_snapshot_sent + LOG_SNAPSHOT_EVERY_MS {
                let mark = pb::ChangeBatch {
                    log_snapshot_ms: as_of,
                    ..Default::default()
                };
                s.send_staged(mark, &[(0, &[])], None).await?;
                s.log_snapshot_sent = as_of;
            }
            return Ok(());
        };
        let mut acc: Option<Gathered> = None;
        let mut upto = s.log_sent;
        let mut marked = s.log_sent;
        for (pos, e) in entries {
            if e.epoch != s.cfg.epoch {
                upto = pos;
                continue;
            }
            if e.catalog {
                if let Some(g) = acc.take() {
                    flush(s, g, upto).await?;
                }
                let milvus = s.milvus.clone();
                let cat = send_catalog_marked(s, &milvus, Some(pos)).await?;
                s.catalog = Some(cat);
                upto = pos;
                marked = pos;
                continue;
            }
            let Some(entry) = collection_of(s, &e.database, &e.collection).await? else {
                // Not replicated (filtered out), or gone.
                upto = pos;
                continue;
            };
            let target = |g: &Gathered| {
                g.database == e.database
                    && g.collection == e.collection
                    && g.partition == e.partition
            };
            if let Some(keys) = &e.deletes {
                let keys = base::keys_from_pb(keys);
                match &mut acc {
                    Some(g) if target(g) && g.rows.is_none() && g.n + keys.len() <= 65_536 => {
                        g.n += keys.len();
                        g.deletes.extend(keys);
                    }
                    _ => {
                        if let Some(g) = acc.take() {
                            flush(s, g, upto).await?;
                            marked = upto;
                        }
                        acc = Some(Gathered::start(&e, None, keys.len(), keys));
                    }
                }
            } else if !e.rows_request.is_empty() {
                let fields = log_rows(&entry.info, &e)?;
                let n = rows::num_rows(&fields)?;
                let mut merged = false;
                if let Some(g) = &mut acc {
                    if target(g) && g.n + n <= s.cfg.page_rows {
                        if let Some(into) = &mut g.rows {
                            merged = rows::append(into, &fields);
                        }
                        if merged {
                            g.n += n;
                        }
                    }
                }
                if !merged {
                    if let Some(g) = acc.take() {
                        flush(s, g, upto).await?;
                        marked = upto;
                    }
                    acc = Some(Gathered::start(&e, Some(fields), n, vec![]));
                }
            }
            upto = pos;
        }
        if let Some(g) = acc.take() {
            flush(s, g, last).await?;
        } else if marked < last {
            // Only entries that need nothing sent: mark them applied once
            // what precedes them is.
            s.send_staged(pb::ChangeBatch::default(), &[(0, &[])], Some(last))
                .await?;
        }
        s.log_sent = last;
    }
}

/// The replicated collection `database.collection`, reading the catalog
/// again (and sending it) when it is not known yet.
async fn collection_of(
    s: &mut Sender<'_>,
    database: &str,
    collection: &str,
) -> Result<Option<CollectionEntry>> {
    let find = |c: &Option<Catalog>| {
        c.as_ref().and_then(|c| {
            c.collections
                .iter()
                .find(|e| e.info.database == database && e.info.name == collection)
                .cloned()
        })
    };
    if let Some(e) = find(&s.catalog) {
        return Ok(Some(e));
    }
    let milvus = s.milvus.clone();
    let cat = send_catalog(s, &milvus).await?;
    s.catalog = Some(cat);
    Ok(find(&s.catalog))
}

/// The rows of a logged insert or upsert, as the standby will upsert
/// them: with the keys Milvus chose when the collection has auto-id.
fn log_rows(info: &mv::CollectionInfo, e: &pb::ChangeLogEntry) -> Result<Vec<FieldData>> {
    use milvus::proto::schema::{
        field_data::Field, scalar_field::Data, LongArray, ScalarField, StringArray,
    };
    let req = milvus::proto::milvus::InsertRequest::decode(e.rows_request.as_slice())
        .context("decode a logged insert")?;
    let mut fields = req.fields_data;
    let pk = info
        .primary_field()
        .ok_or_else(|| anyhow!("{}: no primary key", info.name))?;
    if !fields.iter().any(|f| f.field_name == pk.name) {
        let ids = e.ids.clone().unwrap_or_default();
        let data = if ids.strs.is_empty() {
            Data::LongData(LongArray { data: ids.ints })
        } else {
            Data::StringData(StringArray { data: ids.strs })
        };
        fields.push(FieldData {
            r#type: pk.data_type,
            field_name: pk.name.clone(),
            field_id: pk.field_id,
            field: Some(Field::Scalars(ScalarField {
                data: Some(data),
                valid_data: vec![],
            })),
            ..Default::default()
        });
    }
    mv::normalize(info, &mut fields);
    Ok(fields)
}

/// Sends one gathered batch; `log_upto`: the change-log position it
/// completes.
async fn flush(s: &mut Sender<'_>, g: Gathered, log_upto: u64) -> Result<()> {
    let Some(entry) = collection_of(s, &g.database, &g.collection).await? else {
        return Ok(());
    };
    let parts = entry.scan_partitions();
    let whole = parts.len() == 1 && parts[0].is_none();
    let scope_of = |s: &Sender<'_>, p: Option<&str>| s.base.scope_id(&scope_name(&entry, p));
    let mut batch = pb::ChangeBatch {
        database: g.database.clone(),
        collection: g.collection.clone(),
        partition: g.partition.clone(),
        ..Default::default()
    };
    let mut staged: Vec<(u64, Vec<Change>)> = Vec::new();
    match g.rows {
        Some(mut fields) => {
            let pk = entry
                .info
                .primary_field()
                .map(|f| f.name.clone())
                .unwrap_or_default();
            let mut keys = rows::primary_keys(&fields, &pk)?;
            // One row per key, the newest: Milvus would keep both.
            let mut last: std::collections::HashMap<&Pk, usize> = Default::default();
            for (i, k) in keys.iter().enumerate() {
                last.insert(k, i);
            }
            if last.len() < keys.len() {
                let mut idx: Vec<usize> = last.into_values().collect();
                idx.sort_unstable();
                fields = rows::take(&fields, &idx);
                keys = idx.iter().map(|&i| keys[i].clone()).collect();
            }
            let hashes = rows::row_hashes(&fields)?;
            let scope = if whole {
                scope_of(s, None)?
            } else {
                let p = if g.partition.is_empty() {
                    "_default"
                } else {
                    g.partition.as_str()
                };
                scope_of(s, Some(p))?
            };
            staged.push((
                scope,
                keys.into_iter()
                    .zip(hashes)
                    .map(|(k, h)| (k, Some(h)))
                    .collect(),
            ));
            batch.upserts = Some(pb::Rows {
                num_rows: rows::num_rows(&fields)? as u64,
                fields: fields.iter().map(|f| f.encode_to_vec()).collect(),
            });
        }
        None => {
            let changes: Vec<Change> = g.deletes.iter().map(|k| (k.clone(), None)).collect();
            let scopes = if whole {
                vec![scope_of(s, None)?]
            } else if !g.partition.is_empty() {
                vec![scope_of(s, Some(&g.partition))?]
            } else {
                parts
                    .iter()
                    .map(|p| scope_of(s, p.as_deref()))
                    .collect::<Result<_>>()?
            };
            for sc in scopes {
                staged.push((sc, changes.clone()));
            }
            batch.deletes = Some(base::keys_to_pb(&g.deletes));
        }
    }
    let refs: Vec<(u64, &[Change])> = staged.iter().map(|(sc, c)| (*sc, c.as_slice())).collect();
    s.send_staged(batch, &refs, Some(log_upto)).await
}
