//! Usage metering and settlement on a real hub + member (KWOK) and the embedded ledger:
//! pods run and complete in the member, the meter writes UsageRecords in the hub, the settler
//! pays them on chain exactly once, and a settler that dies between sending and marking neither
//! double-mints nor loses usage.

use futures::future::BoxFuture;
use gpupool::api::{TrainingJob, UsageState};
use gpupool::cli::earnings::{Selector, earnings_report, format_report};
use gpupool::ledger::{
    AccountData, Hash, Ledger, LedgerClient, Pubkey, SendError, Signature, Transaction,
};
use gpupool::metering::{MemberRef, MeterConfig, SettleConfig, meter_once, settle_once};
use gpupool_e2e::chain::{DEMO_RATES, EmbeddedLedger};
use gpupool_e2e::{Federation, GpuNode, record_state, register_member, usage_records};
use gpupool_ledger::error::LedgerError;
use gpupool_ledger::state;
use gpupool_ledger_svm as svm;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use solana_keypair::Keypair;
use solana_signer::Signer;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const NODE: &str = "dgx-h100-0";
const MODEL: &str = "NVIDIA H100 80GB HBM3";
const H100_CLASS: usize = 1;

async fn create_training_job(hub: &Client, name: &str) -> TrainingJob {
    let tj: TrainingJob = serde_json::from_value(serde_json::json!({
        "apiVersion": "gpupool.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{"name": "worker", "image": "ghcr.io/example/train:1"}]}}, "workers": 2, "gpusPerWorker": 4}
    }))
    .unwrap();
    Api::<TrainingJob>::namespaced(hub.clone(), "default")
        .create(&PostParams::default(), &tj)
        .await
        .expect("TrainingJob created in the hub")
}

/// Writes the job's placement on the hub as the scheduler would: gang on `member-1`, one
/// worker per pod on `NODE` with the pod's GPUs. The meter pays only pods matching it.
async fn place_job(hub: &Client, job: &TrainingJob, pods: &[(&str, usize, &str)]) {
    let workers: Vec<serde_json::Value> = pods
        .iter()
        .enumerate()
        .map(|(rank, (name, gpus, _))| {
            serde_json::json!({"rank": rank, "node": NODE, "gpuUuids": pod_uuids(name, *gpus), "score": 0})
        })
        .collect();
    Api::<TrainingJob>::namespaced(hub.clone(), "default")
        .patch_status(
            &job.name_any(),
            &PatchParams::default(),
            &Patch::Merge(
                &serde_json::json!({"status": {"cluster": "member-1", "workers": workers}}),
            ),
        )
        .await
        .expect("placement written to the job's status");
}

fn pod_uuids(name: &str, gpus: usize) -> Vec<String> {
    (0..gpus).map(|i| format!("GPU-{name}-{i}")).collect()
}

/// UID of a cluster's `kube-system` namespace: its identity on the ledger.
async fn kube_system_uid(client: &Client) -> String {
    Api::<Namespace>::all(client.clone())
        .get("kube-system")
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap()
}

/// A pod as the federation controller creates it: gpupool labels, GPU annotations, bound to the
/// node, completing after `run` (KWOK's pod-complete stage).
async fn create_gpu_pod(member: &Client, job: &TrainingJob, name: &str, gpus: usize, run: &str) {
    let uuids = pod_uuids(name, gpus);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": name, "namespace": "default",
            "labels": {
                "app.kubernetes.io/managed-by": "gpupool",
                "gpupool.io/job-kind": "TrainingJob",
                "gpupool.io/job-namespace": job.namespace().unwrap(),
                "gpupool.io/job-name": job.name_any(),
                "gpupool.io/job-uid": job.uid().unwrap(),
            },
            "annotations": {
                "gpupool.io/gpu-uuids": uuids.join(","),
                "gpupool.io/gpu-model": MODEL,
                "pod-complete.stage.kwok.x-k8s.io/delay": run,
            }
        },
        "spec": {
            "nodeName": NODE,
            "restartPolicy": "Never",
            "containers": [{"name": "worker", "image": "ghcr.io/example/train:1",
                "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}}]
        }
    }))
    .unwrap();
    Api::<Pod>::namespaced(member.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await
        .expect("pod created in the member");
}

/// GPU-seconds of finished pods, straight from their statuses (the expectation the meter must
/// match).
async fn finished_pods_gpu_seconds(member: &Client) -> Option<i64> {
    let pods = Api::<Pod>::namespaced(member.clone(), "default")
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=gpupool"))
        .await
        .unwrap();
    let mut total = 0;
    for p in pods.items {
        let st = p.status.as_ref()?;
        if st.phase.as_deref() != Some("Succeeded") {
            return None;
        }
        let cs = &st.container_statuses.as_ref()?[0];
        let t = cs.state.as_ref()?.terminated.as_ref()?;
        // KWOK's pod-complete stage stamps terminated.startedAt with the completion time; the
        // pod's startTime is when it started running.
        let secs = t.finished_at.as_ref()?.0.as_second() - st.start_time.as_ref()?.0.as_second();
        let gpus: i64 = p.metadata.annotations.as_ref()?["gpupool.io/gpu-uuids"]
            .split(',')
            .count() as i64;
        total += secs * gpus;
    }
    Some(total)
}

/// The finished pods' GPU-seconds, once every usage record on the hub is `Settled`.
async fn settled_total(s: &Setup) -> Option<i64> {
    let expected = finished_pods_gpu_seconds(&s.member).await?;
    let recs = usage_records(&s.hub).await.unwrap();
    (!recs.is_empty() && recs.iter().all(|r| record_state(r) == UsageState::Settled))
        .then_some(expected)
}

struct Setup {
    fed: Federation,
    hub: Client,
    member: Client,
    members: Vec<MemberRef>,
    job: TrainingJob,
    chain: Arc<EmbeddedLedger>,
    pool: svm::Pool,
    owner: Keypair,
    cluster_id: [u8; 32],
}

impl Setup {
    /// The settler with the keys the demo hands it: the owner's (to register), the
    /// registrar's (to co-sign), the admin's (to set the GPU cap).
    fn demo_ledger(&self, client: Arc<dyn LedgerClient>) -> Ledger {
        Ledger::new(client, self.pool.oracle.insecure_clone())
            .with_owner_signer(self.owner.insecure_clone())
            .with_registrar(self.pool.registrar.insecure_clone())
            .with_admin(self.pool.admin.insecure_clone())
    }
}

async fn setup(pods: &[(&str, usize, &str)], period_seconds: u64) -> Setup {
    let fed = Federation::start(1).await.expect("hub + member start");
    fed.add_nodes(0, &[GpuNode::new(NODE, 8, MODEL)])
        .await
        .unwrap();
    let hub = fed.hub.client().await.unwrap();
    let member = fed.members[0].cp.client().await.unwrap();
    let (chain, pool) = EmbeddedLedger::with_pool(DEMO_RATES, 0, period_seconds)
        .expect("pool on the embedded chain");
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
    let job = create_training_job(&hub, "gpt-small").await;
    place_job(&hub, &job, pods).await;
    for (name, gpus, run) in pods {
        create_gpu_pod(&member, &job, name, *gpus, run).await;
    }
    let gpu_models = pods
        .iter()
        .flat_map(|(name, gpus, _)| pod_uuids(name, *gpus))
        .map(|u| (u, MODEL.to_string()))
        .collect();
    let members = vec![MemberRef {
        name: "member-1".into(),
        owner_wallet: owner.pubkey().to_string(),
        link: gpupool::federation::MemberLink::Push(member.clone()),
        gpu_models,
        observed_ends: Default::default(),
        first_seen: Default::default(),
        pods: None,
    }];
    let cluster_id = state::cluster_id(&kube_system_uid(&member).await);
    Setup {
        fed,
        hub,
        member,
        members,
        job,
        chain: Arc::new(chain),
        pool,
        owner,
        cluster_id,
    }
}

/// Meters until the pods have finished and every record of theirs is `Final` (or `Settled`).
async fn meter_until_final(s: &Setup, cfg: &MeterConfig) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let report = meter_once(&s.hub, &s.members, Timestamp::now(), cfg)
            .await
            .expect("meter pass");
        assert!(
            report.member_errors.is_empty(),
            "{:?}",
            report.member_errors
        );
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        if let Some(expected) = finished_pods_gpu_seconds(&s.member).await {
            let recs = usage_records(&s.hub).await.unwrap();
            if !recs.is_empty() && recs.iter().all(|r| record_state(r) != UsageState::Open) {
                return expected;
            }
        }
        assert!(
            Instant::now() < deadline,
            "records never became final: {:#?}",
            usage_records(&s.hub).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_metered_recorded_and_settled_exactly_once() {
    // Two workers of one job: 4 GPUs for ~5 s and 2 GPUs for ~7 s; 3-second periods.
    let s = setup(&[("gpt-small-w0", 4, "5s"), ("gpt-small-w1", 2, "7s")], 3).await;
    let ledger = s.demo_ledger(s.chain.clone());
    let mcfg = MeterConfig {
        period_seconds: 3,
        finalize_delay_seconds: 1,
        ..Default::default()
    };
    // Small batches so several transactions are needed.
    let scfg = SettleConfig {
        max_batch: 2,
        ..Default::default()
    };

    // Meter and settle together until the pods are done and everything is settled.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut passes = 0;
    let (mut sent, mut settled, mut minted) = (0, 0, 0u64);
    let expected = loop {
        passes += 1;
        let m = meter_once(&s.hub, &s.members, Timestamp::now(), &mcfg)
            .await
            .expect("meter pass");
        assert!(m.errors.is_empty() && m.member_errors.is_empty(), "{m:?}");
        let r = settle_once(&s.hub, &ledger, &scfg)
            .await
            .expect("settle pass");
        assert!(r.errors.is_empty(), "{r:?}");
        assert_eq!(r.send_failures, 0, "{r:?}");
        sent += r.batches_sent;
        settled += r.settled;
        minted += r.tokens_minted;
        if let Some(expected) = settled_total(&s).await {
            break expected;
        }
        assert!(
            Instant::now() < deadline,
            "not all settled: {:#?}",
            usage_records(&s.hub).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    };
    // One more meter pass writes the job's final total.
    meter_once(&s.hub, &s.members, Timestamp::now(), &mcfg)
        .await
        .unwrap();

    let recs = usage_records(&s.hub).await.unwrap();
    let total: i64 = recs.iter().map(|r| r.spec.gpu_seconds).sum();
    let rate = DEMO_RATES[H100_CLASS];
    let expected_tokens: u64 = recs
        .iter()
        .map(|r| DEMO_RATES[r.spec.gpu_class as usize] * r.spec.gpu_seconds as u64)
        .sum();
    let amounts: i64 = recs
        .iter()
        .map(|r| r.status.as_ref().unwrap().amount.unwrap())
        .sum();
    let balance = s.chain.wallet_balance(&s.owner.pubkey(), &s.pool.mint);
    let supply = s.chain.mint_supply(&s.pool.mint);
    let cluster = s
        .chain
        .with_svm(|v| svm::read_cluster(v, &s.cluster_id))
        .expect("cluster registered");
    println!(
        "passes={passes} records={} gpu_seconds={total} (pods say {expected}) tokens: balance={balance} supply={supply} \
         Σrate×gpu-s={expected_tokens} receipts={} batches={sent} settled={settled} minted(report)={minted}",
        recs.len(),
        cluster.receipt_count
    );
    assert!(total > 0);
    assert_eq!(
        total, expected,
        "Σ records == Σ (finishedAt - startedAt) × GPUs over the pods"
    );
    assert!(recs.iter().all(|r| r.spec.gpu_class as usize == H100_CLASS));
    assert_eq!(expected_tokens, rate * total as u64);
    assert_eq!(
        balance, expected_tokens,
        "owner's token account == Σ rate × GPU-s"
    );
    assert_eq!(supply, expected_tokens, "mint supply == Σ rate × GPU-s");
    assert_eq!(
        amounts as u64, expected_tokens,
        "records' amounts == minted"
    );
    assert_eq!(minted, expected_tokens);
    assert_eq!(settled, recs.len());
    assert_eq!(cluster.owner, s.owner.pubkey());
    assert_eq!(cluster.total_gpu_seconds, total as u64);
    assert_eq!(cluster.total_tokens_minted, expected_tokens);
    assert_eq!(cluster.receipt_count, recs.len() as u64);
    assert!(
        recs.len() >= 3,
        "3-second periods split ~7 s of work into several records"
    );
    assert!(sent >= recs.len().div_ceil(2), "batches of at most 2");
    for r in &recs {
        let st = r.status.as_ref().unwrap();
        assert!(
            st.signature.is_some(),
            "{} settled by this operator's send",
            r.name_any()
        );
        assert_eq!(st.settled_gpu_seconds, Some(r.spec.gpu_seconds));
        let uid = state::parse_job_uid(&r.spec.job_uid).unwrap();
        let receipt = s
            .chain
            .with_svm(|v| svm::read_receipt(v, &s.cluster_id, &uid, r.spec.period as u64))
            .expect("receipt on chain");
        assert_eq!(receipt.gpu_seconds, r.spec.gpu_seconds as u64);
    }

    // The job's status.gpuSeconds is the sum, owned by the meter's field manager.
    let tj = Api::<TrainingJob>::namespaced(s.hub.clone(), "default")
        .get("gpt-small")
        .await
        .unwrap();
    assert_eq!(
        tj.status.as_ref().and_then(|st| st.gpu_seconds),
        Some(total)
    );
    let managers: Vec<String> = tj
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.iter().any(|m| m == "gpupool-meter"),
        "{managers:?}"
    );
    assert_eq!(tj.uid(), s.job.uid());

    // Another round changes nothing and mints nothing.
    let m = meter_once(&s.hub, &s.members, Timestamp::now(), &mcfg)
        .await
        .unwrap();
    assert_eq!(
        (m.records_created, m.records_updated, m.late_gpu_seconds),
        (0, 0, 0),
        "{m:?}"
    );
    let r = settle_once(&s.hub, &ledger, &scfg).await.unwrap();
    assert_eq!(
        (r.final_records, r.settled, r.batches_sent),
        (0, 0, 0),
        "{r:?}"
    );
    assert_eq!(
        s.chain.wallet_balance(&s.owner.pubkey(), &s.pool.mint),
        balance
    );

    // The owner's report, from the same chain and hub.
    let report = earnings_report(
        Some(&s.hub),
        s.chain.as_ref(),
        &gpupool_ledger::ID,
        &Selector::Wallet(s.owner.pubkey()),
    )
    .await
    .unwrap();
    let text = format_report(&report);
    println!("{text}");
    assert_eq!(report.clusters.len(), 1);
    let line = &report.clusters[0];
    assert_eq!(line.chain.as_ref().unwrap().tokens, expected_tokens);
    assert_eq!(line.settled_gpu_seconds, total);
    assert_eq!(line.final_gpu_seconds + line.open_gpu_seconds, 0);
    assert_eq!(report.balances, vec![(s.owner.pubkey(), expected_tokens)]);
    assert!(text.contains(&expected_tokens.to_string()), "{text}");
    let err = earnings_report(
        Some(&s.hub),
        s.chain.as_ref(),
        &gpupool_ledger::ID,
        &Selector::Cluster("nope".into()),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("unknown cluster \"nope\""),
        "{err}"
    );
    drop(s.fed);
}

/// Wraps the embedded chain: `Crash` executes a transaction and then reports failure (the
/// settler "dies" between sending and marking); `Refuse` fails without sending anything.
struct Faulty {
    inner: Arc<EmbeddedLedger>,
    mode: AtomicUsize,
    executed: AtomicUsize,
}

const PASS: usize = 0;
const REFUSE: usize = 1;
const CRASH: usize = 2;

impl LedgerClient for Faulty {
    fn latest_blockhash(&self) -> BoxFuture<'_, anyhow::Result<Hash>> {
        self.inner.latest_blockhash()
    }
    fn send_and_confirm<'a>(
        &'a self,
        tx: &'a Transaction,
    ) -> BoxFuture<'a, Result<Signature, SendError>> {
        Box::pin(async move {
            match self.mode.load(Ordering::SeqCst) {
                REFUSE => Err(SendError::NotSent("connection refused".into())),
                CRASH => {
                    let r = self.inner.send_and_confirm(tx).await;
                    if r.is_ok() {
                        self.executed.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(SendError::Unknown(
                        "settler crashed before it saw the confirmation".into(),
                    ))
                }
                _ => self.inner.send_and_confirm(tx).await,
            }
        })
    }
    fn get_account<'a>(
        &'a self,
        key: &'a Pubkey,
    ) -> BoxFuture<'a, anyhow::Result<Option<AccountData>>> {
        self.inner.get_account(key)
    }
    fn describe(&self) -> String {
        "faulty embedded ledger".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settler_crash_between_send_and_mark_neither_double_mints_nor_loses_usage() {
    let s = setup(&[("gpt-small-w0", 4, "4s")], 2).await;
    // The operator registers the cluster itself only when it holds the owner's and registrar's
    // keys; here the owner and the registrar registered it beforehand, as in production.
    s.chain
        .register_cluster(&s.pool, &s.owner, &s.cluster_id, 8)
        .unwrap();
    let faulty = Arc::new(Faulty {
        inner: s.chain.clone(),
        mode: AtomicUsize::new(PASS),
        executed: AtomicUsize::new(0),
    });
    let ledger = Ledger::new(faulty.clone(), s.pool.oracle.insecure_clone());
    let mcfg = MeterConfig {
        period_seconds: 2,
        finalize_delay_seconds: 1,
        ..Default::default()
    };
    let scfg = SettleConfig::default();
    let expected = meter_until_final(&s, &mcfg).await;
    let recs = usage_records(&s.hub).await.unwrap();
    let n = recs.len();
    let total: i64 = recs.iter().map(|r| r.spec.gpu_seconds).sum();
    assert_eq!(total, expected);
    let tokens = DEMO_RATES[H100_CLASS] * total as u64;
    let bal = || s.chain.wallet_balance(&s.owner.pubkey(), &s.pool.mint);
    assert_eq!(bal(), 0);

    // 1. The RPC refuses: nothing sent, records stay Final with an attempt counted.
    faulty.mode.store(REFUSE, Ordering::SeqCst);
    let r = settle_once(&s.hub, &ledger, &scfg).await.unwrap();
    assert_eq!(
        (
            r.final_records,
            r.settled,
            r.send_failures,
            r.batches_failed
        ),
        (n, 0, n, 1),
        "{r:?}"
    );
    assert_eq!(bal(), 0);
    let recs = usage_records(&s.hub).await.unwrap();
    assert!(recs.iter().all(|r| record_state(r) == UsageState::Final));
    assert!(
        recs.iter()
            .all(|r| r.status.as_ref().unwrap().attempts == Some(1))
    );

    // 2. The transaction lands, but the settler dies before marking anything.
    faulty.mode.store(CRASH, Ordering::SeqCst);
    let r = settle_once(&s.hub, &ledger, &scfg).await.unwrap();
    assert_eq!(
        faulty.executed.load(Ordering::SeqCst),
        1,
        "the batch executed on chain"
    );
    assert_eq!((r.settled, r.send_failures), (0, n), "{r:?}");
    assert_eq!(bal(), tokens, "paid once");
    let recs = usage_records(&s.hub).await.unwrap();
    assert!(
        recs.iter().all(|r| record_state(r) == UsageState::Final),
        "not marked: the crash came first"
    );

    // 3. The restarted settler reconciles against the receipts: Settled, nothing resent.
    faulty.mode.store(PASS, Ordering::SeqCst);
    let r = settle_once(&s.hub, &ledger, &scfg).await.unwrap();
    println!("after crash: records={n} gpu_seconds={total} tokens={tokens} report={r:?}");
    assert_eq!(
        (r.reconciled, r.settled, r.batches_sent, r.batches_failed),
        (n, 0, 0, 0),
        "{r:?}"
    );
    assert_eq!(r.gpu_seconds_settled, total as u64);
    assert_eq!(bal(), tokens, "retry did not mint again");
    assert_eq!(s.chain.mint_supply(&s.pool.mint), tokens);
    let recs = usage_records(&s.hub).await.unwrap();
    for r in &recs {
        let st = r.status.as_ref().unwrap();
        assert_eq!(st.state, UsageState::Settled);
        assert_eq!(
            st.amount,
            Some(DEMO_RATES[H100_CLASS] as i64 * r.spec.gpu_seconds)
        );
        assert!(
            st.message
                .as_deref()
                .unwrap_or("")
                .contains("found on chain"),
            "{st:?}"
        );
    }

    // 4. Even a blind resend of the same usage is refused by the program.
    let cluster_id = s.cluster_id;
    let entries: Vec<_> = recs
        .iter()
        .map(|r| gpupool_ledger::instruction::UsageEntry {
            job_uid: state::parse_job_uid(&r.spec.job_uid).unwrap(),
            period: r.spec.period as u64,
            gpu_seconds: r.spec.gpu_seconds as u64,
            gpu_class: r.spec.gpu_class as u8,
        })
        .collect();
    let oracle = s.pool.oracle.pubkey();
    let ix = gpupool_ledger::instruction::record_usage_batch(
        &oracle,
        &oracle,
        &s.pool.mint,
        &cluster_id,
        &s.owner.pubkey(),
        &entries,
    );
    let err = ledger.send(&[ix], &[]).await.unwrap_err();
    assert_eq!(
        err.ledger_error(),
        Some(LedgerError::ReceiptAlreadyExists),
        "{err}"
    );
    assert_eq!(bal(), tokens);
    drop(s.fed);
}

/// Reads like the chain, except that receipts are invisible while `lagging` is set: a
/// `finalized` view that has not caught up with `confirmed` yet.
struct Lagging {
    inner: Arc<EmbeddedLedger>,
    lagging: std::sync::atomic::AtomicBool,
}

impl LedgerClient for Lagging {
    fn latest_blockhash(&self) -> BoxFuture<'_, anyhow::Result<Hash>> {
        self.inner.latest_blockhash()
    }
    fn send_and_confirm<'a>(
        &'a self,
        tx: &'a Transaction,
    ) -> BoxFuture<'a, Result<Signature, SendError>> {
        self.inner.send_and_confirm(tx)
    }
    fn get_account<'a>(
        &'a self,
        key: &'a Pubkey,
    ) -> BoxFuture<'a, anyhow::Result<Option<AccountData>>> {
        Box::pin(async move {
            let acc = self.inner.get_account(key).await?;
            let receipt = acc.as_ref().is_some_and(|a| {
                a.owner == gpupool_ledger::ID && a.data.first() == Some(&state::TAG_RECEIPT)
            });
            Ok(if receipt && self.lagging.load(Ordering::SeqCst) {
                None
            } else {
                acc
            })
        })
    }
    fn describe(&self) -> String {
        "lagging finalized view".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_settled_only_once_their_receipts_are_finalized() {
    let s = setup(&[("gpt-small-w0", 2, "3s")], 2).await;
    let finalized = Arc::new(Lagging {
        inner: s.chain.clone(),
        lagging: std::sync::atomic::AtomicBool::new(true),
    });
    let ledger = s
        .demo_ledger(s.chain.clone())
        .with_finalized_reader(finalized.clone());
    let mcfg = MeterConfig {
        period_seconds: 2,
        finalize_delay_seconds: 1,
        ..Default::default()
    };
    let expected = meter_until_final(&s, &mcfg).await;
    let n = usage_records(&s.hub).await.unwrap().len();
    // Sent and confirmed, not finalized: still Final, with the signature noted; a second pass
    // neither resends nor settles.
    for _ in 0..2 {
        let r = settle_once(&s.hub, &ledger, &SettleConfig::default())
            .await
            .unwrap();
        assert!(r.errors.is_empty(), "{r:?}");
        assert_eq!(
            (r.settled, r.reconciled, r.awaiting_finality),
            (0, 0, n),
            "{r:?}"
        );
    }
    let recs = usage_records(&s.hub).await.unwrap();
    assert!(recs.iter().all(|r| record_state(r) == UsageState::Final));
    assert!(
        recs.iter()
            .all(|r| r.status.as_ref().unwrap().signature.is_some())
    );
    let tokens = DEMO_RATES[H100_CLASS] * expected as u64;
    assert_eq!(s.chain.mint_supply(&s.pool.mint), tokens, "sent once");
    // Finalized: settled, keeping the signature of the send.
    finalized.lagging.store(false, Ordering::SeqCst);
    let r = settle_once(&s.hub, &ledger, &SettleConfig::default())
        .await
        .unwrap();
    assert_eq!((r.reconciled, r.batches_sent), (n, 0), "{r:?}");
    let recs = usage_records(&s.hub).await.unwrap();
    assert!(recs.iter().all(|r| record_state(r) == UsageState::Settled));
    assert!(
        recs.iter()
            .all(|r| r.status.as_ref().unwrap().signature.is_some())
    );
    assert_eq!(s.chain.mint_supply(&s.pool.mint), tokens);
    drop(s.fed);
}

/// The production path: settlement through Solana JSON-RPC (`RpcLedger`, the client `gpupool run
/// --rpc-url` uses) against an RPC endpoint serving the embedded chain, and the owner CLI binary
/// `gpupool earnings --rpc-url` reading the result next to the hub's records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settles_through_json_rpc_and_the_owner_cli_reads_it() {
    let s = setup(&[("gpt-small-w0", 2, "3s")], 2).await;
    let server = gpupool_e2e::chain::rpc_server::serve(s.chain.clone())
        .await
        .unwrap();
    let rpc = Arc::new(gpupool::ledger::RpcLedger::new(&server.url).unwrap());
    let ledger = s.demo_ledger(rpc.clone());
    let mcfg = MeterConfig {
        period_seconds: 2,
        finalize_delay_seconds: 1,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let expected = loop {
        meter_once(&s.hub, &s.members, Timestamp::now(), &mcfg)
            .await
            .unwrap();
        let r = settle_once(&s.hub, &ledger, &SettleConfig::default())
            .await
            .unwrap();
        assert!(r.errors.is_empty() && r.send_failures == 0, "{r:?}");
        if let Some(expected) = settled_total(&s).await {
            break expected;
        }
        assert!(
            Instant::now() < deadline,
            "not settled: {:#?}",
            usage_records(&s.hub).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    };
    let tokens = DEMO_RATES[H100_CLASS] * expected as u64;
    assert_eq!(
        s.chain.wallet_balance(&s.owner.pubkey(), &s.pool.mint),
        tokens
    );
    assert_eq!(s.chain.mint_supply(&s.pool.mint), tokens);

    // A replayed record over RPC is refused by the program with ReceiptAlreadyExists.
    let rec = usage_records(&s.hub).await.unwrap().remove(0);
    let uid = state::parse_job_uid(&rec.spec.job_uid).unwrap();
    let cluster_id = s.cluster_id;
    let ix = gpupool_ledger::instruction::record_usage(
        &s.pool.oracle.pubkey(),
        &s.pool.oracle.pubkey(),
        &s.pool.mint,
        &cluster_id,
        &s.owner.pubkey(),
        gpupool_ledger::instruction::UsageEntry {
            job_uid: uid,
            period: rec.spec.period as u64,
            gpu_seconds: rec.spec.gpu_seconds as u64,
            gpu_class: rec.spec.gpu_class as u8,
        },
    );
    let err = ledger.send(&[ix], &[]).await.expect_err("replay must fail");
    assert_eq!(
        err.ledger_error(),
        Some(LedgerError::ReceiptAlreadyExists),
        "{err:?}"
    );
    assert_eq!(
        s.chain.mint_supply(&s.pool.mint),
        tokens,
        "the replay minted"
    );

    // The owner asks with the CLI, as on a real cluster.
    let bin = gpupool_e2e::operator_bin("gpupool");
    let out = std::process::Command::new(bin)
        .args([
            "earnings",
            "--wallet",
            &s.owner.pubkey().to_string(),
            "--rpc-url",
            &server.url,
            "--kubeconfig",
        ])
        .arg(s.fed.hub.kubeconfig_path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("member-1"))
        .expect("a row for member-1");
    let cols: Vec<&str> = row.split_whitespace().collect();
    // CLUSTER, ON-CHAIN GPU-S, TOKENS MINTED, RECEIPTS, HUB SETTLED GPU-S, HUB SETTLED TOKENS, …
    assert_eq!(cols[1], expected.to_string(), "{row}");
    assert_eq!(cols[2], tokens.to_string(), "{row}");
    assert_eq!(cols[4], expected.to_string(), "{row}");
    assert_eq!(cols[5], tokens.to_string(), "{row}");
    let bad = std::process::Command::new(gpupool_e2e::operator_bin("gpupool"))
        .args([
            "earnings",
            "--wallet",
            "not-a-wallet!",
            "--rpc-url",
            &server.url,
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("wallet"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
