//! Watches on a member cluster: nodes, `GpuTopology` objects and the pods gpupool created there,
//! each mirrored into a reflector store. Pod changes wake the hub job they belong to at once.

use super::Inventory;
use super::inventory::inventory_from;
use super::labels;
use crate::api::GpuTopology;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Called with an object a watch saw change.
pub type OnChange<K> = Arc<dyn Fn(&K) + Send + Sync>;

/// Called with a gpupool pod that changed in the member.
pub type PodChanged = OnChange<Pod>;

/// The three watches of one member; aborted on drop.
pub struct MemberWatch {
    nodes: Store<Node>,
    topologies: Store<GpuTopology>,
    pods: Store<Pod>,
    tasks: Vec<JoinHandle<()>>,
}

fn spawn_reflector<K>(
    api: Api<K>,
    cfg: watcher::Config,
    on_change: Option<OnChange<K>>,
) -> (Store<K>, JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, cfg))
        .default_backoff()
        .applied_objects();
    let task = tokio::spawn(async move {
        stream
            .for_each(|ev| {
                if let (Ok(obj), Some(f)) = (&ev, &on_change) {
                    f(obj);
                }
                futures::future::ready(())
            })
            .await;
    });
    (store, task)
}

impl MemberWatch {
    /// Starts watching the member `client` talks to.
    pub fn start(client: &kube::Client, on_pod: PodChanged) -> MemberWatch {
        let (nodes, t1) = spawn_reflector(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            None,
        );
        let (topologies, t2) = spawn_reflector(
            Api::<GpuTopology>::all(client.clone()),
            watcher::Config::default(),
            None,
        );
        let (pods, t3) = spawn_reflector(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels(labels::SELECTOR),
            Some(on_pod),
        );
        MemberWatch {
            nodes,
            topologies,
            pods,
            tasks: vec![t1, t2, t3],
        }
    }

    /// Whether nodes and pods have been listed at least once (topologies are optional: a member
    /// without the CRD simply has none).
    pub fn synced(&self) -> bool {
        let ready = |f: futures::future::BoxFuture<'_, bool>| f.now_or_never().unwrap_or(false);
        ready(self.nodes.wait_until_ready().map(|r| r.is_ok()).boxed())
            && ready(self.pods.wait_until_ready().map(|r| r.is_ok()).boxed())
    }

    /// The member's inventory as the watches see it now.
    pub fn inventory(&self, version: String) -> Inventory {
        let nodes: Vec<Node> = self.nodes.state().iter().map(|n| (**n).clone()).collect();
        let topologies: Vec<GpuTopology> = self
            .topologies
            .state()
            .iter()
            .map(|t| (**t).clone())
            .collect();
        let mut pods: Vec<Pod> = self.pods.state().iter().map(|p| (**p).clone()).collect();
        pods.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        inventory_from(version, nodes, topologies, pods)
    }
}

impl Drop for MemberWatch {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
