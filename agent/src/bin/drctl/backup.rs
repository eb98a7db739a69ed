//! `drctl backup …`: create, list, verify, restore, drill, prune.
//!
//! drctl talks to Milvus and S3 directly, with the agent's own config file
//! (`--agent-config`): it names the Milvus, the bucket, the credentials and
//! the alert webhooks. Backup data then never flows through the agent, a
//! restore can target any Milvus (`--target-milvus`), and the S3 lock keeps
//! an on-demand run and the agent's scheduled run from overlapping.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use dr_agent::alert;
use dr_agent::backup::create::{self, CreateOptions};
use dr_agent::backup::restore::{Rename, RestoreOptions};
use dr_agent::backup::{drill, restore, retention, verify, BackupError, Settings, Store};
use dr_agent::config::Config;
use dr_agent::milvus::{Connection, Milvus};

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The agent's YAML config (Milvus endpoint, backup.s3, alerts).
    #[arg(long, env = "DR_AGENT_CONFIG")]
    pub agent_config: PathBuf,
    #[command(subcommand)]
    pub cmd: BackupCmd,
}

#[derive(Debug, Subcommand)]
pub enum BackupCmd {
    /// Back up now (refused while another backup runs).
    Create {
        /// Only these collections (database.collection, comma-separated).
        #[arg(long, value_delimiter = ',')]
        collections: Vec<String>,
        /// Skip re-reading the backup after writing it.
        #[arg(long)]
        no_verify: bool,
        /// Then apply retention, as scheduled runs do.
        #[arg(long)]
        prune: bool,
        #[arg(long)]
        json: bool,
    },
    /// Every backup: id, time, state, size.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Re-read every object of a backup; exit 1 naming any corrupt or missing object.
    Verify {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup (resumable: rerun the same command after an interruption).
    Restore {
        id: String,
        /// Only these collections of the backup (database.collection, comma-separated).
        #[arg(long, value_delimiter = ',')]
        collections: Vec<String>,
        /// Restore each collection as <name><suffix>.
        #[arg(long, conflicts_with = "map")]
        rename_suffix: Option<String>,
        /// Restore database.collection as new_name or database2.new_name (repeatable).
        #[arg(long)]
        map: Vec<String>,
        /// gRPC endpoint of the Milvus to restore into (default: this datacenter's).
        #[arg(long)]
        target_milvus: Option<String>,
        /// Where restore checkpoints are kept.
        #[arg(long, env = "DR_RESTORE_CHECKPOINTS")]
        checkpoint_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Restore the newest backup under scratch names, check it, drop it again.
    Drill {
        /// Drill this backup instead of the newest.
        #[arg(long)]
        backup: Option<String>,
        #[arg(long)]
        target_milvus: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Apply retention (retention_days, keep_last; never the newest good backup).
    Prune {
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

/// Times in `list`: UTC to the second.
const LIST_TIME: &str = "%Y-%m-%d %H:%M:%SZ";

fn print(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

fn json<T: serde::Serialize>(v: &T) {
    print(&(serde_json::to_string_pretty(v).unwrap_or_default() + "\n"));
}

fn default_checkpoint_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("milvus-dr");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".local/state/milvus-dr");
    }
    PathBuf::from(".milvus-dr")
}

fn target(cfg: &Config, uri: &Option<String>) -> Result<Milvus> {
    match uri {
        None => dr_agent::agent::milvus_for(&cfg.local().milvus),
        Some(u) => Ok(Milvus::connect(Connection {
            endpoint: u.clone(),
            health_url: None,
            authorization: None,
            request_timeout: Duration::from_secs(300),
        })?),
    }
}

/// Runs one `drctl backup` command. Exit codes: 0 done, 1 the backup is
/// bad / the content differs, 2 could not run, 3 another backup run holds
/// the lock, or took it from this run (which then stopped).
pub async fn run(args: BackupArgs) -> ExitCode {
    match run_inner(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("drctl backup: {e:#}");
            if dr_agent::backup::is_lock_conflict(&e) {
                ExitCode::from(3)
            } else {
                ExitCode::from(2)
            }
        }
    }
}

async fn run_inner(args: BackupArgs) -> Result<ExitCode> {
    let cfg = Config::load(&args.agent_config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let s3 = cfg.backup.s3.clone().context(
        "backup.s3 is not configured in the agent config: add backup.s3.bucket (and endpoint)",
    )?;
    let settings = Settings::from_config(&cfg);
    let store = Store::connect(&s3, settings.part_size).await?;
    let ok = |good: bool| {
        if good {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    };
    match args.cmd {
        BackupCmd::Create {
            collections,
            no_verify,
            prune,
            json: as_json,
        } => {
            let milvus = dr_agent::agent::milvus_for(&cfg.local().milvus)?;
            let opts = CreateOptions {
                only: collections,
                // The epoch the local agent last saw (none without witnesses).
                epoch: dr_agent::failover::persisted_view(&cfg.state_dir)?.map(|v| v.epoch),
                holder: format!(
                    "drctl on {} (pid {})",
                    std::env::var("HOSTNAME").unwrap_or_else(|_| "?".into()),
                    std::process::id()
                ),
                interactive: !as_json,
                verify: !no_verify,
                prune,
            };
            match create::run(&store, &milvus, &settings, &opts).await {
                Ok(r) => {
                    if as_json {
                        json(&serde_json::json!({
                            "id": r.manifest.id,
                            "rows": r.manifest.total_rows,
                            "bytes": r.manifest.total_bytes,
                            "seconds": r.seconds,
                            "verified": r.verified,
                            "collections": r.manifest.collections.len(),
                            "pruned": r.pruned,
                        }));
                    } else {
                        print(&format!(
                            "backup {} written: {} collections, {} rows, {:.1} MiB in {:.1}s{}\n",
                            r.manifest.id,
                            r.manifest.collections.len(),
                            r.manifest.total_rows,
                            r.manifest.total_bytes as f64 / 1048576.0,
                            r.seconds,
                            if r.verified { ", verified" } else { "" }
                        ));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    // Refused at the start: nothing failed. A run that lost
                    // the lock midway did fail, and is alerted.
                    if !matches!(
                        e.downcast_ref::<BackupError>(),
                        Some(BackupError::Busy { .. })
                    ) {
                        let detail = format!("{e:#}");
                        tracing::error!(error = %detail, "backup FAILED");
                        let alert = alert::backup_failed("on-demand backup", &detail);
                        alert::sender(&cfg)
                            .send_now(alert::Event::Trigger(alert))
                            .await;
                    }
                    Err(e)
                }
            }
        }
        BackupCmd::List { json: as_json } => {
            let all = retention::list(&store).await?;
            if as_json {
                json(&all);
            } else {
                let when = |t: &str| {
                    chrono::DateTime::parse_from_rfc3339(t)
                        .map(|t| t.with_timezone(&chrono::Utc).format(LIST_TIME).to_string())
                        .unwrap_or_else(|_| t.to_string())
                };
                print(&format!(
                    "{:<32} {:<20} {:<10} {:>5} {:>12} {:>10}  {}\n",
                    "ID", "CREATED", "STATE", "COLLS", "ROWS", "MIB", "VERIFIED"
                ));
                for b in &all {
                    print(&format!(
                        "{:<32} {:<20} {:<10} {:>5} {:>12} {:>10.1}  {}\n",
                        b.id,
                        b.created.format(LIST_TIME).to_string(),
                        if b.complete { "complete" } else { "INCOMPLETE" },
                        b.collections,
                        b.rows,
                        b.bytes as f64 / 1048576.0,
                        b.verified_at
                            .as_deref()
                            .map(when)
                            .unwrap_or_else(|| "-".into())
                    ));
                }
                if let Some(h) = dr_agent::backup::lock::holder(&store).await? {
                    print(&format!("running now: {h}\n"));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupCmd::Verify { id, json: as_json } => {
            let r = verify::verify(&store, &id, !as_json).await?;
            if as_json {
                json(&r);
            } else {
                print(&verify::text(&r));
            }
            Ok(ok(r.ok))
        }
        BackupCmd::Restore {
            id,
            collections,
            rename_suffix,
            map,
            target_milvus,
            checkpoint_dir,
            json: as_json,
        } => {
            let rename = match (rename_suffix, map.is_empty()) {
                (Some(s), _) => Rename::Suffix(s),
                (None, false) => Rename::parse_map(&map)?,
                (None, true) => Rename::Same,
            };
            let opts = RestoreOptions {
                id,
                only: collections,
                rename,
                checkpoint_dir: checkpoint_dir.unwrap_or_else(default_checkpoint_dir),
                interactive: !as_json,
                load_timeout: Duration::from_secs(1800),
            };
            let milvus = target(&cfg, &target_milvus)?;
            let r = restore::restore(&store, &milvus, &opts).await?;
            if as_json {
                json(&r);
            } else {
                print(&restore::text(&r));
            }
            Ok(ok(r.ok))
        }
        BackupCmd::Drill {
            backup,
            target_milvus,
            json: as_json,
        } => {
            let milvus = target(&cfg, &target_milvus)?;
            let dir = std::env::temp_dir()
                .join(format!("milvus-dr-drill-{}", uuid::Uuid::new_v4().simple()));
            let r = drill::drill(&store, &milvus, backup, dir.clone(), !as_json).await;
            let _ = std::fs::remove_dir_all(&dir);
            let r = r?;
            if as_json {
                json(&r);
            } else {
                print(&drill::text(&r));
            }
            Ok(ok(r.ok))
        }
        BackupCmd::Prune {
            dry_run,
            json: as_json,
        } => {
            let holder = format!("drctl prune (pid {})", std::process::id());
            let lock =
                dr_agent::backup::lock::Lock::acquire(&store, &holder, settings.lock_lease).await?;
            let r = retention::prune(&store, &settings, dry_run, None, &lock).await;
            lock.release().await;
            let decisions = r?;
            if as_json {
                json(&decisions);
            } else {
                for d in &decisions {
                    print(&format!(
                        "{:<32} {:<14} {}\n",
                        d.id,
                        match (d.delete, dry_run) {
                            (true, true) => "would delete",
                            (true, false) => "deleted",
                            _ => "kept",
                        },
                        d.reason
                    ));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
