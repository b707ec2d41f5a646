//! A hub and N member clusters, started in parallel.

use crate::{ControlPlane, GpuNode, Kwok};
use anyhow::{Context, Result};
use k8s_openapi::api::resource::v1::DeviceClass;
use kube::api::{Api, PostParams};
use std::time::{Duration, Instant};

/// How a simulated member binds GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberKind {
    /// DRA: the `gpu.nvidia.com` DeviceClass is installed, nodes publish ResourceSlices (the
    /// agent's simulation of NVIDIA's driver) and advertise no `nvidia.com/gpu`.
    Dra,
    /// Device plugin only: nodes advertise `nvidia.com/gpu`; no DeviceClass.
    DevicePlugin,
}

/// One member cluster: its control plane and its KWOK.
pub struct Member {
    /// The member's etcd + kube-apiserver (+ kube-scheduler and kube-controller-manager).
    pub cp: ControlPlane,
    /// KWOK faking its nodes (dropped before the control plane).
    pub kwok: Kwok,
    /// How it binds GPUs.
    pub kind: MemberKind,
}

/// A hub plus member clusters. Everything stops on drop.
pub struct Federation {
    /// Members (dropped first).
    pub members: Vec<Member>,
    /// The hub cluster.
    pub hub: ControlPlane,
    /// How long the control planes took to become ready.
    pub startup: Duration,
}

/// The DeviceClass NVIDIA's DRA driver installs (its Helm chart's `gpu.nvidia.com` class).
pub fn nvidia_device_class() -> DeviceClass {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": gpupool::workloads::GPU_DEVICE_CLASS},
        "spec": {"selectors": [{"cel": {"expression":
            "device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'gpu'"}}]},
    }))
    .expect("static DeviceClass")
}

/// Installs the `gpu.nvidia.com` DeviceClass (what installing NVIDIA's DRA driver does).
pub async fn install_device_class(client: &kube::Client) -> Result<()> {
    let api: Api<DeviceClass> = Api::all(client.clone());
    match api
        .create(&PostParams::default(), &nvidia_device_class())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e).context("creating the gpu.nvidia.com DeviceClass"),
    }
}

impl Federation {
    /// Starts a hub and `n` device-plugin members (`member-1`, …); see [`Federation::start_with`].
    pub async fn start(n: usize) -> Result<Self> {
        Self::start_with(&vec![MemberKind::DevicePlugin; n]).await
    }

    /// Starts a hub and one member per entry of `kinds` (`member-1`, …) concurrently, with
    /// KWOK, kube-scheduler and kube-controller-manager in each member, installs gpupool's CRDs
    /// into the hub and the members, and the `gpu.nvidia.com` DeviceClass into DRA members.
    pub async fn start_with(kinds: &[MemberKind]) -> Result<Self> {
        let cidrs = vec!["10.244.0.0/16".to_string(); kinds.len()];
        Self::start_with_pod_cidrs(kinds, &cidrs).await
    }

    /// [`Federation::start_with`], the pods of member `i` getting addresses in `cidrs[i]`.
    pub async fn start_with_pod_cidrs(kinds: &[MemberKind], cidrs: &[String]) -> Result<Self> {
        let t0 = Instant::now();
        let names: Vec<String> = (1..=kinds.len()).map(|i| format!("member-{i}")).collect();
        let (hub, members) = tokio::join!(
            ControlPlane::start("hub"),
            futures::future::join_all(names.iter().map(|n| ControlPlane::start(n)))
        );
        let hub = hub?;
        let mut ms = Vec::new();
        for ((cp, kind), cidr) in members.into_iter().zip(kinds).zip(cidrs) {
            let mut cp = cp?;
            cp.start_scheduling()?;
            let kwok = Kwok::start_with_pod_cidr(&cp, cidr)?;
            ms.push(Member {
                cp,
                kwok,
                kind: *kind,
            });
        }
        let startup = t0.elapsed();
        let mut fed = Federation {
            members: ms,
            hub,
            startup,
        };
        crate::install_crds(&fed.hub).await?;
        for m in &mut fed.members {
            crate::install_crds(&m.cp).await?;
            if m.kind == MemberKind::Dra {
                install_device_class(&m.cp.client().await?).await?;
            }
            m.cp.check_scheduling()?;
        }
        Ok(fed)
    }

    /// Adds GPU nodes to member `i` (0-based) and waits until KWOK reports them Ready. Nodes of
    /// a DRA member advertise no `nvidia.com/gpu` (their GPUs are in ResourceSlices).
    pub async fn add_nodes(&self, i: usize, nodes: &[GpuNode]) -> Result<()> {
        let client = self.members[i].cp.client().await?;
        for n in nodes {
            let mut n = n.clone();
            n.device_plugin = self.members[i].kind == MemberKind::DevicePlugin;
            n.create(&client).await?;
        }
        for n in nodes {
            crate::kwok::wait_node_ready(&client, &n.name, Duration::from_secs(60)).await?;
            crate::kwok::clear_not_ready_taint(&client, &n.name).await?;
        }
        Ok(())
    }
}
