//! The events eks-remedy accepts: EventBridge events, delivered directly or wrapped in SQS
//! messages or SNS notifications.
//!
//! Each event kind lives in its own module with a typed model of its `detail` and one parser
//! that turns it into [`Notice`]s, the only shape the rest of the code speaks of. Adding a kind
//! means adding a module and a line in [`parse_event`].

mod alarm;
mod health;
mod lifecycle_hook;
mod rebalance;
mod spot;
mod state_change;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use alarm::{AlarmChange, is_alarm, parse_alarm};
pub use state_change::InstanceState;

/// Why an event was rejected. Every variant names what was wrong so the sender can fix it.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum EventError {
    /// Not JSON, or JSON of an unknown shape.
    #[error("malformed event: {0}")]
    Malformed(String),
    /// A well-formed EventBridge event of a kind eks-remedy does not handle.
    #[error("unsupported event: source {event_source:?}, detail-type {detail_type:?}")]
    Unsupported {
        event_source: String,
        detail_type: String,
    },
    /// A known kind with a field missing or unusable.
    #[error("invalid {kind} event: {reason}")]
    Invalid { kind: &'static str, reason: String },
}

/// What kind of interruption a notice announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum NoticeKind {
    /// EC2 Spot Instance Interruption Warning; the instance goes two minutes after `time`.
    SpotInterruption { instance_action: String },
    /// EC2 Instance Rebalance Recommendation: elevated risk of a spot interruption.
    RebalanceRecommendation,
    /// EC2 Instance State-change Notification.
    StateChange { state: InstanceState },
    /// EC2 Auto Scaling `EC2 Instance-terminate Lifecycle Action`.
    LifecycleTerminate,
    /// AWS Health scheduled change for an EC2 instance (for example a retirement).
    HealthScheduledChange { event_type_code: String },
}

impl NoticeKind {
    /// A short stable name, used in logs, reports and SNS message attributes.
    pub fn name(&self) -> &'static str {
        match self {
            Self::SpotInterruption { .. } => "spot-interruption",
            Self::RebalanceRecommendation => "rebalance-recommendation",
            Self::StateChange { .. } => "state-change",
            Self::LifecycleTerminate => "lifecycle-hook",
            Self::HealthScheduledChange { .. } => "health-scheduled-change",
        }
    }

    /// What makes two notices of one instance the same event for the incident record: the kind,
    /// and for state changes the state (stopping then terminated are two events).
    pub fn repeat_key(&self) -> String {
        match self {
            Self::StateChange { state } => format!("state-change:{state}"),
            other => other.name().to_owned(),
        }
    }

    /// A phrase for people.
    pub fn describe(&self) -> String {
        match self {
            Self::SpotInterruption { instance_action } => {
                format!("Spot interruption warning (instance action: {instance_action})")
            }
            Self::RebalanceRecommendation => "rebalance recommendation".into(),
            Self::StateChange { state } => format!("instance state changed to {state}"),
            Self::LifecycleTerminate => "Auto Scaling terminate lifecycle hook".into(),
            Self::HealthScheduledChange { event_type_code } => {
                format!("AWS Health scheduled change {event_type_code}")
            }
        }
    }
}

/// An Auto Scaling lifecycle action waiting for eks-remedy to complete it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LifecycleAction {
    pub auto_scaling_group: String,
    pub hook: String,
    pub token: Option<String>,
}

/// One instance's interruption, as announced by one event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notice {
    pub kind: NoticeKind,
    pub instance_id: String,
    /// The EventBridge event id.
    pub event_id: String,
    /// When the event was issued.
    pub time: DateTime<Utc>,
    pub region: String,
    pub account: String,
    /// When the instance is expected to go, where the event says.
    pub deadline: Option<DateTime<Utc>>,
    pub lifecycle_action: Option<LifecycleAction>,
}

/// The envelope fields every EventBridge event carries.
#[derive(Debug, Deserialize)]
struct Envelope {
    id: Option<String>,
    #[serde(rename = "detail-type")]
    detail_type: String,
    source: String,
    account: Option<String>,
    time: Option<String>,
    region: Option<String>,
    #[serde(default)]
    detail: Value,
}

/// The common part of an event, handed to each kind's parser.
pub(crate) struct EventContext {
    pub kind: &'static str,
    pub id: String,
    pub time: DateTime<Utc>,
    pub region: String,
    pub account: String,
}

impl EventContext {
    pub(crate) fn notice(&self, kind: NoticeKind, instance_id: String) -> Notice {
        Notice {
            kind,
            instance_id,
            event_id: self.id.clone(),
            time: self.time,
            region: self.region.clone(),
            account: self.account.clone(),
            deadline: None,
            lifecycle_action: None,
        }
    }

    pub(crate) fn invalid(&self, reason: impl Into<String>) -> EventError {
        EventError::Invalid {
            kind: self.kind,
            reason: reason.into(),
        }
    }

    pub(crate) fn detail<T: serde::de::DeserializeOwned>(
        &self,
        detail: Value,
    ) -> Result<T, EventError> {
        serde_json::from_value(detail).map_err(|e| self.invalid(format!("detail: {e}")))
    }
}

/// Parses one EventBridge event into the notices it carries (AWS Health may name several
/// instances).
pub fn parse_event(event: &Value) -> Result<Vec<Notice>, EventError> {
    let envelope: Envelope = serde_json::from_value(event.clone())
        .map_err(|e| EventError::Malformed(format!("not an EventBridge event: {e}")))?;

    let kind: &'static str = match (envelope.source.as_str(), envelope.detail_type.as_str()) {
        ("aws.ec2", "EC2 Spot Instance Interruption Warning") => "spot interruption warning",
        ("aws.ec2", "EC2 Instance Rebalance Recommendation") => "rebalance recommendation",
        ("aws.ec2", "EC2 Instance State-change Notification") => "EC2 state change",
        ("aws.autoscaling", "EC2 Instance-terminate Lifecycle Action") => "lifecycle action",
        ("aws.health", "AWS Health Event") => "AWS Health",
        (source, detail_type) => {
            return Err(EventError::Unsupported {
                event_source: source.to_owned(),
                detail_type: detail_type.to_owned(),
            });
        }
    };

    let time_text = envelope.time.unwrap_or_default();
    let time = parse_rfc3339(&time_text).ok_or_else(|| EventError::Invalid {
        kind,
        reason: format!("time {time_text:?} is not an RFC 3339 timestamp"),
    })?;
    let ctx = EventContext {
        kind,
        id: envelope.id.unwrap_or_default(),
        time,
        region: envelope.region.unwrap_or_default(),
        account: envelope.account.unwrap_or_default(),
    };
    if ctx.region.is_empty() {
        return Err(ctx.invalid("region is missing"));
    }

    match envelope.detail_type.as_str() {
        "EC2 Spot Instance Interruption Warning" => spot::parse(&ctx, envelope.detail),
        "EC2 Instance Rebalance Recommendation" => rebalance::parse(&ctx, envelope.detail),
        "EC2 Instance State-change Notification" => state_change::parse(&ctx, envelope.detail),
        "EC2 Instance-terminate Lifecycle Action" => lifecycle_hook::parse(&ctx, envelope.detail),
        _ => health::parse(&ctx, envelope.detail),
    }
}

/// One EventBridge event taken out of whatever envelope carried it.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The SQS message id, when the event came through SQS (for partial batch failures).
    pub message_id: Option<String>,
    /// The event, or why it could not be taken out of its envelope.
    pub event: Result<Value, EventError>,
}

/// Takes EventBridge events out of their envelopes: a bare event, an SQS batch
/// (EventBridge -> SQS -> Lambda), an SNS notification, or SNS inside SQS.
pub fn unwrap_deliveries(payload: &Value) -> Result<Vec<Delivery>, EventError> {
    if let Some(records) = payload.get("Records").and_then(Value::as_array) {
        if records.is_empty() {
            return Err(EventError::Malformed("Records is empty".into()));
        }
        return Ok(records.iter().map(unwrap_record).collect());
    }
    Ok(vec![Delivery {
        message_id: None,
        event: unwrap_one(payload.clone(), 0),
    }])
}

fn unwrap_record(record: &Value) -> Delivery {
    let source = record
        .get("eventSource")
        .or_else(|| record.get("EventSource"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    match source {
        "aws:sqs" => Delivery {
            message_id: record
                .get("messageId")
                .and_then(Value::as_str)
                .map(str::to_owned),
            event: match record.get("body").and_then(Value::as_str) {
                Some(body) => parse_json(body, "SQS message body").and_then(|v| unwrap_one(v, 1)),
                None => Err(EventError::Malformed(
                    "SQS record has no string body".into(),
                )),
            },
        },
        "aws:sns" => Delivery {
            message_id: None,
            event: match record.pointer("/Sns/Message").and_then(Value::as_str) {
                Some(msg) => parse_json(msg, "SNS message").and_then(|v| unwrap_one(v, 1)),
                None => Err(EventError::Malformed("SNS record has no Message".into())),
            },
        },
        other => Delivery {
            message_id: None,
            event: Err(EventError::Malformed(format!(
                "record from unsupported event source {other:?}"
            ))),
        },
    }
}

fn unwrap_one(value: Value, depth: usize) -> Result<Value, EventError> {
    // An SNS notification delivered to SQS without raw message delivery.
    if value.get("Type").and_then(Value::as_str) == Some("Notification") && depth < 3 {
        let message = value
            .get("Message")
            .and_then(Value::as_str)
            .ok_or_else(|| EventError::Malformed("SNS notification has no Message".into()))?;
        return unwrap_one(parse_json(message, "SNS message")?, depth + 1);
    }
    if value.get("detail-type").is_some() && value.get("source").is_some() {
        return Ok(value);
    }
    Err(EventError::Malformed(
        "expected an EventBridge event (with source and detail-type), an SQS batch or an SNS \
         notification"
            .into(),
    ))
}

fn parse_json(text: &str, what: &str) -> Result<Value, EventError> {
    serde_json::from_str(text)
        .map_err(|e| EventError::Malformed(format!("{what} is not JSON: {e}")))
}

pub(crate) fn parse_rfc3339(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Parses AWS Health's RFC 1123 dates leniently: the weekday is ignored because published
/// samples pair weekdays with dates they do not fall on.
pub(crate) fn parse_health_time(text: &str) -> Option<DateTime<Utc>> {
    if let Some(t) = parse_rfc3339(text) {
        return Some(t);
    }
    let text = text.trim();
    let without_weekday = match text.split_once(',') {
        Some((_, rest)) => rest.trim(),
        None => text,
    };
    let without_zone = without_weekday
        .trim_end_matches("GMT")
        .trim_end_matches("UTC")
        .trim_end_matches("+0000")
        .trim();
    NaiveDateTime::parse_from_str(without_zone, "%d %b %Y %H:%M:%S")
        .ok()
        .map(|t| t.and_utc())
}

/// Takes the instance id out of an EC2 instance ARN or returns a bare id unchanged.
pub(crate) fn instance_id_from(value: &str) -> Option<String> {
    let id = value.rsplit('/').next().unwrap_or(value).trim();
    let valid =
        id.len() > 2 && id.starts_with("i-") && id[2..].chars().all(|c| c.is_ascii_hexdigit());
    valid.then(|| id.to_owned())
}

#[cfg(test)]
mod tests;
