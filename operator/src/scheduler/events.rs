//! Events published off the caller's path, in the order they were sent for each object.
//!
//! A reconcile or the scheduling loop must not wait for an Event's round trip, but the Events of
//! one object must reach the API server in the order they happened (a rollout's
//! `ReplicaReplaced` before its `RolloutComplete`), which one task per Event does not give. So
//! each Event goes to one of [`LANES`] queues chosen by its object, each drained by one task in
//! order: one object's Events stay in order, different objects' go in parallel. (kube-runtime's
//! `Recorder` publishes one Event per call and has no such queue; client-go's broadcaster is the
//! model: one queue, sinks that drain it.)

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder};
use std::hash::{Hash, Hasher};
use tokio::sync::mpsc;

/// Queues drained in parallel.
pub const LANES: usize = 16;

/// One Event to publish: the recorder (its reporting controller), the Event, its object.
type Pending = (Recorder, Event, ObjectReference);

/// The queues; made on first use (inside the runtime that drains them).
pub struct EventLanes {
    lanes: Vec<mpsc::UnboundedSender<Pending>>,
}

impl EventLanes {
    /// [`LANES`] queues, each drained by a task of the current runtime.
    pub fn new() -> Self {
        let lanes = (0..LANES)
            .map(|_| {
                let (tx, mut rx) = mpsc::unbounded_channel::<Pending>();
                tokio::spawn(async move {
                    while let Some((recorder, ev, obj)) = rx.recv().await {
                        if let Err(e) = recorder.publish(&ev, &obj).await {
                            tracing::warn!(error = %e, reason = ev.reason, "publishing event failed");
                        }
                    }
                });
                tx
            })
            .collect();
        EventLanes { lanes }
    }

    /// The lane of an object: by UID (by namespace and name when it has none).
    pub fn lane_of(obj: &ObjectReference) -> usize {
        let mut h = std::hash::DefaultHasher::new();
        match &obj.uid {
            Some(uid) => uid.hash(&mut h),
            None => (&obj.namespace, &obj.name).hash(&mut h),
        }
        (h.finish() % LANES as u64) as usize
    }

    /// Queues `ev` on `obj` behind the Events sent before on the same object. (Unbounded:
    /// Normal Events are rate-limited before they get here, Warnings are few.)
    pub fn send(&self, recorder: Recorder, ev: Event, obj: ObjectReference) {
        let lane = Self::lane_of(&obj);
        if self.lanes[lane].send((recorder, ev, obj)).is_err() {
            tracing::warn!("event queue closed (the runtime is shutting down)");
        }
    }
}

impl Default for EventLanes {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(uid: Option<&str>, name: &str) -> ObjectReference {
        ObjectReference {
            uid: uid.map(String::from),
            name: Some(name.into()),
            namespace: Some("ns".into()),
            ..Default::default()
        }
    }

    #[test]
    fn one_object_always_takes_the_same_lane_and_objects_spread_over_lanes() {
        let a = obj(Some("uid-a"), "a");
        assert_eq!(EventLanes::lane_of(&a), EventLanes::lane_of(&a.clone()));
        // The UID decides, not the name (a re-created object is another object).
        let mut renamed = a.clone();
        renamed.name = Some("other".into());
        assert_eq!(EventLanes::lane_of(&a), EventLanes::lane_of(&renamed));
        let lanes: std::collections::BTreeSet<usize> = (0..200)
            .map(|i| EventLanes::lane_of(&obj(Some(&format!("uid-{i}")), "x")))
            .collect();
        assert!(lanes.len() > LANES / 2, "{lanes:?}");
        assert!(lanes.iter().all(|l| *l < LANES));
    }
}
