//! A two-minute smoke of the chaos soak (`make soak` runs it for longer): the pool on real API
//! servers, two operator replicas, churn and faults (every kind in the mix; the seed draws a
//! leader kill, a hub API restart and a member API outage) as separate processes, the invariants
//! checked throughout, after quiescing and after the sweep.

use gpupool_e2e::soak::{self, FaultKind, FaultMix, SoakConfig};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_minute_soak_with_faults_breaks_no_invariant() {
    gpupool::telemetry::init_logging();
    let dir = tempfile::Builder::new()
        .prefix("gpupool-soak-smoke-")
        .tempdir()
        .unwrap();
    let cfg = SoakConfig {
        duration: Duration::from_secs(120),
        // Seed 43 injects a leader kill, a hub API restart and a member API outage in these two
        // minutes (the churn and the choices repeat for a seed).
        seed: 43,
        faults: FaultMix(FaultKind::ALL.iter().map(|k| (*k, 1)).collect()),
        fault_every: (12, 20),
        nodes_per_member: 1,
        churn_ms: 700,
        bound: Duration::from_secs(90),
        check_every: Duration::from_secs(5),
        exe: env!("CARGO_BIN_EXE_gpupool-soak").into(),
        gpupool: gpupool_e2e::operator_bin("gpupool"),
        dir: dir.path().to_path_buf(),
    };
    let report = soak::run(cfg).await.expect("the soak runs");
    let text = report.render();
    println!("{text}");
    // Each fault waits for its recovery before the next: a few fit in two minutes.
    assert!(report.faults.len() >= 2, "too few faults injected:\n{text}");
    assert!(report.checks >= 10, "too few checks:\n{text}");
    assert!(
        report.churn.get("create-training").copied().unwrap_or(0) > 10,
        "{text}"
    );
    assert!(
        report.memory.iter().any(|m| m.leader_kib.is_some()),
        "{text}"
    );
    if !report.violations.is_empty() {
        // The processes' logs stay for whoever reads the failure.
        let kept = dir.keep();
        panic!("invariants broken (logs in {}):\n{text}", kept.display());
    }
}
