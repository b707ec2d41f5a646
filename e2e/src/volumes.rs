//! Pre-bound PersistentVolumes and claims in a simulated member, so pods of the realistic examples
//! (a dataset and a checkpoint PVC) pass the member's kube-scheduler. No storage exists behind
//! them: KWOK runs no kubelet and mounts nothing.

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// Creates PersistentVolume `<ns>-<name>` and claim `ns/name` bound to each other (as the
/// persistent-volume binder would leave them), unless the claim exists.
pub async fn prebound_claim(client: &kube::Client, ns: &str, name: &str, size: &str) -> Result<()> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    if pvcs.get_opt(name).await?.is_some() {
        return Ok(());
    }
    let pv_name = format!("{ns}-{name}");
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv: PersistentVolume = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv_name, "labels": {"gpupool.io/simulated": "true"}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "hostPath": {"path": format!("/var/lib/gpupool-sim/{pv_name}")},
            "claimRef": {"namespace": ns, "name": name},
        },
    }))?;
    pvs.create(&PostParams::default(), &pv)
        .await
        .with_context(|| format!("creating PersistentVolume {pv_name}"))?;
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": ns,
            "annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "",
            "volumeName": pv_name,
            "resources": {"requests": {"storage": size}},
        },
    }))?;
    pvcs.create(&PostParams::default(), &pvc)
        .await
        .with_context(|| format!("creating PersistentVolumeClaim {ns}/{name}"))?;
    let bound = |extra: serde_json::Value| {
        let mut v = json!({"status": {"phase": "Bound"}});
        if let Some(o) = extra.as_object() {
            for (k, x) in o {
                v["status"][k] = x.clone();
            }
        }
        Patch::Merge(v)
    };
    pvs.patch_status(&pv_name, &PatchParams::default(), &bound(json!({})))
        .await?;
    pvcs.patch_status(
        name,
        &PatchParams::default(),
        &bound(json!({"accessModes": ["ReadWriteMany"], "capacity": {"storage": size}})),
    )
    .await?;
    Ok(())
}

/// The claims `deploy/examples/training-gpt.yaml` mounts, in the tenant namespace of hub
/// namespace `hub_ns` (created as gpupool creates it, as a member's owner offering storage to a
/// hub namespace would find it).
pub async fn example_claims(client: &kube::Client, hub_ns: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = gpupool::tenant::namespace_name(hub_ns);
    if namespaces.get_opt(&ns).await?.is_none() {
        namespaces
            .create(
                &PostParams::default(),
                &gpupool::tenant::namespace_object(hub_ns),
            )
            .await
            .with_context(|| format!("creating namespace {ns}"))?;
    }
    prebound_claim(client, &ns, "tokens-v3", "10Ti").await?;
    prebound_claim(client, &ns, "gpt-checkpoints", "2Ti").await
}
