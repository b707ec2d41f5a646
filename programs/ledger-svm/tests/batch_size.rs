//! `MAX_BATCH_RECEIPTS` is the largest `RecordUsageBatch` whose signed transaction fits
//! `PACKET_DATA_SIZE`, and a batch of that size executes.

mod common;

use common::*;
use gpupool_ledger_svm::{
    self as svmx,
    gpupool_ledger::{MAX_BATCH_RECEIPTS, MAX_BATCH_RECEIPTS_SEPARATE_PAYER, instruction as ix},
};
use solana_keypair::Keypair;
use solana_packet::PACKET_DATA_SIZE;
use solana_signer::Signer;
use solana_transaction::Transaction;

fn entries(n: usize) -> Vec<ix::UsageEntry> {
    // Worst case for the encoding: every field at full width.
    (0..n)
        .map(|i| ix::UsageEntry {
            job_uid: [u8::try_from(i).unwrap(); 16],
            period: u64::MAX - i as u64,
            gpu_seconds: 1_000_000 + i as u64,
            gpu_class: 1,
        })
        .collect()
}

fn batch_tx(f: &Fixture, n: usize, payer: Option<&Keypair>) -> Transaction {
    let fee_payer = payer.unwrap_or(&f.oracle);
    let ix = ix::record_usage_batch(
        &f.oracle.pubkey(),
        &fee_payer.pubkey(),
        &f.mint,
        &f.cluster_id,
        &f.owner.pubkey(),
        &entries(n),
    );
    svmx::build_transaction(&f.svm, &[ix], fee_payer, &[&f.oracle])
}

fn largest_fitting(f: &Fixture, payer: Option<&Keypair>) -> usize {
    let mut n = 1;
    while svmx::transaction_size(&batch_tx(f, n + 1, payer)) <= PACKET_DATA_SIZE {
        n += 1;
    }
    n
}

#[test]
fn max_batch_fits_and_one_more_does_not() {
    let f = fixture();
    let max = svmx::transaction_size(&batch_tx(&f, MAX_BATCH_RECEIPTS, None));
    let over = svmx::transaction_size(&batch_tx(&f, MAX_BATCH_RECEIPTS + 1, None));
    println!(
        "batch {MAX_BATCH_RECEIPTS}: {max} bytes; batch {}: {over} bytes",
        MAX_BATCH_RECEIPTS + 1
    );
    assert!(max <= PACKET_DATA_SIZE, "{max} > {PACKET_DATA_SIZE}");
    assert!(over > PACKET_DATA_SIZE, "{over} <= {PACKET_DATA_SIZE}");
    assert_eq!(largest_fitting(&f, None), MAX_BATCH_RECEIPTS);

    let payer = Keypair::new();
    let n = MAX_BATCH_RECEIPTS_SEPARATE_PAYER;
    assert!(svmx::transaction_size(&batch_tx(&f, n, Some(&payer))) <= PACKET_DATA_SIZE);
    assert!(svmx::transaction_size(&batch_tx(&f, n + 1, Some(&payer))) > PACKET_DATA_SIZE);
    assert_eq!(largest_fitting(&f, Some(&payer)), n);
}

#[test]
fn max_batch_executes() {
    let mut f = fixture();
    f.svm.expire_blockhash();
    let tx = batch_tx(&f, MAX_BATCH_RECEIPTS, None);
    assert!(svmx::transaction_size(&tx) <= PACKET_DATA_SIZE);
    f.svm.send_transaction(tx).expect("max batch executes");

    let expected: u64 = entries(MAX_BATCH_RECEIPTS)
        .iter()
        .map(|e| e.gpu_seconds * RATE_1)
        .sum();
    assert_eq!(f.balance(), expected);
    assert_eq!(f.supply(), expected);
    let c = f.cluster_state();
    assert_eq!(c.receipt_count, MAX_BATCH_RECEIPTS as u64);
    assert_eq!(c.total_tokens_minted, expected);
    for e in entries(MAX_BATCH_RECEIPTS) {
        assert!(svmx::read_receipt(&f.svm, &f.cluster_id, &e.job_uid, e.period).is_some());
    }

    // With a separate fee payer too.
    let payer = Keypair::new();
    let mut f2 = fixture();
    svmx::fund(&mut f2.svm, &payer.pubkey()).unwrap();
    let tx = batch_tx(&f2, MAX_BATCH_RECEIPTS_SEPARATE_PAYER, Some(&payer));
    f2.svm
        .send_transaction(tx)
        .expect("max separate-payer batch executes");
    assert_eq!(
        f2.cluster_state().receipt_count,
        MAX_BATCH_RECEIPTS_SEPARATE_PAYER as u64
    );
    assert_eq!(f2.supply(), f2.balance());
    assert!(f2.balance() > 0);
}
