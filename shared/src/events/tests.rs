use super::*;
use serde_json::json;

macro_rules! sample {
    ($name:literal) => {
        serde_json::from_str::<Value>(include_str!(concat!(
            "../../../tests/fixtures/aws-docs/",
            $name
        )))
        .expect("sample is JSON")
    };
}

/// Replaces the documentation's placeholders the way a real delivery fills them.
fn filled(mut event: Value) -> Value {
    event["time"] = json!("2026-12-04T10:00:00Z");
    if event["detail"]["instance-action"] == json!("action") {
        event["detail"]["instance-action"] = json!("terminate");
    }
    event
}

#[test]
fn docs_samples_with_placeholder_times_are_rejected_with_the_reason() {
    for event in [
        sample!("ec2-spot-instance-interruption-warning.json"),
        sample!("ec2-instance-rebalance-recommendation.json"),
        sample!("ec2-instance-terminate-lifecycle-action.json"),
    ] {
        let err = parse_event(&event).unwrap_err();
        assert!(
            err.to_string()
                .contains("\"yyyy-mm-ddThh:mm:ssZ\" is not an RFC 3339"),
            "{err}"
        );
    }
}

#[test]
fn spot_warning_deadline_is_two_minutes_after_the_notice() {
    let notices = parse_event(&filled(sample!(
        "ec2-spot-instance-interruption-warning.json"
    )))
    .unwrap();
    assert_eq!(notices.len(), 1);
    let n = &notices[0];
    assert_eq!(n.instance_id, "i-1234567890abcdef0");
    assert_eq!(n.region, "us-east-2");
    assert_eq!(
        n.deadline.unwrap().to_rfc3339(),
        "2026-12-04T10:02:00+00:00"
    );
    assert_eq!(n.kind.name(), "spot-interruption");
}

#[test]
fn spot_warning_with_the_docs_placeholder_action_is_rejected() {
    let mut event = sample!("ec2-spot-instance-interruption-warning.json");
    event["time"] = json!("2026-12-04T10:00:00Z");
    let err = parse_event(&event).unwrap_err();
    assert!(
        err.to_string().contains("instance-action \"action\""),
        "{err}"
    );
}

#[test]
fn rebalance_recommendation_parses() {
    let notices = parse_event(&filled(sample!(
        "ec2-instance-rebalance-recommendation.json"
    )))
    .unwrap();
    assert_eq!(notices[0].kind, NoticeKind::RebalanceRecommendation);
    assert_eq!(notices[0].deadline, None);
}

#[test]
fn state_change_sample_without_version_parses_as_pending() {
    let notices = parse_event(&sample!("ec2-instance-state-change-notification.json")).unwrap();
    assert_eq!(
        notices[0].kind,
        NoticeKind::StateChange {
            state: InstanceState::Pending
        }
    );
    assert_eq!(notices[0].instance_id, "i-abcd1111");
}

#[test]
fn lifecycle_action_keeps_group_hook_and_token_without_trailing_spaces() {
    let notices = parse_event(&filled(sample!(
        "ec2-instance-terminate-lifecycle-action.json"
    )))
    .unwrap();
    let action = notices[0].lifecycle_action.clone().unwrap();
    assert_eq!(action.auto_scaling_group, "my-asg");
    assert_eq!(action.hook, "my-lifecycle-hook");
    assert_eq!(
        action.token.as_deref(),
        Some("87654321-4321-4321-4321-210987654321")
    );
}

#[test]
fn health_sample_takes_the_instance_from_its_arn_and_a_lenient_start_time() {
    let notices = parse_event(&sample!("aws-health-ec2-scheduled-change.json")).unwrap();
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].instance_id, "i-1234567890abcdef0");
    assert_eq!(
        notices[0].deadline.unwrap().to_rfc3339(),
        "2026-08-27T13:19:03+00:00"
    );
}

#[test]
fn health_accepts_bare_instance_ids_and_skips_other_entities() {
    let mut event = sample!("aws-health-ec2-scheduled-change.json");
    event["detail"]["affectedEntities"] = json!([
        {"entityValue": "i-0abc123def4567890"},
        {"entityValue": "vol-0123"},
        {"entityValue": "arn:aws:ec2:us-east-1:123456789012:instance/i-0abc123def4567890"}
    ]);
    let notices = parse_event(&event).unwrap();
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].instance_id, "i-0abc123def4567890");
}

#[test]
fn health_events_of_other_services_are_unsupported() {
    let mut event = sample!("aws-health-ec2-scheduled-change.json");
    event["detail"]["service"] = json!("RDS");
    assert!(matches!(
        parse_event(&event),
        Err(EventError::Unsupported { .. })
    ));
}

#[test]
fn unknown_kinds_and_shapes_get_clear_errors() {
    let err = parse_event(&json!({"source": "aws.s3", "detail-type": "Object Created",
        "time": "2026-12-04T10:00:00Z", "region": "us-east-1", "detail": {}}))
    .unwrap_err();
    assert!(err.to_string().contains("aws.s3"));
    assert!(matches!(
        parse_event(&json!([1, 2])),
        Err(EventError::Malformed(_))
    ));
    let mut event = filled(sample!("ec2-spot-instance-interruption-warning.json"));
    event["detail"]["instance-id"] = json!("not-an-instance");
    assert!(
        parse_event(&event)
            .unwrap_err()
            .to_string()
            .contains("not-an-instance")
    );
}

#[test]
fn sqs_and_sns_envelopes_are_unwrapped() {
    let event = filled(sample!("ec2-spot-instance-interruption-warning.json"));
    let sns = json!({"Type": "Notification", "Message": event.to_string()});
    let batch = json!({"Records": [
        {"eventSource": "aws:sqs", "messageId": "m1", "body": event.to_string()},
        {"eventSource": "aws:sqs", "messageId": "m2", "body": sns.to_string()},
        {"eventSource": "aws:sqs", "messageId": "m3", "body": "{not json"},
    ]});
    let deliveries = unwrap_deliveries(&batch).unwrap();
    assert_eq!(deliveries.len(), 3);
    assert_eq!(deliveries[0].event.as_ref().unwrap(), &event);
    assert_eq!(deliveries[1].event.as_ref().unwrap(), &event);
    assert_eq!(deliveries[2].message_id.as_deref(), Some("m3"));
    assert!(deliveries[2].event.is_err());

    let sns_record = json!({"Records": [{"EventSource": "aws:sns",
        "Sns": {"Message": event.to_string()}}]});
    assert_eq!(
        unwrap_deliveries(&sns_record).unwrap()[0]
            .event
            .as_ref()
            .unwrap(),
        &event
    );
    assert!(
        unwrap_deliveries(&json!({"hello": 1})).unwrap()[0]
            .event
            .is_err()
    );
}
