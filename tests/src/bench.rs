//! What the benchmark binaries share: settings from the environment and the
//! baselines every ratio is taken against, measured in the same run.

use std::time::Instant;

use anyhow::Result;
use dr_agent::milvus::{self as mv, rows, Milvus};

use crate::data::{self, Shape};

/// A number from the environment, or `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One full scan of a collection, the way the agent reads it (pinned
/// timestamp, 8,192-row pages).
pub struct Scan {
    pub rows: usize,
    /// Approximate size of the row data read.
    pub bytes: usize,
    pub seconds: f64,
}

pub async fn scan(m: &Milvus, db: &str, coll: &str) -> Result<Scan> {
    let info = m.describe(db, coll).await?;
    let t = Instant::now();
    let ts = m.alloc_timestamp().await?;
    let mut pages = mv::scan_pages(m, &info, None, ts, 8192);
    let (mut n, mut bytes) = (0usize, 0usize);
    while let Some(p) = pages.recv().await {
        let p = p?;
        n += p.keys.len();
        bytes += rows::approx_bytes(&p.fields);
    }
    Ok(Scan {
        rows: n,
        bytes,
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// Seconds to insert `ids` directly into a new collection `coll` of `db`
/// (5,000-row requests, one at a time; the rows are generated before the
/// clock starts).
pub async fn insert(m: &Milvus, db: &str, coll: &str, shape: Shape, ids: &[i64]) -> Result<f64> {
    data::create(m, db, coll, shape).await?;
    let batches: Vec<_> = ids
        .chunks(5000)
        .map(|c| (data::rows(shape, c, 1), c.len() as u32))
        .collect();
    let t = Instant::now();
    for (cols, n) in batches {
        m.insert(db, coll, None, cols, n).await?;
    }
    Ok(t.elapsed().as_secs_f64())
}
