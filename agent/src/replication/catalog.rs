//! The catalog: which databases, collections, partitions, indexes and load
//! states the primary has, sent as DDL at the start of every capture pass
//! and reconciled by the sink ("make it so").

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use milvus::proto::common::{KeyValuePair, LoadState};
use milvus::proto::schema::CollectionSchema;
use prost::Message;

use crate::milvus::{CollectionInfo, IndexInfo, Milvus, MilvusError};
use dr_proto::pb::{self, ddl::Op};

/// Name of the partition every collection has.
pub const DEFAULT_PARTITION: &str = "_default";

/// One collection as the primary has it.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionEntry {
    pub info: CollectionInfo,
    pub partitions: Vec<String>,
    pub indexes: Vec<IndexInfo>,
    pub loaded: bool,
}

impl CollectionEntry {
    pub fn key(&self) -> String {
        format!("{}.{}", self.info.database, self.info.name)
    }

    /// The partitions a capture pass scans separately. `None` = the whole
    /// collection at once (one partition, or partition-key routing).
    pub fn scan_partitions(&self) -> Vec<Option<String>> {
        if self.info.has_partition_key() || self.partitions.iter().all(|p| p == DEFAULT_PARTITION) {
            vec![None]
        } else {
            self.partitions.iter().cloned().map(Some).collect()
        }
    }
}

/// Everything the primary has, in a stable order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    pub databases: Vec<String>,
    pub collections: Vec<CollectionEntry>,
    /// Collections (`database.collection`) on the primary that the filter
    /// leaves out.
    pub unreplicated: Vec<String>,
}

/// Which collections to replicate.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub databases: Vec<String>,
    pub exclude: Vec<String>,
}

impl Filter {
    fn listed_db(&self, db: &str) -> bool {
        self.databases.is_empty() || self.databases.iter().any(|d| d == db)
    }
    pub fn wants_db(&self, db: &str) -> bool {
        db == crate::drill::MARKERS_DB || self.listed_db(db)
    }
    /// The drills' marker collection is always replicated: a drill measures
    /// the data loss with it on both sides.
    pub fn wants(&self, db: &str, coll: &str) -> bool {
        if db == crate::drill::MARKERS_DB && coll == crate::drill::MARKERS_COLLECTION {
            return true;
        }
        self.listed_db(db) && !self.exclude.iter().any(|e| *e == format!("{db}.{coll}"))
    }
}

/// Lists databases, tolerating servers without database support.
pub async fn databases(milvus: &Milvus) -> Result<Vec<String>, MilvusError> {
    match milvus.list_databases().await {
        Ok(dbs) if !dbs.is_empty() => Ok(dbs),
        Ok(_) => Ok(vec!["default".into()]),
        Err(e) if !e.is_retryable() => Ok(vec!["default".into()]),
        Err(e) => Err(e),
    }
}

/// Reads the catalog of a Milvus.
pub async fn read(milvus: &Milvus, filter: &Filter) -> Result<Catalog, MilvusError> {
    let mut cat = Catalog::default();
    for db in databases(milvus).await? {
        let wanted_db = filter.wants_db(&db);
        if wanted_db {
            cat.databases.push(db.clone());
        }
        for name in milvus.list_collections(&db).await? {
            if !filter.wants(&db, &name) {
                cat.unreplicated.push(format!("{db}.{name}"));
                continue;
            }
            // A collection dropped between listing and describing is simply
            // not part of this pass.
            let info = match milvus.describe(&db, &name).await {
                Ok(i) => i,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            let partitions = milvus.list_partitions(&db, &name).await?;
            let indexes = milvus.list_indexes(&db, &name).await?;
            let loaded = milvus.load_state(&db, &name).await? == LoadState::Loaded;
            cat.collections.push(CollectionEntry {
                info,
                partitions,
                indexes,
                loaded,
            });
        }
    }
    Ok(cat)
}

fn kv_pb(v: &[KeyValuePair]) -> Vec<pb::KeyValue> {
    v.iter()
        .map(|p| pb::KeyValue {
            key: p.key.clone(),
            value: p.value.clone(),
        })
        .collect()
}

/// The catalog as DDL operations.
pub fn to_ddl(cat: &Catalog) -> Vec<pb::Ddl> {
    let mut out = Vec::new();
    let op = |o: Op| pb::Ddl { op: Some(o) };
    for db in &cat.databases {
        out.push(op(Op::CreateDatabase(pb::CreateDatabase {
            database: db.clone(),
        })));
    }
    for c in &cat.collections {
        let (db, name) = (&c.info.database, &c.info.name);
        out.push(op(Op::CreateCollection(pb::CreateCollection {
            database: db.clone(),
            collection: name.clone(),
            schema: c.info.schema.encode_to_vec(),
            shards_num: c.info.shards_num,
            consistency_level: c.info.consistency_level,
            properties: kv_pb(&c.info.properties),
            num_partitions: c.info.num_partitions,
            source_id: c.info.id,
        })));
        if !c.info.has_partition_key() {
            for p in &c.partitions {
                out.push(op(Op::CreatePartition(pb::CreatePartition {
                    database: db.clone(),
                    collection: name.clone(),
                    partition: p.clone(),
                })));
            }
        }
        for i in &c.indexes {
            out.push(op(Op::CreateIndex(pb::CreateIndex {
                database: db.clone(),
                collection: name.clone(),
                field: i.field.clone(),
                index_name: i.index_name.clone(),
                params: i
                    .params
                    .iter()
                    .map(|(k, v)| pb::KeyValue {
                        key: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
            })));
        }
        out.push(op(Op::SetLoaded(pb::SetLoaded {
            database: db.clone(),
            collection: name.clone(),
            loaded: c.loaded,
        })));
    }
    out
}

/// The catalog back from DDL operations (as the sink receives it).
pub fn from_ddl(ddl: &[pb::Ddl]) -> Result<Catalog> {
    let mut cat = Catalog::default();
    let mut index: BTreeMap<(String, String), usize> = BTreeMap::new();
    for d in ddl {
        match d.op.as_ref() {
            Some(Op::CreateDatabase(x)) => cat.databases.push(x.database.clone()),
            Some(Op::CreateCollection(x)) => {
                let schema = CollectionSchema::decode(x.schema.as_slice())
                    .context("decode a replicated collection schema")?;
                index.insert(
                    (x.database.clone(), x.collection.clone()),
                    cat.collections.len(),
                );
                cat.collections.push(CollectionEntry {
                    info: CollectionInfo {
                        database: x.database.clone(),
                        name: x.collection.clone(),
                        id: x.source_id,
                        schema,
                        shards_num: x.shards_num,
                        consistency_level: x.consistency_level,
                        properties: x
                            .properties
                            .iter()
                            .map(|p| KeyValuePair {
                                key: p.key.clone(),
                                value: p.value.clone(),
                            })
                            .collect(),
                        num_partitions: x.num_partitions,
                    },
                    partitions: vec![],
                    indexes: vec![],
                    loaded: false,
                });
            }
            Some(Op::CreatePartition(x)) => {
                let i = *index
                    .get(&(x.database.clone(), x.collection.clone()))
                    .context("partition of an unknown collection")?;
                cat.collections[i].partitions.push(x.partition.clone());
            }
            Some(Op::CreateIndex(x)) => {
                let i = *index
                    .get(&(x.database.clone(), x.collection.clone()))
                    .context("index of an unknown collection")?;
                cat.collections[i].indexes.push(IndexInfo {
                    field: x.field.clone(),
                    index_name: x.index_name.clone(),
                    params: x
                        .params
                        .iter()
                        .map(|p| (p.key.clone(), p.value.clone()))
                        .collect(),
                });
            }
            Some(Op::SetLoaded(x)) => {
                let i = *index
                    .get(&(x.database.clone(), x.collection.clone()))
                    .context("load state of an unknown collection")?;
                cat.collections[i].loaded = x.loaded;
            }
            Some(Op::DropCollection(_) | Op::DropPartition(_) | Op::DropIndex(_)) | None => {
                anyhow::bail!("a catalog carries only create operations")
            }
        }
    }
    Ok(cat)
}

/// What the sink knows about a collection it manages.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Managed {
    /// The primary's collection id it mirrors.
    pub source_id: i64,
    /// The lineage in which the sink created it (empty when it adopted an
    /// existing collection): only then may rows new to that lineage be
    /// inserted rather than upserted.
    pub created_in: String,
}

/// Two schemas describe the same collection (ignoring what replicas change).
fn same_shape(a: &CollectionSchema, b: &CollectionSchema) -> bool {
    let norm = |s: &CollectionSchema| {
        let mut fields: Vec<_> = s
            .fields
            .iter()
            .filter(|f| !f.is_dynamic)
            .map(|f| {
                (
                    f.name.clone(),
                    f.data_type,
                    f.is_primary_key,
                    f.type_params
                        .iter()
                        .map(|p| (p.key.clone(), p.value.clone()))
                        .collect::<BTreeSet<_>>(),
                )
            })
            .collect();
        fields.sort();
        (fields, s.enable_dynamic_field)
    };
    norm(a) == norm(b)
}

/// Makes the sink's Milvus match `cat` for the collections it manages.
/// Returns human-readable descriptions of what it changed, and the
/// collections it cannot make so for a permanent reason (with why): those
/// are held, the rest of the catalog goes on.
pub async fn reconcile(
    milvus: &Milvus,
    cat: &Catalog,
    managed: &mut BTreeMap<String, Managed>,
    unmanaged: &mut BTreeSet<String>,
    lineage: &str,
) -> Result<(Vec<String>, Vec<(String, String)>)> {
    let mut changes = Vec::new();
    let existing_dbs: BTreeSet<String> = databases(milvus).await?.into_iter().collect();
    for db in &cat.databases {
        if !existing_dbs.contains(db) {
            milvus.create_database(db).await?;
            changes.push(format!("created database {db}"));
        }
    }
    let wanted: BTreeSet<String> = cat.collections.iter().map(|c| c.key()).collect();
    // Collections dropped on the primary.
    let gone: Vec<String> = managed
        .keys()
        .filter(|k| !wanted.contains(*k))
        .cloned()
        .collect();
    for key in gone {
        managed.remove(&key);
        if cat.unreplicated.contains(&key) {
            // Still on the primary, only left out of replication: the
            // standby's copy is kept; dropping it is an operator's call.
            tracing::warn!(
                collection = %key,
                "no longer replicated (outside replication.databases / exclude): the standby keeps its copy, unmanaged; drop it with `drctl drop-unmanaged DC {key}`"
            );
            unmanaged.insert(key.clone());
            changes.push(format!("stopped managing {key} (kept on the standby)"));
            continue;
        }
        if let Some((db, name)) = key.split_once('.') {
            milvus.drop_collection(db, name).await?;
            changes.push(format!("dropped collection {key}"));
        }
    }
    for c in &cat.collections {
        unmanaged.remove(&c.key());
    }
    let mut held = Vec::new();
    for c in &cat.collections {
        if let Err(e) = reconcile_one(milvus, c, managed, lineage, &mut changes).await {
            if !is_permanent(&e) {
                return Err(e);
            }
            // This collection only: the others go on.
            held.push((c.key(), format!("{e:#}")));
        }
    }
    Ok((changes, held))
}

/// Makes one collection of the catalog so on the sink.
async fn reconcile_one(
    milvus: &Milvus,
    c: &CollectionEntry,
    managed: &mut BTreeMap<String, Managed>,
    lineage: &str,
    changes: &mut Vec<String>,
) -> Result<()> {
    let (db, name) = (c.info.database.as_str(), c.info.name.as_str());
    let key = c.key();
    let exists = milvus.list_collections(db).await?.iter().any(|n| n == name);
    let mine = managed.get(&key).cloned();
    let must_create = match (&mine, exists) {
        (Some(m), true) if m.source_id == c.info.id => false,
        (Some(_), true) => {
            milvus.drop_collection(db, name).await?;
            changes.push(format!("dropped {key}: recreated on the primary"));
            true
        }
        (None, true) => {
            let here = milvus.describe(db, name).await?;
            if !same_shape(&here.schema, &c.info.schema) {
                anyhow::bail!(
                    "the standby already has a collection {key} with another schema; \
                     drop it on the standby or exclude it from replication"
                );
            }
            managed.insert(
                key.clone(),
                Managed {
                    source_id: c.info.id,
                    created_in: String::new(),
                },
            );
            changes.push(format!("adopted existing collection {key}"));
            false
        }
        (_, false) => true,
    };
    if must_create {
        milvus
            .create_collection(&c.info)
            .await
            .with_context(|| format!("create collection {key}"))?;
        managed.insert(
            key.clone(),
            Managed {
                source_id: c.info.id,
                created_in: lineage.to_string(),
            },
        );
        changes.push(format!("created collection {key}"));
    }
    if !c.info.has_partition_key() {
        let have: BTreeSet<String> = milvus
            .list_partitions(db, name)
            .await?
            .into_iter()
            .collect();
        for p in &c.partitions {
            if !have.contains(p) {
                milvus.create_partition(db, name, p).await?;
                changes.push(format!("created partition {key}/{p}"));
            }
        }
        for p in have
            .iter()
            .filter(|p| !c.partitions.contains(p) && *p != DEFAULT_PARTITION)
        {
            milvus.drop_partition(db, name, p).await?;
            changes.push(format!("dropped partition {key}/{p}"));
        }
    }
    let have_idx = milvus.list_indexes(db, name).await?;
    let mut released = false;
    for i in &have_idx {
        let wanted = c
            .indexes
            .iter()
            .find(|w| w.index_name == i.index_name && w.field == i.field);
        if wanted.is_none_or(|w| !same_index(w, i)) {
            if !released {
                milvus.release(db, name).await?;
                released = true;
            }
            milvus.drop_index(db, name, &i.field, &i.index_name).await?;
            changes.push(format!("dropped index {key}/{}", i.index_name));
        }
    }
    let have_idx = milvus.list_indexes(db, name).await?;
    for w in &c.indexes {
        if !have_idx
            .iter()
            .any(|i| i.index_name == w.index_name && i.field == w.field)
        {
            milvus
                .create_index(db, name, &w.creatable())
                .await
                .with_context(|| format!("create index {} on {key}", w.index_name))?;
            changes.push(format!("created index {key}/{}", w.index_name));
        }
    }
    // Loading is started, not awaited: writes do not need it, and the
    // next pass looks again. Load is idempotent in Milvus, and a
    // partition created after a load stays unloaded (the collection
    // reports Loading) until load is called again.
    let state = milvus.load_state(db, name).await?;
    let loaded = matches!(state, LoadState::Loaded | LoadState::Loading);
    if c.loaded && (state != LoadState::Loaded || released) {
        milvus.load(db, name).await?;
        if state != LoadState::Loading || released {
            changes.push(format!("loading {key}"));
        }
    } else if !c.loaded && loaded {
        milvus.release(db, name).await?;
        changes.push(format!("released {key}"));
    }
    Ok(())
}

/// Whether an error will recur however often it is retried: a schema
/// conflict, a request Milvus rejects as invalid (not the network, not a
/// server still starting).
pub fn is_permanent(e: &anyhow::Error) -> bool {
    e.chain()
        .find_map(|c| c.downcast_ref::<crate::milvus::MilvusError>())
        .is_none_or(|m| !m.is_retryable())
}

fn same_index(a: &IndexInfo, b: &IndexInfo) -> bool {
    let f = |i: &IndexInfo| i.creatable().params.into_iter().collect::<BTreeSet<_>>();
    f(a) == f(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use milvus::proto::schema::{DataType, FieldSchema};

    fn entry(name: &str, partitions: &[&str]) -> CollectionEntry {
        CollectionEntry {
            info: CollectionInfo {
                database: "default".into(),
                name: name.into(),
                id: 42,
                schema: CollectionSchema {
                    name: name.into(),
                    fields: vec![FieldSchema {
                        name: "id".into(),
                        is_primary_key: true,
                        data_type: DataType::Int64 as i32,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                shards_num: 1,
                consistency_level: 2,
                properties: vec![],
                num_partitions: 0,
            },
            partitions: partitions.iter().map(|s| s.to_string()).collect(),
            indexes: vec![IndexInfo {
                field: "v".into(),
                index_name: "v_idx".into(),
                params: vec![("index_type".into(), "FLAT".into())],
            }],
            loaded: true,
        }
    }

    #[test]
    fn catalog_survives_the_wire() {
        let cat = Catalog {
            databases: vec!["default".into()],
            collections: vec![entry("a", &["_default", "p1"]), entry("b", &["_default"])],
            ..Default::default()
        };
        assert_eq!(from_ddl(&to_ddl(&cat)).unwrap(), cat);
    }

    #[test]
    fn partitions_are_scanned_separately_only_when_there_are_several() {
        assert_eq!(entry("a", &["_default"]).scan_partitions(), vec![None]);
        assert_eq!(
            entry("a", &["_default", "p1"]).scan_partitions(),
            vec![Some("_default".into()), Some("p1".into())]
        );
    }

    #[test]
    fn filter_excludes_by_database_and_name() {
        let f = Filter {
            databases: vec!["default".into()],
            exclude: vec!["default.scratch".into()],
        };
        assert!(f.wants("default", "a"));
        assert!(!f.wants("default", "scratch"));
        assert!(!f.wants("other", "a"));
    }
}
