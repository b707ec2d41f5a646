//! A Solana JSON-RPC endpoint over the embedded ledger, for the local demo and tests: the
//! operator's production [`RpcLedger`](gpupool::ledger::RpcLedger) and `gpupool earnings --rpc-url` talk to it
//! exactly as they talk to a real cluster. It answers the four methods gpupool uses
//! (`getLatestBlockhash`, `sendTransaction` with base64 wire transactions and preflight,
//! `getSignatureStatuses`, `getAccountInfo` with base64 data, plus `getHealth` and `getBalance`)
//! in the shapes Solana's RPC uses. HTTP is axum's (keep-alive, pipelining, bodies in any number
//! of segments); only the JSON-RPC dispatch is ours.

use super::EmbeddedLedger;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use solana_program::pubkey::Pubkey;
use solana_signature::Signature;
use solana_transaction::Transaction;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running endpoint; stops when dropped.
pub struct RpcServer {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    task: JoinHandle<()>,
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct State {
    ledger: Arc<EmbeddedLedger>,
    /// Outcome of every transaction sent: slot and error (JSON) if it failed.
    statuses: Mutex<HashMap<Signature, (u64, Value)>>,
}

/// Serves the embedded ledger on `127.0.0.1` at a free port.
pub async fn serve(ledger: Arc<EmbeddedLedger>) -> anyhow::Result<RpcServer> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let state = Arc::new(State {
        ledger,
        statuses: Mutex::default(),
    });
    let app = axum::Router::new()
        .route("/", axum::routing::post(rpc))
        .with_state(state);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "embedded Solana RPC endpoint stopped");
        }
    });
    Ok(RpcServer { url, task })
}

/// One JSON-RPC request per HTTP POST. The body is parsed here, not by an extractor, so that
/// malformed JSON gets JSON-RPC's parse error (-32700) like a Solana node answers it.
async fn rpc(
    axum::extract::State(st): axum::extract::State<Arc<State>>,
    body: axum::body::Bytes,
) -> axum::Json<Value> {
    axum::Json(match serde_json::from_slice::<Value>(&body) {
        Ok(req) => handle(&st, &req).await,
        Err(e) => {
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": format!("parse error: {e}")}})
        }
    })
}

fn slot(st: &State) -> u64 {
    st.ledger
        .with_svm(|s| s.get_sysvar::<solana_program::clock::Clock>().slot)
}

/// A JSON-RPC error: code, message, data.
type RpcError = (i64, String, Value);

async fn handle(st: &State, req: &Value) -> Value {
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let params = req.get("params").cloned().unwrap_or(json!([]));
    let result = match req.get("method").and_then(|m| m.as_str()).unwrap_or("") {
        "getLatestBlockhash" => Ok(latest_blockhash(st)),
        "sendTransaction" => send(st, &params),
        "getSignatureStatuses" => Ok(signature_statuses(st, &params)),
        "getAccountInfo" => pubkey_param(&params).map(|key| account_info(st, &key)),
        "getBalance" => pubkey_param(&params).map(|key| balance(st, &key)),
        "getHealth" => Ok(json!("ok")),
        m => Err((-32601, format!("method not found: {m}"), Value::Null)),
    };
    match result {
        Ok(r) => json!({"jsonrpc": "2.0", "id": id, "result": r}),
        Err((code, message, data)) => {
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message, "data": data}})
        }
    }
}

/// The first parameter as a base58 public key.
fn pubkey_param(params: &Value) -> Result<Pubkey, RpcError> {
    params
        .get(0)
        .and_then(|v| v.as_str())
        .and_then(|k| k.parse::<Pubkey>().ok())
        .ok_or((
            -32602,
            "invalid params: expected a base58 public key".to_string(),
            Value::Null,
        ))
}

/// `getLatestBlockhash`: a fresh blockhash per call, so a resent identical batch is a new
/// transaction.
fn latest_blockhash(st: &State) -> Value {
    let h = st.ledger.with_svm(|s| {
        s.expire_blockhash();
        s.latest_blockhash()
    });
    json!({"context": {"slot": slot(st)}, "value": {"blockhash": h.to_string(), "lastValidBlockHeight": slot(st) + 150}})
}

/// `getSignatureStatuses`: the outcome of each transaction sent here (null when unknown).
fn signature_statuses(st: &State, params: &Value) -> Value {
    let sigs = params
        .get(0)
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();
    let map = st.statuses.lock().expect("status map");
    let value: Vec<Value> = sigs
        .iter()
        .map(|s| {
            s.as_str()
                .and_then(|s| s.parse::<Signature>().ok())
                .and_then(|sig| map.get(&sig))
                .map(|(slot, err)| {
                    // `status` is the legacy Result form clients still require.
                    let status = if err.is_null() { json!({"Ok": null}) } else { json!({"Err": err}) };
                    json!({"slot": slot, "confirmations": null, "err": err, "status": status, "confirmationStatus": "finalized"})
                })
                .unwrap_or(Value::Null)
        })
        .collect();
    json!({"context": {"slot": slot(st)}, "value": value})
}

/// `getAccountInfo` with base64 data (null when the account does not exist).
fn account_info(st: &State, key: &Pubkey) -> Value {
    let acc = st.ledger.with_svm(|s| s.get_account(key));
    let value = acc.map(|a| {
        json!({
            "data": [B64.encode(&a.data), "base64"],
            "executable": a.executable,
            "lamports": a.lamports,
            "owner": a.owner.to_string(),
            "rentEpoch": a.rent_epoch,
            "space": a.data.len(),
        })
    });
    json!({"context": {"slot": slot(st)}, "value": value})
}

/// `getBalance`: lamports (0 when the account does not exist).
fn balance(st: &State, key: &Pubkey) -> Value {
    let lamports = st
        .ledger
        .with_svm(|s| s.get_account(key))
        .map(|a| a.lamports)
        .unwrap_or(0);
    json!({"context": {"slot": slot(st)}, "value": lamports})
}

/// `sendTransaction`: decode, execute (the preflight and the execution are the same step here),
/// remember the outcome for `getSignatureStatuses`.
fn send(st: &State, params: &Value) -> Result<Value, RpcError> {
    let wire = params
        .get(0)
        .and_then(|v| v.as_str())
        .and_then(|s| B64.decode(s).ok())
        .ok_or((
            -32602,
            "invalid params: expected a base64 transaction".to_string(),
            Value::Null,
        ))?;
    let tx: Transaction = wincode::deserialize(&wire)
        .map_err(|e| (-32602, format!("invalid transaction: {e}"), Value::Null))?;
    let sig = tx.signatures.first().copied().unwrap_or_default();
    // Keep only what the answer needs (the failure metadata is large).
    let outcome = st.ledger.with_svm(|s| {
        s.send_transaction(tx).map(|_| ()).map_err(|failed| {
            let err = serde_json::to_value(&failed.err)
                .unwrap_or_else(|_| json!(format!("{:?}", failed.err)));
            (
                format!("Transaction simulation failed: {:?}", failed.err),
                err,
                failed.meta.logs,
            )
        })
    });
    let slot = slot(st);
    match outcome {
        Ok(()) => {
            st.statuses
                .lock()
                .expect("status map")
                .insert(sig, (slot, Value::Null));
            Ok(json!(sig.to_string()))
        }
        Err((message, err, logs)) => Err((-32002, message, json!({"err": err, "logs": logs}))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpupool::ledger::{self, Keypair, Ledger, LedgerClient, RpcLedger, SendError, Signer};
    use gpupool_ledger::instruction::{self as lix, raw};
    use gpupool_ledger::state;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn chain() -> (Arc<EmbeddedLedger>, gpupool_ledger_svm::Pool, RpcServer) {
        let (chain, pool) = EmbeddedLedger::with_pool(crate::chain::DEMO_RATES, 0, 3600).unwrap();
        let chain = Arc::new(chain);
        let server = serve(chain.clone()).await.unwrap();
        (chain, pool, server)
    }

    #[tokio::test]
    async fn rpc_client_reads_sends_and_sees_rejections_over_the_endpoint() {
        let (chain, pool, server) = chain().await;
        let rpc = Arc::new(RpcLedger::new(&server.url).unwrap());
        let config = ledger::read_config(rpc.as_ref(), &gpupool_ledger::ID)
            .await
            .unwrap()
            .expect("the pool is on chain");
        assert_eq!(config.mint, pool.mint);
        assert_eq!(config.oracle, pool.oracle.pubkey());

        // A transfer lands, and its effect reads back through the same endpoint.
        let l = Ledger::new(rpc.clone(), pool.oracle.insecure_clone());
        let to = Keypair::new().pubkey();
        l.send(
            &[raw::system_transfer(&pool.oracle.pubkey(), &to, 1_000_000)],
            &[],
        )
        .await
        .unwrap();
        let acc = rpc.get_account(&to).await.unwrap().expect("account exists");
        assert_eq!(acc.lamports, 1_000_000);
        assert!(
            rpc.get_account(&Keypair::new().pubkey())
                .await
                .unwrap()
                .is_none()
        );

        // The program's refusal comes back as a rejection carrying the ledger error.
        let owner = Keypair::new();
        chain.fund(&owner.pubkey()).unwrap();
        let id = state::cluster_id("3f1c2a9e-member-east-kube-system");
        let register = lix::register_cluster(
            &pool.oracle.pubkey(),
            &owner.pubkey(),
            &pool.registrar.pubkey(),
            &id,
        );
        l.send(std::slice::from_ref(&register), &[&owner, &pool.registrar])
            .await
            .unwrap();
        match l.send(&[register], &[&owner, &pool.registrar]).await {
            Err(SendError::Rejected {
                message,
                ledger_error,
                logs,
            }) => {
                assert_eq!(
                    ledger_error,
                    Some(gpupool_ledger::error::LedgerError::ClusterAlreadyRegistered),
                    "{message}"
                );
                assert!(
                    logs.iter().any(|l| l.contains("RegisterCluster")),
                    "{logs:?}"
                );
            }
            other => panic!("a second registration must be rejected: {other:?}"),
        }
        // An unknown method is a JSON-RPC error, not a transport failure.
        let r = post(
            &server.url,
            br#"{"jsonrpc":"2.0","id":9,"method":"nope","params":[]}"#,
            1,
        )
        .await;
        assert_eq!(r[0]["error"]["code"], -32601, "{r:?}");
    }

    /// Writes `body` as HTTP/1.1 POSTs on one keep-alive connection, each request cut into
    /// `pieces` TCP segments with pauses between them, `count` times; returns the JSON answers.
    async fn post(url: &str, body: &[u8], count: usize) -> Vec<Value> {
        let addr = url.trim_start_matches("http://");
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        sock.set_nodelay(true).unwrap();
        let mut answers = Vec::new();
        let mut buf = Vec::new();
        for _ in 0..count {
            let mut req = format!(
                "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            req.extend_from_slice(body);
            for chunk in req.chunks(req.len().div_ceil(6)) {
                sock.write_all(chunk).await.unwrap();
                sock.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            // Read one response: head, then Content-Length bytes.
            let (head_end, len) = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                    assert!(head.starts_with("http/1.1 200"), "{head}");
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .expect("content-length")
                        .trim()
                        .parse()
                        .unwrap();
                    break (i + 4, len);
                }
                let mut chunk = [0u8; 4096];
                let n = sock.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed before the answer");
                buf.extend_from_slice(&chunk[..n]);
            };
            while buf.len() < head_end + len {
                let mut chunk = [0u8; 4096];
                let n = sock.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed in the body");
                buf.extend_from_slice(&chunk[..n]);
            }
            answers.push(serde_json::from_slice(&buf[head_end..head_end + len]).unwrap());
            buf.drain(..head_end + len);
        }
        answers
    }

    #[tokio::test]
    async fn requests_split_over_segments_are_answered_on_a_kept_alive_connection() {
        let (_chain, pool, server) = chain().await;
        let body = json!({
            "jsonrpc": "2.0", "id": 7, "method": "getBalance",
            "params": [pool.oracle.pubkey().to_string()]
        });
        let answers = post(&server.url, &serde_json::to_vec(&body).unwrap(), 3).await;
        assert_eq!(answers.len(), 3);
        for a in &answers {
            assert_eq!(a["id"], 7, "{a}");
            assert!(a["result"]["value"].as_u64().unwrap() > 0, "{a}");
        }
        let a = post(
            &server.url,
            br#"{"jsonrpc":"2.0","id":1,"method":"getHea"#,
            1,
        )
        .await;
        assert_eq!(a[0]["error"]["code"], -32700, "{a:?}");
    }
}
