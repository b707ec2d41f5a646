//! Instruction processing. One `process_*` per instruction; every account is checked for
//! address (PDA derivation or well-known id), owner program, signer and writability before
//! it is used.

use borsh::BorshDeserialize;
use solana_program::{
    account_info::AccountInfo, entrypoint::ProgramResult, program::invoke_signed,
    program_error::ProgramError, pubkey::Pubkey,
};
use solana_sysvar::{SysvarSerialize, clock::Clock, rent::Rent};

use crate::{
    error::LedgerError,
    instruction::{LedgerInstruction, UsageEntry, raw},
    state::{
        CLUSTER_SEED, CONFIG_SEED, ClusterAccount, MINT_AUTHORITY_SEED, NUM_GPU_CLASSES,
        PoolConfig, RECEIPT_SEED, TAG_CLUSTER, TAG_CONFIG, TAG_RECEIPT, UsageReceipt,
        find_cluster_address, find_config_address, find_mint_authority_address,
        find_receipt_address, get_associated_token_address, pack, spl, unpack, usage_id,
    },
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
        LedgerInstruction::InitializePool { oracle, rates } => {
            log!("Instruction: InitializePool");
            process_initialize_pool(accounts, oracle, rates)
        }
        LedgerInstruction::RegisterCluster { cluster_id } => {
            log!("Instruction: RegisterCluster");
            process_register_cluster(accounts, cluster_id)
        }
        LedgerInstruction::RecordUsage { entry } => {
            log!("Instruction: RecordUsage");
            process_record_usage(accounts, entry)
        }
        LedgerInstruction::RecordUsageBatch { entries } => {
            log!("Instruction: RecordUsageBatch");
            process_record_usage_batch(accounts, &entries)
        }
        LedgerInstruction::UpdateRate { gpu_class, rate } => {
            log!("Instruction: UpdateRate");
            process_update_rate(accounts, gpu_class, rate)
        }
        LedgerInstruction::RotateOracle { new_oracle } => {
            log!("Instruction: RotateOracle");
            process_rotate_oracle(accounts, new_oracle)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Instructions
// ---------------------------------------------------------------------------------------------

/// Creates the pool config after checking the mint is ours to mint.
pub fn process_initialize_pool(
    accounts: &[AccountInfo],
    oracle: Pubkey,
    rates: [u64; NUM_GPU_CLASSES],
) -> ProgramResult {
    let [
        admin,
        config,
        mint,
        mint_authority,
        system_program,
        rent_sysvar,
    ] = accounts
    else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    require_signer(admin)?;
    require_writable(admin)?;
    require_writable(config)?;
    check_system_program(system_program)?;
    let rent = load_rent(rent_sysvar)?;

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

    create_pda_account(
        admin,
        config,
        system_program,
        &rent,
        PoolConfig::LEN,
        &[CONFIG_SEED, &[bump]],
    )?;
    let state = PoolConfig {
        tag: TAG_CONFIG,
        admin: *admin.key,
        oracle,
        mint: *mint.key,
        rates,
        bump,
        mint_authority_bump,
    };
    pack(&state, &mut config.try_borrow_mut_data()?)
}

/// Creates a cluster account owned by the signing owner wallet.
pub fn process_register_cluster(accounts: &[AccountInfo], cluster_id: [u8; 32]) -> ProgramResult {
    let [payer, owner, config, cluster, system_program, rent_sysvar] = accounts else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    require_signer(payer)?;
    require_writable(payer)?;
    require_signer(owner)?;
    require_writable(cluster)?;
    check_system_program(system_program)?;
    let rent = load_rent(rent_sysvar)?;
    load_config(config)?;

    let (cluster_key, bump) = find_cluster_address(&cluster_id);
    if *cluster.key != cluster_key {
        return Err(LedgerError::InvalidClusterAddress.into());
    }
    if !is_uninitialized(cluster) {
        return Err(LedgerError::ClusterAlreadyRegistered.into());
    }
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
        total_gpu_seconds: 0,
        total_tokens_minted: 0,
        receipt_count: 0,
        bump,
    };
    pack(&state, &mut cluster.try_borrow_mut_data()?)
}

/// Records one usage (a batch of one).
pub fn process_record_usage(accounts: &[AccountInfo], entry: UsageEntry) -> ProgramResult {
    record(accounts, &[entry])
}

/// Records several usages of one cluster with one `MintTo`.
pub fn process_record_usage_batch(
    accounts: &[AccountInfo],
    entries: &[UsageEntry],
) -> ProgramResult {
    if entries.is_empty() {
        return Err(LedgerError::EmptyBatch.into());
    }
    record(accounts, entries)
}

/// Sets one class's rate.
pub fn process_update_rate(accounts: &[AccountInfo], gpu_class: u8, rate: u64) -> ProgramResult {
    let [admin, config] = accounts else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    let mut state = load_config_as_admin(admin, config)?;
    let slot = state
        .rates
        .get_mut(usize::from(gpu_class))
        .ok_or(LedgerError::UnknownGpuClass)?;
    *slot = rate;
    pack(&state, &mut config.try_borrow_mut_data()?)
}

/// Replaces the oracle key.
pub fn process_rotate_oracle(accounts: &[AccountInfo], new_oracle: Pubkey) -> ProgramResult {
    let [admin, config] = accounts else {
        return Err(LedgerError::WrongAccountCount.into());
    };
    let mut state = load_config_as_admin(admin, config)?;
    state.oracle = new_oracle;
    pack(&state, &mut config.try_borrow_mut_data()?)
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
        clock_sysvar,
        rent_sysvar,
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
    if *clock_sysvar.key != solana_sysvar::clock::ID {
        return Err(LedgerError::InvalidSysvar.into());
    }
    let clock = Clock::from_account_info(clock_sysvar)
        .map_err(|_| ProgramError::from(LedgerError::InvalidSysvar))?;
    let rent = load_rent(rent_sysvar)?;

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
    if *cluster.owner != crate::ID {
        return Err(LedgerError::IncorrectAccountOwner.into());
    }
    let mut cluster_state: ClusterAccount = unpack(
        &cluster.try_borrow_data()?,
        ClusterAccount::LEN,
        TAG_CLUSTER,
    )?;
    let expected_cluster = Pubkey::create_program_address(
        &[
            CLUSTER_SEED,
            &cluster_state.cluster_id,
            &[cluster_state.bump],
        ],
        &crate::ID,
    )
    .map_err(|_| ProgramError::from(LedgerError::InvalidClusterAddress))?;
    if *cluster.key != expected_cluster {
        return Err(LedgerError::InvalidClusterAddress.into());
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
    let mut total_amount: u64 = 0;
    let mut total_seconds: u64 = 0;
    for (entry, receipt) in entries.iter().zip(receipts) {
        if entry.gpu_seconds == 0 {
            return Err(LedgerError::ZeroUsage.into());
        }
        let rate = *config_state
            .rates
            .get(usize::from(entry.gpu_class))
            .ok_or(LedgerError::UnknownGpuClass)?;
        if rate == 0 {
            return Err(LedgerError::GpuClassNotPriced.into());
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
    pack(&cluster_state, &mut cluster.try_borrow_mut_data()?)?;

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

fn check_system_program(account: &AccountInfo) -> ProgramResult {
    if *account.key == crate::system_program::ID {
        Ok(())
    } else {
        Err(LedgerError::InvalidSystemProgram.into())
    }
}

fn load_rent(account: &AccountInfo) -> Result<Rent, ProgramError> {
    if *account.key != solana_sysvar::rent::ID {
        return Err(LedgerError::InvalidSysvar.into());
    }
    Rent::from_account_info(account).map_err(|_| LedgerError::InvalidSysvar.into())
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

fn load_config_as_admin(
    admin: &AccountInfo,
    config: &AccountInfo,
) -> Result<PoolConfig, ProgramError> {
    let state = load_config(config)?;
    if *admin.key != state.admin {
        return Err(LedgerError::NotAdmin.into());
    }
    require_signer(admin)?;
    require_writable(config)?;
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
