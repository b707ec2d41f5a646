//! Command-line tools for cluster owners.

pub mod earnings;
