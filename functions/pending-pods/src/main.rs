//! The pending-pods Lambda: alarms on Pending pods (or direct requests) in, prefix delegation,
//! pod ENIs and node replacement out.
//!
//! Everything but the handler type is shared: see `eks_remedy::invocation::run_lambda`.

// The handlers' futures are deep; computing their layout needs more than the default.
#![recursion_limit = "256"]

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    eks_remedy::invocation::run_lambda::<eks_remedy::pending::PendingPods>().await
}
