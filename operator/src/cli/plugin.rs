//! `kubectl gpupool`: answers "why is my job waiting", "where did it go", "what does the pool
//! hold" and "what did this member earn" from the hub's objects, as tables, JSON or YAML.
//!
//! Jobs are read as untyped JSON so that status fields newer than this build (or older) are shown
//! when present and skipped when absent. The report builders are pure; IO is in [`run`].

use crate::api::{MemberCluster, UsageRecord};
use crate::cli::earnings::{self, EarningsArgs};
use anyhow::{Context, Result, bail};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;

/// `kubectl gpupool` arguments.
#[derive(clap::Parser, Debug)]
#[command(
    name = "kubectl-gpupool",
    bin_name = "kubectl gpupool",
    version,
    about = "Ask the gpupool hub why a job waits, where it runs, what the pool holds and what members earned"
)]
pub struct PluginArgs {
    /// Kubeconfig of the hub cluster (default: KUBECONFIG / ~/.kube/config / in-cluster).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace of the job (default: the context's namespace).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Namespace of the operator (holds member kubeconfig Secrets that name no namespace).
    #[arg(
        long,
        global = true,
        env = "GPUPOOL_NAMESPACE",
        default_value = "gpupool-system"
    )]
    pub operator_namespace: String,
    #[command(subcommand)]
    pub command: PluginCommand,
}

/// Output formats.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Human-readable table.
    Table,
    /// JSON document.
    Json,
    /// YAML document.
    Yaml,
}

/// Subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum PluginCommand {
    /// Why a job is waiting: phase, queue position, and why each member does not fit.
    Why {
        /// `NAME`, or `trainingjob/NAME` / `tj/NAME` / `inferencejob/NAME` / `ij/NAME`.
        job: String,
    },
    /// Where a job runs: member, node, GPU indexes and topology score per worker or replica.
    Where {
        /// `NAME`, or `trainingjob/NAME` / `tj/NAME` / `inferencejob/NAME` / `ij/NAME`.
        job: String,
        /// Do not read GPU indexes from the members (shows GPU UUIDs only).
        #[arg(long)]
        no_member_lookup: bool,
    },
    /// Member clusters: readiness, capacity, free NVLink islands, owner and what they earned.
    Members,
    /// GPU-seconds and tokens earned by a wallet or member cluster (`gpupool earnings`).
    Earnings(EarningsArgs),
    /// Let a pull member that asked to join into the pool (`gpupool approve`).
    Approve {
        /// MemberCluster name.
        member: String,
    },
    /// Refuse or revoke a member: its hub credential is withdrawn (`gpupool deny`).
    Deny {
        /// MemberCluster name.
        member: String,
    },
}

/// The two job kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// `TrainingJob`.
    Training,
    /// `InferenceJob`.
    Inference,
}

impl JobKind {
    fn resource(self) -> ApiResource {
        match self {
            JobKind::Training => ApiResource::erase::<crate::api::TrainingJob>(&()),
            JobKind::Inference => ApiResource::erase::<crate::api::InferenceJob>(&()),
        }
    }

    /// Kind name as the API spells it.
    pub fn kind(self) -> &'static str {
        match self {
            JobKind::Training => "TrainingJob",
            JobKind::Inference => "InferenceJob",
        }
    }
}

/// Splits `kind/name`; `None` kind means "whichever kind has that name".
pub fn parse_job_ref(s: &str) -> Result<(Option<JobKind>, String)> {
    match s.split_once('/') {
        None if !s.is_empty() => Ok((None, s.to_string())),
        Some((k, n)) if !n.is_empty() && !n.contains('/') => {
            let kind = match k.to_ascii_lowercase().as_str() {
                "tj"
                | "trainingjob"
                | "trainingjobs"
                | "trainingjob.gpupool.io"
                | "trainingjobs.gpupool.io" => JobKind::Training,
                "ij"
                | "inferencejob"
                | "inferencejobs"
                | "inferencejob.gpupool.io"
                | "inferencejobs.gpupool.io" => JobKind::Inference,
                other => bail!(
                    "unknown job kind {other:?}: use trainingjob/NAME (tj/NAME) or inferencejob/NAME (ij/NAME)"
                ),
            };
            Ok((Some(kind), n.to_string()))
        }
        _ => bail!("{s:?} is not a job: pass NAME or KIND/NAME"),
    }
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// The condition that says the job cannot be placed (type `Unschedulable`, or any condition
/// whose reason is `Unschedulable`, as long as it is not resolved).
fn unschedulable_condition(job: &Value) -> Option<&Value> {
    job.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| {
            let ty = c["type"].as_str().unwrap_or("");
            let reason = c["reason"].as_str().unwrap_or("");
            let status = c["status"].as_str().unwrap_or("");
            (ty == "Unschedulable" && status == "True")
                || (reason == "Unschedulable" && status == "False")
        })
}

/// Splits a "member-a: reason; member-b: reason" message into per-member reasons; parts that do
/// not start with a known member's name are pool-wide (key `""`).
pub fn reasons_by_member(message: &str, members: &[String]) -> Vec<(String, String)> {
    // "; " inside parentheses belongs to one member's reason (its per-node details).
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in message.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ';' if depth <= 0 && message[i..].starts_with("; ") => {
                parts.push(&message[start..i]);
                start = i + 2;
            }
            _ => {}
        }
    }
    parts.push(&message[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            match part
                .split_once(": ")
                .filter(|(m, _)| members.iter().any(|x| x == m))
            {
                Some((m, r)) => (m.to_string(), r.to_string()),
                None => (String::new(), part.to_string()),
            }
        })
        .collect()
}

/// `why`: what the job is waiting for, as a JSON document.
pub fn why_report(kind: JobKind, job: &Value, members: &[String]) -> Value {
    let phase = str_at(job, "/status/phase").unwrap_or("Pending");
    let cond = unschedulable_condition(job);
    let message = cond.and_then(|c| c["message"].as_str()).map(str::to_string);
    let reasons: Vec<Value> = message
        .as_deref()
        .map(|m| reasons_by_member(m, members))
        .unwrap_or_default()
        .into_iter()
        .map(|(m, r)| json!({"member": if m.is_empty() { Value::Null } else { json!(m) }, "reason": r}))
        .collect();
    let placed: Vec<String> = match kind {
        JobKind::Training => str_at(job, "/status/cluster")
            .into_iter()
            .map(String::from)
            .collect(),
        JobKind::Inference => job
            .pointer("/status/placements")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["cluster"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
    };
    json!({
        "kind": kind.kind(),
        "namespace": str_at(job, "/metadata/namespace"),
        "name": str_at(job, "/metadata/name"),
        "phase": phase,
        "queuePosition": job.pointer("/status/queuePosition").cloned().unwrap_or(Value::Null),
        "pendingReason": job.pointer("/status/pendingReason").cloned().unwrap_or(Value::Null),
        "unschedulable": cond.is_some(),
        "since": cond.and_then(|c| c["lastTransitionTime"].as_str()),
        "message": message.or_else(|| str_at(job, "/status/message").map(String::from)),
        "reasons": reasons,
        "placedOn": placed,
    })
}

/// Renders a `why` document as text.
pub fn format_why(r: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {}/{}: {}",
        r["kind"].as_str().unwrap_or(""),
        r["namespace"].as_str().unwrap_or(""),
        r["name"].as_str().unwrap_or(""),
        r["phase"].as_str().unwrap_or("")
    );
    if let Some(q) = r["queuePosition"].as_i64() {
        let _ = writeln!(out, "Queue position: {q}");
    }
    if let Some(p) = r["pendingReason"].as_str() {
        let _ = writeln!(out, "Pending reason: {p}");
    }
    let placed: Vec<&str> = r["placedOn"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if r["unschedulable"] == true {
        let since = r["since"]
            .as_str()
            .map(|s| format!(" (since {s})"))
            .unwrap_or_default();
        let _ = writeln!(out, "Unschedulable{since}: no member fits it now.");
        let rows: Vec<Vec<String>> = r["reasons"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| {
                vec![
                    x["member"].as_str().unwrap_or("(pool)").to_string(),
                    x["reason"].as_str().unwrap_or("").to_string(),
                ]
            })
            .collect();
        if !rows.is_empty() {
            out.push('\n');
            out.push_str(&table(&["MEMBER", "WHY IT DOES NOT FIT"], &rows));
        }
    } else if !placed.is_empty() {
        let _ = writeln!(
            out,
            "Placed on {}: see `kubectl gpupool where {}/{}`.",
            placed.join(", "),
            r["kind"].as_str().unwrap_or("").to_ascii_lowercase(),
            r["name"].as_str().unwrap_or("")
        );
    } else if let Some(m) = r["message"].as_str() {
        let _ = writeln!(out, "{m}");
    } else {
        let _ = writeln!(
            out,
            "Not placed yet and no reason recorded: the operator has not decided."
        );
    }
    out
}

/// `where`: one row per worker (TrainingJob) or replica (InferenceJob). `indexes` maps a GPU UUID
/// to its index on its node, where the member could be read.
pub fn where_report(kind: JobKind, job: &Value, indexes: &HashMap<String, i64>) -> Value {
    let gpus = |uuids: &Value| -> Value {
        let list: Vec<&str> = uuids
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        json!({
            "indexes": list.iter().map(|u| indexes.get(*u).copied()).collect::<Option<Vec<i64>>>(),
            "uuids": list,
        })
    };
    let mut rows = Vec::new();
    match kind {
        JobKind::Training => {
            let cluster = str_at(job, "/status/cluster");
            for w in job
                .pointer("/status/workers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                rows.push(json!({
                    "worker": format!("rank {}", w["rank"].as_i64().unwrap_or(0)),
                    "member": cluster,
                    "node": w["node"],
                    "gpus": gpus(&w["gpuUuids"]),
                    "score": w["score"],
                    "podPhase": w.get("podPhase").cloned().unwrap_or(Value::Null),
                }));
            }
        }
        JobKind::Inference => {
            for p in job
                .pointer("/status/placements")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let replicas = p["replicas"].as_array().cloned().unwrap_or_default();
                for (i, g) in p["gpus"].as_array().into_iter().flatten().enumerate() {
                    rows.push(json!({
                        "worker": match replicas.get(i).and_then(Value::as_i64) {
                            Some(r) => format!("replica {r}"),
                            None => format!("replica #{i}"),
                        },
                        "member": p["cluster"],
                        "node": g["node"],
                        "gpus": gpus(&g["gpuUuids"]),
                        "score": g["score"],
                        "podPhase": Value::Null,
                    }));
                }
            }
        }
    }
    json!({
        "kind": kind.kind(),
        "namespace": str_at(job, "/metadata/namespace"),
        "name": str_at(job, "/metadata/name"),
        "phase": str_at(job, "/status/phase"),
        "placements": rows,
    })
}

/// Renders a `where` document as text.
pub fn format_where(r: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {}/{}: {}",
        r["kind"].as_str().unwrap_or(""),
        r["namespace"].as_str().unwrap_or(""),
        r["name"].as_str().unwrap_or(""),
        r["phase"].as_str().unwrap_or("Pending")
    );
    let rows: Vec<Vec<String>> = r["placements"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let g = &p["gpus"];
            let gpus = match g["indexes"].as_array() {
                Some(ix) => ix
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                None => g["uuids"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default(),
            };
            vec![
                p["worker"].as_str().unwrap_or("").to_string(),
                p["member"].as_str().unwrap_or("").to_string(),
                p["node"].as_str().unwrap_or("").to_string(),
                gpus,
                p["score"]
                    .as_i64()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                p["podPhase"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        let _ = writeln!(
            out,
            "Not placed. Ask why: kubectl gpupool why {}/{}",
            r["kind"].as_str().unwrap_or("").to_ascii_lowercase(),
            r["name"].as_str().unwrap_or("")
        );
    } else {
        out.push_str(&table(
            &["WORKER", "MEMBER", "NODE", "GPUS", "SCORE", "POD"],
            &rows,
        ));
    }
    out
}

/// `members`: one entry per MemberCluster, with what its hub records say it earned.
pub fn members_report(members: &[Value], records: &[UsageRecord]) -> Value {
    let mut rows = Vec::new();
    for m in members {
        let name = str_at(m, "/metadata/name").unwrap_or("");
        let cond = |t: &str| {
            m.pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| c["type"] == t))
                .and_then(|c| c["status"].as_str())
                .unwrap_or("Unknown")
                .to_string()
        };
        let cap = m.pointer("/status/capacity").cloned().unwrap_or(json!({}));
        let tally = earnings::hub_tally(name, records);
        rows.push(json!({
            "name": name,
            "ready": cond("Ready"),
            "schedulable": m.pointer("/spec/schedulable").cloned().unwrap_or(json!(true)),
            "region": m.pointer("/spec/region"),
            "owner": m.pointer("/spec/ownerWallet"),
            "bindingMode": m.pointer("/status/bindingMode"),
            "nodes": cap.get("nodes"),
            "gpusTotal": cap.get("gpusTotal"),
            "gpusFree": cap.get("gpusFree"),
            "byModel": cap.get("byModel"),
            "freeNvlinkIslands": cap.get("largestFreeNvlinkCliques"),
            "earned": {
                "settledGpuSeconds": tally.settled_gpu_seconds,
                "settledTokens": tally.settled_tokens,
                "unsettledGpuSeconds": tally.final_gpu_seconds,
                "openGpuSeconds": tally.open_gpu_seconds,
                "records": tally.records,
            },
        }));
    }
    json!({ "members": rows })
}

/// Renders a `members` document as text.
pub fn format_members(r: &Value) -> String {
    let rows: Vec<Vec<String>> = r["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let n = |k: &str| m[k].as_i64().map(|v| v.to_string()).unwrap_or("-".into());
            let models = m["byModel"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| {
                            format!(
                                "{}:{}/{}",
                                x["model"].as_str().unwrap_or("?"),
                                x["free"].as_i64().unwrap_or(0),
                                x["total"].as_i64().unwrap_or(0)
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let islands = match &m["freeNvlinkIslands"] {
                Value::Array(a) => a
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                Value::Null => "-".into(),
                v => v.to_string(),
            };
            vec![
                m["name"].as_str().unwrap_or("").to_string(),
                m["ready"].as_str().unwrap_or("").to_string(),
                if m["schedulable"] == false {
                    "no"
                } else {
                    "yes"
                }
                .to_string(),
                m["region"].as_str().unwrap_or("").to_string(),
                n("nodes"),
                format!("{}/{}", n("gpusFree"), n("gpusTotal")),
                models,
                islands,
                m["bindingMode"].as_str().unwrap_or("-").to_string(),
                m["owner"].as_str().unwrap_or("").to_string(),
                format!(
                    "{} GPU-s / {} tokens",
                    m["earned"]["settledGpuSeconds"].as_i64().unwrap_or(0),
                    m["earned"]["settledTokens"].as_i64().unwrap_or(0)
                ),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "No member clusters registered.\n".into();
    }
    table(
        &[
            "NAME",
            "READY",
            "SCHEDULABLE",
            "REGION",
            "NODES",
            "FREE/GPUS",
            "MODELS (FREE/TOTAL)",
            "FREE NVLINK",
            "BINDING",
            "OWNER",
            "EARNED (SETTLED)",
        ],
        &rows,
    )
}

/// Left-aligned columns separated by three spaces, like `kubectl get`.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("   ")
            .trim_end()
            .to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// The earnings report as a JSON document (for `-o json|yaml`).
pub fn earnings_json(r: &earnings::EarningsReport) -> Value {
    json!({
        "ledger": r.ledger,
        "mint": r.mint.map(|m| m.to_string()),
        "decimals": r.decimals,
        "clusters": r.clusters.iter().map(|c| json!({
            "cluster": c.cluster,
            "hubOwner": c.hub_owner,
            "chain": c.chain.as_ref().map(|ch| json!({
                "owner": ch.owner.to_string(),
                "gpuSeconds": ch.gpu_seconds,
                "tokens": ch.tokens,
                "receipts": ch.receipts,
            })),
            "settledGpuSeconds": c.settled_gpu_seconds,
            "settledTokens": c.settled_tokens,
            "unsettledGpuSeconds": c.final_gpu_seconds,
            "openGpuSeconds": c.open_gpu_seconds,
            "records": c.records,
        })).collect::<Vec<_>>(),
        "balances": r.balances.iter().map(|(w, b)| json!({"wallet": w.to_string(), "tokens": b})).collect::<Vec<_>>(),
        "notes": r.notes,
    })
}

fn emit(output: Output, doc: &Value, text: impl FnOnce(&Value) -> String) -> Result<String> {
    Ok(match output {
        Output::Table => text(doc),
        Output::Json => format!("{}\n", serde_json::to_string_pretty(doc)?),
        Output::Yaml => serde_yaml::to_string(doc)?,
    })
}

struct Hub {
    client: Client,
    namespace: String,
}

async fn connect(args: &PluginArgs) -> Result<Hub> {
    let options = kube::config::KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None if args.context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .context("loading the kubeconfig context")?,
        None => kube::Config::infer()
            .await
            .context("no hub kubeconfig found (pass --kubeconfig)")?,
    };
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    Ok(Hub {
        client: Client::try_from(config)?,
        namespace,
    })
}

/// Reads a job by reference, trying both kinds for a bare name.
async fn get_job(hub: &Hub, job: &str) -> Result<(JobKind, Value)> {
    let (kind, name) = parse_job_ref(job)?;
    let kinds = match kind {
        Some(k) => vec![k],
        None => vec![JobKind::Training, JobKind::Inference],
    };
    let mut found = Vec::new();
    for k in kinds {
        let api: Api<DynamicObject> =
            Api::namespaced_with(hub.client.clone(), &hub.namespace, &k.resource());
        if let Some(o) = api
            .get_opt(&name)
            .await
            .with_context(|| format!("reading {} {}/{name}", k.kind(), hub.namespace))?
        {
            found.push((k, serde_json::to_value(o)?));
        }
    }
    match found.len() {
        0 => bail!(
            "no TrainingJob or InferenceJob named {name:?} in namespace {:?}",
            hub.namespace
        ),
        1 => Ok(found.remove(0)),
        _ => bail!(
            "both a TrainingJob and an InferenceJob are named {name:?}: say which, e.g. tj/{name} or ij/{name}"
        ),
    }
}

async fn member_objects(hub: &Hub) -> Result<Vec<Value>> {
    let api: Api<DynamicObject> = Api::all_with(
        hub.client.clone(),
        &ApiResource::erase::<MemberCluster>(&()),
    );
    api.list(&ListParams::default())
        .await
        .context("listing MemberClusters")?
        .items
        .into_iter()
        .map(|o| Ok(serde_json::to_value(o)?))
        .collect()
}

/// GPU UUID → index on its node, from the GpuTopology objects of the given members. Reading a
/// push member needs the hub's kubeconfig Secret for it (a pull member's come from its agent's
/// reports on the hub); members that cannot be read are skipped
/// (returned with the reason) and their GPUs are shown by UUID.
async fn gpu_indexes(
    hub: &Hub,
    operator_namespace: &str,
    members: &[String],
) -> (HashMap<String, i64>, Vec<String>) {
    let mut out = HashMap::new();
    let mut notes = Vec::new();
    let mcs: Api<MemberCluster> = Api::all(hub.client.clone());
    for name in members {
        let res: Result<()> = async {
            let mc = mcs.get(name).await.context("reading the MemberCluster")?;
            // A pull member's topologies are in its agent's reports on the hub.
            let Some(r) = mc.spec.kubeconfig_ref() else {
                let ns = crate::join::names::member_namespace(name);
                let reports = Api::<crate::api::MemberReport>::namespaced(hub.client.clone(), &ns)
                    .list(&ListParams::default())
                    .await
                    .with_context(|| format!("listing the MemberReports in {ns}"))?;
                for r in crate::pull::current_report(&reports.items) {
                    for t in r.spec.nodes.iter().filter_map(|n| n.topology.as_ref()) {
                        for g in &t.gpus {
                            out.insert(g.uuid.clone(), g.index as i64);
                        }
                    }
                }
                return Ok(());
            };
            let ns = r.namespace.as_deref().unwrap_or(operator_namespace);
            let secrets: Api<k8s_openapi::api::core::v1::Secret> =
                Api::namespaced(hub.client.clone(), ns);
            let s = secrets
                .get(&r.name)
                .await
                .with_context(|| format!("reading Secret {ns}/{}", r.name))?;
            let text = s
                .data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .with_context(|| format!("Secret {ns}/{} has no key {}", r.name, r.key))?;
            let client =
                crate::federation::client_from_kubeconfig(&text, std::time::Duration::from_secs(5))
                    .await
                    .map_err(anyhow::Error::msg)?;
            let topos = Api::<crate::api::GpuTopology>::all(client)
                .list(&ListParams::default())
                .await
                .context("listing GpuTopology objects")?;
            for t in topos.items {
                for g in &t.spec.gpus {
                    out.insert(g.uuid.clone(), g.index as i64);
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = res {
            notes.push(format!(
                "{name}: GPU indexes unavailable ({e:#}); showing UUIDs"
            ));
        }
    }
    (out, notes)
}

/// Runs one `kubectl gpupool` command and returns what it prints.
pub async fn run(args: PluginArgs) -> Result<String> {
    if let PluginCommand::Earnings(e) = &args.command {
        let mut e = e.clone();
        if e.kubeconfig.is_none() {
            e.kubeconfig = args.kubeconfig.clone();
        }
        let report = earnings::report_for_args(&e).await?;
        return emit(args.output, &earnings_json(&report), |_| {
            earnings::format_report(&report)
        });
    }
    let hub = connect(&args).await?;
    match &args.command {
        PluginCommand::Why { job } => {
            let (kind, obj) = get_job(&hub, job).await?;
            let members: Vec<String> = member_objects(&hub)
                .await?
                .iter()
                .filter_map(|m| str_at(m, "/metadata/name").map(String::from))
                .collect();
            emit(args.output, &why_report(kind, &obj, &members), format_why)
        }
        PluginCommand::Where {
            job,
            no_member_lookup,
        } => {
            let (kind, obj) = get_job(&hub, job).await?;
            let first = where_report(kind, &obj, &HashMap::new());
            let mut used: Vec<String> = first["placements"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["member"].as_str().map(String::from))
                .collect();
            used.sort();
            used.dedup();
            let (indexes, notes) = if *no_member_lookup || used.is_empty() {
                (HashMap::new(), Vec::new())
            } else {
                gpu_indexes(&hub, &args.operator_namespace, &used).await
            };
            let mut doc = where_report(kind, &obj, &indexes);
            doc["notes"] = json!(notes);
            emit(args.output, &doc, |d| {
                let mut s = format_where(d);
                for n in d["notes"].as_array().into_iter().flatten() {
                    let _ = writeln!(s, "note: {}", n.as_str().unwrap_or(""));
                }
                s
            })
        }
        PluginCommand::Members => {
            let members = member_objects(&hub).await?;
            let records = Api::<UsageRecord>::all(hub.client.clone())
                .list(&ListParams::default())
                .await
                .context("listing UsageRecords")?
                .items;
            let mut sorted = members;
            sorted.sort_by(|a, b| str_at(a, "/metadata/name").cmp(&str_at(b, "/metadata/name")));
            emit(
                args.output,
                &members_report(&sorted, &records),
                format_members,
            )
        }
        PluginCommand::Approve { member } | PluginCommand::Deny { member } => {
            let approval = if matches!(args.command, PluginCommand::Approve { .. }) {
                crate::api::Approval::Approved
            } else {
                crate::api::Approval::Denied
            };
            crate::join::admin::set_approval(&hub.client, member, approval).await?;
            emit(
                args.output,
                &json!({"member": member, "approval": approval.to_string()}),
                |d| {
                    format!(
                        "member {}: {}\n",
                        d["member"].as_str().unwrap_or(""),
                        d["approval"].as_str().unwrap_or("")
                    )
                },
            )
        }
        PluginCommand::Earnings(_) => unreachable!("handled above"),
    }
}

/// Names of the members a `why` document blames, in order (tests, scripting).
pub fn blamed_members(r: &Value) -> BTreeMap<String, String> {
    r["reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| {
            Some((
                x["member"].as_str()?.to_string(),
                x["reason"].as_str()?.to_string(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members() -> Vec<String> {
        vec!["east".into(), "west".into()]
    }

    #[test]
    fn job_references_name_the_kind_or_not() {
        assert_eq!(parse_job_ref("llm").unwrap(), (None, "llm".into()));
        assert_eq!(
            parse_job_ref("tj/llm").unwrap(),
            (Some(JobKind::Training), "llm".into())
        );
        assert_eq!(
            parse_job_ref("InferenceJobs.gpupool.io/chat").unwrap(),
            (Some(JobKind::Inference), "chat".into())
        );
        assert!(
            parse_job_ref("pod/x")
                .unwrap_err()
                .to_string()
                .contains("unknown job kind")
        );
        assert!(parse_job_ref("tj/").is_err() && parse_job_ref("").is_err());
    }

    #[test]
    fn why_splits_the_unschedulable_message_per_member() {
        let job = json!({
            "metadata": {"name": "big", "namespace": "ml"},
            "status": {
                "phase": "Pending",
                "queuePosition": 3,
                "pendingReason": "Unschedulable",
                "conditions": [
                    {"type": "Scheduled", "status": "False", "reason": "Unschedulable",
                     "lastTransitionTime": "2026-01-01T00:00:00Z",
                     "message": "east: only 8 free GPUs on the largest node, 16 needed; west: 0 of 1 pods fit (n1: has 8 GPUs; the request needs 16, n2: model L40S); no member in region eu"}
                ]
            }
        });
        let r = why_report(JobKind::Training, &job, &members());
        assert_eq!(r["queuePosition"], 3);
        assert_eq!(r["unschedulable"], true);
        let blamed = blamed_members(&r);
        assert_eq!(
            blamed["east"],
            "only 8 free GPUs on the largest node, 16 needed"
        );
        assert_eq!(
            blamed["west"],
            "0 of 1 pods fit (n1: has 8 GPUs; the request needs 16, n2: model L40S)"
        );
        assert_eq!(r["reasons"].as_array().unwrap().len(), 3);
        assert_eq!(r["reasons"][2]["member"], Value::Null);
        let text = format_why(&r);
        assert!(
            text.starts_with("TrainingJob ml/big: Pending\nQueue position: 3\n"),
            "{text}"
        );
        assert!(text.contains("MEMBER   WHY IT DOES NOT FIT"), "{text}");
        assert!(text.contains("(pool)   no member in region eu"), "{text}");
        // Fields a build does not know yet are simply absent.
        let plain = json!({"metadata": {"name": "j", "namespace": "d"}, "status": {"phase": "Running", "cluster": "east"}});
        let r = why_report(JobKind::Training, &plain, &members());
        assert_eq!(r["queuePosition"], Value::Null);
        assert!(
            format_why(&r).contains("Placed on east: see `kubectl gpupool where trainingjob/j`.")
        );
    }

    #[test]
    fn where_lists_workers_and_replicas_with_gpu_indexes_when_known() {
        let tj = json!({
            "metadata": {"name": "t", "namespace": "ml"},
            "status": {"phase": "Running", "cluster": "east", "workers": [
                {"rank": 0, "node": "dgx-0", "gpuUuids": ["GPU-a", "GPU-b"], "score": 900, "podPhase": "Running"},
                {"rank": 1, "node": "dgx-1", "gpuUuids": ["GPU-c", "GPU-d"], "score": 900}
            ]}
        });
        let idx: HashMap<String, i64> = [("GPU-a", 0), ("GPU-b", 1), ("GPU-c", 4), ("GPU-d", 5)]
            .into_iter()
            .map(|(u, i)| (u.to_string(), i))
            .collect();
        let r = where_report(JobKind::Training, &tj, &idx);
        assert_eq!(r["placements"][1]["gpus"]["indexes"], json!([4, 5]));
        let text = format_where(&r);
        assert!(
            text.contains("rank 0   east     dgx-0   0,1    900     Running"),
            "{text}"
        );
        // Unknown indexes: the UUIDs are shown instead.
        let r = where_report(JobKind::Training, &tj, &HashMap::new());
        assert_eq!(r["placements"][0]["gpus"]["indexes"], Value::Null);
        assert!(format_where(&r).contains("GPU-a,GPU-b"));

        let ij = json!({
            "metadata": {"name": "chat", "namespace": "ml"},
            "status": {"phase": "Running", "placements": [
                {"cluster": "west", "replicas": [0, 2], "readyReplicas": 2, "gpus": [
                    {"node": "l40s-0", "gpuUuids": ["GPU-x"], "score": 5},
                    {"node": "l40s-1", "gpuUuids": ["GPU-y"], "score": 5}
                ]},
                {"cluster": "east", "replicas": [1], "readyReplicas": 1, "gpus": [
                    {"node": "dgx-0", "gpuUuids": ["GPU-a"], "score": 7}
                ]}
            ]}
        });
        let r = where_report(JobKind::Inference, &ij, &idx);
        let workers: Vec<&str> = r["placements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["worker"].as_str().unwrap())
            .collect();
        assert_eq!(workers, ["replica 0", "replica 2", "replica 1"]);
        assert_eq!(r["placements"][2]["member"], "east");
        let pending = json!({"metadata": {"name": "p", "namespace": "ml"}});
        assert!(
            format_where(&where_report(JobKind::Inference, &pending, &idx))
                .contains("Not placed. Ask why: kubectl gpupool why inferencejob/p")
        );
    }

    #[test]
    fn earnings_as_json_carry_chain_and_hub_figures() {
        use crate::ledger::Pubkey;
        let owner = Pubkey::new_unique();
        let r = earnings::EarningsReport {
            ledger: "Solana RPC http://127.0.0.1:8899".into(),
            mint: Some(Pubkey::new_unique()),
            decimals: 0,
            clusters: vec![earnings::ClusterEarnings {
                cluster: "east".into(),
                hub_owner: Some(owner.to_string()),
                chain: Some(earnings::ChainTotals {
                    owner,
                    gpu_seconds: 120,
                    tokens: 1200,
                    receipts: 3,
                }),
                settled_gpu_seconds: 120,
                settled_tokens: 1200,
                final_gpu_seconds: 10,
                open_gpu_seconds: 4,
                records: 5,
            }],
            balances: vec![(owner, 1200)],
            notes: vec!["a note".into()],
        };
        let j = earnings_json(&r);
        assert_eq!(j["clusters"][0]["chain"]["tokens"], 1200);
        assert_eq!(j["clusters"][0]["chain"]["owner"], owner.to_string());
        assert_eq!(j["clusters"][0]["unsettledGpuSeconds"], 10);
        assert_eq!(j["balances"][0]["tokens"], 1200);
        assert_eq!(j["notes"][0], "a note");
        let y = emit(Output::Yaml, &j, |_| String::new()).unwrap();
        assert!(y.contains("receipts: 3"), "{y}");
    }

    #[test]
    fn members_show_capacity_islands_owner_and_earnings() {
        let m = json!({
            "metadata": {"name": "east"},
            "spec": {"ownerWallet": "Own3r", "region": "eu", "schedulable": true},
            "status": {
                "conditions": [{"type": "Ready", "status": "True"}],
                "bindingMode": "DRA",
                "capacity": {"nodes": 2, "gpusTotal": 16, "gpusFree": 10,
                    "byModel": [{"model": "H100", "memoryMiB": 81920, "total": 16, "free": 10}],
                    "largestFreeNvlinkCliques": [8, 2]}
            }
        });
        let rec: UsageRecord = serde_json::from_value(json!({
            "apiVersion": "gpupool.io/v1alpha1", "kind": "UsageRecord",
            "metadata": {"name": "r1"},
            "spec": {"cluster": "east", "ownerWallet": "Own3r", "jobKind": "TrainingJob",
                "jobNamespace": "ml", "jobName": "t", "jobUid": "u", "period": 1,
                "periodStart": "2026-01-01T00:00:00Z", "periodEnd": "2026-01-01T01:00:00Z",
                "gpuSeconds": 120, "gpuClass": 1},
            "status": {"state": "Settled", "amount": 1200}
        }))
        .expect("a UsageRecord");
        let r = members_report(&[m], &[rec]);
        assert_eq!(r["members"][0]["earned"]["settledTokens"], 1200);
        assert_eq!(r["members"][0]["freeNvlinkIslands"], json!([8, 2]));
        assert_eq!(r["members"][0]["bindingMode"], "DRA");
        let text = format_members(&r);
        let row = text.lines().nth(1).unwrap();
        for want in [
            "east",
            "True",
            "eu",
            "10/16",
            "H100:10/16",
            "8,2",
            "DRA",
            "Own3r",
            "120 GPU-s / 1200 tokens",
        ] {
            assert!(row.contains(want), "{want} in {row}");
        }
    }
}
