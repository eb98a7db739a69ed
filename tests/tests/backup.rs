//! Backups to S3 against real Milvus servers and a real S3 protocol server
//! (s3s-fs, in-process), driven through the `drctl` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use dr_agent::backup::manifest::Manifest;
use dr_agent::milvus::PkType;
use dr_tests::data::{self, Shape};
use dr_tests::s3::S3Server;
use dr_tests::{bin, servers, start_pair, wait_until, Agent, TestEnv};
use tracing::info;

const PREFIX: &str = "bk/";

/// A test's S3 server plus an agent config (dc-a, the primary Milvus) with
/// backups pointed at it.
struct Setup {
    env: TestEnv,
    s3: S3Server,
    config: PathBuf,
    checkpoints: PathBuf,
}

impl Setup {
    async fn new(name: &str, backup_extra: &str) -> Result<Setup> {
        let env = TestEnv::new(name).await?;
        let s3 = S3Server::start(&env.dir.path().join("s3")).await?;
        let extra = agent_yaml(&env, &s3, backup_extra)?;
        let config = Agent::write_lone_config(&env, &extra)?;
        let checkpoints = env.dir.path().join("checkpoints");
        Ok(Setup {
            env,
            s3,
            config,
            checkpoints,
        })
    }

    fn drctl_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("drctl"));
        c.arg("backup")
            .arg("--agent-config")
            .arg(&self.config)
            .args(args)
            .env("DR_RESTORE_CHECKPOINTS", &self.checkpoints)
            .env("RUST_LOG", "info,h2=warn,hyper=warn,aws=warn")
            .stdin(Stdio::null());
        c
    }

    /// Runs `drctl backup ARGS` to completion (off the async runtime).
    async fn drctl(&self, args: &[&str]) -> Result<Output> {
        let mut c = self.drctl_cmd(args);
        let out = tokio::task::spawn_blocking(move || c.output()).await??;
        info!(
            "drctl backup {args:?} -> {:?}\nstdout:\n{}\nstderr (tail):\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            tail(&String::from_utf8_lossy(&out.stderr), 15)
        );
        Ok(out)
    }

    async fn create(&self, extra: &[&str]) -> Result<Manifest> {
        let mut args = vec!["create", "--json"];
        args.extend_from_slice(extra);
        let out = self.drctl(&args).await?;
        if !out.status.success() {
            bail!(
                "drctl backup create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let id = v["id"].as_str().context("id")?;
        self.manifest(id)
    }

    fn manifest(&self, id: &str) -> Result<Manifest> {
        let p = self.s3.object_path(&format!("{PREFIX}{id}/manifest.json"));
        Manifest::from_json(&std::fs::read(&p).with_context(|| p.display().to_string())?)
    }
}

/// The agent config sections for backups into `s3`, of this test's
/// database only, with `backup_extra` (indented lines) added.
fn agent_yaml(env: &TestEnv, s3: &S3Server, backup_extra: &str) -> Result<String> {
    let db = &env.name;
    let s3_yaml = s3.s3_yaml(env.dir.path(), PREFIX)?;
    Ok(format!(
        "backup:\n  part_size_mib: 5\n  page_rows: 4096\n  databases: [{db}]\n{backup_extra}  s3: {s3_yaml}\nalerts:\n  webhooks: [ {{ kind: generic, url_env: DR_TEST_WEBHOOK }} ]\n"
    ))
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_of_every_field_type_and_both_key_types_is_exact() -> Result<()> {
    let t = Setup::new("bk_roundtrip", "").await?;
    let db = t.env.name.clone();
    let shapes = [
        (
            "all_int",
            Shape::AllTypes {
                pk: PkType::Int,
                binary: false,
            },
        ),
        (
            "all_str",
            Shape::AllTypes {
                pk: PkType::Str,
                binary: true,
            },
        ),
    ];
    info!("phase 1: two collections of every field type, > 16,384 rows each, one with a second partition");
    for (name, shape) in shapes {
        data::create_filled(&t.env.primary, &db, name, shape, 0..20_000).await?;
    }
    t.env.primary.create_partition(&db, "all_int", "p1").await?;
    let p1: Vec<i64> = (20_000..21_000).collect();
    let shape0 = shapes[0].1;
    t.env
        .primary
        .insert(
            &db,
            "all_int",
            Some("p1"),
            data::rows(shape0, &p1, 1),
            p1.len() as u32,
        )
        .await?;
    t.env.primary.load(&db, "all_int").await?;
    let mut before = Vec::new();
    for (name, _) in shapes {
        before.push(data::read_all(&t.env.primary, &db, name).await?);
    }
    assert_eq!(before[0].len(), 21_000);
    assert_eq!(before[1].len(), 20_000);

    info!("phase 2: back up with drctl (verified after writing)");
    let m = t
        .create(&["--collections", &format!("{db}.all_int,{db}.all_str")])
        .await?;
    assert_eq!(m.collections.len(), 2);
    assert_eq!(m.total_rows, 41_000);
    let int = m.collections.iter().find(|c| c.name == "all_int").unwrap();
    assert!(int.partitions.contains(&"p1".to_string()));
    assert!(
        int.objects
            .iter()
            .any(|o| o.partition.as_deref() == Some("p1")),
        "{:?}",
        int.objects
    );
    assert!(
        m.collections
            .iter()
            .flat_map(|c| &c.objects)
            .any(|o| o.parts > 1),
        "no object needed more than one multipart part"
    );
    assert!(t
        .s3
        .object_path(&format!("{PREFIX}{}/verified.json", m.id))
        .exists());

    info!("phase 2b: an independent Parquet reader (pyarrow) reads the backup");
    let folder =
        t.s3.object_path(&format!("{PREFIX}{}/data/{db}/all_int", m.id));
    let script = r#"
import sys, pathlib, pyarrow.parquet as pq
t = pq.ParquetDataset(sorted(str(p) for p in pathlib.Path(sys.argv[1]).rglob("*.parquet"))).read()
fv = t.schema.field("fv").type
pk = t.column("pk").to_pylist()
print(t.num_rows, sum(pk), len(set(pk)), fv.list_size, str(fv.value_type), str(t.schema.field("j").type), str(t.schema.field("arr").type))
"#;
    let py = dr_tests::venv_python()?;
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .arg(&folder)
        .output()?;
    assert!(
        out.status.success(),
        "pyarrow: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let want_sum: i64 = (0..21_000).sum();
    assert_eq!(
        got,
        format!(
            "21000 {want_sum} 21000 {} float string list<item: int64>",
            data::ALL_DIM
        )
    );

    info!("phase 3: restore into the other Milvus and compare every row");
    let target = servers().standby.endpoint();
    let out = t
        .drctl(&["restore", &m.id, "--target-milvus", &target, "--json"])
        .await?;
    assert!(out.status.success(), "restore failed");
    for (i, (name, _)) in shapes.iter().enumerate() {
        let after = data::read_all(&t.env.standby, &db, name).await?;
        let (missing, extra, changed) = data::diff(&before[i], &after);
        assert!(
            missing.is_empty() && extra.is_empty() && changed.is_empty(),
            "{name}: missing {} extra {} changed {}",
            missing.len(),
            extra.len(),
            changed.len()
        );
    }
    let parts = t.env.standby.list_partitions(&db, "all_int").await?;
    assert!(parts.contains(&"p1".to_string()), "{parts:?}");
    let idx = t.env.standby.list_indexes(&db, "all_str").await?;
    assert_eq!(idx.len(), 1, "{idx:?}");
    assert_eq!(idx[0].index_name, "bv_idx");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_a_flipped_byte_and_a_missing_object() -> Result<()> {
    let t = Setup::new("bk_verify", "").await?;
    let db = t.env.name.clone();
    let shape = Shape::Simple { dim: 16 };
    for name in ["a", "b"] {
        data::create_filled(&t.env.primary, &db, name, shape, 0..3000).await?;
    }
    let m = t.create(&[]).await?;
    let out = t.drctl(&["verify", &m.id]).await?;
    assert!(out.status.success());
    assert!(stdout(&out).contains("RESULT: good"));

    info!("phase 2: flip one byte in the middle of one object");
    let a = &m
        .collections
        .iter()
        .find(|c| c.name == "a")
        .unwrap()
        .objects[0];
    let path = t.s3.object_path(&format!("{PREFIX}{}/{}", m.id, a.key));
    let mut bytes = std::fs::read(&path)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, &bytes)?;
    let out = t.drctl(&["verify", &m.id]).await?;
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains(&a.key) && text.contains("corrupt"), "{text}");
    // 3,000 rows, one row group: the flipped byte is in it, not the footer.
    assert!(text.contains("differs in row group 0 (bytes 0.."), "{text}");
    assert!(text.contains("RESULT: BAD"));

    info!("phase 3: delete another object");
    let b = &m
        .collections
        .iter()
        .find(|c| c.name == "b")
        .unwrap()
        .objects[0];
    std::fs::remove_file(t.s3.object_path(&format!("{PREFIX}{}/{}", m.id, b.key)))?;
    let out = t.drctl(&["verify", &m.id, "--json"]).await?;
    assert_eq!(out.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let problems: Vec<String> = r["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems
        .iter()
        .any(|p| p.contains(&b.key) && p.contains("missing")));

    info!("phase 4: restore refuses the corrupt object");
    let out = t
        .drctl(&[
            "restore",
            &m.id,
            "--rename-suffix",
            "_r",
            "--collections",
            &format!("{db}.a"),
        ])
        .await?;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("corrupt") && err.contains(&a.key), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_never_deletes_the_newest_good_backup() -> Result<()> {
    let t = Setup::new("bk_retention", "  retention_days: 0\n  keep_last: 1\n").await?;
    let db = t.env.name.clone();
    let shape = Shape::Simple { dim: 8 };
    data::create_filled(&t.env.primary, &db, "c", shape, 1..4).await?;
    info!("phase 1: one verified backup, then two that were never verified");
    let good = t.create(&[]).await?;
    let b2 = t.create(&["--no-verify"]).await?;
    let b3 = t.create(&["--no-verify"]).await?;

    info!("phase 2: while another run holds the lock, create and prune are refused");
    let lock = t.s3.object_path(&format!("{PREFIX}lock.json"));
    let expires = chrono::Utc::now() + chrono::Duration::minutes(5);
    std::fs::write(
        &lock,
        serde_json::to_vec(&serde_json::json!({
            "token": "other",
            "holder": "agent dc-b (pid 4242)",
            "started": chrono::Utc::now(),
            "expires": expires,
        }))?,
    )?;
    for args in [&["create"][..], &["prune"][..]] {
        let out = t.drctl(args).await?;
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(
            err.contains("another backup run is in progress") && err.contains("agent dc-b"),
            "{err}"
        );
    }
    std::fs::remove_file(&lock)?;
    assert_eq!(t.drctl(&["list", "--json"]).await?.status.code(), Some(0));

    info!("phase 3: dry run says what would go, deletes nothing");
    let out = t.drctl(&["prune", "--dry-run", "--json"]).await?;
    assert!(out.status.success());
    let d: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    let would: Vec<&str> = d
        .iter()
        .filter(|d| d["delete"].as_bool() == Some(true))
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(would, vec![b2.id.as_str()]);
    assert!(t.manifest(&b2.id).is_ok());

    info!("phase 4: prune keeps the newest and the newest good backup");
    let out = t.drctl(&["prune"]).await?;
    assert!(out.status.success());
    let out = t.drctl(&["list", "--json"]).await?;
    let l: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    let left: Vec<&str> = l.iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(left, vec![good.id.as_str(), b3.id.as_str()]);
    assert!(!t
        .s3
        .object_path(&format!("{PREFIX}{}", b2.id))
        .join("manifest.json")
        .exists());
    Ok(())
}

/// Checkpoints of running restores: (rows acknowledged in the current
/// object, data done) per collection.
fn checkpoint_progress(dir: &Path) -> Vec<(u64, bool)> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().extension().is_some_and(|x| x == "json") {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(
                &std::fs::read(e.path()).unwrap_or_default(),
            ) {
                for (_, c) in v["collections"].as_object().into_iter().flatten() {
                    out.push((
                        c["current"][1].as_u64().unwrap_or(0),
                        c["data_done"].as_bool().unwrap_or(false),
                    ));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_killed_midway_and_rerun_completes_exactly_once() -> Result<()> {
    let t = Setup::new("bk_resume", "").await?;
    let db = t.env.name.clone();
    let shape = Shape::Simple { dim: 64 };
    let n = 120_000i64;
    data::create_filled(&t.env.primary, &db, "c", shape, 0..n).await?;
    let before = data::read_all(&t.env.primary, &db, "c").await?;
    let m = t.create(&["--no-verify"]).await?;

    info!("phase 1: start a restore and kill -9 it once some rows are acknowledged");
    let target = servers().standby.endpoint();
    let mut child = t
        .drctl_cmd(&["restore", &m.id, "--target-milvus", &target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let dir = t.checkpoints.clone();
    let caught = wait_until(Duration::from_secs(120), "restore to be midway", || {
        let p = checkpoint_progress(&dir);
        let exited = child.try_wait().ok().flatten().is_some();
        async move {
            if exited {
                return Some(false);
            }
            p.iter()
                .any(|(rows, done)| *rows > 0 && !done)
                .then_some(true)
        }
    })
    .await?;
    assert!(
        caught,
        "the restore finished before it could be interrupted"
    );
    child.kill()?;
    child.wait()?;
    let (acked, _) = checkpoint_progress(&dir)[0];
    assert!(acked < n as u64, "{acked}");

    info!("phase 2: rerun the same command: it resumes and completes");
    let out = t
        .drctl(&["restore", &m.id, "--target-milvus", &target, "--json"])
        .await?;
    assert!(out.status.success(), "rerun failed");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(r["collections"][0]["resumed"], true);
    assert_eq!(r["collections"][0]["digest_ok"], true);

    info!("phase 3: count(*) == distinct keys == expected, content equal");
    let after = data::read_all(&t.env.standby, &db, "c").await?; // fails on duplicates
    assert_eq!(after.len(), n as usize);
    assert_eq!(before, after);
    assert!(
        checkpoint_progress(&dir).is_empty(),
        "checkpoint left behind"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_into_a_renamed_collection_leaves_the_original_untouched() -> Result<()> {
    let t = Setup::new("bk_rename", "").await?;
    let db = t.env.name.clone();
    let shape = Shape::AllTypes {
        pk: PkType::Str,
        binary: false,
    };
    data::create_filled(&t.env.primary, &db, "orig", shape, 0..5000).await?;
    let at_backup = data::read_all(&t.env.primary, &db, "orig").await?;
    let m = t.create(&[]).await?;

    info!("phase 1: the original changes after the backup");
    data::upsert(&t.env.primary, &db, "orig", shape, &[1, 2, 3], 2).await?;
    data::delete(&t.env.primary, &db, "orig", shape, &[10, 11]).await?;
    let current = data::read_all(&t.env.primary, &db, "orig").await?;

    info!("phase 2: restoring over the original is refused");
    let out = t.drctl(&["restore", &m.id]).await?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    info!("phase 3: restore with a suffix and with a map, same Milvus");
    let out = t
        .drctl(&["restore", &m.id, "--rename-suffix", "_r"])
        .await?;
    assert!(out.status.success());
    let out = t
        .drctl(&["restore", &m.id, "--map", &format!("{db}.orig=copy2")])
        .await?;
    assert!(out.status.success());
    assert_eq!(
        data::read_all(&t.env.primary, &db, "orig_r").await?,
        at_backup
    );
    assert_eq!(
        data::read_all(&t.env.primary, &db, "copy2").await?,
        at_backup
    );
    assert_eq!(data::read_all(&t.env.primary, &db, "orig").await?, current);

    info!("phase 4: the manifest's segments cover each object; without them, a clear refusal");
    let objects = &m.collections[0].objects;
    for o in objects {
        // 5,000 rows in 4,096-row pages: two row groups, then the footer.
        assert_eq!(o.segments.len(), 3, "{o:?}");
        assert_eq!(o.segments.iter().map(|s| s.len).sum::<u64>(), o.bytes);
    }
    let path = t.s3.object_path(&format!("{PREFIX}{}/manifest.json", m.id));
    let mut old: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    for o in old["collections"][0]["objects"].as_array_mut().unwrap() {
        assert!(o.as_object_mut().unwrap().remove("segments").is_some());
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&old)?)?;
    let out = t
        .drctl(&["restore", &m.id, "--rename-suffix", "_old"])
        .await?;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lists no segments"), "{err}");
    // Refused before anything was created.
    let left = t.env.primary.list_collections(&db).await?;
    assert!(!left.iter().any(|n| n == "orig_old"), "{left:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_down_during_a_backup_fails_the_run_alerts_and_claims_nothing() -> Result<()> {
    let t = Setup::new("bk_s3down", "").await?;
    let db = t.env.name.clone();
    let shape = Shape::Simple { dim: 128 };
    data::create_filled(&t.env.primary, &db, "c", shape, 0..40_000).await?;
    let hook = dr_tests::webhook::Receiver::start().await?;

    info!("phase 1: start a backup, take S3 down once the run holds its lock");
    let child = t
        .drctl_cmd(&["create"])
        .env("DR_TEST_WEBHOOK", &hook.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let lock = t.s3.object_path(&format!("{PREFIX}lock.json"));
    wait_until(
        Duration::from_secs(60),
        "the backup to take its lock",
        || {
            let l = lock.clone();
            async move { l.exists().then_some(()) }
        },
    )
    .await?;
    t.s3.stop();

    info!("phase 2: the run fails and alerts");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("ERROR"), "{stderr}");
    // drctl delivered the alert before it exited: it is here already.
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 1, "one alert: {bodies:?}");
    let v = &bodies[0];
    assert_eq!(v["event"], "backup_failed");
    assert_eq!(v["status"], "firing");
    assert_eq!(v["source"], "dc-a");
    assert!(v["summary"].as_str().unwrap().contains("backup failed"));
    assert!(!v["detail"]["error"].as_str().unwrap().is_empty());

    info!("phase 3: no manifest claims success");
    let manifests: Vec<PathBuf> = walk(&t.s3.object_path(PREFIX))
        .into_iter()
        .filter(|p| p.ends_with("manifest.json"))
        .collect();
    assert!(manifests.is_empty(), "{manifests:?}");
    Ok(())
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_restores_the_newest_backup_checks_it_and_cleans_up() -> Result<()> {
    let t = Setup::new("bk_drill", "").await?;
    let db = t.env.name.clone();
    let shape = Shape::Simple { dim: 16 };
    data::create_filled(&t.env.primary, &db, "c", shape, 0..3000).await?;
    let older = t.create(&["--no-verify"]).await?;
    data::insert(
        &t.env.primary,
        &db,
        "c",
        shape,
        &(3000..3500).collect::<Vec<_>>(),
        1,
    )
    .await?;
    let newest = t.create(&["--no-verify"]).await?;
    assert_eq!((older.total_rows, newest.total_rows), (3000, 3500));
    let verified = |id: &str| {
        t.s3.object_path(&format!("{PREFIX}{id}/verified.json"))
            .exists()
    };
    assert!(!verified(&newest.id));

    info!("phase 1: drill into the other Milvus");
    let target = servers().standby.endpoint();
    let out = t
        .drctl(&["drill", "--target-milvus", &target, "--json"])
        .await?;
    assert!(out.status.success(), "drill failed");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(r["backup"], newest.id.as_str());
    assert_eq!(r["ok"], true);
    assert_eq!(r["cleaned_up"], true);
    assert_eq!(r["restore"]["rows"], 3500);
    let c = &r["restore"]["collections"][0];
    assert_eq!(c["digest_ok"], true, "{c}");
    let scratch = c["target"].as_str().context("target")?.to_string();
    assert!(scratch.starts_with(&format!("{db}.c_drill_")), "{scratch}");

    info!("phase 2: nothing of the drill is left in the target; the backup counts as verified");
    let left = t
        .env
        .standby
        .list_collections(&db)
        .await
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert!(verified(&newest.id));
    assert!(!verified(&older.id));
    let out = t.drctl(&["list", "--json"]).await?;
    let l: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    let v: Vec<(&str, bool)> = l
        .iter()
        .map(|b| (b["id"].as_str().unwrap(), b["verified_at"].is_string()))
        .collect();
    assert_eq!(
        v,
        vec![(older.id.as_str(), false), (newest.id.as_str(), true)]
    );
    Ok(())
}

/// `/metrics` of an agent as (name → value) for the `milvus_dr_backup_*`
/// series.
async fn backup_metrics(a: &Agent) -> Result<std::collections::BTreeMap<String, f64>> {
    let text = reqwest::get(format!("http://{}/metrics", a.metrics))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("milvus_dr_backup_"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            let name = k.split('{').next()?.to_string();
            Some((name, v.parse().ok()?))
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_runs_on_the_primary_only_and_reports_in_metrics() -> Result<()> {
    let env = TestEnv::new("bk_schedule").await?;
    let db = env.name.clone();
    let s3 = S3Server::start(&env.dir.path().join("s3")).await?;
    let shape = Shape::Simple { dim: 8 };
    data::create_filled(&env.primary, &db, "c", shape, 1..4).await?;
    let extra = agent_yaml(
        &env,
        &s3,
        "  enabled: true\n  schedule: \"* * * * *\"\n  timezone: Europe/Berlin\n",
    )?;
    info!("phase 1: both agents share the bucket; a run is due every minute");
    let (a, b) = start_pair(&env, &extra, None).await?;
    let m = wait_until(
        Duration::from_secs(150),
        "dc-a's first scheduled backup",
        || async {
            let m = backup_metrics(&a).await.ok()?;
            (m.get("milvus_dr_backup_runs_total").copied().unwrap_or(0.0) >= 1.0).then_some(m)
        },
    )
    .await?;
    info!("dc-a metrics: {m:?}");
    assert_eq!(m.get("milvus_dr_backup_failures_total"), Some(&0.0));
    let last = m
        .get("milvus_dr_backup_last_success_timestamp_seconds")
        .copied()
        .context("no last-success time")?;
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - 300.0..=now + 1.0).contains(&last), "{last} vs {now}");
    assert!(m["milvus_dr_backup_last_bytes"] > 0.0);

    info!("phase 2: the standby passed the same minute without backing up");
    let mb = wait_until(Duration::from_secs(30), "dc-b to skip a run", || async {
        let m = backup_metrics(&b).await.ok()?;
        (m.get("milvus_dr_backup_skipped_total")
            .copied()
            .unwrap_or(0.0)
            >= 1.0)
            .then_some(m)
    })
    .await?;
    assert_eq!(mb.get("milvus_dr_backup_runs_total"), Some(&0.0));

    info!("phase 3: the backup is complete, verified and from dc-a");
    let ids: Vec<String> = std::fs::read_dir(s3.object_path(PREFIX))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| {
            s3.object_path(&format!("{PREFIX}{n}/manifest.json"))
                .exists()
        })
        .collect();
    assert!(!ids.is_empty());
    for id in &ids {
        let m = Manifest::from_json(&std::fs::read(
            s3.object_path(&format!("{PREFIX}{id}/manifest.json")),
        )?)?;
        assert_eq!(m.source.datacenter, "dc-a");
        assert_eq!(m.total_rows, 3);
        assert!(s3
            .object_path(&format!("{PREFIX}{id}/verified.json"))
            .exists());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_runs_racing_for_the_lock_exactly_one_wins() -> Result<()> {
    use dr_agent::backup::lock::{Lease, Lock};
    use dr_agent::backup::{BackupError, Store};
    let t = Setup::new("bk_lock", "").await?;
    let cfg = dr_agent::config::Config::load(&t.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = Store::connect(cfg.backup.s3.as_ref().context("s3")?, 5 << 20).await?;
    let is_busy = |r: &Result<Lock>| {
        matches!(
            r.as_ref()
                .err()
                .and_then(|e| e.downcast_ref::<BackupError>()),
            Some(BackupError::Busy { .. })
        )
    };

    info!("phase 1: 20 rounds of two runs starting at once");
    for round in 0..20 {
        let (a, b) = tokio::join!(
            Lock::acquire(&store, "run a", Lease::default()),
            Lock::acquire(&store, "run b", Lease::default())
        );
        let winners = usize::from(a.is_ok()) + usize::from(b.is_ok());
        assert_eq!(
            winners,
            1,
            "round {round}: {a:?} / {b:?}",
            a = a.as_ref().err(),
            b = b.as_ref().err()
        );
        assert!(
            is_busy(&a) || is_busy(&b),
            "round {round}: the loser is not told it is busy"
        );
        for l in [a, b].into_iter().flatten() {
            l.release().await;
        }
        assert!(!t.s3.object_path(&format!("{PREFIX}lock.json")).exists());
    }

    info!("phase 2: a lock whose holder died (lease expired) is taken over");
    let lock = t.s3.object_path(&format!("{PREFIX}lock.json"));
    std::fs::write(
        &lock,
        serde_json::to_vec(&serde_json::json!({
            "token": "dead",
            "holder": "a run that died",
            "started": chrono::Utc::now() - chrono::Duration::minutes(20),
            "expires": chrono::Utc::now() - chrono::Duration::minutes(10),
        }))?,
    )?;
    let l = Lock::acquire(&store, "run c", Lease::default()).await?;
    let body: serde_json::Value = serde_json::from_slice(&std::fs::read(&lock)?)?;
    assert_eq!(body["holder"], "run c");
    assert!(is_busy(
        &Lock::acquire(&store, "run d", Lease::default()).await
    ));

    info!("phase 3: the store refuses writes whose condition fails (what makes the race safe)");
    use dr_agent::backup::store::Cond;
    let before = std::fs::read(&lock)?;
    assert_eq!(
        store
            .put_if("lock.json", b"{}".to_vec(), Cond::Absent)
            .await?,
        None
    );
    assert_eq!(
        store
            .put_if("lock.json", b"{}".to_vec(), Cond::ETag("\"0123\"".into()))
            .await?,
        None
    );
    assert_eq!(std::fs::read(&lock)?, before);
    // Deletes too (what keeps a release from deleting a lock taken over).
    assert!(!store.delete_if("lock.json", "\"0123\"").await?);
    assert_eq!(std::fs::read(&lock)?, before);
    let (_, etag) = store.get_tagged("lock.json").await?.context("lock")?;
    assert!(store.delete_if("lock.json", &etag).await?);
    assert!(!lock.exists());
    assert!(!store.delete_if("lock.json", &etag).await?);
    l.release().await;
    Ok(())
}

/// The lock as another holder writes it: an unconditional PutObject in the
/// name of dc-b's agent, valid for five minutes.
async fn take_over_lock(store: &dr_agent::backup::Store) -> Result<()> {
    let body = serde_json::json!({
        "token": "other",
        "holder": "agent dc-b (pid 4242)",
        "started": chrono::Utc::now(),
        "expires": chrono::Utc::now() + chrono::Duration::minutes(5),
    });
    store
        .put("lock.json", serde_json::to_vec(&body)?)
        .await
        .context("overwrite lock.json")
}

/// The holder named in `lock.json`, if there is one.
fn lock_holder(s3: &S3Server) -> Option<String> {
    let b = std::fs::read(s3.object_path(&format!("{PREFIX}lock.json"))).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
    v["holder"].as_str().map(str::to_string)
}

async fn store_of(t: &Setup) -> Result<dr_agent::backup::Store> {
    let cfg = dr_agent::config::Config::load(&t.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    dr_agent::backup::Store::connect(cfg.backup.s3.as_ref().context("s3")?, 5 << 20).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_lock_is_taken_over_stops_without_manifest_or_pruning() -> Result<()> {
    // A 5 s lease: renewed every second, so a takeover is seen within one.
    let t = Setup::new(
        "bk_fence",
        "  lock_lease: 5s\n  retention_days: 0\n  keep_last: 1\n  object_max_mib: 5\n",
    )
    .await?;
    let db = t.env.name.clone();
    let store = store_of(&t).await?;
    data::create_filled(&t.env.primary, &db, "small", Shape::Simple { dim: 8 }, 0..3).await?;
    data::create_filled(
        &t.env.primary,
        &db,
        "big",
        Shape::Simple { dim: 128 },
        0..60_000,
    )
    .await?;

    info!(
        "phase 1: an earlier backup, which a completed run with --prune would delete (keep_last 1)"
    );
    let earlier = t.create(&["--collections", &format!("{db}.small")]).await?;

    info!("phase 2: a run with --prune; once it has written data objects, another holder takes the lock");
    let child = t
        .drctl_cmd(&["create", "--prune", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let root = t.s3.object_path(PREFIX);
    let earlier_id = earlier.id.clone();
    let id = wait_until(
        Duration::from_secs(120),
        "the run to hold the lock and have written a data object of the big collection",
        || {
            let (root, earlier_id) = (root.clone(), earlier_id.clone());
            let holder = lock_holder(&t.s3);
            async move {
                if !holder?.starts_with("drctl") {
                    return None;
                }
                walk(&root)
                    .into_iter()
                    .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
                    .filter(|p| p.parent().is_some_and(|d| d.ends_with("big/all")))
                    .filter_map(|p| {
                        let rel = p.strip_prefix(&root).ok()?;
                        Some(
                            rel.components()
                                .next()?
                                .as_os_str()
                                .to_string_lossy()
                                .to_string(),
                        )
                    })
                    .find(|folder| *folder != earlier_id)
            }
        },
    )
    .await?;
    take_over_lock(&store).await?;
    let taken = std::time::Instant::now();
    let manifest = t.s3.object_path(&format!("{PREFIX}{id}/manifest.json"));
    // The takeover landed mid-run: before the manifest, while it still ran.
    assert!(
        !manifest.exists(),
        "the run had already written its manifest"
    );
    let mut child = child;
    assert!(child.try_wait()?.is_none(), "the run had already ended");
    let objects_at_takeover = walk(&t.s3.object_path(&format!("{PREFIX}{id}"))).len();
    info!(backup = %id, objects_at_takeover, "lock taken over");

    info!(
        "phase 3: the run stops with exit 3, writes no manifest, prunes nothing, leaves the lock"
    );
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let stopped_after = taken.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    info!(?stopped_after, "drctl stopped\n{}", tail(&stderr, 15));
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("lost the backup lock") && stderr.contains("agent dc-b"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "{}", stdout(&out));
    assert!(
        stopped_after < Duration::from_secs(5),
        "took {stopped_after:?} to stop"
    );
    assert!(
        !manifest.exists(),
        "a manifest was written after the takeover"
    );
    assert!(
        t.manifest(&earlier.id).is_ok(),
        "the earlier backup was pruned"
    );
    assert_eq!(lock_holder(&t.s3).as_deref(), Some("agent dc-b (pid 4242)"));

    info!("phase 4: with the lock free again, the same command does prune the earlier backup");
    store.delete("lock.json").await?;
    let out = t
        .drctl(&[
            "create",
            "--prune",
            "--json",
            "--collections",
            &format!("{db}.small"),
        ])
        .await?;
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["pruned"], serde_json::json!([earlier.id]));
    assert!(t.manifest(&earlier.id).is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_that_lost_its_lock_deletes_nothing() -> Result<()> {
    use dr_agent::backup::lock::{Lease, Lock};
    use dr_agent::backup::{retention, BackupError, Settings};
    let t = Setup::new("bk_prune_fence", "  retention_days: 0\n  keep_last: 1\n").await?;
    let db = t.env.name.clone();
    data::create_filled(&t.env.primary, &db, "c", Shape::Simple { dim: 8 }, 0..3).await?;
    let old = t.create(&["--no-verify"]).await?;
    let new = t.create(&[]).await?;
    let cfg = dr_agent::config::Config::load(&t.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let settings = Settings::from_config(&cfg);
    let store = store_of(&t).await?;
    let files = || {
        let mut f = walk(&t.s3.object_path(PREFIX));
        f.sort();
        f
    };

    info!("phase 1: under the lock, retention would delete the older backup");
    // The default 5-minute lease: its renewal loop would not notice the
    // takeover for a minute, so this is the prune's own check.
    let lock = Lock::acquire(&store, "prune run", Lease::default()).await?;
    let plan = retention::prune(&store, &settings, true, None, &lock).await?;
    let doomed: Vec<&str> = plan
        .iter()
        .filter(|d| d.delete)
        .map(|d| d.id.as_str())
        .collect();
    assert_eq!(doomed, vec![old.id.as_str()]);

    info!("phase 2: another holder takes the lock; the prune deletes nothing and says why");
    take_over_lock(&store).await?;
    let before = files();
    let e = retention::prune(&store, &settings, false, None, &lock)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e.downcast_ref::<BackupError>(),
            Some(BackupError::LostLock { .. })
        ),
        "{e:#}"
    );
    assert!(format!("{e:#}").contains("agent dc-b"), "{e:#}");
    assert!(lock.fence().is_tripped());
    assert_eq!(files(), before);
    lock.release().await;
    assert_eq!(lock_holder(&t.s3).as_deref(), Some("agent dc-b (pid 4242)"));

    info!("phase 3: with the lock its own, the same prune deletes the older backup");
    store.delete("lock.json").await?;
    let lock = Lock::acquire(&store, "prune run", Lease::default()).await?;
    retention::prune(&store, &settings, false, None, &lock).await?;
    lock.release().await;
    assert!(t.manifest(&old.id).is_err());
    assert!(t.manifest(&new.id).is_ok());
    Ok(())
}

/// Whether a `/metrics` page has a sample of `name` (or of `name_total`,
/// a counter's sample name).
fn has_sample(page: &str, name: &str) -> bool {
    page.lines().filter(|l| !l.starts_with('#')).any(|l| {
        let series = l.split([' ', '{']).next().unwrap_or_default();
        series == name || series == format!("{name}_total")
    })
}

/// Every metric name that the monitoring kit (alert rules, dashboard) uses,
/// listed in `deploy/monitoring/metrics.txt`, has a sample on a running
/// group: the agents' names on the primary's agent, the witnesses' on a
/// witness, the certificate expiry on both. Replication runs first (the
/// deployment waits for it) and a scheduled backup really succeeds (the
/// last-success time exists only after one: nothing is invented before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_monitoring_kit_uses_is_exported() -> Result<()> {
    use dr_tests::deployment::{deploy_with, Extra};
    let s3dir = tempfile::tempdir()?;
    let s3 = S3Server::start(&s3dir.path().join("s3")).await?;
    let db = "bk_metrics";
    let backup = format!(
        "backup:\n  enabled: true\n  schedule: \"* * * * *\"\n  databases: [{db}]\n  s3: {}\n",
        s3.s3_yaml(s3dir.path(), PREFIX)?
    );
    let d = deploy_with(
        db,
        "{ profile: fast }",
        None,
        Extra {
            // The front door's metrics too (its backstop scan kept frequent).
            agents: &format!(
                "{backup}frontdoor: {{ listen: \"127.0.0.1:0\", scan_interval: 1s }}\n"
            ),
            ..Default::default()
        },
    )
    .await?;

    info!("phase 1: replication runs; a scheduled backup succeeds on the primary");
    wait_until(
        Duration::from_secs(150),
        "dc-a's first scheduled backup to succeed",
        || async {
            let m = backup_metrics(&d.a).await.ok()?;
            m.contains_key("milvus_dr_backup_last_success_timestamp_seconds")
                .then_some(())
        },
    )
    .await
    .with_context(|| d.logs())?;

    info!("phase 2: every name in deploy/monitoring/metrics.txt has a sample");
    let page = |addr: std::net::SocketAddr| async move {
        reqwest::get(format!("http://{addr}/metrics"))
            .await?
            .text()
            .await
    };
    let agent = page(d.a.metrics).await?;
    let w = d.w.procs[0]
        .bound
        .as_ref()
        .context("witness 1's addresses")?;
    let witness = page(w.metrics).await?;
    let list =
        std::fs::read_to_string(dr_tests::repo_root().join("deploy/monitoring/metrics.txt"))?;
    let names: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(names.len() > 20, "{names:?}");
    let mut missing = vec![];
    for name in names {
        let on: &[(&str, &str)] = if name == "milvus_dr_certificate_expiry_timestamp_seconds" {
            &[("dc-a's agent", &agent), ("witness 1", &witness)]
        } else if name.starts_with("milvus_dr_witness_") {
            &[("witness 1", &witness)]
        } else {
            &[("dc-a's agent", &agent)]
        };
        for (who, text) in on {
            if !has_sample(text, name) {
                missing.push(format!("{name} on {who}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "missing: {missing:?}\n--- agent\n{agent}\n--- witness\n{witness}"
    );
    Ok(())
}
