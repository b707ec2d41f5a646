//! A pool admin's verbs on members: approve, deny (or revoke).

use crate::api::{Approval, MemberCluster};
use kube::api::{Api, Patch, PatchParams};

/// Sets a member's approval (merge patch of `spec.approval`, as `kubectl patch` would).
pub async fn set_approval(
    hub: &kube::Client,
    member: &str,
    approval: Approval,
) -> anyhow::Result<()> {
    let api: Api<MemberCluster> = Api::all(hub.clone());
    let mc = api
        .get_opt(member)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no MemberCluster named {member}"))?;
    if mc.spec.approval == approval {
        return Ok(());
    }
    api.patch(
        member,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"approval": approval}})),
    )
    .await?;
    Ok(())
}
