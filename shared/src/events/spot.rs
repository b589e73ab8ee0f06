//! EC2 Spot Instance Interruption Warning: the instance is reclaimed two minutes after `time`.

use serde::Deserialize;
use serde_json::Value;

use super::{EventContext, EventError, Notice, NoticeKind, instance_id_from};

/// How long EC2 waits after the warning before it reclaims the instance.
pub const SPOT_NOTICE: chrono::TimeDelta = chrono::TimeDelta::seconds(120);

#[derive(Deserialize)]
struct Detail {
    #[serde(rename = "instance-id")]
    instance_id: String,
    #[serde(rename = "instance-action", default)]
    instance_action: Option<String>,
}

pub(super) fn parse(ctx: &EventContext, detail: Value) -> Result<Vec<Notice>, EventError> {
    let detail: Detail = ctx.detail(detail)?;
    let instance_id = instance_id_from(&detail.instance_id)
        .ok_or_else(|| ctx.invalid(format!("{:?} is not an instance id", detail.instance_id)))?;
    let action = detail.instance_action.unwrap_or_else(|| "terminate".into());
    if !matches!(action.as_str(), "terminate" | "stop" | "hibernate") {
        return Err(ctx.invalid(format!(
            "instance-action {action:?} is not one of terminate, stop, hibernate"
        )));
    }
    let mut notice = ctx.notice(
        NoticeKind::SpotInterruption {
            instance_action: action,
        },
        instance_id,
    );
    notice.deadline = Some(ctx.time + SPOT_NOTICE);
    Ok(vec![notice])
}
