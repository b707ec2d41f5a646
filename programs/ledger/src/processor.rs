//! Instruction processing. One `process_*` per instruction; every account is checked for
//! address (PDA derivation or well-known id), owner program, signer and writability before
//! it is used. Clock and rent come from the sysvar syscalls ([`crate::sysvars`]).

use borsh::BorshDeserialize;
use solana_program::{
    account_info::AccountInfo, entrypoint::ProgramResult, program::invoke_signed,
    program_error::ProgramError, pubkey::Pubkey,
};
use solana_sysvar::rent::Rent;

use crate::{
    error::LedgerError,
    instruction::{Authority, LedgerInstruction, UsageEntry, raw},
    state::{
        CLUSTER_SEED, CONFIG_SEED, ClusterAccount, MAX_HORIZON_PERIODS, MAX_RATE_VERSIONS,
        MINT_AUTHORITY_SEED, NUM_GPU_CLASSES, PoolConfig, RECEIPT_SEED, RateVersion, TAG_CLUSTER,
        TAG_CONFIG, TAG_RECEIPT, UsageReceipt, find_cluster_address, find_config_address,
        find_mint_authority_address, find_receipt_address, get_associated_token_address, pack,
        pack_cluster, program_data_address, program_data_upgrade_authority, spl, tally, unpack,
        unpack_cluster, usage_id,
    },
    sysvars,
};

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
    match instruction {
        LedgerInstruction::InitializePool {
            oracle,
            registrar,
            period_seconds,
            horizon_periods,
            rates,
        } => {
            log!("Instruction: InitializePool");
            process_initialize_pool(
                accounts,
                oracle,
                registrar,
                period_seconds,
                horizon_periods,
                rates,
            )
        }
        LedgerInstruction::RegisterCluster { cluster_id } => {
            log!("Instruction: RegisterCluster");
            process_register_cluster(accounts, cluster_id)
        }
        LedgerInstruction::RecordUsage { entry } => {
            log!("Instruction: RecordUsage");
            record(accounts, &[entry])
        }
        LedgerInstruction::RecordUsageBatch { entries } => {
            log!("Instruction: RecordUsageBatch");
            if entries.is_empty() {
                return Err(LedgerError::EmptyBatch.into());
            }
            record(accounts, &entries)
        }
        LedgerInstruction::SetRates {
            rates,
            effective_from_period,
        } => {
            log!("Instruction: SetRates");
            process_set_rates(accounts, rates, effective_from_period)
        }
        LedgerInstruction::ProposeAuthority { authority, new_key } => {
            log!("Instruction: ProposeAuthority");
            process_propose_authority(accounts, authority, new_key)
        }
        LedgerInstruction::AcceptAuthority { authority } => {
            log!("Instruction: AcceptAuthority");
            process_accept_authority(accounts, authority)
        }
        LedgerInstruction::SetClusterOwner => {
            log!("Instruction: SetClusterOwner");
            process_set_cluster_owner(accounts)
        }
        LedgerInstruction::ConfigureCluster { gpu_cap, disabled } => {
            log!("Instruction: ConfigureCluster");
            process_configure_cluster(accounts, gpu_cap, disabled)
        }
        LedgerInstruction::CloseReceipt => {
            log!("Instruction: CloseReceipt");
            process_close_receipt(accounts)
        }
    }
}

/// Creates the pool config (upgrade authority only).
pub fn process_initialize_pool(
    accounts: &[AccountInfo],
    oracle: Pubkey,
    registrar: Pubkey,
    period_seconds: u64,
    horizon_periods: u64,
    rates: [u64; NUM_GPU_CLASSES],
) -> ProgramResult {
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

    // Only the program's upgrade authority: the upgradeable loader creates the ProgramData
    // account at this address on deployment, and only it can own it.
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
    require_nonzero(&oracle)?;
    require_nonzero(&registrar)?;
    if period_seconds == 0 || i64::try_from(period_seconds).is_err() {
        return Err(LedgerError::InvalidPeriodLength.into());
    }
    if horizon_periods == 0 || horizon_periods > MAX_HORIZON_PERIODS {
        return Err(LedgerError::InvalidHorizon.into());
    }

    let (config_key, bump) = find_config_address();
    if *config.key != config_key {
        return Err(LedgerError::InvalidConfigAddress.into());
    }
    if !is_uninitialized(config) {
        return Err(LedgerError::AlreadyInitialized.into());
    }
    let (authority_key, mint_authority_bump) = find_mint_authority_address();
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

    let rent = sysvars::rent()?;
    create_pda_account(
        admin,
        config,
        system_program,
        &rent,
        PoolConfig::LEN,
        &[CONFIG_SEED, &[bump]],
    )?;
    let mut rate_versions = [RateVersion::default(); MAX_RATE_VERSIONS];
    if let Some(first) = rate_versions.first_mut() {
        *first = RateVersion {
            effective_from: 0,
            rates,
        };
    }
    let state = PoolConfig {
        tag: TAG_CONFIG,
        admin: *admin.key,
        pending_admin: Pubkey::default(),
        oracle,
        pending_oracle: Pubkey::default(),
        registrar,
        pending_registrar: Pubkey::default(),
        mint: *mint.key,
        period_seconds,
        horizon_periods,
        rate_version_count: 1,
        rate_versions,
        bump,
        mint_authority_bump,
    };
    pack(&state, &mut config.try_borrow_mut_data()?)
}

/// Creates a cluster account for the signing owner; the registrar co-signs.
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
    let state = ClusterAccount {
        tag: TAG_CLUSTER,
        cluster_id,
        owner: *owner.key,
        gpu_cap: 0,
        disabled: false,
        total_gpu_seconds: 0,
        total_tokens_minted: 0,
        receipt_count: 0,
        bump,
    };
    pack_cluster(&state, &mut cluster.try_borrow_mut_data()?)
}

/// Schedules a rate version from a future period on.
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
    let now = sysvars::now()?;
    let current = state.period_at(now);
    if effective_from <= current {
        return Err(LedgerError::RateNotInFuture.into());
    }
    let mut count = usize::from(state.rate_version_count).clamp(1, MAX_RATE_VERSIONS);
    let last_from = state
        .rate_versions
        .get(count.saturating_sub(1))
        .map(|v| v.effective_from)
        .unwrap_or(0);
    let version = RateVersion {
        effective_from,
        rates,
    };
    if last_from > current && count > 1 {
        // The last version has not taken effect yet: replace it (no usage was priced by it).
        count = count.saturating_sub(1);
    }
    if count == MAX_RATE_VERSIONS {
        // Drop the oldest version only if no recordable period can still use it: the next
        // version starts at or before the oldest period inside the horizon.
        let next_from = state
            .rate_versions
            .get(1)
            .map(|v| v.effective_from)
            .unwrap_or(u64::MAX);
        if next_from.saturating_add(state.horizon_periods) > current {
            return Err(LedgerError::RateHistoryFull.into());
        }
        state.rate_versions.rotate_left(1);
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

/// Records a proposed authority change.
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
    match authority {
        Authority::Admin => state.pending_admin = new_key,
        Authority::Oracle => state.pending_oracle = new_key,
        Authority::Registrar => state.pending_registrar = new_key,
    }
    pack(&state, &mut config.try_borrow_mut_data()?)
}

/// The pending key takes over.
pub fn process_accept_authority(accounts: &[AccountInfo], authority: Authority) -> ProgramResult {
    let [new_key, config] = accounts else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    let mut state = load_config(config)?;
    require_writable(config)?;
    let (current, pending) = match authority {
        Authority::Admin => (&mut state.admin, &mut state.pending_admin),
        Authority::Oracle => (&mut state.oracle, &mut state.pending_oracle),
        Authority::Registrar => (&mut state.registrar, &mut state.pending_registrar),
    };
    if *pending == Pubkey::default() || *pending != *new_key.key {
        return Err(LedgerError::NoPendingAuthority.into());
    }
    require_signer(new_key)?;
    *current = *pending;
    *pending = Pubkey::default();
    pack(&state, &mut config.try_borrow_mut_data()?)
}

/// Moves a cluster to a new owner (registrar + new owner sign).
pub fn process_set_cluster_owner(accounts: &[AccountInfo]) -> ProgramResult {
    let [registrar, new_owner, config, cluster] = accounts else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    let config_state = load_config(config)?;
    if *registrar.key != config_state.registrar {
        return Err(LedgerError::NotRegistrar.into());
    }
    require_signer(registrar)?;
    require_signer(new_owner)?;
    require_nonzero(new_owner.key)?;
    require_writable(cluster)?;
    let mut state = load_cluster(cluster)?;
    state.owner = *new_owner.key;
    pack_cluster(&state, &mut cluster.try_borrow_mut_data()?)
}

/// Sets a cluster's GPU cap and disabled flag (admin).
pub fn process_configure_cluster(
    accounts: &[AccountInfo],
    gpu_cap: u32,
    disabled: bool,
) -> ProgramResult {
    let [admin, config, cluster] = accounts else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    load_config_as_admin(admin, config)?;
    require_writable(cluster)?;
    let mut state = load_cluster(cluster)?;
    state.gpu_cap = gpu_cap;
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
    let lamports = receipt.lamports();
    let dest = rent_destination
        .lamports()
        .checked_add(lamports)
        .ok_or(LedgerError::TotalsOverflow)?;
    **rent_destination.try_borrow_mut_lamports()? = dest;
    **receipt.try_borrow_mut_lamports()? = 0;
    receipt.resize(0)?;
    receipt.assign(&crate::system_program::ID);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Usage recording
// ---------------------------------------------------------------------------------------------

fn record(accounts: &[AccountInfo], entries: &[UsageEntry]) -> ProgramResult {
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
        receipts @ ..,
    ] = accounts
    else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    if receipts.len() != entries.len() {
        return Err(LedgerError::WrongAccountCount.into());
    }

    // Config and oracle.
    let config_state = load_config(config)?;
    if *oracle.key != config_state.oracle {
        return Err(LedgerError::NotOracle.into());
    }
    require_signer(oracle)?;
    require_signer(payer)?;
    require_writable(payer)?;

    // Programs and sysvars.
    if *token_program.key != crate::spl_token::ID {
        return Err(LedgerError::InvalidTokenProgram.into());
    }
    check_system_program(system_program)?;
    let clock = sysvars::clock()?;
    let rent = sysvars::rent()?;

    // Mint and its authority.
    if *mint.key != config_state.mint {
        return Err(LedgerError::MintMismatch.into());
    }
    if *mint.owner != crate::spl_token::ID {
        return Err(LedgerError::InvalidMint.into());
    }
    require_writable(mint)?;
    let authority_key = Pubkey::create_program_address(
        &[MINT_AUTHORITY_SEED, &[config_state.mint_authority_bump]],
        &crate::ID,
    )
    .map_err(|_| ProgramError::from(LedgerError::InvalidMintAuthorityAddress))?;
    if *mint_authority.key != authority_key {
        return Err(LedgerError::InvalidMintAuthorityAddress.into());
    }

    // Cluster.
    require_writable(cluster)?;
    let mut cluster_state = load_cluster(cluster)?;
    if cluster_state.disabled {
        return Err(LedgerError::ClusterDisabled.into());
    }

    // Destination: the owner's associated token account for the pool mint.
    require_writable(owner_token_account)?;
    if *owner_token_account.key != get_associated_token_address(&cluster_state.owner, mint.key) {
        return Err(LedgerError::InvalidOwnerTokenAccount.into());
    }
    if *owner_token_account.owner != crate::spl_token::ID {
        return Err(LedgerError::InvalidOwnerTokenAccount.into());
    }
    {
        let view = spl::unpack_token_account(&owner_token_account.try_borrow_data()?)
            .ok_or(LedgerError::InvalidOwnerTokenAccount)?;
        if view.mint != config_state.mint || view.owner != cluster_state.owner {
            return Err(LedgerError::InvalidOwnerTokenAccount.into());
        }
    }

    // Receipts.
    let period_cap = config_state.period_cap(cluster_state.gpu_cap);
    let horizon = config_state.horizon_periods;
    let mut total_amount: u64 = 0;
    let mut total_seconds: u64 = 0;
    for (entry, receipt) in entries.iter().zip(receipts) {
        if entry.gpu_seconds == 0 {
            return Err(LedgerError::ZeroUsage.into());
        }
        config_state.recordable(entry.period, clock.unix_timestamp)?;
        let rate = config_state
            .rate(entry.gpu_class, entry.period)
            .ok_or(LedgerError::UnknownGpuClass)?;
        if rate == 0 {
            return Err(LedgerError::GpuClassNotPriced.into());
        }
        // The cluster's paid GPU-seconds in this period, this entry included, stay within
        // its GPU cap times the period length.
        {
            let mut data = cluster.try_borrow_mut_data()?;
            let paid =
                tally::get(&data, entry.period, horizon).ok_or(LedgerError::InvalidAccountData)?;
            let paid = paid
                .checked_add(entry.gpu_seconds)
                .ok_or(LedgerError::GpuCapExceeded)?;
            if paid > period_cap {
                return Err(LedgerError::GpuCapExceeded.into());
            }
            tally::set(&mut data, entry.period, horizon, paid)
                .ok_or(LedgerError::InvalidAccountData)?;
        }
        let amount = rate
            .checked_mul(entry.gpu_seconds)
            .ok_or(LedgerError::AmountOverflow)?;
        total_amount = total_amount
            .checked_add(amount)
            .ok_or(LedgerError::AmountOverflow)?;
        total_seconds = total_seconds
            .checked_add(entry.gpu_seconds)
            .ok_or(LedgerError::TotalsOverflow)?;

        let id = usage_id(&cluster_state.cluster_id, &entry.job_uid, entry.period);
        let (receipt_key, bump) = find_receipt_address(cluster.key, &id);
        if *receipt.key != receipt_key {
            return Err(LedgerError::InvalidReceiptAddress.into());
        }
        require_writable(receipt)?;
        if !is_uninitialized(receipt) {
            return Err(LedgerError::ReceiptAlreadyExists.into());
        }
        create_pda_account(
            payer,
            receipt,
            system_program,
            &rent,
            UsageReceipt::LEN,
            &[RECEIPT_SEED, cluster.key.as_ref(), &id, &[bump]],
        )?;
        let state = UsageReceipt {
            tag: TAG_RECEIPT,
            cluster: *cluster.key,
            usage_id: id,
            job_uid: entry.job_uid,
            period: entry.period,
            gpu_seconds: entry.gpu_seconds,
            gpu_class: entry.gpu_class,
            amount,
            slot: clock.slot,
            rent_payer: *payer.key,
            bump,
        };
        pack(&state, &mut receipt.try_borrow_mut_data()?)?;
    }

    // Totals, then pay.
    let count = u64::try_from(entries.len()).map_err(|_| LedgerError::TotalsOverflow)?;
    cluster_state.total_gpu_seconds = cluster_state
        .total_gpu_seconds
        .checked_add(total_seconds)
        .ok_or(LedgerError::TotalsOverflow)?;
    cluster_state.total_tokens_minted = cluster_state
        .total_tokens_minted
        .checked_add(total_amount)
        .ok_or(LedgerError::TotalsOverflow)?;
    cluster_state.receipt_count = cluster_state
        .receipt_count
        .checked_add(count)
        .ok_or(LedgerError::TotalsOverflow)?;
    pack_cluster(&cluster_state, &mut cluster.try_borrow_mut_data()?)?;

    invoke_signed(
        &raw::spl_mint_to(
            mint.key,
            owner_token_account.key,
            mint_authority.key,
            total_amount,
        ),
        &[
            mint.clone(),
            owner_token_account.clone(),
            mint_authority.clone(),
            token_program.clone(),
        ],
        &[&[MINT_AUTHORITY_SEED, &[config_state.mint_authority_bump]]],
    )?;
    log!(
        "recorded {} receipt(s): {} GPU-seconds, {} tokens",
        entries.len(),
        total_seconds,
        total_amount
    );
    Ok(())
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
