//! Reading the node's GPUs through NVML (`nvml-wrapper`).

use super::Reading;
use crate::api::{Gpu, GpuLink, GpuTopologySpec, PcieLevel, TopologySource};
use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TopologyLevel;
use nvml_wrapper::error::NvmlError;
use std::collections::BTreeMap;

/// NVML library name on a host with the driver installed (the unversioned `.so` only comes with
/// development packages).
pub const NVML_LIB: &str = "libnvidia-ml.so.1";

/// NVML could not be used; `Display` is one line meant for people.
#[derive(Debug)]
pub struct NvmlUnavailable(pub String);

impl std::fmt::Display for NvmlUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NvmlUnavailable {}

/// NVLinks per GPU NVML can report (`NVML_NVLINK_MAX_LINKS`).
pub const NVLINK_MAX_LINKS: u32 = 18;

const HINT: &str = "pass --topology-file to publish a topology from a file";

/// The one-line explanation for an NVML initialisation failure.
pub fn unavailable_message(err: &NvmlError) -> String {
    let msg = match err {
        NvmlError::LibloadingError(e) if e.to_string().contains("cannot open shared object") => {
            format!(
                "NVML not available ({NVML_LIB} not found): no NVIDIA driver on this node; {HINT}"
            )
        }
        NvmlError::LibloadingError(e) => {
            format!("NVML not available ({NVML_LIB} could not be loaded: {e}); {HINT}")
        }
        NvmlError::DriverNotLoaded => {
            format!("NVML not available (the NVIDIA kernel driver is not loaded); {HINT}")
        }
        NvmlError::NoPermission => {
            format!("NVML not available (no permission to talk to the NVIDIA driver); {HINT}")
        }
        e => format!("NVML failed to initialise: {e}; {HINT}"),
    };
    msg.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Loads NVML (`libnvidia-ml.so.1`, then the default name).
pub fn init() -> Result<Nvml, NvmlUnavailable> {
    match Nvml::builder()
        .lib_path(std::ffi::OsStr::new(NVML_LIB))
        .init()
    {
        Ok(n) => Ok(n),
        Err(first) => Nvml::init().map_err(|_| NvmlUnavailable(unavailable_message(&first))),
    }
}

/// NVML's topology common ancestor as a [`PcieLevel`].
pub fn pcie_level(level: TopologyLevel) -> PcieLevel {
    match level {
        TopologyLevel::Internal => PcieLevel::SameBoard,
        TopologyLevel::Single => PcieLevel::SingleSwitch,
        TopologyLevel::Multiple => PcieLevel::MultiSwitch,
        TopologyLevel::HostBridge => PcieLevel::HostBridge,
        TopologyLevel::Node => PcieLevel::SameNuma,
        TopologyLevel::System => PcieLevel::CrossSocket,
    }
}

fn pci_key(domain: u32, bus: u32, device: u32) -> (u32, u32, u32) {
    (domain, bus, device)
}

/// Reads every GPU, every pair's links and the GPUs in use. `node_name` goes into the spec.
///
/// NVLink: every active link's remote PCI address is looked up among the node's GPUs; a link
/// whose far end is another GPU counts toward that pair, any other far end is an NVSwitch (NVML's
/// remote-device-type query is not usable through nvml-wrapper 0.13, and NVSwitches are often
/// invisible inside VMs anyway). Two GPUs that both have switch links share the fabric.
pub fn read(nvml: &Nvml, node_name: &str) -> Result<Reading, NvmlError> {
    let count = nvml.device_count()?;
    let mut gpus = Vec::new();
    let mut by_pci = BTreeMap::new();
    let mut in_use = Vec::new();
    for i in 0..count {
        let d = nvml.device_by_index(i)?;
        let pci = d.pci_info()?;
        by_pci.insert(pci_key(pci.domain, pci.bus, pci.device), i as usize);
        let uuid = d.uuid()?;
        if d.running_compute_processes()
            .map(|p| !p.is_empty())
            .unwrap_or(false)
        {
            in_use.push(uuid.clone());
        }
        gpus.push(Gpu {
            index: i as i32,
            uuid,
            model: d.name()?,
            memory_mib: (d.memory_info()?.total / (1024 * 1024)) as i64,
            pci_bus_id: pci.bus_id,
            numa_node: d.numa_node_id().ok().map(|n| n as i32),
            mig_enabled: d.mig_mode().map(|m| m.current == 1).unwrap_or(false),
            nvswitch_links: 0,
        });
    }
    let n = gpus.len();
    let mut direct = vec![vec![0i32; n]; n];
    for i in 0..n {
        let d = nvml.device_by_index(i as u32)?;
        for link in 0..NVLINK_MAX_LINKS {
            let l = d.link_wrapper_for(link);
            if !matches!(l.is_active(), Ok(true)) {
                continue;
            }
            match l.remote_pci_info() {
                Ok(r) => match by_pci.get(&pci_key(r.domain, r.bus, r.device)) {
                    Some(&j) if j != i => direct[i][j] += 1,
                    Some(_) => {}
                    None => gpus[i].nvswitch_links += 1,
                },
                Err(_) => gpus[i].nvswitch_links += 1,
            }
        }
    }
    let mut links = Vec::new();
    for a in 0..n {
        for b in a + 1..n {
            let da = nvml.device_by_index(a as u32)?;
            let db = nvml.device_by_index(b as u32)?;
            let pcie = da
                .topology_common_ancestor(db)
                .map(pcie_level)
                .unwrap_or(PcieLevel::CrossSocket);
            links.push(GpuLink {
                a: a as i32,
                b: b as i32,
                nvlinks: direct[a][b].max(direct[b][a]),
                nvswitch: gpus[a].nvswitch_links > 0 && gpus[b].nvswitch_links > 0,
                pcie,
            });
        }
    }
    Ok(Reading {
        spec: GpuTopologySpec {
            node_name: node_name.to_string(),
            source: TopologySource::Nvml,
            driver_version: nvml.sys_driver_version().ok(),
            gpus,
            links,
        },
        in_use,
        pod_devices: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_is_one_clear_line() {
        let err = Nvml::builder()
            .lib_path(std::ffi::OsStr::new("libnvidia-ml-does-not-exist.so.1"))
            .init()
            .unwrap_err();
        let msg = unavailable_message(&err);
        assert_eq!(
            msg,
            "NVML not available (libnvidia-ml.so.1 not found): no NVIDIA driver on this node; pass --topology-file to publish a topology from a file"
        );
        assert!(msg.ends_with("no NVIDIA driver on this node; pass --topology-file to publish a topology from a file"), "{msg}");
        assert!(!msg.contains('\n'));
        assert!(unavailable_message(&NvmlError::DriverNotLoaded).contains("driver is not loaded"));
    }

    #[test]
    fn topology_levels_map_closest_first() {
        assert_eq!(pcie_level(TopologyLevel::Internal), PcieLevel::SameBoard);
        assert_eq!(pcie_level(TopologyLevel::Single), PcieLevel::SingleSwitch);
        assert_eq!(pcie_level(TopologyLevel::System), PcieLevel::CrossSocket);
    }
}
