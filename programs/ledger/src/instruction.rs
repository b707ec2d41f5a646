//! Instructions and builders.
//!
//! The builders return ready-to-sign [`Instruction`]s with every account derived, so callers
//! only supply keys they own. Instruction data is the borsh encoding of [`LedgerInstruction`].

use borsh::{BorshDeserialize, BorshSerialize};
use solana_program::{
    instruction::{AccountMeta, Instruction},
    pubkey::Pubkey,
};

use crate::state::{
    NUM_GPU_CLASSES, escrow_address, find_cluster_address, find_config_address,
    find_mint_authority_address, find_receipt_address, find_reservation_address,
    find_tenant_address, get_associated_token_address, program_data_address, usage_id,
};

/// One job's usage in one settlement period.
#[derive(BorshSerialize, BorshDeserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageEntry {
    /// Kubernetes UID of the job (UUID bytes, see [`crate::state::parse_job_uid`]).
    pub job_uid: [u8; 16],
    /// Settlement period; must have ended by the on-chain clock and lie within the horizon.
    pub period: u64,
    /// GPU-seconds to pay; must be > 0, and the cluster's total for the period must stay
    /// within its GPU cap times the period length.
    pub gpu_seconds: u64,
    /// GPU class whose rate (in the rate version of `period`) applies; must be priced.
    pub gpu_class: u8,
}

/// The authorities of a pool, each rotated in two steps (propose by the admin, accept by the
/// new key).
#[derive(BorshSerialize, BorshDeserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authority {
    /// Sets rates and cluster caps, proposes authorities.
    Admin,
    /// Records usage.
    Oracle,
    /// Co-signs cluster registration and owner changes (held by the hub).
    Registrar,
}

/// Ledger instructions.
#[derive(BorshSerialize, BorshDeserialize, Clone, Debug, PartialEq, Eq)]
pub enum LedgerInstruction {
    /// Creates the pool config. Only the program's upgrade authority may do so (read from the
    /// upgradeable loader's `ProgramData` account), so nobody can front-run the deployer.
    /// Admin (the signer), oracle and registrar must be three different keys; the mint must
    /// have a supply of 0; every rate must be at most `max_rate`.
    ///
    /// Accounts:
    /// 0. `[signer, writable]` admin: the program's upgrade authority (pays for the config)
    /// 1. `[writable]` config PDA
    /// 2. `[]` pool mint: an initialized SPL Token mint with no supply, whose mint authority
    ///    is the mint-authority PDA and whose freeze authority is unset or that PDA
    /// 3. `[]` mint-authority PDA
    /// 4. `[]` system program
    /// 5. `[]` the program's `ProgramData` account (upgradeable loader)
    InitializePool { params: PoolParams },
    /// Registers a member cluster and its owner wallet; the owner (signing the transaction
    /// that names the cluster id) and the registrar sign. The cluster is paid nothing until
    /// the admin approves it with `ConfigureCluster` (a GPU cap above 0): an approval the
    /// hub, which holds the registrar and oracle keys but never the admin key, cannot forge.
    ///
    /// Accounts:
    /// 0. `[signer, writable]` payer
    /// 1. `[signer]` cluster owner
    /// 2. `[signer]` registrar
    /// 3. `[]` config PDA
    /// 4. `[writable]` cluster PDA
    /// 5. `[]` system program
    RegisterCluster { cluster_id: [u8; 32] },
    /// Records one usage: creates its receipt and mints `rate * gpu_seconds` to the wallet
    /// that owned the cluster in the usage's period.
    ///
    /// Accounts:
    /// 0. `[signer]` oracle
    /// 1. `[signer, writable]` payer (receipt rent; may be the oracle)
    /// 2. `[]` config PDA
    /// 3. `[writable]` cluster PDA
    /// 4. `[writable]` pool mint
    /// 5. `[]` mint-authority PDA
    /// 6. `[writable]` associated token account of (owner in the period, pool mint)
    /// 7. `[]` SPL Token program
    /// 8. `[]` system program
    /// 9. `[writable]` receipt PDA
    RecordUsage { entry: UsageEntry },
    /// Like `RecordUsage` for several usages of one cluster: accounts 0..=8 as there, then
    /// one `[writable]` receipt PDA per entry, in entry order. One `MintTo` pays the sum.
    RecordUsageBatch { entries: Vec<UsageEntry> },
    /// Schedules new rates for all GPU classes from a future period on (never retroactive).
    /// Every rate is at most the pool's `max_rate`; a rate above the one in force takes
    /// effect `timelock_periods` ahead at the earliest (or not before the pending version it
    /// replaces, if it does not exceed that one). The newest version, while it has not taken
    /// effect, is always replaceable.
    ///
    /// Accounts: 0. `[signer]` admin, 1. `[writable]` config PDA
    SetRates {
        rates: [u64; NUM_GPU_CLASSES],
        effective_from_period: u64,
    },
    /// Proposes `new_key` for `authority`; it takes over when it signs `AcceptAuthority`
    /// within [`crate::state::PROPOSAL_TTL_SECONDS`]. The key must not hold (or be proposed
    /// for) another of the three roles.
    ///
    /// Accounts: 0. `[signer]` admin, 1. `[writable]` config PDA
    ProposeAuthority {
        authority: Authority,
        new_key: Pubkey,
    },
    /// The proposed key takes over `authority`. A new admin clears every other pending
    /// proposal.
    ///
    /// Accounts: 0. `[signer]` the pending key, 1. `[writable]` config PDA
    AcceptAuthority { authority: Authority },
    /// Hands a cluster over to a new owner wallet from the next period on (usage of earlier
    /// periods is still paid to the current owner). The current and the new owner sign.
    /// Refused while periods of an earlier owner are still recordable.
    ///
    /// Accounts: 0. `[signer]` current owner, 1. `[signer]` new owner, 2. `[]` config PDA,
    /// 3. `[writable]` cluster PDA
    SetClusterOwner,
    /// Sets a cluster's GPU cap and disabled flag (admin). The first cap above 0 approves
    /// the cluster and applies at once; a later increase applies once `timelock_periods`
    /// have passed; a decrease applies at once. The cap is at most the pool's `max_gpu_cap`.
    ///
    /// Accounts: 0. `[signer]` admin, 1. `[]` config PDA, 2. `[writable]` cluster PDA
    ConfigureCluster { gpu_cap: u32, disabled: bool },
    /// Closes a receipt whose period is older than the settlement horizon (so it can never be
    /// recorded again) and returns its rent to whoever paid it. Anyone may send it.
    ///
    /// Accounts: 0. `[writable]` receipt PDA, 1. `[writable]` the receipt's rent payer,
    /// 2. `[]` config PDA
    CloseReceipt,
    /// Withdraws a pending authority proposal (admin).
    ///
    /// Accounts: 0. `[signer]` admin, 1. `[writable]` config PDA
    CancelAuthority { authority: Authority },
    /// Emergency pause or resume (admin): while paused, nothing is registered, recorded,
    /// settled or reserved. Tenants may still deposit and withdraw what is not reserved.
    ///
    /// Accounts: 0. `[signer]` admin, 1. `[writable]` config PDA
    SetPaused { paused: bool },
    /// Lost-key path: the admin proposes `new_owner` for a cluster; the current owner can
    /// veto it for `timelock_periods`, after which the new owner executes it.
    ///
    /// Accounts: 0. `[signer]` admin, 1. `[]` config PDA, 2. `[writable]` cluster PDA
    ProposeOwnerRecovery { new_owner: Pubkey },
    /// The current owner vetoes a pending recovery.
    ///
    /// Accounts: 0. `[signer]` current owner, 1. `[]` config PDA, 2. `[writable]` cluster PDA
    VetoOwnerRecovery,
    /// The recovered owner takes the cluster over, for every period not yet paid (the
    /// recovery corrects who owns the cluster). Only while the admin that proposed it is
    /// still the admin.
    ///
    /// Accounts: 0. `[signer]` new owner, 1. `[]` config PDA, 2. `[writable]` cluster PDA
    ExecuteOwnerRecovery,
    /// Opens the escrow of tenant `tenant_id`, withdrawable by the signing wallet only. The
    /// escrow token account (the associated token account of (tenant PDA, pool mint)) must
    /// exist already.
    ///
    /// Accounts: 0. `[signer, writable]` payer, 1. `[signer]` tenant wallet, 2. `[]` config
    /// PDA, 3. `[writable]` tenant PDA, 4. `[]` escrow token account, 5. `[]` system program
    OpenEscrow { tenant_id: [u8; 32] },
    /// Anyone funds a tenant's escrow from a token account it controls.
    ///
    /// Accounts: 0. `[signer]` depositor, 1. `[writable]` source token account,
    /// 2. `[]` config PDA, 3. `[writable]` tenant PDA, 4. `[writable]` escrow token account,
    /// 5. `[]` SPL Token program
    Deposit { amount: u64 },
    /// The tenant wallet withdraws what is not reserved.
    ///
    /// Accounts: 0. `[signer]` tenant wallet, 1. `[]` config PDA, 2. `[writable]` tenant PDA,
    /// 3. `[writable]` escrow token account, 4. `[writable]` destination token account,
    /// 5. `[]` SPL Token program
    Withdraw { amount: u64 },
    /// The oracle reserves `amount` of a tenant's unreserved escrow for job `job_uid`
    /// (creating or topping up its reservation).
    ///
    /// Accounts: 0. `[signer]` oracle, 1. `[signer, writable]` payer (reservation rent),
    /// 2. `[]` config PDA, 3. `[writable]` tenant PDA, 4. `[]` escrow token account,
    /// 5. `[writable]` reservation PDA, 6. `[]` system program
    Reserve { job_uid: [u8; 16], amount: u64 },
    /// The oracle releases what is left of a job's reservation and closes it (rent back to
    /// its payer).
    ///
    /// Accounts: 0. `[signer]` oracle, 1. `[]` config PDA, 2. `[writable]` tenant PDA,
    /// 3. `[writable]` reservation PDA, 4. `[writable]` the reservation's rent payer
    Release { job_uid: [u8; 16] },
    /// Like `RecordUsageBatch`, paid by a tenant: each entry's `rate * gpu_seconds` is drawn
    /// from its job's reservation; the fee goes from the escrow to the treasury, the rest is
    /// burned from the escrow and minted to the owner. Accounts 0..=8 as `RecordUsage`, then
    /// 9. `[writable]` tenant PDA, 10. `[writable]` escrow token account, 11. `[writable]`
    /// treasury token account (any account when the fee is 0), then per entry in order its
    /// `[writable]` receipt PDA and its job's `[writable]` reservation PDA.
    SettleUsage { entries: Vec<UsageEntry> },
}

impl LedgerInstruction {
    /// The instruction's name, as logged.
    pub fn name(&self) -> &'static str {
        match self {
            Self::InitializePool { .. } => "InitializePool",
            Self::RegisterCluster { .. } => "RegisterCluster",
            Self::RecordUsage { .. } => "RecordUsage",
            Self::RecordUsageBatch { .. } => "RecordUsageBatch",
            Self::SetRates { .. } => "SetRates",
            Self::ProposeAuthority { .. } => "ProposeAuthority",
            Self::AcceptAuthority { .. } => "AcceptAuthority",
            Self::SetClusterOwner => "SetClusterOwner",
            Self::ConfigureCluster { .. } => "ConfigureCluster",
            Self::CloseReceipt => "CloseReceipt",
            Self::CancelAuthority { .. } => "CancelAuthority",
            Self::SetPaused { .. } => "SetPaused",
            Self::ProposeOwnerRecovery { .. } => "ProposeOwnerRecovery",
            Self::VetoOwnerRecovery => "VetoOwnerRecovery",
            Self::ExecuteOwnerRecovery => "ExecuteOwnerRecovery",
            Self::OpenEscrow { .. } => "OpenEscrow",
            Self::Deposit { .. } => "Deposit",
            Self::Withdraw { .. } => "Withdraw",
            Self::Reserve { .. } => "Reserve",
            Self::Release { .. } => "Release",
            Self::SettleUsage { .. } => "SettleUsage",
        }
    }

    /// Borsh encoding.
    pub fn pack(&self) -> Vec<u8> {
        borsh::to_vec(self).expect("borsh encoding of an in-memory value cannot fail")
    }
}

fn ix(accounts: Vec<AccountMeta>, data: &LedgerInstruction) -> Instruction {
    Instruction {
        program_id: crate::ID,
        accounts,
        data: data.pack(),
    }
}

/// Pool parameters fixed at initialization (rates can be rescheduled later).
#[derive(BorshSerialize, BorshDeserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolParams {
    /// Records usage.
    pub oracle: Pubkey,
    /// Co-signs registrations (held by the hub).
    pub registrar: Pubkey,
    /// Settlement period length in seconds.
    pub period_seconds: u64,
    /// Settlement horizon in periods (`1..=MAX_HORIZON_PERIODS`).
    pub horizon_periods: u64,
    /// Initial rates per GPU class.
    pub rates: [u64; NUM_GPU_CLASSES],
    /// Highest rate any GPU class may ever have.
    pub max_rate: u64,
    /// Highest GPU cap any cluster may ever have.
    pub max_gpu_cap: u32,
    /// Periods increases and owner recoveries wait (at least
    /// [`crate::state::MIN_TIMELOCK_PERIODS`]).
    pub timelock_periods: u64,
    /// Protocol fee of escrow settlements in basis points (at most
    /// [`crate::state::MAX_FEE_BPS`]).
    pub fee_bps: u16,
    /// Token account of the pool mint receiving the fee (all zeros when `fee_bps` is 0).
    pub treasury: Pubkey,
}

/// `InitializePool`: `admin` (the program's upgrade authority) signs and pays; `mint` must
/// already exist with the mint-authority PDA ([`find_mint_authority_address`]) as its mint
/// authority.
pub fn initialize_pool(admin: &Pubkey, mint: &Pubkey, params: &PoolParams) -> Instruction {
    ix(
        vec![
            AccountMeta::new(*admin, true),
            AccountMeta::new(find_config_address().0, false),
            AccountMeta::new_readonly(*mint, false),
            AccountMeta::new_readonly(find_mint_authority_address().0, false),
            AccountMeta::new_readonly(crate::system_program::ID, false),
            AccountMeta::new_readonly(program_data_address(&crate::ID), false),
        ],
        &LedgerInstruction::InitializePool { params: *params },
    )
}

/// `RegisterCluster`: `owner` (the wallet that will be paid) and `registrar` sign, `payer`
/// signs and pays.
pub fn register_cluster(
    payer: &Pubkey,
    owner: &Pubkey,
    registrar: &Pubkey,
    cluster_id: &[u8; 32],
) -> Instruction {
    ix(
        vec![
            AccountMeta::new(*payer, true),
            AccountMeta::new_readonly(*owner, true),
            AccountMeta::new_readonly(*registrar, true),
            AccountMeta::new_readonly(find_config_address().0, false),
            AccountMeta::new(find_cluster_address(cluster_id).0, false),
            AccountMeta::new_readonly(crate::system_program::ID, false),
        ],
        &LedgerInstruction::RegisterCluster {
            cluster_id: *cluster_id,
        },
    )
}

fn usage_accounts(
    oracle: &Pubkey,
    payer: &Pubkey,
    mint: &Pubkey,
    cluster_id: &[u8; 32],
    cluster_owner: &Pubkey,
    entries: &[UsageEntry],
) -> Vec<AccountMeta> {
    let cluster = find_cluster_address(cluster_id).0;
    let mut accounts = usage_head(oracle, payer, mint, &cluster, cluster_owner);
    for e in entries {
        accounts.push(AccountMeta::new(receipt_of(cluster_id, &cluster, e), false));
    }
    accounts
}

fn receipt_of(cluster_id: &[u8; 32], cluster: &Pubkey, e: &UsageEntry) -> Pubkey {
    find_receipt_address(cluster, &usage_id(cluster_id, &e.job_uid, e.period)).0
}

fn usage_head(
    oracle: &Pubkey,
    payer: &Pubkey,
    mint: &Pubkey,
    cluster: &Pubkey,
    cluster_owner: &Pubkey,
) -> Vec<AccountMeta> {
    let mut accounts = Vec::with_capacity(16);
    accounts.extend([
        AccountMeta::new_readonly(*oracle, true),
        AccountMeta::new(*payer, true),
        AccountMeta::new_readonly(find_config_address().0, false),
        AccountMeta::new(*cluster, false),
        AccountMeta::new(*mint, false),
        AccountMeta::new_readonly(find_mint_authority_address().0, false),
        AccountMeta::new(get_associated_token_address(cluster_owner, mint), false),
        AccountMeta::new_readonly(crate::spl_token::ID, false),
        AccountMeta::new_readonly(crate::system_program::ID, false),
    ]);
    accounts
}

/// `RecordUsage`: `oracle` signs; `payer` signs and pays the receipt's rent (pass the oracle
/// twice to have it pay). `cluster_owner` is the owner stored in the cluster account; the
/// owner's associated token account for `mint` must exist (see
/// [`create_associated_token_account_idempotent`]).
pub fn record_usage(
    oracle: &Pubkey,
    payer: &Pubkey,
    mint: &Pubkey,
    cluster_id: &[u8; 32],
    cluster_owner: &Pubkey,
    entry: UsageEntry,
) -> Instruction {
    ix(
        usage_accounts(oracle, payer, mint, cluster_id, cluster_owner, &[entry]),
        &LedgerInstruction::RecordUsage { entry },
    )
}

/// `RecordUsageBatch`: like [`record_usage`] for many entries of one cluster. At most
/// [`crate::MAX_BATCH_RECEIPTS`] entries fit one transaction together with the two
/// compute-budget instructions ([`raw::set_compute_unit_limit`],
/// [`raw::set_compute_unit_price`]).
pub fn record_usage_batch(
    oracle: &Pubkey,
    payer: &Pubkey,
    mint: &Pubkey,
    cluster_id: &[u8; 32],
    cluster_owner: &Pubkey,
    entries: &[UsageEntry],
) -> Instruction {
    ix(
        usage_accounts(oracle, payer, mint, cluster_id, cluster_owner, entries),
        &LedgerInstruction::RecordUsageBatch {
            entries: entries.to_vec(),
        },
    )
}

/// Compute units to request for a `RecordUsageBatch` of `entries` receipts. An estimate with
/// headroom (the native test build does not meter compute units): per entry a receipt PDA
/// derivation, a SHA-256 and a System `CreateAccount` CPI; per batch the config and cluster
/// checks, an ATA derivation and one `MintTo` CPI.
pub fn record_usage_compute_units(entries: usize) -> u32 {
    let per_entry: u32 = 30_000;
    let base: u32 = 60_000;
    let n = u32::try_from(entries).unwrap_or(u32::MAX);
    base.saturating_add(per_entry.saturating_mul(n))
        .min(1_400_000)
}

/// `SetRates`: `admin` signs.
pub fn set_rates(
    admin: &Pubkey,
    rates: [u64; NUM_GPU_CLASSES],
    effective_from_period: u64,
) -> Instruction {
    ix(
        vec![
            AccountMeta::new_readonly(*admin, true),
            AccountMeta::new(find_config_address().0, false),
        ],
        &LedgerInstruction::SetRates {
            rates,
            effective_from_period,
        },
    )
}

/// `ProposeAuthority`: `admin` signs.
pub fn propose_authority(admin: &Pubkey, authority: Authority, new_key: &Pubkey) -> Instruction {
    ix(
        vec![
            AccountMeta::new_readonly(*admin, true),
            AccountMeta::new(find_config_address().0, false),
        ],
        &LedgerInstruction::ProposeAuthority {
            authority,
            new_key: *new_key,
        },
    )
}

/// `AcceptAuthority`: `new_key` signs.
pub fn accept_authority(new_key: &Pubkey, authority: Authority) -> Instruction {
    ix(
        vec![
            AccountMeta::new_readonly(*new_key, true),
            AccountMeta::new(find_config_address().0, false),
        ],
        &LedgerInstruction::AcceptAuthority { authority },
    )
}

/// `SetClusterOwner`: `current_owner` and `new_owner` sign.
pub fn set_cluster_owner(
    current_owner: &Pubkey,
    new_owner: &Pubkey,
    cluster_id: &[u8; 32],
) -> Instruction {
    ix(
        vec![
            AccountMeta::new_readonly(*current_owner, true),
            AccountMeta::new_readonly(*new_owner, true),
            AccountMeta::new_readonly(find_config_address().0, false),
            AccountMeta::new(find_cluster_address(cluster_id).0, false),
        ],
        &LedgerInstruction::SetClusterOwner,
    )
}

/// `ConfigureCluster`: `admin` signs.
pub fn configure_cluster(
    admin: &Pubkey,
    cluster_id: &[u8; 32],
    gpu_cap: u32,
    disabled: bool,
) -> Instruction {
    ix(
        vec![
            AccountMeta::new_readonly(*admin, true),
            AccountMeta::new_readonly(find_config_address().0, false),
            AccountMeta::new(find_cluster_address(cluster_id).0, false),
        ],
        &LedgerInstruction::ConfigureCluster { gpu_cap, disabled },
    )
}

/// `CloseReceipt` of the receipt at `receipt`, returning its rent to `rent_payer` (the payer
/// stored in the receipt). Needs no signature.
pub fn close_receipt(receipt: &Pubkey, rent_payer: &Pubkey) -> Instruction {
    ix(
        vec![
            AccountMeta::new(*receipt, false),
            AccountMeta::new(*rent_payer, false),
            AccountMeta::new_readonly(find_config_address().0, false),
        ],
        &LedgerInstruction::CloseReceipt,
    )
}

fn admin_config(admin: &Pubkey, data: &LedgerInstruction) -> Instruction {
    ix(
        vec![
            AccountMeta::new_readonly(*admin, true),
            AccountMeta::new(find_config_address().0, false),
        ],
        data,
    )
}

fn signer_config_cluster(
    signer: &Pubkey,
    cluster_id: &[u8; 32],
    data: &LedgerInstruction,
) -> Instruction {
    ix(
        vec![
            AccountMeta::new_readonly(*signer, true),
            AccountMeta::new_readonly(find_config_address().0, false),
            AccountMeta::new(find_cluster_address(cluster_id).0, false),
        ],
        data,
    )
}

/// `CancelAuthority`: `admin` signs.
pub fn cancel_authority(admin: &Pubkey, authority: Authority) -> Instruction {
    admin_config(admin, &LedgerInstruction::CancelAuthority { authority })
}

/// `SetPaused`: `admin` signs.
pub fn set_paused(admin: &Pubkey, paused: bool) -> Instruction {
    admin_config(admin, &LedgerInstruction::SetPaused { paused })
}

/// `ProposeOwnerRecovery`: `admin` signs.
pub fn propose_owner_recovery(
    admin: &Pubkey,
    cluster_id: &[u8; 32],
    new_owner: &Pubkey,
) -> Instruction {
    signer_config_cluster(
        admin,
        cluster_id,
        &LedgerInstruction::ProposeOwnerRecovery {
            new_owner: *new_owner,
        },
    )
}

/// `VetoOwnerRecovery`: the cluster's current `owner` signs.
pub fn veto_owner_recovery(owner: &Pubkey, cluster_id: &[u8; 32]) -> Instruction {
    signer_config_cluster(owner, cluster_id, &LedgerInstruction::VetoOwnerRecovery)
}

/// `ExecuteOwnerRecovery`: the recovered `new_owner` signs.
pub fn execute_owner_recovery(new_owner: &Pubkey, cluster_id: &[u8; 32]) -> Instruction {
    signer_config_cluster(
        new_owner,
        cluster_id,
        &LedgerInstruction::ExecuteOwnerRecovery,
    )
}

/// `OpenEscrow`: `wallet` (who alone may withdraw) and `payer` sign. Create the escrow token
/// account first with [`create_associated_token_account_idempotent`] for
/// (tenant PDA, mint).
pub fn open_escrow(
    payer: &Pubkey,
    wallet: &Pubkey,
    mint: &Pubkey,
    tenant_id: &[u8; 32],
) -> Instruction {
    let tenant = find_tenant_address(tenant_id).0;
    ix(
        vec![
            AccountMeta::new(*payer, true),
            AccountMeta::new_readonly(*wallet, true),
            AccountMeta::new_readonly(find_config_address().0, false),
            AccountMeta::new(tenant, false),
            AccountMeta::new_readonly(escrow_address(&tenant, mint), false),
            AccountMeta::new_readonly(crate::system_program::ID, false),
        ],
        &LedgerInstruction::OpenEscrow {
            tenant_id: *tenant_id,
        },
    )
}

/// `Deposit`: `depositor` signs and pays `amount` from its token account `source`.
pub fn deposit(
    depositor: &Pubkey,
    source: &Pubkey,
    mint: &Pubkey,
    tenant_id: &[u8; 32],
    amount: u64,
) -> Instruction {
    let tenant = find_tenant_address(tenant_id).0;
    ix(
        vec![
            AccountMeta::new_readonly(*depositor, true),
            AccountMeta::new(*source, false),
            AccountMeta::new_readonly(find_config_address().0, false),
            AccountMeta::new(tenant, false),
            AccountMeta::new(escrow_address(&tenant, mint), false),
            AccountMeta::new_readonly(crate::spl_token::ID, false),
        ],
        &LedgerInstruction::Deposit { amount },
    )
}

/// `Withdraw`: the tenant `wallet` signs; `amount` goes to the token account `destination`.
pub fn withdraw(
    wallet: &Pubkey,
    mint: &Pubkey,
    tenant_id: &[u8; 32],
    destination: &Pubkey,
    amount: u64,
) -> Instruction {
    let tenant = find_tenant_address(tenant_id).0;
    ix(
        vec![
            AccountMeta::new_readonly(*wallet, true),
            AccountMeta::new_readonly(find_config_address().0, false),
            AccountMeta::new(tenant, false),
            AccountMeta::new(escrow_address(&tenant, mint), false),
            AccountMeta::new(*destination, false),
            AccountMeta::new_readonly(crate::spl_token::ID, false),
        ],
        &LedgerInstruction::Withdraw { amount },
    )
}

/// `Reserve`: `oracle` signs; `payer` signs and pays the reservation's rent.
pub fn reserve(
    oracle: &Pubkey,
    payer: &Pubkey,
    mint: &Pubkey,
    tenant_id: &[u8; 32],
    job_uid: &[u8; 16],
    amount: u64,
) -> Instruction {
    let tenant = find_tenant_address(tenant_id).0;
    ix(
        vec![
            AccountMeta::new_readonly(*oracle, true),
            AccountMeta::new(*payer, true),
            AccountMeta::new_readonly(find_config_address().0, false),
            AccountMeta::new(tenant, false),
            AccountMeta::new_readonly(escrow_address(&tenant, mint), false),
            AccountMeta::new(find_reservation_address(&tenant, job_uid).0, false),
            AccountMeta::new_readonly(crate::system_program::ID, false),
        ],
        &LedgerInstruction::Reserve {
            job_uid: *job_uid,
            amount,
        },
    )
}

/// `Release`: `oracle` signs; the reservation's rent goes back to `rent_payer`.
pub fn release(
    oracle: &Pubkey,
    tenant_id: &[u8; 32],
    job_uid: &[u8; 16],
    rent_payer: &Pubkey,
) -> Instruction {
    let tenant = find_tenant_address(tenant_id).0;
    ix(
        vec![
            AccountMeta::new_readonly(*oracle, true),
            AccountMeta::new_readonly(find_config_address().0, false),
            AccountMeta::new(tenant, false),
            AccountMeta::new(find_reservation_address(&tenant, job_uid).0, false),
            AccountMeta::new(*rent_payer, false),
        ],
        &LedgerInstruction::Release { job_uid: *job_uid },
    )
}

/// Who pays an escrow settlement, and where its fee goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payer<'a> {
    /// The paying tenant's id.
    pub tenant_id: &'a [u8; 32],
    /// The pool's treasury token account (`PoolConfig::treasury`).
    pub treasury: &'a Pubkey,
}

/// `SettleUsage`: like [`record_usage_batch`], paid from `payer.tenant_id`'s escrow through
/// each entry's job reservation.
pub fn settle_usage(
    oracle: &Pubkey,
    payer: &Pubkey,
    mint: &Pubkey,
    cluster_id: &[u8; 32],
    cluster_owner: &Pubkey,
    tenant: Payer<'_>,
    entries: &[UsageEntry],
) -> Instruction {
    let cluster = find_cluster_address(cluster_id).0;
    let tenant_key = find_tenant_address(tenant.tenant_id).0;
    let mut accounts = usage_head(oracle, payer, mint, &cluster, cluster_owner);
    accounts.extend([
        AccountMeta::new(tenant_key, false),
        AccountMeta::new(escrow_address(&tenant_key, mint), false),
        AccountMeta::new(*tenant.treasury, false),
    ]);
    for e in entries {
        accounts.push(AccountMeta::new(receipt_of(cluster_id, &cluster, e), false));
        accounts.push(AccountMeta::new(
            find_reservation_address(&tenant_key, &e.job_uid).0,
            false,
        ));
    }
    ix(
        accounts,
        &LedgerInstruction::SettleUsage {
            entries: entries.to_vec(),
        },
    )
}

/// Associated Token Account program `CreateIdempotent`: creates the ATA of `(wallet, mint)`
/// under SPL Token if it does not exist; `payer` signs and pays.
pub fn create_associated_token_account_idempotent(
    payer: &Pubkey,
    wallet: &Pubkey,
    mint: &Pubkey,
) -> Instruction {
    Instruction {
        program_id: crate::spl_associated_token_account::ID,
        accounts: vec![
            AccountMeta::new(*payer, true),
            AccountMeta::new(get_associated_token_address(wallet, mint), false),
            AccountMeta::new_readonly(*wallet, false),
            AccountMeta::new_readonly(*mint, false),
            AccountMeta::new_readonly(crate::system_program::ID, false),
            AccountMeta::new_readonly(crate::spl_token::ID, false),
        ],
        data: vec![1],
    }
}

/// Hand-encoded SPL Token, System and Compute Budget instructions used by the program and by
/// clients.
pub mod raw {
    use super::*;

    /// Compute Budget `SetComputeUnitLimit` (tag 2, u32 LE units).
    pub fn set_compute_unit_limit(units: u32) -> Instruction {
        let mut data = Vec::with_capacity(5);
        data.push(2u8);
        data.extend_from_slice(&units.to_le_bytes());
        Instruction {
            program_id: crate::compute_budget::ID,
            accounts: vec![],
            data,
        }
    }

    /// Compute Budget `SetComputeUnitPrice` (tag 3, u64 LE micro-lamports per unit).
    pub fn set_compute_unit_price(micro_lamports: u64) -> Instruction {
        let mut data = Vec::with_capacity(9);
        data.push(3u8);
        data.extend_from_slice(&micro_lamports.to_le_bytes());
        Instruction {
            program_id: crate::compute_budget::ID,
            accounts: vec![],
            data,
        }
    }

    /// SPL Token `MintTo` (tag 7): mint `[w]`, destination `[w]`, authority `[s]`.
    pub fn spl_mint_to(
        mint: &Pubkey,
        destination: &Pubkey,
        authority: &Pubkey,
        amount: u64,
    ) -> Instruction {
        let mut data = Vec::with_capacity(9);
        data.push(7u8);
        data.extend_from_slice(&amount.to_le_bytes());
        Instruction {
            program_id: crate::spl_token::ID,
            accounts: vec![
                AccountMeta::new(*mint, false),
                AccountMeta::new(*destination, false),
                AccountMeta::new_readonly(*authority, true),
            ],
            data,
        }
    }

    /// SPL Token `Transfer` (tag 3): source `[w]`, destination `[w]`, authority `[s]`.
    pub fn spl_transfer(
        source: &Pubkey,
        destination: &Pubkey,
        authority: &Pubkey,
        amount: u64,
    ) -> Instruction {
        let mut data = Vec::with_capacity(9);
        data.push(3u8);
        data.extend_from_slice(&amount.to_le_bytes());
        Instruction {
            program_id: crate::spl_token::ID,
            accounts: vec![
                AccountMeta::new(*source, false),
                AccountMeta::new(*destination, false),
                AccountMeta::new_readonly(*authority, true),
            ],
            data,
        }
    }

    /// SPL Token `Burn` (tag 8): account `[w]`, mint `[w]`, authority `[s]`.
    pub fn spl_burn(
        account: &Pubkey,
        mint: &Pubkey,
        authority: &Pubkey,
        amount: u64,
    ) -> Instruction {
        let mut data = Vec::with_capacity(9);
        data.push(8u8);
        data.extend_from_slice(&amount.to_le_bytes());
        Instruction {
            program_id: crate::spl_token::ID,
            accounts: vec![
                AccountMeta::new(*account, false),
                AccountMeta::new(*mint, false),
                AccountMeta::new_readonly(*authority, true),
            ],
            data,
        }
    }

    /// SPL Token `InitializeMint2` (tag 20): mint `[w]`.
    pub fn spl_initialize_mint2(
        mint: &Pubkey,
        mint_authority: &Pubkey,
        freeze_authority: Option<&Pubkey>,
        decimals: u8,
    ) -> Instruction {
        let mut data = Vec::with_capacity(67);
        data.push(20u8);
        data.push(decimals);
        data.extend_from_slice(mint_authority.as_ref());
        match freeze_authority {
            Some(k) => {
                data.push(1);
                data.extend_from_slice(k.as_ref());
            }
            None => data.push(0),
        }
        Instruction {
            program_id: crate::spl_token::ID,
            accounts: vec![AccountMeta::new(*mint, false)],
            data,
        }
    }

    /// System `CreateAccount` (tag 0): from `[s, w]`, to `[s, w]`.
    pub fn system_create_account(
        from: &Pubkey,
        to: &Pubkey,
        lamports: u64,
        space: u64,
        owner: &Pubkey,
    ) -> Instruction {
        let mut data = Vec::with_capacity(52);
        data.extend_from_slice(&0u32.to_le_bytes());
        data.extend_from_slice(&lamports.to_le_bytes());
        data.extend_from_slice(&space.to_le_bytes());
        data.extend_from_slice(owner.as_ref());
        Instruction {
            program_id: crate::system_program::ID,
            accounts: vec![AccountMeta::new(*from, true), AccountMeta::new(*to, true)],
            data,
        }
    }

    /// System `Transfer` (tag 2): from `[s, w]`, to `[w]`.
    pub fn system_transfer(from: &Pubkey, to: &Pubkey, lamports: u64) -> Instruction {
        let mut data = Vec::with_capacity(12);
        data.extend_from_slice(&2u32.to_le_bytes());
        data.extend_from_slice(&lamports.to_le_bytes());
        Instruction {
            program_id: crate::system_program::ID,
            accounts: vec![AccountMeta::new(*from, true), AccountMeta::new(*to, false)],
            data,
        }
    }

    /// System `Allocate` (tag 8): account `[s, w]`.
    pub fn system_allocate(account: &Pubkey, space: u64) -> Instruction {
        let mut data = Vec::with_capacity(12);
        data.extend_from_slice(&8u32.to_le_bytes());
        data.extend_from_slice(&space.to_le_bytes());
        Instruction {
            program_id: crate::system_program::ID,
            accounts: vec![AccountMeta::new(*account, true)],
            data,
        }
    }

    /// System `Assign` (tag 1): account `[s, w]`.
    pub fn system_assign(account: &Pubkey, owner: &Pubkey) -> Instruction {
        let mut data = Vec::with_capacity(36);
        data.extend_from_slice(&1u32.to_le_bytes());
        data.extend_from_slice(owner.as_ref());
        Instruction {
            program_id: crate::system_program::ID,
            accounts: vec![AccountMeta::new(*account, true)],
            data,
        }
    }
}
