//! What each pool command does against the hub: read, build the report (pure builders in
//! [`super::plugin`]), print in the requested format; `--watch` prints again on every change.

use super::output::{Output, View, emit};
use super::plugin::{self as reports, JobKind};
use super::{Command, GlobalArgs, JobScope, earnings, members};
use crate::api::{MemberCluster, UsageRecord};
use anyhow::{Context, Result, bail};
use futures::{FutureExt, StreamExt};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use std::io::Write as _;
use std::time::Duration;

/// A connection to the hub and the namespace jobs are looked up in by default.
pub struct Hub {
    /// Client of the hub's API server.
    pub client: Client,
    /// The context's namespace.
    pub namespace: String,
}

/// Connects to the hub with `--kubeconfig`/`--context` (or KUBECONFIG / in-cluster).
pub async fn connect(g: &GlobalArgs) -> Result<Hub> {
    let options = kube::config::KubeConfigOptions {
        context: g.context.clone(),
        ..Default::default()
    };
    let config = match &g.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None if g.context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .context("loading the kubeconfig context")?,
        None => kube::Config::infer()
            .await
            .context("no hub kubeconfig found (pass --kubeconfig)")?,
    };
    let namespace = config.default_namespace.clone();
    Ok(Hub {
        client: Client::try_from(config)?,
        namespace,
    })
}

/// Runs one command (see [`super::run`]).
pub async fn run(g: GlobalArgs, command: Command, mut app: clap::Command) -> Result<()> {
    match &command {
        Command::Completion { shell } => {
            let name = app.get_bin_name().unwrap_or("gpupool").to_string();
            clap_complete::generate(*shell, &mut app, name, &mut std::io::stdout());
            Ok(())
        }
        Command::Version { client: true } => print_out(&version(&g.output, None).await?),
        Command::Earnings(e) => print_out(&earnings_answer(&g, e).await?),
        Command::Escrow(e) => print_out(&super::escrow::escrow(e).await?),
        Command::Balance(b) => print_out(&super::escrow::balance_answer(&g, b).await?),
        _ => {
            let hub = connect(&g).await?;
            match &command {
                Command::Version { .. } => print_out(&version(&g.output, Some(&hub)).await?),
                c if c.watches() => watch(&hub, &g.output, c).await,
                c => print_out(&answer(&hub, &g.output, c).await?),
            }
        }
    }
}

fn print_out(s: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// One answer to a command that reads or changes the hub.
async fn answer(hub: &Hub, o: &Output, command: &Command) -> Result<String> {
    match command {
        Command::Why { job, scope } => why(hub, o, job, scope).await,
        Command::Where { job, scope } => where_(hub, o, job, scope).await,
        Command::Queue { namespace, .. } => queue(hub, o, namespace.as_deref()).await,
        Command::Members => list_members(hub, o).await,
        Command::Queues => list_queues(hub, o).await,
        Command::Approve { member } => {
            approval(hub, o, member, crate::api::Approval::Approved).await
        }
        Command::Deny { member } => approval(hub, o, member, crate::api::Approval::Denied).await,
        Command::Cordon { member } => members::set_schedulable(&hub.client, o, member, false).await,
        Command::Uncordon { member } => {
            members::set_schedulable(&hub.client, o, member, true).await
        }
        Command::Drain { member, timeout } => {
            members::drain(&hub.client, o, member, *timeout).await
        }
        Command::JoinToken(t) => members::token(&hub.client, o, t.clone()).await,
        Command::Earnings(_)
        | Command::Escrow(_)
        | Command::Balance(_)
        | Command::Version { .. }
        | Command::Completion { .. } => {
            unreachable!("answered without a hub connection")
        }
    }
}

/// `--watch`: prints the answer, then again each time a job (or member) changes and the answer
/// with it, until interrupted.
async fn watch(hub: &Hub, o: &Output, command: &Command) -> Result<()> {
    let mut changes = change_events(hub);
    let mut last = String::new();
    loop {
        let now = answer(hub, o, command).await?;
        if now != last {
            print_out(&now)?;
            last = now;
        }
        match changes.next().await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                eprintln!("warning: watching the hub: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            None => return Ok(()),
        }
        // A placement touches several objects at once: answer once for the burst.
        tokio::time::sleep(Duration::from_millis(200)).await;
        while let Some(Some(_)) = changes.next().now_or_never() {}
    }
}

/// One item per change of a TrainingJob, InferenceJob or MemberCluster anywhere in the hub.
fn change_events(
    hub: &Hub,
) -> futures::stream::BoxStream<'static, std::result::Result<(), watcher::Error>> {
    let stream = |ar: ApiResource| {
        let api: Api<DynamicObject> = Api::all_with(hub.client.clone(), &ar);
        watcher::watcher(api, watcher::Config::default())
            .filter_map(|ev| async move {
                match ev {
                    Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Some(Ok(())),
                    Ok(watcher::Event::InitDone) => Some(Ok(())),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                }
            })
            .boxed()
    };
    futures::stream::select_all([
        stream(JobKind::Training.resource()),
        stream(JobKind::Inference.resource()),
        stream(ApiResource::erase::<MemberCluster>(&())),
    ])
    .boxed()
}

fn job_name(kind: JobKind, doc: &Value) -> Vec<String> {
    vec![format!(
        "{}.gpupool.io/{}",
        kind.kind().to_ascii_lowercase(),
        doc["name"].as_str().unwrap_or("")
    )]
}

async fn why(hub: &Hub, o: &Output, job: &str, scope: &JobScope) -> Result<String> {
    let ns = scope.namespace.as_deref().unwrap_or(&hub.namespace);
    let (kind, obj) = get_job(&hub.client, ns, job).await?;
    let names: Vec<String> = member_objects(&hub.client)
        .await?
        .iter()
        .filter_map(|m| m.pointer("/metadata/name")?.as_str().map(String::from))
        .collect();
    let mut doc = reports::why_report(kind, &obj, &names);
    // The queue it submits to (when the hub has GpuQueues this user may read).
    let queues = gpu_queues(hub).await.unwrap_or_default();
    doc["queue"] = json!(super::queues::queue_of_job(&obj, &queues));
    emit(
        o,
        View {
            names: job_name(kind, &doc),
            doc: &doc,
            table: &|d, _| {
                let mut text = reports::format_why(d);
                if let Some(q) = d["queue"].as_str() {
                    text.push_str(&format!("Queue: {q} (kubectl gpupool queues)\n"));
                }
                text
            },
        },
    )
}

async fn gpu_queues(hub: &Hub) -> Result<Vec<crate::api::GpuQueue>> {
    let mut queues = Api::<crate::api::GpuQueue>::all(hub.client.clone())
        .list(&ListParams::default())
        .await
        .context("listing GpuQueues")?
        .items;
    queues.sort_by_key(|q| q.metadata.name.clone());
    Ok(queues)
}

async fn list_queues(hub: &Hub, o: &Output) -> Result<String> {
    let queues = gpu_queues(hub).await?;
    let doc = super::queues::queues_report(&queues);
    let names = queues
        .iter()
        .map(|q| {
            format!(
                "gpuqueue.gpupool.io/{}",
                q.metadata.name.as_deref().unwrap_or("")
            )
        })
        .collect();
    emit(
        o,
        View {
            names,
            doc: &doc,
            table: &super::queues::format_queues,
        },
    )
}

async fn where_(hub: &Hub, o: &Output, job: &str, scope: &JobScope) -> Result<String> {
    let ns = scope.namespace.as_deref().unwrap_or(&hub.namespace);
    let (kind, obj) = get_job(&hub.client, ns, job).await?;
    let doc = reports::where_report(kind, &obj);
    emit(
        o,
        View {
            names: job_name(kind, &doc),
            doc: &doc,
            table: &reports::format_where,
        },
    )
}

async fn queue(hub: &Hub, o: &Output, namespace: Option<&str>) -> Result<String> {
    let mut jobs = Vec::new();
    for kind in [JobKind::Training, JobKind::Inference] {
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(hub.client.clone(), ns, &kind.resource()),
            None => Api::all_with(hub.client.clone(), &kind.resource()),
        };
        for obj in api
            .list(&ListParams::default())
            .await
            .with_context(|| format!("listing {}s", kind.kind()))?
        {
            jobs.push((kind, serde_json::to_value(obj)?));
        }
    }
    let doc = reports::queue_report(&jobs);
    let names = doc["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|j| {
            format!(
                "{}.gpupool.io/{}",
                j["kind"].as_str().unwrap_or("").to_ascii_lowercase(),
                j["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    emit(
        o,
        View {
            names,
            doc: &doc,
            table: &reports::format_queue,
        },
    )
}

async fn list_members(hub: &Hub, o: &Output) -> Result<String> {
    let mut members = member_objects(&hub.client).await?;
    let records = Api::<UsageRecord>::all(hub.client.clone())
        .list(&ListParams::default())
        .await
        .context("listing UsageRecords")?
        .items;
    let name = |m: &Value| {
        m.pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(String::from)
    };
    members.sort_by_key(name);
    let doc = reports::members_report(&members, &records);
    emit(
        o,
        View {
            names: member_names(&doc["members"]),
            doc: &doc,
            table: &reports::format_members,
        },
    )
}

/// `membercluster.gpupool.io/NAME` for each `{"name": ...}` in a list.
pub fn member_names(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["name"].as_str())
        .map(|n| format!("membercluster.gpupool.io/{n}"))
        .collect()
}

async fn approval(
    hub: &Hub,
    o: &Output,
    member: &str,
    approval: crate::api::Approval,
) -> Result<String> {
    crate::join::admin::set_approval(&hub.client, member, approval).await?;
    let doc = json!({"member": member, "approval": approval.to_string()});
    emit(
        o,
        View {
            names: vec![format!("membercluster.gpupool.io/{member}")],
            doc: &doc,
            table: &|d, _| {
                format!(
                    "member {}: {}\n",
                    d["member"].as_str().unwrap_or(""),
                    d["approval"].as_str().unwrap_or("")
                )
            },
        },
    )
}

async fn earnings_answer(g: &GlobalArgs, e: &earnings::EarningsArgs) -> Result<String> {
    let report = earnings::report_for_args(e, g).await?;
    let doc = reports::earnings_json(&report);
    let names = report
        .clusters
        .iter()
        .map(|c| format!("membercluster.gpupool.io/{}", c.cluster))
        .collect();
    emit(
        &g.output,
        View {
            names,
            doc: &doc,
            table: &|_, _| earnings::format_report(&report),
        },
    )
}

async fn version(o: &Output, hub: Option<&Hub>) -> Result<String> {
    let mut doc = json!({"client": {"version": env!("CARGO_PKG_VERSION")}});
    if let Some(hub) = hub {
        let v = hub
            .client
            .apiserver_version()
            .await
            .context("asking the hub API server for its version")?;
        doc["hub"] = json!({"kubernetes": v.git_version});
    }
    emit(
        o,
        View {
            names: vec![],
            doc: &doc,
            table: &|d, _| {
                let mut s = format!(
                    "gpupool {}\n",
                    d["client"]["version"].as_str().unwrap_or("")
                );
                if let Some(k) = d["hub"]["kubernetes"].as_str() {
                    s.push_str(&format!("hub Kubernetes {k}\n"));
                }
                s
            },
        },
    )
}

/// Reads a job by reference, trying both kinds for a bare name.
async fn get_job(client: &Client, ns: &str, job: &str) -> Result<(JobKind, Value)> {
    let (kind, name) = reports::parse_job_ref(job)?;
    let kinds = match kind {
        Some(k) => vec![k],
        None => vec![JobKind::Training, JobKind::Inference],
    };
    let mut found = Vec::new();
    for k in kinds {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &k.resource());
        if let Some(o) = api
            .get_opt(&name)
            .await
            .with_context(|| format!("reading {} {ns}/{name}", k.kind()))?
        {
            found.push((k, serde_json::to_value(o)?));
        }
    }
    match found.len() {
        0 => bail!("no TrainingJob or InferenceJob named {name:?} in namespace {ns:?}"),
        1 => Ok(found.remove(0)),
        _ => bail!(
            "both a TrainingJob and an InferenceJob are named {name:?}: say which, e.g. tj/{name} or ij/{name}"
        ),
    }
}

async fn member_objects(client: &Client) -> Result<Vec<Value>> {
    let api: Api<DynamicObject> =
        Api::all_with(client.clone(), &ApiResource::erase::<MemberCluster>(&()));
    api.list(&ListParams::default())
        .await
        .context("listing MemberClusters")?
        .items
        .into_iter()
        .map(|o| Ok(serde_json::to_value(o)?))
        .collect()
}
