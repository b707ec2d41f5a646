//! Account layouts, sizes and address derivations.
//!
//! All three account types are borsh-encoded, fixed-size, and start with a one-byte type tag
//! so one can never be read as another.
//!
//! Identifiers:
//! * **cluster id**: 32 opaque bytes. The operator derives it from the member cluster's name
//!   with [`cluster_id_from_name`] (`sha256("gpupool/cluster/v1" || name)`), so names of any
//!   length map to a fixed-size seed.
//! * **job uid**: the 16 bytes of the Kubernetes object UID (a UUID); see [`parse_job_uid`].
//! * **settlement period**: a `u64` chosen by the operator (e.g. the period's start as unix
//!   seconds divided by the period length).
//! * **usage id**: [`usage_id`] of `(cluster id, job uid, period)`; the receipt PDA is derived
//!   from `(cluster PDA, usage id)`, and the program recomputes the usage id itself.

use borsh::{BorshDeserialize, BorshSerialize};
use solana_program::{hash::hashv, program_error::ProgramError, pubkey::Pubkey};

use crate::error::LedgerError;

/// Number of GPU classes that can carry a reward rate. Class numbers are operator-defined
/// (e.g. 0 = generic, 1 = A100, 2 = H100, ...); a class whose rate is 0 is not payable.
pub const NUM_GPU_CLASSES: usize = 8;

/// Seed of the pool config PDA.
pub const CONFIG_SEED: &[u8] = b"config";
/// Seed of the mint-authority PDA (signs `MintTo`; holds no data).
pub const MINT_AUTHORITY_SEED: &[u8] = b"mint-authority";
/// First seed of a cluster PDA (`["cluster", cluster_id]`).
pub const CLUSTER_SEED: &[u8] = b"cluster";
/// First seed of a receipt PDA (`["receipt", cluster_pda, usage_id]`).
pub const RECEIPT_SEED: &[u8] = b"receipt";

/// Domain prefix of [`usage_id`].
pub const USAGE_ID_DOMAIN: &[u8] = b"gpupool/usage/v1";
/// Domain prefix of [`cluster_id_from_name`].
pub const CLUSTER_ID_DOMAIN: &[u8] = b"gpupool/cluster/v1";

/// Type tag of [`PoolConfig`].
pub const TAG_CONFIG: u8 = 1;
/// Type tag of [`ClusterAccount`].
pub const TAG_CLUSTER: u8 = 2;
/// Type tag of [`UsageReceipt`].
pub const TAG_RECEIPT: u8 = 3;

/// Pool-wide configuration (PDA `["config"]`).
#[derive(BorshSerialize, BorshDeserialize, Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Always [`TAG_CONFIG`].
    pub tag: u8,
    /// May change rates and rotate the oracle.
    pub admin: Pubkey,
    /// The only key allowed to record usage.
    pub oracle: Pubkey,
    /// The pool token (an SPL Token mint whose mint authority is the mint-authority PDA).
    pub mint: Pubkey,
    /// Token base units paid per GPU-second, indexed by GPU class.
    pub rates: [u64; NUM_GPU_CLASSES],
    /// Bump of the config PDA.
    pub bump: u8,
    /// Bump of the mint-authority PDA.
    pub mint_authority_bump: u8,
}

impl PoolConfig {
    /// Serialized size in bytes.
    pub const LEN: usize = 1 + 32 + 32 + 32 + 8 * NUM_GPU_CLASSES + 1 + 1;
}

/// One member cluster (PDA `["cluster", cluster_id]`).
#[derive(BorshSerialize, BorshDeserialize, Clone, Debug, PartialEq, Eq)]
pub struct ClusterAccount {
    /// Always [`TAG_CLUSTER`].
    pub tag: u8,
    /// See the module docs.
    pub cluster_id: [u8; 32],
    /// Wallet paid for this cluster's usage (tokens go to its associated token account).
    pub owner: Pubkey,
    /// Sum of GPU-seconds over all receipts.
    pub total_gpu_seconds: u64,
    /// Sum of tokens (base units) minted to the owner.
    pub total_tokens_minted: u64,
    /// Number of receipts recorded.
    pub receipt_count: u64,
    /// Bump of this PDA.
    pub bump: u8,
}

impl ClusterAccount {
    /// Serialized size in bytes.
    pub const LEN: usize = 1 + 32 + 32 + 8 + 8 + 8 + 1;
}

/// Proof that one job's usage in one settlement period was paid
/// (PDA `["receipt", cluster_pda, usage_id]`).
#[derive(BorshSerialize, BorshDeserialize, Clone, Debug, PartialEq, Eq)]
pub struct UsageReceipt {
    /// Always [`TAG_RECEIPT`].
    pub tag: u8,
    /// The cluster PDA this usage was paid to.
    pub cluster: Pubkey,
    /// [`usage_id`] of (cluster id, job uid, period).
    pub usage_id: [u8; 32],
    /// Kubernetes UID of the job (UUID bytes).
    pub job_uid: [u8; 16],
    /// Settlement period.
    pub period: u64,
    /// GPU-seconds paid.
    pub gpu_seconds: u64,
    /// GPU class the rate was taken from.
    pub gpu_class: u8,
    /// Tokens (base units) minted for this receipt.
    pub amount: u64,
    /// Slot at which the receipt was recorded.
    pub slot: u64,
    /// Bump of this PDA.
    pub bump: u8,
}

impl UsageReceipt {
    /// Serialized size in bytes.
    pub const LEN: usize = 1 + 32 + 32 + 16 + 8 + 8 + 1 + 8 + 8 + 1;
}

/// Decodes one of the account types, checking size and tag.
pub fn unpack<T: BorshDeserialize>(data: &[u8], len: usize, tag: u8) -> Result<T, ProgramError> {
    if data.len() != len || data.first() != Some(&tag) {
        return Err(LedgerError::InvalidAccountData.into());
    }
    T::try_from_slice(data).map_err(|_| LedgerError::InvalidAccountData.into())
}

/// Encodes `value` into `dst`, which must be exactly its size.
pub fn pack<T: BorshSerialize>(value: &T, dst: &mut [u8]) -> Result<(), ProgramError> {
    let mut cursor: &mut [u8] = dst;
    value
        .serialize(&mut cursor)
        .map_err(|_| ProgramError::from(LedgerError::InvalidAccountData))?;
    if !cursor.is_empty() {
        return Err(LedgerError::InvalidAccountData.into());
    }
    Ok(())
}

/// The pool config PDA and its bump.
pub fn find_config_address() -> (Pubkey, u8) {
    Pubkey::find_program_address(&[CONFIG_SEED], &crate::ID)
}

/// The mint-authority PDA and its bump. Create the pool mint with this as mint authority.
pub fn find_mint_authority_address() -> (Pubkey, u8) {
    Pubkey::find_program_address(&[MINT_AUTHORITY_SEED], &crate::ID)
}

/// The cluster PDA for `cluster_id` and its bump.
pub fn find_cluster_address(cluster_id: &[u8; 32]) -> (Pubkey, u8) {
    Pubkey::find_program_address(&[CLUSTER_SEED, cluster_id], &crate::ID)
}

/// The receipt PDA for `usage_id` under the cluster PDA `cluster`, and its bump.
pub fn find_receipt_address(cluster: &Pubkey, usage_id: &[u8; 32]) -> (Pubkey, u8) {
    Pubkey::find_program_address(&[RECEIPT_SEED, cluster.as_ref(), usage_id], &crate::ID)
}

/// `sha256("gpupool/usage/v1" || cluster_id || job_uid || period as u64 LE)`.
pub fn usage_id(cluster_id: &[u8; 32], job_uid: &[u8; 16], period: u64) -> [u8; 32] {
    hashv(&[USAGE_ID_DOMAIN, cluster_id, job_uid, &period.to_le_bytes()]).to_bytes()
}

/// `sha256("gpupool/cluster/v1" || name)`: the cluster id of a member cluster name.
pub fn cluster_id_from_name(name: &str) -> [u8; 32] {
    hashv(&[CLUSTER_ID_DOMAIN, name.as_bytes()]).to_bytes()
}

/// Parses a Kubernetes UID (`8-4-4-4-12` hex UUID, any case, hyphens optional) into its 16
/// bytes. Returns `None` for anything else.
pub fn parse_job_uid(uid: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    let mut nibbles = 0usize;
    for c in uid.bytes() {
        if c == b'-' {
            continue;
        }
        let v = match c {
            b'0'..=b'9' => c.wrapping_sub(b'0'),
            b'a'..=b'f' => c.wrapping_sub(b'a').wrapping_add(10),
            b'A'..=b'F' => c.wrapping_sub(b'A').wrapping_add(10),
            _ => return None,
        };
        let byte = out.get_mut(nibbles / 2)?;
        *byte = (*byte << 4) | v;
        nibbles = nibbles.checked_add(1)?;
    }
    (nibbles == 32).then_some(out)
}

/// Associated token account of `(wallet, mint)` under SPL Token.
pub fn get_associated_token_address(wallet: &Pubkey, mint: &Pubkey) -> Pubkey {
    Pubkey::find_program_address(
        &[
            wallet.as_ref(),
            crate::spl_token::ID.as_ref(),
            mint.as_ref(),
        ],
        &crate::spl_associated_token_account::ID,
    )
    .0
}

/// Minimal read-only views of SPL Token account layouts (hand-decoded so the program does
/// not depend on an `spl-token` crate built against another `solana-program` line).
pub mod spl {
    use solana_program::pubkey::Pubkey;

    /// Size of an SPL Token mint.
    pub const MINT_LEN: usize = 82;
    /// Size of an SPL Token account.
    pub const ACCOUNT_LEN: usize = 165;

    /// The parts of a mint the ledger checks.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct MintView {
        pub mint_authority: Option<Pubkey>,
        pub supply: u64,
        pub decimals: u8,
        pub is_initialized: bool,
        pub freeze_authority: Option<Pubkey>,
    }

    fn coption_key(b: &[u8]) -> Option<Option<Pubkey>> {
        let (tag, key) = b.split_first_chunk::<4>()?;
        let key: [u8; 32] = key.get(..32)?.try_into().ok()?;
        match u32::from_le_bytes(*tag) {
            0 => Some(None),
            1 => Some(Some(Pubkey::new_from_array(key))),
            _ => None,
        }
    }

    fn u64_at(b: &[u8], at: usize) -> Option<u64> {
        Some(u64::from_le_bytes(
            b.get(at..at.checked_add(8)?)?.try_into().ok()?,
        ))
    }

    fn key_at(b: &[u8], at: usize) -> Option<Pubkey> {
        let a: [u8; 32] = b.get(at..at.checked_add(32)?)?.try_into().ok()?;
        Some(Pubkey::new_from_array(a))
    }

    /// Decodes a mint; `None` if the data is not a mint layout.
    pub fn unpack_mint(data: &[u8]) -> Option<MintView> {
        if data.len() != MINT_LEN {
            return None;
        }
        Some(MintView {
            mint_authority: coption_key(data.get(0..36)?)?,
            supply: u64_at(data, 36)?,
            decimals: *data.get(44)?,
            is_initialized: match data.get(45)? {
                0 => false,
                1 => true,
                _ => return None,
            },
            freeze_authority: coption_key(data.get(46..82)?)?,
        })
    }

    /// The parts of a token account the ledger checks.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct TokenAccountView {
        pub mint: Pubkey,
        pub owner: Pubkey,
        pub amount: u64,
        /// 0 uninitialized, 1 initialized, 2 frozen.
        pub state: u8,
    }

    /// Decodes a token account; `None` if the data is not a token account layout.
    pub fn unpack_token_account(data: &[u8]) -> Option<TokenAccountView> {
        if data.len() != ACCOUNT_LEN {
            return None;
        }
        Some(TokenAccountView {
            mint: key_at(data, 0)?,
            owner: key_at(data, 32)?,
            amount: u64_at(data, 64)?,
            state: *data.get(108)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use borsh::to_vec;

    #[test]
    fn sizes_match_borsh() {
        let c = PoolConfig {
            tag: TAG_CONFIG,
            admin: Pubkey::new_unique(),
            oracle: Pubkey::new_unique(),
            mint: Pubkey::new_unique(),
            rates: [7; NUM_GPU_CLASSES],
            bump: 1,
            mint_authority_bump: 2,
        };
        assert_eq!(to_vec(&c).unwrap().len(), PoolConfig::LEN);
        let k = ClusterAccount {
            tag: TAG_CLUSTER,
            cluster_id: [3; 32],
            owner: Pubkey::new_unique(),
            total_gpu_seconds: 1,
            total_tokens_minted: 2,
            receipt_count: 3,
            bump: 4,
        };
        assert_eq!(to_vec(&k).unwrap().len(), ClusterAccount::LEN);
        let r = UsageReceipt {
            tag: TAG_RECEIPT,
            cluster: Pubkey::new_unique(),
            usage_id: [1; 32],
            job_uid: [2; 16],
            period: 3,
            gpu_seconds: 4,
            gpu_class: 5,
            amount: 6,
            slot: 7,
            bump: 8,
        };
        let mut buf = vec![0u8; UsageReceipt::LEN];
        pack(&r, &mut buf).unwrap();
        let back: UsageReceipt = unpack(&buf, UsageReceipt::LEN, TAG_RECEIPT).unwrap();
        assert_eq!(back, r);
        assert!(unpack::<UsageReceipt>(&buf, UsageReceipt::LEN, TAG_CLUSTER).is_err());
    }

    #[test]
    fn job_uid_parsing() {
        let u = parse_job_uid("0b9f4d2a-6c1e-4f5b-9a7d-3e2c1b0a9f8e").unwrap();
        assert_eq!(u[0], 0x0b);
        assert_eq!(u[15], 0x8e);
        assert_eq!(parse_job_uid("0B9F4D2A6C1E4F5B9A7D3E2C1B0A9F8E"), Some(u));
        assert_eq!(parse_job_uid("0b9f4d2a-6c1e-4f5b-9a7d-3e2c1b0a9f8"), None);
        assert_eq!(parse_job_uid("0b9f4d2a-6c1e-4f5b-9a7d-3e2c1b0a9f8ee"), None);
        assert_eq!(parse_job_uid("zb9f4d2a-6c1e-4f5b-9a7d-3e2c1b0a9f8e"), None);
    }

    #[test]
    fn usage_id_binds_all_inputs() {
        let c = cluster_id_from_name("east-1");
        let j = [9u8; 16];
        let a = usage_id(&c, &j, 1);
        assert_ne!(a, usage_id(&c, &j, 2));
        assert_ne!(a, usage_id(&cluster_id_from_name("east-2"), &j, 1));
        assert_ne!(a, usage_id(&c, &[8u8; 16], 1));
        assert_eq!(a, usage_id(&c, &j, 1));
    }
}
