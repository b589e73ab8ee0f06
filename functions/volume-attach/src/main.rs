//! The volume-attach Lambda: volume failures (CloudTrail, EBS notifications, alarms, a schedule)
//! in, Pod Identity associations, controller restarts and released volumes out.
//!
//! Everything but the handler type is shared: see `eks_remedy::invocation::run_lambda`.

// The handlers' futures are deep; computing their layout needs more than the default.
#![recursion_limit = "256"]

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    eks_remedy::invocation::run_lambda::<eks_remedy::volumes::VolumeAttach>().await
}
