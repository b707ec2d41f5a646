//! `queues`: every GpuQueue with its quota, use and borrowing per GPU class, its waiting jobs
//! and its weighted fair share (as the scheduler ranks borrowers), from the queues' specs and
//! the statuses the scheduler writes.

use super::plugin::table;
use crate::api::GpuQueue;
use crate::scheduler::fairshare::dominant_share;
use serde_json::{Value, json};
use std::collections::BTreeMap;

fn cohort(q: &GpuQueue) -> &str {
    q.spec.cohort.as_deref().unwrap_or("")
}

/// GPUs each cohort lends of each class: (cohort, class) → the sum of its queues' lending.
fn cohort_lending(queues: &[GpuQueue]) -> BTreeMap<(String, String), i64> {
    let mut lent = BTreeMap::new();
    for q in queues {
        for e in &q.spec.quotas {
            *lent
                .entry((cohort(q).to_string(), e.gpu_class.clone()))
                .or_default() += i64::from(e.lendable());
        }
    }
    lent
}

/// The `queues` document: one entry per queue, with one row per quota class.
pub fn queues_report(queues: &[GpuQueue]) -> Value {
    let lent = cohort_lending(queues);
    let rows: Vec<Value> = queues
        .iter()
        .map(|q| {
            let st = q.status.clone().unwrap_or_default();
            let used = |class: &str| st.classes.iter().find(|c| c.gpu_class == class);
            let classes: Vec<Value> = q
                .spec
                .quotas
                .iter()
                .map(|e| {
                    let u = used(&e.gpu_class);
                    json!({
                        "gpuClass": e.gpu_class,
                        "nominal": e.nominal,
                        "used": u.map_or(0, |u| u.used),
                        "borrowed": u.map_or(0, |u| u.borrowed),
                        "borrowingLimit": e.borrowing_limit,
                        "lendingLimit": e.lendable(),
                    })
                })
                .collect();
            let share = dominant_share(
                q.spec.quotas.iter().map(|e| {
                    let borrowed = used(&e.gpu_class).map_or(0, |u| u.borrowed);
                    let key = (cohort(q).to_string(), e.gpu_class.clone());
                    (borrowed, lent.get(&key).copied().unwrap_or(0))
                }),
                q.spec.weight,
            );
            json!({
                "name": q.metadata.name,
                "cohort": q.spec.cohort,
                "weight": q.spec.weight,
                "namespaces": q.spec.namespaces,
                "pendingJobs": st.pending_jobs,
                "fairShare": (share * 1000.0).round() / 1000.0,
                "classes": classes,
            })
        })
        .collect();
    json!({ "queues": rows })
}

/// Renders a `queues` document as a table: one row per queue and class.
pub fn format_queues(r: &Value, wide: bool) -> String {
    let s = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let mut rows = Vec::new();
    for q in r["queues"].as_array().into_iter().flatten() {
        for c in q["classes"].as_array().into_iter().flatten() {
            let mut row = vec![
                s(&q["name"]),
                q["cohort"].as_str().unwrap_or("(pool)").to_string(),
                s(&c["gpuClass"]),
                format!("{}/{}", s(&c["used"]), s(&c["nominal"])),
                s(&c["borrowed"]),
                s(&c["borrowingLimit"]),
                s(&q["pendingJobs"]),
                s(&q["weight"]),
                s(&q["fairShare"]),
            ];
            if wide {
                row.push(s(&c["lendingLimit"]));
                let ns: Vec<String> = q["namespaces"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(s)
                    .collect();
                row.push(ns.join(","));
            }
            rows.push(row);
        }
    }
    if rows.is_empty() {
        return "No GpuQueue: jobs are not limited.\n".into();
    }
    let mut headers = vec![
        "QUEUE",
        "COHORT",
        "CLASS",
        "USED/NOMINAL",
        "BORROWED",
        "BORROW LIMIT",
        "PENDING",
        "WEIGHT",
        "SHARE",
    ];
    if wide {
        headers.extend(["LENDS", "NAMESPACES"]);
    }
    table(&headers, &rows)
}

/// The queue a job submits to: the one it names, else the first (by name) listing its
/// namespace; `None` outside every queue.
pub fn queue_of_job(job: &Value, queues: &[GpuQueue]) -> Option<String> {
    if let Some(q) = job.pointer("/spec/queue").and_then(Value::as_str) {
        return Some(q.to_string());
    }
    let ns = job.pointer("/metadata/namespace").and_then(Value::as_str)?;
    let mut names: Vec<&GpuQueue> = queues
        .iter()
        .filter(|q| q.spec.namespaces.iter().any(|n| n == ns))
        .collect();
    names.sort_by_key(|q| q.metadata.name.clone());
    names.first().and_then(|q| q.metadata.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(yaml: &str) -> GpuQueue {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn queues_show_use_borrowing_and_the_weighted_share() {
        let a = q(
            "apiVersion: gpupool.io/v1alpha1\nkind: GpuQueue\nmetadata: {name: team-a}\nspec: {namespaces: [ns-a], cohort: lab, weight: 2, quotas: [{gpuClass: H100, nominal: 8}]}\nstatus: {classes: [{gpuClass: H100, nominal: 8, used: 12, borrowed: 4}], pendingJobs: 3}\n",
        );
        let b = q(
            "apiVersion: gpupool.io/v1alpha1\nkind: GpuQueue\nmetadata: {name: team-b}\nspec: {namespaces: [ns-b], cohort: lab, quotas: [{gpuClass: H100, nominal: 8, lendingLimit: 0, borrowingLimit: 0}]}\n",
        );
        let doc = queues_report(&[a.clone(), b.clone()]);
        let qa = &doc["queues"][0];
        // Borrowed 4 of the 8 the cohort lends (team-b lends nothing), weight 2.
        assert_eq!(qa["fairShare"], json!(0.25));
        assert_eq!(qa["classes"][0]["used"], json!(12));
        assert_eq!(doc["queues"][1]["fairShare"], json!(0.0));
        let text = format_queues(&doc, false);
        assert!(text.contains("team-a"), "{text}");
        assert!(text.contains("12/8"), "{text}");
        assert!(text.contains("0.25"), "{text}");
        let job = json!({"metadata": {"namespace": "ns-b"}, "spec": {}});
        assert_eq!(
            queue_of_job(&job, &[a.clone(), b.clone()]).as_deref(),
            Some("team-b")
        );
        let job = json!({"metadata": {"namespace": "ns-b"}, "spec": {"queue": "team-a"}});
        assert_eq!(queue_of_job(&job, &[a, b]).as_deref(), Some("team-a"));
        assert!(format_queues(&queues_report(&[]), false).contains("No GpuQueue"));
    }
}
