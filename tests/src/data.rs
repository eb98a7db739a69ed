//! Test data: collections of every field type, deterministic rows, and
//! whole-collection reads for exact comparisons.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};
use dr_agent::milvus::{self as mv, rows, CollectionInfo, IndexInfo, Milvus, Pk, PkType};
use milvus::proto::common::KeyValuePair;
use milvus::proto::schema::{
    field_data::Field, scalar_field::Data as S, vector_field::Data as V, ArrayArray, BoolArray,
    CollectionSchema, DataType, DoubleArray, FieldData, FieldSchema, FloatArray, IntArray,
    JsonArray, LongArray, ScalarField, StringArray, VectorField,
};

pub async fn drop_database(m: &Milvus, db: &str) -> Result<()> {
    match m.list_collections(db).await {
        Ok(names) => {
            for n in names {
                m.drop_collection(db, &n).await?;
            }
        }
        Err(e) if e.is_not_found() || !e.is_retryable() => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    m.drop_database(db).await?;
    Ok(())
}

fn kv(k: &str, v: &str) -> KeyValuePair {
    KeyValuePair {
        key: k.into(),
        value: v.into(),
    }
}

fn field(id: i64, name: &str, t: DataType, params: &[(&str, &str)]) -> FieldSchema {
    FieldSchema {
        field_id: id,
        name: name.into(),
        data_type: t as i32,
        type_params: params.iter().map(|(k, v)| kv(k, v)).collect(),
        ..Default::default()
    }
}

/// Shape of a test collection.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shape {
    /// Int64 `id`, float vector `v` (dim), varchar `tag`, int64 `n`.
    Simple { dim: usize },
    /// Every scalar type Milvus 2.3 has, dynamic fields on, `pk` as given,
    /// and one vector field (2.3 allows one per collection): binary or float.
    AllTypes { pk: PkType, binary: bool },
}

/// Realistic enough that a few thousand rows fill an S3 multipart part.
pub const ALL_DIM: usize = 128;
pub const BIN_DIM: usize = 16;

pub fn schema(name: &str, shape: Shape) -> CollectionSchema {
    match shape {
        Shape::Simple { dim } => CollectionSchema {
            name: name.into(),
            fields: vec![
                {
                    let mut f = field(100, "id", DataType::Int64, &[]);
                    f.is_primary_key = true;
                    f
                },
                field(
                    101,
                    "v",
                    DataType::FloatVector,
                    &[("dim", &dim.to_string())],
                ),
                field(102, "tag", DataType::VarChar, &[("max_length", "64")]),
                field(103, "n", DataType::Int64, &[]),
            ],
            ..Default::default()
        },
        Shape::AllTypes { pk, binary } => {
            let mut pkf = match pk {
                PkType::Int => field(100, "pk", DataType::Int64, &[]),
                PkType::Str => field(100, "pk", DataType::VarChar, &[("max_length", "64")]),
            };
            pkf.is_primary_key = true;
            let mut arr = field(113, "arr", DataType::Array, &[("max_capacity", "4")]);
            arr.element_type = DataType::Int64 as i32;
            CollectionSchema {
                name: name.into(),
                enable_dynamic_field: true,
                fields: vec![
                    pkf,
                    field(101, "b", DataType::Bool, &[]),
                    field(102, "i8", DataType::Int8, &[]),
                    field(103, "i16", DataType::Int16, &[]),
                    field(104, "i32", DataType::Int32, &[]),
                    field(105, "i64", DataType::Int64, &[]),
                    field(106, "f", DataType::Float, &[]),
                    field(107, "d", DataType::Double, &[]),
                    field(108, "s", DataType::VarChar, &[("max_length", "128")]),
                    field(109, "j", DataType::Json, &[]),
                    if binary {
                        field(
                            111,
                            "bv",
                            DataType::BinaryVector,
                            &[("dim", &BIN_DIM.to_string())],
                        )
                    } else {
                        field(
                            110,
                            "fv",
                            DataType::FloatVector,
                            &[("dim", &ALL_DIM.to_string())],
                        )
                    },
                    arr,
                ],
                ..Default::default()
            }
        }
    }
}

/// Creates a collection with an index on every vector field, loads it.
pub async fn create(m: &Milvus, db: &str, name: &str, shape: Shape) -> Result<CollectionInfo> {
    let info = CollectionInfo {
        database: db.into(),
        name: name.into(),
        id: 0,
        schema: schema(name, shape),
        shards_num: 1,
        consistency_level: 0,
        properties: vec![],
        num_partitions: 0,
    };
    m.create_collection(&info).await?;
    for f in &info.schema.fields {
        let (itype, metric) = match f.data_type() {
            DataType::FloatVector => ("FLAT", "L2"),
            DataType::BinaryVector => ("BIN_FLAT", "HAMMING"),
            _ => continue,
        };
        m.create_index(
            db,
            name,
            &IndexInfo {
                field: f.name.clone(),
                index_name: format!("{}_idx", f.name),
                params: vec![
                    ("index_type".into(), itype.into()),
                    ("metric_type".into(), metric.into()),
                    ("params".into(), "{}".into()),
                ],
            },
        )
        .await?;
    }
    m.load(db, name).await?;
    m.wait_loaded(db, name, Duration::from_secs(120)).await?;
    Ok(m.describe(db, name).await?)
}

fn scalar(t: DataType, name: &str, data: S) -> FieldData {
    FieldData {
        r#type: t as i32,
        field_name: name.into(),
        field: Some(Field::Scalars(ScalarField {
            data: Some(data),
            valid_data: vec![],
        })),
        ..Default::default()
    }
}

fn vector(t: DataType, name: &str, dim: usize, data: V) -> FieldData {
    FieldData {
        r#type: t as i32,
        field_name: name.into(),
        field: Some(Field::Vectors(VectorField {
            dim: dim as i64,
            data: Some(data),
            valid_data: vec![],
        })),
        ..Default::default()
    }
}

/// A cheap deterministic pseudo-random value of (id, version, salt).
fn mix(id: i64, version: u32, salt: u64) -> u64 {
    let mut x = (id as u64) ^ ((version as u64) << 40) ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

/// String key of an id (VarChar primary keys).
pub fn str_key(id: i64) -> String {
    format!("key-{id:08}")
}

/// Rows for `ids` in `shape`; `version` changes every non-key value.
pub fn rows(shape: Shape, ids: &[i64], version: u32) -> Vec<FieldData> {
    match shape {
        Shape::Simple { dim } => {
            let mut v = Vec::with_capacity(ids.len() * dim);
            for &id in ids {
                for j in 0..dim {
                    v.push((mix(id, version, j as u64) % 10_000) as f32 / 100.0);
                }
            }
            vec![
                scalar(
                    DataType::Int64,
                    "id",
                    S::LongData(LongArray { data: ids.to_vec() }),
                ),
                vector(
                    DataType::FloatVector,
                    "v",
                    dim,
                    V::FloatVector(FloatArray { data: v }),
                ),
                scalar(
                    DataType::VarChar,
                    "tag",
                    S::StringData(StringArray {
                        data: ids
                            .iter()
                            .map(|id| format!("t{}-v{version}", id % 97))
                            .collect(),
                    }),
                ),
                scalar(
                    DataType::Int64,
                    "n",
                    S::LongData(LongArray {
                        data: ids.iter().map(|id| id * 10 + version as i64).collect(),
                    }),
                ),
            ]
        }
        Shape::AllTypes { pk, binary } => {
            let m = |id: i64, s: u64| mix(id, version, s);
            let pkcol = match pk {
                PkType::Int => scalar(
                    DataType::Int64,
                    "pk",
                    S::LongData(LongArray { data: ids.to_vec() }),
                ),
                PkType::Str => scalar(
                    DataType::VarChar,
                    "pk",
                    S::StringData(StringArray {
                        data: ids.iter().map(|i| str_key(*i)).collect(),
                    }),
                ),
            };
            let mut fv = Vec::new();
            let mut bv = Vec::new();
            for &id in ids {
                for j in 0..ALL_DIM {
                    fv.push((m(id, 100 + j as u64) % 1000) as f32 / 10.0);
                }
                for j in 0..BIN_DIM / 8 {
                    bv.push(m(id, 200 + j as u64) as u8);
                }
            }
            vec![
                pkcol,
                scalar(
                    DataType::Bool,
                    "b",
                    S::BoolData(BoolArray {
                        data: ids.iter().map(|i| m(*i, 1) % 2 == 0).collect(),
                    }),
                ),
                scalar(
                    DataType::Int8,
                    "i8",
                    S::IntData(IntArray {
                        data: ids.iter().map(|i| (m(*i, 2) % 256) as i32 - 128).collect(),
                    }),
                ),
                scalar(
                    DataType::Int16,
                    "i16",
                    S::IntData(IntArray {
                        data: ids
                            .iter()
                            .map(|i| (m(*i, 3) % 65536) as i32 - 32768)
                            .collect(),
                    }),
                ),
                scalar(
                    DataType::Int32,
                    "i32",
                    S::IntData(IntArray {
                        data: ids.iter().map(|i| m(*i, 4) as i32).collect(),
                    }),
                ),
                scalar(
                    DataType::Int64,
                    "i64",
                    S::LongData(LongArray {
                        data: ids.iter().map(|i| m(*i, 5) as i64).collect(),
                    }),
                ),
                scalar(
                    DataType::Float,
                    "f",
                    S::FloatData(FloatArray {
                        data: ids
                            .iter()
                            .map(|i| (m(*i, 6) % 100_000) as f32 / 7.0)
                            .collect(),
                    }),
                ),
                scalar(
                    DataType::Double,
                    "d",
                    S::DoubleData(DoubleArray {
                        data: ids
                            .iter()
                            .map(|i| (m(*i, 7) % 1_000_000) as f64 / 3.0)
                            .collect(),
                    }),
                ),
                scalar(
                    DataType::VarChar,
                    "s",
                    S::StringData(StringArray {
                        data: ids
                            .iter()
                            .map(|i| format!("s\"{}\\é-{}", m(*i, 8) % 1000, version))
                            .collect(),
                    }),
                ),
                scalar(
                    DataType::Json,
                    "j",
                    S::JsonData(JsonArray {
                        data: ids
                            .iter()
                            .map(|i| {
                                format!(r#"{{"a":{},"b":"v{}"}}"#, m(*i, 9) % 100, version)
                                    .into_bytes()
                            })
                            .collect(),
                    }),
                ),
                if binary {
                    vector(DataType::BinaryVector, "bv", BIN_DIM, V::BinaryVector(bv))
                } else {
                    vector(
                        DataType::FloatVector,
                        "fv",
                        ALL_DIM,
                        V::FloatVector(FloatArray { data: fv }),
                    )
                },
                scalar(
                    DataType::Array,
                    "arr",
                    S::ArrayData(ArrayArray {
                        element_type: DataType::Int64 as i32,
                        data: ids
                            .iter()
                            .map(|i| ScalarField {
                                data: Some(S::LongData(LongArray {
                                    data: (0..(m(*i, 10) % 4) as i64).map(|k| k + *i).collect(),
                                })),
                                valid_data: vec![],
                            })
                            .collect(),
                    }),
                ),
                {
                    let mut f = scalar(
                        DataType::Json,
                        mv::DYNAMIC_FIELD,
                        S::JsonData(JsonArray {
                            data: ids
                                .iter()
                                .map(|i| {
                                    format!(r#"{{"extra":{},"ver":{}}}"#, m(*i, 11) % 50, version)
                                        .into_bytes()
                                })
                                .collect(),
                        }),
                    );
                    f.is_dynamic = true;
                    f
                },
            ]
        }
    }
}

pub fn pks(shape: Shape, ids: &[i64]) -> Vec<Pk> {
    match shape {
        Shape::AllTypes {
            pk: PkType::Str, ..
        } => ids.iter().map(|i| Pk::Str(str_key(*i))).collect(),
        _ => ids.iter().map(|i| Pk::Int(*i)).collect(),
    }
}

pub fn pk_field(shape: Shape) -> &'static str {
    match shape {
        Shape::Simple { .. } => "id",
        Shape::AllTypes { .. } => "pk",
    }
}

/// Inserts `ids` in chunks.
pub async fn insert(
    m: &Milvus,
    db: &str,
    coll: &str,
    shape: Shape,
    ids: &[i64],
    version: u32,
) -> Result<()> {
    write(m, db, coll, shape, ids, version, false).await
}

/// Creates a collection (indexed and loaded) holding `ids` as version 1.
pub async fn create_filled(
    m: &Milvus,
    db: &str,
    name: &str,
    shape: Shape,
    ids: std::ops::Range<i64>,
) -> Result<()> {
    create(m, db, name, shape).await?;
    insert(m, db, name, shape, &ids.collect::<Vec<_>>(), 1).await
}

/// Upserts `ids` (as `version`) in chunks.
pub async fn upsert(
    m: &Milvus,
    db: &str,
    coll: &str,
    shape: Shape,
    ids: &[i64],
    version: u32,
) -> Result<()> {
    write(m, db, coll, shape, ids, version, true).await
}

async fn write(
    m: &Milvus,
    db: &str,
    coll: &str,
    shape: Shape,
    ids: &[i64],
    version: u32,
    upsert: bool,
) -> Result<()> {
    for chunk in ids.chunks(5000) {
        let cols = rows(shape, chunk, version);
        let n = chunk.len() as u32;
        if upsert {
            m.upsert(db, coll, None, cols, n).await?;
        } else {
            m.insert(db, coll, None, cols, n).await?;
        }
    }
    Ok(())
}

pub async fn delete(m: &Milvus, db: &str, coll: &str, shape: Shape, ids: &[i64]) -> Result<()> {
    m.delete(db, coll, None, pk_field(shape), &pks(shape, ids))
        .await?;
    Ok(())
}

/// Every row of a collection (key → row hash) read with Strong
/// consistency; fails on duplicate primary keys.
pub async fn read_all(m: &Milvus, db: &str, coll: &str) -> Result<BTreeMap<Pk, u64>> {
    // A replicated collection is loaded asynchronously on the standby.
    m.wait_loaded(db, coll, Duration::from_secs(120)).await?;
    let info = m.describe(db, coll).await?;
    let ts = m.alloc_timestamp().await?;
    let mut pages = mv::scan_pages(m, &info, None, ts, 8192);
    let mut out = BTreeMap::new();
    while let Some(p) = pages.recv().await {
        let p = p?;
        let hashes = rows::row_hashes(&p.fields)?;
        for (k, h) in p.keys.into_iter().zip(hashes) {
            if out.insert(k.clone(), h).is_some() {
                bail!("duplicate primary key {k} in {db}.{coll}");
            }
        }
    }
    // Milvus keeps duplicate keys as separate rows: count(*) sees them even
    // where a key-ordered scan would not.
    let count = m.count(&info).await?;
    if count != out.len() as u64 {
        bail!(
            "{db}.{coll}: count(*) = {count} but {} distinct keys",
            out.len()
        );
    }
    Ok(out)
}

/// How `b` differs from `a`, for a failure message; `None` if identical.
pub fn describe_diff(a: &BTreeMap<Pk, u64>, b: &BTreeMap<Pk, u64>) -> Option<String> {
    let (missing, extra, changed) = diff(a, b);
    (!missing.is_empty() || !extra.is_empty() || !changed.is_empty()).then(|| {
        format!(
            "{} missing (e.g. {:?}), {} extra (e.g. {:?}), {} changed (e.g. {:?})",
            missing.len(),
            missing.first(),
            extra.len(),
            extra.first(),
            changed.len(),
            changed.first()
        )
    })
}

/// Rows that differ between two reads: (missing in b, extra in b, changed).
pub fn diff(a: &BTreeMap<Pk, u64>, b: &BTreeMap<Pk, u64>) -> (Vec<Pk>, Vec<Pk>, Vec<Pk>) {
    let missing = a.keys().filter(|k| !b.contains_key(*k)).cloned().collect();
    let extra = b.keys().filter(|k| !a.contains_key(*k)).cloned().collect();
    let changed = a
        .iter()
        .filter(|(k, h)| b.get(*k).is_some_and(|bh| bh != *h))
        .map(|(k, _)| k.clone())
        .collect();
    (missing, extra, changed)
}
