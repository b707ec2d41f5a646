//! `make demo`: a federated GPU pool on this machine.
//!
//! Starts a hub and two member clusters (each a real etcd + kube-apiserver), simulated GPU nodes
//! (KWOK) whose topology comes from the fixtures, the gpupool operator (member-east joins in push
//! mode: the hub holds its kubeconfig; member-west joins in pull mode: its member agent dials out
//! to the hub with a join token and the hub holds no credential of it), and an embedded Solana VM
//! running the ledger program with the real SPL Token program; applies the example jobs from
//! `deploy/examples/`, and prints where each job went and why, what `kubectl get` shows, the
//! metered GPU-seconds and the tokens minted to each cluster owner. Everything is stopped and
//! removed at the end.

use anyhow::{Context as _, Result};
use gpupool::api::{InferenceJob, TrainingJob, TrainingPhase, UsageRecord, UsageState};
use gpupool::cli::earnings::{Selector, earnings_report, format_report};
use gpupool::ledger::{Keypair, Ledger, Signer};
use gpupool::metering::runner::{RunnerConfig, Stores, Totals, pass};
use gpupool::metering::{MeterConfig, SettleConfig};
use gpupool_e2e::chain::{DEMO_RATES, EmbeddedLedger};
use gpupool_e2e::{
    Federation, GpuNode, MemberKind, Operator, eventually, example_claims, fixture_for_node,
    publish_fixture, register_member, repo_root,
};
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct NodeSpec {
    name: &'static str,
    fixture: &'static str,
    gpus: u32,
    model: &'static str,
    what: &'static str,
}

const MEMBERS: [(&str, &str, &[NodeSpec]); 2] = [
    (
        "member-east",
        "us-east",
        &[
            NodeSpec {
                name: "dgx-h100-0",
                fixture: "dgx-h100",
                gpus: 8,
                model: "NVIDIA H100 80GB HBM3",
                what: "8x H100 on NVSwitch",
            },
            NodeSpec {
                name: "dgx1-v100-0",
                fixture: "dgx1-v100",
                gpus: 8,
                model: "Tesla V100-SXM2-16GB",
                what: "8x V100, hybrid cube-mesh",
            },
        ],
    ),
    (
        "member-west",
        "eu-west",
        &[
            NodeSpec {
                name: "pcie-a100-0",
                fixture: "pcie-a100-bridged",
                gpus: 4,
                model: "NVIDIA A100 80GB PCIe",
                what: "4x A100 PCIe, NVLink-bridged pairs",
            },
            NodeSpec {
                name: "pcie-a100-1",
                fixture: "pcie-a100-bridged",
                gpus: 4,
                model: "NVIDIA A100 80GB PCIe",
                what: "4x A100 PCIe, NVLink-bridged pairs",
            },
            NodeSpec {
                name: "l40s-0",
                fixture: "pcie-l40s",
                gpus: 8,
                model: "NVIDIA L40S",
                what: "8x L40S, PCIe only",
            },
        ],
    ),
];

/// The member that joins in pull mode (its agent runs as its own process with only the member's
/// kubeconfig); the other is registered in push mode.
const PULL_MEMBER: usize = 1;

/// member-east binds GPUs with DRA (NVIDIA's DeviceClass installed; its nodes' agents publish
/// simulated ResourceSlices), member-west with the device plugin.
const KINDS: [MemberKind; 2] = [MemberKind::Dra, MemberKind::DevicePlugin];

const EXAMPLES: [&str; 3] = [
    "training-gpt.yaml",
    "inference-llama.yaml",
    "training-finetune-v100.yaml",
];

fn step(n: usize, total: usize, msg: &str) {
    println!("\n[{n}/{total}] {msg}");
    let _ = std::io::stdout().flush();
}

/// GPU indexes of `uuids` on `node` (from its fixture), or the UUIDs where unknown.
fn indexes_of(node: &str, fixture: &str, uuids: &[String]) -> String {
    let r = fixture_for_node(fixture, node).ok();
    let ix: Vec<String> = uuids
        .iter()
        .map(|u| {
            r.as_ref()
                .and_then(|r| r.spec.gpus.iter().find(|g| g.uuid == *u))
                .map(|g| g.index.to_string())
                .unwrap_or_else(|| u.clone())
        })
        .collect();
    ix.join(",")
}

/// The fixture a demo node was published from.
fn fixture_of(node: &str) -> &'static str {
    MEMBERS
        .iter()
        .flat_map(|m| m.2.iter())
        .find(|n| n.name == node)
        .map(|n| n.fixture)
        .unwrap_or("")
}

async fn why(hub: &kube::Client, ns: &str, name: &str) -> Vec<String> {
    let evs: Api<Event> = Api::namespaced(hub.clone(), ns);
    let mut v: Vec<Event> = evs
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect();
    v.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    v.into_iter()
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default()
            )
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<()> {
    let total = 7;
    let t_all = Instant::now();
    println!(
        "gpupool demo: a federated GPU pool on this machine (hub + a push member and a pull member, simulated GPU nodes, embedded Solana VM)"
    );

    step(
        1,
        total,
        "control-plane tools (etcd, kube-apiserver, kubectl, KWOK, Helm) from e2e/tools/go.mod",
    );
    let t = Instant::now();
    gpupool_e2e::Tools::get().context("building the control-plane tools")?;
    println!(
        "      ready in {:.1}s (built once, then cached outside the repository)",
        t.elapsed().as_secs_f64()
    );

    step(
        2,
        total,
        "starting the hub and two member clusters (etcd + kube-apiserver each; kube-scheduler, kube-controller-manager and KWOK in the members)",
    );
    let fed = Federation::start_with(&KINDS).await?;
    println!(
        "      3 API servers ready in {:.1}s: hub {}, members {}",
        fed.startup.as_secs_f64(),
        fed.hub.server_url(),
        fed.members
            .iter()
            .map(|m| m.cp.server_url())
            .collect::<Vec<_>>()
            .join(", ")
    );

    step(
        3,
        total,
        "simulated GPU nodes; their node agents publish GpuTopology from deploy/topologies/",
    );
    let mut owners = Vec::new();
    for (i, (name, region, nodes)) in MEMBERS.iter().enumerate() {
        let gn: Vec<GpuNode> = nodes
            .iter()
            .map(|n| GpuNode::new(n.name, n.gpus, n.model))
            .collect();
        fed.add_nodes(i, &gn).await?;
        let c = fed.members[i].cp.client().await?;
        for n in nodes.iter() {
            publish_fixture(&c, n.fixture, n.name).await?;
            println!("      {name} ({region}): {:<12} {}", n.name, n.what);
        }
        if KINDS[i] == MemberKind::Dra {
            // The volumes the training example mounts (pre-bound; nothing is stored behind them).
            example_claims(&c, "default").await?;
            println!(
                "      {name}: DRA member: DeviceClass gpu.nvidia.com, a simulated ResourceSlice per node (driver gpu.nvidia.com), PVCs tokens-v3 and gpt-checkpoints"
            );
        } else {
            println!("      {name}: device-plugin member: nodes advertise nvidia.com/gpu");
        }
        owners.push(Keypair::new());
    }

    step(
        4,
        total,
        "embedded Solana VM: ledger program (native) + SPL Token + ATA programs",
    );
    // 5-second settlement periods for the demo, fixed in the pool config on chain.
    let (chain, pool) = EmbeddedLedger::with_pool(DEMO_RATES, 0, 5)?;
    let chain = Arc::new(chain);
    println!(
        "      pool mint {} (mint authority: the ledger program's PDA)",
        pool.mint
    );
    println!(
        "      rates (tokens per GPU-second): H100/H200 {}, A100 {}, V100 {}, L40S {}, other {}",
        DEMO_RATES[1], DEMO_RATES[2], DEMO_RATES[3], DEMO_RATES[4], DEMO_RATES[0]
    );
    // The operator settles through Solana JSON-RPC, as in production, against an endpoint that
    // serves the embedded chain.
    let rpc_server = gpupool_e2e::chain::rpc_server::serve(chain.clone()).await?;
    println!(
        "      Solana JSON-RPC endpoint for the embedded chain: {}",
        rpc_server.url
    );
    let rpc = Arc::new(gpupool::ledger::RpcLedger::new(&rpc_server.url)?);
    // The demo operator holds the registrar key (as a hub does) and, unlike a real hub, the
    // owners' and the pool admin's keys, so it registers the members and caps their GPUs.
    let mut ledger = Ledger::new(rpc, pool.oracle.insecure_clone())
        .with_registrar(pool.registrar.insecure_clone())
        .with_admin(pool.admin.insecure_clone());
    for o in &owners {
        chain.fund(&o.pubkey())?;
        ledger = ledger.with_owner_signer(o.insecure_clone());
    }

    step(
        5,
        total,
        "members join: member-east in push mode (the hub holds its kubeconfig), member-west in pull mode (its agent dials out with a join token); the operator starts",
    );
    let hub = fed.hub.client().await?;
    let op = Operator::start(hub.clone(), Operator::test_config(30));
    let join_controller = tokio::spawn(gpupool::join::controller::run(
        hub.clone(),
        gpupool::join::controller::JoinConfig {
            auto_approve: false,
            resync: Duration::from_secs(1),
            ..Default::default()
        },
    ));
    let mut agent = None;
    for (i, (name, region, _)) in MEMBERS.iter().enumerate() {
        if i == PULL_MEMBER {
            let token =
                gpupool::join::token::create(&hub, Duration::from_secs(3600), Some(name)).await?;
            println!(
                "      pool admin: $ gpupool join-token create --member {name} --ttl 1h   → token {}",
                token.id
            );
            println!(
                "      owner of {name}, in the member: $ gpupool member-agent --hub-url {} --member-name {name} --region {region} --owner-wallet {}   (GPUPOOL_JOIN_TOKEN set)",
                fed.hub.server_url(),
                owners[i].pubkey()
            );
            agent = Some(start_agent(
                &fed,
                i,
                name,
                region,
                &owners[i],
                &token.token,
            )?);
            let mcs: Api<gpupool::api::MemberCluster> = Api::all(hub.clone());
            eventually(60, &format!("{name} pending approval"), || async {
                Ok(mcs.get_opt(name).await?.map(|_| ()))
            })
            .await?;
            println!("      MemberCluster {name} created by the join, approval Pending");
            let out = gpupool_cli(&fed, &["approve", name])?;
            println!(
                "      pool admin: $ gpupool approve {name}\n{}",
                indent(out.trim())
            );
        } else {
            register_member(
                &hub,
                name,
                &fed.members[i].cp,
                &owners[i].pubkey().to_string(),
                region,
            )
            .await?;
            println!(
                "      MemberCluster {name} (push, kubeconfig Secret on the hub): owner wallet {}",
                owners[i].pubkey()
            );
        }
    }
    for (name, _, _) in MEMBERS {
        let mcs: Api<gpupool::api::MemberCluster> = Api::all(hub.clone());
        eventually(60, &format!("{name} Ready"), || async {
            let st = mcs.get(name).await?.status.unwrap_or_default();
            Ok(st
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(()))
        })
        .await?;
    }
    println!(
        "{}",
        indent(&fed.hub.kubectl().ok(&["get", "memberclusters"])?)
    );

    step(
        6,
        total,
        "applying the example jobs from deploy/examples/ with kubectl on the hub",
    );
    let kubectl = fed.hub.kubectl();
    for f in EXAMPLES {
        let out = kubectl.ok(&[
            "apply",
            "-f",
            repo_root()
                .join("deploy/examples")
                .join(f)
                .to_str()
                .unwrap_or_default(),
        ])?;
        print!("      $ kubectl apply -f deploy/examples/{f}\n      {out}");
    }
    let tjs: Api<TrainingJob> = Api::namespaced(hub.clone(), "default");
    let ijs: Api<InferenceJob> = Api::namespaced(hub.clone(), "default");
    // Only member-west (pull) has L40S GPUs: this gang goes there through its agent.
    let l40s: TrainingJob = serde_yaml::from_str(
        "apiVersion: gpupool.io/v1alpha1\nkind: TrainingJob\nmetadata: {name: sdxl-l40s, namespace: default}\nspec: {template: {spec: {containers: [{name: trainer, image: nvcr.io/nvidia/pytorch:24.08-py3}]}}, workers: 2, gpusPerWorker: 1, gpu: {model: L40S}}\n",
    )?;
    tjs.create(&Default::default(), &l40s).await?;
    println!(
        "      $ kubectl create trainingjob sdxl-l40s   (2 workers x 1 L40S: only member-west, the pull member, has them)"
    );
    eventually(60, "all example jobs running", || async {
        let sdxl = tjs.get("sdxl-l40s").await?.status.unwrap_or_default().phase;
        let gpt = tjs
            .get("gpt-pretrain")
            .await?
            .status
            .unwrap_or_default()
            .phase;
        let ft = tjs
            .get("bert-finetune")
            .await?
            .status
            .unwrap_or_default()
            .phase;
        let ll = ijs
            .get("llama-serve")
            .await?
            .status
            .unwrap_or_default()
            .ready_replicas;
        Ok((gpt == TrainingPhase::Running
            && sdxl == TrainingPhase::Running
            && matches!(ft, TrainingPhase::Running | TrainingPhase::Succeeded)
            && ll == 3)
            .then_some(()))
    })
    .await
    .map_err(|e| {
        let state = kubectl_get(
            &kubectl,
            &[
                "get",
                "trainingjobs,inferencejobs,memberworks",
                "-A",
                "-o",
                "wide",
            ],
        )
        .unwrap_or_default();
        let events = kubectl_get(&kubectl, &["get", "events", "-A"]).unwrap_or_default();
        e.context(format!("{state}\n{events}"))
    })?;
    println!("\n      Where each job went (member, node, GPU indexes, topology score), and why:");
    let mut jobs: Vec<String> = Vec::new();
    for j in tjs.list(&ListParams::default()).await?.items {
        jobs.push(format!("trainingjob/{}", j.name_any()));
    }
    for j in ijs.list(&ListParams::default()).await?.items {
        jobs.push(format!("inferencejob/{}", j.name_any()));
    }
    for j in &jobs {
        println!("\n      $ kubectl gpupool where {j}");
        println!("{}", indent(&kubectl_gpupool(&fed, &["where", j])?));
    }
    // A gang no member can hold: 16 NVLinked H100s for one worker, on 8-GPU nodes.
    let huge: TrainingJob = serde_yaml::from_str(
        "apiVersion: gpupool.io/v1alpha1\nkind: TrainingJob\nmetadata: {name: gpt-huge, namespace: default}\nspec: {template: {spec: {containers: [{name: trainer, image: trainer}]}}, workers: 1, gpusPerWorker: 16, gpu: {model: H100}, nvlink: required}\n",
    )?;
    tjs.create(&Default::default(), &huge).await?;
    eventually(60, "gpt-huge reported unschedulable", || async {
        let st = tjs.get("gpt-huge").await?.status.unwrap_or_default();
        Ok(st
            .conditions
            .iter()
            .any(|c| c.reason == "Unschedulable")
            .then_some(()))
    })
    .await?;
    println!("\n      $ kubectl gpupool why gpt-huge");
    println!("{}", indent(&kubectl_gpupool(&fed, &["why", "gpt-huge"])?));
    tjs.delete("gpt-huge", &Default::default()).await?;
    eventually(30, "gpt-huge deleted", || async {
        Ok(tjs.get_opt("gpt-huge").await?.is_none().then_some(()))
    })
    .await?;
    println!("\n      How the GPUs are bound in each member:");
    for (i, (name, _, _)) in MEMBERS.iter().enumerate() {
        for line in binding_report(&fed.members[i].cp.client().await?, KINDS[i]).await? {
            println!("        {name}: {line}");
        }
    }
    println!("\n      $ kubectl get trainingjobs,inferencejobs");
    println!(
        "{}",
        indent(&kubectl_get(
            &kubectl,
            &["get", "trainingjobs,inferencejobs"]
        )?)
    );
    println!("\n      Events on the hub objects:");
    for n in ["gpt-pretrain", "bert-finetune", "llama-serve", "sdxl-l40s"] {
        for e in why(&hub, "default", n).await {
            println!("        {n}: {e}");
        }
    }

    step(
        7,
        total,
        "metering GPU-seconds and settling them on chain (5 s settlement periods for the demo)",
    );
    let cfg = RunnerConfig {
        interval: Duration::from_secs(2),
        meter: MeterConfig {
            period_seconds: 5,
            finalize_delay_seconds: 1,
            ..Default::default()
        },
        settle: SettleConfig::default(),
    };
    let mut totals = Totals::default();
    let stores = Stores::start(&op.ctx.hub);
    let t = Instant::now();
    let run_for = Duration::from_secs(24);
    let mut last = (usize::MAX, usize::MAX);
    while t.elapsed() < run_for {
        pass(
            &op.ctx.metering(),
            Some(&ledger),
            &cfg,
            &mut totals,
            &stores,
        )
        .await?;
        let recs = Api::<UsageRecord>::all(hub.clone())
            .list(&ListParams::default())
            .await?
            .items;
        let settled = recs
            .iter()
            .filter(|r| {
                r.status
                    .as_ref()
                    .is_some_and(|s| s.state == UsageState::Settled)
            })
            .count();
        if (recs.len(), settled) != last {
            last = (recs.len(), settled);
            println!(
                "      {:>2}s: {} usage records, {} settled, {} tokens minted",
                t.elapsed().as_secs(),
                recs.len(),
                settled,
                chain.mint_supply(&pool.mint)
            );
        }
        tokio::time::sleep(cfg.interval).await;
    }
    println!(
        "\n      $ kubectl get trainingjobs,inferencejobs -o wide   (bert-finetune's simulated run has finished)"
    );
    println!(
        "{}",
        indent(&kubectl_get(
            &kubectl,
            &["get", "trainingjobs,inferencejobs", "-o", "wide"]
        )?)
    );
    // Stop the jobs, then settle what they used to the last second.
    kubectl.ok(&[
        "delete",
        "trainingjobs,inferencejobs",
        "--all",
        "-n",
        "default",
        "--wait=true",
        "--timeout=60s",
    ])?;
    let final_cfg = RunnerConfig {
        meter: MeterConfig {
            period_seconds: 5,
            finalize_delay_seconds: 0,
            ..Default::default()
        },
        ..cfg.clone()
    };
    tokio::time::sleep(Duration::from_secs(6)).await;
    pass(
        &op.ctx.metering(),
        Some(&ledger),
        &final_cfg,
        &mut totals,
        &stores,
    )
    .await?;
    pass(
        &op.ctx.metering(),
        Some(&ledger),
        &final_cfg,
        &mut totals,
        &stores,
    )
    .await?;

    println!("\n      $ kubectl get usagerecords (first 8 of them)");
    let get = kubectl.ok(&["get", "usagerecords"])?;
    println!(
        "{}",
        indent(&get.lines().take(9).collect::<Vec<_>>().join("\n"))
    );
    let recs = Api::<UsageRecord>::all(hub.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let mut per_cluster: BTreeMap<String, (i64, i64, usize, usize)> = BTreeMap::new();
    for r in &recs {
        let e = per_cluster.entry(r.spec.cluster.clone()).or_default();
        e.0 += r.spec.gpu_seconds;
        e.2 += 1;
        if let Some(s) = r.status.as_ref().filter(|s| s.state == UsageState::Settled) {
            e.1 += s.amount.unwrap_or(0);
            e.3 += 1;
        }
    }
    for (i, (name, _, _)) in MEMBERS.iter().enumerate() {
        let wallet = owners[i].pubkey().to_string();
        println!(
            "\n      Owner of {name}: $ gpupool earnings --wallet {wallet} --rpc-url {} --kubeconfig <hub>",
            rpc_server.url
        );
        let cli = std::env::current_exe()?.with_file_name("gpupool");
        let hub_kc = fed.hub.kubeconfig_path();
        let text = match std::process::Command::new(&cli)
            .args([
                "earnings",
                "--wallet",
                &wallet,
                "--rpc-url",
                &rpc_server.url,
                "--kubeconfig",
            ])
            .arg(&hub_kc)
            .output()
        {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            // Without the CLI binary (`cargo build -p gpupool-operator --bin gpupool`): the same report from the library.
            _ => format_report(
                &earnings_report(
                    Some(&hub),
                    chain.as_ref(),
                    &gpupool_ledger::ID,
                    &Selector::Wallet(owners[i].pubkey()),
                )
                .await?,
            ),
        };
        println!("{}", indent(&text));
    }
    let receipts_sum: i64 = per_cluster.values().map(|v| v.1).sum();
    println!("\n      Summary per member: GPU-seconds / tokens minted / records settled");
    for (c, (gs, amt, n, s)) in &per_cluster {
        let mode = if MEMBERS[PULL_MEMBER].0 == c.as_str() {
            "pull: joined with a join token, the hub holds no credential of it"
        } else {
            "push: the hub holds its kubeconfig"
        };
        println!("        {c} ({mode}): {gs} GPU-s, {amt} tokens, {s}/{n} records settled");
    }
    println!(
        "      mint supply {} == sum of settled receipts {}: {}",
        chain.mint_supply(&pool.mint),
        receipts_sum,
        if chain.mint_supply(&pool.mint) as i64 == receipts_sum {
            "yes"
        } else {
            "NO"
        }
    );

    println!(
        "\ncleaning up: stopping the operator, KWOK, API servers and etcd, removing their directories"
    );
    drop(op);
    join_controller.abort();
    if let Some(mut a) = agent {
        let _ = a.kill();
        let _ = a.wait();
    }
    drop(fed);
    println!(
        "done in {:.0}s; nothing left running.",
        t_all.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A binary of the operator crate next to this one, built (or brought up to date) on first use.
fn operator_binary(name: &str) -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("directory of the demo binary")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = std::process::Command::new(cargo)
        .args(["build", "-q", "-p", "gpupool-operator", "--bin", name])
        .current_dir(repo_root())
        .status()
        .with_context(|| format!("running cargo build for {name}"))?;
    anyhow::ensure!(
        st.success() && dir.join(name).exists(),
        "building {name} failed"
    );
    Ok(dir.join(name))
}

/// `gpupool …` against the hub, as a pool admin runs it.
fn gpupool_cli(fed: &Federation, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(operator_binary("gpupool")?)
        .args(args)
        .env("KUBECONFIG", fed.hub.kubeconfig_path())
        .output()
        .context("running gpupool")?;
    anyhow::ensure!(
        out.status.success(),
        "gpupool {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The pull member's agent: its own process, with only the member's kubeconfig and the hub's
/// address, CA and join token; its log goes to the member's directory.
fn start_agent(
    fed: &Federation,
    i: usize,
    name: &str,
    region: &str,
    owner: &Keypair,
    token: &str,
) -> Result<std::process::Child> {
    let m = &fed.members[i].cp;
    let log = std::fs::File::create(m.dir().join("member-agent.log"))?;
    std::process::Command::new(operator_binary("gpupool")?)
        .arg("member-agent")
        .args(["--hub-url", &fed.hub.server_url()])
        .arg("--hub-ca-file")
        .arg(fed.hub.dir().join("pki/ca.crt"))
        .args(["--member-name", name, "--region", region])
        .args(["--owner-wallet", &owner.pubkey().to_string()])
        .args(["--heartbeat-seconds", "2", "--report-seconds", "2"])
        .env("KUBECONFIG", m.kubeconfig_path())
        .env("GPUPOOL_JOIN_TOKEN", token)
        .env("RUST_LOG", "info,kube=warn")
        .stdout(std::process::Stdio::from(log.try_clone()?))
        .stderr(std::process::Stdio::from(log))
        .spawn()
        .context("starting the member agent")
}

/// The `kubectl-gpupool` plugin next to this binary in the target directory, built (or brought up
/// to date: a no-op when it is) on first use.
fn plugin_dir() -> Result<&'static std::path::Path> {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    if let Some(d) = DIR.get() {
        return Ok(d);
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("directory of the demo binary")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = std::process::Command::new(cargo)
        .args([
            "build",
            "-q",
            "-p",
            "gpupool-operator",
            "--bin",
            "kubectl-gpupool",
        ])
        .current_dir(repo_root())
        .status()
        .context("running cargo build for kubectl-gpupool")?;
    anyhow::ensure!(
        st.success() && dir.join("kubectl-gpupool").exists(),
        "building kubectl-gpupool failed"
    );
    Ok(DIR.get_or_init(|| dir.to_path_buf()))
}

/// `kubectl gpupool …` against the hub, run by kubectl itself (the plugin binary on PATH).
fn kubectl_gpupool(fed: &Federation, args: &[&str]) -> Result<String> {
    let path = format!(
        "{}:{}",
        plugin_dir()?.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new(gpupool_e2e::Tools::get()?.kubectl)
        .arg("gpupool")
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", fed.hub.kubeconfig_path())
        .output()
        .context("running kubectl gpupool")?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl gpupool {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kubectl get …` output, with anything kubectl said on stderr.
/// One line per gpupool pod: on a DRA member its ResourceClaim as the member's kube-scheduler
/// allocated it, checked against the GPUs the hub chose; on a device-plugin member the request.
async fn binding_report(member: &kube::Client, kind: MemberKind) -> Result<Vec<String>> {
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::resource::v1::ResourceClaim;
    let pods = Api::<Pod>::all(member.clone())
        .list(&ListParams::default().labels(gpupool::federation::labels::SELECTOR))
        .await?
        .items;
    let claims: BTreeMap<String, ResourceClaim> = Api::<ResourceClaim>::all(member.clone())
        .list(&ListParams::default().labels(gpupool::federation::labels::SELECTOR))
        .await?
        .items
        .into_iter()
        .map(|c| (c.name_any(), c))
        .collect();
    let mut out = Vec::new();
    for p in pods {
        let hub = gpupool::meta::assigned_gpus(&p.metadata);
        let node = gpupool::workloads::pod_node(&p)
            .unwrap_or_default()
            .to_string();
        let fixture = fixture_of(&node);
        let hub_ix = indexes_of(&node, fixture, &hub);
        if kind == MemberKind::Dra {
            let cn = gpupool::workloads::claim_name(&p.name_any());
            let results = claims
                .get(&cn)
                .and_then(|c| {
                    c.status
                        .as_ref()?
                        .allocation
                        .as_ref()?
                        .devices
                        .as_ref()?
                        .results
                        .clone()
                })
                .unwrap_or_default();
            let devices: Vec<String> = results.iter().map(|r| r.device.clone()).collect();
            let got: Vec<String> = results
                .iter()
                .filter_map(|r| r.device.strip_prefix("gpu-").map(String::from))
                .collect();
            let same = {
                let mut a = got.clone();
                a.sort();
                let mut b: Vec<String> = hub_ix.split(',').map(String::from).collect();
                b.sort();
                a == b && !a.is_empty()
            };
            out.push(format!(
                "pod {} -> ResourceClaim {cn} allocated by the member's kube-scheduler on {} to [{}]; hub chose GPUs [{hub_ix}]: {}",
                p.name_any(),
                results.first().map(|r| r.pool.as_str()).unwrap_or("(not yet)"),
                devices.join(","),
                if same { "identical" } else { "NOT the hub's choice" }
            ));
        } else {
            out.push(format!(
                "pod {} -> nvidia.com/gpu: {} on {node} (device plugin: the kubelet picks the devices; hub chose [{hub_ix}])",
                p.name_any(),
                hub.len()
            ));
        }
    }
    Ok(out)
}

fn kubectl_get(k: &gpupool_e2e::Kubectl, args: &[&str]) -> Result<String> {
    let o = k.run(args)?;
    anyhow::ensure!(
        o.success,
        "kubectl {} failed: {}",
        args.join(" "),
        o.stderr.trim()
    );
    Ok(format!("{}{}", o.stdout, o.stderr))
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("      {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
