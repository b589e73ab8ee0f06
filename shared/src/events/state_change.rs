//! EC2 Instance State-change Notification.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{EventContext, EventError, Notice, NoticeKind, instance_id_from};

/// The EC2 instance states a state-change notification can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    Pending,
    Running,
    Stopping,
    Stopped,
    ShuttingDown,
    Terminated,
}

impl InstanceState {
    /// The instance is going away or gone: pods and volumes on it are lost.
    pub fn is_gone(self) -> bool {
        matches!(self, Self::ShuttingDown | Self::Terminated)
    }

    /// The instance is stopping: pods must move before it stops.
    pub fn is_stopping(self) -> bool {
        matches!(self, Self::Stopping | Self::Stopped)
    }
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::ShuttingDown => "shutting-down",
            Self::Terminated => "terminated",
        })
    }
}

#[derive(Deserialize)]
struct Detail {
    #[serde(rename = "instance-id")]
    instance_id: String,
    state: String,
}

pub(super) fn parse(ctx: &EventContext, detail: Value) -> Result<Vec<Notice>, EventError> {
    let detail: Detail = ctx.detail(detail)?;
    let instance_id = instance_id_from(&detail.instance_id)
        .ok_or_else(|| ctx.invalid(format!("{:?} is not an instance id", detail.instance_id)))?;
    let state: InstanceState = serde_json::from_value(Value::String(detail.state.clone()))
        .map_err(|_| ctx.invalid(format!("unknown instance state {:?}", detail.state)))?;
    let mut notice = ctx.notice(NoticeKind::StateChange { state }, instance_id);
    if state.is_gone() {
        notice.deadline = Some(ctx.time);
    }
    Ok(vec![notice])
}
