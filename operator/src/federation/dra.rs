//! Dynamic Resource Allocation in a member: whether it can bind exact GPUs through a
//! `resource.k8s.io/v1` ResourceClaim, and creating a pod together with its claim.

use crate::api::BindingMode;
use crate::workloads::{GPU_DEVICE_CLASS, MemberPod, claim_owned_by};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaim, ResourceSlice};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
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
pub async fn create_member_pod(client: &kube::Client, mp: &MemberPod) -> Result<bool, kube::Error> {
    let ns = mp.pod.namespace().unwrap_or_else(|| "default".into());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let (pod, created) = match pods.create(&PostParams::default(), &mp.pod).await {
        Ok(p) => (p, true),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            if mp.claim.is_none() {
                return Ok(false);
            }
            (pods.get(&mp.pod.name_any()).await?, false)
        }
        Err(e) => return Err(e),
    };
    if let Some(claim) = &mp.claim {
        let claims: Api<ResourceClaim> = Api::namespaced(client.clone(), &ns);
        match claims
            .create(&PostParams::default(), &claim_owned_by(claim.clone(), &pod))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(created)
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
        let mut chosen: Vec<String> = ann
            .and_then(|a| a.get(labels::GPU_UUIDS))
            .map(|s| {
                s.split(',')
                    .filter(|u| !u.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
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
}
