//! A [`LiteSVM`] with the gpupool ledger program registered as a **native builtin**, plus
//! helpers to set up a pool and read balances. Used by the ledger's tests and by the
//! operator's embedded local demo.
//!
//! No SBF toolchain is needed: the ledger's ordinary `process_instruction` runs natively
//! inside LiteSVM. The adapter ([`LedgerBuiltin`]) serializes the instruction's accounts the
//! way the SBF loader does, runs the program, and writes lamports, data and owner back. CPIs
//! made with `solana_program::program::invoke_signed` go through process-global
//! `SyscallStubs` installed here, which run the
//! callee for real through the current `InvokeContext`, so the SPL Token, Associated Token
//! Account and System programs LiteSVM ships execute as they would on chain.
//!
//! # Threads
//!
//! The syscall stubs are process-global (one `set_syscall_stubs` slot per process), but they
//! find the executing transaction through a **thread-local** pointer that the builtin sets on
//! entry. A transaction runs entirely on the thread that called
//! [`LiteSVM::send_transaction`], so any number of `LiteSVM` instances may be used from any
//! threads (tokio worker threads included), each behind the caller's own `Mutex`. Do not call
//! `set_syscall_stubs` elsewhere in the same process (e.g. solana-program-test), or the
//! ledger's CPIs stop working. Natively, compute units are not metered for the ledger itself.

use std::{
    cell::Cell,
    collections::{HashMap, HashSet},
    sync::Once,
};

use gpupool_ledger::{
    error::LedgerError,
    instruction::{self as ix, PoolParams},
    state::{
        self, ClusterAccount, NUM_GPU_CLASSES, PoolConfig, TAG_CONFIG, TAG_RECEIPT, UsageReceipt,
        spl,
    },
    sysvars::native::{SysvarProvider, set_sysvar_provider},
};
use litesvm::{
    LiteSVM,
    types::{FailedTransactionMetadata, TransactionResult},
};
use solana_account::Account;
use solana_keypair::Keypair;
use solana_message::Message;
use solana_program::{
    account_info::AccountInfo,
    entrypoint::ProgramResult,
    instruction::{Instruction, InstructionError},
    program_error::ProgramError,
    program_stubs::{self, SyscallStubs},
    pubkey::Pubkey,
};
use solana_program::{clock::Clock, rent::Rent};
use solana_program_runtime::{
    declare_process_instruction, invoke_context::InvokeContext, serialization,
    solana_sbpf::program::BuiltinFunctionDefinition, stable_log,
};
use solana_signer::Signer;
use solana_transaction::Transaction;
use solana_transaction_error::TransactionError;

pub use gpupool_ledger;
pub use litesvm;

/// The ledger program's id (`gpupool_ledger::ID`).
pub const PROGRAM_ID: Pubkey = gpupool_ledger::ID;

/// SPL Token program id.
pub const TOKEN_PROGRAM_ID: Pubkey = gpupool_ledger::spl_token::ID;

/// Lamports given to accounts funded by [`fund`].
pub const DEFAULT_AIRDROP: u64 = 100_000_000_000;

// -------------------------------------------------------------------------------------------
// Native builtin adapter
// -------------------------------------------------------------------------------------------

thread_local! {
    /// The `InvokeContext` of the ledger instruction running on this thread (0 when none).
    static INVOKE_CONTEXT: Cell<usize> = const { Cell::new(0) };
}

/// Restores the previous thread-local invoke context when an invocation ends.
struct ContextGuard(usize);

impl Drop for ContextGuard {
    fn drop(&mut self) {
        INVOKE_CONTEXT.with(|c| c.set(self.0));
    }
}

fn enter_context(invoke_context: &mut InvokeContext) -> ContextGuard {
    let ptr = invoke_context as *mut InvokeContext as usize;
    ContextGuard(INVOKE_CONTEXT.with(|c| c.replace(ptr)))
}

/// Runs `f` with the invoke context of the ledger instruction running on this thread.
fn with_invoke_context<R>(f: impl FnOnce(&mut InvokeContext) -> R) -> Option<R> {
    let ptr = INVOKE_CONTEXT.with(|c| c.get());
    if ptr == 0 {
        return None;
    }
    // SAFETY: the pointer was set from a live `&mut InvokeContext` by `run_native` on this
    // thread and is cleared (restored) before that borrow ends. The program only reaches the
    // stubs synchronously from inside that call, while `run_native` itself does not touch the
    // context, mirroring solana-program-test's adapter.
    let ic = unsafe { &mut *std::ptr::with_exposed_provenance_mut::<InvokeContext>(ptr) };
    Some(f(ic))
}

declare_process_instruction!(LedgerBuiltin, 1, |invoke_context| {
    run_native(
        gpupool_ledger::processor::process_instruction,
        invoke_context,
    )
});

type NativeEntrypoint = fn(&Pubkey, &[AccountInfo], &[u8]) -> ProgramResult;

/// Runs a `solana-program` style entrypoint on the current instruction of `invoke_context`.
fn run_native(
    entry: NativeEntrypoint,
    invoke_context: &mut InvokeContext,
) -> Result<(), InstructionError> {
    install_syscall_stubs();
    let _guard = enter_context(invoke_context);

    let (mut parameter_bytes, deduplicated) = {
        let instruction_context = invoke_context
            .transaction_context
            .get_current_instruction_context()?;
        let (bytes, _regions, _metadata, _offset) =
            serialization::serialize_parameters(&instruction_context, false, false, false)?;
        let n = instruction_context.get_number_of_instruction_accounts();
        let deduplicated: HashSet<_> = (0..n).collect();
        (bytes, deduplicated)
    };

    // SAFETY: `parameter_bytes` holds the SBF input layout just produced by
    // `serialize_parameters` and outlives every `AccountInfo` borrowed from it below.
    let (program_id, account_infos, data) = unsafe {
        solana_program::entrypoint::deserialize(parameter_bytes.as_slice_mut().as_mut_ptr())
    };

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        entry(program_id, &account_infos, data)
    }));
    match result {
        Ok(Ok(())) => {}
        Ok(Err(program_error)) => return Err(InstructionError::from(u64::from(program_error))),
        Err(_) => return Err(InstructionError::ProgramFailedToComplete),
    }

    // Write the program's changes back into the transaction's accounts.
    let by_key: HashMap<Pubkey, &AccountInfo> = account_infos.iter().map(|a| (*a.key, a)).collect();
    let instruction_context = invoke_context
        .transaction_context
        .get_current_instruction_context()?;
    for index in deduplicated {
        let mut borrowed = instruction_context.try_borrow_instruction_account(index)?;
        if !borrowed.is_writable() {
            continue;
        }
        let Some(info) = by_key.get(borrowed.get_key()) else {
            continue;
        };
        if borrowed.get_lamports() != info.lamports() {
            borrowed.set_lamports(info.lamports())?;
        }
        let new_data = info
            .try_borrow_data()
            .map_err(|_| InstructionError::AccountBorrowFailed)?;
        if borrowed.get_data() != &new_data[..] {
            borrowed.can_data_be_resized(new_data.len())?;
            borrowed.set_data_from_slice(&new_data)?;
        }
        if borrowed.get_owner() != info.owner {
            borrowed.set_owner(info.owner.as_ref())?;
        }
    }
    Ok(())
}

/// Syscall stubs that route the ledger's CPIs and logs into the running transaction.
struct LedgerSyscallStubs;

fn ie_to_pe(e: InstructionError) -> ProgramError {
    ProgramError::try_from(e).unwrap_or(ProgramError::InvalidArgument)
}

impl SyscallStubs for LedgerSyscallStubs {
    fn sol_log(&self, message: &str) {
        let logged = with_invoke_context(|ic| {
            stable_log::program_log(&ic.get_log_collector(), message);
        });
        if logged.is_none() {
            println!("{message}");
        }
    }

    fn sol_log_data(&self, fields: &[&[u8]]) {
        with_invoke_context(|ic| stable_log::program_data(&ic.get_log_collector(), fields));
    }

    fn sol_get_stack_height(&self) -> u64 {
        with_invoke_context(|ic| ic.get_stack_height() as u64).unwrap_or(0)
    }

    fn sol_invoke_signed(
        &self,
        instruction: &Instruction,
        account_infos: &[AccountInfo],
        signers_seeds: &[&[&[u8]]],
    ) -> ProgramResult {
        with_invoke_context(|ic| cpi(ic, instruction, account_infos, signers_seeds))
            .unwrap_or(Err(ProgramError::UnsupportedSysvar))
    }
}

/// A real cross-program invocation through the runtime.
fn cpi(
    invoke_context: &mut InvokeContext,
    instruction: &Instruction,
    account_infos: &[AccountInfo],
    signers_seeds: &[&[&[u8]]],
) -> ProgramResult {
    let caller = invoke_context
        .transaction_context
        .get_current_instruction_context()
        .and_then(|c| c.get_program_key().copied())
        .map_err(ie_to_pe)?;
    let signers = signers_seeds
        .iter()
        .map(|seeds| Pubkey::create_program_address(seeds, &caller))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ProgramError::InvalidSeeds)?;
    invoke_context
        .prepare_next_cpi_instruction(instruction.clone(), &signers)
        .map_err(ie_to_pe)?;

    // Caller's AccountInfo changes -> transaction accounts, before the callee runs.
    let mut write_back = Vec::new();
    {
        let tc = &invoke_context.transaction_context;
        let caller_ctx = tc.get_current_instruction_context().map_err(ie_to_pe)?;
        let callee_ctx = tc.get_next_instruction_context().map_err(ie_to_pe)?;
        for ia in callee_ctx.instruction_accounts() {
            let key = tc
                .get_key_of_account_at_index(ia.index_in_transaction)
                .map_err(ie_to_pe)?;
            let info_index = account_infos
                .iter()
                .position(|a| a.key == key)
                .ok_or(ProgramError::NotEnoughAccountKeys)?;
            let info = &account_infos[info_index];
            let in_caller = caller_ctx
                .get_index_of_account_in_instruction(ia.index_in_transaction)
                .map_err(ie_to_pe)?;
            let mut borrowed = caller_ctx
                .try_borrow_instruction_account(in_caller)
                .map_err(ie_to_pe)?;
            if borrowed.get_lamports() != info.lamports() {
                borrowed.set_lamports(info.lamports()).map_err(ie_to_pe)?;
            }
            {
                let data = info.try_borrow_data()?;
                if borrowed.get_data() != &data[..] {
                    borrowed.can_data_be_resized(data.len()).map_err(ie_to_pe)?;
                    borrowed.set_data_from_slice(&data).map_err(ie_to_pe)?;
                }
            }
            if borrowed.get_owner() != info.owner {
                borrowed.set_owner(info.owner.as_ref()).map_err(ie_to_pe)?;
            }
            if ia.is_writable() {
                write_back.push((ia.index_in_transaction, info_index));
            }
        }
    }

    let mut units = 0;
    invoke_context
        .process_instruction(&mut units, &mut Default::default())
        .map_err(ie_to_pe)?;

    // Callee's changes -> caller's AccountInfos.
    let tc = &invoke_context.transaction_context;
    let caller_ctx = tc.get_current_instruction_context().map_err(ie_to_pe)?;
    for (index_in_transaction, info_index) in write_back {
        let in_caller = caller_ctx
            .get_index_of_account_in_instruction(index_in_transaction)
            .map_err(ie_to_pe)?;
        let borrowed = caller_ctx
            .try_borrow_instruction_account(in_caller)
            .map_err(ie_to_pe)?;
        let info = &account_infos[info_index];
        **info.try_borrow_mut_lamports()? = borrowed.get_lamports();
        if info.owner != borrowed.get_owner() {
            info.assign(borrowed.get_owner());
        }
        let new_data = borrowed.get_data();
        if info.data_len() != new_data.len() {
            info.resize(new_data.len())?;
        }
        info.try_borrow_mut_data()?.copy_from_slice(new_data);
    }
    Ok(())
}

/// The ledger's sysvar source off chain: the sysvar cache of the transaction running on this
/// thread (what the `sol_get_clock_sysvar` / `sol_get_rent_sysvar` syscalls read on chain).
struct HarnessSysvars;

impl SysvarProvider for HarnessSysvars {
    fn clock(&self) -> Option<Clock> {
        with_invoke_context(|ic| {
            ic.environment_config
                .sysvar_cache()
                .get_clock()
                .ok()
                .map(|c| (*c).clone())
        })
        .flatten()
    }

    fn rent(&self) -> Option<Rent> {
        with_invoke_context(|ic| {
            ic.environment_config
                .sysvar_cache()
                .get_rent()
                .ok()
                .map(|r| (*r).clone())
        })
        .flatten()
    }
}

/// Installs the ledger's syscall stubs and sysvar provider (once per process; idempotent).
pub fn install_syscall_stubs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        program_stubs::set_syscall_stubs(Box::new(LedgerSyscallStubs));
        set_sysvar_provider(Box::new(HarnessSysvars));
    });
}

// -------------------------------------------------------------------------------------------
// Setup
// -------------------------------------------------------------------------------------------

/// Registers the ledger program (native) in `svm` at [`PROGRAM_ID`].
pub fn add_ledger_program(svm: &mut LiteSVM) {
    install_syscall_stubs();
    svm.add_builtin(PROGRAM_ID, LedgerBuiltin::register);
}

/// A fresh `LiteSVM` (default programs: SPL Token, ATA, System, ...) with the ledger program.
pub fn svm_with_ledger() -> LiteSVM {
    let mut svm = LiteSVM::new();
    add_ledger_program(&mut svm);
    svm
}

/// Airdrops [`DEFAULT_AIRDROP`] lamports to `who`.
#[allow(clippy::result_large_err)] // same result type as `LiteSVM::send_transaction`
pub fn fund(svm: &mut LiteSVM, who: &Pubkey) -> TransactionResult {
    svm.airdrop(who, DEFAULT_AIRDROP)
}

/// Signs and sends `instructions` with `payer` paying fees. A fresh blockhash is used for
/// every call so identical instruction sets are distinct transactions (LiteSVM would
/// otherwise reject a resend as already processed).
#[allow(clippy::result_large_err)] // same result type as `LiteSVM::send_transaction`
pub fn send(
    svm: &mut LiteSVM,
    instructions: &[Instruction],
    payer: &Keypair,
    extra_signers: &[&Keypair],
) -> TransactionResult {
    svm.expire_blockhash();
    let tx = build_transaction(svm, instructions, payer, extra_signers);
    svm.send_transaction(tx)
}

/// Builds a signed legacy transaction with the current blockhash.
pub fn build_transaction(
    svm: &LiteSVM,
    instructions: &[Instruction],
    payer: &Keypair,
    extra_signers: &[&Keypair],
) -> Transaction {
    let mut signers: Vec<&Keypair> = vec![payer];
    for s in extra_signers {
        if !signers.iter().any(|k| k.pubkey() == s.pubkey()) {
            signers.push(s);
        }
    }
    let message = Message::new(instructions, Some(&payer.pubkey()));
    Transaction::new(&signers, message, svm.latest_blockhash())
}

/// Wire size of a transaction in bytes (compare with `solana_packet::PACKET_DATA_SIZE`).
pub fn transaction_size(tx: &Transaction) -> usize {
    wincode::serialize(tx)
        .expect("serializing an in-memory transaction cannot fail")
        .len()
}

/// Creates the pool mint at `mint` (a fresh keypair) with the ledger's mint-authority PDA as
/// mint authority and no freeze authority.
#[allow(clippy::result_large_err)] // same result type as `LiteSVM::send_transaction`
pub fn create_pool_mint(
    svm: &mut LiteSVM,
    payer: &Keypair,
    mint: &Keypair,
    decimals: u8,
) -> TransactionResult {
    let lamports = svm.minimum_balance_for_rent_exemption(spl::MINT_LEN);
    let authority = state::find_mint_authority_address().0;
    send(
        svm,
        &[
            ix::raw::system_create_account(
                &payer.pubkey(),
                &mint.pubkey(),
                lamports,
                spl::MINT_LEN as u64,
                &TOKEN_PROGRAM_ID,
            ),
            ix::raw::spl_initialize_mint2(&mint.pubkey(), &authority, None, decimals),
        ],
        payer,
        &[mint],
    )
}

/// Creates (idempotently) the associated token account of `(wallet, mint)`; returns its address.
pub fn create_ata(
    svm: &mut LiteSVM,
    payer: &Keypair,
    wallet: &Pubkey,
    mint: &Pubkey,
) -> Result<Pubkey, Box<FailedTransactionMetadata>> {
    send(
        svm,
        &[ix::create_associated_token_account_idempotent(
            &payer.pubkey(),
            wallet,
            mint,
        )],
        payer,
        &[],
    )
    .map_err(Box::new)?;
    Ok(state::get_associated_token_address(wallet, mint))
}

/// Writes the upgradeable loader's `ProgramData` account of the ledger program naming
/// `upgrade_authority`, as a deployment with `solana program deploy` would. The native builtin
/// has no loader account of its own, so the harness writes the account the loader would have.
pub fn install_program_data(svm: &mut LiteSVM, upgrade_authority: &Pubkey) {
    let data = state::program_data_header(0, Some(upgrade_authority));
    let lamports = svm.minimum_balance_for_rent_exemption(data.len());
    svm.set_account(
        state::program_data_address(&PROGRAM_ID),
        Account {
            lamports,
            data,
            owner: gpupool_ledger::bpf_loader_upgradeable::ID,
            executable: false,
            rent_epoch: 0,
        },
    )
    .expect("writing the ProgramData account");
}

/// Sets the on-chain clock's unix time (the slot is left as is).
pub fn set_unix_time(svm: &mut LiteSVM, unix_timestamp: i64) {
    let mut clock = svm.get_sysvar::<Clock>();
    clock.unix_timestamp = unix_timestamp;
    svm.set_sysvar(&clock);
}

/// The on-chain clock's unix time.
pub fn unix_time(svm: &LiteSVM) -> i64 {
    svm.get_sysvar::<Clock>().unix_timestamp
}

/// Settings of a pool created by [`setup_pool`].
#[derive(Clone, Copy, Debug)]
pub struct PoolSetup {
    /// Initial rates per GPU class.
    pub rates: [u64; NUM_GPU_CLASSES],
    /// Mint decimals.
    pub decimals: u8,
    /// Settlement period length.
    pub period_seconds: u64,
    /// Settlement horizon in periods.
    pub horizon_periods: u64,
    /// Highest rate of any GPU class.
    pub max_rate: u64,
    /// Highest GPU cap of any cluster.
    pub max_gpu_cap: u32,
    /// Periods increases and owner recoveries wait.
    pub timelock_periods: u64,
    /// Protocol fee of escrow settlements (basis points); with a fee, [`setup_pool`]
    /// creates a treasury token account owned by the admin.
    pub fee_bps: u16,
}

/// Default [`PoolSetup::max_rate`].
pub const DEFAULT_MAX_RATE: u64 = 1 << 40;
/// Default [`PoolSetup::max_gpu_cap`].
pub const DEFAULT_MAX_GPU_CAP: u32 = 1 << 20;
/// Default [`PoolSetup::timelock_periods`].
pub const DEFAULT_TIMELOCK_PERIODS: u64 = 3;

impl PoolSetup {
    /// Hourly periods, the largest horizon the program allows, the default bounds and
    /// timelock, no fee.
    pub fn new(rates: [u64; NUM_GPU_CLASSES], decimals: u8) -> Self {
        PoolSetup {
            rates,
            decimals,
            period_seconds: 3600,
            horizon_periods: state::MAX_HORIZON_PERIODS,
            max_rate: DEFAULT_MAX_RATE,
            max_gpu_cap: DEFAULT_MAX_GPU_CAP,
            timelock_periods: DEFAULT_TIMELOCK_PERIODS,
            fee_bps: 0,
        }
    }
}

/// The keys of a pool set up by [`setup_pool`].
#[derive(Debug)]
pub struct Pool {
    /// Admin and upgrade authority.
    pub admin: Keypair,
    pub oracle: Keypair,
    pub registrar: Keypair,
    pub mint: Pubkey,
    pub period_seconds: u64,
    /// Treasury token account of the fee (all zeros without a fee).
    pub treasury: Pubkey,
}

/// Funds fresh admin (made the program's upgrade authority), oracle and registrar keys,
/// creates the mint and initializes the pool.
pub fn setup_pool(
    svm: &mut LiteSVM,
    setup: PoolSetup,
) -> Result<Pool, Box<FailedTransactionMetadata>> {
    let admin = Keypair::new();
    let oracle = Keypair::new();
    let registrar = Keypair::new();
    for k in [&admin, &oracle, &registrar] {
        fund(svm, &k.pubkey()).map_err(Box::new)?;
    }
    install_program_data(svm, &admin.pubkey());
    let mint = Keypair::new();
    create_pool_mint(svm, &admin, &mint, setup.decimals).map_err(Box::new)?;
    let treasury = if setup.fee_bps > 0 {
        create_ata(svm, &admin, &admin.pubkey(), &mint.pubkey())?
    } else {
        Pubkey::default()
    };
    let params = PoolParams {
        oracle: oracle.pubkey(),
        registrar: registrar.pubkey(),
        period_seconds: setup.period_seconds,
        horizon_periods: setup.horizon_periods,
        rates: setup.rates,
        max_rate: setup.max_rate,
        max_gpu_cap: setup.max_gpu_cap,
        timelock_periods: setup.timelock_periods,
        fee_bps: setup.fee_bps,
        treasury,
    };
    send(
        svm,
        &[ix::initialize_pool(
            &admin.pubkey(),
            &mint.pubkey(),
            &params,
        )],
        &admin,
        &[],
    )
    .map_err(Box::new)?;
    Ok(Pool {
        admin,
        oracle,
        registrar,
        mint: mint.pubkey(),
        period_seconds: setup.period_seconds,
        treasury,
    })
}

/// Registers `cluster_id` for `owner` (who signs with `registrar`; `payer` pays) and creates
/// the owner's associated token account for the pool mint. Returns the cluster PDA.
pub fn register_cluster(
    svm: &mut LiteSVM,
    payer: &Keypair,
    owner: &Keypair,
    registrar: &Keypair,
    cluster_id: &[u8; 32],
    mint: &Pubkey,
) -> Result<Pubkey, Box<FailedTransactionMetadata>> {
    send(
        svm,
        &[
            ix::create_associated_token_account_idempotent(&payer.pubkey(), &owner.pubkey(), mint),
            ix::register_cluster(
                &payer.pubkey(),
                &owner.pubkey(),
                &registrar.pubkey(),
                cluster_id,
            ),
        ],
        payer,
        &[owner, registrar],
    )
    .map_err(Box::new)?;
    Ok(state::find_cluster_address(cluster_id).0)
}

/// Opens the escrow of `tenant_id` for `wallet` (who signs with `payer`), creating the escrow
/// token account first. Returns the tenant PDA.
pub fn open_escrow(
    svm: &mut LiteSVM,
    payer: &Keypair,
    wallet: &Keypair,
    tenant_id: &[u8; 32],
    mint: &Pubkey,
) -> Result<Pubkey, Box<FailedTransactionMetadata>> {
    let tenant = state::find_tenant_address(tenant_id).0;
    send(
        svm,
        &[
            ix::create_associated_token_account_idempotent(&payer.pubkey(), &tenant, mint),
            ix::open_escrow(&payer.pubkey(), &wallet.pubkey(), mint, tenant_id),
        ],
        payer,
        &[wallet],
    )
    .map_err(Box::new)?;
    Ok(tenant)
}

/// The tenant account of `tenant_id`, if its escrow is open.
pub fn read_tenant(svm: &LiteSVM, tenant_id: &[u8; 32]) -> Option<state::TenantAccount> {
    let account = svm.get_account(&state::find_tenant_address(tenant_id).0)?;
    (account.owner == PROGRAM_ID)
        .then(|| state::unpack(&account.data, state::TenantAccount::LEN, state::TAG_TENANT).ok())
        .flatten()
}

/// The reservation of `job_uid` under tenant `tenant_id`, if open.
pub fn read_reservation(
    svm: &LiteSVM,
    tenant_id: &[u8; 32],
    job_uid: &[u8; 16],
) -> Option<state::Reservation> {
    let tenant = state::find_tenant_address(tenant_id).0;
    let account = svm.get_account(&state::find_reservation_address(&tenant, job_uid).0)?;
    (account.owner == PROGRAM_ID)
        .then(|| {
            state::unpack(
                &account.data,
                state::Reservation::LEN,
                state::TAG_RESERVATION,
            )
            .ok()
        })
        .flatten()
}

/// Balance of the escrow of `tenant_id` (0 when it does not exist).
pub fn escrow_balance(svm: &LiteSVM, tenant_id: &[u8; 32], mint: &Pubkey) -> u64 {
    let tenant = state::find_tenant_address(tenant_id).0;
    token_balance(svm, &state::escrow_address(&tenant, mint)).unwrap_or(0)
}

/// Sets a cluster's GPU cap (and clears its disabled flag) as the admin.
#[allow(clippy::result_large_err)] // same result type as `LiteSVM::send_transaction`
pub fn set_gpu_cap(
    svm: &mut LiteSVM,
    admin: &Keypair,
    cluster_id: &[u8; 32],
    gpu_cap: u32,
) -> TransactionResult {
    send(
        svm,
        &[ix::configure_cluster(
            &admin.pubkey(),
            cluster_id,
            gpu_cap,
            false,
        )],
        admin,
        &[],
    )
}

// -------------------------------------------------------------------------------------------
// Reading state
// -------------------------------------------------------------------------------------------

/// Token amount held by an SPL token account, or `None` if it does not exist.
pub fn token_balance(svm: &LiteSVM, token_account: &Pubkey) -> Option<u64> {
    let account = svm.get_account(token_account)?;
    (account.owner == TOKEN_PROGRAM_ID)
        .then(|| spl::unpack_token_account(&account.data).map(|v| v.amount))
        .flatten()
}

/// Balance of `wallet`'s associated token account for `mint` (0 if it does not exist).
pub fn wallet_token_balance(svm: &LiteSVM, wallet: &Pubkey, mint: &Pubkey) -> u64 {
    token_balance(svm, &state::get_associated_token_address(wallet, mint)).unwrap_or(0)
}

/// Supply of an SPL mint.
pub fn mint_supply(svm: &LiteSVM, mint: &Pubkey) -> Option<u64> {
    let account = svm.get_account(mint)?;
    (account.owner == TOKEN_PROGRAM_ID)
        .then(|| spl::unpack_mint(&account.data).map(|v| v.supply))
        .flatten()
}

/// The pool config, if initialized.
pub fn read_config(svm: &LiteSVM) -> Option<PoolConfig> {
    let account = svm.get_account(&state::find_config_address().0)?;
    (account.owner == PROGRAM_ID)
        .then(|| state::unpack(&account.data, PoolConfig::LEN, TAG_CONFIG).ok())
        .flatten()
}

/// A registered cluster.
pub fn read_cluster(svm: &LiteSVM, cluster_id: &[u8; 32]) -> Option<ClusterAccount> {
    let account = svm.get_account(&state::find_cluster_address(cluster_id).0)?;
    (account.owner == PROGRAM_ID)
        .then(|| state::unpack_cluster(&account.data).ok())
        .flatten()
}

/// The receipt of `(cluster, job, period)`, if that usage was recorded.
pub fn read_receipt(
    svm: &LiteSVM,
    cluster_id: &[u8; 32],
    job_uid: &[u8; 16],
    period: u64,
) -> Option<UsageReceipt> {
    let cluster = state::find_cluster_address(cluster_id).0;
    let id = state::usage_id(cluster_id, job_uid, period);
    let account = svm.get_account(&state::find_receipt_address(&cluster, &id).0)?;
    (account.owner == PROGRAM_ID)
        .then(|| state::unpack(&account.data, UsageReceipt::LEN, TAG_RECEIPT).ok())
        .flatten()
}

/// The ledger error a failed transaction died of, if it was one of ours.
pub fn ledger_error(err: &TransactionError) -> Option<LedgerError> {
    match err {
        TransactionError::InstructionError(_, InstructionError::Custom(code)) => {
            LedgerError::from_code(*code)
        }
        _ => None,
    }
}
