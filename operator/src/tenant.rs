//! The tenant sandbox in a member: where the pods of one hub namespace run, and what they may
//! use there.
//!
//! A member belongs to someone else. The pods of hub namespace `ns` run in a member namespace
//! gpupool owns and labels, `gpupool-<ns>` ([`namespace_name`]), never in one the member's owner
//! uses: an existing namespace of that name without gpupool's tenant label is refused
//! ([`check_namespace`]). Pod Security `baseline` is enforced there (`restricted` is warned and
//! audited): `restricted` would refuse every image that runs as root, which most GPU images
//! (NGC PyTorch, TensorRT, vLLM) do, while `baseline` already refuses host namespaces, host
//! paths and ports, privileged containers and added capabilities beyond the runtime's defaults
//! (the hub's admission refuses added capabilities altogether). The Secrets and ConfigMaps a
//! template references are copied from the job's own hub namespace with the job
//! ([`config_refs`], [`secret_copy`], [`config_map_copy`]): a pod can mount only what its hub
//! namespace holds, never the member owner's objects of the same name.

use crate::meta::labels;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PodSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// Label on a tenant namespace and on the copies in it: the hub namespace it serves.
pub const TENANT_LABEL: &str = "gpupool.io/tenant";
/// Prefix of every tenant namespace.
pub const PREFIX: &str = "gpupool-";
/// Pod Security level enforced in tenant namespaces (see the module documentation for why not
/// `restricted`).
pub const ENFORCE_LEVEL: &str = "baseline";
/// Pod Security level warned about and audited in tenant namespaces.
pub const WARN_LEVEL: &str = "restricted";

/// The member namespace holding the pods of hub namespace `hub_ns`: `gpupool-<hub_ns>`, or, when
/// that exceeds the 63 characters of a namespace name, its first part and a hash of `hub_ns`.
pub fn namespace_name(hub_ns: &str) -> String {
    let plain = format!("{PREFIX}{hub_ns}");
    if plain.len() <= 63 {
        return plain;
    }
    let digest = Sha256::digest(hub_ns.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let keep = 63 - PREFIX.len() - 1 - hash.len();
    let head = hub_ns[..keep].trim_end_matches('-');
    format!("{PREFIX}{head}-{hash}")
}

/// Labels of the tenant namespace of `hub_ns`: gpupool's, the tenant's, and Pod Security.
pub fn namespace_labels(hub_ns: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::MANAGED_BY.into(), labels::MANAGER.into()),
        (TENANT_LABEL.into(), hub_ns.into()),
        (
            "pod-security.kubernetes.io/enforce".into(),
            ENFORCE_LEVEL.into(),
        ),
        (
            "pod-security.kubernetes.io/enforce-version".into(),
            "latest".into(),
        ),
        ("pod-security.kubernetes.io/warn".into(), WARN_LEVEL.into()),
        ("pod-security.kubernetes.io/audit".into(), WARN_LEVEL.into()),
    ])
}

/// The tenant namespace of `hub_ns`, as gpupool creates it.
pub fn namespace_object(hub_ns: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(namespace_name(hub_ns)),
            labels: Some(namespace_labels(hub_ns)),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Whether an existing member namespace may hold the pods of `hub_ns`: only the one gpupool
/// created for it (its tenant label says so); the error says why not.
pub fn check_namespace(existing: &Namespace, hub_ns: &str) -> Result<(), String> {
    let name = existing.metadata.name.as_deref().unwrap_or_default();
    let l = existing.metadata.labels.as_ref();
    let tenant = l.and_then(|l| l.get(TENANT_LABEL)).map(String::as_str);
    let managed = l
        .and_then(|l| l.get(labels::MANAGED_BY))
        .map(String::as_str);
    if name == namespace_name(hub_ns) && tenant == Some(hub_ns) && managed == Some(labels::MANAGER)
    {
        Ok(())
    } else {
        Err(format!(
            "member namespace {name} exists but is not gpupool's tenant namespace of hub namespace {hub_ns} (label {TENANT_LABEL}={hub_ns}): gpupool runs no pod in a namespace it does not own"
        ))
    }
}

/// Hub namespace of tenant namespace `ns` as its labels name it, or `None` when `ns` is not a
/// tenant namespace.
pub fn tenant_of(ns: &Namespace) -> Option<&str> {
    let hub_ns = ns.metadata.labels.as_ref()?.get(TENANT_LABEL)?;
    check_namespace(ns, hub_ns).ok()?;
    Some(hub_ns)
}

/// Names of the Secrets and ConfigMaps a pod spec references.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigRefs {
    /// Secrets: volumes, projected volumes, `env`, `envFrom`, `imagePullSecrets`.
    pub secrets: BTreeSet<String>,
    /// ConfigMaps: volumes, projected volumes, `env`, `envFrom`.
    pub config_maps: BTreeSet<String>,
}

impl ConfigRefs {
    /// Whether nothing is referenced.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty() && self.config_maps.is_empty()
    }
}

/// The Secrets and ConfigMaps `spec` references, in every container and volume.
pub fn config_refs(spec: &PodSpec) -> ConfigRefs {
    let mut r = ConfigRefs::default();
    for v in spec.volumes.iter().flatten() {
        if let Some(n) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            r.secrets.insert(n);
        }
        if let Some(c) = &v.config_map {
            r.config_maps.insert(c.name.clone());
        }
        for s in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(x) = &s.secret {
                r.secrets.insert(x.name.clone());
            }
            if let Some(x) = &s.config_map {
                r.config_maps.insert(x.name.clone());
            }
        }
    }
    for s in spec.image_pull_secrets.iter().flatten() {
        r.secrets.insert(s.name.clone());
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in containers {
        for e in c.env.iter().flatten() {
            let from = e.value_from.as_ref();
            if let Some(k) = from.and_then(|f| f.secret_key_ref.as_ref()) {
                r.secrets.insert(k.name.clone());
            }
            if let Some(k) = from.and_then(|f| f.config_map_key_ref.as_ref()) {
                r.config_maps.insert(k.name.clone());
            }
        }
        for e in c.env_from.iter().flatten() {
            if let Some(s) = &e.secret_ref {
                r.secrets.insert(s.name.clone());
            }
            if let Some(c) = &e.config_map_ref {
                r.config_maps.insert(c.name.clone());
            }
        }
    }
    r.secrets.retain(|n| !n.is_empty());
    r.config_maps.retain(|n| !n.is_empty());
    r
}

fn copy_meta(src: &ObjectMeta, hub_ns: &str) -> ObjectMeta {
    ObjectMeta {
        name: src.name.clone(),
        namespace: Some(namespace_name(hub_ns)),
        labels: Some(BTreeMap::from([
            (labels::MANAGED_BY.into(), labels::MANAGER.into()),
            (TENANT_LABEL.into(), hub_ns.into()),
            // What a pull member's agent maps to the tenant namespace, as for the pods.
            (labels::JOB_NAMESPACE.into(), hub_ns.into()),
        ])),
        ..Default::default()
    }
}

/// Secret type of ServiceAccount tokens: never copied (a hub credential has no business in a
/// member, and the member's token controller would not accept it).
pub const SERVICE_ACCOUNT_TOKEN: &str = "kubernetes.io/service-account-token";

/// The copy of hub Secret `src` (of hub namespace `hub_ns`) in its tenant namespace: its data and
/// type, gpupool's labels, nothing else of the original's metadata. `None` for a ServiceAccount
/// token.
pub fn secret_copy(src: &Secret, hub_ns: &str) -> Option<Secret> {
    if src.type_.as_deref() == Some(SERVICE_ACCOUNT_TOKEN) {
        return None;
    }
    Some(Secret {
        metadata: copy_meta(&src.metadata, hub_ns),
        data: src.data.clone(),
        string_data: None,
        type_: src.type_.clone(),
        immutable: None,
    })
}

/// The copy of hub ConfigMap `src` in its tenant namespace (see [`secret_copy`]).
pub fn config_map_copy(src: &ConfigMap, hub_ns: &str) -> ConfigMap {
    ConfigMap {
        metadata: copy_meta(&src.metadata, hub_ns),
        data: src.data.clone(),
        binary_data: src.binary_data.clone(),
        immutable: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_namespaces_are_gpupool_prefixed_dns_labels() {
        assert_eq!(namespace_name("ml"), "gpupool-ml");
        let long = "a".repeat(63);
        let n = namespace_name(&long);
        assert!(n.len() <= 63 && n.starts_with("gpupool-aaaa"), "{n}");
        // Two long namespaces with the same start stay apart.
        let other = format!("{}b", "a".repeat(62));
        assert_ne!(namespace_name(&other), n);
        assert!(!namespace_name(&format!("{}-x", "a".repeat(45))).contains("--"));
    }

    #[test]
    fn only_the_tenant_namespace_gpupool_made_is_used() {
        let ours = namespace_object("ml");
        assert_eq!(check_namespace(&ours, "ml"), Ok(()));
        assert_eq!(tenant_of(&ours), Some("ml"));
        let l = ours.metadata.labels.as_ref().unwrap();
        assert_eq!(l["pod-security.kubernetes.io/enforce"], "baseline");
        // The owner's namespace of that name, or another tenant's, is refused.
        let mut owners = Namespace::default();
        owners.metadata.name = Some("gpupool-ml".into());
        let why = check_namespace(&owners, "ml").unwrap_err();
        assert!(why.contains("not gpupool's tenant namespace"), "{why}");
        assert_eq!(tenant_of(&owners), None);
        assert!(check_namespace(&namespace_object("ml"), "other").is_err());
    }

    #[test]
    fn config_refs_cover_volumes_env_env_from_and_pull_secrets() {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [{
                "name": "a",
                "env": [
                    {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s-env", "key": "k"}}},
                    {"name": "Y", "valueFrom": {"configMapKeyRef": {"name": "c-env", "key": "k"}}},
                    {"name": "Z", "value": "plain"},
                ],
                "envFrom": [{"secretRef": {"name": "s-from"}}, {"configMapRef": {"name": "c-from"}}],
            }],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "s-init"}}]}],
            "volumes": [
                {"name": "v1", "secret": {"secretName": "s-vol"}},
                {"name": "v2", "configMap": {"name": "c-vol"}},
                {"name": "v3", "projected": {"sources": [
                    {"secret": {"name": "s-proj"}}, {"configMap": {"name": "c-proj"}},
                ]}},
                {"name": "v4", "emptyDir": {}},
            ],
            "imagePullSecrets": [{"name": "s-pull"}],
        }))
        .unwrap();
        let r = config_refs(&spec);
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            r.secrets,
            set(&["s-env", "s-from", "s-init", "s-proj", "s-pull", "s-vol"])
        );
        assert_eq!(r.config_maps, set(&["c-env", "c-from", "c-proj", "c-vol"]));
        assert!(config_refs(&PodSpec::default()).is_empty());
    }

    #[test]
    fn copies_keep_data_and_type_and_nothing_else() {
        let src: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "creds", "namespace": "ml", "uid": "u", "resourceVersion": "9",
                         "labels": {"team": "x"}, "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "q"}]},
            "type": "Opaque",
            "data": {"token": "c2VjcmV0"},
        }))
        .unwrap();
        let c = secret_copy(&src, "ml").unwrap();
        assert_eq!(c.metadata.namespace.as_deref(), Some("gpupool-ml"));
        assert_eq!(c.metadata.name.as_deref(), Some("creds"));
        assert!(c.metadata.uid.is_none() && c.metadata.owner_references.is_none());
        assert_eq!(c.metadata.labels.unwrap()[TENANT_LABEL], "ml");
        assert_eq!(c.data, src.data);
        assert_eq!(c.type_.as_deref(), Some("Opaque"));
        let mut token = src.clone();
        token.type_ = Some(SERVICE_ACCOUNT_TOKEN.into());
        assert_eq!(
            secret_copy(&token, "ml"),
            None,
            "hub tokens never leave the hub"
        );
    }
}
