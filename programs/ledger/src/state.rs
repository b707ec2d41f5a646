//! Account layouts, sizes and address derivations.
//!
//! All account types start with a one-byte type tag so one can never be read as another.
//! [`PoolConfig`] and [`UsageReceipt`] are borsh-encoded and fixed-size; a cluster account is
//! a borsh-encoded [`ClusterAccount`] header followed by its per-period tally ring (see
//! [`tally`]), read and written in place so the program never copies 8 KiB onto its stack.
//!
//! Identifiers:
//! * **cluster id**: 32 opaque bytes, [`cluster_id`] of the member's `kube-system` namespace
//!   UID. That UID is created with the member's API server and cannot be chosen, so one
//!   physical cluster joined twice (under two names) still has one cluster id, and a squatter
//!   cannot pre-register an id for a cluster it does not control without its UID.
//! * **job uid**: the 16 bytes of the Kubernetes object UID (a UUID); see [`parse_job_uid`].
//! * **settlement period**: period `p` is `[p * period_seconds, (p + 1) * period_seconds)` in
//!   unix seconds, with `period_seconds` fixed in the pool config at initialization.
//! * **usage id**: [`usage_id`] of `(cluster id, job uid, period)`; the receipt PDA is derived
//!   from `(cluster PDA, usage id)`, and the program recomputes the usage id itself.

use borsh::{BorshDeserialize, BorshSerialize};
use solana_program::{hash::hashv, program_error::ProgramError, pubkey::Pubkey};

use crate::error::LedgerError;

/// Number of GPU classes that can carry a reward rate. Class numbers are operator-defined
/// (e.g. 0 = generic, 1 = H100, ...); a class whose rate is 0 is not payable.
pub const NUM_GPU_CLASSES: usize = 8;

/// Rate versions the config keeps (see [`PoolConfig::rate_versions`]).
pub const MAX_RATE_VERSIONS: usize = 4;

/// Largest settlement horizon in periods. Bounded by the cluster account's tally ring, which
/// must stay below the 10 KiB a program may allocate through a CPI.
pub const MAX_HORIZON_PERIODS: u64 = 512;

/// Fewest periods an increase (of a cluster's GPU cap or of a rate) and an admin-driven
/// owner recovery wait before they apply.
pub const MIN_TIMELOCK_PERIODS: u64 = 2;

/// Seconds an authority proposal stays acceptable.
pub const PROPOSAL_TTL_SECONDS: i64 = 7 * 24 * 3600;

/// Largest protocol fee, in basis points of a settled amount (10 %).
pub const MAX_FEE_BPS: u16 = 1_000;

/// Seed of the pool config PDA.
pub const CONFIG_SEED: &[u8] = b"config";
/// Seed of the mint-authority PDA (signs `MintTo`; holds no data).
pub const MINT_AUTHORITY_SEED: &[u8] = b"mint-authority";
/// First seed of a cluster PDA (`["cluster", cluster_id]`).
pub const CLUSTER_SEED: &[u8] = b"cluster";
/// First seed of a receipt PDA (`["receipt", cluster_pda, usage_id]`).
pub const RECEIPT_SEED: &[u8] = b"receipt";
/// First seed of a tenant PDA (`["tenant", tenant_id]`).
pub const TENANT_SEED: &[u8] = b"tenant";
/// First seed of a reservation PDA (`["reservation", tenant_pda, job_uid]`).
pub const RESERVATION_SEED: &[u8] = b"reservation";

/// Domain prefix of [`usage_id`].
pub const USAGE_ID_DOMAIN: &[u8] = b"gpupool/usage/v1";
/// Domain prefix of [`cluster_id`].
pub const CLUSTER_ID_DOMAIN: &[u8] = b"gpupool/cluster/v2";

/// Type tag of [`PoolConfig`].
pub const TAG_CONFIG: u8 = 1;
/// Type tag of [`ClusterAccount`].
pub const TAG_CLUSTER: u8 = 2;
/// Type tag of [`UsageReceipt`].
pub const TAG_RECEIPT: u8 = 3;
/// Type tag of [`TenantAccount`].
pub const TAG_TENANT: u8 = 4;
/// Type tag of [`Reservation`].
pub const TAG_RESERVATION: u8 = 5;

/// The rates of all GPU classes from one settlement period on.
#[derive(BorshSerialize, BorshDeserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateVersion {
    /// First period these rates apply to.
    pub effective_from: u64,
    /// Token base units paid per GPU-second, indexed by GPU class.
    pub rates: [u64; NUM_GPU_CLASSES],
}

/// Pool-wide configuration (PDA `["config"]`). A `pending_*` key of all zeros means "none".
#[derive(BorshSerialize, BorshDeserialize, Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Always [`TAG_CONFIG`].
    pub tag: u8,
    /// Sets rates, cluster GPU caps and the disabled flag; proposes new authorities.
    pub admin: Pubkey,
    /// Proposed next admin (accepts with its own signature).
    pub pending_admin: Pubkey,
    /// The only key allowed to record usage.
    pub oracle: Pubkey,
    /// Proposed next oracle.
    pub pending_oracle: Pubkey,
    /// The hub-held key that must co-sign `RegisterCluster` and `SetClusterOwner`.
    pub registrar: Pubkey,
    /// Proposed next registrar.
    pub pending_registrar: Pubkey,
    /// The pool token (an SPL Token mint whose mint authority is the mint-authority PDA).
    pub mint: Pubkey,
    /// Length of a settlement period in seconds; fixed for the life of the pool.
    pub period_seconds: u64,
    /// A period can be recorded while `period + horizon_periods >= current period`, and its
    /// receipts closed once it is older than that.
    pub horizon_periods: u64,
    /// Number of valid entries in [`Self::rate_versions`] (at least 1).
    pub rate_version_count: u8,
    /// Rate versions in increasing `effective_from` order; the first has `effective_from` 0.
    pub rate_versions: [RateVersion; MAX_RATE_VERSIONS],
    /// Bump of the config PDA.
    pub bump: u8,
    /// Bump of the mint-authority PDA.
    pub mint_authority_bump: u8,
    /// Unix time `pending_admin` was proposed; it expires [`PROPOSAL_TTL_SECONDS`] later.
    pub pending_admin_at: i64,
    /// Unix time `pending_oracle` was proposed.
    pub pending_oracle_at: i64,
    /// Unix time `pending_registrar` was proposed.
    pub pending_registrar_at: i64,
    /// Emergency pause (admin): nothing is recorded, settled, reserved or registered.
    pub paused: bool,
    /// Highest rate of any GPU class (base units per GPU-second); fixed at initialization.
    pub max_rate: u64,
    /// Highest GPU cap of any cluster; fixed at initialization.
    pub max_gpu_cap: u32,
    /// Periods an increase (GPU cap, rate) or an owner recovery waits before it applies;
    /// fixed at initialization, at least [`MIN_TIMELOCK_PERIODS`].
    pub timelock_periods: u64,
    /// Protocol fee of an escrow settlement, in basis points (at most [`MAX_FEE_BPS`]);
    /// fixed at initialization.
    pub fee_bps: u16,
    /// Token account (of the pool mint) that receives the protocol fee.
    pub treasury: Pubkey,
}

impl PoolConfig {
    /// Serialized size in bytes.
    pub const LEN: usize = 1
        + 32 * 7
        + 8
        + 8
        + 1
        + (8 + 8 * NUM_GPU_CLASSES) * MAX_RATE_VERSIONS
        + 1
        + 1
        + 8 * 3
        + 1
        + 8
        + 4
        + 8
        + 2
        + 32;

    /// The fee of a settled `amount` (rounded down, so the owner never gets less than the
    /// amount minus the bounded fee and nothing is created or lost).
    pub fn fee_of(&self, amount: u64) -> Option<u64> {
        let fee = u128::from(amount)
            .checked_mul(u128::from(self.fee_bps.min(MAX_FEE_BPS)))?
            .checked_div(10_000)?;
        u64::try_from(fee).ok()
    }

    /// The valid rate versions.
    pub fn versions(&self) -> &[RateVersion] {
        let n = usize::from(self.rate_version_count).clamp(1, MAX_RATE_VERSIONS);
        self.rate_versions.get(..n).unwrap_or_default()
    }

    /// The rates that apply to usage in `period`.
    pub fn rates_for(&self, period: u64) -> [u64; NUM_GPU_CLASSES] {
        self.versions()
            .iter()
            .rev()
            .find(|v| v.effective_from <= period)
            .map(|v| v.rates)
            .unwrap_or([0; NUM_GPU_CLASSES])
    }

    /// The rate of `gpu_class` for usage in `period` (`None` for an unknown class).
    pub fn rate(&self, gpu_class: u8, period: u64) -> Option<u64> {
        self.rates_for(period).get(usize::from(gpu_class)).copied()
    }

    /// The period containing unix second `now` (0 before the epoch).
    pub fn period_at(&self, now: i64) -> u64 {
        let len = self.period_seconds.max(1);
        u64::try_from(now)
            .unwrap_or(0)
            .checked_div(len)
            .unwrap_or(0)
    }

    /// First unix second after period `p` (`None` on overflow).
    pub fn period_end(&self, p: u64) -> Option<i64> {
        let end = p.checked_add(1)?.checked_mul(self.period_seconds)?;
        i64::try_from(end).ok()
    }

    /// Whether usage of period `p` may be recorded at unix second `now`: the period has
    /// ended and is not older than the horizon.
    pub fn recordable(&self, p: u64, now: i64) -> Result<(), LedgerError> {
        let end = self.period_end(p).ok_or(LedgerError::PeriodNotEnded)?;
        if now < end {
            return Err(LedgerError::PeriodNotEnded);
        }
        if !self.within_horizon(p, now) {
            return Err(LedgerError::PeriodOutsideHorizon);
        }
        Ok(())
    }

    /// `p + horizon >= current period`.
    pub fn within_horizon(&self, p: u64, now: i64) -> bool {
        p.saturating_add(self.horizon_periods) >= self.period_at(now)
    }

    /// Most GPU-seconds one cluster may be paid per period with `gpu_cap` GPUs.
    pub fn period_cap(&self, gpu_cap: u32) -> u64 {
        u64::from(gpu_cap).saturating_mul(self.period_seconds)
    }
}

/// One member cluster (PDA `["cluster", cluster_id]`): this header, then the tally ring.
#[derive(BorshSerialize, BorshDeserialize, Clone, Debug, PartialEq, Eq)]
pub struct ClusterAccount {
    /// Always [`TAG_CLUSTER`].
    pub tag: u8,
    /// See the module docs.
    pub cluster_id: [u8; 32],
    /// Wallet paid for this cluster's usage (tokens go to its associated token account).
    pub owner: Pubkey,
    /// Most GPUs the admin lets this cluster be paid for: GPU-seconds per period are capped
    /// at `gpu_cap * period_seconds` (0 until the admin sets it: nothing is payable).
    pub gpu_cap: u32,
    /// A disabled cluster is not paid.
    pub disabled: bool,
    /// Sum of GPU-seconds over all receipts.
    pub total_gpu_seconds: u64,
    /// Sum of tokens (base units) minted to the owner.
    pub total_tokens_minted: u64,
    /// Number of receipts recorded.
    pub receipt_count: u64,
    /// Bump of this PDA.
    pub bump: u8,
    /// Whether the admin approved the cluster (its first GPU cap applies at once; later
    /// increases wait the pool's timelock).
    pub approved: bool,
    /// A GPU-cap increase that applies once the current period reaches
    /// `pending_cap_from` (0: none).
    pub pending_gpu_cap: u32,
    /// See `pending_gpu_cap`.
    pub pending_cap_from: u64,
    /// Owner before the last hand-over: usage of periods before `owner_from` is paid there.
    pub previous_owner: Pubkey,
    /// First period paid to `owner`.
    pub owner_from: u64,
    /// Owner the admin proposed after a lost key (all zeros: none).
    pub recovery_owner: Pubkey,
    /// First period in which the recovery may be executed.
    pub recovery_at: u64,
    /// The admin that proposed the recovery (a later admin must propose again).
    pub recovery_admin: Pubkey,
}

// A program may allocate at most 10 KiB through a CPI.
const _: () = assert!(ClusterAccount::LEN <= 10_240);

impl ClusterAccount {
    /// Size of the borsh header.
    pub const HEADER_LEN: usize =
        1 + 32 + 32 + 4 + 1 + 8 + 8 + 8 + 1 + 1 + 4 + 8 + 32 + 8 + 32 + 8 + 32;

    /// A freshly registered, not yet approved cluster paid to `owner`.
    pub fn new(cluster_id: [u8; 32], owner: Pubkey, bump: u8) -> Self {
        ClusterAccount {
            tag: TAG_CLUSTER,
            cluster_id,
            owner,
            gpu_cap: 0,
            disabled: false,
            total_gpu_seconds: 0,
            total_tokens_minted: 0,
            receipt_count: 0,
            bump,
            approved: false,
            pending_gpu_cap: 0,
            pending_cap_from: 0,
            previous_owner: owner,
            owner_from: 0,
            recovery_owner: Pubkey::default(),
            recovery_at: 0,
            recovery_admin: Pubkey::default(),
        }
    }

    /// The GPU cap that bounds usage recorded while the current period is `current`: a
    /// pending increase applies once its period has come.
    pub fn cap_at(&self, current: u64) -> u32 {
        if self.pending_cap_from != 0 && current >= self.pending_cap_from {
            self.pending_gpu_cap
        } else {
            self.gpu_cap
        }
    }

    /// The wallet paid for usage of period `p`.
    pub fn owner_for(&self, p: u64) -> Pubkey {
        if p < self.owner_from {
            self.previous_owner
        } else {
            self.owner
        }
    }
    /// Size of the whole account: header and tally ring.
    pub const LEN: usize = Self::HEADER_LEN + tally::SLOT_LEN * MAX_HORIZON_PERIODS as usize;
}

/// The per-period GPU-seconds already paid to a cluster, in a ring of
/// [`MAX_HORIZON_PERIODS`] slots after the [`ClusterAccount`] header. Period `p` lives in slot
/// `p % horizon`; each slot holds `(period u64 LE, gpu_seconds u64 LE)`. Because only the
/// `horizon` periods before the current one are recordable, two recordable periods never share
/// a slot, and a slot holding another period holds one that can no longer be recorded.
pub mod tally {
    use super::ClusterAccount;

    /// Bytes per slot.
    pub const SLOT_LEN: usize = 16;

    fn offset(slot: usize) -> Option<usize> {
        ClusterAccount::HEADER_LEN.checked_add(slot.checked_mul(SLOT_LEN)?)
    }

    /// GPU-seconds already paid for `period` (0 when its slot holds another period).
    pub fn get(data: &[u8], period: u64, horizon: u64) -> Option<u64> {
        let slot = usize::try_from(period.checked_rem(horizon)?).ok()?;
        let at = offset(slot)?;
        let p = u64::from_le_bytes(data.get(at..at.checked_add(8)?)?.try_into().ok()?);
        let s = u64::from_le_bytes(
            data.get(at.checked_add(8)?..at.checked_add(16)?)?
                .try_into()
                .ok()?,
        );
        Some(if p == period { s } else { 0 })
    }

    /// Stores `gpu_seconds` as the paid total of `period`.
    pub fn set(data: &mut [u8], period: u64, horizon: u64, gpu_seconds: u64) -> Option<()> {
        let slot = usize::try_from(period.checked_rem(horizon)?).ok()?;
        let at = offset(slot)?;
        data.get_mut(at..at.checked_add(8)?)?
            .copy_from_slice(&period.to_le_bytes());
        data.get_mut(at.checked_add(8)?..at.checked_add(16)?)?
            .copy_from_slice(&gpu_seconds.to_le_bytes());
        Some(())
    }
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
    /// Who paid the receipt's rent; `CloseReceipt` returns it there.
    pub rent_payer: Pubkey,
    /// Bump of this PDA.
    pub bump: u8,
    /// Tenant PDA whose escrow paid (all zeros: minted by `RecordUsage`).
    pub tenant: Pubkey,
    /// Protocol fee taken from `amount` (the owner was paid `amount - fee`).
    pub fee: u64,
}

impl UsageReceipt {
    /// Serialized size in bytes.
    pub const LEN: usize = 1 + 32 + 32 + 16 + 8 + 8 + 1 + 8 + 8 + 32 + 1 + 32 + 8;
}

/// A tenant's escrow (PDA `["tenant", tenant_id]`); the tokens live in the associated token
/// account of (this PDA, pool mint), which only this program can move.
#[derive(BorshSerialize, BorshDeserialize, Clone, Debug, PartialEq, Eq)]
pub struct TenantAccount {
    /// Always [`TAG_TENANT`].
    pub tag: u8,
    /// [`tenant_id`] of the tenant's name.
    pub tenant_id: [u8; 32],
    /// The only wallet that may withdraw (what is not reserved).
    pub wallet: Pubkey,
    /// Sum of open reservations; never more than the escrow balance.
    pub reserved: u64,
    /// Sum of `Deposit`s.
    pub deposited: u64,
    /// Sum of `Withdraw`als.
    pub withdrawn: u64,
    /// Sum of settled amounts (burned, and the fee transferred to the treasury).
    pub spent: u64,
    /// Bump of this PDA.
    pub bump: u8,
}

impl TenantAccount {
    /// Serialized size in bytes.
    pub const LEN: usize = 1 + 32 + 32 + 8 + 8 + 8 + 8 + 1;
}

/// Escrow held back for one job (PDA `["reservation", tenant_pda, job_uid]`).
#[derive(BorshSerialize, BorshDeserialize, Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// Always [`TAG_RESERVATION`].
    pub tag: u8,
    /// Tenant PDA the reservation holds escrow of.
    pub tenant: Pubkey,
    /// Kubernetes UID of the job.
    pub job_uid: [u8; 16],
    /// What is still reserved (settlements draw it down).
    pub amount: u64,
    /// What settlements drew from it.
    pub drawn: u64,
    /// Who paid its rent; `Release` returns it there.
    pub rent_payer: Pubkey,
    /// Bump of this PDA.
    pub bump: u8,
}

impl Reservation {
    /// Serialized size in bytes.
    pub const LEN: usize = 1 + 32 + 16 + 8 + 8 + 32 + 1;
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

/// The tenant PDA for `tenant_id` and its bump.
pub fn find_tenant_address(tenant_id: &[u8; 32]) -> (Pubkey, u8) {
    Pubkey::find_program_address(&[TENANT_SEED, tenant_id], &crate::ID)
}

/// The reservation PDA of `job_uid` under the tenant PDA `tenant`, and its bump.
pub fn find_reservation_address(tenant: &Pubkey, job_uid: &[u8; 16]) -> (Pubkey, u8) {
    Pubkey::find_program_address(&[RESERVATION_SEED, tenant.as_ref(), job_uid], &crate::ID)
}

/// The escrow token account of a tenant PDA: its associated token account for `mint`.
pub fn escrow_address(tenant: &Pubkey, mint: &Pubkey) -> Pubkey {
    get_associated_token_address(tenant, mint)
}

/// Domain prefix of [`tenant_id`].
pub const TENANT_ID_DOMAIN: &[u8] = b"gpupool/tenant/v1";

/// `sha256("gpupool/tenant/v1" || name)`: the tenant id of a tenant (queue or namespace).
pub fn tenant_id(name: &str) -> [u8; 32] {
    hashv(&[TENANT_ID_DOMAIN, name.trim().as_bytes()]).to_bytes()
}

/// `sha256("gpupool/usage/v1" || cluster_id || job_uid || period as u64 LE)`.
pub fn usage_id(cluster_id: &[u8; 32], job_uid: &[u8; 16], period: u64) -> [u8; 32] {
    hashv(&[USAGE_ID_DOMAIN, cluster_id, job_uid, &period.to_le_bytes()]).to_bytes()
}

/// `sha256("gpupool/cluster/v2" || uid)`: the cluster id of a member cluster whose
/// `kube-system` namespace has the UID `kube_system_uid`.
pub fn cluster_id(kube_system_uid: &str) -> [u8; 32] {
    hashv(&[CLUSTER_ID_DOMAIN, kube_system_uid.trim().as_bytes()]).to_bytes()
}

/// Decodes a cluster account header, checking the whole account's size and tag.
pub fn unpack_cluster(data: &[u8]) -> Result<ClusterAccount, ProgramError> {
    if data.len() != ClusterAccount::LEN || data.first() != Some(&TAG_CLUSTER) {
        return Err(LedgerError::InvalidAccountData.into());
    }
    let header = data
        .get(..ClusterAccount::HEADER_LEN)
        .ok_or(LedgerError::InvalidAccountData)?;
    ClusterAccount::try_from_slice(header).map_err(|_| LedgerError::InvalidAccountData.into())
}

/// Writes a cluster account header into the account data (the tally ring is left as is).
pub fn pack_cluster(value: &ClusterAccount, data: &mut [u8]) -> Result<(), ProgramError> {
    let header = data
        .get_mut(..ClusterAccount::HEADER_LEN)
        .ok_or(LedgerError::InvalidAccountData)?;
    pack(value, header)
}

/// The upgradeable BPF loader's `ProgramData` address of `program_id`.
pub fn program_data_address(program_id: &Pubkey) -> Pubkey {
    Pubkey::find_program_address(&[program_id.as_ref()], &crate::bpf_loader_upgradeable::ID).0
}

/// The upgrade authority stored in an upgradeable loader `ProgramData` account
/// (`UpgradeableLoaderState::ProgramData { slot, upgrade_authority_address }`: a u32 LE tag
/// of 3, a u64 slot, then a bincode `Option<Pubkey>`). `None` when the data is not a
/// `ProgramData` header or the program is immutable.
pub fn program_data_upgrade_authority(data: &[u8]) -> Option<Pubkey> {
    let tag = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?);
    if tag != 3 || *data.get(12)? != 1 {
        return None;
    }
    let key: [u8; 32] = data.get(13..45)?.try_into().ok()?;
    Some(Pubkey::new_from_array(key))
}

/// The `ProgramData` header the upgradeable loader writes for a program deployed at `slot`
/// with `authority` (the inverse of [`program_data_upgrade_authority`]).
pub fn program_data_header(slot: u64, authority: Option<&Pubkey>) -> Vec<u8> {
    let mut out = Vec::with_capacity(45);
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&slot.to_le_bytes());
    match authority {
        Some(k) => {
            out.push(1);
            out.extend_from_slice(k.as_ref());
        }
        None => out.push(0),
    }
    out
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

    fn config(period_seconds: u64, horizon_periods: u64) -> PoolConfig {
        PoolConfig {
            tag: TAG_CONFIG,
            admin: Pubkey::new_unique(),
            pending_admin: Pubkey::default(),
            oracle: Pubkey::new_unique(),
            pending_oracle: Pubkey::default(),
            registrar: Pubkey::new_unique(),
            pending_registrar: Pubkey::default(),
            mint: Pubkey::new_unique(),
            period_seconds,
            horizon_periods,
            rate_version_count: 1,
            rate_versions: [RateVersion {
                effective_from: 0,
                rates: [7; NUM_GPU_CLASSES],
            }; MAX_RATE_VERSIONS],
            bump: 1,
            mint_authority_bump: 2,
            pending_admin_at: 0,
            pending_oracle_at: 0,
            pending_registrar_at: 0,
            paused: false,
            max_rate: 100,
            max_gpu_cap: 1_000,
            timelock_periods: 3,
            fee_bps: 250,
            treasury: Pubkey::new_unique(),
        }
    }

    #[test]
    fn sizes_match_borsh() {
        let c = config(3600, 24);
        assert_eq!(to_vec(&c).unwrap().len(), PoolConfig::LEN);
        let mut k = ClusterAccount::new([3; 32], Pubkey::new_unique(), 4);
        k.gpu_cap = 8;
        k.total_gpu_seconds = 1;
        k.pending_cap_from = 9;
        k.recovery_owner = Pubkey::new_unique();
        assert_eq!(to_vec(&k).unwrap().len(), ClusterAccount::HEADER_LEN);
        let mut data = vec![0u8; ClusterAccount::LEN];
        pack_cluster(&k, &mut data).unwrap();
        assert_eq!(unpack_cluster(&data).unwrap(), k);
        assert!(unpack_cluster(&data[..ClusterAccount::HEADER_LEN]).is_err());
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
            rent_payer: Pubkey::new_unique(),
            bump: 8,
            tenant: Pubkey::new_unique(),
            fee: 9,
        };
        let mut buf = vec![0u8; UsageReceipt::LEN];
        pack(&r, &mut buf).unwrap();
        let back: UsageReceipt = unpack(&buf, UsageReceipt::LEN, TAG_RECEIPT).unwrap();
        assert_eq!(back, r);
        assert!(unpack::<UsageReceipt>(&buf, UsageReceipt::LEN, TAG_CLUSTER).is_err());
        let t = TenantAccount {
            tag: TAG_TENANT,
            tenant_id: [1; 32],
            wallet: Pubkey::new_unique(),
            reserved: 2,
            deposited: 3,
            withdrawn: 4,
            spent: 5,
            bump: 6,
        };
        assert_eq!(to_vec(&t).unwrap().len(), TenantAccount::LEN);
        let v = Reservation {
            tag: TAG_RESERVATION,
            tenant: Pubkey::new_unique(),
            job_uid: [1; 16],
            amount: 2,
            drawn: 3,
            rent_payer: Pubkey::new_unique(),
            bump: 4,
        };
        assert_eq!(to_vec(&v).unwrap().len(), Reservation::LEN);
    }

    #[test]
    fn caps_owners_and_fees() {
        let mut k = ClusterAccount::new([3; 32], Pubkey::new_unique(), 4);
        k.gpu_cap = 8;
        assert_eq!(k.cap_at(100), 8);
        k.pending_gpu_cap = 16;
        k.pending_cap_from = 103;
        assert_eq!(k.cap_at(102), 8);
        assert_eq!(k.cap_at(103), 16);
        let old = k.owner;
        k.previous_owner = old;
        k.owner = Pubkey::new_unique();
        k.owner_from = 50;
        assert_eq!(k.owner_for(49), old);
        assert_eq!(k.owner_for(50), k.owner);
        let c = config(3600, 24);
        // 2.5 %, rounded down.
        assert_eq!(c.fee_of(1_000), Some(25));
        assert_eq!(c.fee_of(39), Some(0));
        assert_eq!(c.fee_of(u64::MAX), Some(u64::MAX / 40));
    }

    #[test]
    fn periods_and_horizon() {
        let c = config(3600, 24);
        assert_eq!(c.period_at(7_199), 1);
        assert_eq!(c.period_end(1), Some(7_200));
        // Period 1 ends at 7200: not before.
        assert_eq!(c.recordable(1, 7_199), Err(LedgerError::PeriodNotEnded));
        assert_eq!(c.recordable(1, 7_200), Ok(()));
        // Period 1 + 24 = 25: still recordable while the current period is 25.
        assert_eq!(c.recordable(1, 25 * 3600 + 10), Ok(()));
        assert_eq!(
            c.recordable(1, 26 * 3600),
            Err(LedgerError::PeriodOutsideHorizon)
        );
        assert_eq!(
            c.recordable(u64::MAX, i64::MAX),
            Err(LedgerError::PeriodNotEnded)
        );
        assert_eq!(c.period_cap(8), 8 * 3600);
    }

    #[test]
    fn rate_versions_apply_by_period() {
        let mut c = config(60, 10);
        c.rate_versions[1] = RateVersion {
            effective_from: 100,
            rates: [9; NUM_GPU_CLASSES],
        };
        c.rate_version_count = 2;
        assert_eq!(c.rate(0, 99), Some(7));
        assert_eq!(c.rate(0, 100), Some(9));
        assert_eq!(c.rate(8, 100), None);
        c.rate_version_count = 1;
        assert_eq!(c.rate(0, 100), Some(7));
    }

    #[test]
    fn tally_ring_keeps_one_period_per_slot() {
        let mut data = vec![0u8; ClusterAccount::LEN];
        assert_eq!(tally::get(&data, 5, 24), Some(0));
        tally::set(&mut data, 5, 24, 100).unwrap();
        assert_eq!(tally::get(&data, 5, 24), Some(100));
        // 29 shares slot 5 with period 5: it reads as empty, and overwrites it.
        assert_eq!(tally::get(&data, 29, 24), Some(0));
        tally::set(&mut data, 29, 24, 1).unwrap();
        assert_eq!(tally::get(&data, 5, 24), Some(0));
        assert_eq!(tally::get(&data, 29, 24), Some(1));
        assert_eq!(tally::get(&data, 29, 0), None);
        // The last slot of the largest horizon is inside the account.
        let last = MAX_HORIZON_PERIODS - 1;
        tally::set(&mut data, last, MAX_HORIZON_PERIODS, 3).unwrap();
        assert_eq!(tally::get(&data, last, MAX_HORIZON_PERIODS), Some(3));
    }

    #[test]
    fn program_data_header_round_trips() {
        let k = Pubkey::new_unique();
        assert_eq!(
            program_data_upgrade_authority(&program_data_header(9, Some(&k))),
            Some(k)
        );
        assert_eq!(
            program_data_upgrade_authority(&program_data_header(9, None)),
            None
        );
        let mut bad = program_data_header(9, Some(&k));
        bad[0] = 2;
        assert_eq!(program_data_upgrade_authority(&bad), None);
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
        let c = cluster_id("5d7e1f0a-0000-4000-8000-000000000001");
        let j = [9u8; 16];
        let a = usage_id(&c, &j, 1);
        assert_ne!(a, usage_id(&c, &j, 2));
        assert_ne!(
            a,
            usage_id(&cluster_id("5d7e1f0a-0000-4000-8000-000000000002"), &j, 1)
        );
        assert_ne!(a, usage_id(&c, &[8u8; 16], 1));
        assert_eq!(a, usage_id(&c, &j, 1));
    }
}
