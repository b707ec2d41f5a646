//! Clock and rent through the runtime's sysvar syscalls rather than sysvar accounts: two
//! fewer account keys per instruction, which leaves room in a full `RecordUsageBatch`
//! transaction for the compute-budget instructions.
//!
//! Off chain, `solana-sysvar`'s `get()` always answers `UnsupportedSysvar` (unlike CPI and
//! logging, it does not go through the overridable `SyscallStubs`), so a native host (the
//! LiteSVM harness) installs a [`native::SysvarProvider`] that reads the running
//! transaction's sysvar cache.

use solana_program::program_error::ProgramError;
use solana_sysvar::{clock::Clock, rent::Rent};

/// The cluster's clock.
pub fn clock() -> Result<Clock, ProgramError> {
    #[cfg(target_os = "solana")]
    {
        use solana_sysvar::Sysvar;
        Clock::get()
    }
    #[cfg(not(target_os = "solana"))]
    {
        native::provider()
            .and_then(|p| p.clock())
            .ok_or(ProgramError::UnsupportedSysvar)
    }
}

/// The rent parameters.
pub fn rent() -> Result<Rent, ProgramError> {
    #[cfg(target_os = "solana")]
    {
        use solana_sysvar::Sysvar;
        Rent::get()
    }
    #[cfg(not(target_os = "solana"))]
    {
        native::provider()
            .and_then(|p| p.rent())
            .ok_or(ProgramError::UnsupportedSysvar)
    }
}

/// Current unix time by the on-chain clock.
pub fn now() -> Result<i64, ProgramError> {
    clock().map(|c| c.unix_timestamp)
}

/// The off-chain sysvar source (see the module docs).
#[cfg(not(target_os = "solana"))]
pub mod native {
    use super::{Clock, Rent};
    use std::sync::OnceLock;

    /// Supplies the sysvars of the instruction running on the calling thread.
    pub trait SysvarProvider: Send + Sync {
        /// The clock, or `None` when no instruction runs on this thread.
        fn clock(&self) -> Option<Clock>;
        /// The rent parameters, or `None` when no instruction runs on this thread.
        fn rent(&self) -> Option<Rent>;
    }

    static PROVIDER: OnceLock<Box<dyn SysvarProvider>> = OnceLock::new();

    /// Installs the process-wide provider; `false` if one was installed already.
    pub fn set_sysvar_provider(provider: Box<dyn SysvarProvider>) -> bool {
        PROVIDER.set(provider).is_ok()
    }

    pub(super) fn provider() -> Option<&'static dyn SysvarProvider> {
        PROVIDER.get().map(|b| b.as_ref())
    }
}
