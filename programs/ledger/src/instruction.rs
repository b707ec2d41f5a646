//! Instructions and builders.
//!
//! The builders return ready-to-sign [`Instruction`]s with every account derived, so callers
//! only supply keys they own. Instruction data is the borsh encoding of [`LedgerInstruction`].

use borsh::{BorshDeserialize, BorshSerialize};
use solana_program::{
    instruction::{AccountMeta, Instruction},
    pubkey::Pubkey,
};
use solana_sysvar as sysvar;

use crate::state::{
    NUM_GPU_CLASSES, find_cluster_address, find_config_address, find_mint_authority_address,
    find_receipt_address, get_associated_token_address, usage_id,
};

/// One job's usage in one settlement period.
#[derive(BorshSerialize, BorshDeserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageEntry {
    /// Kubernetes UID of the job (UUID bytes, see [`crate::state::parse_job_uid`]).
    pub job_uid: [u8; 16],
    /// Settlement period.
    pub period: u64,
    /// GPU-seconds to pay; must be > 0.
    pub gpu_seconds: u64,
    /// GPU class whose rate applies; must be `< NUM_GPU_CLASSES` with a non-zero rate.
    pub gpu_class: u8,
}

/// Ledger instructions.
#[derive(BorshSerialize, BorshDeserialize, Clone, Debug, PartialEq, Eq)]
pub enum LedgerInstruction {
    /// Creates the pool config.
    ///
    /// Accounts:
    /// 0. `[signer, writable]` admin (pays for the config account)
    /// 1. `[writable]` config PDA
    /// 2. `[]` pool mint: an initialized SPL Token mint whose mint authority is the
    ///    mint-authority PDA and whose freeze authority is unset or that PDA
    /// 3. `[]` mint-authority PDA
    /// 4. `[]` system program
    /// 5. `[]` rent sysvar
    InitializePool {
        oracle: Pubkey,
        rates: [u64; NUM_GPU_CLASSES],
    },
    /// Registers a member cluster and its owner wallet.
    ///
    /// Accounts:
    /// 0. `[signer, writable]` payer
    /// 1. `[signer]` cluster owner
    /// 2. `[]` config PDA
    /// 3. `[writable]` cluster PDA
    /// 4. `[]` system program
    /// 5. `[]` rent sysvar
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
    /// 9. `[]` clock sysvar
    /// 10. `[]` rent sysvar
    /// 11. `[writable]` receipt PDA
    RecordUsage { entry: UsageEntry },
    /// Like `RecordUsage` for several usages of one cluster: accounts 0..=10 as there, then
    /// one `[writable]` receipt PDA per entry, in entry order. One `MintTo` pays the sum.
    RecordUsageBatch { entries: Vec<UsageEntry> },
    /// Sets the rate of one GPU class (0 disables the class).
    ///
    /// Accounts: 0. `[signer]` admin, 1. `[writable]` config PDA
    UpdateRate { gpu_class: u8, rate: u64 },
    /// Replaces the usage oracle.
    ///
    /// Accounts: 0. `[signer]` admin, 1. `[writable]` config PDA
    RotateOracle { new_oracle: Pubkey },
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

/// `InitializePool`: `admin` signs and pays; `mint` must already exist with the mint-authority
/// PDA ([`find_mint_authority_address`]) as its mint authority.
pub fn initialize_pool(
    admin: &Pubkey,
    mint: &Pubkey,
    oracle: &Pubkey,
    rates: [u64; NUM_GPU_CLASSES],
) -> Instruction {
    ix(
        vec![
            AccountMeta::new(*admin, true),
            AccountMeta::new(find_config_address().0, false),
            AccountMeta::new_readonly(*mint, false),
            AccountMeta::new_readonly(find_mint_authority_address().0, false),
            AccountMeta::new_readonly(crate::system_program::ID, false),
            AccountMeta::new_readonly(sysvar::rent::ID, false),
        ],
        &LedgerInstruction::InitializePool {
            oracle: *oracle,
            rates,
        },
    )
}

/// `RegisterCluster`: `owner` signs (the wallet that will be paid), `payer` signs and pays.
pub fn register_cluster(payer: &Pubkey, owner: &Pubkey, cluster_id: &[u8; 32]) -> Instruction {
    ix(
        vec![
            AccountMeta::new(*payer, true),
            AccountMeta::new_readonly(*owner, true),
            AccountMeta::new_readonly(find_config_address().0, false),
            AccountMeta::new(find_cluster_address(cluster_id).0, false),
            AccountMeta::new_readonly(crate::system_program::ID, false),
            AccountMeta::new_readonly(sysvar::rent::ID, false),
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
    let mut accounts = Vec::with_capacity(11usize.saturating_add(entries.len()));
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
        AccountMeta::new_readonly(sysvar::clock::ID, false),
        AccountMeta::new_readonly(sysvar::rent::ID, false),
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
/// [`crate::MAX_BATCH_RECEIPTS`] entries fit one transaction.
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

/// `UpdateRate`: `admin` signs.
pub fn update_rate(admin: &Pubkey, gpu_class: u8, rate: u64) -> Instruction {
    ix(
        vec![
            AccountMeta::new_readonly(*admin, true),
            AccountMeta::new(find_config_address().0, false),
        ],
        &LedgerInstruction::UpdateRate { gpu_class, rate },
    )
}

/// `RotateOracle`: `admin` signs.
pub fn rotate_oracle(admin: &Pubkey, new_oracle: &Pubkey) -> Instruction {
    ix(
        vec![
            AccountMeta::new_readonly(*admin, true),
            AccountMeta::new(find_config_address().0, false),
        ],
        &LedgerInstruction::RotateOracle {
            new_oracle: *new_oracle,
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

/// Hand-encoded SPL Token and System instructions used by the program and by clients.
pub mod raw {
    use super::*;

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
