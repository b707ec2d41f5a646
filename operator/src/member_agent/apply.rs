//! Pure logic of the member agent: what it accepts from the hub, how it labels what it applies,
//! which objects it must delete, and what it reports about pods.

use crate::api::{MemberWork, PodReport, WORK_KINDS};
use crate::federation::labels;
use crate::tenant;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde_json::Value;
use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Label on everything the agent applies (it deletes only objects carrying it).
pub const APPLIED_BY: &str = "gpupool.io/applied-by";
/// Value of [`APPLIED_BY`].
pub const AGENT: &str = "gpupool-member-agent";
/// Label: the `MemberWork` an object came from.
pub const WORK_LABEL: &str = "gpupool.io/member-work";
/// Label selector for everything the agent applied.
pub const SELECTOR: &str = "gpupool.io/applied-by=gpupool-member-agent";

/// Namespaces the agent never writes into.
const SYSTEM_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];

/// What the member's owner lets the hub do here.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Namespaces the hub may place objects in (empty: any but the system namespaces and the
    /// agent's own).
    pub namespaces: BTreeSet<String>,
    /// The agent's own namespace (holds its credential; never written by work).
    pub own_namespace: String,
}

/// An object the agent will apply: its key and the manifest with the agent's labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Prepared {
    /// (kind, namespace, name).
    pub key: ObjectKey,
    /// The manifest as applied.
    pub manifest: Value,
}

/// (kind, namespace, name) of an object in the member.
pub type ObjectKey = (String, String, String);

/// Every wanted object: key → (work name, manifest as applied).
pub type Wanted = BTreeMap<ObjectKey, (String, Arc<Value>)>;

/// Per work name, why some of its manifests were refused.
pub type Refusals = BTreeMap<String, Vec<String>>;

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// Checks one manifest of `work` against the owner's policy and labels it. The error says why
/// the agent refuses it (reported in the work's status).
pub fn prepare(manifest: &Value, work: &str, policy: &Policy) -> Result<Prepared, String> {
    let kind = str_at(manifest, &["kind"]).unwrap_or_default();
    let name = str_at(manifest, &["metadata", "name"]).unwrap_or_default();
    let ns = str_at(manifest, &["metadata", "namespace"]).unwrap_or_default();
    if !WORK_KINDS.contains(&kind) {
        return Err(format!("kind {kind:?} is not accepted from the hub"));
    }
    if name.is_empty() || ns.is_empty() {
        return Err(format!(
            "{kind} without metadata.name and metadata.namespace"
        ));
    }
    if SYSTEM_NAMESPACES.contains(&ns) || ns == policy.own_namespace {
        return Err(format!("{kind} {ns}/{name}: namespace {ns} is off limits"));
    }
    let hub_ns =
        str_at(manifest, &["metadata", "labels", labels::JOB_NAMESPACE]).unwrap_or_default();
    if hub_ns.is_empty() || ns != tenant::namespace_name(hub_ns) {
        return Err(format!(
            "{kind} {ns}/{name}: namespace {ns} is not gpupool's tenant namespace of its hub namespace {hub_ns:?} ({}<hub namespace>)",
            tenant::PREFIX
        ));
    }
    if !policy.namespaces.is_empty() && !policy.namespaces.contains(ns) {
        return Err(format!(
            "{kind} {ns}/{name}: namespace {ns} is not in the owner's allowed namespaces"
        ));
    }
    if kind == "Pod" {
        pod_is_safe(manifest).map_err(|why| format!("Pod {ns}/{name}: {why}"))?;
    }
    let mut m = manifest.clone();
    let labels = m["metadata"]
        .as_object_mut()
        .expect("metadata is an object (it has a name)")
        .entry("labels")
        .or_insert_with(|| Value::Object(Default::default()));
    let Some(labels) = labels.as_object_mut() else {
        return Err(format!("{kind} {ns}/{name}: metadata.labels is not a map"));
    };
    labels.insert(APPLIED_BY.into(), AGENT.into());
    labels.insert(WORK_LABEL.into(), work.into());
    // Server-side apply owns what it sends; status and server-set fields are not ours.
    if let Some(o) = m.as_object_mut() {
        o.remove("status");
    }
    if let Some(meta) = m["metadata"].as_object_mut() {
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "generation",
        ] {
            meta.remove(k);
        }
    }
    Ok(Prepared {
        key: (kind.into(), ns.into(), name.into()),
        manifest: m,
    })
}

/// Refuses pods that would escape their container onto the owner's host or borrow another
/// identity in the member: host namespaces, host paths and ports, privileged or
/// capability-adding containers, a non-default ServiceAccount or its token, another scheduler,
/// a system priority class (the rules the hub's admission applies to templates).
fn pod_is_safe(pod: &Value) -> Result<(), String> {
    let spec = &pod["spec"];
    for f in [
        "hostNetwork",
        "hostPID",
        "hostIPC",
        "automountServiceAccountToken",
    ] {
        if spec[f].as_bool() == Some(true) {
            return Err(format!("spec.{f} is not allowed"));
        }
    }
    for f in ["serviceAccountName", "serviceAccount"] {
        if let Some(sa) = spec[f].as_str()
            && sa != "default"
        {
            return Err(format!("{f} {sa} is not allowed"));
        }
    }
    if let Some(s) = spec["schedulerName"].as_str()
        && s != "default-scheduler"
    {
        return Err(format!("schedulerName {s} is not allowed"));
    }
    if let Some(pc) = spec["priorityClassName"].as_str()
        && pc.starts_with("system-")
    {
        return Err(format!("priorityClassName {pc} is not allowed"));
    }
    if let Some(vols) = spec["volumes"].as_array()
        && vols.iter().any(|v| v.get("hostPath").is_some())
    {
        return Err("hostPath volumes are not allowed".into());
    }
    let containers = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .filter_map(|k| spec[k].as_array())
        .flatten();
    for c in containers {
        let sc = &c["securityContext"];
        if sc["privileged"].as_bool() == Some(true) {
            return Err("privileged containers are not allowed".into());
        }
        if sc["allowPrivilegeEscalation"].as_bool() == Some(true) {
            return Err("allowPrivilegeEscalation is not allowed".into());
        }
        if sc["capabilities"]["add"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            return Err("adding capabilities is not allowed".into());
        }
        if c["ports"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|p| p["hostPort"].as_i64().is_some_and(|h| h != 0))
        }) {
            return Err("hostPort is not allowed".into());
        }
    }
    Ok(())
}

/// One work's manifests, checked and labelled ([`prepare`]).
type PreparedWork = Vec<Result<(ObjectKey, Arc<Value>), String>>;

/// What the works want, for loops that ask again on every change: each work's manifests are
/// prepared once per generation of the work and shared afterwards. (Preparing copies every manifest: about
/// 80 ms a pass over 10 000 works, on every pod or work change.)
#[derive(Default)]
pub struct Preparer {
    /// Work UID → (generation, its prepared manifests).
    by_uid: HashMap<String, (i64, Arc<PreparedWork>)>,
}

impl Preparer {
    /// Every object the works want, by key (first work wins on a duplicate key), and per work
    /// the manifests it failed to prepare. Works without a UID and generation are prepared every
    /// time.
    pub fn desired<W: Borrow<MemberWork>>(
        &mut self,
        works: &[W],
        policy: &Policy,
    ) -> (Wanted, Refusals) {
        let mut want: Wanted = BTreeMap::new();
        let mut refused: Refusals = BTreeMap::new();
        let mut live: HashMap<String, (i64, Arc<PreparedWork>)> = HashMap::new();
        for w in works {
            let w = w.borrow();
            let wn = w.name_any();
            let (uid, generation) = (w.uid(), w.metadata.generation);
            let cached = uid
                .as_ref()
                .zip(generation)
                .and_then(|(u, g)| self.by_uid.get(u).filter(|(at, _)| *at == g))
                .map(|(_, p)| p.clone());
            let prepared = cached.unwrap_or_else(|| {
                Arc::new(
                    w.spec
                        .manifests
                        .iter()
                        .map(|m| prepare(m, &wn, policy).map(|p| (p.key, Arc::new(p.manifest))))
                        .collect(),
                )
            });
            for item in prepared.iter() {
                match item {
                    Ok((key, manifest)) => {
                        if let Some((other, _)) = want.get(key)
                            && other != &wn
                        {
                            refused.entry(wn.clone()).or_default().push(format!(
                                "{} {}/{} is already wanted by work {other}",
                                key.0, key.1, key.2
                            ));
                            continue;
                        }
                        want.insert(key.clone(), (wn.clone(), manifest.clone()));
                    }
                    Err(e) => refused.entry(wn.clone()).or_default().push(e.clone()),
                }
            }
            if let (Some(u), Some(g)) = (uid, generation) {
                live.insert(u, (g, prepared));
            }
        }
        // Works that are gone are forgotten.
        self.by_uid = live;
        (want, refused)
    }
}

/// The wanted objects of each work, by work name: one pass over `want` (a work's status is
/// built from its own objects; looking them up work by work in `want` took a pass each).
pub fn by_work(want: &Wanted) -> BTreeMap<&str, Vec<&ObjectKey>> {
    let mut out: BTreeMap<&str, Vec<&ObjectKey>> = BTreeMap::new();
    for (k, (wn, _)) in want {
        out.entry(wn.as_str()).or_default().push(k);
    }
    out
}

/// For each Secret or ConfigMap copy the works want, the wanted pods of its namespace that
/// reference it: they are made its owners in the member, so that the member's garbage collector
/// deletes a copy with the last pod that used it (a copy may serve several jobs of one tenant
/// namespace; the agent may not list or read Secrets). Only pods of namespaces that hold copies
/// are read.
pub fn copy_users(want: &Wanted) -> BTreeMap<&ObjectKey, Vec<&ObjectKey>> {
    let copies: Vec<&ObjectKey> = want
        .keys()
        .filter(|(k, ..)| k == "Secret" || k == "ConfigMap")
        .collect();
    let namespaces: BTreeSet<&str> = copies.iter().map(|(_, ns, _)| ns.as_str()).collect();
    let mut out: BTreeMap<&ObjectKey, Vec<&ObjectKey>> = BTreeMap::new();
    for (key, (_, manifest)) in want {
        let (kind, ns, _) = key;
        if kind != "Pod" || !namespaces.contains(ns.as_str()) {
            continue;
        }
        let Ok(spec) = serde_json::from_value::<k8s_openapi::api::core::v1::PodSpec>(
            manifest.get("spec").cloned().unwrap_or_default(),
        ) else {
            continue;
        };
        let refs = tenant::config_refs(&spec);
        for c in &copies {
            let (ck, cns, cname) = c;
            let used = cns == ns
                && match ck.as_str() {
                    "Secret" => refs.secrets.contains(cname),
                    _ => refs.config_maps.contains(cname),
                };
            if used {
                out.entry(*c).or_default().push(key);
            }
        }
    }
    out
}

/// Objects the agent applied that no work wants any more.
pub fn orphans<'a>(
    existing: impl IntoIterator<Item = &'a ObjectKey>,
    want: &Wanted,
) -> Vec<ObjectKey> {
    existing
        .into_iter()
        .filter(|k| !want.contains_key(*k))
        .cloned()
        .collect()
}

/// GPU UUIDs held in the member: UUID → the pod holding it. A pod holds its GPUs from its
/// creation until it is gone, terminating included (the kubelet keeps a terminating pod's devices
/// too); a pod that has finished holds none.
pub type GpuHolders = HashMap<String, (String, String)>;

/// The GPU UUIDs a pod (or a pod manifest) was given by the hub (its `gpupool.io/gpu-uuids`
/// annotation).
pub fn manifest_gpus(manifest: &Value) -> Vec<String> {
    str_at(manifest, &["metadata", "annotations", labels::GPU_UUIDS])
        .map(|s| crate::meta::gpu_uuids(s).map(str::to_string).collect())
        .unwrap_or_default()
}

/// Who holds which GPU among the member's pods (see [`GpuHolders`]).
pub fn gpu_holders<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> GpuHolders {
    let mut out = GpuHolders::new();
    for p in pods {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        let key = (p.namespace().unwrap_or_default(), p.name_any());
        for u in crate::meta::assigned_gpus(&p.metadata) {
            out.insert(u, key.clone());
        }
    }
    out
}

/// Why pod `ns/name` asking for `gpus` must not be created yet: another pod still holds one of
/// them (e.g. the pod it replaces, still terminating). `None`: every GPU is free or its own.
pub fn gpu_conflict(ns: &str, name: &str, gpus: &[String], held: &GpuHolders) -> Option<String> {
    gpus.iter().find_map(|u| {
        let (hns, hname) = held.get(u)?;
        (hns != ns || hname != name)
            .then(|| format!("Pod {ns}/{name} waits for GPU {u}, still held by pod {hns}/{hname}"))
    })
}

/// What the hub learns about one pod.
pub fn pod_report(p: &Pod) -> PodReport {
    let st = p.status.as_ref();
    let finish = st
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| {
            cs.iter()
                .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.clone())
                .max_by_key(|t| t.0)
        });
    let phase = st
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".into());
    let terminal = phase == "Succeeded" || phase == "Failed";
    let run = crate::metering::pod_run(p);
    let at = |s: i64| k8s_openapi::jiff::Timestamp::from_second(s).ok().map(Time);
    PodReport {
        run_start: run.and_then(|r| at(r.start)),
        run_end: run.and_then(|r| r.end).and_then(at),
        namespace: p.namespace().unwrap_or_default(),
        name: p.name_any(),
        uid: p.metadata.uid.clone(),
        ready: st
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
        start_time: st.and_then(|s| s.start_time.clone()),
        finish_time: if terminal { finish } else { None },
        reason: st.and_then(|s| s.reason.clone()),
        message: st.and_then(|s| s.message.clone()),
        phase,
    }
}

/// A pod the work wants that the member does not have.
pub fn missing_pod(ns: &str, name: &str) -> PodReport {
    PodReport {
        namespace: ns.into(),
        name: name.into(),
        phase: "Missing".into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MemberWorkSpec;
    use serde_json::json;

    /// A pod as the hub builds it: in the tenant namespace `ns` of hub namespace `ns` less
    /// gpupool's prefix.
    fn pod(ns: &str, name: &str, spec: Value) -> Value {
        let hub_ns = ns.strip_prefix(tenant::PREFIX).unwrap_or(ns);
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": ns, "uid": "x",
                            "labels": {"app.kubernetes.io/managed-by": "gpupool", "gpupool.io/job-namespace": hub_ns}},
               "spec": spec, "status": {"phase": "Running"}})
    }

    fn policy() -> Policy {
        Policy {
            namespaces: BTreeSet::new(),
            own_namespace: "gpupool-system".into(),
        }
    }

    fn member_pod(name: &str, uuids: &str, phase: &str, terminating: bool) -> Pod {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "gpupool-ml",
                         "annotations": {"gpupool.io/gpu-uuids": uuids}},
            "status": {"phase": phase}}))
        .unwrap();
        if terminating {
            p.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        }
        p
    }

    #[test]
    fn a_pod_waits_while_another_pod_even_terminating_holds_one_of_its_gpus() {
        let pods = [
            member_pod("old-r0", "GPU-1,GPU-2", "Running", true),
            member_pod("done", "GPU-3", "Succeeded", false),
            member_pod("other", "GPU-4", "Pending", false),
        ];
        let held = gpu_holders(&pods);
        let gpus = |s: &str| {
            manifest_gpus(&json!({"metadata": {"annotations": {"gpupool.io/gpu-uuids": s}}}))
        };
        // The replacement of a terminating pod on the same GPU waits for it to be gone.
        let why = gpu_conflict("gpupool-ml", "new-r0", &gpus("GPU-2"), &held).unwrap();
        assert!(
            why.contains("GPU-2") && why.contains("gpupool-ml/old-r0"),
            "{why}"
        );
        assert!(gpu_conflict("gpupool-ml", "new-r1", &gpus("GPU-4,GPU-5"), &held).is_some());
        // A finished pod holds nothing; a pod is never in its own way; a pod without GPUs waits
        // for nothing.
        assert_eq!(
            gpu_conflict("gpupool-ml", "new-r2", &gpus("GPU-3,GPU-5"), &held),
            None
        );
        assert_eq!(
            gpu_conflict("gpupool-ml", "old-r0", &gpus("GPU-1"), &held),
            None
        );
        assert_eq!(gpu_conflict("gpupool-ml", "svc", &gpus(""), &held), None);
        assert!(manifest_gpus(&json!({"metadata": {}})).is_empty());
    }

    #[test]
    fn a_plain_gpu_pod_is_labelled_and_stripped_of_server_fields() {
        let p = prepare(
            &pod(
                "gpupool-ml",
                "gpt-0",
                json!({"nodeName": "n1", "containers": [{"name": "w", "image": "t"}]}),
            ),
            "w1",
            &policy(),
        )
        .unwrap();
        assert_eq!(p.key, ("Pod".into(), "gpupool-ml".into(), "gpt-0".into()));
        let labels = &p.manifest["metadata"]["labels"];
        assert_eq!(labels[APPLIED_BY], AGENT);
        assert_eq!(labels[WORK_LABEL], "w1");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "gpupool");
        assert!(p.manifest.get("status").is_none());
        assert!(p.manifest["metadata"].get("uid").is_none());
    }

    #[test]
    fn the_owner_is_protected_from_a_hostile_hub() {
        let c =
            |sc: Value| json!({"containers": [{"name": "w", "image": "t", "securityContext": sc}]});
        let bad = [
            json!({"hostNetwork": true, "containers": []}),
            json!({"hostPID": true, "containers": []}),
            json!({"serviceAccountName": "cluster-admin-sa", "containers": []}),
            json!({"volumes": [{"name": "root", "hostPath": {"path": "/"}}], "containers": []}),
            c(json!({"privileged": true})),
            c(json!({"allowPrivilegeEscalation": true})),
            c(json!({"capabilities": {"add": ["SYS_ADMIN"]}})),
            json!({"serviceAccount": "cluster-admin-sa", "containers": []}),
            json!({"automountServiceAccountToken": true, "containers": []}),
            json!({"schedulerName": "other", "containers": []}),
            json!({"priorityClassName": "system-node-critical", "containers": []}),
            json!({"containers": [{"name": "w", "ports": [{"containerPort": 80, "hostPort": 80}]}]}),
        ];
        for spec in bad {
            let r = prepare(&pod("gpupool-ml", "p", spec.clone()), "w", &policy());
            assert!(r.is_err(), "accepted {spec}");
        }
        for ns in ["kube-system", "gpupool-system"] {
            let e = prepare(&pod(ns, "p", json!({"containers": []})), "w", &policy()).unwrap_err();
            assert!(e.contains("off limits"), "{e}");
        }
        let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "c", "namespace": "gpupool-ml"}});
        assert!(
            prepare(&deploy, "w", &policy())
                .unwrap_err()
                .contains("not accepted")
        );
        // Only the tenant namespace of the object's hub namespace: never one the owner uses.
        for ns in ["default", "ml", "owner-team"] {
            let e = prepare(&pod(ns, "p", json!({"containers": []})), "w", &policy()).unwrap_err();
            assert!(e.contains("is not gpupool's tenant namespace"), "{e}");
        }
        let mut elsewhere = pod("gpupool-ml", "p", json!({"containers": []}));
        elsewhere["metadata"]["labels"]["gpupool.io/job-namespace"] = "other".into();
        assert!(prepare(&elsewhere, "w", &policy()).is_err());
        let copy = json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": {"k": "dg=="},
            "metadata": {"name": "creds", "namespace": "gpupool-ml", "labels": {"gpupool.io/job-namespace": "ml"}}});
        assert!(prepare(&copy, "w", &policy()).is_ok());
        let mut only_ml = policy();
        only_ml.namespaces.insert("gpupool-ml".into());
        assert!(
            prepare(
                &pod("gpupool-ml", "p", json!({"containers": []})),
                "w",
                &only_ml
            )
            .is_ok()
        );
        assert!(prepare(&pod("other", "p", json!({"containers": []})), "w", &only_ml).is_err());
    }

    fn work(name: &str, manifests: Vec<Value>) -> MemberWork {
        MemberWork::new(
            name,
            MemberWorkSpec {
                job_ref: None,
                manifests,
            },
        )
    }

    #[test]
    fn a_works_manifests_are_prepared_once_per_generation() {
        let versioned = |name: &str, uid: &str, generation: i64, image: &str| {
            let mut w = work(
                name,
                vec![pod(
                    "gpupool-ml",
                    name,
                    json!({"containers": [{"name": "c", "image": image}]}),
                )],
            );
            w.metadata.uid = Some(uid.into());
            w.metadata.generation = Some(generation);
            w
        };
        let key = |n: &str| ("Pod".to_string(), "gpupool-ml".to_string(), n.to_string());
        let mut p = Preparer::default();
        let (first, _) = p.desired(&[versioned("a", "u-a", 1, "i:1")], &policy());
        // Same generation: the same prepared manifest, not a copy.
        let (again, _) = p.desired(&[versioned("a", "u-a", 1, "i:1")], &policy());
        assert!(Arc::ptr_eq(&first[&key("a")].1, &again[&key("a")].1));
        // A new generation is prepared again and carries the change.
        let (next, _) = p.desired(&[versioned("a", "u-a", 2, "i:2")], &policy());
        assert!(!Arc::ptr_eq(&first[&key("a")].1, &next[&key("a")].1));
        assert_eq!(next[&key("a")].1["spec"]["containers"][0]["image"], "i:2");
        assert_eq!(next[&key("a")].1["metadata"]["labels"][WORK_LABEL], "a");
        // Conflicts are judged on every pass, also between works prepared earlier: a second work
        // wanting the same pod is refused.
        let mut b = versioned("b", "u-b", 1, "i:1");
        b.spec.manifests = vec![pod("gpupool-ml", "a", json!({"containers": []}))];
        let (want, refused) = p.desired(&[versioned("a", "u-a", 2, "i:2"), b], &policy());
        assert_eq!(want.len(), 1);
        assert!(
            refused["b"][0].contains("already wanted by work a"),
            "{refused:?}"
        );
        // A work that is gone is forgotten; one without a generation is prepared every time.
        p.desired(&[work("c", vec![])], &policy());
        assert!(p.by_uid.is_empty());
    }

    #[test]
    fn a_copy_is_owned_by_the_pods_that_use_it() {
        let key = |k: &str, ns: &str, n: &str| (k.to_string(), ns.to_string(), n.to_string());
        let mut want: Wanted = BTreeMap::new();
        let mut put = |k: ObjectKey, v: Value| {
            want.insert(k, ("w".into(), Arc::new(v)));
        };
        put(key("Secret", "gpupool-ml", "db"), json!({}));
        put(key("ConfigMap", "gpupool-ml", "cfg"), json!({}));
        let env_secret = json!({"containers": [{"name": "c", "env": [{"name": "P",
            "valueFrom": {"secretKeyRef": {"name": "db", "key": "p"}}}]}]});
        put(
            key("Pod", "gpupool-ml", "a"),
            pod("gpupool-ml", "a", env_secret),
        );
        let both = json!({"containers": [{"name": "c"}], "volumes": [
            {"name": "s", "secret": {"secretName": "db"}},
            {"name": "c", "configMap": {"name": "cfg"}}]});
        put(key("Pod", "gpupool-ml", "b"), pod("gpupool-ml", "b", both));
        put(
            key("Pod", "gpupool-ml", "plain"),
            pod(
                "gpupool-ml",
                "plain",
                json!({"containers": [{"name": "c"}]}),
            ),
        );
        // A pod of another tenant namespace using a Secret of the same name owns nothing here.
        let other = json!({"containers": [{"name": "c"}], "volumes": [{"name": "s", "secret": {"secretName": "db"}}]});
        put(key("Pod", "gpupool-cv", "o"), pod("gpupool-cv", "o", other));
        let users = copy_users(&want);
        let names =
            |k: &ObjectKey| -> Vec<&str> { users[k].iter().map(|(_, _, n)| n.as_str()).collect() };
        assert_eq!(names(&key("Secret", "gpupool-ml", "db")), ["a", "b"]);
        assert_eq!(names(&key("ConfigMap", "gpupool-ml", "cfg")), ["b"]);
        assert_eq!(users.len(), 2);
    }

    #[test]
    fn desired_set_orphans_and_conflicts() {
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "gpt", "namespace": "gpupool-ml", "labels": {"gpupool.io/job-namespace": "ml"}}, "spec": {"clusterIP": "None"}});
        let works = [
            work(
                "a",
                vec![pod("gpupool-ml", "gpt-0", json!({"containers": []})), svc],
            ),
            work(
                "b",
                vec![
                    pod("gpupool-ml", "gpt-0", json!({"containers": []})),
                    pod("gpupool-ml", "x", json!({"hostPID": true})),
                ],
            ),
        ];
        let (want, refused) = Preparer::default().desired(&works, &policy());
        assert_eq!(want.len(), 2);
        assert_eq!(
            want[&("Pod".into(), "gpupool-ml".into(), "gpt-0".into())].0,
            "a"
        );
        assert_eq!(refused["b"].len(), 2, "{refused:?}");
        let existing: Vec<ObjectKey> = vec![
            ("Pod".into(), "gpupool-ml".into(), "gpt-0".into()),
            ("Pod".into(), "gpupool-ml".into(), "old-1".into()),
            ("Service".into(), "gpupool-ml".into(), "gpt".into()),
        ];
        assert_eq!(
            orphans(&existing, &want),
            vec![(
                "Pod".to_string(),
                "gpupool-ml".to_string(),
                "old-1".to_string()
            )]
        );
    }

    #[test]
    fn pod_reports_carry_phase_times_and_readiness() {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "gpt-0", "namespace": "gpupool-ml", "uid": "u1"},
            "spec": {"nodeName": "n1", "containers": [{"name": "w"}]},
            "status": {"phase": "Succeeded", "startTime": "2026-01-01T00:00:00Z",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{"name": "w", "ready": false, "restartCount": 0, "image": "t", "imageID": "",
                    "state": {"terminated": {"exitCode": 0, "finishedAt": "2026-01-01T01:00:00Z"}}}]}
        }))
        .unwrap();
        let r = pod_report(&p);
        assert_eq!(r.phase, "Succeeded");
        assert_eq!(r.node.as_deref(), Some("n1"));
        assert!(!r.ready);
        assert_eq!(r.start_time.unwrap().0.to_string(), "2026-01-01T00:00:00Z");
        assert_eq!(r.finish_time.unwrap().0.to_string(), "2026-01-01T01:00:00Z");
        assert_eq!(missing_pod("gpupool-ml", "x").phase, "Missing");
    }
}
