//! The volume-attach Lambda: volume failures (CloudTrail, EBS notifications, alarms, a schedule)
//! in, Pod Identity associations, controller restarts and released volumes out.

use eks_remedy::access::ClusterAccess;
use eks_remedy::aws::AwsClients;
use eks_remedy::config::Config;
use eks_remedy::volumes::VolumeAttach;
use lambda_runtime::{Diagnostic, Error, LambdaEvent, service_fn};
use serde_json::Value;
use tokio::time::Instant;

#[tokio::main]
async fn main() -> Result<(), Error> {
    eks_remedy::telemetry::init();

    // Clients, configuration and the token cache live for the whole execution environment.
    let config = Config::from_env().inspect_err(|err| {
        tracing::error!(error = %err, "invalid configuration; the function cannot start");
    })?;
    let aws = AwsClients::from_env().await;
    let access = ClusterAccess::eks(aws.clone());
    let handler = &VolumeAttach::new(aws, access, config);

    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let remaining = event
            .context
            .deadline()
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        let result = handler
            .handle(&event.payload, Some(Instant::now() + remaining))
            .await
            .map_err(Diagnostic::from)?;
        serde_json::to_value(result).map_err(|e| Diagnostic {
            error_type: "EksRemedy.SerializationError".into(),
            error_message: e.to_string(),
        })
    }))
    .await
}
