//! `MAX_BATCH_RECEIPTS` is the largest `RecordUsageBatch` whose signed transaction, with the
//! `SetComputeUnitLimit` and `SetComputeUnitPrice` instructions in front, fits
//! `PACKET_DATA_SIZE`; and a batch of that size executes.

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
    // Borsh encodes every field at full width; distinct recent periods and jobs.
    (0..n)
        .map(|i| ix::UsageEntry {
            job_uid: [u8::try_from(i).unwrap(); 16],
            period: NOW_PERIOD - 1 - i as u64,
            gpu_seconds: 1_000_000 + i as u64,
            gpu_class: 1,
        })
        .collect()
}

fn batch_tx(f: &Fixture, n: usize, payer: Option<&Keypair>, budget: bool) -> Transaction {
    let fee_payer = payer.unwrap_or(&f.oracle);
    let mut ixs = Vec::new();
    if budget {
        ixs.push(ix::raw::set_compute_unit_limit(
            ix::record_usage_compute_units(n),
        ));
        ixs.push(ix::raw::set_compute_unit_price(u64::MAX));
    }
    ixs.push(ix::record_usage_batch(
        &f.oracle.pubkey(),
        &fee_payer.pubkey(),
        &f.mint,
        &f.cluster_id,
        &f.owner.pubkey(),
        &entries(n),
    ));
    svmx::build_transaction(&f.svm, &ixs, fee_payer, &[&f.oracle])
}

fn largest_fitting(f: &Fixture, payer: Option<&Keypair>, budget: bool) -> usize {
    let mut n = 1;
    while svmx::transaction_size(&batch_tx(f, n + 1, payer, budget)) <= PACKET_DATA_SIZE {
        n += 1;
    }
    n
}

#[test]
fn max_batch_with_compute_budget_fits_and_one_more_does_not() {
    let f = fixture();
    let max = svmx::transaction_size(&batch_tx(&f, MAX_BATCH_RECEIPTS, None, true));
    let over = svmx::transaction_size(&batch_tx(&f, MAX_BATCH_RECEIPTS + 1, None, true));
    println!(
        "with compute-budget instructions: batch {MAX_BATCH_RECEIPTS}: {max} bytes; batch {}: {over} bytes",
        MAX_BATCH_RECEIPTS + 1
    );
    assert!(max <= PACKET_DATA_SIZE, "{max} > {PACKET_DATA_SIZE}");
    assert!(over > PACKET_DATA_SIZE, "{over} <= {PACKET_DATA_SIZE}");
    assert_eq!(largest_fitting(&f, None, true), MAX_BATCH_RECEIPTS);
    println!(
        "without them the largest batch would be {}",
        largest_fitting(&f, None, false)
    );

    let payer = Keypair::new();
    let n = MAX_BATCH_RECEIPTS_SEPARATE_PAYER;
    assert!(svmx::transaction_size(&batch_tx(&f, n, Some(&payer), true)) <= PACKET_DATA_SIZE);
    assert!(svmx::transaction_size(&batch_tx(&f, n + 1, Some(&payer), true)) > PACKET_DATA_SIZE);
    assert_eq!(largest_fitting(&f, Some(&payer), true), n);
}

#[test]
fn max_batch_executes_with_compute_budget() {
    let mut f = fixture();
    f.svm.expire_blockhash();
    let tx = batch_tx(&f, MAX_BATCH_RECEIPTS, None, true);
    assert!(svmx::transaction_size(&tx) <= PACKET_DATA_SIZE);
    // A price of u64::MAX micro-lamports per unit cannot be paid: set a payable one.
    let mut ixs = vec![
        ix::raw::set_compute_unit_limit(ix::record_usage_compute_units(MAX_BATCH_RECEIPTS)),
        ix::raw::set_compute_unit_price(1_000),
    ];
    ixs.push(ix::record_usage_batch(
        &f.oracle.pubkey(),
        &f.oracle.pubkey(),
        &f.mint,
        &f.cluster_id,
        &f.owner.pubkey(),
        &entries(MAX_BATCH_RECEIPTS),
    ));
    let oracle = f.oracle.insecure_clone();
    let tx = svmx::build_transaction(&f.svm, &ixs, &oracle, &[]);
    assert!(svmx::transaction_size(&tx) <= PACKET_DATA_SIZE);
    let lamports_before = f.svm.get_balance(&oracle.pubkey()).unwrap();
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
    // The priority fee was charged on top of the signature fee and the receipts' rent.
    let rent = f.svm.minimum_balance_for_rent_exemption(
        gpupool_ledger_svm::gpupool_ledger::state::UsageReceipt::LEN,
    ) * MAX_BATCH_RECEIPTS as u64;
    let spent = lamports_before - f.svm.get_balance(&oracle.pubkey()).unwrap();
    assert!(spent > rent + 5_000, "spent {spent}, rent {rent}");

    // With a separate fee payer too.
    let payer = Keypair::new();
    let mut f2 = fixture();
    svmx::fund(&mut f2.svm, &payer.pubkey()).unwrap();
    let mut ixs = vec![
        ix::raw::set_compute_unit_limit(ix::record_usage_compute_units(
            MAX_BATCH_RECEIPTS_SEPARATE_PAYER,
        )),
        ix::raw::set_compute_unit_price(1_000),
    ];
    ixs.push(ix::record_usage_batch(
        &f2.oracle.pubkey(),
        &payer.pubkey(),
        &f2.mint,
        &f2.cluster_id,
        &f2.owner.pubkey(),
        &entries(MAX_BATCH_RECEIPTS_SEPARATE_PAYER),
    ));
    let oracle2 = f2.oracle.insecure_clone();
    let tx = svmx::build_transaction(&f2.svm, &ixs, &payer, &[&oracle2]);
    assert!(svmx::transaction_size(&tx) <= PACKET_DATA_SIZE);
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
