//! What the settler checks before it pays a record, beyond the record's own arithmetic: that the
//! meter wrote it (a **seal**, an HMAC-SHA256 over the record's spec under a key only the
//! operator holds) and, while the job still exists on the hub, that the hub's own facts
//! re-derive it (the job was placed on that member, on each of the record's slots, in that
//! period, and each slot is within its GPUs × its placement window ∩ the period).
//!
//! The seal is what stands for the job once it is gone: a sealed record is the meter's
//! statement, made while the job existed, that the job and its placements were as the record
//! says (the meter writes records only for hub jobs and their slots). A record anyone else
//! wrote (a bypassed admission policy, a compromised join controller) carries no valid seal and
//! is refused.
//!
//! The operator derives the key from the oracle's keypair (the one key it holds alone, and the
//! one that signs the settlement anyway), so every replica and restart of the operator seals
//! and verifies with the same key and nothing new is stored; without a ledger (no settlement)
//! the key is random per process.

use super::{HubJob, period_bounds};
use crate::api::UsageRecordSpec;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// The meter's record-sealing key.
#[derive(Clone, PartialEq, Eq)]
pub struct SealKey([u8; 32]);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl Default for SealKey {
    /// The process's own random key (see [`SealKey::process`]).
    fn default() -> Self {
        SealKey::process()
    }
}

impl SealKey {
    /// The key derived from `secret` (the oracle keypair's bytes).
    pub fn from_secret(secret: &[u8]) -> SealKey {
        let mut h = Sha256::new();
        h.update(b"gpupool usage record seal v1\0");
        h.update(secret);
        SealKey(h.finalize().into())
    }

    /// A random key, the same for the whole process (used when no ledger key is configured).
    pub fn process() -> SealKey {
        static KEY: OnceLock<SealKey> = OnceLock::new();
        KEY.get_or_init(|| SealKey::from_secret(&solana_keypair::Keypair::new().to_bytes()))
            .clone()
    }

    fn mac(&self, spec: &UsageRecordSpec) -> Hmac<Sha256> {
        let mut unsealed = spec.clone();
        unsealed.seal = None;
        let bytes = serde_json::to_vec(&unsealed).expect("a usage record spec serializes");
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        mac.update(&bytes);
        mac
    }

    /// The seal of `spec` (its `seal` field ignored), base64.
    pub fn seal(&self, spec: &UsageRecordSpec) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(self.mac(spec).finalize().into_bytes())
    }

    /// Whether `spec.seal` is this key's seal of `spec`.
    pub fn verify(&self, spec: &UsageRecordSpec) -> bool {
        use base64::Engine;
        let Some(sig) = spec
            .seal
            .as_deref()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        else {
            return false;
        };
        self.mac(spec).verify_slice(&sig).is_ok()
    }
}

/// Re-derives `spec` from the hub's jobs: `Ok` when its job is gone (the seal vouches for it)
/// or when the job is the record's and every paid slot entry is one of the job's placement
/// slots on the record's member, with the slot's GPUs, within GPUs × |window ∩ period|.
pub fn rederive(
    spec: &UsageRecordSpec,
    jobs: &BTreeMap<String, HubJob>,
    period_seconds: u64,
) -> Result<(), String> {
    let Some(job) = jobs.get(&spec.job_uid) else {
        return Ok(());
    };
    if job.job.kind != spec.job_kind
        || job.job.namespace != spec.job_namespace
        || job.job.name != spec.job_name
    {
        return Err(format!(
            "job {} is {} {}/{} on the hub, not {} {}/{}",
            spec.job_uid,
            job.job.kind,
            job.job.namespace,
            job.job.name,
            spec.job_kind,
            spec.job_namespace,
            spec.job_name
        ));
    }
    let period = u64::try_from(spec.period).map_err(|_| "negative period".to_string())?;
    let (ps, pe) = period_bounds(period, period_seconds);
    let (life_s, life_e) = (job.not_before, job.not_after.unwrap_or(i64::MAX));
    for (key, p) in spec.pods.iter().filter(|(_, p)| p.gpu_seconds > 0) {
        let Some(w) = job
            .windows
            .iter()
            .find(|w| w.member == spec.cluster && w.key() == *key)
        else {
            return Err(format!(
                "slot {key} is not a placement of {}/{} on {} the hub knows",
                spec.job_namespace, spec.job_name, spec.cluster
            ));
        };
        let gpus = w.slot.gpu_uuids.len() as i64;
        let secs = (w.until.min(pe).min(life_e) - w.from.max(ps).max(life_s)).max(0);
        let bound = gpus.saturating_mul(secs);
        if p.gpus != gpus || p.gpu_seconds > bound {
            return Err(format!(
                "slot {key} claims {} GPU-seconds on {} GPUs; the hub placed {gpus} GPUs there for {secs} s of period {period} (at most {bound})",
                p.gpu_seconds, p.gpus
            ));
        }
    }
    Ok(())
}
