//! Running the `kubectl` CLI against a harness cluster, as users do.

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// `kubectl` bound to one cluster's kubeconfig.
#[derive(Clone, Debug)]
pub struct Kubectl {
    kubeconfig: PathBuf,
}

/// Result of one kubectl invocation.
#[derive(Debug)]
pub struct Output {
    /// Exit status was zero.
    pub success: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Kubectl {
    /// kubectl for the cluster described by `kubeconfig`.
    pub fn new(kubeconfig: PathBuf) -> Self {
        Kubectl { kubeconfig }
    }

    /// Runs `kubectl <args>`; `Err` only when kubectl could not be started.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        let program = match std::env::var_os("KUBECTL") {
            Some(k) => std::path::PathBuf::from(k),
            None => crate::Tools::get()?.kubectl,
        };
        let out = Command::new(program)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .context("starting kubectl")?;
        Ok(Output {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs `kubectl <args>` and fails unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let o = self.run(args)?;
        anyhow::ensure!(
            o.success,
            "kubectl {} failed: {}",
            args.join(" "),
            o.stderr.trim()
        );
        Ok(o.stdout)
    }

    /// Applies the CRDs in `path` (a file or a directory) server-side, as a platform team would,
    /// and waits until the API server reports every gpupool CRD Established.
    pub fn apply_crds(&self, path: &std::path::Path) -> Result<()> {
        let path = path.display().to_string();
        self.ok(&["apply", "--server-side", "-f", &path])?;
        self.ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "-l",
            "app.kubernetes.io/part-of=gpupool",
        ])?;
        Ok(())
    }

    /// Holder of the Lease `name` (in the kubeconfig's namespace); empty when it has none.
    pub fn lease_holder(&self, name: &str) -> Result<String> {
        self.ok(&[
            "get",
            "lease",
            name,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
    }

    /// Messages of the Events with `reason` about the object `name` in `namespace`,
    /// space-separated (empty when there are none).
    pub fn event_messages(&self, namespace: &str, name: &str, reason: &str) -> Result<String> {
        self.ok(&[
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            &format!("involvedObject.name={name},reason={reason}"),
            "-o",
            "jsonpath={.items[*].message}",
        ])
    }
}
