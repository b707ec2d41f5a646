//! The soak's pool and its processes: a hub and three members, two operator replicas with leader
//! election, the join controller and the pull member's agent, each a `gpupool` process that is
//! replaced when it dies (as a Deployment replaces a pod: the new one has a new identity), and API
//! servers that a fault killed started again once the fault's hold is over.

use super::{NAMESPACE, SoakConfig};
use crate::control_plane::spawn;
use crate::{
    Federation, GpuNode, MemberKind, OPERATOR_NAMESPACE, publish_fixture, register_member,
};
use anyhow::{Context as _, Result};
use futures::{StreamExt, TryStreamExt};
use gpupool::api::MemberCluster;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const WALLETS: [&str; 3] = [
    "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU",
    "9WzDXwBbmkg8ZTbNMqUxvQRAyrZzDsGYdLVL9zYtAWWM",
    "HN7cABqLq46Es1jh92dQQisAq662SmxELLLsHHe4YWrH",
];
/// member-1: push + DRA (H100), member-2: push + device plugin (A100), member-3: pull (L40S).
const MEMBERS: [(&str, MemberKind, &str, &str); 3] = [
    (
        "member-1",
        MemberKind::Dra,
        "dgx-h100",
        "NVIDIA H100 80GB HBM3",
    ),
    (
        "member-2",
        MemberKind::DevicePlugin,
        "dgx-a100",
        "NVIDIA A100-SXM4-40GB",
    ),
    (
        "member-3",
        MemberKind::DevicePlugin,
        "pcie-l40s",
        "NVIDIA L40S",
    ),
];
/// The pull member (index into the federation's members).
pub const PULL: usize = 2;
/// Name of the leader-election Lease of the operator replicas.
pub const LEASE: &str = "gpupool-operator";

/// What the fault process may hit, written by the pool whenever a process is replaced.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Targets {
    /// Every cluster: `hub` and the members.
    pub clusters: Vec<ClusterTarget>,
    /// Operator replicas: identity → process id.
    pub operators: BTreeMap<String, u32>,
    /// The pull member's agent.
    pub agent_pid: Option<u32>,
}

/// One cluster the fault process may hit.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterTarget {
    /// `hub` or the MemberCluster name.
    pub name: String,
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// kube-apiserver process id (absent while it is down).
    pub apiserver_pid: Option<u32>,
    /// Whether the hub reaches it (push) or its agent dials in (pull).
    pub pull: bool,
}

impl Targets {
    /// Path of the targets file in a run directory.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("targets.json")
    }

    /// Reads the targets file.
    pub fn read(dir: &Path) -> Result<Targets> {
        Ok(serde_json::from_slice(&std::fs::read(Self::path(dir))?)?)
    }

    /// The cluster called `name`.
    pub fn cluster(&self, name: &str) -> Option<&ClusterTarget> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

/// Path of the hold file by which the fault process keeps `cluster`'s API server down until a
/// time (unix milliseconds).
pub fn hold_path(dir: &Path, cluster: &str) -> PathBuf {
    dir.join(format!("hold-{cluster}"))
}

struct Replica {
    slot: char,
    generation: u32,
    child: Option<Child>,
    died: Option<Instant>,
}

impl Replica {
    fn identity(&self) -> String {
        format!("replica-{}-{}", self.slot, self.generation)
    }
}

/// The running pool.
pub struct SoakPool {
    /// Hub and members.
    pub fed: Federation,
    /// Hub client.
    pub hub: kube::Client,
    /// GPUs in the pool.
    pub gpus: usize,
    replicas: Vec<Replica>,
    agent: Option<Child>,
    join_controller: Option<Child>,
    token: String,
    dir: PathBuf,
}

impl SoakPool {
    /// Starts the clusters, nodes, topologies, the two push members' registrations, the join
    /// controller, the pull member's agent and two operator replicas; waits until every member is
    /// Ready with all its GPUs.
    pub async fn start(cfg: &SoakConfig) -> Result<SoakPool> {
        let kinds: Vec<MemberKind> = MEMBERS.iter().map(|m| m.1).collect();
        let fed = Federation::start_with(&kinds).await?;
        for (i, (_, _, fixture, model)) in MEMBERS.iter().enumerate() {
            add_member_nodes(&fed, i, cfg.nodes_per_member, fixture, model).await?;
        }
        let hub = fed.hub.client().await?;
        for (i, (name, ..)) in MEMBERS.iter().enumerate().filter(|(i, _)| *i != PULL) {
            register_member(&hub, name, &fed.members[i].cp, WALLETS[i], name).await?;
        }
        create_namespace(&hub, NAMESPACE).await?;
        create_namespace(&hub, OPERATOR_NAMESPACE).await?;
        let token = gpupool::join::token::create(&hub, Duration::from_secs(86_400), None)
            .await?
            .token;
        let mut pool = SoakPool {
            gpus: MEMBERS.len() * cfg.nodes_per_member * 8,
            fed,
            hub,
            replicas: ['a', 'b']
                .into_iter()
                .map(|slot| Replica {
                    slot,
                    generation: 0,
                    child: None,
                    died: None,
                })
                .collect(),
            agent: None,
            join_controller: None,
            token,
            dir: cfg.dir.clone(),
        };
        pool.supervise(cfg).await?;
        pool.wait_ready(cfg.nodes_per_member * 8).await?;
        Ok(pool)
    }

    /// Clients of the hub and of each member, for the checker.
    pub async fn clients(&self) -> Result<super::check::Clients> {
        let mut members = Vec::new();
        for (i, m) in self.fed.members.iter().enumerate() {
            members.push((MEMBERS[i].0.to_string(), m.cp.client().await?));
        }
        Ok(super::check::Clients {
            hub: self.hub.clone(),
            members,
        })
    }

    async fn wait_ready(&self, per_member: usize) -> Result<()> {
        let mcs: Api<MemberCluster> = Api::all(self.hub.clone());
        crate::eventually(240, "every member Ready with all its GPUs", || async {
            for (name, ..) in MEMBERS {
                let Some(mc) = mcs.get_opt(name).await? else {
                    return Ok(None);
                };
                let full = mc
                    .status
                    .as_ref()
                    .is_some_and(|s| s.capacity.gpus_total as usize == per_member);
                if !(crate::ready_with_gpus(&mc) && full) {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })
        .await
    }

    /// Starts what is not running: a dead operator replica (2 s after it died, with a new
    /// identity), the agent, the join controller, an API server whose hold is over. Rewrites the
    /// targets file when anything changed.
    pub async fn supervise(&mut self, cfg: &SoakConfig) -> Result<()> {
        let mut changed = self.revive_apiservers().await?;
        for i in 0..self.replicas.len() {
            changed |= self.revive_replica(cfg, i)?;
        }
        if exited(&mut self.agent) {
            self.agent = Some(self.start_agent(cfg)?);
            changed = true;
        }
        if exited(&mut self.join_controller) {
            self.join_controller = Some(self.gpupool(cfg, "join-controller", |c| {
                c.args(["join-controller", "--auto-approve"])
                    .env("KUBECONFIG", self.fed.hub.kubeconfig_path())
            })?);
        }
        if changed || !Targets::path(&self.dir).exists() {
            self.write_targets()?;
        }
        Ok(())
    }

    async fn revive_apiservers(&mut self) -> Result<bool> {
        let mut changed = false;
        let dir = self.dir.clone();
        let cps = std::iter::once(&mut self.fed.hub)
            .chain(self.fed.members.iter_mut().map(|m| &mut m.cp));
        for cp in cps {
            if !cp.apiserver_exited() || held(&dir, cp.name()) {
                continue;
            }
            tracing::info!(cluster = cp.name(), "starting the API server again");
            cp.restart_apiserver().await?;
            changed = true;
        }
        Ok(changed)
    }

    fn revive_replica(&mut self, cfg: &SoakConfig, i: usize) -> Result<bool> {
        let r = &mut self.replicas[i];
        if !exited(&mut r.child) {
            return Ok(false);
        }
        let died = *r.died.get_or_insert_with(Instant::now);
        if r.generation > 0 && died.elapsed() < Duration::from_secs(2) {
            return Ok(false);
        }
        r.generation += 1;
        r.died = None;
        let identity = r.identity();
        let port = crate::control_plane::free_port()?;
        let child = self.gpupool(cfg, &identity, |c| {
            c.args(["run", "--leader-elect", "--lease-name", LEASE])
                .args(["--namespace", OPERATOR_NAMESPACE])
                .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
                .args(["--heartbeat-seconds", "1", "--member-grace-seconds", "10"])
                .args(["--meter-interval-seconds", "10"])
                .env("KUBECONFIG", self.fed.hub.kubeconfig_path())
                .env("POD_NAME", &identity)
        })?;
        self.replicas[i].child = Some(child);
        Ok(true)
    }

    fn start_agent(&self, cfg: &SoakConfig) -> Result<Child> {
        let m = &self.fed.members[PULL].cp;
        self.gpupool(cfg, "member-agent", |c| {
            c.arg("member-agent")
                .args(["--hub-url", &self.fed.hub.server_url()])
                .arg("--hub-ca-file")
                .arg(self.fed.hub.dir().join("pki/ca.crt"))
                .args([
                    "--member-name",
                    MEMBERS[PULL].0,
                    "--owner-wallet",
                    WALLETS[PULL],
                ])
                .args(["--region", MEMBERS[PULL].0, "--identity", "agent-0"])
                .args(["--heartbeat-seconds", "1", "--report-seconds", "2"])
                .env("KUBECONFIG", m.kubeconfig_path())
                .env("GPUPOOL_JOIN_TOKEN", &self.token)
        })
    }

    /// Starts `gpupool` with `args`, its output appended to `<dir>/<log>.log`.
    fn gpupool(
        &self,
        cfg: &SoakConfig,
        log: &str,
        args: impl FnOnce(&mut Command) -> &mut Command,
    ) -> Result<Child> {
        let f = append(&self.dir.join(format!("{log}.log")))?;
        let mut cmd = Command::new(&cfg.gpupool);
        args(&mut cmd).env("RUST_LOG", "info,kube=warn");
        spawn(&mut cmd, f)
    }

    /// Starts `gpupool-soak <what>` (churn or faults) for this run.
    pub fn spawn_child(&self, cfg: &SoakConfig, what: &str) -> Result<Child> {
        let f = append(&self.dir.join(format!("{what}.log")))?;
        let mut cmd = Command::new(&cfg.exe);
        cmd.arg(what)
            .arg("--dir")
            .arg(&self.dir)
            .args(["--seed", &cfg.seed.to_string()])
            .args(["--seconds", &cfg.duration.as_secs().to_string()])
            .args(["--every-ms", &cfg.churn_ms.to_string()])
            .args(["--faults", &cfg.faults.to_string()])
            .args([
                "--fault-every",
                &format!("{}-{}", cfg.fault_every.0, cfg.fault_every.1),
            ])
            .env("RUST_LOG", "info,kube=warn");
        spawn(&mut cmd, f).with_context(|| format!("starting the {what} process"))
    }

    fn write_targets(&self) -> Result<()> {
        let mut t = Targets {
            agent_pid: self.agent.as_ref().map(|c| c.id()),
            ..Default::default()
        };
        t.clusters.push(ClusterTarget {
            name: "hub".into(),
            kubeconfig: self.fed.hub.kubeconfig_path(),
            apiserver_pid: self.fed.hub.apiserver_pid(),
            pull: false,
        });
        for (i, m) in self.fed.members.iter().enumerate() {
            t.clusters.push(ClusterTarget {
                name: MEMBERS[i].0.into(),
                kubeconfig: m.cp.kubeconfig_path(),
                apiserver_pid: m.cp.apiserver_pid(),
                pull: i == PULL,
            });
        }
        for r in &self.replicas {
            if let Some(c) = &r.child {
                t.operators.insert(r.identity(), c.id());
            }
        }
        let tmp = self.dir.join("targets.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&t)?)?;
        std::fs::rename(tmp, Targets::path(&self.dir))?;
        Ok(())
    }

    /// Resident memory (KiB) of the replica that holds the lease.
    pub async fn leader_rss(&self) -> Option<u64> {
        let lease = Api::<Lease>::namespaced(self.hub.clone(), OPERATOR_NAMESPACE)
            .get_opt(LEASE)
            .await
            .ok()??;
        let holder = lease.spec?.holder_identity?;
        let r = self.replicas.iter().find(|r| r.identity() == holder)?;
        rss_kib(r.child.as_ref()?.id())
    }
}

impl Drop for SoakPool {
    fn drop(&mut self) {
        let children = self.replicas.iter_mut().filter_map(|r| r.child.take());
        for c in children
            .chain(self.agent.take())
            .chain(self.join_controller.take())
        {
            crate::control_plane::stop_child(c);
        }
    }
}

async fn add_member_nodes(
    fed: &Federation,
    i: usize,
    n: usize,
    fixture: &str,
    model: &str,
) -> Result<()> {
    let client = fed.members[i].cp.client().await?;
    let nodes: Vec<GpuNode> = (0..n)
        .map(|k| GpuNode::new(&format!("m{}-{fixture}-{k:03}", i + 1), 8, model))
        .collect();
    fed.add_nodes(i, &nodes).await?;
    futures::stream::iter(
        nodes
            .iter()
            .map(|n| publish_fixture(&client, fixture, &n.name)),
    )
    .buffer_unordered(8)
    .try_collect::<Vec<_>>()
    .await?;
    Ok(())
}

async fn create_namespace(hub: &kube::Client, name: &str) -> Result<()> {
    let mut n = Namespace::default();
    n.metadata.name = Some(name.into());
    match Api::<Namespace>::all(hub.clone())
        .create(&PostParams::default(), &n)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether the child is not running (never started, or exited: then reaped and cleared).
fn exited(child: &mut Option<Child>) -> bool {
    match child.as_mut().map(|c| c.try_wait()) {
        Some(Ok(None)) => false,
        None => true,
        Some(_) => {
            *child = None;
            true
        }
    }
}

/// Whether a fault holds `cluster`'s API server down now.
fn held(dir: &Path, cluster: &str) -> bool {
    std::fs::read_to_string(hold_path(dir, cluster))
        .ok()
        .and_then(|s| s.trim().parse::<u128>().ok())
        .is_some_and(|until| until > super::faults::unix_ms())
}

fn append(path: &Path) -> Result<std::fs::File> {
    Ok(std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)?)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Clears `child` once it has exited; an exit other than success is an error.
pub fn reap(child: &mut Option<Child>, what: &str) -> Result<()> {
    if let Some(c) = child
        && let Some(st) = c.try_wait()?
    {
        *child = None;
        anyhow::ensure!(st.success(), "the {what} process failed: {st}");
    }
    Ok(())
}
