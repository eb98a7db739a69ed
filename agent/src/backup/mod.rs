//! Backups to S3: scheduled and on demand, retained, verified, restorable.
//!
//! A backup is one folder under the configured prefix:
//!
//! ```text
//! <prefix><id>/manifest.json          written last: its presence means "complete"
//! <prefix><id>/verified.json          written by a passing verify (or drill)
//! <prefix><id>/data/<db>/<collection>/<partition>/<seq>.parquet
//! <prefix>lock.json                   held while a backup or prune runs
//! ```
//!
//! The rows are Parquet (one row group per scan page), readable by pandas,
//! DuckDB or Spark without us; the manifest describes everything needed to
//! recreate the collections (schema, partitions, indexes, load state) and to
//! check them (row counts, content digests, every object's size and
//! SHA-256).
//!
//! Modules: [`store`] (S3, multipart uploads), [`columns`] (Milvus columns ↔
//! Arrow/Parquet), [`manifest`], [`create`], [`verify`], [`restore`],
//! [`retention`], [`lock`], [`schedule`] (the agent's cron task, alerting
//! through [`crate::alert`]), [`progress`].

pub mod columns;
pub mod create;
pub mod drill;
pub mod lock;
pub mod manifest;
pub mod progress;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod store;
pub mod verify;

use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::replication::catalog::Filter;

pub use manifest::Manifest;
pub use store::Store;

/// Why a backup operation could not run or failed, where callers branch.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Another backup (or prune) holds the lock.
    #[error("another backup run is in progress ({holder}, started {started}); refusing to start a second one (the lock expires {expires} if its holder died)")]
    Busy {
        holder: String,
        started: String,
        expires: String,
    },
    /// This run held the lock and lost it: it stopped, claiming and
    /// deleting nothing more.
    #[error("this run lost the backup lock ({reason}) and stopped: from then on it wrote no manifest and deleted nothing")]
    LostLock { reason: String },
    #[error("backup {0} not found")]
    NotFound(String),
    #[error("backup {0} is incomplete (no manifest.json: its run failed or is still going)")]
    Incomplete(String),
    #[error("the S3 store failed: {0}")]
    Store(String),
}

impl BackupError {
    /// Another run holds or took the lock (exit code 3): not a fault of
    /// this run's data.
    pub fn is_lock_conflict(&self) -> bool {
        matches!(
            self,
            BackupError::Busy { .. } | BackupError::LostLock { .. }
        )
    }
}

/// Whether `e` is a [`BackupError::is_lock_conflict`].
pub fn is_lock_conflict(e: &anyhow::Error) -> bool {
    e.downcast_ref::<BackupError>()
        .is_some_and(BackupError::is_lock_conflict)
}

/// A content digest: the row count and the wrapping sum of every row's
/// hash ([`crate::milvus::rows::row_hashes`]). Independent of row order and
/// of how rows are split into pages or objects, so one computed from a
/// backup's Parquet equals one computed from Milvus after a restore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digest {
    pub rows: u64,
    pub sum: u64,
}

impl Digest {
    pub fn add_hashes(&mut self, hashes: &[u64]) {
        self.rows += hashes.len() as u64;
        for h in hashes {
            self.sum = self.sum.wrapping_add(*h);
        }
    }

    pub fn merge(&mut self, other: &Digest) {
        self.rows += other.rows;
        self.sum = self.sum.wrapping_add(other.sum);
    }

    /// `xxh3sum:<16 hex digits>`
    pub fn text(&self) -> String {
        format!("xxh3sum:{:016x}", self.sum)
    }
}

/// Last-run figures of this agent's scheduled backups, for `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct BackupStats {
    pub runs: u64,
    pub failures: u64,
    /// Scheduled times passed while this datacenter was not the primary.
    pub skipped: u64,
    pub last_success_ms: i64,
    pub last_duration_ms: i64,
    pub last_bytes: u64,
    pub last_rows: u64,
    pub running: bool,
}

pub type SharedStats = Arc<Mutex<BackupStats>>;

/// What a backup operation needs from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub datacenter: String,
    pub filter: Filter,
    pub page_rows: usize,
    pub part_size: usize,
    pub object_max: u64,
    pub retention_days: u32,
    pub keep_last: Option<u32>,
    pub verify_after_backup: bool,
    pub lock_lease: lock::Lease,
}

impl Settings {
    pub fn from_config(cfg: &Config) -> Settings {
        let b = &cfg.backup;
        Settings {
            datacenter: cfg.datacenter.clone(),
            filter: Filter {
                databases: b.databases.clone(),
                exclude: b.exclude.clone(),
            },
            page_rows: b.page_rows,
            part_size: (b.part_size_mib as usize) * 1024 * 1024,
            object_max: b.object_max_mib * 1024 * 1024,
            retention_days: b.retention_days,
            keep_last: b.keep_last,
            verify_after_backup: b.verify_after_backup,
            lock_lease: lock::Lease::new(b.lock_lease),
        }
    }
}

/// The tool name and version written into manifests.
pub fn tool_version() -> String {
    format!("milvus-dr {}", env!("CARGO_PKG_VERSION"))
}

/// `"db.collection"`.
pub fn qualified(db: &str, coll: &str) -> String {
    format!("{db}.{coll}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_ignores_order_and_splitting() {
        let mut a = Digest::default();
        a.add_hashes(&[1, 2, 3, u64::MAX]);
        let mut b1 = Digest::default();
        b1.add_hashes(&[u64::MAX, 3]);
        let mut b2 = Digest::default();
        b2.add_hashes(&[2, 1]);
        b1.merge(&b2);
        assert_eq!(a, b1);
        assert_eq!(a.rows, 4);
        let mut c = Digest::default();
        c.add_hashes(&[1, 2, 3, 5]);
        assert_ne!(a, c);
    }
}
