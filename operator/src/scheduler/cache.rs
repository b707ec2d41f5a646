//! The pool in memory: members, their GPU nodes, each node's graph and free GPUs, and every GPU
//! assignment — from hub job statuses, from gpupool pods in the members, and *assumed* ones the
//! scheduler decided but whose hub status write it has not yet observed.
//!
//! Pure and synchronous: fed by watch events. The scheduling loop decides on a [`Snapshot`] it
//! brings up to date from the cache before each decision (copying only what changed), so events
//! are applied while it decides. A decision reads only the nodes that can take the request (see
//! [`Snapshot::candidates`]), so its cost does not grow with the number of jobs and barely with
//! the number of nodes.
//!
//! Supply is checked, not believed: a node's usable GPUs are capped by its `nvidia.com/gpu`
//! allocatable on device-plugin members, and on DRA members (whose nodes advertise no
//! `nvidia.com/gpu`: their GPUs are ResourceSlice devices) by the node's devices of the GPU driver
//! in its ResourceSlices, or by its published topology while no slice is known; a GPU UUID belongs to the node that published it first (earliest `GpuTopology`
//! creation, then member and node name; a node that publishes the same UUIDs again within
//! ten minutes keeps its first time, so an owner re-creating its `GpuTopology` keeps its GPUs)
//! and a later node publishing the same UUID is quarantined without affecting the first; a UUID listed twice inside one node makes those GPUs unusable
//! without marking anything else busy; and an assignment only ever holds GPUs on the member and
//! node it names, so nothing one member publishes or annotates can block another member's GPUs.

use crate::api::{BindingMode, CapacitySummary, GpuTopologySpec, ModelCapacity};
use crate::topology::{GpuGraph, GpuSet};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

#[path = "index.rs"]
mod index;
#[path = "snapshot.rs"]
mod snapshot;
pub use snapshot::Snapshot;

/// What the scheduler needs to know about a member from its MemberCluster and heartbeat.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemberInfo {
    /// Labels for cluster selectors (spec labels plus `region`).
    pub labels: BTreeMap<String, String>,
    /// Asking price per GPU-hour.
    pub price: Option<i64>,
    /// New work may be placed there.
    pub schedulable: bool,
    /// Why not, when not.
    pub reason: String,
    /// How GPUs are bound to pods there (decides what caps a node's usable GPUs).
    pub binding: BindingMode,
    /// Being drained: its jobs move elsewhere (a job's replicas there do not pin it there).
    pub draining: bool,
}

/// What a member's `Node` object says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    /// Ready and not cordoned.
    pub ready: bool,
    /// `nvidia.com/gpu` allocatable.
    pub allocatable: i64,
}

/// A published `GpuTopology`.
#[derive(Clone, Debug, PartialEq)]
pub struct TopologyFacts {
    /// The spec.
    pub spec: GpuTopologySpec,
    /// GPUs held outside gpupool's bookkeeping: busy with processes gpupool did not start, or
    /// assigned to a pod by the kubelet (its pod-resources API, as the node agent read it).
    pub busy: Vec<String>,
    /// Creation time of the object (seconds since the epoch); the earliest publisher of a UUID
    /// keeps it.
    pub published: i64,
}

/// One GPU assigned on one node of one member.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot {
    /// Member name.
    pub member: String,
    /// Node name.
    pub node: String,
    /// GPU UUID.
    pub uuid: String,
}

/// Kind, namespace and name of a hub job (to wake or describe it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobName {
    /// `TrainingJob` or `InferenceJob`.
    pub kind: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// The derived, placeable state of one node.
#[derive(Clone, Debug)]
pub struct NodeState {
    /// Node name.
    pub name: Arc<str>,
    /// Its GPU graph, rebuilt only when the published topology changes.
    pub graph: Arc<GpuGraph>,
    /// Id of the topology's interned shape ([`GpuGraph::shape_id`]).
    pub shape: u64,
    /// GPU model (of GPU 0; interned, shared with the graph).
    pub model: Arc<str>,
    /// Smallest memory per GPU, MiB.
    pub memory_mib: i64,
    /// GPUs gpupool may use (allocatable cap, UUID checks).
    pub usable: GpuSet,
    /// GPUs busy with foreign processes.
    pub busy: GpuSet,
    /// GPUs held by assignments.
    pub held: GpuSet,
    /// Supply problems found on this node (shown in the member's status).
    pub problems: Vec<String>,
}

impl NodeState {
    /// Free GPUs.
    pub fn free(&self) -> GpuSet {
        self.usable.minus(self.busy).minus(self.held)
    }

    /// The node as a placement candidate (its names and graph shared, its free GPUs now).
    pub fn candidate(&self) -> crate::placement::NodeCandidate {
        crate::placement::NodeCandidate {
            name: self.name.clone(),
            graph: self.graph.clone(),
            free: self.free(),
            model: self.model.clone(),
            memory_mib: self.memory_mib,
        }
    }
}

#[derive(Default)]
struct Member {
    info: MemberInfo,
    /// Member pods have been listed at least once (their assignments are known).
    pods_synced: bool,
    nodes: BTreeMap<String, NodeFacts>,
    /// GPU devices each node offers in the member's ResourceSlices (DRA members).
    slice_devices: BTreeMap<String, i64>,
    /// GPU UUIDs per node that ResourceClaims outside gpupool hold (DRA members): busy.
    outside_claims: BTreeMap<String, Vec<String>>,
    topologies: BTreeMap<String, Published>,
    /// GpuTopology object name → node name.
    /// (Only objects not named after their node: the node agent names each after its node,
    /// and [`Published::named_after_node`] says so without a second copy of both names.)
    topology_names: HashMap<String, String>,
    /// Placeable nodes (shared with the loop's [`Snapshot`]).
    ready: BTreeMap<Arc<str>, Arc<NodeState>>,
    /// Nodes that cannot take work, with the reason.
    unusable: BTreeMap<String, String>,
}

impl Member {
    /// How many GPUs a node may offer and what says so, or `None` when it is no GPU node: the
    /// `nvidia.com/gpu` allocatable on device-plugin members; on DRA members the node's devices
    /// in the ResourceSlices, or its published topology's GPU count while no slice is known.
    fn gpu_cap(&self, node: &str) -> Option<(i64, &'static str)> {
        let facts = self.nodes.get(node)?;
        let cap = match self.info.binding {
            BindingMode::DevicePlugin => (facts.allocatable, "nvidia.com/gpu allocatable"),
            BindingMode::Dra => match self.slice_devices.get(node) {
                Some(d) => (*d, "ResourceSlice GPU devices"),
                None => (
                    self.topologies.get(node)?.gpus as i64,
                    "published GPU count",
                ),
            },
        };
        (cap.0 > 0).then_some(cap)
    }
}

/// Why a published spec is no usable topology, and the UUIDs it lists.
type Unusable = (String, Vec<Arc<str>>);

/// A published topology as the cache keeps it: its graph, built once (the spec itself is not
/// kept: every node of a shape shares the graph's interconnect, and the spec's names are in it).
struct Published {
    /// The node's names (shared).
    at: NodeRef,
    /// Published by the `GpuTopology` object named after the node.
    named_after_node: bool,
    /// The graph and the hash of the topology's shape, or why the spec is no usable topology
    /// (with the UUIDs it lists, which it still claims).
    graph: Result<(Arc<GpuGraph>, u64), Unusable>,
    /// GPUs the spec lists.
    gpus: usize,
    busy: Vec<String>,
    published: i64,
}

impl Published {
    fn of(t: TopologyFacts, at: NodeRef) -> Published {
        let graph = match GpuGraph::from_spec(&t.spec) {
            // The interned shape's id: nodes of one shape share the allocator's answers (the
            // model and memory are keys of their own where they matter).
            Ok(g) => {
                let shape = g.shape_id();
                Ok((Arc::new(g), shape))
            }
            Err(e) => Err((
                format!("bad GpuTopology: {e}"),
                t.spec.gpus.iter().map(|g| g.uuid.as_str().into()).collect(),
            )),
        };
        Published {
            at,
            named_after_node: false,
            graph,
            gpus: t.spec.gpus.len(),
            busy: t.busy,
            published: t.published,
        }
    }

    /// Whether `other` says the same for placement (names, GPUs, links, busy GPUs, time).
    fn same(&self, other: &Published) -> bool {
        let graphs = match (&self.graph, &other.graph) {
            (Ok((a, x)), Ok((b, y))) => x == y && a.identical(b),
            (Err(a), Err(b)) => a == b,
            _ => false,
        };
        graphs
            && self.gpus == other.gpus
            && self.busy == other.busy
            && self.published == other.published
    }

    /// The UUIDs the topology lists (claimed by its node), shared with its graph.
    fn uuids(&self) -> Vec<Arc<str>> {
        match &self.graph {
            Ok((g, _)) => g.gpus().iter().map(|g| g.uuid.clone()).collect(),
            Err((_, uuids)) => uuids.clone(),
        }
    }
}

/// A dropped claim: (UUID, member, node).
type ReleasedClaim = (Arc<str>, Arc<str>, Arc<str>);

/// How long a node's dropped claim on a UUID is remembered (see `PoolCache::released`).
pub const CLAIM_MEMORY: std::time::Duration = std::time::Duration::from_secs(600);

/// A node's claim on a GPU UUID: when it was published, and the (member, node) — one
/// allocation shared by all of the node's claims (16 bytes a claim).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Claim {
    published: i64,
    at: NodeRef,
}

impl Claim {
    fn member(&self) -> &str {
        &self.at.0
    }

    fn node(&self) -> &str {
        &self.at.1
    }

    fn is(&self, member: &str, node: &str) -> bool {
        self.member() == member && self.node() == node
    }

    fn names(&self) -> (String, String) {
        (self.member().to_string(), self.node().to_string())
    }
}

/// The claims on one UUID, earliest first. Almost every UUID has one claimant: kept inline
/// in the map's slot (24 bytes) instead of a `Vec`'s first allocation of four.
type Claims = smallvec::SmallVec<[Claim; 1]>;

/// The maps a pool's every GPU or job passes through (UUIDs, holds, jobs): aHash, keyed at
/// random per map like std's SipHash (UUIDs are what members publish, so the keys must stay
/// unpredictable), at a fraction of its cost on 40-byte UUIDs.
type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

/// A member's node, named once: shared by the node's published topology, its claims, and the
/// holds and jobs' GPUs on it.
type NodeRef = Arc<(Arc<str>, Arc<str>)>;

/// One GPU as the cache keeps a [`Slot`]: 24 bytes, its node's names and its UUID shared
/// with the node's published topology when the node has one (a `Slot` of three strings is
/// some 180 bytes). Orders as `Slot` does: member, node, UUID.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Gpu {
    at: NodeRef,
    uuid: Arc<str>,
}

impl Gpu {
    fn member(&self) -> &str {
        &self.at.0
    }

    fn node(&self) -> &str {
        &self.at.1
    }

    fn slot(&self) -> Slot {
        Slot {
            member: self.member().to_string(),
            node: self.node().to_string(),
            uuid: self.uuid.to_string(),
        }
    }

    fn is(&self, s: &Slot) -> bool {
        self.member() == s.member && self.node() == s.node && *self.uuid == *s.uuid
    }
}

/// GPUs held by one job or pod, sorted and unique. Most hold one to eight: a `BTreeSet`'s
/// smallest node has room for eleven and would weigh some 800 bytes more than the slots.
type Slots = Box<[Gpu]>;

fn contains(set: &[Gpu], s: &Gpu) -> bool {
    set.binary_search(s).is_ok()
}

/// What one job holds: the GPUs of its observed hub status, and those of decisions written (or
/// being written) whose status has not been observed yet, oldest first. A re-decision of the
/// same job adds to them and never frees an earlier one: that one may already be in the hub
/// status, and the next job must not get its GPUs.
#[derive(Default)]
struct JobHolds {
    name: Option<JobName>,
    hub: Slots,
    assumed: Vec<Slots>,
}

/// Something that may let a waiting job fit now.
#[derive(Clone, Debug)]
pub struct Wake {
    /// Free GPUs on the node that changed.
    pub free: usize,
    /// Its GPU model.
    pub model: Arc<str>,
    /// Its memory per GPU.
    pub memory_mib: i64,
    /// Its free GPUs.
    pub gpus: GpuSet,
    /// Its GPU graph.
    pub graph: Arc<GpuGraph>,
}

/// Wakes collected since the last [`PoolCache::take_wakes`].
#[derive(Debug, Default)]
pub struct Wakes {
    /// Every waiting job should look again (a member became schedulable).
    pub all: bool,
    /// Nodes whose free GPUs grew.
    pub nodes: Vec<Wake>,
}

/// The pool.
#[derive(Default)]
pub struct PoolCache {
    members: BTreeMap<String, Member>,
    claims: FastMap<Arc<str>, Claims>,
    /// Claims dropped when a node's topology was replaced or removed, by (UUID, member, node):
    /// when it was published and when dropped. A node that publishes the same UUIDs again
    /// within [`CLAIM_MEMORY`] (its owner re-created its `GpuTopology`) keeps its place
    /// before nodes that copied them meanwhile.
    released: HashMap<ReleasedClaim, (i64, std::time::Instant)>,
    holds: FastMap<Gpu, u32>,
    /// Members whose facts changed since the last [`PoolCache::update_snapshot`].
    dirty_members: BTreeSet<String>,
    /// Nodes derived since the last [`PoolCache::update_snapshot`].
    /// (By member: a node derived again and again before the next update is found without
    /// allocating its names.)
    dirty_nodes: BTreeMap<String, BTreeSet<String>>,
    jobs: FastMap<String, JobHolds>,
    /// GPUs reserved for a job that preempted their holders: held until it is decided again.
    reserved: HashMap<String, Slots>,
    /// (member, node) → jobs whose hub status holds GPUs there (preemption's candidates).
    /// A sorted `Vec`: a node holds a few jobs, and a `BTreeSet`'s first node weighs ~280 bytes.
    on_node: FastMap<NodeRef, Vec<String>>,
    pods: HashMap<(String, String, String), Slots>,
    /// GPUs a member's scheduler refused to give a gpupool pod: kept out of placement (as busy)
    /// until [`PoolCache::set_suspect`] clears them.
    suspect: BTreeSet<Slot>,
    wakes: Wakes,
}

/// The GPUs of a node gpupool may use, and the supply problems found: a UUID listed twice
/// inside the node makes those GPUs unaddressable; never more GPUs than `cap` (the kubelet's
/// device plugin or the DRA driver) offers.
fn usable_gpus(node: &str, graph: &GpuGraph, cap: (i64, &str)) -> (GpuSet, Vec<String>) {
    let mut problems = Vec::new();
    let mut usable = GpuSet::all(graph.len());
    let mut uuids: Vec<&str> = graph.gpus().iter().map(|g| &*g.uuid).collect();
    uuids.sort_unstable();
    let dups: BTreeSet<&str> = uuids
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    if !dups.is_empty() {
        for g in graph.gpus() {
            if dups.contains(&*g.uuid) {
                usable.remove(g.index);
            }
        }
        problems.push(format!(
            "{node}: UUID listed more than once: {}",
            dups.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    let (cap, source) = cap;
    let cap = usize::try_from(cap).unwrap_or(0);
    if usable.len() > cap {
        let keep = GpuSet::from_indexes(usable.iter().take(cap));
        problems.push(format!(
            "{node}: topology lists {} GPUs, {source} is {cap}",
            usable.len()
        ));
        usable = keep;
    }
    (usable, problems)
}

impl PoolCache {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    // ----- members -----

    /// A member, added (and marked for the next snapshot update) when new.
    fn member_mut(&mut self, name: &str) -> &mut Member {
        if !self.members.contains_key(name) {
            self.dirty_members.insert(name.to_string());
        }
        self.members.entry(name.to_string()).or_default()
    }

    /// Sets what the hub knows about a member; returns whether it changed.
    pub fn set_member(&mut self, name: &str, info: MemberInfo) -> bool {
        let m = self.member_mut(name);
        if m.info == info {
            return false;
        }
        let became = info.schedulable && !m.info.schedulable;
        let rebind = info.binding != m.info.binding;
        m.info = info;
        let nodes: Vec<String> = m.nodes.keys().cloned().collect();
        self.dirty_members.insert(name.to_string());
        if became {
            self.wakes.all = true;
        }
        if rebind {
            for n in nodes {
                self.refresh(name, &n);
            }
        }
        true
    }

    /// Forgets a member and everything on it.
    pub fn remove_member(&mut self, name: &str) {
        let Some(m) = self.members.get(name) else {
            return;
        };
        let nodes: Vec<String> = m.topologies.keys().cloned().collect();
        let mut affected = Vec::new();
        for n in &nodes {
            affected.extend(self.release_claims(name, n));
        }
        let m = self.members.remove(name).expect("present");
        self.dirty_members.insert(name.to_string());
        let known = m.ready.keys().map(|n| &**n);
        let known = known.chain(m.unusable.keys().map(String::as_str));
        for n in known.chain(m.topologies.keys().map(String::as_str)) {
            self.mark_dirty(name, n);
        }
        let pods: Vec<_> = self.pods.keys().filter(|k| k.0 == name).cloned().collect();
        for k in pods {
            self.set_pod(&k.0, &k.1, &k.2, BTreeSet::new());
        }
        // Nodes elsewhere that published the same UUIDs later were quarantined behind this
        // member's claim: now they may own them.
        affected.sort();
        affected.dedup();
        for (m, n) in affected.into_iter().filter(|(m, _)| m != name) {
            self.derive(&m, &n);
        }
    }

    /// Whether the member's pods have been listed.
    pub fn pods_synced(&self, member: &str) -> bool {
        self.members.get(member).is_some_and(|m| m.pods_synced)
    }

    // ----- nodes and topologies -----

    /// A node was added or changed (`None`: deleted). Nodes without GPUs are kept too: on a DRA
    /// member a node's GPUs are not in its `Node` object.
    pub fn set_node(&mut self, member: &str, node: &str, facts: Option<NodeFacts>) {
        let m = self.member_mut(member);
        if m.nodes.get(node) == facts.as_ref() {
            return;
        }
        match facts {
            Some(f) => m.nodes.insert(node.to_string(), f),
            None => m.nodes.remove(node),
        };
        self.refresh(member, node);
    }

    /// Replaces every node of a member (after a relist).
    pub fn resync_nodes(&mut self, member: &str, nodes: BTreeMap<String, NodeFacts>) {
        let m = self.member_mut(member);
        let gone: Vec<String> = m
            .nodes
            .keys()
            .filter(|n| !nodes.contains_key(*n))
            .cloned()
            .collect();
        for n in gone {
            self.set_node(member, &n, None);
        }
        for (n, f) in nodes {
            self.set_node(member, &n, Some(f));
        }
    }

    /// How many GPU devices a node offers in the member's ResourceSlices (`None`: none known).
    pub fn set_slice_devices(&mut self, member: &str, node: &str, devices: Option<i64>) {
        let m = self.member_mut(member);
        if m.slice_devices.get(node).copied() == devices {
            return;
        }
        match devices {
            Some(d) => m.slice_devices.insert(node.to_string(), d),
            None => m.slice_devices.remove(node),
        };
        self.refresh(member, node);
    }

    /// Replaces the GPUs that ResourceClaims outside gpupool hold, per node of a member (all of
    /// them, after any claim or slice change): they count as busy, so no decision picks them.
    pub fn resync_outside_claims(&mut self, member: &str, all: BTreeMap<String, Vec<String>>) {
        let m = self.member_mut(member);
        let changed: BTreeSet<String> = m
            .outside_claims
            .keys()
            .chain(all.keys())
            .filter(|n| m.outside_claims.get(*n) != all.get(*n))
            .cloned()
            .collect();
        m.outside_claims = all;
        for n in changed {
            self.refresh(member, &n);
        }
    }

    /// Replaces the ResourceSlice device counts of every node of a member (after a relist).
    pub fn resync_slice_devices(&mut self, member: &str, all: BTreeMap<String, i64>) {
        let m = self.member_mut(member);
        let gone: Vec<String> = m
            .slice_devices
            .keys()
            .filter(|n| !all.contains_key(*n))
            .cloned()
            .collect();
        for n in gone {
            self.set_slice_devices(member, &n, None);
        }
        for (n, d) in all {
            self.set_slice_devices(member, &n, Some(d));
        }
    }

    /// The node whose topology the `GpuTopology` object `object` published.
    fn node_of_object(m: &Member, object: &str) -> Option<String> {
        match m.topology_names.get(object) {
            Some(n) => Some(n.clone()),
            None => m
                .topologies
                .get(object)
                .filter(|t| t.named_after_node)
                .map(|_| object.to_string()),
        }
    }

    /// A `GpuTopology` object was added or changed (`None`: deleted).
    pub fn set_topology(&mut self, member: &str, object: &str, t: Option<TopologyFacts>) {
        let m = self.member_mut(member);
        let old_node = Self::node_of_object(m, object);
        let new_node = t.as_ref().map(|t| t.spec.node_name.clone());
        if let Some(old) = &old_node
            && Some(old) != new_node.as_ref()
        {
            m.topology_names.remove(object);
            self.put_topology(member, old, None);
        }
        let m = self.member_mut(member);
        if let (Some(t), Some(n)) = (t, new_node) {
            let at = m.topologies.get(&n).map_or_else(
                || Arc::new((member.into(), n.as_str().into())),
                |old| old.at.clone(),
            );
            let mut t = Published::of(t, at);
            if m.topologies.get(&n).is_some_and(|old| old.same(&t)) {
                return;
            }
            t.named_after_node = object == n;
            if t.named_after_node {
                m.topology_names.remove(object);
            } else {
                m.topology_names.insert(object.to_string(), n.clone());
            }
            self.put_topology(member, &n, Some(t));
        }
    }

    /// Replaces every topology of a member (after a relist): object name → facts.
    pub fn resync_topologies(&mut self, member: &str, all: BTreeMap<String, TopologyFacts>) {
        let m = self.member_mut(member);
        let named_after_node = m
            .topologies
            .iter()
            .filter(|(_, t)| t.named_after_node)
            .map(|(n, _)| n);
        let gone: Vec<String> = m
            .topology_names
            .keys()
            .chain(named_after_node)
            .filter(|o| !all.contains_key(*o))
            .cloned()
            .collect();
        for o in gone {
            self.set_topology(member, &o, None);
        }
        for (o, t) in all {
            self.set_topology(member, &o, Some(t));
        }
    }

    /// Drops the node's claims on the UUIDs its published topology lists (there are none when
    /// it could not claim them); returns the other claimants of those UUIDs. Called before the
    /// topology is replaced or removed, so the cache keeps no list of a node's claims.
    fn release_claims(&mut self, member: &str, node: &str) -> Vec<(String, String)> {
        let mut affected = Vec::new();
        let Some(t) = self
            .members
            .get(member)
            .and_then(|m| m.topologies.get(node))
        else {
            return affected;
        };
        let now = std::time::Instant::now();
        if self.released.len() > 4096 {
            self.released
                .retain(|_, (_, at)| now.duration_since(*at) < CLAIM_MEMORY);
        }
        for u in t.uuids() {
            if let Some(cs) = self.claims.get_mut(&u) {
                for c in cs.iter().filter(|c| c.is(member, node)) {
                    let key = (u.clone(), c.at.0.clone(), c.at.1.clone());
                    let e = self.released.entry(key).or_insert((c.published, now));
                    *e = (e.0.min(c.published), now);
                }
                cs.retain(|c| !c.is(member, node));
                affected.extend(cs.iter().map(Claim::names));
                if cs.is_empty() {
                    self.claims.remove(&u);
                }
            }
        }
        affected
    }

    /// Replaces (`None`: removes) the topology published for a node, and refreshes it.
    fn put_topology(&mut self, member: &str, node: &str, t: Option<Published>) {
        let affected = self.release_claims(member, node);
        let m = self.member_mut(member);
        match t {
            Some(t) => m.topologies.insert(node.to_string(), t),
            None => m.topologies.remove(node),
        };
        self.claim(member, node, affected);
    }

    /// Recomputes a node's claims and derived state, and that of nodes sharing its UUIDs.
    fn refresh(&mut self, member: &str, node: &str) {
        let affected = self.release_claims(member, node);
        self.claim(member, node, affected);
    }

    /// Claims the UUIDs of a node's topology when it may offer GPUs, then derives it and the
    /// other claimants of its UUIDs (`affected`, and those found now).
    fn claim(&mut self, member: &str, node: &str, mut affected: Vec<(String, String)>) {
        if let Some(m) = self.members.get(member)
            && m.gpu_cap(node).is_some()
            && let Some(t) = m.topologies.get(node)
        {
            let at = t.at.clone();
            let uuids: BTreeSet<Arc<str>> = t.uuids().into_iter().collect();
            let published = t.published;
            for u in uuids {
                // (Hashing three names per UUID only when some claim was dropped lately.)
                let earlier = (!self.released.is_empty())
                    .then(|| {
                        let key = (u.clone(), at.0.clone(), at.1.clone());
                        self.released.remove(&key)
                    })
                    .flatten()
                    .filter(|(_, at)| at.elapsed() < CLAIM_MEMORY)
                    .map(|(p, _)| p);
                let claim = Claim {
                    published: earlier.map_or(published, |p| p.min(published)),
                    at: at.clone(),
                };
                // A new key is the UUID shared with the node's graph.
                let cs = self.claims.entry(u).or_default();
                affected.extend(cs.iter().map(Claim::names));
                let pos = cs.partition_point(|c| *c < claim);
                cs.insert(pos, claim);
            }
        }
        affected.sort();
        affected.dedup();
        self.derive(member, node);
        for (m, n) in affected {
            if (m.as_str(), n.as_str()) != (member, node) {
                self.derive(&m, &n);
            }
        }
    }

    /// Rebuilds the placeable state of one node from its facts, claims and holds: it comes back
    /// placeable or with the reason it is not, and is marked for the next snapshot update.
    fn derive(&mut self, member: &str, node: &str) {
        let Some(m) = self.members.get_mut(member) else {
            return;
        };
        let old = m.ready.remove(node);
        m.unusable.remove(node);
        self.mark_dirty(member, node);
        let name = old.as_ref().map(|o| o.name.clone());
        let st = match self.placeable(member, node, name) {
            Ok(Some(st)) => st,
            Ok(None) => return,
            Err(why) => {
                let m = self.members.get_mut(member).expect("member exists");
                m.unusable.insert(node.into(), why);
                return;
            }
        };
        let grew = old.as_ref().is_none_or(|o| !st.free().is_subset(o.free()));
        if grew && !st.free().is_empty() {
            self.wakes.nodes.push(Wake {
                free: st.free().len(),
                model: st.model.clone(),
                memory_mib: st.memory_mib,
                gpus: st.free(),
                graph: st.graph.clone(),
            });
        }
        let m = self.members.get_mut(member).expect("member exists");
        m.ready.insert(st.name.clone(), Arc::new(st));
    }

    /// Marks a node for the next snapshot update.
    fn mark_dirty(&mut self, member: &str, node: &str) {
        match self.dirty_nodes.get_mut(member) {
            Some(nodes) => {
                if !nodes.contains(node) {
                    nodes.insert(node.to_string());
                }
            }
            None => {
                let nodes = BTreeSet::from([node.to_string()]);
                self.dirty_nodes.insert(member.to_string(), nodes);
            }
        }
    }

    /// The node's placeable state (`name`: its name shared, when it was placeable before);
    /// `None` when it is no GPU node, the reason when it cannot take work.
    fn placeable(
        &self,
        member: &str,
        node: &str,
        name: Option<Arc<str>>,
    ) -> Result<Option<NodeState>, String> {
        let Some((graph, shape, cap)) = self.graph_of(member, node)? else {
            return Ok(None);
        };
        self.check_claims(member, node, &graph)?;
        let (usable, problems) = usable_gpus(node, &graph, cap);
        let (busy, held) = self.busy_and_held(member, node, &graph);
        Ok(Some(NodeState {
            name: name.unwrap_or_else(|| node.into()),
            model: graph
                .gpus()
                .first()
                .map_or_else(|| "".into(), |g| g.model.clone()),
            memory_mib: graph.gpus().iter().map(|g| g.memory_mib).min().unwrap_or(0),
            graph,
            shape,
            usable,
            busy,
            held,
            problems,
        }))
    }

    /// The node's graph, the hash of its shape and its GPU cap (built once per topology);
    /// `None` when it is no GPU node.
    #[allow(clippy::type_complexity)]
    fn graph_of(
        &self,
        member: &str,
        node: &str,
    ) -> Result<Option<(Arc<GpuGraph>, u64, (i64, &'static str))>, String> {
        let m = self.members.get(member).expect("member exists");
        let (Some(facts), Some(cap)) = (m.nodes.get(node), m.gpu_cap(node)) else {
            return Ok(None);
        };
        if !facts.ready {
            return Err("node not ready".into());
        }
        let Some(t) = m.topologies.get(node) else {
            return Err("no GpuTopology published (is the node agent running?)".into());
        };
        match &t.graph {
            Ok((g, s)) => Ok(Some((g.clone(), *s, cap))),
            Err((why, _)) => Err(why.clone()),
        }
    }

    /// A UUID published earlier by another node is not this node's to offer: the node is
    /// quarantined.
    fn check_claims(&self, member: &str, node: &str, graph: &GpuGraph) -> Result<(), String> {
        let squatted: Vec<String> = graph
            .gpus()
            .iter()
            .filter_map(|g| {
                let owner = self.claims.get(&*g.uuid)?.first()?;
                (!owner.is(member, node)).then(|| {
                    format!(
                        "{} (first published by {}/{})",
                        g.uuid,
                        owner.member(),
                        owner.node()
                    )
                })
            })
            .collect();
        if squatted.is_empty() {
            return Ok(());
        }
        Err(format!(
            "quarantined: GPU UUIDs already in the pool: {}",
            squatted.join(", ")
        ))
    }

    /// GPUs busy outside gpupool (foreign processes, the kubelet, refused by the member's
    /// scheduler) and GPUs held by assignments.
    fn busy_and_held(&self, member: &str, node: &str, graph: &GpuGraph) -> (GpuSet, GpuSet) {
        let mut busy = GpuSet::EMPTY;
        if let Some(t) = self
            .members
            .get(member)
            .and_then(|m| m.topologies.get(node))
        {
            for u in &t.busy {
                for g in graph.gpus().iter().filter(|g| *g.uuid == **u) {
                    busy.insert(g.index);
                }
            }
        }
        if let Some(claimed) = self
            .members
            .get(member)
            .and_then(|m| m.outside_claims.get(node))
        {
            for g in graph
                .gpus()
                .iter()
                .filter(|g| claimed.iter().any(|u| **u == *g.uuid))
            {
                busy.insert(g.index);
            }
        }
        let mut held = GpuSet::EMPTY;
        let at = self.node_ref(member, node);
        for g in graph.gpus() {
            let gpu = Gpu {
                at: at.clone(),
                uuid: g.uuid.clone(),
            };
            if !self.suspect.is_empty() && self.suspect.contains(&gpu.slot()) {
                busy.insert(g.index);
            }
            if self.holds.get(&gpu).copied().unwrap_or(0) > 0 {
                held.insert(g.index);
            }
        }
        (busy, held)
    }

    /// The node's shared names (new ones when it has published no topology).
    fn node_ref(&self, member: &str, node: &str) -> NodeRef {
        self.members
            .get(member)
            .and_then(|m| m.topologies.get(node))
            .map_or_else(|| Arc::new((member.into(), node.into())), |t| t.at.clone())
    }

    /// A slot as the cache keeps it: its names and UUID shared where the cache has them.
    fn gpu(&self, s: &Slot) -> Gpu {
        let uuid = self
            .claims
            .get_key_value(s.uuid.as_str())
            .map_or_else(|| s.uuid.as_str().into(), |(u, _)| u.clone());
        Gpu {
            at: self.node_ref(&s.member, &s.node),
            uuid,
        }
    }

    /// Slots as the cache keeps them, sorted.
    fn gpus<'a>(&self, slots: impl IntoIterator<Item = &'a Slot>) -> Slots {
        let mut out: Vec<Gpu> = slots.into_iter().map(|s| self.gpu(s)).collect();
        out.sort_unstable();
        out.dedup();
        out.into()
    }

    // ----- suspect GPUs -----

    /// Marks (`on`) or clears GPUs that a member's scheduler refused: while marked they count as
    /// busy, so no decision picks them.
    pub fn set_suspect(&mut self, slots: &BTreeSet<Slot>, on: bool) {
        let mut nodes = BTreeSet::new();
        for s in slots {
            let changed = if on {
                self.suspect.insert(s.clone())
            } else {
                self.suspect.remove(s)
            };
            if changed {
                nodes.insert((s.member.clone(), s.node.clone()));
            }
        }
        for (m, n) in nodes {
            self.derive(&m, &n);
        }
    }

    // ----- assignments -----

    /// Counts one more (`up`) or one fewer hold on `s`; returns whether the GPU became held or
    /// free (its node must be derived again).
    fn hold(&mut self, s: &Gpu, up: bool) -> bool {
        let c = self.holds.entry(s.clone()).or_default();
        let before = *c;
        if up {
            *c += 1;
        } else {
            *c = c.saturating_sub(1);
        }
        let after = *c;
        if after == 0 {
            self.holds.remove(s);
        }
        (before == 0) != (after == 0)
    }

    /// Holds `new` and releases `old` (slots in both stay held), then derives each node whose
    /// GPUs changed once, whatever the number of its slots.
    fn replace(&mut self, old: &[Gpu], new: &[Gpu]) {
        let mut changed: Vec<(&str, &str)> = Vec::new();
        for s in new.iter().filter(|s| !contains(old, s)) {
            if self.hold(s, true) {
                changed.push((s.member(), s.node()));
            }
        }
        for s in old.iter().filter(|s| !contains(new, s)) {
            if self.hold(s, false) {
                changed.push((s.member(), s.node()));
            }
        }
        changed.sort_unstable();
        changed.dedup();
        for (m, n) in changed {
            self.derive(m, n);
        }
    }

    /// The hub status of job `uid` holds `slots` (empty: it holds nothing, e.g. finished).
    /// An assumption the status now covers is dropped.
    pub fn set_job(&mut self, uid: &str, name: JobName, slots: BTreeSet<Slot>) {
        let j = self.jobs.remove(uid).unwrap_or_default();
        let mut j = j;
        let old = std::mem::take(&mut j.hub);
        let slots = self.gpus(&slots);
        self.replace(&old, &slots);
        self.index_nodes(uid, &old, false);
        self.index_nodes(uid, &slots, true);
        j.hub = slots;
        j.name = Some(name);
        let (seen, kept): (Vec<Slots>, Vec<Slots>) = std::mem::take(&mut j.assumed)
            .into_iter()
            .partition(|a| a.iter().all(|s| contains(&j.hub, s)));
        for a in seen {
            self.replace(&a, &[]);
        }
        j.assumed = kept;
        self.jobs.insert(uid.to_string(), j);
    }

    fn index_nodes(&mut self, uid: &str, slots: &[Gpu], on: bool) {
        // Sorted by node: each node once.
        let mut nodes: Vec<&NodeRef> = slots.iter().map(|s| &s.at).collect();
        nodes.dedup();
        for k in nodes {
            if on {
                let jobs = self.on_node.entry(k.clone()).or_default();
                if let Err(at) = jobs.binary_search_by(|j| j.as_str().cmp(uid)) {
                    jobs.insert(at, uid.to_string());
                }
            } else if let Some(set) = self.on_node.get_mut(k) {
                set.retain(|j| j != uid);
                if set.is_empty() {
                    self.on_node.remove(k);
                }
            }
        }
    }

    /// Reserves `slots` for job `uid` (the GPUs of jobs preempted for it): no other job gets
    /// them once their holders release them.
    pub fn reserve(&mut self, uid: &str, slots: &BTreeSet<Slot>) {
        self.unreserve(uid);
        let slots = self.gpus(slots);
        self.replace(&[], &slots);
        self.reserved.insert(uid.to_string(), slots);
    }

    /// Drops job `uid`'s reservation (it is gone). Returns whether it had one.
    pub fn unreserve(&mut self, uid: &str) -> bool {
        let Some(s) = self.reserved.remove(uid) else {
            return false;
        };
        self.replace(&s, &[]);
        true
    }

    /// Drops job `uid`'s reservation for its own decision: the GPUs freed are its alone, no
    /// other job is woken for them (see [`super::State::settle`]).
    pub fn unreserve_for_decision(&mut self, uid: &str) {
        let woken = self.wakes.nodes.len();
        if self.unreserve(uid) {
            self.wakes.nodes.truncate(woken);
        }
    }

    /// Jobs whose hub status holds GPUs on `node` of `member`.
    pub fn jobs_on_node(&self, member: &str, node: &str) -> Vec<String> {
        let key: (Arc<str>, Arc<str>) = (member.into(), node.into());
        self.on_node
            .get(&key)
            .map(|s| s.to_vec())
            .unwrap_or_default()
    }

    /// The GPUs job `uid`'s hub status holds.
    pub fn hub_slots(&self, uid: &str) -> Vec<Slot> {
        self.jobs
            .get(uid)
            .map_or_else(Vec::new, |j| j.hub.iter().map(Gpu::slot).collect())
    }

    /// Whether job `uid`'s hub status holds exactly `slots`, as last set.
    pub fn hub_holds(&self, uid: &str, slots: &BTreeSet<Slot>) -> bool {
        let hub = self.jobs.get(uid).map_or(&[][..], |j| &j.hub);
        hub.len() == slots.len() && hub.iter().zip(slots).all(|(g, s)| g.is(s))
    }

    /// Kind, namespace and name of job `uid`, when known.
    pub fn job_name(&self, uid: &str) -> Option<&JobName> {
        self.jobs.get(uid)?.name.as_ref()
    }

    /// Whether new work may be placed on `member` (schedulable, its pods listed), and its
    /// labels.
    pub fn member_open(&self, member: &str) -> Option<&BTreeMap<String, String>> {
        self.members
            .get(member)
            .filter(|m| m.info.schedulable && m.pods_synced)
            .map(|m| &m.info.labels)
    }

    /// Of `slots`, how many are held (not free) now.
    pub fn held_count(&self, slots: &BTreeSet<Slot>) -> usize {
        slots
            .iter()
            .filter(|s| self.holds.get(&self.gpu(s)).is_some_and(|n| *n > 0))
            .count()
    }

    /// Job `uid` is gone from the hub.
    pub fn forget_job(&mut self, uid: &str) {
        if let Some(j) = self.jobs.remove(uid) {
            self.replace(&j.hub, &[]);
            self.index_nodes(uid, &j.hub, false);
            for a in j.assumed {
                self.replace(&a, &[]);
            }
        }
    }

    /// Jobs the hub no longer has after a relist.
    pub fn retain_jobs(&mut self, kind: &str, keep: &BTreeSet<String>) {
        let gone: Vec<String> = self
            .jobs
            .iter()
            .filter(|(uid, j)| {
                j.name.as_ref().is_some_and(|n| n.kind == kind) && !keep.contains(*uid)
            })
            .map(|(u, _)| u.clone())
            .collect();
        for u in gone {
            self.forget_job(&u);
        }
    }

    /// Holds `slots` for job `uid` until its hub status shows them (or [`Self::unassume`]).
    /// Earlier assumptions of the job are kept (see [`JobHolds`]).
    pub fn assume(&mut self, uid: &str, slots: BTreeSet<Slot>) {
        let mut j = self.jobs.remove(uid).unwrap_or_default();
        let slots = self.gpus(&slots);
        self.replace(&[], &slots);
        j.assumed.push(slots);
        self.jobs.insert(uid.to_string(), j);
    }

    /// Drops the job's latest assumption: its write failed. Earlier ones, whose writes
    /// succeeded, stay until their status is observed.
    pub fn unassume(&mut self, uid: &str) {
        if let Some(j) = self.jobs.get_mut(uid)
            && let Some(a) = j.assumed.pop()
        {
            self.replace(&a, &[]);
        }
    }

    /// Whether job `uid` has an assignment not yet seen in its hub status.
    pub fn is_assumed(&self, uid: &str) -> bool {
        self.jobs.get(uid).is_some_and(|j| !j.assumed.is_empty())
    }

    /// A gpupool pod in a member holds `slots` (empty when it finished or is gone).
    pub fn set_pod(&mut self, member: &str, ns: &str, name: &str, slots: BTreeSet<Slot>) {
        let key = (member.to_string(), ns.to_string(), name.to_string());
        let old = self.pods.remove(&key).unwrap_or_default();
        // A pod holds GPUs only on its own member.
        let slots = self.gpus(slots.iter().filter(|s| s.member == member));
        self.replace(&old, &slots);
        if !slots.is_empty() {
            self.pods.insert(key, slots);
        }
    }

    /// Replaces every pod of a member (after a relist): (namespace, name) → slots.
    pub fn resync_pods(&mut self, member: &str, pods: BTreeMap<(String, String), BTreeSet<Slot>>) {
        let gone: Vec<_> = self
            .pods
            .keys()
            .filter(|k| k.0 == member && !pods.contains_key(&(k.1.clone(), k.2.clone())))
            .cloned()
            .collect();
        for k in gone {
            self.set_pod(&k.0, &k.1, &k.2, BTreeSet::new());
        }
        for ((ns, name), s) in pods {
            self.set_pod(member, &ns, &name, s);
        }
        let m = self.member_mut(member);
        if !m.pods_synced {
            // The member's nodes were held back until its pods were known.
            m.pods_synced = true;
            self.wakes.all = true;
            self.dirty_members.insert(member.to_string());
        }
    }

    /// The member's pod watch restarted: its assignments are unknown until the next resync.
    pub fn pods_unsynced(&mut self, member: &str) {
        if let Some(m) = self.members.get_mut(member) {
            m.pods_synced = false;
            self.dirty_members.insert(member.to_string());
        }
    }

    /// Hub jobs holding GPUs on `member`.
    pub fn jobs_on(&self, member: &str) -> Vec<JobName> {
        self.jobs
            .values()
            .filter(|j| j.hub.iter().any(|s| s.member() == member))
            .filter_map(|j| j.name.clone())
            .collect()
    }

    /// Wakes collected since the last call.
    pub fn take_wakes(&mut self) -> Wakes {
        std::mem::take(&mut self.wakes)
    }

    // ----- reading -----

    /// GPU model on a node, when known.
    pub fn model_of(&self, member: &str, node: &str) -> Option<String> {
        let m = self.members.get(member)?;
        let (g, _) = m.topologies.get(node)?.graph.as_ref().ok()?;
        g.gpus().first().map(|g| g.model.to_string())
    }

    /// Indexes on their node of the GPUs with these UUIDs, in their order (empty unless the
    /// node's topology knows every one).
    pub fn gpu_indexes(&self, member: &str, node: &str, uuids: &[String]) -> Vec<i32> {
        let Some(t) = self
            .members
            .get(member)
            .and_then(|m| m.topologies.get(node))
        else {
            return Vec::new();
        };
        let Ok((graph, _)) = &t.graph else {
            return Vec::new();
        };
        uuids
            .iter()
            .map(|u| {
                graph
                    .gpus()
                    .iter()
                    .find(|g| *g.uuid == **u)
                    .map(|g| g.index as i32)
            })
            .collect::<Option<Vec<i32>>>()
            .unwrap_or_default()
    }

    /// One placeable node.
    pub fn node(&self, member: &str, node: &str) -> Option<&NodeState> {
        self.members.get(member)?.ready.get(node).map(|n| &**n)
    }

    /// Why a node cannot take work, if it cannot.
    pub fn unusable_reason(&self, member: &str, node: &str) -> Option<&str> {
        self.members
            .get(member)?
            .unusable
            .get(node)
            .map(String::as_str)
    }

    /// GPU nodes the member has (placeable or not).
    pub fn node_count(&self, member: &str) -> usize {
        self.members.get(member).map_or(0, |m| {
            m.nodes.keys().filter(|n| m.gpu_cap(n).is_some()).count()
        })
    }

    /// Supply problems and quarantined nodes of a member, one line each.
    pub fn problems(&self, member: &str) -> Vec<String> {
        let Some(m) = self.members.get(member) else {
            return Vec::new();
        };
        let mut out: Vec<String> = m
            .ready
            .values()
            .flat_map(|n| n.problems.iter().cloned())
            .collect();
        out.extend(
            m.unusable
                .iter()
                .filter(|(_, r)| r.starts_with("quarantined"))
                .map(|(n, r)| format!("{n}: {r}")),
        );
        out
    }

    /// Capacity of a member as the scheduler sees it.
    pub fn capacity(&self, member: &str) -> CapacitySummary {
        let Some(m) = self.members.get(member) else {
            return CapacitySummary::default();
        };
        let mut by_model: BTreeMap<(String, i64), ModelCapacity> = BTreeMap::new();
        let mut islands = Vec::new();
        let (mut total, mut free_total) = (0, 0);
        for n in m.ready.values() {
            let free = n.free();
            for g in n.graph.gpus().iter().filter(|g| n.usable.contains(g.index)) {
                let e = by_model
                    .entry((g.model.to_string(), g.memory_mib))
                    .or_insert_with(|| ModelCapacity {
                        model: g.model.to_string(),
                        memory_mib: g.memory_mib,
                        ..Default::default()
                    });
                e.total += 1;
                total += 1;
                if free.contains(g.index) {
                    e.free += 1;
                    free_total += 1;
                }
            }
            // What an `nvlink: clique` worker can get on this node: its largest free clique.
            match n.graph.largest_free_nvlink_clique(free) {
                0 => {}
                k => islands.push(k as i32),
            }
        }
        // GPU nodes without a topology yet still count (not free: nothing can be placed there).
        let mut nodes = 0;
        for name in m.nodes.keys() {
            let Some((cap, _)) = m.gpu_cap(name) else {
                continue;
            };
            nodes += 1;
            if !m.topologies.contains_key(name) {
                total += cap as i32;
            }
        }
        islands.sort_unstable_by(|a, b| b.cmp(a));
        CapacitySummary {
            nodes,
            gpus_total: total,
            gpus_free: free_total,
            by_model: by_model.into_values().collect(),
            largest_free_nvlink_cliques: islands,
        }
    }

    /// Whether every GPU of `slots` is free now (on a placeable node, neither busy nor held):
    /// what a decision taken on a [`Snapshot`] is checked against before it is assumed.
    pub fn still_free(&self, slots: &BTreeSet<Slot>) -> bool {
        slots.iter().all(|s| {
            let Some(n) = self.node(&s.member, &s.node) else {
                return false;
            };
            n.graph
                .index_of(&s.uuid)
                .is_some_and(|i| n.free().contains(i))
        })
    }

    /// Slots of a placement on `member`: (node, UUIDs) per pod.
    pub fn slots<'a>(
        member: &str,
        pods: impl IntoIterator<Item = (&'a str, &'a [String])>,
    ) -> BTreeSet<Slot> {
        pods.into_iter()
            .flat_map(|(node, uuids)| {
                uuids.iter().map(move |u| Slot {
                    member: member.to_string(),
                    node: node.to_string(),
                    uuid: u.clone(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
