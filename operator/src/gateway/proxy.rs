//! Sending a request to one replica and streaming its answer back. Two ways to reach a replica:
//! `pod-ip` (the member's pod network is routable from the gateway: a flat network, a VPN or the
//! member's own ingress to its pod CIDR) and `apiserver-proxy` (through the member API server's
//! pod proxy, `/api/v1/namespaces/NS/pods/NAME:PORT/proxy/…`, with the member kubeconfig the hub
//! already holds: nothing to open in the member, at the cost of one more hop through its API
//! server and its request budget).

use super::table::Replica;
use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::RwLock;
use std::time::Duration;

/// How the gateway reaches replicas in push members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Reach {
    /// Straight to the pod IP and the job's port.
    PodIp,
    /// Through the member API server's pod proxy.
    ApiserverProxy,
}

/// Why a replica did not answer.
#[derive(Debug)]
pub enum Failure {
    /// The request never reached the replica (no connection): safe to send elsewhere.
    NotSent(String),
    /// The request may have reached it.
    Failed(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotSent(e) => write!(f, "not sent: {e}"),
            Failure::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

/// A request as it goes to a replica (its body read once, so it can be sent twice).
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// Method.
    pub method: Method,
    /// Path below the job's prefix, with the query (`/v1/completions?…`).
    pub path: String,
    /// Headers to pass on (hop-by-hop ones and the caller's credentials removed).
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// Headers never passed on to a replica or back to a caller.
const HOP_BY_HOP: &[header::HeaderName] = &[
    header::CONNECTION,
    header::HOST,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::CONTENT_LENGTH,
];

/// Removes hop-by-hop headers (and, for requests, the caller's credentials).
pub fn strip(headers: &mut HeaderMap, request: bool) {
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if request {
        headers.remove(header::AUTHORIZATION);
    }
}

/// The ways to the replicas: one pooled HTTP client for pod IPs, a client per member for its
/// API server.
pub struct Upstreams {
    reach: Reach,
    http: Client<HttpConnector, Full<Bytes>>,
    members: RwLock<HashMap<String, kube::Client>>,
}

impl Upstreams {
    /// Upstreams reaching replicas by `reach`.
    pub fn new(reach: Reach) -> Upstreams {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(Duration::from_secs(3)));
        conn.set_nodelay(true);
        Upstreams {
            reach,
            http: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(conn),
            members: RwLock::new(HashMap::new()),
        }
    }

    /// Sets (or with `None` forgets) the API server client of `member`.
    pub fn set_member(&self, member: &str, client: Option<kube::Client>) {
        let mut m = self.members.write().expect("members lock");
        match client {
            Some(c) => m.insert(member.to_string(), c),
            None => m.remove(member),
        };
    }

    /// Sends `out` to `r`; the answer's body streams.
    pub async fn send(&self, r: &Replica, out: &Outgoing) -> Result<Response<Body>, Failure> {
        match self.reach {
            Reach::PodIp => self.send_direct(r, out).await,
            Reach::ApiserverProxy => self.send_proxied(r, out).await,
        }
    }

    async fn send_direct(&self, r: &Replica, out: &Outgoing) -> Result<Response<Body>, Failure> {
        let Some(ip) = r.ip.as_deref() else {
            return Err(Failure::NotSent(format!("{} has no pod IP yet", r.id())));
        };
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        let uri = format!("http://{host}:{}{}", r.port, out.path);
        let req = build(&out.method, &uri, &out.headers, Full::new(out.body.clone()))?;
        match self.http.request(req).await {
            Ok(resp) => Ok(resp.map(Body::new)),
            Err(e) if e.is_connect() => Err(Failure::NotSent(chain(&e))),
            Err(e) => Err(Failure::Failed(chain(&e))),
        }
    }

    async fn send_proxied(&self, r: &Replica, out: &Outgoing) -> Result<Response<Body>, Failure> {
        let client = self
            .members
            .read()
            .expect("members lock")
            .get(&r.member)
            .cloned()
            .ok_or_else(|| Failure::NotSent(format!("no client for member {}", r.member)))?;
        let uri = format!(
            "/api/v1/namespaces/{}/pods/{}:{}/proxy{}",
            r.namespace, r.pod, r.port, out.path
        );
        let body = kube::client::Body::from(out.body.clone());
        let req = build(&out.method, &uri, &out.headers, body)?;
        match client.send(req).await {
            // The API server answers 503 when it cannot dial the pod.
            Ok(resp) if resp.status() == StatusCode::SERVICE_UNAVAILABLE => Err(Failure::NotSent(
                format!("member {} API server cannot reach {}", r.member, r.pod),
            )),
            Ok(resp) => Ok(resp.map(Body::new)),
            Err(e) if is_connect(&e) => Err(Failure::NotSent(chain(&e))),
            Err(e) => Err(Failure::Failed(chain(&e))),
        }
    }
}

fn build<B>(
    method: &Method,
    uri: &str,
    headers: &HeaderMap,
    body: B,
) -> Result<Request<B>, Failure> {
    let mut req = Request::builder()
        .method(method.clone())
        .uri(uri)
        .body(body)
        .map_err(|e| Failure::NotSent(format!("bad upstream request: {e}")))?;
    *req.headers_mut() = headers.clone();
    Ok(req)
}

/// Whether a connection could not be made (somewhere in the error's chain).
fn is_connect(e: &(dyn StdError + 'static)) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper_util::client::legacy::Error>()
            && h.is_connect()
        {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut
            )
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The error and its causes on one line.
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
