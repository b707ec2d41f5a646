//! A stand-in OpenAI-compatible model server for the gateway's tests: bound to a replica pod's
//! IP and port (KWOK gives the member's pods loopback addresses), it answers
//! `/v1/completions` and `/v1/chat/completions` with deterministic tokens (`tok0`, `tok1`, …),
//! streamed as server-sent events when the request says `"stream": true`, lists its model on
//! `/v1/models` and exposes `/metrics` (requests served, in flight, the most ever in flight).
//!
//! A request with `"hold": true` streams its first token and then waits until
//! [`StandIn::release`], so a test can see the first token arrive before the answer ends; one
//! with `"delay_ms": N` waits that long before answering.

use anyhow::Result;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};

/// Header naming the replica that answered.
pub const REPLICA_HEADER: &str = "x-standin-replica";

/// Tokens in every answer.
pub const TOKENS: usize = 5;

#[derive(Debug, Default)]
struct Counters {
    served: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

struct Shared {
    name: String,
    counters: Counters,
    release: Notify,
}

/// A running stand-in; stops (refusing new connections) when dropped.
pub struct StandIn {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

impl StandIn {
    /// Serves as replica `name` on `addr`.
    pub async fn start(addr: SocketAddr, name: &str) -> Result<StandIn> {
        let shared = Arc::new(Shared {
            name: name.to_string(),
            counters: Counters::default(),
            release: Notify::new(),
        });
        let app = Router::new()
            .route("/v1/models", get(models))
            .route("/v1/completions", post(complete))
            .route("/v1/chat/completions", post(complete))
            .route("/metrics", get(metrics))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(StandIn {
            addr,
            shared,
            stop: Some(stop),
        })
    }

    /// Requests answered so far.
    pub fn served(&self) -> usize {
        self.shared.counters.served.load(Ordering::SeqCst)
    }

    /// The most requests it ever had in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.counters.max_in_flight.load(Ordering::SeqCst)
    }

    /// Lets held streams go on.
    pub fn release(&self) {
        self.shared.release.notify_waiters();
    }

    /// Its replica name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn models(State(s): State<Arc<Shared>>) -> Response {
    s.counters.served.fetch_add(1, Ordering::SeqCst);
    let body = json!({"object": "list", "data": [{"id": "standin", "object": "model"}]});
    ([(REPLICA_HEADER, s.name.clone())], axum::Json(body)).into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> String {
    let c = &s.counters;
    format!(
        "# TYPE standin_requests_total counter\nstandin_requests_total {}\n# TYPE standin_in_flight gauge\nstandin_in_flight {}\nstandin_max_in_flight {}\n",
        c.served.load(Ordering::SeqCst),
        c.in_flight.load(Ordering::SeqCst),
        c.max_in_flight.load(Ordering::SeqCst)
    )
}

/// Counts a request in flight until dropped.
struct Busy(Arc<Shared>);

impl Busy {
    fn new(s: &Arc<Shared>) -> Busy {
        let now = s.counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        s.counters.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Busy(s.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.counters.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.counters.served.fetch_add(1, Ordering::SeqCst);
    }
}

fn chunk(name: &str, i: usize) -> Value {
    json!({"object": "text_completion", "model": "standin", "replica": name,
           "choices": [{"index": 0, "text": format!("tok{i}")}]})
}

async fn complete(State(s): State<Arc<Shared>>, axum::Json(req): axum::Json<Value>) -> Response {
    let busy = Busy::new(&s);
    if let Some(ms) = req["delay_ms"].as_u64() {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let header = [(REPLICA_HEADER, s.name.clone())];
    if req["stream"].as_bool() != Some(true) {
        let text: Vec<String> = (0..TOKENS).map(|i| format!("tok{i}")).collect();
        let body = json!({"object": "text_completion", "model": "standin", "replica": s.name,
                          "choices": [{"index": 0, "text": text.join(" ")}]});
        drop(busy);
        return (header, axum::Json(body)).into_response();
    }
    let hold = req["hold"].as_bool() == Some(true);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(TOKENS + 1);
    let shared = s.clone();
    tokio::spawn(async move {
        let _busy = busy;
        // Registered before the first token goes out, so no release is missed.
        let released = shared.release.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        for i in 0..TOKENS {
            if i == 1 && hold {
                released.as_mut().await;
            }
            if tx.send(Ok(sse(&chunk(&shared.name, i)))).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Ok("data: [DONE]\n\n".to_string())).await;
    });
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    (
        header,
        [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}
