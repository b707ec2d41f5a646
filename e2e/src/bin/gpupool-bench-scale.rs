//! `make bench-scale`: how the scheduler carries a large pool.
//!
//! 1. Placement microbenchmark (pure, no cluster): the scheduler's cache and decision functions
//!    over pools of `--pools` (default 100 members × 1 000 nodes and 1 000 × 100) of eight node
//!    shapes (DGX H100, HGX H100, DGX A100, DGX-1 V100, H100 NVL pairs, A100 ×2, L40S ×8,
//!    RTX 4090 ×8, round robin), each GPU busy with probability `--use` (default 0, 25 and 75 %):
//!    the cache's build time and bytes a node (every byte the process allocated for it) and
//!    those of the loop's first snapshot of it, then p50/p99/max of `--rounds` decisions
//!    (default 200, each timed as the loop takes it: snapshot update, then the decision) of each
//!    shape — 1×1 and 1×2
//!    `preferred`, 1×8 `clique` and `ring`, a 4×8 `clique` gang, 16×1 and 16×2 replicas spread
//!    across members — each placed decision assumed so the pool fills, and the first decision of
//!    each shape (the allocator's answers for a new request are computed then) apart. Last, a
//!    32-GPU node with 59 049 maximal NVLink cliques joins a pool: its first decisions.
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
//! binary's target directory), `--concurrency 64`, `--skip-placement`, `--skip-e2e`,
//! `--pools 100x1000,1000x100`, `--use 0,25,75`, `--rounds 200`.

use anyhow::{Context as _, Result, bail};
use gpupool::api::{InferenceJob, TrainingJob};
use gpupool::meta::FINALIZER;
use gpupool::scheduler::cache::{NodeFacts, TopologyFacts};
use gpupool::scheduler::jobs::{Decision, decide_inference, decide_training};
use gpupool::scheduler::{JobName, MemberInfo, PoolCache, Slot, Snapshot};
use gpupool_e2e::scale::{ScalePool, api_requests, cpu_seconds, is_read, proc_kib, writes_between};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Args {
    jobs: Vec<usize>,
    operator: Option<std::path::PathBuf>,
    concurrency: usize,
    rate: Option<f64>,
    placement: bool,
    pools: Vec<(usize, usize)>,
    uses: Vec<u64>,
    rounds: usize,
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
        pools: vec![(100, 1000), (1000, 100)],
        uses: vec![0, 25, 75],
        rounds: 200,
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
            "--pools" => {
                a.pools = it
                    .next()
                    .context("--pools needs members×nodes values, e.g. 100x1000,1000x100")?
                    .split(',')
                    .map(|p| {
                        let (m, n) = p
                            .split_once('x')
                            .with_context(|| format!("--pools: {p:?} is not MEMBERSxNODES"))?;
                        Ok((m.trim().parse()?, n.trim().parse()?))
                    })
                    .collect::<Result<_>>()?
            }
            "--use" => {
                a.uses = it
                    .next()
                    .context("--use needs percentages, e.g. 0,25,75")?
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--rounds" => a.rounds = it.next().context("--rounds needs a value")?.parse()?,
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

/// Counts the bytes the process holds, for the cache's bytes per node.
struct Counting;
static HELD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        HELD.fetch_add(l.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        HELD.fetch_sub(l.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, n: usize) -> *mut u8 {
        HELD.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        HELD.fetch_sub(l.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { std::alloc::System.realloc(p, l, n) }
    }
}
#[global_allocator]
static ALLOC: Counting = Counting;

fn held_bytes() -> usize {
    HELD.load(std::sync::atomic::Ordering::Relaxed)
}

/// The eight node shapes of a production-like pool: (label, fixture, model, memory MiB, GPUs
/// kept). H100 NVL and A100 ×2 are the bridged pair of the A100 PCIe fixture.
const SHAPES: [(&str, &str, &str, i64, usize); 8] = [
    ("DGX H100", "dgx-h100", "NVIDIA H100 80GB HBM3", 81559, 8),
    ("HGX H100", "hgx-h100", "NVIDIA H100 80GB HBM3", 81559, 8),
    ("DGX A100", "dgx-a100", "NVIDIA A100-SXM4-80GB", 81920, 8),
    ("DGX-1 V100", "dgx1-v100", "Tesla V100-SXM2-32GB", 32768, 8),
    (
        "H100 NVL pair",
        "pcie-a100-bridged",
        "NVIDIA H100 NVL",
        95830,
        2,
    ),
    (
        "A100 ×2",
        "pcie-a100-bridged",
        "NVIDIA A100 80GB PCIe",
        81920,
        2,
    ),
    ("L40S ×8", "pcie-l40s", "NVIDIA L40S", 46068, 8),
    (
        "RTX 4090 ×8",
        "pcie-l40s",
        "NVIDIA GeForce RTX 4090",
        24564,
        8,
    ),
];

/// A GPU UUID as NVML prints them (`GPU-` and 36 hex digits and dashes), unique in the pool.
fn uuid(member: usize, node: usize, index: usize) -> String {
    let x = ((member * 100_003 + node) * 64 + index) as u64;
    let r = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!(
        "GPU-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        r >> 32,
        (r >> 16) & 0xffff,
        r & 0xffff,
        index,
        x
    )
}

/// The spec of `shape` for one node, its UUIDs unique in the pool.
fn shape_spec(shape: usize, member: usize, node: usize) -> gpupool::api::GpuTopologySpec {
    // The fixtures parsed once (YAML), not per node: the build time is the cache's own.
    static BASE: std::sync::OnceLock<Vec<gpupool::api::GpuTopologySpec>> =
        std::sync::OnceLock::new();
    let base = BASE.get_or_init(|| {
        SHAPES
            .iter()
            .map(|s| gpupool::topology::fixtures::get(s.1))
            .collect()
    });
    let (_, _, model, memory, keep) = SHAPES[shape];
    let mut spec = base[shape].clone();
    spec.gpus.retain(|g| (g.index as usize) < keep);
    spec.links
        .retain(|l| (l.a as usize) < keep && (l.b as usize) < keep);
    spec.node_name = format!("node-{node:04}");
    for g in &mut spec.gpus {
        g.uuid = uuid(member, node, g.index as usize);
        g.model = model.into();
        g.memory_mib = memory;
    }
    spec
}

/// A 32-GPU node whose NVLink graph has 3^10 = 59 049 maximal cliques (a Moon–Moser graph:
/// ten groups of three, every GPU linked to every GPU outside its group) plus two GPUs on PCIe.
fn moon_moser_spec() -> gpupool::api::GpuTopologySpec {
    let mut spec = gpupool::topology::fixtures::moon_moser("node-moon-moser");
    for g in &mut spec.gpus {
        g.uuid = format!("GPU-moon-moser-{}", g.index);
        g.model = "Moon-Moser".into();
    }
    spec
}

/// One decision shape of the benchmark.
#[derive(Clone, Copy)]
enum Shape {
    Gang {
        workers: i32,
        gpus: i32,
        nvlink: &'static str,
    },
    Spread {
        replicas: i32,
        gpus: i32,
    },
}

const DECISIONS: [(&str, Shape); 7] = [
    (
        "1×1 preferred",
        Shape::Gang {
            workers: 1,
            gpus: 1,
            nvlink: "preferred",
        },
    ),
    (
        "1×2 preferred",
        Shape::Gang {
            workers: 1,
            gpus: 2,
            nvlink: "preferred",
        },
    ),
    (
        "1×8 clique",
        Shape::Gang {
            workers: 1,
            gpus: 8,
            nvlink: "clique",
        },
    ),
    (
        "1×8 ring",
        Shape::Gang {
            workers: 1,
            gpus: 8,
            nvlink: "ring",
        },
    ),
    (
        "4×8 clique gang",
        Shape::Gang {
            workers: 4,
            gpus: 8,
            nvlink: "clique",
        },
    ),
    (
        "16×1 spread",
        Shape::Spread {
            replicas: 16,
            gpus: 1,
        },
    ),
    (
        "16×2 spread",
        Shape::Spread {
            replicas: 16,
            gpus: 2,
        },
    ),
];

/// A job of one decision shape.
enum Job {
    Training(Box<TrainingJob>),
    Inference(Box<InferenceJob>),
}

fn job(shape: Shape, uid: &str) -> Job {
    match shape {
        Shape::Gang { workers, gpus, nvlink } => {
            let mut j: TrainingJob = serde_yaml::from_str(&format!(
                "apiVersion: gpupool.io/v1alpha1\nkind: TrainingJob\nmetadata: {{name: {uid}, namespace: bench, uid: {uid}}}\nspec: {{template: {{spec: {{containers: [{{name: main, image: x}}]}}}}, workers: {workers}, gpusPerWorker: {gpus}, nvlink: {nvlink}}}\n"
            ))
            .expect("job parses");
            j.metadata.finalizers = Some(vec![FINALIZER.into()]);
            Job::Training(Box::new(j))
        }
        Shape::Spread { replicas, gpus } => Job::Inference(Box::new(
            serde_yaml::from_str(&format!(
                "apiVersion: gpupool.io/v1alpha1\nkind: InferenceJob\nmetadata: {{name: {uid}, namespace: bench, uid: {uid}}}\nspec: {{template: {{spec: {{containers: [{{name: main, image: x}}]}}}}, replicas: {replicas}, gpusPerReplica: {gpus}, nvlink: preferred, spreadAcrossClusters: true}}\n"
            ))
            .expect("job parses"),
        )),
    }
}

/// The scheduler's decision for `j` as its loop takes it (what the benchmark times): the
/// snapshot brought up to date with the cache's changes since the last decision, then the
/// decision on it.
fn decide(cache: &mut PoolCache, snap: &mut Snapshot, j: &Job) -> Decision {
    cache.update_snapshot(snap);
    match j {
        Job::Training(j) => decide_training(snap, j),
        Job::Inference(j) => decide_inference(snap, j),
    }
}

/// What the cache of one member is fed: its name, then per node the published topology and
/// the GPUs a running job holds there.
type MemberInput = (String, Vec<(TopologyFacts, BTreeSet<Slot>)>);

/// The watch events of a pool of `members` × `nodes` nodes of the eight shapes (round robin),
/// each GPU held by a running job with probability `busy_pct` % — made before the cache is
/// timed, as the operator gets them deserialized from its watches.
fn pool_input(members: usize, nodes: usize, busy_pct: u64, rng: &mut Rng) -> Vec<MemberInput> {
    (0..members)
        .map(|m| {
            let member = format!("member-{m:04}");
            let nodes = (0..nodes)
                .map(|n| {
                    let spec = shape_spec((m + n) % SHAPES.len(), m, n);
                    let slots: BTreeSet<Slot> = spec
                        .gpus
                        .iter()
                        .filter(|_| rng.next() % 100 < busy_pct)
                        .map(|g| Slot {
                            member: member.clone(),
                            node: spec.node_name.clone(),
                            uuid: g.uuid.clone(),
                        })
                        .collect();
                    let published = TopologyFacts {
                        spec,
                        busy: Vec::new(),
                        published: 0,
                    };
                    (published, slots)
                })
                .collect();
            (member, nodes)
        })
        .collect()
}

/// The cache built from `input` (each node's `Node`, its topology and its running job, as the
/// watches deliver them); returns it with the GPUs held.
fn build_pool(input: Vec<MemberInput>) -> (PoolCache, usize) {
    let mut cache = PoolCache::new();
    let mut held = 0usize;
    for (m, (member, nodes)) in input.into_iter().enumerate() {
        cache.set_member(
            &member,
            MemberInfo {
                schedulable: true,
                ..Default::default()
            },
        );
        cache.resync_pods(&member, BTreeMap::new());
        for (n, (published, slots)) in nodes.into_iter().enumerate() {
            let node = published.spec.node_name.clone();
            let facts = NodeFacts {
                ready: true,
                allocatable: published.spec.gpus.len() as i64,
            };
            cache.set_node(&member, &node, Some(facts));
            cache.set_topology(&member, &node, Some(published));
            if !slots.is_empty() {
                held += slots.len();
                // Keyed by its UID, as the scheduler keys jobs.
                let uid = format!("{m:08x}-0000-4000-8000-{n:012x}");
                let job = JobName {
                    kind: "TrainingJob",
                    namespace: "bench".into(),
                    name: format!("running-{m}-{n}"),
                };
                cache.set_job(&uid, job, slots);
            }
        }
    }
    // The loop takes what woke after every event; nothing waits here.
    cache.take_wakes();
    (cache, held)
}

/// Times `rounds` decisions of each shape on one pool (each placed decision assumed, as the
/// loop does, so the pool fills); the first decision of each shape (cold allocator memo for
/// new requests) is reported apart.
fn time_decisions(cache: &mut PoolCache, snap: &mut Snapshot, rounds: usize, tag: &str) {
    for (label, shape) in DECISIONS {
        let warm = job(shape, "warm");
        let t = Instant::now();
        let _ = decide(cache, snap, &warm);
        let cold = t.elapsed();
        let mut took = Vec::with_capacity(rounds);
        let mut waited = 0;
        for r in 0..rounds {
            let uid = format!("{label}-{r}");
            let j = job(shape, &uid);
            let t = Instant::now();
            let d = decide(cache, snap, &j);
            took.push(t.elapsed());
            match d {
                Decision::Training { slots, .. } | Decision::Inference { slots, .. } => {
                    cache.assume(&uid, slots)
                }
                Decision::Wait { .. } => waited += 1,
            }
        }
        let max = took.iter().max().copied().unwrap_or_default();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {tag} | {label} | {:.2} | {:.2} | {:.2} | {:.1} | {rounds} ({waited} waited) |",
            ms(percentile(&mut took, 0.5)),
            ms(percentile(&mut took, 0.99)),
            ms(max),
            ms(cold),
        );
    }
}

/// The worst first decisions when a pathological node (59 049 NVLink cliques) joins a pool.
fn pathological_node() -> Result<()> {
    let spec = moon_moser_spec();
    let t = Instant::now();
    let g = gpupool::topology::GpuGraph::from_spec(&spec)?;
    println!(
        "pathological node: 32 GPUs, {} maximal NVLink cliques, graph built in {:.1} ms",
        g.nvlink_cliques().len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let mut cache = PoolCache::new();
    let member = "member-odd";
    let info = MemberInfo {
        schedulable: true,
        ..Default::default()
    };
    cache.set_member(member, info);
    cache.resync_pods(member, BTreeMap::new());
    let facts = NodeFacts {
        ready: true,
        allocatable: 32,
    };
    cache.set_node(member, &spec.node_name, Some(facts));
    let t = Instant::now();
    let published = TopologyFacts {
        spec,
        busy: Vec::new(),
        published: 0,
    };
    cache.set_topology(member, "node-moon-moser", Some(published));
    println!(
        "  joining the cache: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let mut snap = Snapshot::default();
    for (label, shape) in [
        (
            "1×4 clique",
            Shape::Gang {
                workers: 1,
                gpus: 4,
                nvlink: "clique",
            },
        ),
        (
            "1×8 clique",
            Shape::Gang {
                workers: 1,
                gpus: 8,
                nvlink: "clique",
            },
        ),
        (
            "1×8 preferred",
            Shape::Gang {
                workers: 1,
                gpus: 8,
                nvlink: "preferred",
            },
        ),
        (
            "1×8 ring",
            Shape::Gang {
                workers: 1,
                gpus: 8,
                nvlink: "ring",
            },
        ),
        (
            "1×16 preferred",
            Shape::Gang {
                workers: 1,
                gpus: 16,
                nvlink: "preferred",
            },
        ),
    ] {
        let j = job(shape, "odd");
        let t = Instant::now();
        let d = decide(&mut cache, &mut snap, &j);
        let cold = t.elapsed();
        let t = Instant::now();
        let _ = decide(&mut cache, &mut snap, &j);
        let warm = t.elapsed();
        let placed = !matches!(d, Decision::Wait { .. });
        println!(
            "  {label}: first decision {:.1} ms, then {:.3} ms (placed: {placed})",
            cold.as_secs_f64() * 1e3,
            warm.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

/// Placement microbenchmark: the scheduler's own decision functions over its cache, for pools
/// of mixed shapes at several levels of use (see the module docs).
fn placement_bench(pools: &[(usize, usize)], uses: &[u64], rounds: usize) -> Result<()> {
    println!(
        "placement: mixed pools of {} (round robin), every GPU busy with probability p",
        SHAPES.map(|s| s.0).join(", ")
    );
    for &(members, nodes) in pools {
        for &busy in uses {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ busy);
            let before = held_bytes();
            let input = pool_input(members, nodes, busy, &mut rng);
            let t0 = Instant::now();
            let (mut cache, held) = build_pool(input);
            let built = t0.elapsed();
            let bytes = held_bytes().saturating_sub(before);
            let t1 = Instant::now();
            let mut snap = Snapshot::default();
            cache.update_snapshot(&mut snap);
            let snapped = t1.elapsed();
            let snap_bytes = held_bytes().saturating_sub(before + bytes);
            println!();
            println!(
                "{members} members × {nodes} nodes, p = {busy} % ({held} GPUs in use): cache built in {:.2} s, {} bytes a node; the loop's first snapshot {:.2} s, {} bytes a node more",
                built.as_secs_f64(),
                bytes / (members * nodes),
                snapped.as_secs_f64(),
                snap_bytes / (members * nodes)
            );
            println!(
                "| pool, use | decision | p50 ms | p99 ms | max ms | first (cold) ms | decisions |"
            );
            println!("|---|---|---|---|---|---|---|");
            time_decisions(
                &mut cache,
                &mut snap,
                rounds,
                &format!("{members}×{nodes}, {busy} %"),
            );
        }
    }
    println!();
    pathological_node()
}

/// How long the operator's CPU is measured once every job runs and nothing changes.
const IDLE_WINDOW: Duration = Duration::from_secs(30);

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
        writes0.push(api_requests(c).await?);
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
    // Steady state: every job Running on the hub (the roll-ups done), then nothing changes.
    let running = pool
        .wait_running("job", n, Duration::from_secs(900))
        .await?;
    eprintln!(
        "N={n}: every job Running on the hub {:.1}s after the last pod landed",
        running.as_secs_f64()
    );
    let cpu_steady = cpu_seconds(pid).unwrap_or(0.0);
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle_share = (cpu_seconds(pid).unwrap_or(0.0) - cpu_steady) / IDLE_WINDOW.as_secs_f64();
    // API writes per placed job, per API server, once all settled (the bench's own creates included: POST
    // trainingjobs on the hub, one per job).
    for ((name, c), w0) in clients.iter().zip(&writes0) {
        let d = writes_between(w0, &api_requests(c).await?);
        let per = |v: f64| v / r.landed.max(1) as f64;
        let list = |reads: bool| {
            let kept = d.iter().filter(|(k, _)| is_read(k) == reads);
            let total: f64 = kept.clone().map(|(_, v)| v).sum();
            let each: Vec<String> = kept.map(|(k, v)| format!("{k} {:.2}", per(*v))).collect();
            (per(total), each.join(", "))
        };
        let ((writes, w), (reads, rd)) = (list(false), list(true));
        eprintln!("N={n}: {name} writes per placed job {writes:.2}: {w}");
        eprintln!("N={n}: {name} reads per placed job {reads:.2}: {rd}");
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
        idle_share * 100.0,
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
        placement_bench(&a.pools, &a.uses, a.rounds)?;
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
