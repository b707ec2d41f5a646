//! The agent's connection to the hub: clients from a bearer token, the join, and the credential
//! kept in the member.

use crate::api::{JoinPhase, JoinRequest, JoinRequestSpec};
use crate::join::names::JOIN_NAMESPACE;
use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use std::time::Duration;

/// What the agent holds after joining.
#[derive(Clone, Debug, PartialEq)]
pub struct Credential {
    /// Bearer token of the member's ServiceAccount on the hub.
    pub token: String,
    /// The member's hub namespace.
    pub namespace: String,
    /// The member's name.
    pub member: String,
}

/// How to reach the hub.
#[derive(Clone, Debug)]
pub struct HubEndpoint {
    /// `https://…` of the hub's API server.
    pub url: String,
    /// PEM of the CA that signed the hub's serving certificate (system roots when absent).
    pub ca_pem: Option<String>,
}

/// A hub client authenticating with `token`. Built from an in-memory kubeconfig so that TLS and
/// auth go through kube's own configuration code.
pub async fn client(hub: &HubEndpoint, token: &str) -> anyhow::Result<kube::Client> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut cluster = serde_json::json!({"server": hub.url});
    if let Some(ca) = &hub.ca_pem {
        cluster["certificate-authority-data"] = b64.encode(ca).into();
    }
    let kc = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "hub", "cluster": cluster}],
        "users": [{"name": "agent", "user": {"token": token}}],
        "contexts": [{"name": "hub", "context": {"cluster": "hub", "user": "agent"}}],
        "current-context": "hub",
    });
    let kc: kube::config::Kubeconfig = serde_json::from_value(kc)?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    cfg.connect_timeout = Some(Duration::from_secs(10));
    cfg.read_timeout = Some(Duration::from_secs(330));
    Ok(kube::Client::try_from(cfg)?)
}

pub use crate::federation::credential::{TokenClaims, claims};

/// The join token's id (the name of its ServiceAccount and of the request it may create).
pub fn join_token_id(token: &str) -> anyhow::Result<String> {
    let sub = claims(token)?.subject;
    let prefix = format!("system:serviceaccount:{JOIN_NAMESPACE}:");
    sub.strip_prefix(&prefix)
        .map(String::from)
        .ok_or_else(|| anyhow::anyhow!("not a gpupool join token (subject {sub})"))
}

fn unauthorized(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 401)
}

/// Presents the join token, waits for a pool admin's approval and returns the member credential.
pub async fn join(
    hub: &HubEndpoint,
    join_token: &str,
    spec: JoinRequestSpec,
    poll: Duration,
) -> anyhow::Result<Credential> {
    let id = join_token_id(join_token)?;
    let member = spec.member_name.clone();
    let c = client(hub, join_token).await?;
    let api: Api<JoinRequest> = Api::namespaced(c.clone(), JOIN_NAMESPACE);
    let req = JoinRequest::new(&id, spec);
    match api.create(&PostParams::default(), &req).await {
        Ok(_) => tracing::info!(request = %id, "join request sent"),
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) if unauthorized(&e) => {
            anyhow::bail!("the hub refused the join token (revoked, expired or already spent)")
        }
        Err(e) => return Err(e.into()),
    }
    let mut said_pending = false;
    loop {
        let r = match api.get(&id).await {
            Ok(r) => r,
            Err(e) if unauthorized(&e) => {
                anyhow::bail!("the hub refused the join token (revoked, expired or already spent)")
            }
            Err(e) => return Err(e.into()),
        };
        let st = r.status.unwrap_or_default();
        match st.phase {
            JoinPhase::Pending => {
                if !said_pending {
                    tracing::info!(
                        message = st.message.as_deref().unwrap_or(""),
                        "join pending"
                    );
                    said_pending = true;
                }
            }
            JoinPhase::Approved => {
                if let Some(ns) = st.hub_namespace {
                    // The join token may now mint the member agent's own credential; the
                    // hand-over binding can take a moment to reach the hub's authorizer.
                    match mint(&c, &ns, CREDENTIAL_TTL).await {
                        Ok(token) => {
                            return Ok(Credential {
                                token,
                                namespace: ns,
                                member: member.clone(),
                            });
                        }
                        Err(kube::Error::Api(e)) if e.code == 403 => {}
                        Err(e) if unauthorized(&e) => anyhow::bail!(
                            "the hub refused the join token (revoked, expired or already spent)"
                        ),
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            JoinPhase::Denied | JoinPhase::Refused | JoinPhase::Joined => {
                anyhow::bail!("join {}: {}", st.phase, st.message.unwrap_or_default())
            }
        }
        tokio::time::sleep(poll).await;
    }
}

/// Lifetime the agent asks for its credential (renewed at two thirds).
pub const CREDENTIAL_TTL: Duration = Duration::from_secs(24 * 3600);

/// A token of the member agent's ServiceAccount in its hub namespace, minted with `client`
/// (the approved join token at first, the agent's own credential when renewing).
pub async fn mint(client: &kube::Client, ns: &str, ttl: Duration) -> kube::Result<String> {
    let sa = crate::join::names::MEMBER_AGENT_SA;
    crate::federation::credential::mint(client, ns, sa, ttl).await
}

/// Reads the agent's stored credential from its Secret.
pub fn credential_from(s: &Secret) -> anyhow::Result<Credential> {
    let data = s.data.clone().unwrap_or_default();
    let get = |k: &str| -> anyhow::Result<String> {
        let v = data
            .get(k)
            .ok_or_else(|| anyhow::anyhow!("credential Secret lacks {k}"))?;
        Ok(String::from_utf8(v.0.clone())?)
    };
    Ok(Credential {
        token: get("token")?,
        namespace: get("namespace")?,
        member: get("member")?,
    })
}

/// Keeps the credential in a Secret of the agent's namespace in the member.
pub async fn store(
    member: &kube::Client,
    ns: &str,
    name: &str,
    cred: &Credential,
) -> kube::Result<()> {
    let s = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(
                [(
                    "app.kubernetes.io/part-of".to_string(),
                    "gpupool".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            [
                ("token", &cred.token),
                ("namespace", &cred.namespace),
                ("member", &cred.member),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes())))
            .collect(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(member.clone(), ns)
        .patch(
            name,
            &PatchParams::apply(super::apply::AGENT).force(),
            &Patch::Apply(crate::join::token::with_type(&s)),
        )
        .await?;
    Ok(())
}

/// The stored credential, if any.
pub async fn load(
    member: &kube::Client,
    ns: &str,
    name: &str,
) -> anyhow::Result<Option<Credential>> {
    match Api::<Secret>::namespaced(member.clone(), ns)
        .get_opt(name)
        .await?
    {
        Some(s) => Ok(Some(credential_from(&s)?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: serde_json::Value) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(br#"{"alg":"RS256"}"#),
            e.encode(payload.to_string())
        )
    }

    #[test]
    fn join_token_ids_come_from_the_subject() {
        let t = jwt(
            serde_json::json!({"sub": "system:serviceaccount:gpupool-join:join-ab1cd", "exp": 100, "iat": 40}),
        );
        assert_eq!(join_token_id(&t).unwrap(), "join-ab1cd");
        let c = claims(&t).unwrap();
        assert_eq!((c.expires, c.issued), (Some(100), Some(40)));
        let other = jwt(serde_json::json!({"sub": "system:serviceaccount:default:x"}));
        assert!(join_token_id(&other).is_err());
        assert!(join_token_id("not-a-jwt").is_err());
    }
}
