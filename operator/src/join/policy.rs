//! Pure decisions of the join flow: who may join under which name, and the exact rights each
//! credential gets on the hub.

use super::names;
use crate::api::{Approval, JoinRequestSpec, MemberCluster, MemberClusterSpec, MemberMode};
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::ResourceExt;

/// What the hub does with a join request.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Create a new pull member with this spec.
    Create(Box<MemberClusterSpec>),
    /// The same cluster joins again under its own name (a new agent, or after revocation).
    Rejoin {
        /// The member's name.
        name: String,
        /// Set its approval back to `Pending` (it had been denied or revoked).
        reset_approval: bool,
    },
    /// Refuse, with the reason the agent is told.
    Refuse(String),
}

/// Why a join request that was answered before (`answered`: it has a status, so its member was
/// created or re-joined) is void now: its member is gone, or being deleted, because an admin
/// removed it while the request waited. The request is refused then, never answered by creating
/// the member again (deleting a member must complete, in any state).
pub fn member_removed(
    req: &JoinRequestSpec,
    answered: bool,
    members: &[MemberCluster],
) -> Option<String> {
    if !answered {
        return None;
    }
    let name = &req.member_name;
    match members.iter().find(|m| &m.name_any() == name) {
        None => Some(format!(
            "member {name} was removed from the pool while this request waited; join again with a new join token"
        )),
        Some(m) if m.metadata.deletion_timestamp.is_some() => Some(format!(
            "member {name} is being removed from the pool; join again with a new join token once it is gone"
        )),
        Some(_) => None,
    }
}

/// Decides a join request against the members that exist.
///
/// `token_member`: the member name the join token was issued for, if it was bound to one.
/// `auto_approve`: the pool's policy lets members in without an admin.
pub fn decide(
    req: &JoinRequestSpec,
    token_member: Option<&str>,
    members: &[MemberCluster],
    auto_approve: bool,
) -> Decision {
    if let Some(bound) = token_member
        && bound != req.member_name
    {
        return Decision::Refuse(format!(
            "this join token is for member {bound}, not {}",
            req.member_name
        ));
    }
    if let Some(other) = members
        .iter()
        .find(|m| m.spec.cluster_id.as_deref() == Some(req.cluster_id.as_str()))
        && other.name_any() != req.member_name
    {
        return Decision::Refuse(format!(
            "this cluster (kube-system UID {}) already joined the pool as {}",
            req.cluster_id,
            other.name_any()
        ));
    }
    match members.iter().find(|m| m.name_any() == req.member_name) {
        Some(m) if m.spec.mode != MemberMode::Pull => Decision::Refuse(format!(
            "member name {} is taken by a push-mode member",
            req.member_name
        )),
        Some(m) if m.spec.cluster_id.as_deref() != Some(req.cluster_id.as_str()) => {
            Decision::Refuse(format!(
                "member name {} is taken by another cluster",
                req.member_name
            ))
        }
        Some(m) => Decision::Rejoin {
            name: req.member_name.clone(),
            reset_approval: m.spec.approval == Approval::Denied,
        },
        None => Decision::Create(Box::new(MemberClusterSpec {
            mode: MemberMode::Pull,
            approval: if auto_approve {
                Approval::Approved
            } else {
                Approval::Pending
            },
            cluster_id: Some(req.cluster_id.clone()),
            owner_wallet: req.owner_wallet.clone(),
            region: req.region.clone(),
            labels: req.labels.clone(),
            price_per_gpu_hour: req.price_per_gpu_hour,
            schedulable: true,
            drain: false,
            ..Default::default()
        })),
    }
}

fn rule(group: &str, resources: &[&str], verbs: &[&str], names: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        resource_names: (!names.is_empty()).then(|| names.iter().map(|s| s.to_string()).collect()),
        non_resource_urls: None,
    }
}

/// Rights of a join token (in the join namespace): create its own `JoinRequest` (the name is
/// enforced by an admission policy, RBAC cannot restrict names on create) and read that request.
/// Nothing else; once approved, [`handover_rules`] add one right in the member's namespace.
pub fn joiner_rules(token_id: &str) -> Vec<PolicyRule> {
    vec![
        rule("gpupool.io", &["joinrequests"], &["create"], &[]),
        rule(
            "gpupool.io",
            &["joinrequests"],
            &["get", "watch"],
            &[token_id],
        ),
    ]
}

/// The one right an approved join token gets in its member's hub namespace: mint a token of the
/// member agent's ServiceAccount (its credential), until the join completes.
pub fn handover_rules() -> Vec<PolicyRule> {
    vec![rule(
        "",
        &["serviceaccounts/token"],
        &["create"],
        &[names::MEMBER_AGENT_SA],
    )]
}

/// Rights of a member agent's credential, all inside the member's own hub namespace: read its
/// work, write the work's status, its inventory reports and its heartbeat Lease, and renew its
/// own token. No cluster-scoped right, no Secret, nothing of any other member.
pub fn member_agent_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            "gpupool.io",
            &["memberworks"],
            &["get", "list", "watch"],
            &[],
        ),
        rule(
            "gpupool.io",
            &["memberworks/status"],
            &["get", "patch", "update"],
            &[],
        ),
        rule(
            "gpupool.io",
            &["memberreports"],
            &[
                "get", "list", "watch", "create", "update", "patch", "delete",
            ],
            &[],
        ),
        rule(
            "coordination.k8s.io",
            &["leases"],
            &["get", "create", "update", "patch"],
            &[],
        ),
        rule(
            "",
            &["serviceaccounts/token"],
            &["create"],
            &[names::MEMBER_AGENT_SA],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const WALLET: &str = "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU";

    fn req(name: &str, id: &str) -> JoinRequestSpec {
        JoinRequestSpec {
            member_name: name.into(),
            cluster_id: id.into(),
            owner_wallet: WALLET.into(),
            kubernetes_version: None,
            region: Some("home".into()),
            labels: Default::default(),
            price_per_gpu_hour: Some(5),
        }
    }

    #[test]
    fn a_member_removed_while_its_request_waits_is_not_created_again() {
        let r = req("east", "uid-1");
        let pending = member("east", MemberMode::Pull, Some("uid-1"), Approval::Pending);
        // Not answered yet: nothing to say (the decision creates the member).
        assert_eq!(member_removed(&r, false, &[]), None);
        // Answered, member still there: the request goes on.
        assert_eq!(
            member_removed(&r, true, std::slice::from_ref(&pending)),
            None
        );
        // Answered, member deleted or being deleted: void.
        assert!(
            member_removed(&r, true, &[])
                .unwrap()
                .contains("was removed")
        );
        let mut deleting = pending;
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(1).unwrap(),
            ));
        assert!(
            member_removed(&r, true, &[deleting])
                .unwrap()
                .contains("being removed")
        );
    }

    fn member(name: &str, mode: MemberMode, id: Option<&str>, approval: Approval) -> MemberCluster {
        MemberCluster::new(
            name,
            MemberClusterSpec {
                mode,
                approval,
                cluster_id: id.map(String::from),
                owner_wallet: WALLET.into(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn a_new_cluster_becomes_a_pending_pull_member_with_its_identity() {
        let Decision::Create(spec) = decide(&req("east", "uid-east-1"), None, &[], false) else {
            panic!("expected Create")
        };
        assert_eq!(spec.mode, MemberMode::Pull);
        assert_eq!(spec.approval, Approval::Pending);
        assert_eq!(spec.cluster_id.as_deref(), Some("uid-east-1"));
        assert!(
            spec.kubeconfig_ref().is_none(),
            "a pull member holds no kubeconfig"
        );
        assert_eq!(spec.price_per_gpu_hour, Some(5));
        let Decision::Create(spec) = decide(&req("east", "uid-east-1"), None, &[], true) else {
            panic!("expected Create")
        };
        assert_eq!(spec.approval, Approval::Approved, "auto-approve policy");
    }

    #[test]
    fn the_same_cluster_under_another_name_is_refused() {
        let ms = [member(
            "east",
            MemberMode::Pull,
            Some("uid-1"),
            Approval::Approved,
        )];
        let Decision::Refuse(why) = decide(&req("west", "uid-1"), None, &ms, true) else {
            panic!("expected Refuse")
        };
        assert!(why.contains("already joined the pool as east"), "{why}");
    }

    #[test]
    fn a_taken_name_is_refused() {
        let ms = [
            member("east", MemberMode::Pull, Some("uid-1"), Approval::Approved),
            member("push", MemberMode::Push, None, Approval::Approved),
        ];
        assert!(matches!(
            decide(&req("east", "uid-2"), None, &ms, false),
            Decision::Refuse(w) if w.contains("another cluster")
        ));
        assert!(matches!(
            decide(&req("push", "uid-3"), None, &ms, false),
            Decision::Refuse(w) if w.contains("push-mode")
        ));
    }

    #[test]
    fn rejoin_keeps_the_member_and_a_revoked_one_goes_back_to_pending() {
        let ms = [
            member("east", MemberMode::Pull, Some("uid-1"), Approval::Approved),
            member("west", MemberMode::Pull, Some("uid-2"), Approval::Denied),
        ];
        assert_eq!(
            decide(&req("east", "uid-1"), None, &ms, false),
            Decision::Rejoin {
                name: "east".into(),
                reset_approval: false
            }
        );
        assert_eq!(
            decide(&req("west", "uid-2"), None, &ms, true),
            Decision::Rejoin {
                name: "west".into(),
                reset_approval: true
            }
        );
    }

    #[test]
    fn a_token_bound_to_a_member_name_joins_only_under_that_name() {
        assert!(matches!(
            decide(&req("west", "uid-1"), Some("east"), &[], false),
            Decision::Refuse(w) if w.contains("for member east")
        ));
        assert!(matches!(
            decide(&req("east", "uid-1"), Some("east"), &[], false),
            Decision::Create(_)
        ));
    }

    #[test]
    fn credentials_are_narrow() {
        let j = joiner_rules("join-abc12");
        // Reads are pinned to the token's own request and credential Secret.
        for r in &j {
            let verbs = &r.verbs;
            if verbs != &["create"] {
                assert!(r.resource_names.is_some(), "{r:?}");
            }
            assert!(!verbs.iter().any(|v| v == "list" || v == "*"), "{r:?}");
        }
        assert!(
            !j.iter()
                .any(|r| r.resources.as_ref().unwrap().iter().any(|x| x == "secrets"))
        );
        let h = handover_rules();
        assert_eq!(h.len(), 1);
        assert_eq!(
            h[0].resource_names.as_deref(),
            Some(&[names::MEMBER_AGENT_SA.to_string()][..])
        );
        let m = member_agent_rules();
        for r in &m {
            let res = r.resources.as_ref().unwrap();
            assert!(!res.iter().any(|x| x == "secrets" || x == "*"), "{r:?}");
            assert!(!r.verbs.iter().any(|v| v == "*"), "{r:?}");
        }
        // The agent reads its work but never writes the spec.
        let work = m
            .iter()
            .find(|r| r.resources.as_ref().unwrap() == &["memberworks"])
            .unwrap();
        assert_eq!(work.verbs, ["get", "list", "watch"]);
    }
}
