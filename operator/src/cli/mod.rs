//! Command-line tools: `gpupool earnings` for cluster owners and the `kubectl gpupool` plugin.

pub mod earnings;
pub mod plugin;
