//! Command-line tools for cluster owners and pool admins.

pub mod earnings;
pub mod members;
