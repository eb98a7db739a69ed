//! Mutual TLS and identities, epoch fencing, and config validation of the
//! real binaries.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use dr_agent::tls::TlsFiles;
use dr_proto::now_ms;
use dr_proto::pb::{self, admin_client::AdminClient, replication_client::ReplicationClient};
use dr_tests::witness::wait_leader_status;
use dr_tests::{Agent, AgentSpec, TestEnv};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tracing::info;

fn files(env: &TestEnv, name: &str) -> TlsFiles {
    TlsFiles {
        ca: env.certs.join("ca.pem"),
        cert: env.certs.join(format!("{name}.pem")),
        key: env.certs.join(format!("{name}.key")),
    }
}

/// Through the parties' own client path (`dr_proto::channel`).
async fn dial(addr: std::net::SocketAddr, tls: dr_proto::tls::ClientTls) -> Result<Channel> {
    dr_proto::channel::connect(
        &format!("https://{addr}"),
        &tls,
        dr_proto::channel::Liveness::default(),
    )
    .await
}

/// Through tonic's own TLS client (a plain rustls client, built by hand).
async fn channel(
    addr: std::net::SocketAddr,
    tls: ClientTlsConfig,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

fn hello(epoch: u64) -> pb::SourceMessage {
    pb::SourceMessage {
        msg: Some(pb::source_message::Msg::Hello(pb::SourceHello {
            source_dc: "dc-a".into(),
            epoch,
            lineage: "test".into(),
        })),
    }
}

/// Opens a replication stream and returns the sink's first answer.
async fn replicate(
    ch: tonic::transport::Channel,
    epoch: u64,
) -> Result<pb::SinkMessage, tonic::Status> {
    let mut c = ReplicationClient::new(ch);
    let mut s = c
        .replicate(tokio_stream::iter(vec![hello(epoch)]))
        .await?
        .into_inner();
    s.message()
        .await?
        .ok_or_else(|| tonic::Status::unknown("empty stream"))
}

async fn standby_agent(env: &TestEnv) -> Result<Agent> {
    Agent::start(
        env,
        &AgentSpec {
            dc: "dc-b",
            peer_address: "https://127.0.0.1:1".into(),
            grpc_port: 0,
            extra_yaml: "",
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_valid_certificate_are_refused() -> Result<()> {
    let env = TestEnv::new("t_mtls").await?;
    let b = standby_agent(&env).await?;
    let ca = Certificate::from_pem(std::fs::read(env.certs.join("ca.pem"))?);

    info!("phase: no client certificate");
    let no_cert = ClientTlsConfig::new()
        .ca_certificate(ca.clone())
        .domain_name("agent.dc-b");
    let r = match channel(b.grpc, no_cert).await {
        Err(_) => Err(tonic::Status::unavailable("handshake refused")),
        Ok(ch) => replicate(ch, 1).await,
    };
    assert!(r.is_err(), "a client without a certificate must be refused");

    info!("phase: a certificate from another CA");
    let other = tempfile::tempdir()?;
    dr_agent::tls::generate_dev_certs(other.path(), &["agent.dc-a".into()], 1)?;
    let foreign = ClientTlsConfig::new()
        .ca_certificate(ca.clone())
        .domain_name("agent.dc-b")
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(other.path().join("agent.dc-a.pem"))?,
            std::fs::read(other.path().join("agent.dc-a.key"))?,
        ));
    let r = match channel(b.grpc, foreign).await {
        Err(_) => Err(tonic::Status::unavailable("handshake refused")),
        Ok(ch) => replicate(ch, 1).await,
    };
    assert!(r.is_err(), "a certificate of another CA must be refused");

    info!("phase: valid certificates with the wrong identity");
    let op = dial(b.grpc, files(&env, "operator").client_config("agent.dc-b")?).await?;
    let e = replicate(op.clone(), 1).await.unwrap_err();
    assert_eq!(
        e.code(),
        tonic::Code::PermissionDenied,
        "operator may not replicate: {e}"
    );
    let own = dial(
        b.grpc,
        files(&env, "agent.dc-b").client_config("agent.dc-b")?,
    )
    .await?;
    let e = replicate(own.clone(), 1).await.unwrap_err();
    assert_eq!(
        e.code(),
        tonic::Code::PermissionDenied,
        "only the peer may replicate: {e}"
    );
    let e = AdminClient::new(own)
        .status(pb::StatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        tonic::Code::PermissionDenied,
        "agents may not call admin: {e}"
    );

    info!("phase: the right identities are accepted");
    let st = AdminClient::new(op)
        .status(pb::StatusRequest {})
        .await?
        .into_inner();
    assert_eq!(st.datacenter, "dc-b");
    let peer = dial(
        b.grpc,
        files(&env, "agent.dc-a").client_config("agent.dc-b")?,
    )
    .await?;
    let first = replicate(peer, 1).await?;
    assert!(matches!(first.msg, Some(pb::sink_message::Msg::Hello(_))));

    info!("phase: the server must prove its identity too");
    let wrong_server = files(&env, "agent.dc-a").client_config("agent.dc-a")?;
    assert!(
        match dial(b.grpc, wrong_server).await {
            Err(_) => true,
            Ok(ch) => AdminClient::new(ch)
                .status(pb::StatusRequest {})
                .await
                .is_err(),
        },
        "a server presenting another identity must be refused by the client"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_from_an_older_epoch_is_refused_and_bad_batches_rejected() -> Result<()> {
    let env = TestEnv::new("t_epoch").await?;
    let b = standby_agent(&env).await?;
    let peer = || async {
        dial(
            b.grpc,
            files(&env, "agent.dc-a")
                .client_config("agent.dc-b")
                .unwrap(),
        )
        .await
    };

    info!("phase: a source at epoch 5 teaches the sink epoch 5");
    let first = replicate(peer().await?, 5).await?;
    match first.msg {
        Some(pb::sink_message::Msg::Hello(h)) => assert_eq!(h.epoch, 5),
        other => panic!("expected a hello, got {other:?}"),
    }

    info!("phase: a source at epoch 1 is refused");
    let e = replicate(peer().await?, 1).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("stale epoch"), "{e}");

    info!("phase: a malformed batch is rejected with InvalidArgument, nothing applied");
    let mut c = ReplicationClient::new(peer().await?);
    let bad = pb::SourceMessage {
        msg: Some(pb::source_message::Msg::Batch(pb::ChangeBatch {
            epoch: 5,
            seq: 0,
            ..Default::default()
        })),
    };
    let mut s = c
        .replicate(tokio_stream::iter(vec![hello(5), bad]))
        .await?
        .into_inner();
    let _hello = s.message().await?;
    let e = match s.message().await {
        Ok(Some(m)) => panic!("expected an error, got {m:?}"),
        Ok(None) => panic!("stream ended without an error"),
        Err(e) => e,
    };
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");

    info!("phase: the epoch survives a restart of the sink");
    let mut b = b;
    b.stop()?;
    b.restart().await?;
    let peer2 = dial(
        b.grpc,
        files(&env, "agent.dc-a").client_config("agent.dc-b")?,
    )
    .await?;
    let e = replicate(peer2, 4).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    Ok(())
}

#[test]
fn dr_agent_check_validates_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"
datacenter: dc-a
initial_primary: dc-a
state_dir: state
datacenters:
  dc-a: { milvus: { endpoint: "http://127.0.0.1:19530" }, agent: "https://127.0.0.1:7443" }
  dc-b: { milvus: { endpoint: "http://127.0.0.1:19531" }, agent: "https://127.0.0.1:7444" }
listen: { grpc: "127.0.0.1:7443", metrics: "127.0.0.1:9464" }
tls: { ca: ca.pem, cert: a.pem, key: a.key }
"#;
    let p = dir.path().join("good.yaml");
    std::fs::write(&p, good).unwrap();
    let out = std::process::Command::new(dr_tests::bin("dr-agent"))
        .args(["--check", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let p = dir.path().join("bad.yaml");
    std::fs::write(
        &p,
        good.replace("initial_primary: dc-a", "initial_primary: dc-c"),
    )
    .unwrap();
    let out = std::process::Command::new(dr_tests::bin("dr-agent"))
        .args(["--check", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("initial_primary") && err.contains("fix:"),
        "{err}"
    );

    let out = std::process::Command::new(dr_tests::bin("dr-agent"))
        .args(["--check", "--config", "/nonexistent/agent.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

/// The witness API checks who calls what, and what they send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witnesses_check_identities_datacenters_timing_and_input() -> Result<()> {
    use dr_proto::pb::{witness_client::WitnessClient, Json, RaftRpc};
    use dr_witness::decide::{AgentHeartbeat, OperatorRequest};
    use dr_witness::timing::Timing;
    use dr_witness::wire::HeartbeatRequest;

    let env = TestEnv::new("t_witness_api").await?;
    let w = dr_tests::witness::Witnesses::start(&env, "{ profile: fast }").await?;
    let addr = w.front[0].addr;
    let client = |name: &str| {
        let tls = files(&env, name).client_config("witness-1").unwrap();
        async move { Ok::<_, anyhow::Error>(WitnessClient::new(dial(addr, tls).await?)) }
    };
    let hb = |dc: &str| AgentHeartbeat {
        dc: dc.into(),
        seq: 1,
        epoch: 0,
        acting_primary: false,
        released: false,
        milvus_healthy: true,
        wall_ms: 0,
        milvus_last_healthy_wall_ms: None,
        applied_snapshot_wall_ms: None,
        drained_snapshot_wall_ms: None,
        lag_ms: None,
        drill_outage_ms: None,
    };
    let body = |v: &HeartbeatRequest| dr_proto::pb::AgentHeartbeat::from(v.clone());

    // An agent may not speak Raft, push observations or run operator commands.
    let mut agent = client("agent.dc-a").await?;
    let e = agent
        .raft(RaftRpc {
            kind: "vote".into(),
            body: b"{}".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let e = agent
        .operator(Json {
            body: serde_json::to_vec(&OperatorRequest::ForceFailover { by: "x".into() })?,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // It may heartbeat only for its own datacenter, with the same timing.
    let e = agent
        .heartbeat(body(&HeartbeatRequest {
            heartbeat: hb("dc-b"),
            timing: Timing::fast(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let e = agent
        .heartbeat(body(&HeartbeatRequest {
            heartbeat: hb("dc-a"),
            timing: Timing::default(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("timing"), "{}", e.message());
    // A malformed heartbeat is refused naming what is wrong.
    let good = body(&HeartbeatRequest {
        heartbeat: hb("dc-a"),
        timing: Timing::fast(),
    });
    let malformed = [
        (
            dr_proto::pb::AgentHeartbeat {
                timing: None,
                ..good.clone()
            },
            "timing is missing",
        ),
        (
            dr_proto::pb::AgentHeartbeat {
                seq: 0,
                ..good.clone()
            },
            "seq is 0",
        ),
    ];
    for (beat, says) in malformed {
        let e = agent.heartbeat(beat).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(says), "{}", e.message());
    }
    let ok = agent
        .heartbeat(body(&HeartbeatRequest {
            heartbeat: hb("dc-a"),
            timing: Timing::fast(),
        }))
        .await?;
    let reply = dr_witness::decide::HeartbeatReply::try_from(ok.into_inner())?;
    assert_eq!(reply.seq, 1);

    // Reports: an agent only for its own datacenter, well formed.
    let report = |dc: &str, what: &str| dr_proto::pb::AgentReport {
        dc: dc.into(),
        epoch: 1,
        what: what.into(),
        evidence: "e".into(),
        divergent: None,
    };
    let e = agent
        .report(report("dc-b", "DNS switched"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let e = agent.report(report("dc-a", "")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    agent.report(report("dc-a", "DNS switched")).await?;

    // A witness may not claim another witness's observations; an unknown
    // Raft RPC kind is refused.
    let mut w2 = client("witness-2").await?;
    let e = w2
        .observe(Json {
            body: br#"{"from": 3, "observation": {}}"#.to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let e = w2
        .raft(RaftRpc {
            kind: "gossip".into(),
            body: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    // The operator can read the status, not report as an agent.
    let mut op = client("operator").await?;
    let e = op.report(report("dc-a", "DNS switched")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let st = op
        .status(Json {
            body: b"{}".to_vec(),
        })
        .await?;
    let st: dr_witness::api::WitnessStatus = serde_json::from_slice(&st.into_inner().body)?;
    assert_eq!(st.id, 1);
    Ok(())
}

/// `name{labels} value` lines of a `/metrics` page whose name and labels
/// contain every one of `needles`.
fn series(text: &str, name: &str, needles: &[&str]) -> Vec<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse().ok())
        .collect()
}

async fn metrics_text(addr: std::net::SocketAddr) -> Option<String> {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// notAfter of a PEM certificate file.
fn file_expiry(path: &std::path::Path) -> Result<i64> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(path)?;
    dr_proto::tls::not_after(&der)
}

/// The certificate a server presents to a new connection made through the
/// parties' own client path.
async fn presented(addr: std::net::SocketAddr, identity: &str, env: &TestEnv) -> Result<Vec<u8>> {
    use tonic::codegen::Service;
    let tls = files(env, "operator").client_config(identity)?;
    let mut c = dr_proto::channel::connector(&tls, dr_proto::channel::Liveness::default());
    let io = c
        .call(format!("http://{addr}").parse()?)
        .await
        .map_err(|e| anyhow::anyhow!("connect to {identity} at {addr}: {e}"))?;
    let certs = io
        .inner()
        .get_ref()
        .1
        .peer_certificates()
        .context("no server certificate")?;
    Ok(certs[0].to_vec())
}

/// Every leaf certificate of a running group (three witnesses, two agents,
/// replication going) is re-issued from the same CA: every process uses
/// the new one without a restart, and the group works on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_a_running_group_without_a_restart() -> Result<()> {
    use dr_tests::data;
    use dr_tests::deployment::deploy;
    use dr_tests::wait_until;
    use rustls_pki_types::pem::PemObject;

    let d = deploy("t_rotate", "{ profile: fast }", None).await?;
    let db = d.env.name.clone();
    let certs = d.env.certs.clone();
    // (what, metrics address, its certificate file, gRPC address, identity)
    let mut parties = vec![
        (
            "dc-a".to_string(),
            d.a.metrics,
            "agent.dc-a".to_string(),
            d.a.grpc,
        ),
        (
            "dc-b".to_string(),
            d.b.metrics,
            "agent.dc-b".to_string(),
            d.b.grpc,
        ),
    ];
    for p in &d.w.procs {
        let b = p.bound.as_ref().context("a witness without addresses")?;
        let name = format!("witness-{}", p.id);
        parties.push((name.clone(), b.metrics, name, b.grpc));
    }
    let pids = (
        d.a.pid(),
        d.b.pid(),
        d.w.procs
            .iter()
            .map(|p| p.bound.as_ref().map(|b| b.pid))
            .collect::<Vec<_>>(),
    );
    let expiry_of = |text: &str, role: &str, file: &std::path::Path| {
        series(
            text,
            "milvus_dr_certificate_expiry_timestamp_seconds",
            &[
                &format!("role=\"{role}\""),
                &format!("path=\"{}\"", file.display()),
            ],
        )
    };

    info!("phase 1: every process exports the expiry of the certificates it uses");
    let ca_expiry = file_expiry(&certs.join("ca.pem"))?;
    for (who, metrics, name, _) in &parties {
        let text = metrics_text(*metrics).await.context("metrics")?;
        let cert = certs.join(format!("{name}.pem"));
        ensure!(
            expiry_of(&text, "cert", &cert) == vec![file_expiry(&cert)? as f64],
            "{who}: the certificate's expiry\n{text}"
        );
        ensure!(
            expiry_of(&text, "ca", &certs.join("ca.pem")) == vec![ca_expiry as f64],
            "{who}: the CA's expiry\n{text}"
        );
        if who.starts_with("dc-") {
            // Agents label it with their datacenter, like their other metrics.
            ensure!(
                series(
                    &text,
                    "milvus_dr_certificate_expiry_timestamp_seconds",
                    &[&format!("datacenter=\"{who}\"")]
                )
                .len()
                    == 2,
                "{who}: the datacenter label\n{text}"
            );
        }
    }

    info!("phase 2: every leaf certificate is re-issued from the same CA, valid 90 days instead of 30");
    let names: Vec<String> = [
        "agent.dc-a",
        "agent.dc-b",
        "operator",
        "witness-1",
        "witness-2",
        "witness-3",
    ]
    .map(String::from)
    .to_vec();
    let old_der: Vec<Vec<u8>> = names
        .iter()
        .map(|n| {
            rustls_pki_types::CertificateDer::from_pem_file(certs.join(format!("{n}.pem")))
                .map(|c| c.to_vec())
        })
        .collect::<Result<_, _>>()?;
    dr_proto::tls::reissue_dev_certs(&certs, &names, 90)?;
    let rotated_ms = now_ms();

    info!("phase 3: every process reports the new expiry on /metrics");
    for (who, metrics, name, _) in &parties {
        let cert = certs.join(format!("{name}.pem"));
        let want = file_expiry(&cert)? as f64;
        wait_until(
            Duration::from_secs(30),
            &format!("{who} to export its new certificate's expiry"),
            || async {
                let text = metrics_text(*metrics).await?;
                (expiry_of(&text, "cert", &cert) == vec![want]).then_some(())
            },
        )
        .await
        .with_context(|| d.logs())?;
    }

    info!("phase 4: new connections get each server's new certificate");
    for (who, _, name, grpc) in &parties {
        let now = presented(*grpc, name, &d.env).await?;
        let i = names.iter().position(|n| n == name).context("name")?;
        ensure!(
            now != old_der[i],
            "{who} still presents its old certificate"
        );
        ensure!(
            now == rustls_pki_types::CertificateDer::from_pem_file(
                certs.join(format!("{name}.pem"))
            )?
            .to_vec(),
            "{who} presents a certificate that is not its file's"
        );
    }

    info!("phase 5: replication continues: rows inserted after the rotation reach the standby");
    let ids: Vec<i64> = (200..300).collect();
    data::insert(
        &d.env.primary,
        &db,
        "c",
        data::Shape::Simple { dim: 8 },
        &ids,
        1,
    )
    .await?;
    let inserted_ms = now_ms();
    wait_until(
        Duration::from_secs(60),
        "the rows inserted after the rotation on the standby",
        || async {
            let s = d.ctl.status("dc-a").await.ok()?;
            let r = s.replication?;
            (r.applied_snapshot_ms > inserted_ms).then_some(())
        },
    )
    .await
    .with_context(|| d.logs())?;
    let rows = data::read_all(&d.env.standby, &db, "c").await?;
    ensure!(
        rows.len() == 300,
        "the standby holds {} rows, not 300",
        rows.len()
    );
    ensure!(
        dr_tests::deployment::log_time_after(
            &d.a.log,
            &["certificates rotated: reopening the replication stream"],
            rotated_ms * 1000 - 1_000_000,
        )
        .is_some(),
        "dc-a reopened its replication stream with its new certificate"
    );

    info!("phase 6: the quorum has a confirmed leader and hears both agents");
    let beat = timing_fast_heartbeat_bound();
    wait_leader_status(
        &d.ctl,
        Duration::from_secs(30),
        "a confirmed leader hearing both agents",
        |s| {
            ["dc-a", "dc-b"].iter().all(|dc| {
                s.agents
                    .get(*dc)
                    .is_some_and(|a| a.ago_ms < beat.as_millis() as u64)
            })
        },
    )
    .await
    .with_context(|| d.logs())?;

    info!("phase 7: a new drctl connection (the binary) succeeds");
    let out = d.drctl(&["status"])?;
    ensure!(
        out.status.success(),
        "drctl status: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    info!("phase 8: a certificate from a foreign CA is still refused, by agents and witnesses");
    let other = tempfile::tempdir()?;
    dr_agent::tls::generate_dev_certs(other.path(), &["agent.dc-a".into()], 90)?;
    let ca = Certificate::from_pem(std::fs::read(certs.join("ca.pem"))?);
    for (who, _, name, grpc) in &parties {
        let foreign = ClientTlsConfig::new()
            .ca_certificate(ca.clone())
            .domain_name(name.as_str())
            .identity(tonic::transport::Identity::from_pem(
                std::fs::read(other.path().join("agent.dc-a.pem"))?,
                std::fs::read(other.path().join("agent.dc-a.key"))?,
            ));
        let refused = match channel(*grpc, foreign).await {
            Err(_) => true,
            Ok(ch) => {
                if who.starts_with("witness") {
                    dr_proto::pb::witness_client::WitnessClient::new(ch)
                        .status(dr_proto::pb::Json {
                            body: b"{}".to_vec(),
                        })
                        .await
                        .is_err()
                } else {
                    AdminClient::new(ch)
                        .status(pb::StatusRequest {})
                        .await
                        .is_err()
                }
            }
        };
        ensure!(refused, "{who} accepted a certificate from a foreign CA");
    }

    info!("phase 9: nobody restarted, nobody logged an ERROR");
    let pids_now = (
        d.a.pid(),
        d.b.pid(),
        d.w.procs
            .iter()
            .map(|p| p.bound.as_ref().map(|b| b.pid))
            .collect::<Vec<_>>(),
    );
    ensure!(
        pids == pids_now,
        "a process restarted: {pids:?} -> {pids_now:?}"
    );
    // Agents: none at all. Witnesses: none since the rotation (openraft
    // logs the peers it cannot reach yet while the group starts), except
    // openraft's own AppendEntries deadline (100 ms in the fast profile),
    // which a loaded machine misses now and then: a slow answer, retried,
    // not a refused handshake (that would log a connection error).
    let since_rotation = |log: &std::path::Path| -> Vec<String> {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains(" ERROR "))
            .filter(|l| !l.contains("openraft::replication: RPCError err=timeout after"))
            .filter(|l| {
                chrono::DateTime::parse_from_rfc3339(l.split(' ').next().unwrap_or_default())
                    .map_or(true, |t| t.timestamp_millis() >= rotated_ms)
            })
            .map(String::from)
            .collect()
    };
    for (who, errs) in [
        ("dc-a".to_string(), d.a.error_lines()),
        ("dc-b".to_string(), d.b.error_lines()),
    ]
    .into_iter()
    .chain(
        d.w.procs
            .iter()
            .map(|p| (format!("witness {}", p.id), since_rotation(&p.log))),
    ) {
        ensure!(errs.is_empty(), "{who} logged errors:\n{}", errs.join("\n"));
    }
    Ok(())
}

/// How fresh an agent's last heartbeat must be at a witness: a few fast
/// heartbeats.
fn timing_fast_heartbeat_bound() -> Duration {
    Duration::from_millis(dr_witness::timing::Timing::fast().heartbeat_ms * 8)
}

/// Notifications received on `socket` until `done` holds of them.
async fn recv_until(
    socket: &tokio::net::UnixDatagram,
    deadline: Duration,
    what: &str,
    done: fn(&[String]) -> bool,
) -> Result<Vec<String>> {
    let mut buf = vec![0u8; 4096];
    let mut got = vec![];
    let end = tokio::time::Instant::now() + deadline;
    while !done(&got) {
        let n = tokio::time::timeout_at(end, socket.recv(&mut buf))
            .await
            .with_context(|| format!("{what}: got only {got:?}"))??;
        got.extend(String::from_utf8_lossy(&buf[..n]).lines().map(String::from));
    }
    Ok(got)
}

/// Runs `binary --config config` as systemd runs a `Type=notify` unit
/// with `WatchdogSec=1` (NOTIFY_SOCKET, WATCHDOG_USEC), checks its plain
/// `/healthz`, stops it with SIGTERM and returns every notification it
/// sent, in order.
async fn under_systemd(
    binary: &str,
    config: &std::path::Path,
    state_dir: &std::path::Path,
) -> Result<Vec<String>> {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir()?;
    let socket_path = dir.path().join("notify");
    let socket = tokio::net::UnixDatagram::bind(&socket_path)?;
    let bound = state_dir.join("bound.json");
    let _ = std::fs::remove_file(&bound);
    let log = std::fs::File::create(dir.path().join("log"))?;
    let mut child = Command::new(dr_tests::bin(binary))
        .arg("--config")
        .arg(config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let mut sent: Vec<String> = vec![];
    let r = async {
        sent.extend(
            recv_until(&socket, Duration::from_secs(60), "READY=1", |g| {
                g.iter().any(|l| l == "READY=1")
            })
            .await?,
        );
        ensure!(bound.exists(), "READY=1 before the listeners were bound");
        sent.extend(
            recv_until(
                &socket,
                Duration::from_secs(5),
                "three WATCHDOG=1 at half a second",
                |g| g.iter().filter(|l| *l == "WATCHDOG=1").count() >= 3,
            )
            .await?,
        );
        let b: serde_json::Value = serde_json::from_slice(&std::fs::read(&bound)?)?;
        let metrics = b["metrics"].as_str().context("metrics address")?;
        let health = reqwest::get(format!("http://{metrics}/healthz")).await?;
        ensure!(
            health.status() == 200,
            "{binary} /healthz: {}",
            health.status()
        );
        ensure!(health.text().await? == "OK");
        let pid = child.id().to_string();
        ensure!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()?
            .success());
        sent.extend(
            recv_until(&socket, Duration::from_secs(30), "STOPPING=1", |g| {
                g.iter().any(|l| l == "STOPPING=1")
            })
            .await?,
        );
        Ok(())
    }
    .await;
    if r.is_err() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    r?;
    ensure!(
        status.success(),
        "{binary} exited with {status} after SIGTERM"
    );
    Ok(sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_watchdog_and_stopping_from_agents_and_witnesses() -> Result<()> {
    let env = TestEnv::new("t_systemd").await?;

    info!("phase 1: an agent under systemd");
    let config = Agent::write_lone_config(&env, "")?;
    let sent = under_systemd("dr-agent", &config, &env.dir.path().join("state-dc-a")).await?;
    info!(?sent, "the agent's notifications");
    ensure!(
        sent.first().map(String::as_str) == Some("READY=1"),
        "{sent:?}"
    );
    ensure!(
        sent.last().map(String::as_str) == Some("STOPPING=1"),
        "{sent:?}"
    );

    info!("phase 2: a witness under systemd (its group running)");
    let mut w = dr_tests::witness::Witnesses::start(&env, "{ profile: fast }").await?;
    w.procs[0].kill9();
    let (config, state_dir) = (w.procs[0].config.clone(), w.procs[0].state_dir.clone());
    let sent = under_systemd("dr-witness", &config, &state_dir).await?;
    info!(?sent, "the witness's notifications");
    ensure!(
        sent.first().map(String::as_str) == Some("READY=1"),
        "{sent:?}"
    );
    ensure!(
        sent.last().map(String::as_str) == Some("STOPPING=1"),
        "{sent:?}"
    );
    Ok(())
}
