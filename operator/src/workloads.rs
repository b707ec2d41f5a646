//! Pure builders for what gpupool creates in a member cluster: one Pod per training worker or
//! inference replica, made from the job's pod template, bound to the chosen node and GPUs, plus
//! the Services and (on DRA members) one ResourceClaim per pod naming the exact GPUs.
//!
//! Why bare Pods rather than Jobs/Deployments: every worker/replica gets its *own* GPU set on its
//! own node, chosen by topology. A Deployment or indexed Job stamps identical pods from one
//! template and leaves node/GPU choice to the member's scheduler, which is exactly the decision
//! gpupool exists to make; gang restarts and re-placement across clusters are driven by the hub.
//!
//! What gpupool adds to the user's template (and nothing else):
//! - labels `gpupool.io/*` and `app.kubernetes.io/managed-by`, annotations `gpupool.io/gpu-*`
//!   (they win over the template's on a clash);
//! - the GPU binding of the containers the job's `gpuContainers` names (default: the **first**
//!   container; on device-plugin members only the first named one, as the kubelet hands a device
//!   to one container only): on [`BindingMode::Dra`] members a pod-level claim
//!   `gpupool-gpus` referencing a ResourceClaim that selects the chosen GPUs by UUID (the DRA
//!   driver then sets the visible devices); on [`BindingMode::DevicePlugin`] members
//!   `nvidia.com/gpu: k` in requests and limits plus `NVIDIA_VISIBLE_DEVICES`;
//! - node pinning: a required node affinity on `metadata.name` (DRA: the member's scheduler must
//!   allocate the claim, so the pod is not pre-bound) or `spec.nodeName` (device plugin);
//! - the environment `RANK`, `NODE_RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`,
//!   `GPUPOOL_GANG_GENERATION` (training) or `REPLICA_INDEX` (inference) in every container;
//! - a toleration for the `nvidia.com/gpu` NoSchedule taint; `restartPolicy: Never` for training
//!   (gang restarts are the hub's) and when unset for inference (a failed replica is re-placed);
//!   `automountServiceAccountToken: false` and no ServiceAccount; `hostname`/`subdomain` for
//!   training workers; the rendezvous / serving port on the first container when it does not
//!   list it;
//! - the namespace: everything of hub namespace `ns` goes into its tenant namespace
//!   ([`tenant::namespace_name`]), with the Secrets and ConfigMaps the template references
//!   ([`MemberObjects::config`]) copied there from the hub.
//!
//! CEL on the CRDs rejects templates that would clash with these (`nodeName`, `nvidia.com/gpu`
//! requests, reserved environment names, the claim name `gpupool-gpus`) or reach beyond the
//! tenant sandbox (host namespaces, paths and ports, privileged, added capabilities, a
//! ServiceAccount, another scheduler, system priority classes).

use crate::api::{BindingMode, GPU_CLAIM_NAME, InferenceJob, RESERVED_RESOURCES, TrainingJob};
use crate::meta::labels;
use crate::tenant;
use k8s_openapi::api::core::v1::{
    Affinity, ContainerPort, EnvVar, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, Pod, PodResourceClaim, PodSpec, PodTemplateSpec,
    ResourceClaim as ContainerClaim, ResourceRequirements, Service, ServicePort, ServiceSpec,
    Toleration,
};
use k8s_openapi::api::resource::v1::ResourceClaim;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// Driver name and DeviceClass of NVIDIA's DRA driver (k8s-dra-driver-gpu); the attribute
/// `uuid` lives under this domain.
pub const NVIDIA_DRA_DRIVER: &str = "gpu.nvidia.com";
/// DeviceClass the claims use.
pub const GPU_DEVICE_CLASS: &str = "gpu.nvidia.com";
/// Name of the request inside each claim.
pub const CLAIM_REQUEST: &str = "gpus";

/// A GPU set chosen for one pod (a placement decision; defined with the placement code).
pub use crate::placement::PodPlacement;

/// One pod to create in a member and, on DRA members, the claim it references. Create the pod
/// first, then the claim owned by it ([`claim_owned_by`]): the member's scheduler waits for the
/// claim, and the garbage collector deletes the claim with the pod.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberPod {
    /// The pod.
    pub pod: Pod,
    /// Its ResourceClaim (DRA binding only).
    pub claim: Option<ResourceClaim>,
}

/// Everything gpupool creates in one member for a job's placements there.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct MemberObjects {
    /// Services (the training gang's headless Service, the inference Service).
    pub services: Vec<Service>,
    /// Pods with their claims.
    pub pods: Vec<MemberPod>,
    /// The job's hub namespace (its pods run in [`tenant::namespace_name`] of it).
    pub hub_namespace: String,
    /// The Secrets and ConfigMaps of the hub namespace the job's template references: copied
    /// into the tenant namespace with the pods.
    pub config: tenant::ConfigRefs,
}

/// The node a gpupool pod is (or will be) on: `spec.nodeName` once bound, else the node gpupool
/// chose (`gpupool.io/node` annotation; DRA pods wait for the member's scheduler to bind them).
pub fn pod_node(p: &Pod) -> Option<&str> {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .or_else(|| {
            p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(labels::NODE))
                .map(String::as_str)
        })
}

fn owner_labels(kind: &str, ns: &str, name: &str, uid: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::MANAGED_BY.to_string(), labels::MANAGER.to_string()),
        (labels::JOB_KIND.to_string(), kind.to_string()),
        (labels::JOB_NAMESPACE.to_string(), ns.to_string()),
        (labels::JOB_NAME.to_string(), name.to_string()),
        (labels::JOB_UID.to_string(), uid.to_string()),
    ])
}

fn env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        ..Default::default()
    }
}

/// The CEL selector that matches exactly `uuids` among the driver's devices.
pub fn uuid_selector(uuids: &[String]) -> String {
    let list: Vec<String> = uuids
        .iter()
        .map(|u| format!("\"{}\"", u.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!(
        "device.attributes[\"{NVIDIA_DRA_DRIVER}\"].uuid in [{}]",
        list.join(", ")
    )
}

/// Name of the ResourceClaim of a pod.
pub fn claim_name(pod_name: &str) -> String {
    format!("{pod_name}-gpus")
}

/// The ResourceClaim naming exactly the pod's GPUs.
fn gpu_claim(pod: &Pod, p: &PodPlacement) -> ResourceClaim {
    let name = claim_name(&pod.name_any());
    let mut l = pod.metadata.labels.clone().unwrap_or_default();
    l.retain(|k, _| k.starts_with("gpupool.io/") || k == labels::MANAGED_BY);
    let claim = serde_json::json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {
            "name": name,
            "namespace": pod.namespace(),
            "labels": l,
            "annotations": { labels::GPU_UUIDS: p.gpu_uuids.join(","), labels::NODE: p.node },
        },
        "spec": { "devices": { "requests": [{
            "name": CLAIM_REQUEST,
            "exactly": {
                "deviceClassName": GPU_DEVICE_CLASS,
                "allocationMode": "ExactCount",
                "count": p.gpu_uuids.len(),
                "selectors": [{ "cel": { "expression": uuid_selector(&p.gpu_uuids) } }],
            },
        }]}},
    });
    serde_json::from_value(claim).expect("static claim shape is a valid ResourceClaim")
}

/// The claim with its pod as controller owner (so it is deleted with the pod).
pub fn claim_owned_by(mut claim: ResourceClaim, pod: &Pod) -> ResourceClaim {
    claim.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: pod.name_any(),
            uid: pod.uid().unwrap_or_default(),
            controller: Some(true),
            // Setting blockOwnerDeletion needs update on pods/finalizers where the
            // OwnerReferencesPermissionEnforcement admission plugin runs; the garbage collector
            // deletes the claim with the pod without it.
            block_owner_deletion: None,
        },
    ]);
    claim
}

/// Requires `node` in every node-selector term (terms are ORed; adding a term would widen them).
fn pin_by_affinity(spec: &mut PodSpec, node: &str) {
    let req = NodeSelectorRequirement {
        key: "metadata.name".into(),
        operator: "In".into(),
        values: Some(vec![node.to_string()]),
    };
    let aff = spec.affinity.get_or_insert_with(Affinity::default);
    let na = aff.node_affinity.get_or_insert_with(NodeAffinity::default);
    let sel = na
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(|| NodeSelector {
            node_selector_terms: vec![],
        });
    if sel.node_selector_terms.is_empty() {
        sel.node_selector_terms.push(NodeSelectorTerm::default());
    }
    for t in &mut sel.node_selector_terms {
        t.match_fields
            .get_or_insert_with(Vec::new)
            .push(req.clone());
    }
}

/// Indexes of the containers that get the GPUs: those named in `names` (the job's
/// `gpuContainers`, in template order), or the first container when none is named. Names that are
/// no container are skipped (CEL rejects them at admission); when none is left, the first
/// container gets them.
pub fn gpu_container_indexes(spec: &PodSpec, names: &[String]) -> Vec<usize> {
    let named: Vec<usize> = spec
        .containers
        .iter()
        .enumerate()
        .filter(|(_, c)| names.contains(&c.name))
        .map(|(i, _)| i)
        .collect();
    if named.is_empty() { vec![0] } else { named }
}

/// Builds one pod from the template, in the tenant namespace `ns`: gpupool's metadata, the
/// environment `extra_env` in every container, the GPU binding of the containers named in
/// `gpu_containers` (default: the first), `port` (named `port_name`) on the first container when
/// it does not list it, the node pinning and the sandbox settings.
#[allow(clippy::too_many_arguments)]
fn gpu_pod(
    name: String,
    ns: &str,
    template: &PodTemplateSpec,
    gpu_containers: &[String],
    owner: BTreeMap<String, String>,
    p: &PodPlacement,
    mode: BindingMode,
    extra_env: &[EnvVar],
    port: (i32, &str),
) -> MemberPod {
    let metadata = pod_metadata(&name, ns, template, owner, p, mode);
    let mut spec = template.spec.clone().unwrap_or_default();
    if spec.containers.is_empty() {
        // CEL requires a container; an empty template only reaches here from code.
        spec.containers.push(Default::default());
    }
    set_env(&mut spec, extra_env);
    bind_gpus(&mut spec, gpu_containers, p, mode);
    expose_port(&mut spec, port);
    pin_to_node(&mut spec, &name, p, mode);
    sandbox(&mut spec);
    let pod = Pod {
        metadata,
        spec: Some(spec),
        status: None,
    };
    let claim = (mode == BindingMode::Dra).then(|| gpu_claim(&pod, p));
    MemberPod { pod, claim }
}

/// The template's labels and annotations with gpupool's over them (owner, index, GPUs, node,
/// binding).
fn pod_metadata(
    name: &str,
    ns: &str,
    template: &PodTemplateSpec,
    owner: BTreeMap<String, String>,
    p: &PodPlacement,
    mode: BindingMode,
) -> ObjectMeta {
    let tm = template.metadata.as_ref();
    let mut pod_labels = tm.and_then(|m| m.labels.clone()).unwrap_or_default();
    pod_labels.extend(owner);
    pod_labels.insert(labels::INDEX.into(), p.index.to_string());
    let mut annotations = tm.and_then(|m| m.annotations.clone()).unwrap_or_default();
    annotations.insert(labels::GPU_UUIDS.into(), p.gpu_uuids.join(","));
    annotations.insert(labels::GPU_MODEL.into(), p.model.clone());
    annotations.insert(labels::GPU_SCORE.into(), p.score.to_string());
    annotations.insert(labels::NODE.into(), p.node.clone());
    annotations.insert(labels::BINDING.into(), mode.to_string());
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(ns.to_string()),
        labels: Some(pod_labels),
        annotations: Some(annotations),
        ..Default::default()
    }
}

/// `extra_env` in every container, replacing a variable of the same name.
fn set_env(spec: &mut PodSpec, extra_env: &[EnvVar]) {
    for c in &mut spec.containers {
        let e = c.env.get_or_insert_with(Vec::new);
        e.retain(|v| !extra_env.iter().any(|x| x.name == v.name));
        e.extend(extra_env.iter().cloned());
    }
}

/// The GPU binding of the containers named in `gpu_containers` (default: the first): the pod's
/// claim on DRA members; `nvidia.com/gpu` and `NVIDIA_VISIBLE_DEVICES` on the first of them on
/// device-plugin members (the kubelet hands a device to one container only).
fn bind_gpus(spec: &mut PodSpec, gpu_containers: &[String], p: &PodPlacement, mode: BindingMode) {
    let gpus = Quantity(p.gpu_uuids.len().to_string());
    let mut targets = gpu_container_indexes(spec, gpu_containers);
    if mode == BindingMode::DevicePlugin {
        targets.truncate(1);
    }
    for i in targets {
        let c = &mut spec.containers[i];
        let res = c
            .resources
            .get_or_insert_with(ResourceRequirements::default);
        match mode {
            BindingMode::Dra => {
                res.claims
                    .get_or_insert_with(Vec::new)
                    .push(ContainerClaim {
                        name: GPU_CLAIM_NAME.into(),
                        request: None,
                    });
            }
            BindingMode::DevicePlugin => {
                for r in RESERVED_RESOURCES {
                    res.limits
                        .get_or_insert_with(BTreeMap::new)
                        .insert((*r).into(), gpus.clone());
                    res.requests
                        .get_or_insert_with(BTreeMap::new)
                        .insert((*r).into(), gpus.clone());
                }
                c.env
                    .get_or_insert_with(Vec::new)
                    .push(env("NVIDIA_VISIBLE_DEVICES", p.gpu_uuids.join(",")));
            }
        }
    }
}

/// `port` (number, name) on the first container unless it lists that number; the name only when
/// no other port has it.
fn expose_port(spec: &mut PodSpec, port: (i32, &str)) {
    let ports = spec.containers[0].ports.get_or_insert_with(Vec::new);
    if !ports.iter().any(|cp| cp.container_port == port.0) {
        let named = ports.iter().any(|cp| cp.name.as_deref() == Some(port.1));
        ports.push(ContainerPort {
            container_port: port.0,
            name: (!named).then(|| port.1.to_string()),
            ..Default::default()
        });
    }
}

/// Node pinning: node affinity and the pod's claim reference on DRA members (the member's
/// scheduler allocates the claim), `nodeName` on device-plugin members.
fn pin_to_node(spec: &mut PodSpec, pod_name: &str, p: &PodPlacement, mode: BindingMode) {
    match mode {
        BindingMode::Dra => {
            pin_by_affinity(spec, &p.node);
            spec.resource_claims
                .get_or_insert_with(Vec::new)
                .push(PodResourceClaim {
                    name: GPU_CLAIM_NAME.into(),
                    resource_claim_name: Some(claim_name(pod_name)),
                    resource_claim_template_name: None,
                });
        }
        BindingMode::DevicePlugin => spec.node_name = Some(p.node.clone()),
    }
}

/// What every gpupool pod gets: the GPU taint's toleration, `restartPolicy: Never` unless set,
/// and no ServiceAccount token (the hub's admission refuses a template that asks for one).
fn sandbox(spec: &mut PodSpec) {
    spec.tolerations
        .get_or_insert_with(Vec::new)
        .push(Toleration {
            key: Some("nvidia.com/gpu".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        });
    spec.restart_policy.get_or_insert_with(|| "Never".into());
    spec.automount_service_account_token = Some(false);
    spec.service_account_name = None;
    spec.service_account = None;
}

/// Name of the headless Service giving training workers stable DNS names.
pub fn training_service_name(job: &TrainingJob) -> String {
    format!("{}-workers", job.name_any())
}

/// Pod name of a training worker in a gang generation.
pub fn training_pod_name(job: &TrainingJob, generation: i32, rank: i32) -> String {
    format!("{}-g{}-w{}", job.name_any(), generation, rank)
}

/// Pods (and claims) for a training gang: rank, world size and master address for
/// torchrun-style launchers.
pub fn training_pods(
    job: &TrainingJob,
    generation: i32,
    placements: &[PodPlacement],
    mode: BindingMode,
) -> Vec<MemberPod> {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let member_ns = tenant::namespace_name(&ns);
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();
    let svc = training_service_name(job);
    let world = placements.len();
    // A gang of one rendezvouses with itself: no Service (one write less per job) is needed.
    let master = if world == 1 {
        "127.0.0.1".to_string()
    } else {
        format!("{name}-w0.{svc}.{member_ns}.svc")
    };
    let mut base_labels = owner_labels("TrainingJob", &ns, &name, &uid);
    base_labels.insert(labels::GENERATION.into(), generation.to_string());
    placements
        .iter()
        .map(|p| {
            let e = [
                env("RANK", p.index.to_string()),
                env("NODE_RANK", p.index.to_string()),
                env("WORLD_SIZE", world.to_string()),
                env("MASTER_ADDR", master.clone()),
                env("MASTER_PORT", job.spec.master_port.to_string()),
                env("GPUPOOL_GANG_GENERATION", generation.to_string()),
            ];
            let mut mp = gpu_pod(
                training_pod_name(job, generation, p.index),
                &member_ns,
                &job.spec.template,
                &job.spec.gpu_containers,
                base_labels.clone(),
                p,
                mode,
                &e,
                (job.spec.master_port, "rendezvous"),
            );
            let spec = mp.pod.spec.as_mut().expect("built with a spec");
            spec.hostname = Some(format!("{name}-w{}", p.index));
            spec.subdomain = Some(svc.clone());
            spec.restart_policy = Some("Never".into());
            mp
        })
        .collect()
}

/// Headless Service for a training gang (DNS for `MASTER_ADDR`).
pub fn training_service(job: &TrainingJob) -> Service {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let uid = job.uid().unwrap_or_default();
    Service {
        metadata: ObjectMeta {
            name: Some(training_service_name(job)),
            namespace: Some(tenant::namespace_name(&ns)),
            labels: Some(owner_labels("TrainingJob", &ns, &job.name_any(), &uid)),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(BTreeMap::from([(labels::JOB_UID.to_string(), uid)])),
            ports: Some(vec![ServicePort {
                name: Some("rendezvous".into()),
                port: job.spec.master_port,
                ..Default::default()
            }]),
            publish_not_ready_addresses: Some(true),
            ..Default::default()
        }),
        status: None,
    }
}

/// Everything to create in the gang's member: the headless Service (for gangs of more than one
/// worker: a single worker's `MASTER_ADDR` is itself), the pods and their claims.
pub fn training_objects(
    job: &TrainingJob,
    generation: i32,
    placements: &[PodPlacement],
    mode: BindingMode,
) -> MemberObjects {
    MemberObjects {
        services: if placements.len() > 1 {
            vec![training_service(job)]
        } else {
            Vec::new()
        },
        pods: training_pods(job, generation, placements, mode),
        hub_namespace: job.namespace().unwrap_or_else(|| "default".into()),
        config: template_config(&job.spec.template),
    }
}

/// Label on an inference replica's pod: the revision of the rolled spec fields it runs
/// ([`crate::rollout::revision`]).
pub const REVISION_LABEL: &str = "gpupool.io/revision";

/// Pod name of an inference replica running `revision` (replicas placed before revisions were
/// recorded have none and keep their old name).
pub fn inference_pod_name(job: &InferenceJob, index: i32, revision: &str) -> String {
    if revision.is_empty() {
        format!("{}-r{}", job.name_any(), index)
    } else {
        format!("{}-r{}-{revision}", job.name_any(), index)
    }
}

/// Revision an inference replica's pod runs (empty for pods from before revisions).
pub fn pod_revision(p: &Pod) -> &str {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION_LABEL))
        .map_or("", String::as_str)
}

/// Pod (and claim) for one inference replica, running the job's current revision.
pub fn inference_pod(job: &InferenceJob, p: &PodPlacement, mode: BindingMode) -> MemberPod {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();
    let revision = crate::rollout::revision(&job.spec);
    let mut owner = owner_labels("InferenceJob", &ns, &name, &uid);
    owner.insert(REVISION_LABEL.into(), revision.clone());
    gpu_pod(
        inference_pod_name(job, p.index, &revision),
        &tenant::namespace_name(&ns),
        &job.spec.template,
        &job.spec.gpu_containers,
        owner,
        p,
        mode,
        &[env("REPLICA_INDEX", p.index.to_string())],
        (job.spec.port, "http"),
    )
}

/// Service fronting an inference job's replicas in one member.
pub fn inference_service(job: &InferenceJob) -> Service {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let uid = job.uid().unwrap_or_default();
    Service {
        metadata: ObjectMeta {
            name: Some(job.name_any()),
            namespace: Some(tenant::namespace_name(&ns)),
            labels: Some(owner_labels("InferenceJob", &ns, &job.name_any(), &uid)),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(labels::JOB_UID.to_string(), uid)])),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: job.spec.port,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// Everything to create in one member for the inference replicas placed there.
pub fn inference_objects(
    job: &InferenceJob,
    placements: &[PodPlacement],
    mode: BindingMode,
) -> MemberObjects {
    MemberObjects {
        services: vec![inference_service(job)],
        pods: placements
            .iter()
            .map(|p| inference_pod(job, p, mode))
            .collect(),
        hub_namespace: job.namespace().unwrap_or_else(|| "default".into()),
        config: template_config(&job.spec.template),
    }
}

/// The Secrets and ConfigMaps a job's template references.
fn template_config(template: &PodTemplateSpec) -> tenant::ConfigRefs {
    template
        .spec
        .as_ref()
        .map(tenant::config_refs)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tj() -> TrainingJob {
        let mut j: TrainingJob = serde_yaml::from_str(
            r#"
apiVersion: gpupool.io/v1alpha1
kind: TrainingJob
metadata: {name: gpt, namespace: ml, annotations: {"other": "z"}}
spec:
  workers: 2
  gpusPerWorker: 4
  masterPort: 29500
  template:
    metadata:
      labels: {team: nlp, "gpupool.io/job-uid": "forged"}
      annotations: {"example.com/x": "y"}
    spec:
      restartPolicy: OnFailure
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
            - matchExpressions: [{key: zone, operator: In, values: [a]}]
            - matchExpressions: [{key: zone, operator: In, values: [b]}]
      volumes:
      - {name: shm, emptyDir: {medium: Memory, sizeLimit: 16Gi}}
      containers:
      - name: trainer
        image: nvcr.io/nvidia/pytorch:24.05-py3
        command: [torchrun]
        env: [{name: A, value: b}]
        resources: {requests: {cpu: "8", memory: 64Gi}, limits: {memory: 64Gi}}
        volumeMounts: [{name: shm, mountPath: /dev/shm}]
      - name: logs
        image: fluent/fluent-bit:3.0
"#,
        )
        .unwrap();
        j.metadata.uid = Some("1111-2222".into());
        j
    }

    fn place(i: i32, node: &str, uuids: &[&str]) -> PodPlacement {
        PodPlacement {
            index: i,
            node: node.into(),
            gpu_uuids: uuids.iter().map(|s| s.to_string()).collect(),
            model: "H100".into(),
            score: 7,
        }
    }

    fn env_of(p: &Pod, c: usize) -> BTreeMap<String, String> {
        p.spec.as_ref().unwrap().containers[c]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    }

    fn placements() -> Vec<PodPlacement> {
        vec![
            place(0, "n1", &["GPU-a", "GPU-b"]),
            place(1, "n2", &["GPU-c", "GPU-d"]),
        ]
    }

    #[test]
    fn training_pods_keep_the_template_and_add_rank_world_master() {
        let j = tj();
        for mode in [BindingMode::Dra, BindingMode::DevicePlugin] {
            let objs = training_objects(&j, 3, &placements(), mode);
            assert_eq!(objs.pods.len(), 2);
            assert_eq!(objs.services.len(), 1);
            let p1 = &objs.pods[1].pod;
            assert_eq!(p1.metadata.name.as_deref(), Some("gpt-g3-w1"));
            // In the tenant namespace of the hub namespace, which the labels keep.
            assert_eq!(p1.metadata.namespace.as_deref(), Some("gpupool-ml"));
            assert_eq!(p1.labels()[labels::JOB_NAMESPACE], "ml");
            assert_eq!(
                objs.services[0].metadata.namespace.as_deref(),
                Some("gpupool-ml")
            );
            assert_eq!(objs.hub_namespace, "ml");
            let spec = p1.spec.as_ref().unwrap();
            assert_eq!(spec.automount_service_account_token, Some(false));
            assert_eq!(spec.hostname.as_deref(), Some("gpt-w1"));
            assert_eq!(spec.subdomain.as_deref(), Some("gpt-workers"));
            assert_eq!(
                spec.restart_policy.as_deref(),
                Some("Never"),
                "training forces Never"
            );
            // The template's volumes, mounts, resources and second container survive.
            assert_eq!(spec.volumes.as_ref().unwrap()[0].name, "shm");
            assert_eq!(spec.containers.len(), 2);
            assert_eq!(spec.containers[1].name, "logs");
            let c0 = &spec.containers[0];
            assert_eq!(c0.volume_mounts.as_ref().unwrap()[0].mount_path, "/dev/shm");
            let res = c0.resources.as_ref().unwrap();
            assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "8");
            for c in 0..2 {
                let e = env_of(p1, c);
                assert_eq!(e["RANK"], "1");
                assert_eq!(e["WORLD_SIZE"], "2");
                assert_eq!(e["MASTER_ADDR"], "gpt-w0.gpt-workers.gpupool-ml.svc");
                assert_eq!(e["MASTER_PORT"], "29500");
            }
            assert_eq!(env_of(p1, 0)["A"], "b");
            let ann = p1.metadata.annotations.as_ref().unwrap();
            assert_eq!(ann[labels::GPU_UUIDS], "GPU-c,GPU-d");
            assert_eq!(ann[labels::NODE], "n2");
            assert_eq!(ann["example.com/x"], "y");
            assert!(
                !ann.contains_key("other"),
                "hub object annotations stay on the hub"
            );
            let l = p1.metadata.labels.as_ref().unwrap();
            assert_eq!(l[labels::JOB_UID], "1111-2222", "gpupool's labels win");
            assert_eq!(l["team"], "nlp");
            assert_eq!(l[labels::GENERATION], "3");
            assert_eq!(pod_node(p1), Some("n2"));
            // The GPU binding is on the first container only.
            assert!(spec.containers[1].resources.is_none());
        }
    }

    #[test]
    fn a_single_worker_needs_no_service_and_rendezvouses_with_itself() {
        let j = tj();
        let objs = training_objects(
            &j,
            0,
            &[place(0, "n1", &["GPU-a", "GPU-b"])],
            BindingMode::DevicePlugin,
        );
        assert!(objs.services.is_empty());
        let e = env_of(&objs.pods[0].pod, 0);
        assert_eq!(e["MASTER_ADDR"], "127.0.0.1");
        assert_eq!(e["WORLD_SIZE"], "1");
    }

    #[test]
    fn dra_binding_uses_a_claim_and_node_affinity() {
        let j = tj();
        let objs = training_objects(&j, 0, &placements(), BindingMode::Dra);
        let mp = &objs.pods[1];
        let spec = mp.pod.spec.as_ref().unwrap();
        assert_eq!(
            spec.node_name, None,
            "the member's scheduler binds DRA pods"
        );
        let terms = &spec
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 2, "the user's terms are kept");
        for t in terms {
            let f = &t.match_fields.as_ref().unwrap()[0];
            assert_eq!(
                (f.key.as_str(), f.operator.as_str()),
                ("metadata.name", "In")
            );
            assert_eq!(f.values.as_deref(), Some(&["n2".to_string()][..]));
            assert!(t.match_expressions.is_some());
        }
        let rc = &spec.resource_claims.as_ref().unwrap()[0];
        assert_eq!(rc.name, GPU_CLAIM_NAME);
        assert_eq!(rc.resource_claim_name.as_deref(), Some("gpt-g0-w1-gpus"));
        let c0 = &spec.containers[0];
        let res = c0.resources.as_ref().unwrap();
        assert_eq!(res.claims.as_ref().unwrap()[0].name, GPU_CLAIM_NAME);
        assert!(!res.limits.as_ref().unwrap().contains_key("nvidia.com/gpu"));
        assert!(!env_of(&mp.pod, 0).contains_key("NVIDIA_VISIBLE_DEVICES"));

        let claim = mp.claim.as_ref().unwrap();
        assert_eq!(claim.metadata.name.as_deref(), Some("gpt-g0-w1-gpus"));
        assert_eq!(claim.metadata.namespace.as_deref(), Some("gpupool-ml"));
        assert_eq!(
            claim.metadata.labels.as_ref().unwrap()[labels::JOB_UID],
            "1111-2222"
        );
        assert!(!claim.metadata.labels.as_ref().unwrap().contains_key("team"));
        let v = serde_json::to_value(claim).unwrap();
        let req = &v["spec"]["devices"]["requests"][0];
        assert_eq!(req["name"], CLAIM_REQUEST);
        assert_eq!(req["exactly"]["deviceClassName"], "gpu.nvidia.com");
        assert_eq!(req["exactly"]["allocationMode"], "ExactCount");
        assert_eq!(req["exactly"]["count"], 2);
        assert_eq!(
            req["exactly"]["selectors"][0]["cel"]["expression"],
            r#"device.attributes["gpu.nvidia.com"].uuid in ["GPU-c", "GPU-d"]"#
        );
        let pod = {
            let mut p = mp.pod.clone();
            p.metadata.uid = Some("pod-uid".into());
            p
        };
        let owned = claim_owned_by(claim.clone(), &pod);
        let o = &owned.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (o.kind.as_str(), o.uid.as_str(), o.controller),
            ("Pod", "pod-uid", Some(true))
        );
    }

    /// Per container of `p`: whether it references the pod's GPU claim.
    fn claims_of(p: &Pod) -> Vec<bool> {
        p.spec
            .as_ref()
            .unwrap()
            .containers
            .iter()
            .map(|c| {
                c.resources
                    .as_ref()
                    .and_then(|r| r.claims.as_ref())
                    .is_some_and(|cl| cl.iter().any(|x| x.name == GPU_CLAIM_NAME))
            })
            .collect()
    }

    /// The `nvidia.com/gpu` limit of container `c` of `p`.
    fn gpu_limit(p: &Pod, c: usize) -> Option<String> {
        p.spec.as_ref().unwrap().containers[c]
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("nvidia.com/gpu"))
            .map(|q| q.0.clone())
    }

    /// The training job with `gpuContainers` set to `names`.
    fn tj_with_gpu_containers(names: &[&str]) -> TrainingJob {
        let mut j = tj();
        j.spec.gpu_containers = names.iter().map(|n| n.to_string()).collect();
        j
    }

    #[test]
    fn the_first_container_gets_the_gpus_by_default() {
        let pods = training_objects(&tj(), 0, &placements(), BindingMode::Dra).pods;
        assert_eq!(claims_of(&pods[0].pod), vec![true, false]);
    }

    #[test]
    fn a_named_container_gets_the_gpus_on_both_bindings() {
        let j = tj_with_gpu_containers(&["logs"]);
        let pods = training_objects(&j, 0, &placements(), BindingMode::Dra).pods;
        assert_eq!(claims_of(&pods[0].pod), vec![false, true]);
        let pods = training_objects(&j, 0, &placements(), BindingMode::DevicePlugin).pods;
        assert_eq!(gpu_limit(&pods[0].pod, 0), None);
        assert_eq!(gpu_limit(&pods[0].pod, 1).as_deref(), Some("2"));
        assert_eq!(
            env_of(&pods[0].pod, 1)["NVIDIA_VISIBLE_DEVICES"],
            "GPU-a,GPU-b"
        );
        assert!(!env_of(&pods[0].pod, 0).contains_key("NVIDIA_VISIBLE_DEVICES"));
    }

    #[test]
    fn several_named_containers_share_one_claim_but_one_device_plugin_request() {
        // On DRA both share the one claim; the device plugin gives the devices to the first
        // listed container only (in template order).
        let j = tj_with_gpu_containers(&["logs", "trainer"]);
        let pods = training_objects(&j, 0, &placements(), BindingMode::Dra).pods;
        assert_eq!(claims_of(&pods[1].pod), vec![true, true]);
        let claims = pods[1].pod.spec.as_ref().unwrap().resource_claims.as_ref();
        assert_eq!(claims.unwrap().len(), 1);
        let pods = training_objects(&j, 0, &placements(), BindingMode::DevicePlugin).pods;
        assert_eq!(gpu_limit(&pods[0].pod, 0).as_deref(), Some("2"));
        assert_eq!(gpu_limit(&pods[0].pod, 1), None);
    }

    #[test]
    fn the_rendezvous_port_stays_on_the_first_container() {
        let j = tj_with_gpu_containers(&["logs"]);
        let pods = training_objects(&j, 0, &placements(), BindingMode::Dra).pods;
        let spec = pods[0].pod.spec.as_ref().unwrap();
        let ports = spec.containers[0].ports.as_ref().unwrap();
        assert!(ports.iter().any(|p| p.container_port == 29500));
        assert!(spec.containers[1].ports.is_none());
    }

    #[test]
    fn inference_replicas_choose_gpu_containers_the_same_way() {
        let mut ij: InferenceJob = serde_yaml::from_str(
            r#"
apiVersion: gpupool.io/v1alpha1
kind: InferenceJob
metadata: {name: llm, namespace: ml, uid: u-1}
spec:
  replicas: 1
  gpusPerReplica: 1
  gpuContainers: [server]
  template:
    spec:
      containers:
      - {name: proxy, image: envoyproxy/envoy:v1.30}
      - {name: server, image: vllm/vllm-openai:v0.6.0}
"#,
        )
        .unwrap();
        let p = inference_pod(&ij, &place(0, "n1", &["GPU-a"]), BindingMode::Dra);
        assert_eq!(claims_of(&p.pod), vec![false, true]);
        // An unknown name (CEL refuses it at admission) falls back to the first container.
        ij.spec.gpu_containers = vec!["nope".into()];
        let p = inference_pod(&ij, &place(0, "n1", &["GPU-a"]), BindingMode::Dra);
        assert_eq!(claims_of(&p.pod), vec![true, false]);
    }

    #[test]
    fn referenced_secrets_and_config_maps_travel_with_the_objects() {
        let mut j = tj();
        let spec = j.spec.template.spec.as_mut().unwrap();
        spec.containers[0].env_from = Some(vec![
            serde_json::from_value(serde_json::json!({"secretRef": {"name": "hf-token"}})).unwrap(),
        ]);
        let objs = training_objects(&j, 0, &placements(), BindingMode::Dra);
        assert_eq!(
            objs.config.secrets.iter().collect::<Vec<_>>(),
            vec!["hf-token"]
        );
        assert!(objs.config.config_maps.is_empty());
    }

    #[test]
    fn device_plugin_binding_requests_nvidia_gpu_and_binds_the_node() {
        let j = tj();
        let objs = training_objects(&j, 0, &placements(), BindingMode::DevicePlugin);
        let mp = &objs.pods[0];
        assert!(mp.claim.is_none());
        let spec = mp.pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert!(spec.resource_claims.is_none());
        let res = spec.containers[0].resources.as_ref().unwrap();
        assert_eq!(res.limits.as_ref().unwrap()["nvidia.com/gpu"].0, "2");
        assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "64Gi");
        assert_eq!(res.requests.as_ref().unwrap()["nvidia.com/gpu"].0, "2");
        assert_eq!(env_of(&mp.pod, 0)["NVIDIA_VISIBLE_DEVICES"], "GPU-a,GPU-b");
        let svc = &objs.services[0];
        assert_eq!(
            svc.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("None")
        );
        assert_eq!(
            svc.spec.as_ref().unwrap().selector.as_ref().unwrap()[labels::JOB_UID],
            "1111-2222"
        );
    }

    #[test]
    fn inference_pods_keep_probes_and_default_to_never_restart() {
        let mut j: InferenceJob = serde_yaml::from_str(
            r#"
apiVersion: gpupool.io/v1alpha1
kind: InferenceJob
metadata: {name: llm, namespace: serve}
spec:
  replicas: 1
  gpusPerReplica: 1
  port: 8000
  template:
    spec:
      containers:
      - name: server
        image: vllm/vllm-openai:v0.6.0
        ports: [{containerPort: 8000, name: api}]
        readinessProbe: {httpGet: {path: /health, port: 8000}}
"#,
        )
        .unwrap();
        j.metadata.uid = Some("u".into());
        let objs = inference_objects(&j, &[place(4, "n9", &["GPU-z"])], BindingMode::Dra);
        let p = &objs.pods[0].pod;
        let rev = crate::rollout::revision(&j.spec);
        assert_eq!(p.metadata.name, Some(format!("llm-r4-{rev}")));
        assert_eq!(pod_revision(p), rev);
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let c = &spec.containers[0];
        assert!(c.readiness_probe.is_some());
        assert_eq!(
            c.ports.as_ref().unwrap().len(),
            1,
            "port 8000 already listed"
        );
        assert_eq!(env_of(p, 0)["REPLICA_INDEX"], "4");
        assert_eq!(
            objs.services[0]
                .spec
                .as_ref()
                .unwrap()
                .ports
                .as_ref()
                .unwrap()[0]
                .port,
            8000
        );
    }

    #[test]
    fn uuid_selector_quotes_every_uuid() {
        assert_eq!(
            uuid_selector(&["GPU-1".into(), "GPU-\"x".into()]),
            r#"device.attributes["gpu.nvidia.com"].uuid in ["GPU-1", "GPU-\"x"]"#
        );
    }
}
