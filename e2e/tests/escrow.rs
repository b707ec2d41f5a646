//! A paid pool on real API servers and the embedded ledger: tenants (job namespaces) pay for
//! what owners earn. A funded tenant's job runs and is paid from its escrow (burned from the
//! tenant = minted to the owner, the supply unchanged by usage), a job whose tenant cannot fund
//! its first window waits with the reason and starts once funded, a job ending mid-period gets
//! the remainder of its reservation released exactly, and a job whose reservation can no
//! longer be renewed is stopped after the grace; conservation is checked at the end.

use gpupool::api::{TrainingJob, TrainingPhase, UsageState};
use gpupool::ledger::{Ledger, LedgerClient};
use gpupool::metering::budget::{Budget, BudgetConfig, maintain};
use gpupool::metering::meter::HubView;
use gpupool::metering::runner::{RunnerConfig, run};
use gpupool::metering::{MemberRef, MeterConfig, SettleConfig, meter_once, settle_once};
use gpupool_e2e::chain::{DEMO_RATES, EmbeddedLedger};
use gpupool_e2e::{
    Federation, GpuNode, Operator, eventually, publish_fixture, record_state, register_member,
    usage_records,
};
use gpupool_ledger_svm as svm;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use solana_keypair::Keypair;
use solana_signer::Signer;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODE: &str = "dgx-h100-0";
const MODEL: &str = "NVIDIA H100 80GB HBM3";
/// The H100 class's demo rate, also the highest demo rate (tokens per GPU-second).
const H100_RATE: u64 = DEMO_RATES[1];
/// The tenant of jobs in the hub's `default` namespace.
const TENANT: &str = "default";
/// Tokens the tenant's wallet is granted at the pool's genesis.
const GRANT: u64 = 1_000_000;

fn pod_uuids(name: &str, gpus: usize) -> Vec<String> {
    (0..gpus).map(|i| format!("GPU-{name}-{i}")).collect()
}

/// A TrainingJob of `workers` × `gpus` placed on `member-1` as the scheduler would write it,
/// with its pods in the member (each completing after its `run`).
async fn placed_job(hub: &Client, member: &Client, pods: &[(&str, usize, &str)]) -> TrainingJob {
    let tj: TrainingJob = serde_json::from_value(serde_json::json!({
        "apiVersion": "gpupool.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "gpt-small", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{"name": "worker", "image": "ghcr.io/example/train:1"}]}},
                 "workers": pods.len(), "gpusPerWorker": pods[0].1}
    }))
    .unwrap();
    let jobs = Api::<TrainingJob>::namespaced(hub.clone(), "default");
    let job = jobs.create(&PostParams::default(), &tj).await.unwrap();
    let workers: Vec<serde_json::Value> = pods
        .iter()
        .enumerate()
        .map(|(rank, (name, gpus, _))| {
            serde_json::json!({"rank": rank, "node": NODE, "gpuUuids": pod_uuids(name, *gpus), "score": 0})
        })
        .collect();
    jobs.patch_status(
        &job.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({"status": {"cluster": "member-1", "workers": workers}})),
    )
    .await
    .unwrap();
    for (name, gpus, run) in pods {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": "default",
                "labels": {
                    "app.kubernetes.io/managed-by": "gpupool",
                    "gpupool.io/job-kind": "TrainingJob",
                    "gpupool.io/job-namespace": "default",
                    "gpupool.io/job-name": job.name_any(),
                    "gpupool.io/job-uid": job.uid().unwrap(),
                },
                "annotations": {
                    "gpupool.io/gpu-uuids": pod_uuids(name, *gpus).join(","),
                    "gpupool.io/gpu-model": MODEL,
                    "pod-complete.stage.kwok.x-k8s.io/delay": run,
                }
            },
            "spec": {
                "nodeName": NODE, "restartPolicy": "Never",
                "containers": [{"name": "worker", "image": "ghcr.io/example/train:1",
                    "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}}]
            }
        }))
        .unwrap();
        Api::<Pod>::namespaced(member.clone(), "default")
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
    }
    job
}

/// The chain's conservation for one tenant and one owner, with no fee: what the tenant spent
/// was burned from its escrow and minted to the owner, the escrow holds deposits − withdrawals
/// − spent, and the supply is the genesis grant (usage neither created nor destroyed tokens).
fn assert_conserved(chain: &EmbeddedLedger, pool: &svm::Pool, owner: &Keypair) -> u64 {
    let t = chain.tenant(TENANT).expect("the tenant's escrow");
    let escrow = chain.escrow_balance(TENANT, &pool.mint);
    let minted = chain.wallet_balance(&owner.pubkey(), &pool.mint);
    assert_eq!(
        escrow,
        t.deposited - t.withdrawn - t.spent,
        "escrow balance"
    );
    assert_eq!(
        t.spent, minted,
        "burned from the tenant == minted to the owner"
    );
    assert_eq!(
        chain.mint_supply(&pool.mint),
        GRANT,
        "usage does not grow the supply"
    );
    t.spent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_funded_tenant_pays_the_owner_and_the_remainder_is_released_exactly() {
    let fed = Federation::start(1).await.expect("hub + member start");
    fed.add_nodes(0, &[GpuNode::new(NODE, 8, MODEL)])
        .await
        .unwrap();
    let hub = fed.hub.client().await.unwrap();
    let member = fed.members[0].cp.client().await.unwrap();
    let (chain, pool) = EmbeddedLedger::with_pool(DEMO_RATES, 0, 3).unwrap();
    let chain = Arc::new(chain);
    let owner = Keypair::new();
    register_member(
        &hub,
        "member-1",
        &fed.members[0].cp,
        &owner.pubkey().to_string(),
        "eu",
    )
    .await
    .unwrap();
    let wallet = Keypair::new();
    chain
        .grant_tokens(&wallet.pubkey(), &pool.mint, GRANT)
        .unwrap();
    chain.open_escrow(&pool, &wallet, TENANT, 500_000).unwrap();
    // Two workers: 4 GPUs for ~5 s, 2 GPUs for ~7 s, in 3-second periods.
    let pods = [("gpt-small-w0", 4, "5s"), ("gpt-small-w1", 2, "7s")];
    let job = placed_job(&hub, &member, &pods).await;
    let uid = job.uid().unwrap();
    let ledger = Ledger::new(
        chain.clone() as Arc<dyn LedgerClient>,
        pool.oracle.insecure_clone(),
    )
    .with_owner_signer(owner.insecure_clone())
    .with_registrar(pool.registrar.insecure_clone())
    .with_admin(pool.admin.insecure_clone());
    let config = gpupool::ledger::read_config(chain.as_ref(), &gpupool_ledger::ID)
        .await
        .unwrap()
        .unwrap();
    let budget = Budget::new(BudgetConfig {
        paid: true,
        window_seconds: 60,
        grace_seconds: 20,
    });

    // The placed job reserves one window of all its GPUs at the highest rate.
    let view = HubView::list(&hub).await.unwrap();
    let r = maintain(
        &budget,
        &ledger,
        &view,
        &config,
        Timestamp::now().as_second(),
    )
    .await;
    assert!(r.errors.is_empty() && r.exhausted.is_empty(), "{r:?}");
    // The spec asks 2 workers × 4 GPUs.
    let window = 8 * 60 * H100_RATE;
    assert_eq!(r.reserved, window);
    assert_eq!(chain.reservation(TENANT, &uid).unwrap().amount, window);
    assert_eq!(budget.reservation(&uid), Some(window));
    assert_eq!(chain.tenant(TENANT).unwrap().reserved, window);

    // Metered and settled from the escrow, once.
    let members = vec![MemberRef {
        name: "member-1".into(),
        owner_wallet: owner.pubkey().to_string(),
        link: gpupool::federation::MemberLink::Push(member.clone()),
        gpu_models: pods
            .iter()
            .flat_map(|(n, g, _)| pod_uuids(n, *g))
            .map(|u| (u, MODEL.to_string()))
            .collect(),
        observed_ends: Default::default(),
        first_seen: Default::default(),
        pods: None,
    }];
    let mcfg = MeterConfig {
        period_seconds: 3,
        finalize_delay_seconds: 1,
        ..MeterConfig::default()
    };
    let scfg = SettleConfig {
        paid: true,
        ..SettleConfig::default()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        meter_once(&hub, &members, Timestamp::now(), &mcfg)
            .await
            .unwrap();
        let finished = member_pods_done(&member).await;
        let s = settle_once(&hub, &ledger, &scfg).await.unwrap();
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        let recs = usage_records(&hub).await.unwrap();
        if finished
            && !recs.is_empty()
            && recs.iter().all(|r| record_state(r) == UsageState::Settled)
        {
            break;
        }
        assert!(Instant::now() < deadline, "never all settled: {recs:#?}");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let recs = usage_records(&hub).await.unwrap();
    let gpu_seconds: i64 = recs.iter().map(|r| r.spec.gpu_seconds).sum();
    assert!(gpu_seconds >= 30, "both workers' usage: {gpu_seconds}");
    let cost = u64::try_from(gpu_seconds).unwrap() * H100_RATE;
    let spent = assert_conserved(&chain, &pool, &owner);
    assert_eq!(
        spent, cost,
        "the owner is paid exactly the usage at its rate"
    );
    let held = chain.reservation(TENANT, &uid).unwrap();
    assert_eq!((held.drawn, held.amount), (cost, window - cost));

    // A settlement of the same usage again is refused (exactly once): nothing more is burned.
    let again = settle_once(&hub, &ledger, &scfg).await.unwrap();
    assert_eq!(again.settled, 0);
    assert_eq!(assert_conserved(&chain, &pool, &owner), cost);

    // The job ended mid-period: once its records are settled, the rest of its reservation
    // goes back to the tenant, exactly.
    Api::<TrainingJob>::namespaced(hub.clone(), "default")
        .patch_status(
            &job.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"status": {"phase": "Succeeded",
                "completionTime": Timestamp::now().to_string()}})),
        )
        .await
        .unwrap();
    let view = HubView::list(&hub).await.unwrap();
    let r = maintain(
        &budget,
        &ledger,
        &view,
        &config,
        Timestamp::now().as_second(),
    )
    .await;
    assert_eq!((r.released, r.reserved), (1, 0), "{r:?}");
    assert!(chain.reservation(TENANT, &uid).is_none());
    let t = chain.tenant(TENANT).unwrap();
    assert_eq!(t.reserved, 0, "the remainder {} is released", window - cost);
    assert_eq!(chain.escrow_balance(TENANT, &pool.mint), 500_000 - cost);
    assert_eq!(budget.tenant(TENANT).unwrap().escrow, 500_000 - cost);
}

/// Whether every gpupool pod in the member has finished.
async fn member_pods_done(member: &Client) -> bool {
    let pods = Api::<Pod>::namespaced(member.clone(), "default")
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=gpupool"))
        .await
        .unwrap();
    !pods.items.is_empty()
        && pods
            .items
            .iter()
            .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"))
}

/// The operator of a paid pool with its metering loop on the embedded chain.
struct PaidPool {
    _fed: Federation,
    hub: Client,
    chain: Arc<EmbeddedLedger>,
    pool: svm::Pool,
    owner: Keypair,
    _op: Operator,
    _metering: tokio::task::JoinHandle<()>,
}

async fn paid_pool(window_seconds: u64, grace_seconds: u64) -> PaidPool {
    gpupool::telemetry::init_logging();
    let fed = Federation::start(1).await.expect("federation starts");
    fed.add_nodes(0, &[GpuNode::new("h100-0", 8, MODEL)])
        .await
        .unwrap();
    let c = fed.members[0].cp.client().await.unwrap();
    publish_fixture(&c, "dgx-h100", "h100-0").await.unwrap();
    let hub = fed.hub.client().await.unwrap();
    let owner = Keypair::new();
    register_member(
        &hub,
        "member-1",
        &fed.members[0].cp,
        &owner.pubkey().to_string(),
        "eu",
    )
    .await
    .unwrap();
    let (chain, pool) = EmbeddedLedger::with_pool(DEMO_RATES, 0, 3).unwrap();
    let chain = Arc::new(chain);
    let mut config = Operator::test_config(30);
    config.budget = BudgetConfig {
        paid: true,
        window_seconds,
        grace_seconds,
    };
    let op = Operator::start(hub.clone(), config);
    let ledger = Ledger::new(
        chain.clone() as Arc<dyn LedgerClient>,
        pool.oracle.insecure_clone(),
    )
    .with_owner_signer(owner.insecure_clone())
    .with_registrar(pool.registrar.insecure_clone())
    .with_admin(pool.admin.insecure_clone());
    let cfg = RunnerConfig {
        interval: Duration::from_secs(1),
        meter: MeterConfig {
            finalize_delay_seconds: 1,
            ..MeterConfig::default()
        },
        settle: SettleConfig::default(),
    };
    let metering = tokio::spawn(run(op.ctx.metering(), Some(ledger), cfg));
    gpupool_e2e::wait_member_ready(&hub, "member-1", 60)
        .await
        .unwrap();
    PaidPool {
        _fed: fed,
        hub,
        chain,
        pool,
        owner,
        _op: op,
        _metering: metering,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unfunded_job_waits_with_the_reason_and_an_exhausted_one_is_stopped() {
    let p = paid_pool(60, 5).await;
    let _ = Api::<Namespace>::all(p.hub.clone())
        .get("default")
        .await
        .unwrap();
    let wallet = Keypair::new();
    p.chain
        .grant_tokens(&wallet.pubkey(), &p.pool.mint, GRANT)
        .unwrap();
    p.chain.open_escrow(&p.pool, &wallet, TENANT, 0).unwrap();
    let tjs: Api<TrainingJob> = Api::namespaced(p.hub.clone(), "default");
    let job: TrainingJob = serde_yaml::from_str(
        "apiVersion: gpupool.io/v1alpha1\nkind: TrainingJob\nmetadata: {name: paid, namespace: default}\nspec: {template: {spec: {containers: [{name: t, image: trainer}]}}, workers: 1, gpusPerWorker: 2}\n",
    )
    .unwrap();
    tjs.create(&PostParams::default(), &job).await.unwrap();

    // 2 GPUs × 60 s × the highest rate: the tenant must hold 1200 unreserved tokens.
    let need = 2 * 60 * H100_RATE;
    let waiting = |want: String| {
        let tjs = tjs.clone();
        async move {
            eventually(60, &want.clone(), || async {
                let j = tjs.get("paid").await?;
                let st = j.status.unwrap_or_default();
                Ok((st.phase == TrainingPhase::Pending
                    && st.pending_reason.as_deref() == Some(want.as_str()))
                .then_some(()))
            })
            .await
            .unwrap()
        }
    };
    waiting(format!(
        "tenant default: escrow 0 tokens, this job needs {need} for its first minute"
    ))
    .await;
    p.chain.deposit(&p.pool, &wallet, TENANT, 1_000).unwrap();
    waiting(format!(
        "tenant default: escrow 1000 tokens, this job needs {need} for its first minute"
    ))
    .await;

    // Funded for its first window and a little more: it starts, holds a reservation, runs
    // until a renewal finds the escrow short, then is stopped after the 5 s grace.
    p.chain.deposit(&p.pool, &wallet, TENANT, 400).unwrap();
    let running = gpupool_e2e::wait_training_phase(&tjs, "paid", TrainingPhase::Running, 90)
        .await
        .unwrap();
    let uid = running.uid().unwrap();
    eventually(30, "the job's reservation on chain", || async {
        Ok(p.chain.reservation(TENANT, &uid).filter(|r| r.amount > 0))
    })
    .await
    .unwrap();
    let failed = gpupool_e2e::wait_training_phase(&tjs, "paid", TrainingPhase::Failed, 180)
        .await
        .unwrap();
    let st = failed.status.unwrap();
    let cond = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Failed")
        .expect("a Failed condition");
    assert_eq!(cond.reason, "BudgetExhausted", "{cond:?}");
    assert!(cond.message.contains("grace of 5s"), "{}", cond.message);
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "BudgetExhausted" && c.status == "True"),
        "{:?}",
        st.conditions
    );

    // Its usage is paid from the escrow, then the rest of its reservation released.
    eventually(
        120,
        "usage settled and the reservation released",
        || async {
            let recs = usage_records(&p.hub).await?;
            let settled =
                !recs.is_empty() && recs.iter().all(|r| record_state(r) == UsageState::Settled);
            Ok((settled && p.chain.reservation(TENANT, &uid).is_none()).then_some(()))
        },
    )
    .await
    .unwrap();
    let t = p.chain.tenant(TENANT).unwrap();
    assert_eq!(t.reserved, 0);
    assert_eq!(t.deposited, 1_400);
    let spent = assert_conserved(&p.chain, &p.pool, &p.owner);
    let recs = usage_records(&p.hub).await.unwrap();
    let paid: i64 = recs.iter().filter_map(|r| r.status.as_ref()?.amount).sum();
    assert_eq!(u64::try_from(paid).unwrap(), spent);
    assert!(spent > 0 && spent <= 1_400, "{spent}");
}
