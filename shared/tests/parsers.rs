//! Bad input: the event parsers and the SQS/SNS unwrapping against mangled events, seeded with
//! the AWS documentation samples. Nothing may panic (a panic aborts a release Lambda, which is
//! built with `panic = "abort"`), and every rejection must be an error that says what was wrong.
//!
//! The generator starts from the samples, replaces, removes and retypes their fields, wraps the
//! result in the envelopes Lambda receives (SQS batches, SNS notifications, SNS inside SQS)
//! and mangles the envelopes too. The seed is fixed so CI meets the same cases every run;
//! explore further with `PROPTEST_RNG_SEED=<n> PROPTEST_CASES=<n>`.

use std::path::Path;

use eks_remedy::events::{EventError, parse_alarm, parse_event, unwrap_deliveries};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed};
use serde_json::{Map, Value, json};

/// 256 cases per property and a fixed seed, unless the environment asks otherwise.
fn config() -> Config {
    let mut config = Config {
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 256;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(0x6b73_7265_6d65_6479);
    }
    config
}

fn fixture(dir: &str) -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).expect("fixture");
            serde_json::from_str(&text).expect("fixture JSON")
        })
        .collect()
}

/// The documentation samples as published (with their placeholders) and as delivered (time
/// and spot action filled in), so mutations reach past the envelope into each kind's parser,
/// plus the Pending-pods alarm.
fn seeds() -> Vec<Value> {
    let mut seeds = Vec::new();
    for sample in fixture("aws-docs") {
        let mut filled = sample.clone();
        if filled["time"]
            .as_str()
            .is_some_and(|t| t.starts_with("yyyy"))
        {
            filled["time"] = json!("2026-12-04T10:00:00Z");
        }
        if filled["detail"]["instance-action"] == "action" {
            filled["detail"]["instance-action"] = json!("terminate");
        }
        seeds.push(sample);
        seeds.push(filled);
    }
    seeds.extend(fixture("events"));
    seeds
}

/// Strings that parsers care about, and some that break naive ones.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("i-0123456789abcdef0".to_owned()),
        Just("arn:aws:ec2:us-east-1:123456789012:instance/i-0abc".to_owned()),
        Just("2026-12-04T10:00:00Z".to_owned()),
        Just("Fri, 04 Dec 2026 10:00:00 GMT".to_owned()),
        Just("2026-12-04T10:00:00.000+0000".to_owned()),
        Just("ALARM".to_owned()),
        Just("Notification".to_owned()),
        Just("aws.ec2".to_owned()),
        Just("EC2 Spot Instance Interruption Warning".to_owned()),
        Just("i-".to_owned()),
        Just("{\"Type\":\"Notification\",\"Message\":\"{}\"}".to_owned()),
        "\\PC{0,24}",
        ".{0,8}",
    ]
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// One change to a JSON document.
#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the value at a path with another value.
    Replace(Index, Value),
    /// Remove the member at a path (or empty the array element).
    Remove(Index),
    /// Turn the value at a path into its text.
    Stringify(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), json_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        any::<Index>().prop_map(Mutation::Remove),
        any::<Index>().prop_map(Mutation::Stringify),
    ]
}

/// Every JSON pointer in a document, the root first.
fn pointers(value: &Value) -> Vec<String> {
    fn walk(value: &Value, at: String, out: &mut Vec<String>) {
        out.push(at.clone());
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let key = k.replace('~', "~0").replace('/', "~1");
                    walk(v, format!("{at}/{key}"), out);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(v, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, String::new(), &mut out);
    out
}

fn apply(mut doc: Value, mutation: &Mutation) -> Value {
    let paths = pointers(&doc);
    let pick = |i: &Index| paths[i.index(paths.len())].clone();
    match mutation {
        Mutation::Replace(i, v) => {
            let at = pick(i);
            if let Some(slot) = doc.pointer_mut(&at) {
                *slot = v.clone();
            }
        }
        Mutation::Stringify(i) => {
            let at = pick(i);
            if let Some(slot) = doc.pointer_mut(&at) {
                *slot = Value::String(slot.to_string());
            }
        }
        Mutation::Remove(i) => {
            let at = pick(i);
            if let Some((parent, key)) = at.rsplit_once('/') {
                let key = key.replace("~1", "/").replace("~0", "~");
                match doc.pointer_mut(parent) {
                    Some(Value::Object(map)) => {
                        map.remove(&key);
                    }
                    Some(Value::Array(items)) => {
                        if let Ok(n) = key.parse::<usize>()
                            && n < items.len()
                        {
                            items.remove(n);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    doc
}

/// An event made from a seed by a few mutations.
fn mangled_event() -> impl Strategy<Value = Value> {
    let seeds = seeds();
    (0..seeds.len(), prop::collection::vec(mutation(), 0..4))
        .prop_map(move |(i, mutations)| mutations.iter().fold(seeds[i].clone(), apply))
}

/// How a body travels as text: whole, cut short, or replaced by whatever.
fn as_text(event: &Value, how: u8, cut: Index, noise: &str) -> String {
    let text = event.to_string();
    match how % 4 {
        0 | 1 => text,
        2 => {
            let mut end = cut.index(text.len() + 1);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text[..end].to_owned()
        }
        _ => noise.to_owned(),
    }
}

/// A Lambda payload: the event bare, in an SQS batch, in an SNS notification, or as an SNS
/// notification inside SQS; then perhaps mangled itself.
fn payload() -> impl Strategy<Value = Value> {
    (
        mangled_event(),
        0u8..4,
        any::<u8>(),
        any::<Index>(),
        text(),
        prop::collection::vec(mutation(), 0..3),
    )
        .prop_map(|(event, envelope, how, cut, noise, mutations)| {
            let body = as_text(&event, how, cut, &noise);
            let wrapped = match envelope {
                0 => event,
                1 => json!({"Records": [
                    {"eventSource": "aws:sqs", "messageId": "m-1", "body": body},
                    {"eventSource": "aws:sqs", "messageId": "m-2", "body": "{}"},
                ]}),
                2 => json!({"Records": [{"EventSource": "aws:sns", "Sns": {"Message": body}}]}),
                _ => {
                    let notification =
                        json!({"Type": "Notification", "MessageId": "n-1", "Message": body});
                    json!({"Records": [{"eventSource": "aws:sqs", "messageId": "m-3",
                        "body": notification.to_string()}]})
                }
            };
            mutations.iter().fold(wrapped, apply)
        })
}

/// A rejection says which of the three kinds it is and what was wrong.
fn assert_clear(err: &EventError) {
    let text = err.to_string();
    let detail = match err {
        EventError::Malformed(reason) => {
            assert!(text.starts_with("malformed event: "), "{text}");
            reason.as_str()
        }
        EventError::Unsupported { .. } => {
            assert!(text.starts_with("unsupported event: source "), "{text}");
            assert!(text.contains("detail-type"), "{text}");
            text.as_str()
        }
        EventError::Invalid { kind, reason } => {
            assert!(!kind.is_empty(), "{text}");
            assert!(
                text.starts_with(&format!("invalid {kind} event: ")),
                "{text}"
            );
            reason.as_str()
        }
    };
    assert!(
        detail.chars().filter(|c| c.is_alphabetic()).count() >= 3,
        "the rejection names nothing: {text:?}"
    );
}

fn valid_instance_id(id: &str) -> bool {
    id.len() > 2 && id.starts_with("i-") && id[2..].chars().all(|c| c.is_ascii_hexdigit())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn event_parsing_never_panics_and_rejects_clearly(event in mangled_event()) {
        match parse_event(&event) {
            Ok(notices) => {
                for notice in notices {
                    prop_assert!(valid_instance_id(&notice.instance_id), "{notice:?}");
                    prop_assert!(!notice.region.is_empty(), "{notice:?}");
                }
            }
            Err(err) => assert_clear(&err),
        }
    }

    #[test]
    fn unwrapping_never_panics_and_rejects_clearly(payload in payload()) {
        match unwrap_deliveries(&payload) {
            Ok(deliveries) => {
                prop_assert!(!deliveries.is_empty());
                for delivery in deliveries {
                    match delivery.event {
                        Ok(event) => {
                            prop_assert!(event.get("source").is_some());
                            prop_assert!(event.get("detail-type").is_some());
                            if let Err(err) = parse_event(&event) {
                                assert_clear(&err);
                            }
                        }
                        Err(err) => assert_clear(&err),
                    }
                }
            }
            Err(err) => assert_clear(&err),
        }
    }

    #[test]
    fn alarm_parsing_never_panics_and_rejects_clearly(event in mangled_event()) {
        match parse_alarm(&event) {
            Ok(alarm) => {
                prop_assert!(!alarm.alarm_name.is_empty());
                prop_assert!(["ALARM", "OK", "INSUFFICIENT_DATA"].contains(&alarm.state.as_str()));
                prop_assert!(alarm.clusters.iter().all(|c| !c.is_empty()));
            }
            Err(err) => assert_clear(&err),
        }
    }
}

/// Every member of every sample removed in turn: when the event is then rejected, the error
/// names the missing member or the object it was in.
#[test]
fn a_missing_member_is_named_in_the_rejection() {
    for seed in seeds() {
        for at in pointers(&seed).into_iter().skip(1) {
            let (parent, key) = at.rsplit_once('/').expect("a member");
            if key.parse::<usize>().is_ok() {
                continue;
            }
            let mut event = seed.clone();
            if let Some(Value::Object(map)) = event.pointer_mut(parent) {
                map.remove(&key.replace("~1", "/").replace("~0", "~"));
            }
            let parent_key = parent
                .rsplit('/')
                .find(|p| p.parse::<usize>().is_err())
                .unwrap_or_default();
            let rejection = if seed["source"] == "aws.cloudwatch" {
                parse_alarm(&event).err()
            } else {
                parse_event(&event).err()
            };
            if let Some(err) = rejection {
                assert_clear(&err);
                let text = err.to_string();
                // The placeholder time of the published samples is reported first.
                let named = text.contains(key)
                    || (!parent_key.is_empty() && text.contains(parent_key))
                    || text.contains("yyyy-mm-dd");
                assert!(named, "removing {at} gave {text:?}");
            }
        }
    }
}

#[test]
fn the_seeds_are_the_documentation_samples() {
    let seeds = seeds();
    assert!(seeds.len() >= 11, "{}", seeds.len());
    let accepted = seeds.iter().filter(|s| parse_event(s).is_ok()).count();
    assert!(accepted >= 4, "the filled samples parse: {accepted}");
}
