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
//!
//! A receipt is created exactly once per `(cluster, job uid, settlement period)`; the program
//! derives `usage_id` itself from those values, so a replayed settlement fails with
//! [`error::LedgerError::ReceiptAlreadyExists`] and can never mint twice.
//!
//! What the program bounds, so that no single key can mint without limit:
//! * `InitializePool` only by the program's upgrade authority (no front-running);
//! * the period length is fixed in the pool config; a period is recordable only once it has
//!   ended by the on-chain clock and while it is within the settlement horizon;
//! * a cluster's GPU-seconds per period are capped at its admin-set GPU cap times the period
//!   length, over all receipts (a leaked oracle key mints at most that per cluster and
//!   period, and is rotated out in two steps by the admin);
//! * rates are versioned by the period they take effect from, always a future one;
//! * `RegisterCluster` needs the owner *and* the hub-held registrar; `SetClusterOwner` needs
//!   the registrar and the new owner; a disabled cluster is not paid;
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
