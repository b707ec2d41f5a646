//! The container images, built here without a container engine (deploy/image/build.sh: a minimal
//! root filesystem from Debian packages, written as OCI layouts by umoci): their configuration
//! (non-root user, entrypoint, labels, one layer with what the binaries need), and the operator
//! image's binary started from the image with runc against a real API server, answering
//! `/healthz` and `/readyz` as the non-root user.

use anyhow::{Context, Result, bail, ensure};
use gpupool_e2e::{ControlPlane, operator_bin, repo_root};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// umoci, built by e2e/harness/build-release-tools.sh (cached).
fn release_tool(name: &str) -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("e2e/harness/build-release-tools.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("bash starts");
    assert!(out.status.success(), "build-release-tools.sh failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join(name)
}

/// A blob of an OCI layout, parsed as JSON.
fn blob(layout: &Path, digest: &str) -> Value {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let text = std::fs::read(layout.join("blobs/sha256").join(hex)).expect("blob exists");
    serde_json::from_slice(&text).expect("blob is JSON")
}

/// (manifest, config) of the only image in a layout.
fn image(layout: &Path) -> (Value, Value) {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    let manifest = blob(layout, manifests[0]["digest"].as_str().unwrap());
    let config = blob(layout, manifest["config"]["digest"].as_str().unwrap());
    (manifest, config)
}

fn build_images(out: &Path) -> String {
    let bin_dir = operator_bin("gpupool").parent().unwrap().to_path_buf();
    let _ = operator_bin("gpupool-agent");
    let res = Command::new("bash")
        .arg(repo_root().join("deploy/image/build.sh"))
        .args(["--bin-dir", bin_dir.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap()])
        .args(["--version", "0.0.0-test"])
        .env("UMOCI", release_tool("umoci"))
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .expect("build.sh starts");
    assert!(
        res.status.success(),
        "deploy/image/build.sh failed:\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
    String::from_utf8(res.stdout).unwrap()
}

/// The runtime bundle's config for the test run: `gpupool run` against `kubeconfig` (mounted
/// read-only), on the host's network (to reach the loopback API server and be probed), with a
/// read-only root filesystem as the chart runs it; without cgroup settings (the runtime runs
/// inside the test machine's own cgroup).
fn test_spec(spec: &mut Value, kubeconfig: &Path, port: u16) {
    let process = &mut spec["process"];
    let mut args: Vec<Value> = process["args"].as_array().unwrap().clone();
    args.push(json!(format!("--metrics-addr=127.0.0.1:{port}")));
    process["args"] = json!(args);
    process["terminal"] = json!(false);
    process["env"]
        .as_array_mut()
        .unwrap()
        .push(json!("KUBECONFIG=/etc/gpupool/kubeconfig"));
    spec["root"]["readonly"] = json!(true);
    spec["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/etc/gpupool/kubeconfig", "type": "bind",
        "source": kubeconfig, "options": ["bind", "ro"]
    }));
    let linux = spec["linux"].as_object_mut().unwrap();
    linux.remove("resources");
    linux.remove("cgroupsPath");
    let ns: Vec<Value> = linux["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["type"] != "network" && n["type"] != "cgroup")
        .cloned()
        .collect();
    linux.insert("namespaces".into(), json!(ns));
}

/// A container run by runc; killed and deleted on drop.
struct Container {
    runc: PathBuf,
    id: String,
    child: std::process::Child,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new(&self.runc)
            .args(["kill", &self.id, "KILL"])
            .output();
        let _ = self.child.wait();
        let _ = Command::new(&self.runc)
            .args(["delete", "-f", &self.id])
            .output();
    }
}

fn runc() -> Result<PathBuf> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("runc");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("runc is required to start the image (Debian: apt-get install runc)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_non_root_with_an_entrypoint_and_labels_and_the_operator_starts_from_its_image()
-> Result<()> {
    let runc = runc()?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("images");
    let printed = build_images(&out);

    // Configuration: the user, the entrypoint, the labels, one layer, this machine's platform.
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    for (name, entrypoint, cmd) in [
        ("gpupool-operator", "/usr/local/bin/gpupool", json!(["run"])),
        ("gpupool-agent", "/usr/local/bin/gpupool-agent", Value::Null),
    ] {
        let layout = out.join(name);
        let (manifest, config) = image(&layout);
        let c = &config["config"];
        ensure!(c["User"] == "65532:65532", "{name}: {config}");
        ensure!(c["Entrypoint"] == json!([entrypoint]), "{name}: {config}");
        ensure!(c["Cmd"] == cmd, "{name}: {config}");
        let labels = &c["Labels"];
        for (k, v) in [
            ("org.opencontainers.image.title", name),
            ("org.opencontainers.image.version", "0.0.0-test"),
            (
                "org.opencontainers.image.source",
                "https://github.com/gpupool/gpupool",
            ),
            ("org.opencontainers.image.created", "2023-11-14T22:13:20Z"),
        ] {
            ensure!(labels[k] == v, "{name}: label {k} = {v}: {labels}");
        }
        ensure!(
            labels["io.gpupool.debian-packages"]
                .as_str()
                .is_some_and(|p| p.contains("libc6=")),
            "{name}: {labels}"
        );
        ensure!(config["architecture"] == arch && config["os"] == "linux");
        ensure!(config["created"] == "2023-11-14T22:13:20Z", "{config}");
        ensure!(
            manifest["layers"].as_array().unwrap().len() == 1,
            "{manifest}"
        );
        ensure!(
            printed.contains(&format!("{name}:0.0.0-test sha256:")),
            "build.sh prints each image's digest: {printed}"
        );
    }
    let agent = image(&out.join("gpupool-agent")).1;
    let env = agent["config"]["Env"].to_string();
    ensure!(env.contains("NVIDIA_DRIVER_CAPABILITIES=utility"), "{env}");

    // The operator's image, unpacked into a runtime bundle and started with runc.
    let bundle = dir.path().join("bundle");
    let umoci = release_tool("umoci");
    let unpack = Command::new(&umoci)
        .args(["unpack", "--image"])
        .arg(format!(
            "{}:0.0.0-test",
            out.join("gpupool-operator").display()
        ))
        .arg(&bundle)
        .output()?;
    ensure!(
        unpack.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&unpack.stderr)
    );
    let rootfs = bundle.join("rootfs");
    for f in [
        "usr/local/bin/gpupool",
        "etc/ssl/certs/ca-certificates.crt",
        "etc/passwd",
    ] {
        ensure!(rootfs.join(f).is_file(), "{f} missing from the image");
    }
    ensure!(
        !rootfs.join("bin/sh").exists() && !rootfs.join("usr/bin/bash").exists(),
        "no shell in the operator image"
    );

    let hub = ControlPlane::start("image").await.context("hub starts")?;
    gpupool_e2e::install_crds(&hub).await?;
    let port = gpupool_e2e::http::free_port();
    let spec_path = bundle.join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&spec_path)?)?;
    ensure!(
        spec["process"]["user"]["uid"] == 65532,
        "the runtime spec runs as the image's user: {}",
        spec["process"]["user"]
    );
    test_spec(&mut spec, &hub.kubeconfig_path(), port);
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec)?)?;
    let id = format!("gpupool-image-test-{port}");
    let log = std::fs::File::create(dir.path().join("operator.log"))?;
    let child = Command::new(&runc)
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("runc starts")?;
    let container = Container {
        runc: runc.clone(),
        id: id.clone(),
        child,
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut healthz, mut readyz) = (None, None);
    while Instant::now() < deadline && !(healthz == Some(200) && readyz == Some(200)) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        healthz = gpupool_e2e::http::get(port, "/healthz").map(|r| r.0);
        readyz = gpupool_e2e::http::get(port, "/readyz").map(|r| r.0);
    }
    let logs = std::fs::read_to_string(dir.path().join("operator.log")).unwrap_or_default();
    ensure!(
        healthz == Some(200) && readyz == Some(200),
        "the operator started from its image must answer /healthz and /readyz (got {healthz:?}, {readyz:?}); its output:\n{logs}"
    );
    // The process in the container runs as the image's non-root user.
    let state = Command::new(&runc).args(["state", &id]).output()?;
    let state: Value = serde_json::from_slice(&state.stdout)
        .with_context(|| String::from_utf8_lossy(&state.stderr).into_owned())?;
    let pid = state["pid"].as_i64().context("runc state has the pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .context("Uid line")?;
    ensure!(
        uid.split_whitespace().nth(1) == Some("65532"),
        "container process: {uid}"
    );
    drop(container);
    Ok(())
}

#[test]
fn the_release_workflow_passes_actionlint_and_publishes_signed_multi_arch_artifacts() {
    let workflows = repo_root().join(".github/workflows");
    let out = Command::new(release_tool("actionlint"))
        .arg("-no-color")
        .arg(workflows.join("release.yml"))
        .current_dir(repo_root())
        .output()
        .expect("actionlint starts");
    assert!(
        out.status.success(),
        "actionlint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // What the release promises, step by step.
    let text = std::fs::read_to_string(workflows.join("release.yml")).unwrap();
    let wf: Value = serde_yaml::from_str(&text).unwrap();
    let arches: Vec<&str> = wf["jobs"]["images"]["strategy"]["matrix"]["include"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["arch"].as_str().unwrap())
        .collect();
    assert_eq!(arches, ["amd64", "arm64"]);
    let publish = wf["jobs"]["publish"].to_string();
    for want in [
        "deploy/image/build.sh",
        "crane index append",
        "cosign attest --yes --type spdxjson",
        "cosign sign --yes",
        "helm push",
        "oci://$REGISTRY/$OWNER/charts",
    ] {
        assert!(text.contains(want), "release.yml lacks {want:?}");
    }
    assert_eq!(
        wf["jobs"]["publish"]["permissions"]["id-token"], "write",
        "{publish}"
    );
    assert_eq!(wf["jobs"]["publish"]["permissions"]["packages"], "write");
    assert_eq!(wf["permissions"]["contents"], "read");
    // The command-line binaries, the plugin's completion among them, go to the release with
    // their checksums; only that job may write the repository's releases.
    let cli = wf["jobs"]["cli"].to_string();
    for want in [
        "kubectl_complete-gpupool",
        "gh release upload",
        "SHA256SUMS",
    ] {
        assert!(text.contains(want), "release.yml lacks {want:?}");
    }
    assert_eq!(
        wf["jobs"]["cli"]["permissions"]["contents"], "write",
        "{cli}"
    );
}
