//! `make bench-scale`: how the scheduler carries a large pool.
//!
//! 1. Placement microbenchmark (pure, no cluster): the scheduler's cache holding 100 members ×
//!    1 000 nodes × 8 GPUs (DGX H100 topology, a third of the nodes partly used), p50/p99 of one
//!    decision for a 1×8 gang, a 4×8 gang and 16×1 replicas spread across members.
//! 2. End to end, per N in `--jobs` (default 500,2000,10000): a hub and two members with enough
//!    KWOK DGX H100 nodes, the release operator binary (`gpupool run`), N one-GPU TrainingJobs
//!    created as fast as the client allows (`--concurrency` requests in flight); prints
//!    create→pod p50/p99/max, jobs/s, the operator's CPU-seconds and peak RSS (VmHWM), its CPU use
//!    while nothing changes, and checks from the member pods that no GPU is assigned twice. On
//!    stderr: the load average at the end of each burst, the scheduler's own time per decision
//!    (from the operator's placement histogram, without the API round trips) and the writes per
//!    placed job each API server served (from its `apiserver_request_total`).
//!
//! Options: `--jobs 500,2000`, `--operator PATH` (default: the release `gpupool` next to this
//! binary's target directory), `--concurrency 64`, `--skip-placement`, `--skip-e2e`.

use anyhow::{Context as _, Result, bail};
use gpupool::api::{InferenceJob, TrainingJob};
use gpupool::meta::FINALIZER;
use gpupool::scheduler::cache::{NodeFacts, TopologyFacts};
use gpupool::scheduler::jobs::{Decision, decide_inference, decide_training};
use gpupool::scheduler::{JobName, MemberInfo, PoolCache, Slot};
use gpupool_e2e::scale::{ScalePool, api_writes, cpu_seconds, proc_kib, writes_between};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Args {
    jobs: Vec<usize>,
    operator: Option<std::path::PathBuf>,
    concurrency: usize,
    rate: Option<f64>,
    placement: bool,
    e2e: bool,
}

fn args() -> Result<Args> {
    let mut a = Args {
        jobs: vec![500, 2000, 10000],
        operator: None,
        concurrency: 64,
        rate: None,
        placement: true,
        e2e: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--jobs" => {
                a.jobs = it
                    .next()
                    .context("--jobs needs a value")?
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--operator" => a.operator = Some(it.next().context("--operator needs a path")?.into()),
            "--concurrency" => {
                a.concurrency = it.next().context("--concurrency needs a value")?.parse()?
            }
            "--rate" => a.rate = Some(it.next().context("--rate needs jobs per second")?.parse()?),
            "--skip-placement" => a.placement = false,
            "--skip-e2e" => a.e2e = false,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn percentile(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

/// A deterministic xorshift, so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn placement_bench() -> Result<()> {
    const MEMBERS: usize = 100;
    const NODES: usize = 1000;
    let base = gpupool::topology::fixtures::get("dgx-h100");
    let t0 = Instant::now();
    let mut cache = PoolCache::new();
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut held = 0usize;
    for m in 0..MEMBERS {
        let member = format!("member-{m:03}");
        cache.set_member(
            &member,
            MemberInfo {
                schedulable: true,
                ..Default::default()
            },
        );
        cache.resync_pods(&member, BTreeMap::new());
        for n in 0..NODES {
            let node = format!("node-{n:04}");
            let mut spec = base.clone();
            spec.node_name = node.clone();
            for g in &mut spec.gpus {
                g.uuid = format!("GPU-{m:03}-{n:04}-{}", g.index);
            }
            cache.set_node(
                &member,
                &node,
                Some(NodeFacts {
                    ready: true,
                    allocatable: 8,
                }),
            );
            cache.set_topology(
                &member,
                &node,
                Some(TopologyFacts {
                    spec,
                    busy: Vec::new(),
                    published: 0,
                }),
            );
            // A third of the nodes run something already.
            if rng.next().is_multiple_of(3) {
                let used = 1 + (rng.next() % 7) as usize;
                let slots: BTreeSet<Slot> = (0..used)
                    .map(|i| Slot {
                        member: member.clone(),
                        node: node.clone(),
                        uuid: format!("GPU-{m:03}-{n:04}-{i}"),
                    })
                    .collect();
                held += slots.len();
                cache.set_job(
                    &format!("running-{m}-{n}"),
                    JobName {
                        kind: "TrainingJob",
                        namespace: "bench".into(),
                        name: format!("running-{m}-{n}"),
                    },
                    slots,
                );
            }
        }
    }
    println!(
        "placement: pool of {MEMBERS} members × {NODES} nodes × 8 GPUs ({held} GPUs in use) built in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let tj = |workers: i32, gpus: i32| -> TrainingJob {
        let mut j: TrainingJob = serde_yaml::from_str(&format!(
            "apiVersion: gpupool.io/v1alpha1\nkind: TrainingJob\nmetadata: {{name: t, namespace: bench, uid: t}}\nspec: {{template: {{spec: {{containers: [{{name: main, image: x}}]}}}}, workers: {workers}, gpusPerWorker: {gpus}, nvlink: required}}\n"
        ))
        .expect("job parses");
        j.metadata.finalizers = Some(vec![FINALIZER.into()]);
        j
    };
    let ij: InferenceJob = serde_yaml::from_str(
        "apiVersion: gpupool.io/v1alpha1\nkind: InferenceJob\nmetadata: {name: i, namespace: bench, uid: i}\nspec: {template: {spec: {containers: [{name: main, image: x}]}}, replicas: 16, gpusPerReplica: 1, nvlink: none, spreadAcrossClusters: true}\n",
    )?;
    println!("| decision | p50 | p99 | decisions |");
    println!("|---|---|---|---|");
    for (label, rounds) in [
        ("1×8 gang", 300usize),
        ("4×8 gang", 300),
        ("16×1 spread", 300),
    ] {
        let mut took = Vec::with_capacity(rounds);
        for r in 0..rounds {
            let t = Instant::now();
            let d = match label {
                "1×8 gang" => decide_training(&cache, &tj(1, 8)),
                "4×8 gang" => decide_training(&cache, &tj(4, 8)),
                _ => decide_inference(&cache, &ij),
            };
            took.push(t.elapsed());
            // Each decision is assumed, as the loop does, so the pool fills as it would.
            match d {
                Decision::Training { slots, .. } | Decision::Inference { slots, .. } => {
                    cache.assume(&format!("{label}-{r}"), slots)
                }
                Decision::Wait { reason, .. } => bail!("{label} did not fit: {reason}"),
            }
        }
        let p50 = percentile(&mut took, 0.5);
        let p99 = percentile(&mut took, 0.99);
        println!(
            "| {label} | {:.2} ms | {:.2} ms | {rounds} |",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

/// The operator's `/metrics` text.
async fn operator_metrics(port: u16) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    sock.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut out = String::new();
    sock.read_to_string(&mut out).await?;
    Ok(out)
}

/// Decisions taken, their mean and the 99th percentile's bucket bound, from the operator's
/// `gpupool_placement_duration_seconds{kind="trainingjob"}` histogram: the scheduler's own time
/// per decision, apart from the API round trips.
fn decision_latency(metrics: &str) -> (u64, f64, f64) {
    let value = |line: &str| -> f64 {
        line.rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let ours = |l: &&str| l.contains("kind=\"trainingjob\"");
    let series = |name: &str| -> Vec<&str> {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter(ours)
            .collect()
    };
    let count = series("gpupool_placement_duration_seconds_count")
        .first()
        .map_or(0.0, |l| value(l));
    let sum = series("gpupool_placement_duration_seconds_sum")
        .first()
        .map_or(0.0, |l| value(l));
    let p99 = series("gpupool_placement_duration_seconds_bucket")
        .into_iter()
        .find(|l| value(l) >= count * 0.99)
        .and_then(|l| l.split("le=\"").nth(1)?.split('"').next()?.parse().ok())
        .unwrap_or(f64::INFINITY);
    (count as u64, sum / count.max(1.0), p99)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(String::from))
        .unwrap_or_default()
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn default_operator() -> Result<std::path::PathBuf> {
    // This binary runs as <target>/<profile>/gpupool-bench-scale.
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(|d| d.parent())
        .context("binary lives in <target>/<profile>")?;
    Ok(target.join("release").join("gpupool"))
}

async fn e2e(
    n: usize,
    operator: &std::path::Path,
    concurrency: usize,
    rate: Option<f64>,
) -> Result<()> {
    // Every job takes one GPU; 10 % spare capacity plus one node per member.
    let nodes_per_member = n.div_ceil(16) + n.div_ceil(160) + 1;
    let t0 = Instant::now();
    let pool = ScalePool::start(nodes_per_member).await?;
    eprintln!(
        "N={n}: {} nodes ({} GPUs) up in {:.0}s",
        2 * nodes_per_member,
        pool.gpus,
        t0.elapsed().as_secs_f64()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = std::fs::File::create(pool.fed.hub.dir().join("operator.log"))?;
    let op = Proc(
        Command::new(operator)
            .args([
                "run",
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
                "--meter-interval-seconds",
                "3600",
            ])
            .env("KUBECONFIG", pool.fed.hub.kubeconfig_path())
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", operator.display()))?,
    );
    let pid = op.0.id();
    pool.wait_ready(Duration::from_secs(600)).await?;
    let mut clients = vec![("hub".to_string(), pool.hub.clone())];
    for (i, m) in pool.fed.members.iter().enumerate() {
        clients.push((format!("member-{}", i + 1), m.cp.client().await?));
    }
    let mut writes0 = Vec::new();
    for (_, c) in &clients {
        writes0.push(api_writes(c).await?);
    }
    let cpu0 = cpu_seconds(pid).unwrap_or(0.0);
    let r = pool
        .run_paced("job", n, concurrency, rate, Duration::from_secs(900))
        .await?;
    let cpu1 = cpu_seconds(pid).unwrap_or(0.0);
    let load = load_average();
    if let Ok(m) = operator_metrics(port).await {
        let (count, mean, p99) = decision_latency(&m);
        eprintln!(
            "N={n}: load average {load} at the end of the burst; the scheduler's own time per decision (no API round trips): {count} decisions, mean {:.3} ms, p99 ≤ {} ms",
            mean * 1e3,
            p99 * 1e3
        );
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu2 = cpu_seconds(pid).unwrap_or(0.0);
    // API writes per placed job, per API server, once all settled (the bench's own creates included: POST
    // trainingjobs on the hub, one per job).
    for ((name, c), w0) in clients.iter().zip(&writes0) {
        let d = writes_between(w0, &api_writes(c).await?);
        let total: f64 = d.values().sum();
        let per = |v: f64| v / r.landed.max(1) as f64;
        eprintln!(
            "N={n}: {name} writes per placed job {:.2}: {}",
            per(total),
            d.iter()
                .map(|(k, v)| format!("{k} {:.2}", per(*v)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let hwm = proc_kib(pid, "VmHWM").unwrap_or(0);
    let rss = proc_kib(pid, "VmRSS").unwrap_or(0);
    // 200 jobs that can never fit (no such GPU model) wait; a new job that fits still lands.
    for i in 0..200 {
        pool.create_job(&format!("never-{i}"), Some("B200")).await?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = Instant::now();
    pool.create_job("fits-now", None).await?;
    let fits = pool
        .wait_for_pod("fits-now", t, Duration::from_secs(120))
        .await?;
    // Fill the pool, let one job wait, free one GPU: how soon the waiting job has it.
    let left = pool.gpus.saturating_sub(n + 1);
    let f = pool
        .run("fill", left, concurrency, Duration::from_secs(300))
        .await?;
    pool.create_job("waiter", None).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = Instant::now();
    kube::Api::<TrainingJob>::namespaced(pool.hub.clone(), gpupool_e2e::scale::NAMESPACE)
        .delete("job-0", &Default::default())
        .await?;
    let freed = pool
        .wait_for_pod("waiter", t, Duration::from_secs(120))
        .await?;
    eprintln!(
        "N={n}: with 200 unschedulable jobs waiting a new job landed in {:.3}s; pool filled ({} jobs, p99 {:.3}s); a freed GPU reached the waiting job in {:.3}s",
        fits.as_secs_f64(),
        f.landed,
        f.p99.as_secs_f64(),
        freed.as_secs_f64()
    );
    // No GPU held twice, from the member pods, after all of it.
    let shared = pool.shared_gpus().await?;
    println!(
        "| {n} | {}/{} | {:.3} s | {:.3} s | {:.3} s | {:.1} | {:.1} s | {:.1} | {} MiB | {} MiB | {:.1} % | {:.3} s | {:.3} s | {} |",
        r.landed,
        r.jobs,
        r.p50.as_secs_f64(),
        r.p99.as_secs_f64(),
        r.max.as_secs_f64(),
        r.jobs_per_sec,
        r.create_secs,
        cpu1 - cpu0,
        hwm / 1024,
        rss / 1024,
        (cpu2 - cpu1) * 10.0,
        fits.as_secs_f64(),
        freed.as_secs_f64(),
        if shared.is_empty() && r.shared_gpus.is_empty() {
            "none".to_string()
        } else {
            shared.len().max(r.shared_gpus.len()).to_string()
        }
    );
    if !shared.is_empty() || !r.shared_gpus.is_empty() {
        bail!(
            "GPUs assigned twice: {:?} {:?}",
            &shared[..shared.len().min(10)],
            &r.shared_gpus[..r.shared_gpus.len().min(10)]
        );
    }
    if r.landed < r.jobs {
        eprintln!(
            "operator log: {}",
            pool.fed.hub.dir().join("operator.log").display()
        );
    }
    drop(op);
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let a = args()?;
    println!(
        "machine: {} CPUs, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_string())
            )
            .unwrap_or_default()
    );
    if a.placement {
        placement_bench()?;
    }
    if a.e2e {
        let operator = match a.operator {
            Some(p) => p,
            None => default_operator()?,
        };
        anyhow::ensure!(
            operator.exists(),
            "{} missing: build it with `cargo build --release -p gpupool-operator --bin gpupool`",
            operator.display()
        );
        println!(
            "| jobs | landed | create→pod p50 | p99 | max | jobs/s | create time | operator CPU-s | peak RSS (VmHWM) | RSS after | CPU idle | new job past 200 waiting | freed GPU → waiting job | GPUs shared |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for n in a.jobs {
            e2e(n, &operator, a.concurrency, a.rate).await?;
        }
    }
    Ok(())
}
