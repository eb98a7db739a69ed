//! A local webhook receiver: records every JSON body posted to it and
//! answers 200, for the alert tests of agents, witnesses and drctl.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use serde_json::Value;

use crate::wait_until;

#[derive(Clone)]
pub struct Receiver {
    /// `http://127.0.0.1:PORT/hook`
    pub url: String,
    got: Arc<Mutex<Vec<Value>>>,
}

async fn hook(State(got): State<Arc<Mutex<Vec<Value>>>>, body: Bytes) {
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
    got.lock().unwrap().push(v);
}

impl Receiver {
    pub async fn start() -> Result<Receiver> {
        let got = Arc::new(Mutex::new(vec![]));
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(got.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Receiver { url, got })
    }

    /// Every body received so far, in order.
    pub fn bodies(&self) -> Vec<Value> {
        self.got.lock().unwrap().clone()
    }

    /// Waits (up to `within`) for a body that satisfies `pred`; returns it.
    pub async fn wait_for(
        &self,
        within: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        wait_until(within, what, || async {
            self.bodies().into_iter().find(|b| pred(b))
        })
        .await
    }
}
