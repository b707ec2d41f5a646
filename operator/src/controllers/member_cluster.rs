//! MemberCluster controller: builds a client per member from its kubeconfig Secret and starts its
//! watches (which feed the scheduler), probes it on every heartbeat, tells the scheduler whether
//! it may take work, and keeps `status` true (capacity and supply checks from the scheduler).

use super::status::{apply_status_unconditionally, event, set_condition};
use super::{Context, Error, Result};
use crate::api::condition;
use crate::api::{CapacitySummary, MemberCluster, MemberClusterStatus, MemberMode, MemberReport};
use crate::federation::{
    MemberLink, MemberView, MemberWatch, limited_client_from_kubeconfig,
    limited_watch_client_from_kubeconfig,
};
use crate::join::names;
use crate::scheduler::MemberInfo;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
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
    ctx.metrics
        .observe_reconcile("membercluster", t0.elapsed(), res.as_ref().err());
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
    event(ctx, mc, warning, reason, "Deregister", note).await;
}

/// Retries a failed reconcile after a short delay.
pub fn error_policy(_mc: Arc<MemberCluster>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "membercluster reconcile failed");
    Action::requeue(ctx.config.heartbeat)
}

async fn kubeconfig(
    mc: &MemberCluster,
    ctx: &Context,
) -> std::result::Result<(String, Option<String>), String> {
    let Some(r) = mc.spec.kubeconfig_ref() else {
        return Err("no kubeconfigSecretRef".into());
    };
    let ns = r
        .namespace
        .clone()
        .unwrap_or_else(|| ctx.config.namespace.clone());
    let secrets: Api<Secret> = Api::namespaced(ctx.hub.clone(), &ns);
    let s = match secrets.get_opt(&r.name).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err(format!("Secret {ns}/{} not found", r.name)),
        Err(e) => return Err(format!("reading Secret {ns}/{}: {e}", r.name)),
    };
    let data = s
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .ok_or_else(|| format!("Secret {ns}/{} has no key {:?}", r.name, r.key))?;
    let text = String::from_utf8(data.0.clone())
        .map_err(|_| format!("Secret {ns}/{} key {:?} is not UTF-8", r.name, r.key))?;
    Ok((text, s.metadata.resource_version.clone()))
}

/// A pull member: its link and feed (started once), then its liveness from the heartbeat Lease its
/// agent renews in the member's hub namespace, and its version and identity from its newest
/// inventory report. Returns the problem that makes it unreachable, if any.
async fn probe_pull(
    mc: &MemberCluster,
    ctx: &Arc<Context>,
    view: &mut MemberView,
) -> Option<(String, String)> {
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
    if let Some(r) = current.first() {
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
        // The binding mode its agent found (agents that do not say: the device plugin).
        view.binding = Some(crate::federation::dra::BindingProbe {
            mode: r.spec.binding_mode.unwrap_or_default(),
            at: Instant::now(),
        });
    }
    // An agent that cannot reach its own cluster's API server heartbeats for nothing: the
    // member counts as unreachable (its grace period runs) until the agent reaches it again.
    if let Some(problem) = lease.as_ref().and_then(crate::pull::member_api_problem) {
        return Some(("MemberApiUnreachable".into(), problem.to_string()));
    }
    let spec = lease.and_then(|l| l.spec).unwrap_or_default();
    let renewed = spec.renew_time.map(|t| t.0);
    let term = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(1) as u64);
    let now = Timestamp::now();
    if renewed.is_some() {
        view.last_heartbeat = renewed;
    }
    if crate::pull::alive(renewed, now, term) {
        None
    } else {
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
}

async fn heartbeat(mc: &MemberCluster, ctx: &Arc<Context>) -> Result<Action> {
    let name = mc.name_any();
    let prev = ctx.registry.get(&name).await;
    let mut view = prev.clone().unwrap_or_else(|| MemberView {
        name: name.clone(),
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
    });
    view.spec = mc.spec.clone();

    // A member found to be a duplicate keeps no watch (its inventory would squat the first
    // member's GPU UUIDs in the scheduler); it gets one again once it no longer is.
    let was_duplicate = mc.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == condition::READY && c.reason == crate::api::DUPLICATE_CLUSTER)
    });
    // Push: a client from the Secret (rebuilt when the Secret changes). Pull: the member's work
    // objects on the hub, and its agent's heartbeat Lease for liveness.
    let mut problem: Option<(String, String)> = None;
    let pull = mc.spec.mode == MemberMode::Pull;
    if pull {
        problem = probe_pull(mc, ctx, &mut view).await;
    } else {
        match kubeconfig(mc, ctx).await {
            Ok((text, version)) => {
                if view.client.is_none()
                    || view.secret_version != version
                    || (view.watch.is_none() && !was_duplicate)
                {
                    let limit = ctx.metrics.rate_limit(&name, ctx.config.member_limits);
                    let clients = async {
                        Ok::<_, String>((
                            limited_client_from_kubeconfig(
                                &text,
                                ctx.config.member_timeout,
                                &limit,
                            )
                            .await?,
                            limited_watch_client_from_kubeconfig(
                                &text,
                                ctx.config.member_timeout,
                                &limit,
                            )
                            .await?,
                        ))
                    };
                    match clients.await {
                        Ok((c, w)) => {
                            view.watch = (!was_duplicate).then(|| {
                                Arc::new(MemberWatch::start(&w, &name, ctx.member_sink()))
                            });
                            view.client = Some(MemberLink::Push(c));
                            view.secret_version = version;
                        }
                        Err(e) => problem = Some(("KubeconfigInvalid".into(), e)),
                    }
                }
            }
            Err(e) => problem = Some(("KubeconfigUnavailable".into(), e)),
        }
    }

    // Probe the API server; nodes, topologies and pods come from the watches.
    if !pull
        && problem.is_none()
        && let Some(MemberLink::Push(client)) = view.client.clone()
    {
        match tokio::time::timeout(ctx.config.member_timeout * 3, client.apiserver_version()).await
        {
            Ok(Ok(v)) => {
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
                        Err(e) => {
                            tracing::warn!(cluster = %name, error = %e, "DRA detection failed")
                        }
                    }
                }
                view.reachable = true;
                view.last_heartbeat = Some(Timestamp::now());
            }
            Ok(Err(e)) => problem = Some(("ProbeFailed".into(), e.to_string())),
            Err(_) => {
                problem = Some((
                    "ProbeTimeout".into(),
                    format!("no answer within {:?}", ctx.config.member_timeout * 3),
                ))
            }
        }
    }
    if problem.is_some() {
        view.reachable = false;
    } else if pull {
        view.reachable = true;
    }
    let since_heartbeat = view
        .last_heartbeat
        .map(|t| Duration::try_from(Timestamp::now().duration_since(t)).unwrap_or_default())
        .unwrap_or(Duration::MAX);
    // After an operator restart, the persisted status says whether the member was Ready.
    let was_ready = prev.as_ref().map(|p| p.ready).unwrap_or_else(|| {
        mc.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == condition::READY && c.status == "True")
        })
    });
    view.ready = view.reachable || (was_ready && since_heartbeat < ctx.config.member_grace);
    // A wallet that passes CEL but is not a 32-byte key cannot be paid: not Ready, with the reason.
    let wallet_problem = crate::api::wallet_problem(&mc.spec.owner_wallet);
    if wallet_problem.is_some() {
        view.ready = false;
    }
    // The same physical cluster joined twice: only the first MemberCluster gets work.
    let Identity {
        id: cluster_id,
        duplicate,
    } = if view.reachable {
        identity(mc, view.client.as_ref(), ctx).await
    } else {
        Identity {
            id: mc.cluster_id().map(String::from),
            duplicate: None,
        }
    };
    if duplicate.is_some() {
        view.ready = false;
        if view.watch.take().is_some() {
            ctx.scheduler.remove_member(&name);
        }
    }
    let synced = view.watch.as_ref().is_some_and(|w| w.synced());
    // The registry first: a job the scheduler places here once it hears the member is
    // schedulable must find the member ready when its controller looks.
    ctx.registry.put(view.clone()).await;
    let mut labels = mc.spec.labels.clone();
    if let Some(r) = &mc.spec.region {
        labels.insert("region".into(), r.clone());
    }
    ctx.scheduler.set_member(
        &name,
        MemberInfo {
            labels,
            price: mc.spec.price_per_gpu_hour,
            schedulable: view.schedulable(),
            reason: if !mc.spec.schedulable {
                "not schedulable (spec.schedulable=false)".into()
            } else if !mc.spec.approved() {
                format!("not approved ({})", mc.spec.approval)
            } else if wallet_problem.is_some() {
                "owner wallet invalid".into()
            } else if duplicate.is_some() {
                "duplicate of another member (same cluster)".into()
            } else if !view.ready {
                "not ready".into()
            } else if !view.reachable {
                "not reachable".into()
            } else {
                String::new()
            },
            binding: view.binding_mode(),
        },
    );
    let (nodes, capacity, problems) = ctx
        .scheduler
        .with_cache(|c| (c.node_count(&name), c.capacity(&name), c.problems(&name)));

    // Status.
    let mut status = mc.status.clone().unwrap_or_default();
    let generation = mc.metadata.generation;
    match &problem {
        None if pull => set_condition(
            &mut status.conditions,
            condition::REACHABLE,
            true,
            "AgentHeartbeat",
            &format!("member agent heartbeats (Kubernetes {})", view.version),
            generation,
        ),
        None => set_condition(
            &mut status.conditions,
            condition::REACHABLE,
            true,
            "ProbeSucceeded",
            &format!("API server {} answered", view.version),
            generation,
        ),
        Some((reason, msg)) => set_condition(
            &mut status.conditions,
            condition::REACHABLE,
            false,
            reason,
            msg,
            generation,
        ),
    }
    if view.ready {
        let msg = if view.reachable {
            format!("{nodes} GPU nodes")
        } else {
            format!(
                "unreachable for {}s, within the {}s grace period",
                since_heartbeat.as_secs(),
                ctx.config.member_grace.as_secs()
            )
        };
        set_condition(
            &mut status.conditions,
            condition::READY,
            true,
            "MemberReady",
            &msg,
            generation,
        );
    } else {
        let (reason, msg) = wallet_problem
            .clone()
            .map(|m| ("InvalidOwnerWallet".to_string(), m))
            .or_else(|| {
                duplicate
                    .clone()
                    .map(|m| (crate::api::DUPLICATE_CLUSTER.to_string(), m))
            })
            .or_else(|| problem.clone())
            .unwrap_or_else(|| ("NotReady".into(), "not reachable".into()));
        set_condition(
            &mut status.conditions,
            condition::READY,
            false,
            &reason,
            &msg,
            generation,
        );
    }
    status.last_heartbeat_time = view
        .last_heartbeat
        .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time);
    if let Some(b) = view.binding {
        status.binding_mode = Some(b.mode);
    }
    if view.reachable && synced {
        status.kubernetes_version = Some(view.version.clone());
        status.capacity = capacity;
    }
    // Supply the hub does not believe: GPUs over the allocatable, duplicate or squatted UUIDs.
    let supply_ok = problems.is_empty();
    let supply_msg = if supply_ok {
        "every published GPU is usable".to_string()
    } else {
        problems.join("; ")
    };
    let supply_changed = !status.conditions.iter().any(|c| {
        c.type_ == SUPPLY_VERIFIED && (c.status == "True") == supply_ok && c.message == supply_msg
    });
    if view.reachable && synced {
        set_condition(
            &mut status.conditions,
            SUPPLY_VERIFIED,
            supply_ok,
            if supply_ok {
                "Verified"
            } else {
                "SupplyRejected"
            },
            &supply_msg,
            generation,
        );
    }
    status.observed_generation = generation;
    let newly_duplicate = duplicate.is_some() && !was_duplicate;
    let status_changed = mc.status.as_ref() != Some(&status) || prev.is_none();
    let readiness_changed = was_ready != view.ready || prev.is_none();

    // Remove what no hub object accounts for (deleted jobs, old gangs, replicas moved away while
    // the member was unreachable): once the pods are listed after every (re)connect, then every
    // few minutes as a safety net.
    let reconnected = view.reachable && !prev.as_ref().is_some_and(|p| p.reachable);
    if reconnected {
        view.last_sweep = None;
    }
    if view.reachable
        && synced
        && view.last_sweep.is_none_or(|t| t.elapsed() > SWEEP_INTERVAL)
        && let (Some(client), Some(watch)) = (view.client.clone(), view.watch.clone())
    {
        view.last_sweep = Some(Instant::now());
        match super::member_io::sweep_orphans(ctx, &name, &client, &watch.pods()).await {
            Ok(n) if n > 0 => {
                tracing::info!(cluster = %name, deleted = n, "swept orphaned workloads")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(cluster = %name, error = %e, "sweeping orphaned workloads failed")
            }
        }
        // A cluster removed while unreachable and joining again: what its record lists.
        if let Some(uid) = &cluster_id {
            match super::member_io::sweep_owed(ctx, &name, &client, uid).await {
                Ok(Some(n)) => {
                    event(
                        ctx,
                        mc,
                        false,
                        "LeftoversSwept",
                        "Sweep",
                        format!(
                            "this cluster was removed from the pool while unreachable; deleted \
                             {n} pods of jobs that moved away, with their Services and claims"
                        ),
                    )
                    .await
                }
                Ok(None) => {}
                Err(e) => {
                    // Try again at the next sweep.
                    view.last_sweep = None;
                    tracing::warn!(cluster = %name, error = %e, "sweeping a removed member's leftovers failed")
                }
            }
        }
    }
    // Device-plugin members: where the kubelet gave a pod other GPUs than gpupool chose, say so
    // (the agent already counts the kubelet's GPUs in use, so none of them is offered as free).
    let (pods, pod_devices) = view
        .watch
        .as_ref()
        .filter(|_| synced)
        .map(|w| (w.pods(), w.pod_devices()))
        .unwrap_or_default();
    let mismatches = crate::federation::dra::kubelet_mismatches(&pods, &pod_devices);
    ctx.metrics.set_kubelet_mismatches(&name, mismatches.len());
    let known = std::mem::replace(&mut view.kubelet_mismatches, mismatches.clone());
    for m in mismatches.iter().filter(|m| !known.contains(m)) {
        event(
            ctx,
            mc,
            true,
            "KubeletChoseOtherGPUs",
            "Reconcile",
            format!(
                "kubelet on {} gave pod {}/{} GPUs [{}], gpupool chose [{}]",
                m.node,
                m.namespace,
                m.pod,
                m.assigned.join(","),
                m.chosen.join(",")
            ),
        )
        .await;
    }
    // Pods the member's own scheduler refuses (on DRA members: claims it cannot allocate, e.g. GPUs
    // taken outside gpupool): said once per pod, with the scheduler's words.
    let refused = crate::federation::dra::scheduler_refusals(&pods);
    let known = std::mem::replace(
        &mut view.refused_pods,
        refused
            .iter()
            .map(|r| format!("{}/{}", r.namespace, r.pod))
            .collect(),
    );
    for r in refused
        .iter()
        .filter(|r| !known.contains(&format!("{}/{}", r.namespace, r.pod)))
    {
        event(
            ctx,
            mc,
            true,
            "MemberSchedulerRefused",
            "Reconcile",
            format!(
                "the member's scheduler cannot place pod {}/{}: {}",
                r.namespace, r.pod, r.message
            ),
        )
        .await;
    }
    ctx.metrics
        .set_member_capacity(&name, view.ready, &status.capacity);
    ctx.registry.put(view.clone()).await;
    if status_changed {
        apply_status_unconditionally(
            &Api::<MemberCluster>::all(ctx.hub.clone()),
            mc,
            &MemberStatusPatch::from(&status),
        )
        .await?;
    }
    if supply_changed && !supply_ok && view.reachable && synced {
        event(
            ctx,
            mc,
            true,
            "SupplyRejected",
            "Verify",
            supply_msg.clone(),
        )
        .await;
    }
    if newly_duplicate && let Some(msg) = &duplicate {
        event(
            ctx,
            mc,
            true,
            crate::api::DUPLICATE_CLUSTER,
            "Verify",
            msg.clone(),
        )
        .await;
    }
    if readiness_changed {
        if view.ready {
            event(
                ctx,
                mc,
                false,
                "MemberReady",
                "Probe",
                format!("member {name} is ready: {nodes} GPU nodes"),
            )
            .await;
        } else if prev.is_some() {
            let why = problem.map(|p| p.1).unwrap_or_default();
            event(
                ctx,
                mc,
                true,
                "MemberLost",
                "Probe",
                format!("member {name} is not ready: {why}"),
            )
            .await;
        }
    }
    if readiness_changed {
        // Jobs running there must look (their member may be lost); waiting jobs are woken by
        // the scheduler when the member becomes schedulable.
        ctx.wake_jobs_on(&name);
    }
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
