//! The tenant sandbox in a push member ([`crate::tenant`]): the tenant namespace, and the copies
//! of the Secrets and ConfigMaps a job's template references.

use super::OrAbsent;
use super::labels;
use crate::tenant::{self, ConfigRefs};
use crate::workloads::MemberObjects;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::core::Status;
use kube::{Resource, ResourceExt};

/// Field manager of the copies.
const MANAGER: &str = "gpupool-tenant";

/// The refusal of a member namespace gpupool does not own, as an API error (403).
pub fn foreign_namespace(why: String) -> kube::Error {
    kube::Error::Api(Status::failure(&why, "Forbidden").with_code(403).boxed())
}

/// Creates the tenant namespace of hub namespace `hub_ns` in a member unless it exists; an
/// existing namespace of that name that gpupool did not create for `hub_ns` is refused.
pub async fn ensure_tenant_namespace(member: &kube::Client, hub_ns: &str) -> kube::Result<()> {
    let api: Api<Namespace> = Api::all(member.clone());
    let existing = match api.get_opt(&tenant::namespace_name(hub_ns)).await? {
        Some(n) => n,
        None => match api
            .create(&PostParams::default(), &tenant::namespace_object(hub_ns))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                api.get(&tenant::namespace_name(hub_ns)).await?
            }
            Err(e) => return Err(e),
        },
    };
    tenant::check_namespace(&existing, hub_ns).map_err(foreign_namespace)
}

/// Copies of the hub's Secrets and ConfigMaps for a tenant namespace.
#[derive(Clone, Debug, Default)]
pub struct Copies {
    /// Secrets.
    pub secrets: Vec<Secret>,
    /// ConfigMaps.
    pub config_maps: Vec<ConfigMap>,
}

impl Copies {
    /// Whether there is nothing to copy.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty() && self.config_maps.is_empty()
    }
}

/// Reads what `objects`' template references from the job's own hub namespace, as copies for
/// its tenant namespace. What the hub namespace does not hold is not copied (the pod then waits
/// for it in the member as it would anywhere).
pub async fn read_copies(hub: &kube::Client, objects: &MemberObjects) -> kube::Result<Copies> {
    let ns = &objects.hub_namespace;
    let ConfigRefs {
        secrets,
        config_maps,
    } = &objects.config;
    let mut out = Copies::default();
    let s: Api<Secret> = Api::namespaced(hub.clone(), ns);
    for n in secrets {
        if let Some(copy) = s
            .get_opt(n)
            .await?
            .and_then(|x| tenant::secret_copy(&x, ns))
        {
            out.secrets.push(copy);
        }
    }
    let c: Api<ConfigMap> = Api::namespaced(hub.clone(), ns);
    for n in config_maps {
        if let Some(src) = c.get_opt(n).await? {
            out.config_maps.push(tenant::config_map_copy(&src, ns));
        }
    }
    Ok(out)
}

async fn apply<K>(member: &kube::Client, obj: &K) -> kube::Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(member.clone(), &obj.namespace().unwrap_or_default());
    let mut v = serde_json::to_value(obj).unwrap_or_default();
    v["apiVersion"] = K::api_version(&()).into();
    v["kind"] = K::kind(&()).into();
    api.patch(
        &obj.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&v),
    )
    .await?;
    Ok(())
}

/// Writes the copies into the member (created or brought up to date).
pub async fn apply_copies(member: &kube::Client, copies: &Copies) -> kube::Result<()> {
    for s in &copies.secrets {
        apply(member, s).await?;
    }
    for c in &copies.config_maps {
        apply(member, c).await?;
    }
    Ok(())
}

/// Makes the pods of job `uid` in its tenant namespace owners of the copies, so that the member's
/// garbage collector deletes a copy with the last pod that used it.
pub async fn own_copies(
    member: &kube::Client,
    objects: &MemberObjects,
    copies: &Copies,
) -> kube::Result<()> {
    let Some(uid) = objects
        .pods
        .first()
        .and_then(|p| p.pod.labels().get(labels::JOB_UID).cloned())
    else {
        return Ok(());
    };
    let ns = tenant::namespace_name(&objects.hub_namespace);
    let pods = Api::<Pod>::namespaced(member.clone(), &ns)
        .list(&ListParams::default().labels(&format!("{}={uid}", labels::JOB_UID)))
        .await?;
    let owners: Vec<serde_json::Value> = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            serde_json::json!({"apiVersion": "v1", "kind": "Pod", "name": p.name_any(), "uid": p.uid()})
        })
        .collect();
    if owners.is_empty() {
        return Ok(());
    }
    let patch = serde_json::json!({"metadata": {"ownerReferences": owners}});
    let pp = PatchParams::default();
    let secrets: Api<Secret> = Api::namespaced(member.clone(), &ns);
    for s in &copies.secrets {
        secrets
            .patch(&s.name_any(), &pp, &Patch::Strategic(&patch))
            .await
            .or_absent()?;
    }
    let cms: Api<ConfigMap> = Api::namespaced(member.clone(), &ns);
    for c in &copies.config_maps {
        cms.patch(&c.name_any(), &pp, &Patch::Strategic(&patch))
            .await
            .or_absent()?;
    }
    Ok(())
}
