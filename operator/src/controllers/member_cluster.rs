//! MemberCluster controller: builds a client per member from its kubeconfig Secret and starts its
//! watches (which feed the scheduler), probes it on every heartbeat, tells the scheduler whether
//! it may take work, and keeps `status` true (capacity and supply checks from the scheduler).

use super::status::{apply_status_unconditionally, event};
use super::{Context, Error, Result};
use crate::api::condition;
use crate::api::{CapacitySummary, MemberCluster, MemberClusterStatus, MemberMode, MemberReport};
use crate::federation::{
    MemberLink, MemberView, MemberWatch, limited_client_from_kubeconfig,
    limited_watch_client_from_kubeconfig,
};
use crate::meta::names;
use crate::meta::set_condition;
use crate::scheduler::MemberInfo;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MEMBER_FINALIZER: &str = "gpupool.io/member-registry";
/// Condition on a MemberCluster: every GPU it publishes is usable (none over the node's
/// allocatable, no UUID published twice).
pub const SUPPLY_VERIFIED: &str = "SupplyVerified";
/// Safety-net period of the orphan sweep (it also runs after every reconnect).
const SWEEP_INTERVAL: Duration = Duration::from_secs(300);

/// Reconciles one MemberCluster.
pub async fn reconcile(mc: Arc<MemberCluster>, ctx: Arc<Context>) -> Result<Action> {
    let t0 = Instant::now();
    let api: Api<MemberCluster> = Api::all(ctx.hub.clone());
    let res = finalizer(&api, MEMBER_FINALIZER, mc, |ev| async {
        match ev {
            Finalizer::Apply(mc) => heartbeat(&mc, &ctx).await,
            Finalizer::Cleanup(mc) => {
                // What the member holds, while the job statuses still say so (their controllers
                // move them once the member is out of the registry).
                let pods = ctx
                    .registry
                    .get(&mc.name_any())
                    .await
                    .and_then(|m| m.watch)
                    .filter(|w| w.synced())
                    .map(|w| w.pods())
                    .unwrap_or_default();
                let owed = super::member_io::jobs_in_member(&ctx, &mc.name_any(), &pods).await?;
                // Out of the registry and the scheduler first, so that nothing is placed on or
                // re-created in the member while it is drained.
                let member = ctx.registry.remove(&mc.name_any()).await;
                ctx.wake_jobs_on(&mc.name_any());
                ctx.scheduler.remove_member(&mc.name_any());
                drain(&mc, member, &owed, &ctx).await;
                ctx.metrics.forget_member(&mc.name_any());
                ctx.wake_all_jobs();
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.observe_reconcile(
        "membercluster",
        t0.elapsed(),
        res.as_ref().err().map(|e| e.metric_label()),
    );
    res
}

/// How long removing a member waits for its gpupool objects to be deleted.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A member leaves the pool: delete gpupool's pods, Services and ResourceClaims in it while it is
/// reachable (bounded by [`DRAIN_TIMEOUT`]), and say on the MemberCluster what was left. Jobs on it
/// are moved by their controllers (`Deregistered`) once it is out of the registry. When the drain
/// is incomplete, the jobs it held (`owed`) are recorded on the hub under the cluster's
/// `kube-system` UID, so that their pods, Services and claims are deleted if the same cluster
/// joins again ([`super::member_io::sweep_owed`]).
async fn drain(
    mc: &MemberCluster,
    member: Option<MemberView>,
    owed: &std::collections::BTreeSet<super::member_io::OwedJob>,
    ctx: &Context,
) {
    let name = mc.name_any();
    // A pull member's work objects are on the hub: withdrawn even while its agent is away (it
    // deletes what it applied when it connects again).
    let client = member
        .as_ref()
        .and_then(|m| {
            m.client
                .clone()
                .filter(|c| m.reachable || c.mode() == MemberMode::Pull)
        })
        .or_else(|| {
            // A pull member the registry no longer (or never) held still has its works on the
            // hub: they are withdrawn all the same.
            (mc.spec.mode == MemberMode::Pull).then(|| MemberLink::Pull {
                hub: ctx.hub.clone(),
                member: name.clone(),
            })
        });
    let (warning, reason, note) = match client {
        Some(c) => {
            match tokio::time::timeout(DRAIN_TIMEOUT, super::member_io::drain_member(&c)).await {
                Ok(d) if d.failed.is_empty() => (
                    false,
                    "Drained",
                    format!(
                        "removed from the pool; deleted {} gpupool objects",
                        d.deleted
                    ),
                ),
                Ok(d) => (
                    true,
                    "DrainIncomplete",
                    format!(
                        "removed from the pool; deleted {} gpupool objects, could not delete: {}",
                        d.deleted,
                        d.failed.join("; ")
                    ),
                ),
                Err(_) => (
                    true,
                    "DrainIncomplete",
                    format!(
                        "removed from the pool; deleting gpupool objects took over {}s, the rest \
                         is deleted by the orphan sweep if the cluster joins again",
                        DRAIN_TIMEOUT.as_secs()
                    ),
                ),
            }
        }
        None => (
            true,
            "DrainIncomplete",
            "removed from the pool while unreachable: its gpupool objects are deleted by the \
             orphan sweep if the cluster joins again"
                .to_string(),
        ),
    };
    let mut note = note;
    if reason == "DrainIncomplete" && !owed.is_empty() {
        match mc.cluster_id() {
            Some(uid) => match super::member_io::record_owed(ctx, &name, uid, owed).await {
                Ok(()) => note.push_str(&format!(
                    "; recorded {} jobs it still holds in ConfigMap {}/{}",
                    owed.len(),
                    ctx.config.namespace,
                    super::member_io::owed_record_name(uid)
                )),
                Err(e) => note.push_str(&format!("; recording what it still holds failed: {e}")),
            },
            None => note.push_str(
                "; its kube-system UID was never read, so what it still holds cannot be recorded",
            ),
        }
    }
    tracing::info!(cluster = %name, reason, note, "member removed");
    event(ctx, mc, warning, reason, "Deregister", note);
}

/// Retries a failed reconcile after a short delay.
pub fn error_policy(_mc: Arc<MemberCluster>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "membercluster reconcile failed");
    Action::requeue(ctx.config.heartbeat)
}

/// Why a member cannot be reached: `(reason, message)` for its `Reachable` condition.
type Problem = (String, String);

/// A pull member: its link and feed (started once), then its identity and binding mode from its
/// newest inventory report and its liveness from the heartbeat Lease its agent renews in the
/// member's hub namespace. Returns the problem that makes it unreachable, if any.
async fn probe_pull(
    mc: &MemberCluster,
    ctx: &Arc<Context>,
    view: &mut MemberView,
) -> Option<Problem> {
    let name = mc.name_any();
    if view.client.is_none() {
        view.client = Some(MemberLink::Pull {
            hub: ctx.hub.clone(),
            member: name.clone(),
        });
        view.watch = Some(Arc::new(MemberWatch::start_pull(
            &ctx.hub,
            &name,
            ctx.member_sink(),
        )));
    }
    if !mc.spec.approved() {
        return Some((
            "NotApproved".into(),
            format!(
                "approval is {}: a pool admin lets it in with `gpupool approve {name}`",
                mc.spec.approval
            ),
        ));
    }
    let ns = names::member_namespace(&name);
    let (leases, reports) = (
        Api::<Lease>::namespaced(ctx.hub.clone(), &ns),
        Api::<MemberReport>::namespaced(ctx.hub.clone(), &ns),
    );
    let lp = Default::default();
    let (lease, reports) =
        match tokio::try_join!(leases.get_opt(names::HEARTBEAT_LEASE), reports.list(&lp)) {
            Ok(r) => r,
            Err(e) => return Some(("HubReadFailed".into(), e.to_string())),
        };
    let current = crate::pull::current_report(&reports.items);
    // Each shard of the current report says whether the hub uses it (`status.accepted`).
    if let Err(e) = crate::pull::record_verdicts(&ctx.hub, &name, mc.cluster_id(), &current).await {
        tracing::warn!(cluster = %name, error = %e, "recording the verdict on its reports failed");
    }
    if let Some(p) = current.first().and_then(|r| read_report(mc, r, view)) {
        return Some(p);
    }
    // An agent that cannot reach its own cluster's API server heartbeats for nothing: the
    // member counts as unreachable (its grace period runs) until the agent reaches it again.
    if let Some(problem) = lease.as_ref().and_then(crate::pull::member_api_problem) {
        return Some(("MemberApiUnreachable".into(), problem.to_string()));
    }
    lease_liveness(lease, Timestamp::now(), view)
}

/// What a pull member's newest report says: its Kubernetes version and binding mode (agents that
/// do not say: the device plugin), or that it is another cluster than the one that joined.
fn read_report(mc: &MemberCluster, r: &MemberReport, view: &mut MemberView) -> Option<Problem> {
    view.version = r.spec.kubernetes_version.clone();
    if let Some(id) = &mc.spec.cluster_id
        && *id != r.spec.cluster_id
    {
        return Some((
            "IdentityMismatch".into(),
            format!(
                "the agent reports cluster {}, but this member joined as {id}",
                r.spec.cluster_id
            ),
        ));
    }
    view.binding = Some(crate::federation::dra::BindingProbe {
        mode: r.spec.binding_mode.unwrap_or_default(),
        at: Instant::now(),
    });
    None
}

/// A pull member is alive while its agent renews its heartbeat Lease within the Lease's term.
fn lease_liveness(lease: Option<Lease>, now: Timestamp, view: &mut MemberView) -> Option<Problem> {
    let spec = lease.and_then(|l| l.spec).unwrap_or_default();
    let renewed = spec.renew_time.map(|t| t.0);
    let term = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(1) as u64);
    if renewed.is_some() {
        view.last_heartbeat = renewed;
    }
    if crate::pull::alive(renewed, now, term) {
        return None;
    }
    Some((
        "AgentSilent".into(),
        match renewed {
            Some(r) => format!(
                "the member agent last renewed its heartbeat {}s ago (lease {}s)",
                now.duration_since(r).as_secs(),
                term.as_secs()
            ),
            None => "the member agent has not heartbeated yet".into(),
        },
    ))
}

/// The view of a member this operator has not seen yet (its last heartbeat from the status).
fn new_view(mc: &MemberCluster) -> MemberView {
    MemberView {
        name: mc.name_any(),
        spec: mc.spec.clone(),
        client: None,
        secret_version: None,
        reachable: false,
        ready: false,
        last_heartbeat: mc
            .status
            .as_ref()
            .and_then(|s| s.last_heartbeat_time.as_ref())
            .map(|t| t.0),
        version: String::new(),
        last_sweep: None,
        watch: None,
        binding: None,
        kubelet_mismatches: Vec::new(),
        refused_pods: Default::default(),
        credential: None,
        credential_error: None,
    }
}

/// Whether the member's status has a `type_` condition that `pred` accepts.
fn has_condition(mc: &MemberCluster, type_: &str, pred: impl Fn(&Condition) -> bool) -> bool {
    mc.status
        .as_ref()
        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == type_ && pred(c)))
}

/// A push member: its clients from the kubeconfig Secret, rebuilt when the Secret changes (and
/// its watches started, unless it is a duplicate: a duplicate keeps no watch, or its inventory
/// would squat the first member's GPU UUIDs in the scheduler).
async fn connect_push(
    mc: &MemberCluster,
    ctx: &Arc<Context>,
    view: &mut MemberView,
    was_duplicate: bool,
) -> Option<Problem> {
    let (text, version) = match super::credential::kubeconfig(mc, ctx).await {
        Ok(k) => k,
        Err(e) => return Some(("KubeconfigUnavailable".into(), e)),
    };
    let fresh = view.client.is_some()
        && view.secret_version == version
        && (view.watch.is_some() || was_duplicate);
    if fresh {
        return None;
    }
    let name = mc.name_any();
    let limit = ctx.metrics.rate_limit(&name, ctx.config.member_limits);
    let timeout = ctx.config.member_timeout;
    let clients = async {
        Ok::<_, String>((
            limited_client_from_kubeconfig(&text, timeout, &limit).await?,
            limited_watch_client_from_kubeconfig(&text, timeout, &limit).await?,
        ))
    };
    match clients.await {
        Ok((c, w)) => {
            view.watch = (!was_duplicate)
                .then(|| Arc::new(MemberWatch::start(&w, &name, ctx.member_sink())));
            view.client = Some(MemberLink::Push(c));
            view.secret_version = version;
            view.credential = crate::federation::credential::bound_token(&text);
            view.credential_error = None;
            None
        }
        Err(e) => Some(("KubeconfigInvalid".into(), e)),
    }
}

/// Probes a push member's API server (nodes, topologies and pods come from the watches) and,
/// every [`crate::federation::dra::RECHECK`], how it binds GPUs.
async fn probe_push(ctx: &Context, view: &mut MemberView) -> Option<Problem> {
    let Some(MemberLink::Push(client)) = view.client.clone() else {
        return None;
    };
    let limit = ctx.config.member_timeout * 3;
    let v = match tokio::time::timeout(limit, client.apiserver_version()).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Some(("ProbeFailed".into(), e.to_string())),
        Err(_) => {
            return Some(("ProbeTimeout".into(), format!("no answer within {limit:?}")));
        }
    };
    view.version = v.git_version;
    if view
        .binding
        .is_none_or(|b| b.at.elapsed() > crate::federation::dra::RECHECK)
    {
        match crate::federation::dra::detect(&client).await {
            Ok(mode) => {
                view.binding = Some(crate::federation::dra::BindingProbe {
                    mode,
                    at: Instant::now(),
                })
            }
            Err(e) => tracing::warn!(cluster = %view.name, error = %e, "DRA detection failed"),
        }
    }
    view.reachable = true;
    view.last_heartbeat = Some(Timestamp::now());
    None
}

/// Step 1, probe: reach the member (push: its API server; pull: its agent's reports and Lease)
/// and say why it cannot be reached, if it cannot.
async fn probe(
    mc: &MemberCluster,
    ctx: &Arc<Context>,
    view: &mut MemberView,
    was_duplicate: bool,
) -> Option<Problem> {
    let problem = if mc.spec.mode == MemberMode::Pull {
        probe_pull(mc, ctx, view).await
    } else {
        match connect_push(mc, ctx, view, was_duplicate).await {
            None => {
                let problem = probe_push(ctx, view).await;
                if problem.is_none() {
                    super::credential::renew(mc, ctx, view).await;
                }
                problem
            }
            p => p,
        }
    };
    if problem.is_some() {
        view.reachable = false;
    } else if mc.spec.mode == MemberMode::Pull {
        view.reachable = true;
    }
    problem
}

/// Readiness facts of one heartbeat.
struct Readiness {
    /// Ready before this heartbeat (after an operator restart: as the persisted status says).
    was_ready: bool,
    /// Time since the member was last heard from.
    since_heartbeat: Duration,
    /// Why its owner wallet cannot be paid (it passes CEL but is not a 32-byte key).
    wallet_problem: Option<String>,
}

/// Step 2, readiness: a member is ready while reachable, or within the grace period after it was
/// last heard from if it was ready; never with a wallet that cannot be paid. Sets `view.ready`.
fn readiness(
    mc: &MemberCluster,
    prev: Option<&MemberView>,
    view: &mut MemberView,
    grace: Duration,
    now: Timestamp,
) -> Readiness {
    let since_heartbeat = view
        .last_heartbeat
        .map(|t| Duration::try_from(now.duration_since(t)).unwrap_or_default())
        .unwrap_or(Duration::MAX);
    let was_ready = prev
        .map(|p| p.ready)
        .unwrap_or_else(|| has_condition(mc, condition::READY, |c| c.status == "True"));
    let wallet_problem = crate::api::wallet_problem(&mc.spec.owner_wallet);
    view.ready =
        wallet_problem.is_none() && (view.reachable || (was_ready && since_heartbeat < grace));
    Readiness {
        was_ready,
        since_heartbeat,
        wallet_problem,
    }
}

/// Step 3, identity: the same physical cluster joined twice gets work only under the first
/// `MemberCluster`; the duplicate is not ready and loses its watches.
async fn check_identity(mc: &MemberCluster, ctx: &Context, view: &mut MemberView) -> Identity {
    if !view.reachable {
        return Identity {
            id: mc.cluster_id().map(String::from),
            duplicate: None,
        };
    }
    let identity = identity(mc, view.client.as_ref(), ctx).await;
    if identity.duplicate.is_some() {
        view.ready = false;
        if view.watch.take().is_some() {
            ctx.scheduler.remove_member(&view.name);
        }
    }
    identity
}

/// What the scheduler is told about a member: its labels, price, whether it takes new work and
/// why not.
fn member_info(
    mc: &MemberCluster,
    view: &MemberView,
    wallet_problem: bool,
    duplicate: bool,
) -> MemberInfo {
    let mut labels = mc.spec.labels.clone();
    if let Some(r) = &mc.spec.region {
        labels.insert("region".into(), r.clone());
    }
    let reason = if mc.spec.drain {
        "being drained (spec.drain=true)".into()
    } else if !mc.spec.schedulable {
        "not schedulable (spec.schedulable=false)".into()
    } else if !mc.spec.approved() {
        format!("not approved ({})", mc.spec.approval)
    } else if wallet_problem {
        "owner wallet invalid".into()
    } else if duplicate {
        "duplicate of another member (same cluster)".into()
    } else if !view.ready {
        "not ready".into()
    } else if !view.reachable {
        "not reachable".into()
    } else {
        String::new()
    };
    MemberInfo {
        labels,
        price: mc.spec.price_per_gpu_hour,
        schedulable: view.schedulable(),
        reason,
        binding: view.binding_mode(),
        draining: mc.spec.drain,
    }
}

/// What the scheduler's cache says of a member's supply.
struct Supply {
    nodes: usize,
    capacity: CapacitySummary,
    /// GPUs the hub does not believe: over the allocatable, duplicate or squatted UUIDs.
    problems: Vec<String>,
}

/// Step 4, capacity: the registry first (a job the scheduler places here once it hears the
/// member is schedulable must find the member ready when its controller looks), then the
/// scheduler; returns what the cache now holds of the member.
async fn publish(
    mc: &MemberCluster,
    ctx: &Context,
    view: &MemberView,
    r: &Readiness,
    id: &Identity,
) -> Supply {
    ctx.registry.put(view.clone()).await;
    let info = member_info(mc, view, r.wallet_problem.is_some(), id.duplicate.is_some());
    ctx.scheduler.set_member(&view.name, info);
    let (nodes, capacity, problems) = ctx.scheduler.with_cache(|c| {
        (
            c.node_count(&view.name),
            c.capacity(&view.name),
            c.problems(&view.name),
        )
    });
    Supply {
        nodes,
        capacity,
        problems,
    }
}

/// The `Reachable` condition: `(status, reason, message)`.
fn reachable_condition(
    pull: bool,
    problem: Option<&Problem>,
    version: &str,
) -> (bool, String, String) {
    match problem {
        None if pull => (
            true,
            "AgentHeartbeat".into(),
            format!("member agent heartbeats (Kubernetes {version})"),
        ),
        None => (
            true,
            "ProbeSucceeded".into(),
            format!("API server {version} answered"),
        ),
        Some((reason, msg)) => (false, reason.clone(), msg.clone()),
    }
}

/// The `Ready` condition: `(status, reason, message)`.
fn ready_condition(
    view: &MemberView,
    problem: Option<&Problem>,
    r: &Readiness,
    duplicate: Option<&String>,
    nodes: usize,
    grace: Duration,
) -> (bool, String, String) {
    if view.ready {
        let msg = if view.reachable {
            format!("{nodes} GPU nodes")
        } else {
            format!(
                "unreachable for {}s, within the {}s grace period",
                r.since_heartbeat.as_secs(),
                grace.as_secs()
            )
        };
        return (true, "MemberReady".into(), msg);
    }
    let (reason, msg) = r
        .wallet_problem
        .clone()
        .map(|m| ("InvalidOwnerWallet".to_string(), m))
        .or_else(|| duplicate.map(|m| (crate::api::DUPLICATE_CLUSTER.to_string(), m.clone())))
        .or_else(|| problem.cloned())
        .unwrap_or_else(|| ("NotReady".into(), "not reachable".into()));
    (false, reason, msg)
}

/// The `SupplyVerified` condition's status and message.
fn supply_condition(problems: &[String]) -> (bool, String) {
    if problems.is_empty() {
        (true, "every published GPU is usable".into())
    } else {
        (false, problems.join("; "))
    }
}

/// Everything one heartbeat learnt, for the status and the Events.
struct Beat<'a> {
    view: &'a MemberView,
    problem: Option<Problem>,
    readiness: Readiness,
    identity: Identity,
    supply: Supply,
    /// The member's watches have listed everything once.
    synced: bool,
}

/// Step 5, status: the member's conditions, heartbeat, version, binding mode and capacity (the
/// last two only from a reachable, synced member).
fn member_status(mc: &MemberCluster, b: &Beat, grace: Duration) -> MemberClusterStatus {
    let mut status = mc.status.clone().unwrap_or_default();
    let generation = mc.metadata.generation;
    let pull = mc.spec.mode == MemberMode::Pull;
    let mut set = |type_: &str, (ok, reason, msg): (bool, String, String)| {
        set_condition(&mut status.conditions, type_, ok, &reason, &msg, generation)
    };
    set(
        condition::REACHABLE,
        reachable_condition(pull, b.problem.as_ref(), &b.view.version),
    );
    set(
        condition::READY,
        ready_condition(
            b.view,
            b.problem.as_ref(),
            &b.readiness,
            b.identity.duplicate.as_ref(),
            b.supply.nodes,
            grace,
        ),
    );
    let fresh = b.view.reachable && b.synced;
    if fresh {
        let (ok, msg) = supply_condition(&b.supply.problems);
        let reason = if ok { "Verified" } else { "SupplyRejected" };
        set(SUPPLY_VERIFIED, (ok, reason.into(), msg));
    }
    status.last_heartbeat_time = b
        .view
        .last_heartbeat
        .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time);
    if let Some(bm) = b.view.binding {
        status.binding_mode = Some(bm.mode);
    }
    if fresh {
        status.kubernetes_version = Some(b.view.version.clone());
        status.capacity = b.supply.capacity.clone();
    }
    status.observed_generation = generation;
    status
}

/// Step 6, sweeps: remove what no hub object accounts for (deleted jobs, old gangs, replicas
/// moved away while the member was unreachable) once the pods are listed after every
/// (re)connect, then every [`SWEEP_INTERVAL`] as a safety net; and what a cluster removed while
/// unreachable still held, when it joins again.
async fn sweep(
    mc: &MemberCluster,
    ctx: &Context,
    view: &mut MemberView,
    cluster_id: Option<&str>,
    synced: bool,
) {
    let due = view.last_sweep.is_none_or(|t| t.elapsed() > SWEEP_INTERVAL);
    let (Some(client), Some(watch)) = (view.client.clone(), view.watch.clone()) else {
        return;
    };
    if !(view.reachable && synced && due) {
        return;
    }
    let name = view.name.clone();
    view.last_sweep = Some(Instant::now());
    match super::member_io::sweep_orphans(ctx, &name, &client, &watch.pods()).await {
        Ok(n) if n > 0 => tracing::info!(cluster = %name, deleted = n, "swept orphaned workloads"),
        Ok(_) => {}
        Err(e) => tracing::warn!(cluster = %name, error = %e, "sweeping orphaned workloads failed"),
    }
    let Some(uid) = cluster_id else { return };
    match super::member_io::sweep_owed(ctx, &name, &client, uid).await {
        Ok(Some(n)) => {
            let note = format!(
                "this cluster was removed from the pool while unreachable; deleted {n} pods of \
                 jobs that moved away, with their Services and claims"
            );
            event(ctx, mc, false, "LeftoversSwept", "Sweep", note)
        }
        Ok(None) => {}
        Err(e) => {
            // Try again at the next sweep.
            view.last_sweep = None;
            tracing::warn!(cluster = %name, error = %e, "sweeping a removed member's leftovers failed")
        }
    }
}

/// Step 7, pod reports: on device-plugin members, where the kubelet gave a pod other GPUs than
/// gpupool chose (the agent already counts the kubelet's GPUs in use, so none of them is offered
/// as free); pods the member's own scheduler refuses (on DRA members: claims it cannot allocate,
/// e.g. GPUs taken outside gpupool), with the scheduler's words. Each said once.
async fn report_pods(mc: &MemberCluster, ctx: &Context, view: &mut MemberView, synced: bool) {
    let (pods, pod_devices) = view
        .watch
        .as_ref()
        .filter(|_| synced)
        .map(|w| (w.pods(), w.pod_devices()))
        .unwrap_or_default();
    let mismatches = crate::federation::dra::kubelet_mismatches(&pods, &pod_devices);
    ctx.metrics
        .set_kubelet_mismatches(&view.name, mismatches.len());
    let known = std::mem::replace(&mut view.kubelet_mismatches, mismatches.clone());
    for m in mismatches.iter().filter(|m| !known.contains(m)) {
        let note = format!(
            "kubelet on {} gave pod {}/{} GPUs [{}], gpupool chose [{}]",
            m.node,
            m.namespace,
            m.pod,
            m.assigned.join(","),
            m.chosen.join(",")
        );
        event(ctx, mc, true, "KubeletChoseOtherGPUs", "Reconcile", note);
    }
    let refused = crate::federation::dra::scheduler_refusals(&pods);
    let key = |namespace: &str, pod: &str| format!("{namespace}/{pod}");
    let now: std::collections::BTreeSet<String> =
        refused.iter().map(|r| key(&r.namespace, &r.pod)).collect();
    let known = std::mem::replace(&mut view.refused_pods, now);
    for r in refused
        .iter()
        .filter(|r| !known.contains(&key(&r.namespace, &r.pod)))
    {
        let note = format!(
            "the member's scheduler cannot place pod {}/{}: {}",
            r.namespace, r.pod, r.message
        );
        event(ctx, mc, true, "MemberSchedulerRefused", "Reconcile", note);
    }
}

/// Step 8, events: supply newly rejected, a newly found duplicate, a drain begun, readiness
/// gained or lost (the last two also wake the jobs running there: they must move, or their
/// member may be lost; waiting jobs are woken by the scheduler when the member becomes
/// schedulable).
async fn announce(
    mc: &MemberCluster,
    ctx: &Context,
    b: &Beat<'_>,
    prev: Option<&MemberView>,
    was_duplicate: bool,
) {
    let name = &b.view.name;
    let (supply_ok, supply_msg) = supply_condition(&b.supply.problems);
    let supply_changed = !has_condition(mc, SUPPLY_VERIFIED, |c| {
        (c.status == "True") == supply_ok && c.message == supply_msg
    });
    if supply_changed && !supply_ok && b.view.reachable && b.synced {
        event(ctx, mc, true, "SupplyRejected", "Verify", supply_msg);
    }
    if !was_duplicate && let Some(msg) = &b.identity.duplicate {
        let reason = crate::api::DUPLICATE_CLUSTER;
        event(ctx, mc, true, reason, "Verify", msg.clone());
    }
    if b.view.spec.drain && !prev.is_some_and(|p| p.spec.drain) {
        let note = format!("member {name} is being drained: its jobs move to other members");
        event(ctx, mc, false, "Draining", "Drain", note);
        ctx.wake_jobs_on(name);
    }
    if b.readiness.was_ready == b.view.ready && prev.is_some() {
        return;
    }
    if b.view.ready {
        let note = format!("member {name} is ready: {} GPU nodes", b.supply.nodes);
        event(ctx, mc, false, "MemberReady", "Probe", note);
    } else if prev.is_some() {
        let why = b.problem.as_ref().map(|p| p.1.as_str()).unwrap_or_default();
        let note = format!("member {name} is not ready: {why}");
        event(ctx, mc, true, "MemberLost", "Probe", note);
    }
    ctx.wake_jobs_on(name);
}

/// One heartbeat of a member: probe → readiness → identity → capacity → status → sweeps → pod
/// reports → events.
async fn heartbeat(mc: &MemberCluster, ctx: &Arc<Context>) -> Result<Action> {
    let name = mc.name_any();
    let prev = ctx.registry.get(&name).await;
    let mut view = prev.clone().unwrap_or_else(|| new_view(mc));
    view.spec = mc.spec.clone();
    let was_duplicate = has_condition(mc, condition::READY, |c| {
        c.reason == crate::api::DUPLICATE_CLUSTER
    });
    let problem = probe(mc, ctx, &mut view, was_duplicate).await;
    let grace = ctx.config.member_grace;
    let readiness = readiness(mc, prev.as_ref(), &mut view, grace, Timestamp::now());
    let identity = check_identity(mc, ctx, &mut view).await;
    let synced = view.watch.as_ref().is_some_and(|w| w.synced());
    let supply = publish(mc, ctx, &view, &readiness, &identity).await;
    if view.reachable && !prev.as_ref().is_some_and(|p| p.reachable) {
        // Reconnected: sweep as soon as the pods are listed.
        view.last_sweep = None;
    }
    sweep(mc, ctx, &mut view, identity.id.as_deref(), synced).await;
    report_pods(mc, ctx, &mut view, synced).await;
    let beat = Beat {
        view: &view,
        problem,
        readiness,
        identity,
        supply,
        synced,
    };
    let status = member_status(mc, &beat, grace);
    ctx.metrics
        .set_member_capacity(&name, view.ready, &status.capacity);
    ctx.metrics
        .set_supply_problems(&name, beat.supply.problems.len());
    ctx.registry.put(view.clone()).await;
    if mc.status.as_ref() != Some(&status) || prev.is_none() {
        let api = Api::<MemberCluster>::all(ctx.hub.clone());
        apply_status_unconditionally(&api, mc, &MemberStatusPatch::from(&status)).await?;
    }
    announce(mc, ctx, &beat, prev.as_ref(), was_duplicate).await;
    Ok(Action::requeue(ctx.config.heartbeat))
}

/// A member's identity as one heartbeat knows it.
struct Identity {
    /// `spec.clusterId` (its `kube-system` UID), read and recorded now if it was not yet.
    id: Option<String>,
    /// Why this member is the same cluster as an older `MemberCluster`, if it is.
    duplicate: Option<String>,
}

/// Records the member's identity (`spec.clusterId`, its `kube-system` UID) the first time it is
/// reached, then says whether an older `MemberCluster` is the same cluster: a `duplicate`
/// message makes this one `Ready=False` (`DuplicateCluster`) so nothing is placed on it. A failed
/// read is logged and retried on the next heartbeat (the member is not refused for it).
async fn identity(mc: &MemberCluster, link: Option<&MemberLink>, ctx: &Context) -> Identity {
    let id = match mc.cluster_id() {
        Some(u) => Some(u.to_string()),
        None => record_identity(mc, link, ctx).await,
    };
    let duplicate = match &id {
        Some(id) => duplicate_problem(mc, id, ctx).await,
        None => None,
    };
    Identity { id, duplicate }
}

/// Reads the member's `kube-system` UID and records it as `spec.clusterId`.
async fn record_identity(
    mc: &MemberCluster,
    link: Option<&MemberLink>,
    ctx: &Context,
) -> Option<String> {
    let name = mc.name_any();
    let uid = match link?.identity().await {
        Ok(u) if !u.is_empty() => u,
        Ok(_) => return None,
        Err(e) => {
            tracing::warn!(cluster = %name, error = %e, "reading the member's kube-system UID failed");
            return None;
        }
    };
    let api: Api<MemberCluster> = Api::all(ctx.hub.clone());
    if let Err(e) = crate::metering::meter::record_identity(&api, &name, &uid).await {
        tracing::warn!(cluster = %name, error = %e, "recording the member's identity failed");
        return None;
    }
    Some(uid)
}

/// Whether an older `MemberCluster` has the same identity (`id`, its `kube-system` UID) as `mc`.
/// The other members are read from the controller's own store (its watch of MemberClusters), so a
/// heartbeat costs no LIST; `mc` itself counts with the identity this heartbeat knows, even before
/// the watch has seen it recorded. A stale store is corrected by the next heartbeat.
async fn duplicate_problem(mc: &MemberCluster, id: &str, ctx: &Context) -> Option<String> {
    let name = mc.name_any();
    // Until the watch's first list is in, the store knows only some members: wait for it.
    if ctx.members.wait_until_ready().await.is_err() {
        // The watch is gone with the controller: nothing is reconciled any more.
        return None;
    }
    let mut same: Vec<MemberCluster> = ctx
        .members
        .state_filter(|m| m.cluster_id() == Some(id) && m.metadata.name.as_deref() != Some(&name))
        .iter()
        .map(|m| MemberCluster::clone(m))
        .collect();
    if same.is_empty() {
        return None;
    }
    let mut me = mc.clone();
    me.spec.cluster_id = Some(id.to_string());
    same.push(me);
    let first = crate::api::duplicate_of(&same, &name)?;
    Some(format!(
        "the same cluster (kube-system UID {id}) as MemberCluster {first}, which joined first; nothing is placed on or paid to {name}"
    ))
}

/// The status fields the MemberCluster controller owns.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct MemberStatusPatch<'a> {
    conditions: &'a Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_heartbeat_time: &'a Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kubernetes_version: &'a Option<String>,
    capacity: &'a CapacitySummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    binding_mode: &'a Option<crate::api::BindingMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    observed_generation: &'a Option<i64>,
}

impl<'a> From<&'a MemberClusterStatus> for MemberStatusPatch<'a> {
    fn from(s: &'a MemberClusterStatus) -> Self {
        MemberStatusPatch {
            conditions: &s.conditions,
            last_heartbeat_time: &s.last_heartbeat_time,
            kubernetes_version: &s.kubernetes_version,
            capacity: &s.capacity,
            binding_mode: &s.binding_mode,
            observed_generation: &s.observed_generation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    const WALLET: &str = "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU";

    fn member(spec: serde_json::Value, ready: Option<&str>) -> MemberCluster {
        let mut spec = spec;
        spec["kubeconfigSecretRef"] = serde_json::json!({"name": "k"});
        if spec.get("ownerWallet").is_none() {
            spec["ownerWallet"] = WALLET.into();
        }
        let status = ready.map(|s| {
            serde_json::json!({"conditions": [{"type": "Ready", "status": s, "reason": "R",
                "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
        });
        serde_json::from_value(serde_json::json!({
            "apiVersion": "gpupool.io/v1alpha1", "kind": "MemberCluster",
            "metadata": {"name": "m", "generation": 3}, "spec": spec, "status": status,
        }))
        .unwrap()
    }

    fn ago(now: Timestamp, secs: i64) -> Timestamp {
        now - k8s_openapi::jiff::SignedDuration::from_secs(secs)
    }

    #[test]
    fn readiness_holds_through_the_grace_period_and_never_with_a_bad_wallet() {
        let now = Timestamp::now();
        let grace = Duration::from_secs(30);
        let mc = member(serde_json::json!({}), None);
        let mut prev = new_view(&mc);
        prev.ready = true;
        // Unreachable for 10 s after being ready: still ready.
        let mut v = new_view(&mc);
        v.last_heartbeat = Some(ago(now, 10));
        let r = readiness(&mc, Some(&prev), &mut v, grace, now);
        assert!(r.was_ready && v.ready);
        assert_eq!(r.since_heartbeat.as_secs(), 10);
        // Past the grace period: not ready.
        v.last_heartbeat = Some(ago(now, 40));
        readiness(&mc, Some(&prev), &mut v, grace, now);
        assert!(!v.ready);
        // After an operator restart, the persisted Ready condition stands for "was ready".
        let restarted = member(serde_json::json!({}), Some("True"));
        v.last_heartbeat = Some(ago(now, 10));
        let r = readiness(&restarted, None, &mut v, grace, now);
        assert!(r.was_ready && v.ready);
        // A reachable member whose wallet cannot be paid is not ready.
        let bad = member(serde_json::json!({"ownerWallet": "abc"}), None);
        let mut v = new_view(&bad);
        v.reachable = true;
        let r = readiness(&bad, None, &mut v, grace, now);
        assert!(!v.ready);
        assert!(r.wallet_problem.unwrap().contains("not a 32-byte"));
    }

    #[test]
    fn the_scheduler_hears_why_a_member_takes_no_work() {
        let mc = member(
            serde_json::json!({"region": "eu", "labels": {"tier": "a"}}),
            None,
        );
        let mut v = new_view(&mc);
        (v.reachable, v.ready) = (true, true);
        // (Not schedulable without a link to the member; the reason names nothing else.)
        let info = member_info(&mc, &v, false, false);
        assert!(info.reason.is_empty(), "{}", info.reason);
        assert_eq!(info.labels["region"], "eu");
        assert_eq!(info.labels["tier"], "a");
        let info = member_info(&mc, &v, false, true);
        assert_eq!(info.reason, "duplicate of another member (same cluster)");
        let off = member(serde_json::json!({"schedulable": false}), None);
        let info = member_info(&off, &v, true, true);
        assert!(!info.schedulable);
        assert_eq!(info.reason, "not schedulable (spec.schedulable=false)");
        v.reachable = false;
        assert_eq!(member_info(&mc, &v, false, false).reason, "not reachable");
        let pending = member(
            serde_json::json!({"mode": "Pull", "approval": "Pending"}),
            None,
        );
        let reason = member_info(&pending, &v, false, false).reason;
        assert_eq!(reason, "not approved (Pending)");
    }

    fn condition<'a>(s: &'a MemberClusterStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn status_says_what_the_heartbeat_found() {
        let mc = member(serde_json::json!({}), None);
        let mut v = new_view(&mc);
        (v.ready, v.version) = (true, "v1.36.0".to_string());
        let supply = |problems: Vec<String>| Supply {
            nodes: 2,
            capacity: CapacitySummary {
                gpus_total: 16,
                ..Default::default()
            },
            problems,
        };
        let beat = |v: &MemberView, problem: Option<Problem>, duplicate: Option<String>, synced| {
            let b = Beat {
                view: v,
                problem,
                readiness: Readiness {
                    was_ready: true,
                    since_heartbeat: Duration::from_secs(12),
                    wallet_problem: None,
                },
                identity: Identity {
                    id: None,
                    duplicate,
                },
                supply: supply(vec!["gpu-0: 9 GPUs published, 8 allocatable".into()]),
                synced,
            };
            member_status(&mc, &b, Duration::from_secs(30))
        };
        // Unreachable within the grace period: Ready, saying so; no supply verdict, no capacity.
        let probe = Some(("ProbeTimeout".to_string(), "no answer".to_string()));
        let s = beat(&v, probe.clone(), None, true);
        let r = condition(&s, "Reachable");
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", "ProbeTimeout")
        );
        let ready = condition(&s, "Ready");
        assert_eq!(ready.status, "True");
        assert_eq!(
            ready.message,
            "unreachable for 12s, within the 30s grace period"
        );
        assert!(s.conditions.iter().all(|c| c.type_ != SUPPLY_VERIFIED));
        assert_eq!(s.capacity.gpus_total, 0);
        assert_eq!(s.observed_generation, Some(3));
        // Reachable and synced: capacity and the supply verdict.
        v.reachable = true;
        let s = beat(&v, None, None, true);
        assert_eq!(condition(&s, "Ready").message, "2 GPU nodes");
        let sv = condition(&s, SUPPLY_VERIFIED);
        assert_eq!(
            (sv.status.as_str(), sv.reason.as_str()),
            ("False", "SupplyRejected")
        );
        assert_eq!(s.capacity.gpus_total, 16);
        assert_eq!(s.kubernetes_version.as_deref(), Some("v1.36.0"));
        // Not synced yet: neither.
        assert!(
            beat(&v, None, None, false)
                .conditions
                .iter()
                .all(|c| c.type_ != SUPPLY_VERIFIED)
        );
        // A duplicate is not ready, and says of which member.
        v.ready = false;
        let s = beat(&v, None, Some("same cluster as m0".into()), true);
        let ready = condition(&s, "Ready");
        assert_eq!(ready.reason, crate::api::DUPLICATE_CLUSTER);
        assert_eq!(ready.message, "same cluster as m0");
    }

    #[test]
    fn a_pull_member_lives_while_its_agent_renews_the_lease() {
        let mc = member(serde_json::json!({"mode": "Pull"}), None);
        let now = Timestamp::now();
        let lease = |renewed: Option<Timestamp>| Lease {
            spec: Some(LeaseSpec {
                renew_time: renewed.map(MicroTime),
                lease_duration_seconds: Some(10),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut v = new_view(&mc);
        assert_eq!(
            lease_liveness(Some(lease(Some(ago(now, 5)))), now, &mut v),
            None
        );
        assert_eq!(v.last_heartbeat, Some(ago(now, 5)));
        let (reason, msg) = lease_liveness(Some(lease(Some(ago(now, 25)))), now, &mut v).unwrap();
        assert_eq!(reason, "AgentSilent");
        assert_eq!(
            msg,
            "the member agent last renewed its heartbeat 25s ago (lease 10s)"
        );
        let (_, msg) = lease_liveness(None, now, &mut v).unwrap();
        assert_eq!(msg, "the member agent has not heartbeated yet");
    }
}
