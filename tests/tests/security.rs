//! Mutual TLS and identities, epoch fencing, and config validation of the
//! real binaries.

use std::time::Duration;

use anyhow::Result;
use dr_agent::tls::TlsFiles;
use dr_proto::pb::{self, admin_client::AdminClient, replication_client::ReplicationClient};
use dr_tests::{Agent, AgentSpec, TestEnv};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tracing::info;

fn files(env: &TestEnv, name: &str) -> TlsFiles {
    TlsFiles {
        ca: env.certs.join("ca.pem"),
        cert: env.certs.join(format!("{name}.pem")),
        key: env.certs.join(format!("{name}.key")),
    }
}

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
    let op = channel(b.grpc, files(&env, "operator").client_config("agent.dc-b")?).await?;
    let e = replicate(op.clone(), 1).await.unwrap_err();
    assert_eq!(
        e.code(),
        tonic::Code::PermissionDenied,
        "operator may not replicate: {e}"
    );
    let own = channel(
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
    let peer = channel(
        b.grpc,
        files(&env, "agent.dc-a").client_config("agent.dc-b")?,
    )
    .await?;
    let first = replicate(peer, 1).await?;
    assert!(matches!(first.msg, Some(pb::sink_message::Msg::Hello(_))));

    info!("phase: the server must prove its identity too");
    let wrong_server = files(&env, "agent.dc-a").client_config("agent.dc-a")?;
    assert!(
        match channel(b.grpc, wrong_server).await {
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
        channel(
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
    let peer2 = channel(
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
        async move { Ok::<_, anyhow::Error>(WitnessClient::new(channel(addr, tls).await?)) }
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
