//! One Kubernetes control plane: etcd + kube-apiserver on loopback, certificates and kubeconfig in
//! a temporary directory; member clusters also run kube-scheduler and kube-controller-manager
//! ([`ControlPlane::start_scheduling`]).

use crate::{Kubectl, Tools};
use anyhow::{Context, Result, bail};
use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running etcd + kube-apiserver pair. Stopped and deleted on drop.
pub struct ControlPlane {
    name: String,
    dir: tempfile::TempDir,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    scheduler: Option<Child>,
    controller_manager: Option<Child>,
    api_port: u16,
    etcd_port: u16,
    tools: Tools,
}

const START_TIMEOUT: Duration = Duration::from_secs(120);

impl ControlPlane {
    /// Starts etcd and kube-apiserver and waits until the API server is ready.
    pub async fn start(name: &str) -> Result<Self> {
        let tools = Tools::get()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("gpupool-{name}-"))
            .tempdir()
            .context("creating the cluster's temporary directory")?;
        let d = dir.path().to_path_buf();
        let name2 = name.to_string();
        tokio::task::spawn_blocking(move || make_pki(&d, &name2)).await??;
        let mut cp = ControlPlane {
            name: name.to_string(),
            dir,
            etcd: None,
            apiserver: None,
            scheduler: None,
            controller_manager: None,
            api_port: 0,
            etcd_port: 0,
            tools,
        };
        // Ports are picked free and then bound by the child a moment later; another process can
        // take one in between. Such a start is retried on fresh ports (the data dir is new each
        // time); any other failure is returned at once.
        let mut attempt = 1;
        loop {
            cp.start_etcd()?;
            cp.start_apiserver_process()?;
            cp.write_kubeconfig()?;
            match cp.wait_ready().await {
                Ok(()) => return Ok(cp),
                Err(e) if attempt < 3 && format!("{e:#}").contains("address already in use") => {
                    tracing::warn!(
                        cluster = name,
                        attempt,
                        "a port was taken meanwhile; starting again on new ports"
                    );
                    cp.stop_apiserver();
                    if let Some(c) = cp.etcd.take() {
                        stop_child(c);
                    }
                    cp.api_port = 0;
                    let _ = std::fs::remove_dir_all(cp.dir.path().join("etcd"));
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Cluster name (used in logs and kubeconfig contexts).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The temporary directory holding this cluster's state and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of an admin kubeconfig for this cluster.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// The admin kubeconfig's text (e.g. to put into a member Secret on the hub).
    pub fn kubeconfig_yaml(&self) -> String {
        std::fs::read_to_string(self.kubeconfig_path()).expect("kubeconfig was written at start")
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    /// A kube client with admin rights.
    pub async fn client(&self) -> Result<kube::Client> {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig_path())?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(kube::Client::try_from(cfg)?)
    }

    /// Process ids of the running etcd, kube-apiserver, kube-scheduler and controller-manager.
    pub fn pids(&self) -> Vec<u32> {
        self.etcd
            .iter()
            .chain(self.apiserver.iter())
            .chain(self.scheduler.iter())
            .chain(self.controller_manager.iter())
            .map(|c| c.id())
            .collect()
    }

    /// Starts kube-scheduler and kube-controller-manager against this API server, as a member
    /// cluster has them. The scheduler binds pods that are not pre-bound and allocates their DRA
    /// ResourceClaims (`resource.k8s.io/v1` is GA and on by default since 1.34); the
    /// controller-manager runs only what pods and claims need here: the garbage collector
    /// (claims are owned by their pods) and the ResourceClaim controller (releases a deleted
    /// pod's reservation). The node lifecycle controller is left out: KWOK's leases are not
    /// meant to be judged by it.
    pub fn start_scheduling(&mut self) -> Result<()> {
        let kc = self.kubeconfig_path().display().to_string();
        if self.scheduler.is_none() {
            let child = spawn(
                Command::new(&self.tools.kube_scheduler)
                    .arg(format!("--kubeconfig={kc}"))
                    .arg(format!("--authentication-kubeconfig={kc}"))
                    .arg(format!("--authorization-kubeconfig={kc}"))
                    .arg("--leader-elect=false")
                    .arg("--secure-port=0")
                    .arg("--v=1"),
                self.log("kube-scheduler")?,
            )?;
            self.scheduler = Some(child);
        }
        self.start_controller_manager(&["garbage-collector-controller", "resourceclaim-controller"])
    }

    /// Starts kube-controller-manager against this API server with only `controllers` (e.g.
    /// `clusterrole-aggregation-controller` on a hub, to aggregate ClusterRoles for real). A
    /// no-op when it already runs.
    pub fn start_controller_manager(&mut self, controllers: &[&str]) -> Result<()> {
        if self.controller_manager.is_none() {
            let kc = self.kubeconfig_path().display().to_string();
            let child = spawn(
                Command::new(&self.tools.kube_controller_manager)
                    .arg(format!("--kubeconfig={kc}"))
                    .arg(format!("--authentication-kubeconfig={kc}"))
                    .arg(format!("--authorization-kubeconfig={kc}"))
                    .arg("--leader-elect=false")
                    .arg("--secure-port=0")
                    .arg(format!("--controllers={}", controllers.join(",")))
                    .arg("--concurrent-gc-syncs=5")
                    .arg("--v=1"),
                self.log("kube-controller-manager")?,
            )?;
            self.controller_manager = Some(child);
        }
        Ok(())
    }

    /// Whether kube-scheduler and kube-controller-manager are still running (they exit when
    /// their flags are wrong); the error carries their log tails.
    pub fn check_scheduling(&mut self) -> Result<()> {
        exited(
            &self.name,
            self.dir.path(),
            [
                ("kube-scheduler", &mut self.scheduler),
                ("kube-controller-manager", &mut self.controller_manager),
            ],
        )
    }

    /// kubectl bound to this cluster.
    pub fn kubectl(&self) -> Kubectl {
        Kubectl::new(self.kubeconfig_path())
    }

    /// Stops kube-scheduler (a member whose scheduler died: pods that are not pre-bound stay
    /// Pending without any `PodScheduled` condition).
    pub fn stop_scheduler(&mut self) {
        if let Some(c) = self.scheduler.take() {
            stop_child(c);
        }
    }

    /// Stops the API server (etcd keeps the data), simulating a member that stops answering.
    pub fn stop_apiserver(&mut self) {
        if let Some(c) = self.apiserver.take() {
            stop_child(c);
        }
    }

    /// Starts the API server again on the same port after [`stop_apiserver`](Self::stop_apiserver).
    pub async fn restart_apiserver(&mut self) -> Result<()> {
        if self.apiserver.is_none() {
            self.start_apiserver_process()?;
        }
        self.wait_ready().await
    }

    /// Process id of the running kube-apiserver (e.g. for a fault injector to kill it).
    pub fn apiserver_pid(&self) -> Option<u32> {
        self.apiserver.as_ref().map(|c| c.id())
    }

    /// Whether the kube-apiserver process has exited (killed from outside); it is reaped then,
    /// and [`restart_apiserver`](Self::restart_apiserver) starts it again on the same port.
    pub fn apiserver_exited(&mut self) -> bool {
        match self.apiserver.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => false,
            None => true,
            Some(_) => {
                self.apiserver = None;
                true
            }
        }
    }

    fn log(&self, what: &str) -> Result<File> {
        Ok(File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{what}.log")))?)
    }

    fn start_etcd(&mut self) -> Result<()> {
        let client = free_port()?;
        let peer = free_port()?;
        let data = self.dir.path().join("etcd");
        let child = spawn(
            Command::new(&self.tools.etcd)
                .arg("--name=default")
                .arg(format!("--data-dir={}", data.display()))
                .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
                .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
                ))
                .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
                .arg("--unsafe-no-fsync=true")
                .arg("--log-level=warn"),
            self.log("etcd")?,
        )?;
        self.etcd = Some(child);
        self.etcd_port = client;
        Ok(())
    }

    fn start_apiserver_process(&mut self) -> Result<()> {
        if self.api_port == 0 {
            self.api_port = free_port()?;
        }
        let d = self.dir.path();
        let p = |f: &str| d.join("pki").join(f).display().to_string();
        let child = spawn(
            Command::new(&self.tools.kube_apiserver)
                .arg(format!(
                    "--etcd-servers=http://127.0.0.1:{}",
                    self.etcd_port
                ))
                .arg(format!("--secure-port={}", self.api_port))
                .arg("--bind-address=127.0.0.1")
                .arg("--advertise-address=127.0.0.1")
                .arg(format!(
                    "--cert-dir={}",
                    d.join("apiserver-certs").display()
                ))
                .arg(format!("--tls-cert-file={}", p("server.crt")))
                .arg(format!("--tls-private-key-file={}", p("server.key")))
                .arg(format!("--client-ca-file={}", p("ca.crt")))
                .arg(format!("--service-account-key-file={}", p("sa.pub")))
                .arg(format!(
                    "--service-account-signing-key-file={}",
                    p("sa.key")
                ))
                .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
                .arg("--service-cluster-ip-range=10.96.0.0/16")
                .arg("--authorization-mode=RBAC")
                // No controller-manager runs here, so nothing creates the `default` ServiceAccount.
                .arg("--disable-admission-plugins=ServiceAccount")
                .arg("--enable-priority-and-fairness=false")
                .arg("--profiling=false")
                .arg("--v=0"),
            self.log("kube-apiserver")?,
        )?;
        self.apiserver = Some(child);
        Ok(())
    }

    fn write_kubeconfig(&self) -> Result<()> {
        let d = self.dir.path().join("pki");
        let b64 = |f: &str| -> Result<String> { Ok(base64(&std::fs::read(d.join(f))?)) };
        let kc = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {n}\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\nusers:\n- name: {n}-admin\n  user:\n    client-certificate-data: {crt}\n    client-key-data: {key}\ncontexts:\n- name: {n}\n  context:\n    cluster: {n}\n    user: {n}-admin\ncurrent-context: {n}\n",
            n = self.name,
            url = self.server_url(),
            ca = b64("ca.crt")?,
            crt = b64("admin.crt")?,
            key = b64("admin.key")?,
        );
        std::fs::write(self.kubeconfig_path(), kc)?;
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last_err = String::new();
        while Instant::now() < deadline {
            exited(
                &self.name,
                self.dir.path(),
                [
                    ("etcd", &mut self.etcd),
                    ("kube-apiserver", &mut self.apiserver),
                ],
            )?;
            match self.client().await {
                Ok(client) => {
                    let req = http_get("/readyz");
                    match client.request_text(req).await {
                        Ok(body) if body.trim() == "ok" => return Ok(()),
                        Ok(body) => last_err = body,
                        Err(e) => last_err = e.to_string(),
                    }
                }
                Err(e) => last_err = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!(
            "cluster {} not ready after {:?}: {last_err}; kube-apiserver log tail:\n{}",
            self.name,
            START_TIMEOUT,
            tail(&self.dir.path().join("kube-apiserver.log"), 30)
        )
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for c in [self.scheduler.take(), self.controller_manager.take()]
            .into_iter()
            .flatten()
        {
            stop_child(c);
        }
        if let Some(c) = self.apiserver.take() {
            stop_child(c);
        }
        if let Some(c) = self.etcd.take() {
            stop_child(c);
        }
    }
}

fn http_get(path: &str) -> http::Request<Vec<u8>> {
    http::Request::get(path)
        .body(Vec::new())
        .expect("static request is valid")
}

/// Spawns a child in its own process group with output to `log`.
pub(crate) fn spawn(cmd: &mut Command, log: File) -> Result<Child> {
    let err = log.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; the child dies with the process that started it.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))
}

/// SIGTERM, then SIGKILL after 5 s; always reaps.
pub(crate) fn stop_child(mut c: Child) {
    let pid = c.id() as i32;
    // SAFETY: signalling our own child's process group.
    unsafe {
        libc::kill(-pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    let _ = c.wait();
}

/// A port that was free a moment ago on 127.0.0.1.
pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Fails with the log tail of the first of `procs` (name, process; logs in `dir/<name>.log`) that
/// has exited.
fn exited<const N: usize>(
    cluster: &str,
    dir: &Path,
    procs: [(&str, &mut Option<Child>); N],
) -> Result<()> {
    for (what, child) in procs {
        if let Some(c) = child
            && let Some(status) = c.try_wait()?
        {
            bail!(
                "{what} of cluster {cluster} exited with {status}; log tail:\n{}",
                tail(&dir.join(format!("{what}.log")), 30)
            );
        }
    }
    Ok(())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// CA, serving cert, admin client cert (system:masters) and service-account key pair.
fn make_pki(dir: &Path, name: &str) -> Result<()> {
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki)?;
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&pki)
            .output()
            .context("running openssl")?;
        if !out.status.success() {
            bail!(
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt", "-days", "3", "-subj"]);
    let ca_subj = format!("/CN=gpupool-{name}-ca");
    ca.push(&ca_subj);
    run(&ca)?;
    std::fs::write(
        pki.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1\nextendedKeyUsage=serverAuth\n",
    )?;
    std::fs::write(pki.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
    for (base, subj, ext) in [
        ("server", "/CN=kube-apiserver".to_string(), "server.ext"),
        (
            "admin",
            "/O=system:masters/CN=gpupool-admin".to_string(),
            "client.ext",
        ),
    ] {
        let key = format!("{base}.key");
        let csr = format!("{base}.csr");
        let crt = format!("{base}.crt");
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        run(&req)?;
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "3",
            "-extfile",
            ext,
        ])?;
    }
    run(&["genrsa", "-out", "sa.key", "2048"])?;
    run(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
    }
}
