//! Renewing a push member's bound token (see [`crate::federation::credential`]): one step of
//! the MemberCluster heartbeat, after a successful probe. The next token is minted through the
//! member's API server with the credential in use, written into the kubeconfig Secret on the
//! hub (conditional on the version read, so an admin's concurrent edit wins), and the next
//! heartbeat connects with it.

use super::Context;
use super::status::event;
use crate::api::MemberCluster;
use crate::federation::credential::{self, BoundToken};
use crate::federation::{MemberLink, MemberView};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};

/// The member kubeconfig from its Secret on the hub, and the Secret's `resourceVersion`.
pub(super) async fn kubeconfig(
    mc: &MemberCluster,
    ctx: &Context,
) -> std::result::Result<(String, Option<String>), String> {
    let Some(r) = mc.spec.kubeconfig_ref() else {
        return Err("no kubeconfigSecretRef".into());
    };
    let ns = r
        .namespace
        .clone()
        .unwrap_or_else(|| ctx.config.namespace.clone());
    let secrets: Api<Secret> = Api::namespaced(ctx.hub.clone(), &ns);
    let s = match secrets.get_opt(&r.name).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err(format!("Secret {ns}/{} not found", r.name)),
        Err(e) => return Err(format!("reading Secret {ns}/{}: {e}", r.name)),
    };
    let data = s
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .ok_or_else(|| format!("Secret {ns}/{} has no key {:?}", r.name, r.key))?;
    let text = String::from_utf8(data.0.clone())
        .map_err(|_| format!("Secret {ns}/{} key {:?} is not UTF-8", r.name, r.key))?;
    Ok((text, s.metadata.resource_version.clone()))
}

/// Mints the member's next token once the one in use is two thirds through its life (or
/// [`super::Config::token_renew_before`] before its expiry), and
/// stores it in the kubeconfig Secret; a failure is reported by an Event once per distinct
/// reason and tried again at the next heartbeat (the token in use still works until it expires).
pub(super) async fn renew(mc: &MemberCluster, ctx: &Context, view: &mut MemberView) {
    let Some(b) = view.credential.clone() else {
        return;
    };
    if Timestamp::now().as_second() < b.renew_at(ctx.config.token_renew_before) {
        return;
    }
    let Some(MemberLink::Push(client)) = view.client.clone() else {
        return;
    };
    match mint_and_store(mc, ctx, &client, &b).await {
        Ok(expires) => {
            // Connected again with the new token at the next heartbeat (the Secret changed).
            view.credential = None;
            view.credential_error = None;
            let note = format!(
                "renewed the member's token of ServiceAccount {}/{}; the next one expires at {expires}",
                b.namespace, b.name
            );
            event(ctx, mc, false, "CredentialRenewed", "Renew", note);
        }
        Err(e) => {
            tracing::warn!(member = %mc.name_any(), error = %e, "renewing the member token");
            if view.credential_error.as_deref() != Some(e.as_str()) {
                let note = format!(
                    "the member's token expires at {}; renewing it failed: {e}",
                    Timestamp::from_second(b.expires)
                        .map(|t| t.to_string())
                        .unwrap_or_default()
                );
                event(ctx, mc, true, "CredentialRenewalFailed", "Renew", note);
                view.credential_error = Some(e);
            }
        }
    }
}

/// The next token, minted in the member and written into the kubeconfig Secret; its expiry.
async fn mint_and_store(
    mc: &MemberCluster,
    ctx: &Context,
    client: &kube::Client,
    b: &BoundToken,
) -> Result<String, String> {
    let token = credential::mint(client, &b.namespace, &b.name, b.lifetime())
        .await
        .map_err(|e| {
            format!(
                "minting a token of {}/{} in the member: {e}",
                b.namespace, b.name
            )
        })?;
    let expires = credential::claims(&token)
        .ok()
        .and_then(|c| c.expires)
        .and_then(|s| Timestamp::from_second(s).ok())
        .map(|t| t.to_string())
        .ok_or("the member issued a token without expiry")?;
    let Some(r) = mc.spec.kubeconfig_ref() else {
        return Err("no kubeconfigSecretRef".into());
    };
    let (text, version) = kubeconfig(mc, ctx).await?;
    let renewed = credential::with_token(&text, &token).map_err(|e| e.to_string())?;
    let ns = r
        .namespace
        .clone()
        .unwrap_or_else(|| ctx.config.namespace.clone());
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": version},
        "data": {r.key.clone(): ByteString(renewed.into_bytes())},
    });
    Api::<Secret>::namespaced(ctx.hub.clone(), &ns)
        .patch(&r.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| format!("writing Secret {ns}/{}: {e}", r.name))?;
    Ok(expires)
}
