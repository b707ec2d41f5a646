//! An in-process chain: LiteSVM with the ledger program as a native builtin and the real SPL
//! Token / Associated Token Account programs, behind a mutex. For the local demo and tests.
//!
//! Its clock follows the wall clock: before every transaction the chain's unix time is moved
//! forward to now (never back), so the program's "period has ended" check sees real time.
//!
//! It lives here, with the demo and the tests, so that the production operator binary links
//! neither LiteSVM nor the agave runtime; [`rpc_server`] serves it over Solana's JSON-RPC.

pub mod rpc_server;

use anyhow::{Result, anyhow};
use futures::future::BoxFuture;
use gpupool::ledger::{AccountData, Hash, LedgerClient, Pubkey, SendError, Signature, Transaction};
use gpupool_ledger::state::{self, ClusterAccount, NUM_GPU_CLASSES};
use gpupool_ledger_svm::{self as svm, Pool, PoolSetup, litesvm::LiteSVM};
use solana_keypair::Keypair;
use solana_signer::Signer;
use std::sync::Mutex;

/// Default demo rates: token base units per GPU-second, by GPU class (see
/// `metering::gpu_class`): 0 other 1, 1 H100/H200 10, 2 A100 6, 3 V100 3, 4 L40S 4,
/// 5 A10/L4 2, 6 T4 1, 7 RTX 1.
pub const DEMO_RATES: [u64; NUM_GPU_CLASSES] = [1, 10, 6, 3, 4, 2, 1, 1];

/// LiteSVM-backed [`LedgerClient`].
pub struct EmbeddedLedger {
    svm: Mutex<LiteSVM>,
}

impl Default for EmbeddedLedger {
    fn default() -> Self {
        Self::new()
    }
}

impl EmbeddedLedger {
    /// A fresh chain with the ledger program (no pool yet).
    pub fn new() -> Self {
        EmbeddedLedger {
            svm: Mutex::new(svm::svm_with_ledger()),
        }
    }

    /// A fresh chain with an initialized pool: a new mint (`decimals`), `rates` per GPU class,
    /// settlement periods of `period_seconds`, the largest horizon, fresh funded admin (the
    /// program's upgrade authority), oracle and registrar keys (returned in [`Pool`]).
    pub fn with_pool(
        rates: [u64; NUM_GPU_CLASSES],
        decimals: u8,
        period_seconds: u64,
    ) -> Result<(Self, Pool)> {
        let me = Self::new();
        let setup = PoolSetup {
            period_seconds,
            ..PoolSetup::new(rates, decimals)
        };
        let pool = me
            .with_svm(|s| svm::setup_pool(s, setup))
            .map_err(|e| anyhow!("setting up the pool failed: {:?}", e.err))?;
        Ok((me, pool))
    }

    /// Runs `f` on the chain (tests, demo inspection), with the clock moved up to now.
    pub fn with_svm<R>(&self, f: impl FnOnce(&mut LiteSVM) -> R) -> R {
        let mut guard = self.svm.lock().unwrap_or_else(|p| p.into_inner());
        let wall = k8s_openapi::jiff::Timestamp::now().as_second();
        if svm::unix_time(&guard) < wall {
            svm::set_unix_time(&mut guard, wall);
        }
        f(&mut guard)
    }

    /// Airdrops lamports to `who`.
    pub fn fund(&self, who: &Pubkey) -> Result<()> {
        self.with_svm(|s| {
            // A fresh blockhash, so funding the same key twice is two transactions.
            s.expire_blockhash();
            svm::fund(s, who)
                .map(|_| ())
                .map_err(|e| anyhow!("airdrop failed: {:?}", e.err))
        })
    }

    /// Registers the cluster `cluster_id` for `owner` (who signs and pays; funded first) with
    /// the pool's registrar, creates the owner's token account, and gives it `gpu_cap` GPUs
    /// as the admin. Returns the cluster PDA.
    pub fn register_cluster(
        &self,
        pool: &Pool,
        owner: &Keypair,
        cluster_id: &[u8; 32],
        gpu_cap: u32,
    ) -> Result<Pubkey> {
        self.fund(&owner.pubkey())?;
        let pda = self
            .with_svm(|s| {
                svm::register_cluster(s, owner, owner, &pool.registrar, cluster_id, &pool.mint)
            })
            .map_err(|e| anyhow!("registering the cluster failed: {:?}", e.err))?;
        self.with_svm(|s| {
            svm::set_gpu_cap(s, &pool.admin, cluster_id, gpu_cap)
                .map(|_| ())
                .map_err(|e| anyhow!("setting the cluster's GPU cap failed: {:?}", e.err))
        })?;
        Ok(pda)
    }

    /// Demo shortcut for an owner whose key the demo does not hold: writes the cluster account
    /// for `owner_wallet` (with `gpu_cap` GPUs) directly into the chain state (a real cluster
    /// requires the owner's and the registrar's signatures) and creates the owner's token
    /// account. Returns the cluster PDA.
    pub fn register_cluster_for_wallet(
        &self,
        owner_wallet: &Pubkey,
        cluster_id: &[u8; 32],
        mint: &Pubkey,
        gpu_cap: u32,
    ) -> Result<Pubkey> {
        let (pda, bump) = state::find_cluster_address(cluster_id);
        let mut account = ClusterAccount::new(*cluster_id, *owner_wallet, bump);
        account.gpu_cap = gpu_cap;
        account.approved = gpu_cap > 0;
        let payer = Keypair::new();
        self.fund(&payer.pubkey())?;
        self.with_svm(|s| -> Result<()> {
            if s.get_account(&pda).is_none() {
                let mut data = vec![0u8; ClusterAccount::LEN];
                state::pack_cluster(&account, &mut data).map_err(|e| anyhow!("{e}"))?;
                let lamports = s.minimum_balance_for_rent_exemption(ClusterAccount::LEN);
                s.set_account(
                    pda,
                    solana_account::Account {
                        lamports,
                        data,
                        owner: svm::PROGRAM_ID,
                        executable: false,
                        rent_epoch: 0,
                    },
                )
                .map_err(|e| anyhow!("writing the cluster account: {e:?}"))?;
            }
            svm::create_ata(s, &payer, owner_wallet, mint)
                .map_err(|e| anyhow!("creating the owner's token account: {:?}", e.err))?;
            Ok(())
        })?;
        Ok(pda)
    }

    /// Demo and test genesis allocation: credits `amount` of `mint` to `wallet`'s token
    /// account (created if needed) and raises the mint's supply by as much, as a pool's stated
    /// initial allocation would (the mint authority is the ledger's PDA, which mints only for
    /// usage). Tenants then fund their escrows from it with real `Deposit`s.
    pub fn grant_tokens(&self, wallet: &Pubkey, mint: &Pubkey, amount: u64) -> Result<()> {
        let payer = Keypair::new();
        self.fund(&payer.pubkey())?;
        self.with_svm(|s| -> Result<()> {
            let ata = svm::create_ata(s, &payer, wallet, mint)
                .map_err(|e| anyhow!("creating the token account: {:?}", e.err))?;
            add_le(s, &ata, 64, amount)?;
            add_le(s, mint, 36, amount)
        })
    }

    /// Opens the escrow of tenant `tenant` for `wallet` (funded first) and deposits `deposit`
    /// tokens from the wallet's token account (see [`Self::grant_tokens`]).
    pub fn open_escrow(
        &self,
        pool: &Pool,
        wallet: &Keypair,
        tenant: &str,
        deposit: u64,
    ) -> Result<()> {
        self.fund(&wallet.pubkey())?;
        let id = state::tenant_id(tenant);
        self.with_svm(|s| -> Result<()> {
            svm::open_escrow(s, wallet, wallet, &id, &pool.mint)
                .map_err(|e| anyhow!("opening the escrow: {:?}", e.err))?;
            Ok(())
        })?;
        if deposit > 0 {
            self.deposit(pool, wallet, tenant, deposit)?;
        }
        Ok(())
    }

    /// `wallet` deposits `amount` from its token account into tenant `tenant`'s escrow.
    pub fn deposit(&self, pool: &Pool, wallet: &Keypair, tenant: &str, amount: u64) -> Result<()> {
        let id = state::tenant_id(tenant);
        let source = state::get_associated_token_address(&wallet.pubkey(), &pool.mint);
        let ix = gpupool_ledger::instruction::deposit(
            &wallet.pubkey(),
            &source,
            &pool.mint,
            &id,
            amount,
        );
        self.with_svm(|s| {
            s.expire_blockhash();
            svm::send(s, &[ix], wallet, &[])
                .map(|_| ())
                .map_err(|e| anyhow!("deposit failed: {:?}", e.err))
        })
    }

    /// Tenant `tenant`'s account (escrow totals), if its escrow is open.
    pub fn tenant(&self, tenant: &str) -> Option<state::TenantAccount> {
        self.with_svm(|s| svm::read_tenant(s, &state::tenant_id(tenant)))
    }

    /// Balance of tenant `tenant`'s escrow.
    pub fn escrow_balance(&self, tenant: &str, mint: &Pubkey) -> u64 {
        self.with_svm(|s| svm::escrow_balance(s, &state::tenant_id(tenant), mint))
    }

    /// The reservation of job `job_uid` (a Kubernetes UID) in tenant `tenant`'s escrow.
    pub fn reservation(&self, tenant: &str, job_uid: &str) -> Option<state::Reservation> {
        let uid = state::parse_job_uid(job_uid)?;
        self.with_svm(|s| svm::read_reservation(s, &state::tenant_id(tenant), &uid))
    }

    /// Token balance of `wallet`'s associated account for `mint` (0 when none).
    pub fn wallet_balance(&self, wallet: &Pubkey, mint: &Pubkey) -> u64 {
        self.with_svm(|s| svm::wallet_token_balance(s, wallet, mint))
    }

    /// Supply of `mint`.
    pub fn mint_supply(&self, mint: &Pubkey) -> u64 {
        self.with_svm(|s| svm::mint_supply(s, mint)).unwrap_or(0)
    }
}

/// Adds `amount` to the little-endian u64 at `at` in account `key`'s data.
fn add_le(s: &mut LiteSVM, key: &Pubkey, at: usize, amount: u64) -> Result<()> {
    let mut acc = s
        .get_account(key)
        .ok_or_else(|| anyhow!("account {key} does not exist"))?;
    let bytes = acc
        .data
        .get_mut(at..at + 8)
        .ok_or_else(|| anyhow!("account {key} is too short"))?;
    let v = u64::from_le_bytes(bytes.try_into()?)
        .checked_add(amount)
        .ok_or_else(|| anyhow!("overflow"))?;
    bytes.copy_from_slice(&v.to_le_bytes());
    s.set_account(*key, acc)
        .map_err(|e| anyhow!("writing account {key}: {e:?}"))
}

impl LedgerClient for EmbeddedLedger {
    fn latest_blockhash(&self) -> BoxFuture<'_, Result<Hash>> {
        // A fresh blockhash per call, so a resent identical batch is a new transaction.
        let h = self.with_svm(|s| {
            s.expire_blockhash();
            s.latest_blockhash()
        });
        Box::pin(async move { Ok(h) })
    }

    fn send_and_confirm<'a>(
        &'a self,
        tx: &'a Transaction,
    ) -> BoxFuture<'a, Result<Signature, SendError>> {
        let sig = tx.signatures.first().copied().unwrap_or_default();
        let result = self.with_svm(|s| match s.send_transaction(tx.clone()) {
            Ok(_) => Ok(sig),
            Err(failed) => Err(SendError::Rejected {
                ledger_error: svm::ledger_error(&failed.err),
                message: format!("{:?}", failed.err),
                logs: failed.meta.logs.clone(),
            }),
        });
        Box::pin(async move { result })
    }

    fn get_account<'a>(&'a self, key: &'a Pubkey) -> BoxFuture<'a, Result<Option<AccountData>>> {
        let acc = self.with_svm(|s| s.get_account(key)).map(|a| AccountData {
            owner: a.owner,
            lamports: a.lamports,
            data: a.data,
        });
        Box::pin(async move { Ok(acc) })
    }

    fn describe(&self) -> String {
        "embedded LiteSVM".into()
    }
}
