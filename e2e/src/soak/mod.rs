//! A chaos soak on real API servers: a hub and three members (a push member with DRA and its own
//! kube-scheduler, a push member with the device plugin, a pull member whose agent is its own
//! process), two `gpupool run --leader-elect` replicas as processes, churn and faults as separate
//! processes of the `gpupool-soak` binary, and the invariants checked every few seconds and
//! after quiescing:
//!
//! - no GPU UUID in two live pods (or two allocated claims) of a member, nor in two current hub
//!   placements;
//! - every job Running (with its pods live in the member), Pending with a reason, or finished
//!   (with no live pod), within a bound;
//! - no pod of a job the hub no longer has, after the bound and after the final sweep; deleted jobs
//!   gone from the hub within the bound;
//! - money: one usage record per job, member and period; paid GPU-seconds never above what was
//!   placed (the record's GPU-seconds, the period's length × the job's GPUs).
//!
//! Operator memory is sampled with every check; each fault's recovery time is measured by the
//! fault process. `make soak` runs it (`gpupool-soak --minutes … --seed … --faults …`); a short
//! smoke runs as an e2e test.

mod check;
mod churn;
mod faults;
mod pool;
mod rng;

pub use check::{Checker, Clients, Violation};
pub use churn::{ChurnArgs, run_churn};
pub use faults::{FaultArgs, FaultKind, FaultMix, FaultRecord, run_faults};
pub use pool::{SoakPool, Targets};
pub use rng::Rng;

use anyhow::{Context as _, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Hub namespace the churn creates its jobs in.
pub const NAMESPACE: &str = "soak";
/// Label on every job the churn creates.
pub const SOAK_LABEL: &str = "gpupool.io/soak";

/// What one soak runs.
#[derive(Clone, Debug)]
pub struct SoakConfig {
    /// How long churn and faults run (the quiesce and sweep come after).
    pub duration: Duration,
    /// Seed of the churn's and the faults' random choices.
    pub seed: u64,
    /// Which faults, with relative weights.
    pub faults: FaultMix,
    /// Seconds between faults: a uniform pick in this range.
    pub fault_every: (u64, u64),
    /// 8-GPU nodes per member.
    pub nodes_per_member: usize,
    /// Milliseconds between churn actions.
    pub churn_ms: u64,
    /// How long a job may be neither Running, Pending with a reason nor finished (on hub and
    /// member alike), a pod may outlive its job, and a deleted job may stay on the hub.
    pub bound: Duration,
    /// Seconds between invariant checks.
    pub check_every: Duration,
    /// The `gpupool-soak` binary, run for the churn and fault processes.
    pub exe: PathBuf,
    /// The `gpupool` binary (operator replicas, join controller, member agent).
    pub gpupool: PathBuf,
    /// Directory for the run's files (targets, process logs, fault records).
    pub dir: PathBuf,
}

/// One sample of the operator replicas' resident memory.
#[derive(Clone, Debug)]
pub struct MemorySample {
    /// Seconds since the churn started.
    pub at: f64,
    /// Resident set (KiB) of the replica holding the lease, when one could be read.
    pub leader_kib: Option<u64>,
}

/// What a soak found.
#[derive(Debug, Default)]
pub struct SoakReport {
    /// Faults injected, with their recovery times.
    pub faults: Vec<FaultRecord>,
    /// Invariant violations.
    pub violations: Vec<Violation>,
    /// Churn actions by kind.
    pub churn: BTreeMap<String, u64>,
    /// Operator memory over time.
    pub memory: Vec<MemorySample>,
    /// GPUs in the pool.
    pub gpus: usize,
    /// Invariant checks run.
    pub checks: usize,
}

impl SoakReport {
    /// The report as text: faults with recovery p50/max per kind, violations, memory.
    pub fn render(&self) -> String {
        let mut out = format!(
            "soak: {} GPUs, {} checks, churn {:?}\n",
            self.gpus, self.checks, self.churn
        );
        out += "fault                 count  recovered  recovery p50   max\n";
        let mut by_kind: BTreeMap<String, Vec<&FaultRecord>> = BTreeMap::new();
        for f in &self.faults {
            by_kind.entry(f.kind.to_string()).or_default().push(f);
        }
        for (kind, fs) in &by_kind {
            let mut rec: Vec<f64> = fs.iter().filter_map(|f| f.recovery_secs).collect();
            rec.sort_by(f64::total_cmp);
            let p50 = rec.get(rec.len().saturating_sub(1) / 2).copied();
            let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}s"));
            out += &format!(
                "{kind:<21} {:>5}  {:>9}  {:>12}  {:>5}\n",
                fs.len(),
                rec.len(),
                fmt(p50),
                fmt(rec.last().copied())
            );
        }
        let mem: Vec<u64> = self.memory.iter().filter_map(|m| m.leader_kib).collect();
        if let (Some(first), Some(max), Some(last)) = (mem.first(), mem.iter().max(), mem.last()) {
            out += &format!(
                "operator memory (leader RSS): first {} MiB, max {} MiB, last {} MiB\n",
                first / 1024,
                max / 1024,
                last / 1024
            );
        }
        out += &format!("violations: {}\n", self.violations.len());
        for v in &self.violations {
            out += &format!("  {v}\n");
        }
        out
    }
}

/// Runs the soak: starts the pool, churn and faults, checks until `duration` is over, quiesces,
/// sweeps and checks again.
pub async fn run(cfg: SoakConfig) -> Result<SoakReport> {
    std::fs::create_dir_all(&cfg.dir)?;
    let mut pool = SoakPool::start(&cfg).await.context("starting the pool")?;
    let mut report = SoakReport {
        gpus: pool.gpus,
        ..Default::default()
    };
    let mut checker = Checker::new(pool.clients().await?, cfg.bound);
    let t0 = Instant::now();
    let deadline = t0 + cfg.duration;
    let churn = pool.spawn_child(&cfg, "churn")?;
    let faults = pool.spawn_child(&cfg, "faults")?;
    let mut next_check = Instant::now() + cfg.check_every;
    // Until the time is up and both processes have ended (a fault's recovery may run past it;
    // the pool is supervised meanwhile so that a held API server comes back).
    let mut running = [Some(churn), Some(faults)];
    let limit = deadline + faults::RECOVERY_LIMIT + Duration::from_secs(60);
    while Instant::now() < deadline || running.iter().any(Option::is_some) {
        anyhow::ensure!(
            Instant::now() < limit,
            "the churn or fault process did not end"
        );
        pool.supervise(&cfg).await?;
        for (c, what) in running.iter_mut().zip(["churn", "faults"]) {
            pool::reap(c, what)?;
        }
        if Instant::now() >= next_check {
            next_check = Instant::now() + cfg.check_every;
            checker.check(false).await;
            report.checks += 1;
            report.memory.push(MemorySample {
                at: t0.elapsed().as_secs_f64(),
                leader_kib: pool.leader_rss().await,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    quiesce(&cfg, &mut pool, &mut checker, &mut report).await?;
    report.violations = checker.into_violations();
    report.faults = faults::read_records(&cfg.dir)?;
    for f in report.faults.iter().filter(|f| f.recovery_secs.is_none()) {
        report.violations.push(Violation {
            at_secs: f.at_secs,
            kind: "fault not recovered",
            detail: format!(
                "{} of {} not recovered within {:?}",
                f.kind,
                f.target,
                faults::RECOVERY_LIMIT
            ),
        });
    }
    report.churn = churn::read_counts(&cfg.dir)?;
    Ok(report)
}

/// After churn and faults: every process back, the bound waited out with checks running, a strict
/// check, then every job deleted and the sweep checked.
async fn quiesce(
    cfg: &SoakConfig,
    pool: &mut SoakPool,
    checker: &mut Checker,
    report: &mut SoakReport,
) -> Result<()> {
    let settle = Instant::now() + cfg.bound;
    while Instant::now() < settle {
        pool.supervise(cfg).await?;
        checker.check(false).await;
        report.checks += 1;
        tokio::time::sleep(cfg.check_every).await;
    }
    checker.check(true).await;
    report.checks += 1;
    checker.delete_all_jobs().await?;
    let swept = Instant::now() + cfg.bound;
    while Instant::now() < swept && !checker.swept().await {
        pool.supervise(cfg).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    checker.check_sweep().await;
    report.memory.push(MemorySample {
        at: cfg.duration.as_secs_f64() + cfg.bound.as_secs_f64() * 2.0,
        leader_kib: pool.leader_rss().await,
    });
    Ok(())
}
