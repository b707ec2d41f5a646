//! The inference gateway: one endpoint on the hub for every InferenceJob, over its replicas in
//! all push members. `/<namespace>/<job>/<path>` goes to `<path>` on one Ready replica of that
//! job (least requests in flight, the caller's region first), the answer streamed back as it
//! comes (server-sent events included). Callers present a bearer token the hub accepts and
//! may `create` `inferencejobs/endpoint` of the job; each tenant is rate-limited. A request that
//! never reached its replica (no connection) goes to another one (three tries in all), an
//! idempotent one (`GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE`, or carrying `Idempotency-Key`)
//! that failed after reaching it is sent once more, preferably to another member, and the failed
//! replica is left out for a while.
//!
//! It runs apart from the operator (`gpupool gateway`, its own Deployment) and writes nothing:
//! the job's `status.url` is the InferenceJob controller's, from the operator's `--gateway-url`.

pub mod auth;
pub mod metrics;
pub mod pick;
pub mod proxy;
pub mod table;
pub mod watch;

use auth::{Auth, Refusal};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use http::{HeaderMap, Method, StatusCode, header};
use http_body_util::BodyExt;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use metrics::GatewayMetrics;
use pick::{Balancer, InFlight};
use proxy::{Failure, Outgoing, Reach, Upstreams};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use table::Replica;
use tokio::task::JoinHandle;

/// Header a caller may set to name its region (else the gateway's `--region`).
pub const REGION_HEADER: &str = "x-gpupool-region";
/// Tries of one request at most, while none reached a replica (a request that reached one is
/// sent again at most once, and only when idempotent).
pub const MAX_TRIES: usize = 3;
/// Header on every answer naming the member that served it.
pub const MEMBER_HEADER: &str = "x-gpupool-member";

/// Flags of `gpupool gateway`.
#[derive(clap::Args, Clone, Debug)]
pub struct GatewayArgs {
    /// Address callers reach.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Address of `/metrics` and `/healthz`.
    #[arg(long, default_value = "0.0.0.0:9091")]
    pub metrics_listen: SocketAddr,
    /// How replicas in push members are reached.
    #[arg(long, value_enum, default_value = "apiserver-proxy")]
    pub reach: Reach,
    /// Namespace of member kubeconfig Secrets that name none.
    #[arg(long, default_value = "gpupool-system")]
    pub namespace: String,
    /// Region of the gateway: replicas there are preferred while they are not much busier.
    #[arg(long)]
    pub region: Option<String>,
    /// Requests per second of one tenant (sustained).
    #[arg(long, default_value_t = 100)]
    pub tenant_rps: u32,
    /// Requests one tenant may send at once after a quiet period.
    #[arg(long, default_value_t = 200)]
    pub tenant_burst: u32,
    /// How long an answer of the hub about a token is kept.
    #[arg(long, default_value_t = 30)]
    pub auth_cache_seconds: u64,
    /// How long a replica that failed to answer is left out.
    #[arg(long, default_value_t = 10)]
    pub eject_seconds: u64,
    /// Largest request body accepted.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
}

impl Default for GatewayArgs {
    fn default() -> Self {
        GatewayArgs {
            listen: ([0, 0, 0, 0], 8443).into(),
            metrics_listen: ([0, 0, 0, 0], 9091).into(),
            reach: Reach::ApiserverProxy,
            namespace: "gpupool-system".into(),
            region: None,
            tenant_rps: 100,
            tenant_burst: 200,
            auth_cache_seconds: 30,
            eject_seconds: 10,
            max_body_bytes: 16 << 20,
        }
    }
}

/// What a request needs.
struct Gateway {
    views: watch::Views,
    balancer: Arc<Balancer>,
    upstreams: Arc<Upstreams>,
    auth: Auth,
    metrics: GatewayMetrics,
    region: Option<String>,
    max_body: usize,
}

/// A gateway running in this process; stopped on drop.
pub struct Running {
    /// Where callers reach it.
    pub addr: SocketAddr,
    /// Where its metrics are.
    pub metrics_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the gateway against `hub`: its watches and its two listeners.
pub async fn start(hub: kube::Client, args: GatewayArgs) -> anyhow::Result<Running> {
    let upstreams = Arc::new(Upstreams::new(args.reach));
    let (views, mut tasks) = watch::start(&hub, &args.namespace, upstreams.clone());
    let metrics = GatewayMetrics::default();
    let gw = Arc::new(Gateway {
        views,
        balancer: Balancer::new(Duration::from_secs(args.eject_seconds)),
        upstreams,
        auth: Auth::new(
            hub,
            Duration::from_secs(args.auth_cache_seconds),
            args.tenant_rps,
            args.tenant_burst,
        ),
        metrics: metrics.clone(),
        region: args.region.clone(),
        max_body: args.max_body_bytes,
    });
    let app = Router::new()
        .route("/{ns}/{job}/{*rest}", any(call))
        .with_state(gw);
    let ops = Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen).await?;
    let (addr, metrics_addr) = (listener.local_addr()?, metrics_listener.local_addr()?);
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "gateway listener stopped");
        }
    }));
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(metrics_listener, ops).await {
            tracing::error!(error = %e, "gateway metrics listener stopped");
        }
    }));
    tracing::info!(%addr, %metrics_addr, reach = ?args.reach, "gateway serving");
    Ok(Running {
        addr,
        metrics_addr,
        tasks,
    })
}

/// `gpupool gateway`: runs until the process is stopped.
pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let hub = kube::Client::try_default().await?;
    let _running = start(hub, args).await?;
    std::future::pending::<()>().await;
    Ok(())
}

fn refuse(gw: &Gateway, code: StatusCode, reason: &str, message: String) -> Response {
    gw.metrics.refused.with_label_values(&[reason]).inc();
    let body = serde_json::json!({"error": {"message": message, "type": reason}});
    (code, axum::Json(body)).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// One call: who calls, whether they may now, which replicas may take it, then forward.
async fn call(
    State(gw): State<Arc<Gateway>>,
    Path((ns, job, rest)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    let t0 = Instant::now();
    let tenant = match gw.auth.check(bearer(req.headers()), &ns, &job).await {
        Ok(t) => t,
        Err(Refusal::Unauthenticated(m)) => {
            return refuse(&gw, StatusCode::UNAUTHORIZED, "unauthenticated", m);
        }
        Err(Refusal::Forbidden(m)) => return refuse(&gw, StatusCode::FORBIDDEN, "forbidden", m),
        Err(Refusal::Unavailable(m)) => {
            return refuse(&gw, StatusCode::SERVICE_UNAVAILABLE, "unreachable", m);
        }
    };
    if let Err(wait) = gw.auth.admit(&tenant) {
        let mut r = refuse(
            &gw,
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("{tenant} is over its request rate"),
        );
        let secs = wait.as_secs().max(1).to_string();
        r.headers_mut()
            .insert(header::RETRY_AFTER, secs.parse().expect("digits"));
        return r;
    }
    let Some(j) = gw.views.jobs.get(&ObjectRef::new(&job).within(&ns)) else {
        return refuse(
            &gw,
            StatusCode::NOT_FOUND,
            "no_job",
            format!("no InferenceJob {ns}/{job}"),
        );
    };
    let pods = gw
        .views
        .pods
        .read()
        .expect("pods lock")
        .of_job(&j.uid().unwrap_or_default());
    let replicas = table::serving_replicas(&j, &pods);
    if replicas.is_empty() {
        let m = format!("InferenceJob {ns}/{job} has no Ready replica");
        return refuse(&gw, StatusCode::SERVICE_UNAVAILABLE, "no_replica", m);
    }
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, gw.max_body).await else {
        let m = format!("request body over {} bytes", gw.max_body);
        return refuse(&gw, StatusCode::PAYLOAD_TOO_LARGE, "too_large", m);
    };
    let region = parts
        .headers
        .get(REGION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| gw.region.clone());
    let mut headers = parts.headers;
    proxy::strip(&mut headers, true);
    let path = match parts.uri.query() {
        Some(q) => format!("/{rest}?{q}"),
        None => format!("/{rest}"),
    };
    let out = Outgoing {
        method: parts.method,
        path,
        headers,
        body,
    };
    let who = Who { ns, job, tenant };
    forward(&gw, &who, &replicas, &out, region.as_deref(), t0).await
}

/// The caller and the job, for metrics.
struct Who {
    ns: String,
    job: String,
    tenant: String,
}

fn idempotent(out: &Outgoing) -> bool {
    matches!(
        out.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    ) || out.headers.contains_key("idempotency-key")
}

/// Sends `out` to the best replica; after a failure, to another one (of another member if there
/// is one): once more if the request may have reached the failed replica and is idempotent,
/// up to [`MAX_TRIES`] in all while no try reached a replica.
async fn forward(
    gw: &Gateway,
    who: &Who,
    replicas: &[Replica],
    out: &Outgoing,
    region: Option<&str>,
    t0: Instant,
) -> Response {
    let mut tried: Vec<String> = Vec::new();
    let mut last: Option<(String, String)> = None;
    let mut all_unsent = true;
    while tried.len() < if all_unsent { MAX_TRIES } else { 2 } {
        let regions = gw.views.regions.read().expect("regions lock").clone();
        let avoid = last.as_ref().map(|(m, _)| m.as_str());
        let Some((r, slot)) = gw.balancer.pick(replicas, &tried, &regions, region, avoid) else {
            break;
        };
        match gw.upstreams.send(&r, out).await {
            Ok(resp) => return stream_back(gw, who, &r, out, resp, slot, t0),
            Err(f) => {
                tracing::debug!(replica = %r.id(), error = %f, "gateway: replica failed");
                gw.balancer.eject(&r);
                gw.metrics
                    .retries
                    .with_label_values(&[&who.ns, &who.job, &r.member])
                    .inc();
                tried.push(r.id());
                last = Some((r.member.clone(), format!("{}: {f}", r.id())));
                if !matches!(f, Failure::NotSent(_)) {
                    all_unsent = false;
                    if !idempotent(out) {
                        break;
                    }
                }
            }
        }
    }
    let why = last.map(|(_, e)| e).unwrap_or_default();
    let m = format!("no replica of {}/{} answered ({why})", who.ns, who.job);
    refuse(gw, StatusCode::BAD_GATEWAY, "unreachable", m)
}

/// Counts the answer and streams its body back; the replica's request stays in flight until
/// the body has been sent (or the caller went away).
fn stream_back(
    gw: &Gateway,
    who: &Who,
    r: &Replica,
    out: &Outgoing,
    resp: Response<Body>,
    slot: InFlight,
    t0: Instant,
) -> Response {
    let m = &gw.metrics;
    let job = [who.ns.as_str(), who.job.as_str(), r.member.as_str()];
    let tenanted = [job[0], job[1], job[2], who.tenant.as_str()];
    let code = resp.status().as_u16().to_string();
    m.requests
        .with_label_values(&[job[0], job[1], job[2], &who.tenant, &code])
        .inc();
    m.latency
        .with_label_values(&job)
        .observe(t0.elapsed().as_secs_f64());
    m.request_bytes
        .with_label_values(&tenanted)
        .inc_by(out.body.len() as u64);
    let gauge = m.in_flight.with_label_values(&job);
    gauge.inc();
    let open = Open { _slot: slot, gauge };
    let bytes = m.response_bytes.with_label_values(&tenanted);
    let (mut parts, body) = resp.into_parts();
    proxy::strip(&mut parts.headers, false);
    if let Ok(v) = r.member.parse() {
        parts.headers.insert(MEMBER_HEADER, v);
    }
    let body = body.map_frame(move |f| {
        let _open = &open;
        if let Some(d) = f.data_ref() {
            bytes.inc_by(d.len() as u64);
        }
        f
    });
    Response::from_parts(parts, Body::new(body))
}

/// A response being streamed: its replica's in-flight slot and gauge, released on drop.
struct Open {
    _slot: InFlight,
    gauge: prometheus::IntGauge,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}
