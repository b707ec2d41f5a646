//! MemberCluster controller: builds a client per member from its kubeconfig Secret, probes it on
//! every heartbeat, reads its inventory into the registry, and keeps `status` true.

use super::status::{apply_status, event, set_condition};
use super::{Context, Error, Result};
use crate::api::{CapacitySummary, MemberCluster, MemberClusterStatus, ModelCapacity, condition};
use crate::federation::{
    Inventory, MemberView, MemberWatch, client_from_kubeconfig, labels, read_inventory,
};
use crate::placement::free_gpus_by_node;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MEMBER_FINALIZER: &str = "gpupool.io/member-registry";

/// Reconciles one MemberCluster.
pub async fn reconcile(mc: Arc<MemberCluster>, ctx: Arc<Context>) -> Result<Action> {
    let t0 = Instant::now();
    let api: Api<MemberCluster> = Api::all(ctx.hub.clone());
    let res = finalizer(&api, MEMBER_FINALIZER, mc, |ev| async {
        match ev {
            Finalizer::Apply(mc) => heartbeat(&mc, &ctx).await,
            Finalizer::Cleanup(mc) => {
                ctx.registry.remove(&mc.name_any()).await;
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

/// Retries a failed reconcile after a short delay.
pub fn error_policy(_mc: Arc<MemberCluster>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "membercluster reconcile failed");
    Action::requeue(ctx.config.heartbeat)
}

async fn kubeconfig(
    mc: &MemberCluster,
    ctx: &Context,
) -> std::result::Result<(String, Option<String>), String> {
    let r = &mc.spec.kubeconfig_secret_ref;
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

async fn heartbeat(mc: &MemberCluster, ctx: &Context) -> Result<Action> {
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
        inventory: Inventory::default(),
        last_sweep: None,
        watch: None,
        binding: None,
    });
    view.spec = mc.spec.clone();

    // Client from the Secret (rebuilt when the Secret changes).
    let mut problem: Option<(String, String)> = None;
    match kubeconfig(mc, ctx).await {
        Ok((text, version)) => {
            if view.client.is_none() || view.secret_version != version {
                match client_from_kubeconfig(&text, ctx.config.member_timeout).await {
                    Ok(c) => {
                        view.watch = Some(Arc::new(MemberWatch::start(&c, ctx.pod_waker())));
                        view.client = Some(c);
                        view.secret_version = version;
                    }
                    Err(e) => problem = Some(("KubeconfigInvalid".into(), e)),
                }
            }
        }
        Err(e) => problem = Some(("KubeconfigUnavailable".into(), e)),
    }

    // Probe and read the inventory.
    if problem.is_none()
        && let Some(client) = view.client.clone()
    {
        // Probe the API server; the inventory comes from the watches once they have synced
        // (a full list until then).
        let watch = view.watch.clone();
        let read = async {
            let v = client.apiserver_version().await?;
            match watch.as_ref().filter(|w| w.synced()) {
                Some(w) => Ok(w.inventory(v.git_version)),
                None => read_inventory(&client).await,
            }
        };
        match tokio::time::timeout(ctx.config.member_timeout * 3, read).await {
            Ok(Ok(inv)) => {
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
                notify_changed_jobs(ctx, &view.inventory, &inv);
                view.inventory = inv;
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

    // Status.
    let mut status = mc.status.clone().unwrap_or_default();
    let generation = mc.metadata.generation;
    match &problem {
        None => set_condition(
            &mut status.conditions,
            condition::REACHABLE,
            true,
            "ProbeSucceeded",
            &format!("API server {} answered", view.inventory.version),
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
            format!("{} GPU nodes", view.inventory.nodes.len())
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
    if view.reachable {
        status.kubernetes_version = Some(view.inventory.version.clone());
        status.capacity = capacity(
            &view.inventory,
            &crate::placement::uuids_held_by_pods(&view.inventory),
        );
    }
    status.observed_generation = generation;
    let status_changed = mc.status.as_ref() != Some(&status) || prev.is_none();
    let readiness_changed = was_ready != view.ready || prev.is_none();
    let capacity_changed = prev
        .as_ref()
        .map(|p| p.inventory.nodes.len() != view.inventory.nodes.len())
        .unwrap_or(true);

    // Remove what no hub object accounts for (deleted jobs, old gangs, replicas moved away while
    // the member was unreachable): on reconnect, then every 10 s.
    let reconnected = view.reachable && !prev.as_ref().is_some_and(|p| p.reachable);
    if view.reachable
        && (reconnected
            || view
                .last_sweep
                .is_none_or(|t| t.elapsed() > Duration::from_secs(10)))
        && let Some(client) = view.client.clone()
    {
        view.last_sweep = Some(Instant::now());
        match super::member_io::sweep_orphans(ctx, &name, &client, &view.inventory.pods).await {
            Ok(n) if n > 0 => {
                tracing::info!(cluster = %name, deleted = n, "swept orphaned workloads")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(cluster = %name, error = %e, "sweeping orphaned workloads failed")
            }
        }
    }
    // Device-plugin members: where the kubelet gave a pod other GPUs than gpupool chose, say so
    // (the agent already counts the kubelet's GPUs in use, so none of them is offered as free).
    let mismatches = crate::federation::dra::kubelet_mismatches(&view.inventory);
    ctx.metrics.set_kubelet_mismatches(&name, mismatches.len());
    let known = prev
        .as_ref()
        .map(|p| crate::federation::dra::kubelet_mismatches(&p.inventory))
        .unwrap_or_default();
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
    let refused = crate::federation::dra::scheduler_refusals(&view.inventory);
    let known: Vec<String> = prev
        .as_ref()
        .map(|p| crate::federation::dra::scheduler_refusals(&p.inventory))
        .unwrap_or_default()
        .into_iter()
        .map(|r| format!("{}/{}", r.namespace, r.pod))
        .collect();
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
    ctx.metrics.set_member(
        &name,
        view.ready,
        status.capacity.gpus_total,
        status.capacity.gpus_total - status.capacity.gpus_free,
    );
    ctx.registry.put(view.clone()).await;
    if status_changed {
        apply_status(
            &Api::<MemberCluster>::all(ctx.hub.clone()),
            mc,
            &MemberStatusPatch::from(&status),
        )
        .await?;
    }
    if readiness_changed {
        if view.ready {
            event(
                ctx,
                mc,
                false,
                "MemberReady",
                "Probe",
                format!(
                    "member {name} is ready: {} GPU nodes",
                    view.inventory.nodes.len()
                ),
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
    if readiness_changed || capacity_changed {
        ctx.wake_all_jobs();
    }
    Ok(Action::requeue(ctx.config.heartbeat))
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

/// Capacity summary of a member given the GPUs gpupool has assigned there.
fn capacity(inv: &Inventory, assigned: &std::collections::BTreeSet<String>) -> CapacitySummary {
    let free = free_gpus_by_node(inv, assigned);
    let mut by_model: BTreeMap<(String, i64), ModelCapacity> = BTreeMap::new();
    let mut islands = Vec::new();
    let mut total = 0;
    let mut free_total = 0;
    for node in inv.nodes.values() {
        let Some(t) = &node.topology else {
            total += node.gpus as i32;
            continue;
        };
        let node_free = free.get(&node.name).cloned().unwrap_or_default();
        for g in &t.gpus {
            let e = by_model
                .entry((g.model.clone(), g.memory_mib))
                .or_insert_with(|| ModelCapacity {
                    model: g.model.clone(),
                    memory_mib: g.memory_mib,
                    ..Default::default()
                });
            e.total += 1;
            total += 1;
            if node_free.contains(&g.uuid) {
                e.free += 1;
                free_total += 1;
            }
        }
        islands.extend(crate::placement::free_island_sizes(t, &node_free));
    }
    islands.sort_unstable_by(|a, b| b.cmp(a));
    CapacitySummary {
        nodes: inv.nodes.len() as i32,
        gpus_total: total,
        gpus_free: free_total,
        by_model: by_model.into_values().collect(),
        free_nvlink_islands: islands,
    }
}

/// Wakes hub jobs whose pods changed phase/readiness in this member.
fn notify_changed_jobs(ctx: &Context, old: &Inventory, new: &Inventory) {
    fn key(p: &k8s_openapi::api::core::v1::Pod) -> Option<(String, String, String, String)> {
        let l = p.metadata.labels.as_ref()?;
        let st = p.status.as_ref();
        let ready = st
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        Some((
            l.get(labels::JOB_KIND)?.clone(),
            l.get(labels::JOB_NAMESPACE)?.clone(),
            l.get(labels::JOB_NAME)?.clone(),
            format!(
                "{}:{}:{}",
                p.name_any(),
                st.and_then(|s| s.phase.clone()).unwrap_or_default(),
                ready
            ),
        ))
    }
    let a: std::collections::BTreeSet<_> = old.pods.iter().filter_map(key).collect();
    let b: std::collections::BTreeSet<_> = new.pods.iter().filter_map(key).collect();
    let changed: std::collections::BTreeSet<_> = a
        .symmetric_difference(&b)
        .map(|(k, ns, n, _)| (k.clone(), ns.clone(), n.clone()))
        .collect();
    for (k, ns, n) in changed {
        ctx.wake_job(&k, &ns, &n);
    }
}
