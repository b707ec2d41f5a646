//! What the scheduler counted for each `GpuQueue`, written to its status and its metrics every
//! [`QUEUE_STATUS_PERIOD`] (only what changed: a busy pool does not write a status per
//! placement). The scheduler is the one writer of a GpuQueue's status.

use super::Scheduler;
use super::writes;
use crate::api::{GpuQueue, GpuQueueStatus};
use kube::api::Api;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How often queue statuses and metrics are refreshed.
pub const QUEUE_STATUS_PERIOD: Duration = Duration::from_secs(5);

impl Scheduler {
    /// Each queue's status as counted now.
    pub fn queue_statuses(&self) -> BTreeMap<String, GpuQueueStatus> {
        self.with_quotas(|q| {
            q.names()
                .filter_map(|n| q.status(n).map(|s| (n.to_string(), s)))
                .collect()
        })
    }

    /// Writes queue statuses and metrics until the task is dropped.
    pub async fn report_queues(self: Arc<Self>) {
        let api: Api<GpuQueue> = Api::all(self.hub.clone());
        let mut written: BTreeMap<String, GpuQueueStatus> = BTreeMap::new();
        let mut tick = tokio::time::interval(QUEUE_STATUS_PERIOD);
        loop {
            tick.tick().await;
            let now = self.queue_statuses();
            for (name, last) in &written {
                if !now.contains_key(name) {
                    self.metrics.forget_queue(name, last);
                }
            }
            written.retain(|n, _| now.contains_key(n));
            for (name, status) in now {
                self.metrics.set_queue(&name, &status);
                if written.get(&name) == Some(&status) {
                    continue;
                }
                let Ok(Some(obj)) = api.get_opt(&name).await else {
                    continue;
                };
                match writes::apply_status(&api, &obj, None, &status).await {
                    Ok(()) => {
                        written.insert(name, status);
                    }
                    Err(e) => {
                        tracing::warn!(queue = %name, error = %e, "writing a GpuQueue status failed")
                    }
                }
            }
        }
    }
}
