//! Writes into member clusters: namespaces, pods, services, and their cleanup.

use super::error::MemberErr;
use super::{Context, Result};
use crate::api::{InferenceJob, TrainingJob, TrainingPhase};
use crate::federation::OrAbsent;
use crate::federation::{MemberLink, labels};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use std::collections::BTreeSet;
use std::fmt::Debug;

/// Makes sure the tenant namespace of hub namespace `ns` exists in the member (once per member
/// and namespace while the member stays registered).
pub async fn ensure_namespace(
    ctx: &Context,
    link: &MemberLink,
    cluster: &str,
    ns: &str,
) -> Result<()> {
    if ctx.scheduler.namespace_known(cluster, ns) {
        return Ok(());
    }
    link.ensure_namespace(ns).await.member(cluster)?;
    ctx.scheduler.note_namespace(cluster, ns);
    Ok(())
}

/// Creates a job's Services and pods (with their claims, and copies of the hub Secrets and
/// ConfigMaps its template references) in the member unless they exist; returns how many pods
/// were created.
pub async fn create_objects(
    ctx: &Context,
    link: &MemberLink,
    cluster: &str,
    objects: &crate::workloads::MemberObjects,
) -> Result<usize> {
    link.create_objects(&ctx.hub, objects).await.member(cluster)
}

/// Deletes pods of job `uid` in the member for which `doomed` is true; returns how many.
pub async fn delete_pods(
    link: &MemberLink,
    cluster: &str,
    ns: &str,
    uid: &str,
    doomed: impl Fn(&Pod) -> bool,
) -> Result<usize> {
    link.delete_pods(ns, uid, doomed).await.member(cluster)
}

/// Deletes every pod and service of job `uid` in the member.
pub async fn delete_all(link: &MemberLink, cluster: &str, ns: &str, uid: &str) -> Result<usize> {
    link.delete_all(ns, uid).await.member(cluster)
}

/// Finalizer cleanup of a deleted hub job: its pods and Services go from every reachable member.
/// A member that may hold them but cannot be reached yet — not probed since this operator
/// started (a new leader connecting), or unreachable within its grace period — is waited for (the
/// cleanup fails and is retried, the finalizer stays); a member that is NotReady is swept when it
/// comes back ([`sweep_orphans`]).
pub async fn cleanup_job<K: Resource<DynamicType = ()>>(
    job: &K,
    ctx: &Context,
) -> Result<kube::runtime::controller::Action> {
    let ns = job.namespace().unwrap_or_default();
    let uid = job.uid().unwrap_or_default();
    // The hub's MemberClusters must have been listed: one not connected yet may hold pods.
    let listed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        ctx.members.wait_until_ready(),
    )
    .await;
    if !matches!(listed, Ok(Ok(()))) {
        return Err(super::Error::MemberUnavailable(
            "(members not listed yet)".into(),
        ));
    }
    let views = ctx.registry.snapshot().await;
    for mc in ctx.members.state() {
        // Not connected yet: waited for, unless its last recorded state is NotReady (the sweep
        // covers it when it comes back).
        let name = mc.name_any();
        if mc.metadata.deletion_timestamp.is_none()
            && !views.contains_key(&name)
            && member_was_ready(&mc)
        {
            return Err(super::Error::MemberUnavailable(name));
        }
    }
    for m in views.into_values() {
        // A pull member's work can always be withdrawn: its agent deletes the pods when it next
        // connects.
        match m.client.as_ref() {
            Some(c) if m.reachable || matches!(c, MemberLink::Pull { .. }) => {
                let n = delete_all(c, &m.name, &ns, &uid).await?;
                if n > 0 {
                    tracing::info!(job = %job.name_any(), cluster = %m.name, deleted = n, "cleaned up");
                }
            }
            _ if m.ready => return Err(super::Error::MemberUnavailable(m.name.clone())),
            _ => {}
        }
    }
    super::status::event(
        ctx,
        job,
        false,
        "Deleted",
        "Cleanup",
        "workloads removed from member clusters".into(),
    );
    Ok(kube::runtime::controller::Action::await_change())
}

/// Whether a MemberCluster's recorded Ready condition is True.
fn member_was_ready(mc: &crate::api::MemberCluster) -> bool {
    mc.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// Removes from reachable members whatever no live hub object accounts for: pods and services of
/// deleted jobs, old training-gang generations, replicas re-placed elsewhere while the member was
/// unreachable. Returns the number of objects deleted.
///
/// The hub jobs are read from the operator's own watches (a LIST of every job on the hub would
/// deserialize tens of thousands of objects per member every few minutes, the operator's largest
/// memory peak by far). A watch may lag behind the write that placed a pod, so a pod the watch
/// cannot account for is kept unless a fresh read of its job from the API server agrees.
pub async fn sweep_orphans(
    ctx: &Context,
    cluster: &str,
    link: &MemberLink,
    pods: &[std::sync::Arc<Pod>],
) -> Result<usize> {
    if pods.is_empty() {
        return Ok(0);
    }
    let (Some(tjs), Some(ijs)) = (
        ctx.scheduler.training_store(),
        ctx.scheduler.inference_store(),
    ) else {
        // The hub jobs are not listed yet: nothing can be called an orphan.
        return Ok(0);
    };
    let mut deleted = 0;
    let mut dead_uids = BTreeSet::new();
    for p in pods {
        let Some(l) = p.metadata.labels.as_ref() else {
            continue;
        };
        let (Some(kind), Some(uid)) = (l.get(labels::JOB_KIND), l.get(labels::JOB_UID)) else {
            continue;
        };
        let job_ns = l.get(labels::JOB_NAMESPACE).cloned().unwrap_or_default();
        let Some(job_name) = l.get(labels::JOB_NAME).cloned() else {
            // Not a pod gpupool labelled: nothing says which job it served.
            continue;
        };
        let cached = match kind.as_str() {
            "TrainingJob" => Hub::Training(tjs.get(&ObjectRef::new(&job_name).within(&job_ns))),
            "InferenceJob" => Hub::Inference(ijs.get(&ObjectRef::new(&job_name).within(&job_ns))),
            _ => continue,
        }
        .same_job(uid);
        if cached.keeps(p, cluster) {
            continue;
        }
        // Confirm with the API server before deleting anything.
        let fresh = match kind.as_str() {
            "TrainingJob" => Hub::Training(
                Api::<TrainingJob>::namespaced(ctx.hub.clone(), &job_ns)
                    .get_opt(&job_name)
                    .await?
                    .map(std::sync::Arc::new),
            ),
            _ => Hub::Inference(
                Api::<InferenceJob>::namespaced(ctx.hub.clone(), &job_ns)
                    .get_opt(&job_name)
                    .await?
                    .map(std::sync::Arc::new),
            ),
        }
        .same_job(uid);
        if fresh.keeps(p, cluster) || ctx.scheduler.in_flight(uid) {
            continue;
        }
        // Hub namespace: the link finds the pod in its tenant namespace.
        let ns = job_ns.clone();
        let (pod_ns, name) = (p.namespace(), p.name_any());
        let n = delete_pods(link, cluster, &ns, uid, |q| {
            q.name_any() == name && q.namespace() == pod_ns
        })
        .await?;
        if n > 0 {
            deleted += n;
            tracing::info!(cluster, pod = %name, "deleted orphaned pod");
        }
        // Deleted jobs, and jobs that hold nothing here any more (moved away while the member
        // was unreachable): their Services (a pull member: their whole work object) go too.
        if !fresh.placed_here(cluster) {
            dead_uids.insert((ns, uid.clone()));
        }
    }
    for (ns, uid) in dead_uids {
        deleted += delete_all(link, cluster, &ns, &uid).await?;
    }
    Ok(deleted)
}

/// The hub job a member pod belongs to, if it still exists.
enum Hub {
    Training(Option<std::sync::Arc<TrainingJob>>),
    Inference(Option<std::sync::Arc<InferenceJob>>),
}

impl Hub {
    /// No job unless it is the one of UID `uid` (not a later job of the same name).
    fn same_job(self, uid: &str) -> Hub {
        fn same<K: Resource>(j: Option<std::sync::Arc<K>>, uid: &str) -> Option<std::sync::Arc<K>> {
            j.filter(|j| j.meta().uid.as_deref() == Some(uid))
        }
        match self {
            Hub::Training(j) => Hub::Training(same(j, uid)),
            Hub::Inference(j) => Hub::Inference(same(j, uid)),
        }
    }

    /// Whether the job still accounts for pod `p` in `cluster`.
    fn keeps(&self, p: &Pod, cluster: &str) -> bool {
        let l = p.labels();
        match self {
            Hub::Training(j) => j.as_ref().is_some_and(|j| {
                let st = j.status.clone().unwrap_or_default();
                let gen_ok = l
                    .get(labels::GENERATION)
                    .and_then(|g| g.parse::<i32>().ok())
                    == Some(st.restarts);
                let finished = matches!(st.phase, TrainingPhase::Succeeded | TrainingPhase::Failed);
                let pod_done = matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                );
                // On the member the job runs on: the current generation of a job that has
                // not failed, and the terminated pods of finished gangs (their logs). A failed
                // job's still-running pods go (e.g. a gang whose member came back after the
                // job failed).
                st.cluster.as_deref() == Some(cluster)
                    && ((gen_ok && st.phase != TrainingPhase::Failed) || (finished && pod_done))
            }),
            Hub::Inference(j) => {
                j.as_ref().is_some_and(|j| {
                    let node = crate::workloads::pod_node(p).unwrap_or_default();
                    let index: i32 = l
                        .get(labels::INDEX)
                        .and_then(|i| i.parse().ok())
                        .unwrap_or(-1);
                    let revision = crate::workloads::pod_revision(p);
                    j.status.iter().flat_map(|s| &s.placements).any(|pl| {
                        pl.cluster == cluster
                            && pl.replicas.iter().zip(&pl.gpus).any(|(r, g)| {
                                *r == index && g.node == node && g.revision == revision
                            })
                    })
                })
            }
        }
    }

    /// Whether the job still holds anything in `cluster`.
    fn placed_here(&self, cluster: &str) -> bool {
        match self {
            Hub::Training(j) => j.as_ref().is_some_and(|j| {
                j.status.as_ref().and_then(|s| s.cluster.as_deref()) == Some(cluster)
            }),
            Hub::Inference(j) => j.as_ref().is_some_and(|j| {
                j.status
                    .as_ref()
                    .is_some_and(|s| s.placements.iter().any(|pl| pl.cluster == cluster))
            }),
        }
    }
}

/// What draining a removed member left behind.
#[derive(Debug, Default)]
pub struct Drain {
    /// Objects deleted.
    pub deleted: usize,
    /// `kind namespace/name: why` of each object that could not be deleted.
    pub failed: Vec<String>,
}

/// Deletes every pod, Service and ResourceClaim gpupool created in a member (all namespaces, by
/// the managed-by label): the member is leaving the pool. Members without the DRA API have no
/// claims to delete. A pull member's work objects are withdrawn (its agent deletes what it
/// applied for them).
pub async fn drain_member(link: &MemberLink) -> Drain {
    let mut out = Drain::default();
    let client = match link {
        MemberLink::Push(c) => c,
        MemberLink::Pull { hub, member } => {
            match crate::pull::delete_all_work(hub, member).await {
                Ok(n) => out.deleted = n,
                Err(e) => out
                    .failed
                    .push(format!("MemberWork (deleting failed: {e})")),
            }
            return out;
        }
    };
    let lp = ListParams::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGER));
    drain_kind::<Pod>(
        client,
        &lp,
        DeleteParams::background().grace_period(0),
        &mut out,
    )
    .await;
    drain_kind::<Service>(client, &lp, DeleteParams::background(), &mut out).await;
    drain_kind::<k8s_openapi::api::resource::v1::ResourceClaim>(
        client,
        &lp,
        DeleteParams::background(),
        &mut out,
    )
    .await;
    out
}

async fn drain_kind<K>(client: &kube::Client, lp: &ListParams, dp: DeleteParams, out: &mut Drain)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let kind = K::kind(&());
    let list = match Api::<K>::all(client.clone()).list(lp).await.or_absent() {
        Ok(Some(l)) => l,
        // The member does not serve this API (no DRA): nothing of this kind to delete.
        Ok(None) => return,
        Err(e) => {
            out.failed.push(format!("{kind} (listing failed: {e})"));
            return;
        }
    };
    for o in list.items {
        let (ns, name) = (o.namespace().unwrap_or_default(), o.name_any());
        match Api::<K>::namespaced(client.clone(), &ns)
            .delete(&name, &dp)
            .await
            .or_absent()
        {
            Ok(gone) => out.deleted += usize::from(gone.is_some()),
            Err(e) => out.failed.push(format!("{kind} {ns}/{name}: {e}")),
        }
    }
}

/// A hub job that still had workloads in a member removed while unreachable.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct OwedJob {
    /// `TrainingJob` or `InferenceJob`.
    pub kind: String,
    /// Namespace (the same in the member).
    pub namespace: String,
    /// Name, for people reading the record.
    pub name: String,
    /// UID: the `gpupool.io/job-uid` label of its pods, Services and claims.
    pub uid: String,
}

/// Label on the hub ConfigMaps recording what a removed member still holds.
pub const OWED_RECORD_LABEL: &str = "gpupool.io/owed-by-cluster-uid";

/// Name of the record of what the cluster with `kube-system` UID `cluster_uid` still holds.
pub fn owed_record_name(cluster_uid: &str) -> String {
    format!("gpupool-owed-{cluster_uid}")
}

/// The jobs that have (or, by the member's last known pods, had) workloads in member `cluster`:
/// hub statuses placing them there, and the job UIDs of the pods its watch last listed.
pub async fn jobs_in_member(
    ctx: &Context,
    cluster: &str,
    pods: &[std::sync::Arc<Pod>],
) -> Result<BTreeSet<OwedJob>> {
    let mut out = BTreeSet::new();
    for j in Api::<TrainingJob>::all(ctx.hub.clone())
        .list(&ListParams::default())
        .await?
        .items
    {
        if j.status.as_ref().and_then(|s| s.cluster.as_deref()) == Some(cluster) {
            out.insert(owed("TrainingJob", &j));
        }
    }
    for j in Api::<InferenceJob>::all(ctx.hub.clone())
        .list(&ListParams::default())
        .await?
        .items
    {
        if j.status
            .iter()
            .flat_map(|s| &s.placements)
            .any(|p| p.cluster == cluster)
        {
            out.insert(owed("InferenceJob", &j));
        }
    }
    for p in pods {
        let Some(l) = p.metadata.labels.as_ref() else {
            continue;
        };
        if let (Some(kind), Some(uid)) = (l.get(labels::JOB_KIND), l.get(labels::JOB_UID)) {
            out.insert(OwedJob {
                kind: kind.clone(),
                namespace: p.namespace().unwrap_or_default(),
                name: l.get(labels::JOB_NAME).cloned().unwrap_or_default(),
                uid: uid.clone(),
            });
        }
    }
    Ok(out)
}

fn owed<K: Resource<DynamicType = ()>>(kind: &str, j: &K) -> OwedJob {
    OwedJob {
        kind: kind.into(),
        namespace: j.namespace().unwrap_or_default(),
        name: j.name_any(),
        uid: j.uid().unwrap_or_default(),
    }
}

/// Records on the hub (a ConfigMap in the operator's namespace, named after the cluster's
/// `kube-system` UID) what member `cluster` still holds after it was removed unreachable, so that
/// [`sweep_owed`] deletes it if the same cluster joins again, under any name.
pub async fn record_owed(
    ctx: &Context,
    cluster: &str,
    cluster_uid: &str,
    jobs: &BTreeSet<OwedJob>,
) -> Result<()> {
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(ctx.hub.clone(), &ctx.config.namespace);
    let name = owed_record_name(cluster_uid);
    // Merge with an earlier record of the same cluster (removed twice without rejoining fully).
    let mut all = jobs.clone();
    if let Some(old) = api.get_opt(&name).await? {
        all.extend(parse_owed(&old));
    }
    let cm = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": ctx.config.namespace,
            "labels": {
                labels::MANAGED_BY: labels::MANAGER,
                OWED_RECORD_LABEL: cluster_uid,
            },
        },
        "data": {
            "member": cluster,
            "clusterUid": cluster_uid,
            "removedAt": k8s_openapi::jiff::Timestamp::now().to_string(),
            "jobs": serde_json::to_string(&all).expect("plain data serializes"),
        },
    });
    api.patch(
        &name,
        &kube::api::PatchParams::apply(crate::meta::FIELD_MANAGER).force(),
        &kube::api::Patch::Apply(&cm),
    )
    .await?;
    Ok(())
}

fn parse_owed(cm: &k8s_openapi::api::core::v1::ConfigMap) -> Vec<OwedJob> {
    cm.data
        .as_ref()
        .and_then(|d| d.get("jobs"))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default()
}

/// When a cluster that was removed unreachable joins again (same `kube-system` UID, as member
/// `cluster`): deletes the pods, Services and ResourceClaims of every job its record lists that is
/// not placed on this member now, then the record. Returns the number of objects deleted, or
/// `None` when there is no record.
pub async fn sweep_owed(
    ctx: &Context,
    cluster: &str,
    client: &MemberLink,
    cluster_uid: &str,
) -> Result<Option<usize>> {
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(ctx.hub.clone(), &ctx.config.namespace);
    let Some(cm) = api.get_opt(&owed_record_name(cluster_uid)).await? else {
        return Ok(None);
    };
    let here = jobs_in_member(ctx, cluster, &[]).await?;
    let here: BTreeSet<&str> = here.iter().map(|j| j.uid.as_str()).collect();
    let mut deleted = 0;
    for j in parse_owed(&cm) {
        if here.contains(j.uid.as_str()) {
            // Placed here again: the orphan sweep keeps what its status accounts for.
            continue;
        }
        deleted += delete_all(client, cluster, &j.namespace, &j.uid).await?;
        // A pull member's claims are in the job's work objects, withdrawn with them above.
        if let MemberLink::Push(c) = client {
            deleted += delete_claims(c, cluster, &j.namespace, &j.uid).await?;
        }
    }
    api.delete(&cm.name_any(), &DeleteParams::default())
        .await
        .or_absent()?;
    Ok(Some(deleted))
}

/// Deletes the ResourceClaims of job `uid` (members without the DRA API have none).
async fn delete_claims(client: &kube::Client, cluster: &str, ns: &str, uid: &str) -> Result<usize> {
    use k8s_openapi::api::resource::v1::ResourceClaim;
    let api: Api<ResourceClaim> = Api::namespaced(client.clone(), ns);
    let Some(list) = api
        .list(&ListParams::default().labels(&format!("{}={uid}", labels::JOB_UID)))
        .await
        .or_absent()
        .member(cluster)?
    else {
        return Ok(0);
    };
    let mut n = 0;
    for c in list.items {
        let gone = api
            .delete(&c.name_any(), &DeleteParams::background())
            .await
            .or_absent()
            .member(cluster)?;
        n += usize::from(gone.is_some());
    }
    Ok(n)
}
