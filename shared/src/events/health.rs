//! AWS Health scheduled changes for EC2 instances (retirements, maintenance reboots).
//!
//! Health names instances by ARN (older samples by bare id), may page one event across several
//! deliveries and sends backup copies: the incident record, not this parser, removes repeats.

use serde::Deserialize;
use serde_json::Value;

use super::{EventContext, EventError, Notice, NoticeKind, instance_id_from, parse_health_time};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Detail {
    service: String,
    event_type_code: String,
    event_type_category: String,
    #[serde(default)]
    start_time: Option<String>,
    #[serde(default)]
    affected_entities: Vec<AffectedEntity>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AffectedEntity {
    entity_value: String,
}

pub(super) fn parse(ctx: &EventContext, detail: Value) -> Result<Vec<Notice>, EventError> {
    let detail: Detail = ctx.detail(detail)?;
    if detail.service != "EC2" || detail.event_type_category != "scheduledChange" {
        return Err(EventError::Unsupported {
            event_source: "aws.health".into(),
            detail_type: format!(
                "AWS Health Event ({} {}); only EC2 scheduledChange is handled",
                detail.service, detail.event_type_category
            ),
        });
    }
    let start = match detail.start_time.as_deref() {
        Some(text) => Some(
            parse_health_time(text)
                .ok_or_else(|| ctx.invalid(format!("startTime {text:?} is not a date")))?,
        ),
        None => None,
    };
    let mut ids: Vec<String> = Vec::new();
    for entity in &detail.affected_entities {
        // Health also lists non-instance entities for some event types; only instances matter.
        if let Some(id) = instance_id_from(&entity.entity_value)
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    if ids.is_empty() {
        return Err(ctx.invalid("no EC2 instance among affectedEntities"));
    }
    Ok(ids
        .into_iter()
        .map(|id| {
            let mut notice = ctx.notice(
                NoticeKind::HealthScheduledChange {
                    event_type_code: detail.event_type_code.clone(),
                },
                id,
            );
            notice.deadline = start;
            notice
        })
        .collect())
}
