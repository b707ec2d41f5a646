//! A paid pool's admission gate: a job the scheduler could place starts only when its
//! tenant's escrow funds its first reservation window. The check is in memory (the metering
//! loop keeps the escrows read from the chain, see [`crate::metering::budget`]); no chain call
//! is made here.

use super::jobs::{Decision, Pending};
use super::queue::Need;
use crate::metering::budget::{Budget, inference_demand, training_demand};

/// `decision`, or a wait with the budget's reason when the job's tenant cannot fund it.
/// Only placements are gated: a job that waits anyway keeps its own reason.
pub(super) fn gate(budget: Option<&Budget>, job: &Pending, decision: Decision) -> Decision {
    let Some(budget) = budget else {
        return decision;
    };
    if matches!(decision, Decision::Wait { .. }) {
        return decision;
    }
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let demand = match job {
        Pending::Training(j) => training_demand(j, now),
        Pending::Inference(j) => inference_demand(j),
    };
    match demand.map(|d| budget.funded(&d)) {
        Some(Err(reason)) => Decision::Wait {
            reason,
            need: Need::nothing(),
        },
        _ => decision,
    }
}
