//! Keys that cannot steal: the attacks of a single pool key (registrar, admin, a planted
//! proposal) and of owner changes against the ledger program, each refused, each asserting
//! that no token moved. Every test here was accepted by the program before owner hand-overs
//! needed the current owner, approvals the admin, roles distinct keys, caps and rates bounds
//! and timelocks, proposals an expiry, and the pool a pause.

#![allow(clippy::result_large_err)] // the result type of `LiteSVM::send_transaction`

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
use solana_program::{
    instruction::{AccountMeta, Instruction},
    pubkey::Pubkey,
};
use solana_signer::Signer;

fn funded(f: &mut Fixture) -> Keypair {
    let k = Keypair::new();
    svmx::fund(&mut f.svm, &k.pubkey()).unwrap();
    k
}

#[test]
fn the_registrar_alone_cannot_take_or_register_a_cluster_for_pay() {
    let mut f = fixture();
    let registrar = f.registrar.insecure_clone();
    let thief = funded(&mut f);
    let mint = f.mint;
    let cluster_id = f.cluster_id;
    let supply = f.supply();
    // Moving a registered cluster to itself: the current owner did not sign.
    expect_err(
        svmx::send(
            &mut f.svm,
            &[ix::set_cluster_owner(
                &registrar.pubkey(),
                &thief.pubkey(),
                &cluster_id,
            )],
            &thief,
            &[&registrar],
        ),
        LedgerError::NotClusterOwner,
    );
    // The owner's key named but not signing.
    let mut forged = ix::set_cluster_owner(&f.owner.pubkey(), &thief.pubkey(), &cluster_id);
    forged.accounts[0].is_signer = false;
    expect_err(
        svmx::send(&mut f.svm, &[forged], &thief, &[]),
        LedgerError::MissingSignature,
    );
    assert_eq!(f.cluster_state().owner, f.owner.pubkey());

    // Registering a member's cluster id to a wallet it controls, then recording a full
    // horizon of usage with the oracle key too: the admin never approved the cluster, so
    // nothing is payable.
    let victim = state::cluster_id("5b0c7d1e-0000-4000-8000-00000000beef");
    svmx::register_cluster(&mut f.svm, &thief, &thief, &registrar, &victim, &mint).unwrap();
    assert!(!svmx::read_cluster(&f.svm, &victim).unwrap().approved);
    for p in [NOW_PERIOD - 1, NOW_PERIOD - 100, 0] {
        let record = ix::record_usage(
            &f.oracle.pubkey(),
            &f.oracle.pubkey(),
            &mint,
            &victim,
            &thief.pubkey(),
            entry(1, p, 8 * PERIOD, 1),
        );
        expect_err(f.send(record, &[]), LedgerError::GpuCapExceeded);
    }
    assert_eq!(
        svmx::wallet_token_balance(&f.svm, &thief.pubkey(), &mint),
        0
    );
    assert_eq!(f.supply(), supply);
}

#[test]
fn the_admin_cannot_become_oracle_nor_mint_beyond_bounds_at_once() {
    let mut f = fixture_with(svmx::PoolSetup {
        max_rate: 100,
        max_gpu_cap: GPU_CAP,
        ..setup()
    });
    let admin = f.admin.insecure_clone();
    let cluster_id = f.cluster_id;
    // Admin, oracle and registrar stay three keys.
    for role in [Authority::Oracle, Authority::Registrar] {
        expect_err(
            f.send(
                ix::propose_authority(&admin.pubkey(), role, &admin.pubkey()),
                &[&admin],
            ),
            LedgerError::SameKeyForTwoRoles,
        );
    }
    let oracle = f.oracle.pubkey();
    expect_err(
        f.send(
            ix::propose_authority(&admin.pubkey(), Authority::Registrar, &oracle),
            &[&admin],
        ),
        LedgerError::SameKeyForTwoRoles,
    );
    // Caps and rates are bounded.
    expect_err(
        f.send(
            ix::configure_cluster(&admin.pubkey(), &cluster_id, u32::MAX, false),
            &[&admin],
        ),
        LedgerError::GpuCapTooHigh,
    );
    let mut greedy = rates();
    greedy[0] = 101;
    expect_err(
        f.send(
            ix::set_rates(&admin.pubkey(), greedy, NOW_PERIOD + TIMELOCK),
            &[&admin],
        ),
        LedgerError::RateTooHigh,
    );
    // An increase applies only after the timelock: the next period is too soon.
    greedy[0] = 100;
    expect_err(
        f.send(
            ix::set_rates(&admin.pubkey(), greedy, NOW_PERIOD + 1),
            &[&admin],
        ),
        LedgerError::IncreaseNotTimelocked,
    );
    // Lower the cap, then raise it: the raise waits; the oracle (even one the admin chose
    // with a second key) is held to the lower cap until then.
    f.send(
        ix::configure_cluster(&admin.pubkey(), &cluster_id, 1, false),
        &[&admin],
    )
    .unwrap();
    f.send(
        ix::configure_cluster(&admin.pubkey(), &cluster_id, GPU_CAP, false),
        &[&admin],
    )
    .unwrap();
    let c = f.cluster_state();
    assert_eq!(
        (c.gpu_cap, c.pending_gpu_cap, c.pending_cap_from),
        (1, GPU_CAP, NOW_PERIOD + TIMELOCK)
    );
    let before = f.snapshot();
    expect_err(
        f.record(entry(1, NOW_PERIOD - 1, PERIOD + 1, 0)),
        LedgerError::GpuCapExceeded,
    );
    assert_eq!(f.snapshot(), before);
    f.record(entry(1, NOW_PERIOD - 1, PERIOD, 0)).unwrap();
    f.set_time(((NOW_PERIOD + TIMELOCK) * PERIOD) as i64);
    f.record(entry(2, NOW_PERIOD - 1, 2 * PERIOD, 0)).unwrap();
    assert_eq!(f.balance(), 3 * PERIOD * RATE_0);
}

#[test]
fn proposals_expire_can_be_cancelled_and_die_with_the_admin() {
    let mut f = fixture();
    let admin = f.admin.insecure_clone();
    let planted = funded(&mut f);
    // A proposal planted by the current admin...
    f.send(
        ix::propose_authority(&admin.pubkey(), Authority::Oracle, &planted.pubkey()),
        &[&admin],
    )
    .unwrap();
    // ... is cleared when the admin hands over.
    let next = funded(&mut f);
    f.send(
        ix::propose_authority(&admin.pubkey(), Authority::Admin, &next.pubkey()),
        &[&admin],
    )
    .unwrap();
    f.send_as(
        ix::accept_authority(&next.pubkey(), Authority::Admin),
        &next,
    )
    .unwrap();
    assert_eq!(f.config().pending_oracle, Pubkey::default());
    expect_err(
        f.send_as(
            ix::accept_authority(&planted.pubkey(), Authority::Oracle),
            &planted,
        ),
        LedgerError::NoPendingAuthority,
    );
    // A cancelled proposal cannot be accepted.
    f.send(
        ix::propose_authority(&next.pubkey(), Authority::Oracle, &planted.pubkey()),
        &[&next],
    )
    .unwrap();
    f.send(
        ix::cancel_authority(&next.pubkey(), Authority::Oracle),
        &[&next],
    )
    .unwrap();
    expect_err(
        f.send_as(
            ix::accept_authority(&planted.pubkey(), Authority::Oracle),
            &planted,
        ),
        LedgerError::NoPendingAuthority,
    );
    // An expired one neither.
    f.send(
        ix::propose_authority(&next.pubkey(), Authority::Oracle, &planted.pubkey()),
        &[&next],
    )
    .unwrap();
    f.set_time(now() + state::PROPOSAL_TTL_SECONDS + 1);
    expect_err(
        f.send_as(
            ix::accept_authority(&planted.pubkey(), Authority::Oracle),
            &planted,
        ),
        LedgerError::ProposalExpired,
    );
    assert_eq!(f.config().oracle, f.oracle.pubkey());
    f.record(entry(1, NOW_PERIOD - 1, 10, 0)).unwrap();
}

#[test]
fn a_wrong_rate_can_always_be_corrected() {
    let mut f = fixture();
    let admin = f.admin.insecure_clone();
    // Four versions, each in force for a period, all inside the horizon.
    let mut t = NOW_PERIOD;
    for r in [2, 1, 1] {
        let mut v = rates();
        v[0] = r;
        f.send(ix::set_rates(&admin.pubkey(), v, t + 1), &[&admin])
            .unwrap();
        t += 1;
        f.set_time((t * PERIOD + 10) as i64);
    }
    assert_eq!(f.config().rate_version_count, 4);
    // A full history of versions in force still takes a new one: the two oldest merge into
    // their minimum, which never raises what a recordable period pays.
    let mut wrong = rates();
    wrong[0] = 9;
    let from = t + TIMELOCK;
    f.send(ix::set_rates(&admin.pubkey(), wrong, from), &[&admin])
        .unwrap();
    assert_eq!(f.config().rate_version_count, 4);
    assert_eq!(f.config().rate(0, NOW_PERIOD - 1), Some(2));
    // The newest future version is always replaceable, with a full history too.
    f.send(ix::set_rates(&admin.pubkey(), rates(), from), &[&admin])
        .unwrap();
    assert_eq!(f.config().rate(0, from), Some(RATE_0));
    // Once it is in force, the next correction lands as well.
    f.set_time((from * PERIOD + 10) as i64);
    let mut fix = rates();
    fix[1] = 1;
    f.send(ix::set_rates(&admin.pubkey(), fix, from + 1), &[&admin])
        .unwrap();
    let cfg = f.config();
    assert_eq!(cfg.rate(1, from + 1), Some(1));
    assert_eq!(cfg.rate(0, from), Some(RATE_0));
    assert_eq!(cfg.rate(0, NOW_PERIOD - 1), Some(1));
    f.record(entry(1, NOW_PERIOD - 1, 10, 0)).unwrap();
    assert_eq!(f.balance(), 10);
}

#[test]
fn a_pending_increase_can_be_lowered_at_its_date() {
    let mut f = fixture();
    let admin = f.admin.insecure_clone();
    let mut high = rates();
    high[0] = 50;
    let from = NOW_PERIOD + TIMELOCK;
    f.send(ix::set_rates(&admin.pubkey(), high, from), &[&admin])
        .unwrap();
    // A period later the pending increase is closer than the timelock, yet may be lowered.
    f.set_time(((NOW_PERIOD + 1) * PERIOD + 10) as i64);
    high[0] = 20;
    f.send(ix::set_rates(&admin.pubkey(), high, from), &[&admin])
        .unwrap();
    // But not raised again without a new timelock.
    high[0] = 60;
    expect_err(
        f.send(ix::set_rates(&admin.pubkey(), high, from), &[&admin]),
        LedgerError::IncreaseNotTimelocked,
    );
    assert_eq!(f.config().rate(0, from), Some(20));
}

#[test]
fn the_emergency_pause_stops_registration_and_payment() {
    let mut f = fixture();
    let admin = f.admin.insecure_clone();
    expect_err(
        f.send(ix::set_paused(&f.oracle.pubkey(), true), &[]),
        LedgerError::NotAdmin,
    );
    f.send(ix::set_paused(&admin.pubkey(), true), &[&admin])
        .unwrap();
    let before = f.snapshot();
    expect_err(
        f.record(entry(1, NOW_PERIOD - 1, 10, 0)),
        LedgerError::PoolPaused,
    );
    let owner = funded(&mut f);
    let registrar = f.registrar.insecure_clone();
    let mint = f.mint;
    let id = state::cluster_id("00000000-0000-4000-8000-00000000a0a0");
    let err =
        svmx::register_cluster(&mut f.svm, &owner, &owner, &registrar, &id, &mint).unwrap_err();
    assert_eq!(svmx::ledger_error(&err.err), Some(LedgerError::PoolPaused));
    assert_eq!(f.snapshot(), before);
    f.send(ix::set_paused(&admin.pubkey(), false), &[&admin])
        .unwrap();
    f.record(entry(1, NOW_PERIOD - 1, 10, 0)).unwrap();
}

/// SPL Token `SetAuthority` (tag 6) of a mint's mint authority.
fn set_mint_authority(mint: &Pubkey, current: &Pubkey, new: &Pubkey) -> Instruction {
    let mut data = vec![6u8, 0, 1];
    data.extend_from_slice(new.as_ref());
    Instruction {
        program_id: svmx::TOKEN_PROGRAM_ID,
        accounts: vec![
            AccountMeta::new(*mint, false),
            AccountMeta::new_readonly(*current, true),
        ],
        data,
    }
}

#[test]
fn initialize_pool_refuses_a_mint_with_supply() {
    let mut svm = svmx::svm_with_ledger();
    svmx::set_unix_time(&mut svm, now());
    let admin = Keypair::new();
    svmx::fund(&mut svm, &admin.pubkey()).unwrap();
    svmx::install_program_data(&mut svm, &admin.pubkey());
    // The deployer pre-mints to itself, then hands the mint to the program.
    let mint = Keypair::new();
    let lamports = svm.minimum_balance_for_rent_exemption(state::spl::MINT_LEN);
    let authority = state::find_mint_authority_address().0;
    svmx::send(
        &mut svm,
        &[
            ix::raw::system_create_account(
                &admin.pubkey(),
                &mint.pubkey(),
                lamports,
                state::spl::MINT_LEN as u64,
                &svmx::TOKEN_PROGRAM_ID,
            ),
            ix::raw::spl_initialize_mint2(&mint.pubkey(), &admin.pubkey(), None, 0),
        ],
        &admin,
        &[&mint],
    )
    .unwrap();
    let ata = svmx::create_ata(&mut svm, &admin, &admin.pubkey(), &mint.pubkey()).unwrap();
    svmx::send(
        &mut svm,
        &[
            ix::raw::spl_mint_to(&mint.pubkey(), &ata, &admin.pubkey(), 1_000_000),
            set_mint_authority(&mint.pubkey(), &admin.pubkey(), &authority),
        ],
        &admin,
        &[],
    )
    .unwrap();
    let p = params(&Keypair::new().pubkey(), &Keypair::new().pubkey());
    expect_err(
        svmx::send(
            &mut svm,
            &[ix::initialize_pool(&admin.pubkey(), &mint.pubkey(), &p)],
            &admin,
            &[],
        ),
        LedgerError::MintHasSupply,
    );
    assert!(svmx::read_config(&svm).is_none());
}

#[test]
fn usage_is_paid_to_the_wallet_that_owned_the_cluster_in_its_period() {
    let mut f = fixture();
    let buyer = funded(&mut f);
    let payer = f.oracle.insecure_clone();
    let mint = f.mint;
    svmx::create_ata(&mut f.svm, &payer, &buyer.pubkey(), &mint).unwrap();
    let cluster_id = f.cluster_id;
    let seller = f.owner.insecure_clone();
    // The owner hands over: from the next period on.
    svmx::send(
        &mut f.svm,
        &[ix::set_cluster_owner(
            &seller.pubkey(),
            &buyer.pubkey(),
            &cluster_id,
        )],
        &buyer,
        &[&seller],
    )
    .unwrap();
    let c = f.cluster_state();
    assert_eq!(
        (c.owner, c.previous_owner, c.owner_from),
        (buyer.pubkey(), seller.pubkey(), NOW_PERIOD + 1)
    );
    // Usage metered under the seller is not paid to the buyer...
    let to_buyer = |e| {
        ix::record_usage(
            &payer.pubkey(),
            &payer.pubkey(),
            &mint,
            &cluster_id,
            &buyer.pubkey(),
            e,
        )
    };
    let before = f.snapshot();
    expect_err(
        f.send(to_buyer(entry(1, NOW_PERIOD - 1, 10, 0)), &[]),
        LedgerError::InvalidOwnerTokenAccount,
    );
    // ... nor mixed with the buyer's in one batch.
    let mixed = ix::record_usage_batch(
        &payer.pubkey(),
        &payer.pubkey(),
        &mint,
        &cluster_id,
        &seller.pubkey(),
        &[
            entry(1, NOW_PERIOD - 1, 10, 0),
            entry(2, NOW_PERIOD + 1, 10, 0),
        ],
    );
    f.set_time(((NOW_PERIOD + 2) * PERIOD) as i64);
    expect_err(f.send(mixed, &[]), LedgerError::InvalidOwnerTokenAccount);
    assert_eq!(f.snapshot(), before);
    // It is paid to the seller; later periods to the buyer.
    f.record(entry(1, NOW_PERIOD - 1, 10, 0)).unwrap();
    f.send(to_buyer(entry(2, NOW_PERIOD + 1, 10, 0)), &[])
        .unwrap();
    assert_eq!(f.balance(), 10 * RATE_0);
    assert_eq!(
        svmx::wallet_token_balance(&f.svm, &buyer.pubkey(), &mint),
        10 * RATE_0
    );
    // A second hand-over while the seller's periods are still recordable is refused.
    let third = funded(&mut f);
    expect_err(
        svmx::send(
            &mut f.svm,
            &[ix::set_cluster_owner(
                &buyer.pubkey(),
                &third.pubkey(),
                &cluster_id,
            )],
            &third,
            &[&buyer],
        ),
        LedgerError::OwnerChangeTooSoon,
    );
}

#[test]
fn a_lost_key_recovery_waits_can_be_vetoed_and_dies_with_its_admin() {
    let mut f = fixture();
    let admin = f.admin.insecure_clone();
    let owner = f.owner.insecure_clone();
    let cluster_id = f.cluster_id;
    let heir = funded(&mut f);
    let payer = f.oracle.insecure_clone();
    let mint = f.mint;
    svmx::create_ata(&mut f.svm, &payer, &heir.pubkey(), &mint).unwrap();
    let propose = |f: &mut Fixture, admin: &Keypair| {
        f.send(
            ix::propose_owner_recovery(&admin.pubkey(), &cluster_id, &heir.pubkey()),
            &[admin],
        )
        .unwrap();
    };
    let execute = |f: &mut Fixture| {
        f.send_as(
            ix::execute_owner_recovery(&heir.pubkey(), &cluster_id),
            &heir,
        )
    };
    // Only the admin proposes.
    expect_err(
        f.send(
            ix::propose_owner_recovery(&f.registrar.pubkey(), &cluster_id, &heir.pubkey()),
            &[&f.registrar.insecure_clone()],
        ),
        LedgerError::NotAdmin,
    );
    propose(&mut f, &admin);
    // Not before the timelock.
    expect_err(execute(&mut f), LedgerError::RecoveryNotDue);
    // The owner (who still has its key) vetoes.
    f.send_as(
        ix::veto_owner_recovery(&owner.pubkey(), &cluster_id),
        &owner,
    )
    .unwrap();
    f.set_time(((NOW_PERIOD + TIMELOCK) * PERIOD) as i64);
    expect_err(execute(&mut f), LedgerError::NoRecoveryPending);
    // Proposed again and the admin rotates before it is executed: a former admin's
    // recovery is void.
    propose(&mut f, &admin);
    let next = funded(&mut f);
    f.send(
        ix::propose_authority(&admin.pubkey(), Authority::Admin, &next.pubkey()),
        &[&admin],
    )
    .unwrap();
    f.send_as(
        ix::accept_authority(&next.pubkey(), Authority::Admin),
        &next,
    )
    .unwrap();
    f.set_time(((NOW_PERIOD + 2 * TIMELOCK) * PERIOD) as i64);
    expect_err(execute(&mut f), LedgerError::NoRecoveryPending);
    // The current admin's recovery, after its timelock, moves every unpaid period.
    propose(&mut f, &next);
    f.set_time(((NOW_PERIOD + 3 * TIMELOCK) * PERIOD) as i64);
    execute(&mut f).unwrap();
    let record = ix::record_usage(
        &payer.pubkey(),
        &payer.pubkey(),
        &mint,
        &cluster_id,
        &heir.pubkey(),
        entry(1, NOW_PERIOD - 1, 10, 0),
    );
    f.send(record, &[]).unwrap();
    assert_eq!(
        svmx::wallet_token_balance(&f.svm, &heir.pubkey(), &mint),
        10 * RATE_0
    );
    assert_eq!(f.balance(), 0);
}
