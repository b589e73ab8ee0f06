//! CloudWatch Alarm State Change events, for alarms on Pending pods (or any alarm whose metric
//! names an EKS cluster).
//!
//! The alarm's `configuration` is read untyped: metric-math alarms and long periods do not fit
//! the typed models, and only the metrics' dimensions matter here.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::{EventError, parse_rfc3339};

/// An alarm changed state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlarmChange {
    pub alarm_name: String,
    /// `ALARM`, `OK` or `INSUFFICIENT_DATA`.
    pub state: String,
    pub previous_state: String,
    /// When the new state began.
    pub state_time: Option<DateTime<Utc>>,
    /// When the previous state began (for an OK transition: when the alarm fired).
    pub previous_state_time: Option<DateTime<Utc>>,
    /// Clusters named by the alarm's metrics (dimension `ClusterName`).
    pub clusters: Vec<String>,
    pub region: String,
    pub event_id: String,
}

const KIND: &str = "CloudWatch alarm state change";

fn invalid(reason: impl Into<String>) -> EventError {
    EventError::Invalid {
        kind: KIND,
        reason: reason.into(),
    }
}

/// Whether the event is a CloudWatch alarm state change.
pub fn is_alarm(event: &Value) -> bool {
    event["source"] == "aws.cloudwatch" && event["detail-type"] == "CloudWatch Alarm State Change"
}

/// Parses an alarm state change.
pub fn parse_alarm(event: &Value) -> Result<AlarmChange, EventError> {
    if !is_alarm(event) {
        return Err(EventError::Unsupported {
            event_source: event["source"].as_str().unwrap_or_default().to_owned(),
            detail_type: event["detail-type"].as_str().unwrap_or_default().to_owned(),
        });
    }
    let detail = &event["detail"];
    let alarm_name = detail["alarmName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("detail.alarmName is missing"))?
        .to_owned();
    let state = detail["state"]["value"]
        .as_str()
        .ok_or_else(|| invalid("detail.state.value is missing"))?
        .to_owned();
    if !matches!(state.as_str(), "ALARM" | "OK" | "INSUFFICIENT_DATA") {
        return Err(invalid(format!("unknown alarm state {state:?}")));
    }
    let time = |v: &Value| {
        v.as_str()
            .and_then(|t| parse_rfc3339(&t.replace("+0000", "Z")))
    };
    let mut clusters: Vec<String> = Vec::new();
    let metrics = detail["configuration"]["metrics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for metric in &metrics {
        let dimensions = &metric["metricStat"]["metric"]["dimensions"];
        if let Some(name) = dimensions["ClusterName"].as_str().filter(|s| !s.is_empty())
            && !clusters.iter().any(|c| c == name)
        {
            clusters.push(name.to_owned());
        }
    }
    Ok(AlarmChange {
        alarm_name,
        state,
        previous_state: detail["previousState"]["value"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        state_time: time(&detail["state"]["timestamp"]),
        previous_state_time: time(&detail["previousState"]["timestamp"]),
        clusters,
        region: event["region"].as_str().unwrap_or_default().to_owned(),
        event_id: event["id"].as_str().unwrap_or_default().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        serde_json::from_str(include_str!(
            "../../../tests/fixtures/events/cloudwatch-alarm-pending-pods.json"
        ))
        .unwrap()
    }

    #[test]
    fn alarm_names_its_cluster_through_the_metric_dimension() {
        let change = parse_alarm(&sample()).unwrap();
        assert_eq!(change.alarm_name, "shop-prod-pending-pods");
        assert_eq!(change.state, "ALARM");
        assert_eq!(change.previous_state, "OK");
        assert_eq!(change.clusters, ["shop-prod"]);
        assert!(change.state_time.is_some());
    }

    #[test]
    fn metric_math_alarms_without_typed_fields_still_parse() {
        let mut event = sample();
        event["detail"]["configuration"] = serde_json::json!({"metrics": [
            {"id": "e1", "expression": "m1 * 2", "returnData": true},
            {"id": "m1", "metricStat": {"metric": {"namespace": "ContainerInsights",
                "name": "pod_status_pending", "dimensions": {"ClusterName": "c2"}},
                "period": 86400, "stat": "Maximum"}, "returnData": false}]});
        assert_eq!(parse_alarm(&event).unwrap().clusters, ["c2"]);
    }

    #[test]
    fn missing_fields_are_named() {
        let mut event = sample();
        event["detail"]["alarmName"] = Value::Null;
        assert!(
            parse_alarm(&event)
                .unwrap_err()
                .to_string()
                .contains("alarmName")
        );
    }
}
