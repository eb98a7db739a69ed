//! `manifest.json`: what a backup holds and how to check it.

use anyhow::{Context, Result};
use milvus::proto::common::KeyValuePair;
use milvus::proto::schema::{CollectionSchema, DataType};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::milvus::{CollectionInfo, IndexInfo};

pub const MANIFEST: &str = "manifest.json";
pub const VERIFIED: &str = "verified.json";
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Layout version of this folder.
    pub format: u32,
    pub id: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: String,
    pub source: Source,
    /// e.g. `milvus-dr 0.1.0`.
    pub tool: String,
    pub collections: Vec<CollectionBackup>,
    pub total_rows: u64,
    pub total_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Source {
    pub datacenter: String,
    /// The replication epoch the source datacenter had (unknown for
    /// backups taken with `drctl` without a running agent).
    pub epoch: Option<u64>,
    pub milvus_endpoint: String,
    pub milvus_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CollectionBackup {
    pub database: String,
    pub name: String,
    /// Milvus' collection id at backup time.
    pub id: i64,
    /// Human-readable schema (the exact one is `schema_proto`).
    pub fields: Vec<FieldSummary>,
    pub enable_dynamic_field: bool,
    pub description: String,
    /// The `CollectionSchema` protobuf, hex: recreates the schema exactly.
    pub schema_proto: String,
    pub shards_num: i32,
    pub consistency_level: i32,
    pub properties: Vec<(String, String)>,
    pub num_partitions: i64,
    pub partitions: Vec<String>,
    pub indexes: Vec<IndexDef>,
    /// Whether the collection was loaded (restore loads it again if so).
    pub loaded: bool,
    /// The Milvus timestamp every page was read at.
    pub snapshot_ts: u64,
    pub rows: u64,
    /// See [`super::Digest::text`].
    pub digest: String,
    pub objects: Vec<ObjectEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FieldSummary {
    pub name: String,
    pub data_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub element_type: Option<String>,
    pub primary_key: bool,
    pub auto_id: bool,
    pub partition_key: bool,
    pub params: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IndexDef {
    pub field: String,
    pub index_name: String,
    pub params: Vec<(String, String)>,
}

/// One Parquet object of a collection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObjectEntry {
    /// Path relative to the backup folder.
    pub key: String,
    /// The partition the rows belong to; `None` when rows are routed by a
    /// partition key or the collection has only `_default`.
    pub partition: Option<String>,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
    pub parts: u32,
    pub digest: String,
    /// Consecutive byte ranges that cover the object, each with its
    /// SHA-256: one per Parquet row group (the first also holds the leading
    /// magic), then the footer. A restore fetches and checks them one at a
    /// time, so it never writes a row it has not checked and never holds a
    /// whole object.
    #[serde(default)]
    pub segments: Vec<Segment>,
}

/// A byte range of an object (see [`ObjectEntry::segments`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Segment {
    pub len: u64,
    pub sha256: String,
}

impl ObjectEntry {
    /// Each segment with its byte range in the object, in order.
    pub fn segment_ranges(&self) -> Vec<(std::ops::Range<u64>, Segment)> {
        let mut at = 0;
        self.segments
            .iter()
            .map(|s| {
                at += s.len;
                (at - s.len..at, s.clone())
            })
            .collect()
    }

    /// Whether there are segments and they cover the object exactly.
    pub fn segments_cover(&self) -> bool {
        !self.segments.is_empty() && self.segments.iter().map(|s| s.len).sum::<u64>() == self.bytes
    }
}

fn pairs(v: &[KeyValuePair]) -> Vec<(String, String)> {
    v.iter().map(|p| (p.key.clone(), p.value.clone())).collect()
}

impl CollectionBackup {
    /// Describes a collection (rows and objects are filled in later).
    pub fn describe(
        info: &CollectionInfo,
        partitions: &[String],
        indexes: &[IndexInfo],
        loaded: bool,
    ) -> CollectionBackup {
        let s = &info.schema;
        CollectionBackup {
            database: info.database.clone(),
            name: info.name.clone(),
            id: info.id,
            fields: s
                .fields
                .iter()
                .map(|f| FieldSummary {
                    name: f.name.clone(),
                    data_type: f.data_type().as_str_name().into(),
                    element_type: (f.data_type() == DataType::Array).then(|| {
                        DataType::try_from(f.element_type)
                            .map(|t| t.as_str_name().to_string())
                            .unwrap_or_default()
                    }),
                    primary_key: f.is_primary_key,
                    auto_id: f.auto_id,
                    partition_key: f.is_partition_key,
                    params: pairs(&f.type_params),
                })
                .collect(),
            enable_dynamic_field: s.enable_dynamic_field,
            description: s.description.clone(),
            schema_proto: hex::encode(s.encode_to_vec()),
            shards_num: info.shards_num,
            consistency_level: info.consistency_level,
            properties: pairs(&info.properties),
            num_partitions: info.num_partitions,
            partitions: partitions.to_vec(),
            indexes: indexes
                .iter()
                .map(|i| IndexDef {
                    field: i.field.clone(),
                    index_name: i.index_name.clone(),
                    params: i.params.clone(),
                })
                .collect(),
            loaded,
            snapshot_ts: 0,
            rows: 0,
            digest: super::Digest::default().text(),
            objects: vec![],
        }
    }

    pub fn qualified(&self) -> String {
        super::qualified(&self.database, &self.name)
    }

    pub fn schema(&self) -> Result<CollectionSchema> {
        let bytes = hex::decode(&self.schema_proto).context("schema_proto is not hex")?;
        CollectionSchema::decode(bytes.as_slice()).context("schema_proto is not a schema")
    }

    /// The collection as it is to be created under `database.name`.
    pub fn info_as(&self, database: &str, name: &str) -> Result<CollectionInfo> {
        let mut schema = self.schema()?;
        schema.name = name.to_string();
        Ok(CollectionInfo {
            database: database.to_string(),
            name: name.to_string(),
            id: 0,
            schema,
            shards_num: self.shards_num,
            consistency_level: self.consistency_level,
            properties: self
                .properties
                .iter()
                .map(|(k, v)| KeyValuePair {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            num_partitions: self.num_partitions,
        })
    }
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    pub fn from_json(bytes: &[u8]) -> Result<Manifest> {
        let m: Manifest = serde_json::from_slice(bytes).context("parse manifest.json")?;
        anyhow::ensure!(
            m.format == FORMAT,
            "manifest format {} is not supported by this version (which reads {FORMAT})",
            m.format
        );
        Ok(m)
    }
}

/// `verified.json`: the last verify (or drill) that passed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Verified {
    pub at: String,
    pub by: String,
    pub objects: usize,
    pub bytes: u64,
}
