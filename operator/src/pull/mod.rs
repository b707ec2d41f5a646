//! The hub's side of a pull-mode member: the one place where desired state goes to a pull member
//! and observed state comes back, shaped like the push path so the same controllers serve both.
//!
//! - Desired state: [`put_work`] server-side applies one `MemberWork` per hub job and member (its
//!   pods and Services as manifests) into the member's hub namespace; [`delete_work`] withdraws
//!   it. The agent applies and deletes in the member.
//! - Observed state: [`observe`] reads the member's `MemberReport` shards, its works' statuses and
//!   its heartbeat Lease and returns them as the same [`Inventory`] a push member's watches give
//!   (nodes with topology and busy GPUs; the gpupool pods, rebuilt from manifest + reported status
//!   so that labels, annotations, node, phase and metered run time read exactly as in push mode).
//! - Liveness: a pull member is reachable while its Lease is renewed ([`alive`]).
//!
//! The controllers reach a pull member through [`crate::federation::MemberLink::Pull`] (writes
//! become edits of the job's work object: [`edit_work`]) and see it through the pull feed of
//! [`crate::federation::MemberWatch::start_pull`], which turns reports and works into the same
//! node, topology and pod changes a push member's watches give.

use crate::api::{
    MemberReport, MemberReportStatus, MemberWork, MemberWorkSpec, NodeReport, PodReport, WorkJobRef,
};
use crate::federation::OrAbsent;
use crate::federation::labels::JOB_UID;
use crate::join::names;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus, Pod,
    PodCondition, PodStatus,
};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// One GPU node of a pull member, as its agent reported it.
#[derive(Clone, Debug)]
pub struct NodeInventory {
    /// Node name.
    pub name: String,
    /// Node is Ready and schedulable.
    pub ready: bool,
    /// GPUs the node offers (`nvidia.com/gpu` allocatable, or its topology's GPUs under DRA).
    pub gpus: i64,
    /// Topology published by the node agent, if any.
    pub topology: Option<crate::api::GpuTopologySpec>,
    /// GPUs the node agent saw busy with processes gpupool did not start.
    pub busy_uuids: Vec<String>,
}

/// What a pull member reported: its GPU nodes and the gpupool pods its agent runs, shaped as a
/// push member's watches would show them.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    /// Kubernetes version.
    pub version: String,
    /// GPU nodes by name.
    pub nodes: BTreeMap<String, NodeInventory>,
    /// Pods gpupool manages there.
    pub pods: Vec<Pod>,
}

/// Field manager of the hub's writes of work objects.
pub const FIELD_MANAGER: &str = "gpupool-hub";

/// Name of the `MemberWork` for a hub job: `<kind>-<namespace>-<name>`, shortened with a hash
/// when too long for an object name.
pub fn work_name(kind: &str, namespace: &str, name: &str) -> String {
    let short = match kind {
        "TrainingJob" => "tj",
        "InferenceJob" => "ij",
        other => other,
    }
    .to_ascii_lowercase();
    let full = format!("{short}-{namespace}-{name}");
    if full.len() <= 200 {
        return full;
    }
    // FNV-1a keeps distinct long names distinct after truncation.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in full.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{}-{h:016x}", &full[..183].trim_end_matches(['-', '.']))
}

/// The work object for one job in a pull member, labelled with the member and the job's UID.
pub fn work_object(member: &str, job: WorkJobRef, manifests: Vec<Value>) -> MemberWork {
    let name = work_name(&job.kind, &job.namespace, &job.name);
    let mut labels: BTreeMap<String, String> = [
        (
            "app.kubernetes.io/part-of".to_string(),
            "gpupool".to_string(),
        ),
        (names::MEMBER_LABEL.to_string(), member.to_string()),
    ]
    .into();
    if let Some(u) = &job.uid {
        labels.insert(JOB_UID.to_string(), u.clone());
    }
    let mut w = MemberWork::new(
        &name,
        MemberWorkSpec {
            job_ref: Some(job),
            manifests,
        },
    );
    w.metadata.namespace = Some(names::member_namespace(member));
    w.metadata.labels = Some(labels);
    w
}

/// Writes (creates or replaces) the objects the hub wants in a pull member for one job.
pub async fn put_work(
    hub: &kube::Client,
    member: &str,
    job: WorkJobRef,
    manifests: Vec<Value>,
) -> kube::Result<MemberWork> {
    let w = work_object(member, job, manifests);
    Api::<MemberWork>::namespaced(hub.clone(), &names::member_namespace(member))
        .patch(
            &w.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&w),
        )
        .await
}

/// How many times an edit of a work object is retried when another writer changed it in between.
const EDIT_ATTEMPTS: usize = 8;

/// Edits the work object of one job in a pull member, read-modify-write: `edit` changes the
/// current manifests in place (empty when there is no work yet). The result is written only when
/// it differs, with the version that was read as a precondition (an edit that raced another
/// writer is redone on the newer object), and the work is deleted once no manifest is left.
pub async fn edit_work<T>(
    hub: &kube::Client,
    member: &str,
    job: &WorkJobRef,
    mut edit: impl FnMut(&mut Vec<Value>, Option<&MemberWork>) -> T,
) -> kube::Result<T> {
    let api = Api::<MemberWork>::namespaced(hub.clone(), &names::member_namespace(member));
    let name = work_name(&job.kind, &job.namespace, &job.name);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let cur = api.get_opt(&name).await?;
        let mut manifests = cur
            .as_ref()
            .map(|w| w.spec.manifests.clone())
            .unwrap_or_default();
        let out = edit(&mut manifests, cur.as_ref());
        let res = match &cur {
            None if manifests.is_empty() => return Ok(out),
            Some(w) if w.spec.manifests == manifests => return Ok(out),
            None => api
                .create(
                    &PostParams {
                        field_manager: Some(FIELD_MANAGER.into()),
                        ..Default::default()
                    },
                    &work_object(member, job.clone(), manifests),
                )
                .await
                .map(|_| ()),
            Some(w) if manifests.is_empty() => api
                .delete(
                    &name,
                    &DeleteParams {
                        preconditions: Some(Preconditions {
                            resource_version: w.resource_version(),
                            uid: None,
                        }),
                        ..Default::default()
                    },
                )
                .await
                .map(|_| ()),
            Some(w) => {
                let mut new = work_object(
                    member,
                    w.spec.job_ref.clone().unwrap_or(job.clone()),
                    manifests,
                );
                new.metadata.resource_version = w.resource_version();
                api.patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&new),
                )
                .await
                .map(|_| ())
            }
        };
        match res {
            Ok(()) => return Ok(out),
            Err(kube::Error::Api(e))
                if (e.code == 409 || (e.code == 404 && cur.is_some()))
                    && attempt < EDIT_ATTEMPTS => {}
            Err(e) => return Err(e),
        }
    }
}

/// (kind, namespace, name) of a manifest.
pub fn manifest_key(m: &Value) -> (&str, &str, &str) {
    (
        m["kind"].as_str().unwrap_or_default(),
        m["metadata"]["namespace"].as_str().unwrap_or_default(),
        m["metadata"]["name"].as_str().unwrap_or_default(),
    )
}

/// Adds the manifests whose (kind, namespace, name) is not in `manifests` yet; returns how many
/// pods were added.
pub fn add_missing(manifests: &mut Vec<Value>, wanted: Vec<Value>) -> usize {
    let mut pods = 0;
    for w in wanted {
        if !manifests
            .iter()
            .any(|m| manifest_key(m) == manifest_key(&w))
        {
            pods += usize::from(w["kind"] == "Pod");
            manifests.push(w);
        }
    }
    pods
}

/// The pods a work's status reports, by (namespace, name).
fn reported_pods(w: &MemberWork) -> BTreeMap<(&str, &str), &PodReport> {
    w.status
        .iter()
        .flat_map(|s| s.pods.iter())
        .map(|p| ((p.namespace.as_str(), p.name.as_str()), p))
        .collect()
}

/// The pods of a work as the hub sees them: as the member reported them, or as wanted while the
/// agent has not reported them yet; each with the index of its manifest.
pub fn work_pods(w: &MemberWork) -> Vec<(usize, Pod)> {
    let reported = reported_pods(w);
    w.spec
        .manifests
        .iter()
        .enumerate()
        .filter(|(_, m)| m["kind"] == "Pod")
        .filter_map(|(i, m)| {
            let (_, ns, name) = manifest_key(m);
            let pod = match reported.get(&(ns, name)) {
                Some(r) if r.phase != "Missing" => pod_from_report(m, r)?,
                _ => serde_json::from_value(m.clone()).ok()?,
            };
            Some((i, pod))
        })
        .collect()
}

/// Removes the pods for which `doomed` is true (with their ResourceClaims) from a work's
/// manifests; returns how many pods were removed.
pub fn remove_pods(
    manifests: &mut Vec<Value>,
    work: &MemberWork,
    doomed: impl Fn(&Pod) -> bool,
) -> usize {
    let mut gone: Vec<(String, String)> = Vec::new();
    for (i, p) in work_pods(work) {
        if doomed(&p)
            && let Some(m) = work.spec.manifests.get(i)
        {
            let (_, ns, name) = manifest_key(m);
            gone.push((ns.to_string(), name.to_string()));
        }
    }
    let claims: Vec<(String, String)> = gone
        .iter()
        .map(|(ns, n)| (ns.clone(), crate::workloads::claim_name(n)))
        .collect();
    manifests.retain(|m| {
        let (kind, ns, name) = manifest_key(m);
        let key = (ns.to_string(), name.to_string());
        !(kind == "Pod" && gone.contains(&key) || kind == "ResourceClaim" && claims.contains(&key))
    });
    gone.len()
}

/// The work objects of hub job `uid` in a pull member.
pub async fn works_of_job(
    hub: &kube::Client,
    member: &str,
    uid: &str,
) -> kube::Result<Vec<MemberWork>> {
    Ok(
        Api::<MemberWork>::namespaced(hub.clone(), &names::member_namespace(member))
            .list(&ListParams::default().labels(&format!("{JOB_UID}={uid}")))
            .await?
            .items,
    )
}

/// Withdraws every work object of a pull member (it leaves the pool: its agent deletes what it
/// applied). Returns how many were deleted.
pub async fn delete_all_work(hub: &kube::Client, member: &str) -> kube::Result<usize> {
    let api = Api::<MemberWork>::namespaced(hub.clone(), &names::member_namespace(member));
    let mut n = 0;
    for w in api.list(&ListParams::default()).await?.items {
        let gone = api
            .delete(&w.name_any(), &DeleteParams::default())
            .await
            .or_absent()?;
        n += usize::from(gone.is_some());
    }
    Ok(n)
}

/// Withdraws a job's work from a pull member (the agent deletes its objects). Idempotent.
pub async fn delete_work(hub: &kube::Client, member: &str, work: &str) -> kube::Result<()> {
    Api::<MemberWork>::namespaced(hub.clone(), &names::member_namespace(member))
        .delete(work, &DeleteParams::default())
        .await
        .or_absent()?;
    Ok(())
}

/// What the hub knows about a pull member from its hub namespace.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Nodes and gpupool pods, as for a push member.
    pub inventory: Inventory,
    /// Last heartbeat of the agent.
    pub heartbeat: Option<Timestamp>,
    /// Identity the agent reports (must match the MemberCluster's `clusterId`).
    pub cluster_id: Option<String>,
    /// When the inventory was read by the agent.
    pub report_time: Option<Timestamp>,
}

/// Reads a pull member's reports, work statuses and heartbeat from the hub.
pub async fn observe(hub: &kube::Client, member: &str) -> kube::Result<Observed> {
    let ns = names::member_namespace(member);
    let lp = ListParams::default();
    let (reports, works, leases) = (
        Api::<MemberReport>::namespaced(hub.clone(), &ns),
        Api::<MemberWork>::namespaced(hub.clone(), &ns),
        Api::<Lease>::namespaced(hub.clone(), &ns),
    );
    let (reports, works, lease) = tokio::try_join!(
        reports.list(&lp),
        works.list(&lp),
        leases.get_opt(names::HEARTBEAT_LEASE),
    )?;
    let current = current_report(&reports.items);
    Ok(Observed {
        inventory: inventory(&current, &works.items),
        heartbeat: lease
            .and_then(|l| l.spec)
            .and_then(|s| s.renew_time)
            .map(|t| t.0),
        cluster_id: current.first().map(|r| r.spec.cluster_id.clone()),
        report_time: current.first().map(|r| r.spec.report_time.0),
    })
}

/// The shards of the newest complete report (older shards left behind are ignored).
pub fn current_report(reports: &[MemberReport]) -> Vec<MemberReport> {
    let Some(newest) = reports.iter().map(|r| r.spec.report_time.0).max() else {
        return Vec::new();
    };
    let mut cur: Vec<MemberReport> = reports
        .iter()
        .filter(|r| r.spec.report_time.0 == newest)
        .cloned()
        .collect();
    cur.sort_by_key(|r| r.spec.shard);
    cur
}

/// The hub's verdict on one of a pull member's reports: accepted when the cluster it reports is
/// the one the member joined as (`member_id`, its `spec.clusterId`), which is what makes the hub
/// use it (a mismatch makes the member `Ready=False`, `IdentityMismatch`). `None` while the
/// member's identity is not known yet.
pub fn report_verdict(
    member_id: Option<&str>,
    report: &MemberReport,
) -> Option<MemberReportStatus> {
    let id = member_id.filter(|id| !id.is_empty())?;
    Some(if report.spec.cluster_id == id {
        MemberReportStatus {
            accepted: Some(true),
            message: None,
        }
    } else {
        MemberReportStatus {
            accepted: Some(false),
            message: Some(format!(
                "reports cluster {}, but this member joined as {id}: not used until they match",
                report.spec.cluster_id
            )),
        }
    })
}

/// Writes [`report_verdict`] into the status of each of `reports` (the current report's shards of
/// the pull member `member`) whose status says otherwise: one status patch per changed verdict.
pub async fn record_verdicts(
    hub: &kube::Client,
    member: &str,
    member_id: Option<&str>,
    reports: &[MemberReport],
) -> kube::Result<()> {
    let api = Api::<MemberReport>::namespaced(hub.clone(), &names::member_namespace(member));
    for r in reports {
        let Some(v) = report_verdict(member_id, r) else {
            continue;
        };
        if r.status.as_ref() == Some(&v) {
            continue;
        }
        // A merge patch: `message: null` clears an earlier refusal's message.
        let patch = serde_json::json!({"status": {"accepted": v.accepted, "message": v.message}});
        api.patch_status(
            &r.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    }
    Ok(())
}

/// The member's inventory from its reports and its works' statuses.
pub fn inventory(reports: &[MemberReport], works: &[MemberWork]) -> Inventory {
    let nodes: BTreeMap<String, NodeInventory> = reports
        .iter()
        .flat_map(|r| r.spec.nodes.iter())
        .map(|n: &NodeReport| {
            (
                n.name.clone(),
                NodeInventory {
                    name: n.name.clone(),
                    ready: n.ready,
                    gpus: n.gpus,
                    topology: n.topology.clone(),
                    busy_uuids: n.busy_gpu_uuids.clone(),
                },
            )
        })
        .collect();
    let mut pods = Vec::new();
    for w in works {
        let reported = reported_pods(w);
        for m in w.spec.manifests.iter().filter(|m| m["kind"] == "Pod") {
            let (_, ns, name) = manifest_key(m);
            if let Some(r) = reported.get(&(ns, name))
                && let Some(p) = pod_from_report(m, r)
            {
                pods.push(p);
            }
        }
    }
    pods.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    Inventory {
        version: reports
            .first()
            .map(|r| r.spec.kubernetes_version.clone())
            .unwrap_or_default(),
        nodes,
        pods,
    }
}

/// The pod as the member has it: the hub's manifest with the reported status. `None` when the
/// pod does not exist in the member (`Missing`).
pub fn pod_from_report(manifest: &Value, r: &PodReport) -> Option<Pod> {
    if r.phase == "Missing" {
        return None;
    }
    let mut pod: Pod = serde_json::from_value(manifest.clone()).ok()?;
    pod.metadata.uid = r.uid.clone();
    if let (Some(spec), Some(node)) = (pod.spec.as_mut(), r.node.as_ref()) {
        spec.node_name = Some(node.clone());
    }
    let container = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| c.name.clone())
        .unwrap_or_default();
    // One container status carrying the metered run: the hub's meter reads the same interval
    // the member's pod had.
    let state = r.run_start.as_ref().map(|start| match &r.run_end {
        Some(end) => ContainerState {
            terminated: Some(ContainerStateTerminated {
                started_at: Some(start.clone()),
                finished_at: Some(end.clone()),
                exit_code: if r.phase == "Failed" { 1 } else { 0 },
                reason: r.reason.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
        None => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(start.clone()),
            }),
            ..Default::default()
        },
    });
    pod.status = Some(PodStatus {
        phase: Some(r.phase.clone()),
        start_time: r.start_time.clone(),
        reason: r.reason.clone(),
        message: r.message.clone(),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if r.ready { "True" } else { "False" }.into(),
            ..Default::default()
        }]),
        container_statuses: state.map(|s| {
            vec![ContainerStatus {
                name: container,
                ready: r.ready,
                state: Some(s),
                ..Default::default()
            }]
        }),
        ..Default::default()
    });
    Some(pod)
}

/// Annotation on a pull member's heartbeat Lease: how the agent finds its own cluster's API
/// server ([`MEMBER_API_OK`], or `unreachable since <time>: <error>`).
pub const MEMBER_API_ANNOTATION: &str = "gpupool.io/member-api";
/// [`MEMBER_API_ANNOTATION`] of an agent that reaches its member's API server.
pub const MEMBER_API_OK: &str = "ok";

/// What the agent says is wrong with its member's API server (`None`: nothing, or an agent that
/// does not say).
pub fn member_api_problem(lease: &k8s_openapi::api::coordination::v1::Lease) -> Option<&str> {
    let v = lease
        .metadata
        .annotations
        .as_ref()?
        .get(MEMBER_API_ANNOTATION)?;
    (v != MEMBER_API_OK).then_some(v.as_str())
}

/// A pull member is alive while its agent renewed the Lease within `grace`.
pub fn alive(heartbeat: Option<Timestamp>, now: Timestamp, grace: Duration) -> bool {
    heartbeat.is_some_and(|h| {
        now.duration_since(h)
            .try_into()
            .is_ok_and(|d: Duration| d <= grace)
            || h > now
    })
}

#[cfg(test)]
mod tests;
