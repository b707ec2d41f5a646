//! Locating (and on first use building) the pinned upstream binaries.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Paths of the upstream binaries the harness runs.
#[derive(Clone, Debug)]
pub struct Tools {
    /// etcd server.
    pub etcd: PathBuf,
    /// kube-apiserver.
    pub kube_apiserver: PathBuf,
    /// kube-scheduler (allocates DRA claims in the members).
    pub kube_scheduler: PathBuf,
    /// kube-controller-manager (garbage collector, ResourceClaim controller).
    pub kube_controller_manager: PathBuf,
    /// kubectl (same version as the API server).
    pub kubectl: PathBuf,
    /// KWOK controller.
    pub kwok: PathBuf,
    /// Helm CLI.
    pub helm: PathBuf,
}

static TOOLS: OnceLock<std::result::Result<Tools, String>> = OnceLock::new();

impl Tools {
    /// The tools, built on first use. `GPUPOOL_TOOLS_BIN` may point at a directory that already
    /// holds them; otherwise `e2e/harness/build-tools.sh` builds them into the cache (progress on
    /// stderr) or returns the cached directory at once.
    pub fn get() -> Result<Tools> {
        TOOLS
            .get_or_init(|| Self::locate().map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(|e| anyhow::anyhow!(e))
    }

    fn locate() -> Result<Tools> {
        let dir = match std::env::var_os("GPUPOOL_TOOLS_BIN") {
            Some(d) => PathBuf::from(d),
            None => {
                let script = crate::repo_root().join("e2e/harness/build-tools.sh");
                let out = Command::new("bash")
                    .arg(&script)
                    .stderr(Stdio::inherit())
                    .output()
                    .with_context(|| format!("running {}", script.display()))?;
                if !out.status.success() {
                    bail!(
                        "{} failed ({}); see its output above",
                        script.display(),
                        out.status
                    );
                }
                PathBuf::from(String::from_utf8(out.stdout)?.trim())
            }
        };
        let tool = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            if !is_executable(&p) {
                bail!(
                    "{} is missing; delete the cache entry and rebuild",
                    p.display()
                );
            }
            Ok(p)
        };
        Ok(Tools {
            etcd: tool("etcd")?,
            kube_apiserver: tool("kube-apiserver")?,
            kube_scheduler: tool("kube-scheduler")?,
            kube_controller_manager: tool("kube-controller-manager")?,
            kubectl: tool("kubectl")?,
            kwok: tool("kwok")?,
            helm: tool("helm")?,
        })
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
