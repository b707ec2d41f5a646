//! Who may call a job's endpoint: the caller's bearer token is checked by a `TokenReview`
//! against the hub, and the identity it names must be allowed `create` on
//! `inferencejobs/endpoint` of that job (a `SubjectAccessReview`: RBAC on the hub decides, so a
//! Role in the job's namespace grants its tenant the call). Answers are cached for a while, so a
//! busy caller costs the hub two reviews per cache period, not per request. Each tenant (the
//! token's user) is rate-limited.

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// RBAC subresource of `inferencejobs` whose `create` lets a caller use a job's endpoint.
pub const ENDPOINT_SUBRESOURCE: &str = "endpoint";

/// Cached answers at most; the cache is emptied when it is full.
const CACHE_ENTRIES: usize = 10_000;

/// Why a call is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No bearer token, or the hub does not accept it (401).
    Unauthenticated(String),
    /// The caller may not call this job (403).
    Forbidden(String),
    /// The hub could not be asked (503).
    Unavailable(String),
}

/// A token's hash, the job's namespace and name.
type CacheKey = ([u8; 32], String, String);
/// An answer and when it was given.
type Cached = (Result<String, Refusal>, Instant);

/// Checks callers against the hub and limits each tenant's rate.
pub struct Auth {
    hub: kube::Client,
    ttl: Duration,
    cache: Mutex<HashMap<CacheKey, Cached>>,
    limiter: DefaultKeyedRateLimiter<String>,
}

impl Auth {
    /// Reviews against `hub`, answers kept for `ttl`; each tenant gets `rps` requests per second
    /// after a burst of `burst`.
    pub fn new(hub: kube::Client, ttl: Duration, rps: u32, burst: u32) -> Auth {
        let quota = Quota::per_second(NonZeroU32::new(rps.max(1)).expect("at least 1"))
            .allow_burst(NonZeroU32::new(burst.max(1)).expect("at least 1"));
        Auth {
            hub,
            ttl,
            cache: Mutex::new(HashMap::new()),
            limiter: RateLimiter::keyed(quota),
        }
    }

    /// The tenant (user name) of the caller holding `token`, if it may call `ns/job`.
    pub async fn check(&self, token: Option<&str>, ns: &str, job: &str) -> Result<String, Refusal> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(Refusal::Unauthenticated("no bearer token".into()));
        };
        let key = (
            Sha256::digest(token.as_bytes()).into(),
            ns.to_string(),
            job.to_string(),
        );
        let now = Instant::now();
        if let Some((answer, at)) = self.cache.lock().expect("auth cache").get(&key)
            && now.duration_since(*at) < self.ttl
        {
            return answer.clone();
        }
        let answer = self.review(token, ns, job).await;
        if !matches!(answer, Err(Refusal::Unavailable(_))) {
            let mut cache = self.cache.lock().expect("auth cache");
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(key, (answer.clone(), now));
        }
        answer
    }

    /// Whether `tenant` may send one more request now; `Err` says how long to wait.
    pub fn admit(&self, tenant: &str) -> Result<(), Duration> {
        self.limiter
            .check_key(&tenant.to_string())
            .map_err(|not_until| {
                not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ))
            })
    }

    async fn review(&self, token: &str, ns: &str, job: &str) -> Result<String, Refusal> {
        let tr = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: None,
            },
            ..Default::default()
        };
        let st = Api::<TokenReview>::all(self.hub.clone())
            .create(&PostParams::default(), &tr)
            .await
            .map_err(|e| Refusal::Unavailable(format!("token review: {e}")))?
            .status
            .unwrap_or_default();
        let user = match st.user {
            Some(u) if st.authenticated == Some(true) => u,
            _ => {
                return Err(Refusal::Unauthenticated(
                    st.error.unwrap_or_else(|| "token not accepted".into()),
                ));
            }
        };
        let name = user.username.clone().unwrap_or_default();
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(ns.into()),
                    verb: Some("create".into()),
                    group: Some("gpupool.io".into()),
                    resource: Some("inferencejobs".into()),
                    subresource: Some(ENDPOINT_SUBRESOURCE.into()),
                    name: Some(job.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let allowed = Api::<SubjectAccessReview>::all(self.hub.clone())
            .create(&PostParams::default(), &sar)
            .await
            .map_err(|e| Refusal::Unavailable(format!("access review: {e}")))?
            .status
            .is_some_and(|s| s.allowed);
        if allowed {
            Ok(name)
        } else {
            Err(Refusal::Forbidden(format!(
                "{name} may not create inferencejobs/{ENDPOINT_SUBRESOURCE} of {ns}/{job}"
            )))
        }
    }
}
