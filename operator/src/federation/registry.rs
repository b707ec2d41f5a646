//! The operator's shared view of all member clusters.

use crate::api::MemberClusterSpec;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::RwLock;

/// What the operator knows about one member.
#[derive(Clone)]
pub struct MemberView {
    /// MemberCluster name.
    pub name: String,
    /// Its spec.
    pub spec: MemberClusterSpec,
    /// The way to the member (push: a client of its API server, None until the kubeconfig could
    /// be read; pull: its work objects on the hub).
    pub client: Option<super::MemberLink>,
    /// `resourceVersion` of the Secret the client was built from.
    pub secret_version: Option<String>,
    /// Last probe succeeded.
    pub reachable: bool,
    /// Usable for placement (reachable, or unreachable for less than the grace period).
    pub ready: bool,
    /// Last successful probe.
    pub last_heartbeat: Option<k8s_openapi::jiff::Timestamp>,
    /// Kubernetes version the member's API server reported.
    pub version: String,
    /// When orphaned workloads were last swept from this member (reset on every reconnect).
    pub last_sweep: Option<std::time::Instant>,
    /// Watches on the member's nodes, topologies and gpupool pods (restarted with the client).
    pub watch: Option<Arc<super::MemberWatch>>,
    /// How GPUs are bound in this member, once probed ([`super::dra::detect`]).
    pub binding: Option<super::dra::BindingProbe>,
    /// Kubelet mismatches already reported by an Event (each is reported once).
    pub kubelet_mismatches: Vec<super::dra::KubeletMismatch>,
    /// Pods (`namespace/name`) whose refusal by the member's scheduler was already reported.
    pub refused_pods: std::collections::BTreeSet<String>,
    /// The bound token of a push member's kubeconfig, renewed by the operator
    /// ([`super::credential`]); `None` for other credentials.
    pub credential: Option<super::credential::BoundToken>,
    /// Why the last renewal failed (reported once per distinct failure).
    pub credential_error: Option<String>,
}

impl MemberView {
    /// The binding mode to use for new pods (the device plugin until DRA was detected).
    pub fn binding_mode(&self) -> crate::api::BindingMode {
        self.binding.map(|b| b.mode).unwrap_or_default()
    }

    /// Whether new work may be placed here (a pull member only once a pool admin approved it;
    /// none while it is drained).
    pub fn schedulable(&self) -> bool {
        self.ready
            && self.reachable
            && self.spec.schedulable
            && !self.spec.drain
            && self.spec.approved()
            && self.client.is_some()
    }
}

/// Shared map of member name → view.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<RwLock<BTreeMap<String, MemberView>>>,
}

impl Registry {
    /// A copy of every member's view, by name.
    pub async fn snapshot(&self) -> BTreeMap<String, MemberView> {
        self.inner.read().await.clone()
    }

    /// One member's view.
    pub async fn get(&self, name: &str) -> Option<MemberView> {
        self.inner.read().await.get(name).cloned()
    }

    /// One member's pod watch, without copying its view (hot paths that only read pods).
    pub async fn watch(&self, name: &str) -> Option<Arc<super::MemberWatch>> {
        self.inner.read().await.get(name)?.watch.clone()
    }

    /// Inserts or replaces a member's view.
    pub async fn put(&self, view: MemberView) {
        self.inner.write().await.insert(view.name.clone(), view);
    }

    /// Forgets a member.
    pub async fn remove(&self, name: &str) -> Option<MemberView> {
        self.inner.write().await.remove(name)
    }
}
