//! Publishing fixture topologies for simulated nodes, as the node agent does with `--topology-file`.

use anyhow::Result;
use gpupool::agent::{Reading, publish, read_topology_file};

/// Reads `deploy/topologies/<fixture>.yaml` for `node`. GPU UUIDs are made unique per node
/// (deterministically) so several simulated nodes can share one fixture.
pub fn fixture_for_node(fixture: &str, node: &str) -> Result<Reading> {
    let path = crate::repo_root()
        .join("deploy/topologies")
        .join(format!("{fixture}.yaml"));
    let mut r = read_topology_file(&path, Some(node))?;
    for g in &mut r.spec.gpus {
        let old = g.uuid.clone();
        g.uuid = node_uuid(node, g.index);
        for u in &mut r.in_use {
            if *u == old {
                *u = g.uuid.clone();
            }
        }
    }
    Ok(r)
}

/// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` derived from node name and index (FNV-1a).
pub fn node_uuid(node: &str, index: i32) -> String {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in node.bytes().chain(index.to_le_bytes()) {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    let s = format!("{h:032x}");
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &s[0..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..32]
    )
}

/// Publishes the fixture as the node's `GpuTopology` in the cluster `client` talks to, and, in a
/// cluster with the `gpu.nvidia.com` DeviceClass, also the simulated ResourceSlice (as the agent
/// does there with `--simulate-dra`).
pub async fn publish_fixture(client: &kube::Client, fixture: &str, node: &str) -> Result<Reading> {
    let r = fixture_for_node(fixture, node)?;
    publish(client, &r).await?;
    if gpupool::federation::dra::detect(client).await? == gpupool::api::BindingMode::Dra {
        gpupool::agent::dra::publish_simulated_slice(client, &r.spec).await?;
    }
    Ok(r)
}

/// UUIDs of the devices the member's scheduler allocated to a claim (device `gpu-<index>` in the
/// pool named after the node).
pub fn allocated_uuids(
    claim: &k8s_openapi::api::resource::v1::ResourceClaim,
) -> (String, std::collections::BTreeSet<String>) {
    let results = claim
        .status
        .as_ref()
        .and_then(|s| s.allocation.as_ref())
        .and_then(|a| a.devices.as_ref())
        .and_then(|d| d.results.clone())
        .unwrap_or_default();
    let pool = results.first().map(|r| r.pool.clone()).unwrap_or_default();
    let uuids = results
        .iter()
        .map(|r| {
            assert_eq!(r.driver, "gpu.nvidia.com");
            let ix: i32 = r.device.strip_prefix("gpu-").unwrap().parse().unwrap();
            node_uuid(&r.pool, ix)
        })
        .collect();
    (pool, uuids)
}
