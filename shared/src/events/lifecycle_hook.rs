//! EC2 Auto Scaling `EC2 Instance-terminate Lifecycle Action`: the group holds the instance in
//! `Terminating:Wait` until the action is completed or the hook times out.

use serde::Deserialize;
use serde_json::Value;

use super::{EventContext, EventError, LifecycleAction, Notice, NoticeKind, instance_id_from};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Detail {
    #[serde(rename = "EC2InstanceId")]
    ec2_instance_id: String,
    auto_scaling_group_name: String,
    lifecycle_hook_name: String,
    #[serde(default)]
    lifecycle_action_token: Option<String>,
    #[serde(default)]
    lifecycle_transition: Option<String>,
}

pub(super) fn parse(ctx: &EventContext, detail: Value) -> Result<Vec<Notice>, EventError> {
    let detail: Detail = ctx.detail(detail)?;
    if let Some(transition) = detail.lifecycle_transition.as_deref()
        && transition != "autoscaling:EC2_INSTANCE_TERMINATING"
    {
        return Err(ctx.invalid(format!("transition {transition:?} is not a termination")));
    }
    let instance_id = instance_id_from(&detail.ec2_instance_id).ok_or_else(|| {
        ctx.invalid(format!(
            "{:?} is not an instance id",
            detail.ec2_instance_id
        ))
    })?;
    if detail.auto_scaling_group_name.trim().is_empty() || detail.lifecycle_hook_name.is_empty() {
        return Err(ctx.invalid("AutoScalingGroupName and LifecycleHookName are required"));
    }
    let mut notice = ctx.notice(NoticeKind::LifecycleTerminate, instance_id);
    notice.lifecycle_action = Some(LifecycleAction {
        auto_scaling_group: detail.auto_scaling_group_name.trim().to_owned(),
        hook: detail.lifecycle_hook_name.trim().to_owned(),
        token: detail
            .lifecycle_action_token
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty()),
    });
    Ok(vec![notice])
}
