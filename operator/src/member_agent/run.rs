//! The agent's loops: work, reports, heartbeat and credential renewal.

use super::apply::{self, ObjectKey, Policy};
use super::hub::{self, Credential, HubEndpoint};
use super::metrics::AgentMetrics;
use super::report;
use crate::api::{
    BindingMode, GpuTopology, JoinRequestSpec, MemberReport, MemberReportSpec, MemberWork,
    MemberWorkStatus, PodReport,
};
use crate::federation::{OrAbsent, dra, labels, sandbox};
use crate::join::names;
use crate::pull;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// `gpupool member-agent`: join the pool in pull mode and serve the hub's work in this cluster.
#[derive(clap::Args, Clone, Debug)]
pub struct AgentArgs {
    /// URL of the hub's API server.
    #[arg(long, env = "GPUPOOL_HUB_URL")]
    pub hub_url: String,
    /// PEM file of the CA of the hub's API server (default: system roots).
    #[arg(long, env = "GPUPOOL_HUB_CA_FILE")]
    pub hub_ca_file: Option<std::path::PathBuf>,
    /// Join token from the pool admin (`gpupool join-token create`); needed only until joined.
    #[arg(long, env = "GPUPOOL_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// Name to join under (the MemberCluster name on the hub).
    #[arg(long, env = "GPUPOOL_MEMBER_NAME")]
    pub member_name: String,
    /// The owner's Solana wallet (base58); pool tokens are minted to it.
    #[arg(long, env = "GPUPOOL_OWNER_WALLET")]
    pub owner_wallet: String,
    /// Region label.
    #[arg(long, env = "GPUPOOL_REGION")]
    pub region: Option<String>,
    /// Price asked per GPU-hour, in pool-token base units.
    #[arg(long)]
    pub price_per_gpu_hour: Option<i64>,
    /// Member labels for jobs' clusterSelector, `key=value` (repeatable).
    #[arg(long = "label", value_parser = parse_kv)]
    pub labels: Vec<(String, String)>,
    /// Namespaces the hub may place work in (repeatable; default: any but system namespaces).
    #[arg(long = "allow-namespace")]
    pub allow_namespaces: Vec<String>,
    /// The agent's own namespace in the member (holds the credential Secret).
    #[arg(long, env = "POD_NAMESPACE", default_value = "gpupool-system")]
    pub namespace: String,
    /// Name of the Secret the hub credential is kept in.
    #[arg(long, default_value = "gpupool-hub-credential")]
    pub credential_secret: String,
    /// Identity written into the heartbeat Lease.
    #[arg(long, env = "POD_NAME", default_value = "member-agent")]
    pub identity: String,
    /// Seconds between heartbeat Lease renewals.
    #[arg(long, default_value_t = 10)]
    pub heartbeat_seconds: u64,
    /// Seconds between inventory checks (a report is written when the inventory changed).
    #[arg(long, default_value_t = 15)]
    pub report_seconds: u64,
    /// Seconds between full re-applies of every work (repairs drift in the member).
    #[arg(long, default_value_t = 60)]
    pub resync_seconds: u64,
    /// Serve /healthz, /readyz and /metrics on this address (e.g. 0.0.0.0:8080).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s}"))
}

/// Why a serving round ended without an error.
enum Ended {
    /// The credential was renewed; serve again with the new one.
    Renewed,
}

/// Whether the agent should try again after `e`: an API server (the member's or the hub's) that
/// did not answer or failed, as opposed to the hub refusing this member (revoked credential,
/// refused join token, denied join), which ends the agent.
fn retryable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<kube::Error>()
            .is_some_and(|k| !unauthorized(k))
    })
}

/// Runs the agent until the hub refuses it (revoked credential, refused or denied join). An API
/// server that does not answer — the member's own or the hub's — is retried with backoff (up to
/// 30 s), the heartbeat saying meanwhile that the member's API is unreachable.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let member = kube::Client::try_default().await?;
    let hub = HubEndpoint {
        url: args.hub_url.clone(),
        ca_pem: match &args.hub_ca_file {
            Some(p) => Some(std::fs::read_to_string(p)?),
            None => None,
        },
    };
    let metrics = AgentMetrics::new(Duration::from_secs(args.heartbeat_seconds));
    let _server = metrics.probes.spawn_server(args.metrics_addr).await?;
    let mut backoff = Duration::from_secs(1);
    loop {
        metrics.joining();
        let round = async {
            let cluster_id = crate::join::member_identity(&member).await?;
            let cred = credential(&args, &member, &hub, &cluster_id).await?;
            let hub_client = hub::client(&hub, &cred.token).await?;
            serve(
                &args,
                member.clone(),
                hub_client,
                &cred,
                &cluster_id,
                &metrics,
            )
            .await
        };
        match round.await {
            Ok(Ended::Renewed) => backoff = Duration::from_secs(1),
            Err(e) if retryable(&e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "an API server did not answer; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The stored credential if the hub still accepts it, else a fresh join.
async fn credential(
    args: &AgentArgs,
    member: &kube::Client,
    hub: &HubEndpoint,
    cluster_id: &str,
) -> anyhow::Result<Credential> {
    if let Some(c) = hub::load(member, &args.namespace, &args.credential_secret).await? {
        let client = hub::client(hub, &c.token).await?;
        let probe = Api::<MemberWork>::namespaced(client, &c.namespace)
            .list(&ListParams::default().limit(1))
            .await;
        match probe {
            Ok(_) => return Ok(c),
            Err(kube::Error::Api(e)) if e.code == 401 || e.code == 403 => {
                tracing::warn!("the hub no longer accepts the stored credential");
                if args.join_token.is_none() {
                    anyhow::bail!(
                        "the hub refused this member's credential (revoked); get a new join token"
                    );
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    let token = args
        .join_token
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("not joined yet and no join token given"))?;
    let version = member.apiserver_version().await?.git_version;
    let spec = JoinRequestSpec {
        member_name: args.member_name.clone(),
        cluster_id: cluster_id.to_string(),
        owner_wallet: args.owner_wallet.clone(),
        kubernetes_version: Some(version),
        region: args.region.clone(),
        labels: args.labels.iter().cloned().collect(),
        price_per_gpu_hour: args.price_per_gpu_hour,
    };
    let cred = hub::join(hub, token, spec, Duration::from_secs(1)).await?;
    ensure_namespace(member, &args.namespace).await?;
    hub::store(member, &args.namespace, &args.credential_secret, &cred).await?;
    tracing::info!(member = %cred.member, namespace = %cred.namespace, "joined the pool");
    Ok(cred)
}

async fn ensure_namespace(member: &kube::Client, ns: &str) -> kube::Result<()> {
    let api: Api<Namespace> = Api::all(member.clone());
    if api.get_opt(ns).await?.is_some() {
        return Ok(());
    }
    let mut n = Namespace::default();
    n.metadata.name = Some(ns.into());
    n.metadata.labels = Some([(apply::APPLIED_BY.to_string(), apply::AGENT.to_string())].into());
    match api.create(&PostParams::default(), &n).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

fn unauthorized(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 401)
}

async fn serve(
    args: &AgentArgs,
    member: kube::Client,
    hub: kube::Client,
    cred: &Credential,
    cluster_id: &str,
    m: &AgentMetrics,
) -> anyhow::Result<Ended> {
    m.serving(hub::claims(&cred.token).ok().and_then(|c| c.expires));
    let work = work_loop(args, member.clone(), hub.clone(), cred, m);
    let heartbeat = heartbeat_loop(args, hub.clone(), cred, m);
    let reports = report_loop(args, member.clone(), hub.clone(), cred, cluster_id, m);
    let renew = renew_credential(&member, &hub, args, cred);
    tokio::select! {
        r = work => r.map(|_| Ended::Renewed),
        r = heartbeat => r,
        r = reports => r.map(|_| Ended::Renewed),
        r = renew => r,
    }
}

/// Renews the heartbeat Lease every `--heartbeat-seconds`, annotated with the member API's
/// health; ends only when the hub refuses the credential.
async fn heartbeat_loop(
    args: &AgentArgs,
    hub: kube::Client,
    cred: &Credential,
    m: &AgentMetrics,
) -> anyhow::Result<Ended> {
    let leases: Api<Lease> = Api::namespaced(hub, &cred.namespace);
    let pp = PatchParams::apply(apply::AGENT).force();
    loop {
        let lease = Lease {
            metadata: kube::api::ObjectMeta {
                name: Some(names::HEARTBEAT_LEASE.into()),
                annotations: Some(
                    [(pull::MEMBER_API_ANNOTATION.to_string(), m.api.annotation())].into(),
                ),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(args.identity.clone()),
                lease_duration_seconds: Some((args.heartbeat_seconds * 3) as i32),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..Default::default()
            }),
        };
        let patch = Patch::Apply(crate::join::token::with_type(&lease));
        match leases.patch(names::HEARTBEAT_LEASE, &pp, &patch).await {
            Ok(_) => m.heartbeat(Ok(())),
            Err(e) if unauthorized(&e) => {
                m.heartbeat(Err(e.to_string()));
                anyhow::bail!("the hub refused this member's credential (revoked)")
            }
            Err(e) => {
                m.heartbeat(Err(e.to_string()));
                tracing::warn!(error = %e, "heartbeat")
            }
        }
        tokio::time::sleep(Duration::from_secs(args.heartbeat_seconds)).await;
    }
}

/// Mints a new credential at two thirds of the current one's life and stores it.
async fn renew_credential(
    member: &kube::Client,
    hub: &kube::Client,
    args: &AgentArgs,
    cred: &Credential,
) -> anyhow::Result<Ended> {
    let c = hub::claims(&cred.token)?;
    let (Some(exp), Some(iat)) = (c.expires, c.issued) else {
        // A token without expiry needs no renewal.
        return futures::future::pending::<anyhow::Result<Ended>>().await;
    };
    let at = iat + (exp - iat) * 2 / 3;
    let wait = (at - Timestamp::now().as_second()).max(0) as u64;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let ttl = Duration::from_secs((exp - iat) as u64);
    let token = hub::mint(hub, &cred.namespace, ttl).await?;
    anyhow::ensure!(!token.is_empty(), "the hub issued no token");
    let renewed = Credential {
        token,
        ..cred.clone()
    };
    hub::store(member, &args.namespace, &args.credential_secret, &renewed).await?;
    tracing::info!("hub credential renewed");
    Ok(Ended::Renewed)
}

/// Spawns a reflector for `api` that wakes every `notify` on each event; returns its store.
fn reflect<K>(
    api: Api<K>,
    cfg: watcher::Config,
    notify: Vec<Arc<Notify>>,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, cfg)).default_backoff();
    let task = tokio::spawn(async move {
        stream
            .for_each(|_| {
                tracing::trace!(kind = K::kind(&()).as_ref(), "watch event");
                for n in &notify {
                    n.notify_one();
                }
                futures::future::ready(())
            })
            .await;
    });
    (store, task)
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

fn api_resource(manifest: &serde_json::Value) -> ApiResource {
    let av = manifest["apiVersion"].as_str().unwrap_or("v1");
    let kind = manifest["kind"].as_str().unwrap_or_default();
    let (group, version) = av.split_once('/').unwrap_or(("", av));
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

fn kind_resource(kind: &str) -> ApiResource {
    match kind {
        "ResourceClaim" => {
            ApiResource::from_gvk(&GroupVersionKind::gvk("resource.k8s.io", "v1", kind))
        }
        _ => ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", kind)),
    }
}

/// The keys of the objects of one kind the agent applied, from its watch store; objects already
/// being deleted are left out (deleting them again only repeats the request).
fn applied_keys<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>) -> Vec<ObjectKey> {
    store
        .state()
        .iter()
        .filter(|o| o.meta().deletion_timestamp.is_none())
        .map(|o| {
            (
                K::kind(&()).into_owned(),
                o.namespace().unwrap_or_default(),
                o.name_any(),
            )
        })
        .collect()
}

/// What the apply loop did, read by the status loop.
#[derive(Default)]
struct Applied {
    /// Work UID → generation applied in full.
    generations: BTreeMap<String, i64>,
    /// Work name → why some of its manifests are not in the member.
    errors: BTreeMap<String, Vec<String>>,
}

/// The works, by name; shared with the store, not copied (a pass over 10 000 works copied
/// about 90 ms of manifests).
fn current_works(works: &Store<MemberWork>) -> Vec<Arc<MemberWork>> {
    let mut ws = works.state();
    ws.sort_by_key(|w| w.name_any());
    ws
}

/// Two loops over the same watches: applying work into the member reacts to work changes alone
/// (so a new work is applied one watch event after the hub wrote it, whatever else is going
/// on), reporting status reacts to pod and work changes.
async fn work_loop(
    args: &AgentArgs,
    member: kube::Client,
    hub: kube::Client,
    cred: &Credential,
    m: &AgentMetrics,
) -> anyhow::Result<()> {
    let (to_apply, to_report) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let works_api: Api<MemberWork> = Api::namespaced(hub.clone(), &cred.namespace);
    let (works, t1) = reflect(
        works_api.clone(),
        watcher::Config::default(),
        vec![to_apply.clone(), to_report.clone()],
    );
    let (pods, t2) = reflect(
        Api::<Pod>::all(member.clone()),
        watcher::Config::default().labels(apply::SELECTOR),
        vec![to_report.clone()],
    );
    // Services are only read to find orphans; a watch keeps that off the apply path.
    let (services, t3) = reflect(
        Api::<Service>::all(member.clone()),
        watcher::Config::default().labels(apply::SELECTOR),
        vec![],
    );
    // ResourceClaims too (DRA members). A member that does not serve `resource.k8s.io/v1`
    // answers 404 and the watch retries with backoff; its store stays empty, so it is not
    // waited for.
    let (claims, t4) = reflect(
        Api::<ResourceClaim>::all(member.clone()),
        watcher::Config::default().labels(apply::SELECTOR),
        vec![],
    );
    let _tasks = AbortOnDrop(vec![t1, t2, t3, t4]);
    works.wait_until_ready().await?;
    pods.wait_until_ready().await?;
    services.wait_until_ready().await?;
    let policy = Policy {
        namespaces: args.allow_namespaces.iter().cloned().collect(),
        own_namespace: args.namespace.clone(),
    };
    let state = Arc::new(std::sync::Mutex::new(Applied::default()));
    let apply = apply_loop(
        member.clone(),
        &works,
        &pods,
        (&services, &claims),
        &policy,
        state.clone(),
        to_apply,
        to_report.clone(),
        (Duration::from_secs(args.resync_seconds), m),
    );
    let report = status_loop(works_api, &works, &pods, &policy, state, to_report);
    tokio::try_join!(apply, report)?;
    Ok(())
}

/// One work's outcome of an apply pass: (uid, name, generation, errors).
type WorkResult = (String, String, i64, Vec<String>);

/// Applies every work whose spec changed since it was last applied (every work on a resync),
/// records the outcome, and deletes what the agent applied that no work wants any more.
#[allow(clippy::too_many_arguments)]
async fn apply_loop(
    member: kube::Client,
    works: &Store<MemberWork>,
    pods: &Store<Pod>,
    (services, claims): (&Store<Service>, &Store<ResourceClaim>),
    policy: &Policy,
    state: Arc<std::sync::Mutex<Applied>>,
    wake: Arc<Notify>,
    report: Arc<Notify>,
    (resync, m): (Duration, &AgentMetrics),
) -> anyhow::Result<()> {
    let mut namespaces: BTreeSet<String> = BTreeSet::new();
    let mut next_full = tokio::time::Instant::now();
    let mut preparer = apply::Preparer::default();
    // Pods this agent created that its pod watch has not shown yet: they hold their GPUs too.
    let mut recent: Recent = HashMap::new();
    // Owner links already written from Secret/ConfigMap copies to the pods that use them.
    let mut copy_owners: HashSet<(ObjectKey, String)> = HashSet::new();
    let mut copies_wait = false;
    loop {
        let full = tokio::time::Instant::now() >= next_full;
        if full {
            next_full = tokio::time::Instant::now() + resync;
        }
        let owned = current_works(works);
        let (want, refused) = preparer.desired(&owned, policy);
        let done = state.lock().expect("state lock").generations.clone();
        let todo: Vec<&Arc<MemberWork>> = owned
            .iter()
            .filter(|w| {
                let generation = w.metadata.generation.unwrap_or(0);
                full || done.get(&w.uid().unwrap_or_default()) != Some(&generation)
            })
            .collect();
        // Who holds which GPU, read only when there is something to apply (a pass over the pods).
        let mut held = if todo.is_empty() {
            apply::GpuHolders::new()
        } else {
            apply::gpu_holders(pods.state().iter().map(|p| &**p))
        };
        recent.retain(|key, (_, at)| {
            at.elapsed() < RECENT && pods.get(&ObjectRef::new(&key.1).within(&key.0)).is_none()
        });
        for (key, (gpus, _)) in &recent {
            for u in gpus {
                held.entry(u.clone()).or_insert_with(|| key.clone());
            }
        }
        let (results, deferred) = apply_works(
            &member,
            &todo,
            (&want, &refused),
            &mut namespaces,
            (pods, &mut held, &mut recent),
        )
        .await;
        m.applied(
            owned.len(),
            refused.len(),
            results.iter().map(|(.., errs)| errs.is_empty()),
        );
        let changed = record_applied(&state, results, &owned) || full || !todo.is_empty();
        if changed {
            report.notify_one();
            let mut existing = applied_keys(pods);
            existing.extend(applied_keys(services));
            existing.extend(applied_keys(claims));
            delete_unwanted(&member, &existing, &want).await;
        }
        if changed || copies_wait {
            copies_wait = own_copies(&member, &want, pods, &mut copy_owners).await;
        }
        // A pod waiting for GPUs another pod still holds is tried again shortly: the holder's
        // deletion is a pod event, which does not wake this loop (only work changes do). So is
        // a copy whose pods the watch has not shown yet.
        let next = if deferred || copies_wait {
            next_full.min(tokio::time::Instant::now() + DEFERRED_RETRY)
        } else {
            next_full
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}

/// Pods created by this agent and not yet seen by its watch: key → (GPU UUIDs, when).
type Recent = HashMap<(String, String), (Vec<String>, std::time::Instant)>;
/// How long a created pod counts as holding its GPUs before the watch shows it.
const RECENT: Duration = Duration::from_secs(60);
/// How soon a pod waiting for another pod's GPUs is tried again.
const DEFERRED_RETRY: Duration = Duration::from_secs(1);

/// Server-side applies each work's objects (creating their namespaces first); per work, what
/// went wrong, and whether a pod waits for GPUs another pod still holds (not created: the GPUs of
/// a pod are its own until it is gone, as on a node whose kubelet keeps a terminating pod's
/// devices).
async fn apply_works(
    member: &kube::Client,
    todo: &[&Arc<MemberWork>],
    (want, refused): (&apply::Wanted, &apply::Refusals),
    namespaces: &mut BTreeSet<String>,
    (pods, held, recent): (&Store<Pod>, &mut apply::GpuHolders, &mut Recent),
) -> (Vec<WorkResult>, bool) {
    let objects = apply::by_work(want);
    let mut results = Vec::new();
    let mut deferred = false;
    for w in todo {
        let work = w.name_any();
        let mut errs = refused.get(&work).cloned().unwrap_or_default();
        for &key in objects.get(work.as_str()).map_or(&[][..], Vec::as_slice) {
            let ((kind, ns, name), (_, manifest)) = (key, &want[key]);
            if !namespaces.contains(ns) {
                // `prepare` let only the tenant namespace of the job's hub namespace through.
                let hub_ns = manifest["metadata"]["labels"][labels::JOB_NAMESPACE]
                    .as_str()
                    .unwrap_or_default();
                match sandbox::ensure_tenant_namespace(member, hub_ns).await {
                    Ok(()) => {
                        namespaces.insert(ns.clone());
                    }
                    Err(e) => {
                        errs.push(format!("namespace {ns}: {e}"));
                        continue;
                    }
                }
            }
            // Only a pod to be created takes GPUs: applying a pod the member already has (running
            // or finished) changes none.
            let creates_pod = kind == "Pod" && pods.get(&ObjectRef::new(name).within(ns)).is_none();
            let gpus = if creates_pod {
                apply::manifest_gpus(manifest)
            } else {
                Vec::new()
            };
            if let Some(why) = apply::gpu_conflict(ns, name, &gpus, held) {
                tracing::debug!(%ns, %name, %why, "pod not created yet");
                errs.push(why);
                deferred = true;
                continue;
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(member.clone(), ns, &api_resource(manifest));
            tracing::debug!(%kind, %ns, %name, "applying");
            let pp = PatchParams::apply(apply::AGENT).force();
            match api.patch(name, &pp, &Patch::Apply(&**manifest)).await {
                Ok(_) if !gpus.is_empty() => {
                    let key = (ns.clone(), name.clone());
                    for u in &gpus {
                        held.insert(u.clone(), key.clone());
                    }
                    recent.insert(key, (gpus, std::time::Instant::now()));
                }
                Ok(_) => {}
                Err(e) => errs.push(format!("{kind} {ns}/{name}: {e}")),
            }
        }
        tracing::debug!(%work, errors = errs.len(), "applied");
        let generation = w.metadata.generation.unwrap_or(0);
        results.push((w.uid().unwrap_or_default(), work, generation, errs));
    }
    (results, deferred)
}

/// Records an apply pass for the status loop and forgets withdrawn works; whether a work was
/// withdrawn (its objects may have to go).
fn record_applied(
    state: &std::sync::Mutex<Applied>,
    results: Vec<WorkResult>,
    owned: &[Arc<MemberWork>],
) -> bool {
    let mut st = state.lock().expect("state lock");
    for (uid, name, generation, errs) in results {
        if errs.is_empty() {
            st.generations.insert(uid, generation);
            st.errors.remove(&name);
        } else {
            st.generations.remove(&uid);
            st.errors.insert(name, errs);
        }
    }
    let live: BTreeSet<String> = owned.iter().filter_map(|w| w.uid()).collect();
    let names: BTreeSet<String> = owned.iter().map(|w| w.name_any()).collect();
    // A withdrawn work leaves objects behind that no work wants any more.
    let withdrawn = st.generations.keys().any(|uid| !live.contains(uid))
        || st.errors.keys().any(|n| !names.contains(n));
    st.generations.retain(|uid, _| live.contains(uid));
    st.errors.retain(|n, _| names.contains(n));
    withdrawn
}

/// Makes the pods that use each Secret or ConfigMap copy its owners (a strategic merge: added
/// to those it has), so that the member's garbage collector deletes a copy with the last pod
/// that used it — a withdrawn work leaves no copy of the hub's Secrets behind. Links already
/// written (`done`) are not written again. Whether a user pod is not in the watch yet (its link
/// is to be made on a later pass).
async fn own_copies(
    member: &kube::Client,
    want: &apply::Wanted,
    pods: &Store<Pod>,
    done: &mut HashSet<(ObjectKey, String)>,
) -> bool {
    done.retain(|(copy, _)| want.contains_key(copy));
    let mut unseen = false;
    for (copy, users) in apply::copy_users(want) {
        let new: Vec<(String, String)> = users
            .iter()
            .filter_map(|(_, ns, name)| {
                let p = pods.get(&ObjectRef::new(name).within(ns));
                unseen |= p.is_none();
                p
            })
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| Some((p.name_any(), p.uid()?)))
            .filter(|(_, uid)| !done.contains(&(copy.clone(), uid.clone())))
            .collect();
        if new.is_empty() {
            continue;
        }
        let owners: Vec<serde_json::Value> = new
            .iter()
            .map(|(name, uid)| {
                serde_json::json!({"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid})
            })
            .collect();
        let (kind, ns, name) = copy;
        let api: Api<DynamicObject> =
            Api::namespaced_with(member.clone(), ns, &kind_resource(kind));
        let patch = serde_json::json!({"metadata": {"ownerReferences": owners}});
        match api
            .patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => done.extend(new.into_iter().map(|(_, uid)| (copy.clone(), uid))),
            Err(e) => tracing::warn!(%kind, %ns, %name, error = %e, "owning a copy"),
        }
    }
    unseen
}

/// Deletes what the agent applied (`existing`) that no work wants.
async fn delete_unwanted(member: &kube::Client, existing: &[ObjectKey], want: &apply::Wanted) {
    for (kind, ns, name) in apply::orphans(existing, want) {
        let api: Api<DynamicObject> =
            Api::namespaced_with(member.clone(), &ns, &kind_resource(&kind));
        match api
            .delete(&name, &DeleteParams::default())
            .await
            .or_absent()
        {
            Ok(Some(_)) => tracing::info!(%kind, %ns, %name, "deleted: no work wants it"),
            Ok(None) => {}
            Err(e) => tracing::warn!(%kind, %ns, %name, error = %e, "delete"),
        }
    }
}

async fn status_loop(
    works_api: Api<MemberWork>,
    works: &Store<MemberWork>,
    pods: &Store<Pod>,
    policy: &Policy,
    state: Arc<std::sync::Mutex<Applied>>,
    wake: Arc<Notify>,
) -> anyhow::Result<()> {
    let mut preparer = apply::Preparer::default();
    loop {
        let owned = current_works(works);
        let (want, _) = preparer.desired(&owned, policy);
        let objects = apply::by_work(&want);
        for w in &owned {
            let status = {
                let st = state.lock().expect("state lock");
                work_status(
                    w,
                    objects
                        .get(w.name_any().as_str())
                        .map_or(&[][..], Vec::as_slice),
                    pods,
                    st.generations.get(&w.uid().unwrap_or_default()),
                    st.errors.get(&w.name_any()),
                )
            };
            if w.status.as_ref().map(strip_times) == Some(strip_times(&status)) {
                continue;
            }
            let status = keep_transition_times(w.status.as_ref(), status);
            let r = works_api
                .patch_status(
                    &w.name_any(),
                    &PatchParams::apply(apply::AGENT).force(),
                    &Patch::Apply(serde_json::json!({
                        "apiVersion": MemberWork::api_version(&()),
                        "kind": MemberWork::kind(&()),
                        "status": status,
                    })),
                )
                .await;
            match r.or_absent() {
                Ok(_) => {}
                Err(e) if unauthorized(&e) => {
                    anyhow::bail!("the hub refused this member's credential (revoked)")
                }
                Err(e) => tracing::warn!(work = %w.name_any(), error = %e, "status"),
            }
        }
        // Also retry a failed report now and then without an event.
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}

/// The status of work `w`, whose wanted objects are `mine`.
fn work_status(
    w: &MemberWork,
    mine: &[&ObjectKey],
    pods: &Store<Pod>,
    applied_generation: Option<&i64>,
    errors: Option<&Vec<String>>,
) -> MemberWorkStatus {
    let pod_reports: Vec<PodReport> = mine
        .iter()
        .filter(|(k, _, _)| k == "Pod")
        .map(|(_, ns, n)| {
            pods.get(&ObjectRef::new(n).within(ns))
                .map(|p| apply::pod_report(&p))
                .unwrap_or_else(|| apply::missing_pod(ns, n))
        })
        .collect();
    let ok = applied_generation.is_some() && errors.is_none_or(|e| e.is_empty());
    let cond = Condition {
        type_: "Applied".into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: if ok { "Applied" } else { "ApplyFailed" }.into(),
        message: errors.map(|e| e.join("; ")).unwrap_or_default(),
        last_transition_time: Time(Timestamp::now()),
        observed_generation: w.metadata.generation,
    };
    MemberWorkStatus {
        observed_generation: applied_generation.copied(),
        objects: mine.len() as i32,
        conditions: vec![cond],
        pods: pod_reports,
    }
}

fn strip_times(s: &MemberWorkStatus) -> MemberWorkStatus {
    let mut s = s.clone();
    for c in &mut s.conditions {
        c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
    }
    s
}

fn keep_transition_times(
    old: Option<&MemberWorkStatus>,
    mut new: MemberWorkStatus,
) -> MemberWorkStatus {
    for c in &mut new.conditions {
        if let Some(o) = old
            .into_iter()
            .flat_map(|o| o.conditions.iter())
            .find(|o| o.type_ == c.type_ && o.status == c.status)
        {
            c.last_transition_time = o.last_transition_time.clone();
        }
    }
    new
}

/// How the member binds GPUs ([`dra::detect`]). A role from before DRA support cannot read
/// DeviceClasses: the member then keeps binding with the device plugin rather than the agent
/// stopping.
async fn binding_mode(member: &kube::Client) -> kube::Result<BindingMode> {
    match dra::detect(member).await {
        Err(kube::Error::Api(e)) if e.code == 403 => {
            tracing::warn!(
                error = %e.message,
                "cannot read NVIDIA's DeviceClass (the agent's role lacks it): binding GPUs with the device plugin"
            );
            Ok(BindingMode::DevicePlugin)
        }
        other => other,
    }
}

/// GPU devices per node in the member's ResourceSlices ([`dra::gpu_devices_per_node`]). Without
/// the right to list them each node offers its published GPUs (said once, in `said`).
/// A DRA member's GPU devices per node from its ResourceSlices, and the GPUs claims gpupool did
/// not make hold (its own carry the job label). A role without the right to list one of them
/// is said once and reads as empty.
async fn dra_inventory(
    member: &kube::Client,
    said: &mut bool,
) -> kube::Result<report::DraInventory> {
    let slices: Vec<Arc<ResourceSlice>> = listed_or_forbidden(
        Api::<ResourceSlice>::all(member.clone()),
        &ListParams::default(),
        said,
    )
    .await?;
    let outside = ListParams::default().labels(&format!("!{}", labels::JOB_UID));
    let claims: Vec<Arc<ResourceClaim>> =
        listed_or_forbidden(Api::<ResourceClaim>::all(member.clone()), &outside, said).await?;
    Ok(report::DraInventory {
        devices: dra::gpu_devices_per_node(&slices),
        outside_claims: dra::claimed_gpus_per_node(&slices, &claims),
    })
}

/// The objects `api` lists, or none when the agent's role may not list them (said once).
async fn listed_or_forbidden<K>(
    api: Api<K>,
    lp: &ListParams,
    said: &mut bool,
) -> kube::Result<Vec<Arc<K>>>
where
    K: Clone + std::fmt::Debug + serde::de::DeserializeOwned + kube::Resource,
{
    match api.list(lp).await {
        Ok(l) => Ok(l.items.into_iter().map(Arc::new).collect()),
        Err(kube::Error::Api(e)) if e.code == 403 => {
            if !std::mem::replace(said, true) {
                tracing::warn!(
                    error = %e.message,
                    "cannot list the member's ResourceSlices or ResourceClaims (the agent's role lacks it): reporting each node's published GPUs"
                );
            }
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// What the agent reports about its member: the API server's version, how GPUs are bound and
/// the nodes.
type Inventory = (String, BindingMode, Vec<crate::api::NodeReport>);

/// Reports the member's inventory every `--report-seconds` (written when it changed). A member
/// API server that does not answer is retried at the same pace and said in the heartbeat; the
/// loop ends only when the hub refuses the credential.
async fn report_loop(
    args: &AgentArgs,
    member: kube::Client,
    hub: kube::Client,
    cred: &Credential,
    cluster_id: &str,
    m: &AgentMetrics,
) -> anyhow::Result<()> {
    let reports: Api<MemberReport> = Api::namespaced(hub, &cred.namespace);
    let mut last: Option<Inventory> = None;
    let mut binding: Option<dra::BindingProbe> = None;
    let mut slices_forbidden_said = false;
    loop {
        match read_inventory(&member, &mut binding, &mut slices_forbidden_said).await {
            Ok(now) => {
                m.api.set(None);
                if last.as_ref() != Some(&now) {
                    let written = publish_report(&reports, cred, cluster_id, &now).await;
                    m.reported(written.is_ok());
                    match written {
                        Ok(()) => last = Some(now),
                        Err(e) if e.downcast_ref::<kube::Error>().is_some_and(unauthorized) => {
                            anyhow::bail!("the hub refused this member's credential (revoked)")
                        }
                        Err(e) => tracing::warn!(error = %e, "writing the report failed"),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the member's API server does not answer");
                m.api.set(Some(e.to_string()));
            }
        }
        tokio::time::sleep(Duration::from_secs(args.report_seconds)).await;
    }
}

/// Reads the member's inventory from its API server.
async fn read_inventory(
    member: &kube::Client,
    binding: &mut Option<dra::BindingProbe>,
    slices_forbidden_said: &mut bool,
) -> kube::Result<Inventory> {
    let version = member.apiserver_version().await?.git_version;
    // How the member binds GPUs, checked again now and then (a DRA driver may be installed
    // later), as the hub does for a push member.
    let mode = match *binding {
        Some(b) if b.at.elapsed() < dra::RECHECK => b.mode,
        _ => {
            let mode = binding_mode(member).await?;
            *binding = Some(dra::BindingProbe {
                mode,
                at: std::time::Instant::now(),
            });
            mode
        }
    };
    let dra = match mode {
        BindingMode::Dra => Some(dra_inventory(member, slices_forbidden_said).await?),
        BindingMode::DevicePlugin => None,
    };
    let nodes = Api::<Node>::all(member.clone())
        .list(&ListParams::default())
        .await?;
    let topologies = Api::<GpuTopology>::all(member.clone())
        .list(&ListParams::default())
        .await
        .or_absent()?
        .map(|l| l.items)
        .unwrap_or_default();
    let nodes = report::node_reports(nodes.items, topologies, dra.as_ref());
    Ok((version, mode, nodes))
}

/// Writes the inventory as the member's report shards and deletes shards beyond their count.
async fn publish_report(
    reports: &Api<MemberReport>,
    cred: &Credential,
    cluster_id: &str,
    (version, mode, nodes): &Inventory,
) -> anyhow::Result<()> {
    let shards = report::shards(nodes.clone(), report::SHARD_BYTES);
    let n = shards.len();
    let report_time = Time(Timestamp::now());
    for (i, shard) in shards.into_iter().enumerate() {
        let name = report::shard_name(&cred.member, i);
        let mut r = MemberReport::new(
            &name,
            MemberReportSpec {
                cluster_id: cluster_id.to_string(),
                kubernetes_version: version.clone(),
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
                shard: i as i32,
                shards: n as i32,
                node_count: shard.len() as i32,
                report_time: report_time.clone(),
                binding_mode: Some(*mode),
                nodes: shard,
            },
        );
        r.metadata.labels = Some([(names::MEMBER_LABEL.to_string(), cred.member.clone())].into());
        let pp = PatchParams::apply(apply::AGENT).force();
        reports.patch(&name, &pp, &Patch::Apply(&r)).await?;
    }
    // Shards beyond the current count are stale.
    for old in reports.list(&ListParams::default()).await?.items {
        if old.spec.shard as usize >= n {
            let _ = reports
                .delete(&old.name_any(), &DeleteParams::default())
                .await;
        }
    }
    Ok(())
}
