//! gpupool node agent: publishes this node's GPUs and their NVLink/NVSwitch/PCIe links as a
//! `GpuTopology`, read from NVML or (on simulated nodes) from a topology file.

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use gpupool::agent::{self, Reading};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Yaml,
    Json,
}

/// Publishes this node's GPU topology (GPUs, NVLink/NVSwitch/PCIe links, GPUs in use) as a
/// GpuTopology object named after the node.
#[derive(Parser, Debug)]
#[command(name = "gpupool-agent", version)]
struct Args {
    /// Name of this node (the GpuTopology gets the same name and is owned by the Node).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Read the topology from this file (a GpuTopologySpec or a whole GpuTopology) instead of NVML.
    #[arg(long, value_name = "FILE")]
    topology_file: Option<PathBuf>,
    /// Print the topology to stdout and exit; talk to no API server.
    #[arg(long)]
    print: bool,
    /// Output format for --print.
    #[arg(long, value_enum, default_value = "yaml")]
    format: Format,
    /// Publish once and exit.
    #[arg(long)]
    once: bool,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 30)]
    interval: u64,
    /// Also publish the GPUs as a ResourceSlice of NVIDIA's DRA driver (`gpu.nvidia.com`).
    /// SIMULATION for nodes without the driver (KWOK nodes in tests and demos): nothing prepares
    /// the devices on the node. Never use it where NVIDIA's DRA driver runs.
    #[arg(long)]
    simulate_dra: bool,
    /// The kubelet's pod-resources socket: when it exists, the `nvidia.com/gpu` devices the
    /// kubelet gave each pod are published (and counted in use). Absent on simulated nodes.
    #[arg(long, value_name = "SOCKET", default_value = agent::pod_resources::DEFAULT_SOCKET)]
    pod_resources_socket: PathBuf,
    /// Kubeconfig to use (default: in-cluster config or $KUBECONFIG).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Serve /healthz, /readyz and /metrics on this address (e.g. 0.0.0.0:8081).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
}

/// Adds what the kubelet says each pod got, when its pod-resources socket is there.
async fn with_kubelet_devices(args: &Args, mut r: Reading) -> Reading {
    let sock = &args.pod_resources_socket;
    if !sock.exists() {
        tracing::debug!(socket = %sock.display(), "no kubelet pod-resources socket; not reading device assignments");
        return r;
    }
    match agent::pod_resources::list(sock).await {
        Ok(resp) => r.pod_devices = agent::pod_resources::gpu_assignments(&resp),
        Err(e) => tracing::warn!("reading the kubelet's device assignments failed: {e:#}"),
    }
    r
}

fn read(args: &Args) -> Result<Reading> {
    if let Some(f) = &args.topology_file {
        return agent::read_topology_file(f, args.node_name.as_deref());
    }
    let nvml = agent::nvml::init()?;
    let node = match &args.node_name {
        Some(n) => n.clone(),
        None => hostname(),
    };
    agent::nvml::read(&nvml, &node).context("reading GPUs through NVML")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

async fn client(args: &Args) -> Result<kube::Client> {
    Ok(match &args.kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .with_context(|| format!("reading kubeconfig {}", p.display()))?;
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
            kube::Client::try_from(cfg)?
        }
        None => kube::Client::try_default()
            .await
            .context("no kubeconfig and not running in a cluster")?,
    })
}

/// Publishes the GpuTopology (and, simulating DRA, the ResourceSlice).
async fn publish(client: &kube::Client, args: &Args, reading: &Reading) -> Result<()> {
    agent::publish(client, reading).await?;
    if args.simulate_dra {
        agent::dra::publish_simulated_slice(client, &reading.spec).await?;
    }
    Ok(())
}

async fn run(args: Args) -> Result<()> {
    let reading = with_kubelet_devices(&args, read(&args)?).await;
    if args.print {
        let mut t = gpupool::api::GpuTopology::new(&reading.spec.node_name, reading.spec.clone());
        t.status = Some(gpupool::api::GpuTopologyStatus {
            gpu_count: reading.spec.gpus.len() as i32,
            gpus_in_use: reading.in_use.clone(),
            last_update_time: None,
            pod_devices: reading.pod_devices.clone(),
        });
        let out = match args.format {
            Format::Yaml => serde_yaml::to_string(&t)?,
            Format::Json => serde_json::to_string_pretty(&t)? + "\n",
        };
        print!("{out}");
        return Ok(());
    }
    if args.node_name.is_none() && args.topology_file.is_some() && reading.spec.node_name.is_empty()
    {
        bail!("no node name: pass --node-name or set NODE_NAME");
    }
    let client = client(&args).await?;
    let health = agent::health::AgentHealth::new(Duration::from_secs(args.interval.max(1)));
    let _server = health.probes().spawn_server(args.metrics_addr).await?;
    let mut reading = reading;
    loop {
        if let Err(e) = publish(&client, &args, &reading).await {
            health.failed();
            return Err(e);
        }
        health.published(reading.spec.gpus.len());
        tracing::info!(node = %reading.spec.node_name, gpus = reading.spec.gpus.len(), in_use = reading.in_use.len(), "published GpuTopology");
        if args.once {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(args.interval.max(1))).await;
        match read(&args) {
            Ok(r) => reading = with_kubelet_devices(&args, r).await,
            Err(e) => {
                health.failed();
                tracing::warn!("re-reading the topology failed, publishing the last one: {e:#}")
            }
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(n) = e.downcast_ref::<agent::nvml::NvmlUnavailable>() {
                eprintln!("{n}");
                return ExitCode::from(3);
            }
            eprintln!("gpupool-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
