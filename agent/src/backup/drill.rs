//! Backup drill: restore the newest complete backup under scratch names,
//! check it, report, and clean up. A backup nobody has restored is not a
//! backup.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::manifest::{Verified, VERIFIED};
use super::restore::{self, Rename, RestoreOptions, RestoreReport};
use super::Store;
use crate::milvus::Milvus;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillReport {
    pub backup: String,
    pub ok: bool,
    pub restore: RestoreReport,
    pub rows_per_sec: f64,
    pub cleaned_up: bool,
}

/// Runs a drill on `target` (a scratch cluster, or the live one: the drill
/// only creates and drops collections with its own suffix).
pub async fn drill(
    store: &Store,
    target: &Milvus,
    backup: Option<String>,
    checkpoint_dir: PathBuf,
    interactive: bool,
) -> Result<DrillReport> {
    let id = match backup {
        Some(id) => id,
        None => super::retention::list(store)
            .await?
            .into_iter()
            .rev()
            .find(|b| b.complete)
            .map(|b| b.id)
            .context("no complete backup to drill")?,
    };
    let suffix = format!("_drill_{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    info!(backup = %id, suffix = %suffix, "backup drill started");
    let opts = RestoreOptions {
        id: id.clone(),
        only: vec![],
        rename: Rename::Suffix(suffix),
        checkpoint_dir,
        interactive,
        load_timeout: Duration::from_secs(1800),
    };
    let r = restore::restore(store, target, &opts).await;
    // Clean up whatever was created, whether the restore worked or not.
    let m = super::verify::manifest(store, &id).await?;
    let mut cleaned_up = true;
    let mut dbs = std::collections::BTreeSet::new();
    for c in &m.collections {
        let (db, name) = opts.rename.target(c);
        if let Err(e) = target.drop_collection(&db, &name).await {
            warn!(collection = %format!("{db}.{name}"), error = %e, "drill could not drop its scratch collection");
            cleaned_up = false;
        }
        dbs.insert(db);
    }
    let restore = r?;
    for db in &restore.created_databases {
        if target
            .list_collections(db)
            .await
            .map(|c| c.is_empty())
            .unwrap_or(false)
        {
            let _ = target.drop_database(db).await;
        }
    }
    if restore.ok {
        let v = Verified {
            at: Utc::now().to_rfc3339(),
            by: format!("{} drill", super::tool_version()),
            objects: m.collections.iter().map(|c| c.objects.len()).sum(),
            bytes: m.total_bytes,
        };
        store
            .put(&format!("{id}/{VERIFIED}"), serde_json::to_vec_pretty(&v)?)
            .await?;
    }
    Ok(DrillReport {
        backup: id,
        ok: restore.ok && cleaned_up,
        rows_per_sec: restore.rows as f64 / restore.seconds.max(1e-3),
        restore,
        cleaned_up,
    })
}

pub fn text(r: &DrillReport) -> String {
    // The restore's lines without its own verdict: the drill's is below.
    let mut out: String = restore::text(&r.restore)
        .lines()
        .filter(|l| !l.starts_with("RESULT:"))
        .map(|l| format!("{l}\n"))
        .collect();
    out += &format!(
        "drill of {}: {:.0} rows/s, scratch collections {}\nRESULT: {}\n",
        r.backup,
        r.rows_per_sec,
        if r.cleaned_up {
            "dropped"
        } else {
            "NOT all dropped"
        },
        if r.ok { "drill passed" } else { "DRILL FAILED" }
    );
    out
}
