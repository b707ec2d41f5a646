//! gpupool ledger program.
//!
//! Meters GPU-seconds that member clusters deliver to the pool and pays each cluster owner in
//! the pool's SPL token. Layout follows the SPL programs:
//!
//! * module [`instruction`] holds the borsh-encoded instruction enum and builder functions
//!   that return ready-to-sign [`solana_program::instruction::Instruction`]s,
//! * module [`state`] holds account layouts, sizes and PDA helpers,
//! * module [`error`] holds [`error::LedgerError`],
//! * module [`processor`] has one `process_*` function per instruction.
//!
//! Accounts (all PDAs of this program):
//!
//! | account      | seeds                                   |
//! |--------------|-----------------------------------------|
//! | pool config  | `["config"]`                            |
//! | mint authority (holds no data) | `["mint-authority"]`  |
//! | cluster      | `["cluster", cluster_id]`               |
//! | usage receipt| `["receipt", cluster_pda, usage_id]`    |
//! | tenant       | `["tenant", tenant_id]`                 |
//! | reservation  | `["reservation", tenant_pda, job_uid]`  |
//!
//! A tenant's escrow is the associated token account of (tenant PDA, pool mint): only this
//! program, signing as the tenant PDA, moves its tokens.
//!
//! A receipt is created exactly once per `(cluster, job uid, settlement period)`; the program
//! derives `usage_id` itself from those values, so a replayed settlement fails with
//! [`error::LedgerError::ReceiptAlreadyExists`] and can never pay twice, whether the usage is
//! minted (`RecordUsage`) or paid from a tenant's escrow (`SettleUsage`).
//!
//! What the program enforces, so that no single key can take what it was not given:
//! * `InitializePool` only by the program's upgrade authority (no front-running), on a mint
//!   with no supply, with admin, oracle and registrar three different keys (kept so by every
//!   rotation), bounds on rates (`max_rate`) and GPU caps (`max_gpu_cap`), a timelock of at
//!   least [`state::MIN_TIMELOCK_PERIODS`] periods and a protocol fee of at most
//!   [`state::MAX_FEE_BPS`], all fixed for the life of the pool;
//! * the period length is fixed; a period is recordable only once it has ended by the
//!   on-chain clock and while it is within the settlement horizon;
//! * a cluster's GPU-seconds per period are capped at its GPU cap times the period length,
//!   over all receipts; a registered cluster is paid nothing until the admin approves it
//!   (its first cap); a later cap increase applies only after the timelock, a decrease at once;
//! * rates apply to future periods only; an increase no earlier than the timelock ahead; the
//!   newest version is replaceable until it takes effect, and a full history still takes a
//!   correction (its two oldest versions merge into their minimum);
//! * `RegisterCluster` needs the owner *and* the hub-held registrar; the admin's approval is
//!   what the hub cannot forge. `SetClusterOwner` needs the current and the new owner and
//!   applies from the next period: usage is paid to the wallet that owned the cluster in its
//!   period. A lost key is replaced only by the admin's owner recovery, which the current
//!   owner can veto during the timelock and which dies with the admin that proposed it;
//! * authority proposals expire after [`state::PROPOSAL_TTL_SECONDS`], can be cancelled and
//!   are cleared when the admin changes;
//! * the admin can pause the pool: nothing is registered, recorded, settled or reserved;
//! * tenant escrow: anyone deposits, only the tenant wallet withdraws and only what is not
//!   reserved; the oracle reserves at most the unreserved balance per job and settles at most
//!   a job's reservation: the fee goes to the treasury, the rest is burned from the escrow
//!   and minted to the owner, so escrow settlements leave the supply unchanged (the only
//!   mint from nothing is `RecordUsage`, bounded as above);
//! * receipts of periods past the horizon can be closed (their rent returned to the payer):
//!   such a period can no longer be recorded, so exactly-once still holds.

#![deny(clippy::arithmetic_side_effects)]

/// `msg!` on chain. Off chain, `solana_msg` prints straight to stdout, so route the message
/// through the overridable syscall stubs instead: a native harness (gpupool-ledger-svm) then
/// records it in the transaction's logs like the SBF runtime would.
macro_rules! log {
    ($($arg:tt)*) => {{
        #[cfg(target_os = "solana")]
        solana_program::msg!($($arg)*);
        #[cfg(not(target_os = "solana"))]
        solana_program::program_stubs::sol_log(&format!($($arg)*));
    }};
}

pub mod error;
pub mod instruction;
pub mod processor;
pub mod state;
pub mod sysvars;

#[cfg(not(feature = "no-entrypoint"))]
mod entrypoint;

solana_program::declare_id!("6t8Z1FuhqhTaKer3FdWnM2m1xbw28tEKZhVSsUfhN34S");

/// SPL Token program (the only token program the pool mints through).
pub mod spl_token {
    solana_program::declare_id!("TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA");
}

/// SPL Associated Token Account program.
pub mod spl_associated_token_account {
    solana_program::declare_id!("ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL");
}

/// System program.
pub mod system_program {
    solana_program::declare_id!("11111111111111111111111111111111");
}

/// Compute Budget program (priority fees and compute-unit limits).
pub mod compute_budget {
    solana_program::declare_id!("ComputeBudget111111111111111111111111111111");
}

/// Upgradeable BPF loader (owns the program's `ProgramData`, which names its upgrade authority).
pub mod bpf_loader_upgradeable {
    solana_program::declare_id!("BPFLoaderUpgradeab1e11111111111111111111111");
}

/// Largest [`instruction::LedgerInstruction::RecordUsageBatch`] that fits one legacy
/// transaction (`PACKET_DATA_SIZE` = 1232 bytes) together with `SetComputeUnitLimit` and
/// `SetComputeUnitPrice`, when the oracle is also the fee payer (one signature): 11 entries
/// serialize to 1186 bytes, 12 to 1252. Each entry costs 66 bytes (32-byte receipt key, 1-byte
/// account index, 33 bytes of data); the two compute-budget instructions cost 52 bytes, paid
/// for by reading clock and rent through syscalls instead of passing the sysvar accounts.
/// Without the compute-budget instructions 12 would fit. A separate fee payer costs one more
/// signature and key (96 bytes); see [`MAX_BATCH_RECEIPTS_SEPARATE_PAYER`]. Both are proven by
/// `tests/batch_size.rs` in the `gpupool-ledger-svm` crate, which serializes real signed
/// transactions and executes the maximal batches. (Compute units are not metered for the
/// native build; see [`instruction::record_usage_compute_units`] for the requested limit.)
pub const MAX_BATCH_RECEIPTS: usize = 11;

/// Like [`MAX_BATCH_RECEIPTS`], for a transaction whose fee payer is not the oracle (two
/// signatures).
pub const MAX_BATCH_RECEIPTS_SEPARATE_PAYER: usize = 10;
