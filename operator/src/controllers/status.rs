//! Helpers shared by the controllers: conditions, status patches, Events.

use super::{Context, Error, Result};
use crate::meta::FINALIZER;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Every running job is reconciled again after this long, whatever happens (kube-scheduler
/// flushes pods unschedulable for 5 minutes back the same way): a missed or wrongly filtered
/// wake-up never leaves a job's state stale for longer.
pub const RESYNC: Duration = Duration::from_secs(300);

/// A reconcile that found its view of the job older than a status the operator wrote looks
/// again after this long, if the watch has not delivered the newer version first.
pub const STALE_RETRY: Duration = Duration::from_secs(1);

/// Now, as a Kubernetes `Time`.
pub fn now() -> Time {
    Time(Timestamp::now())
}

/// Server-side-applies `status` onto `obj` under the operator's field manager, only if `obj` is
/// still the newest version (a roll-up computed from an older view never overwrites a placement
/// the scheduler wrote meanwhile; the conflict requeues the reconcile at once). Once written,
/// the version it replaced is stale ([`crate::scheduler::Scheduler::stale_view`]).
pub async fn apply_status<K, S>(ctx: &Context, api: &Api<K>, obj: &K, status: &S) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize,
{
    let rv = obj.resource_version();
    crate::scheduler::writes::apply_status(api, obj, rv.as_deref(), status).await?;
    ctx.scheduler
        .wrote_over(&obj.uid().unwrap_or_default(), rv.as_deref());
    Ok(())
}

/// Like [`apply_status`], whatever version the object is at now.
pub async fn apply_status_unconditionally<K, S>(api: &Api<K>, obj: &K, status: &S) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize,
{
    crate::scheduler::writes::apply_status(api, obj, None, status).await?;
    Ok(())
}

/// Publishes an Event on a hub object in the background (failures are logged, never fatal;
/// Normal ones share the scheduler's rate limit: one budget for all per-job Events).
pub fn event<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    warning: bool,
    reason: &str,
    action: &str,
    note: String,
) {
    ctx.scheduler
        .send_event(obj.object_ref(&()), warning, reason, action, note);
}

/// Runs a namespaced job's reconcile under the cleanup finalizer and records its metrics.
///
/// A reconcile may wait for its lane's permit while the job changes on the hub (the scheduler
/// writes a placement, a pod report lands): once the permit is held it works on the newest
/// version the watch holds (`newest`, from the store the controller reads), not the one it was
/// started with — acting on the older one only earns a 409 on its conditional status write, and
/// another round.
pub async fn reconcile_finalized<K, F, Fut>(
    ctx: &Context,
    (controller, lane): (&str, super::Lane),
    (obj, newest): (Arc<K>, Option<Store<K>>),
    reconcile: F,
) -> Result<Action>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug,
    F: FnOnce(Finalizer<K>) -> Fut,
    Fut: std::future::Future<Output = Result<Action>>,
{
    let _slot = ctx.lanes.enter(lane).await;
    let obj = newest
        .and_then(|s| s.get(&ObjectRef::from_obj(&*obj)))
        .unwrap_or(obj);
    let t0 = Instant::now();
    let ns = obj
        .namespace()
        .ok_or_else(|| Error::Invalid(format!("{controller} without namespace")))?;
    let (name, rv) = (obj.name_any(), obj.resource_version());
    let api: Api<K> = Api::namespaced(ctx.hub.clone(), &ns);
    let res = finalizer(&api, FINALIZER, obj, reconcile)
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)));
    let took = t0.elapsed();
    tracing::debug!(controller, job = %name, ?rv, ?took, ok = res.is_ok(), "reconciled");
    ctx.metrics.observe_reconcile(
        controller,
        took,
        res.as_ref().err().map(|e| e.metric_label()),
    );
    res
}
