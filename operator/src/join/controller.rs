//! The hub side of the join: answers `JoinRequest`s, creates pull members, hands over their
//! credentials once approved, withdraws them when a member is denied, and expires join tokens.

use super::names::{self, JOIN_NAMESPACE};
use super::policy::{self, Decision};
use super::probes::JoinMetrics;
use super::token::{self, with_type};
use crate::api::{Approval, JoinPhase, JoinRequest, JoinRequestStatus, MemberCluster, MemberMode};
use crate::meta::OrAbsent;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Settings of the join controller.
#[derive(Clone, Debug)]
pub struct JoinConfig {
    /// Approve joining members without an admin.
    pub auto_approve: bool,
    /// How often waiting requests are looked at again and expired tokens swept.
    pub resync: Duration,
    /// Serve /healthz, /readyz and /metrics on this address.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl Default for JoinConfig {
    fn default() -> Self {
        JoinConfig {
            auto_approve: false,
            resync: Duration::from_secs(10),
            metrics_addr: None,
        }
    }
}

struct Ctx {
    hub: kube::Client,
    cfg: JoinConfig,
}

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The hub's API answered with an error.
    #[error("hub API: {0}")]
    Kube(#[from] kube::Error),
}

fn ssa() -> PatchParams {
    PatchParams::apply(super::FIELD_MANAGER).force()
}

fn part_of() -> BTreeMap<String, String> {
    [(
        "app.kubernetes.io/part-of".to_string(),
        "gpupool".to_string(),
    )]
    .into()
}

/// Runs the join controller, the member-access enforcer and the token sweeper until the
/// process stops. Installs the join namespace and admission policy first.
pub async fn run(hub: kube::Client, cfg: JoinConfig) -> anyhow::Result<()> {
    let metrics = JoinMetrics::new();
    let _server = metrics.probes.spawn_server(cfg.metrics_addr).await?;
    token::install(&hub).await?;
    metrics.probes.set_ready(Ok(()));
    let ctx = Arc::new(Ctx {
        hub: hub.clone(),
        cfg: cfg.clone(),
    });
    let requests: Api<JoinRequest> = Api::namespaced(hub.clone(), JOIN_NAMESPACE);
    let members: Api<MemberCluster> = Api::all(hub.clone());
    let join = Controller::new(requests, watcher::Config::default()).watches(
        members.clone(),
        watcher::Config::default(),
        |mc| {
            mc.annotations()
                .get(names::JOIN_REQUEST)
                .map(|id| ObjectRef::new(id).within(JOIN_NAMESPACE))
        },
    );
    let store = join.store();
    let join = counted(
        join.run(reconcile_request, request_error, ctx.clone()),
        &metrics,
        "request",
    );
    let access = counted(
        Controller::new(members, watcher::Config::default()).run(
            reconcile_access,
            access_error,
            ctx.clone(),
        ),
        &metrics,
        "access",
    );
    let sweeper = async {
        let pulse = metrics.probes.pulse(
            "token-sweeper",
            Some(cfg.resync * 3 + Duration::from_secs(60)),
        );
        loop {
            match token::sweep_expired(&hub).await {
                Ok(gone) if !gone.is_empty() => {
                    metrics.tokens_expired.inc_by(gone.len() as u64);
                    tracing::info!(?gone, "expired join tokens revoked")
                }
                Ok(_) => {}
                Err(e) => {
                    metrics.sweep_failures.inc();
                    tracing::warn!(error = %e, "sweeping join tokens")
                }
            }
            metrics.count_requests(store.state().iter().map(|r| &**r));
            pulse.beat();
            tokio::time::sleep(cfg.resync).await;
        }
    };
    tokio::join!(join, access, sweeper);
    Ok(())
}

/// Drives a controller's stream, counting its reconciles; its liveness check fails if it ends.
async fn counted<S, T, E>(stream: S, metrics: &JoinMetrics, controller: &'static str)
where
    S: futures::Stream<Item = Result<T, E>>,
    E: std::fmt::Display,
{
    let _alive = metrics.probes.pulse(controller, None);
    stream
        .for_each(|r| {
            metrics.reconciled(controller, r.is_ok());
            if let Err(e) = r {
                tracing::debug!(error = %e, controller, "join reconcile");
            }
            futures::future::ready(())
        })
        .await;
}

fn request_error(_: Arc<JoinRequest>, e: &Error, _: Arc<Ctx>) -> Action {
    tracing::warn!(error = %e, "join request");
    Action::requeue(Duration::from_secs(2))
}

fn access_error(_: Arc<MemberCluster>, e: &Error, _: Arc<Ctx>) -> Action {
    tracing::warn!(error = %e, "member access");
    Action::requeue(Duration::from_secs(2))
}

async fn set_status(
    hub: &kube::Client,
    req: &JoinRequest,
    status: JoinRequestStatus,
) -> Result<(), Error> {
    if req.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<JoinRequest> = Api::namespaced(hub.clone(), JOIN_NAMESPACE);
    api.patch_status(
        &req.name_any(),
        &ssa(),
        &Patch::Apply(serde_json::json!({
            "apiVersion": JoinRequest::api_version(&()),
            "kind": JoinRequest::kind(&()),
            "status": status,
        })),
    )
    .await?;
    Ok(())
}

async fn reconcile_request(req: Arc<JoinRequest>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let hub = &ctx.hub;
    let phase = req.status.as_ref().map(|s| s.phase).unwrap_or_default();
    if matches!(phase, JoinPhase::Joined | JoinPhase::Refused) {
        return Ok(Action::await_change());
    }
    let info = match valid_token(hub, &req.name_any()).await? {
        Ok(info) => info,
        Err(why) => {
            set_status(hub, &req, refused(why)).await?;
            return Ok(Action::await_change());
        }
    };
    if let Some(wait) = record_member(&ctx, &req, &info).await? {
        return Ok(wait);
    }
    let name = &req.spec.member_name;
    let Some(mc) = Api::<MemberCluster>::all(hub.clone()).get_opt(name).await? else {
        // Removed right after this pass created or re-joined it, before the request recorded
        // its answer: void, as `policy::member_removed` says of an answered request (deleting
        // a member completes; it is not created again from this request).
        let why = format!(
            "member {name} was removed from the pool while this request waited; join again with a new join token"
        );
        set_status(hub, &req, refused(why)).await?;
        token::revoke(hub, &req.name_any()).await?;
        return Ok(Action::await_change());
    };
    let (phase, message) = match mc.spec.approval {
        Approval::Approved => return hand_over(hub, &req, &mc).await,
        Approval::Pending => (
            JoinPhase::Pending,
            format!("waiting for a pool admin: gpupool approve {name}"),
        ),
        Approval::Denied => (
            JoinPhase::Denied,
            format!("a pool admin denied member {name}"),
        ),
    };
    let status = JoinRequestStatus {
        phase,
        message: Some(message),
        ..Default::default()
    };
    set_status(hub, &req, status).await?;
    Ok(Action::requeue(ctx.cfg.resync))
}

/// A `Refused` status saying why.
fn refused(message: String) -> JoinRequestStatus {
    JoinRequestStatus {
        phase: JoinPhase::Refused,
        message: Some(message),
        ..Default::default()
    }
}

/// Step 1: the join token `id` must still exist and be unexpired while its request waits (an
/// expired one is revoked). `Err(why)` refuses the request.
async fn valid_token(
    hub: &kube::Client,
    id: &str,
) -> Result<Result<token::TokenInfo, String>, Error> {
    let sa = Api::<ServiceAccount>::namespaced(hub.clone(), JOIN_NAMESPACE)
        .get_opt(id)
        .await?;
    let Some(sa) = sa else {
        return Ok(Err("the join token was revoked or has expired".into()));
    };
    let info = token::info(&sa);
    if token::expired(&info, Timestamp::now()) {
        token::revoke(hub, id).await?;
        return Ok(Err("the join token has expired".into()));
    }
    Ok(Ok(info))
}

/// Step 2: the pool's policy on the request — refuse it, create the `MemberCluster` (`mode:
/// Pull`) or mark an existing one re-joined. `Some(action)` ends this pass.
async fn record_member(
    ctx: &Ctx,
    req: &JoinRequest,
    info: &token::TokenInfo,
) -> Result<Option<Action>, Error> {
    let hub = &ctx.hub;
    let id = req.name_any();
    let members: Api<MemberCluster> = Api::all(hub.clone());
    let all = members.list(&Default::default()).await?.items;
    let name = req.spec.member_name.clone();
    if let Some(why) = policy::member_removed(&req.spec, req.status.is_some(), &all) {
        set_status(hub, req, refused(why)).await?;
        token::revoke(hub, &id).await?;
        return Ok(Some(Action::await_change()));
    }
    let for_member = info.for_member.as_deref();
    match policy::decide(&req.spec, for_member, &all, ctx.cfg.auto_approve) {
        Decision::Refuse(why) => {
            set_status(hub, req, refused(why)).await?;
            return Ok(Some(Action::await_change()));
        }
        Decision::Create(spec) => {
            let mut mc = MemberCluster::new(&name, *spec);
            mc.metadata.annotations = Some([(names::JOIN_REQUEST.to_string(), id.clone())].into());
            mc.metadata.labels = Some(part_of());
            match members.create(&PostParams::default(), &mc).await {
                Ok(_) => {
                    tracing::info!(member = %name, request = %id, "pull member joined, pending approval")
                }
                // A concurrent request won the name; the next pass decides again.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    return Ok(Some(Action::requeue(Duration::from_millis(200))));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Decision::Rejoin {
            name,
            reset_approval,
        } => {
            let mut patch =
                serde_json::json!({"metadata": {"annotations": {names::JOIN_REQUEST: id}}});
            if reset_approval {
                patch["spec"] = serde_json::json!({"approval": Approval::Pending});
            }
            members
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await?;
        }
    }
    Ok(None)
}

/// Step 3, once approved: the member's hub namespace and access, the hand-over binding that lets
/// the join token mint the agent's credential, and — once the agent heartbeats with that
/// credential — the token spent and the request `Joined`.
async fn hand_over(
    hub: &kube::Client,
    req: &JoinRequest,
    mc: &MemberCluster,
) -> Result<Action, Error> {
    let (id, name) = (req.name_any(), mc.name_any());
    let ns = names::member_namespace(&name);
    ensure_member_access(hub, mc).await?;
    let binding = ensure_handover(hub, &ns, &id).await?;
    // Joined once the agent heartbeats with the credential it minted after approval.
    let handed_over = binding.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let lease = Api::<Lease>::namespaced(hub.clone(), &ns)
        .get_opt(names::HEARTBEAT_LEASE)
        .await?;
    let renewed = lease
        .and_then(|l| l.spec)
        .and_then(|s| s.renew_time)
        .map(|t| t.0);
    if let (Some(h), Some(r)) = (handed_over, renewed)
        && r >= h
    {
        // Spend the token first: a request reported Joined has no usable token.
        token::revoke(hub, &id).await?;
        remove_handover(hub, &ns).await?;
        let status = JoinRequestStatus {
            phase: JoinPhase::Joined,
            message: Some(format!(
                "member {name} heartbeats with its own credential; join token spent"
            )),
            hub_namespace: Some(ns),
        };
        set_status(hub, req, status).await?;
        return Ok(Action::await_change());
    }
    let status = JoinRequestStatus {
        phase: JoinPhase::Approved,
        message: Some(format!(
            "approved; the join token may now mint the credential of {name}"
        )),
        hub_namespace: Some(ns),
    };
    set_status(hub, req, status).await?;
    Ok(Action::requeue(Duration::from_secs(1)))
}

/// Creates the member's hub namespace, its agent's ServiceAccount, Role and RoleBinding.
async fn ensure_member_access(hub: &kube::Client, mc: &MemberCluster) -> Result<(), Error> {
    let name = mc.name_any();
    let ns = names::member_namespace(&name);
    let mut labels = part_of();
    labels.insert(names::MEMBER_LABEL.into(), name.clone());
    let meta = |n: &str, namespaced: bool| ObjectMeta {
        name: Some(n.into()),
        namespace: namespaced.then(|| ns.clone()),
        labels: Some(labels.clone()),
        ..Default::default()
    };
    Api::<Namespace>::all(hub.clone())
        .patch(
            &ns,
            &ssa(),
            &Patch::Apply(with_type(&Namespace {
                metadata: meta(&ns, false),
                ..Default::default()
            })),
        )
        .await?;
    let sa = names::MEMBER_AGENT_SA;
    Api::<ServiceAccount>::namespaced(hub.clone(), &ns)
        .patch(
            sa,
            &ssa(),
            &Patch::Apply(with_type(&ServiceAccount {
                metadata: meta(sa, true),
                automount_service_account_token: Some(false),
                ..Default::default()
            })),
        )
        .await?;
    Api::<Role>::namespaced(hub.clone(), &ns)
        .patch(
            sa,
            &ssa(),
            &Patch::Apply(with_type(&Role {
                metadata: meta(sa, true),
                rules: Some(policy::member_agent_rules()),
            })),
        )
        .await?;
    Api::<RoleBinding>::namespaced(hub.clone(), &ns)
        .patch(
            sa,
            &ssa(),
            &Patch::Apply(with_type(&RoleBinding {
                metadata: meta(sa, true),
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "Role".into(),
                    name: sa.into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: sa.into(),
                    namespace: Some(ns.clone()),
                    api_group: None,
                }]),
            })),
        )
        .await?;
    Ok(())
}

/// Lets the join token mint one thing: a token of the member agent's ServiceAccount (the agent
/// mints its credential itself, so no credential is ever stored on the hub). Returns the
/// RoleBinding (its creation time is when the hand-over began).
async fn ensure_handover(
    hub: &kube::Client,
    ns: &str,
    token_id: &str,
) -> Result<RoleBinding, Error> {
    let meta = ObjectMeta {
        name: Some(names::HANDOVER.into()),
        namespace: Some(ns.into()),
        labels: Some(part_of()),
        ..Default::default()
    };
    Api::<Role>::namespaced(hub.clone(), ns)
        .patch(
            names::HANDOVER,
            &ssa(),
            &Patch::Apply(with_type(&Role {
                metadata: meta.clone(),
                rules: Some(policy::handover_rules()),
            })),
        )
        .await?;
    let rb = Api::<RoleBinding>::namespaced(hub.clone(), ns)
        .patch(
            names::HANDOVER,
            &ssa(),
            &Patch::Apply(with_type(&RoleBinding {
                metadata: meta,
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "Role".into(),
                    name: names::HANDOVER.into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: token_id.into(),
                    namespace: Some(JOIN_NAMESPACE.into()),
                    api_group: None,
                }]),
            })),
        )
        .await?;
    Ok(rb)
}

/// Ends a hand-over (idempotent).
async fn remove_handover(hub: &kube::Client, ns: &str) -> Result<(), Error> {
    let dp = DeleteParams::default();
    for r in [
        Api::<RoleBinding>::namespaced(hub.clone(), ns)
            .delete(names::HANDOVER, &dp)
            .await
            .map(|_| ()),
        Api::<Role>::namespaced(hub.clone(), ns)
            .delete(names::HANDOVER, &dp)
            .await
            .map(|_| ()),
    ] {
        r.or_absent()?;
    }
    Ok(())
}

/// A pull member that is not approved holds no working credential: its agent's ServiceAccount
/// (and with it every token issued to it) and RoleBinding are deleted.
async fn reconcile_access(mc: Arc<MemberCluster>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if mc.spec.mode != MemberMode::Pull || mc.spec.approval == Approval::Approved {
        return Ok(Action::await_change());
    }
    let ns = names::member_namespace(&mc.name_any());
    let dp = DeleteParams::default();
    for r in [
        Api::<ServiceAccount>::namespaced(ctx.hub.clone(), &ns)
            .delete(names::MEMBER_AGENT_SA, &dp)
            .await
            .map(|_| ()),
        Api::<RoleBinding>::namespaced(ctx.hub.clone(), &ns)
            .delete(names::MEMBER_AGENT_SA, &dp)
            .await
            .map(|_| ()),
    ] {
        if r.or_absent()?.is_some() {
            tracing::info!(member = %mc.name_any(), "member credential withdrawn");
        }
    }
    remove_handover(&ctx.hub, &ns).await?;
    Ok(Action::await_change())
}
