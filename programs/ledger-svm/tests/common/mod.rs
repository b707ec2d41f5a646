//! Shared fixture: a pool with two priced GPU classes and one registered cluster.

#![allow(dead_code, clippy::result_large_err)]

use gpupool_ledger_svm::{
    self as svmx,
    gpupool_ledger::{
        error::LedgerError,
        instruction::{self as ix, UsageEntry},
        state,
    },
    litesvm::{LiteSVM, types::TransactionResult},
};
use solana_keypair::Keypair;
use solana_program::{instruction::Instruction, pubkey::Pubkey};
use solana_signer::Signer;

/// Base units per GPU-second for class 0 and class 1; classes 2.. are unpriced.
pub const RATE_0: u64 = 3;
pub const RATE_1: u64 = 7;

/// Settlement period length of the fixture pool.
pub const PERIOD: u64 = 3600;
/// Horizon of the fixture pool, in periods.
pub const HORIZON: u64 = 512;
/// The fixture's clock stands in this period, so periods `0..NOW_PERIOD` have ended and are
/// all inside the horizon.
pub const NOW_PERIOD: u64 = 300;
/// GPU cap the admin gives the fixture cluster.
pub const GPU_CAP: u32 = 10_000;
/// Timelock of the fixture pool, in periods.
pub const TIMELOCK: u64 = svmx::DEFAULT_TIMELOCK_PERIODS;

/// The member's `kube-system` namespace UID the fixture's cluster id is derived from.
pub const KUBE_SYSTEM_UID: &str = "1f0e6c1a-8b1d-4c55-9d1e-6a7b8c9d0e1f";

pub struct Fixture {
    pub svm: LiteSVM,
    pub admin: Keypair,
    pub oracle: Keypair,
    pub registrar: Keypair,
    pub mint: Pubkey,
    pub owner: Keypair,
    pub cluster_id: [u8; 32],
    pub cluster: Pubkey,
    pub ata: Pubkey,
    pub treasury: Pubkey,
}

pub fn rates() -> [u64; state::NUM_GPU_CLASSES] {
    let mut r = [0; state::NUM_GPU_CLASSES];
    r[0] = RATE_0;
    r[1] = RATE_1;
    r
}

/// Unix time inside [`NOW_PERIOD`].
pub fn now() -> i64 {
    (NOW_PERIOD * PERIOD + 100) as i64
}

/// The fixture pool: no practical bound on rates and caps (tests of the bounds tighten them).
pub fn setup() -> svmx::PoolSetup {
    svmx::PoolSetup {
        period_seconds: PERIOD,
        horizon_periods: HORIZON,
        max_rate: u64::MAX,
        max_gpu_cap: u32::MAX,
        ..svmx::PoolSetup::new(rates(), 6)
    }
}

/// Pool parameters with three distinct fresh keys' worth of roles (`oracle`, `registrar`).
pub fn params(oracle: &Pubkey, registrar: &Pubkey) -> ix::PoolParams {
    ix::PoolParams {
        oracle: *oracle,
        registrar: *registrar,
        period_seconds: PERIOD,
        horizon_periods: HORIZON,
        rates: rates(),
        max_rate: svmx::DEFAULT_MAX_RATE,
        max_gpu_cap: svmx::DEFAULT_MAX_GPU_CAP,
        timelock_periods: TIMELOCK,
        fee_bps: 0,
        treasury: Pubkey::default(),
    }
}

pub fn fixture() -> Fixture {
    fixture_with(setup())
}

pub fn fixture_with(setup: svmx::PoolSetup) -> Fixture {
    let mut svm = svmx::svm_with_ledger();
    svmx::set_unix_time(&mut svm, now());
    let pool = svmx::setup_pool(&mut svm, setup).expect("pool setup");
    let owner = Keypair::new();
    svmx::fund(&mut svm, &owner.pubkey()).unwrap();
    let cluster_id = state::cluster_id(KUBE_SYSTEM_UID);
    let cluster = svmx::register_cluster(
        &mut svm,
        &owner,
        &owner,
        &pool.registrar,
        &cluster_id,
        &pool.mint,
    )
    .unwrap();
    svmx::set_gpu_cap(&mut svm, &pool.admin, &cluster_id, GPU_CAP).unwrap();
    let ata = state::get_associated_token_address(&owner.pubkey(), &pool.mint);
    assert_eq!(svmx::token_balance(&svm, &ata), Some(0));
    Fixture {
        svm,
        admin: pool.admin,
        oracle: pool.oracle,
        registrar: pool.registrar,
        mint: pool.mint,
        owner,
        cluster_id,
        cluster,
        ata,
        treasury: pool.treasury,
    }
}

pub fn entry(job: u8, period: u64, gpu_seconds: u64, gpu_class: u8) -> UsageEntry {
    UsageEntry {
        job_uid: [job; 16],
        period,
        gpu_seconds,
        gpu_class,
    }
}

impl Fixture {
    pub fn record_ix(&self, e: UsageEntry) -> Instruction {
        ix::record_usage(
            &self.oracle.pubkey(),
            &self.oracle.pubkey(),
            &self.mint,
            &self.cluster_id,
            &self.owner.pubkey(),
            e,
        )
    }

    pub fn batch_ix(&self, entries: &[UsageEntry]) -> Instruction {
        ix::record_usage_batch(
            &self.oracle.pubkey(),
            &self.oracle.pubkey(),
            &self.mint,
            &self.cluster_id,
            &self.owner.pubkey(),
            entries,
        )
    }

    /// Sends `ix` signed by the oracle (fee payer) and `extra` signers.
    pub fn send(&mut self, ix: Instruction, extra: &[&Keypair]) -> TransactionResult {
        let oracle = self.oracle.insecure_clone();
        svmx::send(&mut self.svm, &[ix], &oracle, extra)
    }

    pub fn record(&mut self, e: UsageEntry) -> TransactionResult {
        let ix = self.record_ix(e);
        self.send(ix, &[])
    }

    pub fn balance(&self) -> u64 {
        svmx::token_balance(&self.svm, &self.ata).unwrap()
    }

    pub fn supply(&self) -> u64 {
        svmx::mint_supply(&self.svm, &self.mint).unwrap()
    }

    /// Sends `ix` with `signer` paying and signing.
    pub fn send_as(&mut self, ix: Instruction, signer: &Keypair) -> TransactionResult {
        svmx::send(&mut self.svm, &[ix], signer, &[])
    }

    /// Moves the clock to unix time `t`.
    pub fn set_time(&mut self, t: i64) {
        svmx::set_unix_time(&mut self.svm, t);
    }

    pub fn config(&self) -> state::PoolConfig {
        svmx::read_config(&self.svm).unwrap()
    }

    pub fn cluster_state(&self) -> state::ClusterAccount {
        svmx::read_cluster(&self.svm, &self.cluster_id).unwrap()
    }

    /// Balance, supply and cluster totals, to compare before/after a rejected transaction.
    pub fn snapshot(&self) -> (u64, u64, u64, u64, u64) {
        let c = self.cluster_state();
        (
            self.balance(),
            self.supply(),
            c.total_gpu_seconds,
            c.total_tokens_minted,
            c.receipt_count,
        )
    }
}

/// Asserts `res` failed with the ledger error `want`.
#[track_caller]
pub fn expect_err(res: TransactionResult, want: LedgerError) {
    match res {
        Ok(meta) => panic!(
            "expected {want:?}, transaction succeeded:\n{}",
            meta.pretty_logs()
        ),
        Err(failed) => assert_eq!(
            svmx::ledger_error(&failed.err),
            Some(want),
            "wrong error {:?}; logs:\n{}",
            failed.err,
            failed.meta.pretty_logs()
        ),
    }
}
