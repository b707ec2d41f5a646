//! The pool commands' reports: "why is my job waiting", "where did it go", "what waits",
//! "what does the pool hold" and "what did this member earn", built from the hub's objects.
//!
//! Jobs are read as untyped JSON so that status fields newer than this build (or older) are shown
//! when present and skipped when absent. The report builders are pure; IO is in
//! [`super::commands`].

use crate::api::UsageRecord;
use crate::cli::earnings;
use anyhow::{Result, bail};
use kube::api::ApiResource;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The two job kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// `TrainingJob`.
    Training,
    /// `InferenceJob`.
    Inference,
}

impl JobKind {
    /// The job kind's API resource.
    pub fn resource(self) -> ApiResource {
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

/// `where`: one row per worker (TrainingJob) or replica (InferenceJob), from the job's status
/// alone: the operator records each GPU set's indexes on its node beside the UUIDs
/// (`gpuIndexes`); a status written before it did shows UUIDs only.
pub fn where_report(kind: JobKind, job: &Value) -> Value {
    let gpus = |set: &Value| -> Value {
        let list: Vec<&str> = set["gpuUuids"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let indexes: Option<Vec<i64>> = set["gpuIndexes"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .filter(|ix: &Vec<i64>| !list.is_empty() && ix.len() == list.len());
        json!({ "indexes": indexes, "uuids": list })
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
                    "gpus": gpus(w),
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
                        "gpus": gpus(g),
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

/// Renders a `where` document as text; `wide` adds the GPU UUIDs.
pub fn format_where(r: &Value, wide: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {}/{}: {}",
        r["kind"].as_str().unwrap_or(""),
        r["namespace"].as_str().unwrap_or(""),
        r["name"].as_str().unwrap_or(""),
        r["phase"].as_str().unwrap_or("Pending")
    );
    let joined = |v: &Value| -> String {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|x| {
                        x.as_str()
                            .map(String::from)
                            .unwrap_or_else(|| x.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    let rows: Vec<Vec<String>> = r["placements"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let g = &p["gpus"];
            let gpus = match g["indexes"] {
                Value::Array(_) => joined(&g["indexes"]),
                _ => joined(&g["uuids"]),
            };
            let mut row = vec![
                p["worker"].as_str().unwrap_or("").to_string(),
                p["member"].as_str().unwrap_or("").to_string(),
                p["node"].as_str().unwrap_or("").to_string(),
                gpus,
                p["score"]
                    .as_i64()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                p["podPhase"].as_str().unwrap_or("").to_string(),
            ];
            if wide {
                row.push(joined(&g["uuids"]));
            }
            row
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
        let mut headers = vec!["WORKER", "MEMBER", "NODE", "GPUS", "SCORE", "POD"];
        if wide {
            headers.push("GPU UUIDS");
        }
        out.push_str(&table(&headers, &rows));
    }
    out
}

/// Whether a job waits for GPUs: the scheduler gave it a queue position, or it is Pending and
/// holds none.
fn is_queued(kind: JobKind, job: &Value) -> bool {
    if job
        .pointer("/status/queuePosition")
        .is_some_and(|q| !q.is_null())
    {
        return true;
    }
    let phase = str_at(job, "/status/phase").unwrap_or("Pending");
    let placed = match kind {
        JobKind::Training => job
            .pointer("/status/workers")
            .and_then(Value::as_array)
            .is_some_and(|w| !w.is_empty()),
        JobKind::Inference => job
            .pointer("/status/placements")
            .and_then(Value::as_array)
            .is_some_and(|p| !p.is_empty()),
    };
    phase == "Pending" && !placed
}

/// GPUs a job asks for in all.
fn gpus_asked(kind: JobKind, job: &Value) -> i64 {
    let n = |p: &str| job.pointer(p).and_then(Value::as_i64).unwrap_or(1).max(1);
    match kind {
        JobKind::Training => n("/spec/workers") * n("/spec/gpusPerWorker"),
        JobKind::Inference => n("/spec/replicas") * n("/spec/gpusPerReplica"),
    }
}

/// `queue`: the jobs that wait for GPUs, in queue order (position, then age).
pub fn queue_report(jobs: &[(JobKind, Value)]) -> Value {
    let mut rows: Vec<Value> = jobs
        .iter()
        .filter(|(k, j)| is_queued(*k, j))
        .map(|(k, j)| {
            json!({
                "position": j.pointer("/status/queuePosition").cloned().unwrap_or(Value::Null),
                "kind": k.kind(),
                "namespace": str_at(j, "/metadata/namespace"),
                "name": str_at(j, "/metadata/name"),
                "gpus": gpus_asked(*k, j),
                "model": j.pointer("/spec/gpu/model").cloned().unwrap_or(Value::Null),
                "priority": j.pointer("/spec/priority").cloned().unwrap_or(json!(0)),
                "created": str_at(j, "/metadata/creationTimestamp"),
                "pendingReason": j.pointer("/status/pendingReason").cloned().unwrap_or(Value::Null),
                "message": unschedulable_condition(j)
                    .and_then(|c| c["message"].as_str())
                    .or_else(|| str_at(j, "/status/message")),
            })
        })
        .collect();
    rows.sort_by(|a, b| {
        let pos = |v: &Value| v["position"].as_i64().unwrap_or(i64::MAX);
        (
            pos(a),
            a["created"].as_str(),
            a["namespace"].as_str(),
            a["name"].as_str(),
        )
            .cmp(&(
                pos(b),
                b["created"].as_str(),
                b["namespace"].as_str(),
                b["name"].as_str(),
            ))
    });
    json!({ "jobs": rows })
}

/// Renders a `queue` document; `wide` adds the unschedulable message.
pub fn format_queue(r: &Value, wide: bool) -> String {
    let rows: Vec<Vec<String>> = r["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|j| {
            let s = |k: &str| match &j[k] {
                Value::Null => "-".to_string(),
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            let mut row = vec![
                s("position"),
                format!("{}/{}", s("kind").to_ascii_lowercase(), s("name")),
                s("namespace"),
                s("gpus"),
                s("model"),
                s("priority"),
                s("pendingReason"),
            ];
            if wide {
                row.push(s("message"));
            }
            row
        })
        .collect();
    if rows.is_empty() {
        return "No job waits for GPUs.\n".into();
    }
    let mut headers = vec![
        "POSITION",
        "JOB",
        "NAMESPACE",
        "GPUS",
        "MODEL",
        "PRIORITY",
        "REASON",
    ];
    if wide {
        headers.push("MESSAGE");
    }
    table(&headers, &rows)
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
            "draining": m.pointer("/spec/drain").cloned().unwrap_or(json!(false)),
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

/// Renders a `members` document as text; `wide` adds the GPU models, NVLink islands, binding
/// mode and owner.
pub fn format_members(r: &Value, wide: bool) -> String {
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
                if m["draining"] == true {
                    "draining"
                } else if m["schedulable"] == false {
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
    let headers = [
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
    ];
    // The narrow table leaves out the models, islands, binding mode and owner.
    let keep = |i: usize| wide || !(6..=9).contains(&i);
    let pick = |cells: Vec<String>| -> Vec<String> {
        cells
            .into_iter()
            .enumerate()
            .filter(|(i, _)| keep(*i))
            .map(|(_, c)| c)
            .collect()
    };
    let headers: Vec<&str> = headers
        .iter()
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .map(|(_, h)| *h)
        .collect();
    let rows: Vec<Vec<String>> = rows.into_iter().map(pick).collect();
    table(&headers, &rows)
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
    fn where_lists_workers_and_replicas_with_the_gpu_indexes_in_status() {
        let tj = json!({
            "metadata": {"name": "t", "namespace": "ml"},
            "status": {"phase": "Running", "cluster": "east", "workers": [
                {"rank": 0, "node": "dgx-0", "gpuUuids": ["GPU-a", "GPU-b"], "gpuIndexes": [0, 1], "score": 900, "podPhase": "Running"},
                {"rank": 1, "node": "dgx-1", "gpuUuids": ["GPU-c", "GPU-d"], "gpuIndexes": [4, 5], "score": 900}
            ]}
        });
        let r = where_report(JobKind::Training, &tj);
        assert_eq!(r["placements"][1]["gpus"]["indexes"], json!([4, 5]));
        let text = format_where(&r, false);
        assert!(
            text.contains("rank 0   east     dgx-0   0,1    900     Running"),
            "{text}"
        );
        assert!(!text.contains("GPU-a"), "{text}");
        assert!(format_where(&r, true).contains("GPU UUIDS"));
        assert!(format_where(&r, true).contains("GPU-a,GPU-b"));
        // A status written before indexes were recorded (or with a partial list): UUIDs.
        let old = json!({
            "metadata": {"name": "t", "namespace": "ml"},
            "status": {"phase": "Running", "cluster": "east", "workers": [
                {"rank": 0, "node": "dgx-0", "gpuUuids": ["GPU-a", "GPU-b"], "gpuIndexes": [0], "score": 900}
            ]}
        });
        let r = where_report(JobKind::Training, &old);
        assert_eq!(r["placements"][0]["gpus"]["indexes"], Value::Null);
        assert!(format_where(&r, false).contains("GPU-a,GPU-b"));

        let ij = json!({
            "metadata": {"name": "chat", "namespace": "ml"},
            "status": {"phase": "Running", "placements": [
                {"cluster": "west", "replicas": [0, 2], "readyReplicas": 2, "gpus": [
                    {"node": "l40s-0", "gpuUuids": ["GPU-x"], "gpuIndexes": [3], "score": 5},
                    {"node": "l40s-1", "gpuUuids": ["GPU-y"], "gpuIndexes": [0], "score": 5}
                ]},
                {"cluster": "east", "replicas": [1], "readyReplicas": 1, "gpus": [
                    {"node": "dgx-0", "gpuUuids": ["GPU-a"], "score": 7}
                ]}
            ]}
        });
        let r = where_report(JobKind::Inference, &ij);
        let workers: Vec<&str> = r["placements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["worker"].as_str().unwrap())
            .collect();
        assert_eq!(workers, ["replica 0", "replica 2", "replica 1"]);
        assert_eq!(r["placements"][0]["gpus"]["indexes"], json!([3]));
        assert_eq!(r["placements"][2]["member"], "east");
        assert_eq!(r["placements"][2]["gpus"]["indexes"], Value::Null);
        let pending = json!({"metadata": {"name": "p", "namespace": "ml"}});
        assert!(
            format_where(&where_report(JobKind::Inference, &pending), false)
                .contains("Not placed. Ask why: kubectl gpupool why inferencejob/p")
        );
    }

    #[test]
    fn queue_lists_waiting_jobs_in_queue_order() {
        let job = |name: &str, pos: Option<i64>, created: &str, status: Value| {
            let mut st = status;
            if let Some(p) = pos {
                st["queuePosition"] = json!(p);
            }
            json!({
                "metadata": {"name": name, "namespace": "ml", "creationTimestamp": created},
                "spec": {"workers": 2, "gpusPerWorker": 8, "gpu": {"model": "H100"}, "priority": 5},
                "status": st,
            })
        };
        let jobs = vec![
            (
                JobKind::Training,
                job(
                    "second",
                    Some(2),
                    "2026-01-01T00:00:02Z",
                    json!({"phase": "Pending", "pendingReason": "Unschedulable"}),
                ),
            ),
            (
                JobKind::Training,
                job(
                    "running",
                    None,
                    "2026-01-01T00:00:00Z",
                    json!({"phase": "Running", "cluster": "east", "workers": [{"rank": 0}]}),
                ),
            ),
            (
                JobKind::Training,
                job(
                    "first",
                    Some(1),
                    "2026-01-01T00:00:09Z",
                    json!({"phase": "Pending"}),
                ),
            ),
            (
                JobKind::Inference,
                json!({
                    "metadata": {"name": "fresh", "namespace": "web", "creationTimestamp": "2026-01-01T00:00:01Z"},
                    "spec": {"replicas": 3, "gpusPerReplica": 1},
                }),
            ),
        ];
        let r = queue_report(&jobs);
        let names: Vec<&str> = r["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["first", "second", "fresh"]);
        assert_eq!(r["jobs"][0]["gpus"], 16);
        assert_eq!(r["jobs"][2]["gpus"], 3);
        assert_eq!(r["jobs"][2]["kind"], "InferenceJob");
        let text = format_queue(&r, false);
        let first = text.lines().nth(1).unwrap();
        for want in ["1", "trainingjob/first", "ml", "16", "H100", "5"] {
            assert!(
                first.split_whitespace().any(|c| c == want),
                "{want} in {first}"
            );
        }
        assert!(
            text.lines().nth(2).unwrap().contains("Unschedulable"),
            "{text}"
        );
        assert!(format_queue(&json!({"jobs": []}), false).contains("No job waits"));
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
        let y = crate::cli::output::emit(
            &crate::cli::Output::Yaml,
            crate::cli::output::View {
                doc: &j,
                table: &|_, _| String::new(),
                names: vec![],
            },
        )
        .unwrap();
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
        let narrow = format_members(&r, false);
        assert!(
            !narrow.contains("Own3r") && narrow.contains("10/16"),
            "{narrow}"
        );
        let text = format_members(&r, true);
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
