//! EC2 Auto Scaling lifecycle hooks: completing the terminate action and keeping it alive.

use std::time::Duration;

use crate::aws::{AwsError, aws_err};
use crate::events::LifecycleAction;

/// Auto Scaling's default heartbeat timeout, used when the hook cannot be read.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3600);

/// What completing the lifecycle action found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    Completed,
    /// Auto Scaling had no active action: completed before, or timed out.
    AlreadyComplete,
}

fn already_complete(err: &AwsError) -> bool {
    err.code == "ValidationError" && err.message.contains("No active Lifecycle Action")
}

/// The hook's heartbeat timeout: how long the instance waits without a heartbeat.
pub async fn heartbeat_timeout(
    client: &aws_sdk_autoscaling::Client,
    action: &LifecycleAction,
) -> Result<Duration, AwsError> {
    let output = client
        .describe_lifecycle_hooks()
        .auto_scaling_group_name(&action.auto_scaling_group)
        .lifecycle_hook_names(&action.hook)
        .send()
        .await
        .map_err(aws_err(
            "DescribeLifecycleHooks",
            &action.auto_scaling_group,
        ))?;
    Ok(output
        .lifecycle_hooks()
        .first()
        .and_then(|h| h.heartbeat_timeout())
        .map(|s| Duration::from_secs(s.max(0) as u64))
        .unwrap_or(DEFAULT_HEARTBEAT_TIMEOUT))
}

/// Completes the action with CONTINUE so termination proceeds.
pub async fn complete(
    client: &aws_sdk_autoscaling::Client,
    action: &LifecycleAction,
    instance_id: &str,
) -> Result<Completion, AwsError> {
    let result = client
        .complete_lifecycle_action()
        .auto_scaling_group_name(&action.auto_scaling_group)
        .lifecycle_hook_name(&action.hook)
        .instance_id(instance_id)
        .set_lifecycle_action_token(action.token.clone())
        .lifecycle_action_result("CONTINUE")
        .send()
        .await
        .map_err(aws_err("CompleteLifecycleAction", instance_id));
    match result {
        Ok(_) => Ok(Completion::Completed),
        Err(err) if already_complete(&err) => Ok(Completion::AlreadyComplete),
        Err(err) => Err(err),
    }
}

/// Records a heartbeat so the hook's timeout starts again.
pub async fn heartbeat(
    client: &aws_sdk_autoscaling::Client,
    action: &LifecycleAction,
    instance_id: &str,
) -> Result<(), AwsError> {
    client
        .record_lifecycle_action_heartbeat()
        .auto_scaling_group_name(&action.auto_scaling_group)
        .lifecycle_hook_name(&action.hook)
        .instance_id(instance_id)
        .set_lifecycle_action_token(action.token.clone())
        .send()
        .await
        .map_err(aws_err("RecordLifecycleActionHeartbeat", instance_id))?;
    Ok(())
}
