//! **Simulation** of NVIDIA's DRA driver (k8s-dra-driver-gpu) for nodes without it, such as KWOK
//! nodes in tests and the local demo: publishes the node's GPUs as a `resource.k8s.io/v1`
//! ResourceSlice with the driver name (`gpu.nvidia.com`) and the attribute names the real driver
//! uses, so a member's kube-scheduler allocates gpupool's ResourceClaims exactly as it would with
//! the driver. Nothing prepares a device on the node: on real GPU nodes install the driver and do
//! not run this. Every slice it writes is labelled `gpupool.io/simulated=true`.

use crate::api::GpuTopologySpec;
use crate::workloads::NVIDIA_DRA_DRIVER;
use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::ResourceSlice;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

/// Label on every simulated slice.
pub const SIMULATED_LABEL: &str = "gpupool.io/simulated";

/// Architecture and CUDA compute capability of a model name, as NVML reports them.
fn arch_of(model: &str) -> (&'static str, &'static str) {
    let m = model.to_ascii_uppercase();
    if m.contains("B200") || m.contains("GB200") {
        ("Blackwell", "10.0.0")
    } else if m.contains("H100") || m.contains("H200") || m.contains("H800") || m.contains("GH200")
    {
        ("Hopper", "9.0.0")
    } else if m.contains("L40") || m.contains("L4") || m.contains("RTX 40") || m.contains("ADA") {
        ("Ada Lovelace", "8.9.0")
    } else if m.contains("A100") || m.contains("A800") || m.contains("A30") {
        ("Ampere", "8.0.0")
    } else if m.contains("A10") || m.contains("A40") || m.contains("A6000") {
        ("Ampere", "8.6.0")
    } else if m.contains("V100") {
        ("Volta", "7.0.0")
    } else if m.contains("T4") {
        ("Turing", "7.5.0")
    } else {
        ("unknown", "0.0.0")
    }
}

/// The ResourceSlice NVIDIA's driver would publish for these GPUs (one pool per node, one slice;
/// devices `gpu-<index>`). Owned by the Node so it goes with it.
pub fn resource_slice(spec: &GpuTopologySpec, node: &Node) -> ResourceSlice {
    let name = format!("{}-{}", spec.node_name, NVIDIA_DRA_DRIVER.replace('.', "-"));
    let driver_version = spec
        .driver_version
        .clone()
        .unwrap_or_else(|| "0.0.0".into());
    let devices: Vec<Value> = spec
        .gpus
        .iter()
        .map(|g| {
            let (arch, cc) = arch_of(&g.model);
            json!({
                "name": format!("gpu-{}", g.index),
                "attributes": {
                    "type": {"string": "gpu"},
                    "index": {"int": g.index},
                    "uuid": {"string": g.uuid},
                    "productName": {"string": g.model},
                    "brand": {"string": "Nvidia"},
                    "architecture": {"string": arch},
                    "cudaComputeCapability": {"version": cc},
                    "driverVersion": {"version": semver3(&driver_version)},
                    "pcieBusID": {"string": g.pci_bus_id},
                },
                "capacity": {"memory": {"value": format!("{}Mi", g.memory_mib)}},
            })
        })
        .collect();
    let v = json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {
            "name": name,
            "labels": {SIMULATED_LABEL: "true", "app.kubernetes.io/part-of": "gpupool"},
            "annotations": {"gpupool.io/simulation": "published by gpupool-agent --simulate-dra, not by NVIDIA's DRA driver; no device is prepared on the node"},
            "ownerReferences": node.metadata.uid.as_ref().map(|uid| vec![json!({
                "apiVersion": "v1", "kind": "Node",
                "name": node.metadata.name.clone().unwrap_or_default(), "uid": uid,
            })]),
        },
        "spec": {
            "driver": NVIDIA_DRA_DRIVER,
            "nodeName": spec.node_name,
            "pool": {"name": spec.node_name, "generation": 1, "resourceSliceCount": 1},
            "devices": devices,
        },
    });
    serde_json::from_value(v).expect("static slice shape is a valid ResourceSlice")
}

/// `550.54.15` stays; `550.54` becomes `550.54.0` (DRA version attributes are semver).
fn semver3(v: &str) -> String {
    let mut parts: Vec<&str> = v.split('.').take(3).collect();
    while parts.len() < 3 {
        parts.push("0");
    }
    parts
        .iter()
        .map(|p| {
            p.trim_start_matches('0')
                .parse::<u64>()
                .unwrap_or(0)
                .to_string()
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Server-side applies the simulated slice for the node (which must exist).
pub async fn publish_simulated_slice(client: &kube::Client, spec: &GpuTopologySpec) -> Result<()> {
    let node = super::node_of(client, &spec.node_name).await?;
    let slice = resource_slice(spec, &node);
    let api: Api<ResourceSlice> = Api::all(client.clone());
    let name = slice.metadata.name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(super::FIELD_MANAGER).force(),
        &Patch::Apply(&slice),
    )
    .await
    .with_context(|| {
        format!("applying ResourceSlice {name} (does the member serve resource.k8s.io/v1?)")
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_has_nvidia_driver_name_and_attributes() {
        let mut spec = crate::topology::fixtures::get("dgx-h100");
        spec.node_name = "n1".into();
        spec.driver_version = Some("550.54".into());
        let node = Node {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("n1".into()),
                uid: Some("u".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let s = serde_json::to_value(resource_slice(&spec, &node)).unwrap();
        assert_eq!(s["spec"]["driver"], "gpu.nvidia.com");
        assert_eq!(s["spec"]["nodeName"], "n1");
        assert_eq!(s["spec"]["pool"]["name"], "n1");
        assert_eq!(s["metadata"]["labels"][SIMULATED_LABEL], "true");
        assert_eq!(s["metadata"]["ownerReferences"][0]["uid"], "u");
        let d = &s["spec"]["devices"];
        assert_eq!(d.as_array().unwrap().len(), spec.gpus.len());
        assert_eq!(d[3]["name"], "gpu-3");
        assert_eq!(d[3]["attributes"]["uuid"]["string"], spec.gpus[3].uuid);
        assert_eq!(d[3]["attributes"]["index"]["int"], 3);
        assert_eq!(d[3]["attributes"]["architecture"]["string"], "Hopper");
        assert_eq!(
            d[3]["attributes"]["cudaComputeCapability"]["version"],
            "9.0.0"
        );
        assert_eq!(d[3]["attributes"]["driverVersion"]["version"], "550.54.0");
        assert_eq!(
            d[3]["capacity"]["memory"]["value"],
            format!("{}Mi", spec.gpus[3].memory_mib)
        );
    }

    #[test]
    fn versions_become_semver() {
        assert_eq!(semver3("535.104.05"), "535.104.5");
        assert_eq!(semver3("550"), "550.0.0");
    }
}
