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
    NUM_GPU_CLASSES, find_cluster_address, find_config_address, find_mint_authority_address,
    find_receipt_address, get_associated_token_address, program_data_address, usage_id,
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
    ///
    /// Accounts:
    /// 0. `[signer, writable]` admin: the program's upgrade authority (pays for the config)
    /// 1. `[writable]` config PDA
    /// 2. `[]` pool mint: an initialized SPL Token mint whose mint authority is the
    ///    mint-authority PDA and whose freeze authority is unset or that PDA
    /// 3. `[]` mint-authority PDA
    /// 4. `[]` system program
    /// 5. `[]` the program's `ProgramData` account (upgradeable loader)
    InitializePool {
        oracle: Pubkey,
        registrar: Pubkey,
        period_seconds: u64,
        horizon_periods: u64,
        rates: [u64; NUM_GPU_CLASSES],
    },
    /// Registers a member cluster and its owner wallet; the owner and the registrar sign.
    /// The cluster starts with a GPU cap of 0 (nothing payable) until the admin sets one.
    ///
    /// Accounts:
    /// 0. `[signer, writable]` payer
    /// 1. `[signer]` cluster owner
    /// 2. `[signer]` registrar
    /// 3. `[]` config PDA
    /// 4. `[writable]` cluster PDA
    /// 5. `[]` system program
    RegisterCluster { cluster_id: [u8; 32] },
    /// Records one usage: creates its receipt and mints `rate * gpu_seconds` to the owner.
    ///
    /// Accounts:
    /// 0. `[signer]` oracle
    /// 1. `[signer, writable]` payer (receipt rent; may be the oracle)
    /// 2. `[]` config PDA
    /// 3. `[writable]` cluster PDA
    /// 4. `[writable]` pool mint
    /// 5. `[]` mint-authority PDA
    /// 6. `[writable]` associated token account of (cluster owner, pool mint)
    /// 7. `[]` SPL Token program
    /// 8. `[]` system program
    /// 9. `[writable]` receipt PDA
    RecordUsage { entry: UsageEntry },
    /// Like `RecordUsage` for several usages of one cluster: accounts 0..=8 as there, then
    /// one `[writable]` receipt PDA per entry, in entry order. One `MintTo` pays the sum.
    RecordUsageBatch { entries: Vec<UsageEntry> },
    /// Schedules new rates for all GPU classes from a future period on (never retroactive).
    /// A change that has not taken effect yet is replaced.
    ///
    /// Accounts: 0. `[signer]` admin, 1. `[writable]` config PDA
    SetRates {
        rates: [u64; NUM_GPU_CLASSES],
        effective_from_period: u64,
    },
    /// Proposes `new_key` for `authority`; it takes over when it signs `AcceptAuthority`.
    ///
    /// Accounts: 0. `[signer]` admin, 1. `[writable]` config PDA
    ProposeAuthority {
        authority: Authority,
        new_key: Pubkey,
    },
    /// The proposed key takes over `authority`.
    ///
    /// Accounts: 0. `[signer]` the pending key, 1. `[writable]` config PDA
    AcceptAuthority { authority: Authority },
    /// Moves a cluster to a new owner wallet (the registrar and the new owner sign).
    ///
    /// Accounts: 0. `[signer]` registrar, 1. `[signer]` new owner, 2. `[]` config PDA,
    /// 3. `[writable]` cluster PDA
    SetClusterOwner,
    /// Sets a cluster's GPU cap and disabled flag (admin).
    ///
    /// Accounts: 0. `[signer]` admin, 1. `[]` config PDA, 2. `[writable]` cluster PDA
    ConfigureCluster { gpu_cap: u32, disabled: bool },
    /// Closes a receipt whose period is older than the settlement horizon (so it can never be
    /// recorded again) and returns its rent to whoever paid it. Anyone may send it.
    ///
    /// Accounts: 0. `[writable]` receipt PDA, 1. `[writable]` the receipt's rent payer,
    /// 2. `[]` config PDA
    CloseReceipt,
}

impl LedgerInstruction {
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
        &LedgerInstruction::InitializePool {
            oracle: params.oracle,
            registrar: params.registrar,
            period_seconds: params.period_seconds,
            horizon_periods: params.horizon_periods,
            rates: params.rates,
        },
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
    let mut accounts = Vec::with_capacity(9usize.saturating_add(entries.len()));
    accounts.extend([
        AccountMeta::new_readonly(*oracle, true),
        AccountMeta::new(*payer, true),
        AccountMeta::new_readonly(find_config_address().0, false),
        AccountMeta::new(cluster, false),
        AccountMeta::new(*mint, false),
        AccountMeta::new_readonly(find_mint_authority_address().0, false),
        AccountMeta::new(get_associated_token_address(cluster_owner, mint), false),
        AccountMeta::new_readonly(crate::spl_token::ID, false),
        AccountMeta::new_readonly(crate::system_program::ID, false),
    ]);
    for e in entries {
        let id = usage_id(cluster_id, &e.job_uid, e.period);
        accounts.push(AccountMeta::new(
            find_receipt_address(&cluster, &id).0,
            false,
        ));
    }
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

/// `SetClusterOwner`: `registrar` and `new_owner` sign.
pub fn set_cluster_owner(
    registrar: &Pubkey,
    new_owner: &Pubkey,
    cluster_id: &[u8; 32],
) -> Instruction {
    ix(
        vec![
            AccountMeta::new_readonly(*registrar, true),
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
