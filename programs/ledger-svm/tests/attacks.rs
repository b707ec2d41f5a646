//! The attacks of an adversarial oracle-key holder, member owner or squatter against the
//! ledger program, each refused (and each accepted by the program before the pool kept its
//! period length, clock checks, GPU caps, registrar and upgrade-authority checks). Every
//! refusal also asserts that no token moved.

mod common;

use common::*;
use gpupool_ledger_svm::{
    self as svmx,
    gpupool_ledger::{
        error::LedgerError,
        instruction::{self as ix, Authority},
        state,
    },
};
use solana_keypair::Keypair;
use solana_program::{instruction::InstructionError, pubkey::Pubkey};
use solana_signer::Signer;
use solana_transaction_error::TransactionError;

#[test]
fn initialize_pool_cannot_be_front_run() {
    let mut svm = svmx::svm_with_ledger();
    svmx::set_unix_time(&mut svm, now());
    let deployer = Keypair::new();
    let attacker = Keypair::new();
    for k in [&deployer, &attacker] {
        svmx::fund(&mut svm, &k.pubkey()).unwrap();
    }
    svmx::install_program_data(&mut svm, &deployer.pubkey());
    let mint = Keypair::new();
    svmx::create_pool_mint(&mut svm, &attacker, &mint, 6).unwrap();
    let (oracle, registrar) = (Keypair::new().pubkey(), Keypair::new().pubkey());
    let params = |_: &Keypair| params(&oracle, &registrar);

    // The attacker, first in line, naming itself admin and oracle.
    expect_err(
        svmx::send(
            &mut svm,
            &[ix::initialize_pool(
                &attacker.pubkey(),
                &mint.pubkey(),
                &params(&attacker),
            )],
            &attacker,
            &[],
        ),
        LedgerError::NotUpgradeAuthority,
    );
    // ... with a ProgramData look-alike of its own at another address.
    let fake = Pubkey::new_unique();
    let mut account = svm
        .get_account(&state::program_data_address(&svmx::PROGRAM_ID))
        .unwrap();
    account.data = state::program_data_header(0, Some(&attacker.pubkey()));
    svm.set_account(fake, account.clone()).unwrap();
    let mut forged = ix::initialize_pool(&attacker.pubkey(), &mint.pubkey(), &params(&attacker));
    forged.accounts[5].pubkey = fake;
    expect_err(
        svmx::send(&mut svm, &[forged], &attacker, &[]),
        LedgerError::InvalidProgramData,
    );
    assert!(svmx::read_config(&svm).is_none());

    // The deployer (upgrade authority) initializes.
    svmx::send(
        &mut svm,
        &[ix::initialize_pool(
            &deployer.pubkey(),
            &mint.pubkey(),
            &params(&deployer),
        )],
        &deployer,
        &[],
    )
    .unwrap();
    assert_eq!(svmx::read_config(&svm).unwrap().admin, deployer.pubkey());
}

#[test]
fn periods_must_have_ended_by_the_chain_clock() {
    let mut f = fixture();
    let before = f.snapshot();
    // A far-future period, the current period, and u64::MAX.
    for p in [NOW_PERIOD + 1_000_000, NOW_PERIOD, u64::MAX] {
        expect_err(f.record(entry(1, p, 10, 0)), LedgerError::PeriodNotEnded);
    }
    // The same hour renumbered as if periods were a minute long (what changing the period
    // length on the hub did): that period number lies far in the future.
    f.record(entry(1, NOW_PERIOD - 1, 10, 0)).unwrap();
    expect_err(
        f.record(entry(1, (NOW_PERIOD - 1) * 60, 10, 0)),
        LedgerError::PeriodNotEnded,
    );
    assert_eq!(f.snapshot().0, before.0 + 10 * RATE_0);
    // The period length itself lives on chain and no instruction changes it.
    assert_eq!(f.config().period_seconds, PERIOD);
}

#[test]
fn periods_older_than_the_horizon_are_refused() {
    let mut f = fixture();
    f.set_time(((NOW_PERIOD + HORIZON) * PERIOD) as i64);
    let before = f.snapshot();
    // Period NOW_PERIOD + HORIZON is current; NOW_PERIOD is exactly HORIZON back: still ok.
    expect_err(
        f.record(entry(1, NOW_PERIOD - 1, 10, 0)),
        LedgerError::PeriodOutsideHorizon,
    );
    assert_eq!(f.snapshot(), before);
    f.record(entry(1, NOW_PERIOD, 10, 0)).unwrap();
}

#[test]
fn gpu_seconds_are_capped_per_cluster_and_period() {
    let mut f = fixture();
    let admin = f.admin.insecure_clone();
    let cluster_id = f.cluster_id;
    // An 8-GPU cluster.
    f.send(
        ix::configure_cluster(&admin.pubkey(), &cluster_id, 8, false),
        &[&admin],
    )
    .unwrap();
    let cap = 8 * PERIOD;
    let p = NOW_PERIOD - 1;
    let before = f.snapshot();

    // 10^15 GPU-seconds in one hour.
    expect_err(
        f.record(entry(1, p, 1_000_000_000_000_000, 0)),
        LedgerError::GpuCapExceeded,
    );
    // One GPU-second over the cap.
    expect_err(
        f.record(entry(1, p, cap + 1, 0)),
        LedgerError::GpuCapExceeded,
    );
    // Within the cap but split over invented job uids: the sum is capped, in one batch...
    let ix = f.batch_ix(&[entry(1, p, cap / 2, 0), entry(2, p, cap / 2 + 1, 0)]);
    expect_err(f.send(ix, &[]), LedgerError::GpuCapExceeded);
    assert_eq!(f.snapshot(), before);
    // ... and across transactions.
    f.record(entry(1, p, cap / 2, 0)).unwrap();
    f.record(entry(2, p, cap / 2, 0)).unwrap();
    expect_err(f.record(entry(3, p, 1, 0)), LedgerError::GpuCapExceeded);
    assert_eq!(f.balance(), cap * RATE_0);
    // Another period has its own budget.
    f.record(entry(3, p - 1, cap, 0)).unwrap();
    assert_eq!(f.balance(), 2 * cap * RATE_0);
    assert_eq!(f.supply(), f.balance());

    // A freshly registered cluster has no cap until the admin sets one.
    let owner = Keypair::new();
    svmx::fund(&mut f.svm, &owner.pubkey()).unwrap();
    let other = state::cluster_id("00000000-0000-4000-8000-0000000000b2");
    let registrar = f.registrar.insecure_clone();
    let mint = f.mint;
    svmx::register_cluster(&mut f.svm, &owner, &owner, &registrar, &other, &mint).unwrap();
    let record = ix::record_usage(
        &f.oracle.pubkey(),
        &f.oracle.pubkey(),
        &f.mint,
        &other,
        &owner.pubkey(),
        entry(1, p, 1, 0),
    );
    expect_err(f.send(record, &[]), LedgerError::GpuCapExceeded);
    assert_eq!(
        svmx::wallet_token_balance(&f.svm, &owner.pubkey(), &f.mint),
        0
    );
}

#[test]
fn a_leaked_oracle_is_bounded_and_rotated_out() {
    let mut f = fixture();
    let admin = f.admin.insecure_clone();
    let cluster_id = f.cluster_id;
    f.send(
        ix::configure_cluster(&admin.pubkey(), &cluster_id, 1, false),
        &[&admin],
    )
    .unwrap();
    // The thief with the oracle key fills every recordable period of the cluster.
    let mut minted = 0;
    for p in (NOW_PERIOD - 20)..NOW_PERIOD {
        f.record(entry(9, p, PERIOD, 0)).unwrap();
        minted += PERIOD * RATE_0;
        expect_err(f.record(entry(10, p, 1, 0)), LedgerError::GpuCapExceeded);
    }
    assert_eq!(f.supply(), minted);

    // Zero key refused; rotation is two-step; the old key stops at once the new accepts.
    expect_err(
        f.send(
            ix::propose_authority(&admin.pubkey(), Authority::Oracle, &Pubkey::default()),
            &[&admin],
        ),
        LedgerError::ZeroKey,
    );
    let fresh = Keypair::new();
    svmx::fund(&mut f.svm, &fresh.pubkey()).unwrap();
    f.send(
        ix::propose_authority(&admin.pubkey(), Authority::Oracle, &fresh.pubkey()),
        &[&admin],
    )
    .unwrap();
    // The thief cannot accept in the new key's place.
    let thief = f.oracle.insecure_clone();
    expect_err(
        f.send_as(
            ix::accept_authority(&thief.pubkey(), Authority::Oracle),
            &thief,
        ),
        LedgerError::NoPendingAuthority,
    );
    f.send_as(
        ix::accept_authority(&fresh.pubkey(), Authority::Oracle),
        &fresh,
    )
    .unwrap();
    expect_err(
        f.record(entry(11, NOW_PERIOD - 30, 1, 0)),
        LedgerError::NotOracle,
    );
    assert_eq!(f.supply(), minted);
}

#[test]
fn admin_and_registrar_rotate_in_two_steps() {
    let mut f = fixture();
    let admin = f.admin.insecure_clone();
    let next = Keypair::new();
    svmx::fund(&mut f.svm, &next.pubkey()).unwrap();
    f.send(
        ix::propose_authority(&admin.pubkey(), Authority::Admin, &next.pubkey()),
        &[&admin],
    )
    .unwrap();
    // Still the old admin until accepted.
    assert_eq!(f.config().admin, admin.pubkey());
    // A proposal for another role cannot be accepted as admin.
    expect_err(
        f.send_as(
            ix::accept_authority(&next.pubkey(), Authority::Registrar),
            &next,
        ),
        LedgerError::NoPendingAuthority,
    );
    f.send_as(
        ix::accept_authority(&next.pubkey(), Authority::Admin),
        &next,
    )
    .unwrap();
    assert_eq!(f.config().admin, next.pubkey());
    expect_err(
        f.send(
            ix::set_rates(&admin.pubkey(), rates(), NOW_PERIOD + 1),
            &[&admin],
        ),
        LedgerError::NotAdmin,
    );

    let registrar = Keypair::new();
    svmx::fund(&mut f.svm, &registrar.pubkey()).unwrap();
    f.send(
        ix::propose_authority(&next.pubkey(), Authority::Registrar, &registrar.pubkey()),
        &[&next],
    )
    .unwrap();
    f.send_as(
        ix::accept_authority(&registrar.pubkey(), Authority::Registrar),
        &registrar,
    )
    .unwrap();
    assert_eq!(f.config().registrar, registrar.pubkey());
    assert_eq!(f.config().pending_registrar, Pubkey::default());
}

#[test]
fn registration_needs_the_registrar_and_a_squat_can_be_fixed() {
    let mut f = fixture();
    let squatter = Keypair::new();
    svmx::fund(&mut f.svm, &squatter.pubkey()).unwrap();
    // A squatter registers a member's id (its kube-system UID leaked) without the registrar.
    let victim_id = state::cluster_id("7a1b2c3d-0000-4000-8000-00000000c0de");
    let ix = ix::register_cluster(
        &squatter.pubkey(),
        &squatter.pubkey(),
        &squatter.pubkey(),
        &victim_id,
    );
    expect_err(
        svmx::send(&mut f.svm, &[ix], &squatter, &[]),
        LedgerError::NotRegistrar,
    );
    // The registrar key named but not signing.
    let mut ix = ix::register_cluster(
        &squatter.pubkey(),
        &squatter.pubkey(),
        &f.registrar.pubkey(),
        &victim_id,
    );
    ix.accounts[2].is_signer = false;
    expect_err(
        svmx::send(&mut f.svm, &[ix], &squatter, &[]),
        LedgerError::MissingSignature,
    );
    assert!(svmx::read_cluster(&f.svm, &victim_id).is_none());

    // Say the squat happened anyway (the hub registered the wrong wallet). The registrar
    // cannot move it (neither can the rightful owner with it); the admin's owner recovery,
    // after its timelock, does, and the next payment goes to the rightful owner.
    let rightful = Keypair::new();
    svmx::fund(&mut f.svm, &rightful.pubkey()).unwrap();
    let payer = f.oracle.insecure_clone();
    let mint = f.mint;
    svmx::create_ata(&mut f.svm, &payer, &rightful.pubkey(), &mint).unwrap();
    let cluster_id = f.cluster_id;
    let registrar = f.registrar.insecure_clone();
    expect_err(
        svmx::send(
            &mut f.svm,
            &[ix::set_cluster_owner(
                &registrar.pubkey(),
                &rightful.pubkey(),
                &cluster_id,
            )],
            &rightful,
            &[&registrar],
        ),
        LedgerError::NotClusterOwner,
    );
    let admin = f.admin.insecure_clone();
    f.send(
        ix::propose_owner_recovery(&admin.pubkey(), &cluster_id, &rightful.pubkey()),
        &[&admin],
    )
    .unwrap();
    f.set_time(((NOW_PERIOD + TIMELOCK) * PERIOD) as i64);
    f.send_as(
        ix::execute_owner_recovery(&rightful.pubkey(), &cluster_id),
        &rightful,
    )
    .unwrap();
    assert_eq!(f.cluster_state().owner, rightful.pubkey());
    let old_owner = f.owner.insecure_clone();
    // The old owner's account is refused as destination; the new one is paid.
    expect_err(
        f.record(entry(1, NOW_PERIOD - 1, 10, 0)),
        LedgerError::InvalidOwnerTokenAccount,
    );
    let ix = ix::record_usage(
        &f.oracle.pubkey(),
        &f.oracle.pubkey(),
        &f.mint,
        &cluster_id,
        &rightful.pubkey(),
        entry(1, NOW_PERIOD - 1, 10, 0),
    );
    f.send(ix, &[]).unwrap();
    assert_eq!(
        svmx::wallet_token_balance(&f.svm, &rightful.pubkey(), &mint),
        10 * RATE_0
    );
    assert_eq!(
        svmx::wallet_token_balance(&f.svm, &old_owner.pubkey(), &mint),
        0
    );
}

#[test]
fn one_cluster_joined_twice_is_one_cluster_id() {
    let mut f = fixture();
    // The same kube-system UID under another name (and with stray whitespace).
    let again = state::cluster_id(&format!(" {KUBE_SYSTEM_UID}\n"));
    assert_eq!(again, f.cluster_id);
    let owner2 = Keypair::new();
    svmx::fund(&mut f.svm, &owner2.pubkey()).unwrap();
    let registrar = f.registrar.insecure_clone();
    let mint = f.mint;
    let res = svmx::register_cluster(&mut f.svm, &owner2, &owner2, &registrar, &again, &mint);
    let err = res.unwrap_err();
    assert_eq!(
        svmx::ledger_error(&err.err),
        Some(LedgerError::ClusterAlreadyRegistered)
    );
    // And its usage of one job in one period is paid once, whichever name reports it.
    f.record(entry(1, NOW_PERIOD - 1, 10, 0)).unwrap();
    expect_err(
        f.record(entry(1, NOW_PERIOD - 1, 10, 0)),
        LedgerError::ReceiptAlreadyExists,
    );
}

#[test]
fn disabled_cluster_is_not_paid() {
    let mut f = fixture();
    let admin = f.admin.insecure_clone();
    let cluster_id = f.cluster_id;
    f.send(
        ix::configure_cluster(&admin.pubkey(), &cluster_id, GPU_CAP, true),
        &[&admin],
    )
    .unwrap();
    assert!(f.cluster_state().disabled);
    let before = f.snapshot();
    expect_err(
        f.record(entry(1, NOW_PERIOD - 1, 10, 0)),
        LedgerError::ClusterDisabled,
    );
    assert_eq!(f.snapshot(), before);
    f.send(
        ix::configure_cluster(&admin.pubkey(), &cluster_id, GPU_CAP, false),
        &[&admin],
    )
    .unwrap();
    f.record(entry(1, NOW_PERIOD - 1, 10, 0)).unwrap();
}

#[test]
fn rate_changes_are_never_retroactive() {
    let mut f = fixture();
    let admin = f.admin.insecure_clone();
    let mut high = rates();
    high[0] = 1_000;
    // Effective from the current period (partly used already) or a past one: refused.
    for from in [NOW_PERIOD, NOW_PERIOD - 1, 0] {
        expect_err(
            f.send(ix::set_rates(&admin.pubkey(), high, from), &[&admin]),
            LedgerError::RateNotInFuture,
        );
    }
    let from = NOW_PERIOD + TIMELOCK;
    f.send(ix::set_rates(&admin.pubkey(), high, from), &[&admin])
        .unwrap();
    // Unsettled usage of ended periods keeps the old rate, even settled after the change
    // takes effect.
    f.set_time(((from + 2) * PERIOD) as i64);
    f.record(entry(1, NOW_PERIOD - 1, 10, 0)).unwrap();
    assert_eq!(f.balance(), 10 * RATE_0);
    f.record(entry(1, from, 10, 0)).unwrap();
    assert_eq!(f.balance(), 10 * RATE_0 + 10 * 1_000);

    // A pending change may be replaced before it takes effect; history stays bounded.
    let now_p = from + 2;
    f.send(
        ix::set_rates(&admin.pubkey(), rates(), now_p + 5),
        &[&admin],
    )
    .unwrap();
    f.send(ix::set_rates(&admin.pubkey(), high, now_p + 2), &[&admin])
        .unwrap();
    let cfg = f.config();
    assert_eq!(cfg.rate_version_count, 3);
    assert_eq!(cfg.rate(0, now_p + 2), Some(1_000));
    f.set_time(((now_p + 3) * PERIOD) as i64);
    f.send(
        ix::set_rates(&admin.pubkey(), rates(), now_p + 4),
        &[&admin],
    )
    .unwrap();
    assert_eq!(f.config().rate_version_count, 4);
    // Once the oldest version cannot apply to any recordable period, it is dropped.
    f.set_time(((from + HORIZON + 1) * PERIOD) as i64);
    let cur = from + HORIZON + 1;
    f.send(ix::set_rates(&admin.pubkey(), rates(), cur + 1), &[&admin])
        .unwrap();
    let cfg = f.config();
    assert_eq!(cfg.rate_version_count, 4);
    assert_eq!(cfg.rate_versions[0].effective_from, from);
}

#[test]
fn receipts_close_after_the_horizon_and_cannot_be_replayed() {
    let mut f = fixture();
    let e = entry(1, NOW_PERIOD - 1, 10, 0);
    f.record(e).unwrap();
    let receipt_key = state::find_receipt_address(
        &f.cluster,
        &state::usage_id(&f.cluster_id, &e.job_uid, e.period),
    )
    .0;
    let receipt = svmx::read_receipt(&f.svm, &f.cluster_id, &e.job_uid, e.period).unwrap();
    assert_eq!(receipt.rent_payer, f.oracle.pubkey());
    let rent = f.svm.get_account(&receipt_key).unwrap().lamports;
    let anyone = Keypair::new();
    svmx::fund(&mut f.svm, &anyone.pubkey()).unwrap();

    // Inside the horizon: refused (closing would let the same usage be paid again).
    let oracle = f.oracle.pubkey();
    expect_err(
        f.send_as(ix::close_receipt(&receipt_key, &oracle), &anyone),
        LedgerError::ReceiptNotExpired,
    );
    // Past the horizon: rent goes back to the payer, to nobody else.
    f.set_time(((e.period + HORIZON + 1) * PERIOD) as i64);
    expect_err(
        f.send_as(ix::close_receipt(&receipt_key, &anyone.pubkey()), &anyone),
        LedgerError::InvalidRentDestination,
    );
    let before = f.svm.get_balance(&oracle).unwrap();
    f.send_as(ix::close_receipt(&receipt_key, &oracle), &anyone)
        .unwrap();
    assert_eq!(f.svm.get_balance(&oracle).unwrap(), before + rent);
    assert!(
        f.svm
            .get_account(&receipt_key)
            .is_none_or(|a| a.lamports == 0 && a.data.is_empty())
    );
    // Exactly once still holds: the period is outside the horizon.
    let balance = f.balance();
    expect_err(f.record(e), LedgerError::PeriodOutsideHorizon);
    assert_eq!(f.balance(), balance);
}

#[test]
fn spl_token_errors_through_cpi_are_not_read_as_ledger_errors() {
    let mut f = fixture();
    let admin = f.admin.insecure_clone();
    let mut big = rates();
    big[0] = 1 << 40;
    let p = NOW_PERIOD + TIMELOCK;
    f.send(ix::set_rates(&admin.pubkey(), big, p), &[&admin])
        .unwrap();
    let cluster_id = f.cluster_id;
    f.send(
        ix::configure_cluster(&admin.pubkey(), &cluster_id, u32::MAX, false),
        &[&admin],
    )
    .unwrap();
    f.set_time(((p + 1) * PERIOD) as i64);
    // Two mints of ~8.8e18 fit u64; a third overflows the mint's supply inside SPL Token,
    // while the ledger's per-cluster totals of a second cluster still fit.
    f.record(entry(1, p, 8_000_000, 0)).unwrap();
    f.record(entry(2, p, 8_000_000, 0)).unwrap();
    let owner2 = Keypair::new();
    svmx::fund(&mut f.svm, &owner2.pubkey()).unwrap();
    let id2 = state::cluster_id("00000000-0000-4000-8000-0000000000c3");
    let registrar = f.registrar.insecure_clone();
    let mint = f.mint;
    svmx::register_cluster(&mut f.svm, &owner2, &owner2, &registrar, &id2, &mint).unwrap();
    svmx::set_gpu_cap(&mut f.svm, &admin, &id2, u32::MAX).unwrap();
    let supply = f.supply();
    let ix = ix::record_usage(
        &f.oracle.pubkey(),
        &f.oracle.pubkey(),
        &f.mint,
        &id2,
        &owner2.pubkey(),
        entry(3, p, 8_000_000, 0),
    );
    let err = f.send(ix, &[]).unwrap_err();
    // SPL Token's `Overflow` is custom error 14, which was the ledger's `MissingSignature`.
    assert_eq!(
        err.err,
        TransactionError::InstructionError(0, InstructionError::Custom(14)),
        "{}",
        err.meta.pretty_logs()
    );
    assert_eq!(svmx::ledger_error(&err.err), None);
    assert_eq!(f.supply(), supply);
}
