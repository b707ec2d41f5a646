//! How desired state reaches a member: one interface, two transports.
//!
//! A push member is written directly through the hub's client of its API server. A pull member
//! is written through work objects in its hub namespace (one `MemberWork` per hub job), which its
//! agent applies in the member; the hub holds no credential of it. The controllers, the scheduler,
//! the orphan sweep, the drain and the meter call the same operations for both.

use super::OrAbsent;
use super::labels;
use super::sandbox;
use crate::api::{MemberMode, WorkJobRef};
use crate::pull;
use crate::tenant;
use crate::workloads::MemberObjects;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Resource, ResourceExt};

/// The way to a member.
#[derive(Clone)]
pub enum MemberLink {
    /// The hub's client of the member's API server.
    Push(kube::Client),
    /// The member's work objects on the hub, applied by its agent.
    Pull {
        /// The hub's client.
        hub: kube::Client,
        /// `MemberCluster` name.
        member: String,
    },
}

impl std::fmt::Debug for MemberLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemberLink::Push(_) => f.write_str("Push"),
            MemberLink::Pull { member, .. } => write!(f, "Pull({member})"),
        }
    }
}

/// The hub job an object belongs to, from gpupool's labels.
fn job_of<K: Resource>(o: &K) -> Option<WorkJobRef> {
    let l = o.meta().labels.as_ref()?;
    Some(WorkJobRef {
        kind: l.get(labels::JOB_KIND)?.clone(),
        namespace: l.get(labels::JOB_NAMESPACE)?.clone(),
        name: l.get(labels::JOB_NAME)?.clone(),
        uid: l.get(labels::JOB_UID).cloned(),
    })
}

fn manifest<K: serde::Serialize + Resource<DynamicType = ()>>(o: &K) -> serde_json::Value {
    let mut v = serde_json::to_value(o).unwrap_or_default();
    v["apiVersion"] = K::api_version(&()).into();
    v["kind"] = K::kind(&()).into();
    v
}

impl MemberLink {
    /// Push or Pull.
    pub fn mode(&self) -> MemberMode {
        match self {
            MemberLink::Push(_) => MemberMode::Push,
            MemberLink::Pull { .. } => MemberMode::Pull,
        }
    }

    /// Makes sure the tenant namespace of hub namespace `ns` exists in the member
    /// ([`crate::tenant`]; a pull member's agent creates the namespaces of what it applies).
    pub async fn ensure_namespace(&self, ns: &str) -> kube::Result<()> {
        match self {
            MemberLink::Push(c) => sandbox::ensure_tenant_namespace(c, ns).await,
            MemberLink::Pull { .. } => Ok(()),
        }
    }

    /// Creates a job's Services and pods (with their claims) unless they exist, with copies of
    /// the hub Secrets and ConfigMaps its template references (read with `hub`); returns how
    /// many pods were created (pull: added to the job's work object).
    pub async fn create_objects(
        &self,
        hub: &kube::Client,
        objects: &MemberObjects,
    ) -> kube::Result<usize> {
        let copies = if objects.pods.is_empty() {
            sandbox::Copies::default()
        } else {
            sandbox::read_copies(hub, objects).await?
        };
        match self {
            MemberLink::Push(c) => {
                sandbox::apply_copies(c, &copies).await?;
                for s in &objects.services {
                    super::writes::create_if_missing(c, s).await?;
                }
                let mut created = 0;
                for p in &objects.pods {
                    created += usize::from(super::dra::create_member_pod(c, p).await?);
                }
                if !copies.is_empty() {
                    sandbox::own_copies(c, objects, &copies).await?;
                }
                Ok(created)
            }
            MemberLink::Pull { hub, member } => {
                let Some(job) = objects
                    .pods
                    .first()
                    .and_then(|p| job_of(&p.pod))
                    .or_else(|| objects.services.first().and_then(job_of))
                else {
                    return Ok(0);
                };
                let mut wanted: Vec<serde_json::Value> =
                    objects.services.iter().map(manifest).collect();
                wanted.extend(copies.secrets.iter().map(manifest));
                wanted.extend(copies.config_maps.iter().map(manifest));
                for p in &objects.pods {
                    wanted.push(manifest(&p.pod));
                    if let Some(c) = &p.claim {
                        wanted.push(manifest(c));
                    }
                }
                pull::edit_work(hub, member, &job, |m, _| {
                    pull::add_missing(m, wanted.clone())
                })
                .await
            }
        }
    }

    /// Deletes the pods of hub job `uid` (hub namespace `ns`; the pods are in its tenant
    /// namespace) for which `doomed` is true, each with its own termination grace period; returns
    /// how many. Never a forced deletion: a pod's object stays, holding its GPUs in every cache
    /// (the hub's, the member scheduler's), until its kubelet has stopped it — removing the object
    /// at once would free GPUs a container may still be using. A pod already terminating is left
    /// to finish.
    pub async fn delete_pods(
        &self,
        ns: &str,
        uid: &str,
        doomed: impl Fn(&Pod) -> bool,
    ) -> kube::Result<usize> {
        match self {
            MemberLink::Push(client) => {
                let api: Api<Pod> = Api::namespaced(client.clone(), &tenant::namespace_name(ns));
                let pods = api
                    .list(&ListParams::default().labels(&format!("{}={uid}", labels::JOB_UID)))
                    .await?;
                let mut n = 0;
                let dp = DeleteParams::background();
                for p in pods.items.iter().filter(|p| doomed(p) && !terminating(p)) {
                    let gone = api.delete(&p.name_any(), &dp).await.or_absent()?;
                    n += usize::from(gone.is_some());
                }
                Ok(n)
            }
            MemberLink::Pull { hub, member } => {
                let mut n = 0;
                for w in pull::works_of_job(hub, member, uid).await? {
                    let Some(job) = w.spec.job_ref.clone() else {
                        continue;
                    };
                    n += pull::edit_work(hub, member, &job, |m, cur| match cur {
                        Some(cur) => pull::remove_pods(m, cur, &doomed),
                        None => 0,
                    })
                    .await?;
                }
                Ok(n)
            }
        }
    }

    /// Deletes every pod and Service of hub job `uid` (hub namespace `ns`; they are in its tenant
    /// namespace); returns how many pods.
    pub async fn delete_all(&self, ns: &str, uid: &str) -> kube::Result<usize> {
        match self {
            MemberLink::Push(client) => {
                let n = self.delete_pods(ns, uid, |_| true).await?;
                let svc: Api<Service> =
                    Api::namespaced(client.clone(), &tenant::namespace_name(ns));
                let list = svc
                    .list(&ListParams::default().labels(&format!("{}={uid}", labels::JOB_UID)))
                    .await?;
                for s in list.items {
                    svc.delete(&s.name_any(), &DeleteParams::background())
                        .await
                        .or_absent()?;
                }
                Ok(n)
            }
            MemberLink::Pull { hub, member } => {
                let mut n = 0;
                for w in pull::works_of_job(hub, member, uid).await? {
                    n += pull::work_pods(&w).len();
                    pull::delete_work(hub, member, &w.name_any()).await?;
                }
                Ok(n)
            }
        }
    }

    /// The member's identity: the UID of its `kube-system` namespace (pull: as its agent reports
    /// it in its newest inventory report).
    pub async fn identity(&self) -> kube::Result<String> {
        match self {
            MemberLink::Push(c) => crate::meta::member_identity(c).await,
            MemberLink::Pull { hub, member } => Ok(pull::observe(hub, member)
                .await?
                .cluster_id
                .unwrap_or_default()),
        }
    }

    /// Every pod gpupool manages in the member, as the member has it (pull: as its agent reported
    /// it, rebuilt on the hub's own manifests).
    pub async fn managed_pods(&self) -> kube::Result<Vec<Pod>> {
        match self {
            MemberLink::Push(c) => Ok(Api::<Pod>::all(c.clone())
                .list(&ListParams::default().labels(labels::SELECTOR))
                .await?
                .items),
            MemberLink::Pull { hub, member } => {
                Ok(pull::observe(hub, member).await?.inventory.pods)
            }
        }
    }
}

/// Whether a pod is being deleted already.
fn terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}
