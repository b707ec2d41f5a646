//! Real Kubernetes control planes for gpupool's integration tests and local demo.
//!
//! Each [`ControlPlane`] is its own etcd and kube-apiserver on free loopback ports, with fresh
//! certificates and a kubeconfig in a temporary directory; a [`Kwok`] instance fakes GPU nodes and
//! pod lifecycles in a member. [`Federation`] starts a hub and N members in parallel. Everything is
//! stopped and removed on drop. The upstream binaries are built once from `e2e/tools/go.mod` by
//! `e2e/harness/build-tools.sh` into a cache outside the repository. [`chain`] is the embedded
//! Solana chain (LiteSVM with the ledger program, and a JSON-RPC endpoint over it) the demo and
//! the metering tests settle on; it lives here so the operator binary does not link it.

pub mod chain;
mod control_plane;
mod federation;
pub mod http;
mod kubectl;
mod kwok;
pub mod model_server;
mod pool;
pub mod scale;
pub mod soak;
mod tools;
mod topology;
mod volumes;

pub use control_plane::ControlPlane;
pub use federation::{Federation, Member, MemberKind, install_device_class, nvidia_device_class};
pub use kubectl::Kubectl;
pub use kwok::{GpuNode, Kwok};
pub use pool::{
    OPERATOR_NAMESPACE, Operator, api_requests, eventually, ready_with_gpus, record_state,
    register_member, register_member_with, usage_records, wait_member_ready, wait_running_on,
    wait_training_phase,
};
pub use tools::Tools;
pub use topology::{allocated_uuids, fixture_for_node, node_uuid, publish_fixture};
pub use volumes::{example_claims, prebound_claim};

/// Root of the repository (for fixtures, examples and CRDs).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e crate lives one level below the repository root")
        .to_path_buf()
}

pub use kwok::{node_ready, wait_node_ready};

/// Applies every YAML in `crds/` with kubectl (as a platform team would) and waits until the API
/// server reports each CRD Established.
pub async fn install_crds(cp: &ControlPlane) -> anyhow::Result<()> {
    apply_crds(cp, &repo_root().join("crds")).await
}

/// Applies the CRDs in `path` (a file or a directory, e.g. a rendered chart) with kubectl and
/// waits until the API server reports each gpupool CRD Established.
pub async fn apply_crds(cp: &ControlPlane, path: &std::path::Path) -> anyhow::Result<()> {
    let kubectl = cp.kubectl();
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || kubectl.apply_crds(&path)).await?
}

/// Path of a binary of the operator crate (`gpupool`, `gpupool-agent`) in the target directory
/// this test binary runs from. `cargo test --workspace` builds it before any test runs (it is a
/// binary of a tested package); when it is missing or older than the operator's sources, as when
/// only this crate's tests are run, it is built with `cargo build -p gpupool-operator --bin`.
/// (`CARGO_BIN_EXE_*` only exists for a crate's own binaries.)
pub fn operator_bin(name: &str) -> std::path::PathBuf {
    // Test binaries run as <target>/<profile>/deps/<test>-<hash>.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test binary lives in <target>/<profile>/deps");
    let bin = dir.join(name);
    let built = bin.metadata().and_then(|m| m.modified()).ok();
    let fresh = built
        .is_some_and(|b| newest_mtime(&repo_root().join("operator")).is_none_or(|src| src <= b));
    if !fresh {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = std::process::Command::new(cargo)
            .args(["build", "-q", "-p", "gpupool-operator", "--bin", name])
            .current_dir(repo_root())
            .status()
            .expect("running cargo build");
        assert!(st.success(), "building {name} failed");
    }
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

fn newest_mtime(dir: &std::path::Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let t = if p.is_dir() {
            newest_mtime(&p)
        } else {
            e.metadata().ok().and_then(|m| m.modified().ok())
        };
        if let Some(t) = t {
            newest = newest.max(Some(t));
        }
    }
    newest
}

/// The Kubernetes version `helm template` renders the chart for: the release the harness builds
/// (a Helm built from source assumes v1.20 otherwise, below the chart's `kubeVersion`).
pub const HELM_KUBE_VERSION: &str = "v1.36.0";
