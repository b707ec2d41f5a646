//! [`LedgerClient`] over Solana JSON-RPC, on Anza's maintained `solana-rpc-client` (the agave
//! 4.2 family the rest of the workspace is pinned to). This module only maps its results onto
//! the ledger's notion of "landed", "rejected" and "unknown".

use super::{AccountData, Hash, LedgerClient, Pubkey, SendError, Signature, Transaction};
use anyhow::{Result, anyhow, bail};
use futures::future::BoxFuture;
use serde_json::Value;
use solana_commitment_config::CommitmentConfig;
use solana_rpc_client::api::client_error::{Error as ClientError, ErrorKind};
use solana_rpc_client::api::config::RpcSendTransactionConfig;
use solana_rpc_client::api::request::{RpcError, RpcResponseErrorData};
use solana_rpc_client::nonblocking::rpc_client::RpcClient;
use std::time::{Duration, Instant};

/// A transaction's status as far as settlement cares.
struct Status {
    /// The transaction's error (JSON as the RPC reports it, and as text) if it failed.
    err: Option<(Value, String)>,
    /// Reached the client's commitment.
    settled: bool,
}

/// JSON-RPC ledger client.
pub struct RpcLedger {
    url: String,
    client: RpcClient,
    /// Commitment for reads and confirmation (`confirmed` by default).
    pub commitment: CommitmentConfig,
    /// How long [`LedgerClient::send_and_confirm`] polls before the outcome counts as unknown.
    pub confirm_timeout: Duration,
}

impl RpcLedger {
    /// A client for `url` (`http://` or `https://`), with a 15 s timeout per request.
    pub fn new(url: &str) -> Result<Self> {
        let uri: axum::http::Uri = url
            .parse()
            .map_err(|e| anyhow!("{url:?} is not a valid RPC URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => bail!("RPC URL {url:?} must start with http:// or https://"),
        }
        let commitment = CommitmentConfig::confirmed();
        Ok(RpcLedger {
            url: url.to_string(),
            client: RpcClient::new_with_timeout_and_commitment(
                url.to_string(),
                Duration::from_secs(15),
                commitment,
            ),
            commitment,
            confirm_timeout: Duration::from_secs(60),
        })
    }

    /// The RPC URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn describe_error(&self, what: &str, e: &ClientError) -> anyhow::Error {
        anyhow!("{what} at Solana RPC {}: {e}", self.url)
    }

    /// The signature's status when the node knows it.
    async fn signature_status(&self, sig: &Signature) -> Result<Option<Status>> {
        let r = self
            .client
            .get_signature_statuses_with_history(&[*sig])
            .await
            .map_err(|e| self.describe_error("getSignatureStatuses", &e))?;
        Ok(r.value.into_iter().next().flatten().map(|s| Status {
            err: s.err.as_ref().map(|e| {
                (
                    serde_json::to_value(e).unwrap_or(Value::Null),
                    e.to_string(),
                )
            }),
            settled: s.satisfies_commitment(self.commitment),
        }))
    }

    /// `Some(result)` once a status is final enough (the configured commitment, or failed).
    fn status_to_result(sig: &Signature, s: &Status) -> Option<Result<Signature, SendError>> {
        if let Some((json, text)) = &s.err {
            return Some(Err(SendError::Rejected {
                ledger_error: super::ledger_error_from_json(json),
                message: text.clone(),
                logs: Vec::new(),
            }));
        }
        s.settled.then_some(Ok(*sig))
    }

    async fn send_inner(&self, tx: &Transaction) -> Result<Signature, SendError> {
        let sig = tx.signatures.first().copied().unwrap_or_default();
        let config = RpcSendTransactionConfig {
            preflight_commitment: Some(self.commitment.commitment),
            ..Default::default()
        };
        if let Err(e) = self.client.send_transaction_with_config(tx, config).await {
            match e.kind() {
                // Preflight simulated and rejected it: nothing changed on chain.
                ErrorKind::RpcError(RpcError::RpcResponseError {
                    message,
                    data: RpcResponseErrorData::SendTransactionPreflightFailure(sim),
                    ..
                }) if sim.err.is_some() => {
                    let err = serde_json::to_value(&sim.err).unwrap_or(Value::Null);
                    return Err(SendError::Rejected {
                        ledger_error: super::ledger_error_from_json(&err),
                        message: format!("{message} {err}"),
                        logs: sim.logs.clone().unwrap_or_default(),
                    });
                }
                // Refused before simulation (unhealthy node, bad encoding): not submitted.
                ErrorKind::RpcError(RpcError::RpcResponseError { .. }) => {
                    return Err(SendError::NotSent(format!(
                        "sendTransaction at {}: {e}",
                        self.url
                    )));
                }
                // The request may have reached the node: the outcome is unknown unless the
                // node already knows the signature.
                _ => {
                    let text = format!("sendTransaction at {}: {e}", self.url);
                    return match self.signature_status(&sig).await {
                        Ok(Some(s)) => Self::status_to_result(&sig, &s)
                            .unwrap_or(Err(SendError::Unknown(text))),
                        Ok(None) | Err(_) => Err(SendError::Unknown(text)),
                    };
                }
            }
        }
        let deadline = Instant::now() + self.confirm_timeout;
        let mut wait = Duration::from_millis(250);
        loop {
            if let Ok(Some(s)) = self.signature_status(&sig).await
                && let Some(done) = Self::status_to_result(&sig, &s)
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

impl LedgerClient for RpcLedger {
    fn latest_blockhash(&self) -> BoxFuture<'_, Result<Hash>> {
        Box::pin(async move {
            let (hash, _) = self
                .client
                .get_latest_blockhash_with_commitment(self.commitment)
                .await
                .map_err(|e| self.describe_error("getLatestBlockhash", &e))?;
            Ok(hash)
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
                .client
                .get_account_with_commitment(key, self.commitment)
                .await
                .map_err(|e| self.describe_error(&format!("getAccountInfo {key}"), &e))?;
            Ok(r.value.map(|a| AccountData {
                owner: a.owner,
                lamports: a.lamports,
                data: a.data,
            }))
        })
    }

    fn describe(&self) -> String {
        format!("Solana RPC {}", self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(RpcLedger::new("https://api.devnet.solana.com").is_ok());
        assert!(RpcLedger::new("http://127.0.0.1:8899").is_ok());
        let e = RpcLedger::new("ftp://x").err().unwrap().to_string();
        assert!(e.contains("must start with http:// or https://"), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_node_is_an_error_that_names_it() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let l = RpcLedger::new(&url).unwrap();
        let e = l.latest_blockhash().await.unwrap_err().to_string();
        assert!(e.contains(&url) && e.contains("getLatestBlockhash"), "{e}");
    }
}
