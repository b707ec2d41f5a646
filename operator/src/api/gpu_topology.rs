//! `GpuTopology`: the GPUs of one node and the links between them, written by the node agent.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// GPUs and interconnect of one node. Cluster-scoped; named after the node.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "gpupool.io",
    version = "v1alpha1",
    kind = "GpuTopology",
    plural = "gputopologies",
    shortname = "gt",
    category = "gpupool",
    label("app.kubernetes.io/part-of", "gpupool"),
    status = "GpuTopologyStatus",
    doc = "GPUs of one node and the NVLink/NVSwitch/PCIe links between them, published by the gpupool node agent.",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.nodeName"),
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.gpus[0].model"),
    printcolumn(name = "GPUs", type_ = "integer", json_path = ".status.gpuCount"),
    printcolumn(name = "Source", type_ = "string", json_path = ".spec.source"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("self.links.all(l, l.a < size(self.gpus) && l.b < size(self.gpus))").message("links must refer to GPU indexes present in gpus"),
    validation = Rule::new("self.gpus.all(g, self.gpus.exists_one(h, h.uuid == g.uuid))").message("gpu uuids must be unique within a node"),
    validation = Rule::new("self.gpus.all(g, self.gpus.exists_one(h, h.index == g.index))").message("gpu indexes must be unique within a node"),
    validation = Rule::new("self.gpus.all(g, g.index < size(self.gpus))").message("gpu indexes must be 0 to (number of gpus - 1) without gaps, as NVML numbers them")
)]
#[serde(rename_all = "camelCase")]
pub struct GpuTopologySpec {
    /// Node the GPUs belong to.
    #[x_kube(validation = Rule::new("size(self) > 0").message("nodeName must not be empty"))]
    pub node_name: String,
    /// Where the data came from.
    #[serde(default)]
    pub source: TopologySource,
    /// NVIDIA driver version, when read from NVML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<String>,
    /// The GPUs, by index.
    #[schemars(length(max = 64))]
    pub gpus: Vec<Gpu>,
    /// One entry per unordered GPU pair (a < b).
    #[serde(default)]
    #[schemars(length(max = 2016))]
    pub links: Vec<GpuLink>,
}

/// Where a topology was read from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TopologySource {
    /// Read from the driver through NVML.
    #[default]
    Nvml,
    /// Read from a topology file (simulated nodes, hosts without a driver).
    File,
}

/// One GPU.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Gpu {
    /// NVML device index.
    #[x_kube(validation = Rule::new("self >= 0 && self < 64").message("gpu index must be between 0 and 63"))]
    pub index: i32,
    /// NVML UUID (`GPU-…`).
    #[schemars(length(max = 128))]
    #[x_kube(validation = Rule::new("self.startsWith('GPU-') || self.startsWith('MIG-')").message("uuid must start with GPU- or MIG-"))]
    pub uuid: String,
    /// Model name.
    pub model: String,
    /// Total memory in MiB.
    #[serde(rename = "memoryMiB")]
    #[x_kube(validation = Rule::new("self >= 0").message("memoryMiB must not be negative"))]
    pub memory_mib: i64,
    /// PCI bus id (`00000000:18:00.0`).
    #[serde(default)]
    pub pci_bus_id: String,
    /// NUMA node the GPU is attached to, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa_node: Option<i32>,
    /// Whether MIG mode is enabled.
    #[serde(default)]
    pub mig_enabled: bool,
    /// Active NVLinks that end in an NVSwitch.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0").message("nvswitchLinks must not be negative"))]
    pub nvswitch_links: i32,
}

/// PCIe relationship of two GPUs, from NVML's topology common ancestor (closest first).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum PcieLevel {
    /// On the same board (multi-GPU card).
    SameBoard,
    /// Behind one PCIe switch.
    SingleSwitch,
    /// Behind several PCIe switches without crossing a host bridge.
    MultiSwitch,
    /// Through the same host bridge.
    HostBridge,
    /// Same NUMA node, through the CPU.
    SameNuma,
    /// Across CPU sockets (SMP interconnect).
    #[default]
    CrossSocket,
}

/// The link between two GPUs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("self.a < self.b").message("a link's a must be lower than its b (one entry per unordered pair)"))]
#[serde(rename_all = "camelCase")]
pub struct GpuLink {
    /// Lower GPU index.
    #[x_kube(validation = Rule::new("self >= 0").message("link GPU indexes must not be negative"))]
    pub a: i32,
    /// Higher GPU index.
    #[x_kube(validation = Rule::new("self >= 0").message("link GPU indexes must not be negative"))]
    pub b: i32,
    /// Direct NVLink links between the two GPUs (NVLink bridges, hybrid cube-mesh).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0").message("nvlinks must not be negative"))]
    pub nvlinks: i32,
    /// Both GPUs reach each other through an NVSwitch fabric.
    #[serde(default)]
    pub nvswitch: bool,
    /// PCIe relationship.
    #[serde(default)]
    pub pcie: PcieLevel,
}

/// What the agent observed last.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuTopologyStatus {
    /// Number of GPUs.
    #[serde(default)]
    pub gpu_count: i32,
    /// UUIDs of GPUs in use: with running compute processes, or assigned to a pod by the kubelet.
    #[serde(default)]
    pub gpus_in_use: Vec<String>,
    /// Which `nvidia.com/gpu` devices the kubelet gave each container (its pod-resources API;
    /// device-plugin nodes). The hub compares them with the GPUs it chose.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_devices: Vec<PodDevices>,
    /// When the agent last refreshed this object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
}

/// Devices the kubelet assigned to one container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodDevices {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// Device IDs (GPU UUIDs with the NVIDIA device plugin).
    pub device_ids: Vec<String>,
}
