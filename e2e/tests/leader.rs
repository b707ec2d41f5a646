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
