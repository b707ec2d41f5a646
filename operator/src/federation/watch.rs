//! Watches on a member cluster: nodes, `GpuTopology` objects, the pods gpupool created there and
//! the ResourceSlices of NVIDIA's DRA driver (GPU devices per node on DRA members),
//! each mirrored into a reflector store (pods and nodes trimmed to what gpupool reads, see
//! [`trim_pod`]) and reported, change by change,
//! to a [`MemberSink`] (the scheduler's cache and the job controllers' wake-ups). Pods are also
//! indexed by the hub job they belong to, so a controller reads a job's pods without scanning.
//!
//! The pod watch also keeps, per pod, **when the hub first saw it end** (a terminal phase, or every
//! container terminated under `restartPolicy: Never`): the meter never pays a pod past that
//! instant, whatever `finishedAt` the member writes later. Entries live as long as the pod exists
//! in the member (dropped on delete and on relist), so memory is bounded by the member's pods.
//! It also keeps when it first saw each pod that appeared after its first list: the meter pays a
//! pod from that instant (less the clock-skew slack) at the earliest, so a member's copy of a
//! placed pod cannot claim a start before the hub saw it. The meter persists the ends it pays
//! against in the usage records, so an operator restart does not forget them.

use super::labels;
use crate::api::GpuTopology;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use tokio::task::JoinHandle;

/// One change seen by a member watch.
#[derive(Debug)]
pub enum Change<K> {
    /// Added or modified.
    Applied(Arc<K>),
    /// Deleted.
    Deleted(Arc<K>),
    /// The watch restarted and is listing again; a [`Change::Listed`] follows.
    Relisting,
    /// Everything that exists now (after the initial list or a relist).
    Listed(Vec<Arc<K>>),
}

/// Receives the changes of a member's watches (called on the watch tasks; keep it short).
pub trait MemberSink: Send + Sync {
    /// A node changed.
    fn node(&self, member: &str, change: Change<Node>);
    /// A `GpuTopology` changed.
    fn topology(&self, member: &str, change: Change<GpuTopology>);
    /// A gpupool pod changed.
    fn pod(&self, member: &str, change: Change<Pod>);
    /// The ResourceSlices changed: GPU devices of NVIDIA's DRA driver per node, all of them.
    fn slice_devices(&self, member: &str, per_node: std::collections::BTreeMap<String, i64>);
    /// The ResourceClaims outside gpupool or the ResourceSlices changed: the GPU UUIDs per node
    /// that claims gpupool did not make hold, all of them (a pull member's: as its agent
    /// reports them).
    fn outside_claims(
        &self,
        _member: &str,
        _per_node: std::collections::BTreeMap<String, Vec<String>>,
    ) {
    }
}

/// A job's pods are few (its workers or replicas): a list, not a hash set, per job.
pub(super) type PodIndex = Arc<RwLock<HashMap<String, Vec<ObjectRef<Pod>>>>>;

/// The store key of a pod, without the version and UID `ObjectRef::from_obj` copies (the
/// store's equality ignores them).
fn pod_ref(p: &Pod) -> ObjectRef<Pod> {
    let r = ObjectRef::new(&p.name_any());
    match p.metadata.namespace.as_deref() {
        Some(ns) => r.within(ns),
        None => r,
    }
}

fn index_one(idx: &mut HashMap<String, Vec<ObjectRef<Pod>>>, uid: String, p: &Pod) {
    let r = pod_ref(p);
    let refs = idx.entry(uid).or_default();
    if !refs.contains(&r) {
        refs.push(r);
    }
}
/// When the watch saw each pod: first (after its initial list) and ended.
#[derive(Debug, Default)]
pub(super) struct Sightings {
    /// Pod UID → unix second the watch first saw the pod ended.
    ends: HashMap<String, i64>,
    /// Pod UID → unix second the watch first saw the pod, for pods that appeared after the
    /// watch's first list (those listed then may be older than the watch: unknown).
    first: HashMap<String, i64>,
    /// Whether the first list is done.
    listed: bool,
}

/// The watch's [`Sightings`], shared with the meter.
pub(super) type EndIndex = Arc<RwLock<Sightings>>;

/// Whether a pod has ended for good: phase `Succeeded`/`Failed` (the kubelet never leaves them),
/// or, under `restartPolicy: Never`, every container terminated (nothing restarts it).
pub fn pod_ended(p: &Pod) -> bool {
    let Some(st) = p.status.as_ref() else {
        return false;
    };
    if matches!(st.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return true;
    }
    let never = p.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) == Some("Never");
    let cs = st.container_statuses.as_deref().unwrap_or_default();
    never
        && !cs.is_empty()
        && cs.iter().all(|c| {
            c.state
                .as_ref()
                .is_some_and(|s| s.terminated.is_some() && s.running.is_none())
        })
}

impl Sightings {
    fn note(&mut self, p: &Pod, now: i64) {
        let Some(uid) = p.metadata.uid.as_ref() else {
            return;
        };
        if self.listed {
            self.first.entry(uid.clone()).or_insert(now);
        }
        if pod_ended(p) {
            self.ends.entry(uid.clone()).or_insert(now);
        }
    }
}

/// Keeps the record of when the watch first saw each pod (and saw it end) up to date with one
/// change.
pub(super) fn index_ends(ends: &EndIndex, c: &Change<Pod>) {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let mut seen = ends.write().expect("pod end index lock");
    match c {
        Change::Applied(p) => seen.note(p, now),
        Change::Deleted(p) => {
            if let Some(uid) = p.metadata.uid.as_ref() {
                seen.ends.remove(uid);
                seen.first.remove(uid);
            }
        }
        Change::Relisting => {}
        Change::Listed(all) => {
            let live: HashSet<&str> = all
                .iter()
                .filter_map(|p| p.metadata.uid.as_deref())
                .collect();
            seen.ends.retain(|uid, _| live.contains(uid.as_str()));
            seen.first.retain(|uid, _| live.contains(uid.as_str()));
            for p in all {
                seen.note(p, now);
            }
            seen.listed = true;
        }
    }
}

/// Keeps the index of pods by hub job up to date with one change.
pub(super) fn index_pods(idx: &PodIndex, c: &Change<Pod>) {
    let mut idx = idx.write().expect("pod index lock");
    match c {
        Change::Applied(p) => {
            if let Some(u) = job_uid(p) {
                index_one(&mut idx, u, p);
            }
        }
        Change::Deleted(p) => {
            if let Some(u) = job_uid(p)
                && let Some(set) = idx.get_mut(&u)
            {
                let r = pod_ref(p);
                set.retain(|x| *x != r);
                if set.is_empty() {
                    idx.remove(&u);
                }
            }
        }
        Change::Relisting => {}
        Change::Listed(all) => {
            idx.clear();
            for p in all {
                if let Some(u) = job_uid(p) {
                    index_one(&mut idx, u, p);
                }
            }
        }
    }
}

/// Whether the pod watch is listing again (between [`Change::Relisting`] and
/// [`Change::Listed`]): its store then holds what was known before the watch broke, and a pod
/// created in the gap may be missing from it.
pub(super) type Relisting = Arc<AtomicBool>;

/// Keeps [`Relisting`] up to date with one change of the pod watch.
pub(super) fn note_listing(flag: &Relisting, c: &Change<Pod>) {
    match c {
        Change::Relisting => flag.store(true, Ordering::Release),
        Change::Listed(_) => flag.store(false, Ordering::Release),
        Change::Applied(_) | Change::Deleted(_) => {}
    }
}

/// The watches of one member; aborted on drop.
pub struct MemberWatch {
    nodes: Store<Node>,
    topologies: Store<GpuTopology>,
    pods: Store<Pod>,
    by_job: PodIndex,
    ends: EndIndex,
    relisting: Relisting,
    tasks: Vec<JoinHandle<()>>,
}

fn job_uid(p: &Pod) -> Option<String> {
    p.labels().get(labels::JOB_UID).cloned()
}

/// Keeps of a member pod only what gpupool reads (names, labels, owners, gpupool's annotations
/// — the GPUs it holds, the node chosen — the node it runs on, and the status fields that say
/// whether and since when it runs: phase, conditions, start time, container states), so that
/// tens of thousands of pods fit in the store: containers, volumes, images and IPs are dropped
/// before the object enters it.
pub fn trim_pod(p: &mut Pod) {
    let m = &mut p.metadata;
    m.managed_fields = None;
    if let Some(a) = m.annotations.as_mut() {
        a.retain(|k, _| k.starts_with("gpupool.io/"));
    }
    // Only the node, the scheduler and the restart policy (whether a pod with all containers terminated has
    // ended for good, see `pod_ended`) are read from the spec (a `Container` alone is over 2 KiB
    // in memory; the GPUs a gpupool pod holds are in its annotations).
    if let Some(spec) = p.spec.take() {
        p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: spec.node_name,
            restart_policy: spec.restart_policy,
            // Whether a pod no scheduler looks at names a scheduler of its own.
            scheduler_name: spec.scheduler_name,
            ..Default::default()
        });
    }
    if let Some(st) = p.status.as_mut() {
        st.host_ip = None;
        st.host_ips = None;
        st.pod_ip = None;
        st.pod_ips = None;
        st.qos_class = None;
        st.ephemeral_container_statuses = None;
        st.nominated_node_name = None;
        st.resize = None;
        st.resource_claim_statuses = None;
        st.allocated_resources = None;
        st.extended_resource_claim_status = None;
        st.node_allocatable_resource_claim_statuses = None;
        // Of the conditions only `Ready` (a serving replica counts as ready) and a refusal by the
        // member's scheduler (`PodScheduled=False`, whose message is reported) are read.
        if let Some(cs) = st.conditions.as_mut() {
            cs.retain(|c| c.type_ == "Ready" || (c.type_ == "PodScheduled" && c.status == "False"));
            for c in cs.iter_mut() {
                c.last_probe_time = None;
                if c.type_ == "Ready" {
                    c.message = None;
                    c.reason = None;
                }
            }
        }
        for cs in st
            .container_statuses
            .iter_mut()
            .chain(st.init_container_statuses.iter_mut())
            .flatten()
        {
            cs.image = String::new();
            cs.image_id = String::new();
            cs.container_id = None;
            cs.resources = None;
            cs.allocated_resources = None;
            cs.volume_mounts = None;
            cs.user = None;
        }
    }
}

/// Keeps of a member node what gpupool reads (name, labels, whether it is schedulable, its
/// allocatable resources and conditions); drops its image list, addresses, system info and
/// annotations, which on a real node outweigh the rest many times.
pub fn trim_node(n: &mut Node) {
    n.metadata.managed_fields = None;
    n.metadata.annotations = None;
    if let Some(st) = n.status.as_mut() {
        st.images = None;
        st.addresses = None;
        st.node_info = None;
        st.volumes_attached = None;
        st.volumes_in_use = None;
        st.daemon_endpoints = None;
        st.capacity = None;
        for c in st.conditions.iter_mut().flatten() {
            c.message = None;
        }
    }
}

/// Drops what no reader of a stored object uses from its metadata: managed fields and
/// `kubectl apply`'s copy of the whole object in an annotation.
pub fn trim_meta(m: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    m.managed_fields = None;
    if let Some(a) = m.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Whether a reflector store has received its first complete list (without waiting for it).
pub fn listed<K>(s: &Store<K>) -> bool
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    s.wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}

/// What a member's DRA watches have seen: its ResourceSlices and the ResourceClaims gpupool did
/// not make.
#[derive(Default)]
struct DraSeen {
    slices: Vec<Arc<ResourceSlice>>,
    claims: Vec<Arc<ResourceClaim>>,
}

impl DraSeen {
    fn outside(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        super::dra::claimed_gpus_per_node(&self.slices, &self.claims)
    }
}

fn drop_managed_fields<K: kube::Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}

fn spawn_reflector<K>(
    api: Api<K>,
    cfg: watcher::Config,
    trim: fn(&mut K),
    mut on_change: impl FnMut(Change<K>, &Store<K>) + Send + 'static,
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
    let stream = watcher(api, cfg)
        .modify(trim)
        .default_backoff()
        .reflect(writer);
    let reader = store.clone();
    let task = tokio::spawn(async move {
        stream
            .for_each(|ev| {
                match ev {
                    Ok(watcher::Event::Apply(o)) => {
                        on_change(Change::Applied(Arc::new(o)), &reader)
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        on_change(Change::Deleted(Arc::new(o)), &reader)
                    }
                    Ok(watcher::Event::Init) => on_change(Change::Relisting, &reader),
                    Ok(watcher::Event::InitDone) => {
                        on_change(Change::Listed(reader.state()), &reader)
                    }
                    Ok(watcher::Event::InitApply(_)) => {}
                    Err(e) => tracing::debug!(error = %e, "member watch error (retrying)"),
                }
                futures::future::ready(())
            })
            .await;
    });
    (store, task)
}

impl MemberWatch {
    /// Starts watching member `member` through `client`, reporting to `sink`.
    pub fn start(client: &kube::Client, member: &str, sink: Arc<dyn MemberSink>) -> MemberWatch {
        let (m, s) = (member.to_string(), sink.clone());
        let (nodes, t1) = spawn_reflector(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            trim_node,
            move |c, _| s.node(&m, c),
        );
        let (m, s) = (member.to_string(), sink.clone());
        let (topologies, t2) = spawn_reflector(
            Api::<GpuTopology>::all(client.clone()),
            watcher::Config::default(),
            drop_managed_fields,
            move |c, _| s.topology(&m, c),
        );
        let by_job: PodIndex = Arc::default();
        let ends: EndIndex = Arc::default();
        let relisting: Relisting = Arc::default();
        let sink_slices = sink.clone();
        let sink_claims = sink.clone();
        let (m, s, idx, ends_w) = (member.to_string(), sink, by_job.clone(), ends.clone());
        let listing = relisting.clone();
        let (pods, t3) = spawn_reflector(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels(labels::SELECTOR),
            trim_pod,
            move |c, _| {
                note_listing(&listing, &c);
                index_ends(&ends_w, &c);
                index_pods(&idx, &c);
                s.pod(&m, c)
            },
        );
        // A member that does not serve `resource.k8s.io/v1` answers 404 and the watch keeps
        // retrying with backoff: such a member has no DRA, and nothing is reported.
        // Slices and the claims gpupool did not make (its own carry its job label) together say
        // which GPUs others hold: each watch keeps its half and reports the whole.
        let seen: Arc<std::sync::Mutex<DraSeen>> = Arc::default();
        let (m, seen_s) = (member.to_string(), seen.clone());
        let (_, t4) = spawn_reflector(
            Api::<ResourceSlice>::all(client.clone()),
            watcher::Config::default(),
            drop_managed_fields,
            move |c, store| match c {
                Change::Relisting => {}
                _ => {
                    let slices = store.state();
                    sink_slices.slice_devices(&m, super::dra::gpu_devices_per_node(&slices));
                    let outside = seen_s.lock().map(|mut s| {
                        s.slices = slices;
                        s.outside()
                    });
                    if let Ok(o) = outside {
                        sink_slices.outside_claims(&m, o);
                    }
                }
            },
        );
        let (m, sink_claims) = (member.to_string(), sink_claims);
        let (_, t5) = spawn_reflector(
            Api::<ResourceClaim>::all(client.clone()),
            watcher::Config::default().labels(&format!("!{}", crate::meta::labels::JOB_UID)),
            drop_managed_fields,
            move |c, store| match c {
                Change::Relisting => {}
                _ => {
                    let outside = seen.lock().map(|mut s| {
                        s.claims = store.state();
                        s.outside()
                    });
                    if let Ok(o) = outside {
                        sink_claims.outside_claims(&m, o);
                    }
                }
            },
        );
        MemberWatch {
            nodes,
            topologies,
            pods,
            by_job,
            ends,
            relisting,
            tasks: vec![t1, t2, t3, t4, t5],
        }
    }

    /// A member view assembled from stores another feed keeps (a pull member's, from its reports
    /// and work objects on the hub; such a feed swaps in a whole new list at once, so it is never
    /// seen relisting).
    pub(super) fn from_parts(
        nodes: Store<Node>,
        topologies: Store<GpuTopology>,
        pods: Store<Pod>,
        by_job: PodIndex,
        ends: EndIndex,
        tasks: Vec<JoinHandle<()>>,
    ) -> MemberWatch {
        MemberWatch {
            nodes,
            topologies,
            pods,
            by_job,
            ends,
            relisting: Arc::default(),
            tasks,
        }
    }

    /// Whether nodes and pods have been listed at least once (topologies are optional: a member
    /// without the CRD simply has none).
    pub fn synced(&self) -> bool {
        listed(&self.nodes) && listed(&self.pods)
    }

    /// Whether the pod store is current: listed, and not listing again after a broken watch.
    /// Only then does "not in the store" mean "not in the member" (while the watch lists again
    /// the store holds the state before the break, without the pods created since).
    pub fn pods_current(&self) -> bool {
        self.synced() && !self.relisting.load(Ordering::Acquire)
    }

    /// The pods of hub job `uid` in this member.
    pub fn pods_of(&self, uid: &str) -> Vec<Arc<Pod>> {
        let idx = self.by_job.read().expect("pod index lock");
        idx.get(uid)
            .into_iter()
            .flatten()
            .filter_map(|r| self.pods.get(r))
            .collect()
    }

    /// Pod UID → unix second this watch first saw the pod ended (see the module docs).
    pub fn observed_ends(&self) -> std::collections::BTreeMap<String, i64> {
        let seen = self.ends.read().expect("pod end index lock");
        seen.ends.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Pod UID → unix second this watch first saw the pod, for pods that appeared after its
    /// first list (see the module docs).
    pub fn first_seen(&self) -> std::collections::BTreeMap<String, i64> {
        let seen = self.ends.read().expect("pod end index lock");
        seen.first.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// GPU UUID → model over every published `GpuTopology` in this member.
    pub fn gpu_models(&self) -> std::collections::BTreeMap<String, String> {
        self.topologies
            .state()
            .iter()
            .flat_map(|t| {
                t.spec
                    .gpus
                    .iter()
                    .map(|g| (g.uuid.clone(), g.model.clone()))
            })
            .collect()
    }

    /// Devices the kubelet assigned per pod container, by node, as the node agents published them.
    pub fn pod_devices(&self) -> std::collections::BTreeMap<String, Vec<crate::api::PodDevices>> {
        self.topologies
            .state()
            .iter()
            .filter_map(|t| {
                let s = t.status.as_ref()?;
                Some((t.spec.node_name.clone(), s.pod_devices.clone()))
            })
            .collect()
    }

    /// Every gpupool pod in this member.
    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.pods.state()
    }
}

impl Drop for MemberWatch {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{trim_meta, trim_node, trim_pod};
    use k8s_openapi::api::core::v1::{Node, Pod};

    const POD: &str = r#"
metadata:
  name: job-w0
  namespace: ml
  labels: {app.kubernetes.io/managed-by: gpupool, gpupool.io/job-uid: u1, gpupool.io/index: "0"}
  annotations:
    gpupool.io/gpu-uuids: GPU-a,GPU-b
    gpupool.io/node: n1
    team.example.com/notes: a long user annotation that nobody in gpupool reads
  managedFields: [{manager: kubectl, operation: Apply}]
spec:
  nodeName: n1
  containers:
    - name: main
      image: registry.example.com/trainer:1
      command: [python, train.py]
      env: [{name: WORLD_SIZE, value: "1"}, {name: MASTER_ADDR, value: job-w0.job-workers.ml.svc}]
      resources: {limits: {nvidia.com/gpu: "2"}}
  volumes: [{name: data, emptyDir: {}}]
  tolerations: [{key: nvidia.com/gpu, operator: Exists}]
status:
  phase: Running
  hostIP: 10.0.0.1
  podIP: 10.1.0.1
  qosClass: BestEffort
  startTime: "2026-01-01T00:00:00Z"
  conditions:
    - {type: Initialized, status: "True", lastTransitionTime: "2026-01-01T00:00:01Z"}
    - {type: PodScheduled, status: "True", lastTransitionTime: "2026-01-01T00:00:00Z"}
    - {type: Ready, status: "True", lastTransitionTime: "2026-01-01T00:00:05Z"}
  containerStatuses:
    - name: main
      ready: true
      restartCount: 0
      image: registry.example.com/trainer:1
      imageID: sha256:abc
      containerID: containerd://abc
      state: {running: {startedAt: "2026-01-01T00:00:03Z"}}
"#;

    #[test]
    fn a_trimmed_pod_answers_every_reader_as_the_whole_pod_did() {
        let full: Pod = serde_yaml::from_str(POD).unwrap();
        let mut p = full.clone();
        trim_pod(&mut p);
        // What the readers look at is unchanged.
        assert_eq!(
            crate::workloads::pod_node(&p),
            crate::workloads::pod_node(&full)
        );
        assert_eq!(
            crate::metering::pod_run(&p),
            crate::metering::pod_run(&full)
        );
        assert!(crate::metering::pod_run(&p).is_some());
        assert_eq!(crate::metering::pod_gpus(&p), 2);
        assert_eq!(p.metadata.labels, full.metadata.labels);
        assert_eq!(
            crate::scheduler::pod_slots("m", &p),
            crate::scheduler::pod_slots("m", &full)
        );
        let st = p.status.as_ref().unwrap();
        assert_eq!(st.phase.as_deref(), Some("Running"));
        // Of the conditions, the one read (Ready) is kept as it was.
        let ready = |p: &Pod| {
            p.status
                .as_ref()
                .unwrap()
                .conditions
                .as_ref()
                .unwrap()
                .iter()
                .filter(|c| c.type_ == "Ready")
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(ready(&p).len(), 1);
        assert_eq!(ready(&p), ready(&full));
        assert_eq!(st.conditions.as_ref().unwrap().len(), 1);
        assert_eq!(super::pod_ended(&p), super::pod_ended(&full));
        let mut done = full.clone();
        done.spec.as_mut().unwrap().restart_policy = Some("Never".into());
        for cs in done
            .status
            .as_mut()
            .unwrap()
            .container_statuses
            .iter_mut()
            .flatten()
        {
            cs.state = Some(k8s_openapi::api::core::v1::ContainerState {
                terminated: Some(k8s_openapi::api::core::v1::ContainerStateTerminated {
                    exit_code: 0,
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        let mut trimmed_done = done.clone();
        trim_pod(&mut trimmed_done);
        assert!(super::pod_ended(&done) && super::pod_ended(&trimmed_done));
        // What nobody reads is gone.
        let spec = p.spec.as_ref().unwrap();
        assert!(spec.containers.is_empty());
        assert!(spec.volumes.is_none() && spec.tolerations.is_none());
        assert!(st.pod_ip.is_none() && st.host_ip.is_none());
        let ann = p.metadata.annotations.as_ref().unwrap();
        assert!(!ann.contains_key("team.example.com/notes"));
        assert_eq!(ann.len(), 2);
        assert!(p.metadata.managed_fields.is_none());
        let before = serde_json::to_vec(&full).unwrap().len();
        let after = serde_json::to_vec(&p).unwrap().len();
        assert!(after * 3 < before * 2, "{after} of {before} bytes");
    }

    #[test]
    fn a_trimmed_node_keeps_readiness_and_gpus() {
        let full: Node = serde_yaml::from_str(
            r#"
metadata: {name: n1, labels: {a: b}, annotations: {node.alpha.kubernetes.io/ttl: "0"}}
spec: {unschedulable: false}
status:
  allocatable: {nvidia.com/gpu: "8", cpu: "96"}
  capacity: {nvidia.com/gpu: "8"}
  conditions: [{type: Ready, status: "True", message: kubelet is posting ready status}]
  images: [{names: [registry.example.com/a:1], sizeBytes: 1000}]
  addresses: [{type: InternalIP, address: 10.0.0.1}]
"#,
        )
        .unwrap();
        let mut n = full.clone();
        trim_node(&mut n);
        assert_eq!(crate::federation::allocatable_gpus(&n), 8);
        assert!(crate::federation::node_ready(&n));
        assert_eq!(n.metadata.labels, full.metadata.labels);
        let st = n.status.as_ref().unwrap();
        assert!(st.images.is_none() && st.addresses.is_none() && st.capacity.is_none());
    }

    #[test]
    fn trim_meta_drops_kubectls_copy_of_the_object() {
        let mut m = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            annotations: Some(
                [
                    (
                        "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                        "{}".to_string(),
                    ),
                    ("keep".to_string(), "me".to_string()),
                ]
                .into(),
            ),
            ..Default::default()
        };
        trim_meta(&mut m);
        assert_eq!(m.annotations.unwrap().keys().collect::<Vec<_>>(), ["keep"]);
    }
}
