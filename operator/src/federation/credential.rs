//! A push member's credential that renews itself: when the kubeconfig the hub holds for a member
//! carries a bound ServiceAccount token (one with an expiry, from `kubectl create token` or the
//! TokenRequest API), the operator mints the next one through the member's own API server at two
//! thirds of the token's life — for the same ServiceAccount, with the same lifetime — and writes
//! it into the kubeconfig Secret. The hub never holds a credential that does not expire, and a
//! leaked one stops working within its lifetime. (A legacy token without expiry is left alone.)
//!
//! The claims are read without verifying the signature: the member's API server verifies every
//! token it is shown; the hub only needs to know when to renew and for whom.

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use serde_yaml::Value;
use std::time::Duration;

/// Claims of a ServiceAccount token that say who it is and how long it lives.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenClaims {
    /// `sub`: `system:serviceaccount:<ns>:<name>`.
    pub subject: String,
    /// `exp`, unix seconds.
    pub expires: Option<i64>,
    /// `iat`, unix seconds.
    pub issued: Option<i64>,
}

impl TokenClaims {
    /// The ServiceAccount `(namespace, name)` it is a token of.
    pub fn service_account(&self) -> Option<(String, String)> {
        let rest = self.subject.strip_prefix("system:serviceaccount:")?;
        let (ns, name) = rest.split_once(':')?;
        (!ns.is_empty() && !name.is_empty()).then(|| (ns.to_string(), name.to_string()))
    }
}

/// Reads the claims of a JWT.
pub fn claims(token: &str) -> anyhow::Result<TokenClaims> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("the token is not a JWT"))?;
    let raw =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('='))?;
    let v: serde_json::Value = serde_json::from_slice(&raw)?;
    Ok(TokenClaims {
        subject: v["sub"].as_str().unwrap_or_default().to_string(),
        expires: v["exp"].as_i64(),
        issued: v["iat"].as_i64(),
    })
}

/// A bound token in a member kubeconfig: whose, and its life.
#[derive(Clone, Debug, PartialEq)]
pub struct BoundToken {
    /// ServiceAccount namespace in the member.
    pub namespace: String,
    /// ServiceAccount name.
    pub name: String,
    /// Issued at, unix seconds.
    pub issued: i64,
    /// Expires at, unix seconds.
    pub expires: i64,
}

impl BoundToken {
    /// When to mint the next one: `before` its expiry, or (`None`) two thirds into its life;
    /// never before it was issued.
    pub fn renew_at(&self, before: Option<Duration>) -> i64 {
        match before {
            Some(b) => (self.expires - b.as_secs() as i64).max(self.issued),
            None => self.issued + (self.expires - self.issued) * 2 / 3,
        }
    }

    /// Its lifetime (the next one gets the same).
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs((self.expires - self.issued).max(0) as u64)
    }
}

/// The user entry of the kubeconfig's current context.
fn current_user(kc: &Value) -> Option<&str> {
    let ctx = kc.get("current-context")?.as_str()?;
    let contexts = kc.get("contexts")?.as_sequence()?;
    let c = contexts.iter().find(|c| c["name"].as_str() == Some(ctx))?;
    c["context"]["user"].as_str()
}

/// The token of the kubeconfig's current user (a mutable place, to replace it).
fn token_mut<'a>(kc: &'a mut Value, user: &str) -> Option<&'a mut Value> {
    let users = kc.get_mut("users")?.as_sequence_mut()?;
    let u = users
        .iter_mut()
        .find(|u| u["name"].as_str() == Some(user))?;
    u.get_mut("user")?.get_mut("token")
}

/// The bound ServiceAccount token the kubeconfig's current context uses; `None` for any other
/// credential (client certificates, exec plugins, legacy tokens without expiry).
pub fn bound_token(kubeconfig: &str) -> Option<BoundToken> {
    let mut kc: Value = serde_yaml::from_str(kubeconfig).ok()?;
    let user = current_user(&kc)?.to_string();
    let token = token_mut(&mut kc, &user)?.as_str()?.to_string();
    let c = claims(&token).ok()?;
    let (namespace, name) = c.service_account()?;
    let (issued, expires) = (c.issued?, c.expires?);
    (expires > issued).then_some(BoundToken {
        namespace,
        name,
        issued,
        expires,
    })
}

/// The kubeconfig with the current user's token replaced by `token` (everything else kept).
pub fn with_token(kubeconfig: &str, token: &str) -> anyhow::Result<String> {
    let mut kc: Value = serde_yaml::from_str(kubeconfig)?;
    let user = current_user(&kc)
        .ok_or_else(|| anyhow::anyhow!("the kubeconfig has no current context with a user"))?
        .to_string();
    let place = token_mut(&mut kc, &user)
        .ok_or_else(|| anyhow::anyhow!("user {user} of the kubeconfig has no token"))?;
    *place = Value::String(token.to_string());
    Ok(serde_yaml::to_string(&kc)?)
}

/// Mints a token of ServiceAccount `ns/name` living `ttl`, through `client` (TokenRequest).
pub async fn mint(
    client: &kube::Client,
    ns: &str,
    name: &str,
    ttl: Duration,
) -> kube::Result<String> {
    let tr = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(
            name,
            &PostParams::default(),
            &TokenRequest {
                spec: Some(TokenRequestSpec {
                    expiration_seconds: Some(ttl.as_secs() as i64),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await?;
    Ok(tr.status.and_then(|s| s.token).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        let enc = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.sig",
            enc(&serde_json::json!({"alg": "RS256"})),
            enc(&claims)
        )
    }

    fn kubeconfig(token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: east\nclusters:\n- name: east\n  cluster: {{server: 'https://east:6443', certificate-authority-data: Q0E=}}\ncontexts:\n- name: other\n  context: {{cluster: east, user: admin}}\n- name: east\n  context: {{cluster: east, user: hub}}\nusers:\n- name: admin\n  user: {{token: admin-token}}\n- name: hub\n  user: {{token: '{token}'}}\n"
        )
    }

    #[test]
    fn a_bound_token_is_found_renewed_at_two_thirds_and_replaced_in_place() {
        let t = jwt(serde_json::json!({
            "sub": "system:serviceaccount:gpupool-system:gpupool-hub", "iat": 1000, "exp": 4000
        }));
        let kc = kubeconfig(&t);
        let b = bound_token(&kc).expect("a bound token");
        assert_eq!(
            (b.namespace.as_str(), b.name.as_str(), b.renew_at(None)),
            ("gpupool-system", "gpupool-hub", 3000)
        );
        assert_eq!(b.renew_at(Some(Duration::from_secs(600))), 3400);
        assert_eq!(b.renew_at(Some(Duration::from_secs(9999))), 1000);
        assert_eq!(b.lifetime(), Duration::from_secs(3000));
        let next = jwt(serde_json::json!({
            "sub": "system:serviceaccount:gpupool-system:gpupool-hub", "iat": 3000, "exp": 6000
        }));
        let renewed = with_token(&kc, &next).unwrap();
        assert_eq!(bound_token(&renewed).unwrap().expires, 6000);
        // The other user, the cluster and the contexts are kept as they were.
        let v: Value = serde_yaml::from_str(&renewed).unwrap();
        assert_eq!(v["users"][0]["user"]["token"], "admin-token");
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"],
            "Q0E="
        );
        assert_eq!(v["current-context"], "east");
    }

    #[test]
    fn other_credentials_are_left_alone() {
        // A legacy token: no expiry.
        let legacy = jwt(serde_json::json!({"sub": "system:serviceaccount:ns:sa"}));
        assert_eq!(bound_token(&kubeconfig(&legacy)), None);
        // Not a ServiceAccount's, not a JWT, no token at all.
        let user = jwt(serde_json::json!({"sub": "alice", "iat": 1, "exp": 2}));
        assert_eq!(bound_token(&kubeconfig(&user)), None);
        assert_eq!(bound_token(&kubeconfig("opaque")), None);
        let certs = "apiVersion: v1\ncurrent-context: c\ncontexts: [{name: c, context: {cluster: x, user: u}}]\nusers: [{name: u, user: {client-certificate-data: Q0E=}}]\n";
        assert_eq!(bound_token(certs), None);
        assert!(with_token(certs, "t").is_err());
    }
}
