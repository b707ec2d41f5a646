//! End-to-end behaviour of the ledger program in LiteSVM with the real SPL Token, Associated
//! Token Account and System programs. Every success asserts token balances and mint supply,
//! so a CPI that silently does nothing cannot pass.

mod common;

use common::*;
use gpupool_ledger_svm::{
    self as svmx,
    gpupool_ledger::{error::LedgerError, instruction as ix, state},
};
use solana_account::Account;
use solana_keypair::Keypair;
use solana_program::{instruction::AccountMeta, pubkey::Pubkey};
use solana_signer::Signer;

const RECEIPT_INDEX: usize = 9;
const CLUSTER_INDEX: usize = 3;
const CONFIG_INDEX: usize = 2;
const MINT_INDEX: usize = 4;
const ATA_INDEX: usize = 6;

#[test]
fn happy_path_record_usage() {
    let mut f = fixture();
    let e = entry(1, 42, 1_000, 1);
    let meta = f.record(e).expect("record usage");
    let token_invoke = format!("Program {} invoke [2]", svmx::TOKEN_PROGRAM_ID);
    assert!(
        meta.logs.iter().any(|l| l == &token_invoke),
        "SPL Token was not invoked:\n{}",
        meta.pretty_logs()
    );
    assert!(
        meta.logs
            .iter()
            .any(|l| l == "Program log: Instruction: RecordUsage"),
        "program log missing:\n{}",
        meta.pretty_logs()
    );

    assert_eq!(f.balance(), 1_000 * RATE_1);
    assert_eq!(f.supply(), 1_000 * RATE_1);
    let c = f.cluster_state();
    assert_eq!(c.owner, f.owner.pubkey());
    assert_eq!(c.total_gpu_seconds, 1_000);
    assert_eq!(c.total_tokens_minted, 1_000 * RATE_1);
    assert_eq!(c.receipt_count, 1);

    let r = svmx::read_receipt(&f.svm, &f.cluster_id, &e.job_uid, 42).expect("receipt");
    assert_eq!(r.cluster, f.cluster);
    assert_eq!(r.usage_id, state::usage_id(&f.cluster_id, &e.job_uid, 42));
    assert_eq!(
        (r.gpu_seconds, r.gpu_class, r.amount),
        (1_000, 1, 1_000 * RATE_1)
    );
    assert_eq!(r.job_uid, e.job_uid);
    let slot = f.svm.get_sysvar::<solana_program::clock::Clock>().slot;
    assert_eq!(r.slot, slot);

    // A second, different usage accumulates.
    f.record(entry(2, 42, 10, 0)).unwrap();
    assert_eq!(f.balance(), 1_000 * RATE_1 + 10 * RATE_0);
    assert_eq!(f.supply(), f.balance());
    assert_eq!(f.cluster_state().receipt_count, 2);
    assert_eq!(f.cluster_state().total_gpu_seconds, 1_010);
}

#[test]
fn duplicate_receipt_rejected_and_nothing_minted() {
    let mut f = fixture();
    let e = entry(1, 7, 500, 0);
    f.record(e).unwrap();
    let before = f.snapshot();
    assert_eq!(before.0, 500 * RATE_0);

    // The same settlement replayed (new transaction, same usage).
    expect_err(f.record(e), LedgerError::ReceiptAlreadyExists);
    // Same job and period with a different amount is still the same receipt.
    expect_err(
        f.record(entry(1, 7, 999, 1)),
        LedgerError::ReceiptAlreadyExists,
    );
    // Replayed inside a batch, alongside a new usage: the whole batch fails.
    let ix = f.batch_ix(&[entry(9, 7, 5, 0), e]);
    expect_err(f.send(ix, &[]), LedgerError::ReceiptAlreadyExists);
    // The same usage twice in one batch.
    let ix = f.batch_ix(&[entry(3, 7, 5, 0), entry(3, 7, 5, 0)]);
    expect_err(f.send(ix, &[]), LedgerError::ReceiptAlreadyExists);

    assert_eq!(f.snapshot(), before);
    assert!(svmx::read_receipt(&f.svm, &f.cluster_id, &[9; 16], 7).is_none());
}

#[test]
fn batch_happy_path() {
    let mut f = fixture();
    let entries: Vec<_> = (0..6u8)
        .map(|i| entry(i, 100, 60 * (u64::from(i) + 1), i % 2))
        .collect();
    let expected: u64 = entries
        .iter()
        .map(|e| e.gpu_seconds * if e.gpu_class == 0 { RATE_0 } else { RATE_1 })
        .sum();
    let ix = f.batch_ix(&entries);
    let meta = f.send(ix, &[]).unwrap();
    let token_invoke = format!("Program {} invoke [2]", svmx::TOKEN_PROGRAM_ID);
    let mint_tos = meta.logs.iter().filter(|l| *l == &token_invoke).count();
    assert_eq!(mint_tos, 1, "one MintTo per batch");

    assert_eq!(f.balance(), expected);
    assert_eq!(f.supply(), expected);
    let c = f.cluster_state();
    assert_eq!(c.receipt_count, 6);
    assert_eq!(
        c.total_gpu_seconds,
        entries.iter().map(|e| e.gpu_seconds).sum::<u64>()
    );
    assert_eq!(c.total_tokens_minted, expected);
    for e in &entries {
        let r = svmx::read_receipt(&f.svm, &f.cluster_id, &e.job_uid, e.period).unwrap();
        assert_eq!(r.gpu_seconds, e.gpu_seconds);
        assert_eq!(
            r.amount,
            e.gpu_seconds * if e.gpu_class == 0 { RATE_0 } else { RATE_1 }
        );
    }

    expect_err(
        {
            let ix = f.batch_ix(&[]);
            f.send(ix, &[])
        },
        LedgerError::EmptyBatch,
    );
}

#[test]
fn wrong_oracle_rejected() {
    let mut f = fixture();
    let before = f.snapshot();
    let impostor = Keypair::new();
    svmx::fund(&mut f.svm, &impostor.pubkey()).unwrap();
    let ix = ix::record_usage(
        &impostor.pubkey(),
        &impostor.pubkey(),
        &f.mint,
        &f.cluster_id,
        &f.owner.pubkey(),
        entry(1, 1, 100, 0),
    );
    let res = svmx::send(&mut f.svm, &[ix], &impostor, &[]);
    expect_err(res, LedgerError::NotOracle);

    // The right oracle key without its signature.
    let mut ix = f.record_ix(entry(1, 1, 100, 0));
    ix.accounts[0].is_signer = false;
    ix.accounts[1].pubkey = impostor.pubkey();
    let res = svmx::send(&mut f.svm, &[ix], &impostor, &[]);
    expect_err(res, LedgerError::MissingSignature);

    assert_eq!(f.snapshot(), before);
    assert!(svmx::read_receipt(&f.svm, &f.cluster_id, &[1; 16], 1).is_none());
}

#[test]
fn wrong_owner_token_account_rejected() {
    let mut f = fixture();
    let thief = Keypair::new();
    let payer = f.oracle.insecure_clone();
    let thief_ata = svmx::create_ata(&mut f.svm, &payer, &thief.pubkey(), &f.mint).unwrap();
    let before = f.snapshot();

    let mut ix = f.record_ix(entry(1, 1, 100, 0));
    ix.accounts[ATA_INDEX].pubkey = thief_ata;
    expect_err(f.send(ix, &[]), LedgerError::InvalidOwnerTokenAccount);

    // A non-associated token account of the right owner is refused too: a random address.
    let mut ix = f.record_ix(entry(1, 1, 100, 0));
    ix.accounts[ATA_INDEX].pubkey = Pubkey::new_unique();
    expect_err(f.send(ix, &[]), LedgerError::InvalidOwnerTokenAccount);

    assert_eq!(f.snapshot(), before);
    assert_eq!(svmx::token_balance(&f.svm, &thief_ata), Some(0));
}

#[test]
fn wrong_mint_rejected() {
    let mut f = fixture();
    // A second mint that the program's PDA could also mint, with an ATA for the owner.
    let other = Keypair::new();
    let payer = f.oracle.insecure_clone();
    svmx::create_pool_mint(&mut f.svm, &payer, &other, 6).unwrap();
    let owner = f.owner.pubkey();
    let other_ata = svmx::create_ata(&mut f.svm, &payer, &owner, &other.pubkey()).unwrap();
    let before = f.snapshot();

    let ix = ix::record_usage(
        &f.oracle.pubkey(),
        &f.oracle.pubkey(),
        &other.pubkey(),
        &f.cluster_id,
        &owner,
        entry(1, 1, 100, 0),
    );
    assert_eq!(ix.accounts[ATA_INDEX].pubkey, other_ata);
    expect_err(f.send(ix, &[]), LedgerError::MintMismatch);

    // Right mint, but the token account of the other mint.
    let mut ix = f.record_ix(entry(1, 1, 100, 0));
    ix.accounts[ATA_INDEX].pubkey = other_ata;
    expect_err(f.send(ix, &[]), LedgerError::InvalidOwnerTokenAccount);

    assert_eq!(f.snapshot(), before);
    assert_eq!(svmx::mint_supply(&f.svm, &other.pubkey()), Some(0));
    assert_eq!(svmx::token_balance(&f.svm, &other_ata), Some(0));
}

#[test]
fn forged_pdas_rejected() {
    let mut f = fixture();
    let before = f.snapshot();

    // Receipt address of another usage.
    let mut ix = f.record_ix(entry(1, 1, 100, 0));
    let other_id = state::usage_id(&f.cluster_id, &[1; 16], 2);
    ix.accounts[RECEIPT_INDEX].pubkey = state::find_receipt_address(&f.cluster, &other_id).0;
    expect_err(f.send(ix, &[]), LedgerError::InvalidReceiptAddress);

    // Receipt at an arbitrary (non-PDA) address.
    let mut ix = f.record_ix(entry(1, 1, 100, 0));
    ix.accounts[RECEIPT_INDEX].pubkey = Pubkey::new_unique();
    expect_err(f.send(ix, &[]), LedgerError::InvalidReceiptAddress);

    // A copy of the cluster account at a non-derived address, owned by the program.
    let real = f.svm.get_account(&f.cluster).unwrap();
    let fake_cluster = Pubkey::new_unique();
    f.svm.set_account(fake_cluster, real.clone()).unwrap();
    let mut ix = f.record_ix(entry(1, 1, 100, 0));
    ix.accounts[CLUSTER_INDEX].pubkey = fake_cluster;
    expect_err(f.send(ix, &[]), LedgerError::InvalidClusterAddress);

    // The same bytes under another owner program.
    let fake_cluster2 = Pubkey::new_unique();
    f.svm
        .set_account(
            fake_cluster2,
            Account {
                owner: Pubkey::new_unique(),
                ..real
            },
        )
        .unwrap();
    let mut ix = f.record_ix(entry(1, 1, 100, 0));
    ix.accounts[CLUSTER_INDEX].pubkey = fake_cluster2;
    expect_err(f.send(ix, &[]), LedgerError::IncorrectAccountOwner);

    // A forged config naming an attacker as oracle, at a non-derived address.
    let attacker = Keypair::new();
    svmx::fund(&mut f.svm, &attacker.pubkey()).unwrap();
    let config_key = state::find_config_address().0;
    let mut cfg_account = f.svm.get_account(&config_key).unwrap();
    let mut cfg = svmx::read_config(&f.svm).unwrap();
    cfg.oracle = attacker.pubkey();
    state::pack(&cfg, &mut cfg_account.data).unwrap();
    let fake_config = Pubkey::new_unique();
    f.svm.set_account(fake_config, cfg_account).unwrap();
    let mut ix = ix::record_usage(
        &attacker.pubkey(),
        &attacker.pubkey(),
        &f.mint,
        &f.cluster_id,
        &f.owner.pubkey(),
        entry(1, 1, 100, 0),
    );
    ix.accounts[CONFIG_INDEX].pubkey = fake_config;
    expect_err(
        svmx::send(&mut f.svm, &[ix], &attacker, &[]),
        LedgerError::InvalidConfigAddress,
    );

    // A mint authority that is not the PDA.
    let mut ix = f.record_ix(entry(1, 1, 100, 0));
    ix.accounts[5].pubkey = Pubkey::new_unique();
    expect_err(f.send(ix, &[]), LedgerError::InvalidMintAuthorityAddress);

    // A fake token program.
    let mut ix = f.record_ix(entry(1, 1, 100, 0));
    ix.accounts[7].pubkey =
        ix::raw::system_transfer(&Pubkey::default(), &Pubkey::default(), 0).program_id;
    expect_err(f.send(ix, &[]), LedgerError::InvalidTokenProgram);

    assert_eq!(f.snapshot(), before);
}

#[test]
fn overflow_rejected() {
    let mut f = fixture();
    let admin = f.admin.insecure_clone();
    let mut r = rates();
    r[2] = u64::MAX / 2;
    let p = NOW_PERIOD + TIMELOCK;
    f.send(ix::set_rates(&admin.pubkey(), r, p), &[&admin])
        .unwrap();
    let cluster_id = f.cluster_id;
    f.send(
        ix::configure_cluster(&admin.pubkey(), &cluster_id, u32::MAX, false),
        &[&admin],
    )
    .unwrap();
    // Period p (priced by the new rates) has ended; the cap increase is in force.
    f.set_time(((p + 1) * PERIOD) as i64);
    let before = f.snapshot();

    expect_err(f.record(entry(1, p, 3, 2)), LedgerError::AmountOverflow);
    // Each entry fits; their sum does not.
    let ix = f.batch_ix(&[entry(1, p, 2, 2), entry(2, p, 1, 2)]);
    expect_err(f.send(ix, &[]), LedgerError::AmountOverflow);

    assert_eq!(f.snapshot(), before);
}

#[test]
fn zero_usage_and_bad_classes_rejected() {
    let mut f = fixture();
    let before = f.snapshot();
    expect_err(f.record(entry(1, 1, 0, 0)), LedgerError::ZeroUsage);
    expect_err(
        f.record(entry(1, 1, 10, state::NUM_GPU_CLASSES as u8)),
        LedgerError::UnknownGpuClass,
    );
    expect_err(f.record(entry(1, 1, 10, 5)), LedgerError::GpuClassNotPriced);
    let ix = f.batch_ix(&[entry(1, 1, 10, 0), entry(2, 1, 0, 0)]);
    expect_err(f.send(ix, &[]), LedgerError::ZeroUsage);
    assert_eq!(f.snapshot(), before);
}

#[test]
fn set_rates_and_rotate_oracle() {
    let mut f = fixture();
    let admin = f.admin.insecure_clone();

    let mut r = rates();
    r[0] = 11;
    r[4] = 2;
    f.send(
        ix::set_rates(&admin.pubkey(), r, NOW_PERIOD + TIMELOCK),
        &[&admin],
    )
    .unwrap();
    let cfg = f.config();
    assert_eq!(cfg.rate_version_count, 2);
    assert_eq!(cfg.rate(0, NOW_PERIOD), Some(RATE_0));
    assert_eq!(cfg.rate(0, NOW_PERIOD + TIMELOCK), Some(11));
    // Usage of an ended period keeps the rate it was incurred under.
    f.record(entry(1, NOW_PERIOD - 1, 10, 0)).unwrap();
    assert_eq!(f.balance(), 10 * RATE_0);
    expect_err(
        f.record(entry(2, NOW_PERIOD - 1, 10, 4)),
        LedgerError::GpuClassNotPriced,
    );
    // Once the new period has ended, its usage is paid at the new rates.
    f.set_time(((NOW_PERIOD + TIMELOCK + 1) * PERIOD) as i64);
    f.record(entry(1, NOW_PERIOD + TIMELOCK, 10, 0)).unwrap();
    f.record(entry(2, NOW_PERIOD + TIMELOCK, 10, 4)).unwrap();
    assert_eq!(f.balance(), 10 * RATE_0 + 110 + 20);

    // Two-step oracle rotation.
    let new_oracle = Keypair::new();
    svmx::fund(&mut f.svm, &new_oracle.pubkey()).unwrap();
    f.send(
        ix::propose_authority(&admin.pubkey(), ix::Authority::Oracle, &new_oracle.pubkey()),
        &[&admin],
    )
    .unwrap();
    assert_eq!(f.config().pending_oracle, new_oracle.pubkey());
    assert_eq!(f.config().oracle, f.oracle.pubkey());
    f.send_as(
        ix::accept_authority(&new_oracle.pubkey(), ix::Authority::Oracle),
        &new_oracle,
    )
    .unwrap();
    let cfg = f.config();
    assert_eq!(cfg.oracle, new_oracle.pubkey());
    assert_eq!(cfg.pending_oracle, Pubkey::default());

    // The old oracle is now rejected.
    let before = f.snapshot();
    expect_err(
        f.record(entry(3, NOW_PERIOD, 10, 0)),
        LedgerError::NotOracle,
    );
    assert_eq!(f.snapshot(), before);

    // The new one works.
    f.oracle = new_oracle;
    f.record(entry(3, NOW_PERIOD, 10, 0)).unwrap();
    assert_eq!(f.balance(), 2 * 10 * RATE_0 + 110 + 20);
    assert_eq!(f.supply(), f.balance());
}

#[test]
fn non_admin_cannot_update() {
    let mut f = fixture();
    let before = svmx::read_config(&f.svm).unwrap();
    let mallory = Keypair::new();
    svmx::fund(&mut f.svm, &mallory.pubkey()).unwrap();
    let future = NOW_PERIOD + 1;

    let res = svmx::send(
        &mut f.svm,
        &[ix::set_rates(&mallory.pubkey(), [1_000_000; 8], future)],
        &mallory,
        &[],
    );
    expect_err(res, LedgerError::NotAdmin);
    for authority in [
        ix::Authority::Admin,
        ix::Authority::Oracle,
        ix::Authority::Registrar,
    ] {
        let res = svmx::send(
            &mut f.svm,
            &[ix::propose_authority(
                &mallory.pubkey(),
                authority,
                &mallory.pubkey(),
            )],
            &mallory,
            &[],
        );
        expect_err(res, LedgerError::NotAdmin);
        // Nobody proposed mallory: accepting fails.
        let res = svmx::send(
            &mut f.svm,
            &[ix::accept_authority(&mallory.pubkey(), authority)],
            &mallory,
            &[],
        );
        expect_err(res, LedgerError::NoPendingAuthority);
    }
    // The oracle is not an admin either.
    let oracle = f.oracle.pubkey();
    expect_err(
        f.send(ix::set_rates(&oracle, [1_000_000; 8], future), &[]),
        LedgerError::NotAdmin,
    );
    let cluster_id = f.cluster_id;
    expect_err(
        f.send(
            ix::configure_cluster(&oracle, &cluster_id, u32::MAX, false),
            &[],
        ),
        LedgerError::NotAdmin,
    );
    // The admin key without the admin's signature.
    let mut ix = ix::set_rates(&f.admin.pubkey(), [1_000_000; 8], future);
    ix.accounts[0].is_signer = false;
    let res = svmx::send(&mut f.svm, &[ix], &mallory, &[]);
    expect_err(res, LedgerError::MissingSignature);

    assert_eq!(svmx::read_config(&f.svm).unwrap(), before);
    assert_eq!(f.cluster_state().gpu_cap, GPU_CAP);
}

#[test]
fn initialize_and_register_checks() {
    let mut svm = svmx::svm_with_ledger();
    svmx::set_unix_time(&mut svm, now());
    let admin = Keypair::new();
    let registrar = Keypair::new();
    let oracle = Keypair::new();
    svmx::fund(&mut svm, &admin.pubkey()).unwrap();
    svmx::install_program_data(&mut svm, &admin.pubkey());
    let params = params(&oracle.pubkey(), &registrar.pubkey());

    // A mint whose authority is the admin, not the program PDA.
    let bad_mint = Keypair::new();
    let lamports = svm.minimum_balance_for_rent_exemption(state::spl::MINT_LEN);
    svmx::send(
        &mut svm,
        &[
            ix::raw::system_create_account(
                &admin.pubkey(),
                &bad_mint.pubkey(),
                lamports,
                state::spl::MINT_LEN as u64,
                &svmx::TOKEN_PROGRAM_ID,
            ),
            ix::raw::spl_initialize_mint2(&bad_mint.pubkey(), &admin.pubkey(), None, 0),
        ],
        &admin,
        &[&bad_mint],
    )
    .unwrap();
    let init = |mint: &Pubkey| ix::initialize_pool(&admin.pubkey(), mint, &params);
    expect_err(
        svmx::send(&mut svm, &[init(&bad_mint.pubkey())], &admin, &[]),
        LedgerError::MintAuthorityMismatch,
    );

    // A mint with a foreign freeze authority.
    let frozen = Keypair::new();
    let authority = state::find_mint_authority_address().0;
    svmx::send(
        &mut svm,
        &[
            ix::raw::system_create_account(
                &admin.pubkey(),
                &frozen.pubkey(),
                lamports,
                state::spl::MINT_LEN as u64,
                &svmx::TOKEN_PROGRAM_ID,
            ),
            ix::raw::spl_initialize_mint2(&frozen.pubkey(), &authority, Some(&admin.pubkey()), 0),
        ],
        &admin,
        &[&frozen],
    )
    .unwrap();
    expect_err(
        svmx::send(&mut svm, &[init(&frozen.pubkey())], &admin, &[]),
        LedgerError::ForeignFreezeAuthority,
    );

    // Bad parameters.
    let mint = Keypair::new();
    svmx::create_pool_mint(&mut svm, &admin, &mint, 6).unwrap();
    for (bad, want) in [
        (
            ix::PoolParams {
                oracle: Pubkey::default(),
                ..params
            },
            LedgerError::ZeroKey,
        ),
        (
            ix::PoolParams {
                registrar: Pubkey::default(),
                ..params
            },
            LedgerError::ZeroKey,
        ),
        (
            ix::PoolParams {
                period_seconds: 0,
                ..params
            },
            LedgerError::InvalidPeriodLength,
        ),
        (
            ix::PoolParams {
                horizon_periods: 0,
                ..params
            },
            LedgerError::InvalidHorizon,
        ),
        (
            ix::PoolParams {
                horizon_periods: state::MAX_HORIZON_PERIODS + 1,
                ..params
            },
            LedgerError::InvalidHorizon,
        ),
        (
            ix::PoolParams {
                oracle: admin.pubkey(),
                ..params
            },
            LedgerError::SameKeyForTwoRoles,
        ),
        (
            ix::PoolParams {
                registrar: params.oracle,
                ..params
            },
            LedgerError::SameKeyForTwoRoles,
        ),
        (
            ix::PoolParams {
                timelock_periods: state::MIN_TIMELOCK_PERIODS - 1,
                ..params
            },
            LedgerError::InvalidTimelock,
        ),
        (
            ix::PoolParams {
                max_rate: RATE_1 - 1,
                ..params
            },
            LedgerError::RateTooHigh,
        ),
        (
            ix::PoolParams {
                max_gpu_cap: 0,
                ..params
            },
            LedgerError::InvalidBounds,
        ),
        (
            ix::PoolParams {
                fee_bps: state::MAX_FEE_BPS + 1,
                treasury: Pubkey::new_unique(),
                ..params
            },
            LedgerError::InvalidFee,
        ),
        (
            ix::PoolParams {
                fee_bps: 10,
                ..params
            },
            LedgerError::InvalidFee,
        ),
    ] {
        expect_err(
            svmx::send(
                &mut svm,
                &[ix::initialize_pool(&admin.pubkey(), &mint.pubkey(), &bad)],
                &admin,
                &[],
            ),
            want,
        );
    }

    // Good mint: initializes once.
    svmx::send(&mut svm, &[init(&mint.pubkey())], &admin, &[]).unwrap();
    let cfg = svmx::read_config(&svm).unwrap();
    assert_eq!(
        (
            cfg.admin,
            cfg.mint,
            cfg.rates_for(0),
            cfg.period_seconds,
            cfg.horizon_periods,
            cfg.registrar
        ),
        (
            admin.pubkey(),
            mint.pubkey(),
            rates(),
            PERIOD,
            HORIZON,
            registrar.pubkey()
        )
    );
    expect_err(
        svmx::send(&mut svm, &[init(&mint.pubkey())], &admin, &[]),
        LedgerError::AlreadyInitialized,
    );

    // Register: owner and registrar must sign; once per cluster id.
    let owner = Keypair::new();
    let id = state::cluster_id("b6f0d1c2-0000-4000-8000-00000000000a");
    let mut unsigned =
        ix::register_cluster(&admin.pubkey(), &owner.pubkey(), &registrar.pubkey(), &id);
    unsigned.accounts[1] = AccountMeta::new_readonly(owner.pubkey(), false);
    expect_err(
        svmx::send(&mut svm, &[unsigned], &admin, &[&registrar]),
        LedgerError::MissingSignature,
    );
    svmx::register_cluster(&mut svm, &admin, &owner, &registrar, &id, &mint.pubkey()).unwrap();
    let c = svmx::read_cluster(&svm, &id).unwrap();
    assert_eq!(
        (
            c.cluster_id,
            c.owner,
            c.receipt_count,
            c.gpu_cap,
            c.disabled
        ),
        (id, owner.pubkey(), 0, 0, false)
    );
    let squatter = Keypair::new();
    expect_err(
        svmx::send(
            &mut svm,
            &[ix::register_cluster(
                &admin.pubkey(),
                &squatter.pubkey(),
                &registrar.pubkey(),
                &id,
            )],
            &admin,
            &[&squatter, &registrar],
        ),
        LedgerError::ClusterAlreadyRegistered,
    );
    // Forged cluster address for an id.
    let mut forged = ix::register_cluster(
        &admin.pubkey(),
        &owner.pubkey(),
        &registrar.pubkey(),
        &[7; 32],
    );
    forged.accounts[4].pubkey = Pubkey::new_unique();
    expect_err(
        svmx::send(&mut svm, &[forged], &admin, &[&owner, &registrar]),
        LedgerError::InvalidClusterAddress,
    );
}

#[test]
fn prefunded_receipt_address_still_records() {
    let mut f = fixture();
    let e = entry(5, 9, 100, 0);
    let id = state::usage_id(&f.cluster_id, &e.job_uid, e.period);
    let receipt = state::find_receipt_address(&f.cluster, &id).0;
    // Anyone can send lamports to a not-yet-created PDA; that must not block settlement.
    f.svm.airdrop(&receipt, 1_000_000).unwrap();
    f.record(e).unwrap();
    assert_eq!(f.balance(), 100 * RATE_0);
    let account = f.svm.get_account(&receipt).unwrap();
    assert_eq!(account.owner, svmx::PROGRAM_ID);
    assert_eq!(
        account.lamports,
        f.svm
            .minimum_balance_for_rent_exemption(state::UsageReceipt::LEN)
    );
    expect_err(f.record(e), LedgerError::ReceiptAlreadyExists);
}

#[test]
fn wrong_accounts_are_checked_not_trusted() {
    let mut f = fixture();
    let before = f.snapshot();
    // Mint passed read-only.
    let mut ix = f.record_ix(entry(1, 1, 10, 0));
    ix.accounts[MINT_INDEX].is_writable = false;
    expect_err(f.send(ix, &[]), LedgerError::AccountNotWritable);
    // Missing receipt account.
    let mut ix = f.record_ix(entry(1, 1, 10, 0));
    ix.accounts.pop();
    expect_err(f.send(ix, &[]), LedgerError::WrongAccountCount);
    // Garbage instruction data.
    let mut ix = f.record_ix(entry(1, 1, 10, 0));
    ix.data = vec![99, 1, 2];
    expect_err(f.send(ix, &[]), LedgerError::InvalidInstruction);
    assert_eq!(f.snapshot(), before);
}

#[test]
fn independent_svms_on_many_threads() {
    // The syscall stubs are process-global but find the running transaction through a
    // thread-local, so separate LiteSVMs on separate threads do not interfere.
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                let mut f = fixture();
                for i in 0..5u8 {
                    f.record(entry(i, t + 1, 10 + t, 0)).unwrap();
                }
                assert_eq!(f.balance(), 5 * (10 + t) * RATE_0);
                assert_eq!(f.supply(), f.balance());
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}
