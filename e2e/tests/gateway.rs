//! The inference gateway with real traffic on loopback: a hub and two members on real API
//! servers, KWOK giving the members' pods loopback addresses, a stand-in model server bound to
//! every replica pod's address and port, the operator's controllers and the gateway running in
//! this process. Requests cross gateway → member pod address; callers are checked by the hub
//! (TokenReview + RBAC).

use bytes::Bytes;
use gpupool::api::InferenceJob;
use gpupool::gateway::{GatewayArgs, MEMBER_HEADER, proxy::Reach};
use gpupool_e2e::model_server::{REPLICA_HEADER, StandIn};
use gpupool_e2e::{Federation, GpuNode, MemberKind, Operator, eventually, register_member};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, PostParams};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

const WALLET: &str = "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU";
const PORT: u16 = 8000;

type Http = Client<HttpConnector, Full<Bytes>>;

struct Answer {
    status: StatusCode,
    replica: Option<String>,
    member: Option<String>,
    body: String,
}

async fn send(http: &Http, url: &str, token: Option<&str>, body: Option<&str>) -> Answer {
    let mut req = Request::builder().uri(url);
    req = match body {
        Some(_) => req
            .method(Method::POST)
            .header("content-type", "application/json"),
        None => req.method(Method::GET),
    };
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
        .unwrap();
    let resp = http.request(req).await.expect("the gateway answers");
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (status, replica, member) = (resp.status(), header(REPLICA_HEADER), header(MEMBER_HEADER));
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        replica,
        member,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A stand-in per replica pod of job `web` in every member, on the pod's address.
async fn stand_ins(fed: &Federation) -> BTreeMap<String, (usize, StandIn)> {
    let mut out = BTreeMap::new();
    for (i, m) in fed.members.iter().enumerate() {
        let pods: Api<Pod> = Api::all(m.cp.client().await.unwrap());
        let lp = ListParams::default().labels("gpupool.io/job-name=web");
        for p in pods.list(&lp).await.unwrap() {
            let name = p.metadata.name.clone().unwrap();
            let ip = p.status.unwrap().pod_ip.expect("a Ready pod has an IP");
            let addr: SocketAddr = format!("{ip}:{PORT}").parse().unwrap();
            assert!(addr.ip().is_loopback(), "{name} got {ip}");
            out.insert(
                name.clone(),
                (i, StandIn::start(addr, &name).await.unwrap()),
            );
        }
    }
    out
}

async fn token(hub: &kube::Client, sa: &str) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(hub.clone(), "default");
    let mut s = ServiceAccount::default();
    s.metadata.name = Some(sa.into());
    sas.create(&PostParams::default(), &s).await.unwrap();
    sas.create_token_request(sa, &PostParams::default(), &Default::default())
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap()
}

/// Lets `sa` call the endpoints of the InferenceJobs in `default`.
async fn allow(hub: &kube::Client, sa: &str) {
    let role: Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "call-inference"},
        "rules": [{"apiGroups": ["gpupool.io"], "resources": ["inferencejobs/endpoint"],
                   "verbs": ["create"]}],
    }))
    .unwrap();
    Api::<Role>::namespaced(hub.clone(), "default")
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let rb: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "call-inference"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "call-inference"},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": "default"}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(hub.clone(), "default")
        .create(&PostParams::default(), &rb)
        .await
        .unwrap();
}

async fn start() -> (Federation, Operator, gpupool::gateway::Running) {
    gpupool::telemetry::init_logging();
    // Loopback ranges of their own, so tests running beside this one bind other addresses.
    let base = 20 + std::process::id() % 200;
    let cidrs: Vec<String> = (1..=2).map(|i| format!("127.{base}.{i}.0/24")).collect();
    let fed = Federation::start_with_pod_cidrs(&[MemberKind::DevicePlugin; 2], &cidrs)
        .await
        .expect("federation starts");
    let hub = fed.hub.client().await.unwrap();
    for (i, m) in fed.members.iter().enumerate() {
        let node = format!("h100-{}", i + 1);
        fed.add_nodes(i, &[GpuNode::new(&node, 8, "NVIDIA H100 80GB HBM3")])
            .await
            .unwrap();
        let c = m.cp.client().await.unwrap();
        gpupool_e2e::publish_fixture(&c, "dgx-h100", &node)
            .await
            .unwrap();
        let name = format!("member-{}", i + 1);
        register_member(&hub, &name, &m.cp, WALLET, &format!("region-{}", i + 1))
            .await
            .unwrap();
    }
    let gw = gpupool::gateway::start(
        hub.clone(),
        GatewayArgs {
            listen: ([127, 0, 0, 1], 0).into(),
            metrics_listen: ([127, 0, 0, 1], 0).into(),
            reach: Reach::PodIp,
            namespace: gpupool_e2e::OPERATOR_NAMESPACE.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut cfg = Operator::test_config(30);
    cfg.gateway_url = Some(format!("http://{}", gw.addr));
    let op = Operator::start(hub.clone(), cfg);
    for i in 1..=2 {
        gpupool_e2e::wait_member_ready(&hub, &format!("member-{i}"), 30)
            .await
            .unwrap();
    }
    (fed, op, gw)
}

fn served(stand: &BTreeMap<String, (usize, StandIn)>) -> usize {
    stand.values().map(|(_, s)| s.served()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_cross_the_gateway_to_ready_replicas_in_every_member() {
    let (mut fed, _op, gw) = start().await;
    let hub = fed.hub.client().await.unwrap();
    let ijs: Api<InferenceJob> = Api::namespaced(hub.clone(), "default");
    let job: InferenceJob = serde_yaml::from_str(&format!(
        "apiVersion: gpupool.io/v1alpha1\nkind: InferenceJob\nmetadata: {{name: web, namespace: default}}\nspec: {{template: {{spec: {{containers: [{{name: srv, image: ghcr.io/example/srv:1}}]}}}}, replicas: 4, gpusPerReplica: 1, nvlink: none, port: {PORT}, placement: {{maxReplicasPerCluster: 2}}}}\n"
    ))
    .unwrap();
    ijs.create(&PostParams::default(), &job).await.unwrap();
    let url = eventually(60, "4 replicas ready and the job's URL set", || async {
        let st = ijs.get("web").await?.status.unwrap_or_default();
        Ok((st.ready_replicas == 4).then_some(st.url).flatten())
    })
    .await
    .unwrap();
    assert_eq!(url, format!("http://{}/default/web/", gw.addr));
    let mut stand = stand_ins(&fed).await;
    assert_eq!(stand.len(), 4);
    assert_eq!(stand.values().filter(|(m, _)| *m == 0).count(), 2);

    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    let caller = token(&hub, "caller").await;
    let outsider = token(&hub, "outsider").await;
    allow(&hub, "caller").await;
    let complete = format!("{url}v1/completions");
    let ask = r#"{"model": "standin", "prompt": "hi"}"#;

    // Who may call: no token, a token the hub does not know, a caller without the RBAC grant.
    for (t, code) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("not-a-token"), StatusCode::UNAUTHORIZED),
        (Some(outsider.as_str()), StatusCode::FORBIDDEN),
    ] {
        let a = send(&http, &complete, t, Some(ask)).await;
        assert_eq!(a.status, code, "{}", a.body);
    }
    assert_eq!(served(&stand), 0, "a refused call reached a replica");

    // The gateway learns the replicas from the watches.
    eventually(30, "the gateway serves the job", || async {
        let a = send(&http, &format!("{url}v1/models"), Some(&caller), None).await;
        Ok((a.status == StatusCode::OK).then_some(()))
    })
    .await
    .unwrap();

    // Sequential calls spread over all four replicas in both members.
    let mut per_replica: BTreeMap<String, usize> = BTreeMap::new();
    let mut members = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let a = send(&http, &complete, Some(&caller), Some(ask)).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert!(a.body.contains("tok0 tok1 tok2 tok3 tok4"), "{}", a.body);
        *per_replica.entry(a.replica.unwrap()).or_default() += 1;
        members.insert(a.member.unwrap());
    }
    assert_eq!(per_replica.len(), 4, "{per_replica:?}");
    assert!(per_replica.values().all(|n| *n >= 5), "{per_replica:?}");
    assert_eq!(members.len(), 2);

    streams_and_load(&http, &url, &caller, &stand).await;

    // A replica dies (its pod still reads Ready): every call is still answered, by the others.
    let killed = stand.keys().next().unwrap().clone();
    drop(stand.remove(&killed));
    // The stand-in closes its idle connections as a dying pod's server does.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..20 {
        let a = send(&http, &complete, Some(&caller), Some(ask)).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_ne!(a.replica.as_deref(), Some(killed.as_str()));
    }

    // A whole member is lost: its API server and its replicas.
    let lost: Vec<String> = stand
        .iter()
        .filter(|(_, (m, _))| *m == 1)
        .map(|(k, _)| k.clone())
        .collect();
    for k in &lost {
        drop(stand.remove(k));
    }
    fed.members[1].cp.stop_apiserver();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..20 {
        let a = send(&http, &complete, Some(&caller), Some(ask)).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.member.as_deref(), Some("member-1"));
    }

    let metrics = send(
        &http,
        &format!("http://{}/metrics", gw.metrics_addr),
        None,
        None,
    )
    .await;
    let line = |prefix: &str| {
        metrics
            .body
            .lines()
            .find(|l| l.starts_with(prefix))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .unwrap_or(0.0)
    };
    let tenant = "system:serviceaccount:default:caller";
    for m in ["member-1", "member-2"] {
        let ok = format!(
            "gpupool_gateway_requests_total{{code=\"200\",job=\"web\",member=\"{m}\",namespace=\"default\",tenant=\"{tenant}\"}}"
        );
        assert!(line(&ok) >= 10.0, "{ok} in\n{}", metrics.body);
    }
    assert_eq!(
        line("gpupool_gateway_refused_total{reason=\"unauthenticated\"}"),
        2.0
    );
    assert_eq!(
        line("gpupool_gateway_refused_total{reason=\"forbidden\"}"),
        1.0
    );
    let retries: f64 = metrics
        .body
        .lines()
        .filter(|l| l.starts_with("gpupool_gateway_retries_total{job=\"web\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(
        retries >= 1.0,
        "the dead replicas were tried and left:\n{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("gpupool_gateway_response_bytes_total{")
    );
}

/// Three held streams take three replicas; the next calls all go to the fourth (least in
/// flight); each stream's first token arrives while the replica still holds the rest.
async fn streams_and_load(
    http: &Http,
    url: &str,
    caller: &str,
    stand: &BTreeMap<String, (usize, StandIn)>,
) {
    let hold = r#"{"model": "standin", "prompt": "hi", "stream": true, "hold": true}"#;
    let mut streams = Vec::new();
    let mut held = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let req = Request::post(format!("{url}v1/completions"))
            .header("authorization", format!("Bearer {caller}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(hold)))
            .unwrap();
        let resp = http.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers().get("content-type").unwrap(),
            "text/event-stream"
        );
        held.insert(resp.headers()[REPLICA_HEADER].to_str().unwrap().to_string());
        let mut body = resp.into_body();
        let first = tokio::time::timeout(Duration::from_secs(20), body.frame())
            .await
            .expect("the first token streams before the answer ends")
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        assert!(String::from_utf8_lossy(&first).contains("\"tok0\""));
        streams.push(body);
    }
    assert_eq!(held.len(), 3, "each held stream on its own replica");
    let ask = r#"{"model": "standin", "prompt": "hi"}"#;
    for _ in 0..8 {
        let a = send(
            http,
            &format!("{url}v1/completions"),
            Some(caller),
            Some(ask),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(
            !held.contains(a.replica.as_deref().unwrap()),
            "sent to a busy replica"
        );
    }
    for (_, s) in stand.values() {
        s.release();
    }
    for body in streams {
        let all = tokio::time::timeout(Duration::from_secs(20), body.collect())
            .await
            .expect("the stream ends once released")
            .unwrap()
            .to_bytes();
        let text = String::from_utf8_lossy(&all);
        assert!(
            text.contains("\"tok4\"") && text.ends_with("data: [DONE]\n\n"),
            "{text}"
        );
    }
}
