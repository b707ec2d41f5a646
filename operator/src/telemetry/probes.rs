//! `/healthz`, `/readyz` and `/metrics` for gpupool's agents (the node agent, the member agent,
//! the join controller); the operator has its own, richer set in `metrics`.
//!
//! Liveness is made of named checks, each a [`Pulse`] held by the loop it watches: a check fails
//! once its loop has not beaten within its staleness limit (a hung API call or device read), or
//! once the `Pulse` is dropped (the loop ended or panicked). The kubelet restarts the process
//! then. Readiness is set by the component (e.g. joined, or topology published). Metrics are the
//! component's own, registered on [`Probes::registry`] under its prefix.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A component's checks and metrics; cheap to clone.
#[derive(Clone)]
pub struct Probes {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    ready: AtomicBool,
    /// Why the component is not ready (shown by `/readyz`).
    not_ready: Mutex<String>,
    checks: Mutex<Vec<Check>>,
}

struct Check {
    name: &'static str,
    stale_after: Option<Duration>,
    last: Instant,
    stopped: bool,
    /// Not expected to beat until its next beat (its loop waits for something legitimate).
    resting: bool,
}

/// One liveness check, held by the loop it watches: [`Pulse::beat`] on each turn; dropping it
/// fails the check.
pub struct Pulse {
    inner: Arc<Inner>,
    index: usize,
}

impl Pulse {
    /// Changes this pulse's check.
    fn update(&self, f: impl FnOnce(&mut Check)) {
        let mut checks = self.inner.checks.lock().expect("checks lock");
        if let Some(c) = checks.get_mut(self.index) {
            f(c);
        }
    }

    /// The loop made a turn.
    pub fn beat(&self) {
        self.update(|c| {
            c.last = Instant::now();
            c.resting = false;
        });
    }

    /// The loop is not running for a legitimate reason (e.g. waiting for an admin): no beat is
    /// due until the next one.
    pub fn rest(&self) {
        self.update(|c| c.resting = true);
    }
}

impl Drop for Pulse {
    fn drop(&mut self) {
        self.update(|c| c.stopped = true);
    }
}

impl Default for Probes {
    fn default() -> Self {
        Probes::new()
    }
}

impl Probes {
    /// No checks, not ready ("starting").
    pub fn new() -> Probes {
        Probes {
            inner: Arc::new(Inner {
                registry: Registry::new(),
                ready: AtomicBool::new(false),
                not_ready: Mutex::new("starting".into()),
                checks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The registry the component's metrics go in.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// A registered counter.
    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        let c = IntCounter::new(name, help).expect("valid metric");
        self.register(c.clone());
        c
    }

    /// A registered counter with labels.
    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.register(c.clone());
        c
    }

    /// A registered gauge.
    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        let g = IntGauge::new(name, help).expect("valid metric");
        self.register(g.clone());
        g
    }

    fn register<C: prometheus::core::Collector + 'static>(&self, c: C) {
        self.inner
            .registry
            .register(Box::new(c))
            .expect("metric registered once");
    }

    /// A liveness check named `name`: failing once its loop has not beaten for `stale_after`
    /// (never, for `None`: then only a dropped pulse fails it). Counts as beaten now.
    pub fn pulse(&self, name: &'static str, stale_after: Option<Duration>) -> Pulse {
        let mut checks = self.inner.checks.lock().expect("checks lock");
        checks.push(Check {
            name,
            stale_after,
            last: Instant::now(),
            stopped: false,
            resting: false,
        });
        Pulse {
            inner: self.inner.clone(),
            index: checks.len() - 1,
        }
    }

    /// Marks the component ready, or not ready and why.
    pub fn set_ready(&self, ready: Result<(), String>) {
        match ready {
            Ok(()) => self.inner.ready.store(true, Ordering::Relaxed),
            Err(why) => {
                *self.inner.not_ready.lock().expect("ready lock") = why;
                self.inner.ready.store(false, Ordering::Relaxed);
            }
        }
    }

    /// Whether the component said it is ready.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }

    /// The failing checks, each with why; empty when live.
    pub fn failing(&self) -> Vec<String> {
        let now = Instant::now();
        self.inner
            .checks
            .lock()
            .expect("checks lock")
            .iter()
            .filter_map(|c| {
                if c.stopped {
                    return Some(format!("{}: stopped", c.name));
                }
                let idle = now.saturating_duration_since(c.last);
                c.stale_after
                    .filter(|_| !c.resting)
                    .filter(|s| idle > *s)
                    .map(|s| {
                        format!(
                            "{}: no progress for {}s (limit {}s)",
                            c.name,
                            idle.as_secs(),
                            s.as_secs()
                        )
                    })
            })
            .collect()
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.inner.registry.gather())
            .unwrap_or_default()
    }

    /// The `/healthz`, `/readyz` and `/metrics` routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route(
                "/metrics",
                get(|State(p): State<Probes>| async move {
                    (
                        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                        p.render(),
                    )
                        .into_response()
                }),
            )
            .with_state(self.clone())
    }

    /// Serves the routes on `addr` until the task is dropped.
    pub async fn serve(self, addr: std::net::SocketAddr) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(%addr, "serving /healthz, /readyz, /metrics");
        axum::serve(listener, self.router()).await?;
        Ok(())
    }

    /// Serves the routes on `addr` in a task of its own (none for `None`); a failure to bind is
    /// returned at once, a later one logged.
    pub async fn spawn_server(
        &self,
        addr: Option<std::net::SocketAddr>,
    ) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
        let Some(addr) = addr else { return Ok(None) };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding the metrics address {addr}: {e}"))?;
        tracing::info!(%addr, "serving /healthz, /readyz, /metrics");
        let router = self.router();
        Ok(Some(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        })))
    }
}

async fn healthz(State(p): State<Probes>) -> impl IntoResponse {
    let failing = p.failing();
    if failing.is_empty() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", failing.join("\n")),
        )
    }
}

async fn readyz(State(p): State<Probes>) -> impl IntoResponse {
    if p.is_ready() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        let why = p.inner.not_ready.lock().expect("ready lock").clone();
        (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(p: &Probes, path: &str) -> (StatusCode, String) {
        use tower::ServiceExt;
        let r = p
            .router()
            .oneshot(
                axum::http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_check_fails_when_its_loop_stalls_or_ends_and_readiness_says_why() {
        let p = Probes::new();
        let turns = p.counter_vec("x_turns_total", "turns", &["result"]);
        assert_eq!(get(&p, "/healthz").await.0, StatusCode::OK, "no checks yet");
        assert_eq!(
            get(&p, "/readyz").await,
            (StatusCode::SERVICE_UNAVAILABLE, "starting\n".into())
        );
        let stalls = p.pulse("apply", Some(Duration::from_millis(30)));
        let task = p.pulse("watch", None);
        assert_eq!(get(&p, "/healthz").await.0, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(60)).await;
        let (status, body) = get(&p, "/healthz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("apply: no progress for"), "{body}");
        stalls.rest();
        assert_eq!(get(&p, "/healthz").await.0, StatusCode::OK, "resting");
        stalls.beat();
        assert_eq!(get(&p, "/healthz").await.0, StatusCode::OK, "beaten again");
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(
            get(&p, "/healthz").await.0,
            StatusCode::SERVICE_UNAVAILABLE,
            "a beat ends the rest"
        );
        stalls.beat();
        drop(task);
        assert_eq!(
            get(&p, "/healthz").await,
            (StatusCode::SERVICE_UNAVAILABLE, "watch: stopped\n".into())
        );
        p.set_ready(Ok(()));
        assert_eq!(get(&p, "/readyz").await.0, StatusCode::OK);
        p.set_ready(Err("hub unreachable".into()));
        assert_eq!(
            get(&p, "/readyz").await,
            (StatusCode::SERVICE_UNAVAILABLE, "hub unreachable\n".into())
        );
        turns.with_label_values(&["ok"]).inc();
        let (status, text) = get(&p, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(text.contains("x_turns_total{result=\"ok\"} 1"), "{text}");
    }
}
