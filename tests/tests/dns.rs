//! Moving clients by DNS, against real servers: BIND 9 by RFC 2136
//! (TSIG-signed compare-and-swap), and the real Route 53 SDK against moto.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use dr_agent::alert::{Retry, Sender};
use dr_agent::config::Dns;
use dr_agent::dns::rfc2136::Rfc2136;
use dr_agent::dns::route53::Route53;
use dr_agent::dns::verify::Verify;
use dr_agent::dns::{DnsError, Marker, Outcome, Provider, RecordState, Switcher, Value};
use dr_tests::dns::{key_file_text, soa_serial, Bind, Moto, ZONE};
use dr_tests::proxy::Proxy;
use dr_tests::webhook::Receiver;
use dr_tests::{init_logging, wait_until};
use tokio_util::sync::CancellationToken;
use tracing::info;

const LONG: Duration = Duration::from_secs(60);

fn addr(s: &str) -> Value {
    Value::Addr(s.parse().unwrap())
}

fn dns(yaml: &str) -> Result<Dns> {
    let body = yaml.strip_prefix("dns:\n").unwrap_or(yaml);
    let unindented: String = body
        .lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    Ok(serde_norway::from_str(&unindented)?)
}

fn switcher(
    provider: Arc<dyn Provider>,
    dc: &str,
    value: &str,
    verify: Verify,
    alerts: Sender,
) -> Switcher {
    Switcher {
        provider,
        dc: dc.into(),
        values: vec![addr(value)],
        verify,
        alerts,
        backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(400),
    }
}

fn no_alerts() -> Sender {
    Sender::new("test", &[], vec![], Retry::default())
}

fn webhook_alerts(hook: &Receiver) -> Sender {
    Sender::new(
        "dc-b",
        &[],
        vec![dr_proto::alert::Target {
            kind: dr_proto::alert::Kind::Generic,
            url: hook.url.clone(),
            routing_key: None,
        }],
        Retry::default(),
    )
}

fn verify_at(bind: &Bind) -> Verify {
    Verify {
        nameservers: vec![bind.addr],
        record: Some(format!("svc.{ZONE}").parse().unwrap()),
        timeout: Duration::from_secs(20),
        milvus_port: None,
        authorization: None,
    }
}

/// BIND serving svc.demo.test (dc-a's address, marked epoch 1), the
/// agents' `dns` section for it, and the RFC 2136 provider it configures.
async fn bind_and_provider(dir: &std::path::Path) -> Result<(Bind, Dns, Arc<dyn Provider>)> {
    let bind = Bind::start(dir, START).await?;
    let values = [("dc-a", "127.0.0.11"), ("dc-b", "127.0.0.12")];
    let cfg = dns(&bind.agent_yaml("svc", &values, ""))?;
    let p: Arc<dyn Provider> = Arc::new(Rfc2136::from_config(&cfg)?);
    Ok((bind, cfg, p))
}

/// The marker of dc-a at `epoch`.
fn a_at(epoch: u64) -> Marker {
    Marker {
        epoch,
        dc: "dc-a".into(),
    }
}

const START: &str = "svc 5 IN A 127.0.0.11\n_milvus-dr.svc 5 IN TXT \"epoch=1 dc=dc-a\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc2136_switches_by_compare_and_swap_and_refuses_stale_or_wrongly_signed_changes(
) -> Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let (bind, cfg, p) = bind_and_provider(dir.path()).await?;
    let serial0 = soa_serial(bind.addr).await?;

    info!("the new primary dc-b switches the name at epoch 2");
    let b = switcher(
        p.clone(),
        "dc-b",
        "127.0.0.12",
        verify_at(&bind),
        no_alerts(),
    );
    let out = b.run(2, CancellationToken::new()).await.map(|r| r.outcome);
    ensure!(out == Some(Outcome::Switched), "{out:?}");
    let now = p.read().await?;
    ensure!(now.values == vec![addr("127.0.0.12")], "{now:?}");
    ensure!(
        now.marker()
            == Some(Marker {
                epoch: 2,
                dc: "dc-b".into()
            }),
        "{now:?}"
    );
    ensure!(b.verify.ask(bind.addr).await? == vec![addr("127.0.0.12")]);
    let serial1 = soa_serial(bind.addr).await?;
    ensure!(
        serial1 == serial0 + 1,
        "one update applied: {serial0} -> {serial1}"
    );

    info!("the same epoch again: nothing to do");
    ensure!(
        b.run(2, CancellationToken::new()).await.map(|r| r.outcome)
            == Some(Outcome::AlreadyCurrent)
    );

    info!("an old primary at epoch 1 does not touch a name switched at epoch 2");
    let a = switcher(
        p.clone(),
        "dc-a",
        "127.0.0.11",
        verify_at(&bind),
        no_alerts(),
    );
    let out = a.run(1, CancellationToken::new()).await.map(|r| r.outcome);
    ensure!(
        matches!(&out, Some(Outcome::Newer(m)) if m.epoch == 2),
        "{out:?}"
    );

    info!("a compare-and-swap from a stale read is refused by the server itself");
    let stale = RecordState {
        values: vec![addr("127.0.0.11")],
        marker_txt: vec!["epoch=1 dc=dc-a".into()],
    };
    let r = p.swap(&stale, &[addr("127.0.0.11")], &a_at(3)).await;
    ensure!(matches!(r, Err(DnsError::Changed(_))), "{r:?}");

    info!("a wrong TSIG key is refused");
    let wrong = dir.path().join("wrong.key");
    std::fs::write(
        &wrong,
        key_file_text(&bind.key_name, b"not-the-key-not-the-key-not-the-"),
    )?;
    let mut wrong_cfg = cfg.clone();
    wrong_cfg.rfc2136.as_mut().unwrap().tsig_key_file = wrong;
    let w = Rfc2136::from_config(&wrong_cfg)?;
    let r = w.swap(&now, &[addr("127.0.0.11")], &a_at(3)).await;
    ensure!(matches!(r, Err(DnsError::Refused(_))), "{r:?}");
    let msg = r.unwrap_err().to_string();
    ensure!(msg.contains("dr-key"), "the error names the key: {msg}");

    // Nothing the refused attempts sent was applied.
    ensure!(p.read().await? == now);
    let serial2 = soa_serial(bind.addr).await?;
    ensure!(
        serial2 == serial1,
        "refused updates applied nothing: {serial1} -> {serial2}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc2136_server_down_is_retried_and_alerted_then_switched_when_it_returns() -> Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let (mut bind, _, p) = bind_and_provider(dir.path()).await?;
    let hook = Receiver::start().await?;

    info!("the server is down when dc-b must switch");
    bind.stop();
    let b = switcher(
        p.clone(),
        "dc-b",
        "127.0.0.12",
        verify_at(&bind),
        webhook_alerts(&hook),
    );
    let run =
        tokio::spawn(async move { b.run(2, CancellationToken::new()).await.map(|r| r.outcome) });
    let alert = hook
        .wait_for(LONG, "the DNS switch alert", |v| {
            v["event"] == "dns_switch_failed"
        })
        .await?;
    ensure!(
        alert["status"] == "firing" && alert["severity"] == "critical",
        "{alert}"
    );
    ensure!(!run.is_finished(), "still retrying");

    info!("the server returns: the switch is done and the alert resolved");
    bind.spawn().await?;
    let out = tokio::time::timeout(LONG, run).await??;
    ensure!(out == Some(Outcome::Switched), "{out:?}");
    ensure!(p.read().await?.values == vec![addr("127.0.0.12")]);
    hook.wait_for(LONG, "the alert resolved", |v| {
        v["event"] == "dns_switch_failed" && v["status"] == "resolved"
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_stops_retrying_when_the_agent_stops_acting_as_primary() -> Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let (mut bind, _, p) = bind_and_provider(dir.path()).await?;
    bind.stop();
    let b = switcher(
        p.clone(),
        "dc-b",
        "127.0.0.12",
        verify_at(&bind),
        no_alerts(),
    );
    let stop = CancellationToken::new();
    let run = tokio::spawn({
        let stop = stop.clone();
        async move { b.run(2, stop).await.map(|r| r.outcome) }
    });
    // Lease lost while the server is down: the task gives up.
    stop.cancel();
    let out = tokio::time::timeout(LONG, run).await??;
    ensure!(out.is_none(), "{out:?}");
    bind.spawn().await?;
    ensure!(
        p.read().await?.values == vec![addr("127.0.0.11")],
        "untouched"
    );
    Ok(())
}

/// Static credentials in files (as an agent reads them) and an SDK client
/// of the moto server, for setting up and checking the zone.
async fn route53_admin(
    dir: &std::path::Path,
    moto: &Moto,
) -> Result<(
    aws_sdk_route53::Client,
    std::path::PathBuf,
    std::path::PathBuf,
)> {
    let (kid, secret) = (dir.join("kid"), dir.join("secret"));
    std::fs::write(&kid, "testing")?;
    std::fs::write(&secret, "testing")?;
    let creds = dr_agent::aws::Credentials {
        access_key_id_file: Some(&kid),
        secret_access_key_file: Some(&secret),
        ..Default::default()
    };
    let sdk = dr_agent::aws::sdk_config(
        "us-east-1",
        Some(&moto.endpoint),
        &creds,
        Duration::from_secs(10),
    )
    .await?;
    Ok((aws_sdk_route53::Client::new(&sdk), kid, secret))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route53_switches_in_one_batch_waits_insync_and_retries_api_errors() -> Result<()> {
    use aws_sdk_route53::types::{
        Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
    };
    init_logging();
    let dir = tempfile::tempdir()?;
    let moto = Moto::start(dir.path()).await?;
    let proxy = Proxy::start().await?;
    proxy.set_target(moto.endpoint.trim_start_matches("http://").parse()?);
    let (admin, kid, secret) = route53_admin(dir.path(), &moto).await?;
    let zone = admin
        .create_hosted_zone()
        .name(ZONE)
        .caller_reference(format!("t{}", dr_proto::now_ms()))
        .send()
        .await?;
    let zone_id = zone
        .hosted_zone()
        .context("zone")?
        .id()
        .trim_start_matches("/hostedzone/")
        .to_string();
    let set = |name: &str, t: RrType, v: &str| {
        ResourceRecordSet::builder()
            .name(name)
            .r#type(t)
            .ttl(5)
            .resource_records(ResourceRecord::builder().value(v).build().unwrap())
            .build()
            .unwrap()
    };
    // UPSERT, not CREATE: moto refuses a CREATE identical to one in its
    // journal even when the same batch DELETEs the current set (Route 53
    // accepts it), and the second switch below goes back to this value.
    admin
        .change_resource_record_sets()
        .hosted_zone_id(&zone_id)
        .change_batch(
            ChangeBatch::builder()
                .changes(
                    Change::builder()
                        .action(ChangeAction::Upsert)
                        .resource_record_set(set(&format!("svc.{ZONE}"), RrType::A, "127.0.0.11"))
                        .build()?,
                )
                .changes(
                    Change::builder()
                        .action(ChangeAction::Upsert)
                        .resource_record_set(set(
                            &format!("_milvus-dr.svc.{ZONE}"),
                            RrType::Txt,
                            "\"epoch=1 dc=dc-a\"",
                        ))
                        .build()?,
                )
                .build()?,
        )
        .send()
        .await?;
    let yaml = format!(
        "provider: route53\nrecord: svc.{ZONE}\nttl: 5\nvalues: {{ dc-a: [\"127.0.0.11\"], dc-b: [\"127.0.0.12\"] }}\nroute53: {{ hosted_zone_id: \"{zone_id}\", endpoint: \"http://{}\", access_key_id_file: \"{}\", secret_access_key_file: \"{}\", insync_timeout: 20s }}\n",
        proxy.addr,
        kid.display(),
        secret.display()
    );
    let cfg = dns(&yaml)?;
    let p: Arc<dyn Provider> = Arc::new(Route53::from_config(&cfg).await?);
    let before = p.read().await?;
    ensure!(
        before.values == vec![addr("127.0.0.11")] && before.marker().map(|m| m.epoch) == Some(1),
        "{before:?}"
    );
    let quiet = Verify {
        nameservers: vec![],
        record: None,
        timeout: Duration::from_secs(1),
        milvus_port: None,
        authorization: None,
    };

    info!("dc-b switches at epoch 2 through the Route 53 API");
    let b = switcher(p.clone(), "dc-b", "127.0.0.12", quiet.clone(), no_alerts());
    ensure!(b.run(2, CancellationToken::new()).await.map(|r| r.outcome) == Some(Outcome::Switched));
    let after = p.read().await?;
    ensure!(after.values == vec![addr("127.0.0.12")], "{after:?}");
    ensure!(
        after.marker()
            == Some(Marker {
                epoch: 2,
                dc: "dc-b".into()
            }),
        "{after:?}"
    );
    // Exactly one A and one TXT set: the old values were deleted, not added to.
    let all = admin
        .list_resource_record_sets()
        .hosted_zone_id(&zone_id)
        .send()
        .await?;
    let ours: Vec<_> = all
        .resource_record_sets()
        .iter()
        .filter(|s| s.name().contains("svc"))
        .map(|s| {
            (
                s.name().to_string(),
                s.r#type().clone(),
                s.resource_records().len(),
            )
        })
        .collect();
    ensure!(
        ours.len() == 2 && ours.iter().all(|(_, _, n)| *n == 1),
        "{ours:?}"
    );

    info!("the API unreachable: retried and alerted, then done");
    let hook = Receiver::start().await?;
    proxy.block(true);
    let a = switcher(
        p.clone(),
        "dc-a",
        "127.0.0.11",
        quiet,
        webhook_alerts(&hook),
    );
    let run =
        tokio::spawn(async move { a.run(3, CancellationToken::new()).await.map(|r| r.outcome) });
    hook.wait_for(LONG, "the DNS switch alert", |v| {
        v["event"] == "dns_switch_failed"
    })
    .await?;
    proxy.block(false);
    let out = tokio::time::timeout(LONG, run).await??;
    ensure!(out == Some(Outcome::Switched), "{out:?}");
    ensure!(
        p.read().await?.marker()
            == Some(Marker {
                epoch: 3,
                dc: "dc-a".into()
            })
    );
    wait_until(LONG, "the alert resolved", || async {
        hook.bodies()
            .iter()
            .any(|v| v["status"] == "resolved")
            .then_some(())
    })
    .await?;
    Ok(())
}

/// `drctl dns plan` and `apply`: Route 53 failover records, each tied to a
/// health check of its agent's `/dr/primary`; applying twice changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drctl_dns_apply_creates_failover_records_with_health_checks_once() -> Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let moto = Moto::start(dir.path()).await?;
    let (admin, kid, secret) = route53_admin(dir.path(), &moto).await?;
    let zone_id = admin
        .create_hosted_zone()
        .name(ZONE)
        .caller_reference(format!("t{}", dr_proto::now_ms()))
        .send()
        .await?
        .hosted_zone()
        .context("zone")?
        .id()
        .trim_start_matches("/hostedzone/")
        .to_string();
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            r#"datacenter: dc-a
initial_primary: dc-a
state_dir: {state}
datacenters:
  dc-a: {{ milvus: {{ endpoint: "http://127.0.0.1:19530" }}, agent: "https://127.0.0.1:7443" }}
  dc-b: {{ milvus: {{ endpoint: "http://127.0.0.1:19531" }}, agent: "https://127.0.0.1:7444" }}
listen: {{ grpc: "127.0.0.1:7443", metrics: "127.0.0.1:9464" }}
tls: {{ ca: ca.pem, cert: a.pem, key: a.key }}
dns:
  provider: route53
  record: svc.{ZONE}
  ttl: 10
  values: {{ dc-a: ["10.1.0.10"], dc-b: ["10.2.0.10"] }}
  route53:
    hosted_zone_id: "{zone_id}"
    endpoint: "{ep}"
    access_key_id_file: "{kid}"
    secret_access_key_file: "{secret}"
    failover_records:
      health_checks: {{ dc-a: "http://10.1.0.5:9464/dr/primary", dc-b: "http://10.2.0.5:9464/dr/primary" }}
"#,
            state = dir.path().join("state").display(),
            ep = moto.endpoint,
            kid = kid.display(),
            secret = secret.display(),
        ),
    )?;
    let drctl = |cmd: &str| {
        std::process::Command::new(dr_tests::bin("drctl"))
            .args(["dns", cmd, "--agent-config"])
            .arg(&config)
            .output()
    };
    let plan = drctl("plan")?;
    ensure!(
        plan.status.success(),
        "{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout)?;
    ensure!(
        plan["records"][0]["failover"] == "PRIMARY" && plan["records"][0]["datacenter"] == "dc-a",
        "{plan}"
    );
    ensure!(plan["records"][1]["failover"] == "SECONDARY", "{plan}");
    // Planning calls nothing.
    ensure!(admin
        .list_health_checks()
        .send()
        .await?
        .health_checks()
        .is_empty());

    for round in 0..2 {
        let out = drctl("apply")?;
        ensure!(
            out.status.success(),
            "apply {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let checks = admin.list_health_checks().send().await?;
    let checks = checks.health_checks();
    ensure!(
        checks.len() == 2,
        "applied twice, two health checks: {checks:?}"
    );
    let mut probed: Vec<String> = checks
        .iter()
        .filter_map(|c| c.health_check_config())
        .map(|c| {
            format!(
                "{}:{}{}",
                c.ip_address().unwrap_or_default(),
                c.port().unwrap_or_default(),
                c.resource_path().unwrap_or_default()
            )
        })
        .collect();
    probed.sort();
    ensure!(
        probed == ["10.1.0.5:9464/dr/primary", "10.2.0.5:9464/dr/primary"],
        "{probed:?}"
    );
    let sets = admin
        .list_resource_record_sets()
        .hosted_zone_id(&zone_id)
        .send()
        .await?;
    let ours: Vec<_> = sets
        .resource_record_sets()
        .iter()
        .filter(|s| s.name().starts_with("svc."))
        .collect();
    ensure!(ours.len() == 2, "{ours:?}");
    for s in ours {
        let f = s
            .failover()
            .map(|f| f.as_str().to_string())
            .unwrap_or_default();
        let v = s.resource_records()[0].value();
        ensure!(
            (f == "PRIMARY" && v == "10.1.0.10") || (f == "SECONDARY" && v == "10.2.0.10"),
            "{s:?}"
        );
        ensure!(s.health_check_id().is_some(), "{s:?}");
    }
    Ok(())
}
