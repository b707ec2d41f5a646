//! Client side of the gpupool ledger program.
//!
//! [`LedgerClient`] is the small surface the settler and the owner CLI need: latest blockhash,
//! send a transaction and wait for its confirmation, read an account. Two backends:
//! * [`rpc::RpcLedger`]: JSON-RPC to any Solana RPC endpoint;
//! * [`embedded::EmbeddedLedger`]: an in-process LiteSVM running the ledger program natively,
//!   for the local demo and tests.
//!
//! [`Ledger`] pairs a client with the oracle keypair that signs usage.

pub mod embedded;
pub mod rpc;
pub mod rpc_server;

pub use embedded::EmbeddedLedger;
pub use rpc::RpcLedger;

use anyhow::{Context, Result, bail};
use futures::future::BoxFuture;
use gpupool_ledger::error::LedgerError;
use gpupool_ledger::state::{
    self, ClusterAccount, PoolConfig, Reservation, TAG_CONFIG, TAG_RECEIPT, TAG_RESERVATION,
    TAG_TENANT, TenantAccount, UsageReceipt, spl,
};
pub use solana_hash::Hash;
pub use solana_keypair::Keypair;
pub use solana_program::pubkey::Pubkey;
pub use solana_signature::Signature;
pub use solana_signer::Signer;
pub use solana_transaction::Transaction;
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

/// An account as read from the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountData {
    /// Program that owns the account.
    pub owner: Pubkey,
    /// Lamports held.
    pub lamports: u64,
    /// Account data.
    pub data: Vec<u8>,
}

/// Why a transaction did not (provably) land.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// The cluster executed or simulated the transaction and rejected it: nothing changed.
    #[error("transaction rejected: {message}")]
    Rejected {
        /// The ledger program's error, when it was one of ours.
        ledger_error: Option<LedgerError>,
        /// The error as the backend reported it.
        message: String,
        /// Program logs, when available.
        logs: Vec<String>,
    },
    /// The transaction may or may not have landed (timeout, connection lost after sending).
    /// Resolve by reading the receipt accounts.
    #[error("transaction outcome unknown: {0}")]
    Unknown(String),
    /// The transaction was certainly not submitted (could not connect, could not encode).
    #[error("transaction not sent: {0}")]
    NotSent(String),
}

impl SendError {
    /// The ledger error this rejection carries.
    pub fn ledger_error(&self) -> Option<LedgerError> {
        match self {
            SendError::Rejected { ledger_error, .. } => *ledger_error,
            _ => None,
        }
    }
}

/// The operations gpupool needs from a Solana cluster.
pub trait LedgerClient: Send + Sync {
    /// A recent blockhash to sign transactions with.
    fn latest_blockhash(&self) -> BoxFuture<'_, Result<Hash>>;
    /// Sends a signed transaction and waits until it is confirmed (or rejected).
    fn send_and_confirm<'a>(
        &'a self,
        tx: &'a Transaction,
    ) -> BoxFuture<'a, Result<Signature, SendError>>;
    /// Reads an account; `None` if it does not exist.
    fn get_account<'a>(&'a self, key: &'a Pubkey) -> BoxFuture<'a, Result<Option<AccountData>>>;
    /// A short description (URL or "embedded") for messages.
    fn describe(&self) -> String;
}

impl<T: LedgerClient + ?Sized> LedgerClient for std::sync::Arc<T> {
    fn latest_blockhash(&self) -> BoxFuture<'_, Result<Hash>> {
        (**self).latest_blockhash()
    }
    fn send_and_confirm<'a>(
        &'a self,
        tx: &'a Transaction,
    ) -> BoxFuture<'a, Result<Signature, SendError>> {
        (**self).send_and_confirm(tx)
    }
    fn get_account<'a>(&'a self, key: &'a Pubkey) -> BoxFuture<'a, Result<Option<AccountData>>> {
        (**self).get_account(key)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// Reads the pool config; `None` when the pool is not initialized.
pub async fn read_config(
    client: &dyn LedgerClient,
    program_id: &Pubkey,
) -> Result<Option<PoolConfig>> {
    let key = Pubkey::find_program_address(&[state::CONFIG_SEED], program_id).0;
    decode(client, &key, program_id, PoolConfig::LEN, TAG_CONFIG).await
}

/// Cluster id of a member cluster whose `kube-system` namespace has UID `kube_system_uid`.
pub fn cluster_id(kube_system_uid: &str) -> [u8; 32] {
    state::cluster_id(kube_system_uid)
}

/// Cluster PDA of `cluster_id` under `program_id`.
pub fn cluster_address(program_id: &Pubkey, cluster_id: &[u8; 32]) -> Pubkey {
    Pubkey::find_program_address(&[state::CLUSTER_SEED, cluster_id], program_id).0
}

/// Receipt PDA of `(cluster id, job uid, period)` under `program_id`.
pub fn receipt_address(
    program_id: &Pubkey,
    cluster_id: &[u8; 32],
    job_uid: &[u8; 16],
    period: u64,
) -> Pubkey {
    let cluster = cluster_address(program_id, cluster_id);
    let usage = state::usage_id(cluster_id, job_uid, period);
    Pubkey::find_program_address(&[state::RECEIPT_SEED, cluster.as_ref(), &usage], program_id).0
}

/// Reads a registered cluster by id.
pub async fn read_cluster(
    client: &dyn LedgerClient,
    program_id: &Pubkey,
    cluster_id: &[u8; 32],
) -> Result<Option<ClusterAccount>> {
    let key = cluster_address(program_id, cluster_id);
    let Some(acc) = client.get_account(&key).await? else {
        return Ok(None);
    };
    if acc.owner != *program_id {
        bail!(
            "account {key} is owned by {}, not the ledger program {program_id}",
            acc.owner
        );
    }
    state::unpack_cluster(&acc.data)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("account {key} does not decode: {e}"))
}

/// Reads the usage receipt of `(cluster id, job uid, period)`.
pub async fn read_receipt(
    client: &dyn LedgerClient,
    program_id: &Pubkey,
    cluster_id: &[u8; 32],
    job_uid: &[u8; 16],
    period: u64,
) -> Result<Option<UsageReceipt>> {
    let key = receipt_address(program_id, cluster_id, job_uid, period);
    decode(client, &key, program_id, UsageReceipt::LEN, TAG_RECEIPT).await
}

/// Tenant id of a tenant (queue or namespace) named `name`.
pub fn tenant_id(name: &str) -> [u8; 32] {
    state::tenant_id(name)
}

/// Tenant PDA of `tenant_id` under `program_id`.
pub fn tenant_address(program_id: &Pubkey, tenant_id: &[u8; 32]) -> Pubkey {
    Pubkey::find_program_address(&[state::TENANT_SEED, tenant_id], program_id).0
}

/// Reads a tenant's escrow account (its wallet, reserved and lifetime totals).
pub async fn read_tenant(
    client: &dyn LedgerClient,
    program_id: &Pubkey,
    tenant_id: &[u8; 32],
) -> Result<Option<TenantAccount>> {
    let key = tenant_address(program_id, tenant_id);
    decode(client, &key, program_id, TenantAccount::LEN, TAG_TENANT).await
}

/// Reads the reservation of `job_uid` in a tenant's escrow.
pub async fn read_reservation(
    client: &dyn LedgerClient,
    program_id: &Pubkey,
    tenant_id: &[u8; 32],
    job_uid: &[u8; 16],
) -> Result<Option<Reservation>> {
    let tenant = tenant_address(program_id, tenant_id);
    let key = Pubkey::find_program_address(
        &[state::RESERVATION_SEED, tenant.as_ref(), job_uid],
        program_id,
    )
    .0;
    decode(client, &key, program_id, Reservation::LEN, TAG_RESERVATION).await
}

/// Token balance of a tenant's escrow (`None` when its token account does not exist).
pub async fn escrow_balance(
    client: &dyn LedgerClient,
    program_id: &Pubkey,
    tenant_id: &[u8; 32],
    mint: &Pubkey,
) -> Result<Option<u64>> {
    let tenant = tenant_address(program_id, tenant_id);
    token_balance(client, &state::escrow_address(&tenant, mint)).await
}

/// The chain's clock (unix seconds), from the Clock sysvar account; `None` if it cannot be
/// read. Layout (bincode): slot, epoch start timestamp, epoch, leader schedule epoch, unix
/// timestamp, each 8 bytes little-endian.
pub async fn chain_unix_time(client: &dyn LedgerClient) -> Result<Option<i64>> {
    let Some(acc) = client
        .get_account(&solana_program::sysvar::clock::ID)
        .await?
    else {
        return Ok(None);
    };
    Ok(acc
        .data
        .get(32..40)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(i64::from_le_bytes))
}

/// Token balance of an SPL token account (`None` when it does not exist).
pub async fn token_balance(
    client: &dyn LedgerClient,
    token_account: &Pubkey,
) -> Result<Option<u64>> {
    Ok(client
        .get_account(token_account)
        .await?
        .filter(|a| a.owner == gpupool_ledger::spl_token::ID)
        .and_then(|a| spl::unpack_token_account(&a.data))
        .map(|v| v.amount))
}

/// Decimals and supply of an SPL mint.
pub async fn read_mint(client: &dyn LedgerClient, mint: &Pubkey) -> Result<Option<spl::MintView>> {
    Ok(client
        .get_account(mint)
        .await?
        .filter(|a| a.owner == gpupool_ledger::spl_token::ID)
        .and_then(|a| spl::unpack_mint(&a.data)))
}

async fn decode<T: borsh::BorshDeserialize>(
    client: &dyn LedgerClient,
    key: &Pubkey,
    program_id: &Pubkey,
    len: usize,
    tag: u8,
) -> Result<Option<T>> {
    let Some(acc) = client.get_account(key).await? else {
        return Ok(None);
    };
    if acc.owner != *program_id {
        bail!(
            "account {key} is owned by {}, not the ledger program {program_id}",
            acc.owner
        );
    }
    state::unpack(&acc.data, len, tag)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("account {key} does not decode: {e}"))
}

/// Parses a base58 wallet address with a clear message.
pub fn parse_wallet(s: &str) -> Result<Pubkey> {
    Pubkey::from_str(s.trim()).map_err(|_| {
        anyhow::anyhow!("{s:?} is not a valid Solana wallet address (expected a base58 public key of 32-44 characters)")
    })
}

/// Loads a keypair from a JSON file of 64 numbers, as `solana-keygen new -o FILE` writes
/// (e.g. mounted from a Secret).
pub fn load_keypair(path: &Path) -> Result<Keypair> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading keypair file {}", path.display()))?;
    keypair_from_json(&text).with_context(|| format!("keypair file {}", path.display()))
}

/// Parses the `solana-keygen` JSON keypair format (`[12, 34, ...]`, 64 bytes).
pub fn keypair_from_json(text: &str) -> Result<Keypair> {
    let bytes: Vec<u8> =
        serde_json::from_str(text.trim()).context("expected a JSON array of 64 numbers 0-255")?;
    if bytes.len() != 64 {
        bail!("expected 64 bytes, found {}", bytes.len());
    }
    Keypair::try_from(bytes.as_slice()).map_err(|e| anyhow::anyhow!("invalid keypair: {e}"))
}

/// The `solana-keygen` JSON encoding of a keypair.
pub fn keypair_to_json(kp: &Keypair) -> String {
    serde_json::to_string(&kp.to_bytes().to_vec()).expect("a byte vector serializes")
}

/// A ledger client plus the keys the operator signs with.
pub struct Ledger {
    /// The chain, for sending and for reads at the sending commitment (`confirmed`).
    pub client: std::sync::Arc<dyn LedgerClient>,
    /// The chain at `finalized` commitment: a usage record is marked `Settled` only once its
    /// receipt reads back through this client (for the embedded chain, the same client).
    pub finalized: std::sync::Arc<dyn LedgerClient>,
    /// The pool's usage oracle; signs and pays for usage transactions.
    pub oracle: Keypair,
    /// Priority fee (micro-lamports per compute unit) sent with every usage batch.
    pub compute_unit_price: u64,
    /// The pool's registrar key, when this operator holds it (it co-signs `RegisterCluster`).
    pub registrar: Option<Keypair>,
    /// Owner keypairs the operator may sign `RegisterCluster` with (the owner must sign that
    /// instruction). Empty in production, where owners register their clusters themselves;
    /// the local demo hands the demo owners' keys here.
    pub owner_signers: HashMap<Pubkey, Keypair>,
    /// The pool admin key, when this operator holds it (demo only): then it gives each
    /// cluster it registers a GPU cap of the member's GPU count.
    pub admin: Option<Keypair>,
}

/// Default priority fee of usage batches, in micro-lamports per compute unit.
pub const DEFAULT_COMPUTE_UNIT_PRICE: u64 = 1_000;

impl Ledger {
    /// A ledger with the given oracle and no other keys; `client` also serves finalized reads.
    pub fn new(client: std::sync::Arc<dyn LedgerClient>, oracle: Keypair) -> Self {
        Ledger {
            finalized: client.clone(),
            client,
            oracle,
            compute_unit_price: DEFAULT_COMPUTE_UNIT_PRICE,
            registrar: None,
            owner_signers: HashMap::new(),
            admin: None,
        }
    }

    /// A ledger over JSON-RPC at `url`: sends and confirms at `confirmed`, and reads receipts
    /// at `finalized` before marking records settled.
    pub fn rpc(url: &str, oracle: Keypair) -> Result<Self> {
        let client = std::sync::Arc::new(RpcLedger::new(url)?);
        let mut finalized = RpcLedger::new(url)?;
        finalized.commitment = solana_commitment_config::CommitmentConfig::finalized();
        let mut me = Ledger::new(client, oracle);
        me.finalized = std::sync::Arc::new(finalized);
        Ok(me)
    }

    /// Reads finalized state through `finalized` instead of the sending client.
    pub fn with_finalized_reader(mut self, finalized: std::sync::Arc<dyn LedgerClient>) -> Self {
        self.finalized = finalized;
        self
    }

    /// Lets the operator register clusters owned by `owner` (demo / tests).
    pub fn with_owner_signer(mut self, owner: Keypair) -> Self {
        self.owner_signers.insert(owner.pubkey(), owner);
        self
    }

    /// Lets the operator co-sign registrations.
    pub fn with_registrar(mut self, registrar: Keypair) -> Self {
        self.registrar = Some(registrar);
        self
    }

    /// Lets the operator set GPU caps of the clusters it registers (demo / tests).
    pub fn with_admin(mut self, admin: Keypair) -> Self {
        self.admin = Some(admin);
        self
    }

    /// Signs `instructions` with the oracle as fee payer (plus `extra` signers) and sends them.
    pub async fn send(
        &self,
        instructions: &[solana_program::instruction::Instruction],
        extra: &[&Keypair],
    ) -> Result<Signature, SendError> {
        let blockhash = self
            .client
            .latest_blockhash()
            .await
            .map_err(|e| SendError::NotSent(format!("{e:#}")))?;
        let mut signers: Vec<&Keypair> = vec![&self.oracle];
        for k in extra {
            if !signers.iter().any(|s| s.pubkey() == k.pubkey()) {
                signers.push(k);
            }
        }
        let message = solana_message::Message::new(instructions, Some(&self.oracle.pubkey()));
        let tx = Transaction::new(&signers, message, blockhash);
        self.client.send_and_confirm(&tx).await
    }

    /// The instructions of one usage batch: `SetComputeUnitLimit`, `SetComputeUnitPrice`,
    /// then `RecordUsageBatch` (the oracle signs and pays).
    pub fn usage_batch_instructions(
        &self,
        mint: &Pubkey,
        cluster_id: &[u8; 32],
        owner: &Pubkey,
        entries: &[gpupool_ledger::instruction::UsageEntry],
    ) -> Vec<solana_program::instruction::Instruction> {
        use gpupool_ledger::instruction as ix;
        let oracle = self.oracle.pubkey();
        vec![
            ix::raw::set_compute_unit_limit(ix::record_usage_compute_units(entries.len())),
            ix::raw::set_compute_unit_price(self.compute_unit_price),
            ix::record_usage_batch(&oracle, &oracle, mint, cluster_id, owner, entries),
        ]
    }
}

/// Escrow instructions the hub sends as the oracle (which signs and pays rent).
impl Ledger {
    /// `Reserve`: holds `amount` of tenant `tenant_id`'s escrow for job `job_uid`.
    pub fn reserve_instruction(
        &self,
        mint: &Pubkey,
        tenant_id: &[u8; 32],
        job_uid: &[u8; 16],
        amount: u64,
    ) -> solana_program::instruction::Instruction {
        let oracle = self.oracle.pubkey();
        gpupool_ledger::instruction::reserve(&oracle, &oracle, mint, tenant_id, job_uid, amount)
    }

    /// `Release`: returns what is left of job `job_uid`'s reservation to the tenant.
    pub fn release_instruction(
        &self,
        tenant_id: &[u8; 32],
        job_uid: &[u8; 16],
    ) -> solana_program::instruction::Instruction {
        let oracle = self.oracle.pubkey();
        gpupool_ledger::instruction::release(&oracle, tenant_id, job_uid, &oracle)
    }

    /// The instructions of one escrow-funded usage batch: `SetComputeUnitLimit`,
    /// `SetComputeUnitPrice`, then `SettleUsage` paid by `tenant_id` (fee to `treasury`, the
    /// pool config's treasury).
    pub fn escrow_batch_instructions(
        &self,
        mint: &Pubkey,
        cluster_id: &[u8; 32],
        owner: &Pubkey,
        tenant_id: &[u8; 32],
        treasury: &Pubkey,
        entries: &[gpupool_ledger::instruction::UsageEntry],
    ) -> Vec<solana_program::instruction::Instruction> {
        use gpupool_ledger::instruction as ix;
        let oracle = self.oracle.pubkey();
        let payer = ix::Payer {
            tenant_id,
            treasury,
        };
        // Per entry a reservation is read and written, and the escrow CPIs add a transfer
        // and a burn: budget each entry twice.
        let units = ix::record_usage_compute_units(entries.len().saturating_mul(2));
        vec![
            ix::raw::set_compute_unit_limit(units),
            ix::raw::set_compute_unit_price(self.compute_unit_price),
            ix::settle_usage(&oracle, &oracle, mint, cluster_id, owner, payer, entries),
        ]
    }
}

/// Maps a JSON `TransactionError` (as Solana RPC reports it, e.g.
/// `{"InstructionError":[0,{"Custom":19}]}`) to the ledger error it carries.
pub fn ledger_error_from_json(err: &serde_json::Value) -> Option<LedgerError> {
    let code = err
        .get("InstructionError")?
        .get(1)?
        .get("Custom")?
        .as_u64()?;
    LedgerError::from_code(u32::try_from(code).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keypair_json_round_trip_and_errors() {
        let kp = Keypair::new();
        let back = keypair_from_json(&keypair_to_json(&kp)).unwrap();
        assert_eq!(back.pubkey(), kp.pubkey());
        assert!(
            keypair_from_json("[1,2,3]")
                .unwrap_err()
                .to_string()
                .contains("64 bytes")
        );
        assert!(keypair_from_json("not json").is_err());
    }

    #[test]
    fn wallets_and_rpc_errors_parse() {
        let k = Pubkey::new_unique();
        assert_eq!(parse_wallet(&k.to_string()).unwrap(), k);
        let e = parse_wallet("0OIl-not-base58").unwrap_err().to_string();
        assert!(e.contains("not a valid Solana wallet address"), "{e}");
        let code = LedgerError::ReceiptAlreadyExists.code();
        let err = serde_json::json!({"InstructionError": [2, {"Custom": code}]});
        assert_eq!(
            ledger_error_from_json(&err),
            Some(LedgerError::ReceiptAlreadyExists)
        );
        // SPL Token's `Overflow` (14) returned through the ledger's CPI is not a ledger error.
        let err = serde_json::json!({"InstructionError": [2, {"Custom": 14}]});
        assert_eq!(ledger_error_from_json(&err), None);
        assert_eq!(
            ledger_error_from_json(&serde_json::json!("AccountNotFound")),
            None
        );
    }

    #[test]
    fn pda_helpers_match_the_program() {
        let uid = [7u8; 16];
        let id = cluster_id("3c1f6d0e-1111-4222-8333-944455566677");
        let cluster = state::find_cluster_address(&id).0;
        assert_eq!(cluster_address(&gpupool_ledger::ID, &id), cluster);
        let usage = state::usage_id(&id, &uid, 42);
        assert_eq!(
            receipt_address(&gpupool_ledger::ID, &id, &uid, 42),
            state::find_receipt_address(&cluster, &usage).0
        );
    }

    #[test]
    fn escrow_builders_name_the_tenant_accounts() {
        let ledger = Ledger::new(std::sync::Arc::new(EmbeddedLedger::new()), Keypair::new());
        let mint = Pubkey::new_unique();
        let treasury = Pubkey::new_unique();
        let tenant = tenant_id("team-a");
        let pda = tenant_address(&gpupool_ledger::ID, &tenant);
        assert_eq!(pda, state::find_tenant_address(&tenant).0);
        let reserve = ledger.reserve_instruction(&mint, &tenant, &[3; 16], 10);
        assert_eq!(reserve.accounts[3].pubkey, pda);
        assert_eq!(
            reserve.accounts[5].pubkey,
            state::find_reservation_address(&pda, &[3; 16]).0
        );
        let release = ledger.release_instruction(&tenant, &[3; 16]);
        assert_eq!(release.accounts[3].pubkey, reserve.accounts[5].pubkey);
        let entry = gpupool_ledger::instruction::UsageEntry {
            job_uid: [3; 16],
            period: 1,
            gpu_seconds: 2,
            gpu_class: 0,
        };
        let ixs =
            ledger.escrow_batch_instructions(&mint, &[1; 32], &mint, &tenant, &treasury, &[entry]);
        assert_eq!(ixs.len(), 3);
        let settle = &ixs[2];
        assert_eq!(settle.accounts[9].pubkey, pda);
        assert_eq!(
            settle.accounts[10].pubkey,
            state::escrow_address(&pda, &mint)
        );
        assert_eq!(settle.accounts[11].pubkey, treasury);
        assert_eq!(settle.accounts[13].pubkey, reserve.accounts[5].pubkey);
    }

    #[test]
    fn usage_batches_carry_the_compute_budget() {
        let ledger = Ledger::new(std::sync::Arc::new(EmbeddedLedger::new()), Keypair::new());
        let ixs = ledger.usage_batch_instructions(
            &Pubkey::new_unique(),
            &[1; 32],
            &Pubkey::new_unique(),
            &[gpupool_ledger::instruction::UsageEntry {
                job_uid: [2; 16],
                period: 3,
                gpu_seconds: 4,
                gpu_class: 0,
            }],
        );
        assert_eq!(ixs.len(), 3);
        assert_eq!(ixs[0].program_id, gpupool_ledger::compute_budget::ID);
        assert_eq!(ixs[0].data[0], 2);
        assert_eq!(ixs[1].program_id, gpupool_ledger::compute_budget::ID);
        assert_eq!(ixs[1].data, {
            let mut d = vec![3u8];
            d.extend_from_slice(&DEFAULT_COMPUTE_UNIT_PRICE.to_le_bytes());
            d
        });
        assert_eq!(ixs[2].program_id, gpupool_ledger::ID);
    }
}
