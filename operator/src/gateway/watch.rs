//! What the gateway watches: the hub's InferenceJobs (a reflector store: placements and
//! revisions), the hub's MemberClusters (regions, and a client per push member from its
//! kubeconfig Secret) and, in every push member, the pods of inference replicas (Ready, pod IP,
//! terminating), kept in a [`PodIndex`] by job.

use super::proxy::Upstreams;
use super::table::{PodIndex, PodInfo};
use crate::api::{InferenceJob, MemberCluster};
use crate::federation::watch_client_from_kubeconfig;
use crate::meta::labels;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::task::JoinHandle;

/// The state the watches keep for the request path.
#[derive(Clone)]
pub struct Views {
    /// Hub InferenceJobs.
    pub jobs: Store<InferenceJob>,
    /// Replica pods in the members, by job.
    pub pods: Arc<RwLock<PodIndex>>,
    /// Region of each member.
    pub regions: Arc<RwLock<HashMap<String, String>>>,
}

/// Starts the watches; the tasks run until aborted.
pub fn start(
    hub: &kube::Client,
    secrets_namespace: &str,
    upstreams: Arc<Upstreams>,
) -> (Views, Vec<JoinHandle<()>>) {
    let (jobs, writer) = reflector::store();
    let views = Views {
        jobs,
        pods: Arc::default(),
        regions: Arc::default(),
    };
    let job_stream = watch(
        Api::<InferenceJob>::all(hub.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects();
    let jobs_task = tokio::spawn(async move {
        let mut s = std::pin::pin!(job_stream);
        while let Some(ev) = s.next().await {
            if let Err(e) = ev {
                tracing::warn!(error = %e, "gateway: hub InferenceJob watch");
            }
        }
    });
    let members = Members {
        hub: hub.clone(),
        secrets_namespace: secrets_namespace.to_string(),
        upstreams,
        views: views.clone(),
        running: HashMap::new(),
    };
    let members_task = tokio::spawn(members.run());
    (views, vec![jobs_task, members_task])
}

/// The push members the gateway reaches, each with its pod watch.
struct Members {
    hub: kube::Client,
    secrets_namespace: String,
    upstreams: Arc<Upstreams>,
    views: Views,
    /// Member → (its kubeconfig text, its pod watch).
    running: HashMap<String, (String, JoinHandle<()>)>,
}

impl Members {
    async fn run(mut self) {
        let api = Api::<MemberCluster>::all(self.hub.clone());
        let mut s = std::pin::pin!(watch(api, watcher::Config::default()).default_backoff());
        let mut listed = Vec::new();
        while let Some(ev) = s.next().await {
            match ev {
                Ok(Event::Apply(mc)) => self.apply(&mc).await,
                Ok(Event::Delete(mc)) => self.forget(&mc.name_any()),
                Ok(Event::Init) => listed.clear(),
                Ok(Event::InitApply(mc)) => listed.push(mc),
                Ok(Event::InitDone) => {
                    let names: Vec<String> = listed.iter().map(|m| m.name_any()).collect();
                    let gone: Vec<String> = self
                        .running
                        .keys()
                        .filter(|k| !names.contains(k))
                        .cloned()
                        .collect();
                    for g in gone {
                        self.forget(&g);
                    }
                    for mc in std::mem::take(&mut listed) {
                        self.apply(&mc).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "gateway: MemberCluster watch"),
            }
        }
    }

    async fn apply(&mut self, mc: &MemberCluster) {
        let name = mc.name_any();
        if let Some(region) = &mc.spec.region {
            self.views
                .regions
                .write()
                .expect("regions lock")
                .insert(name.clone(), region.clone());
        }
        let Some(r) = mc.spec.kubeconfig_ref() else {
            return;
        };
        let ns = r.namespace.as_deref().unwrap_or(&self.secrets_namespace);
        let text = match read_key(&self.hub, ns, &r.name, &r.key).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(member = %name, error = %e, "gateway: member kubeconfig");
                return;
            }
        };
        if self.running.get(&name).is_some_and(|(t, _)| *t == text) {
            return;
        }
        let client = match watch_client_from_kubeconfig(&text, Duration::from_secs(5)).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(member = %name, error = %e, "gateway: member client");
                return;
            }
        };
        self.forget(&name);
        self.upstreams.set_member(&name, Some(client.clone()));
        let task = tokio::spawn(watch_pods(name.clone(), client, self.views.pods.clone()));
        self.running.insert(name, (text, task));
    }

    fn forget(&mut self, member: &str) {
        if let Some((_, task)) = self.running.remove(member) {
            task.abort();
        }
        self.upstreams.set_member(member, None);
        self.views
            .pods
            .write()
            .expect("pods lock")
            .replace_member(member, Vec::new());
    }
}

async fn read_key(hub: &kube::Client, ns: &str, name: &str, key: &str) -> Result<String, String> {
    let s = Api::<Secret>::namespaced(hub.clone(), ns)
        .get(name)
        .await
        .map_err(|e| format!("Secret {ns}/{name}: {e}"))?;
    let bytes = s
        .data
        .and_then(|mut d| d.remove(key))
        .ok_or_else(|| format!("Secret {ns}/{name} has no key {key}"))?;
    String::from_utf8(bytes.0).map_err(|_| format!("Secret {ns}/{name} key {key} is not text"))
}

/// Keeps `pods` in step with the inference replica pods of `member`.
async fn watch_pods(member: String, client: kube::Client, pods: Arc<RwLock<PodIndex>>) {
    let cfg = watcher::Config::default().labels(&format!(
        "{},{}=InferenceJob",
        labels::SELECTOR,
        labels::JOB_KIND
    ));
    let mut s = std::pin::pin!(watch(Api::<Pod>::all(client), cfg).default_backoff());
    let mut listed = Vec::new();
    while let Some(ev) = s.next().await {
        match ev {
            Ok(Event::Apply(p)) => {
                if let Some(info) = PodInfo::from_pod(&member, &p) {
                    pods.write().expect("pods lock").upsert(info);
                }
            }
            Ok(Event::Delete(p)) => {
                let key = (
                    member.clone(),
                    p.namespace().unwrap_or_default(),
                    p.name_any(),
                );
                pods.write().expect("pods lock").remove(&key);
            }
            Ok(Event::Init) => listed.clear(),
            Ok(Event::InitApply(p)) => listed.extend(PodInfo::from_pod(&member, &p)),
            Ok(Event::InitDone) => pods
                .write()
                .expect("pods lock")
                .replace_member(&member, std::mem::take(&mut listed)),
            Err(e) => tracing::warn!(member = %member, error = %e, "gateway: member pod watch"),
        }
    }
}
