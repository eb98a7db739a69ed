//! The agent's only door to Milvus.
//!
//! Everything that speaks Milvus gRPC lives here, on the generated types that
//! `milvus-sdk-rust` exposes in `milvus::proto`. The rest of the agent sees
//! collections, pages of columnar rows, primary keys and errors that say
//! whether a retry can help.

pub mod rows;

use std::time::Duration;

use milvus::proto::common::{self, ConsistencyLevel, KeyValuePair, LoadState, MsgBase};
use milvus::proto::milvus as mpb;
use milvus::proto::milvus::milvus_service_client::MilvusServiceClient;
use milvus::proto::schema::{self, CollectionSchema, DataType, FieldData};
use prost::Message;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub use rows::{Pk, PkType};

/// Largest gRPC message we send or accept. Milvus accepts 64 MB.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// `offset + limit` may not exceed this in Milvus 2.3 (maxQueryResultWindow).
pub const MAX_QUERY_WINDOW: usize = 16_384;
/// Name Milvus gives the hidden JSON column of dynamic fields.
pub const DYNAMIC_FIELD: &str = "$meta";

/// Why a Milvus call failed.
#[derive(Debug, thiserror::Error)]
pub enum MilvusError {
    #[error("cannot reach Milvus at {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("Milvus call {call} failed in transport: {status}")]
    Transport {
        call: &'static str,
        status: tonic::Status,
    },
    #[error("Milvus {call} refused (code {code}): {reason}")]
    Server {
        call: &'static str,
        code: i32,
        reason: String,
    },
    #[error("unexpected Milvus answer to {call}: {problem}")]
    Protocol { call: &'static str, problem: String },
}

impl MilvusError {
    /// Whether the same call may succeed later without anything changing on
    /// our side (network trouble, server starting or overloaded).
    pub fn is_retryable(&self) -> bool {
        match self {
            MilvusError::Connect { .. } => true,
            MilvusError::Transport { status, .. } => matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Aborted
                    | tonic::Code::Unknown
                    | tonic::Code::Internal
                    | tonic::Code::Cancelled
            ),
            // 1 = unexpected error (often "not ready"), 8/9 rate limits,
            // 503/1100 service not ready.
            MilvusError::Server { code, reason, .. } => {
                matches!(*code, 1 | 8 | 9 | 503 | 1100)
                    || reason.contains("not ready")
                    || reason.contains("is not healthy")
            }
            MilvusError::Protocol { .. } => false,
        }
    }

    /// Collection (or database) does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            MilvusError::Server { code, reason, .. } => {
                *code == 100 || *code == 800 || reason.contains("not found")
            }
            _ => false,
        }
    }

    /// The object to create exists already.
    pub fn is_already_exists(&self) -> bool {
        match self {
            MilvusError::Server { reason, .. } => {
                reason.contains("already exist") || reason.contains("duplicate")
            }
            _ => false,
        }
    }
}

pub type Result<T, E = MilvusError> = std::result::Result<T, E>;

/// Where and how to reach one Milvus.
#[derive(Debug, Clone)]
pub struct Connection {
    /// gRPC endpoint, e.g. `http://127.0.0.1:19530`.
    pub endpoint: String,
    /// `GET` this for the plain health check (management port `/healthz`).
    pub health_url: Option<String>,
    /// Sent as the `authorization` metadata (base64 `user:password` or token).
    pub authorization: Option<String>,
    pub request_timeout: Duration,
}

#[derive(Clone)]
struct Auth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Client = MilvusServiceClient<InterceptedService<Channel, Auth>>;

/// A connected Milvus. Cheap to clone; clones share one HTTP/2 connection.
#[derive(Clone)]
pub struct Milvus {
    client: Client,
    conn: Connection,
    http: reqwest::Client,
}

/// Everything needed to recreate a collection elsewhere.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionInfo {
    pub database: String,
    pub name: String,
    /// Milvus' collection id: changes when a collection is dropped and
    /// recreated under the same name.
    pub id: i64,
    pub schema: CollectionSchema,
    pub shards_num: i32,
    pub consistency_level: i32,
    pub properties: Vec<KeyValuePair>,
    pub num_partitions: i64,
}

impl CollectionInfo {
    pub fn primary_field(&self) -> Option<&schema::FieldSchema> {
        self.schema.fields.iter().find(|f| f.is_primary_key)
    }

    pub fn pk_type(&self) -> Option<PkType> {
        match self.primary_field()?.data_type() {
            DataType::Int64 => Some(PkType::Int),
            DataType::VarChar => Some(PkType::Str),
            _ => None,
        }
    }

    /// True when partitions are derived from a partition-key field: rows are
    /// routed by Milvus and partitions cannot be named on writes.
    pub fn has_partition_key(&self) -> bool {
        self.schema.fields.iter().any(|f| f.is_partition_key)
    }

    /// Columns to read so that a row is complete: every field, plus the
    /// dynamic-field JSON when the collection has one.
    pub fn output_fields(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .schema
            .fields
            .iter()
            .filter(|f| !f.is_dynamic)
            .map(|f| f.name.clone())
            .collect();
        if self.schema.enable_dynamic_field {
            out.push(DYNAMIC_FIELD.to_string());
        }
        out
    }

    /// The schema as it must be created on a replica: same fields and ids,
    /// but primary keys never auto-generated (the replica keeps the source's
    /// keys).
    pub fn replica_schema(&self) -> CollectionSchema {
        let mut s = self.schema.clone();
        #[allow(deprecated)]
        {
            s.auto_id = false;
        }
        for f in &mut s.fields {
            f.auto_id = false;
        }
        s.fields.retain(|f| !f.is_dynamic);
        s
    }
}

/// One index on one field.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct IndexInfo {
    pub field: String,
    pub index_name: String,
    /// Creation parameters, sorted by key (index_type, metric_type, params…).
    pub params: Vec<(String, String)>,
}

impl IndexInfo {
    /// The same index with only the parameters CreateIndex takes
    /// (DescribeIndex also reports state, such as `indexed_rows`).
    pub fn creatable(&self) -> IndexInfo {
        let creation_param = |k: &str| {
            matches!(k, "index_type" | "metric_type" | "params")
                || !k.contains('.') && k != "indexed_rows"
        };
        IndexInfo {
            field: self.field.clone(),
            index_name: self.index_name.clone(),
            params: self
                .params
                .iter()
                .filter(|(k, _)| creation_param(k))
                .cloned()
                .collect(),
        }
    }
}

/// A health verdict with its reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub healthy: bool,
    pub detail: String,
}

fn base() -> Option<MsgBase> {
    None
}

fn check(call: &'static str, status: Option<common::Status>) -> Result<()> {
    let Some(s) = status else {
        return Ok(());
    };
    #[allow(deprecated)]
    let legacy = s.error_code;
    if s.code != 0 || legacy != 0 {
        let code = if s.code != 0 { s.code } else { legacy };
        return Err(MilvusError::Server {
            call,
            code,
            reason: s.reason,
        });
    }
    Ok(())
}

fn kv(pairs: &[(String, String)]) -> Vec<KeyValuePair> {
    pairs
        .iter()
        .map(|(k, v)| KeyValuePair {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}

/// Milvus hybrid timestamps carry physical milliseconds above 18 logical bits.
pub fn hybrid_ts_to_ms(ts: u64) -> i64 {
    (ts >> 18) as i64
}

/// Quotes a string literal for a Milvus boolean expression.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `field in [k1, k2, …]`.
pub fn in_expr(field: &str, keys: &[Pk]) -> String {
    let mut s = format!("{field} in [");
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        match k {
            Pk::Int(v) => s.push_str(&v.to_string()),
            Pk::Str(v) => s.push_str(&quote(v)),
        }
    }
    s.push(']');
    s
}

impl Milvus {
    /// Connects (lazily: the first call opens the connection).
    pub fn connect(conn: Connection) -> Result<Self> {
        let ep = Endpoint::from_shared(conn.endpoint.clone())
            .map_err(|source| MilvusError::Connect {
                endpoint: conn.endpoint.clone(),
                source,
            })?
            .connect_timeout(Duration::from_secs(5))
            .timeout(conn.request_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let channel = ep.connect_lazy();
        let auth = Auth(conn.authorization.as_ref().and_then(|a| a.parse().ok()));
        let client = MilvusServiceClient::with_interceptor(channel, auth)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| MilvusError::Protocol {
                call: "http client",
                problem: e.to_string(),
            })?;
        Ok(Self { client, conn, http })
    }

    pub fn endpoint(&self) -> &str {
        &self.conn.endpoint
    }

    fn c(&self) -> Client {
        self.client.clone()
    }

    /// gRPC `CheckHealth`, and `/healthz` when configured. Healthy only when
    /// both say so.
    pub async fn health(&self) -> Health {
        let grpc = self
            .c()
            .check_health(mpb::CheckHealthRequest {})
            .await
            .map(|r| r.into_inner());
        let mut detail = Vec::new();
        let mut healthy = match grpc {
            Ok(r) if r.status.as_ref().is_none_or(|s| s.code == 0) && r.is_healthy => true,
            Ok(r) => {
                detail.push(format!("CheckHealth: unhealthy {:?}", r.reasons));
                false
            }
            Err(e) => {
                detail.push(format!("CheckHealth: {}", e.message()));
                false
            }
        };
        if let Some(url) = &self.conn.health_url {
            match self.http.get(url).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => {
                    healthy = false;
                    detail.push(format!("{url}: HTTP {}", r.status()));
                }
                Err(e) => {
                    healthy = false;
                    detail.push(format!("{url}: {e}"));
                }
            }
        }
        Health {
            healthy,
            detail: if detail.is_empty() {
                "ok".into()
            } else {
                detail.join("; ")
            },
        }
    }

    pub async fn version(&self) -> Result<String> {
        let r = self
            .c()
            .get_version(mpb::GetVersionRequest {})
            .await
            .map_err(|status| MilvusError::Transport {
                call: "GetVersion",
                status,
            })?
            .into_inner();
        Ok(r.version)
    }

    pub async fn alloc_timestamp(&self) -> Result<u64> {
        let r = self
            .c()
            .alloc_timestamp(mpb::AllocTimestampRequest { base: base() })
            .await
            .map_err(|status| MilvusError::Transport {
                call: "AllocTimestamp",
                status,
            })?
            .into_inner();
        check("AllocTimestamp", r.status)?;
        Ok(r.timestamp)
    }

    pub async fn list_databases(&self) -> Result<Vec<String>> {
        let r = self
            .c()
            .list_databases(mpb::ListDatabasesRequest::default())
            .await
            .map_err(|status| MilvusError::Transport {
                call: "ListDatabases",
                status,
            })?
            .into_inner();
        check("ListDatabases", r.status)?;
        let mut dbs = r.db_names;
        dbs.sort();
        Ok(dbs)
    }

    pub async fn create_database(&self, db: &str) -> Result<()> {
        let r = self
            .c()
            .create_database(mpb::CreateDatabaseRequest {
                db_name: db.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|status| MilvusError::Transport {
                call: "CreateDatabase",
                status,
            })?
            .into_inner();
        match check("CreateDatabase", Some(r)) {
            Err(e) if e.is_already_exists() => Ok(()),
            other => other,
        }
    }

    pub async fn drop_database(&self, db: &str) -> Result<()> {
        let r = self
            .c()
            .drop_database(mpb::DropDatabaseRequest {
                db_name: db.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|status| MilvusError::Transport {
                call: "DropDatabase",
                status,
            })?
            .into_inner();
        match check("DropDatabase", Some(r)) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    pub async fn list_collections(&self, db: &str) -> Result<Vec<String>> {
        let r = self
            .c()
            .show_collections(mpb::ShowCollectionsRequest {
                db_name: db.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|status| MilvusError::Transport {
                call: "ShowCollections",
                status,
            })?
            .into_inner();
        check("ShowCollections", r.status)?;
        let mut names = r.collection_names;
        names.sort();
        Ok(names)
    }

    pub async fn describe(&self, db: &str, collection: &str) -> Result<CollectionInfo> {
        let r = self
            .c()
            .describe_collection(mpb::DescribeCollectionRequest {
                db_name: db.to_string(),
                collection_name: collection.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|status| MilvusError::Transport {
                call: "DescribeCollection",
                status,
            })?
            .into_inner();
        check("DescribeCollection", r.status)?;
        let schema = r.schema.ok_or_else(|| MilvusError::Protocol {
            call: "DescribeCollection",
            problem: "no schema".into(),
        })?;
        Ok(CollectionInfo {
            database: db.to_string(),
            name: collection.to_string(),
            id: r.collection_id,
            schema,
            shards_num: r.shards_num,
            consistency_level: r.consistency_level,
            properties: r.properties,
            num_partitions: r.num_partitions,
        })
    }

    pub async fn list_partitions(&self, db: &str, collection: &str) -> Result<Vec<String>> {
        let r = self
            .c()
            .show_partitions(mpb::ShowPartitionsRequest {
                db_name: db.to_string(),
                collection_name: collection.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|status| MilvusError::Transport {
                call: "ShowPartitions",
                status,
            })?
            .into_inner();
        check("ShowPartitions", r.status)?;
        let mut names = r.partition_names;
        names.sort();
        Ok(names)
    }

    pub async fn list_indexes(&self, db: &str, collection: &str) -> Result<Vec<IndexInfo>> {
        let r = self
            .c()
            .describe_index(mpb::DescribeIndexRequest {
                db_name: db.to_string(),
                collection_name: collection.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|status| MilvusError::Transport {
                call: "DescribeIndex",
                status,
            })?
            .into_inner();
        match check("DescribeIndex", r.status) {
            // 2.3 answers "index not found" (code 700) when there is none.
            Err(MilvusError::Server { code, reason, .. })
                if code == 700
                    || reason.contains("index not found")
                    || reason.contains("index doesn't exist") =>
            {
                return Ok(vec![])
            }
            other => other?,
        }
        let mut out: Vec<IndexInfo> = r
            .index_descriptions
            .into_iter()
            .map(|d| {
                let mut params: Vec<(String, String)> =
                    d.params.into_iter().map(|p| (p.key, p.value)).collect();
                params.sort();
                IndexInfo {
                    field: d.field_name,
                    index_name: d.index_name,
                    params,
                }
            })
            .collect();
        out.sort();
        Ok(out)
    }

    pub async fn load_state(&self, db: &str, collection: &str) -> Result<LoadState> {
        let r = self
            .c()
            .get_load_state(mpb::GetLoadStateRequest {
                db_name: db.to_string(),
                collection_name: collection.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|status| MilvusError::Transport {
                call: "GetLoadState",
                status,
            })?
            .into_inner();
        let state = r.state();
        check("GetLoadState", r.status)?;
        Ok(state)
    }

    pub async fn create_collection(&self, info: &CollectionInfo) -> Result<()> {
        let schema = info.replica_schema();
        let mut req = mpb::CreateCollectionRequest {
            db_name: info.database.clone(),
            collection_name: info.name.clone(),
            schema: schema.encode_to_vec(),
            shards_num: info.shards_num,
            consistency_level: info.consistency_level,
            properties: info.properties.clone(),
            ..Default::default()
        };
        if info.has_partition_key() {
            req.num_partitions = info.num_partitions;
        }
        let r = self
            .c()
            .create_collection(req)
            .await
            .map_err(|status| MilvusError::Transport {
                call: "CreateCollection",
                status,
            })?
            .into_inner();
        check("CreateCollection", Some(r))
    }

    pub async fn drop_collection(&self, db: &str, collection: &str) -> Result<()> {
        let r = self
            .c()
            .drop_collection(mpb::DropCollectionRequest {
                db_name: db.to_string(),
                collection_name: collection.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|status| MilvusError::Transport {
                call: "DropCollection",
                status,
            })?
            .into_inner();
        match check("DropCollection", Some(r)) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    pub async fn create_partition(
        &self,
        db: &str,
        collection: &str,
        partition: &str,
    ) -> Result<()> {
        let r = self
            .c()
            .create_partition(mpb::CreatePartitionRequest {
                db_name: db.to_string(),
                collection_name: collection.to_string(),
                partition_name: partition.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|status| MilvusError::Transport {
                call: "CreatePartition",
                status,
            })?
            .into_inner();
        match check("CreatePartition", Some(r)) {
            Err(e) if e.is_already_exists() => Ok(()),
            other => other,
        }
    }

    pub async fn drop_partition(&self, db: &str, collection: &str, partition: &str) -> Result<()> {
        // A loaded partition cannot be dropped: release it first.
        let _ = self
            .c()
            .release_partitions(mpb::ReleasePartitionsRequest {
                db_name: db.to_string(),
                collection_name: collection.to_string(),
                partition_names: vec![partition.to_string()],
                ..Default::default()
            })
            .await;
        let r = self
            .c()
            .drop_partition(mpb::DropPartitionRequest {
                db_name: db.to_string(),
                collection_name: collection.to_string(),
                partition_name: partition.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|status| MilvusError::Transport {
                call: "DropPartition",
                status,
            })?
            .into_inner();
        match check("DropPartition", Some(r)) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    pub async fn create_index(&self, db: &str, collection: &str, index: &IndexInfo) -> Result<()> {
        let params = &index.params;
        let r = self
            .c()
            .create_index(mpb::CreateIndexRequest {
                db_name: db.to_string(),
                collection_name: collection.to_string(),
                field_name: index.field.clone(),
                index_name: index.index_name.clone(),
                extra_params: kv(params),
                ..Default::default()
            })
            .await
            .map_err(|status| MilvusError::Transport {
                call: "CreateIndex",
                status,
            })?
            .into_inner();
        check("CreateIndex", Some(r))
    }

    pub async fn drop_index(
        &self,
        db: &str,
        collection: &str,
        field: &str,
        index_name: &str,
    ) -> Result<()> {
        let r = self
            .c()
            .drop_index(mpb::DropIndexRequest {
                db_name: db.to_string(),
                collection_name: collection.to_string(),
                field_name: field.to_string(),
                index_name: index_name.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|status| MilvusError::Transport {
                call: "DropIndex",
                status,
            })?
            .into_inner();
        check("DropIndex", Some(r))
    }

    /// Starts loading; use [`Milvus::wait_loaded`] to wait for it.
    pub async fn load(&self, db: &str, collection: &str) -> Result<()> {
        let r = self
            .c()
            .load_collection(mpb::LoadCollectionRequest {
                db_name: db.to_string(),
                collection_name: collection.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|status| MilvusError::Transport {
                call: "LoadCollection",
                status,
            })?
            .into_inner();
        check("LoadCollection", Some(r))
    }

    pub async fn release(&self, db: &str, collection: &str) -> Result<()> {
        let r = self
            .c()
            .release_collection(mpb::ReleaseCollectionRequest {
                db_name: db.to_string(),
                collection_name: collection.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|status| MilvusError::Transport {
                call: "ReleaseCollection",
                status,
            })?
            .into_inner();
        check("ReleaseCollection", Some(r))
    }

    /// Waits until the collection is loaded, polling its load state.
    pub async fn wait_loaded(&self, db: &str, collection: &str, deadline: Duration) -> Result<()> {
        let until = tokio::time::Instant::now() + deadline;
        let mut delay = Duration::from_millis(50);
        loop {
            if self.load_state(db, collection).await? == LoadState::Loaded {
                return Ok(());
            }
            if tokio::time::Instant::now() >= until {
                return Err(MilvusError::Protocol {
                    call: "LoadCollection",
                    problem: format!("{db}.{collection} not loaded after {deadline:?}"),
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    pub async fn flush(&self, db: &str, collection: &str) -> Result<()> {
        let r = self
            .c()
            .flush(mpb::FlushRequest {
                db_name: db.to_string(),
                collection_names: vec![collection.to_string()],
                ..Default::default()
            })
            .await
            .map_err(|status| MilvusError::Transport {
                call: "Flush",
                status,
            })?
            .into_inner();
        check("Flush", r.status)
    }

    /// One page of a primary-key ordered scan: rows with key > `after`
    /// (all rows when `None`), at most `limit`, every write acknowledged
    /// before `guarantee_ts` visible (0 = Strong consistency).
    #[allow(clippy::too_many_arguments)]
    pub async fn query_page(
        &self,
        info: &CollectionInfo,
        partition: Option<&str>,
        output_fields: &[String],
        after: Option<&Pk>,
        limit: usize,
        guarantee_ts: u64,
    ) -> Result<Vec<FieldData>> {
        let pk = info.primary_field().ok_or_else(|| MilvusError::Protocol {
            call: "Query",
            problem: format!("{} has no primary key", info.name),
        })?;
        let expr = match after {
            None => String::new(),
            Some(Pk::Int(v)) => format!("{} > {v}", pk.name),
            Some(Pk::Str(v)) => format!("{} > {}", pk.name, quote(v)),
        };
        self.query(
            info,
            partition,
            &expr,
            output_fields,
            Some(limit),
            guarantee_ts,
        )
        .await
    }

    /// A plain query by expression.
    pub async fn query(
        &self,
        info: &CollectionInfo,
        partition: Option<&str>,
        expr: &str,
        output_fields: &[String],
        limit: Option<usize>,
        guarantee_ts: u64,
    ) -> Result<Vec<FieldData>> {
        let mut query_params = Vec::new();
        if let Some(limit) = limit {
            query_params.push(KeyValuePair {
                key: "limit".into(),
                value: limit.min(MAX_QUERY_WINDOW).to_string(),
            });
        }
        let (level, ts) = if guarantee_ts == 0 {
            (ConsistencyLevel::Strong, 0)
        } else {
            (ConsistencyLevel::Customized, guarantee_ts)
        };
        let r = self
            .c()
            .query(mpb::QueryRequest {
                db_name: info.database.clone(),
                collection_name: info.name.clone(),
                expr: expr.to_string(),
                output_fields: output_fields.to_vec(),
                partition_names: partition.map(|p| vec![p.to_string()]).unwrap_or_default(),
                guarantee_timestamp: ts,
                query_params,
                consistency_level: level as i32,
                use_default_consistency: false,
                ..Default::default()
            })
            .await
            .map_err(|status| MilvusError::Transport {
                call: "Query",
                status,
            })?
            .into_inner();
        check("Query", r.status)?;
        Ok(r.fields_data)
    }

    pub async fn upsert(
        &self,
        db: &str,
        collection: &str,
        partition: Option<&str>,
        fields: Vec<FieldData>,
        num_rows: u32,
    ) -> Result<()> {
        let r = self
            .c()
            .upsert(mpb::UpsertRequest {
                db_name: db.to_string(),
                collection_name: collection.to_string(),
                partition_name: partition.unwrap_or_default().to_string(),
                fields_data: fields,
                num_rows,
                ..Default::default()
            })
            .await
            .map_err(|status| MilvusError::Transport {
                call: "Upsert",
                status,
            })?
            .into_inner();
        check("Upsert", r.status)
    }

    pub async fn insert(
        &self,
        db: &str,
        collection: &str,
        partition: Option<&str>,
        fields: Vec<FieldData>,
        num_rows: u32,
    ) -> Result<()> {
        let r = self
            .c()
            .insert(mpb::InsertRequest {
                db_name: db.to_string(),
                collection_name: collection.to_string(),
                partition_name: partition.unwrap_or_default().to_string(),
                fields_data: fields,
                num_rows,
                ..Default::default()
            })
            .await
            .map_err(|status| MilvusError::Transport {
                call: "Insert",
                status,
            })?
            .into_inner();
        check("Insert", r.status)
    }

    /// Deletes by primary key, in chunks that keep expressions small.
    pub async fn delete(
        &self,
        db: &str,
        collection: &str,
        partition: Option<&str>,
        pk_field: &str,
        keys: &[Pk],
    ) -> Result<()> {
        for chunk in keys.chunks(4096) {
            let r = self
                .c()
                .delete(mpb::DeleteRequest {
                    db_name: db.to_string(),
                    collection_name: collection.to_string(),
                    partition_name: partition.unwrap_or_default().to_string(),
                    expr: in_expr(pk_field, chunk),
                    ..Default::default()
                })
                .await
                .map_err(|status| MilvusError::Transport {
                    call: "Delete",
                    status,
                })?
                .into_inner();
            check("Delete", r.status)?;
        }
        Ok(())
    }

    /// `count(*)` with Strong consistency: the honest row count.
    pub async fn count(&self, info: &CollectionInfo) -> Result<u64> {
        let fields = self
            .query(info, None, "", &["count(*)".to_string()], None, 0)
            .await?;
        let n = fields
            .first()
            .and_then(|f| match &f.field {
                Some(schema::field_data::Field::Scalars(s)) => match &s.data {
                    Some(schema::scalar_field::Data::LongData(l)) => l.data.first().copied(),
                    _ => None,
                },
                _ => None,
            })
            .ok_or_else(|| MilvusError::Protocol {
                call: "Query count(*)",
                problem: "no count in the answer".into(),
            })?;
        Ok(n.max(0) as u64)
    }
}

/// Completes columns as Milvus returns them from a query so that they can
/// be written back: 2.3 returns an empty array as an element without data,
/// and its proxy crashes (nil dereference in `checkArrayElement`) when such
/// an element is inserted; the element type of array columns may be unset.
pub fn normalize(info: &CollectionInfo, fields: &mut [FieldData]) {
    for f in fields.iter_mut() {
        let Some(schema_field) = info.schema.fields.iter().find(|s| s.name == f.field_name) else {
            continue;
        };
        if f.field_id == 0 {
            f.field_id = schema_field.field_id;
        }
        if let Some(schema::field_data::Field::Scalars(sc)) = &mut f.field {
            if let Some(schema::scalar_field::Data::ArrayData(a)) = &mut sc.data {
                if a.element_type == 0 {
                    a.element_type = schema_field.element_type;
                }
                for row in a.data.iter_mut().filter(|r| r.data.is_none()) {
                    row.data = empty_array(a.element_type);
                }
            }
        }
    }
}

/// An empty list of the given element type.
fn empty_array(element_type: i32) -> Option<schema::scalar_field::Data> {
    use schema::scalar_field::Data as S;
    Some(match DataType::try_from(element_type).ok()? {
        DataType::Bool => S::BoolData(schema::BoolArray::default()),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => {
            S::IntData(schema::IntArray::default())
        }
        DataType::Int64 => S::LongData(schema::LongArray::default()),
        DataType::Float => S::FloatData(schema::FloatArray::default()),
        DataType::Double => S::DoubleData(schema::DoubleArray::default()),
        DataType::VarChar | DataType::String => S::StringData(schema::StringArray::default()),
        _ => return None,
    })
}

/// One page of a scan: columns and their primary keys (ascending).
pub struct Page {
    pub fields: Vec<FieldData>,
    pub keys: Vec<Pk>,
}

/// Scans a collection (or one partition) in primary-key order, pinned to
/// `ts`, reading one page ahead of the consumer. Pages arrive on the
/// returned channel; the last page is the first with fewer than
/// `page_rows` rows (possibly empty). A page whose keys are not strictly
/// ascending is an error: callers derive deletes from what a page lacks.
pub fn scan_pages(
    milvus: &Milvus,
    info: &CollectionInfo,
    partition: Option<&str>,
    ts: u64,
    page_rows: usize,
) -> tokio::sync::mpsc::Receiver<std::result::Result<Page, anyhow::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let (milvus, info, partition) = (milvus.clone(), info.clone(), partition.map(str::to_string));
    tokio::spawn(async move {
        let fields = info.output_fields();
        let pk_name = info
            .primary_field()
            .map(|f| f.name.clone())
            .unwrap_or_default();
        let mut after: Option<Pk> = None;
        loop {
            let page = retry("scan page", 5, || {
                milvus.query_page(
                    &info,
                    partition.as_deref(),
                    &fields,
                    after.as_ref(),
                    page_rows,
                    ts,
                )
            })
            .await
            .map_err(anyhow::Error::from)
            .and_then(|mut f| {
                normalize(&info, &mut f);
                if rows::num_rows(&f)? == 0 {
                    return Ok(Page {
                        fields: f,
                        keys: vec![],
                    });
                }
                let keys = rows::primary_keys(&f, &pk_name)?;
                if keys.windows(2).any(|w| w[0] >= w[1])
                    || after
                        .as_ref()
                        .is_some_and(|a| keys.first().is_some_and(|k| k <= a))
                {
                    anyhow::bail!(
                        "{}.{}: Milvus returned a page not in primary-key order",
                        info.database,
                        info.name
                    );
                }
                Ok(Page { fields: f, keys })
            });
            let done = match &page {
                Ok(p) => {
                    after = p.keys.last().cloned();
                    p.keys.len() < page_rows
                }
                Err(_) => true,
            };
            if tx.send(page).await.is_err() || done {
                break;
            }
        }
    });
    rx
}

/// Retries `f` with exponential backoff while its error is retryable,
/// up to `attempts` tries.
pub async fn retry<T, F, Fut>(what: &str, attempts: u32, mut f: F) -> Result<T, MilvusError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, MilvusError>>,
{
    let mut delay = std::time::Duration::from_millis(100);
    let mut n = 0;
    loop {
        n += 1;
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && n < attempts => {
                tracing::warn!(error = %e, attempt = n, "{what} failed; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(10));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_quotes_and_backslashes() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(
            in_expr("id", &[Pk::Str("x".into()), Pk::Str("y\"".into())]),
            r#"id in ["x","y\""]"#
        );
        assert_eq!(in_expr("id", &[Pk::Int(-3), Pk::Int(7)]), "id in [-3,7]");
    }

    #[test]
    fn hybrid_timestamp_physical_part() {
        let ms = 1_764_000_000_000u64;
        assert_eq!(hybrid_ts_to_ms((ms << 18) | 5), ms as i64);
    }

    #[test]
    fn retryable_errors() {
        let e = MilvusError::Server {
            call: "Query",
            code: 100,
            reason: "collection not found".into(),
        };
        assert!(!e.is_retryable());
        assert!(e.is_not_found());
        let e = MilvusError::Transport {
            call: "Query",
            status: tonic::Status::unavailable("down"),
        };
        assert!(e.is_retryable());
    }
}
