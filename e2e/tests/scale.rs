//! The scheduler on real API servers: a burst of jobs all land without sharing a GPU (the smoke
//! version of `make bench-scale`), and waiting jobs get freed GPUs by priority, then age, with
//! their queue position and reason visible while they wait.

use gpupool::api::{TrainingJob, TrainingPhase};
use gpupool_e2e::scale::{NAMESPACE, ScalePool};
use gpupool_e2e::{Operator, eventually};
use kube::api::{Api, DeleteParams, PostParams};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_jobs_all_land_and_never_share_a_gpu() {
    gpupool::telemetry::init_logging();
    // 2 members × 13 nodes × 8 GPUs = 208 GPUs for 200 one-GPU jobs.
    let pool = ScalePool::start(13).await.expect("pool starts");
    let _op = Operator::start(pool.hub.clone(), Operator::test_config(30));
    pool.wait_ready(Duration::from_secs(120)).await.unwrap();
    let r = pool
        .run("burst", 200, 32, Duration::from_secs(240))
        .await
        .unwrap();
    eprintln!(
        "200 jobs: p50 {:?} p99 {:?} max {:?}, {:.1} jobs/s",
        r.p50, r.p99, r.max, r.jobs_per_sec
    );
    assert_eq!(r.landed, 200, "every job gets a pod");
    assert!(r.shared_gpus.is_empty(), "GPUs shared: {:?}", r.shared_gpus);
}

fn job(name: &str, priority: i32) -> TrainingJob {
    serde_yaml::from_str(&format!(
        "apiVersion: gpupool.io/v1alpha1\nkind: TrainingJob\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nspec: {{template: {{spec: {{containers: [{{name: main, image: t}}]}}}}, workers: 1, gpusPerWorker: 1, nvlink: none, priority: {priority}}}\n"
    ))
    .unwrap()
}

async fn phase(api: &Api<TrainingJob>, name: &str) -> TrainingPhase {
    api.get(name)
        .await
        .unwrap()
        .status
        .unwrap_or_default()
        .phase
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn freed_gpus_go_to_waiting_jobs_by_priority_then_age() {
    gpupool::telemetry::init_logging();
    // One node per member: 16 GPUs.
    let pool = ScalePool::start(1).await.expect("pool starts");
    let _op = Operator::start(pool.hub.clone(), Operator::test_config(30));
    pool.wait_ready(Duration::from_secs(120)).await.unwrap();
    let api: Api<TrainingJob> = Api::namespaced(pool.hub.clone(), NAMESPACE);
    let r = pool
        .run("fill", 16, 16, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(r.landed, 16);
    // The pool is full: these wait, in this order of creation.
    for (name, prio) in [("old", 0), ("young", 0), ("urgent", 5)] {
        api.create(&PostParams::default(), &job(name, prio))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    for (name, pos) in [("urgent", 1), ("old", 2), ("young", 3)] {
        eventually(30, &format!("{name} waiting at position {pos}"), || async {
            let st = api.get(name).await?.status.unwrap_or_default();
            let why = st.pending_reason.unwrap_or_default();
            Ok((st.phase == TrainingPhase::Pending
                && st.queue_position.is_some()
                && why.contains("member-"))
            .then_some(()))
        })
        .await
        .unwrap();
    }
    // Free one GPU at a time: the higher priority first, then the older job.
    for (freed, next, still_waiting) in [
        ("fill-0", "urgent", vec!["old", "young"]),
        ("fill-1", "old", vec!["young"]),
    ] {
        let t0 = Instant::now();
        api.delete(freed, &DeleteParams::default()).await.unwrap();
        eventually(30, &format!("{next} placed"), || async {
            let st = api.get(next).await?.status.unwrap_or_default();
            Ok(st.cluster.is_some().then_some(()))
        })
        .await
        .unwrap();
        eprintln!("{freed} deleted → {next} placed in {:?}", t0.elapsed());
        for w in still_waiting {
            assert_eq!(phase(&api, w).await, TrainingPhase::Pending, "{w}");
        }
        let st = api.get(next).await.unwrap().status.unwrap();
        assert!(st.pending_reason.is_none() && st.queue_position.is_none());
    }
    assert!(pool.shared_gpus().await.unwrap().is_empty());
}

fn class_job(name: &str, class: &str) -> TrainingJob {
    serde_yaml::from_str(&format!(
        "apiVersion: gpupool.io/v1alpha1\nkind: TrainingJob\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nspec: {{template: {{spec: {{containers: [{{name: main, image: t}}]}}}}, workers: 1, gpusPerWorker: 1, nvlink: none, priorityClassName: {class}}}\n"
    ))
    .unwrap()
}

async fn priority_class(hub: &kube::Client, name: &str, value: i32) {
    let pc: k8s_openapi::api::scheduling::v1::PriorityClass = serde_yaml::from_str(&format!(
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {{name: {name}}}\nvalue: {value}\n"
    ))
    .unwrap();
    Api::<k8s_openapi::api::scheduling::v1::PriorityClass>::all(hub.clone())
        .create(&PostParams::default(), &pc)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn priority_class_names_order_waiting_jobs_and_an_unknown_name_waits_until_it_exists() {
    gpupool::telemetry::init_logging();
    let pool = ScalePool::start(1).await.expect("pool starts");
    let _op = Operator::start(pool.hub.clone(), Operator::test_config(30));
    pool.wait_ready(Duration::from_secs(120)).await.unwrap();
    let api: Api<TrainingJob> = Api::namespaced(pool.hub.clone(), NAMESPACE);
    priority_class(&pool.hub, "gpupool-e2e-high", 1000).await;
    // Not both: the API server refuses it.
    let mut both = class_job("both", "gpupool-e2e-high");
    both.spec.priority = 3;
    let err = api
        .create(&PostParams::default(), &both)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not both"), "{err}");
    let r = pool
        .run("fill", 16, 16, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(r.landed, 16);
    // Created in this order; the classed one is served first, the one naming a class that does
    // not exist waits and says why.
    for j in [
        job("plain", 0),
        class_job("classy", "gpupool-e2e-high"),
        class_job("gold", "gpupool-e2e-gold"),
    ] {
        api.create(&PostParams::default(), &j).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    eventually(30, "gold says its class is missing", || async {
        let st = api.get("gold").await?.status.unwrap_or_default();
        let why = st.pending_reason.unwrap_or_default();
        Ok((st.phase == TrainingPhase::Pending
            && why.contains("gpupool-e2e-gold")
            && why.contains("no PriorityClass"))
        .then_some(()))
    })
    .await
    .unwrap();
    eventually(30, "classy first in the queue", || async {
        let st = api.get("classy").await?.status.unwrap_or_default();
        Ok((st.queue_position == Some(1)).then_some(()))
    })
    .await
    .unwrap();
    api.delete("fill-0", &DeleteParams::default())
        .await
        .unwrap();
    eventually(30, "classy placed", || async {
        let st = api.get("classy").await?.status.unwrap_or_default();
        Ok(st.cluster.is_some().then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(phase(&api, "plain").await, TrainingPhase::Pending);
    // The missing class appears: gold (created after plain) now goes first.
    priority_class(&pool.hub, "gpupool-e2e-gold", 2000).await;
    eventually(30, "gold no longer blames its class", || async {
        let st = api.get("gold").await?.status.unwrap_or_default();
        let why = st.pending_reason.unwrap_or_default();
        Ok((!why.contains("no PriorityClass")).then_some(()))
    })
    .await
    .unwrap();
    api.delete("fill-1", &DeleteParams::default())
        .await
        .unwrap();
    eventually(30, "gold placed", || async {
        let st = api.get("gold").await?.status.unwrap_or_default();
        Ok(st.cluster.is_some().then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(phase(&api, "plain").await, TrainingPhase::Pending);
    assert!(pool.shared_gpus().await.unwrap().is_empty());
}
