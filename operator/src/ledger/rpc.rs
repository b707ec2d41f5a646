//! [`LedgerClient`] over Solana JSON-RPC (`getLatestBlockhash`, `sendTransaction`,
//! `getSignatureStatuses`, `getAccountInfo`), on hyper with rustls (the HTTP stack kube already
//! builds).

use super::{AccountData, Hash, LedgerClient, Pubkey, SendError, Signature, Transaction};
use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// JSON-RPC ledger client.
pub struct RpcLedger {
    url: String,
    uri: hyper::Uri,
    http: Client<Https, Full<Bytes>>,
    /// Commitment for reads and confirmation (`confirmed` by default).
    pub commitment: String,
    /// How long [`LedgerClient::send_and_confirm`] polls before the outcome counts as unknown.
    pub confirm_timeout: Duration,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
    next_id: AtomicU64,
}

impl RpcLedger {
    /// A client for `url` (`http://` or `https://`).
    pub fn new(url: &str) -> Result<Self> {
        let uri: hyper::Uri = url
            .parse()
            .with_context(|| format!("{url:?} is not a valid RPC URL"))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => bail!("RPC URL {url:?} must start with http:// or https://"),
        }
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let connector = match builder
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        {
            Ok(b) => b.https_or_http().enable_http1().build(),
            // No system CA roots: plain HTTP still works (local validators).
            Err(_) => hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(
                    rustls::ClientConfig::builder_with_provider(
                        rustls::crypto::ring::default_provider().into(),
                    )
                    .with_safe_default_protocol_versions()
                    .map_err(|e| anyhow!("TLS setup: {e}"))?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
                )
                .https_or_http()
                .enable_http1()
                .build(),
        };
        let http = Client::builder(TokioExecutor::new()).build(connector);
        Ok(RpcLedger {
            url: url.to_string(),
            uri,
            http,
            commitment: "confirmed".into(),
            confirm_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(15),
            next_id: AtomicU64::new(1),
        })
    }

    /// The RPC URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// One JSON-RPC call; returns `result` or the JSON-RPC `error` object as `Err(Ok(error))`.
    /// Transport failures are `Err(Err(..))`.
    async fn call_raw(&self, method: &str, params: Value) -> Result<Result<Value, Value>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let req = hyper::Request::post(self.uri.clone())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?;
        let fut = async {
            let resp = self.http.request(req).await?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.request_timeout, fut)
            .await
            .map_err(|_| {
                anyhow!(
                    "no answer from Solana RPC at {} within {:?}",
                    self.url,
                    self.request_timeout
                )
            })?
            .map_err(|e| anyhow!("cannot reach Solana RPC at {}: {e:#}", self.url))?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| {
            anyhow!(
                "Solana RPC at {} answered HTTP {status} with a non-JSON body: {}",
                self.url,
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            )
        })?;
        if let Some(err) = v.get("error") {
            return Ok(Err(err.clone()));
        }
        match v.get("result") {
            Some(r) => Ok(Ok(r.clone())),
            None => bail!(
                "Solana RPC at {} answered HTTP {status} without a result",
                self.url
            ),
        }
    }

    async fn call(&self, method: &str, params: Value) -> Result<Value> {
        match self.call_raw(method, params).await? {
            Ok(v) => Ok(v),
            Err(e) => bail!("{method} failed at {}: {}", self.url, e),
        }
    }

    async fn signature_status(&self, sig: &Signature) -> Result<Option<Value>> {
        let r = self
            .call(
                "getSignatureStatuses",
                json!([[sig.to_string()], {"searchTransactionHistory": true}]),
            )
            .await?;
        Ok(r.get("value")
            .and_then(|v| v.get(0))
            .filter(|s| !s.is_null())
            .cloned())
    }

    async fn send_inner(&self, tx: &Transaction) -> Result<Signature, SendError> {
        let sig = tx.signatures.first().copied().unwrap_or_default();
        let wire = wincode::serialize(tx)
            .map_err(|e| SendError::NotSent(format!("encoding the transaction: {e}")))?;
        let params = json!([B64.encode(wire), {"encoding": "base64", "preflightCommitment": self.commitment}]);
        match self.call_raw("sendTransaction", params).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let data = e.get("data");
                let err = data
                    .and_then(|d| d.get("err"))
                    .cloned()
                    .unwrap_or(Value::Null);
                let logs = data
                    .and_then(|d| d.get("logs"))
                    .and_then(|l| l.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                let message = format!(
                    "{} {}",
                    e.get("message").and_then(|m| m.as_str()).unwrap_or(""),
                    err
                );
                if err.is_null() {
                    // Refused before simulation (unhealthy node, bad encoding): not submitted.
                    return Err(SendError::NotSent(format!(
                        "sendTransaction at {}: {e}",
                        self.url
                    )));
                }
                // Preflight simulated and rejected it: nothing changed on chain.
                return Err(SendError::Rejected {
                    ledger_error: super::ledger_error_from_json(&err),
                    message,
                    logs,
                });
            }
            // The request may have reached the node: the outcome is unknown.
            Err(e) => {
                return match self.signature_status(&sig).await {
                    Ok(None) | Err(_) => Err(SendError::Unknown(format!("{e:#}"))),
                    Ok(Some(s)) => status_to_result(&sig, &s)
                        .unwrap_or(Err(SendError::Unknown(format!("{e:#}")))),
                };
            }
        }
        let deadline = Instant::now() + self.confirm_timeout;
        let mut wait = Duration::from_millis(250);
        loop {
            if let Ok(Some(s)) = self.signature_status(&sig).await
                && let Some(done) = status_to_result(&sig, &s)
            {
                return done;
            }
            if Instant::now() >= deadline {
                return Err(SendError::Unknown(format!(
                    "transaction {sig} not confirmed within {:?}",
                    self.confirm_timeout
                )));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }
}

/// `Some(result)` once a signature status is final enough (`confirmed`/`finalized`, or failed).
fn status_to_result(sig: &Signature, s: &Value) -> Option<Result<Signature, SendError>> {
    if let Some(err) = s.get("err").filter(|e| !e.is_null()) {
        return Some(Err(SendError::Rejected {
            ledger_error: super::ledger_error_from_json(err),
            message: err.to_string(),
            logs: Vec::new(),
        }));
    }
    match s.get("confirmationStatus").and_then(|c| c.as_str()) {
        Some("confirmed") | Some("finalized") => Some(Ok(*sig)),
        _ => None,
    }
}

impl LedgerClient for RpcLedger {
    fn latest_blockhash(&self) -> BoxFuture<'_, Result<Hash>> {
        Box::pin(async move {
            let r = self
                .call(
                    "getLatestBlockhash",
                    json!([{"commitment": self.commitment}]),
                )
                .await?;
            let s = r
                .pointer("/value/blockhash")
                .and_then(|b| b.as_str())
                .ok_or_else(|| anyhow!("getLatestBlockhash: no blockhash in {r}"))?;
            Hash::from_str(s).map_err(|e| anyhow!("getLatestBlockhash: bad blockhash {s:?}: {e}"))
        })
    }

    fn send_and_confirm<'a>(
        &'a self,
        tx: &'a Transaction,
    ) -> BoxFuture<'a, Result<Signature, SendError>> {
        Box::pin(self.send_inner(tx))
    }

    fn get_account<'a>(&'a self, key: &'a Pubkey) -> BoxFuture<'a, Result<Option<AccountData>>> {
        Box::pin(async move {
            let r = self
                .call(
                    "getAccountInfo",
                    json!([key.to_string(), {"encoding": "base64", "commitment": self.commitment}]),
                )
                .await?;
            let v = match r.get("value") {
                None | Some(Value::Null) => return Ok(None),
                Some(v) => v,
            };
            let data = v
                .pointer("/data/0")
                .and_then(|d| d.as_str())
                .ok_or_else(|| anyhow!("getAccountInfo {key}: no base64 data"))?;
            let owner = v
                .get("owner")
                .and_then(|o| o.as_str())
                .ok_or_else(|| anyhow!("getAccountInfo {key}: no owner"))?;
            Ok(Some(AccountData {
                owner: Pubkey::from_str(owner)
                    .map_err(|e| anyhow!("getAccountInfo {key}: owner {owner:?}: {e}"))?,
                lamports: v.get("lamports").and_then(|l| l.as_u64()).unwrap_or(0),
                data: B64
                    .decode(data)
                    .context("getAccountInfo: data is not base64")?,
            }))
        })
    }

    fn describe(&self) -> String {
        format!("Solana RPC {}", self.url)
    }
}
