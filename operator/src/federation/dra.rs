//! Dynamic Resource Allocation in a member: whether it can bind exact GPUs through a
//! `resource.k8s.io/v1` ResourceClaim, and creating a pod together with its claim.

use crate::api::BindingMode;
use crate::federation::OrAbsent;
use crate::workloads::{GPU_DEVICE_CLASS, MemberPod, claim_owned_by};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaim, ResourceSlice};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use std::time::{Duration, Instant};

/// How often a member's binding mode is checked again (a DRA driver may be installed later).
pub const RECHECK: Duration = Duration::from_secs(30);

/// The binding mode found in a member and when.
#[derive(Clone, Copy, Debug)]
pub struct BindingProbe {
    /// The mode.
    pub mode: BindingMode,
    /// When it was determined.
    pub at: Instant,
}

/// DRA when the member serves `resource.k8s.io/v1` and has the `gpu.nvidia.com` DeviceClass
/// (installed with NVIDIA's DRA driver), otherwise the device plugin. A member that does not serve
/// the API answers 404 for the DeviceClass, like one without the class.
pub async fn detect(client: &kube::Client) -> Result<BindingMode, kube::Error> {
    let classes: Api<DeviceClass> = Api::all(client.clone());
    Ok(match classes.get_opt(GPU_DEVICE_CLASS).await? {
        Some(_) => BindingMode::Dra,
        None => BindingMode::DevicePlugin,
    })
}

/// Creates the pod unless it exists, then its claim (owned by the pod, so the member's garbage
/// collector deletes it with the pod) unless that exists. Returns whether the pod was created.
///
/// A claim is trusted only when it serves this pod ([`serves`]): owned by the pod's UID and
/// selecting exactly the GPUs the hub chose. Any other claim of the name — one left by an earlier
/// pod of the same name that the garbage collector has not removed yet, or one someone created
/// beforehand to steer gpupool's pod onto other GPUs — is deleted before the pod is created
/// (so the member's scheduler cannot allocate it to the new pod) and replaced. A pod that was
/// already bound through a claim not its own is deleted with it; the next reconcile creates both
/// anew. Until a deleted claim is gone the call fails (a conflict) and is retried.
pub async fn create_member_pod(client: &kube::Client, mp: &MemberPod) -> Result<bool, kube::Error> {
    let ns = mp.pod.namespace().unwrap_or_else(|| "default".into());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let Some(claim) = &mp.claim else {
        return match pods.create(&PostParams::default(), &mp.pod).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let claims: Api<ResourceClaim> = Api::namespaced(client.clone(), &ns);
    let claim_name = claim.name_any();
    let (pod, created) = match pods.get_opt(&mp.pod.name_any()).await? {
        Some(p) => (p, false),
        None => {
            // No pod yet: a claim of that name cannot be this pod's.
            remove_claim(&claims, &claim_name).await?;
            match pods.create(&PostParams::default(), &mp.pod).await {
                Ok(p) => (p, true),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    (pods.get(&mp.pod.name_any()).await?, false)
                }
                Err(e) => return Err(e),
            }
        }
    };
    match claims.get_opt(&claim_name).await? {
        Some(c) if serves(&c, &pod, claim) => return Ok(created),
        Some(c) => {
            tracing::warn!(pod = %pod.name_any(), claim = %claim_name, "a claim not made for this pod carries its claim's name: replacing it");
            let bound = c.status.as_ref().is_some_and(|s| {
                s.reserved_for
                    .iter()
                    .flatten()
                    .any(|r| Some(&r.uid) == pod.metadata.uid.as_ref())
            });
            if bound || pod_scheduled(&pod) {
                // The pod may run on GPUs the hub did not choose: it goes too.
                let dp = DeleteParams {
                    preconditions: pod.uid().map(|uid| Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                pods.delete(&pod.name_any(), &dp).await.or_absent()?;
                remove_claim(&claims, &claim_name).await?;
                return Err(still_there(&claim_name, "its pod used a claim not its own"));
            }
            remove_claim(&claims, &claim_name).await?;
        }
        None => {}
    }
    match claims
        .create(&PostParams::default(), &claim_owned_by(claim.clone(), &pod))
        .await
    {
        Ok(_) => Ok(created),
        Err(kube::Error::Api(e)) if e.code == 409 => Err(still_there(
            &claim_name,
            "created by someone else meanwhile",
        )),
        Err(e) => Err(e),
    }
}

/// Whether `c` is the claim gpupool made for `pod`: controlled by the pod's UID and asking for
/// exactly the devices `wanted` asks for.
pub fn serves(c: &ResourceClaim, pod: &Pod, wanted: &ResourceClaim) -> bool {
    let owned = c.owner_references().iter().any(|o| {
        o.controller == Some(true) && o.kind == "Pod" && Some(&o.uid) == pod.metadata.uid.as_ref()
    });
    owned && requests(c) == requests(wanted)
}

/// A claim's requests as (device class, count, CEL selectors): what decides which devices it
/// may be allocated.
fn requests(c: &ResourceClaim) -> Vec<(String, Option<i64>, Vec<String>)> {
    c.spec
        .devices
        .as_ref()
        .and_then(|d| d.requests.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|r| r.exactly.as_ref())
        .map(|e| {
            let cel = e
                .selectors
                .iter()
                .flatten()
                .filter_map(|s| s.cel.as_ref().map(|c| c.expression.clone()))
                .collect();
            (e.device_class_name.clone(), e.count, cel)
        })
        .collect()
}

fn pod_scheduled(p: &Pod) -> bool {
    p.spec.as_ref().is_some_and(|s| s.node_name.is_some())
}

/// Deletes claim `name` if it exists and waits (up to 5 s) until it is gone.
async fn remove_claim(claims: &Api<ResourceClaim>, name: &str) -> Result<(), kube::Error> {
    let Some(old) = claims.get_opt(name).await? else {
        return Ok(());
    };
    if old.metadata.deletion_timestamp.is_none() {
        let dp = DeleteParams {
            preconditions: old.uid().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        match claims.delete(name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match claims.get_opt(name).await? {
            Some(c) if c.uid() == old.uid() => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => return Ok(()),
        }
    }
    Err(still_there(name, "still being deleted"))
}

/// The error of a claim that is in the way (the reconcile is retried).
fn still_there(name: &str, why: &str) -> kube::Error {
    kube::Error::Api(
        kube::core::Status::failure(&format!("ResourceClaim {name}: {why}"), "Conflict")
            .with_code(409)
            .boxed(),
    )
}

/// A device-plugin pod whose GPUs, as the kubelet assigned them, are not the ones gpupool chose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeletMismatch {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Node.
    pub node: String,
    /// GPUs gpupool chose (`gpupool.io/gpu-uuids`).
    pub chosen: Vec<String>,
    /// GPUs the kubelet gave the pod's containers.
    pub assigned: Vec<String>,
}

/// Compares the GPUs gpupool chose for its device-plugin pods with what the nodes' kubelets
/// assigned (published by the node agents). Pods the kubelet reports nothing for are skipped
/// (not started yet, or no agent reads the kubelet there).
pub fn kubelet_mismatches(
    pods: &[std::sync::Arc<Pod>],
    pod_devices: &std::collections::BTreeMap<String, Vec<crate::api::PodDevices>>,
) -> Vec<KubeletMismatch> {
    use super::labels;
    let mut out = Vec::new();
    for p in pods {
        let ann = p.metadata.annotations.as_ref();
        if ann.and_then(|a| a.get(labels::BINDING)).map(String::as_str)
            == Some(&BindingMode::Dra.to_string())
        {
            continue;
        }
        let Some(node) = crate::workloads::pod_node(p) else {
            continue;
        };
        let Some(devices) = pod_devices.get(node) else {
            continue;
        };
        let ns = p.namespace().unwrap_or_default();
        let name = p.name_any();
        let mut assigned: Vec<String> = devices
            .iter()
            .filter(|d| d.namespace == ns && d.pod == name)
            .flat_map(|d| d.device_ids.iter().cloned())
            .collect();
        if assigned.is_empty() {
            continue;
        }
        let mut chosen = crate::meta::assigned_gpus(&p.metadata);
        chosen.sort();
        assigned.sort();
        assigned.dedup();
        if chosen != assigned {
            out.push(KubeletMismatch {
                namespace: ns,
                pod: name,
                node: node.to_string(),
                chosen,
                assigned,
            });
        }
    }
    out
}

/// A gpupool pod the member's scheduler refused (`PodScheduled=False`, `Unschedulable`): on a DRA
/// member, typically a claim it cannot allocate because something else holds those GPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerRefusal {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// The scheduler's message.
    pub message: String,
}

/// gpupool pods that the member's scheduler currently refuses to schedule.
pub fn scheduler_refusals(pods: &[std::sync::Arc<Pod>]) -> Vec<SchedulerRefusal> {
    pods.iter()
        .filter_map(|p| {
            let c = refusal_condition(p)?;
            Some(SchedulerRefusal {
                namespace: p.namespace().unwrap_or_default(),
                pod: p.name_any(),
                message: c.message.clone().unwrap_or_default(),
            })
        })
        .collect()
}

fn refusal_condition(p: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    if p.spec.as_ref().is_some_and(|s| s.node_name.is_some()) {
        return None;
    }
    p.status.as_ref()?.conditions.as_ref()?.iter().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    })
}

/// Where a pod stands with the member's scheduler, after it refused the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Refused for less than the limit: look again after this long.
    Waiting(Duration),
    /// Refused for at least the limit: withdraw it. The scheduler's message.
    Withdraw(String),
}

/// How long the member's scheduler has refused pod `p` at `now`, against `limit`; `None` when it
/// does not refuse it (bound, or not looked at yet). Counted from the `PodScheduled` condition's
/// `lastTransitionTime`, which the member's scheduler sets when the pod first became
/// unschedulable and keeps while it stays so: the count survives an operator restart, and relies
/// on hub and member clocks agreeing to well within `limit`.
pub fn refusal(p: &Pod, now: k8s_openapi::jiff::Timestamp, limit: Duration) -> Option<Refusal> {
    let c = refusal_condition(p)?;
    let since = c.last_transition_time.as_ref().map_or(now, |t| t.0);
    let refused = Duration::from_secs(now.duration_since(since).as_secs().max(0) as u64);
    Some(match limit.checked_sub(refused) {
        Some(left) if !left.is_zero() => Refusal::Waiting(left),
        _ => Refusal::Withdraw(c.message.clone().unwrap_or_default()),
    })
}

/// GPU devices per node in a member's ResourceSlices of NVIDIA's DRA driver: per node and pool,
/// the slices of the newest pool generation only (a driver replacing its slices publishes a new
/// generation before deleting the old one).
pub fn gpu_devices_per_node(
    slices: &[std::sync::Arc<ResourceSlice>],
) -> std::collections::BTreeMap<String, i64> {
    use std::collections::BTreeMap;
    let mine = || {
        slices
            .iter()
            .filter(|s| s.spec.driver == crate::workloads::NVIDIA_DRA_DRIVER)
            .filter_map(|s| Some((s.spec.node_name.as_deref()?, s)))
    };
    let mut newest: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for (node, s) in mine() {
        let g = newest.entry((node, &s.spec.pool.name)).or_insert(i64::MIN);
        *g = (*g).max(s.spec.pool.generation);
    }
    let mut out = BTreeMap::new();
    for (node, s) in mine() {
        if newest.get(&(node, s.spec.pool.name.as_str())) == Some(&s.spec.pool.generation) {
            *out.entry(node.to_string()).or_default() +=
                s.spec.devices.as_ref().map_or(0, |d| d.len() as i64);
        }
    }
    out
}

/// GPU UUIDs per node that `claims` hold: each allocated device result of NVIDIA's driver,
/// looked up by (pool, device) in the newest generation of `slices`. A device no slice names
/// (its slice is gone or not seen yet) is left out.
pub fn claimed_gpus_per_node(
    slices: &[std::sync::Arc<ResourceSlice>],
    claims: &[std::sync::Arc<ResourceClaim>],
) -> std::collections::BTreeMap<String, Vec<String>> {
    use std::collections::{BTreeMap, HashMap};
    let driver = crate::workloads::NVIDIA_DRA_DRIVER;
    let mut newest: HashMap<&str, i64> = HashMap::new();
    for s in slices.iter().filter(|s| s.spec.driver == driver) {
        let g = newest.entry(&s.spec.pool.name).or_insert(i64::MIN);
        *g = (*g).max(s.spec.pool.generation);
    }
    // (pool, device) → (node, UUID)
    let mut devices: HashMap<(&str, &str), (&str, &str)> = HashMap::new();
    for s in slices.iter().filter(|s| s.spec.driver == driver) {
        if newest.get(s.spec.pool.name.as_str()) != Some(&s.spec.pool.generation) {
            continue;
        }
        let Some(node) = s.spec.node_name.as_deref() else {
            continue;
        };
        for d in s.spec.devices.iter().flatten() {
            let uuid = d
                .attributes
                .as_ref()
                .and_then(|a| a.get("uuid"))
                .and_then(|v| v.string.as_deref());
            if let Some(uuid) = uuid {
                devices.insert((&s.spec.pool.name, &d.name), (node, uuid));
            }
        }
    }
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let results = claims.iter().filter_map(|c| {
        let a = c.status.as_ref()?.allocation.as_ref()?;
        Some(a.devices.as_ref()?.results.iter().flatten())
    });
    for r in results.flatten().filter(|r| r.driver == driver) {
        if let Some((node, uuid)) = devices.get(&(r.pool.as_str(), r.device.as_str())) {
            out.entry(node.to_string())
                .or_default()
                .push(uuid.to_string());
        }
    }
    for v in out.values_mut() {
        v.sort();
        v.dedup();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PodDevices;
    use std::sync::Arc;

    fn pod(name: &str, node: &str, uuids: &str, binding: BindingMode) -> Pod {
        serde_json::from_value::<Pod>(serde_json::json!({
            "metadata": {"name": name, "namespace": "ml", "annotations": {
                "gpupool.io/gpu-uuids": uuids, "gpupool.io/node": node,
                "gpupool.io/gpu-binding": binding.to_string()}},
            "spec": {"containers": [{"name": "c"}]},
        }))
        .unwrap()
    }

    fn refused_pod(bound: bool, since: Option<&str>) -> Pod {
        let mut p = pod("w-0", "n1", "GPU-a", BindingMode::Dra);
        let mut cond = serde_json::json!({"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/2 nodes are available: 1 cannot allocate all claims."});
        if let Some(t) = since {
            cond["lastTransitionTime"] = t.into();
        }
        p.status =
            serde_json::from_value(serde_json::json!({"phase": "Pending", "conditions": [cond]}))
                .unwrap();
        if bound {
            p.spec.as_mut().unwrap().node_name = Some("n1".into());
        }
        p
    }

    #[test]
    fn a_refusal_is_withdrawn_only_after_the_limit() {
        let now: k8s_openapi::jiff::Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let limit = Duration::from_secs(60);
        assert_eq!(
            refusal(
                &refused_pod(false, Some("2026-01-01T00:00:30Z")),
                now,
                limit
            ),
            Some(Refusal::Waiting(Duration::from_secs(30)))
        );
        assert_eq!(
            refusal(
                &refused_pod(false, Some("2026-01-01T00:00:00Z")),
                now,
                limit
            ),
            Some(Refusal::Withdraw(
                "0/2 nodes are available: 1 cannot allocate all claims.".into()
            ))
        );
        // A member clock ahead of the hub's counts as just refused.
        assert_eq!(
            refusal(
                &refused_pod(false, Some("2026-01-01T00:05:00Z")),
                now,
                limit
            ),
            Some(Refusal::Waiting(limit))
        );
        assert_eq!(
            refusal(&refused_pod(false, None), now, limit),
            Some(Refusal::Waiting(limit))
        );
        // Bound pods (the scheduler placed it after all) and pods without the condition are not refused.
        assert_eq!(
            refusal(&refused_pod(true, Some("2026-01-01T00:00:00Z")), now, limit),
            None
        );
        assert_eq!(
            refusal(&pod("w-1", "n1", "GPU-b", BindingMode::Dra), now, limit),
            None
        );
    }

    #[test]
    fn reports_pods_the_kubelet_gave_other_gpus() {
        let devices = [(
            "n1".to_string(),
            vec![
                PodDevices {
                    namespace: "ml".into(),
                    pod: "same".into(),
                    container: "c".into(),
                    device_ids: vec!["GPU-b".into(), "GPU-a".into()],
                },
                PodDevices {
                    namespace: "ml".into(),
                    pod: "moved".into(),
                    container: "c".into(),
                    device_ids: vec!["GPU-c".into(), "GPU-x".into()],
                },
                PodDevices {
                    namespace: "ml".into(),
                    pod: "dra".into(),
                    container: "c".into(),
                    device_ids: vec!["GPU-z".into()],
                },
            ],
        )]
        .into();
        let pods = [
            pod("same", "n1", "GPU-a,GPU-b", BindingMode::DevicePlugin),
            pod("moved", "n1", "GPU-c,GPU-d", BindingMode::DevicePlugin),
            pod("dra", "n1", "GPU-e", BindingMode::Dra),
            pod("not-started", "n1", "GPU-f", BindingMode::DevicePlugin),
        ]
        .map(Arc::new);
        let m = kubelet_mismatches(&pods, &devices);
        assert_eq!(
            m,
            vec![KubeletMismatch {
                namespace: "ml".into(),
                pod: "moved".into(),
                node: "n1".into(),
                chosen: vec!["GPU-c".into(), "GPU-d".into()],
                assigned: vec!["GPU-c".into(), "GPU-x".into()],
            }]
        );
    }

    #[test]
    fn lists_pods_the_member_scheduler_refused() {
        let mut refused = pod("a", "n1", "GPU-a", BindingMode::Dra);
        refused.status = serde_json::from_value(serde_json::json!({"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/2 nodes are available: 2 cannot allocate all claims."}]}))
        .unwrap();
        let mut scheduled = pod("b", "n1", "GPU-b", BindingMode::Dra);
        scheduled.status = serde_json::from_value(serde_json::json!({"conditions": [{
            "type": "PodScheduled", "status": "True"}]}))
        .unwrap();
        let pods = [
            refused,
            scheduled,
            pod("c", "n1", "GPU-c", BindingMode::Dra),
        ]
        .map(Arc::new);
        assert_eq!(
            scheduler_refusals(&pods),
            vec![SchedulerRefusal {
                namespace: "ml".into(),
                pod: "a".into(),
                message: "0/2 nodes are available: 2 cannot allocate all claims.".into(),
            }]
        );
    }

    fn slice(
        node: &str,
        driver: &str,
        pool: &str,
        generation: i64,
        devices: usize,
    ) -> ResourceSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{node}-{driver}-{generation}")},
            "spec": {
                "driver": driver,
                "nodeName": node,
                "pool": {"name": pool, "generation": generation, "resourceSliceCount": 1},
                "devices": (0..devices).map(|i| serde_json::json!({"name": format!("gpu-{i}")})).collect::<Vec<_>>(),
            },
        }))
        .unwrap()
    }

    #[test]
    fn counts_gpu_devices_of_the_newest_pool_generation_per_node() {
        let slices = [
            slice("n1", "gpu.nvidia.com", "n1", 1, 8),
            slice("n1", "gpu.nvidia.com", "n1", 2, 4),
            slice("n1", "nic.example.com", "n1", 5, 2),
            slice("n2", "gpu.nvidia.com", "n2", 1, 8),
            slice("n3", "nic.example.com", "n3", 1, 8),
        ]
        .map(Arc::new);
        assert_eq!(
            gpu_devices_per_node(&slices),
            [("n1".to_string(), 4), ("n2".to_string(), 8)].into()
        );
    }

    fn gpu_slice(node: &str, generation: i64, uuids: &[&str]) -> ResourceSlice {
        let mut s = slice(node, "gpu.nvidia.com", node, generation, 0);
        s.spec.devices = Some(
            uuids
                .iter()
                .enumerate()
                .map(|(i, u)| {
                    serde_json::from_value(serde_json::json!({
                        "name": format!("gpu-{i}"),
                        "attributes": {"uuid": {"string": u}, "index": {"int": i}},
                    }))
                    .unwrap()
                })
                .collect(),
        );
        s
    }

    fn allocated(name: &str, results: &[(&str, &str, &str)]) -> ResourceClaim {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"devices": {"requests": [{"name": "g", "exactly": {"deviceClassName": "gpu.nvidia.com"}}]}},
            "status": {"allocation": {"devices": {"results": results.iter().map(|(driver, pool, device)| serde_json::json!({
                "request": "g", "driver": driver, "pool": pool, "device": device,
            })).collect::<Vec<_>>()}}},
        }))
        .unwrap()
    }

    #[test]
    fn gpus_held_by_outside_claims_are_named_per_node_by_uuid() {
        let slices = [
            gpu_slice("n1", 1, &["OLD-0", "OLD-1"]),
            gpu_slice("n1", 2, &["GPU-a0", "GPU-a1", "GPU-a2"]),
            gpu_slice("n2", 1, &["GPU-b0", "GPU-b1"]),
        ]
        .map(Arc::new);
        let mut pending = allocated("pending", &[]);
        pending.status = None;
        let claims = [
            allocated(
                "two",
                &[
                    ("gpu.nvidia.com", "n1", "gpu-2"),
                    ("gpu.nvidia.com", "n2", "gpu-0"),
                ],
            ),
            allocated("again", &[("gpu.nvidia.com", "n1", "gpu-2")]),
            // Another driver's device, a device no slice names, a claim not allocated yet.
            allocated("nic", &[("nic.example.com", "n1", "gpu-0")]),
            allocated("gone", &[("gpu.nvidia.com", "n3", "gpu-0")]),
            pending,
        ]
        .map(Arc::new);
        assert_eq!(
            claimed_gpus_per_node(&slices, &claims),
            [
                ("n1".to_string(), vec!["GPU-a2".to_string()]),
                ("n2".to_string(), vec!["GPU-b0".to_string()]),
            ]
            .into()
        );
        assert!(claimed_gpus_per_node(&slices, &[]).is_empty());
    }
}
