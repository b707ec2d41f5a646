//! Leader election on a real API server: of two contenders exactly one acts; when it goes away
//! the other takes over.

use gpupool_e2e::ControlPlane;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_replica_leads_and_the_other_takes_over() {
    let cp = ControlPlane::start("leader").await.unwrap();
    let client = cp.client().await.unwrap();
    let leaders = Arc::new(AtomicUsize::new(0));
    let spawn = |id: &'static str| {
        let (c, l) = (client.clone(), leaders.clone());
        tokio::spawn(async move {
            let lost = gpupool::leader::acquire(c, "default", "gpupool-operator", id)
                .await
                .unwrap();
            l.fetch_add(1, Ordering::SeqCst);
            lost.await;
            l.fetch_sub(1, Ordering::SeqCst);
        })
    };
    let a = spawn("replica-a");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b = spawn("replica-b");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(leaders.load(Ordering::SeqCst), 1, "exactly one leader");
    let lease = cp.kubectl().lease_holder("gpupool-operator").unwrap();
    assert_eq!(lease, "replica-a");

    // The leader dies; its lease expires (15 s) and the other replica takes over.
    a.abort();
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let holder = cp.kubectl().lease_holder("gpupool-operator").unwrap();
        if holder == "replica-b" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replica-b never took over (holder {holder:?})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    b.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_racing_for_a_new_lease_never_both_lead() {
    let cp = ControlPlane::start("leader-race").await.unwrap();
    let client = cp.client().await.unwrap();
    for round in 0..10 {
        let lease = format!("race-{round}");
        let leaders = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..3)
            .map(|i| {
                let (c, l, lease) = (client.clone(), leaders.clone(), lease.clone());
                tokio::spawn(async move {
                    let lost = gpupool::leader::acquire(c, "default", &lease, &format!("r{i}"))
                        .await
                        .unwrap();
                    l.fetch_add(1, Ordering::SeqCst);
                    lost.await;
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            leaders.load(Ordering::SeqCst),
            1,
            "round {round}: leaders at once"
        );
        for t in tasks {
            t.abort();
        }
    }
}

/// Starts a contender for lease `lease`; `leading` counts it while it leads (until its lease is
/// lost).
fn contender(
    client: &kube::Client,
    lease: &'static str,
    id: &'static str,
    leading: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    let c = client.clone();
    tokio::spawn(async move {
        let lost = gpupool::leader::acquire(c, "default", lease, id)
            .await
            .unwrap();
        leading.fetch_add(1, Ordering::SeqCst);
        lost.await;
        leading.fetch_sub(1, Ordering::SeqCst);
    })
}

/// Polls the lease every 100 ms until `id` holds it; the time that took.
async fn until_held_by(cp: &ControlPlane, lease: &str, id: &str, limit: Duration) -> Duration {
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(cp.client().await.unwrap(), "default");
    let t0 = std::time::Instant::now();
    loop {
        let holder = leases
            .get_opt(lease)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .unwrap_or_default();
        if holder == id {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "{id} did not take over within {limit:?} (holder {holder:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_within_five_seconds_and_a_stopping_one_at_once() {
    let cp = ControlPlane::start("leader-failover").await.unwrap();
    let client = cp.client().await.unwrap();
    let leading = Arc::new(AtomicUsize::new(0));
    let a = contender(&client, "failover", "replica-a", leading.clone());
    until_held_by(&cp, "failover", "replica-a", Duration::from_secs(20)).await;
    let b = contender(&client, "failover", "replica-b", leading.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(leading.load(Ordering::SeqCst), 1, "exactly one leader");

    // Killed: no more renewals and no release. The other replica takes over within ~5 s.
    a.abort();
    let took = until_held_by(&cp, "failover", "replica-b", Duration::from_secs(30)).await;
    assert!(
        took < Duration::from_millis(5500),
        "failover after a leader's death took {took:?}"
    );

    // Stopping on purpose: the leader releases the lease and the standby takes it at its next
    // try, well before the lease would have expired.
    let c = contender(&client, "failover", "replica-c", leading.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    b.abort();
    let released = gpupool::leader::release(client.clone(), "default", "failover", "replica-b")
        .await
        .unwrap();
    assert!(released, "replica-b held the lease");
    let took = until_held_by(&cp, "failover", "replica-c", Duration::from_secs(30)).await;
    assert!(
        took < Duration::from_millis(1500),
        "takeover after a release took {took:?}"
    );
    c.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leading_resumes_within_five_seconds_after_a_hub_api_restart() {
    let mut cp = ControlPlane::start("leader-restart").await.unwrap();
    let client = cp.client().await.unwrap();
    let leading = Arc::new(AtomicUsize::new(0));
    let a = contender(&client, "restart", "replica-a", leading.clone());
    until_held_by(&cp, "restart", "replica-a", Duration::from_secs(20)).await;
    let b = contender(&client, "restart", "replica-b", leading.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The hub's API server is down for 6 s: the leader cannot renew and stops acting.
    cp.stop_apiserver();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        leading.load(Ordering::SeqCst),
        0,
        "a leader that cannot renew its lease stops acting before the lease expires"
    );
    cp.restart_apiserver().await.unwrap();
    let back = std::time::Instant::now();
    // Someone leads again soon after the hub answers (the standby's clock ran on meanwhile); the
    // bound leaves room for a just-restarted API server on a loaded machine.
    loop {
        if leading.load(Ordering::SeqCst) == 1 {
            println!(
                "leading again {:?} after the hub API came back",
                back.elapsed()
            );
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "no leader 10 s after the hub API came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.abort();
    b.abort();
}
