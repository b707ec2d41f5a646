//! Tenant escrow and burn-and-mint settlement in LiteSVM with the real SPL Token program:
//! the tenant pays for what owners earn. Adversarial: a tenant withdrawing reserved funds, an
//! empty escrow, an oracle burning beyond a reservation or from another tenant, an admin
//! moving escrow, replays, rounding, a job ending mid-period; and conservation (burned =
//! minted + fees, escrow = deposits - withdrawals - spent) after every step.

#![allow(clippy::result_large_err)] // the result type of `LiteSVM::send_transaction`

mod common;

use common::*;
use gpupool_ledger_svm::{
    self as svmx,
    gpupool_ledger::{
        error::LedgerError,
        instruction::{self as ix, Payer, UsageEntry},
        state,
    },
    litesvm::types::TransactionResult,
};
use solana_keypair::Keypair;
use solana_program::pubkey::Pubkey;
use solana_signer::Signer;

/// 2.5 % protocol fee.
const FEE_BPS: u16 = 250;
/// Tokens the fixture owner earns by plain recording before it funds tenants.
const EARNED: u64 = 3_600 * RATE_0;

struct Tenant {
    id: [u8; 32],
    wallet: Keypair,
    escrow: Pubkey,
}

struct World {
    f: Fixture,
    /// Supply after the owner's plain earnings (the only emission).
    emitted: u64,
}

fn world() -> World {
    let mut f = fixture_with(svmx::PoolSetup {
        fee_bps: FEE_BPS,
        ..setup()
    });
    // The owner earns tokens the plain way (the only mint from nothing here), in an old
    // period, then funds tenants with them.
    f.record(entry(200, NOW_PERIOD - 200, EARNED / RATE_0, 0))
        .unwrap();
    assert_eq!(f.balance(), EARNED);
    let emitted = f.supply();
    World { f, emitted }
}

impl World {
    fn tenant(&mut self, name: &str) -> Tenant {
        let wallet = Keypair::new();
        svmx::fund(&mut self.f.svm, &wallet.pubkey()).unwrap();
        let id = state::tenant_id(name);
        let payer = self.f.oracle.insecure_clone();
        let mint = self.f.mint;
        let key = svmx::open_escrow(&mut self.f.svm, &payer, &wallet, &id, &mint).unwrap();
        let t = svmx::read_tenant(&self.f.svm, &id).unwrap();
        assert_eq!((t.wallet, t.reserved), (wallet.pubkey(), 0));
        Tenant {
            id,
            wallet,
            escrow: state::escrow_address(&key, &mint),
        }
    }

    /// The owner deposits `amount` into `t`'s escrow.
    fn deposit(&mut self, t: &Tenant, amount: u64) -> TransactionResult {
        let owner = self.f.owner.insecure_clone();
        let ix = ix::deposit(&owner.pubkey(), &self.f.ata, &self.f.mint, &t.id, amount);
        svmx::send(&mut self.f.svm, &[ix], &owner, &[])
    }

    fn reserve(&mut self, t: &Tenant, job: u8, amount: u64) -> TransactionResult {
        let o = self.f.oracle.pubkey();
        let ix = ix::reserve(&o, &o, &self.f.mint, &t.id, &[job; 16], amount);
        self.f.send(ix, &[])
    }

    fn release(&mut self, t: &Tenant, job: u8) -> TransactionResult {
        let o = self.f.oracle.pubkey();
        let ix = ix::release(&o, &t.id, &[job; 16], &o);
        self.f.send(ix, &[])
    }

    fn settle_ix(
        &self,
        t: &Tenant,
        entries: &[UsageEntry],
    ) -> solana_program::instruction::Instruction {
        let o = self.f.oracle.pubkey();
        ix::settle_usage(
            &o,
            &o,
            &self.f.mint,
            &self.f.cluster_id,
            &self.f.owner.pubkey(),
            Payer {
                tenant_id: &t.id,
                treasury: &self.f.treasury,
            },
            entries,
        )
    }

    fn settle(&mut self, t: &Tenant, entries: &[UsageEntry]) -> TransactionResult {
        let ix = self.settle_ix(t, entries);
        self.f.send(ix, &[])
    }

    fn escrow(&self, t: &Tenant) -> u64 {
        svmx::escrow_balance(&self.f.svm, &t.id, &self.f.mint)
    }

    fn treasury(&self) -> u64 {
        svmx::token_balance(&self.f.svm, &self.f.treasury).unwrap()
    }

    /// Escrow = deposits - withdrawals - spent; reserved <= escrow; burned = minted + fee;
    /// the supply moved only by the plain earnings.
    fn assert_conserved(&self, tenants: &[&Tenant]) {
        let mut spent = 0;
        for t in tenants {
            let a = svmx::read_tenant(&self.f.svm, &t.id).unwrap();
            assert_eq!(
                self.escrow(t),
                a.deposited - a.withdrawn - a.spent,
                "escrow of {:?}",
                t.id
            );
            assert!(a.reserved <= self.escrow(t));
            spent += a.spent;
        }
        let c = self.f.cluster_state();
        let paid_by_tenants = c.total_tokens_minted - EARNED;
        assert_eq!(
            spent,
            paid_by_tenants + self.treasury(),
            "burned = minted + fees"
        );
        assert_eq!(
            self.f.supply(),
            self.emitted,
            "settlements do not change the supply"
        );
    }
}

#[test]
fn escrow_settlement_burns_from_the_tenant_and_mints_to_the_owner() {
    let mut w = world();
    let t = w.tenant("team-a");
    // Anyone may fund: the owner deposits.
    w.deposit(&t, 10_000).unwrap();
    assert_eq!(w.escrow(&t), 10_000);
    w.reserve(&t, 1, 4_000).unwrap();
    w.reserve(&t, 1, 1_000).unwrap();
    assert_eq!(
        svmx::read_reservation(&w.f.svm, &t.id, &[1; 16])
            .unwrap()
            .amount,
        5_000
    );
    assert_eq!(svmx::read_tenant(&w.f.svm, &t.id).unwrap().reserved, 5_000);
    let owner_before = w.f.balance();

    // Two periods of job 1 in one settlement: 1 000 and 333 GPU-seconds at class 0.
    let entries = [
        entry(1, NOW_PERIOD - 2, 1_000, 0),
        entry(1, NOW_PERIOD - 1, 333, 0),
    ];
    w.settle(&t, &entries).unwrap();
    let amount = 1_333 * RATE_0;
    // The fee is rounded down per receipt: 75 of 3 000, 24 of 999.
    let fee = 3_000 * 250 / 10_000 + 999 * 250 / 10_000;
    assert_eq!(fee, 75 + 24);
    assert_eq!(w.escrow(&t), 10_000 - amount);
    assert_eq!(w.treasury(), fee);
    assert_eq!(w.f.balance(), owner_before + amount - fee);
    let r = svmx::read_reservation(&w.f.svm, &t.id, &[1; 16]).unwrap();
    assert_eq!((r.amount, r.drawn), (5_000 - amount, amount));
    let receipt = svmx::read_receipt(&w.f.svm, &w.f.cluster_id, &[1; 16], NOW_PERIOD - 1).unwrap();
    let tenant_key = state::find_tenant_address(&t.id).0;
    assert_eq!(
        (receipt.amount, receipt.fee, receipt.tenant),
        (999, 24, tenant_key)
    );
    w.assert_conserved(&[&t]);

    // The job ends mid-period: its remainder is released exactly, rent back to the payer.
    let oracle = w.f.oracle.pubkey();
    let lamports = w.f.svm.get_balance(&oracle).unwrap();
    w.release(&t, 1).unwrap();
    assert!(svmx::read_reservation(&w.f.svm, &t.id, &[1; 16]).is_none());
    assert_eq!(svmx::read_tenant(&w.f.svm, &t.id).unwrap().reserved, 0);
    assert!(w.f.svm.get_balance(&oracle).unwrap() > lamports);
    // All of the unreserved escrow can go back to the tenant wallet.
    let dest = svmx::create_ata(&mut w.f.svm, &t.wallet, &t.wallet.pubkey(), &w.f.mint).unwrap();
    let left = w.escrow(&t);
    let wallet = t.wallet.insecure_clone();
    svmx::send(
        &mut w.f.svm,
        &[ix::withdraw(
            &wallet.pubkey(),
            &w.f.mint,
            &t.id,
            &dest,
            left,
        )],
        &wallet,
        &[],
    )
    .unwrap();
    assert_eq!(svmx::token_balance(&w.f.svm, &dest), Some(left));
    assert_eq!(w.escrow(&t), 0);
    w.assert_conserved(&[&t]);
}

#[test]
fn a_tenant_cannot_withdraw_reserved_funds() {
    let mut w = world();
    let t = w.tenant("team-a");
    w.deposit(&t, 1_000).unwrap();
    w.reserve(&t, 1, 600).unwrap();
    let wallet = t.wallet.insecure_clone();
    let dest = svmx::create_ata(&mut w.f.svm, &wallet, &wallet.pubkey(), &w.f.mint).unwrap();
    let withdraw = |amount| ix::withdraw(&wallet.pubkey(), &w.f.mint, &t.id, &dest, amount);
    let (all, over, ok) = (withdraw(1_000), withdraw(401), withdraw(400));
    expect_err(
        svmx::send(&mut w.f.svm, &[all], &wallet, &[]),
        LedgerError::InsufficientEscrow,
    );
    expect_err(
        svmx::send(&mut w.f.svm, &[over], &wallet, &[]),
        LedgerError::InsufficientEscrow,
    );
    svmx::send(&mut w.f.svm, &[ok], &wallet, &[]).unwrap();
    assert_eq!(w.escrow(&t), 600);
    // Nor reserve more than is there: the escrow holds exactly the reservation.
    expect_err(w.reserve(&t, 2, 1), LedgerError::InsufficientEscrow);
    w.assert_conserved(&[&t]);
}

#[test]
fn an_empty_escrow_reserves_nothing_and_pays_nothing() {
    let mut w = world();
    let t = w.tenant("broke");
    expect_err(w.reserve(&t, 1, 1), LedgerError::InsufficientEscrow);
    expect_err(w.reserve(&t, 1, 0), LedgerError::ZeroAmount);
    let owner_before = w.f.balance();
    // Without a reservation there is nothing to draw from.
    expect_err(
        w.settle(&t, &[entry(1, NOW_PERIOD - 1, 10, 0)]),
        LedgerError::InvalidReservationAddress,
    );
    assert_eq!(w.f.balance(), owner_before);
    assert!(svmx::read_receipt(&w.f.svm, &w.f.cluster_id, &[1; 16], NOW_PERIOD - 1).is_none());
    w.assert_conserved(&[&t]);
}

#[test]
fn the_oracle_cannot_burn_beyond_a_reservation_or_from_another_tenant() {
    let mut w = world();
    let a = w.tenant("team-a");
    let b = w.tenant("team-b");
    w.deposit(&a, 1_000).unwrap();
    w.deposit(&b, 1_000).unwrap();
    w.reserve(&a, 1, 30).unwrap();
    w.reserve(&b, 2, 900).unwrap();
    // 11 GPU-seconds at 3 = 33 > 30 reserved for job 1.
    expect_err(
        w.settle(&a, &[entry(1, NOW_PERIOD - 1, 11, 0)]),
        LedgerError::ReservationExceeded,
    );
    // Two periods of the same job, each within, together beyond.
    expect_err(
        w.settle(
            &a,
            &[
                entry(1, NOW_PERIOD - 2, 6, 0),
                entry(1, NOW_PERIOD - 1, 6, 0),
            ],
        ),
        LedgerError::ReservationExceeded,
    );
    // Job 1 (tenant a's) paid from tenant b's escrow: b holds no reservation for it.
    expect_err(
        w.settle(&b, &[entry(1, NOW_PERIOD - 1, 10, 0)]),
        LedgerError::InvalidReservationAddress,
    );
    // Tenant b's reservation passed for tenant a's job.
    let mut forged = w.settle_ix(&a, &[entry(1, NOW_PERIOD - 1, 10, 0)]);
    let b_key = state::find_tenant_address(&b.id).0;
    forged.accounts[13].pubkey = state::find_reservation_address(&b_key, &[2; 16]).0;
    expect_err(
        w.f.send(forged, &[]),
        LedgerError::InvalidReservationAddress,
    );
    // Tenant b's escrow passed as tenant a's.
    let mut forged = w.settle_ix(&a, &[entry(1, NOW_PERIOD - 1, 10, 0)]);
    forged.accounts[10].pubkey = b.escrow;
    expect_err(w.f.send(forged, &[]), LedgerError::InvalidEscrowAccount);
    assert_eq!((w.escrow(&a), w.escrow(&b)), (1_000, 1_000));
    // Not the oracle at all.
    let mallory = Keypair::new();
    svmx::fund(&mut w.f.svm, &mallory.pubkey()).unwrap();
    let steal = ix::reserve(
        &mallory.pubkey(),
        &mallory.pubkey(),
        &w.f.mint,
        &a.id,
        &[9; 16],
        1,
    );
    expect_err(
        svmx::send(&mut w.f.svm, &[steal], &mallory, &[]),
        LedgerError::NotOracle,
    );
    // Within the reservation: paid.
    w.settle(&a, &[entry(1, NOW_PERIOD - 1, 10, 0)]).unwrap();
    assert_eq!(w.escrow(&a), 970);
    w.assert_conserved(&[&a, &b]);
}

#[test]
fn nobody_but_the_tenant_wallet_moves_escrow() {
    let mut w = world();
    let t = w.tenant("team-a");
    w.deposit(&t, 1_000).unwrap();
    let admin = w.f.admin.insecure_clone();
    let dest = svmx::create_ata(&mut w.f.svm, &admin, &admin.pubkey(), &w.f.mint).unwrap();
    // The admin (or the oracle) through the program.
    for k in [admin.insecure_clone(), w.f.oracle.insecure_clone()] {
        let ix = ix::withdraw(&k.pubkey(), &w.f.mint, &t.id, &dest, 1);
        expect_err(
            svmx::send(&mut w.f.svm, &[ix], &k, &[]),
            LedgerError::NotTenantWallet,
        );
    }
    // The tenant key named but not signing.
    let mut ix = ix::withdraw(&t.wallet.pubkey(), &w.f.mint, &t.id, &dest, 1);
    ix.accounts[0].is_signer = false;
    expect_err(
        svmx::send(&mut w.f.svm, &[ix], &admin, &[]),
        LedgerError::MissingSignature,
    );
    // Around the program: SPL Token refuses, the escrow's authority is the tenant PDA.
    let tenant_key = state::find_tenant_address(&t.id).0;
    let direct = ix::raw::spl_transfer(&t.escrow, &dest, &admin.pubkey(), 1);
    assert!(svmx::send(&mut w.f.svm, &[direct], &admin, &[]).is_err());
    assert_ne!(tenant_key, admin.pubkey());
    assert_eq!(w.escrow(&t), 1_000);
    assert_eq!(svmx::token_balance(&w.f.svm, &dest), Some(0));
    w.assert_conserved(&[&t]);
}

#[test]
fn escrow_settlements_are_paid_once() {
    let mut w = world();
    let t = w.tenant("team-a");
    w.deposit(&t, 10_000).unwrap();
    w.reserve(&t, 1, 5_000).unwrap();
    let e = entry(1, NOW_PERIOD - 1, 100, 0);
    w.settle(&t, &[e]).unwrap();
    let snapshot = (w.escrow(&t), w.f.balance(), w.treasury());
    expect_err(w.settle(&t, &[e]), LedgerError::ReceiptAlreadyExists);
    // Nor again as plain (minted) usage.
    expect_err(w.f.record(e), LedgerError::ReceiptAlreadyExists);
    // The same entry twice in one settlement.
    let e2 = entry(1, NOW_PERIOD - 2, 100, 0);
    expect_err(w.settle(&t, &[e2, e2]), LedgerError::ReceiptAlreadyExists);
    assert_eq!((w.escrow(&t), w.f.balance(), w.treasury()), snapshot);
    // The per-period GPU cap holds across both ways of paying.
    w.f.send(
        ix::configure_cluster(&w.f.admin.pubkey(), &w.f.cluster_id, 1, false),
        &[&w.f.admin.insecure_clone()],
    )
    .unwrap();
    expect_err(
        w.settle(&t, &[entry(2, NOW_PERIOD - 1, PERIOD, 0)]),
        LedgerError::GpuCapExceeded,
    );
    w.assert_conserved(&[&t]);
}

#[test]
fn rounding_creates_and_loses_nothing() {
    let mut w = world();
    let t = w.tenant("team-a");
    w.deposit(&t, 9_000).unwrap();
    w.reserve(&t, 7, 9_000).unwrap();
    // Amounts whose fee rounds down to 0, to a fraction, and exact: 3, 39, 40, 1 333.
    let mut p = NOW_PERIOD - 1;
    for s in [1u64, 13, 40, 444, 1, 7] {
        w.settle(&t, &[entry(7, p, s, 0)]).unwrap();
        p -= 1;
        w.assert_conserved(&[&t]);
    }
    let total: u64 = [1u64, 13, 40, 444, 1, 7].iter().map(|s| s * RATE_0).sum();
    let fees: u64 = [1u64, 13, 40, 444, 1, 7]
        .iter()
        .map(|s| s * RATE_0 * FEE_BPS as u64 / 10_000)
        .sum();
    assert_eq!(w.treasury(), fees);
    assert_eq!(w.escrow(&t), 9_000 - total);
    w.release(&t, 7).unwrap();
    assert_eq!(svmx::read_tenant(&w.f.svm, &t.id).unwrap().reserved, 0);
    w.assert_conserved(&[&t]);
}

#[test]
fn the_pause_stops_reservations_and_settlements_not_withdrawals() {
    let mut w = world();
    let t = w.tenant("team-a");
    w.deposit(&t, 1_000).unwrap();
    w.reserve(&t, 1, 100).unwrap();
    let admin = w.f.admin.insecure_clone();
    w.f.send(ix::set_paused(&admin.pubkey(), true), &[&admin])
        .unwrap();
    expect_err(w.reserve(&t, 1, 100), LedgerError::PoolPaused);
    expect_err(
        w.settle(&t, &[entry(1, NOW_PERIOD - 1, 10, 0)]),
        LedgerError::PoolPaused,
    );
    let wallet = t.wallet.insecure_clone();
    let dest = svmx::create_ata(&mut w.f.svm, &wallet, &wallet.pubkey(), &w.f.mint).unwrap();
    svmx::send(
        &mut w.f.svm,
        &[ix::withdraw(&wallet.pubkey(), &w.f.mint, &t.id, &dest, 900)],
        &wallet,
        &[],
    )
    .unwrap();
    w.assert_conserved(&[&t]);
}
