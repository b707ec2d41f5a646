//! Load driver for the scheduler: a hub and two members with many simulated DGX H100 nodes, N
//! one-GPU TrainingJobs created as fast as the client allows, the time from each create to its
//! pod existing in a member, and a check from the member pods that no GPU is assigned twice.
//! Used by the `gpupool-bench-scale` binary (`make bench-scale`) and a small smoke test.

use crate::{Federation, GpuNode, publish_fixture, register_member};
use anyhow::{Context as _, Result, bail};
use futures::{StreamExt, TryStreamExt};
use gpupool::api::{MemberCluster, TrainingJob};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Namespace the jobs are created in.
pub const NAMESPACE: &str = "bench";
const WALLETS: [&str; 2] = [
    "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU",
    "9WzDXwBbmkg8ZTbNMqUxvQRAyrZzDsGYdLVL9zYtAWWM",
];

/// A hub and two members with `nodes_per_member` 8-GPU nodes each, registered on the hub.
pub struct ScalePool {
    /// The clusters.
    pub fed: Federation,
    /// Hub client.
    pub hub: kube::Client,
    /// GPUs in the pool.
    pub gpus: usize,
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct ScaleReport {
    /// Jobs created.
    pub jobs: usize,
    /// Jobs whose pod appeared in a member.
    pub landed: usize,
    /// Create → pod exists, percentiles and maximum.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Maximum.
    pub max: Duration,
    /// Jobs landed per second, from the first create to the last pod.
    pub jobs_per_sec: f64,
    /// How long creating the jobs took (client side).
    pub create_secs: f64,
    /// GPUs (member/node/UUID) held by more than one pod.
    pub shared_gpus: Vec<String>,
}

impl ScalePool {
    /// Starts the clusters, adds the nodes (DGX H100 topology each) and registers the members.
    pub async fn start(nodes_per_member: usize) -> Result<ScalePool> {
        let fed = Federation::start(2).await?;
        for (i, m) in fed.members.iter().enumerate() {
            let client = m.cp.client().await?;
            let nodes: Vec<GpuNode> = (0..nodes_per_member)
                .map(|n| GpuNode::new(&format!("m{i}-h100-{n:05}"), 8, "NVIDIA H100 80GB HBM3"))
                .collect();
            futures::stream::iter(nodes.chunks(25).map(|c| fed.add_nodes(i, c)))
                .buffer_unordered(8)
                .try_collect::<Vec<_>>()
                .await?;
            futures::stream::iter(
                nodes
                    .iter()
                    .map(|n| publish_fixture(&client, "dgx-h100", &n.name)),
            )
            .buffer_unordered(16)
            .try_collect::<Vec<_>>()
            .await?;
        }
        let hub = fed.hub.client().await?;
        for (i, m) in fed.members.iter().enumerate() {
            register_member(
                &hub,
                &format!("member-{}", i + 1),
                &m.cp,
                WALLETS[i],
                &format!("region-{}", i + 1),
            )
            .await?;
        }
        let ns: Api<Namespace> = Api::all(hub.clone());
        let mut n = Namespace::default();
        n.metadata.name = Some(NAMESPACE.into());
        match ns.create(&PostParams::default(), &n).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        Ok(ScalePool {
            fed,
            hub,
            gpus: 2 * nodes_per_member * 8,
        })
    }

    /// Waits until both members are Ready with all their GPUs counted.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let mcs: Api<MemberCluster> = Api::all(self.hub.clone());
        let want = self.gpus as i32 / 2;
        let t0 = Instant::now();
        loop {
            let mut ok = 0;
            for i in 1..=2 {
                if let Some(mc) = mcs.get_opt(&format!("member-{i}")).await? {
                    let st = mc.status.unwrap_or_default();
                    let ready = st
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True");
                    if ready && st.capacity.gpus_total == want {
                        ok += 1;
                    }
                }
            }
            if ok == 2 {
                return Ok(());
            }
            if t0.elapsed() > timeout {
                bail!("members not Ready with {want} GPUs each after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Creates `jobs` one-GPU TrainingJobs named `<prefix>-<i>` (up to `concurrency` requests in
    /// flight) and waits until each has a pod in a member (or `timeout`).
    pub async fn run(
        &self,
        prefix: &str,
        jobs: usize,
        concurrency: usize,
        timeout: Duration,
    ) -> Result<ScaleReport> {
        self.run_paced(prefix, jobs, concurrency, None, timeout)
            .await
    }

    /// [`ScalePool::run`], with the creations paced at `rate` jobs a second when given (job `i` is
    /// created no earlier than `i / rate` seconds after the first): the latency a steady arrival
    /// rate sees, rather than that of a burst queued all at once.
    pub async fn run_paced(
        &self,
        prefix: &str,
        jobs: usize,
        concurrency: usize,
        rate: Option<f64>,
        timeout: Duration,
    ) -> Result<ScaleReport> {
        // Watch both members' gpupool pods: first sighting of each job's pod.
        let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let mut watches = Vec::new();
        for m in &self.fed.members {
            let client = m.cp.client().await?;
            let seen = seen.clone();
            let api: Api<Pod> =
                Api::namespaced(client, &gpupool::tenant::namespace_name(NAMESPACE));
            let cfg = watcher::Config::default().labels("app.kubernetes.io/managed-by=gpupool");
            watches.push(tokio::spawn(async move {
                let mut s = watcher(api, cfg)
                    .default_backoff()
                    .applied_objects()
                    .boxed();
                while let Some(ev) = s.next().await {
                    if let Ok(p) = ev
                        && let Some(job) = p
                            .metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get("gpupool.io/job-name"))
                    {
                        seen.lock()
                            .expect("lock")
                            .entry(job.clone())
                            .or_insert_with(Instant::now);
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let api: Api<TrainingJob> = Api::namespaced(self.hub.clone(), NAMESPACE);
        let created: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
        let t0 = Instant::now();
        futures::stream::iter((0..jobs).map(|i| {
            let (api, created) = (api.clone(), created.clone());
            async move {
                if let Some(r) = rate.filter(|r| *r > 0.0) {
                    tokio::time::sleep_until((t0 + Duration::from_secs_f64(i as f64 / r)).into())
                        .await;
                }
                let name = format!("{prefix}-{i}");
                let job: TrainingJob = serde_yaml::from_str(&format!(
                    "apiVersion: gpupool.io/v1alpha1\nkind: TrainingJob\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nspec: {{template: {{spec: {{containers: [{{name: main, image: trainer}}]}}}}, workers: 1, gpusPerWorker: 1, nvlink: none}}\n"
                ))?;
                let at = Instant::now();
                api.create(&PostParams::default(), &job)
                    .await
                    .with_context(|| format!("creating {name}"))?;
                created.lock().expect("lock").insert(name, at);
                Ok::<_, anyhow::Error>(())
            }
        }))
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<_>>()
        .await?;
        let create_secs = t0.elapsed().as_secs_f64();
        let deadline = Instant::now() + timeout;
        loop {
            let n = {
                let seen = seen.lock().expect("lock");
                let created = created.lock().expect("lock");
                created.keys().filter(|k| seen.contains_key(*k)).count()
            };
            if n == jobs || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for w in watches {
            w.abort();
        }
        let seen = seen.lock().expect("lock").clone();
        let created = created.lock().expect("lock").clone();
        let mut lat: Vec<Duration> = created
            .iter()
            .filter_map(|(k, c)| seen.get(k).map(|s| s.saturating_duration_since(*c)))
            .collect();
        lat.sort();
        let pick = |q: f64| -> Duration {
            if lat.is_empty() {
                return Duration::ZERO;
            }
            lat[((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1]
        };
        let last = created
            .keys()
            .filter_map(|k| seen.get(k))
            .max()
            .copied()
            .unwrap_or(t0);
        let span = last.saturating_duration_since(t0).as_secs_f64().max(1e-3);
        Ok(ScaleReport {
            jobs,
            landed: lat.len(),
            p50: pick(0.50),
            p99: pick(0.99),
            max: lat.last().copied().unwrap_or_default(),
            jobs_per_sec: lat.len() as f64 / span,
            create_secs,
            shared_gpus: self.shared_gpus().await?,
        })
    }

    /// Creates a one-GPU TrainingJob `name` (of GPU model `model`, if given) in [`NAMESPACE`].
    pub async fn create_job(&self, name: &str, model: Option<&str>) -> Result<()> {
        let gpu = model
            .map(|m| format!(", gpu: {{model: {m}}}"))
            .unwrap_or_default();
        let job: TrainingJob = serde_yaml::from_str(&format!(
            "apiVersion: gpupool.io/v1alpha1\nkind: TrainingJob\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nspec: {{template: {{spec: {{containers: [{{name: main, image: trainer}}]}}}}, workers: 1, gpusPerWorker: 1, nvlink: none{gpu}}}\n"
        ))?;
        Api::<TrainingJob>::namespaced(self.hub.clone(), NAMESPACE)
            .create(&PostParams::default(), &job)
            .await?;
        Ok(())
    }

    /// Polls both members (every 10 ms) until job `name` has a pod; the time since `t0`.
    pub async fn wait_for_pod(
        &self,
        name: &str,
        t0: Instant,
        timeout: Duration,
    ) -> Result<Duration> {
        let lp = ListParams::default().labels(&format!("gpupool.io/job-name={name}"));
        let mut apis = Vec::new();
        for m in &self.fed.members {
            apis.push(Api::<Pod>::namespaced(
                m.cp.client().await?,
                &gpupool::tenant::namespace_name(NAMESPACE),
            ));
        }
        loop {
            for a in &apis {
                if !a.list(&lp).await?.items.is_empty() {
                    return Ok(t0.elapsed());
                }
            }
            if t0.elapsed() > timeout {
                bail!("{name} has no pod after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `n` TrainingJobs named `<prefix>-*` are `Running` on the hub (their
    /// controller has rolled the pods' phases up); how long that took. Listed in pages, every
    /// two seconds.
    pub async fn wait_running(
        &self,
        prefix: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Duration> {
        let api: Api<TrainingJob> = Api::namespaced(self.hub.clone(), NAMESPACE);
        let t0 = Instant::now();
        let start = format!("{prefix}-");
        loop {
            let mut running = 0;
            let mut lp = ListParams::default().limit(2000);
            loop {
                let page = api.list(&lp).await?;
                running += page
                    .items
                    .iter()
                    .filter(|j| {
                        j.metadata
                            .name
                            .as_deref()
                            .is_some_and(|x| x.starts_with(&start))
                    })
                    .filter(|j| {
                        j.status
                            .as_ref()
                            .is_some_and(|s| s.phase == gpupool::api::TrainingPhase::Running)
                    })
                    .count();
                match page.metadata.continue_.filter(|c| !c.is_empty()) {
                    Some(c) => lp = lp.continue_token(&c),
                    None => break,
                }
            }
            if running >= n {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > timeout {
                bail!("{running} of {n} jobs Running on the hub after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// GPUs held by more than one unfinished pod, from the members' pods themselves.
    pub async fn shared_gpus(&self) -> Result<Vec<String>> {
        let mut holders: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (i, m) in self.fed.members.iter().enumerate() {
            let pods: Api<Pod> = Api::all(m.cp.client().await?);
            let list = pods
                .list(&ListParams::default().labels("app.kubernetes.io/managed-by=gpupool"))
                .await?;
            for p in list.items {
                let phase = p.status.as_ref().and_then(|s| s.phase.clone());
                if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
                    continue;
                }
                let node = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default();
                let uuids = p
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("gpupool.io/gpu-uuids").cloned())
                    .unwrap_or_default();
                for u in uuids.split(',').filter(|u| !u.is_empty()) {
                    holders
                        .entry(format!("member-{}/{node}/{u}", i + 1))
                        .or_default()
                        .push(p.metadata.name.clone().unwrap_or_default());
                }
            }
        }
        Ok(holders
            .into_iter()
            .filter(|(_, v)| v.len() > 1)
            .map(|(k, v)| format!("{k}: {}", v.join(",")))
            .collect())
    }
}

/// CPU seconds (user + system) a process used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

/// A `/proc/<pid>/status` field in KiB (e.g. `VmHWM`, `VmRSS`).
pub fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Requests an API server has served so far, by `VERB resource[/subresource]`, from its own
/// `apiserver_request_total` counter: writes (POST, PUT, PATCH, APPLY, DELETE) and reads (GET,
/// LIST; not WATCH, which stays open); conflicts (409) are counted under the same key with
/// ` (409)` appended.
pub async fn api_requests(client: &kube::Client) -> Result<BTreeMap<String, f64>> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| -> &str {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or("")
        };
        let verb = label("verb");
        if !matches!(
            verb,
            "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE" | "GET" | "LIST"
        ) {
            continue;
        }
        let (resource, sub) = (label("resource"), label("subresource"));
        let mut key = if sub.is_empty() {
            format!("{verb} {resource}")
        } else {
            format!("{verb} {resource}/{sub}")
        };
        // Refused writes apart: a 409 is a write that lost a race with a newer version.
        if label("code") == "409" {
            key.push_str(" (409)");
        }
        *out.entry(key).or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    Ok(out)
}

/// Whether a key of [`api_requests`] counts a read.
pub fn is_read(key: &str) -> bool {
    key.starts_with("GET ") || key.starts_with("LIST ")
}

/// `after - before`, per key, without the keys that did not change.
pub fn writes_between(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .collect()
}
