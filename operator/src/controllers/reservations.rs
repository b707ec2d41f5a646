//! The operator's record of assigned GPUs lives in the API: in the hub jobs' status (written
//! before any pod is created) and on the pods in the members. This module reads it back.

use super::{Context, Result};
use crate::api::{InferenceJob, TrainingJob, TrainingPhase};
use crate::placement::uuids_held_by_pods;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use std::collections::BTreeSet;

/// GPU UUIDs assigned to any job other than `exclude_uid`, from the hub's job statuses and the
/// gpupool pods of every member. Call with the placement lock held.
pub async fn taken_gpus(ctx: &Context, exclude_uid: &str) -> Result<BTreeSet<String>> {
    let mut taken = BTreeSet::new();
    let tjs = Api::<TrainingJob>::all(ctx.hub.clone())
        .list(&ListParams::default())
        .await?;
    for j in tjs.items {
        if j.uid().as_deref() == Some(exclude_uid) {
            continue;
        }
        let Some(st) = j.status else { continue };
        if matches!(st.phase, TrainingPhase::Succeeded | TrainingPhase::Failed) {
            continue;
        }
        taken.extend(st.workers.into_iter().flat_map(|w| w.gpu_uuids));
    }
    let ijs = Api::<InferenceJob>::all(ctx.hub.clone())
        .list(&ListParams::default())
        .await?;
    for j in ijs.items {
        if j.uid().as_deref() == Some(exclude_uid) {
            continue;
        }
        let Some(st) = j.status else { continue };
        taken.extend(
            st.placements
                .into_iter()
                .flat_map(|p| p.gpus)
                .flat_map(|g| g.gpu_uuids),
        );
    }
    for m in ctx.registry.snapshot().await.values() {
        let mut inv = m.inventory.clone();
        inv.pods.retain(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(crate::federation::labels::JOB_UID))
                .map(String::as_str)
                != Some(exclude_uid)
        });
        taken.extend(uuids_held_by_pods(&inv));
    }
    Ok(taken)
}
