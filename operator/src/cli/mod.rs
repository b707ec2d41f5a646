//! Command-line tools: `gpupool earnings` for cluster owners, member administration for pool
//! admins, and the `kubectl gpupool` plugin.

pub mod earnings;
pub mod members;
pub mod plugin;
