//! Errors returned by the ledger program.
//!
//! Every variant travels as `ProgramError::Custom(ERROR_CODE_OFFSET + index)`. The offset keeps
//! the ledger's codes apart from the small codes of the programs it invokes: SPL Token
//! (`TokenError`, 0..=20) and System (`SystemError`, 0..=8) errors come back through CPI as
//! `Custom(n)` of the same top-level instruction, and must not be read as ledger errors.
//! [`LedgerError::from_code`] maps a code from a failed transaction back.

use solana_program::program_error::ProgramError;
use thiserror::Error;

/// Added to every ledger error's index to form its `Custom` code.
pub const ERROR_CODE_OFFSET: u32 = 6000;

/// Why a ledger instruction was rejected.
#[derive(Clone, Copy, Debug, Eq, Error, PartialEq)]
#[repr(u32)]
pub enum LedgerError {
    /// The instruction data could not be decoded.
    #[error("instruction data could not be decoded")]
    InvalidInstruction = 0,
    /// The account list does not match what the instruction expects.
    #[error("wrong number of accounts for this instruction")]
    WrongAccountCount = 1,
    /// The pool config account already exists.
    #[error("pool is already initialized")]
    AlreadyInitialized = 2,
    /// The config account passed is not the config PDA of this program.
    #[error("config account is not the derived config PDA")]
    InvalidConfigAddress = 3,
    /// The mint-authority account passed is not the mint-authority PDA.
    #[error("mint authority account is not the derived mint-authority PDA")]
    InvalidMintAuthorityAddress = 4,
    /// The cluster account passed is not the PDA of the cluster it claims to be.
    #[error("cluster account is not the derived cluster PDA")]
    InvalidClusterAddress = 5,
    /// A receipt account passed is not the PDA of the usage being recorded.
    #[error("receipt account is not the derived receipt PDA for this usage")]
    InvalidReceiptAddress = 6,
    /// The token program passed is not SPL Token.
    #[error("token program is not the SPL Token program")]
    InvalidTokenProgram = 7,
    /// The system program passed is not the system program.
    #[error("system program account is not the system program")]
    InvalidSystemProgram = 8,
    /// The `ProgramData` account passed is not this program's, or has no upgrade authority.
    #[error("program data account is not this program's upgradeable-loader ProgramData")]
    InvalidProgramData = 9,
    /// The mint is not an initialized SPL Token mint.
    #[error("mint is not an initialized SPL Token mint")]
    InvalidMint = 10,
    /// The mint passed is not the pool's mint.
    #[error("mint does not match the pool's mint")]
    MintMismatch = 11,
    /// The mint's mint authority is not this program's mint-authority PDA.
    #[error("mint authority of the mint is not the program's mint-authority PDA")]
    MintAuthorityMismatch = 12,
    /// The mint has a freeze authority other than the mint-authority PDA.
    #[error("mint has a freeze authority that the program does not control")]
    ForeignFreezeAuthority = 13,
    /// A required signature is missing.
    #[error("a required signer did not sign")]
    MissingSignature = 14,
    /// The signer is not the pool admin.
    #[error("signer is not the pool admin")]
    NotAdmin = 15,
    /// The signer is not the pool's usage oracle.
    #[error("signer is not the pool's usage oracle")]
    NotOracle = 16,
    /// The destination is not the associated token account of (cluster owner, pool mint).
    #[error("destination is not the cluster owner's associated token account for the pool mint")]
    InvalidOwnerTokenAccount = 17,
    /// A cluster with this id is already registered.
    #[error("cluster is already registered")]
    ClusterAlreadyRegistered = 18,
    /// A receipt for this (cluster, job, period) already exists: the usage was already paid.
    #[error("usage receipt already exists (settlement replayed)")]
    ReceiptAlreadyExists = 19,
    /// GPU-seconds of zero were submitted.
    #[error("usage of zero GPU-seconds")]
    ZeroUsage = 20,
    /// The GPU class is outside `0..NUM_GPU_CLASSES`.
    #[error("GPU class out of range")]
    UnknownGpuClass = 21,
    /// The GPU class has a reward rate of zero in the rate version of the period.
    #[error("GPU class has no reward rate")]
    GpuClassNotPriced = 22,
    /// `rate * gpu_seconds` or a batch sum does not fit in u64.
    #[error("token amount overflows u64")]
    AmountOverflow = 23,
    /// Adding to the cluster's running totals would overflow.
    #[error("cluster totals overflow")]
    TotalsOverflow = 24,
    /// A batch with no entries.
    #[error("batch has no entries")]
    EmptyBatch = 25,
    /// An account is not owned by the program that must own it.
    #[error("account has the wrong owner program")]
    IncorrectAccountOwner = 26,
    /// An account's data is not what its type says.
    #[error("account data is malformed or of the wrong type")]
    InvalidAccountData = 27,
    /// An account the instruction writes was passed read-only.
    #[error("account must be writable")]
    AccountNotWritable = 28,
    /// The program was invoked under an id other than its declared one.
    #[error("program invoked under the wrong program id")]
    WrongProgramId = 29,
    /// `InitializePool` was not signed by the program's upgrade authority.
    #[error("signer is not the program's upgrade authority")]
    NotUpgradeAuthority = 30,
    /// An authority (admin, oracle, registrar, owner) of all zeros was given.
    #[error("the all-zeros key is not a valid authority")]
    ZeroKey = 31,
    /// `AcceptAuthority` signed by a key that is not the pending one.
    #[error("no such authority change is pending for this signer")]
    NoPendingAuthority = 32,
    /// The signer is not the pool's registrar.
    #[error("signer is not the pool's registrar")]
    NotRegistrar = 33,
    /// The cluster is disabled by the admin; its usage is not paid.
    #[error("cluster is disabled")]
    ClusterDisabled = 34,
    /// The period has not ended yet by the on-chain clock.
    #[error("settlement period has not ended yet by the on-chain clock")]
    PeriodNotEnded = 35,
    /// The period is older than the pool's settlement horizon.
    #[error("settlement period is older than the settlement horizon")]
    PeriodOutsideHorizon = 36,
    /// The cluster's GPU-seconds in the period would exceed `gpu_cap * period_seconds`.
    #[error("usage exceeds the cluster's GPU cap for the period")]
    GpuCapExceeded = 37,
    /// A period length of zero.
    #[error("period length must be at least one second")]
    InvalidPeriodLength = 38,
    /// A settlement horizon outside `1..=MAX_HORIZON_PERIODS`.
    #[error("horizon must be between 1 and MAX_HORIZON_PERIODS")]
    InvalidHorizon = 39,
    /// A rate change effective in the current or a past period (it would be retroactive).
    #[error("new rates must take effect in a future period")]
    RateNotInFuture = 40,
    /// No room for another rate version until an old one falls behind the horizon.
    #[error("rate history is full of versions that may still apply")]
    RateHistoryFull = 41,
    /// The receipt's period is still inside the horizon; closing it would allow a replay.
    #[error("receipt is still inside the settlement horizon")]
    ReceiptNotExpired = 42,
    /// `CloseReceipt` rent destination is not the payer recorded in the receipt.
    #[error("rent destination is not the receipt's rent payer")]
    InvalidRentDestination = 43,
    /// The pool is paused by its admin.
    #[error("the pool is paused by its admin")]
    PoolPaused = 44,
    /// Admin, oracle and registrar must be three different keys.
    #[error("admin, oracle and registrar must be three different keys")]
    SameKeyForTwoRoles = 45,
    /// The authority proposal has expired.
    #[error("the authority proposal has expired")]
    ProposalExpired = 46,
    /// A rate exceeds the pool's maximum rate.
    #[error("a rate exceeds the pool's maximum rate")]
    RateTooHigh = 47,
    /// GPU cap exceeds the pool's maximum GPU cap.
    #[error("GPU cap exceeds the pool's maximum GPU cap")]
    GpuCapTooHigh = 48,
    /// An increase must take effect at least the pool's timelock of periods ahead.
    #[error("an increase must take effect at least the pool's timelock of periods ahead")]
    IncreaseNotTimelocked = 49,
    /// The pool mint already has a supply.
    #[error("the pool mint already has a supply")]
    MintHasSupply = 50,
    /// Signer is not the cluster's current owner.
    #[error("signer is not the cluster's current owner")]
    NotClusterOwner = 51,
    /// The previous owner's periods are still recordable; the owner cannot change again yet.
    #[error("the previous owner's periods are still recordable; the owner cannot change again yet")]
    OwnerChangeTooSoon = 52,
    /// No owner recovery is pending for this cluster (or it was proposed by a former admin).
    #[error("no owner recovery is pending for this cluster (or it was proposed by a former admin)")]
    NoRecoveryPending = 53,
    /// The owner recovery's timelock has not passed.
    #[error("the owner recovery's timelock has not passed")]
    RecoveryNotDue = 54,
    /// Timelock must be between MIN_TIMELOCK_PERIODS and MAX_HORIZON_PERIODS.
    #[error("timelock must be between MIN_TIMELOCK_PERIODS and MAX_HORIZON_PERIODS")]
    InvalidTimelock = 55,
    /// Protocol fee exceeds MAX_FEE_BPS, or a fee without a treasury.
    #[error("protocol fee exceeds MAX_FEE_BPS, or a fee without a treasury")]
    InvalidFee = 56,
    /// Treasury account is not the pool's treasury token account.
    #[error("treasury account is not the pool's treasury token account")]
    InvalidTreasury = 57,
    /// Signer is not the tenant's wallet.
    #[error("signer is not the tenant's wallet")]
    NotTenantWallet = 58,
    /// The escrow's unreserved balance does not cover the amount.
    #[error("the escrow's unreserved balance does not cover the amount")]
    InsufficientEscrow = 59,
    /// The settlement exceeds the job's reservation.
    #[error("the settlement exceeds the job's reservation")]
    ReservationExceeded = 60,
    /// Tenant account is not the derived tenant PDA.
    #[error("tenant account is not the derived tenant PDA")]
    InvalidTenantAddress = 61,
    /// Escrow account is not the tenant's token account of the pool mint.
    #[error("escrow account is not the tenant's token account of the pool mint")]
    InvalidEscrowAccount = 62,
    /// Reservation account is not the derived reservation PDA of this tenant and job.
    #[error("reservation account is not the derived reservation PDA of this tenant and job")]
    InvalidReservationAddress = 63,
    /// Tenant escrow already exists.
    #[error("tenant escrow already exists")]
    TenantAlreadyExists = 64,
    /// Amount of zero.
    #[error("amount of zero")]
    ZeroAmount = 65,
    /// Maximum rate and maximum GPU cap must be positive.
    #[error("maximum rate and maximum GPU cap must be positive")]
    InvalidBounds = 66,
}

impl LedgerError {
    /// All variants, in code order.
    pub const ALL: [LedgerError; 67] = [
        Self::InvalidInstruction,
        Self::WrongAccountCount,
        Self::AlreadyInitialized,
        Self::InvalidConfigAddress,
        Self::InvalidMintAuthorityAddress,
        Self::InvalidClusterAddress,
        Self::InvalidReceiptAddress,
        Self::InvalidTokenProgram,
        Self::InvalidSystemProgram,
        Self::InvalidProgramData,
        Self::InvalidMint,
        Self::MintMismatch,
        Self::MintAuthorityMismatch,
        Self::ForeignFreezeAuthority,
        Self::MissingSignature,
        Self::NotAdmin,
        Self::NotOracle,
        Self::InvalidOwnerTokenAccount,
        Self::ClusterAlreadyRegistered,
        Self::ReceiptAlreadyExists,
        Self::ZeroUsage,
        Self::UnknownGpuClass,
        Self::GpuClassNotPriced,
        Self::AmountOverflow,
        Self::TotalsOverflow,
        Self::EmptyBatch,
        Self::IncorrectAccountOwner,
        Self::InvalidAccountData,
        Self::AccountNotWritable,
        Self::WrongProgramId,
        Self::NotUpgradeAuthority,
        Self::ZeroKey,
        Self::NoPendingAuthority,
        Self::NotRegistrar,
        Self::ClusterDisabled,
        Self::PeriodNotEnded,
        Self::PeriodOutsideHorizon,
        Self::GpuCapExceeded,
        Self::InvalidPeriodLength,
        Self::InvalidHorizon,
        Self::RateNotInFuture,
        Self::RateHistoryFull,
        Self::ReceiptNotExpired,
        Self::InvalidRentDestination,
        Self::PoolPaused,
        Self::SameKeyForTwoRoles,
        Self::ProposalExpired,
        Self::RateTooHigh,
        Self::GpuCapTooHigh,
        Self::IncreaseNotTimelocked,
        Self::MintHasSupply,
        Self::NotClusterOwner,
        Self::OwnerChangeTooSoon,
        Self::NoRecoveryPending,
        Self::RecoveryNotDue,
        Self::InvalidTimelock,
        Self::InvalidFee,
        Self::InvalidTreasury,
        Self::NotTenantWallet,
        Self::InsufficientEscrow,
        Self::ReservationExceeded,
        Self::InvalidTenantAddress,
        Self::InvalidEscrowAccount,
        Self::InvalidReservationAddress,
        Self::TenantAlreadyExists,
        Self::ZeroAmount,
        Self::InvalidBounds,
    ];

    /// The `ProgramError::Custom` code of this error.
    pub const fn code(self) -> u32 {
        // At most a few dozen variants above the offset: cannot overflow.
        ERROR_CODE_OFFSET.wrapping_add(self as u32)
    }

    /// Maps a `Custom` error code back to the variant, if it is one of ours.
    pub fn from_code(code: u32) -> Option<Self> {
        let index = code.checked_sub(ERROR_CODE_OFFSET)?;
        Self::ALL.get(usize::try_from(index).ok()?).copied()
    }
}

impl From<LedgerError> for ProgramError {
    fn from(e: LedgerError) -> Self {
        ProgramError::Custom(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for (i, e) in LedgerError::ALL.iter().enumerate() {
            assert_eq!(e.code() as usize, ERROR_CODE_OFFSET as usize + i);
            assert_eq!(LedgerError::from_code(e.code()), Some(*e));
        }
        assert_eq!(LedgerError::from_code(10_000), None);
    }

    #[test]
    fn foreign_small_codes_are_not_ledger_errors() {
        // SPL Token and System error codes through CPI.
        for code in 0..100 {
            assert_eq!(LedgerError::from_code(code), None, "code {code}");
        }
    }
}
