//! Lease-based leader election: of several operator replicas only the lease holder runs the
//! controllers; one that loses the lease stops acting at once (the process exits and is restarted).
//!
//! The algorithm is client-go's: every write of the `coordination.k8s.io/v1` Lease is a `replace`
//! guarded by the `resourceVersion` just read, so of two replicas racing for a free or expired
//! lease exactly one write succeeds. Expiry is judged by the local time since this replica last saw
//! the lease record change (not by comparing clocks with the holder): a holder that stops renewing
//! for `duration` loses the lease. The holder renews every `duration / 3` and gives up when it has
//! not managed to renew for `duration - grace`, before anyone else may take over.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use std::time::{Duration, Instant};

/// Lease timing.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How long a lease is valid after its last renewal.
    pub duration: Duration,
    /// Safety margin: the holder stops acting this long before others may take over.
    pub grace: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            duration: Duration::from_secs(4),
            grace: Duration::from_millis(1500),
        }
    }
}

enum Attempt {
    Acquired,
    Held,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// One try: take the lease if it is free, expired (unchanged for `duration` as seen from here) or ours.
async fn try_acquire(
    api: &Api<Lease>,
    name: &str,
    identity: &str,
    timing: Timing,
    observed: &mut Option<(String, Instant)>,
) -> kube::Result<Attempt> {
    let secs = timing.duration.as_secs() as i32;
    let Some(current) = api.get_opt(name).await? else {
        let mut lease = Lease::default();
        lease.metadata.name = Some(name.into());
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(identity.into()),
            lease_duration_seconds: Some(secs),
            acquire_time: Some(now()),
            renew_time: Some(now()),
            lease_transitions: Some(0),
            ..Default::default()
        });
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Acquired),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Held),
            Err(e) => Err(e),
        };
    };
    let rv = current
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    let spec = current.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    // Track when this replica last saw the record change.
    let seen_at = match observed {
        Some((v, t)) if *v == rv => *t,
        _ => {
            *observed = Some((rv.clone(), Instant::now()));
            Instant::now()
        }
    };
    let expired = seen_at.elapsed() >= timing.duration;
    if !(holder.is_empty() || holder == identity || expired) {
        return Ok(Attempt::Held);
    }
    let mut next = current.clone();
    let mut s = spec;
    if holder != identity {
        s.acquire_time = Some(now());
        s.lease_transitions = Some(s.lease_transitions.unwrap_or(0) + 1);
    }
    s.holder_identity = Some(identity.into());
    s.lease_duration_seconds = Some(secs);
    s.renew_time = Some(now());
    next.spec = Some(s);
    match api.replace(name, &PostParams::default(), &next).await {
        Ok(_) => Ok(Attempt::Acquired),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Held),
        Err(e) => Err(e),
    }
}

/// Blocks until this process holds the Lease `name` in `namespace`, then returns a future that
/// keeps renewing it and completes when the lease is lost (or could not be renewed in time).
pub async fn acquire(
    client: kube::Client,
    namespace: &str,
    name: &str,
    identity: &str,
) -> anyhow::Result<impl std::future::Future<Output = ()> + use<>> {
    acquire_with(client, namespace, name, identity, Timing::default()).await
}

/// [`acquire`] with explicit timing.
pub async fn acquire_with(
    client: kube::Client,
    namespace: &str,
    name: &str,
    identity: &str,
    timing: Timing,
) -> anyhow::Result<impl std::future::Future<Output = ()> + use<>> {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let retry = timing.duration / 8;
    let mut observed = None;
    tracing::info!(lease = name, identity, "waiting to become leader");
    let mut last_renew = loop {
        let sent = Instant::now();
        let attempt = tokio::time::timeout(
            timing.duration,
            try_acquire(&api, name, identity, timing, &mut observed),
        )
        .await;
        match attempt {
            Ok(Ok(Attempt::Acquired)) => break sent,
            Ok(Ok(Attempt::Held)) => {}
            Ok(Err(e)) => {
                tracing::warn!(lease = name, error = %e, "reading the leader lease failed; retrying")
            }
            Err(_) => tracing::warn!(lease = name, "reading the leader lease timed out; retrying"),
        }
        tokio::time::sleep(retry).await;
    };
    tracing::info!(lease = name, identity, "became leader");
    let (name, identity) = (name.to_string(), identity.to_string());
    Ok(async move {
        let renew_every = timing.duration / 4;
        let deadline = timing.duration.saturating_sub(timing.grace);
        loop {
            let left = deadline.saturating_sub(last_renew.elapsed());
            tokio::time::sleep(renew_every.min(left)).await;
            let left = deadline.saturating_sub(last_renew.elapsed());
            let sent = Instant::now();
            let mut obs = None;
            let attempt =
                tokio::time::timeout(left, try_acquire(&api, &name, &identity, timing, &mut obs))
                    .await;
            match attempt {
                Ok(Ok(Attempt::Acquired)) => last_renew = sent,
                Ok(Ok(Attempt::Held)) => {
                    tracing::error!(lease = %name, "another replica holds the leader lease; stopping");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(lease = %name, error = %e, "renewing the leader lease failed")
                }
                Err(_) => tracing::warn!(lease = %name, "renewing the leader lease timed out"),
            }
            if last_renew.elapsed() >= deadline {
                tracing::error!(lease = %name, "could not renew the leader lease in time; stopping");
                return;
            }
        }
    })
}

/// Gives the lease up when `identity` holds it (a leader stopping on purpose, after it stopped
/// acting): the holder is cleared, so another replica takes over at its next try instead of
/// waiting for the lease to expire. Guarded by the `resourceVersion` read, like every write.
pub async fn release(
    client: kube::Client,
    namespace: &str,
    name: &str,
    identity: &str,
) -> kube::Result<bool> {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let Some(mut lease) = api.get_opt(name).await? else {
        return Ok(false);
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(identity) {
        return Ok(false);
    }
    spec.holder_identity = None;
    spec.renew_time = Some(now());
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => {
            tracing::info!(lease = name, identity, "released the leader lease");
            Ok(true)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// A default identity: the pod name when set, else host name and process id.
pub fn default_identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "local".into());
        format!("{host}-{}", std::process::id())
    })
}
