//! Join tokens: issued, listed, revoked and expired by a pool admin (or the operator's sweeper).

use super::names::{self, JOIN_NAMESPACE};
use super::policy;
use crate::federation::OrAbsent;
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation,
};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;
use std::time::Duration;

/// The API server's shortest `TokenRequest` lifetime; shorter join tokens are cut off by the
/// sweeper deleting their ServiceAccount.
const MIN_JWT_SECONDS: i64 = 600;

/// A join token as handed to a cluster owner.
#[derive(Clone, Debug)]
pub struct JoinToken {
    /// Token id: the name of its ServiceAccount and of the `JoinRequest` it may create.
    pub id: String,
    /// The bearer token (give it to the owner; the hub keeps no copy).
    pub token: String,
    /// When it stops working.
    pub expires_at: Timestamp,
}

fn labels() -> BTreeMap<String, String> {
    [
        (
            "app.kubernetes.io/part-of".to_string(),
            "gpupool".to_string(),
        ),
        (names::TOKEN_LABEL.to_string(), "true".to_string()),
    ]
    .into()
}

fn ssa() -> PatchParams {
    PatchParams::apply(super::FIELD_MANAGER).force()
}

/// Installs what the join flow needs on the hub (idempotent): the join namespace and the
/// admission policy that lets a join token create only the `JoinRequest` named after it.
pub async fn install(hub: &kube::Client) -> kube::Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(JOIN_NAMESPACE.into()),
            labels: Some(labels_without_token()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(hub.clone())
        .patch(JOIN_NAMESPACE, &ssa(), &Patch::Apply(with_type(&ns)))
        .await?;
    let prefix = format!("system:serviceaccount:{JOIN_NAMESPACE}:");
    let policy = ValidatingAdmissionPolicy {
        metadata: ObjectMeta {
            name: Some(names::ADMISSION_POLICY.into()),
            labels: Some(labels_without_token()),
            ..Default::default()
        },
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![NamedRuleWithOperations {
                    api_groups: Some(vec!["gpupool.io".into()]),
                    api_versions: Some(vec!["*".into()]),
                    operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                    resources: Some(vec!["joinrequests".into()]),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            match_conditions: Some(vec![MatchCondition {
                name: "join-token".into(),
                expression: format!("request.userInfo.username.startsWith('{prefix}')"),
            }]),
            validations: Some(vec![Validation {
                expression: format!(
                    "request.userInfo.username == '{prefix}' + object.metadata.name"
                ),
                message: Some(
                    "a join token may only create the JoinRequest named after its token id".into(),
                ),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    };
    Api::<ValidatingAdmissionPolicy>::all(hub.clone())
        .patch(
            names::ADMISSION_POLICY,
            &ssa(),
            &Patch::Apply(with_type(&policy)),
        )
        .await?;
    let binding = ValidatingAdmissionPolicyBinding {
        metadata: ObjectMeta {
            name: Some(names::ADMISSION_POLICY.into()),
            labels: Some(labels_without_token()),
            ..Default::default()
        },
        spec: ValidatingAdmissionPolicyBindingSpec {
            policy_name: names::ADMISSION_POLICY.into(),
            validation_actions: vec!["Deny".into()],
            ..Default::default()
        },
    };
    Api::<ValidatingAdmissionPolicyBinding>::all(hub.clone())
        .patch(
            names::ADMISSION_POLICY,
            &ssa(),
            &Patch::Apply(with_type(&binding)),
        )
        .await?;
    Ok(())
}

fn labels_without_token() -> BTreeMap<String, String> {
    [(
        "app.kubernetes.io/part-of".to_string(),
        "gpupool".to_string(),
    )]
    .into()
}

/// Serializes a typed object with its `apiVersion`/`kind` (server-side apply needs them).
pub(crate) fn with_type<K: Resource<DynamicType = ()> + serde::Serialize>(
    obj: &K,
) -> serde_json::Value {
    let mut v = serde_json::to_value(obj).expect("object serializes");
    v["apiVersion"] = K::api_version(&()).into();
    v["kind"] = K::kind(&()).into();
    v
}

/// Issues a join token valid for `ttl`, optionally bound to one member name.
pub async fn create(
    hub: &kube::Client,
    ttl: Duration,
    for_member: Option<&str>,
) -> anyhow::Result<JoinToken> {
    install(hub).await?;
    let expires_at = Timestamp::now() + SignedDuration::try_from(ttl)?;
    let sa = create_account(hub, expires_at, for_member).await?;
    grant_joiner(hub, &sa).await?;
    let id = sa.name_any();
    let token = mint(hub, &id, ttl).await?;
    Ok(JoinToken {
        id,
        token,
        expires_at,
    })
}

/// The token's ServiceAccount (a generated `join-…` name), carrying its expiry and member.
async fn create_account(
    hub: &kube::Client,
    expires_at: Timestamp,
    for_member: Option<&str>,
) -> kube::Result<ServiceAccount> {
    let mut ann = BTreeMap::from([(names::EXPIRES_AT.to_string(), expires_at.to_string())]);
    if let Some(m) = for_member {
        ann.insert(names::FOR_MEMBER.into(), m.into());
    }
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            generate_name: Some("join-".into()),
            labels: Some(labels()),
            annotations: Some(ann),
            ..Default::default()
        },
        automount_service_account_token: Some(false),
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(hub.clone(), JOIN_NAMESPACE)
        .create(&PostParams::default(), &sa)
        .await
}

/// The token's Role and RoleBinding (owned by its ServiceAccount): create one `JoinRequest`
/// and read what the hub answers ([`policy::joiner_rules`]).
async fn grant_joiner(hub: &kube::Client, sa: &ServiceAccount) -> kube::Result<()> {
    let id = sa.name_any();
    let owner = sa.controller_owner_ref(&()).map(|mut r| {
        r.controller = Some(false);
        r
    });
    let meta = ObjectMeta {
        name: Some(id.clone()),
        namespace: Some(JOIN_NAMESPACE.into()),
        labels: Some(labels()),
        owner_references: owner.map(|o| vec![o]),
        ..Default::default()
    };
    let role = Role {
        metadata: meta.clone(),
        rules: Some(policy::joiner_rules(&id)),
    };
    Api::<Role>::namespaced(hub.clone(), JOIN_NAMESPACE)
        .patch(&id, &ssa(), &Patch::Apply(with_type(&role)))
        .await?;
    let binding = RoleBinding {
        metadata: meta,
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: id.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: id.clone(),
            namespace: Some(JOIN_NAMESPACE.into()),
            api_group: None,
        }]),
    };
    Api::<RoleBinding>::namespaced(hub.clone(), JOIN_NAMESPACE)
        .patch(&id, &ssa(), &Patch::Apply(with_type(&binding)))
        .await?;
    Ok(())
}

/// A token of ServiceAccount `id` (a `TokenRequest`, signed by the API server) valid for `ttl`
/// (at least [`MIN_JWT_SECONDS`]).
async fn mint(hub: &kube::Client, id: &str, ttl: Duration) -> anyhow::Result<String> {
    let secs = (ttl.as_secs() as i64).max(MIN_JWT_SECONDS);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(secs),
            ..Default::default()
        }),
        ..Default::default()
    };
    let tr = Api::<ServiceAccount>::namespaced(hub.clone(), JOIN_NAMESPACE)
        .create_token_request(id, &PostParams::default(), &request)
        .await?;
    tr.status
        .and_then(|s| s.token)
        .ok_or_else(|| anyhow::anyhow!("the API server issued no token"))
}

/// A join token's record on the hub.
#[derive(Clone, Debug)]
pub struct TokenInfo {
    /// Token id.
    pub id: String,
    /// Expiry.
    pub expires_at: Option<Timestamp>,
    /// Member name it is bound to.
    pub for_member: Option<String>,
}

/// Reads a token's record from its ServiceAccount.
pub fn info(sa: &ServiceAccount) -> TokenInfo {
    let ann = sa.annotations();
    TokenInfo {
        id: sa.name_any(),
        expires_at: ann.get(names::EXPIRES_AT).and_then(|t| t.parse().ok()),
        for_member: ann.get(names::FOR_MEMBER).cloned(),
    }
}

/// Join tokens that exist (spent, revoked and swept ones are gone).
pub async fn list(hub: &kube::Client) -> kube::Result<Vec<TokenInfo>> {
    let sas: Api<ServiceAccount> = Api::namespaced(hub.clone(), JOIN_NAMESPACE);
    let l = sas
        .list(&ListParams::default().labels(&format!("{}=true", names::TOKEN_LABEL)))
        .await?;
    Ok(l.items.iter().map(info).collect())
}

/// Revokes a join token at once (its ServiceAccount, Role and RoleBinding are deleted; the API
/// server refuses the token from then on). Idempotent.
pub async fn revoke(hub: &kube::Client, id: &str) -> kube::Result<()> {
    let dp = DeleteParams::default();
    Api::<ServiceAccount>::namespaced(hub.clone(), JOIN_NAMESPACE)
        .delete(id, &dp)
        .await
        .or_absent()?;
    Api::<RoleBinding>::namespaced(hub.clone(), JOIN_NAMESPACE)
        .delete(id, &dp)
        .await
        .or_absent()?;
    Api::<Role>::namespaced(hub.clone(), JOIN_NAMESPACE)
        .delete(id, &dp)
        .await
        .or_absent()?;
    Ok(())
}

/// Whether a token has expired at `now`.
pub fn expired(info: &TokenInfo, now: Timestamp) -> bool {
    info.expires_at.is_some_and(|t| t <= now)
}

/// Revokes every expired join token; returns their ids.
pub async fn sweep_expired(hub: &kube::Client) -> kube::Result<Vec<String>> {
    let now = Timestamp::now();
    let mut gone = Vec::new();
    for t in list(hub).await? {
        if expired(&t, now) {
            revoke(hub, &t.id).await?;
            gone.push(t.id);
        }
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_records_read_back_from_annotations() {
        let mut sa = ServiceAccount::default();
        sa.metadata.name = Some("join-x1y2z".into());
        sa.metadata.annotations = Some(BTreeMap::from([
            (names::EXPIRES_AT.into(), "2030-01-01T00:00:00Z".into()),
            (names::FOR_MEMBER.into(), "east".into()),
        ]));
        let i = info(&sa);
        assert_eq!(i.id, "join-x1y2z");
        assert_eq!(i.for_member.as_deref(), Some("east"));
        let t: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        assert!(!expired(&i, t - SignedDuration::from_secs(1)));
        assert!(expired(&i, t));
        // A token without a recorded expiry never expires by the sweeper (the JWT still does).
        sa.metadata.annotations = None;
        assert!(!expired(&info(&sa), t));
    }
}
