//! The Helm chart (charts/gpupool) with the pinned Helm and a real kube-apiserver: it lints clean in
//! both modes, what it renders in hub and member mode passes a server-side dry-run apply, the
//! values schema rejects bad values naming the field, and its CRDs are exactly those in `crds/`.

use anyhow::{Context, Result, ensure};
use gpupool_e2e::{ControlPlane, GpuNode, Tools, repo_root};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const NAMESPACE: &str = "gpupool-system";
const RELEASE: &str = "gp";
/// A valid base58 Solana address (32 bytes).
const ADDRESS: &str = "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU";

fn chart_dir() -> PathBuf {
    repo_root().join("charts/gpupool")
}

struct HelmOut {
    success: bool,
    stdout: String,
    stderr: String,
}

/// The Kubernetes version `helm template` renders for. Helm built from source (without its
/// release build's version stamps) assumes v1.20, below the chart's `kubeVersion`.
const KUBE_VERSION: &str = gpupool_e2e::HELM_KUBE_VERSION;

/// Runs the pinned `helm` with its config, cache and data homes in a throwaway directory.
fn helm(args: &[&str]) -> HelmOut {
    let tools = Tools::get().expect("harness tools (helm) are available");
    let home = tempfile::tempdir().expect("temporary helm home");
    let mut args = args.to_vec();
    if args.first() == Some(&"template") && !args.contains(&"--kube-version") {
        args.extend(["--kube-version", KUBE_VERSION]);
    }
    let out = Command::new(&tools.helm)
        .args(&args)
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .env_remove("KUBECONFIG")
        .current_dir(repo_root())
        .output()
        .expect("helm starts");
    HelmOut {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `helm template gp charts/gpupool -n gpupool-system <extra>`; panics unless it succeeds.
fn render(extra: &[&str]) -> String {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        RELEASE,
        chart.to_str().unwrap(),
        "--namespace",
        NAMESPACE,
    ];
    args.extend_from_slice(extra);
    let out = helm(&args);
    assert!(
        out.success,
        "helm template {extra:?} failed: {}",
        out.stderr
    );
    out.stdout
}

/// The YAML documents of a rendered manifest, as JSON values (empty documents dropped).
fn docs(manifest: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(manifest)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kinds(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} not rendered; rendered: {:?}", kinds(docs)))
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// Every CRD in the repository's crds/ directory, by name.
fn repo_crds() -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(repo_root().join("crds")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            let v: Value = serde_yaml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            out.insert(v["metadata"]["name"].as_str().unwrap().to_string(), v);
        }
    }
    out
}

/// The CRDs the chart renders, by name, with the chart's `helm.sh/resource-policy` annotation
/// removed (the only thing it adds).
fn chart_crds(extra: &[&str]) -> BTreeMap<String, Value> {
    let mut args = vec!["--show-only", "templates/crds.yaml"];
    args.extend_from_slice(extra);
    let mut out = BTreeMap::new();
    for mut d in docs(&render(&args)) {
        assert_eq!(d["kind"], "CustomResourceDefinition");
        let meta = d["metadata"].as_object_mut().unwrap();
        if let Some(Value::Object(a)) = meta.get_mut("annotations") {
            assert_eq!(
                a.remove("helm.sh/resource-policy"),
                Some(Value::from("keep"))
            );
            if a.is_empty() {
                meta.remove("annotations");
            }
        }
        out.insert(d["metadata"]["name"].as_str().unwrap().to_string(), d);
    }
    out
}

#[test]
fn helm_lint_is_clean_in_hub_and_member_mode() {
    let chart = chart_dir();
    for extra in [&[][..], &["--set", "mode=member"][..]] {
        let mut args = vec!["lint", "--strict", chart.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = helm(&args);
        assert!(
            out.success,
            "helm lint {extra:?} failed:\n{}\n{}",
            out.stdout, out.stderr
        );
        assert!(
            out.stdout.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{}",
            out.stdout
        );
        assert!(
            !out.stdout.contains("[WARNING]") && !out.stdout.contains("[ERROR]"),
            "helm lint {extra:?} is not clean:\n{}",
            out.stdout
        );
    }
}

#[test]
fn chart_crds_equal_the_repository_crds() {
    // The chart reads crds/ through a symlink rather than a copy, so it cannot drift; this guards
    // the link itself and the template that filters and annotates the CRDs.
    let link = chart_dir().join("files/crds");
    assert_eq!(
        std::fs::canonicalize(&link).expect("charts/gpupool/files/crds resolves"),
        std::fs::canonicalize(repo_root().join("crds")).unwrap(),
        "charts/gpupool/files/crds must be a link to the repository's crds/"
    );
    let repo = repo_crds();
    assert!(
        repo.len() >= 4,
        "expected the CRD set in crds/, found {:?}",
        repo.keys()
    );
    let hub = chart_crds(&[]);
    assert_eq!(
        hub.keys().collect::<Vec<_>>(),
        repo.keys().collect::<Vec<_>>(),
        "hub mode renders every CRD in crds/"
    );
    for (name, crd) in &repo {
        assert!(
            hub[name] == *crd,
            "the chart's {name} differs from crds/{name}.yaml"
        );
    }
    // Members only need the CRD the node agent writes.
    let member = chart_crds(&["--set", "mode=member"]);
    assert_eq!(
        member.keys().collect::<Vec<_>>(),
        vec!["gputopologies.gpupool.io"]
    );
    assert!(member["gputopologies.gpupool.io"] == repo["gputopologies.gpupool.io"]);
    // Without keep, nothing is added at all; with crds.install=false, nothing is rendered.
    let plain = docs(&render(&[
        "--show-only",
        "templates/crds.yaml",
        "--set",
        "crds.keep=false",
    ]));
    assert_eq!(plain.len(), repo.len());
    for d in &plain {
        assert!(
            *d == repo[d["metadata"]["name"].as_str().unwrap()],
            "crds.keep=false must render crds/ verbatim"
        );
    }
    let none = helm(&[
        "template",
        RELEASE,
        chart_dir().to_str().unwrap(),
        "--set",
        "crds.install=false",
    ]);
    assert!(none.success, "{}", none.stderr);
    assert!(!none.stdout.contains("kind: CustomResourceDefinition"));
}

#[test]
fn schema_and_checks_reject_bad_values_naming_the_field() {
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "operator.replicas=-1"], "/operator/replicas"),
        (&["--set", "operator.replicas=two"], "/operator/replicas"),
        (&["--set", "mode=bogus"], "/mode"),
        (
            &["--set", "solana.programId=notbase58!"],
            "/solana/programId",
        ),
        // 0, O, I and l are not in the base58 alphabet.
        (
            &["--set", "solana.mint=0OIl0OIl0OIl0OIl0OIl0OIl0OIl0OIl"],
            "/solana/mint",
        ),
        (
            &["--set", "operator.image.repository="],
            "/operator/image/repository",
        ),
        (
            &["--set", "agent.image.repository=", "--set", "mode=member"],
            "/agent/image/repository",
        ),
        (&["--set", "metrics.port=70000"], "/metrics/port"),
        (
            &["--set", "usageRecords.admissionPolicy.enabled=maybe"],
            "/usageRecords/admissionPolicy/enabled",
        ),
        (&["--set", "solana.rpcUrl=ftp://x"], "/solana/rpcUrl"),
        // Settlement needs the program, the mint and the oracle key.
        (
            &["--set", "solana.rpcUrl=https://api.devnet.solana.com"],
            "/solana/programId",
        ),
        (
            &["--set", "solana.rpcUrl=https://api.devnet.solana.com"],
            "/solana/oracleKeypair/existingSecret",
        ),
        (&["--set", "agent.nvml.access=magic"], "/agent/nvml/access"),
        (&["--set", "agent.nvml.access=none"], "/agent/topologyFile"),
        (
            &["--set", "operator.heartbeatSeconds=true"],
            "/operator/heartbeatSeconds",
        ),
        (
            &["--set", "operator.controllerConcurrency=0"],
            "/operator/controllerConcurrency",
        ),
        (&["--set", "opertor.replicas=1"], "opertor"),
        // Cross-field checks in the templates.
        (
            &["--set", "operator.leaderElection.enabled=false"],
            "operator.leaderElection.enabled",
        ),
        (
            &[
                "--set",
                "metrics.serviceMonitor.enabled=true",
                "--set",
                "metrics.service.enabled=false",
            ],
            "metrics.service.enabled",
        ),
    ];
    let chart = chart_dir();
    for (extra, field) in cases {
        let mut args = vec!["template", RELEASE, chart.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = helm(&args);
        assert!(
            !out.success,
            "helm template {extra:?} must fail but rendered"
        );
        assert!(
            out.stderr.contains(field),
            "helm template {extra:?} must name {field}; it said: {}",
            out.stderr
        );
    }
    // And the good versions of the same values render.
    render(&[
        "--set",
        "operator.replicas=1",
        "--set",
        "operator.leaderElection.enabled=false",
        "--set",
        "solana.rpcUrl=https://api.devnet.solana.com",
        "--set",
        &format!("solana.programId={ADDRESS}"),
        "--set",
        &format!("solana.mint={ADDRESS}"),
        "--set",
        "solana.oracleKeypair.existingSecret=gpupool-oracle",
    ]);
    render(&[
        "--set",
        "mode=member",
        "--set",
        "agent.nvml.access=none",
        "--set",
        "agent.topologyFile=/etc/gpupool/topology.yaml",
    ]);
}

#[test]
fn rendered_objects_have_the_expected_shape() {
    // Hub: the operator with leader election, probes, hardened pods, the oracle key read-only.
    let hub = docs(&render(&[
        "--set",
        "solana.rpcUrl=https://api.devnet.solana.com",
        "--set",
        &format!("solana.programId={ADDRESS}"),
        "--set",
        &format!("solana.mint={ADDRESS}"),
        "--set",
        "solana.oracleKeypair.existingSecret=gpupool-oracle",
    ]));
    assert!(
        !hub.iter()
            .any(|d| d["kind"] == "DaemonSet" || d["kind"] == "ServiceMonitor"),
        "{:?}",
        kinds(&hub)
    );
    let dep = find(&hub, "Deployment", "gp-gpupool-operator");
    assert_eq!(dep["spec"]["replicas"], 2);
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "run");
    for want in [
        "--leader-elect",
        "--lease-name=gpupool-operator",
        "--controller-concurrency=256",
        "--metrics-addr=0.0.0.0:8080",
        "--rpc-url=https://api.devnet.solana.com",
        "--oracle-keypair=/var/run/secrets/gpupool/oracle/keypair.json",
    ] {
        assert!(args.contains(&want), "operator args {args:?} lack {want}");
    }
    assert!(
        args.contains(&format!("--program-id={ADDRESS}").as_str())
            && args.contains(&format!("--mint={ADDRESS}").as_str())
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(c["volumeMounts"][0]["readOnly"], true);
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "gpupool-oracle");
    let env = c["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e["name"] == "GPUPOOL_NAMESPACE"
        && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"));
    // Secrets, Leases and ConfigMaps (records of removed members) only in the release namespace.
    let role = find(&hub, "Role", "gp-gpupool-operator");
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    let role_resources: Vec<&str> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["resources"].as_array().unwrap())
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(role_resources, vec!["secrets", "leases", "configmaps"]);
    let cr = find(&hub, "ClusterRole", "gp-gpupool-operator");
    assert!(
        !cr.to_string().contains("secrets"),
        "the operator's ClusterRole must not grant Secrets: {cr}"
    );
    // Without settlement: no Solana flags, no keypair volume.
    let plain = docs(&render(&[]));
    let c = &find(&plain, "Deployment", "gp-gpupool-operator")["spec"]["template"]["spec"];
    assert!(
        !c.to_string().contains("--rpc-url") && c["volumes"].is_null(),
        "{c}"
    );

    // ServiceMonitor only when enabled.
    let sm = docs(&render(&[
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.serviceMonitor.labels.release=prom",
    ]));
    let sm = find(&sm, "ServiceMonitor", "gp-gpupool-operator");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(sm["metadata"]["labels"]["release"], "prom");

    // Member: the agent DaemonSet and the hub's access, nothing of the operator (here on a
    // device-plugin member, where the agent reads the kubelet's pod-resources API).
    let member = docs(&render(&[
        "--set",
        "mode=member",
        "--set",
        "agent.podResources.enabled=true",
    ]));
    assert!(
        !member
            .iter()
            .any(|d| d["kind"] == "Deployment" || d["kind"] == "Service"),
        "{:?}",
        kinds(&member)
    );
    // The tenant policy binds the hub's identity in the member.
    let policy = find(
        &member,
        "ValidatingAdmissionPolicy",
        "gp-gpupool-tenant-sandbox",
    );
    assert!(
        policy["spec"]["matchConditions"][0]["expression"]
            .as_str()
            .unwrap()
            .contains("system:serviceaccount:gpupool-system:gp-gpupool-hub"),
        "{policy}"
    );
    find(
        &member,
        "ValidatingAdmissionPolicyBinding",
        "gp-gpupool-tenant-sandbox",
    );
    let ds = find(&member, "DaemonSet", "gp-gpupool-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["nodeSelector"]["nvidia.com/gpu.present"], "true");
    assert_eq!(pod["tolerations"][0]["key"], "nvidia.com/gpu");
    let c = &pod["containers"][0];
    assert!(
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "NODE_NAME"
                && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName")
    );
    assert!(
        c["securityContext"]["privileged"].is_null(),
        "runtime access must stay unprivileged"
    );
    let access = find(&member, "ClusterRole", "gp-gpupool-hub-access");
    let rules: Vec<(String, Vec<String>)> = access["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            let verbs: Vec<String> = r["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            r["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |res| (res.as_str().unwrap().to_string(), verbs.clone()))
        })
        .collect();
    let expect = |res: &str, verbs: &[&str]| {
        (
            res.to_string(),
            verbs.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        rules,
        vec![
            expect("nodes", &["get", "list", "watch"]),
            expect("gputopologies", &["get", "list", "watch"]),
            expect("pods", &["create", "delete", "get", "list", "watch"]),
            expect("services", &["create", "delete", "get", "list"]),
            expect("namespaces", &["get", "create"]),
            expect("secrets", &["create", "patch"]),
            expect("configmaps", &["create", "patch"]),
            expect("deviceclasses", &["get"]),
            expect(
                "resourceclaims",
                &["create", "delete", "get", "list", "watch"]
            ),
            expect("resourceslices", &["get", "list", "watch"]),
        ]
    );
    // The kubelet's pod-resources directory, read-only, and the agent pointed at its socket;
    // root (the socket's owner) with no capability, no escalation, read-only root filesystem.
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.contains(&"--pod-resources-socket=/var/lib/kubelet/pod-resources/kubelet.sock"),
        "{args:?}"
    );
    assert!(!args.contains(&"--simulate-dra"), "{args:?}");
    let vol = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "pod-resources")
        .expect("pod-resources volume");
    assert_eq!(vol["hostPath"]["path"], "/var/lib/kubelet/pod-resources");
    assert_eq!(vol["hostPath"]["type"], "Directory");
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "pod-resources")
        .expect("pod-resources mount");
    assert_eq!(mount["mountPath"], "/var/lib/kubelet/pod-resources");
    assert_eq!(mount["readOnly"], true);
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsUser"], 0);
    assert_eq!(sc["runAsNonRoot"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    // The agent's role without --simulate-dra grants nothing on resourceslices.
    let agent_role = find(&member, "ClusterRole", "gp-gpupool-agent");
    assert!(
        !agent_role.to_string().contains("resourceslices"),
        "{agent_role}"
    );
    // Off by default (DRA members need no mount): no hostPath, no flag, the pod's non-root
    // user; another kubelet root dir is followed.
    let off = docs(&render(&["--set", "mode=member"]));
    let pod_off = &find(&off, "DaemonSet", "gp-gpupool-agent")["spec"]["template"]["spec"];
    assert!(pod_off["volumes"].is_null(), "{pod_off}");
    assert!(pod_off["containers"][0]["volumeMounts"].is_null());
    assert!(pod_off["containers"][0]["securityContext"]["runAsUser"].is_null());
    assert_eq!(
        pod_off["containers"][0]["securityContext"]["runAsNonRoot"],
        true
    );
    assert!(
        !pod_off["containers"][0]["args"]
            .to_string()
            .contains("pod-resources")
    );
    let moved = docs(&render(&[
        "--set",
        "mode=member",
        "--set",
        "agent.podResources.enabled=true",
        "--set",
        "agent.podResources.hostDirectory=/data/kubelet/pod-resources",
        "--set",
        "agent.simulateDra=true",
    ]));
    let ds_moved = find(&moved, "DaemonSet", "gp-gpupool-agent");
    let pod_moved = &ds_moved["spec"]["template"]["spec"];
    assert_eq!(
        pod_moved["volumes"][0]["hostPath"]["path"],
        "/data/kubelet/pod-resources"
    );
    assert!(
        pod_moved["containers"][0]["args"]
            .to_string()
            .contains("\"--simulate-dra\"")
    );
    // The hub gets a bound token it renews: its identity may mint tokens of itself alone, and
    // no never-expiring token Secret is rendered unless asked for.
    let renew = find(&member, "Role", "gp-gpupool-hub-access-renew");
    assert_eq!(
        renew["rules"][0],
        serde_json::json!({"apiGroups": [""], "resources": ["serviceaccounts/token"],
            "resourceNames": ["gp-gpupool-hub"], "verbs": ["create"]})
    );
    assert!(
        !member
            .iter()
            .any(|d| d["kind"] == "Secret" && d["metadata"]["name"] == "gp-gpupool-hub-token")
    );
    let legacy = docs(&render(&[
        "--set",
        "mode=member",
        "--set",
        "member.hubAccess.legacyTokenSecret=true",
    ]));
    let token = find(&legacy, "Secret", "gp-gpupool-hub-token");
    assert_eq!(token["type"], "kubernetes.io/service-account-token");
    // hostPath access: one library file, read-only, and privileged for the device cgroup.
    let hp = docs(&render(&[
        "--set",
        "mode=member",
        "--set",
        "agent.nvml.access=hostPath",
        "--set",
        "agent.podResources.enabled=true",
    ]));
    let pod = &find(&hp, "DaemonSet", "gp-gpupool-agent")["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0]["hostPath"]["type"], "File");
    assert_eq!(pod["containers"][0]["volumeMounts"][0]["readOnly"], true);
    assert_eq!(pod["containers"][0]["securityContext"]["privileged"], true);
    // Both: privileged for the devices, uid 0 for the kubelet's socket.
    assert_eq!(pod["containers"][0]["securityContext"]["runAsUser"], 0);
    assert_eq!(pod["volumes"][1]["name"], "pod-resources");
}

/// Hub values with every hardening option on (NetworkPolicies, HTTPS metrics).
fn hardened_hub() -> [&'static str; 10] {
    [
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "networkPolicy.kubeApiServer.cidrs={10.96.0.1/32,192.0.2.10/32}",
        "--set",
        "networkPolicy.memberApiServers.cidrs={198.51.100.0/24}",
        "--set",
        "networkPolicy.solanaRpc.cidrs={203.0.113.7/32}",
        "--set",
        "metrics.secure.enabled=true",
    ]
}

/// A pull member with NetworkPolicies.
fn hardened_member() -> [&'static str; 14] {
    [
        "--set",
        "mode=member",
        "--set",
        "hub.url=https://hub.example:6443",
        "--set",
        "memberAgent.memberName=east",
        "--set",
        "memberAgent.ownerWallet=7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU",
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "networkPolicy.kubeApiServer.cidrs={10.96.0.1/32}",
        "--set",
        "networkPolicy.hubApiServer.cidrs={198.51.100.5/32}",
    ]
}

/// The egress rules of a NetworkPolicy as (CIDRs or "dns", ports).
fn egress(np: &Value) -> Vec<(Vec<String>, Vec<String>)> {
    np["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let to: Vec<String> = r["to"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| match p["ipBlock"]["cidr"].as_str() {
                    Some(c) => c.to_string(),
                    None => "dns".to_string(),
                })
                .collect();
            let ports = r["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap()))
                .collect();
            (to, ports)
        })
        .collect()
}

#[test]
fn hardening_renders_policies_pdb_secure_metrics_and_join_objects() {
    let kinds_of = |d: &[Value], k: &str| d.iter().filter(|x| x["kind"] == k).count();
    // Defaults: a PDB for the two replicas; no NetworkPolicy, no proxy.
    let hub = docs(&render(&[]));
    let pdb = find(&hub, "PodDisruptionBudget", "gp-gpupool-operator");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(kinds_of(&hub, "NetworkPolicy"), 0);
    let pod = &find(&hub, "Deployment", "gp-gpupool-operator")["spec"]["template"]["spec"];
    assert_eq!(pod["containers"].as_array().unwrap().len(), 1);
    // One replica: no PDB (minAvailable 1 would block every drain).
    let one = docs(&render(&["--set", "operator.replicas=1"]));
    assert_eq!(kinds_of(&one, "PodDisruptionBudget"), 0);

    // The join flow's namespace and admission policy belong to the release, under the names
    // the join controller uses.
    let ns = find(&hub, "Namespace", gpupool::join::names::JOIN_NAMESPACE);
    assert_eq!(
        ns["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "Helm"
    );
    let policy = find(
        &hub,
        "ValidatingAdmissionPolicy",
        gpupool::join::names::ADMISSION_POLICY,
    );
    let prefix = format!(
        "system:serviceaccount:{}:",
        gpupool::join::names::JOIN_NAMESPACE
    );
    assert_eq!(
        policy["spec"]["validations"][0]["expression"],
        format!("request.userInfo.username == '{prefix}' + object.metadata.name")
    );
    let binding = find(
        &hub,
        "ValidatingAdmissionPolicyBinding",
        gpupool::join::names::ADMISSION_POLICY,
    );
    assert_eq!(binding["spec"]["validationActions"][0], "Deny");
    let nojoin = docs(&render(&["--set", "joinController.enabled=false"]));
    assert!(
        !nojoin.iter().any(|d| d["kind"] == "Namespace"),
        "{:?}",
        kinds(&nojoin)
    );

    // Hardened hub: a policy per workload, egress only to DNS and the named CIDRs.
    let mut args: Vec<&str> = hardened_hub().to_vec();
    args.extend([
        "--set",
        "solana.rpcUrl=https://rpc.example",
        "--set",
        "solana.programId=7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU",
        "--set",
        "solana.mint=7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU",
        "--set",
        "solana.oracleKeypair.existingSecret=oracle",
        "--set",
        "metrics.serviceMonitor.enabled=true",
    ]);
    let hard = docs(&render(&args));
    let op = find(&hard, "NetworkPolicy", "gp-gpupool-operator");
    assert_eq!(
        op["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "operator"
    );
    assert_eq!(
        op["spec"]["policyTypes"],
        serde_json::json!(["Ingress", "Egress"])
    );
    assert_eq!(op["spec"]["ingress"][0]["ports"][0]["port"], "metrics");
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        egress(op),
        vec![
            (s(&["dns"]), s(&["53/UDP", "53/TCP"])),
            (
                s(&["10.96.0.1/32", "192.0.2.10/32"]),
                s(&["443/TCP", "6443/TCP"])
            ),
            (s(&["198.51.100.0/24"]), s(&["443/TCP", "6443/TCP"])),
            (s(&["203.0.113.7/32"]), s(&["443/TCP", "8899/TCP"])),
        ]
    );
    let jc = find(&hard, "NetworkPolicy", "gp-gpupool-join-controller");
    assert_eq!(jc["spec"]["ingress"][0]["ports"][0]["port"], "metrics");
    assert_eq!(egress(jc).len(), 2, "{jc}");
    // The join controller serves probes and metrics on the port its policy opens.
    let jc = &find(&hard, "Deployment", "gp-gpupool-join-controller")["spec"]["template"]["spec"]["containers"]
        [0];
    assert_probes_and_metrics(jc);

    // Secure metrics: the operator on loopback, the proxy on HTTPS with TokenReview and
    // SubjectAccessReview rights, probes through the proxy, the ServiceMonitor on HTTPS.
    let pod = &find(&hard, "Deployment", "gp-gpupool-operator")["spec"]["template"]["spec"];
    let c = &pod["containers"];
    assert!(
        c[0]["args"]
            .as_array()
            .unwrap()
            .contains(&Value::from("--metrics-addr=127.0.0.1:8080"))
    );
    assert!(c[0]["ports"].is_null(), "{}", c[0]);
    assert_eq!(c[0]["livenessProbe"]["httpGet"]["scheme"], "HTTPS");
    assert_eq!(c[0]["livenessProbe"]["httpGet"]["port"], 8443);
    assert_eq!(c[1]["name"], "kube-rbac-proxy");
    assert_eq!(c[1]["ports"][0]["name"], "metrics");
    assert!(
        c[1]["args"]
            .to_string()
            .contains("--upstream=http://127.0.0.1:8080/")
    );
    assert_eq!(c[1]["securityContext"]["readOnlyRootFilesystem"], true);
    let auth = find(&hard, "ClusterRole", "gp-gpupool-metrics-auth");
    assert_eq!(auth["rules"][0]["resources"][0], "tokenreviews");
    assert_eq!(auth["rules"][1]["resources"][0], "subjectaccessreviews");
    let reader = find(&hard, "ClusterRole", "gp-gpupool-metrics-reader");
    assert_eq!(reader["rules"][0]["nonResourceURLs"][0], "/metrics");
    let sm = find(&hard, "ServiceMonitor", "gp-gpupool-operator");
    assert_eq!(sm["spec"]["endpoints"][0]["scheme"], "https");
    assert!(sm["spec"]["endpoints"][0]["bearerTokenFile"].is_string());

    // Member (pull): the node agent and the member agent, each with its own egress.
    let member = docs(&render(&hardened_member()));
    let ma = find(&member, "NetworkPolicy", "gp-gpupool-member-agent");
    assert_eq!(
        egress(ma)[1..],
        [
            (s(&["10.96.0.1/32"]), s(&["443/TCP", "6443/TCP"])),
            (s(&["198.51.100.5/32"]), s(&["443/TCP", "6443/TCP"])),
        ]
    );
    assert_eq!(ma["spec"]["ingress"][0]["ports"][0]["port"], "metrics");
    let agent = find(&member, "NetworkPolicy", "gp-gpupool-agent");
    assert_eq!(egress(agent).len(), 2);
    let ma = &find(&member, "Deployment", "gp-gpupool-member-agent")["spec"]["template"]["spec"]["containers"]
        [0];
    assert_probes_and_metrics(ma);

    // What is missing is named.
    let chart = chart_dir();
    for (extra, field) in [
        (
            vec!["--set", "networkPolicy.enabled=true"],
            "networkPolicy.kubeApiServer.cidrs",
        ),
        (
            vec![
                "--set",
                "networkPolicy.enabled=true",
                "--set",
                "networkPolicy.kubeApiServer.cidrs={10.0.0.1/32}",
                "--set",
                "solana.rpcUrl=https://rpc.example",
                "--set",
                "solana.programId=7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU",
                "--set",
                "solana.mint=7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU",
                "--set",
                "solana.oracleKeypair.existingSecret=oracle",
            ],
            "networkPolicy.solanaRpc.cidrs",
        ),
        (
            vec!["--set", "networkPolicy.kubeApiServer.cidrs={10.0.0.1}"],
            "/networkPolicy/kubeApiServer/cidrs/0",
        ),
        (vec!["--kube-version", "v1.29.0"], "kubeVersion"),
    ] {
        let mut args = vec!["template", RELEASE, chart.to_str().unwrap()];
        args.extend_from_slice(&extra);
        let out = helm(&args);
        assert!(!out.success, "helm template {extra:?} must fail");
        assert!(
            out.stderr.contains(field),
            "helm template {extra:?} must name {field}: {}",
            out.stderr
        );
    }
}

/// A container that serves /healthz, /readyz and /metrics on its `metrics` port (the chart's
/// default 8080), with the probes pointing there.
fn assert_probes_and_metrics(c: &Value) {
    assert!(
        c["args"]
            .as_array()
            .unwrap()
            .contains(&Value::from("--metrics-addr=0.0.0.0:8080")),
        "{c}"
    );
    assert_eq!(c["ports"][0]["name"], "metrics", "{c}");
    assert_eq!(c["ports"][0]["containerPort"], 8080, "{c}");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{c}");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics", "{c}");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{c}");
}

/// Installs the CRDs as the chart renders them (written into `dir`) and waits until they are
/// Established.
async fn install_chart_crds(cp: &ControlPlane, dir: &Path) -> Result<()> {
    let crds = write(
        dir,
        "crds.yaml",
        &render(&["--show-only", "templates/crds.yaml"]),
    );
    gpupool_e2e::apply_crds(cp, Path::new(&crds)).await
}

async fn kubectl_ok(cp: &ControlPlane, args: Vec<String>) -> Result<String> {
    let k = cp.kubectl();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        k.ok(&a)
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_and_member_manifests_pass_a_server_side_dry_run() -> Result<()> {
    let cp = ControlPlane::start("chart")
        .await
        .context("control plane starts")?;
    let dir = tempfile::tempdir()?;
    let s = |v: &str| v.to_string();

    // CRDs for real first: the dry-run of everything else is then checked against them too.
    install_chart_crds(&cp, dir.path()).await?;
    kubectl_ok(&cp, vec![s("create"), s("namespace"), s(NAMESPACE)]).await?;

    let settle = [
        "--set",
        "solana.rpcUrl=https://api.devnet.solana.com",
        "--set",
        &format!("solana.programId={ADDRESS}"),
        "--set",
        &format!("solana.mint={ADDRESS}"),
        "--set",
        "solana.oracleKeypair.existingSecret=gpupool-oracle",
    ]
    .map(String::from);
    let variants: Vec<(&str, Vec<String>)> = vec![
        ("hub", vec![]),
        ("hub-settlement-pdb", {
            let mut v = settle.to_vec();
            v.extend(
                [
                    "--set",
                    "operator.podDisruptionBudget.enabled=true",
                    "--set",
                    "metrics.grafanaDashboard.enabled=true",
                    // The inference gateway's Deployment, Service and RBAC.
                    "--set",
                    "gateway.enabled=true",
                    "--set",
                    "gateway.url=https://gateway.example.com",
                ]
                .map(String::from),
            );
            v
        }),
        ("member", vec![s("--set"), s("mode=member")]),
        // Hardened: NetworkPolicies, HTTPS metrics behind kube-rbac-proxy, settlement.
        ("hub-hardened", {
            let mut v = settle.to_vec();
            v.extend(hardened_hub().map(String::from));
            v
        }),
        (
            "member-pull-hardened",
            hardened_member().map(String::from).to_vec(),
        ),
    ];
    for (name, extra) in variants {
        let e: Vec<&str> = extra.iter().map(String::as_str).collect();
        let manifest = render(&e);
        let n = docs(&manifest).len();
        ensure!(n >= 5, "{name}: only {n} objects rendered");
        let f = write(dir.path(), &format!("{name}.yaml"), &manifest);
        let out = kubectl_ok(
            &cp,
            vec![
                s("apply"),
                s("--server-side"),
                s("--dry-run=server"),
                s("-f"),
                f,
            ],
        )
        .await
        .with_context(|| format!("{name}: server-side dry-run of the rendered chart"))?;
        ensure!(
            out.lines().count() == n,
            "{name}: {n} objects rendered but kubectl reported:\n{out}"
        );
        ensure!(out.contains("(server dry run)"), "{name}: {out}");
    }
    // hostPath NVML access runs the agent privileged. The harness API server runs without
    // --allow-privileged (kubeadm and managed clusters enable it), so that one field is refused:
    // it must be the only complaint, and every other object must pass.
    let manifest = render(&[
        "--set",
        "mode=member",
        "--set",
        "agent.nvml.access=hostPath",
    ]);
    let n = docs(&manifest).len();
    let f = write(dir.path(), "member-hostpath.yaml", &manifest);
    let out = cp.kubectl();
    let out = tokio::task::spawn_blocking(move || {
        out.run(&["apply", "--server-side", "--dry-run=server", "-f", &f])
    })
    .await??;
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    ensure!(
        errors.len() == 1
            && errors[0].contains(r#"DaemonSet "gp-gpupool-agent" is invalid"#)
            && errors[0].ends_with("spec.template.spec.containers[0].securityContext.privileged: Forbidden: disallowed by cluster policy"),
        "member-hostpath: expected only the privileged refusal, got:\n{}",
        out.stderr
    );
    ensure!(
        out.stdout.lines().count() == n - 1,
        "member-hostpath: {}",
        out.stdout
    );

    // Nothing but the CRDs and the namespace was created.
    let deps = kubectl_ok(
        &cp,
        vec![
            s("get"),
            s("deploy,ds,sa,secrets"),
            s("-n"),
            s(NAMESPACE),
            s("-o"),
            s("name"),
        ],
    )
    .await?;
    ensure!(deps.trim().is_empty(), "dry-run created objects: {deps}");

    // NOTES with settlement on say where the period comes from (no value of that name exists).
    let chart_path = chart_dir().display().to_string();
    let kubeconfig_path = cp.kubeconfig_path().display().to_string();
    let mut args: Vec<String> = [
        "install",
        RELEASE,
        &chart_path,
        "--namespace",
        NAMESPACE,
        "--kubeconfig",
        &kubeconfig_path,
        "--dry-run=server",
        "--set",
        "crds.install=false",
    ]
    .map(String::from)
    .to_vec();
    args.extend(settle.iter().cloned());
    let out = helm(&args.iter().map(String::as_str).collect::<Vec<_>>());
    ensure!(
        out.success,
        "helm install --dry-run (settlement): {}",
        out.stderr
    );
    ensure!(
        out.stdout.contains(
            "Settlement: enabled against https://api.devnet.solana.com, once per settlement period of the pool"
        ) && !out.stdout.contains(" every s"),
        "NOTES:\n{}",
        out.stdout
    );

    // Helm itself against the cluster: an install dry-run renders NOTES in both modes. The CRDs
    // were applied above with kubectl, so Helm must not try to adopt them (crds.install=false).
    let kubeconfig = cp.kubeconfig_path();
    let chart = chart_dir();
    for (mode, note) in [
        ("hub", "kubectl get memberclusters"),
        ("member", "kubectl get gputopologies"),
    ] {
        let out = helm(&[
            "install",
            RELEASE,
            chart.to_str().unwrap(),
            "--namespace",
            NAMESPACE,
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--dry-run=server",
            "--set",
            "crds.install=false",
            "--set",
            &format!("mode={mode}"),
        ]);
        ensure!(
            out.success,
            "helm install --dry-run=server ({mode}) failed: {}",
            out.stderr
        );
        ensure!(
            out.stdout.contains(note),
            "{mode} NOTES lack {note:?}:\n{}",
            out.stdout
        );
    }
    Ok(())
}

/// promtool from the same pinned tool set as helm (built by e2e/harness/build-tools.sh).
fn promtool() -> PathBuf {
    let tools = Tools::get().expect("harness tools are available");
    let p = tools.helm.with_file_name("promtool");
    assert!(p.is_file(), "{} is missing: rebuild the tools", p.display());
    p
}

/// `promtool <args>`: (success, stdout + stderr).
fn run_promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new(promtool())
        .args(args)
        .output()
        .expect("promtool starts");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every `expr` string anywhere in a JSON value (Grafana targets, rule groups).
fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

/// The `gpupool_*` metric names a PromQL expression reads (histogram series by their base name).
fn gpupool_metrics(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(off) = expr[i..].find("gpupool_") {
        let start = i + off;
        let boundary =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if boundary {
            names.push(expr[start..end].to_string());
        }
        i = end;
    }
    names
}

#[test]
fn dashboard_and_alerts_are_off_by_default_and_valid_promql_on_real_metrics() {
    // Off by default.
    let plain = docs(&render(&[]));
    assert!(
        !plain
            .iter()
            .any(|d| d["kind"] == "PrometheusRule" || d["kind"] == "ConfigMap"),
        "{:?}",
        kinds(&plain)
    );
    let on = docs(&render(&[
        "--set",
        "metrics.grafanaDashboard.enabled=true",
        "--set",
        "metrics.grafanaDashboard.annotations.grafana_folder=GPU",
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        "metrics.prometheusRule.labels.release=prom",
        "--set",
        "metrics.prometheusRule.jobPendingMinutes=20",
    ]));
    // Member mode renders neither (no operator there).
    let member = docs(&render(&[
        "--set",
        "mode=member",
        "--set",
        "metrics.grafanaDashboard.enabled=true",
        "--set",
        "metrics.prometheusRule.enabled=true",
    ]));
    assert!(
        !member
            .iter()
            .any(|d| d["kind"] == "PrometheusRule" || d["kind"] == "ConfigMap")
    );

    // The dashboard: a ConfigMap the Grafana sidecar picks up, holding a dashboard with the panels
    // an SRE needs.
    let cm = find(&on, "ConfigMap", "gp-gpupool-dashboard");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "GPU");
    let dash: Value = serde_json::from_str(cm["data"]["gpupool.json"].as_str().unwrap())
        .expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "gpupool-overview");
    let titles: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for want in [
        "GPUs in the pool, by member and model",
        "GPUs allocated to gpupool jobs, by member and model",
        "Pending jobs",
        "Oldest pending job age",
        "Placement latency p50 / p99",
        "Member readiness",
        "GPU-seconds metered per member (per hour)",
        "Tokens minted per member (per hour)",
        "Settlement failures (per hour)",
        "Oracle SOL balance",
        "Reconcile latency p50 / p99",
        "API client throttling",
        "Events skipped (per 5 minutes)",
        "Unpaid GPU-seconds, by member and reason",
        "Kubelet GPU mismatches",
        "Job restarts (per hour)",
        "Queue GPUs used vs nominal, by queue and class",
        "Queue GPUs borrowed, by queue and class",
        "Queue pending jobs",
        "Queue admissions (per 5 minutes)",
        "Queue preemptions (per 5 minutes), by queue and reason",
    ] {
        assert!(
            titles.contains(&want),
            "panel {want:?} missing from {titles:?}"
        );
    }
    // Every panel says its unit; the member panels follow the dashboard's cluster variable.
    for panel in dash["panels"].as_array().unwrap() {
        if panel["type"] != "row" {
            assert!(
                panel["fieldConfig"]["defaults"]["unit"].is_string(),
                "panel {} has no unit",
                panel["title"]
            );
        }
    }
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "cluster"]);
    assert_eq!(
        dash["templating"]["list"][1]["query"]["query"],
        "label_values(gpupool_member_ready, cluster)"
    );
    let mut dash_exprs = Vec::new();
    exprs(&dash, &mut dash_exprs);
    for e in &dash_exprs {
        if e.contains("gpupool_member_ready") || e.contains("gpupool_unpaid_gpu_seconds") {
            assert!(e.contains(r#"cluster=~"$cluster""#), "{e}");
        }
    }
    assert!(dash_exprs.len() >= titles.len(), "{dash_exprs:?}");

    // The alerts.
    let rule = find(&on, "PrometheusRule", "gp-gpupool-operator");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["labels"]["release"], "prom");
    let alerts: Vec<&str> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    assert_eq!(
        alerts,
        vec![
            "GpupoolMemberNotReady",
            "GpupoolJobPendingTooLong",
            "GpupoolSettlementFailing",
            "GpupoolOracleBalanceLow",
            "GpupoolOperatorAbsent",
            "GpupoolOperatorLeaderless",
            "GpupoolReconcileErrors",
            "GpupoolUnpaidUsage",
            "GpupoolKubeletGpuMismatch",
            "GpupoolSupplyRejected",
            "GpupoolTenantLowRunway",
            "GpupoolQueueStarved",
        ]
    );
    let mut rule_exprs = Vec::new();
    exprs(&rule["spec"], &mut rule_exprs);
    assert!(
        rule_exprs.iter().any(|e| e.ends_with("> 1200")),
        "{rule_exprs:?}"
    );

    // Every expression parses with Prometheus's own parser (promtool check rules): the rule file
    // as Prometheus loads it, and the dashboard's queries as recording rules.
    let dir = tempfile::tempdir().unwrap();
    let rules_file = write(
        dir.path(),
        "alerts.yaml",
        &serde_yaml::to_string(&rule["spec"]).unwrap(),
    );
    let (ok, out) = run_promtool(&["check", "rules", &rules_file]);
    assert!(ok && out.contains("SUCCESS: 12 rules found"), "{out}");
    // Each alert links its runbook section, and the README has that section.
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    for r in rule["spec"]["groups"][0]["rules"].as_array().unwrap() {
        let name = r["alert"].as_str().unwrap();
        assert_eq!(
            r["annotations"]["runbook_url"],
            format!(
                "https://github.com/gpupool/gpupool/blob/main/README.md#{}",
                name.to_lowercase()
            )
        );
        assert!(
            readme.contains(&format!("\n#### {name}\n")),
            "README has no runbook section for {name}"
        );
    }
    let dash_rules = serde_json::json!({"groups": [{
        "name": "dashboard",
        "rules": dash_exprs.iter().enumerate()
            .map(|(i, e)| serde_json::json!({"record": format!("gpupool:dashboard_query:{i}"), "expr": e}))
            .collect::<Vec<_>>(),
    }]});
    let dash_file = write(
        dir.path(),
        "dashboard.yaml",
        &serde_yaml::to_string(&dash_rules).unwrap(),
    );
    let (ok, out) = run_promtool(&["check", "rules", &dash_file]);
    assert!(
        ok && out.contains(&format!("SUCCESS: {} rules found", dash_exprs.len())),
        "{out}"
    );
    // The check can fail: a broken query is refused.
    let bad = write(
        dir.path(),
        "bad.yaml",
        "groups:\n- name: x\n  rules:\n  - record: a:b\n    expr: sum(rate(gpupool_reconciles_total[5m]) by\n",
    );
    let (ok, out) = run_promtool(&["check", "rules", &bad]);
    assert!(!ok && out.contains("parse error"), "{out}");

    // Every gpupool metric they read is one the operator exposes.
    let registry = gpupool::metrics::Metrics::default().metric_names();
    let mut used = std::collections::BTreeSet::new();
    for e in dash_exprs.iter().chain(&rule_exprs) {
        for name in gpupool_metrics(e) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|b| registry.iter().any(|r| r == b))
                })
                .unwrap_or(&name)
                .to_string();
            assert!(
                registry.contains(&base),
                "{e:?} reads {name}, which the operator does not expose ({registry:?})"
            );
            used.insert(base);
        }
    }
    for must in [
        "gpupool_member_model_gpus",
        "gpupool_member_model_gpus_allocated",
        "gpupool_pending_jobs",
        "gpupool_pending_job_oldest_age_seconds",
        "gpupool_placement_duration_seconds",
        "gpupool_member_ready",
        "gpupool_usage_gpu_seconds_total",
        "gpupool_tokens_minted_total",
        "gpupool_settlement_failures_total",
        "gpupool_oracle_balance_lamports",
        "gpupool_reconcile_duration_seconds",
        "gpupool_client_throttled_seconds_total",
        "gpupool_events_skipped_total",
        "gpupool_unpaid_gpu_seconds",
        "gpupool_kubelet_gpu_mismatches",
        "gpupool_job_restarts_total",
        "gpupool_reconcile_errors_total",
        "gpupool_leader",
        "gpupool_member_supply_problems",
    ] {
        assert!(used.contains(must), "nothing reads {must}: {used:?}");
    }
}

#[test]
fn alerts_fire_on_the_conditions_they_name() {
    // promtool's rule unit tests: synthetic series in, expected alerts out.
    let on = docs(&render(&[
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        "metrics.prometheusRule.memberNotReadyFor=5m",
        "--set",
        "metrics.prometheusRule.jobPendingMinutes=30",
        "--set",
        "metrics.prometheusRule.oracleMinBalanceLamports=100000000",
    ]));
    let rule = find(&on, "PrometheusRule", "gp-gpupool-operator");
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "alerts.yaml",
        &serde_yaml::to_string(&rule["spec"]).unwrap(),
    );
    let tests = r#"
rule_files: [alerts.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # east goes NotReady at minute 2; west stays Ready. Two operator replicas report east.
      - series: 'gpupool_member_ready{cluster="east",pod="a"}'
        values: '1 1 0x20'
      - series: 'gpupool_member_ready{cluster="east",pod="b"}'
        values: '1 1 0x20'
      - series: 'gpupool_member_ready{cluster="west",pod="a"}'
        values: '1x22'
      # The oldest pending training job ages one minute per minute from minute 0.
      - series: 'gpupool_pending_job_oldest_age_seconds{kind="trainingjob"}'
        values: '0+60x40'
      - series: 'gpupool_pending_job_oldest_age_seconds{kind="inferencejob"}'
        values: '0x40'
      - series: 'gpupool_settlement_failures_total{reason="send"}'
        values: '0x10 1+1x30'
      - series: 'gpupool_oracle_balance_lamports'
        values: '500000000x5 50000000x20'
      # The only operator replica stops being scraped as up at minute 3.
      - series: 'up{job="gp-gpupool-operator-metrics",namespace="gpupool-system",pod="op-0"}'
        values: '1x2 0x30'
      # Two replicas of a second release are up; the leader steps down at minute 4 and nobody
      # takes over.
      - series: 'gpupool_leader{job="gp-gpupool-operator-metrics",namespace="gpupool-system",pod="op-1"}'
        values: '1x3 0x30'
      - series: 'gpupool_leader{job="gp-gpupool-operator-metrics",namespace="gpupool-system",pod="op-2"}'
        values: '0x33'
      # east publishes 3 GPUs the hub refuses from minute 2 on; west none.
      - series: 'gpupool_member_supply_problems{cluster="east",pod="a"}'
        values: '0 0 3x30'
      - series: 'gpupool_member_supply_problems{cluster="west",pod="a"}'
        values: '0x32'
      # The MemberCluster controller fails from minute 5 on; the jobs controller once.
      - series: 'gpupool_reconcile_errors_total{controller="membercluster",error="api"}'
        values: '0x5 1+1x30'
      - series: 'gpupool_reconcile_errors_total{controller="trainingjob",error="api"}'
        values: '0x5 1x30'
      # east's usage is refused from minute 10 on.
      - series: 'gpupool_unpaid_gpu_seconds{cluster="east",reason="no-pod-report",pod="a"}'
        values: '0x9 120x40'
      # Two kubelet mismatches in west from minute 1 on.
      - series: 'gpupool_kubelet_gpu_mismatches{cluster="west"}'
        values: '0 2x30'
      # team-a's runway falls under an hour at minute 10; team-b keeps two hours.
      - series: 'gpupool_tenant_runway_seconds{tenant="team-a"}'
        values: '7200x9 1800x30'
      - series: 'gpupool_tenant_runway_seconds{tenant="team-b"}'
        values: '7200x40'
      # team-a holds 4 of its 8 H100 with jobs waiting from minute 1 on; team-b all of its 8.
      - series: 'gpupool_queue_gpus{queue="team-a",gpu_class="H100",state="used"}'
        values: '4x40'
      - series: 'gpupool_queue_gpus{queue="team-a",gpu_class="H100",state="nominal"}'
        values: '8x40'
      - series: 'gpupool_queue_pending_jobs{queue="team-a"}'
        values: '0 2x40'
      - series: 'gpupool_queue_gpus{queue="team-b",gpu_class="H100",state="used"}'
        values: '8x40'
      - series: 'gpupool_queue_gpus{queue="team-b",gpu_class="H100",state="nominal"}'
        values: '8x40'
      - series: 'gpupool_queue_pending_jobs{queue="team-b"}'
        values: '3x40'
    alert_rule_test:
      - eval_time: 4m
        alertname: GpupoolMemberNotReady
        exp_alerts: []
      - eval_time: 8m
        alertname: GpupoolMemberNotReady
        exp_alerts:
          - exp_labels: {severity: warning, cluster: east}
            exp_annotations:
              runbook_url: https://github.com/gpupool/gpupool/blob/main/README.md#gpupoolmembernotready
              summary: Member cluster east is NotReady
              description: "Member cluster east has been NotReady for more than 5m: its jobs are being moved to other members. Check its API server and the hub's kubeconfig Secret for it (kubectl describe membercluster east)."
      - eval_time: 29m
        alertname: GpupoolJobPendingTooLong
        exp_alerts: []
      - eval_time: 31m
        alertname: GpupoolJobPendingTooLong
        exp_alerts:
          - exp_labels: {severity: warning, kind: trainingjob}
            exp_annotations:
              runbook_url: https://github.com/gpupool/gpupool/blob/main/README.md#gpupooljobpendingtoolong
              summary: A trainingjob has waited for GPUs for more than 30 minutes
              description: "The oldest pending trainingjob has waited 31m 0s. Ask gpupool why: kubectl gpupool why <job>."
      - eval_time: 10m
        alertname: GpupoolSettlementFailing
        exp_alerts: []
      - eval_time: 35m
        alertname: GpupoolSettlementFailing
        exp_alerts:
          - exp_labels: {severity: warning}
            exp_annotations:
              runbook_url: https://github.com/gpupool/gpupool/blob/main/README.md#gpupoolsettlementfailing
              summary: Settlement of metered GPU usage on Solana is failing
              description: "15 settlement failures in the last window; usage stays Final in the hub and is paid once settlement succeeds. Check the operator log and the Solana RPC endpoint."
      - eval_time: 12m
        alertname: GpupoolOracleBalanceLow
        exp_alerts: []
      - eval_time: 20m
        alertname: GpupoolOracleBalanceLow
        exp_alerts:
          - exp_labels: {severity: warning}
            exp_annotations:
              runbook_url: https://github.com/gpupool/gpupool/blob/main/README.md#gpupooloraclebalancelow
              summary: The gpupool usage oracle is running out of SOL
              description: "The oracle wallet holds 50M lamports; it pays the fees of settlement transactions. Top it up before settlement stops."
"#;
    let tests = format!(
        "{tests}{}",
        r#"
      - eval_time: 6m
        alertname: GpupoolOperatorAbsent
        exp_alerts: []
      - eval_time: 9m
        alertname: GpupoolOperatorAbsent
        exp_alerts:
          - exp_labels: {severity: warning}
            exp_annotations:
              runbook_url: https://github.com/gpupool/gpupool/blob/main/README.md#gpupooloperatorabsent
              summary: No gpupool operator replica is up
              description: "Prometheus has scraped no live gpupool operator replica (Service gp-gpupool-operator-metrics in gpupool-system) for 5m: no job is placed, moved or metered. kubectl -n gpupool-system get pods,lease."
      - eval_time: 7m
        alertname: GpupoolOperatorLeaderless
        exp_alerts: []
      - eval_time: 10m
        alertname: GpupoolOperatorLeaderless
        exp_alerts:
          - exp_labels: {severity: warning}
            exp_annotations:
              runbook_url: https://github.com/gpupool/gpupool/blob/main/README.md#gpupooloperatorleaderless
              summary: gpupool operator replicas run but none leads
              description: "Operator replicas in gpupool-system are scraped, but none has held the leader Lease for 5m: nothing is placed, moved or metered. kubectl -n gpupool-system get lease,pods; check that the replicas can reach the hub API and update their Lease."
      - eval_time: 12m
        alertname: GpupoolSupplyRejected
        exp_alerts: []
      - eval_time: 20m
        alertname: GpupoolSupplyRejected
        exp_alerts:
          - exp_labels: {severity: warning, cluster: east}
            exp_annotations:
              runbook_url: https://github.com/gpupool/gpupool/blob/main/README.md#gpupoolsupplyrejected
              summary: The hub refuses GPUs that member east publishes
              description: 3 GPUs east publishes are not placed on (more than its nodes allocate, or UUIDs another member or node already claims). kubectl describe membercluster east (condition SupplyVerified) says which.
      - eval_time: 18m
        alertname: GpupoolReconcileErrors
        exp_alerts: []
      - eval_time: 25m
        alertname: GpupoolReconcileErrors
        exp_alerts:
          - exp_labels: {severity: warning, controller: membercluster}
            exp_annotations:
              runbook_url: https://github.com/gpupool/gpupool/blob/main/README.md#gpupoolreconcileerrors
              summary: The membercluster controller keeps failing
              description: 'membercluster reconciles have kept failing for 15m; gpupool_reconcile_errors_total{controller="membercluster"} says which error, the operator log says why.'
      - eval_time: 30m
        alertname: GpupoolUnpaidUsage
        exp_alerts: []
      - eval_time: 45m
        alertname: GpupoolUnpaidUsage
        exp_alerts:
          - exp_labels: {severity: warning, cluster: east, reason: no-pod-report}
            exp_annotations:
              runbook_url: https://github.com/gpupool/gpupool/blob/main/README.md#gpupoolunpaidusage
              summary: Member east claims GPU-seconds the hub does not pay (no-pod-report)
              description: The last metering pass refused 120 GPU-seconds of east for no-pod-report. Look at the unpaidReason of its pods in its UsageRecords (kubectl get usagerecords -o yaml).
      - eval_time: 10m
        alertname: GpupoolKubeletGpuMismatch
        exp_alerts: []
      - eval_time: 20m
        alertname: GpupoolKubeletGpuMismatch
        exp_alerts:
          - exp_labels: {severity: warning, cluster: west}
            exp_annotations:
              runbook_url: https://github.com/gpupool/gpupool/blob/main/README.md#gpupoolkubeletgpumismatch
              summary: The kubelet of west gave pods other GPUs than gpupool chose
              description: 2 device-plugin pods in west run on GPUs other than the ones gpupool placed them on; the hub follows the kubelet, but NVLink placement is lost for them.
      - eval_time: 12m
        alertname: GpupoolTenantLowRunway
        exp_alerts: []
      - eval_time: 16m
        alertname: GpupoolTenantLowRunway
        exp_alerts:
          - exp_labels: {severity: warning, tenant: team-a}
            exp_annotations:
              runbook_url: https://github.com/gpupool/gpupool/blob/main/README.md#gpupooltenantlowrunway
              summary: Tenant team-a has less than an hour of escrow left
              description: At the burn rate of its running jobs, the escrow of tenant team-a lasts 1800 s more; then their reservations cannot be renewed and they are stopped. kubectl gpupool balance --tenant team-a; fund it with gpupool escrow deposit.
      - eval_time: 10m
        alertname: GpupoolQueueStarved
        exp_alerts: []
      - eval_time: 20m
        alertname: GpupoolQueueStarved
        exp_alerts:
          - exp_labels: {severity: warning, queue: team-a}
            exp_annotations:
              runbook_url: https://github.com/gpupool/gpupool/blob/main/README.md#gpupoolqueuestarved
              summary: GpuQueue team-a has jobs waiting below its nominal quota
              description: "Queue team-a holds 4 GPUs, less than its nominal quota, while its jobs have waited for 15m: the pool lacks the GPUs its jobs ask for, or borrowers hold its lent quota and preempting them would not place its jobs. kubectl gpupool queues; kubectl gpupool why <job>."
"#
    );
    let f = write(dir.path(), "alerts_test.yaml", &tests);
    let (ok, out) = run_promtool(&["test", "rules", &f]);
    assert!(ok && out.contains("SUCCESS"), "{out}");
}

/// Whether `selector` (a LabelSelector with matchLabels only, as the bootstrap roles use) selects
/// an object with `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let ml = selector["matchLabels"].as_object();
    selector["matchExpressions"].is_null()
        && ml.is_some_and(|ml| !ml.is_empty() && ml.iter().all(|(k, v)| labels[k] == *v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregated_roles_let_edit_and_view_users_work_with_jobs() -> Result<()> {
    let mut cp = ControlPlane::start("chart-rbac")
        .await
        .context("control plane starts")?;
    // The aggregation controller copies the rules of roles its selectors match into
    // edit/admin/view, as on any real cluster.
    cp.start_controller_manager(&["clusterrole-aggregation-controller"])?;
    let dir = tempfile::tempdir()?;
    let s = |v: &str| v.to_string();
    install_chart_crds(&cp, dir.path()).await?;
    let manifest = render(&["--show-only", "templates/rbac-aggregated.yaml"]);
    let roles = docs(&manifest);
    ensure!(
        kinds(&roles) == ["ClusterRole/gp-gpupool-edit", "ClusterRole/gp-gpupool-view"],
        "{:?}",
        kinds(&roles)
    );
    let f = write(dir.path(), "roles.yaml", &manifest);
    kubectl_ok(&cp, vec![s("apply"), s("--server-side"), s("-f"), f]).await?;

    // The API server's own bootstrap `edit`, `admin` and `view` roles select ours by label.
    for (standard, ours) in [
        ("edit", "gp-gpupool-edit"),
        ("admin", "gp-gpupool-edit"),
        ("view", "gp-gpupool-view"),
    ] {
        let role: Value = serde_json::from_str(
            &kubectl_ok(
                &cp,
                vec![s("get"), s("clusterrole"), s(standard), s("-o"), s("json")],
            )
            .await?,
        )?;
        let labels = &find(&roles, "ClusterRole", ours)["metadata"]["labels"];
        let selectors = role["aggregationRule"]["clusterRoleSelectors"]
            .as_array()
            .with_context(|| format!("clusterrole {standard} has no aggregationRule: {role}"))?;
        ensure!(
            selectors.iter().any(|sel| selects(sel, labels)),
            "clusterrole {standard} ({selectors:?}) does not aggregate {ours} ({labels})"
        );
    }
    // `view` must not pick up the write verbs.
    let view: Value = serde_json::from_str(
        &kubectl_ok(
            &cp,
            vec![s("get"), s("clusterrole"), s("view"), s("-o"), s("json")],
        )
        .await?,
    )?;
    let edit_labels = &find(&roles, "ClusterRole", "gp-gpupool-edit")["metadata"]["labels"];
    ensure!(
        !view["aggregationRule"]["clusterRoleSelectors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|sel| selects(sel, edit_labels)),
        "view aggregates the edit role"
    );

    // What the roles grant, asked of the API server's RBAC authorizer as the users themselves,
    // who are bound to the standard edit/view roles only: gpupool's rules reach them through
    // aggregation.
    kubectl_ok(&cp, vec![s("create"), s("namespace"), s("team-a")]).await?;
    for (user, role) in [("alice", "edit"), ("bob", "view")] {
        kubectl_ok(
            &cp,
            vec![
                s("-n"),
                s("team-a"),
                s("create"),
                s("rolebinding"),
                format!("{user}-gpupool"),
                format!("--clusterrole={role}"),
                format!("--user={user}"),
            ],
        )
        .await?;
    }
    let can = |user: &str, verb: &str, resource: &str, ns: &str| {
        let k = cp.kubectl();
        // `kind/status` is a subresource (`kind/name` would name an object).
        let (resource, sub) = resource.split_once('/').unwrap_or((resource, ""));
        let mut args: Vec<String> = vec![
            s("auth"),
            s("can-i"),
            s(verb),
            s(resource),
            s("-n"),
            s(ns),
            format!("--as={user}"),
        ];
        if !sub.is_empty() {
            args.push(format!("--subresource={sub}"));
        }
        async move {
            let out = tokio::task::spawn_blocking(move || {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                k.run(&a)
            })
            .await??;
            anyhow::Ok(out.stdout.trim() == "yes")
        }
    };
    let expect = [
        ("alice", "create", "trainingjobs.gpupool.io", "team-a", true),
        (
            "alice",
            "delete",
            "inferencejobs.gpupool.io",
            "team-a",
            true,
        ),
        ("alice", "patch", "trainingjobs.gpupool.io", "team-a", true),
        ("alice", "watch", "inferencejobs.gpupool.io", "team-a", true),
        (
            "alice",
            "create",
            "trainingjobs.gpupool.io",
            "default",
            false,
        ),
        (
            "alice",
            "update",
            "trainingjobs.gpupool.io/status",
            "team-a",
            false,
        ),
        (
            "alice",
            "create",
            "memberclusters.gpupool.io",
            "team-a",
            false,
        ),
        ("bob", "get", "trainingjobs.gpupool.io", "team-a", true),
        ("bob", "list", "inferencejobs.gpupool.io", "team-a", true),
        ("bob", "create", "trainingjobs.gpupool.io", "team-a", false),
        ("bob", "delete", "inferencejobs.gpupool.io", "team-a", false),
        ("carol", "get", "trainingjobs.gpupool.io", "team-a", false),
    ];
    // Aggregation is asynchronous: wait until both standard roles carry gpupool's rules.
    gpupool_e2e::eventually(60, "edit and view aggregate gpupool's roles", || async {
        let alice = can("alice", "create", "trainingjobs.gpupool.io", "team-a").await?;
        let bob = can("bob", "list", "inferencejobs.gpupool.io", "team-a").await?;
        Ok((alice && bob).then_some(()))
    })
    .await?;
    for (user, verb, resource, ns, want) in expect {
        let got = can(user, verb, resource, ns).await?;
        ensure!(
            got == want,
            "kubectl auth can-i {verb} {resource} -n {ns} --as={user}: expected {want}, got {got}"
        );
    }
    Ok(())
}

/// The node agent itself, authenticated as the chart's agent ServiceAccount (a real token from the
/// TokenRequest API) against a real API server that enforces the chart's RBAC: every call it
/// makes is allowed, with `--simulate-dra` too, and nothing more is granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_runs_under_the_charts_rbac_and_needs_nothing_more() -> Result<()> {
    let agent = gpupool_e2e::operator_bin("gpupool-agent");
    let cp = ControlPlane::start("chart-agent")
        .await
        .context("control plane starts")?;
    let dir = tempfile::tempdir()?;
    let s = |v: &str| v.to_string();
    install_chart_crds(&cp, dir.path()).await?;
    kubectl_ok(&cp, vec![s("create"), s("namespace"), s(NAMESPACE)]).await?;
    let apply_rbac = |simulate: bool| {
        let manifest = render(&[
            "--set",
            "mode=member",
            "--set",
            &format!("agent.simulateDra={simulate}"),
            "--show-only",
            "templates/agent-rbac.yaml",
        ]);
        let f = write(
            dir.path(),
            &format!("agent-rbac-{simulate}.yaml"),
            &manifest,
        );
        kubectl_ok(&cp, vec![s("apply"), s("--server-side"), s("-f"), f])
    };
    apply_rbac(true).await?;
    let client = cp.client().await?;
    let node = "dgx1-v100-0";
    GpuNode::new(node, 8, "Tesla V100-SXM2-16GB")
        .create(&client)
        .await?;

    // A kubeconfig whose only credential is the ServiceAccount's token.
    let token = kubectl_ok(
        &cp,
        vec![
            s("create"),
            s("token"),
            s("gp-gpupool-agent"),
            s("-n"),
            s(NAMESPACE),
        ],
    )
    .await?;
    let sa_kubeconfig = dir.path().join("agent-kubeconfig");
    std::fs::copy(cp.kubeconfig_path(), &sa_kubeconfig)?;
    let k = gpupool_e2e::Kubectl::new(sa_kubeconfig.clone());
    k.ok(&[
        "config",
        "set-credentials",
        "gpupool-agent",
        &format!("--token={}", token.trim()),
    ])?;
    k.ok(&["config", "set-context", "--current", "--user=gpupool-agent"])?;
    ensure!(
        k.ok(&[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}"
        ])? == format!("system:serviceaccount:{NAMESPACE}:gp-gpupool-agent"),
        "the kubeconfig does not authenticate as the agent's ServiceAccount"
    );

    let topology = repo_root().join("deploy/topologies/dgx1-v100-busy.yaml");
    let run_agent = |simulate: bool| {
        let mut cmd = Command::new(&agent);
        cmd.arg("--topology-file")
            .arg(&topology)
            .args(["--once", "--node-name", node, "--kubeconfig"])
            .arg(&sa_kubeconfig);
        if simulate {
            cmd.arg("--simulate-dra");
        }
        let out = cmd.output().expect("agent runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let sa = format!("--as=system:serviceaccount:{NAMESPACE}:gp-gpupool-agent");
    let can = |verb: &str, resource: &str| -> Result<bool> {
        let out = cp.kubectl().run(&["auth", "can-i", verb, resource, &sa])?;
        Ok(out.stdout.trim() == "yes")
    };
    // The authorizer follows role changes through a watch: wait until it has this one.
    gpupool_e2e::eventually(30, "the agent's role is in force", || async {
        Ok(can("patch", "resourceslices.resource.k8s.io")?.then_some(()))
    })
    .await?;
    // Twice: the first apply creates the objects, the second updates them.
    for round in 0..2 {
        let (ok, stderr) = run_agent(true);
        ensure!(
            ok,
            "agent run {round} under the chart's RBAC failed: {stderr}"
        );
    }
    let topo = kubectl_ok(
        &cp,
        vec![
            s("get"),
            s("gputopology"),
            s(node),
            s("-o"),
            s("jsonpath={.status.gpuCount}/{.status.gpusInUse[*]}"),
        ],
    )
    .await?;
    ensure!(
        topo.starts_with("8/") && topo.split(' ').count() == 2,
        "{topo}"
    );
    let slice = kubectl_ok(
        &cp,
        vec![
            s("get"),
            s("resourceslice"),
            format!("{node}-gpu-nvidia-com"),
            s("-o"),
            s("jsonpath={.spec.driver}"),
        ],
    )
    .await?;
    ensure!(slice == "gpu.nvidia.com", "{slice}");

    // Nothing beyond those calls: asked of the RBAC authorizer as the ServiceAccount.
    for (verb, resource, want) in [
        ("get", "nodes", true),
        ("patch", "gputopologies.gpupool.io", true),
        ("list", "nodes", false),
        ("patch", "nodes", false),
        ("delete", "gputopologies.gpupool.io", false),
        ("list", "gputopologies.gpupool.io", false),
        ("delete", "resourceslices.resource.k8s.io", false),
        ("list", "pods", false),
        ("get", "secrets", false),
    ] {
        ensure!(
            can(verb, resource)? == want,
            "can the agent {verb} {resource}? expected {want}"
        );
    }

    // Without agent.simulateDra the role has no resourceslices: --simulate-dra is refused by the
    // API server (so the rule above is needed), and the agent's ordinary work still runs.
    apply_rbac(false).await?;
    gpupool_e2e::eventually(30, "the narrower role is in force", || async {
        Ok((!can("patch", "resourceslices.resource.k8s.io")?).then_some(()))
    })
    .await?;
    let (ok, stderr) = run_agent(true);
    ensure!(
        !ok && stderr.contains("forbidden") && stderr.contains("resourceslices"),
        "--simulate-dra without the resourceslices rule: {ok} {stderr}"
    );
    let (ok, stderr) = run_agent(false);
    ensure!(ok, "the agent without --simulate-dra: {stderr}");
    Ok(())
}

/// The chart as released in 0.1.0 (the commit before the hardened chart): what `helm upgrade`
/// starts from.
const PREVIOUS_CHART_REV: &str = "e5a436edfd197e12b7bbd6f3b3d6c5d0913ea9f6";

/// Writes the chart (and the CRDs its `files/crds` link points at) as of `rev` into `dir`;
/// returns the chart's directory.
fn chart_at(rev: &str, dir: &Path) -> PathBuf {
    let archive = Command::new("git")
        .args(["archive", "--format=tar", rev, "charts/gpupool", "crds"])
        .current_dir(repo_root())
        .output()
        .expect("git starts");
    assert!(
        archive.status.success(),
        "git archive {rev} (a clone with history is needed): {}",
        String::from_utf8_lossy(&archive.stderr)
    );
    let mut tar = Command::new("tar")
        .args(["-x", "-C"])
        .arg(dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("tar starts");
    std::io::Write::write_all(tar.stdin.as_mut().unwrap(), &archive.stdout).unwrap();
    drop(tar.stdin.take());
    assert!(tar.wait().unwrap().success());
    dir.join("charts/gpupool")
}

/// `helm <verb> gp <chart>` against a control plane, in the release namespace.
fn helm_release(verb: &str, chart: &Path, cp: &ControlPlane, extra: &[&str]) -> HelmOut {
    let kubeconfig = cp.kubeconfig_path();
    let mut args = vec![
        verb,
        RELEASE,
        chart.to_str().unwrap(),
        "--namespace",
        NAMESPACE,
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    helm(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn helm_upgrade_from_the_previous_chart_keeps_jobs_running() -> Result<()> {
    use gpupool::api::{TrainingJob, TrainingPhase};
    use gpupool_e2e::{Federation, Operator, publish_fixture, register_member};
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ListParams, PostParams};

    let fed = Federation::start(1).await.context("federation starts")?;
    fed.add_nodes(0, &[GpuNode::new("dgx-0", 8, "NVIDIA H100 80GB HBM3")])
        .await?;
    let member = fed.members[0].cp.client().await?;
    publish_fixture(&member, "dgx-h100", "dgx-0").await?;
    let hub = fed.hub.client().await?;

    // The harness applied today's CRDs (the operator under test writes today's status fields,
    // so the previous release runs without its own CRDs); the upgrade adopts and manages them.
    let crd_names: Vec<String> = repo_crds().into_keys().collect();
    for crd in &crd_names {
        let target = format!("crd/{crd}");
        let s = |v: &str| v.to_string();
        kubectl_ok(
            &fed.hub,
            vec![
                s("label"),
                s("--overwrite"),
                target.clone(),
                s("app.kubernetes.io/managed-by=Helm"),
            ],
        )
        .await?;
        kubectl_ok(
            &fed.hub,
            vec![
                s("annotate"),
                s("--overwrite"),
                target,
                format!("meta.helm.sh/release-name={RELEASE}"),
                format!("meta.helm.sh/release-namespace={NAMESPACE}"),
            ],
        )
        .await?;
    }
    let old_dir = tempfile::tempdir()?;
    let old = chart_at(PREVIOUS_CHART_REV, old_dir.path());
    let out = helm_release(
        "install",
        &old,
        &fed.hub,
        &["--create-namespace", "--set", "crds.install=false"],
    );
    ensure!(out.success, "helm install (previous chart): {}", out.stderr);
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(hub.clone());
    let kept = || async {
        let crd = crds.get("trainingjobs.gpupool.io").await?;
        Ok::<bool, anyhow::Error>(crd.metadata.annotations.is_some_and(|a| {
            a.get("helm.sh/resource-policy")
                .is_some_and(|v| v == "keep")
        }))
    };
    ensure!(
        !kept().await?,
        "the previous release did not manage the CRDs"
    );

    // Jobs placed and running under the previous release.
    register_member(&hub, "member-1", &fed.members[0].cp, ADDRESS, "eu").await?;
    let op = Operator::start(hub.clone(), Operator::test_config(30));
    gpupool_e2e::wait_member_ready(&hub, "member-1", 60).await?;
    let tjs: Api<TrainingJob> = Api::namespaced(hub.clone(), "default");
    let tj = |name: &str| -> TrainingJob {
        serde_yaml::from_str(&format!(
            "apiVersion: gpupool.io/v1alpha1\nkind: TrainingJob\nmetadata: {{name: {name}, namespace: default}}\nspec: {{template: {{spec: {{containers: [{{name: main, image: trainer}}]}}}}, workers: 1, gpusPerWorker: 4, gpu: {{model: H100}}, nvlink: required}}\n"
        ))
        .unwrap()
    };
    tjs.create(&PostParams::default(), &tj("before")).await?;
    gpupool_e2e::wait_running_on(&tjs, "before", 90).await?;
    let pods: Api<Pod> = Api::all(member.clone());
    let pod_uids = || async {
        let mut uids: Vec<String> = pods
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|p| p.metadata.uid)
            .collect();
        uids.sort();
        Ok::<Vec<String>, anyhow::Error>(uids)
    };
    let before_pods = pod_uids().await?;
    ensure!(
        !before_pods.is_empty(),
        "the job's pod exists in the member"
    );
    let before = tjs.get("before").await?.status.unwrap_or_default();

    // Upgrade to this chart; the operator is replaced, as the Deployment's rollout would.
    drop(op);
    let out = helm_release("upgrade", &chart_dir(), &fed.hub, &[]);
    ensure!(out.success, "helm upgrade: {}", out.stderr);
    let objects = kubectl_ok(
        &fed.hub,
        vec![
            "get".into(),
            "ns/gpupool-join".into(),
            "validatingadmissionpolicy/gpupool-join-request-name".into(),
            format!("poddisruptionbudget/{RELEASE}-gpupool-operator"),
            "-n".into(),
            NAMESPACE.into(),
            "-o".into(),
            "name".into(),
        ],
    )
    .await?;
    ensure!(
        objects.contains("poddisruptionbudget.policy/gp-gpupool-operator")
            && objects.contains("namespace/gpupool-join"),
        "objects new in this chart: {objects}"
    );
    let _op = Operator::start(hub.clone(), Operator::test_config(30));

    // New work is placed (and keeps the status field the upgraded CRD now has) ...
    tjs.create(&PostParams::default(), &tj("after")).await?;
    gpupool_e2e::wait_running_on(&tjs, "after", 90).await?;
    let after = tjs.get("after").await?.status.unwrap_or_default();
    ensure!(
        after.workers[0].gpu_indexes.len() == 4,
        "gpuIndexes survive in the upgraded CRD: {:?}",
        after.workers
    );
    // ... and the job from before runs on, where it ran, with the same pod.
    let now = tjs.get("before").await?.status.unwrap_or_default();
    ensure!(
        now.phase == TrainingPhase::Running
            && now.cluster == before.cluster
            && now
                .workers
                .iter()
                .map(|w| &w.gpu_uuids)
                .eq(before.workers.iter().map(|w| &w.gpu_uuids)),
        "the job from before the upgrade moved: {before:?} -> {now:?}"
    );
    let after_pods = pod_uids().await?;
    ensure!(
        before_pods.iter().all(|u| after_pods.contains(u)),
        "pods of the job from before were replaced: {before_pods:?} -> {after_pods:?}"
    );
    ensure!(after_pods.len() == before_pods.len() + 1, "{after_pods:?}");
    Ok(())
}

/// A TrainingJob `name` whose template takes `DB_PASSWORD` from Secret `db` and mounts
/// ConfigMap `cfg` when `config_map` (gpupool would copy both into the members).
fn job_referencing(name: &str, secret: Option<&str>, config_map: Option<&str>) -> String {
    let env = secret.map_or(String::new(), |s| {
        format!(
            "        env:\n        - name: DB_PASSWORD\n          valueFrom: {{secretKeyRef: {{name: {s}, key: password}}}}\n"
        )
    });
    let (mounts, volumes) = config_map.map_or((String::new(), String::new()), |c| {
        (
            "        volumeMounts: [{name: cfg, mountPath: /etc/cfg}]\n".to_string(),
            format!("      volumes:\n      - name: cfg\n        configMap: {{name: {c}}}\n"),
        )
    });
    format!(
        "apiVersion: gpupool.io/v1alpha1\nkind: TrainingJob\nmetadata: {{name: {name}, namespace: team-a}}\n\
spec:\n  workers: 1\n  gpusPerWorker: 1\n  template:\n    spec:\n      containers:\n      - name: main\n        image: busybox\n{env}{mounts}{volumes}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_may_reference_only_the_secrets_and_config_maps_its_author_can_read() -> Result<()> {
    let cp = ControlPlane::start("chart-refs")
        .await
        .context("control plane starts")?;
    let dir = tempfile::tempdir()?;
    let s = |v: &str| v.to_string();
    install_chart_crds(&cp, dir.path()).await?;
    let manifest = render(&[
        "--show-only",
        "templates/job-references-admission-policy.yaml",
    ]);
    ensure!(
        kinds(&docs(&manifest))
            == [
                "ValidatingAdmissionPolicy/gp-gpupool-job-references",
                "ValidatingAdmissionPolicyBinding/gp-gpupool-job-references"
            ],
        "{manifest}"
    );
    let f = write(dir.path(), "policy.yaml", &manifest);
    kubectl_ok(&cp, vec![s("apply"), s("--server-side"), s("-f"), f]).await?;
    let setup = r#"apiVersion: v1
kind: Namespace
metadata: {name: team-a}
---
apiVersion: v1
kind: Secret
metadata: {name: db, namespace: team-a}
stringData: {password: hunter2}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg, namespace: team-a}
data: {a: b}
---
# carol may submit jobs and nothing else; dave may also read the Secret and the ConfigMap.
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: submit-jobs, namespace: team-a}
rules:
- {apiGroups: [gpupool.io], resources: [trainingjobs, inferencejobs], verbs: [create, get, update, patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: read-db-config, namespace: team-a}
rules:
- {apiGroups: [""], resources: [secrets], resourceNames: [db], verbs: [get]}
- {apiGroups: [""], resources: [configmaps], resourceNames: [cfg], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: submit-jobs, namespace: team-a}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: submit-jobs}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: carol}
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: dave}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: read-db-config, namespace: team-a}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: read-db-config}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: dave}
"#;
    let f = write(dir.path(), "setup.yaml", setup);
    kubectl_ok(&cp, vec![s("apply"), s("-f"), f]).await?;

    let k = cp.kubectl();
    let create_as = |user: &str, file: &str, yaml: &str| {
        let f = write(dir.path(), file, yaml);
        k.run(&["--as", user, "create", "-f", &f]).unwrap()
    };
    // The policy's authorizer checks are live as soon as the binding is: retry while the API
    // server has not loaded it yet (a job accepted meanwhile is deleted and tried again).
    let mut refused = None;
    for attempt in 0..60 {
        let o = create_as(
            "carol",
            "leak.yaml",
            &job_referencing("leak", Some("db"), None),
        );
        if !o.success {
            refused = Some(o.stderr);
            break;
        }
        k.ok(&[
            "-n",
            "team-a",
            "delete",
            "trainingjob",
            "leak",
            "--wait=false",
        ])?;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        ensure!(
            attempt < 59,
            "carol's job referencing Secret db was accepted"
        );
    }
    let m = refused.unwrap_or_default();
    ensure!(
        m.contains("Secret db") && m.contains("carol") && m.contains("team-a"),
        "the refusal names the Secret, the user and the namespace: {m}"
    );
    let o = create_as(
        "carol",
        "cfg.yaml",
        &job_referencing("cfg", None, Some("cfg")),
    );
    ensure!(
        !o.success && o.stderr.contains("ConfigMap cfg"),
        "carol's job mounting ConfigMap cfg: {o:?}"
    );
    // What carol may do: a job that references nothing.
    let o = create_as("carol", "plain.yaml", &job_referencing("plain", None, None));
    ensure!(o.success, "carol's plain job: {}", o.stderr);
    // dave may read both, so his job may use both.
    let o = create_as(
        "dave",
        "both.yaml",
        &job_referencing("both", Some("db"), Some("cfg")),
    );
    ensure!(o.success, "dave's job: {}", o.stderr);
    // A template edit is checked too: carol may not add the Secret to her InferenceJob (whose
    // template may change: a rollout).
    let serve = |secret: &str| {
        format!(
            "apiVersion: gpupool.io/v1alpha1\nkind: InferenceJob\nmetadata: {{name: serve, namespace: team-a}}\n\
spec:\n  port: 8000\n  replicas: 1\n  gpusPerReplica: 1\n  template:\n    spec:\n      containers:\n      - name: main\n        image: busybox\n{secret}"
        )
    };
    let o = create_as("carol", "serve.yaml", &serve(""));
    ensure!(o.success, "carol's InferenceJob: {}", o.stderr);
    let f = write(
        dir.path(),
        "serve-edit.yaml",
        &serve("        envFrom: [{secretRef: {name: db}}]\n"),
    );
    let o = k.run(&[
        "--as",
        "carol",
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &f,
    ])?;
    ensure!(
        !o.success && o.stderr.contains("Secret db"),
        "carol's edit adding Secret db: {o:?}"
    );
    Ok(())
}
