//! A paid pool's running jobs and their tenant's budget: a job whose reservation cannot be
//! renewed gets the `BudgetExhausted` condition and a Warning Event, and is stopped once the
//! pool's grace has passed without a renewal (its reservation still pays for that time: the
//! grace is under half a reservation window, the part a renewal keeps ahead).

use super::Context;
use crate::api::condition;
use crate::meta::set_condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use std::time::Duration;

/// What the budget means for a running job now.
pub(super) enum Verdict {
    /// Funded (or an unpaid pool).
    Funded,
    /// Not renewed: stopped in `left` unless the tenant funds it; `event`: the note of the
    /// Warning Event to publish when it has just been exhausted.
    Grace {
        left: Duration,
        event: Option<String>,
    },
    /// The grace is over: stop the job, with this message.
    Stop(String),
}

/// The verdict for job `uid`, with its `BudgetExhausted` condition set accordingly.
pub(super) fn check(
    ctx: &Context,
    uid: &str,
    conds: &mut Vec<Condition>,
    generation: Option<i64>,
) -> Verdict {
    let was = conds
        .iter()
        .any(|c| c.type_ == condition::BUDGET_EXHAUSTED && c.status == "True");
    let Some((since, why)) = ctx.budget.exhausted(uid) else {
        if was {
            set_condition(
                conds,
                condition::BUDGET_EXHAUSTED,
                false,
                "ReservationRenewed",
                "the tenant's escrow funds this job's reservation again",
                generation,
            );
        }
        return Verdict::Funded;
    };
    let grace = i64::try_from(ctx.budget.config().grace_seconds).unwrap_or(i64::MAX);
    let ran = k8s_openapi::jiff::Timestamp::now().as_second() - since;
    if ran >= grace {
        return Verdict::Stop(format!(
            "{why}; stopped after a grace of {grace}s without a renewed reservation"
        ));
    }
    let left = u64::try_from(grace - ran).unwrap_or(0);
    let msg = format!("{why}; the job is stopped in {left}s unless the tenant's escrow is funded");
    set_condition(
        conds,
        condition::BUDGET_EXHAUSTED,
        true,
        "ReservationNotRenewed",
        &msg,
        generation,
    );
    Verdict::Grace {
        left: Duration::from_secs(left + 1),
        event: (!was).then_some(msg),
    }
}
