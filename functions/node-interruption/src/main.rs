//! The node-interruption Lambda: EC2 interruption events in, cordoned and drained nodes out.
//!
//! Everything but the handler type is shared: see `eks_remedy::invocation::run_lambda`.

// The handlers' futures are deep; computing their layout needs more than the default.
#![recursion_limit = "256"]

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    eks_remedy::invocation::run_lambda::<eks_remedy::interruption::NodeInterruption>().await
}
