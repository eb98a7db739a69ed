//! The front door: a gRPC reverse proxy for Milvus clients on every agent.
//!
//! Clients (pymilvus, the SDKs) connect to `frontdoor.listen` instead of to
//! Milvus, in cleartext HTTP/2 with prior knowledge (h2c, as gRPC clients
//! speak without TLS). Every call to `milvus.proto.milvus.MilvusService` is
//! forwarded unchanged to this datacenter's Milvus: method, path and
//! headers (`authorization`, `dbname`, `grpc-timeout`, ...), the request
//! body streamed frame by frame without decoding (search and insert
//! payloads are large and never re-encoded), and the response streamed
//! back with its trailers (`grpc-status`, `grpc-message`).
//!
//! Fencing at the door: a write ([`WRITE_METHODS`]) is refused unless this
//! agent is the acting primary (the replication source at its epoch, with
//! a valid lease when there are witnesses), with PERMISSION_DENIED and a
//! message naming the primary. With `reads_when_not_primary: refuse`,
//! every call is refused that way. A logged write is checked again once
//! Milvus has answered it: if the agent stopped acting meanwhile, the
//! client is answered UNAVAILABLE (applied, not acknowledged), so no
//! write is acknowledged after a new primary may act.

pub mod capture;
pub mod changelog;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::ReadsWhenNotPrimary;
use crate::metrics::Lease;
use crate::replication::{Role, SharedState};

/// The only service the front door serves.
pub const SERVICE: &str = "milvus.proto.milvus.MilvusService";

/// `MilvusService` methods that change something in Milvus: data (insert,
/// upsert, delete, import, flush), schema and databases, partitions,
/// indexes, aliases, load state (loading and releasing change what the
/// cluster serves), resource groups, users, roles and privileges. They are
/// refused unless this agent is the acting primary. Every other method
/// (search, query, describe, show, list, get, check health) is a read.
pub const WRITE_METHODS: &[&str] = &[
    "Insert",
    "Upsert",
    "Delete",
    "Import",
    "Flush",
    "CreateCollection",
    "DropCollection",
    "AlterCollection",
    "CreatePartition",
    "DropPartition",
    "LoadCollection",
    "ReleaseCollection",
    "LoadPartitions",
    "ReleasePartitions",
    "CreateIndex",
    "DropIndex",
    "AlterIndex",
    "CreateAlias",
    "DropAlias",
    "AlterAlias",
    "CreateDatabase",
    "DropDatabase",
    "CreateResourceGroup",
    "DropResourceGroup",
    "TransferNode",
    "TransferReplica",
    "CreateCredential",
    "UpdateCredential",
    "DeleteCredential",
    "CreateRole",
    "DropRole",
    "OperateUserRole",
    "OperatePrivilege",
    "RenameCollection",
];

pub fn is_write(method: &str) -> bool {
    WRITE_METHODS.contains(&method)
}

/// gRPC status codes the front door answers with itself.
const INVALID_ARGUMENT: u32 = 3;
/// A write (or, when configured, a read) where this agent is not the
/// acting primary. PERMISSION_DENIED rather than FAILED_PRECONDITION: the
/// Milvus SDKs retry FAILED_PRECONDITION for minutes (pymilvus 75 times),
/// and a client on a stale address must fail at once, with the message.
const PERMISSION_DENIED: u32 = 7;
const UNIMPLEMENTED: u32 = 12;
const UNAVAILABLE: u32 = 14;

type Labels = Vec<(String, String)>;

/// HTTP/2 flow control on both sides of the door: a stream may send this
/// much before it waits for the reader (a call is at most this much ahead
/// of the door), the connection four streams' worth.
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;
const MAX_FRAME: u32 = 1 << 20;

/// The front door's metrics, shared with the metrics endpoint.
#[derive(Clone)]
pub struct Stats {
    /// By method and outcome (ok, error, refused).
    pub requests: Family<Labels, Counter>,
    /// By method: until the response's end (its trailers) was sent.
    pub duration: Family<Labels, Histogram, fn() -> Histogram>,
    pub refused_writes: Counter,
    /// Every call, for status.
    pub total: Counter,
    /// By step (prepare, acknowledge, append): the change log's own time
    /// per write, flushes included (the disk's latency shows here).
    pub log_seconds: Family<Labels, Histogram, fn() -> Histogram>,
}

fn log_histogram() -> Histogram {
    // 50 µs to about 1.6 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

fn duration_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 4.0, 9))
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            requests: Default::default(),
            duration: Family::new_with_constructor(duration_histogram),
            refused_writes: Default::default(),
            total: Default::default(),
            log_seconds: Family::new_with_constructor(log_histogram),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Error,
    Refused,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Refused => "refused",
        }
    }
}

impl Stats {
    fn record(&self, method: &str, outcome: Outcome, elapsed: Duration) {
        self.total.inc();
        self.requests
            .get_or_create(&vec![
                ("method".into(), method.into()),
                ("outcome".into(), outcome.as_str().into()),
            ])
            .inc();
        self.duration
            .get_or_create(&vec![("method".into(), method.into())])
            .observe(elapsed.as_secs_f64());
    }
}

/// Decides, call by call, what may go through.
#[derive(Clone)]
pub struct Gate {
    pub datacenter: String,
    pub state: SharedState,
    /// With witnesses: the lease (see [`crate::metrics::MetricsSource`]).
    pub lease: Option<Lease>,
    pub reads: ReadsWhenNotPrimary,
}

impl Gate {
    /// Whether this agent acts as primary now: the replication source at
    /// its epoch and, with witnesses, holding an unexpired lease (as
    /// `/dr/primary` answers).
    fn acting(&self, role: Role) -> bool {
        if role != Role::Source {
            return false;
        }
        match &self.lease {
            None => true,
            Some(lease) => lease
                .get()
                .and_then(|rx| *rx.borrow())
                .is_some_and(|until| until > std::time::Instant::now()),
        }
    }

    /// Whether this agent acts as primary at this instant (the role and,
    /// with witnesses, the lease), whatever a drain says.
    pub fn acting_now(&self) -> bool {
        let role = self.state.lock().unwrap().role;
        self.acting(role)
    }

    /// `None` when `method` may go through now; otherwise why not, as the
    /// client is told.
    pub fn check(&self, method: &str) -> Option<String> {
        let write = is_write(method);
        if !write && self.reads == ReadsWhenNotPrimary::Allow {
            return None;
        }
        let (role, epoch, primary, draining) = {
            let s = self.state.lock().unwrap();
            let draining = s
                .draining_until
                .is_some_and(|until| until > std::time::Instant::now());
            (s.role, s.epoch, s.primary.clone(), draining)
        };
        if self.acting(role) && !(write && draining) {
            return None;
        }
        if self.acting(role) {
            return Some(format!(
                "milvus-dr: {} is handing the primary role over (a planned switchover is draining it at epoch {epoch}): writes are refused here; retry through the service name",
                self.datacenter
            ));
        }
        let dc = &self.datacenter;
        let whom = if primary.is_empty() {
            "the primary is not known yet".to_string()
        } else if primary == *dc {
            format!("{dc} is named primary but does not act as one now: no valid lease, or its Milvus is unhealthy")
        } else {
            format!("{primary} is")
        };
        let what = if write {
            "writes are refused here"
        } else {
            "reads and writes are refused here (frontdoor.reads_when_not_primary: refuse)"
        };
        Some(format!(
            "milvus-dr: {dc} is not the primary at epoch {epoch} ({whom}): {what}; connect through the service name"
        ))
    }
}

/// What `drctl status` shows of the front door.
#[derive(Clone)]
pub struct Described {
    pub listen: String,
    pub stats: Stats,
    pub sync: Arc<capture::Sync>,
    pub gate: Gate,
}

impl Described {
    pub fn to_pb(&self, s: &crate::replication::ReplicationState) -> dr_proto::pb::FrontdoorStatus {
        dr_proto::pb::FrontdoorStatus {
            listen: self.listen.clone(),
            mode: if self.sync.on { "sync" } else { "async" }.into(),
            sync_state: self.sync.describe(s.sync_degraded).into(),
            requests: self.stats.total.get(),
            refused_writes: self.stats.refused_writes.get(),
            log_entries: s.log_depth.entries,
            log_bytes: s.log_depth.bytes,
            bypass_rows: s.bypass.total.values().sum(),
            log_overflows: s.log_overflows,
            accepting_writes: self.gate.check("Insert").is_none()
                && !(self.sync.on
                    && self.sync.refuse_when_degraded
                    && (s.sync_degraded || !s.connected)),
        }
    }
}

/// Percent-encodes a `grpc-message` value as the gRPC HTTP/2 spec asks:
/// every byte outside printable ASCII, and `%`.
pub fn percent_encode(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for b in msg.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

type ResponseBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// A trailers-only gRPC response: HTTP 200, the status in the headers,
/// no body.
fn trailers_only(code: u32, msg: &str) -> Response<ResponseBody> {
    let mut r = Response::new(
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(msg)) {
        h.insert("grpc-message", v);
    }
    r
}

fn grpc_status(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()
}

/// The method of a `MilvusService` path, if it is one (a plain name: it
/// becomes a metrics label).
fn method_of(path: &str) -> Option<&str> {
    let m = path
        .strip_prefix('/')?
        .strip_prefix(SERVICE)?
        .strip_prefix('/')?;
    (!m.is_empty() && m.len() <= 64 && m.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(m)
}

/// The response body from Milvus, passed through frame by frame; records
/// the call's outcome once it ends (or is dropped, e.g. cancelled).
struct Observed {
    inner: Incoming,
    status: Option<u32>,
    failed: bool,
    done: Option<(Stats, String, Instant)>,
}

impl Observed {
    fn finish(&mut self) {
        if let Some((stats, method, start)) = self.done.take() {
            let outcome = if !self.failed && self.status == Some(0) {
                Outcome::Ok
            } else {
                Outcome::Error
            };
            stats.record(&method, outcome, start.elapsed());
        }
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(t) = f.trailers_ref() {
                    this.status = grpc_status(t).or(this.status);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.failed = true;
                this.finish();
            }
            Poll::Ready(None) => this.finish(),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The proxy: one per agent, cloned into every connection.
#[derive(Clone)]
pub struct Frontdoor {
    gate: Gate,
    scheme: hyper::http::uri::Scheme,
    authority: hyper::http::uri::Authority,
    client: Client<HttpConnector, RequestBody>,
    stats: Stats,
    /// With write-path capture: the change log and what feeds it.
    capture: Option<Arc<capture::Capture>>,
}

type RequestBody = UnsyncBoxBody<Bytes, hyper::Error>;

fn full(b: Bytes) -> RequestBody {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

impl Frontdoor {
    /// A front door forwarding to the Milvus at `endpoint`
    /// (`http://host:port`).
    pub fn new(
        gate: Gate,
        endpoint: &str,
        stats: Stats,
        capture: Option<Arc<capture::Capture>>,
    ) -> Result<Frontdoor> {
        let uri: Uri = endpoint
            .parse()
            .with_context(|| format!("the Milvus endpoint {endpoint}"))?;
        let scheme = uri.scheme().cloned().context("no scheme")?;
        anyhow::ensure!(
            scheme == hyper::http::uri::Scheme::HTTP,
            "the front door forwards to Milvus in cleartext only; {endpoint} is not http://"
        );
        let authority = uri.authority().cloned().context("no host:port")?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .http2_initial_stream_window_size(STREAM_WINDOW)
            .http2_initial_connection_window_size(CONNECTION_WINDOW)
            .http2_max_frame_size(MAX_FRAME)
            .build(connector);
        Ok(Frontdoor {
            gate,
            scheme,
            authority,
            client,
            stats,
            capture,
        })
    }

    /// The request's parts, addressed to Milvus.
    fn upstream(
        &self,
        mut parts: hyper::http::request::Parts,
    ) -> Result<hyper::http::request::Parts, String> {
        let mut uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone());
        if let Some(pq) = parts.uri.path_and_query() {
            uri = uri.path_and_query(pq.clone());
        }
        parts.uri = uri
            .build()
            .map_err(|e| format!("milvus-dr: cannot forward {}: {e}", parts.uri.path()))?;
        Ok(parts)
    }

    fn unreachable(
        &self,
        method: &str,
        e: &hyper_util::client::legacy::Error,
    ) -> Response<ResponseBody> {
        warn!(%method, error = %e, "front door: Milvus did not answer");
        trailers_only(
            UNAVAILABLE,
            &format!(
                "milvus-dr: the front door of {} could not reach its Milvus at {}: {e}",
                self.gate.datacenter, self.authority
            ),
        )
    }

    async fn handle(self, req: Request<Incoming>) -> Result<Response<ResponseBody>, Infallible> {
        let start = Instant::now();
        let path = req.uri().path().to_string();
        let Some(method) = method_of(&path).map(str::to_string) else {
            debug!(%path, "front door: not a MilvusService call");
            return Ok(trailers_only(
                UNIMPLEMENTED,
                &format!("milvus-dr: the front door serves {SERVICE} only, not {path}"),
            ));
        };
        if let Some(msg) = self.gate.check(&method) {
            self.stats
                .record(&method, Outcome::Refused, start.elapsed());
            if is_write(&method) {
                self.stats.refused_writes.inc();
            }
            debug!(%method, %msg, "front door: refused");
            return Ok(trailers_only(PERMISSION_DENIED, &msg));
        }
        if let (Some(cap), Some(kind)) = (&self.capture, capture::kind(&method)) {
            let cap = cap.clone();
            return Ok(self.captured(&cap, kind, method, req, start).await);
        }
        let (parts, body) = req.into_parts();
        let parts = match self.upstream(parts) {
            Ok(p) => p,
            Err(msg) => {
                self.stats.record(&method, Outcome::Error, start.elapsed());
                return Ok(trailers_only(UNIMPLEMENTED, &msg));
            }
        };
        match self
            .client
            .request(Request::from_parts(parts, body.boxed_unsync()))
            .await
        {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                let body = Observed {
                    inner: body,
                    status: grpc_status(&parts.headers),
                    failed: false,
                    done: Some((self.stats.clone(), method, start)),
                };
                Ok(Response::from_parts(parts, body.boxed_unsync()))
            }
            Err(e) => {
                self.stats.record(&method, Outcome::Error, start.elapsed());
                Ok(self.unreachable(&method, &e))
            }
        }
    }

    /// A write the change log records: the whole request is read, the
    /// call forwarded under the collection's write order, the whole reply
    /// read. The entry is written while Milvus applies the call; Milvus's
    /// answer is recorded after the client has it (async mode) or before,
    /// followed by the standby applying it (sync mode). The role is
    /// checked again before the client is answered.
    async fn captured(
        &self,
        cap: &Arc<capture::Capture>,
        kind: capture::Kind,
        method: String,
        req: Request<Incoming>,
        start: Instant,
    ) -> Response<ResponseBody> {
        use capture::Kind;
        use milvus::proto::milvus::DeleteRequest;
        use prost::Message;
        let refuse = |code: u32, msg: &str, outcome: Outcome| {
            self.stats.record(&method, outcome, start.elapsed());
            trailers_only(code, msg)
        };
        let (epoch, connected) = {
            let s = self.gate.state.lock().unwrap();
            (s.epoch, s.connected)
        };
        if kind != Kind::Ddl
            && cap.sync.on
            && cap.sync.refuse_when_degraded
            && (cap.degraded() || !connected)
        {
            self.stats.refused_writes.inc();
            return refuse(
                UNAVAILABLE,
                &format!(
                    "milvus-dr: replication.mode is sync and the standby of {} does not confirm writes (not connected, or slower than replication.sync_timeout {}): writes are refused until it does (replication.sync_on_timeout: refuse)",
                    self.gate.datacenter,
                    humantime::format_duration(cap.sync.timeout)
                ),
                Outcome::Refused,
            );
        }
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                return refuse(
                    UNAVAILABLE,
                    &format!("milvus-dr: the request ended early: {e}"),
                    Outcome::Error,
                )
            }
        };
        let headers = parts.headers.clone();
        let parts = match self.upstream(parts) {
            Ok(p) => p,
            Err(msg) => return refuse(UNIMPLEMENTED, &msg, Outcome::Error),
        };
        let bad = |what: &str, e: String| {
            refuse(
                INVALID_ARGUMENT,
                &format!("milvus-dr: the front door cannot read this {what} request: {e}"),
                Outcome::Error,
            )
        };
        // What to decode, and the collection whose write order it takes.
        enum Parsed {
            Rows(capture::RowsHead, String),
            Delete(Box<DeleteRequest>, String),
            /// The collection a DDL call is about (none: a database's).
            Ddl(Option<(String, String)>),
        }
        let parsed = match kind {
            Kind::Rows => match capture::grpc_message(&body)
                .and_then(|m| capture::RowsHead::decode(m).map_err(|e| e.to_string()))
            {
                Ok(r) => {
                    let db = capture::database(&r.db_name, &headers);
                    Parsed::Rows(r, db)
                }
                Err(e) => return bad(&method, e),
            },
            Kind::Delete => match capture::grpc_message(&body)
                .and_then(|m| DeleteRequest::decode(m).map_err(|e| e.to_string()))
            {
                Ok(r) => {
                    let db = capture::database(&r.db_name, &headers);
                    Parsed::Delete(Box::new(r), db)
                }
                Err(e) => return bad(&method, e),
            },
            Kind::Ddl if capture::collection_scoped(&method) => match capture::grpc_message(&body)
                .and_then(|m| capture::DdlHead::decode(m).map_err(|e| e.to_string()))
            {
                Ok(h) => Parsed::Ddl(Some((
                    capture::database(&h.db_name, &headers),
                    h.collection_name,
                ))),
                // Milvus judges the call; it is logged as a catalog change
                // all the same.
                Err(e) => {
                    debug!(%method, error = %e, "front door: DDL call without a collection head");
                    Parsed::Ddl(None)
                }
            },
            Kind::Ddl => Parsed::Ddl(None),
        };
        // A collection's writes and DDL go to Milvus and into the log one
        // at a time, in the same order.
        let _order = match &parsed {
            Parsed::Rows(r, db) => Some(cap.lock(db, &r.collection_name).await),
            Parsed::Delete(r, db) => Some(cap.lock(db, &r.collection_name).await),
            Parsed::Ddl(Some((db, c))) => Some(cap.lock(db, c).await),
            Parsed::Ddl(None) => None,
        };
        // A delete's keys, resolved just before it runs; `None`: they could
        // not be (a scan pass will find the deleted rows).
        let resolved = match &parsed {
            Parsed::Delete(r, db) => match cap.resolve_delete(db, r).await {
                Ok(k) => Some(k),
                Err(e) => {
                    warn!(collection = %r.collection_name, expr = %r.expr, error = %format!("{e:#}"), "front door: could not resolve a delete to keys; a scan pass will replicate it");
                    None
                }
            },
            _ => None,
        };
        // Rows and resolved deletes are written to the log while Milvus
        // applies them, and acknowledged there once Milvus has: the log's
        // flush overlaps Milvus's work instead of adding to it.
        let entry = match (&parsed, &resolved) {
            (Parsed::Rows(head, db), _) if head.num_rows > 0 => {
                let raw = capture::grpc_message(&body).unwrap_or_default();
                Some(capture::rows_entry(epoch, db, head, raw))
            }
            (Parsed::Delete(r, db), Some(keys)) if !keys.is_empty() => {
                Some(capture::delete_entry(epoch, db, r, keys))
            }
            _ => None,
        };
        let forward = self
            .client
            .request(Request::from_parts(parts, full(body.clone())));
        let prepare = async {
            match entry {
                Some(e) => cap.prepare(e).await,
                None => None,
            }
        };
        let (resp, prepared) = tokio::join!(forward, prepare);
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                if let Some(p) = prepared {
                    cap.abandon(p).await;
                }
                self.stats.record(&method, Outcome::Error, start.elapsed());
                return self.unreachable(&method, &e);
            }
        };
        let (rparts, rbody) = resp.into_parts();
        let collected = match rbody.collect().await {
            Ok(c) => c,
            Err(e) => {
                // Milvus may have applied it: let a scan pass look (a
                // prepared entry dropped unanswered asks for one too).
                drop(prepared);
                let _ = cap
                    .log
                    .request_rescan("the answer of Milvus to a write was cut");
                return refuse(
                    UNAVAILABLE,
                    &format!("milvus-dr: the answer of Milvus was cut: {e}"),
                    Outcome::Error,
                );
            }
        };
        let trailers = collected.trailers().cloned();
        let reply = collected.to_bytes();
        let status = trailers
            .as_ref()
            .and_then(grpc_status)
            .or_else(|| grpc_status(&rparts.headers));
        let mut logged = None;
        let mut ok = status == Some(0);
        let waits =
            cap.sync.on && kind != Kind::Ddl && (cap.sync.refuse_when_degraded || !cap.degraded());
        match parsed {
            Parsed::Rows(..) | Parsed::Delete(..) => {
                let rows = matches!(parsed, Parsed::Rows(..));
                let answer = capture::mutation_ok(status, &reply);
                ok = answer.is_some();
                match (answer, prepared) {
                    // The keys Milvus assigned (auto-id) go with an insert.
                    (Some(m), Some(p)) => {
                        let ids = if rows { capture::ids_of(&m) } else { None };
                        let acked_ms = dr_proto::now_ms();
                        if waits {
                            logged = cap.acknowledge(p, acked_ms, ids).await;
                        } else {
                            // Not on the client's path: the source reads no
                            // further than the first write still waiting
                            // for its answer to be recorded, so the order
                            // holds; an agent killed before it is recorded
                            // finds the entry unanswered at its restart (a
                            // scan pass then replicates it), as when it is
                            // recorded and not yet flushed.
                            let cap = cap.clone();
                            tokio::spawn(async move {
                                cap.acknowledge(p, acked_ms, ids).await;
                            });
                        }
                    }
                    (Some(_), None) if !rows && resolved.is_none() => {
                        let _ = cap
                            .log
                            .request_rescan("a delete could not be resolved to keys");
                    }
                    (None, Some(p)) => cap.abandon(p).await,
                    _ => {}
                }
            }
            Parsed::Ddl(_) => {
                cap.forget_schemas();
                if ok {
                    logged = cap
                        .log(dr_proto::pb::ChangeLogEntry {
                            epoch,
                            acked_ms: dr_proto::now_ms(),
                            catalog: true,
                            ..Default::default()
                        })
                        .await;
                }
            }
        }
        drop(_order);
        let mut confirmed = false;
        if let (Some(at), true) = (logged, waits) {
            confirmed = cap.wait_applied(at).await;
            if !confirmed && cap.sync.refuse_when_degraded {
                self.stats.record(&method, Outcome::Error, start.elapsed());
                return trailers_only(
                    UNAVAILABLE,
                    &format!(
                        "milvus-dr: replication.mode is sync and the standby did not apply this write within {}: it is applied on the primary and will be replicated, but not confirmed (replication.sync_on_timeout: refuse)",
                        humantime::format_duration(cap.sync.timeout)
                    ),
                );
            }
        }
        // The gate let this write in while the agent was the acting
        // primary; it may have lost the role (its lease ran out) while
        // Milvus applied it. Acknowledged now, the write could be one the
        // new primary never sees: unless the standby already applied it
        // (sync mode), the client is told it is not confirmed.
        if ok && !confirmed && !self.gate.acting_now() {
            self.stats.refused_writes.inc();
            let dc = &self.gate.datacenter;
            warn!(%method, "front door: a write was applied after {dc} stopped acting as primary; not acknowledged");
            self.stats
                .record(&method, Outcome::Refused, start.elapsed());
            return trailers_only(
                UNAVAILABLE,
                &format!(
                    "milvus-dr: {dc}'s Milvus applied this write, but {dc} stopped acting as primary before it could be acknowledged (its lease ran out or its role changed): it may be lost when the new primary takes over; retry through the service name (upsert: the write may be applied)"
                ),
            );
        }
        self.stats.record(
            &method,
            if ok { Outcome::Ok } else { Outcome::Error },
            start.elapsed(),
        );
        let mut frames: Vec<Result<Frame<Bytes>, hyper::Error>> = vec![Ok(Frame::data(reply))];
        if let Some(t) = trailers {
            frames.push(Ok(Frame::trailers(t)));
        }
        let body = StreamBody::new(tokio_stream::iter(frames)).boxed_unsync();
        Response::from_parts(rparts, body)
    }
}

/// Serves the front door on `listener` until `shutdown`, then lets the
/// calls in flight finish (for up to 5 s).
pub async fn serve(
    listener: TcpListener,
    frontdoor: Frontdoor,
    shutdown: CancellationToken,
) -> Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // Windows large enough for a whole insert: a client sends it without
    // waiting for WINDOW_UPDATEs (HTTP/2's default 64 KiB, or an adaptive
    // window starting there, cost a 500 KB insert about 2 ms on loopback).
    builder
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME);
    info!(addr = %listener.local_addr()?, upstream = %frontdoor.authority, "front door: forwarding MilvusService calls");
    loop {
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // E.g. out of file descriptors: keep serving the others.
                    warn!(error = %e, "front door: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let fd = frontdoor.clone();
        let svc = hyper::service::service_fn(move |req| fd.clone().handle(req));
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "front door: connection ended");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        warn!("front door: calls still in flight 5s after shutdown; closed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::ReplicationState;

    fn gate(reads: ReadsWhenNotPrimary) -> Gate {
        Gate {
            datacenter: "dc-b".into(),
            state: Default::default(),
            lease: None,
            reads,
        }
    }

    #[test]
    fn writes_are_refused_unless_acting_primary_and_the_message_names_the_primary() {
        let g = gate(ReadsWhenNotPrimary::Allow);
        *g.state.lock().unwrap() = ReplicationState {
            role: Role::Sink,
            epoch: 3,
            primary: "dc-a".into(),
            ..Default::default()
        };
        assert_eq!(
            g.check("Insert").unwrap(),
            "milvus-dr: dc-b is not the primary at epoch 3 (dc-a is): writes are refused here; connect through the service name"
        );
        for m in [
            "Upsert",
            "Delete",
            "CreateIndex",
            "DropDatabase",
            "LoadCollection",
        ] {
            assert!(g.check(m).is_some(), "{m}");
        }
        for m in [
            "Search",
            "Query",
            "DescribeCollection",
            "CheckHealth",
            "ShowCollections",
        ] {
            assert!(g.check(m).is_none(), "{m}");
        }
        g.state.lock().unwrap().role = Role::Source;
        assert!(g.check("Insert").is_none());
    }

    #[test]
    fn a_draining_primary_refuses_writes_until_the_drain_deadline() {
        use std::time::Instant;
        let g = gate(ReadsWhenNotPrimary::Allow);
        g.state.lock().unwrap().role = Role::Source;
        g.state.lock().unwrap().draining_until = Some(Instant::now() + Duration::from_secs(60));
        let msg = g.check("Insert").unwrap();
        assert!(msg.contains("planned switchover is draining"), "{msg}");
        assert!(g.check("CreateCollection").is_some());
        assert!(g.check("Search").is_none(), "reads are served");
        // The drain did not complete in time: the switchover is aborted.
        g.state.lock().unwrap().draining_until = Some(Instant::now() - Duration::from_secs(1));
        assert!(g.check("Insert").is_none());
    }

    #[test]
    fn reads_are_refused_too_when_configured() {
        let g = gate(ReadsWhenNotPrimary::Refuse);
        g.state.lock().unwrap().role = Role::Idle;
        let msg = g.check("Search").unwrap();
        assert!(msg.contains("the primary is not known yet"), "{msg}");
        assert!(msg.contains("reads_when_not_primary"), "{msg}");
        g.state.lock().unwrap().role = Role::Source;
        assert!(g.check("Search").is_none());
    }

    #[test]
    fn with_witnesses_the_source_needs_a_valid_lease() {
        use std::time::Instant;
        let lease: Lease = Default::default();
        let g = Gate {
            lease: Some(lease.clone()),
            ..gate(ReadsWhenNotPrimary::Allow)
        };
        *g.state.lock().unwrap() = ReplicationState {
            role: Role::Source,
            epoch: 4,
            primary: "dc-b".into(),
            ..Default::default()
        };
        let msg = g.check("Insert").unwrap();
        assert!(msg.contains("named primary but does not act"), "{msg}");
        let (tx, rx) = tokio::sync::watch::channel(Some(Instant::now() + Duration::from_secs(5)));
        lease.set(rx).unwrap();
        assert!(g.check("Insert").is_none());
        tx.send_replace(None);
        assert!(g.check("Insert").is_some());
    }

    #[test]
    fn method_names_and_grpc_messages() {
        assert_eq!(
            method_of("/milvus.proto.milvus.MilvusService/Insert"),
            Some("Insert")
        );
        assert_eq!(method_of("/grpc.health.v1.Health/Check"), None);
        assert_eq!(method_of("/milvus.proto.milvus.MilvusService/a.b"), None);
        assert_eq!(
            percent_encode("dc-b (dc-a is): 100% ü"),
            "dc-b (dc-a is): 100%25 %C3%BC"
        );
        let r = trailers_only(9, "no");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "9");
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert!(r.body().is_end_stream());
    }
}
