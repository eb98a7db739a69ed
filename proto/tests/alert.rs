//! The alert sender against a local webhook receiver: payloads, retries,
//! de-duplication, resolves, and one target down not delaying another.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use dr_proto::alert::{Alert, Event, Kind, Retry, Sender, Severity, Target};
use serde_json::{json, Value};

/// Answers with the given statuses in turn (then 200), recording bodies.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Value>>>,
    answers: Arc<Mutex<Vec<u16>>>,
}

async fn hook(State(r): State<Receiver>, body: Bytes) -> StatusCode {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    r.got.lock().unwrap().push(body);
    let mut a = r.answers.lock().unwrap();
    let code = if a.is_empty() { 200 } else { a.remove(0) };
    StatusCode::from_u16(code).unwrap()
}

async fn receiver(answers: &[u16]) -> (String, Receiver) {
    let r = Receiver {
        answers: Arc::new(Mutex::new(answers.to_vec())),
        ..Default::default()
    };
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), r)
}

fn quick() -> Retry {
    Retry {
        attempts: 4,
        first_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(80),
        timeout: Duration::from_secs(5),
    }
}

fn alert(summary: &str) -> Alert {
    Alert {
        key: "failover_held".into(),
        severity: Severity::Critical,
        summary: summary.into(),
        detail: json!({ "reason": "over the budget" }),
    }
}

/// Waits (bounded) until `r` has received `n` requests.
async fn received(r: &Receiver, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = r.got.lock().unwrap().clone();
        if got.len() >= n || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_trigger_is_retried_through_5xx_and_429_then_delivered_once() {
    let (url, r) = receiver(&[503, 429]).await;
    let s = Sender::new(
        "dc-a",
        &[],
        vec![Target {
            kind: Kind::Generic,
            url,
            routing_key: None,
        }],
        quick(),
    );
    let delivered = s.send_now(Event::Trigger(alert("held"))).await;
    assert_eq!(delivered, 1);
    let got = r.got.lock().unwrap().clone();
    assert_eq!(got.len(), 3, "two refusals, then accepted: {got:?}");
    assert!(got.iter().all(|b| b == &got[0]), "the same alert each time");
    assert_eq!(got[0]["event"], "failover_held");
    assert_eq!(got[0]["status"], "firing");
    assert_eq!(got[0]["severity"], "critical");
    assert_eq!(got[0]["source"], "dc-a");
    assert_eq!(got[0]["detail"]["reason"], "over the budget");
    assert_eq!(
        s.counts()
            .delivered
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn a_4xx_is_not_retried_and_is_counted_as_failed() {
    let (url, r) = receiver(&[400]).await;
    let s = Sender::new("dc-a", &[], vec![Target::slack(url)], quick());
    assert_eq!(s.send_now(Event::Trigger(alert("held"))).await, 0);
    assert_eq!(r.got.lock().unwrap().len(), 1);
    assert_eq!(
        s.counts().failed.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn pagerduty_gets_one_trigger_per_incident_and_a_resolve_with_the_same_dedup_key() {
    let (url, r) = receiver(&[]).await;
    let s = Sender::new(
        "witness-2",
        &[],
        vec![Target {
            kind: Kind::PagerDuty,
            url,
            routing_key: Some("ROUTING".into()),
        }],
        quick(),
    );
    assert!(s.raise(alert("held")));
    assert!(!s.raise(alert("held")), "a repeat while active is not sent");
    assert!(s.resolve("failover_held"));
    assert!(!s.resolve("failover_held"));
    let got = received(&r, 2).await;
    // Nothing else arrives: give a straggler the chance to show up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got_later = r.got.lock().unwrap().clone();
    assert_eq!(got_later.len(), 2, "{got_later:?}");
    assert_eq!(got[0]["event_action"], "trigger");
    assert_eq!(got[0]["routing_key"], "ROUTING");
    assert_eq!(got[0]["payload"]["source"], "witness-2");
    assert_eq!(got[0]["payload"]["severity"], "critical");
    assert_eq!(got[1]["event_action"], "resolve", "resolve after trigger");
    assert_eq!(got[1]["dedup_key"], got[0]["dedup_key"]);
    assert_eq!(got[0]["dedup_key"], "milvus-dr/witness-2/failover_held");
}

#[tokio::test]
async fn a_target_that_is_down_does_not_delay_another() {
    let (down_url, down) = receiver(&[503; 64]).await;
    let (up_url, up) = receiver(&[]).await;
    let retry = Retry {
        attempts: 3,
        // Far longer than `received` waits: were the targets served in
        // turn, the healthy one would get nothing in time.
        first_backoff: Duration::from_secs(600),
        max_backoff: Duration::from_secs(600),
        timeout: Duration::from_secs(5),
    };
    let s = Sender::new(
        "dc-b",
        &[],
        vec![Target::slack(down_url), Target::slack(up_url)],
        retry,
    );
    s.raise(alert("held"));
    let got = received(&up, 1).await;
    assert_eq!(
        got.len(),
        1,
        "the healthy webhook waited for the failing one"
    );
    assert!(got[0]["text"].as_str().unwrap().contains("dc-b: held"));
    assert_eq!(
        down.got.lock().unwrap().len(),
        1,
        "first attempt only so far"
    );
}
