//! Rolling updates of an InferenceJob, replica by replica, with Deployment's `maxSurge` /
//! `maxUnavailable` semantics. Pure: the scheduler asks which replicas it may place now, the
//! controller which old replicas it may delete now, both from the job's status.
//!
//! A replica is identified by its index (`0..spec.replicas`) and the *revision* it runs: a hash
//! of the fields that roll (`template`, `gpusPerReplica`, `gpu`, `nvlink`). During a rollout one
//! index may briefly hold two replicas, the old revision and its replacement (a *surge*).

use crate::api::{InferenceJobSpec, RolloutStrategy};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// Default `maxSurge` and `maxUnavailable` (Deployment's).
pub const DEFAULT_PERCENT: i32 = 25;

/// Revision of the fields of an InferenceJob that roll: the first 10 hex digits of the SHA-256
/// of their canonical JSON. Stable across operator restarts and versions as long as the API
/// types serialize the same way.
pub fn revision(spec: &InferenceJobSpec) -> String {
    let rolled = serde_json::json!({
        "template": spec.template,
        "gpusPerReplica": spec.gpus_per_replica,
        "gpu": spec.gpu,
        "nvlink": spec.nvlink,
    });
    // `serde_json::Value` maps are sorted by key (no `preserve_order`), so this is canonical.
    let digest = Sha256::digest(rolled.to_string().as_bytes());
    digest[..5].iter().map(|b| format!("{b:02x}")).collect()
}

/// Resolves an int-or-percent against `total`: percentages round up for `maxSurge` and down for
/// `maxUnavailable`, as Deployments do. Unparsable values count as the default percentage.
pub fn resolve(v: Option<&IntOrString>, total: i32, round_up: bool) -> i32 {
    let pct = match v {
        Some(IntOrString::Int(n)) => return (*n).max(0),
        Some(IntOrString::String(s)) => s
            .strip_suffix('%')
            .and_then(|p| p.parse::<i32>().ok())
            .unwrap_or(DEFAULT_PERCENT),
        None => DEFAULT_PERCENT,
    };
    let num = i64::from(pct.max(0)) * i64::from(total.max(0));
    let v = if round_up {
        (num + 99) / 100
    } else {
        num / 100
    };
    v as i32
}

/// `(maxSurge, maxUnavailable)` as replica counts for `replicas`. Both 0 (which the API server
/// rejects, but resolution can produce, e.g. 25 % of 1 unavailable and surge 0) becomes
/// unavailable 1, as in Deployments.
pub fn budgets(strategy: Option<&RolloutStrategy>, replicas: i32) -> (i32, i32) {
    let s = strategy.cloned().unwrap_or_default();
    let surge = resolve(s.max_surge.as_ref(), replicas, true);
    let unavailable = resolve(s.max_unavailable.as_ref(), replicas, false);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// One placed replica as the status records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    /// Replica index.
    pub index: i32,
    /// Revision its pod runs.
    pub revision: String,
    /// Whether its pod is Ready.
    pub ready: bool,
}

/// What a rollout may do now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Indexes to place a replica of the current revision for now: indexes without any replica,
    /// then surge replacements of old replicas within `maxSurge`.
    pub place: Vec<i32>,
    /// Old-revision replicas (index, revision) to delete now: those whose replacement is Ready,
    /// those not Ready, and Ready ones within `maxUnavailable`.
    pub delete: Vec<(i32, String)>,
    /// Of `delete`, those whose index has a Ready replacement.
    pub replaced: BTreeSet<i32>,
    /// Indexes (below `want`) running the current revision.
    pub updated: i32,
    /// Indexes (below `want`) with a Ready replica of any revision.
    pub available: i32,
    /// Whether every index below `want` runs only the current revision, Ready, and nothing else
    /// is placed.
    pub complete: bool,
}

/// The next step of a rollout to `current` for `want` replicas with budgets `(surge,
/// unavailable)`. Replicas at indexes `>= want` are not considered (scaling down removes them).
pub fn plan(want: i32, current: &str, replicas: &[Replica], surge: i32, unavailable: i32) -> Plan {
    let want = want.max(0);
    let mut by: BTreeMap<i32, Vec<&Replica>> = BTreeMap::new();
    for r in replicas.iter().filter(|r| r.index < want) {
        by.entry(r.index).or_default().push(r);
    }
    let mut out = Plan::default();
    let mut missing = Vec::new();
    let mut old_only = Vec::new();
    let mut entries = 0;
    let mut available = 0;
    // Ready old replicas that may go within maxUnavailable: (index has a replacement placed,
    // index, revision).
    let mut ready_old: Vec<(bool, i32, String)> = Vec::new();
    for i in 0..want {
        let rs = by.get(&i).map(Vec::as_slice).unwrap_or(&[]);
        let new = rs.iter().find(|r| r.revision == current);
        let new_ready = new.is_some_and(|r| r.ready);
        let mut old_kept_ready = false;
        for r in rs.iter().filter(|r| r.revision != current) {
            if new_ready {
                out.delete.push((i, r.revision.clone()));
                out.replaced.insert(i);
            } else if !r.ready || old_kept_ready {
                // Not serving, or a second old replica of this index (left by an earlier
                // rollout): deleting it costs no availability.
                out.delete.push((i, r.revision.clone()));
            } else {
                old_kept_ready = true;
                entries += 1;
                ready_old.push((new.is_some(), i, r.revision.clone()));
            }
        }
        if new.is_some() {
            out.updated += 1;
            entries += 1;
        }
        if new_ready || old_kept_ready {
            available += 1;
        }
        match (new.is_some(), old_kept_ready) {
            (false, false) => missing.push(i),
            (false, true) => old_only.push(i),
            (true, _) => {}
        }
    }
    // Deleting Ready old replicas within maxUnavailable; those already replaced by a placed
    // (starting) replica first, lowest index first.
    ready_old.sort_by_key(|(has_new, i, _)| (!has_new, *i));
    let min_available = want - unavailable;
    let mut deleted_ready = BTreeSet::new();
    for (has_new, i, rev) in ready_old {
        if available - 1 < min_available {
            break;
        }
        available -= 1;
        entries -= 1;
        out.delete.push((i, rev));
        deleted_ready.insert(i);
        if !has_new {
            missing.push(i);
        }
    }
    out.available = available;
    // At most `want + surge` replicas in all, counting those about to be deleted (their pods and
    // GPUs stay until the pods are gone): missing indexes first, lowest first, then surges. A
    // replica deleted now is replaced once it is gone from the status, not beside it.
    missing.sort_unstable();
    missing.dedup();
    let mut room = want + surge - entries - out.delete.len() as i32;
    for i in missing {
        if room <= 0 {
            break;
        }
        out.place.push(i);
        room -= 1;
    }
    for i in old_only.into_iter().filter(|i| !deleted_ready.contains(i)) {
        if room <= 0 {
            break;
        }
        out.place.push(i);
        room -= 1;
    }
    out.complete = out.updated == want
        && out.delete.is_empty()
        && replicas
            .iter()
            .all(|r| r.index < want && r.revision == current && r.ready);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(index: i32, revision: &str, ready: bool) -> Replica {
        Replica {
            index,
            revision: revision.into(),
            ready,
        }
    }

    /// Drives a rollout of `want` replicas from "a" to "b" to its end: placed replicas become
    /// Ready at the next step. Returns the fewest Ready replicas and the most replicas seen.
    fn drive(want: i32, surge: i32, unavailable: i32) -> (i32, usize, usize) {
        let mut reps: Vec<Replica> = (0..want).map(|i| r(i, "a", true)).collect();
        let (mut min_ready, mut max_total, mut steps) = (want, reps.len(), 0);
        loop {
            steps += 1;
            assert!(steps < 100, "rollout does not converge: {reps:?}");
            // Pods started last step become Ready.
            for x in reps.iter_mut() {
                x.ready = true;
            }
            let p = plan(want, "b", &reps, surge, unavailable);
            if p.complete {
                break;
            }
            // The pods deleted in this step still exist when the placed ones start.
            max_total = max_total.max(reps.len() + p.place.len());
            reps.retain(|x| !p.delete.contains(&(x.index, x.revision.clone())));
            let ready = reps.iter().filter(|x| x.ready).count() as i32;
            min_ready = min_ready.min(ready);
            for i in p.place {
                reps.push(r(i, "b", false));
            }
        }
        assert!(reps.iter().all(|x| x.revision == "b") && reps.len() == want as usize);
        (min_ready, max_total, steps)
    }

    #[test]
    fn surge_only_never_drops_below_the_replicas() {
        let (min_ready, max_total, _) = drive(3, 1, 0);
        assert_eq!((min_ready, max_total), (3, 4));
    }

    #[test]
    fn unavailable_only_never_exceeds_the_replicas() {
        let (min_ready, max_total, _) = drive(3, 0, 1);
        assert_eq!((min_ready, max_total), (2, 3));
        // maxSurge 0, maxUnavailable 1 over 4 replicas: never a fifth pod beside the deleted one.
        let (min_ready, max_total, _) = drive(4, 0, 1);
        assert_eq!((min_ready, max_total), (3, 4));
    }

    #[test]
    fn no_budget_exceeds_replicas_plus_surge() {
        for want in 1..6 {
            for surge in 0..3 {
                for unavailable in 0..3 {
                    if surge == 0 && unavailable == 0 {
                        continue;
                    }
                    let (_, max_total, _) = drive(want, surge, unavailable);
                    assert!(
                        max_total <= (want + surge) as usize,
                        "{want} replicas, surge {surge}, unavailable {unavailable}: {max_total} pods"
                    );
                }
            }
        }
    }

    #[test]
    fn defaults_roll_a_quarter_at_a_time() {
        assert_eq!(budgets(None, 8), (2, 2));
        // 25 % of 3: surge rounds up, unavailable down.
        assert_eq!(budgets(None, 3), (1, 0));
        let (min_ready, max_total, _) = drive(8, 2, 2);
        assert!(min_ready >= 6 && max_total <= 10, "{min_ready} {max_total}");
    }

    #[test]
    fn resolution_of_ints_and_percentages() {
        let s = |v: &str| Some(IntOrString::String(v.into()));
        assert_eq!(resolve(Some(&IntOrString::Int(2)), 10, true), 2);
        assert_eq!(resolve(s("50%").as_ref(), 3, true), 2);
        assert_eq!(resolve(s("50%").as_ref(), 3, false), 1);
        assert_eq!(resolve(s("0%").as_ref(), 3, true), 0);
        // Both resolving to 0 still makes progress, one replica at a time.
        let st = RolloutStrategy {
            max_surge: Some(IntOrString::Int(0)),
            max_unavailable: s("10%"),
        };
        assert_eq!(budgets(Some(&st), 3), (0, 1));
    }

    #[test]
    fn a_ready_replacement_retires_the_old_replica() {
        let reps = [
            r(0, "a", true),
            r(0, "b", true),
            r(1, "a", true),
            r(2, "a", true),
        ];
        let p = plan(3, "b", &reps, 1, 0);
        assert_eq!(p.delete, vec![(0, "a".to_string())]);
        assert_eq!(p.replaced, BTreeSet::from([0]));
        // The surge slot frees only once the old replica is gone from the status.
        assert!(p.place.is_empty(), "{p:?}");
        assert_eq!((p.updated, p.available, p.complete), (1, 3, false));
    }

    #[test]
    fn a_starting_replacement_holds_the_surge_slot() {
        let reps = [r(0, "a", true), r(0, "b", false), r(1, "a", true)];
        let p = plan(2, "b", &reps, 1, 0);
        assert!(p.delete.is_empty() && p.place.is_empty(), "{p:?}");
    }

    #[test]
    fn old_replicas_that_are_not_ready_go_at_once() {
        let reps = [r(0, "a", false), r(1, "a", true)];
        let p = plan(2, "b", &reps, 0, 0);
        assert_eq!(p.delete, vec![(0, "a".to_string())]);
        // Replaced once it is gone: never three pods for two replicas without surge.
        assert!(p.place.is_empty(), "{p:?}");
        let p = plan(2, "b", &reps[1..], 0, 0);
        assert_eq!(p.place, vec![0]);
    }

    #[test]
    fn a_change_during_a_rollout_keeps_one_old_replica_per_index() {
        // a -> b -> c: index 0 runs a and b, both Ready; one of them goes at once, the other
        // stays until c is Ready (maxUnavailable 0).
        let reps = [r(0, "a", true), r(0, "b", true), r(1, "b", true)];
        let p = plan(2, "c", &reps, 1, 0);
        assert_eq!(p.delete, vec![(0, "b".to_string())]);
        assert_eq!(p.available, 2);
        assert!(
            p.place.is_empty(),
            "the deletion still holds the surge slot: {p:?}"
        );
        let p = plan(2, "c", &reps, 0, 2);
        assert_eq!(p.delete.len(), 3, "{p:?}");
        assert!(p.place.is_empty(), "the deletions hold the slots: {p:?}");
        let p = plan(2, "c", &[], 0, 2);
        assert_eq!(p.place, vec![0, 1], "one replacement per index: {p:?}");
    }

    #[test]
    fn scaling_alone_restarts_nothing() {
        let reps = [r(0, "a", true), r(1, "a", true), r(5, "a", true)];
        let p = plan(4, "a", &reps, 1, 1);
        assert!(p.delete.is_empty());
        assert_eq!(p.place, vec![2, 3]);
        assert_eq!(p.updated, 2);
        let done = plan(2, "a", &reps[..2], 1, 1);
        assert!(done.complete && done.place.is_empty() && done.delete.is_empty());
    }

    #[test]
    fn missing_replicas_are_placed_even_without_surge() {
        let reps = [r(1, "a", true)];
        let p = plan(3, "b", &reps, 0, 1);
        // Indexes 0 and 2 are missing (e.g. lost with a member); replica 1 may not go yet: two
        // indexes are already unavailable.
        assert_eq!(p.place, vec![0, 2]);
        assert!(p.delete.is_empty());
    }

    #[test]
    fn revision_covers_the_rolled_fields_only() {
        let spec: InferenceJobSpec = serde_yaml::from_str(
            "template: {spec: {containers: [{name: s, image: ex/s:1}]}}\nreplicas: 2\ngpusPerReplica: 1\n",
        )
        .unwrap();
        let rev = revision(&spec);
        assert_eq!(rev.len(), 10);
        let mut scaled = spec.clone();
        scaled.replicas = 7;
        scaled.priority = 3;
        assert_eq!(revision(&scaled), rev);
        let mut image = spec.clone();
        image.template.spec.as_mut().unwrap().containers[0].image = Some("ex/s:2".into());
        assert_ne!(revision(&image), rev);
        let mut gpus = spec;
        gpus.gpus_per_replica = 2;
        assert_ne!(revision(&gpus), rev);
    }
}
