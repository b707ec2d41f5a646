//! `kubectl gpupool` on real API servers: a hub and two members with KWOK GPU nodes, the operator
//! placing jobs, and the plugin binary (run by kubectl itself, found on PATH as kubectl-gpupool)
//! explaining a job that cannot fit, showing where a placed job's GPUs are (from hub status
//! alone), listing members and the queue, watching, cordoning and draining members — and
//! `gpupool` answering the same commands with the same flags.

use gpupool::api::{InferenceJob, TrainingJob};
use gpupool_e2e::{
    Federation, GpuNode, Operator, Tools, eventually, operator_bin, publish_fixture,
    register_member,
};
use kube::api::{Api, PostParams};
use serde_json::Value;
use std::process::Command;

const WALLET_1: &str = "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU";
const WALLET_2: &str = "9WzDXwBbmkg8ZTbNMqUxvQRAyrZzDsGYdLVL9zYtAWWM";

fn tj(name: &str, workers: i32, gpus: i32, model: &str) -> TrainingJob {
    serde_yaml::from_str(&format!(
        "apiVersion: gpupool.io/v1alpha1\nkind: TrainingJob\nmetadata: {{name: {name}, namespace: default}}\nspec: {{template: {{spec: {{containers: [{{name: main, image: trainer}}]}}}}, workers: {workers}, gpusPerWorker: {gpus}, gpu: {{model: {model}}}, nvlink: required}}\n"
    ))
    .unwrap()
}

/// `kubectl gpupool <args>` through kubectl's plugin mechanism, against the hub.
fn kubectl_gpupool(fed: &Federation, args: &[&str]) -> (bool, String, String) {
    let plugin = operator_bin("kubectl-gpupool");
    let path = format!(
        "{}:{}",
        plugin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(Tools::get().unwrap().kubectl)
        .arg("gpupool")
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", fed.hub.kubeconfig_path())
        .output()
        .expect("kubectl starts");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What `kubectl gpupool <args><TAB>` offers: kubectl's own `__complete`, which runs
/// `kubectl_complete-gpupool` found on the PATH beside the plugin; the candidates' values.
fn kubectl_completes(fed: &Federation, args: &[&str]) -> Vec<String> {
    let plugin = operator_bin("kubectl-gpupool");
    let completer = operator_bin("kubectl_complete-gpupool");
    assert_eq!(plugin.parent(), completer.parent());
    let path = format!(
        "{}:{}",
        plugin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(Tools::get().unwrap().kubectl)
        .args(["__complete", "gpupool"])
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", fed.hub.kubeconfig_path())
        .output()
        .expect("kubectl starts");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines().last().is_some_and(|l| l.starts_with(':')),
        "Cobra's directive line ends the answer: {text}"
    );
    text.lines()
        .filter(|l| !l.starts_with(':'))
        .map(|l| l.split('\t').next().unwrap_or_default().to_string())
        .collect()
}

/// `gpupool <args>` (the operator binary's pool commands), against the hub with `--kubeconfig`.
fn gpupool(fed: &Federation, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(operator_bin("gpupool"))
        .args(args)
        .arg("--kubeconfig")
        .arg(fed.hub.kubeconfig_path())
        .env_remove("KUBECONFIG")
        .output()
        .expect("gpupool starts");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts `kubectl gpupool <args>` (a long-running `--watch`) and sends each stdout line.
fn spawn_plugin(
    fed: &Federation,
    args: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let plugin = operator_bin("kubectl-gpupool");
    let path = format!(
        "{}:{}",
        plugin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new(Tools::get().unwrap().kubectl)
        .arg("gpupool")
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", fed.hub.kubeconfig_path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits (up to `secs`) for a line with `want` from a watching plugin.
fn wait_line(rx: &std::sync::mpsc::Receiver<String>, want: &str, secs: u64) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => {
                let hit = l.contains(want);
                seen.push(l);
                if hit {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no line with {want:?} within {secs}s; got {seen:?}");
}

/// An InferenceJob of two one-GPU replicas in `default`; `gpu` adds spec fields.
fn ij(name: &str, gpu: &str) -> InferenceJob {
    serde_yaml::from_str(&format!(
        "apiVersion: gpupool.io/v1alpha1\nkind: InferenceJob\nmetadata: {{name: {name}, namespace: default}}\nspec: {{template: {{spec: {{containers: [{{name: srv, image: ghcr.io/example/srv:1}}]}}}}, replicas: 2, gpusPerReplica: 1, nvlink: none{gpu}}}\n"
    ))
    .unwrap()
}

/// Whether every one of the job's `n` replicas is placed on `member` and Ready.
fn ready_on(j: &InferenceJob, member: &str, n: i32) -> bool {
    let st = j.status.clone().unwrap_or_default();
    st.ready_replicas == n
        && st
            .placements
            .iter()
            .all(|p| p.cluster == member && p.replicas.len() as i32 == n)
}

fn json_of(fed: &Federation, args: &[&str]) -> Value {
    let (ok, out, err) = kubectl_gpupool(fed, args);
    assert!(ok, "kubectl gpupool {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn why_where_and_members_answer_from_the_hub() {
    let fed = Federation::start(2).await.expect("federation starts");
    let layout = [
        ("dgx-h100-0", "dgx-h100", 8, "NVIDIA H100 80GB HBM3"),
        ("l40s-0", "pcie-l40s", 8, "NVIDIA L40S"),
    ];
    for (i, (node, fixture, gpus, model)) in layout.iter().enumerate() {
        fed.add_nodes(i, &[GpuNode::new(node, *gpus, model)])
            .await
            .unwrap();
        let c = fed.members[i].cp.client().await.unwrap();
        publish_fixture(&c, fixture, node).await.unwrap();
    }
    let hub = fed.hub.client().await.unwrap();
    for (i, m) in fed.members.iter().enumerate() {
        let wallet = if i == 0 { WALLET_1 } else { WALLET_2 };
        register_member(&hub, &format!("member-{}", i + 1), &m.cp, wallet, "eu")
            .await
            .unwrap();
    }
    let op = Operator::start(hub.clone(), Operator::test_config(30));
    for name in ["member-1", "member-2"] {
        gpupool_e2e::wait_member_ready(&hub, name, 60)
            .await
            .unwrap();
    }

    // members: both, with their capacity and owners.
    let m = json_of(&fed, &["members", "-o", "json"]);
    let names: Vec<&str> = m["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["member-1", "member-2"], "{m}");
    assert_eq!(m["members"][0]["gpusTotal"], 8);
    assert_eq!(m["members"][0]["ready"], "True");
    assert_eq!(m["members"][1]["owner"], WALLET_2);
    let (ok, table, err) = kubectl_gpupool(&fed, &["members"]);
    assert!(ok, "{err}");
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("member-2") && l.contains("8/8")),
        "{table}"
    );

    // `gpupool` and the plugin share commands, flags and output.
    let (ok, out, err) = gpupool(&fed, &["members", "-o", "json"]);
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), m);
    let (ok, out, err) = gpupool(&fed, &["members", "-o", "jsonpath={.members[*].name}"]);
    assert!(ok && out == "member-1 member-2", "{out} {err}");
    let (ok, out, _) = kubectl_gpupool(&fed, &["members", "-o", "name"]);
    assert!(
        ok && out == "membercluster.gpupool.io/member-1\nmembercluster.gpupool.io/member-2\n",
        "{out}"
    );
    let (ok, wide, _) = kubectl_gpupool(&fed, &["members", "-o", "wide"]);
    assert!(
        ok && wide.contains("OWNER") && wide.contains(WALLET_2),
        "{wide}"
    );
    assert!(!table.contains("OWNER"), "{table}");
    let (ok, _, err) = kubectl_gpupool(&fed, &["members", "-o", "xml"]);
    assert!(
        !ok && err.contains("wide, name, json, yaml or jsonpath"),
        "{err}"
    );
    let v = json_of(&fed, &["version", "-o", "json"]);
    assert_eq!(v["client"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        v["hub"]["kubernetes"].as_str().unwrap().starts_with("v1."),
        "{v}"
    );
    let (ok, script, _) = gpupool(&fed, &["completion", "bash"]);
    assert!(
        ok && script.contains("_gpupool()") && script.contains("cordon"),
        "completion"
    );
    // `kubectl gpupool <TAB>` through kubectl's plugin completion: subcommands, then names that
    // live on the hub.
    let top = kubectl_completes(&fed, &[""]);
    for c in ["why", "where", "members", "approve", "cordon", "drain"] {
        assert!(top.contains(&c.to_string()), "{c} in {top:?}");
    }
    assert_eq!(kubectl_completes(&fed, &["unc"]), vec!["uncordon"]);
    assert_eq!(
        kubectl_completes(&fed, &["cordon", ""]),
        vec!["member-1", "member-2"]
    );
    assert_eq!(
        kubectl_completes(&fed, &["members", "-o", "y"]),
        vec!["yaml"]
    );

    // The queue, watched: the job that cannot fit shows up in it as it is created.
    let (mut watcher, lines) = spawn_plugin(&fed, &["queue", "--watch", "-o", "name"]);

    // A job no member can fit: 16 H100s in one NVLink domain, on nodes of 8.
    let tjs: Api<TrainingJob> = Api::namespaced(hub.clone(), "default");
    tjs.create(&PostParams::default(), &tj("too-big", 1, 16, "H100"))
        .await
        .unwrap();
    let why = eventually(60, "too-big is reported unschedulable", || async {
        let w = json_of(&fed, &["why", "too-big", "-o", "json"]);
        Ok((w["unschedulable"] == true).then_some(w))
    })
    .await
    .unwrap();
    wait_line(&lines, "trainingjob.gpupool.io/too-big", 30);
    let _ = watcher.kill();
    let _ = watcher.wait();
    let q = json_of(&fed, &["queue", "-o", "json"]);
    assert_eq!(q["jobs"][0]["name"], "too-big", "{q}");
    assert_eq!(q["jobs"][0]["gpus"], 16, "{q}");
    assert_eq!(why["kind"], "TrainingJob");
    assert_eq!(why["phase"], "Pending");
    let blamed: Vec<&str> = why["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["member"].as_str())
        .collect();
    assert!(
        blamed.contains(&"member-1") && blamed.contains(&"member-2"),
        "every member must say why it does not fit: {why}"
    );
    // Each member's reason stays whole (its per-node details are not split off as pool-wide).
    for r in why["reasons"].as_array().unwrap() {
        assert!(!r["reason"].as_str().unwrap().is_empty(), "{why}");
        assert!(
            r["member"].is_string(),
            "a reason without its member: {why}"
        );
    }
    let (ok, text, err) = kubectl_gpupool(&fed, &["why", "tj/too-big"]);
    assert!(ok, "{err}");
    assert!(
        text.starts_with("TrainingJob default/too-big: Pending"),
        "{text}"
    );
    assert!(
        text.contains("MEMBER") && text.contains("member-2"),
        "{text}"
    );
    let (ok, text, _) = kubectl_gpupool(&fed, &["where", "too-big"]);
    assert!(
        ok && text.contains("Not placed. Ask why: kubectl gpupool why trainingjob/too-big"),
        "{text}"
    );

    // A job that fits: 4 NVLinked H100s on member-1's DGX.
    tjs.create(&PostParams::default(), &tj("fits", 1, 4, "H100"))
        .await
        .unwrap();
    let job = eventually(60, "fits is placed", || async {
        let j = tjs.get("fits").await?;
        Ok(j.status
            .filter(|s| s.cluster.is_some() && !s.workers.is_empty()))
    })
    .await
    .unwrap();
    // Job names complete from the context's namespace, with the kind prefix typed.
    assert_eq!(kubectl_completes(&fed, &["where", "tj/f"]), vec!["tj/fits"]);
    let jobs = kubectl_completes(&fed, &["why", "-n", "default", ""]);
    assert!(
        jobs.contains(&"fits".to_string()) && jobs.contains(&"too-big".to_string()),
        "{jobs:?}"
    );
    let w = json_of(&fed, &["where", "fits", "-o", "json"]);
    let p = &w["placements"][0];
    assert_eq!(p["worker"], "rank 0");
    assert_eq!(p["member"], "member-1");
    assert_eq!(p["node"], "dgx-h100-0");
    let uuids = &job.workers[0].gpu_uuids;
    assert_eq!(p["gpus"]["uuids"], serde_json::json!(uuids));
    // Indexes come from the member's GpuTopology and agree with how the fixture names GPUs.
    let expected: Vec<i64> = uuids
        .iter()
        .map(|u| {
            (0..8)
                .find(|i| gpupool_e2e::node_uuid("dgx-h100-0", *i) == *u)
                .expect("uuid of the node") as i64
        })
        .collect();
    assert_eq!(p["gpus"]["indexes"], serde_json::json!(expected), "{w}");
    // Read from the hub alone: the operator recorded the indexes in the job's status.
    assert_eq!(
        serde_json::json!(job.workers[0].gpu_indexes),
        p["gpus"]["indexes"],
        "{w}"
    );
    let (ok, text, err) = kubectl_gpupool(&fed, &["where", "fits"]);
    assert!(ok, "{err}");
    let idx = expected
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    assert!(
        text.lines().any(|l| l.starts_with("rank 0")
            && l.contains("member-1")
            && l.contains("dgx-h100-0")
            && l.contains(&idx)),
        "{text}"
    );
    let y = kubectl_gpupool(&fed, &["why", "fits", "-o", "yaml"]);
    assert!(y.0 && y.1.contains("placedOn:\n- member-1"), "{}", y.1);

    // Cordon: a job that would fit member-1 waits; uncordoned, it is placed there.
    let (ok, out, err) = kubectl_gpupool(&fed, &["cordon", "member-1"]);
    assert!(ok && out.contains("cordoned"), "{out} {err}");
    let m = json_of(&fed, &["members", "-o", "json"]);
    assert_eq!(m["members"][0]["schedulable"], false, "{m}");
    tjs.create(&PostParams::default(), &tj("after-cordon", 1, 2, "H100"))
        .await
        .unwrap();
    eventually(60, "after-cordon is reported unschedulable", || async {
        let w = json_of(&fed, &["why", "after-cordon", "-o", "json"]);
        Ok((w["unschedulable"] == true).then_some(()))
    })
    .await
    .unwrap();
    let (ok, _, err) = gpupool(&fed, &["uncordon", "member-1"]);
    assert!(ok, "{err}");
    eventually(
        60,
        "after-cordon is placed once member-1 is uncordoned",
        || async {
            let w = json_of(&fed, &["where", "after-cordon", "-o", "json"]);
            Ok((w["placements"][0]["member"] == "member-1").then_some(()))
        },
    )
    .await
    .unwrap();

    // Drain moves the jobs. Two InferenceJobs join the gangs on member-1 (member-2 cordoned
    // meanwhile): `web` may run on any GPU, `pinned` only on H100s, which member-2 lacks.
    tjs.delete("after-cordon", &Default::default())
        .await
        .unwrap();
    let ijs: Api<InferenceJob> = Api::namespaced(hub.clone(), "default");
    kubectl_gpupool(&fed, &["cordon", "member-2"]);
    for (name, gpu) in [("web", ""), ("pinned", ", gpu: {model: H100}")] {
        ijs.create(&PostParams::default(), &ij(name, gpu))
            .await
            .unwrap();
    }
    for name in ["web", "pinned"] {
        eventually(90, "both replicas Ready on member-1", || async {
            Ok(ready_on(&ijs.get(name).await?, "member-1", 2).then_some(()))
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    kubectl_gpupool(&fed, &["uncordon", "member-2"]);
    // `pinned` cannot move: one replica goes (its maxUnavailable), the other stays, and the
    // drain gives up naming it. `web` moves to member-2 one replica at a time; the gang restarts
    // and waits (no H100 elsewhere), not counted against its backoffLimit.
    let (ok, _, err) = kubectl_gpupool(&fed, &["drain", "member-1", "--timeout", "20s"]);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        !ok && last.contains("still run there after 20s: inferencejob/default/pinned")
            && !last.contains("trainingjob/default/fits"),
        "{err}"
    );
    let m = json_of(&fed, &["members", "-o", "json"]);
    assert_eq!(
        (
            &m["members"][0]["schedulable"],
            &m["members"][0]["draining"]
        ),
        (&Value::from(false), &Value::from(true)),
        "{m}"
    );
    eventually(60, "web serves from member-2 alone", || async {
        Ok(ready_on(&ijs.get("web").await?, "member-2", 2).then_some(()))
    })
    .await
    .unwrap();
    let pinned = ijs.get("pinned").await.unwrap().status.unwrap_or_default();
    let on: Vec<(String, Vec<i32>)> = pinned
        .placements
        .iter()
        .map(|p| (p.cluster.clone(), p.replicas.clone()))
        .collect();
    assert_eq!(on.len(), 1, "{on:?}");
    assert_eq!((on[0].0.as_str(), on[0].1.len()), ("member-1", 1), "{on:?}");
    let fits = tjs.get("fits").await.unwrap().status.unwrap_or_default();
    assert_eq!(
        (fits.cluster.as_deref(), fits.restarts, fits.preemptions),
        (None, 1, 1),
        "{fits:?}"
    );
    // Uncordoning ends the drain: the gang and the pinned replica come back.
    let (ok, _, err) = gpupool(&fed, &["uncordon", "member-1"]);
    assert!(ok, "{err}");
    eventually(90, "fits and pinned are back on member-1", || async {
        let w = json_of(&fed, &["where", "fits", "-o", "json"]);
        let back = w["placements"][0]["member"] == "member-1"
            && ready_on(&ijs.get("pinned").await?, "member-1", 2);
        Ok(back.then_some(()))
    })
    .await
    .unwrap();
    tjs.delete("fits", &Default::default()).await.unwrap();
    for name in ["web", "pinned"] {
        ijs.delete(name, &Default::default()).await.unwrap();
    }
    let (ok, out, err) = gpupool(&fed, &["drain", "member-1", "--timeout", "60s"]);
    assert!(ok && out.contains("drained"), "{out} {err}");

    // Errors name what is wrong.
    let (ok, _, err) = kubectl_gpupool(&fed, &["where", "nope"]);
    assert!(
        !ok && err.contains("no TrainingJob or InferenceJob named \"nope\""),
        "{err}"
    );
    let (ok, _, err) = kubectl_gpupool(&fed, &["cordon", "nope"]);
    assert!(
        !ok && err.contains("no MemberCluster named \"nope\""),
        "{err}"
    );
    let (ok, _, err) = gpupool(&fed, &["run", "--context", "x"]);
    assert!(
        !ok && err.contains("--kubeconfig and --context apply to the pool commands"),
        "{err}"
    );
    drop(op);
}
