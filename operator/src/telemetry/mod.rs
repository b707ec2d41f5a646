//! Logging setup, and the health and metrics endpoints of the agents ([`probes`]).

pub mod probes;

/// Installs a `tracing` subscriber (RUST_LOG, default `info`; `GPUPOOL_LOG_JSON=1` for JSON).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if std::env::var("GPUPOOL_LOG_JSON").is_ok_and(|v| v == "1") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
