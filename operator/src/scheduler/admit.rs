//! A decision within the job's queue: the placement the job would get, checked against its
//! queue's quota ([`super::quota`]); when the GPUs it would get are of a class its queue has no
//! room for, the placement is tried again on each class the queue does have room for. Pure.

use super::cache::{Slot, Snapshot};
use super::jobs::{self, Decision, Pending};
use super::queue::Need;
use super::quota::{Demand, QuotaView, Refusal};
use crate::api::{ANY_CLASS, gpu_class};
use std::collections::BTreeSet;

/// A decision and, for a job of a queue, the queue and whether more GPUs could serve it while
/// it waits.
pub struct Admitted {
    /// What to write.
    pub decision: Decision,
    /// The job's queue, if any.
    pub queue: Option<String>,
    /// While it waits: whether more GPUs could serve it (see [`Refusal::hungry`]).
    pub hungry: bool,
}

/// GPUs per class of a decision's slots (the class of a node's published model).
pub fn demand(cache: &Snapshot, slots: &BTreeSet<Slot>) -> Demand {
    let mut d = Demand::new();
    for s in slots {
        let class = cache
            .model_of(&s.member, &s.node)
            .map_or(super::quota::UNKNOWN_CLASS, |m| gpu_class(&m));
        *d.entry(class.to_string()).or_default() += 1;
    }
    d
}

fn queue_field(job: &Pending) -> (String, Option<String>, bool, usize) {
    match job {
        Pending::Training(j) => (
            job.name().namespace,
            j.spec.queue.clone(),
            j.spec.gpu.model.is_some(),
            j.spec.gpus_per_worker.max(1) as usize,
        ),
        Pending::Inference(j) => (
            job.name().namespace,
            j.spec.queue.clone(),
            j.spec.gpu.model.is_some(),
            j.spec.gpus_per_replica.max(1) as usize,
        ),
    }
}

/// The placement with the job's GPU model narrowed to `class`, replicas to `cap`.
fn place(cache: &Snapshot, job: &Pending, class: Option<&str>, cap: usize) -> Decision {
    match job {
        Pending::Training(j) => jobs::decide_training_as(cache, j, class),
        Pending::Inference(j) => jobs::decide_inference_as(cache, j, class, cap),
    }
}

fn slots_of(d: &Decision) -> Option<&BTreeSet<Slot>> {
    match d {
        Decision::Training { slots, .. } | Decision::Inference { slots, .. } => Some(slots),
        Decision::Wait { .. } => None,
    }
}

/// Decides for `job`: as without queues for a job outside every queue; within its queue's
/// quota otherwise.
pub fn decide(cache: &Snapshot, quotas: &QuotaView, job: &Pending) -> Admitted {
    let (namespace, named, has_model, per_pod) = queue_field(job);
    let queue = match quotas.queue_of(&namespace, named.as_deref()) {
        Err(reason) => {
            return Admitted {
                decision: Decision::Wait {
                    reason,
                    need: Need::nothing(),
                },
                queue: None,
                hungry: false,
            };
        }
        Ok(None) => {
            return Admitted {
                decision: place(cache, job, None, usize::MAX),
                queue: None,
                hungry: true,
            };
        }
        Ok(Some(q)) => q,
    };
    let room = quotas.room(&queue);
    let total: i64 = room.iter().map(|(_, n)| *n).sum();
    let first = place(cache, job, None, replicas(total, per_pod));
    let Some(slots) = slots_of(&first) else {
        return Admitted {
            decision: first,
            queue: Some(queue),
            hungry: true,
        };
    };
    let refusal = match quotas.admit(&queue, &demand(cache, slots)) {
        Ok(()) => {
            return Admitted {
                decision: first,
                queue: Some(queue),
                hungry: false,
            };
        }
        Err(r) => r,
    };
    // The GPUs it got are of a class without room: each class with room, most room first.
    let narrowed = room
        .iter()
        .filter(|(c, n)| !has_model && c != ANY_CLASS && *n >= per_pod as i64)
        .find_map(|(class, n)| {
            let d = place(cache, job, Some(class), replicas(*n, per_pod));
            let ok = slots_of(&d).is_some_and(|s| quotas.admit(&queue, &demand(cache, s)).is_ok());
            ok.then_some(d)
        });
    let (decision, hungry) = match narrowed {
        Some(d) => (d, false),
        None => (wait(job, &refusal), refusal.hungry),
    };
    Admitted {
        decision,
        queue: Some(queue),
        hungry,
    }
}

/// Replicas of `per_pod` GPUs that `gpus` can hold (at least one: the quota check decides).
fn replicas(gpus: i64, per_pod: usize) -> usize {
    usize::try_from(gpus / per_pod as i64).unwrap_or(0).max(1)
}

/// The wait a refused placement becomes: parked on the job's own need (GPUs freed where it
/// fits wake it, and so does any queue's use going down).
fn wait(job: &Pending, refusal: &Refusal) -> Decision {
    Decision::Wait {
        reason: refusal.reason.clone(),
        need: jobs::need_of_job(job),
    }
}
