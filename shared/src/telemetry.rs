//! Logging: JSON lines through `tracing-subscriber`, level from `RUST_LOG` or
//! `EKS_REMEDY_LOG_LEVEL` (default `info`).

use tracing_subscriber::EnvFilter;

/// Installs the JSON subscriber once; later calls do nothing.
pub fn init() {
    let filter = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("EKS_REMEDY_LOG_LEVEL"))
        .unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(directives(&filter)).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The filter directives for a requested level (`info`, `trace`, or any `RUST_LOG` value).
/// The SDK's and hyper's own debug logs carry request details, and aws-sigv4's trace log of
/// the EKS token's canonical request shows the session token: they stay at warn whatever
/// the level.
pub fn directives(level: &str) -> String {
    format!(
        "{level},aws_smithy_runtime=warn,aws_config=warn,aws_sigv4=warn,hyper_util=warn,rustls=warn"
    )
}
