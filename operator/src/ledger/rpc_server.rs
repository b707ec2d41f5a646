//! A Solana JSON-RPC endpoint over the embedded ledger, for the local demo and tests: the
//! operator's production [`RpcLedger`](super::RpcLedger) and `gpupool earnings --rpc-url` talk to it
//! exactly as they talk to a real cluster. It answers the four methods gpupool uses
//! (`getLatestBlockhash`, `sendTransaction` with base64 wire transactions and preflight,
//! `getSignatureStatuses`, `getAccountInfo` with base64 data) in the shapes Solana's RPC uses.

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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let st = state.clone();
            tokio::spawn(async move {
                let _ = connection(sock, st).await;
            });
        }
    });
    Ok(RpcServer { url, task })
}

/// HTTP/1.1 with keep-alive: one JSON-RPC request per HTTP request.
async fn connection(mut sock: tokio::net::TcpStream, st: Arc<State>) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 8192];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);
        let resp = match serde_json::from_slice::<Value>(&body) {
            Ok(req) => handle(&st, &req).await,
            Err(e) => {
                json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": format!("parse error: {e}")}})
            }
        };
        let out = serde_json::to_vec(&resp)?;
        let hdr = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            out.len()
        );
        sock.write_all(hdr.as_bytes()).await?;
        sock.write_all(&out).await?;
    }
}

fn slot(st: &State) -> u64 {
    st.ledger
        .with_svm(|s| s.get_sysvar::<solana_program::clock::Clock>().slot)
}

async fn handle(st: &State, req: &Value) -> Value {
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let params = req.get("params").cloned().unwrap_or(json!([]));
    let result = match req.get("method").and_then(|m| m.as_str()).unwrap_or("") {
        "getLatestBlockhash" => {
            let h = st.ledger.with_svm(|s| {
                s.expire_blockhash();
                s.latest_blockhash()
            });
            Ok(
                json!({"context": {"slot": slot(st)}, "value": {"blockhash": h.to_string(), "lastValidBlockHeight": slot(st) + 150}}),
            )
        }
        "sendTransaction" => send(st, &params),
        "getSignatureStatuses" => {
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
                        .map(|(slot, err)| json!({"slot": slot, "confirmations": null, "err": err, "confirmationStatus": "finalized"}))
                        .unwrap_or(Value::Null)
                })
                .collect();
            Ok(json!({"context": {"slot": slot(st)}, "value": value}))
        }
        "getAccountInfo" => match params
            .get(0)
            .and_then(|v| v.as_str())
            .and_then(|k| k.parse::<Pubkey>().ok())
        {
            None => Err((
                -32602,
                "invalid params: expected a base58 public key".to_string(),
                Value::Null,
            )),
            Some(key) => {
                let acc = st.ledger.with_svm(|s| s.get_account(&key));
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
                Ok(json!({"context": {"slot": slot(st)}, "value": value}))
            }
        },
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

/// `sendTransaction`: decode, execute (the preflight and the execution are the same step here),
/// remember the outcome for `getSignatureStatuses`.
fn send(st: &State, params: &Value) -> Result<Value, (i64, String, Value)> {
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
