//! Clients for member clusters, built from kubeconfig text held in a Secret, and the client-side
//! request rate limit (QPS and burst, as client-go's token bucket) of hub and member clients.

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Builds a client from a kubeconfig document for ordinary calls: a call not answered within
/// `timeout` × 3 fails. Errors never include the credentials.
pub async fn client_from_kubeconfig(yaml: &str, timeout: Duration) -> Result<kube::Client, String> {
    build(yaml, timeout, Some(timeout * 3), RateLimit::unlimited()).await
}

/// Builds a client for long-running watches (no read timeout: a watch is quiet while nothing
/// changes, and the server ends it after a few minutes itself).
pub async fn watch_client_from_kubeconfig(
    yaml: &str,
    timeout: Duration,
) -> Result<kube::Client, String> {
    build(yaml, timeout, None, RateLimit::unlimited()).await
}

/// [`client_from_kubeconfig`] whose requests pass through `limit` (shared by every client given
/// the same [`RateLimit`]).
pub async fn limited_client_from_kubeconfig(
    yaml: &str,
    timeout: Duration,
    limit: &RateLimit,
) -> Result<kube::Client, String> {
    build(yaml, timeout, Some(timeout * 3), limit.clone()).await
}

/// [`watch_client_from_kubeconfig`] whose requests (each watch start or relist counts once) pass
/// through `limit`.
pub async fn limited_watch_client_from_kubeconfig(
    yaml: &str,
    timeout: Duration,
    limit: &RateLimit,
) -> Result<kube::Client, String> {
    build(yaml, timeout, None, limit.clone()).await
}

/// A client for `config` (the hub's) whose requests pass through `limit`.
pub fn limited_client(
    config: kube::Config,
    limit: &RateLimit,
) -> Result<kube::Client, kube::Error> {
    super::errors::client_with_described_errors(config, limit.clone())
}

/// Requests per second and burst of one client (or of all clients sharing a [`RateLimit`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClientLimits {
    /// Sustained requests per second; 0 or less: no limit.
    pub qps: f64,
    /// Requests that may go at once after a quiet period (at least 1).
    pub burst: u32,
}

impl ClientLimits {
    /// Default for the hub client. The hub carries every job's finalizer, placement status,
    /// Event and running roll-up (about four writes per placed job), so the limit sits well
    /// above kube-scheduler's 50/100 for its one write (the binding) per pod.
    pub const HUB: ClientLimits = ClientLimits {
        qps: 500.0,
        burst: 1000,
    };
    /// Default for each member: its pods and Services (about two writes per placed job).
    pub const MEMBER: ClientLimits = ClientLimits {
        qps: 250.0,
        burst: 500,
    };

    fn quota(&self) -> Option<Quota> {
        if self.qps <= 0.0 || !self.qps.is_finite() {
            return None;
        }
        let burst = NonZeroU32::new(self.burst.max(1)).expect("at least 1");
        Quota::with_period(Duration::from_secs_f64(1.0 / self.qps)).map(|q| q.allow_burst(burst))
    }
}

/// Called with each wait a request spent throttled (for a metric).
pub type OnThrottled = Arc<dyn Fn(Duration) + Send + Sync>;

/// A token bucket (GCRA, from `governor`) shared by the clients built with it, as a tower layer
/// in each client's stack: a request waits for a token before it is sent.
#[derive(Clone)]
pub struct RateLimit {
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    on_throttled: Option<OnThrottled>,
}

impl RateLimit {
    /// A limit of `limits`, reporting waits to `on_throttled`.
    pub fn new(limits: ClientLimits, on_throttled: Option<OnThrottled>) -> RateLimit {
        RateLimit {
            limiter: limits.quota().map(|q| Arc::new(RateLimiter::direct(q))),
            on_throttled,
        }
    }

    /// No limit.
    pub fn unlimited() -> RateLimit {
        RateLimit {
            limiter: None,
            on_throttled: None,
        }
    }
}

impl<S> tower::Layer<S> for RateLimit {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> RateLimited<S> {
        RateLimited {
            inner,
            limit: self.clone(),
            permitted: false,
            waiting: None,
        }
    }
}

type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A service whose `poll_ready` takes a token first (see [`RateLimit`]).
pub struct RateLimited<S> {
    inner: S,
    limit: RateLimit,
    /// A token was taken for the next call.
    permitted: bool,
    /// Waiting for a token since.
    waiting: Option<(Instant, Wait)>,
}

impl<S, R> tower::Service<R> for RateLimited<S>
where
    S: tower::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if !self.permitted {
            if let Some(l) = &self.limit.limiter {
                if self.waiting.is_none() && l.check().is_err() {
                    let l = l.clone();
                    self.waiting = Some((
                        Instant::now(),
                        Box::pin(async move { l.until_ready().await }),
                    ));
                }
                if let Some((since, w)) = self.waiting.as_mut() {
                    if w.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    if let Some(f) = &self.limit.on_throttled {
                        f(since.elapsed());
                    }
                    self.waiting = None;
                }
            }
            self.permitted = true;
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> S::Future {
        self.permitted = false;
        self.inner.call(req)
    }
}

async fn build(
    yaml: &str,
    timeout: Duration,
    read_timeout: Option<Duration>,
    limit: RateLimit,
) -> Result<kube::Client, String> {
    let kc = kube::config::Kubeconfig::from_yaml(yaml)
        .map_err(|e| format!("kubeconfig does not parse: {}", redact(&e.to_string())))?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| format!("kubeconfig is not usable: {}", redact(&e.to_string())))?;
    cfg.connect_timeout = Some(timeout);
    cfg.read_timeout = read_timeout;
    cfg.write_timeout = Some(timeout * 3);
    super::errors::client_with_described_errors(cfg, limit)
        .map_err(|e| format!("cannot build a client: {}", redact(&e.to_string())))
}

/// Cuts anything that looks like key material out of an error text.
fn redact(s: &str) -> String {
    s.split_whitespace()
        .map(|w| if w.len() > 64 { "<redacted>" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::{ClientLimits, RateLimit};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    use tower::{Service, ServiceExt};

    /// A service counting the requests it answered.
    #[derive(Clone, Default)]
    struct Count(Arc<Mutex<u32>>);

    impl Service<()> for Count {
        type Response = ();
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<(), Self::Error>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: ()) -> Self::Future {
            *self.0.lock().unwrap() += 1;
            std::future::ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_burst_goes_at_once_then_requests_wait_for_tokens_and_the_wait_is_reported() {
        let waited: Arc<Mutex<Duration>> = Arc::default();
        let w = waited.clone();
        let limit = RateLimit::new(
            ClientLimits {
                qps: 20.0,
                burst: 5,
            },
            Some(Arc::new(move |d| *w.lock().unwrap() += d)),
        );
        let count = Count::default();
        let mut svc = tower::Layer::layer(&limit, count.clone());
        let t0 = Instant::now();
        for _ in 0..5 {
            svc.ready().await.unwrap().call(()).await.unwrap();
        }
        assert!(
            t0.elapsed() < Duration::from_millis(40),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(*waited.lock().unwrap(), Duration::ZERO);
        // Five more at 20/s take about 250 ms, shared with a second service on the same limit.
        let mut other = tower::Layer::layer(&limit, count.clone());
        for i in 0..5 {
            let s = if i % 2 == 0 { &mut svc } else { &mut other };
            s.ready().await.unwrap().call(()).await.unwrap();
        }
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert_eq!(*count.0.lock().unwrap(), 10);
        assert!(*waited.lock().unwrap() >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn no_qps_means_no_limit() {
        let limit = RateLimit::new(ClientLimits { qps: 0.0, burst: 1 }, None);
        let count = Count::default();
        let mut svc = tower::Layer::layer(&limit, count.clone());
        for _ in 0..1000 {
            svc.ready().await.unwrap().call(()).await.unwrap();
        }
        assert_eq!(*count.0.lock().unwrap(), 1000);
    }

    #[tokio::test]
    async fn bad_kubeconfig_gives_a_clear_error_without_secrets() {
        let secret =
            "c2VjcmV0LWtleS1tYXRlcmlhbC10aGF0LW11c3Qtbm90LWFwcGVhci1pbi1sb2dzLWV2ZXItZXZlci1ldmVy";
        let res = super::client_from_kubeconfig(
            &format!("users: [{{name: x, user: {{token: {secret}}}"),
            std::time::Duration::from_secs(1),
        )
        .await;
        let Err(err) = res else {
            panic!("a kubeconfig without clusters must be rejected")
        };
        assert!(err.contains("kubeconfig"), "{err}");
        assert!(!err.contains(secret), "{err}");
    }
}
