//! Clients for member clusters, built from kubeconfig text held in a Secret.

use std::time::Duration;

/// Builds a client from a kubeconfig document for ordinary calls: a call not answered within
/// `timeout` × 3 fails. Errors never include the credentials.
pub async fn client_from_kubeconfig(yaml: &str, timeout: Duration) -> Result<kube::Client, String> {
    build(yaml, timeout, Some(timeout * 3)).await
}

/// Builds a client for long-running watches (no read timeout: a watch is quiet while nothing
/// changes, and the server ends it after a few minutes itself).
pub async fn watch_client_from_kubeconfig(
    yaml: &str,
    timeout: Duration,
) -> Result<kube::Client, String> {
    build(yaml, timeout, None).await
}

async fn build(
    yaml: &str,
    timeout: Duration,
    read_timeout: Option<Duration>,
) -> Result<kube::Client, String> {
    let kc = kube::config::Kubeconfig::from_yaml(yaml)
        .map_err(|e| format!("kubeconfig does not parse: {}", redact(&e.to_string())))?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| format!("kubeconfig is not usable: {}", redact(&e.to_string())))?;
    cfg.connect_timeout = Some(timeout);
    cfg.read_timeout = read_timeout;
    cfg.write_timeout = Some(timeout * 3);
    super::errors::client_with_described_errors(cfg)
        .map_err(|e| format!("cannot build a client: {}", redact(&e.to_string())))
}

/// Cuts anything that looks like key material out of an error text.
fn redact(s: &str) -> String {
    s.split_whitespace()
        .map(|w| if w.len() > 64 { "<redacted>" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn bad_kubeconfig_gives_a_clear_error_without_secrets() {
        let secret =
            "c2VjcmV0LWtleS1tYXRlcmlhbC10aGF0LW11c3Qtbm90LWFwcGVhci1pbi1sb2dzLWV2ZXItZXZlci1ldmVy";
        let res = super::client_from_kubeconfig(
            &format!("users: [{{name: x, user: {{token: {secret}}}"),
            std::time::Duration::from_secs(1),
        )
        .await;
        let Err(err) = res else {
            panic!("a kubeconfig without clusters must be rejected")
        };
        assert!(err.contains("kubeconfig"), "{err}");
        assert!(!err.contains(secret), "{err}");
    }
}
