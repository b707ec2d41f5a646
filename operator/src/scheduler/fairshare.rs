//! Fair sharing of a cohort's idle quota: weighted dominant share (DRF over GPU classes).
//!
//! A queue's share of one GPU class is what it holds beyond its nominal quota per GPU its
//! cohort lends of that class; its dominant share is the largest over its classes, divided by
//! its weight. When several queues want the same lent GPUs, the lowest weighted share goes
//! first, so a queue that floods the pool cannot starve one that arrives later with the same
//! weight: the later queue's share is lower until both hold the same.

/// Weighted dominant share from `(borrowed, cohort_lent)` per class: the largest
/// `borrowed / cohort_lent` (classes the cohort lends nothing of count as 0), divided by
/// `weight` (at least 1).
pub fn dominant_share(parts: impl IntoIterator<Item = (i64, i64)>, weight: i32) -> f64 {
    let dominant = parts
        .into_iter()
        .filter(|(_, lent)| *lent > 0)
        .map(|(borrowed, lent)| borrowed.max(0) as f64 / lent as f64)
        .fold(0.0, f64::max);
    dominant / f64::from(weight.max(1))
}

/// Whether a queue whose share is `theirs` now, and which waits for GPUs, goes before a queue
/// that would reach `mine` by borrowing: it does when it is strictly lower (equal shares
/// alternate: whichever asks first takes, and its share is then the higher).
pub fn goes_first(theirs: f64, mine: f64) -> bool {
    theirs + 1e-9 < mine
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dominant_class_decides_and_weight_divides() {
        assert_eq!(dominant_share([(0, 16), (0, 8)], 1), 0.0);
        assert_eq!(dominant_share([(4, 16), (4, 8)], 1), 0.5);
        assert_eq!(dominant_share([(4, 16), (4, 8)], 2), 0.25);
        // A class the cohort lends nothing of adds nothing.
        assert_eq!(dominant_share([(4, 0), (2, 8)], 1), 0.25);
        assert_eq!(dominant_share([(3, 4)], 0), 0.75);
    }

    #[test]
    fn a_lower_share_goes_first_and_equal_shares_do_not_block() {
        assert!(goes_first(0.0, 0.1));
        assert!(!goes_first(0.5, 0.5));
        assert!(!goes_first(0.6, 0.5));
    }
}
