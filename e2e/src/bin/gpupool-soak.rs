//! `gpupool-soak`: the chaos soak (`make soak`). A hub and three members on real API servers,
//! two operator replicas with leader election, churn and faults as separate processes (this
//! binary's `churn` and `faults` subcommands), invariants checked throughout and after quiescing.
//! Prints the faults with their recovery times, operator memory and every violation; exits 1 on
//! any violation.
//!
//! ```text
//! gpupool-soak [--minutes 30] [--seed 1] [--faults leader-kill=2,member-api=3,hub-restart=1,agent-kill=2,pod-delete=4]
//!              [--fault-every 20-60] [--nodes 10] [--churn-ms 450] [--bound-seconds 120]
//!              [--gpupool <path of the gpupool binary>] [--dir <run directory>]
//! ```

use anyhow::{Context as _, Result, bail};
use gpupool_e2e::soak::{self, ChurnArgs, FaultArgs, FaultMix, SoakConfig};
use std::path::PathBuf;
use std::time::Duration;

const USAGE: &str = "usage: gpupool-soak [--minutes M] [--seed N] [--faults kind=weight,…|none] [--fault-every MIN-MAX] [--nodes N] [--churn-ms MS] [--bound-seconds S] [--gpupool PATH] [--dir DIR]";

fn value(it: &mut impl Iterator<Item = String>, flag: &str) -> Result<String> {
    it.next()
        .with_context(|| format!("{flag} needs a value\n{USAGE}"))
}

fn range(s: &str) -> Result<(u64, u64)> {
    let (a, b) = s
        .split_once('-')
        .context("--fault-every takes MIN-MAX seconds, e.g. 20-60")?;
    let (a, b) = (a.trim().parse()?, b.trim().parse()?);
    anyhow::ensure!(
        0 < a && a <= b,
        "--fault-every: need 0 < MIN <= MAX, got {a}-{b}"
    );
    Ok((a, b))
}

fn config(args: Vec<String>) -> Result<SoakConfig> {
    let exe = std::env::current_exe()?;
    let mut cfg = SoakConfig {
        duration: Duration::from_secs(30 * 60),
        seed: 1,
        faults: FaultMix::default(),
        fault_every: (20, 60),
        nodes_per_member: 10,
        churn_ms: 450,
        bound: Duration::from_secs(120),
        check_every: Duration::from_secs(10),
        gpupool: exe.with_file_name("gpupool"),
        dir: std::env::temp_dir().join(format!("gpupool-soak-{}", std::process::id())),
        exe,
    };
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let v = value(&mut it, &flag)?;
        match flag.as_str() {
            "--minutes" => {
                let m: f64 = v.parse().context("--minutes takes a number")?;
                anyhow::ensure!(m > 0.0, "--minutes must be above 0");
                cfg.duration = Duration::from_secs_f64(m * 60.0);
            }
            "--seed" => cfg.seed = v.parse().context("--seed takes a whole number")?,
            "--faults" => cfg.faults = v.parse().map_err(anyhow::Error::msg)?,
            "--fault-every" => cfg.fault_every = range(&v)?,
            "--nodes" => {
                cfg.nodes_per_member = v.parse().context("--nodes takes a whole number")?
            }
            "--churn-ms" => cfg.churn_ms = v.parse().context("--churn-ms takes milliseconds")?,
            "--bound-seconds" => cfg.bound = Duration::from_secs(v.parse()?),
            "--gpupool" => cfg.gpupool = PathBuf::from(v),
            "--dir" => cfg.dir = PathBuf::from(v),
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    anyhow::ensure!(
        cfg.gpupool.exists(),
        "{} missing: build it with `cargo build -p gpupool-operator --bin gpupool` or pass --gpupool",
        cfg.gpupool.display()
    );
    Ok(cfg)
}

/// Arguments of the churn and fault processes (passed by the soak itself).
fn child_args(args: Vec<String>) -> Result<(ChurnArgs, FaultArgs)> {
    let mut c = ChurnArgs {
        dir: PathBuf::new(),
        seed: 1,
        duration: Duration::ZERO,
        every_ms: 450,
    };
    let mut f = FaultArgs {
        dir: PathBuf::new(),
        seed: 1,
        duration: Duration::ZERO,
        mix: FaultMix::default(),
        every: (20, 60),
    };
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let v = value(&mut it, &flag)?;
        match flag.as_str() {
            "--dir" => (c.dir, f.dir) = (v.clone().into(), v.into()),
            "--seed" => (c.seed, f.seed) = (v.parse()?, v.parse()?),
            "--seconds" => {
                let d = Duration::from_secs(v.parse()?);
                (c.duration, f.duration) = (d, d);
            }
            "--every-ms" => c.every_ms = v.parse()?,
            "--faults" => f.mix = v.parse().map_err(anyhow::Error::msg)?,
            "--fault-every" => f.every = range(&v)?,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok((c, f))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    gpupool::telemetry::init_logging();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("churn") => return soak::run_churn(child_args(args.split_off(1))?.0).await,
        Some("faults") => return soak::run_faults(child_args(args.split_off(1))?.1).await,
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return Ok(());
        }
        _ => {}
    }
    let cfg = config(args)?;
    println!(
        "soak: {:?}, seed {}, faults {} every {}-{}s, {} nodes × 8 GPUs per member, churn every {} ms, run files in {}",
        cfg.duration,
        cfg.seed,
        cfg.faults,
        cfg.fault_every.0,
        cfg.fault_every.1,
        cfg.nodes_per_member,
        cfg.churn_ms,
        cfg.dir.display()
    );
    let report = soak::run(cfg).await?;
    print!("{}", report.render());
    if !report.violations.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
