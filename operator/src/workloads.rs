//! Pure builders for what gpupool creates in a member cluster: one Pod per training worker or
//! inference replica, bound to the chosen node and carrying the chosen GPU UUIDs, plus Services.
//!
//! Why bare Pods rather than Jobs/Deployments: every worker/replica gets its *own* GPU set on its
//! own node, chosen by topology. A Deployment or indexed Job stamps identical pods from one
//! template and leaves node/GPU choice to the member's scheduler, which is exactly the decision
//! gpupool exists to make; gang restarts and re-placement across clusters are driven by the hub.

use crate::api::{EnvVar as ApiEnv, InferenceJob, TrainingJob};
use crate::federation::labels;
use k8s_openapi::api::core::v1::{
    Container, EnvVar, Pod, PodSpec, ResourceRequirements, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// A GPU set chosen for one pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodPlacement {
    /// Rank / replica index.
    pub index: i32,
    /// Node in the member.
    pub node: String,
    /// GPU UUIDs.
    pub gpu_uuids: Vec<String>,
    /// GPU model.
    pub model: String,
    /// Topology score of the set.
    pub score: i64,
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

fn env(list: &[ApiEnv]) -> Vec<EnvVar> {
    list.iter()
        .map(|e| EnvVar {
            name: e.name.clone(),
            value: Some(e.value.clone()),
            ..Default::default()
        })
        .collect()
}

fn gpu_pod(
    name: String,
    ns: &str,
    mut pod_labels: BTreeMap<String, String>,
    mut annotations: BTreeMap<String, String>,
    p: &PodPlacement,
    container: Container,
    dns: Option<(String, String)>,
) -> Pod {
    let (hostname, subdomain) = dns.unzip();
    pod_labels.insert(labels::INDEX.into(), p.index.to_string());
    annotations.insert(labels::GPU_UUIDS.into(), p.gpu_uuids.join(","));
    annotations.insert(labels::GPU_MODEL.into(), p.model.clone());
    annotations.insert(labels::GPU_SCORE.into(), p.score.to_string());
    let gpus = Quantity(p.gpu_uuids.len().to_string());
    let mut container = container;
    let mut envs = container.env.take().unwrap_or_default();
    envs.push(EnvVar {
        name: "NVIDIA_VISIBLE_DEVICES".into(),
        value: Some(p.gpu_uuids.join(",")),
        ..Default::default()
    });
    container.env = Some(envs);
    container.resources = Some(ResourceRequirements {
        limits: Some(BTreeMap::from([(
            "nvidia.com/gpu".to_string(),
            gpus.clone(),
        )])),
        requests: Some(BTreeMap::from([("nvidia.com/gpu".to_string(), gpus)])),
        ..Default::default()
    });
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(ns.to_string()),
            labels: Some(pod_labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(p.node.clone()),
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            hostname,
            subdomain,
            containers: vec![container],
            tolerations: Some(vec![k8s_openapi::api::core::v1::Toleration {
                key: Some("nvidia.com/gpu".into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// Name of the headless Service giving training workers stable DNS names.
pub fn training_service_name(job: &TrainingJob) -> String {
    format!("{}-workers", job.name_any())
}

/// Pod name of a training worker in a gang generation.
pub fn training_pod_name(job: &TrainingJob, generation: i32, rank: i32) -> String {
    format!("{}-g{}-w{}", job.name_any(), generation, rank)
}

/// Pods for a training gang: rank, world size and master address for torchrun-style launchers.
pub fn training_pods(job: &TrainingJob, generation: i32, placements: &[PodPlacement]) -> Vec<Pod> {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();
    let svc = training_service_name(job);
    let world = placements.len();
    let master = format!("{name}-w0.{svc}.{ns}.svc");
    let mut base_labels = owner_labels("TrainingJob", &ns, &name, &uid);
    base_labels.insert(labels::GENERATION.into(), generation.to_string());
    let ann = job.spec.pod_annotations.clone();
    placements
        .iter()
        .map(|p| {
            let mut e = env(&job.spec.env);
            for (k, v) in [
                ("RANK", p.index.to_string()),
                ("NODE_RANK", p.index.to_string()),
                ("WORLD_SIZE", world.to_string()),
                ("MASTER_ADDR", master.clone()),
                ("MASTER_PORT", job.spec.master_port.to_string()),
                ("GPUPOOL_GANG_GENERATION", generation.to_string()),
            ] {
                e.push(EnvVar {
                    name: k.into(),
                    value: Some(v),
                    ..Default::default()
                });
            }
            let c = Container {
                name: "worker".into(),
                image: Some(job.spec.image.clone()),
                command: (!job.spec.command.is_empty()).then(|| job.spec.command.clone()),
                args: (!job.spec.args.is_empty()).then(|| job.spec.args.clone()),
                env: Some(e),
                ports: Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                    container_port: job.spec.master_port,
                    name: Some("rendezvous".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            };
            gpu_pod(
                training_pod_name(job, generation, p.index),
                &ns,
                base_labels.clone(),
                ann.clone(),
                p,
                c,
                Some((format!("{name}-w{}", p.index), svc.clone())),
            )
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
            namespace: Some(ns.clone()),
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

/// Pod name of an inference replica.
pub fn inference_pod_name(job: &InferenceJob, index: i32) -> String {
    format!("{}-r{}", job.name_any(), index)
}

/// Pod for one inference replica.
pub fn inference_pod(job: &InferenceJob, p: &PodPlacement) -> Pod {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();
    let mut e = env(&job.spec.env);
    e.push(EnvVar {
        name: "REPLICA_INDEX".into(),
        value: Some(p.index.to_string()),
        ..Default::default()
    });
    let c = Container {
        name: "server".into(),
        image: Some(job.spec.image.clone()),
        command: (!job.spec.command.is_empty()).then(|| job.spec.command.clone()),
        args: (!job.spec.args.is_empty()).then(|| job.spec.args.clone()),
        env: Some(e),
        ports: Some(vec![k8s_openapi::api::core::v1::ContainerPort {
            container_port: job.spec.port,
            name: Some("http".into()),
            ..Default::default()
        }]),
        ..Default::default()
    };
    gpu_pod(
        inference_pod_name(job, p.index),
        &ns,
        owner_labels("InferenceJob", &ns, &name, &uid),
        job.spec.pod_annotations.clone(),
        p,
        c,
        None,
    )
}

/// Service fronting an inference job's replicas in one member.
pub fn inference_service(job: &InferenceJob) -> Service {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let uid = job.uid().unwrap_or_default();
    Service {
        metadata: ObjectMeta {
            name: Some(job.name_any()),
            namespace: Some(ns.clone()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tj() -> TrainingJob {
        let mut j: TrainingJob = serde_yaml::from_str(
            r#"
apiVersion: gpupool.io/v1alpha1
kind: TrainingJob
metadata: {name: gpt, namespace: ml, uid: 1111-2222, annotations: {"other": "z"}}
spec: {image: img, command: [torchrun], workers: 2, gpusPerWorker: 4, masterPort: 29500, env: [{name: A, value: b}], podAnnotations: {"example.com/x": "y"}}
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

    fn env_of(p: &Pod) -> BTreeMap<String, String> {
        p.spec.as_ref().unwrap().containers[0]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn training_pods_carry_rank_world_master_and_gpus() {
        let j = tj();
        let pods = training_pods(
            &j,
            3,
            &[
                place(0, "n1", &["GPU-a", "GPU-b"]),
                place(1, "n2", &["GPU-c", "GPU-d"]),
            ],
        );
        assert_eq!(pods.len(), 2);
        let p1 = &pods[1];
        assert_eq!(p1.metadata.name.as_deref(), Some("gpt-g3-w1"));
        let spec = p1.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n2"));
        assert_eq!(spec.hostname.as_deref(), Some("gpt-w1"));
        assert_eq!(spec.subdomain.as_deref(), Some("gpt-workers"));
        let e = env_of(p1);
        assert_eq!(e["RANK"], "1");
        assert_eq!(e["WORLD_SIZE"], "2");
        assert_eq!(e["MASTER_ADDR"], "gpt-w0.gpt-workers.ml.svc");
        assert_eq!(e["MASTER_PORT"], "29500");
        assert_eq!(e["NVIDIA_VISIBLE_DEVICES"], "GPU-c,GPU-d");
        assert_eq!(e["A"], "b");
        let lim = spec.containers[0]
            .resources
            .as_ref()
            .unwrap()
            .limits
            .as_ref()
            .unwrap();
        assert_eq!(lim["nvidia.com/gpu"].0, "2");
        let ann = p1.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[labels::GPU_UUIDS], "GPU-c,GPU-d");
        assert_eq!(ann["example.com/x"], "y");
        assert!(!ann.contains_key("other"));
        let l = p1.metadata.labels.as_ref().unwrap();
        assert_eq!(l[labels::JOB_UID], "1111-2222");
        assert_eq!(l[labels::JOB_KIND], "TrainingJob");
        assert_eq!(l[labels::GENERATION], "3");
        let svc = training_service(&j);
        assert_eq!(
            svc.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("None")
        );
        assert_eq!(
            svc.spec.as_ref().unwrap().selector.as_ref().unwrap()[labels::JOB_UID],
            "1111-2222"
        );
    }
}
