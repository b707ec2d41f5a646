//! Errors of requests to member API servers that say where and why: a refused or unreachable
//! member reads `API server https://10.0.0.7:6443: client error (Connect): tcp connect error:
//! Connection refused (os error 111)`, not `ServiceError: client error (Connect)`.

use std::error::Error as StdError;

/// Describes a transport error of a request to `server`: the address, then each distinct cause
/// in its source chain, down to the OS error.
pub fn describe_client_error(server: &str, err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        let text = e.to_string();
        // Many wrappers repeat their source's text; keep each piece once.
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = e.source();
    }
    format!("API server {server}: {}", parts.join(": "))
}

/// A transport error of a request to a member's API server, with its address.
#[derive(Debug)]
struct MemberTransportError {
    text: String,
    source: tower::BoxError,
}

impl std::fmt::Display for MemberTransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl StdError for MemberTransportError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.source.as_ref())
    }
}

/// A client for `config` whose transport errors are described by [`describe_client_error`] and
/// whose requests pass through `limit`.
pub fn client_with_described_errors(
    config: kube::Config,
    limit: super::client::RateLimit,
) -> Result<kube::Client, kube::Error> {
    let server = config.cluster_url.to_string();
    let server = server.trim_end_matches('/').to_string();
    let builder = kube::client::ClientBuilder::try_from(config)?;
    let layer = tower::util::MapErrLayer::new(move |e: tower::BoxError| -> tower::BoxError {
        Box::new(MemberTransportError {
            text: describe_client_error(&server, e.as_ref()),
            source: e,
        })
    });
    Ok(builder.with_layer(&layer).with_layer(&limit).build())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_closed_port_names_the_address_and_the_os_error() {
        // A port that was just free: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = format!("https://127.0.0.1:{port}");
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: m, cluster: {{server: '{server}', insecure-skip-tls-verify: true}}}}]\nusers: [{{name: u, user: {{token: abc}}}}]\ncontexts: [{{name: c, context: {{cluster: m, user: u}}}}]\ncurrent-context: c\n"
        );
        let client = crate::federation::client_from_kubeconfig(
            &kubeconfig,
            std::time::Duration::from_secs(2),
        )
        .await
        .unwrap();
        let err = client.apiserver_version().await.unwrap_err().to_string();
        println!("{err}");
        assert!(err.contains(&format!("API server {server}")), "{err}");
        assert!(err.contains("Connection refused (os error 111)"), "{err}");
    }
}
