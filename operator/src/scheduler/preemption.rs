//! The scheduler's side of preemption: when a job of a queue waits, the victims to preempt for
//! it ([`super::victims`]), and while they release their GPUs, what the job waits for. The
//! victims' statuses are written by the loop's workers ([`super::Scheduler`]); their pods are
//! withdrawn by their controller, with their termination grace period.

use super::cache::Slot;
use super::jobs::Pending;
use super::victims::{self, Victim};
use super::{State, jobs};
use std::collections::BTreeSet;

/// What a waiting job says while the GPUs of the jobs preempted for it are released.
pub fn release_reason(held: usize, slots: &BTreeSet<Slot>) -> String {
    let nodes: BTreeSet<String> = slots
        .iter()
        .map(|s| format!("{}/{}", s.member, s.node))
        .collect();
    let nodes: Vec<String> = nodes.into_iter().collect();
    format!(
        "waiting for preempted jobs to release {held} GPUs on {}",
        nodes.join(", ")
    )
}

impl State {
    /// Job `uid` of queue `queue` waits: while jobs preempted for it still hold their GPUs,
    /// the reason it waits for them; else the victims that let it fit, if any (recorded as
    /// being preempted), and that reason. `None`: nothing to preempt, it waits as decided.
    pub(super) fn preemption(
        &mut self,
        uid: &str,
        job: &Pending,
        queue: &str,
        quota_bound: bool,
    ) -> Option<(String, Vec<Victim>)> {
        if let Some(slots) = self.preempting.get(uid) {
            let held = self.cache.held_count(slots);
            if held > 0 {
                return Some((release_reason(held, slots), Vec::new()));
            }
            self.preempting.remove(uid);
        }
        // Searched in vain, and nothing a search could find has changed since.
        if self.searched.get(uid) == Some(&self.preempt_epoch) {
            return None;
        }
        let priority = i64::from(self.classes.of(job).ok()?);
        let name = job.name();
        let (pods, selector) = match job {
            Pending::Training(j) => (j.spec.workers.max(1) as usize, &j.spec.cluster_selector),
            Pending::Inference(j) => (1, &j.spec.cluster_selector),
        };
        let p = victims::Preemptor {
            uid,
            name: format!("{}/{}", name.namespace, name.name),
            queue,
            priority,
            need: jobs::need_of_job(job),
            pods,
            selector,
            quota_bound,
        };
        let inputs = victims::Inputs {
            cache: &self.cache,
            quotas: &self.quotas,
            running: &self.running,
            busy: &self.being_preempted,
        };
        let Some(found) = victims::find(&inputs, &p) else {
            self.searched.insert(uid.to_string(), self.preempt_epoch);
            return None;
        };
        self.searched.remove(uid);
        for v in &found.victims {
            self.being_preempted.insert(v.uid.clone());
        }
        let reason = release_reason(found.slots.len(), &found.slots);
        self.preempting.insert(uid.to_string(), found.slots);
        Some((reason, found.victims))
    }

    /// Writing the preemption of `victim` for `preemptor` failed (the victim changed
    /// meanwhile): neither is recorded any more, and the preemptor is decided again.
    pub(super) fn preemption_failed(&mut self, preemptor: &str, victim: &str) {
        self.being_preempted.remove(victim);
        self.preempting.remove(preemptor);
        if self.cache.unreserve(preemptor) {
            self.queue.wake(|_| true);
        }
        self.queue.retry_now(preemptor);
    }
}
