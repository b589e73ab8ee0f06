//! EC2 Instance Rebalance Recommendation: the instance is at elevated risk of interruption.

use serde::Deserialize;
use serde_json::Value;

use super::{EventContext, EventError, Notice, NoticeKind, instance_id_from};

#[derive(Deserialize)]
struct Detail {
    #[serde(rename = "instance-id")]
    instance_id: String,
}

pub(super) fn parse(ctx: &EventContext, detail: Value) -> Result<Vec<Notice>, EventError> {
    let detail: Detail = ctx.detail(detail)?;
    let instance_id = instance_id_from(&detail.instance_id)
        .ok_or_else(|| ctx.invalid(format!("{:?} is not an instance id", detail.instance_id)))?;
    Ok(vec![
        ctx.notice(NoticeKind::RebalanceRecommendation, instance_id),
    ])
}
