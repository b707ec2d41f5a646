//! Tenant escrow: `OpenEscrow`, `Deposit`, `Withdraw`, `Reserve`, `Release` and the
//! escrow-funded `SettleUsage`.
//!
//! The tokens of a tenant live in the associated token account of (tenant PDA, pool mint).
//! Its authority is the tenant PDA, which only this program can sign for, so nothing but
//! these instructions moves them: the tenant wallet withdraws what is not reserved, the oracle
//! reserves (bounded by the unreserved balance) and settles (bounded by each job's
//! reservation), and nobody else, the admin included, has a path to them.

use super::{
    Recorded, UsageAccounts, add_entry, add_totals, check_system_program, check_usage,
    create_pda_account, is_uninitialized, load_config, mint_to_owner, record_entry,
    require_nonzero, require_not_paused, require_signer, require_writable,
};
use solana_program::{
    account_info::AccountInfo, entrypoint::ProgramResult, program::invoke_signed,
    program_error::ProgramError, pubkey::Pubkey,
};

use crate::{
    error::LedgerError,
    instruction::{UsageEntry, raw},
    state::{
        PoolConfig, RESERVATION_SEED, Reservation, TAG_RESERVATION, TAG_TENANT, TENANT_SEED,
        TenantAccount, escrow_address, find_reservation_address, find_tenant_address, pack, spl,
        unpack,
    },
    sysvars,
};

/// Opens a tenant's escrow, withdrawable by the signing wallet.
pub fn process_open_escrow(accounts: &[AccountInfo], tenant_id: [u8; 32]) -> ProgramResult {
    let [payer, wallet, config, tenant, escrow, system_program] = accounts else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    require_signer(payer)?;
    require_writable(payer)?;
    require_signer(wallet)?;
    require_nonzero(wallet.key)?;
    check_system_program(system_program)?;
    let config_state = load_config(config)?;
    require_writable(tenant)?;
    let (tenant_key, bump) = find_tenant_address(&tenant_id);
    if *tenant.key != tenant_key {
        return Err(LedgerError::InvalidTenantAddress.into());
    }
    if !is_uninitialized(tenant) {
        return Err(LedgerError::TenantAlreadyExists.into());
    }
    escrow_balance(escrow, &tenant_key, &config_state.mint)?;
    create_pda_account(
        payer,
        tenant,
        system_program,
        &sysvars::rent()?,
        TenantAccount::LEN,
        &[TENANT_SEED, &tenant_id, &[bump]],
    )?;
    let state = TenantAccount {
        tag: TAG_TENANT,
        tenant_id,
        wallet: *wallet.key,
        reserved: 0,
        deposited: 0,
        withdrawn: 0,
        spent: 0,
        bump,
    };
    pack(&state, &mut tenant.try_borrow_mut_data()?)
}

/// Anyone funds an escrow from a token account it is the authority of.
pub fn process_deposit(accounts: &[AccountInfo], amount: u64) -> ProgramResult {
    let [depositor, source, config, tenant, escrow, token_program] = accounts else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    require_signer(depositor)?;
    require_positive(amount)?;
    let config_state = load_config(config)?;
    check_token_program(token_program)?;
    let mut state = load_tenant(tenant)?;
    escrow_balance(escrow, tenant.key, &config_state.mint)?;
    require_writable(escrow)?;
    require_writable(source)?;
    invoke_signed(
        &raw::spl_transfer(source.key, escrow.key, depositor.key, amount),
        &[
            source.clone(),
            escrow.clone(),
            depositor.clone(),
            token_program.clone(),
        ],
        &[],
    )?;
    state.deposited = state
        .deposited
        .checked_add(amount)
        .ok_or(LedgerError::TotalsOverflow)?;
    pack(&state, &mut tenant.try_borrow_mut_data()?)
}

/// The tenant wallet withdraws what is not reserved.
pub fn process_withdraw(accounts: &[AccountInfo], amount: u64) -> ProgramResult {
    let [wallet, config, tenant, escrow, destination, token_program] = accounts else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    let config_state = load_config(config)?;
    check_token_program(token_program)?;
    let mut state = load_tenant(tenant)?;
    if *wallet.key != state.wallet {
        return Err(LedgerError::NotTenantWallet.into());
    }
    require_signer(wallet)?;
    require_positive(amount)?;
    let balance = escrow_balance(escrow, tenant.key, &config_state.mint)?;
    require_writable(escrow)?;
    require_writable(destination)?;
    if amount > unreserved(balance, &state)? {
        return Err(LedgerError::InsufficientEscrow.into());
    }
    invoke_signed(
        &raw::spl_transfer(escrow.key, destination.key, tenant.key, amount),
        &[
            escrow.clone(),
            destination.clone(),
            tenant.clone(),
            token_program.clone(),
        ],
        &[&[TENANT_SEED, &state.tenant_id, &[state.bump]]],
    )?;
    state.withdrawn = state
        .withdrawn
        .checked_add(amount)
        .ok_or(LedgerError::TotalsOverflow)?;
    pack(&state, &mut tenant.try_borrow_mut_data()?)
}

/// The oracle reserves unreserved escrow for a job.
pub fn process_reserve(accounts: &[AccountInfo], job_uid: [u8; 16], amount: u64) -> ProgramResult {
    let [
        oracle,
        payer,
        config,
        tenant,
        escrow,
        reservation,
        system_program,
    ] = accounts
    else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    let config_state = load_config(config)?;
    require_not_paused(&config_state)?;
    require_oracle(oracle, &config_state)?;
    require_signer(payer)?;
    require_writable(payer)?;
    check_system_program(system_program)?;
    require_positive(amount)?;
    let mut state = load_tenant(tenant)?;
    let balance = escrow_balance(escrow, tenant.key, &config_state.mint)?;
    if amount > unreserved(balance, &state)? {
        return Err(LedgerError::InsufficientEscrow.into());
    }
    let mut held = open_reservation(payer, tenant.key, reservation, system_program, job_uid)?;
    held.amount = held
        .amount
        .checked_add(amount)
        .ok_or(LedgerError::TotalsOverflow)?;
    state.reserved = state
        .reserved
        .checked_add(amount)
        .ok_or(LedgerError::TotalsOverflow)?;
    pack(&held, &mut reservation.try_borrow_mut_data()?)?;
    pack(&state, &mut tenant.try_borrow_mut_data()?)
}

/// The job's reservation, created (rent paid by `payer`) if it does not exist yet.
fn open_reservation<'a>(
    payer: &AccountInfo<'a>,
    tenant: &Pubkey,
    reservation: &AccountInfo<'a>,
    system_program: &AccountInfo<'a>,
    job_uid: [u8; 16],
) -> Result<Reservation, ProgramError> {
    let (key, bump) = find_reservation_address(tenant, &job_uid);
    if *reservation.key != key {
        return Err(LedgerError::InvalidReservationAddress.into());
    }
    require_writable(reservation)?;
    if !is_uninitialized(reservation) {
        return load_reservation(reservation, tenant, &job_uid);
    }
    create_pda_account(
        payer,
        reservation,
        system_program,
        &sysvars::rent()?,
        Reservation::LEN,
        &[RESERVATION_SEED, tenant.as_ref(), &job_uid, &[bump]],
    )?;
    Ok(Reservation {
        tag: TAG_RESERVATION,
        tenant: *tenant,
        job_uid,
        amount: 0,
        drawn: 0,
        rent_payer: *payer.key,
        bump,
    })
}

/// The oracle releases the remainder of a job's reservation and closes it.
pub fn process_release(accounts: &[AccountInfo], job_uid: [u8; 16]) -> ProgramResult {
    let [oracle, config, tenant, reservation, rent_destination] = accounts else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    let config_state = load_config(config)?;
    require_oracle(oracle, &config_state)?;
    let mut state = load_tenant(tenant)?;
    let held = load_reservation(reservation, tenant.key, &job_uid)?;
    require_writable(reservation)?;
    require_writable(rent_destination)?;
    if *rent_destination.key != held.rent_payer {
        return Err(LedgerError::InvalidRentDestination.into());
    }
    state.reserved = state
        .reserved
        .checked_sub(held.amount)
        .ok_or(LedgerError::InvalidAccountData)?;
    pack(&state, &mut tenant.try_borrow_mut_data()?)?;
    super::close_account(reservation, rent_destination)
}

/// Records usage paid from a tenant's escrow: each entry drawn from its job's reservation,
/// the fee transferred to the treasury, the rest burned from the escrow and minted to the
/// owner, all in this one instruction.
pub fn process_settle_usage(accounts: &[AccountInfo], entries: &[UsageEntry]) -> ProgramResult {
    if entries.is_empty() {
        return Err(LedgerError::EmptyBatch.into());
    }
    let (a, rest) = UsageAccounts::split(accounts)?;
    let [tenant, escrow, treasury, pairs @ ..] = rest else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    if pairs.len() != entries.len().saturating_mul(2) {
        return Err(LedgerError::WrongAccountCount.into());
    }
    let mut ctx = check_usage(&a, entries)?;
    let mut state = load_tenant(tenant)?;
    escrow_balance(escrow, tenant.key, &ctx.config.mint)?;
    require_writable(escrow)?;
    check_treasury(treasury, &ctx.config)?;
    let mut total = Recorded::default();
    for (entry, pair) in entries.iter().zip(pairs.chunks_exact(2)) {
        let [receipt, reservation] = pair else {
            return Err(LedgerError::WrongAccountCount.into());
        };
        let (amount, fee) = record_entry(&a, &ctx, entry, receipt, Some(tenant.key))?;
        draw_reservation(reservation, tenant.key, &entry.job_uid, amount)?;
        add_entry(&mut total, entry, amount, fee)?;
    }
    state.reserved = state
        .reserved
        .checked_sub(total.amount)
        .ok_or(LedgerError::ReservationExceeded)?;
    state.spent = state
        .spent
        .checked_add(total.amount)
        .ok_or(LedgerError::TotalsOverflow)?;
    pack(&state, &mut tenant.try_borrow_mut_data()?)?;
    add_totals(&a, &mut ctx, entries.len(), &total)?;
    pay_from_escrow(&a, &ctx.config, tenant, &state, escrow, treasury, &total)?;
    log!(
        "settled {} receipt(s): {} GPU-seconds, {} tokens from the escrow, fee {}",
        entries.len(),
        total.gpu_seconds,
        total.amount,
        total.fee
    );
    Ok(())
}

/// Takes `amount` from the job's reservation.
fn draw_reservation(
    reservation: &AccountInfo,
    tenant: &Pubkey,
    job_uid: &[u8; 16],
    amount: u64,
) -> ProgramResult {
    require_writable(reservation)?;
    let mut held = load_reservation(reservation, tenant, job_uid)?;
    held.amount = held
        .amount
        .checked_sub(amount)
        .ok_or(LedgerError::ReservationExceeded)?;
    held.drawn = held
        .drawn
        .checked_add(amount)
        .ok_or(LedgerError::TotalsOverflow)?;
    pack(&held, &mut reservation.try_borrow_mut_data()?)
}

/// Fee: escrow → treasury. The rest: burned from the escrow, minted to the owner.
fn pay_from_escrow<'a>(
    a: &UsageAccounts<'_, 'a>,
    config: &PoolConfig,
    tenant: &AccountInfo<'a>,
    state: &TenantAccount,
    escrow: &AccountInfo<'a>,
    treasury: &AccountInfo<'a>,
    total: &Recorded,
) -> ProgramResult {
    let seeds: &[&[u8]] = &[TENANT_SEED, &state.tenant_id, &[state.bump]];
    let to_owner = total
        .amount
        .checked_sub(total.fee)
        .ok_or(LedgerError::AmountOverflow)?;
    if total.fee > 0 {
        invoke_signed(
            &raw::spl_transfer(escrow.key, treasury.key, tenant.key, total.fee),
            &[
                escrow.clone(),
                treasury.clone(),
                tenant.clone(),
                a.token_program.clone(),
            ],
            &[seeds],
        )?;
    }
    if to_owner > 0 {
        invoke_signed(
            &raw::spl_burn(escrow.key, a.mint.key, tenant.key, to_owner),
            &[
                escrow.clone(),
                a.mint.clone(),
                tenant.clone(),
                a.token_program.clone(),
            ],
            &[seeds],
        )?;
    }
    mint_to_owner(a, config, to_owner)
}

/// With a fee, the treasury account must be the pool's (SPL Token checks its mint).
fn check_treasury(treasury: &AccountInfo, config: &PoolConfig) -> ProgramResult {
    if config.fee_bps == 0 {
        return Ok(());
    }
    if *treasury.key != config.treasury {
        return Err(LedgerError::InvalidTreasury.into());
    }
    require_writable(treasury)
}

/// The escrow token account of `tenant` for `mint`; returns its balance.
fn escrow_balance(
    escrow: &AccountInfo,
    tenant: &Pubkey,
    mint: &Pubkey,
) -> Result<u64, ProgramError> {
    if *escrow.key != escrow_address(tenant, mint) || *escrow.owner != crate::spl_token::ID {
        return Err(LedgerError::InvalidEscrowAccount.into());
    }
    let view = spl::unpack_token_account(&escrow.try_borrow_data()?)
        .ok_or(LedgerError::InvalidEscrowAccount)?;
    if view.mint != *mint || view.owner != *tenant {
        return Err(LedgerError::InvalidEscrowAccount.into());
    }
    Ok(view.amount)
}

fn unreserved(balance: u64, state: &TenantAccount) -> Result<u64, ProgramError> {
    balance
        .checked_sub(state.reserved)
        .ok_or_else(|| LedgerError::InsufficientEscrow.into())
}

/// Loads a writable tenant account: owner, layout and PDA address.
fn load_tenant(tenant: &AccountInfo) -> Result<TenantAccount, ProgramError> {
    if *tenant.owner != crate::ID {
        return Err(LedgerError::IncorrectAccountOwner.into());
    }
    require_writable(tenant)?;
    let state: TenantAccount = unpack(&tenant.try_borrow_data()?, TenantAccount::LEN, TAG_TENANT)?;
    let expected =
        Pubkey::create_program_address(&[TENANT_SEED, &state.tenant_id, &[state.bump]], &crate::ID)
            .map_err(|_| ProgramError::from(LedgerError::InvalidTenantAddress))?;
    if *tenant.key != expected {
        return Err(LedgerError::InvalidTenantAddress.into());
    }
    Ok(state)
}

/// Loads the reservation of `job_uid` under `tenant`.
fn load_reservation(
    reservation: &AccountInfo,
    tenant: &Pubkey,
    job_uid: &[u8; 16],
) -> Result<Reservation, ProgramError> {
    if *reservation.owner != crate::ID {
        return Err(LedgerError::InvalidReservationAddress.into());
    }
    let state: Reservation = unpack(
        &reservation.try_borrow_data()?,
        Reservation::LEN,
        TAG_RESERVATION,
    )?;
    let expected = Pubkey::create_program_address(
        &[RESERVATION_SEED, tenant.as_ref(), job_uid, &[state.bump]],
        &crate::ID,
    )
    .map_err(|_| ProgramError::from(LedgerError::InvalidReservationAddress))?;
    if *reservation.key != expected || state.tenant != *tenant || state.job_uid != *job_uid {
        return Err(LedgerError::InvalidReservationAddress.into());
    }
    Ok(state)
}

fn require_oracle(oracle: &AccountInfo, config: &PoolConfig) -> ProgramResult {
    if *oracle.key != config.oracle {
        return Err(LedgerError::NotOracle.into());
    }
    require_signer(oracle)
}

fn require_positive(amount: u64) -> ProgramResult {
    if amount == 0 {
        Err(LedgerError::ZeroAmount.into())
    } else {
        Ok(())
    }
}

fn check_token_program(account: &AccountInfo) -> ProgramResult {
    if *account.key == crate::spl_token::ID {
        Ok(())
    } else {
        Err(LedgerError::InvalidTokenProgram.into())
    }
}
