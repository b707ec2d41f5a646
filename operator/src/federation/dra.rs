//! Dynamic Resource Allocation in a member: whether it can bind exact GPUs through a
//! `resource.k8s.io/v1` ResourceClaim, and creating a pod together with its claim.

use crate::api::BindingMode;
use crate::workloads::{GPU_DEVICE_CLASS, MemberPod, claim_owned_by};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaim};
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
