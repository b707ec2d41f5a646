//! A hub and N member clusters, started in parallel.

use crate::{ControlPlane, GpuNode, Kwok};
use anyhow::Result;
use std::time::{Duration, Instant};

/// One member cluster: its control plane and its KWOK.
pub struct Member {
    /// The member's etcd + kube-apiserver.
    pub cp: ControlPlane,
    /// KWOK faking its nodes (dropped before the control plane).
    pub kwok: Kwok,
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

impl Federation {
    /// Starts a hub and `n` members (`member-1`, …) concurrently, KWOK in each member, and
    /// installs gpupool's CRDs into the hub and the members.
    pub async fn start(n: usize) -> Result<Self> {
        let t0 = Instant::now();
        let names: Vec<String> = (1..=n).map(|i| format!("member-{i}")).collect();
        let (hub, members) = tokio::join!(
            ControlPlane::start("hub"),
            futures::future::join_all(names.iter().map(|n| ControlPlane::start(n)))
        );
        let hub = hub?;
        let mut ms = Vec::new();
        for cp in members {
            let cp = cp?;
            let kwok = Kwok::start(&cp)?;
            ms.push(Member { cp, kwok });
        }
        let startup = t0.elapsed();
        let fed = Federation {
            members: ms,
            hub,
            startup,
        };
        crate::install_crds(&fed.hub).await?;
        for m in &fed.members {
            crate::install_crds(&m.cp).await?;
        }
        Ok(fed)
    }

    /// Adds GPU nodes to member `i` (0-based) and waits until KWOK reports them Ready.
    pub async fn add_nodes(&self, i: usize, nodes: &[GpuNode]) -> Result<()> {
        let client = self.members[i].cp.client().await?;
        for n in nodes {
            n.create(&client).await?;
        }
        for n in nodes {
            crate::kwok::wait_node_ready(&client, &n.name, Duration::from_secs(60)).await?;
        }
        Ok(())
    }
}
