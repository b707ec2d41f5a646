//! Picking a replica: least requests in flight (counted by the gateway, from the moment a request
//! is sent until its response body has been streamed), the caller's region first while that
//! costs little, and never a replica that just failed (ejected for a while).

use super::table::Replica;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A replica of the caller's region is taken while it has at most this many requests in flight
/// more than the least-loaded replica anywhere.
pub const REGION_SLACK: usize = 2;

#[derive(Debug, Default)]
struct State {
    in_flight: HashMap<String, usize>,
    ejected: HashMap<String, Instant>,
}

/// In-flight counts and ejections, shared by all requests.
#[derive(Debug)]
pub struct Balancer {
    state: Mutex<State>,
    turn: AtomicUsize,
    eject_for: Duration,
}

/// A request in flight to a replica; counted until dropped.
#[derive(Debug)]
pub struct InFlight {
    balancer: Arc<Balancer>,
    id: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut st = self.balancer.state.lock().expect("balancer lock");
        if let Some(n) = st.in_flight.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.in_flight.remove(&self.id);
            }
        }
    }
}

impl Balancer {
    /// A balancer that keeps a failed replica out for `eject_for`.
    pub fn new(eject_for: Duration) -> Arc<Balancer> {
        Arc::new(Balancer {
            state: Mutex::new(State::default()),
            turn: AtomicUsize::new(0),
            eject_for,
        })
    }

    /// Picks one of `candidates` (those in `tried` excluded) and counts a request in flight to
    /// it. `regions` gives each member's region; `region` is the caller's. Ejected replicas are
    /// taken only when nothing else is left, replicas of member `avoid` (where the last try
    /// failed) only when no other member has one.
    pub fn pick(
        self: &Arc<Self>,
        candidates: &[Replica],
        tried: &[String],
        regions: &HashMap<String, String>,
        region: Option<&str>,
        avoid: Option<&str>,
    ) -> Option<(Replica, InFlight)> {
        let now = Instant::now();
        let mut st = self.state.lock().expect("balancer lock");
        st.ejected.retain(|_, until| *until > now);
        let open: Vec<&Replica> = candidates
            .iter()
            .filter(|r| !tried.contains(&r.id()))
            .collect();
        let elsewhere: Vec<&Replica> = open
            .iter()
            .copied()
            .filter(|r| Some(r.member.as_str()) != avoid)
            .collect();
        let open = if elsewhere.is_empty() {
            open
        } else {
            elsewhere
        };
        let healthy: Vec<&Replica> = open
            .iter()
            .copied()
            .filter(|r| !st.ejected.contains_key(&r.id()))
            .collect();
        let pool = if healthy.is_empty() { open } else { healthy };
        let load = |r: &Replica| st.in_flight.get(&r.id()).copied().unwrap_or(0);
        let least = pool.iter().map(|r| load(r)).min()?;
        let local: Vec<&Replica> = pool
            .iter()
            .copied()
            .filter(|r| region.is_some() && regions.get(&r.member).map(String::as_str) == region)
            .filter(|r| load(r) <= least + REGION_SLACK)
            .collect();
        let pool = if local.is_empty() { pool } else { local };
        let least = pool.iter().map(|r| load(r)).min()?;
        let best: Vec<&Replica> = pool.into_iter().filter(|r| load(r) == least).collect();
        let chosen = best[self.turn.fetch_add(1, Ordering::Relaxed) % best.len()].clone();
        let id = chosen.id();
        *st.in_flight.entry(id.clone()).or_default() += 1;
        drop(st);
        Some((
            chosen,
            InFlight {
                balancer: self.clone(),
                id,
            },
        ))
    }

    /// Keeps `replica` out of picks for a while (it failed to answer).
    pub fn eject(&self, replica: &Replica) {
        let mut st = self.state.lock().expect("balancer lock");
        st.ejected
            .insert(replica.id(), Instant::now() + self.eject_for);
    }

    /// Requests in flight to `replica` now.
    pub fn in_flight(&self, replica: &Replica) -> usize {
        let st = self.state.lock().expect("balancer lock");
        st.in_flight.get(&replica.id()).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(member: &str, pod: &str) -> Replica {
        Replica {
            member: member.into(),
            namespace: "ns".into(),
            pod: pod.into(),
            ip: None,
            port: 80,
        }
    }

    #[test]
    fn the_least_loaded_replica_is_picked_and_released_when_done() {
        let b = Balancer::new(Duration::from_secs(10));
        let rs = vec![r("m1", "a"), r("m1", "b"), r("m2", "c")];
        let none = HashMap::new();
        let held: Vec<_> = (0..6)
            .map(|_| b.pick(&rs, &[], &none, None, None).unwrap())
            .collect();
        for x in &rs {
            assert_eq!(b.in_flight(x), 2, "{x:?}");
        }
        drop(held);
        for x in &rs {
            assert_eq!(b.in_flight(x), 0);
        }
        // Two held on `a`: the next two go to the others.
        let _a1 = b.pick(&rs[..1], &[], &none, None, None).unwrap();
        let _a2 = b.pick(&rs[..1], &[], &none, None, None).unwrap();
        let (p1, _g1) = b.pick(&rs, &[], &none, None, None).unwrap();
        let (p2, _g2) = b.pick(&rs, &[], &none, None, None).unwrap();
        assert_ne!(p1.pod, "a");
        assert_ne!(p2.pod, "a");
        assert_ne!(p1, p2);
    }

    #[test]
    fn the_callers_region_is_preferred_while_it_is_not_much_busier() {
        let b = Balancer::new(Duration::from_secs(10));
        let rs = vec![r("east", "a"), r("west", "b")];
        let regions: HashMap<String, String> = [("east", "eu"), ("west", "us")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let mut held = Vec::new();
        for _ in 0..=REGION_SLACK {
            let (p, g) = b.pick(&rs, &[], &regions, Some("us"), None).unwrap();
            assert_eq!(p.member, "west");
            held.push(g);
        }
        let (p, _g) = b.pick(&rs, &[], &regions, Some("us"), None).unwrap();
        assert_eq!(p.member, "east", "the caller's region is too busy now");
    }

    #[test]
    fn tried_and_ejected_replicas_are_avoided() {
        let b = Balancer::new(Duration::from_secs(10));
        let rs = vec![r("m1", "a"), r("m2", "b")];
        let none = HashMap::new();
        let tried = vec![rs[0].id()];
        for _ in 0..4 {
            assert_eq!(b.pick(&rs, &tried, &none, None, None).unwrap().0.pod, "b");
        }
        b.eject(&rs[1]);
        for _ in 0..4 {
            assert_eq!(b.pick(&rs, &[], &none, None, None).unwrap().0.pod, "a");
        }
        // Only ejected replicas left: one is still tried rather than refusing the call.
        assert_eq!(b.pick(&rs, &tried, &none, None, None).unwrap().0.pod, "b");
        assert!(
            b.pick(&rs, &[rs[0].id(), rs[1].id()], &none, None, None)
                .is_none()
        );
    }
}
