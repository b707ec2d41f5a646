//! Trying to cheat the pool, on real API servers (hub + KWOK member) and the embedded ledger:
//! a member admin forging pods, timestamps and annotations is not paid for the forgery; a hub
//! user cannot rewrite usage records (CEL in the CRD; the chart's admission policy lets only
//! the operator write them); a squatted registration and a cluster joined twice are not paid.
//! Every refusal is surfaced: unpaid GPU-seconds on the records, Events on the
//! `MemberCluster`, the `gpupool_unpaid_gpu_seconds` metric.

use gpupool::api::{MemberCluster, TrainingJob, UsageRecord, UsageState};
use gpupool::controllers::{Config, Context};
use gpupool::federation::{Change, MemberSink, MemberWatch, OrAbsent};
use gpupool::ledger::{Ledger, LedgerClient};
use gpupool::metering::runner::surface;
use gpupool::metering::settle::Alert;
use gpupool::metering::{MemberRef, MeterConfig, SettleConfig, meter_once, settle_once};
use gpupool::metrics::Metrics;
use gpupool_e2e::chain::{DEMO_RATES, EmbeddedLedger};
use gpupool_e2e::{
    ControlPlane, Federation, GpuNode, Tools, install_crds, record_state, register_member,
    usage_records,
};
use gpupool_ledger::instruction as ix;
use gpupool_ledger::state;
use gpupool_ledger_svm as svm;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use solana_keypair::Keypair;
use solana_signer::Signer;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODE: &str = "dgx-h100-0";
const MODEL: &str = "NVIDIA H100 80GB HBM3";
const H100_RATE: u64 = DEMO_RATES[1];

fn uuids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("GPU-{prefix}-{i}")).collect()
}

async fn create_job(hub: &Client, name: &str, workers: usize) -> TrainingJob {
    let tj: TrainingJob = serde_json::from_value(json!({
        "apiVersion": "gpupool.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{"name": "worker", "image": "ghcr.io/example/train:1"}]}}, "workers": workers, "gpusPerWorker": 2}
    }))
    .unwrap();
    Api::<TrainingJob>::namespaced(hub.clone(), "default")
        .create(&PostParams::default(), &tj)
        .await
        .unwrap()
}

/// The hub's placement: worker `rank` on `NODE` with GPUs `uuids(job-w<rank>, 2)`.
async fn place(hub: &Client, job: &TrainingJob, workers: usize) {
    let ws: Vec<_> = (0..workers)
        .map(|r| json!({"rank": r, "node": NODE, "score": 0, "gpuUuids": uuids(&format!("{}-w{r}", job.name_any()), 2)}))
        .collect();
    Api::<TrainingJob>::namespaced(hub.clone(), "default")
        .patch_status(
            &job.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"cluster": "member-1", "workers": ws}})),
        )
        .await
        .unwrap();
}

/// A gpupool-labelled pod of a TrainingJob in the member, as its admin may write one.
async fn pod(
    member: &Client,
    name: &str,
    job_name: &str,
    job_uid: &str,
    gpu_uuids: &[String],
    run: &str,
) {
    kind_pod(
        member,
        "TrainingJob",
        name,
        job_name,
        job_uid,
        gpu_uuids,
        run,
    )
    .await
}

/// A gpupool-labelled pod of a `kind` job in the member, running for `run`.
async fn kind_pod(
    member: &Client,
    kind: &str,
    name: &str,
    job_name: &str,
    job_uid: &str,
    gpu_uuids: &[String],
    run: &str,
) {
    let p: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": name, "namespace": "default",
            "labels": {
                "app.kubernetes.io/managed-by": "gpupool",
                "gpupool.io/job-kind": kind,
                "gpupool.io/job-namespace": "default",
                "gpupool.io/job-name": job_name,
                "gpupool.io/job-uid": job_uid,
            },
            "annotations": {
                "gpupool.io/gpu-uuids": gpu_uuids.join(","),
                "gpupool.io/gpu-model": MODEL,
                "pod-complete.stage.kwok.x-k8s.io/delay": run,
            }
        },
        "spec": {"nodeName": NODE, "restartPolicy": "Never",
            "containers": [{"name": "w", "image": "x",
                "resources": {"limits": {"nvidia.com/gpu": gpu_uuids.len().to_string()}}}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(member.clone(), "default")
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
}

async fn kube_system_uid(client: &Client) -> String {
    Api::<Namespace>::all(client.clone())
        .get("kube-system")
        .await
        .unwrap()
        .uid()
        .unwrap()
}

async fn all_pods_done(member: &Client) -> bool {
    let pods = Api::<Pod>::namespaced(member.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap();
    pods.items
        .iter()
        .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"))
}

struct World {
    fed: Federation,
    hub: Client,
    member: Client,
    chain: Arc<EmbeddedLedger>,
    pool: svm::Pool,
    owner: Keypair,
    cluster_id: [u8; 32],
}

async fn world() -> World {
    let fed = Federation::start(1).await.expect("hub + member");
    fed.add_nodes(0, &[GpuNode::new(NODE, 8, MODEL)])
        .await
        .unwrap();
    let hub = fed.hub.client().await.unwrap();
    let member = fed.members[0].cp.client().await.unwrap();
    let (chain, pool) = EmbeddedLedger::with_pool(DEMO_RATES, 0, 2).unwrap();
    let owner = Keypair::new();
    chain.fund(&owner.pubkey()).unwrap();
    register_member(
        &hub,
        "member-1",
        &fed.members[0].cp,
        &owner.pubkey().to_string(),
        "eu",
    )
    .await
    .unwrap();
    let cluster_id = state::cluster_id(&kube_system_uid(&member).await);
    World {
        fed,
        hub,
        member,
        chain: Arc::new(chain),
        pool,
        owner,
        cluster_id,
    }
}

impl World {
    /// A one-worker job `name` placed on member-1, and its worker pod `<name>-w0` on two GPUs,
    /// running for `run` (e.g. `3s`).
    async fn one_worker_job(&self, name: &str, run: &str) -> TrainingJob {
        let job = create_job(&self.hub, name, 1).await;
        place(&self.hub, &job, 1).await;
        let worker = format!("{name}-w0");
        let uid = job.uid().unwrap();
        pod(&self.member, &worker, name, &uid, &uuids(&worker, 2), run).await;
        job
    }

    fn member_ref(&self, name: &str) -> MemberRef {
        MemberRef {
            name: name.into(),
            owner_wallet: self.owner.pubkey().to_string(),
            link: gpupool::federation::MemberLink::Push(self.member.clone()),
            gpu_models: Default::default(),
            observed_ends: Default::default(),
            first_seen: Default::default(),
            pods: None,
        }
    }

    fn ledger(&self) -> Ledger {
        Ledger::new(
            self.chain.clone() as Arc<dyn LedgerClient>,
            self.pool.oracle.insecure_clone(),
        )
    }

    fn minted(&self) -> u64 {
        self.chain.mint_supply(&self.pool.mint)
    }

    /// Meters (and settles) until the member's pods are done and every record is past
    /// `Open`; returns the alerts of the last passes.
    async fn run_until_final(&self, members: &[MemberRef], ledger: Option<&Ledger>) -> Vec<Alert> {
        let cfg = MeterConfig {
            period_seconds: 2,
            finalize_delay_seconds: 1,
            ..Default::default()
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let m = meter_once(&self.hub, members, Timestamp::now(), &cfg)
                .await
                .unwrap();
            assert!(m.errors.is_empty() && m.member_errors.is_empty(), "{m:?}");
            let mut alerts = m.alerts.clone();
            if let Some(l) = ledger {
                let r = settle_once(&self.hub, l, &SettleConfig::default())
                    .await
                    .unwrap();
                assert!(r.errors.is_empty(), "{r:?}");
                alerts.extend(r.alerts);
            }
            let recs = usage_records(&self.hub).await.unwrap();
            if all_pods_done(&self.member).await
                && !recs.is_empty()
                && recs.iter().all(|r| record_state(r) != UsageState::Open)
            {
                return alerts;
            }
            assert!(Instant::now() < deadline, "never final: {recs:#?}");
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_admin_forgeries_are_not_paid() {
    let w = world().await;
    w.chain
        .register_cluster(&w.pool, &w.owner, &w.cluster_id, 8)
        .unwrap();
    let job = create_job(&w.hub, "real", 2).await;
    place(&w.hub, &job, 2).await;
    let uid = job.uid().unwrap();
    // The honest worker.
    pod(
        &w.member,
        "real-w0",
        "real",
        &uid,
        &uuids("real-w0", 2),
        "3s",
    )
    .await;
    // A pod for a job the hub never had, claiming 500 GPUs of an 8-GPU node.
    pod(
        &w.member,
        "ghost",
        "ghost",
        "0f0e0d0c-0b0a-4908-8706-050403020100",
        &uuids("ghost", 500),
        "3s",
    )
    .await;
    // A pod of the real job claiming all 8 GPUs instead of its 2.
    pod(&w.member, "greedy", "real", &uid, &uuids("greedy", 8), "3s").await;
    // The second worker, whose start the member's admin moves 6 hours back once it runs.
    pod(
        &w.member,
        "real-w1",
        "real",
        &uid,
        &uuids("real-w1", 2),
        "5s",
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(w.member.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = pods.get("real-w1").await.unwrap();
        if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
            break;
        }
        assert!(Instant::now() < deadline, "real-w1 never ran");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Both the pod's startTime and its container's start, as the member's admin can write them.
    let six_hours_ago = Timestamp::from_second(Timestamp::now().as_second() - 6 * 3600).unwrap();
    pods.patch_status(
        "real-w1",
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {
            "startTime": six_hours_ago.to_string(),
            "containerStatuses": [{"name": "w", "image": "x", "imageID": "", "ready": true,
                "restartCount": 0, "state": {"running": {"startedAt": six_hours_ago.to_string()}}}],
        }})),
    )
    .await
    .unwrap();

    let ledger = w.ledger();
    let alerts = w
        .run_until_final(&[w.member_ref("member-1")], Some(&ledger))
        .await;
    // Settle what is final.
    let deadline = Instant::now() + Duration::from_secs(30);
    while usage_records(&w.hub)
        .await
        .unwrap()
        .iter()
        .any(|r| record_state(r) == UsageState::Final && r.spec.gpu_seconds > 0)
    {
        settle_once(&w.hub, &ledger, &SettleConfig::default())
            .await
            .unwrap();
        assert!(
            Instant::now() < deadline,
            "not settled: {:#?}",
            usage_records(&w.hub)
                .await
                .unwrap()
                .iter()
                .map(|r| (r.name_any(), r.spec.gpu_seconds, r.status.clone()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let recs = usage_records(&w.hub).await.unwrap();
    // No record for the invented job.
    assert!(recs.iter().all(|r| r.spec.job_uid == uid), "{recs:#?}");
    let paid: i64 = recs.iter().map(|r| r.spec.gpu_seconds).sum();
    let unpaid: i64 = recs.iter().map(|r| r.spec.unpaid_gpu_seconds).sum();
    // The honest pods ran a few seconds on 2 GPUs each (and real-w1 is at most paid from the
    // job's creation, seconds before it started): far from the 6 hours it claims.
    let job_age = Timestamp::now().as_second()
        - job
            .metadata
            .creation_timestamp
            .as_ref()
            .unwrap()
            .0
            .as_second();
    println!("paid {paid} GPU-s, unpaid {unpaid} GPU-s, job age {job_age} s");
    assert!(paid > 0 && paid <= 2 * 2 * job_age, "paid {paid}");
    assert!(unpaid > 0, "the greedy pod's claim is unpaid");
    for r in &recs {
        for (puid, p) in &r.spec.pods {
            if p.name.ends_with("/greedy") {
                assert_eq!(p.gpu_seconds, 0, "{puid}: {p:?}");
                assert!(
                    p.unpaid_reason
                        .as_deref()
                        .unwrap_or("")
                        .contains("matches no placement"),
                    "{p:?}"
                );
            }
            assert!(p.gpus <= 2, "{p:?}");
        }
    }
    // Paid on chain: exactly the provable part. The class comes from the hub's knowledge of
    // the GPUs (here it has no topology for them: the generic class), not from the pods'
    // annotations.
    let chain_paid: u64 = recs
        .iter()
        .filter(|r| record_state(r) == UsageState::Settled)
        .map(|r| r.status.as_ref().unwrap().amount.unwrap() as u64)
        .sum();
    assert_eq!(w.minted(), chain_paid);
    assert_eq!(
        w.minted(),
        DEMO_RATES[0] * paid as u64,
        "paid at the generic rate, not the H100 rate the pods annotate ({H100_RATE})"
    );

    // Surfaced: alerts, Events on the MemberCluster, the metric, a kubectl column.
    assert!(
        alerts
            .iter()
            .any(|a| a.reason == "NoSuchHubJob" && a.gpu_seconds > 0),
        "{alerts:?}"
    );
    let before_job: i64 = alerts
        .iter()
        .filter(|a| a.reason == "OutsideJobLife")
        .map(|a| a.gpu_seconds)
        .sum();
    assert!(
        before_job >= 2 * 6 * 3600 - 120,
        "the 6 hours before the job existed are refused: {alerts:?}"
    );
    assert!(
        alerts.iter().any(|a| a.reason == "UnprovableUsage"),
        "{alerts:?}"
    );
    let (ctx, _triggers) = Context::new(w.hub.clone(), Config::default(), Metrics::default());
    surface(&ctx.metering(), &alerts).await;
    let metrics = ctx.metrics.render();
    assert!(
        metrics
            .contains("gpupool_unpaid_gpu_seconds{cluster=\"member-1\",reason=\"NoSuchHubJob\"}"),
        "{metrics}"
    );
    let events = gpupool_e2e::eventually(30, "Events on the MemberCluster", || async {
        let evs = Api::<Event>::all(w.hub.clone())
            .list(&ListParams::default().fields("involvedObject.name=member-1"))
            .await?;
        let reasons: Vec<String> = evs.items.iter().filter_map(|e| e.reason.clone()).collect();
        Ok(reasons
            .iter()
            .any(|r| r == "NoSuchHubJob")
            .then_some(reasons))
    })
    .await
    .unwrap();
    assert!(events.iter().any(|r| r == "UnprovableUsage"), "{events:?}");
    let table = w.fed.hub.kubectl().ok(&["get", "usagerecords"]).unwrap();
    println!("{table}");
    assert!(table.contains("UNPAID-GPU-S"), "{table}");
    drop(w.fed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn squatted_registration_and_double_join_are_not_paid() {
    let w = world().await;
    // A squatter got the member's cluster id registered to its own wallet.
    let squatter = Keypair::new();
    w.chain
        .register_cluster_for_wallet(&squatter.pubkey(), &w.cluster_id, &w.pool.mint, 8)
        .unwrap();
    // The same member cluster joined a second time under another name.
    register_member(
        &w.hub,
        "member-1-again",
        &w.fed.members[0].cp,
        &w.owner.pubkey().to_string(),
        "eu",
    )
    .await
    .unwrap();
    w.one_worker_job("real", "3s").await;
    let ledger = w.ledger();
    // Both MemberClusters record the same kube-system UID; the younger one is the duplicate.
    let members = [w.member_ref("member-1"), w.member_ref("member-1-again")];
    let alerts = w.run_until_final(&members, Some(&ledger)).await;
    for name in ["member-1", "member-1-again"] {
        let mc = Api::<MemberCluster>::all(w.hub.clone())
            .get(name)
            .await
            .unwrap();
        assert_eq!(
            mc.cluster_id(),
            Some(kube_system_uid(&w.member).await.as_str())
        );
    }
    assert!(
        alerts
            .iter()
            .any(|a| a.cluster == "member-1" && a.reason == "OwnerMismatch"),
        "{alerts:?}"
    );
    assert!(
        alerts
            .iter()
            .any(|a| a.cluster == "member-1-again" && a.reason == "DuplicateJoin"),
        "{alerts:?}"
    );
    assert_eq!(w.minted(), 0, "nothing paid to the squatter");
    assert_eq!(w.chain.wallet_balance(&squatter.pubkey(), &w.pool.mint), 0);
    let recs = usage_records(&w.hub).await.unwrap();
    assert!(
        recs.iter().all(|r| record_state(r) == UsageState::Final),
        "{recs:#?}"
    );

    // The registrar cannot move the cluster (the squatter, its current owner, did not sign);
    // the pool admin's owner recovery can, once its timelock has passed without a veto. The
    // next pass pays, once, under the first MemberCluster only.
    let registrar = w.pool.registrar.insecure_clone();
    let refused = ledger
        .send(
            &[ix::set_cluster_owner(
                &registrar.pubkey(),
                &w.owner.pubkey(),
                &w.cluster_id,
            )],
            &[&registrar, &w.owner],
        )
        .await
        .unwrap_err();
    assert_eq!(
        refused.ledger_error(),
        Some(gpupool_ledger::error::LedgerError::NotClusterOwner)
    );
    let admin = w.pool.admin.insecure_clone();
    ledger
        .send(
            &[ix::propose_owner_recovery(
                &admin.pubkey(),
                &w.cluster_id,
                &w.owner.pubkey(),
            )],
            &[&admin],
        )
        .await
        .unwrap();
    let recover = [ix::execute_owner_recovery(&w.owner.pubkey(), &w.cluster_id)];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match ledger.send(&recover, &[&w.owner]).await {
            Ok(_) => break,
            Err(e)
                if e.ledger_error() == Some(gpupool_ledger::error::LedgerError::RecoveryNotDue)
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => panic!("owner recovery: {e}"),
        }
    }
    let r = settle_once(&w.hub, &ledger, &SettleConfig::default())
        .await
        .unwrap();
    assert!(r.errors.is_empty(), "{r:?}");
    let recs = usage_records(&w.hub).await.unwrap();
    let settled: Vec<_> = recs
        .iter()
        .filter(|r| record_state(r) == UsageState::Settled)
        .collect();
    assert!(!settled.is_empty());
    assert!(settled.iter().all(|r| r.spec.cluster == "member-1"));
    let paid: i64 = settled.iter().map(|r| r.spec.gpu_seconds).sum();
    assert!(
        recs.iter()
            .filter(|r| r.spec.cluster == "member-1-again")
            .all(|r| record_state(r) == UsageState::Final),
        "{recs:#?}"
    );
    let balance = w.chain.wallet_balance(&w.owner.pubkey(), &w.pool.mint);
    assert_eq!(balance, DEMO_RATES[0] * paid as u64);
    assert_eq!(w.minted(), balance);
    assert_eq!(w.chain.wallet_balance(&squatter.pubkey(), &w.pool.mint), 0);
    drop(w.fed);
}

/// A hub user with write access to `UsageRecord`s tries to raise, move and resurrect records;
/// the API server's CEL rules refuse each. Then the chart's admission policy refuses them even
/// the rewrites CEL allows, unless they come from the operator's ServiceAccount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_users_cannot_rewrite_usage_records() {
    let cp = ControlPlane::start("hub").await.unwrap();
    install_crds(&cp).await.unwrap();
    let hub = cp.client().await.unwrap();
    let api: Api<UsageRecord> = Api::all(hub.clone());
    let rec: UsageRecord = serde_json::from_value(json!({
        "apiVersion": "gpupool.io/v1alpha1", "kind": "UsageRecord",
        "metadata": {"name": "member-1.abc.10"},
        "spec": {
            "cluster": "member-1", "clusterUid": "u-1", "ownerWallet": "w",
            "jobKind": "TrainingJob", "jobNamespace": "default", "jobName": "j",
            "jobUid": "0b9f4d2a-6c1e-4f5b-9a7d-3e2c1b0a9f8e",
            "period": 10, "periodStart": "1970-01-01T00:00:20Z", "periodEnd": "1970-01-01T00:00:22Z",
            "gpuSeconds": 4, "gpuClass": 1
        }
    }))
    .unwrap();
    api.create(&PostParams::default(), &rec).await.unwrap();
    let name = "member-1.abc.10";
    let spec = |v: serde_json::Value| Patch::Merge(json!({"spec": v}));
    let status = |v: serde_json::Value| Patch::Merge(json!({"status": v}));
    let pp = PatchParams::default();
    let refused = |r: Result<UsageRecord, kube::Error>, what: &str| match r {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "{what}: {e:?}");
            e.message
        }
        other => panic!("{what} was accepted: {other:?}"),
    };

    // While Open: it may grow, never shrink; identity never changes.
    api.patch(name, &pp, &spec(json!({"gpuSeconds": 6})))
        .await
        .unwrap();
    let m = refused(
        api.patch(name, &pp, &spec(json!({"gpuSeconds": 5}))).await,
        "shrinking",
    );
    assert!(m.contains("never decreases"), "{m}");
    for (field, value) in [
        ("cluster", json!("member-2")),
        ("clusterUid", json!("u-2")),
        ("ownerWallet", json!("thief")),
        ("jobUid", json!("11111111-2222-4333-8444-555555555555")),
        ("period", json!(11)),
        ("periodStart", json!("1970-01-01T00:00:22Z")),
    ] {
        let m = refused(
            api.patch(name, &pp, &spec(json!({ field: value }))).await,
            field,
        );
        assert!(m.contains("immutable"), "{field}: {m}");
    }

    // Final: the spec is frozen, and the state does not go back.
    api.patch_status(name, &pp, &status(json!({"state": "Final"})))
        .await
        .unwrap();
    let m = refused(
        api.patch(name, &pp, &spec(json!({"gpuSeconds": 1_000_000})))
            .await,
        "raising a Final record",
    );
    assert!(m.contains("immutable"), "{m}");
    let m = refused(
        api.patch_status(name, &pp, &status(json!({"state": "Open"})))
            .await,
        "reopening",
    );
    assert!(m.contains("forward"), "{m}");

    // Settled is terminal: no moving back to Final, no new amount, no new period.
    api.patch_status(
        name,
        &pp,
        &status(json!({"state": "Settled", "amount": 60, "signature": "sig"})),
    )
    .await
    .unwrap();
    let m = refused(
        api.patch_status(name, &pp, &status(json!({"state": "Final"})))
            .await,
        "un-settling",
    );
    assert!(m.contains("Settled"), "{m}");
    refused(
        api.patch_status(name, &pp, &status(json!({"amount": 6_000_000})))
            .await,
        "a new amount",
    );
    refused(
        api.patch(name, &pp, &spec(json!({"period": 12}))).await,
        "moving to another period",
    );
    let kept = api.get(name).await.unwrap();
    assert_eq!(kept.spec.gpu_seconds, 6);
    assert_eq!(kept.status.unwrap().amount, Some(60));

    // The chart's admission policy: only the operator's ServiceAccount writes UsageRecords.
    let tools = Tools::get().unwrap();
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(&tools.helm)
        .args([
            "template",
            "gp",
            "charts/gpupool",
            "--namespace",
            "gpupool-system",
            "--kube-version",
            gpupool_e2e::HELM_KUBE_VERSION,
            "--show-only",
            "templates/usagerecord-admission-policy.yaml",
        ])
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .env_remove("KUBECONFIG")
        .current_dir(gpupool_e2e::repo_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = home.path().join("policy.yaml");
    std::fs::write(&manifest, &out.stdout).unwrap();
    cp.kubectl()
        .ok(&["apply", "--server-side", "-f", manifest.to_str().unwrap()])
        .unwrap();
    let operator_sa = "system:serviceaccount:gpupool-system:gp-gpupool-operator";
    cp.kubectl()
        .ok(&[
            "create",
            "clusterrolebinding",
            "operator-test",
            "--clusterrole=cluster-admin",
            "--serviceaccount=gpupool-system:gp-gpupool-operator",
        ])
        .unwrap();
    let mut other = rec.clone();
    other.metadata = kube::api::ObjectMeta {
        name: Some("member-1.abc.11".into()),
        ..Default::default()
    };
    other.spec.period = 11;
    let kc = kube::config::Kubeconfig::read_from(cp.kubeconfig_path()).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    cfg.auth_info.impersonate = Some(operator_sa.into());
    let as_operator: Api<UsageRecord> = Api::all(Client::try_from(cfg).unwrap());
    // Cluster admin (not the operator): refused once the policy is active. (Until then the
    // create may succeed, and then find the record it made.)
    let denied = gpupool_e2e::eventually(30, "the admission policy to take effect", || {
        let api = api.clone();
        let other = other.clone();
        async move {
            match api.create(&PostParams::default(), &other).await {
                Err(kube::Error::Api(e)) if e.code == 403 || e.code == 422 => Ok(Some(e.message)),
                Ok(_) => Ok(None),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
                Err(e) => Err(e.into()),
            }
        }
    })
    .await
    .unwrap();
    assert!(denied.contains("only the gpupool operator"), "{denied}");
    // The operator's ServiceAccount: allowed (to delete what the admin made before the policy
    // took effect — the policy refuses the admin that too — and to create).
    as_operator
        .delete("member-1.abc.11", &Default::default())
        .await
        .or_absent()
        .unwrap();
    as_operator
        .create(&PostParams::default(), &other)
        .await
        .expect("the operator writes usage records");
}

/// Watches a member for the test, reporting nowhere: only the watch's own pod-end record is
/// read (as the meter does through the operator's registry).
struct NoSink;

impl MemberSink for NoSink {
    fn node(&self, _: &str, _: Change<k8s_openapi::api::core::v1::Node>) {}
    fn topology(&self, _: &str, _: Change<gpupool::api::GpuTopology>) {}
    fn pod(&self, _: &str, _: Change<Pod>) {}
    fn slice_devices(&self, _: &str, _: std::collections::BTreeMap<String, i64>) {}
}

fn paid_and_unpaid(recs: &[UsageRecord], pod: &str) -> (i64, i64) {
    let mut out = (0, 0);
    for r in recs {
        for p in r
            .spec
            .pods
            .values()
            .filter(|p| p.name.ends_with(&format!("/{pod}")))
        {
            out.0 += p.gpu_seconds;
        }
        out.1 += r.spec.unpaid_gpu_seconds;
    }
    out
}

fn created(job: &TrainingJob) -> i64 {
    job.metadata
        .creation_timestamp
        .as_ref()
        .unwrap()
        .0
        .as_second()
}

/// A member admin moves a finished pod's `finishedAt` hours later: the meter pays it only up
/// to the instant the hub's own watch saw it end (plus the configured slack).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_time_moved_later_is_not_paid_past_what_the_hub_saw() {
    let w = world().await;
    let job = create_job(&w.hub, "fin", 1).await;
    place(&w.hub, &job, 1).await;
    let uid = job.uid().unwrap();
    let watch = MemberWatch::start(&w.member, "member-1", Arc::new(NoSink));
    pod(&w.member, "fin-w0", "fin", &uid, &uuids("fin-w0", 2), "2s").await;
    let pods: Api<Pod> = Api::namespaced(w.member.clone(), "default");
    let seen_end = gpupool_e2e::eventually(60, "the hub's watch to see the pod end", || {
        let (pods, watch) = (pods.clone(), &watch);
        async move {
            let p = pods.get("fin-w0").await?;
            Ok(watch.observed_ends().get(&p.uid().unwrap()).copied())
        }
    })
    .await
    .unwrap();
    // The member's admin rewrites the finished container: it "ran" three more hours.
    let p = pods.get("fin-w0").await.unwrap();
    let started = p.status.as_ref().unwrap().start_time.clone().unwrap().0;
    let later = Timestamp::from_second(Timestamp::now().as_second() + 3 * 3600).unwrap();
    pods.patch_status(
        "fin-w0",
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {
            "containerStatuses": [{"name": "w", "image": "x", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"terminated": {"exitCode": 0,
                    "startedAt": started.to_string(), "finishedAt": later.to_string()}}}],
        }})),
    )
    .await
    .unwrap();
    let cfg = MeterConfig {
        period_seconds: 2,
        finalize_delay_seconds: 1,
        observed_end_slack_seconds: 1,
        ..Default::default()
    };
    // Meter for a while past the observed end (long enough for an unbounded run to show).
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let mut m = w.member_ref("member-1");
        m.observed_ends = watch.observed_ends();
        let r = meter_once(&w.hub, &[m], Timestamp::now(), &cfg)
            .await
            .unwrap();
        assert!(r.errors.is_empty() && r.member_errors.is_empty(), "{r:?}");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let recs = usage_records(&w.hub).await.unwrap();
    let (paid, unpaid) = paid_and_unpaid(&recs, "fin-w0");
    let bound = 2 * (seen_end + 1 - created(&job));
    println!("paid {paid} GPU-s (bound {bound}), unpaid {unpaid} GPU-s");
    assert!(paid > 0, "the real run is paid: {recs:#?}");
    assert!(
        paid <= bound,
        "paid {paid} beyond the hub's sight ({bound})"
    );
    assert!(unpaid > 0, "the rewritten finish is surfaced as unpaid");
    drop(watch);
    drop(w.fed);
}

/// A gang restarted on other GPUs: the pods of its earlier placement are paid for the time
/// that placement was current (and no longer), the new ones from the restart on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_gang_placement_is_paid_for_the_time_it_was_current() {
    let w = world().await;
    let job = w.one_worker_job("gang", "6s").await;
    let uid = job.uid().unwrap();
    let pods: Api<Pod> = Api::namespaced(w.member.clone(), "default");
    gpupool_e2e::eventually(30, "the first worker to run", || {
        let pods = pods.clone();
        async move {
            let p = pods.get("gang-w0").await?;
            Ok((p.status.and_then(|s| s.phase).as_deref() == Some("Running")).then_some(()))
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The gang restarts onto other GPUs, as the TrainingJob controller records it.
    let jobs: Api<TrainingJob> = Api::namespaced(w.hub.clone(), "default");
    let mut st = jobs.get("gang").await.unwrap().status.unwrap();
    let restart = Timestamp::now();
    st.retire_placement(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        restart,
    ));
    st.cluster = Some("member-1".into());
    st.workers = vec![gpupool::api::WorkerPlacement {
        rank: 0,
        node: NODE.into(),
        gpu_uuids: uuids("gang-new-w0", 2),
        gpu_indexes: Vec::new(),
        score: 0,
        pod_phase: None,
    }];
    jobs.patch_status(
        "gang",
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": st })),
    )
    .await
    .unwrap();
    pod(
        &w.member,
        "gang-new-w0",
        "gang",
        &uid,
        &uuids("gang-new-w0", 2),
        "2s",
    )
    .await;
    w.run_until_final(&[w.member_ref("member-1")], None).await;
    let recs = usage_records(&w.hub).await.unwrap();
    let (old_paid, _) = paid_and_unpaid(&recs, "gang-w0");
    let (new_paid, unpaid) = paid_and_unpaid(&recs, "gang-new-w0");
    let restart = restart.as_second();
    println!("old placement {old_paid} GPU-s, new {new_paid} GPU-s, unpaid {unpaid} GPU-s");
    assert!(old_paid > 0, "the earlier placement is paid: {recs:#?}");
    assert!(
        old_paid <= 2 * (restart + 1 - created(&job)),
        "not past the restart: {old_paid}"
    );
    assert!(new_paid > 0, "{recs:#?}");
    assert!(
        unpaid > 0,
        "the old pod's run after the restart is not paid"
    );
    drop(w.fed);
}

/// An inference replica replaced by one on other GPUs (as in a rollout): the old replica's pod
/// is paid up to the instant its placement left the job's status, though the meter last saw it
/// placed earlier; what it ran after that is not paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_inference_replica_is_paid_until_it_left_the_placements() {
    let w = world().await;
    let ij: gpupool::api::InferenceJob = serde_json::from_value(json!({
        "apiVersion": "gpupool.io/v1alpha1", "kind": "InferenceJob",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{"name": "srv", "image": "ghcr.io/example/srv:1"}]}},
                 "replicas": 1, "gpusPerReplica": 2}
    }))
    .unwrap();
    let ijs: Api<gpupool::api::InferenceJob> = Api::namespaced(w.hub.clone(), "default");
    let job = ijs.create(&PostParams::default(), &ij).await.unwrap();
    let uid = job.uid().unwrap();
    let placement = |pod: &str, revision: &str| {
        json!([{"cluster": "member-1", "replicas": [0], "readyReplicas": 1,
                "gpus": [{"node": NODE, "gpuUuids": uuids(pod, 2), "score": 0,
                          "revision": revision, "ready": true}]}])
    };
    ijs.patch_status(
        "web",
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"placements": placement("web-r0", "r1")}})),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(w.member.clone(), "default");
    kind_pod(
        &w.member,
        "InferenceJob",
        "web-r0",
        "web",
        &uid,
        &uuids("web-r0", 2),
        "15s",
    )
    .await;
    let old_run = gpupool_e2e::eventually(30, "the old replica to run", || {
        let pods = pods.clone();
        async move { Ok(gpupool::metering::pod_run(&pods.get("web-r0").await?)) }
    })
    .await
    .unwrap();
    // A metering pass sees it placed; then it runs on for a while before it is replaced.
    let members = [w.member_ref("member-1")];
    let cfg = MeterConfig {
        period_seconds: 2,
        finalize_delay_seconds: 1,
        ..Default::default()
    };
    meter_once(&w.hub, &members, Timestamp::now(), &cfg)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Replaced, as the InferenceJob controller records it.
    let before = ijs.get("web").await.unwrap().status.unwrap();
    let mut st = before.clone();
    st.placements = serde_json::from_value(placement("web-r0-new", "r2")).unwrap();
    let until = Timestamp::now();
    st.retire_replicas(
        &before.placements,
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(until),
        1,
    );
    ijs.patch_status(
        "web",
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": st })),
    )
    .await
    .unwrap();
    let stored = ijs.get("web").await.unwrap().status.unwrap();
    assert_eq!(stored.past_placements.len(), 1, "{stored:?}");
    let new_pod = uuids("web-r0-new", 2);
    kind_pod(
        &w.member,
        "InferenceJob",
        "web-r0-new",
        "web",
        &uid,
        &new_pod,
        "2s",
    )
    .await;
    w.run_until_final(&members, None).await;
    let recs = usage_records(&w.hub).await.unwrap();
    let (old_paid, unpaid) = paid_and_unpaid(&recs, "web-r0");
    let (new_paid, _) = paid_and_unpaid(&recs, "web-r0-new");
    let ran_placed = until.as_second() - old_run.start;
    println!(
        "old replica paid {old_paid} GPU-s for {ran_placed} s placed, new {new_paid} GPU-s, unpaid {unpaid} GPU-s"
    );
    assert_eq!(
        old_paid,
        2 * ran_placed,
        "the old replica is paid exactly for the time it was placed: {recs:#?}"
    );
    assert!(new_paid > 0, "{recs:#?}");
    assert!(unpaid > 0, "its run after it was replaced is not paid");
    drop(w.fed);
}

/// The same cluster registered as a second push `MemberCluster`: the later one is
/// `Ready=False` (`DuplicateCluster`) with an Event, and the scheduler places nothing there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_member_joined_twice_gets_no_work() {
    let w = world().await;
    gpupool_e2e::publish_fixture(&w.member, "dgx-h100", NODE)
        .await
        .unwrap();
    // Registered a moment later: the duplicate. Its name sorts first, so where both publish the
    // same GPUs at the same instant, the pool's UUID check alone would hand them to it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    register_member(
        &w.hub,
        "a-second-join",
        &w.fed.members[0].cp,
        &w.owner.pubkey().to_string(),
        "eu",
    )
    .await
    .unwrap();
    let _op = gpupool_e2e::Operator::start(w.hub.clone(), gpupool_e2e::Operator::test_config(30));
    let mcs: Api<MemberCluster> = Api::all(w.hub.clone());
    let ready = |name: &'static str| {
        let mcs = mcs.clone();
        async move {
            let mc = mcs.get(name).await?;
            Ok::<_, anyhow::Error>(
                mc.status
                    .unwrap_or_default()
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == "Ready"),
            )
        }
    };
    gpupool_e2e::eventually(60, "member-1 Ready", || async {
        Ok(ready("member-1").await?.filter(|c| c.status == "True"))
    })
    .await
    .unwrap();
    let dup = gpupool_e2e::eventually(60, "a-second-join refused", || async {
        Ok(ready("a-second-join")
            .await?
            .filter(|c| c.status == "False" && c.reason == "DuplicateCluster"))
    })
    .await
    .unwrap();
    assert!(dup.message.contains("member-1"), "{dup:?}");
    // The identity check reads the other members from the controller's watch: heartbeats
    // (1 s each, two members) LIST no MemberClusters (a relist of the watch would be one).
    let lists = || gpupool_e2e::api_requests(&w.hub, "LIST", "memberclusters");
    let before = lists().await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let listed = lists().await.unwrap() - before;
    assert!(
        listed <= 1.0,
        "{listed} LISTs of MemberClusters in 5 s of heartbeats"
    );
    let uid = kube_system_uid(&w.member).await;
    for name in ["member-1", "a-second-join"] {
        assert_eq!(
            mcs.get(name).await.unwrap().cluster_id(),
            Some(uid.as_str())
        );
    }
    gpupool_e2e::eventually(30, "a DuplicateCluster Event", || async {
        let evs = Api::<Event>::all(w.hub.clone())
            .list(&ListParams::default().fields("involvedObject.name=a-second-join"))
            .await?;
        Ok(evs
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("DuplicateCluster"))
            .then_some(()))
    })
    .await
    .unwrap();
    // With the first member closed to new work, a job has nowhere to go: not the duplicate.
    mcs.patch(
        "member-1",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"schedulable": false}})),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    create_job(&w.hub, "waits", 1).await;
    let jobs: Api<TrainingJob> = Api::namespaced(w.hub.clone(), "default");
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let st = jobs.get("waits").await.unwrap().status.unwrap_or_default();
        assert_eq!(st.cluster, None, "placed on a duplicate member: {st:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Open again: it goes to the first member.
    mcs.patch(
        "member-1",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"schedulable": true}})),
    )
    .await
    .unwrap();
    let placed = gpupool_e2e::eventually(60, "the job placed", || {
        let jobs = jobs.clone();
        async move { Ok(jobs.get("waits").await?.status.and_then(|s| s.cluster)) }
    })
    .await
    .unwrap();
    assert_eq!(placed, "member-1");
    drop(w.fed);
}

/// Receipts of periods past the settlement horizon are closed by the operator's sweep, their
/// rent returned to the oracle that paid it, the records marked, the metric counted; a replay
/// of a closed receipt is refused (its period is outside the horizon).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_past_the_horizon_are_closed_and_cannot_be_replayed() {
    let w = world().await;
    w.chain
        .register_cluster(&w.pool, &w.owner, &w.cluster_id, 8)
        .unwrap();
    w.one_worker_job("old", "3s").await;
    let ledger = w.ledger();
    w.run_until_final(&[w.member_ref("member-1")], Some(&ledger))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while usage_records(&w.hub)
        .await
        .unwrap()
        .iter()
        .any(|r| record_state(r) == UsageState::Final && r.spec.gpu_seconds > 0)
    {
        settle_once(&w.hub, &ledger, &SettleConfig::default())
            .await
            .unwrap();
        assert!(Instant::now() < deadline, "not settled");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settled: Vec<UsageRecord> = usage_records(&w.hub)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| record_state(r) == UsageState::Settled)
        .collect();
    assert!(!settled.is_empty());
    let receipt_of = |r: &UsageRecord| {
        gpupool::ledger::receipt_address(
            &gpupool_ledger::ID,
            &w.cluster_id,
            &state::parse_job_uid(&r.spec.job_uid).unwrap(),
            r.spec.period as u64,
        )
    };
    let rent: u64 = settled
        .iter()
        .map(|r| {
            w.chain
                .with_svm(|s| s.get_account(&receipt_of(r)).unwrap().lamports)
        })
        .sum();
    // Inside the horizon: nothing is closed.
    let r = gpupool::metering::close_expired_receipts(&w.hub, &ledger)
        .await
        .unwrap();
    assert_eq!((r.closed, r.waiting), (0, settled.len()), "{r:?}");

    // The chain's clock passes the horizon (512 periods of 2 s).
    w.chain.with_svm(|s| {
        let t = svm::unix_time(s);
        svm::set_unix_time(s, t + 2 * (512 + 2));
    });
    let oracle = w.pool.oracle.pubkey();
    let before = w.chain.with_svm(|s| s.get_balance(&oracle).unwrap_or(0));
    let (ctx, _triggers) = Context::new(w.hub.clone(), Config::default(), Metrics::default());
    let cfg = gpupool::metering::runner::RunnerConfig {
        interval: Duration::from_secs(1),
        meter: MeterConfig {
            period_seconds: 2,
            ..Default::default()
        },
        settle: SettleConfig::default(),
    };
    let stores = gpupool::metering::runner::Stores::start(&w.hub);
    gpupool::metering::runner::pass(
        &ctx.metering(),
        Some(&ledger),
        &cfg,
        &mut Default::default(),
        &stores,
    )
    .await
    .unwrap();
    let after = w.chain.with_svm(|s| s.get_balance(&oracle).unwrap_or(0));
    let txs = settled
        .len()
        .div_ceil(gpupool::metering::settle::MAX_CLOSES_PER_TX) as u64;
    println!(
        "closed {} receipts: {rent} lamports of rent back, oracle {before} -> {after}",
        settled.len()
    );
    assert_eq!(
        after + 5_000 * txs,
        before + rent,
        "rent back to the payer, less fees"
    );
    for r in &settled {
        let gone = w
            .chain
            .with_svm(|s| s.get_account(&receipt_of(r)))
            .is_none_or(|a| a.lamports == 0);
        assert!(gone, "receipt of {} still open", r.name_any());
    }
    let recs = usage_records(&w.hub).await.unwrap();
    assert!(
        recs.iter()
            .filter(|r| record_state(r) == UsageState::Settled)
            .all(|r| r.status.as_ref().unwrap().receipt_closed_at.is_some()),
        "{recs:#?}"
    );
    let metrics = ctx.metrics.render();
    assert!(
        metrics.contains(&format!(
            "gpupool_receipt_rent_reclaimed_lamports_total {rent}"
        )),
        "{metrics}"
    );
    // A replay of a closed receipt: refused for its period, nothing minted.
    let minted = w.minted();
    let r0 = &settled[0];
    let entry = gpupool_ledger::instruction::UsageEntry {
        job_uid: state::parse_job_uid(&r0.spec.job_uid).unwrap(),
        period: r0.spec.period as u64,
        gpu_seconds: r0.spec.gpu_seconds as u64,
        gpu_class: r0.spec.gpu_class as u8,
    };
    let err = ledger
        .send(
            &ledger.usage_batch_instructions(
                &w.pool.mint,
                &w.cluster_id,
                &w.owner.pubkey(),
                &[entry],
            ),
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.ledger_error(),
        Some(gpupool_ledger::error::LedgerError::PeriodOutsideHorizon),
        "{err}"
    );
    assert_eq!(w.minted(), minted);
    // Settled records stay final: the close mark is set once.
    let again = Api::<UsageRecord>::all(w.hub.clone())
        .patch_status(
            &r0.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"receiptClosedAt": "2030-01-01T00:00:00Z"}})),
        )
        .await;
    assert!(matches!(again, Err(kube::Error::Api(e)) if e.code == 422));
    drop(w.fed);
}

/// The hub places worker 0 of `job` as the scheduler does (node, GPUs and the hub-clock
/// `placedAt`); returns the placement time.
async fn place_now(hub: &Client, job: &TrainingJob) -> i64 {
    let at = Timestamp::now();
    let w0 = format!("{}-w0", job.name_any());
    Api::<TrainingJob>::namespaced(hub.clone(), "default")
        .patch_status(
            &job.name_any(),
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"status": {"cluster": "member-1", "placedAt": at.to_string(),
                "workers": [{"rank": 0, "node": NODE, "score": 0, "gpuUuids": uuids(&w0, 2)}]}}),
            ),
        )
        .await
        .unwrap();
    at.as_second()
}

/// Waits for pod `name` to succeed, then rewrites its status as the member's admin may: it
/// "ran" from `start` to `finish` (unix seconds; `None`: the finish KWOK stamped). Returns the
/// finish KWOK had stamped.
async fn rewrite_run(member: &Client, name: &str, start: i64, finish: Option<i64>) -> i64 {
    let pods: Api<Pod> = Api::namespaced(member.clone(), "default");
    let p = gpupool_e2e::eventually(30, "the pod to finish", || {
        let pods = pods.clone();
        async move {
            let p = pods.get(name).await?;
            Ok(
                (p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"))
                    .then_some(p),
            )
        }
    })
    .await
    .unwrap();
    let real_end = gpupool::metering::pod_run(&p).and_then(|r| r.end).unwrap();
    let finish = finish.unwrap_or(real_end);
    let ts = |s: i64| Timestamp::from_second(s).unwrap().to_string();
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {
            "startTime": ts(start),
            "containerStatuses": [{"name": "w", "image": "x", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"terminated": {"exitCode": 0,
                    "startedAt": ts(start), "finishedAt": ts(finish)}}}],
        }})),
    )
    .await
    .unwrap();
    real_end
}

fn hour_meter() -> MeterConfig {
    MeterConfig {
        period_seconds: 3600,
        finalize_delay_seconds: 1,
        observed_end_slack_seconds: 1,
        ..Default::default()
    }
}

/// A member admin replaces a placed pod by a copy (same labels, node and GPU annotation, new
/// UID and name) at every metering pass, each copy claiming to have run since the placement:
/// the slot is paid once, at most its GPUs × the time since it was placed, not once per copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_replaced_by_copies_is_paid_once_for_its_slot() {
    let w = world().await;
    let job = create_job(&w.hub, "copy", 1).await;
    let placed = place_now(&w.hub, &job).await;
    let uid = job.uid().unwrap();
    let members = [w.member_ref("member-1")];
    let mut last = placed;
    for i in 0..4 {
        let name = format!("copy-w0-{i}");
        pod(&w.member, &name, "copy", &uid, &uuids("copy-w0", 2), "1s").await;
        last = Timestamp::now().as_second();
        rewrite_run(&w.member, &name, placed, Some(last)).await;
        let r = meter_once(&w.hub, &members, Timestamp::now(), &hour_meter())
            .await
            .unwrap();
        assert!(r.errors.is_empty() && r.member_errors.is_empty(), "{r:?}");
        // The admin deletes the copy before the next pass.
        Api::<Pod>::namespaced(w.member.clone(), "default")
            .delete(&name, &Default::default())
            .await
            .unwrap();
    }
    let recs = usage_records(&w.hub).await.unwrap();
    let paid: i64 = recs.iter().map(|r| r.spec.gpu_seconds).sum();
    let slots: usize = recs.iter().map(|r| r.spec.pods.len()).sum();
    let bound = 2 * (last + 1 - placed);
    println!("4 copies: paid {paid} GPU-s for a slot worth at most {bound}, {slots} slot entries");
    assert!(paid > 0, "the slot is paid: {recs:#?}");
    assert!(
        paid <= bound,
        "paid {paid} GPU-s for a slot worth at most {bound}: {recs:#?}"
    );
    assert_eq!(
        slots,
        recs.len(),
        "one entry per slot and record, whatever the pod UIDs"
    );
    drop(w.fed);
}

/// A job waits in the queue before the hub places it; its worker's admin moves the pod's start
/// back to the job's creation: the wait is not paid, the worker is paid from `placedAt` on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_is_not_paid_for_its_wait() {
    let w = world().await;
    let job = create_job(&w.hub, "queued", 1).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let placed = place_now(&w.hub, &job).await;
    let uid = job.uid().unwrap();
    pod(
        &w.member,
        "queued-w0",
        "queued",
        &uid,
        &uuids("queued-w0", 2),
        "2s",
    )
    .await;
    let end = rewrite_run(&w.member, "queued-w0", created(&job), None).await;
    let r = meter_once(
        &w.hub,
        &[w.member_ref("member-1")],
        Timestamp::now(),
        &hour_meter(),
    )
    .await
    .unwrap();
    assert!(r.errors.is_empty() && r.member_errors.is_empty(), "{r:?}");
    let recs = usage_records(&w.hub).await.unwrap();
    let (paid, unpaid) = paid_and_unpaid(&recs, "queued-w0");
    let waited = placed - created(&job);
    println!("waited {waited} s: paid {paid} GPU-s, unpaid {unpaid} GPU-s");
    assert!(waited >= 4, "the job waited");
    assert!(paid > 0, "{recs:#?}");
    assert!(
        paid <= 2 * (end + 2 - placed),
        "paid {paid} GPU-s: the wait was paid"
    );
    assert!(
        unpaid >= 2 * waited,
        "the wait is surfaced as unpaid: {unpaid}"
    );
    drop(w.fed);
}

/// The hub's watch saw a pod end; the operator restarts (a new watch, which first lists the pod
/// as ended only now) and the member's admin has moved `finishedAt` hours later meanwhile: the
/// end the meter persisted in the usage record before the restart still bounds the pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observed_end_survives_an_operator_restart() {
    let w = world().await;
    let job = create_job(&w.hub, "rst", 1).await;
    let placed = place_now(&w.hub, &job).await;
    let uid = job.uid().unwrap();
    let watch = MemberWatch::start(&w.member, "member-1", Arc::new(NoSink));
    pod(&w.member, "rst-w0", "rst", &uid, &uuids("rst-w0", 2), "2s").await;
    let pods: Api<Pod> = Api::namespaced(w.member.clone(), "default");
    let pod_uid = gpupool_e2e::eventually(30, "the pod to exist", || {
        let pods = pods.clone();
        async move { Ok(pods.get_opt("rst-w0").await?.and_then(|p| p.uid())) }
    })
    .await
    .unwrap();
    let seen_end = gpupool_e2e::eventually(60, "the hub's watch to see the pod end", || {
        let watch = &watch;
        let pod_uid = pod_uid.clone();
        async move { Ok(watch.observed_ends().get(&pod_uid).copied()) }
    })
    .await
    .unwrap();
    let with = |watch: &MemberWatch| {
        let mut m = w.member_ref("member-1");
        m.observed_ends = watch.observed_ends();
        m.first_seen = watch.first_seen();
        m
    };
    let r = meter_once(&w.hub, &[with(&watch)], Timestamp::now(), &hour_meter())
        .await
        .unwrap();
    assert!(r.errors.is_empty() && r.member_errors.is_empty(), "{r:?}");
    // The operator goes down; the admin says the pod ran three more hours.
    drop(watch);
    let p = pods.get("rst-w0").await.unwrap();
    let start = gpupool::metering::pod_run(&p).unwrap().start;
    rewrite_run(
        &w.member,
        "rst-w0",
        start,
        Some(Timestamp::now().as_second() + 3 * 3600),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    // The operator is back: its new watch lists the pod as ended now.
    let watch = MemberWatch::start(&w.member, "member-1", Arc::new(NoSink));
    let relisted = gpupool_e2e::eventually(30, "the new watch to list the pod", || {
        let watch = &watch;
        let pod_uid = pod_uid.clone();
        async move { Ok(watch.observed_ends().get(&pod_uid).copied()) }
    })
    .await
    .unwrap();
    let r = meter_once(&w.hub, &[with(&watch)], Timestamp::now(), &hour_meter())
        .await
        .unwrap();
    assert!(r.errors.is_empty() && r.member_errors.is_empty(), "{r:?}");
    let recs = usage_records(&w.hub).await.unwrap();
    let (paid, _) = paid_and_unpaid(&recs, "rst-w0");
    let bound = 2 * (seen_end + 1 - start.max(placed));
    println!("seen ended at {seen_end}, relisted at {relisted}: paid {paid} GPU-s (bound {bound})");
    assert!(relisted >= seen_end + 5, "the new watch forgot the end");
    assert!(paid > 0, "{recs:#?}");
    assert!(
        paid <= bound,
        "paid {paid} GPU-s up to the restart (bound {bound}): {recs:#?}"
    );
    drop(watch);
    drop(w.fed);
}

/// The member's `ownerWallet` is edited on the hub (not on chain): what was metered before is
/// still paid to the wallet it was metered for (the on-chain owner), and what is metered under
/// the new wallet is not paid to the old one; it waits for the ledger to name the new owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_record_is_paid_only_to_the_wallet_it_was_metered_for() {
    let w = world().await;
    w.chain
        .register_cluster(&w.pool, &w.owner, &w.cluster_id, 8)
        .unwrap();
    let ledger = w.ledger();
    w.one_worker_job("before", "2s").await;
    w.run_until_final(&[w.member_ref("member-1")], None).await;
    let before: i64 = usage_records(&w.hub)
        .await
        .unwrap()
        .iter()
        .map(|r| r.spec.gpu_seconds)
        .sum();
    // The hub's admin names another wallet for the member.
    let next = Keypair::new();
    Api::<MemberCluster>::all(w.hub.clone())
        .patch(
            "member-1",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"ownerWallet": next.pubkey().to_string()}})),
        )
        .await
        .unwrap();
    let mut renamed = w.member_ref("member-1");
    renamed.owner_wallet = next.pubkey().to_string();
    w.one_worker_job("after", "2s").await;
    w.run_until_final(std::slice::from_ref(&renamed), None)
        .await;
    let r = settle_once(&w.hub, &ledger, &SettleConfig::default())
        .await
        .unwrap();
    assert!(r.errors.is_empty(), "{r:?}");
    let recs = usage_records(&w.hub).await.unwrap();
    let paid_old = w.chain.wallet_balance(&w.owner.pubkey(), &w.pool.mint);
    println!("metered before the edit: {before} GPU-s; old owner paid {paid_old} tokens");
    assert!(before > 0);
    assert_eq!(
        paid_old,
        DEMO_RATES[0] * before as u64,
        "what was metered for the old owner is paid to it: {recs:#?}"
    );
    assert_eq!(w.chain.wallet_balance(&next.pubkey(), &w.pool.mint), 0);
    assert!(
        recs.iter()
            .filter(|r| r.spec.owner_wallet == next.pubkey().to_string())
            .all(|r| record_state(r) == UsageState::Final),
        "usage metered for the new wallet is not paid to the old one: {recs:#?}"
    );
    assert!(
        r.alerts.iter().any(|a| a.reason == "OwnerMismatch"),
        "{:?}",
        r.alerts
    );
    assert_eq!(w.minted(), paid_old);
    drop(w.fed);
}
