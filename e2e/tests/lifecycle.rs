//! Job and member lifecycle on real API servers: InferenceJob rollouts (replica by replica within
//! maxSurge / maxUnavailable, observedGeneration only once realized, scaling without restarts)
//! and the removal of an unreachable member whose leftovers are swept when it joins again.

use futures::StreamExt;
use gpupool::api::{InferenceJob, MemberCluster, TrainingJob, TrainingPhase};
use gpupool_e2e::{
    Federation, GpuNode, OPERATOR_NAMESPACE, Operator, eventually, publish_fixture, register_member,
};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const WALLETS: [&str; 2] = [
    "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU",
    "9WzDXwBbmkg8ZTbNMqUxvQRAyrZzDsGYdLVL9zYtAWWM",
];

/// A hub and one device-plugin member per entry, each with one 8-GPU DGX H100 node, registered
/// and Ready, and the operator running.
async fn setup(members: usize, grace: u64) -> (Federation, Operator) {
    gpupool::telemetry::init_logging();
    let fed = Federation::start(members).await.expect("federation starts");
    for i in 0..members {
        let node = format!("h100-{i}");
        fed.add_nodes(i, &[GpuNode::new(&node, 8, "NVIDIA H100 80GB HBM3")])
            .await
            .unwrap();
        let c = fed.members[i].cp.client().await.unwrap();
        publish_fixture(&c, "dgx-h100", &node).await.unwrap();
    }
    let hub = fed.hub.client().await.unwrap();
    for (i, m) in fed.members.iter().enumerate() {
        register_member(
            &hub,
            &format!("member-{}", i + 1),
            &m.cp,
            WALLETS[i % 2],
            &format!("region-{}", i + 1),
        )
        .await
        .unwrap();
    }
    let op = Operator::start(hub.clone(), Operator::test_config(grace));
    for i in 1..=members {
        gpupool_e2e::wait_member_ready(&hub, &format!("member-{i}"), 60)
            .await
            .unwrap();
    }
    (fed, op)
}

fn ij(name: &str, replicas: i32, image: &str, rollout: &str) -> InferenceJob {
    serde_yaml::from_str(&format!(
        "apiVersion: gpupool.io/v1alpha1\nkind: InferenceJob\nmetadata: {{name: {name}, namespace: default}}\nspec: {{template: {{spec: {{containers: [{{name: srv, image: {image}}}]}}}}, replicas: {replicas}, gpusPerReplica: 1, nvlink: none, rollout: {rollout}}}\n"
    ))
    .unwrap()
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn image_of(p: &Pod) -> String {
    p.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

/// Fewest Ready and most existing pods of a job in a member, over every change a watch sees.
#[derive(Default)]
struct PodCounts {
    pods: BTreeMap<String, bool>,
    min_ready: Option<usize>,
    max_pods: usize,
}

impl PodCounts {
    fn note(&mut self) {
        let ready = self.pods.values().filter(|r| **r).count();
        self.min_ready = Some(self.min_ready.map_or(ready, |m| m.min(ready)));
        self.max_pods = self.max_pods.max(self.pods.len());
    }
}

/// Aborts the watch task when dropped (also when an assertion fails).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches the job's pods in the member from now on (after the initial list).
fn watch_pods(member: kube::Client, job: &str) -> (Arc<Mutex<PodCounts>>, AbortOnDrop) {
    let counts = Arc::new(Mutex::new(PodCounts::default()));
    let api: Api<Pod> = Api::namespaced(member, &gpupool::tenant::namespace_name("default"));
    let cfg = watcher::Config::default().labels(&format!("gpupool.io/job-name={job}"));
    let c = counts.clone();
    let task = tokio::spawn(async move {
        // Backoff: errors (e.g. once the test's API servers are gone) must not spin.
        let mut stream = watcher(api, cfg).default_backoff().boxed();
        let mut init: BTreeMap<String, bool> = BTreeMap::new();
        while let Some(ev) = stream.next().await {
            let Ok(ev) = ev else { continue };
            let mut c = c.lock().unwrap();
            match ev {
                watcher::Event::Init => init.clear(),
                watcher::Event::InitApply(p) => {
                    init.insert(p.metadata.name.clone().unwrap(), pod_ready(&p));
                }
                watcher::Event::InitDone => {
                    c.pods = std::mem::take(&mut init);
                    c.note();
                }
                watcher::Event::Apply(p) => {
                    c.pods
                        .insert(p.metadata.name.clone().unwrap(), pod_ready(&p));
                    c.note();
                }
                watcher::Event::Delete(p) => {
                    c.pods.remove(&p.metadata.name.clone().unwrap());
                    c.note();
                }
            }
        }
    });
    (counts, AbortOnDrop(task))
}

/// One Event of a job: reason, first and last time seen, how often (the event recorder folds
/// repeats of a reason into one Event with a series), and its (first) note.
#[derive(Debug)]
struct Seen {
    reason: String,
    first: k8s_openapi::jiff::Timestamp,
    last: k8s_openapi::jiff::Timestamp,
    count: i32,
    note: String,
}

/// The job's Events, by first time seen.
async fn events_of(hub: &kube::Client, job: &str) -> Vec<Seen> {
    let api: Api<Event> = Api::namespaced(hub.clone(), "default");
    let mut evs: Vec<Seen> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(job))
        .map(|e| {
            let first = e.event_time.as_ref().expect("eventTime").0;
            Seen {
                reason: e.reason.clone().unwrap_or_default(),
                first,
                last: e.series.as_ref().map_or(first, |s| s.last_observed_time.0),
                count: e.series.as_ref().map_or(1, |s| s.count),
                note: e.note.clone().unwrap_or_default(),
            }
        })
        .collect();
    evs.sort_by_key(|e| e.first);
    evs
}

/// Rolls `name` (3 ready replicas of `v1`) to `v2` and checks what the member ran meanwhile.
/// Returns (fewest Ready pods, most pods) seen during the rollout.
async fn roll(fed: &Federation, name: &str) -> (usize, usize) {
    let hub = fed.hub.client().await.unwrap();
    let member = fed.members[0].cp.client().await.unwrap();
    let ijs: Api<InferenceJob> = Api::namespaced(hub.clone(), "default");
    let pods: Api<Pod> =
        Api::namespaced(member.clone(), &gpupool::tenant::namespace_name("default"));
    let lp = ListParams::default().labels(&format!("gpupool.io/job-name={name}"));
    eventually(
        90,
        &format!("{name}: 3 replicas of v1 Ready, generation 1 realized"),
        || async {
            let j = ijs.get(name).await?;
            let st = j.status.unwrap_or_default();
            Ok((st.ready_replicas == 3
                && st.updated_replicas == 3
                && st.observed_generation == Some(1))
            .then_some(()))
        },
    )
    .await
    .unwrap();
    let (counts, task) = watch_pods(member.clone(), name);
    eventually(30, "pod watch listed", || async {
        Ok(counts.lock().unwrap().min_ready.map(|_| ()))
    })
    .await
    .unwrap();

    ijs.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({
            "spec": {"template": {"spec": {"containers": [{"name": "srv", "image": "ghcr.io/example/srv:2"}]}}}
        })),
    )
    .await
    .unwrap();
    // Until every replica runs v2 and is Ready, the status says generation 1.
    let lagging_seen = AtomicBool::new(false);
    let done = eventually(180, &format!("{name}: rolled to v2"), || async {
        let j = ijs.get(name).await?;
        let st = j.status.clone().unwrap_or_default();
        let ps = pods.list(&lp).await?.items;
        let all_new = ps.len() == 3
            && ps
                .iter()
                .all(|p| image_of(p) == "ghcr.io/example/srv:2" && pod_ready(p));
        if st.observed_generation == Some(2) {
            assert!(
                st.updated_replicas == 3 && st.ready_replicas == 3,
                "generation 2 reported before it runs: {st:?}"
            );
        } else {
            assert_eq!(st.observed_generation, Some(1), "{st:?}");
            lagging_seen.store(true, Ordering::Relaxed);
        }
        Ok((all_new && st.observed_generation == Some(2)).then_some(st))
    })
    .await
    .unwrap();
    assert!(
        lagging_seen.load(Ordering::Relaxed),
        "observedGeneration never lagged the change"
    );
    assert!(
        done.conditions
            .iter()
            .any(|c| c.type_ == "Progressing" && c.reason == "RolloutComplete"),
        "{:?}",
        done.conditions
    );
    // Each index runs exactly once, on the new revision.
    let indexes: BTreeSet<i32> = done
        .placements
        .iter()
        .flat_map(|p| p.replicas.iter().copied())
        .collect();
    assert_eq!(indexes, BTreeSet::from([0, 1, 2]));
    assert!(
        done.placements
            .iter()
            .flat_map(|p| &p.gpus)
            .all(|g| Some(&g.revision) == done.revision.as_ref()),
        "{done:?}"
    );
    // The replaced replicas stay in the status with the instant they left, so that the meter
    // pays their pods up to then (and no longer).
    let past: BTreeSet<i32> = done.past_placements.iter().map(|p| p.index).collect();
    assert_eq!(past, BTreeSet::from([0, 1, 2]), "{done:?}");
    assert!(
        done.past_placements
            .iter()
            .all(|p| Some(&p.gpus.revision) != done.revision.as_ref()
                && p.until.0 <= k8s_openapi::jiff::Timestamp::now()),
        "{done:?}"
    );
    let events = eventually(30, "RolloutComplete event", || async {
        let ev = events_of(&hub, name).await;
        Ok(ev
            .iter()
            .any(|e| e.reason == "RolloutComplete")
            .then_some(ev))
    })
    .await
    .unwrap();
    let find = |r: &str| {
        events
            .iter()
            .find(|e| e.reason == r)
            .unwrap_or_else(|| panic!("no {r} Event: {events:?}"))
    };
    let (started, replaced, complete) = (
        find("RolloutStarted"),
        find("ReplicaReplaced"),
        find("RolloutComplete"),
    );
    assert_eq!(
        (started.count, replaced.count, complete.count),
        (1, 3, 1),
        "{events:?}"
    );
    assert!(
        started.first <= replaced.first && replaced.last <= complete.first,
        "Events out of order: {events:?}"
    );
    assert!(started.note.contains("rolling 3 replicas"), "{events:?}");
    drop(task);
    let c = counts.lock().unwrap();
    (c.min_ready.unwrap(), c.max_pods)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_change_rolls_out_one_replica_at_a_time() {
    let (fed, _op) = setup(1, 30).await;
    let hub = fed.hub.client().await.unwrap();
    let ijs: Api<InferenceJob> = Api::namespaced(hub.clone(), "default");
    let tjs: Api<TrainingJob> = Api::namespaced(hub.clone(), "default");
    let member = fed.members[0].cp.client().await.unwrap();
    let pods: Api<Pod> =
        Api::namespaced(member.clone(), &gpupool::tenant::namespace_name("default"));

    // maxUnavailable 0: a new replica is Ready before an old one goes.
    ijs.create(
        &PostParams::default(),
        &ij(
            "surge",
            3,
            "ghcr.io/example/srv:1",
            "{maxSurge: 1, maxUnavailable: 0}",
        ),
    )
    .await
    .unwrap();
    let (min_ready, max_pods) = roll(&fed, "surge").await;
    assert_eq!(
        min_ready, 3,
        "fewer than 3 Ready replicas during the rollout"
    );
    assert_eq!(max_pods, 4, "more than one surge replica at a time");

    // Scaling alone restarts nothing and realizes the new generation once the new replica runs.
    let lp = ListParams::default().labels("gpupool.io/job-name=surge");
    let before: BTreeSet<String> = pods
        .list(&lp)
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.metadata.uid.clone().unwrap())
        .collect();
    ijs.patch(
        "surge",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": 4}})),
    )
    .await
    .unwrap();
    eventually(60, "scaled to 4, generation 3 realized", || async {
        let st = ijs.get("surge").await?.status.unwrap_or_default();
        Ok((st.ready_replicas == 4 && st.observed_generation == Some(3)).then_some(()))
    })
    .await
    .unwrap();
    let after: BTreeSet<String> = pods
        .list(&lp)
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.metadata.uid.clone().unwrap())
        .collect();
    assert_eq!(after.len(), 4);
    assert!(before.is_subset(&after), "scaling restarted a replica");
    ijs.delete("surge", &DeleteParams::default()).await.unwrap();
    eventually(60, "surge's pods gone", || async {
        Ok(pods.list(&lp).await?.items.is_empty().then_some(()))
    })
    .await
    .unwrap();

    // maxSurge 0 on a full node: 2 GPUs held by a gang, 3 by the replicas, 3 by a second gang
    // -> no GPU spare; each old replica goes first and its GPU serves its replacement once its
    // pod is gone.
    let gang = |name: &str, gpus: i32| -> TrainingJob {
        serde_yaml::from_str(&format!(
            "apiVersion: gpupool.io/v1alpha1\nkind: TrainingJob\nmetadata: {{name: {name}, namespace: default}}\nspec: {{template: {{spec: {{containers: [{{name: t, image: ghcr.io/example/t:1}}]}}}}, workers: 1, gpusPerWorker: {gpus}, nvlink: none}}\n"
        ))
        .unwrap()
    };
    tjs.create(&PostParams::default(), &gang("fill-a", 2))
        .await
        .unwrap();
    ijs.create(
        &PostParams::default(),
        &ij(
            "tight",
            3,
            "ghcr.io/example/srv:1",
            "{maxSurge: 0, maxUnavailable: 1}",
        ),
    )
    .await
    .unwrap();
    tjs.create(&PostParams::default(), &gang("fill-b", 3))
        .await
        .unwrap();
    eventually(60, "both gangs running", || async {
        let a = tjs.get("fill-a").await?.status.unwrap_or_default().phase;
        let b = tjs.get("fill-b").await?.status.unwrap_or_default().phase;
        Ok((a == TrainingPhase::Running && b == TrainingPhase::Running).then_some(()))
    })
    .await
    .unwrap();
    let mcs: Api<MemberCluster> = Api::all(hub.clone());
    eventually(60, "tight Ready and no GPU free on member-1", || async {
        let st = ijs.get("tight").await?.status.unwrap_or_default();
        let mc = mcs.get("member-1").await?.status.unwrap_or_default();
        Ok((st.ready_replicas == 3 && mc.capacity.gpus_free == 0).then_some(()))
    })
    .await
    .unwrap();
    let (min_ready, max_pods) = roll(&fed, "tight").await;
    assert_eq!(max_pods, 3, "maxSurge 0 placed a surge replica");
    assert_eq!(min_ready, 2, "maxUnavailable 1: one replica down at a time");
}

/// Objects gpupool created in a member for the jobs with these UIDs: (pods, Services, claims).
async fn leftovers(member: &kube::Client, uids: &[String]) -> anyhow::Result<(usize, usize)> {
    let (mut pods, mut svcs) = (0, 0);
    for uid in uids {
        let lp = ListParams::default().labels(&format!("gpupool.io/job-uid={uid}"));
        pods += Api::<Pod>::all(member.clone()).list(&lp).await?.items.len();
        svcs += Api::<Service>::all(member.clone())
            .list(&lp)
            .await?
            .items
            .len();
    }
    Ok((pods, svcs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_removed_while_unreachable_is_swept_when_it_joins_again() {
    let (mut fed, _op) = setup(2, 5).await;
    let hub = fed.hub.client().await.unwrap();
    let ijs: Api<InferenceJob> = Api::namespaced(hub.clone(), "default");
    let tjs: Api<TrainingJob> = Api::namespaced(hub.clone(), "default");
    let mcs: Api<MemberCluster> = Api::all(hub.clone());
    let gang: TrainingJob = serde_yaml::from_str(
        "apiVersion: gpupool.io/v1alpha1\nkind: TrainingJob\nmetadata: {name: gang, namespace: default}\nspec: {template: {spec: {containers: [{name: t, image: ghcr.io/example/t:1}]}}, workers: 1, gpusPerWorker: 4, nvlink: none, backoffLimit: 3}\n",
    )
    .unwrap();
    tjs.create(&PostParams::default(), &gang).await.unwrap();
    let first = gpupool_e2e::wait_running_on(&tjs, "gang", 60)
        .await
        .unwrap();
    let (ix, other) = if first == "member-1" {
        (0, "member-2")
    } else {
        (1, "member-1")
    };
    let mut web = ij("web", 2, "ghcr.io/example/srv:1", "{}");
    web.spec.placement = Some(gpupool::api::ReplicaPlacement {
        spread: Some(Default::default()),
        max_replicas_per_cluster: None,
    });
    ijs.create(&PostParams::default(), &web).await.unwrap();
    eventually(60, "web ready on both members", || async {
        let st = ijs.get("web").await?.status.unwrap_or_default();
        Ok((st.ready_replicas == 2 && st.placements.len() == 2).then_some(()))
    })
    .await
    .unwrap();
    let uids = vec![
        tjs.get("gang").await.unwrap().metadata.uid.unwrap(),
        ijs.get("web").await.unwrap().metadata.uid.unwrap(),
    ];
    let cluster_uid = eventually(30, "the member's kube-system UID recorded", || async {
        Ok(mcs.get(&first).await?.spec.cluster_id)
    })
    .await
    .unwrap();
    let member = fed.members[ix].cp.client().await.unwrap();
    let (pods, svcs) = leftovers(&member, &uids).await.unwrap();
    assert_eq!(
        (pods, svcs),
        (2, 1),
        "gang worker + web replica, and web's Service (a one-worker gang has no Service)"
    );

    // The member stops answering and is removed: nothing can be deleted there, so the hub
    // records what it holds.
    fed.members[ix].cp.stop_apiserver();
    eventually(60, "member unreachable", || async {
        let st = mcs.get(&first).await?.status.unwrap_or_default();
        Ok(st
            .conditions
            .iter()
            .any(|c| c.type_ == "Reachable" && c.status == "False")
            .then_some(()))
    })
    .await
    .unwrap();
    mcs.delete(&first, &DeleteParams::default()).await.unwrap();
    eventually(60, "MemberCluster gone", || async {
        Ok(mcs.get_opt(&first).await?.is_none().then_some(()))
    })
    .await
    .unwrap();
    let records: Api<ConfigMap> = Api::namespaced(hub.clone(), OPERATOR_NAMESPACE);
    let record = records
        .get(&format!("gpupool-owed-{cluster_uid}"))
        .await
        .expect("record of what the removed member holds");
    let jobs = &record.data.as_ref().unwrap()["jobs"];
    for uid in &uids {
        assert!(jobs.contains(uid.as_str()), "{uid} not in {jobs}");
    }
    eventually(90, "gang and web moved to the other member", || async {
        let g = tjs.get("gang").await?.status.unwrap_or_default();
        let w = ijs.get("web").await?.status.unwrap_or_default();
        Ok((g.phase == TrainingPhase::Running
            && g.cluster.as_deref() == Some(other)
            && w.ready_replicas == 2
            && w.placements.iter().all(|p| p.cluster == other))
        .then_some(()))
    })
    .await
    .unwrap();

    // The same cluster comes back and joins again (under a new name): everything gpupool left
    // there goes, Services of the jobs that moved away included.
    fed.members[ix].cp.restart_apiserver().await.unwrap();
    let (pods, svcs) = leftovers(&member, &uids).await.unwrap();
    assert!(
        pods + svcs > 0,
        "leftovers vanished before the member rejoined"
    );
    register_member(
        &hub,
        "member-again",
        &fed.members[ix].cp,
        WALLETS[0],
        "region-3",
    )
    .await
    .unwrap();
    gpupool_e2e::wait_member_ready(&hub, "member-again", 60)
        .await
        .unwrap();
    eventually(60, "leftovers swept and the record gone", || async {
        let (pods, svcs) = leftovers(&member, &uids).await?;
        let record = records
            .get_opt(&format!("gpupool-owed-{cluster_uid}"))
            .await?;
        Ok((pods + svcs == 0 && record.is_none()).then_some(()))
    })
    .await
    .unwrap();
    // The jobs keep running where they moved.
    let g = tjs.get("gang").await.unwrap().status.unwrap_or_default();
    assert_eq!(g.cluster.as_deref(), Some(other));
    assert_eq!(
        ijs.get("web")
            .await
            .unwrap()
            .status
            .unwrap_or_default()
            .ready_replicas,
        2
    );
}

/// The operator keeps a running gang without its pod template (it is immutable and nothing reads
/// it while the gang runs); a worker pod gone from its member is still created again, whole,
/// from the template read back from the hub — not restarted, not moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_workers_pod_deleted_in_its_member_is_created_again_from_its_template() {
    let (fed, _op) = setup(1, 30).await;
    let hub = fed.hub.client().await.unwrap();
    let tjs: Api<TrainingJob> = Api::namespaced(hub.clone(), "default");
    let solo: TrainingJob = serde_yaml::from_str(
        "apiVersion: gpupool.io/v1alpha1\nkind: TrainingJob\nmetadata: {name: solo, namespace: default}\nspec: {template: {spec: {containers: [{name: t, image: ghcr.io/example/t:7, args: [--epochs, '3'], env: [{name: DATA, value: /data/set-a}]}]}}, workers: 1, gpusPerWorker: 2, nvlink: none}\n",
    )
    .unwrap();
    tjs.create(&PostParams::default(), &solo).await.unwrap();
    let placed = gpupool_e2e::wait_training_phase(&tjs, "solo", TrainingPhase::Running, 60)
        .await
        .unwrap()
        .status
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(
        fed.members[0].cp.client().await.unwrap(),
        &gpupool::tenant::namespace_name("default"),
    );
    let name = "solo-g0-w0";
    let old_uid = pods.get(name).await.unwrap().metadata.uid.unwrap();
    pods.delete(name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let again = eventually(60, "the worker pod created again", || async {
        Ok(pods
            .get_opt(name)
            .await?
            .filter(|p| p.metadata.uid.as_deref() != Some(old_uid.as_str())))
    })
    .await
    .unwrap();
    let c = &again.spec.as_ref().unwrap().containers[0];
    assert_eq!(c.image.as_deref(), Some("ghcr.io/example/t:7"));
    assert_eq!(
        c.args.as_deref(),
        Some(&["--epochs".to_string(), "3".to_string()][..])
    );
    let env: BTreeMap<String, String> = c
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    assert_eq!(env.get("DATA").map(String::as_str), Some("/data/set-a"));
    assert_eq!(env.get("WORLD_SIZE").map(String::as_str), Some("1"));
    assert_eq!(
        again.metadata.annotations.as_ref().unwrap()["gpupool.io/gpu-uuids"]
            .split(',')
            .collect::<BTreeSet<_>>(),
        placed.workers[0]
            .gpu_uuids
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        "the same GPUs"
    );
    let st = gpupool_e2e::wait_training_phase(&tjs, "solo", TrainingPhase::Running, 60)
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(st.restarts, 0, "the gang was not restarted");
    assert_eq!(st.cluster, placed.cluster);
}
