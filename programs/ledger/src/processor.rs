//! Instruction processing. One `process_*` per instruction; every account is checked for
//! address (PDA derivation or well-known id), owner program, signer and writability before
//! it is used. Clock and rent come from the sysvar syscalls ([`crate::sysvars`]).

use borsh::BorshDeserialize;
use solana_program::{
    account_info::AccountInfo, entrypoint::ProgramResult, program::invoke_signed,
    program_error::ProgramError, pubkey::Pubkey,
};
use solana_sysvar::{clock::Clock, rent::Rent};

use crate::{
    error::LedgerError,
    instruction::{Authority, LedgerInstruction, PoolParams, UsageEntry, raw},
    state::{
        CLUSTER_SEED, CONFIG_SEED, ClusterAccount, MAX_FEE_BPS, MAX_HORIZON_PERIODS,
        MAX_RATE_VERSIONS, MIN_TIMELOCK_PERIODS, MINT_AUTHORITY_SEED, NUM_GPU_CLASSES,
        PROPOSAL_TTL_SECONDS, PoolConfig, RECEIPT_SEED, RateVersion, TAG_CONFIG, TAG_RECEIPT,
        UsageReceipt, find_cluster_address, find_config_address, find_mint_authority_address,
        find_receipt_address, get_associated_token_address, pack, pack_cluster,
        program_data_address, program_data_upgrade_authority, spl, tally, unpack, unpack_cluster,
        usage_id,
    },
    sysvars,
};

mod escrow;

/// Program entry: decodes the instruction and dispatches.
pub fn process_instruction(
    program_id: &Pubkey,
    accounts: &[AccountInfo],
    instruction_data: &[u8],
) -> ProgramResult {
    if *program_id != crate::ID {
        return Err(LedgerError::WrongProgramId.into());
    }
    let instruction = LedgerInstruction::try_from_slice(instruction_data)
        .map_err(|_| ProgramError::from(LedgerError::InvalidInstruction))?;
    log!("Instruction: {}", instruction.name());
    match instruction {
        LedgerInstruction::InitializePool { params } => process_initialize_pool(accounts, &params),
        LedgerInstruction::RegisterCluster { cluster_id } => {
            process_register_cluster(accounts, cluster_id)
        }
        LedgerInstruction::RecordUsage { entry } => process_record_usage(accounts, &[entry]),
        LedgerInstruction::RecordUsageBatch { entries } => process_record_usage(accounts, &entries),
        LedgerInstruction::SetRates {
            rates,
            effective_from_period,
        } => process_set_rates(accounts, rates, effective_from_period),
        LedgerInstruction::ProposeAuthority { authority, new_key } => {
            process_propose_authority(accounts, authority, new_key)
        }
        LedgerInstruction::AcceptAuthority { authority } => {
            process_accept_authority(accounts, authority)
        }
        LedgerInstruction::SetClusterOwner => process_set_cluster_owner(accounts),
        LedgerInstruction::ConfigureCluster { gpu_cap, disabled } => {
            process_configure_cluster(accounts, gpu_cap, disabled)
        }
        LedgerInstruction::CloseReceipt => process_close_receipt(accounts),
        LedgerInstruction::CancelAuthority { authority } => {
            process_cancel_authority(accounts, authority)
        }
        LedgerInstruction::SetPaused { paused } => process_set_paused(accounts, paused),
        LedgerInstruction::ProposeOwnerRecovery { new_owner } => {
            process_propose_owner_recovery(accounts, new_owner)
        }
        LedgerInstruction::VetoOwnerRecovery => process_veto_owner_recovery(accounts),
        LedgerInstruction::ExecuteOwnerRecovery => process_execute_owner_recovery(accounts),
        LedgerInstruction::OpenEscrow { tenant_id } => {
            escrow::process_open_escrow(accounts, tenant_id)
        }
        LedgerInstruction::Deposit { amount } => escrow::process_deposit(accounts, amount),
        LedgerInstruction::Withdraw { amount } => escrow::process_withdraw(accounts, amount),
        LedgerInstruction::Reserve { job_uid, amount } => {
            escrow::process_reserve(accounts, job_uid, amount)
        }
        LedgerInstruction::Release { job_uid } => escrow::process_release(accounts, job_uid),
        LedgerInstruction::SettleUsage { entries } => {
            escrow::process_settle_usage(accounts, &entries)
        }
    }
}

/// Creates the pool config (upgrade authority only): checks the deployer, the parameters and
/// the mint, then writes the config.
pub fn process_initialize_pool(accounts: &[AccountInfo], params: &PoolParams) -> ProgramResult {
    let [
        admin,
        config,
        mint,
        mint_authority,
        system_program,
        program_data,
    ] = accounts
    else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    require_signer(admin)?;
    require_writable(admin)?;
    require_writable(config)?;
    check_system_program(system_program)?;
    check_upgrade_authority(admin, program_data)?;
    check_pool_params(admin.key, params)?;
    let (config_key, bump) = find_config_address();
    if *config.key != config_key {
        return Err(LedgerError::InvalidConfigAddress.into());
    }
    if !is_uninitialized(config) {
        return Err(LedgerError::AlreadyInitialized.into());
    }
    let mint_authority_bump = check_new_pool_mint(mint, mint_authority)?;
    let rent = sysvars::rent()?;
    create_pda_account(
        admin,
        config,
        system_program,
        &rent,
        PoolConfig::LEN,
        &[CONFIG_SEED, &[bump]],
    )?;
    let state = new_config(admin.key, mint.key, params, bump, mint_authority_bump);
    pack(&state, &mut config.try_borrow_mut_data()?)
}

/// Only the program's upgrade authority: the upgradeable loader creates the ProgramData
/// account at this address on deployment, and only it can own it.
fn check_upgrade_authority(admin: &AccountInfo, program_data: &AccountInfo) -> ProgramResult {
    if *program_data.key != program_data_address(&crate::ID)
        || *program_data.owner != crate::bpf_loader_upgradeable::ID
    {
        return Err(LedgerError::InvalidProgramData.into());
    }
    let authority = program_data_upgrade_authority(&program_data.try_borrow_data()?)
        .ok_or(LedgerError::InvalidProgramData)?;
    if authority != *admin.key {
        return Err(LedgerError::NotUpgradeAuthority.into());
    }
    Ok(())
}

/// Keys distinct and non-zero, period, horizon, timelock, bounds and fee in range.
fn check_pool_params(admin: &Pubkey, params: &PoolParams) -> ProgramResult {
    require_nonzero(&params.oracle)?;
    require_nonzero(&params.registrar)?;
    if params.oracle == *admin || params.registrar == *admin || params.oracle == params.registrar {
        return Err(LedgerError::SameKeyForTwoRoles.into());
    }
    if params.period_seconds == 0 || i64::try_from(params.period_seconds).is_err() {
        return Err(LedgerError::InvalidPeriodLength.into());
    }
    if params.horizon_periods == 0 || params.horizon_periods > MAX_HORIZON_PERIODS {
        return Err(LedgerError::InvalidHorizon.into());
    }
    if params.timelock_periods < MIN_TIMELOCK_PERIODS
        || params.timelock_periods > MAX_HORIZON_PERIODS
    {
        return Err(LedgerError::InvalidTimelock.into());
    }
    if params.max_rate == 0 || params.max_gpu_cap == 0 {
        return Err(LedgerError::InvalidBounds.into());
    }
    if params.rates.iter().any(|r| *r > params.max_rate) {
        return Err(LedgerError::RateTooHigh.into());
    }
    if params.fee_bps > MAX_FEE_BPS || (params.fee_bps > 0 && params.treasury == Pubkey::default())
    {
        return Err(LedgerError::InvalidFee.into());
    }
    Ok(())
}

/// The mint is an initialized SPL Token mint with no supply, minted only by the program's
/// mint-authority PDA and frozen by nobody else. Returns the mint-authority bump.
fn check_new_pool_mint(
    mint: &AccountInfo,
    mint_authority: &AccountInfo,
) -> Result<u8, ProgramError> {
    let (authority_key, bump) = find_mint_authority_address();
    if *mint_authority.key != authority_key {
        return Err(LedgerError::InvalidMintAuthorityAddress.into());
    }
    if *mint.owner != crate::spl_token::ID {
        return Err(LedgerError::InvalidMint.into());
    }
    let view = spl::unpack_mint(&mint.try_borrow_data()?).ok_or(LedgerError::InvalidMint)?;
    if !view.is_initialized {
        return Err(LedgerError::InvalidMint.into());
    }
    if view.mint_authority != Some(authority_key) {
        return Err(LedgerError::MintAuthorityMismatch.into());
    }
    if view.freeze_authority.is_some() && view.freeze_authority != Some(authority_key) {
        return Err(LedgerError::ForeignFreezeAuthority.into());
    }
    if view.supply != 0 {
        return Err(LedgerError::MintHasSupply.into());
    }
    Ok(bump)
}

fn new_config(
    admin: &Pubkey,
    mint: &Pubkey,
    params: &PoolParams,
    bump: u8,
    mint_authority_bump: u8,
) -> PoolConfig {
    let mut rate_versions = [RateVersion::default(); MAX_RATE_VERSIONS];
    if let Some(first) = rate_versions.first_mut() {
        *first = RateVersion {
            effective_from: 0,
            rates: params.rates,
        };
    }
    PoolConfig {
        tag: TAG_CONFIG,
        admin: *admin,
        pending_admin: Pubkey::default(),
        oracle: params.oracle,
        pending_oracle: Pubkey::default(),
        registrar: params.registrar,
        pending_registrar: Pubkey::default(),
        mint: *mint,
        period_seconds: params.period_seconds,
        horizon_periods: params.horizon_periods,
        rate_version_count: 1,
        rate_versions,
        bump,
        mint_authority_bump,
        pending_admin_at: 0,
        pending_oracle_at: 0,
        pending_registrar_at: 0,
        paused: false,
        max_rate: params.max_rate,
        max_gpu_cap: params.max_gpu_cap,
        timelock_periods: params.timelock_periods,
        fee_bps: params.fee_bps,
        treasury: params.treasury,
    }
}

/// Creates a cluster account for the signing owner; the registrar co-signs. Nothing is
/// payable until the admin approves it (`ConfigureCluster`).
pub fn process_register_cluster(accounts: &[AccountInfo], cluster_id: [u8; 32]) -> ProgramResult {
    let [payer, owner, registrar, config, cluster, system_program] = accounts else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    require_signer(payer)?;
    require_writable(payer)?;
    require_signer(owner)?;
    require_nonzero(owner.key)?;
    require_writable(cluster)?;
    check_system_program(system_program)?;
    let config_state = load_config(config)?;
    require_not_paused(&config_state)?;
    if *registrar.key != config_state.registrar {
        return Err(LedgerError::NotRegistrar.into());
    }
    require_signer(registrar)?;

    let (cluster_key, bump) = find_cluster_address(&cluster_id);
    if *cluster.key != cluster_key {
        return Err(LedgerError::InvalidClusterAddress.into());
    }
    if !is_uninitialized(cluster) {
        return Err(LedgerError::ClusterAlreadyRegistered.into());
    }
    let rent = sysvars::rent()?;
    create_pda_account(
        payer,
        cluster,
        system_program,
        &rent,
        ClusterAccount::LEN,
        &[CLUSTER_SEED, &cluster_id, &[bump]],
    )?;
    let state = ClusterAccount::new(cluster_id, *owner.key, bump);
    pack_cluster(&state, &mut cluster.try_borrow_mut_data()?)
}

/// Schedules a rate version from a future period on: bounded, increases timelocked, the
/// newest future version replaced.
pub fn process_set_rates(
    accounts: &[AccountInfo],
    rates: [u64; NUM_GPU_CLASSES],
    effective_from: u64,
) -> ProgramResult {
    let [admin, config] = accounts else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    let mut state = load_config_as_admin(admin, config)?;
    require_writable(config)?;
    let current = state.period_at(sysvars::now()?);
    if effective_from <= current {
        return Err(LedgerError::RateNotInFuture.into());
    }
    let mut count = usize::from(state.rate_version_count).clamp(1, MAX_RATE_VERSIONS);
    let last = state
        .rate_versions
        .get(count.saturating_sub(1))
        .copied()
        .unwrap_or_default();
    // The newest version has not taken effect yet: replace it (no usage was priced by it).
    let replaced = (last.effective_from > current && count > 1).then_some(last);
    let version = RateVersion {
        effective_from,
        rates,
    };
    check_rate_increase(&state, current, &version, replaced.as_ref())?;
    if replaced.is_some() {
        count = count.saturating_sub(1);
    }
    if count == MAX_RATE_VERSIONS {
        make_room_for_a_version(&mut state, current);
        count = count.saturating_sub(1);
    }
    let slot = state
        .rate_versions
        .get_mut(count)
        .ok_or(LedgerError::RateHistoryFull)?;
    *slot = version;
    state.rate_version_count = u8::try_from(count.saturating_add(1))
        .map_err(|_| ProgramError::from(LedgerError::RateHistoryFull))?;
    for v in state
        .rate_versions
        .iter_mut()
        .skip(usize::from(state.rate_version_count))
    {
        *v = RateVersion::default();
    }
    pack(&state, &mut config.try_borrow_mut_data()?)
}

/// Frees the oldest slot of a full rate history, so a correction is always possible. The
/// oldest version is dropped when no recordable period can still use it (the next version
/// starts at or before the oldest period inside the horizon); otherwise the two oldest
/// versions merge into their element-wise minimum, which never raises what a period pays.
fn make_room_for_a_version(state: &mut PoolConfig, current: u64) {
    let horizon = state.horizon_periods;
    let versions = &mut state.rate_versions;
    let second = versions.get(1).copied().unwrap_or_default();
    if second.effective_from.saturating_add(horizon) > current {
        if let Some(first) = versions.first_mut() {
            for (a, b) in first.rates.iter_mut().zip(second.rates) {
                *a = (*a).min(b);
            }
        }
        if let Some(rest) = versions.get_mut(1..) {
            rest.rotate_left(1);
        }
    } else {
        versions.rotate_left(1);
    }
}

/// Every rate is at most `max_rate`; a rate above the one in force applies no earlier than
/// `timelock_periods` ahead, unless it does not exceed the pending version it replaces and
/// keeps (or postpones) that version's start.
fn check_rate_increase(
    state: &PoolConfig,
    current: u64,
    version: &RateVersion,
    replaced: Option<&RateVersion>,
) -> ProgramResult {
    let in_force = state.rates_for(current);
    let earliest_increase = current
        .checked_add(state.timelock_periods)
        .ok_or(LedgerError::IncreaseNotTimelocked)?;
    for ((new, old), class) in version.rates.iter().zip(in_force).zip(0usize..) {
        if *new > state.max_rate {
            return Err(LedgerError::RateTooHigh.into());
        }
        if *new <= old {
            continue;
        }
        let announced = replaced.is_some_and(|p| {
            p.rates.get(class).is_some_and(|r| new <= r)
                && version.effective_from >= p.effective_from
        });
        if !announced && version.effective_from < earliest_increase {
            return Err(LedgerError::IncreaseNotTimelocked.into());
        }
    }
    Ok(())
}

/// Records a proposed authority change. The new key must not hold, or be proposed for,
/// another role.
pub fn process_propose_authority(
    accounts: &[AccountInfo],
    authority: Authority,
    new_key: Pubkey,
) -> ProgramResult {
    let [admin, config] = accounts else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    let mut state = load_config_as_admin(admin, config)?;
    require_writable(config)?;
    require_nonzero(&new_key)?;
    if other_role_keys(&state, authority).contains(&new_key) {
        return Err(LedgerError::SameKeyForTwoRoles.into());
    }
    let now = sysvars::now()?;
    let (pending, at) = pending_slot(&mut state, authority);
    *pending = new_key;
    *at = now;
    pack(&state, &mut config.try_borrow_mut_data()?)
}

/// The pending key takes over, before its proposal expires. A new admin clears every other
/// pending proposal (nothing a former admin planted survives the hand-over).
pub fn process_accept_authority(accounts: &[AccountInfo], authority: Authority) -> ProgramResult {
    let [new_key, config] = accounts else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    let mut state = load_config(config)?;
    require_writable(config)?;
    let now = sysvars::now()?;
    let [other, _, another, _] = other_role_keys(&state, authority);
    let (pending, at) = pending_slot(&mut state, authority);
    if *pending == Pubkey::default() || *pending != *new_key.key {
        return Err(LedgerError::NoPendingAuthority.into());
    }
    if now > at.saturating_add(PROPOSAL_TTL_SECONDS) {
        return Err(LedgerError::ProposalExpired.into());
    }
    if *new_key.key == other || *new_key.key == another {
        return Err(LedgerError::SameKeyForTwoRoles.into());
    }
    require_signer(new_key)?;
    *pending = Pubkey::default();
    *at = 0;
    match authority {
        Authority::Admin => {
            state.admin = *new_key.key;
            for role in [Authority::Oracle, Authority::Registrar] {
                let (p, a) = pending_slot(&mut state, role);
                *p = Pubkey::default();
                *a = 0;
            }
        }
        Authority::Oracle => state.oracle = *new_key.key,
        Authority::Registrar => state.registrar = *new_key.key,
    }
    pack(&state, &mut config.try_borrow_mut_data()?)
}

/// Withdraws a pending authority proposal (admin).
pub fn process_cancel_authority(accounts: &[AccountInfo], authority: Authority) -> ProgramResult {
    let [admin, config] = accounts else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    let mut state = load_config_as_admin(admin, config)?;
    require_writable(config)?;
    let (pending, at) = pending_slot(&mut state, authority);
    if *pending == Pubkey::default() {
        return Err(LedgerError::NoPendingAuthority.into());
    }
    *pending = Pubkey::default();
    *at = 0;
    pack(&state, &mut config.try_borrow_mut_data()?)
}

/// Pauses or resumes the pool (admin).
pub fn process_set_paused(accounts: &[AccountInfo], paused: bool) -> ProgramResult {
    let [admin, config] = accounts else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    let mut state = load_config_as_admin(admin, config)?;
    require_writable(config)?;
    state.paused = paused;
    pack(&state, &mut config.try_borrow_mut_data()?)
}

/// The keys (current and pending) of the two roles other than `authority`.
fn other_role_keys(state: &PoolConfig, authority: Authority) -> [Pubkey; 4] {
    let (a, b) = match authority {
        Authority::Admin => (
            (state.oracle, state.pending_oracle),
            (state.registrar, state.pending_registrar),
        ),
        Authority::Oracle => (
            (state.admin, state.pending_admin),
            (state.registrar, state.pending_registrar),
        ),
        Authority::Registrar => (
            (state.admin, state.pending_admin),
            (state.oracle, state.pending_oracle),
        ),
    };
    [a.0, a.1, b.0, b.1]
}

fn pending_slot(state: &mut PoolConfig, authority: Authority) -> (&mut Pubkey, &mut i64) {
    match authority {
        Authority::Admin => (&mut state.pending_admin, &mut state.pending_admin_at),
        Authority::Oracle => (&mut state.pending_oracle, &mut state.pending_oracle_at),
        Authority::Registrar => (
            &mut state.pending_registrar,
            &mut state.pending_registrar_at,
        ),
    }
}

/// Hands a cluster over from the next period on: the current owner and the new one sign.
pub fn process_set_cluster_owner(accounts: &[AccountInfo]) -> ProgramResult {
    let [current_owner, new_owner, config, cluster] = accounts else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    let config_state = load_config(config)?;
    require_writable(cluster)?;
    let mut state = load_cluster(cluster)?;
    require_cluster_owner(current_owner, &state)?;
    require_signer(new_owner)?;
    require_nonzero(new_owner.key)?;
    let now = sysvars::now()?;
    // Periods of the owner before the current one must all be past the horizon, or the
    // one-step owner history would pay them to the current owner.
    if state.owner_from > 0
        && config_state.within_horizon(state.owner_from.saturating_sub(1), now)
        && state.previous_owner != state.owner
    {
        return Err(LedgerError::OwnerChangeTooSoon.into());
    }
    state.previous_owner = state.owner;
    state.owner = *new_owner.key;
    state.owner_from = config_state
        .period_at(now)
        .checked_add(1)
        .ok_or(LedgerError::TotalsOverflow)?;
    clear_recovery(&mut state);
    pack_cluster(&state, &mut cluster.try_borrow_mut_data()?)
}

/// The admin proposes a new owner for a cluster whose owner lost its key; executable after
/// the timelock unless the current owner vetoes it.
pub fn process_propose_owner_recovery(
    accounts: &[AccountInfo],
    new_owner: Pubkey,
) -> ProgramResult {
    let [admin, config, cluster] = accounts else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    let config_state = load_config_as_admin(admin, config)?;
    require_nonzero(&new_owner)?;
    require_writable(cluster)?;
    let mut state = load_cluster(cluster)?;
    let current = config_state.period_at(sysvars::now()?);
    state.recovery_owner = new_owner;
    state.recovery_at = current
        .checked_add(config_state.timelock_periods)
        .ok_or(LedgerError::TotalsOverflow)?;
    state.recovery_admin = *admin.key;
    pack_cluster(&state, &mut cluster.try_borrow_mut_data()?)
}

/// The current owner vetoes a pending recovery.
pub fn process_veto_owner_recovery(accounts: &[AccountInfo]) -> ProgramResult {
    let [owner, config, cluster] = accounts else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    load_config(config)?;
    require_writable(cluster)?;
    let mut state = load_cluster(cluster)?;
    require_cluster_owner(owner, &state)?;
    if state.recovery_owner == Pubkey::default() {
        return Err(LedgerError::NoRecoveryPending.into());
    }
    clear_recovery(&mut state);
    pack_cluster(&state, &mut cluster.try_borrow_mut_data()?)
}

/// The recovered owner takes over every period not yet paid, once the timelock has passed,
/// if the admin that proposed it is still the admin.
pub fn process_execute_owner_recovery(accounts: &[AccountInfo]) -> ProgramResult {
    let [new_owner, config, cluster] = accounts else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    let config_state = load_config(config)?;
    require_writable(cluster)?;
    let mut state = load_cluster(cluster)?;
    if state.recovery_owner == Pubkey::default()
        || state.recovery_owner != *new_owner.key
        || state.recovery_admin != config_state.admin
    {
        return Err(LedgerError::NoRecoveryPending.into());
    }
    require_signer(new_owner)?;
    if config_state.period_at(sysvars::now()?) < state.recovery_at {
        return Err(LedgerError::RecoveryNotDue.into());
    }
    state.owner = *new_owner.key;
    state.previous_owner = *new_owner.key;
    state.owner_from = 0;
    clear_recovery(&mut state);
    pack_cluster(&state, &mut cluster.try_borrow_mut_data()?)
}

fn clear_recovery(state: &mut ClusterAccount) {
    state.recovery_owner = Pubkey::default();
    state.recovery_at = 0;
    state.recovery_admin = Pubkey::default();
}

/// Sets a cluster's GPU cap and disabled flag (admin): the first cap approves the cluster
/// at once, a decrease applies at once, an increase after the timelock.
pub fn process_configure_cluster(
    accounts: &[AccountInfo],
    gpu_cap: u32,
    disabled: bool,
) -> ProgramResult {
    let [admin, config, cluster] = accounts else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    let config_state = load_config_as_admin(admin, config)?;
    require_writable(cluster)?;
    if gpu_cap > config_state.max_gpu_cap {
        return Err(LedgerError::GpuCapTooHigh.into());
    }
    let mut state = load_cluster(cluster)?;
    let current = config_state.period_at(sysvars::now()?);
    if !state.approved {
        state.approved = gpu_cap > 0;
        state.gpu_cap = gpu_cap;
    } else {
        // An increase whose period has come is in force now.
        state.gpu_cap = state.cap_at(current);
        state.pending_gpu_cap = 0;
        state.pending_cap_from = 0;
        if gpu_cap <= state.gpu_cap {
            state.gpu_cap = gpu_cap;
        } else {
            state.pending_gpu_cap = gpu_cap;
            state.pending_cap_from = current
                .checked_add(config_state.timelock_periods)
                .ok_or(LedgerError::TotalsOverflow)?;
        }
    }
    state.disabled = disabled;
    pack_cluster(&state, &mut cluster.try_borrow_mut_data()?)
}

/// Closes a receipt older than the horizon and returns its rent to its payer.
pub fn process_close_receipt(accounts: &[AccountInfo]) -> ProgramResult {
    let [receipt, rent_destination, config] = accounts else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    let config_state = load_config(config)?;
    require_writable(receipt)?;
    require_writable(rent_destination)?;
    if *receipt.owner != crate::ID {
        return Err(LedgerError::IncorrectAccountOwner.into());
    }
    let state: UsageReceipt = unpack(&receipt.try_borrow_data()?, UsageReceipt::LEN, TAG_RECEIPT)?;
    let expected = Pubkey::create_program_address(
        &[
            RECEIPT_SEED,
            state.cluster.as_ref(),
            &state.usage_id,
            &[state.bump],
        ],
        &crate::ID,
    )
    .map_err(|_| ProgramError::from(LedgerError::InvalidReceiptAddress))?;
    if *receipt.key != expected {
        return Err(LedgerError::InvalidReceiptAddress.into());
    }
    if *rent_destination.key != state.rent_payer {
        return Err(LedgerError::InvalidRentDestination.into());
    }
    // Exactly-once survives the close: a period outside the horizon can never be recorded
    // again, so the receipt is no longer needed to refuse a replay.
    if config_state.within_horizon(state.period, sysvars::now()?) {
        return Err(LedgerError::ReceiptNotExpired.into());
    }
    close_account(receipt, rent_destination)
}

/// Closes a program account: its lamports go to `destination`, its data is dropped and it
/// goes back to the system program.
fn close_account(account: &AccountInfo, destination: &AccountInfo) -> ProgramResult {
    let lamports = account.lamports();
    let dest = destination
        .lamports()
        .checked_add(lamports)
        .ok_or(LedgerError::TotalsOverflow)?;
    **destination.try_borrow_mut_lamports()? = dest;
    **account.try_borrow_mut_lamports()? = 0;
    account.resize(0)?;
    account.assign(&crate::system_program::ID);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Usage recording
// ---------------------------------------------------------------------------------------------

/// The accounts every usage instruction starts with (0..=8).
struct UsageAccounts<'a, 'info> {
    oracle: &'a AccountInfo<'info>,
    payer: &'a AccountInfo<'info>,
    config: &'a AccountInfo<'info>,
    cluster: &'a AccountInfo<'info>,
    mint: &'a AccountInfo<'info>,
    mint_authority: &'a AccountInfo<'info>,
    owner_token_account: &'a AccountInfo<'info>,
    token_program: &'a AccountInfo<'info>,
    system_program: &'a AccountInfo<'info>,
}

impl<'a, 'info> UsageAccounts<'a, 'info> {
    /// Splits `accounts` into the usage head and the rest.
    fn split(
        accounts: &'a [AccountInfo<'info>],
    ) -> Result<(Self, &'a [AccountInfo<'info>]), ProgramError> {
        let [
            oracle,
            payer,
            config,
            cluster,
            mint,
            mint_authority,
            owner_token_account,
            token_program,
            system_program,
            rest @ ..,
        ] = accounts
        else {
            return Err(LedgerError::WrongAccountCount.into());
        };
        let head = UsageAccounts {
            oracle,
            payer,
            config,
            cluster,
            mint,
            mint_authority,
            owner_token_account,
            token_program,
            system_program,
        };
        Ok((head, rest))
    }
}

/// What the checks of a usage instruction established.
struct UsageContext {
    config: PoolConfig,
    cluster: ClusterAccount,
    clock: Clock,
    rent: Rent,
    /// Most GPU-seconds per period now.
    period_cap: u64,
}

/// Totals of the entries recorded by one instruction.
#[derive(Default)]
struct Recorded {
    gpu_seconds: u64,
    amount: u64,
    fee: u64,
}

/// Records usage minted from nothing to the owner (no tenant pays).
fn process_record_usage(accounts: &[AccountInfo], entries: &[UsageEntry]) -> ProgramResult {
    if entries.is_empty() {
        return Err(LedgerError::EmptyBatch.into());
    }
    let (a, receipts) = UsageAccounts::split(accounts)?;
    if receipts.len() != entries.len() {
        return Err(LedgerError::WrongAccountCount.into());
    }
    let mut ctx = check_usage(&a, entries)?;
    let mut total = Recorded::default();
    for (entry, receipt) in entries.iter().zip(receipts) {
        let (amount, fee) = record_entry(&a, &ctx, entry, receipt, None)?;
        add_entry(&mut total, entry, amount, fee)?;
    }
    add_totals(&a, &mut ctx, entries.len(), &total)?;
    mint_to_owner(&a, &ctx.config, total.amount)?;
    log!(
        "recorded {} receipt(s): {} GPU-seconds, {} tokens",
        entries.len(),
        total.gpu_seconds,
        total.amount
    );
    Ok(())
}

/// Checks the oracle, payer, programs, mint, cluster and the owner's token account, which
/// must belong to the wallet that owned the cluster in every entry's period.
fn check_usage(a: &UsageAccounts, entries: &[UsageEntry]) -> Result<UsageContext, ProgramError> {
    let config = load_config(a.config)?;
    require_not_paused(&config)?;
    if *a.oracle.key != config.oracle {
        return Err(LedgerError::NotOracle.into());
    }
    require_signer(a.oracle)?;
    require_signer(a.payer)?;
    require_writable(a.payer)?;
    if *a.token_program.key != crate::spl_token::ID {
        return Err(LedgerError::InvalidTokenProgram.into());
    }
    check_system_program(a.system_program)?;
    check_pool_mint(a.mint, a.mint_authority, &config)?;
    require_writable(a.cluster)?;
    let cluster = load_cluster(a.cluster)?;
    if cluster.disabled {
        return Err(LedgerError::ClusterDisabled.into());
    }
    let first = entries.first().ok_or(LedgerError::EmptyBatch)?;
    let owner = cluster.owner_for(first.period);
    if entries.iter().any(|e| cluster.owner_for(e.period) != owner) {
        return Err(LedgerError::InvalidOwnerTokenAccount.into());
    }
    check_token_account(a.owner_token_account, &owner, &config.mint)
        .map_err(|_| ProgramError::from(LedgerError::InvalidOwnerTokenAccount))?;
    let clock = sysvars::clock()?;
    let rent = sysvars::rent()?;
    let period_cap = config.period_cap(cluster.cap_at(config.period_at(clock.unix_timestamp)));
    Ok(UsageContext {
        config,
        cluster,
        clock,
        rent,
        period_cap,
    })
}

/// The mint is the pool's and the mint-authority account its PDA.
fn check_pool_mint(
    mint: &AccountInfo,
    mint_authority: &AccountInfo,
    config: &PoolConfig,
) -> ProgramResult {
    if *mint.key != config.mint {
        return Err(LedgerError::MintMismatch.into());
    }
    if *mint.owner != crate::spl_token::ID {
        return Err(LedgerError::InvalidMint.into());
    }
    require_writable(mint)?;
    let authority_key = Pubkey::create_program_address(
        &[MINT_AUTHORITY_SEED, &[config.mint_authority_bump]],
        &crate::ID,
    )
    .map_err(|_| ProgramError::from(LedgerError::InvalidMintAuthorityAddress))?;
    if *mint_authority.key != authority_key {
        return Err(LedgerError::InvalidMintAuthorityAddress.into());
    }
    Ok(())
}

/// A writable associated token account of `(wallet, mint)` under SPL Token; returns its
/// balance. Errors are reported by the caller in its own terms.
fn check_token_account(
    account: &AccountInfo,
    wallet: &Pubkey,
    mint: &Pubkey,
) -> Result<u64, ProgramError> {
    require_writable(account)?;
    if *account.key != get_associated_token_address(wallet, mint)
        || *account.owner != crate::spl_token::ID
    {
        return Err(LedgerError::InvalidAccountData.into());
    }
    let view = spl::unpack_token_account(&account.try_borrow_data()?)
        .ok_or(LedgerError::InvalidAccountData)?;
    if view.mint != *mint || view.owner != *wallet {
        return Err(LedgerError::InvalidAccountData.into());
    }
    Ok(view.amount)
}

/// Checks one entry, adds it to the cluster's tally of its period (within the cap) and
/// creates its receipt. Returns `rate * gpu_seconds`.
fn record_entry<'info>(
    a: &UsageAccounts<'_, 'info>,
    ctx: &UsageContext,
    entry: &UsageEntry,
    receipt: &AccountInfo<'info>,
    tenant: Option<&Pubkey>,
) -> Result<(u64, u64), ProgramError> {
    if entry.gpu_seconds == 0 {
        return Err(LedgerError::ZeroUsage.into());
    }
    ctx.config
        .recordable(entry.period, ctx.clock.unix_timestamp)?;
    let rate = ctx
        .config
        .rate(entry.gpu_class, entry.period)
        .ok_or(LedgerError::UnknownGpuClass)?;
    if rate == 0 {
        return Err(LedgerError::GpuClassNotPriced.into());
    }
    add_to_tally(a.cluster, ctx, entry)?;
    let amount = rate
        .checked_mul(entry.gpu_seconds)
        .ok_or(LedgerError::AmountOverflow)?;
    // Minted from nothing: no fee. Paid by a tenant: the pool's fee, rounded down.
    let fee = match tenant {
        Some(_) => ctx
            .config
            .fee_of(amount)
            .ok_or(LedgerError::AmountOverflow)?,
        None => 0,
    };
    let tenant = tenant.copied().unwrap_or_default();
    create_receipt(a, ctx, entry, receipt, amount, &tenant, fee)?;
    Ok((amount, fee))
}

/// The cluster's paid GPU-seconds in the entry's period, this entry included, stay within
/// its GPU cap times the period length.
fn add_to_tally(cluster: &AccountInfo, ctx: &UsageContext, entry: &UsageEntry) -> ProgramResult {
    let horizon = ctx.config.horizon_periods;
    let mut data = cluster.try_borrow_mut_data()?;
    let paid = tally::get(&data, entry.period, horizon).ok_or(LedgerError::InvalidAccountData)?;
    let paid = paid
        .checked_add(entry.gpu_seconds)
        .ok_or(LedgerError::GpuCapExceeded)?;
    if paid > ctx.period_cap {
        return Err(LedgerError::GpuCapExceeded.into());
    }
    tally::set(&mut data, entry.period, horizon, paid).ok_or(LedgerError::InvalidAccountData)?;
    Ok(())
}

/// Creates the receipt of `(cluster, job, period)`; fails if it exists (a replay).
fn create_receipt<'info>(
    a: &UsageAccounts<'_, 'info>,
    ctx: &UsageContext,
    entry: &UsageEntry,
    receipt: &AccountInfo<'info>,
    amount: u64,
    tenant: &Pubkey,
    fee: u64,
) -> ProgramResult {
    let id = usage_id(&ctx.cluster.cluster_id, &entry.job_uid, entry.period);
    let (receipt_key, bump) = find_receipt_address(a.cluster.key, &id);
    if *receipt.key != receipt_key {
        return Err(LedgerError::InvalidReceiptAddress.into());
    }
    require_writable(receipt)?;
    if !is_uninitialized(receipt) {
        return Err(LedgerError::ReceiptAlreadyExists.into());
    }
    create_pda_account(
        a.payer,
        receipt,
        a.system_program,
        &ctx.rent,
        UsageReceipt::LEN,
        &[RECEIPT_SEED, a.cluster.key.as_ref(), &id, &[bump]],
    )?;
    let state = UsageReceipt {
        tag: TAG_RECEIPT,
        cluster: *a.cluster.key,
        usage_id: id,
        job_uid: entry.job_uid,
        period: entry.period,
        gpu_seconds: entry.gpu_seconds,
        gpu_class: entry.gpu_class,
        amount,
        slot: ctx.clock.slot,
        rent_payer: *a.payer.key,
        bump,
        tenant: *tenant,
        fee,
    };
    pack(&state, &mut receipt.try_borrow_mut_data()?)
}

fn add_entry(total: &mut Recorded, entry: &UsageEntry, amount: u64, fee: u64) -> ProgramResult {
    total.amount = total
        .amount
        .checked_add(amount)
        .ok_or(LedgerError::AmountOverflow)?;
    total.fee = total
        .fee
        .checked_add(fee)
        .ok_or(LedgerError::AmountOverflow)?;
    total.gpu_seconds = total
        .gpu_seconds
        .checked_add(entry.gpu_seconds)
        .ok_or(LedgerError::TotalsOverflow)?;
    Ok(())
}

/// Adds the recorded entries to the cluster's running totals (tokens: what the owner got).
fn add_totals(
    a: &UsageAccounts,
    ctx: &mut UsageContext,
    count: usize,
    total: &Recorded,
) -> ProgramResult {
    let count = u64::try_from(count).map_err(|_| LedgerError::TotalsOverflow)?;
    let to_owner = total
        .amount
        .checked_sub(total.fee)
        .ok_or(LedgerError::AmountOverflow)?;
    let c = &mut ctx.cluster;
    c.total_gpu_seconds = c
        .total_gpu_seconds
        .checked_add(total.gpu_seconds)
        .ok_or(LedgerError::TotalsOverflow)?;
    c.total_tokens_minted = c
        .total_tokens_minted
        .checked_add(to_owner)
        .ok_or(LedgerError::TotalsOverflow)?;
    c.receipt_count = c
        .receipt_count
        .checked_add(count)
        .ok_or(LedgerError::TotalsOverflow)?;
    pack_cluster(c, &mut a.cluster.try_borrow_mut_data()?)
}

/// Mints `amount` to the owner's token account, signed by the mint-authority PDA.
fn mint_to_owner(a: &UsageAccounts, config: &PoolConfig, amount: u64) -> ProgramResult {
    if amount == 0 {
        return Ok(());
    }
    invoke_signed(
        &raw::spl_mint_to(
            a.mint.key,
            a.owner_token_account.key,
            a.mint_authority.key,
            amount,
        ),
        &[
            a.mint.clone(),
            a.owner_token_account.clone(),
            a.mint_authority.clone(),
            a.token_program.clone(),
        ],
        &[&[MINT_AUTHORITY_SEED, &[config.mint_authority_bump]]],
    )
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn require_signer(account: &AccountInfo) -> ProgramResult {
    if account.is_signer {
        Ok(())
    } else {
        Err(LedgerError::MissingSignature.into())
    }
}

fn require_writable(account: &AccountInfo) -> ProgramResult {
    if account.is_writable {
        Ok(())
    } else {
        Err(LedgerError::AccountNotWritable.into())
    }
}

fn require_not_paused(config: &PoolConfig) -> ProgramResult {
    if config.paused {
        Err(LedgerError::PoolPaused.into())
    } else {
        Ok(())
    }
}

/// `signer` is the cluster's current owner and signed.
fn require_cluster_owner(signer: &AccountInfo, cluster: &ClusterAccount) -> ProgramResult {
    if *signer.key != cluster.owner {
        return Err(LedgerError::NotClusterOwner.into());
    }
    require_signer(signer)
}

fn require_nonzero(key: &Pubkey) -> ProgramResult {
    if *key == Pubkey::default() {
        Err(LedgerError::ZeroKey.into())
    } else {
        Ok(())
    }
}

fn check_system_program(account: &AccountInfo) -> ProgramResult {
    if *account.key == crate::system_program::ID {
        Ok(())
    } else {
        Err(LedgerError::InvalidSystemProgram.into())
    }
}

/// An address nobody has created yet (system-owned, no data). It may hold lamports: anyone can
/// send lamports to a PDA address before it is created.
fn is_uninitialized(account: &AccountInfo) -> bool {
    *account.owner == crate::system_program::ID && account.data_is_empty()
}

/// Loads and checks the pool config: owner, address and layout.
fn load_config(config: &AccountInfo) -> Result<PoolConfig, ProgramError> {
    if *config.owner != crate::ID {
        return Err(LedgerError::IncorrectAccountOwner.into());
    }
    let state: PoolConfig = unpack(&config.try_borrow_data()?, PoolConfig::LEN, TAG_CONFIG)?;
    let expected = Pubkey::create_program_address(&[CONFIG_SEED, &[state.bump]], &crate::ID)
        .map_err(|_| ProgramError::from(LedgerError::InvalidConfigAddress))?;
    if *config.key != expected {
        return Err(LedgerError::InvalidConfigAddress.into());
    }
    Ok(state)
}

/// Loads and checks a cluster account: owner, layout and PDA address.
fn load_cluster(cluster: &AccountInfo) -> Result<ClusterAccount, ProgramError> {
    if *cluster.owner != crate::ID {
        return Err(LedgerError::IncorrectAccountOwner.into());
    }
    let state = unpack_cluster(&cluster.try_borrow_data()?)?;
    let expected = Pubkey::create_program_address(
        &[CLUSTER_SEED, &state.cluster_id, &[state.bump]],
        &crate::ID,
    )
    .map_err(|_| ProgramError::from(LedgerError::InvalidClusterAddress))?;
    if *cluster.key != expected {
        return Err(LedgerError::InvalidClusterAddress.into());
    }
    Ok(state)
}

fn load_config_as_admin(
    admin: &AccountInfo,
    config: &AccountInfo,
) -> Result<PoolConfig, ProgramError> {
    let state = load_config(config)?;
    if *admin.key != state.admin {
        return Err(LedgerError::NotAdmin.into());
    }
    require_signer(admin)?;
    Ok(state)
}

/// Creates `account` (a PDA of this program signed for by `seeds`) with `space` bytes, owned
/// by this program and rent-exempt, paid by `payer`. Works even if someone pre-funded the
/// address, where a plain `CreateAccount` would fail.
fn create_pda_account<'a>(
    payer: &AccountInfo<'a>,
    account: &AccountInfo<'a>,
    system_program: &AccountInfo<'a>,
    rent: &Rent,
    space: usize,
    seeds: &[&[u8]],
) -> ProgramResult {
    let needed = rent.minimum_balance(space);
    let space_u64 = u64::try_from(space).map_err(|_| ProgramError::InvalidArgument)?;
    let current = account.lamports();
    if current == 0 {
        return invoke_signed(
            &raw::system_create_account(payer.key, account.key, needed, space_u64, &crate::ID),
            &[payer.clone(), account.clone(), system_program.clone()],
            &[seeds],
        );
    }
    let top_up = needed.saturating_sub(current);
    if top_up > 0 {
        invoke_signed(
            &raw::system_transfer(payer.key, account.key, top_up),
            &[payer.clone(), account.clone(), system_program.clone()],
            &[],
        )?;
    }
    invoke_signed(
        &raw::system_allocate(account.key, space_u64),
        &[account.clone(), system_program.clone()],
        &[seeds],
    )?;
    invoke_signed(
        &raw::system_assign(account.key, &crate::ID),
        &[account.clone(), system_program.clone()],
        &[seeds],
    )
}
