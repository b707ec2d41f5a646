//! Which replicas of an InferenceJob may take a request (pure): the job's member pods that are
//! Ready, not being deleted, still placed in the hub status, and not being replaced by a Ready
//! pod of the job's current revision (a rollout drains the old replica before its pod goes).

use crate::api::InferenceJob;
use crate::meta::labels;
use crate::workloads::REVISION_LABEL;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use std::collections::{BTreeMap, HashMap};

/// What the gateway keeps of one replica pod in a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// Member cluster.
    pub member: String,
    /// Namespace in the member.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod IP, once it has one.
    pub ip: Option<String>,
    /// `Ready=True`.
    pub ready: bool,
    /// Has a deletion timestamp (terminating).
    pub deleting: bool,
    /// UID of the hub job.
    pub job_uid: String,
    /// Replica index.
    pub index: i32,
    /// Revision of the rolled fields it runs.
    pub revision: String,
}

impl PodInfo {
    /// The replica pod `p` of member `member`; `None` for a pod that is no inference replica.
    pub fn from_pod(member: &str, p: &Pod) -> Option<PodInfo> {
        let l = p.metadata.labels.as_ref()?;
        if l.get(labels::JOB_KIND).map(String::as_str) != Some("InferenceJob") {
            return None;
        }
        let st = p.status.as_ref();
        let ready = st
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        Some(PodInfo {
            member: member.to_string(),
            namespace: p.namespace().unwrap_or_default(),
            name: p.name_any(),
            ip: st
                .and_then(|s| s.pod_ip.clone())
                .filter(|ip| !ip.is_empty()),
            ready,
            deleting: p.metadata.deletion_timestamp.is_some(),
            job_uid: l.get(labels::JOB_UID)?.clone(),
            index: l.get(labels::INDEX)?.parse().ok()?,
            revision: l.get(REVISION_LABEL).cloned().unwrap_or_default(),
        })
    }

    /// Key of the pod among the member's pods.
    pub fn key(&self) -> (String, String, String) {
        (
            self.member.clone(),
            self.namespace.clone(),
            self.name.clone(),
        )
    }
}

/// One replica a request may go to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Replica {
    /// Member cluster.
    pub member: String,
    /// Namespace in the member.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod IP (reached directly where the member's pod network is routable from the gateway).
    pub ip: Option<String>,
    /// Port the server listens on (`spec.port`).
    pub port: i32,
}

impl Replica {
    /// `member/namespace/pod`.
    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.member, self.namespace, self.pod)
    }
}

/// Whether `(member, index, revision)` is a current placement of the job.
fn placed(job: &InferenceJob, p: &PodInfo) -> bool {
    let Some(st) = job.status.as_ref() else {
        return false;
    };
    st.placements
        .iter()
        .filter(|cp| cp.cluster == p.member)
        .any(|cp| {
            cp.replicas.iter().enumerate().any(|(i, &ix)| {
                ix == p.index
                    && cp
                        .gpus
                        .get(i)
                        .is_none_or(|g| g.revision.is_empty() || g.revision == p.revision)
            })
        })
}

/// The replicas of `job` that may take a request, from its pods in the members (`pods`: the
/// job's pods, any member), in a stable order.
pub fn serving_replicas(job: &InferenceJob, pods: &[PodInfo]) -> Vec<Replica> {
    let uid = job.uid().unwrap_or_default();
    let current = job
        .status
        .as_ref()
        .and_then(|s| s.revision.clone())
        .unwrap_or_default();
    let live: Vec<&PodInfo> = pods
        .iter()
        .filter(|p| p.job_uid == uid && p.ready && !p.deleting && placed(job, p))
        .collect();
    // An index whose current-revision replica is Ready: its older replica is being replaced.
    let mut renewed: HashMap<i32, bool> = HashMap::new();
    for p in &live {
        if !current.is_empty() && p.revision == current {
            renewed.insert(p.index, true);
        }
    }
    let mut out: BTreeMap<String, Replica> = BTreeMap::new();
    for p in live {
        if renewed.contains_key(&p.index) && p.revision != current {
            continue;
        }
        let r = Replica {
            member: p.member.clone(),
            namespace: p.namespace.clone(),
            pod: p.name.clone(),
            ip: p.ip.clone(),
            port: job.spec.port,
        };
        out.insert(r.id(), r);
    }
    out.into_values().collect()
}

/// The member pods of inference replicas, indexed by hub job UID so a request reads only its
/// job's pods.
#[derive(Debug, Default)]
pub struct PodIndex {
    by_job: HashMap<String, BTreeMap<(String, String, String), PodInfo>>,
    job_of: HashMap<(String, String, String), String>,
}

impl PodIndex {
    /// Adds or replaces a pod.
    pub fn upsert(&mut self, p: PodInfo) {
        let key = p.key();
        if let Some(old) = self.job_of.get(&key)
            && *old != p.job_uid
        {
            let old = old.clone();
            self.drop_from(&old, &key);
        }
        self.job_of.insert(key.clone(), p.job_uid.clone());
        self.by_job
            .entry(p.job_uid.clone())
            .or_default()
            .insert(key, p);
    }

    /// Removes a pod.
    pub fn remove(&mut self, key: &(String, String, String)) {
        if let Some(uid) = self.job_of.remove(key) {
            self.drop_from(&uid, key);
        }
    }

    fn drop_from(&mut self, uid: &str, key: &(String, String, String)) {
        if let Some(m) = self.by_job.get_mut(uid) {
            m.remove(key);
            if m.is_empty() {
                self.by_job.remove(uid);
            }
        }
    }

    /// Replaces every pod of `member` with `pods` (after a list).
    pub fn replace_member(&mut self, member: &str, pods: Vec<PodInfo>) {
        let gone: Vec<_> = self
            .job_of
            .keys()
            .filter(|k| k.0 == member)
            .cloned()
            .collect();
        for k in gone {
            self.remove(&k);
        }
        for p in pods {
            self.upsert(p);
        }
    }

    /// The pods of the job with UID `uid`.
    pub fn of_job(&self, uid: &str) -> Vec<PodInfo> {
        self.by_job
            .get(uid)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ClusterPlacement, InferenceJobStatus, NodeGpus};

    fn job(placements: Vec<(&str, Vec<(i32, &str)>)>, revision: &str) -> InferenceJob {
        let mut j: InferenceJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "gpupool.io/v1alpha1", "kind": "InferenceJob",
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {"template": {"spec": {"containers": [{"name": "s", "image": "i"}]}},
                     "replicas": 2, "gpusPerReplica": 1, "port": 8000},
        }))
        .unwrap();
        j.status = Some(InferenceJobStatus {
            revision: Some(revision.into()),
            placements: placements
                .into_iter()
                .map(|(c, rs)| ClusterPlacement {
                    cluster: c.into(),
                    replicas: rs.iter().map(|r| r.0).collect(),
                    ready_replicas: 0,
                    gpus: rs
                        .iter()
                        .map(|r| NodeGpus {
                            revision: r.1.into(),
                            ..Default::default()
                        })
                        .collect(),
                })
                .collect(),
            ..Default::default()
        });
        j
    }

    fn pod(member: &str, index: i32, revision: &str, ready: bool) -> PodInfo {
        PodInfo {
            member: member.into(),
            namespace: "gpupool-default".into(),
            name: format!("web-r{index}-{revision}"),
            ip: Some(format!("127.0.0.{}", index + 2)),
            ready,
            deleting: false,
            job_uid: "u1".into(),
            index,
            revision: revision.into(),
        }
    }

    fn names(rs: &[Replica]) -> Vec<String> {
        rs.iter().map(Replica::id).collect()
    }

    #[test]
    fn only_ready_placed_pods_serve() {
        let j = job(vec![("m1", vec![(0, "a")]), ("m2", vec![(1, "a")])], "a");
        let mut deleting = pod("m1", 0, "a", true);
        deleting.deleting = true;
        let pods = vec![
            pod("m1", 0, "a", true),
            pod("m2", 1, "a", false),
            // A pod of another job, and one no longer placed (withdrawn).
            PodInfo {
                job_uid: "u2".into(),
                ..pod("m2", 1, "a", true)
            },
            pod("m2", 3, "a", true),
        ];
        let rs = serving_replicas(&j, &pods);
        assert_eq!(names(&rs), vec!["m1/gpupool-default/web-r0-a"]);
        assert_eq!(rs[0].port, 8000);
        assert!(serving_replicas(&j, &[deleting]).is_empty());
    }

    #[test]
    fn a_replica_being_replaced_stops_serving_once_its_successor_is_ready() {
        let j = job(vec![("m1", vec![(0, "a"), (0, "b")])], "b");
        // The new replica starts: the old one still serves.
        let rs = serving_replicas(&j, &[pod("m1", 0, "a", true), pod("m1", 0, "b", false)]);
        assert_eq!(names(&rs), vec!["m1/gpupool-default/web-r0-a"]);
        // The new one is Ready: only it serves, before the old pod is deleted.
        let rs = serving_replicas(&j, &[pod("m1", 0, "a", true), pod("m1", 0, "b", true)]);
        assert_eq!(names(&rs), vec!["m1/gpupool-default/web-r0-b"]);
    }

    #[test]
    fn the_index_follows_pods_across_relists() {
        let mut ix = PodIndex::default();
        ix.upsert(pod("m1", 0, "a", true));
        ix.upsert(pod("m2", 1, "a", true));
        assert_eq!(ix.of_job("u1").len(), 2);
        ix.replace_member("m1", vec![]);
        assert_eq!(ix.of_job("u1").len(), 1);
        ix.remove(&pod("m2", 1, "a", true).key());
        assert!(ix.of_job("u1").is_empty());
        assert!(ix.by_job.is_empty() && ix.job_of.is_empty());
    }
}
