//! The observed state of a pull member, fed from its hub namespace: watches on the `MemberReport`
//! shards and the `MemberWork` objects there (the agent's inventory reports and the pod statuses
//! it writes into the works) are turned into the same node, `GpuTopology` and pod changes a push
//! member's watches give, into the same kind of stores. The scheduler's cache, the job
//! controllers' wake-ups, the orphan sweep and the meter cannot tell the two apart.
//!
//! A pod reaches the hub one watch event after the agent reports it: the agent writes the work's
//! status, the hub's watch of the works delivers it.

use super::watch::{
    Change, EndIndex, MemberSink, MemberWatch, PodIndex, index_ends, index_pods, listed,
};
use crate::api::{BindingMode, GpuTopology, GpuTopologyStatus, MemberReport, MemberWork};
use crate::meta::names;
use crate::pull;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What a pull member looks like through push-mode eyes: nodes, topologies and pods by key.
#[derive(Clone, Debug, Default)]
pub struct Derived {
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
    /// Topologies by name (one per node that published one, named after the node).
    pub topologies: BTreeMap<String, GpuTopology>,
    /// gpupool pods by `namespace/name`.
    pub pods: BTreeMap<String, Pod>,
}

/// A node as a push member's API server would show it: allocatable GPUs and readiness (a node
/// the agent reports not ready or cordoned reads as not Ready).
fn node(n: &pull::NodeInventory) -> Node {
    let mut node = Node::default();
    node.metadata.name = Some(n.name.clone());
    node.status = Some(NodeStatus {
        allocatable: Some([("nvidia.com/gpu".to_string(), Quantity(n.gpus.to_string()))].into()),
        conditions: Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: if n.ready { "True" } else { "False" }.into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    node
}

/// The node's `GpuTopology` with the GPUs its node agent saw busy.
fn topology(n: &pull::NodeInventory) -> Option<GpuTopology> {
    let spec = n.topology.clone()?;
    let mut t = GpuTopology::new(&n.name, spec);
    t.status = Some(GpuTopologyStatus {
        gpu_count: t.spec.gpus.len() as i32,
        gpus_in_use: n.busy_uuids.clone(),
        ..Default::default()
    });
    Some(t)
}

/// Nodes and topologies by name from the member's reports (the newest complete set of shards).
pub fn derive_inventory(
    reports: &[MemberReport],
) -> (BTreeMap<String, Node>, BTreeMap<String, GpuTopology>) {
    let inv = pull::inventory(&pull::current_report(reports), &[]);
    (
        inv.nodes
            .values()
            .map(|n| (n.name.clone(), node(n)))
            .collect(),
        inv.nodes
            .values()
            .filter_map(topology)
            .map(|t| (t.name_any(), t))
            .collect(),
    )
}

/// `f` of each node of the current reports, when the member binds with DRA (empty otherwise).
fn dra_nodes<T>(
    reports: &[MemberReport],
    f: impl Fn(&crate::api::NodeReport) -> Option<T>,
) -> BTreeMap<String, T> {
    let current = pull::current_report(reports);
    let dra = current
        .first()
        .is_some_and(|r| r.spec.binding_mode == Some(BindingMode::Dra));
    if !dra {
        return BTreeMap::new();
    }
    current
        .iter()
        .flat_map(|r| r.spec.nodes.iter())
        .filter_map(|n| Some((n.name.clone(), f(n)?)))
        .collect()
}

/// On a DRA member, the GPUs its agent reports per node are the node's GPU devices in its
/// ResourceSlices (or its published GPU count while it has none): they are handed to the
/// scheduler's cache as the slice devices, which cap a DRA member's nodes as they do a push
/// member's. Empty for a device-plugin member (its nodes are capped by the allocatable).
pub fn derive_slice_devices(reports: &[MemberReport]) -> BTreeMap<String, i64> {
    dra_nodes(reports, |n| Some(n.gpus))
}

/// On a DRA member, the GPUs per node its agent reports as allocated to claims gpupool did not
/// make — handed to the scheduler's cache as a push member's claim watch hands them. Empty for a
/// device-plugin member.
pub fn derive_outside_claims(reports: &[MemberReport]) -> BTreeMap<String, Vec<String>> {
    dra_nodes(reports, |n| {
        let held = &n.outside_claimed_gpu_uuids;
        (!held.is_empty()).then(|| held.clone())
    })
}

/// The pods of one work by `namespace/name`, as the member reported them.
pub fn derive_pods(work: &MemberWork) -> BTreeMap<String, Pod> {
    pull::inventory(&[], std::slice::from_ref(work))
        .pods
        .into_iter()
        .map(|p| {
            (
                format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()),
                p,
            )
        })
        .collect()
}

/// The member's view from its reports and its works.
pub fn derive(reports: &[MemberReport], works: &[MemberWork]) -> Derived {
    let (nodes, topologies) = derive_inventory(reports);
    Derived {
        nodes,
        topologies,
        pods: works.iter().flat_map(derive_pods).collect(),
    }
}

/// One kind of derived object: the store the controllers read, and what it holds.
struct Mirror<K: Resource<DynamicType = ()> + Clone + 'static> {
    writer: Writer<K>,
    known: BTreeMap<String, K>,
    /// Whether two versions of an object say the same.
    same: fn(&K, &K) -> bool,
}

impl<K> Mirror<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    fn new(same: fn(&K, &K) -> bool) -> (Store<K>, Mirror<K>) {
        let (store, writer) = reflector::store();
        (
            store,
            Mirror {
                writer,
                known: BTreeMap::new(),
                same,
            },
        )
    }

    /// Brings the store to `next` and reports the changes: the whole list the first time, then
    /// what was added, changed or removed.
    fn update(&mut self, next: BTreeMap<String, K>, first: bool, emit: &mut dyn FnMut(Change<K>)) {
        if first {
            self.writer.apply_watcher_event(&watcher::Event::Init);
            for o in next.values() {
                self.writer
                    .apply_watcher_event(&watcher::Event::InitApply(o.clone()));
            }
            self.writer.apply_watcher_event(&watcher::Event::InitDone);
            emit(Change::Relisting);
            emit(Change::Listed(
                next.values().cloned().map(Arc::new).collect(),
            ));
            self.known = next;
            return;
        }
        for (k, o) in &next {
            if !self.known.get(k).is_some_and(|old| (self.same)(old, o)) {
                self.writer
                    .apply_watcher_event(&watcher::Event::Apply(o.clone()));
                emit(Change::Applied(Arc::new(o.clone())));
            }
        }
        for (k, o) in &self.known {
            if !next.contains_key(k) {
                self.writer
                    .apply_watcher_event(&watcher::Event::Delete(o.clone()));
                emit(Change::Deleted(Arc::new(o.clone())));
            }
        }
        self.known = next;
    }
}

/// Only a completed list or a change is worth a look (not each object of a list).
fn settled<K>(e: &Result<watcher::Event<K>, watcher::Error>) -> bool {
    match e {
        Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => true,
        Ok(_) => false,
        Err(e) => {
            tracing::debug!(error = %e, "pull member watch error (retrying)");
            false
        }
    }
}

/// What one event of the hub watches asks the feed to look at again.
enum Tick {
    /// The reports (nodes and topologies).
    Reports,
    /// One work, by name.
    Work(String),
    /// Every work (after a list).
    AllWorks,
    /// Nothing (an object of a list in progress, or a watch error).
    Nothing,
}

impl MemberWatch {
    /// Starts the feed of pull member `member` from its hub namespace (through `hub`, the hub's
    /// client), reporting to `sink` exactly as [`MemberWatch::start`] does for a push member.
    pub fn start_pull(hub: &kube::Client, member: &str, sink: Arc<dyn MemberSink>) -> MemberWatch {
        let (nodes, node_mirror) = Mirror::<Node>::new(|a, b| a == b);
        let (topologies, topo_mirror) =
            Mirror::<GpuTopology>::new(|a, b| a.spec == b.spec && a.status == b.status);
        let (pods, pod_mirror) = Mirror::<Pod>::new(|a, b| a == b);
        let by_job: PodIndex = Arc::default();
        let ends: EndIndex = Arc::default();
        let mut feed = Feed {
            member: member.to_string(),
            ns: names::member_namespace(member),
            sink,
            node_mirror,
            topo_mirror,
            pod_mirror,
            by_job: by_job.clone(),
            ends: ends.clone(),
            by_work: BTreeMap::new(),
            first: true,
            reports_changed: false,
            all_works: false,
            changed_works: BTreeSet::new(),
        };
        let hub = hub.clone();
        let task = tokio::spawn(async move { feed.run(hub).await });
        MemberWatch::from_parts(nodes, topologies, pods, by_job, ends, vec![task])
    }
}

/// A pull member's feed: its reports and works on the hub, turned into the node, topology and
/// pod changes a push member's watches give.
struct Feed {
    member: String,
    /// The member's hub namespace.
    ns: String,
    sink: Arc<dyn MemberSink>,
    node_mirror: Mirror<Node>,
    topo_mirror: Mirror<GpuTopology>,
    pod_mirror: Mirror<Pod>,
    by_job: PodIndex,
    ends: EndIndex,
    /// Pods per work: a work's change rebuilds only that work's pods.
    by_work: BTreeMap<String, BTreeMap<String, Pod>>,
    /// Nothing sent yet: the first update after both lists is a full one.
    first: bool,
    reports_changed: bool,
    all_works: bool,
    changed_works: BTreeSet<String>,
}

impl Feed {
    /// Watches the member's reports and works and updates the mirrors until the task is dropped.
    async fn run(&mut self, hub: kube::Client) {
        let (reports, rw) = reflector::store();
        let (works, ww) = reflector::store();
        let cfg = watcher::Config::default();
        let r = watcher(
            Api::<MemberReport>::namespaced(hub.clone(), &self.ns),
            cfg.clone(),
        )
        .modify(|o| o.meta_mut().managed_fields = None)
        .default_backoff()
        .reflect(rw)
        .map(|e| {
            if settled(&e) {
                Tick::Reports
            } else {
                Tick::Nothing
            }
        });
        let w = watcher(Api::<MemberWork>::namespaced(hub, &self.ns), cfg)
            .modify(|o| o.meta_mut().managed_fields = None)
            .default_backoff()
            .reflect(ww)
            .map(|e| match e {
                Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => {
                    Tick::Work(o.name_any())
                }
                Ok(watcher::Event::InitDone) => Tick::AllWorks,
                other => {
                    settled(&other);
                    Tick::Nothing
                }
            });
        let mut events = std::pin::pin!(futures::stream::select(r, w));
        while let Some(tick) = events.next().await {
            match tick {
                Tick::Nothing => continue,
                Tick::Reports => self.reports_changed = true,
                Tick::AllWorks => self.all_works = true,
                Tick::Work(name) => {
                    self.changed_works.insert(name);
                }
            }
            if listed(&reports) && listed(&works) {
                self.update(&reports, &works);
            }
        }
    }

    /// Sends what changed since the last update (everything, the first time).
    fn update(&mut self, reports: &Store<MemberReport>, works: &Store<MemberWork>) {
        if self.first || self.reports_changed {
            self.update_inventory(reports);
        }
        if self.first || self.all_works {
            self.by_work = works
                .state()
                .iter()
                .map(|w| (w.name_any(), derive_pods(w)))
                .collect();
            self.changed_works.clear();
        } else if self.changed_works.is_empty() {
            return;
        }
        self.update_pods(works);
        (self.first, self.all_works) = (false, false);
    }

    /// Nodes, topologies and DRA devices from the current reports.
    fn update_inventory(&mut self, reports: &Store<MemberReport>) {
        let reports: Vec<MemberReport> = reports.state().iter().map(|r| (**r).clone()).collect();
        let (n, t) = derive_inventory(&reports);
        let (sink, member, first) = (&self.sink, &self.member, self.first);
        self.node_mirror
            .update(n, first, &mut |c| sink.node(member, c));
        self.topo_mirror
            .update(t, first, &mut |c| sink.topology(member, c));
        sink.slice_devices(member, derive_slice_devices(&reports));
        sink.outside_claims(member, derive_outside_claims(&reports));
        self.reports_changed = false;
    }

    /// The pods of the changed works, then every pod's change.
    fn update_pods(&mut self, works: &Store<MemberWork>) {
        for name in std::mem::take(&mut self.changed_works) {
            match works.get(&ObjectRef::new(&name).within(&self.ns)) {
                Some(w) => self.by_work.insert(name, derive_pods(&w)),
                None => self.by_work.remove(&name),
            };
        }
        let next: BTreeMap<String, Pod> = self
            .by_work
            .values()
            .flat_map(|p| p.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect();
        let (sink, member) = (&self.sink, &self.member);
        let (ends, by_job) = (&self.ends, &self.by_job);
        self.pod_mirror.update(next, self.first, &mut |c| {
            index_ends(ends, &c);
            index_pods(by_job, &c);
            sink.pod(member, c)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{MemberReportSpec, MemberWorkSpec, MemberWorkStatus, NodeReport, PodReport};
    use serde_json::json;

    fn report(gpus: i64, ready: bool, busy: &[&str]) -> MemberReport {
        MemberReport::new(
            "m",
            MemberReportSpec {
                cluster_id: "c".into(),
                kubernetes_version: "v1.36.3".into(),
                agent_version: String::new(),
                shard: 0,
                shards: 1,
                node_count: 1,
                report_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    "2026-01-01T00:00:00Z".parse().unwrap(),
                ),
                binding_mode: None,
                nodes: vec![NodeReport {
                    name: "gpu-0".into(),
                    ready,
                    gpus,
                    topology: Some(crate::api::GpuTopologySpec {
                        node_name: "gpu-0".into(),
                        source: Default::default(),
                        driver_version: None,
                        gpus: vec![],
                        links: vec![],
                    }),
                    busy_gpu_uuids: busy.iter().map(|s| s.to_string()).collect(),
                    outside_claimed_gpu_uuids: vec![],
                }],
            },
        )
    }

    #[test]
    fn a_reported_node_reads_like_a_member_node() {
        let d = derive(&[report(8, true, &["GPU-1"])], &[]);
        let n = &d.nodes["gpu-0"];
        assert_eq!(crate::federation::allocatable_gpus(n), 8);
        assert!(crate::federation::node_ready(n));
        let t = &d.topologies["gpu-0"];
        assert_eq!(t.spec.node_name, "gpu-0");
        assert_eq!(t.status.as_ref().unwrap().gpus_in_use, ["GPU-1"]);
        let cordoned = derive(&[report(8, false, &[])], &[]);
        assert!(!crate::federation::node_ready(&cordoned.nodes["gpu-0"]));
    }

    #[test]
    fn a_dra_members_reported_gpus_are_its_slice_devices() {
        let mut r = report(6, true, &[]);
        assert!(
            derive_slice_devices(std::slice::from_ref(&r)).is_empty(),
            "an agent that does not say binds with the device plugin"
        );
        r.spec.binding_mode = Some(BindingMode::DevicePlugin);
        assert!(derive_slice_devices(std::slice::from_ref(&r)).is_empty());
        r.spec.binding_mode = Some(BindingMode::Dra);
        assert_eq!(
            derive_slice_devices(std::slice::from_ref(&r)),
            BTreeMap::from([("gpu-0".to_string(), 6)])
        );
        // GPUs the agent found allocated to claims gpupool did not make: busy for the hub.
        assert!(derive_outside_claims(std::slice::from_ref(&r)).is_empty());
        r.spec.nodes[0].outside_claimed_gpu_uuids = vec!["GPU-3".into()];
        assert_eq!(
            derive_outside_claims(std::slice::from_ref(&r)),
            BTreeMap::from([("gpu-0".to_string(), vec!["GPU-3".to_string()])])
        );
        r.spec.binding_mode = Some(BindingMode::DevicePlugin);
        assert!(
            derive_outside_claims(&[r]).is_empty(),
            "only a DRA member's"
        );
    }

    #[test]
    fn mirror_reports_the_list_then_only_changes() {
        let (store, mut m) = Mirror::<Node>::new(|a, b| a == b);
        let mut seen = Vec::new();
        let mut emit = |c: Change<Node>| {
            seen.push(match c {
                Change::Applied(n) => format!("+{}", n.name_any()),
                Change::Deleted(n) => format!("-{}", n.name_any()),
                Change::Relisting => "relist".into(),
                Change::Listed(all) => format!("listed {}", all.len()),
            })
        };
        let a = derive(&[report(8, true, &[])], &[]).nodes;
        m.update(a.clone(), true, &mut emit);
        assert!(listed(&store));
        m.update(a.clone(), false, &mut emit);
        let b = derive(&[report(4, true, &[])], &[]).nodes;
        m.update(b, false, &mut emit);
        m.update(BTreeMap::new(), false, &mut emit);
        assert_eq!(seen, ["relist", "listed 1", "+gpu-0", "-gpu-0"]);
        assert!(store.state().is_empty());
    }

    #[test]
    fn pods_come_from_the_works_with_their_reported_state() {
        let manifest = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "gpt-0", "namespace": "ml",
                         "labels": {"gpupool.io/job-uid": "u1"}},
            "spec": {"containers": [{"name": "w", "image": "i"}]}
        });
        let mut w = MemberWork::new(
            "tj-ml-gpt",
            MemberWorkSpec {
                job_ref: None,
                manifests: vec![manifest],
            },
        );
        assert!(
            derive(&[], std::slice::from_ref(&w)).pods.is_empty(),
            "not reported yet"
        );
        w.status = Some(MemberWorkStatus {
            pods: vec![PodReport {
                namespace: "ml".into(),
                name: "gpt-0".into(),
                phase: "Running".into(),
                node: Some("gpu-0".into()),
                ..Default::default()
            }],
            ..Default::default()
        });
        let d = derive(&[], &[w]);
        let p = &d.pods["ml/gpt-0"];
        assert_eq!(crate::workloads::pod_node(p), Some("gpu-0"));
        assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
    }
}
