//! Events through two APIs. kube-apiserver keeps one kind of Event and serves it both as
//! core/v1 (`involvedObject`, `message`, `source`, `firstTimestamp`, `count`, …) and as
//! events.k8s.io/v1 (`regarding`, `note`, `deprecatedSource`, `deprecatedFirstTimestamp`,
//! `deprecatedCount`, …). The test server stores core/v1 Events, shaped as kube-apiserver
//! writes them, and converts on the way in and out of events.k8s.io/v1.

use serde_json::{Map, Value, json};

/// The API group of the newer Event API.
pub const GROUP: &str = "events.k8s.io";

/// events.k8s.io/v1 field → core/v1 field, for the fields whose names differ.
const RENAMED: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// Fields both APIs name alike.
const SHARED: &[&str] = &[
    "metadata",
    "eventTime",
    "series",
    "action",
    "reason",
    "related",
    "type",
    "reportingInstance",
];

/// A core/v1 Event as kube-apiserver writes it: `involvedObject` and `source` always (`{}` when
/// empty), the timestamps always (`null` when unset), `reportingComponent` and
/// `reportingInstance` always (`""` when unset), and no empty `reason`, `message`, `type`,
/// `action` or zero `count`. `from_v1` first renames events.k8s.io/v1 fields.
pub fn to_storage(event: Value, from_v1: bool) -> Value {
    let Value::Object(mut fields) = event else {
        return event;
    };
    if from_v1 {
        let mut core = Map::new();
        for name in SHARED {
            if let Some(value) = fields.remove(*name) {
                core.insert((*name).to_owned(), value);
            }
        }
        for (v1, core_name) in RENAMED {
            if let Some(value) = fields.remove(*v1) {
                core.insert((*core_name).to_owned(), value);
            }
        }
        fields = core;
    }
    for name in ["involvedObject", "source"] {
        if fields.get(name).is_none_or(Value::is_null) {
            fields.insert(name.to_owned(), json!({}));
        }
    }
    for name in ["firstTimestamp", "lastTimestamp", "eventTime"] {
        fields.entry(name).or_insert(Value::Null);
    }
    for name in ["reportingComponent", "reportingInstance"] {
        if fields.get(name).is_none_or(Value::is_null) {
            fields.insert(name.to_owned(), json!(""));
        }
    }
    for name in ["reason", "message", "type", "action"] {
        if fields.get(name).is_some_and(|v| v.is_null() || v == "") {
            fields.remove(name);
        }
    }
    if fields.get("count").is_some_and(|c| c.is_null() || c == 0) {
        fields.remove("count");
    }
    Value::Object(fields)
}

/// A stored Event as events.k8s.io/v1 shows it (without kind and apiVersion): `eventTime`,
/// `regarding`, `deprecatedSource` and both deprecated timestamps always, the other fields only
/// when set.
pub fn to_v1(core: &Value) -> Value {
    let mut v1 = Map::new();
    for name in SHARED {
        if let Some(value) = core.get(*name) {
            v1.insert((*name).to_owned(), value.clone());
        }
    }
    for (v1_name, core_name) in RENAMED {
        if let Some(value) = core.get(*core_name) {
            v1.insert((*v1_name).to_owned(), value.clone());
        }
    }
    v1.entry("eventTime").or_insert(Value::Null);
    for name in ["regarding", "deprecatedSource"] {
        if v1.get(name).is_none_or(Value::is_null) {
            v1.insert(name.to_owned(), json!({}));
        }
    }
    for name in ["deprecatedFirstTimestamp", "deprecatedLastTimestamp"] {
        v1.entry(name).or_insert(Value::Null);
    }
    for name in [
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
        "note",
        "type",
    ] {
        if v1.get(name).is_some_and(|v| v.is_null() || v == "") {
            v1.remove(name);
        }
    }
    if v1
        .get("deprecatedCount")
        .is_some_and(|c| c.is_null() || c == 0)
    {
        v1.remove("deprecatedCount");
    }
    Value::Object(v1)
}

/// The core/v1 field label a field selector term of `group`'s Events selects on, or
/// kube-apiserver's error. events.k8s.io/v1 has its own names (`regarding.*`,
/// `reportingController`) and rejects the core ones.
pub fn field_label(group: &str, label: &str) -> Result<String, String> {
    let core = if group == GROUP {
        match label {
            "reason" | "type" | "source" | "metadata.name" | "metadata.namespace" => Some(label),
            "reportingController" => Some("reportingComponent"),
            _ => label
                .strip_prefix("regarding.")
                .filter(|field| OBJECT_REFERENCE.contains(field))
                .map(|_| label),
        }
        .map(|core| match core.strip_prefix("regarding.") {
            Some(field) => format!("involvedObject.{field}"),
            None => core.to_owned(),
        })
    } else {
        let supported = matches!(
            label,
            "reason"
                | "type"
                | "source"
                | "reportingComponent"
                | "metadata.name"
                | "metadata.namespace"
        ) || label
            .strip_prefix("involvedObject.")
            .is_some_and(|field| OBJECT_REFERENCE.contains(&field));
        supported.then(|| label.to_owned())
    };
    core.ok_or_else(|| format!("field label not supported: {label}"))
}

/// The fields of an object reference a selector may name.
const OBJECT_REFERENCE: &[&str] = &[
    "kind",
    "namespace",
    "name",
    "uid",
    "apiVersion",
    "resourceVersion",
    "fieldPath",
];

/// The value a stored Event has for a core/v1 field label. `source` is the source component,
/// or the reporting controller for events written through events.k8s.io (which have no
/// source); `reportingComponent` is the reporting controller.
pub fn selectable(event: &Value, label: &str) -> String {
    let text = |path: &str| {
        event
            .pointer(path)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    match label {
        "source" => Some(text("/source/component"))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| text("/reportingComponent")),
        _ => text(&format!("/{}", label.replace('.', "/"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_written_through_events_k8s_io_reads_through_core_v1() {
        let written = json!({
            "metadata": {"name": "web.1", "namespace": "shop"},
            "eventTime": "2026-12-04T15:33:21.267589Z",
            "reportingController": "default-scheduler",
            "reportingInstance": "default-scheduler-x",
            "action": "Scheduling",
            "reason": "FailedScheduling",
            "regarding": {"kind": "Pod", "namespace": "shop", "name": "web"},
            "note": "0/3 nodes are available",
            "type": "Warning",
        });
        let stored = to_storage(written.clone(), true);
        assert_eq!(stored["message"], "0/3 nodes are available");
        assert_eq!(stored["source"], json!({}));
        assert_eq!(stored["firstTimestamp"], Value::Null);
        assert_eq!(stored["reportingComponent"], "default-scheduler");
        assert!(stored.get("count").is_none());

        let mut read_back = written;
        read_back["deprecatedSource"] = json!({});
        read_back["deprecatedFirstTimestamp"] = Value::Null;
        read_back["deprecatedLastTimestamp"] = Value::Null;
        assert_eq!(to_v1(&stored), read_back);
        assert_eq!(selectable(&stored, "source"), "default-scheduler");
    }

    #[test]
    fn field_labels_differ_between_the_apis() {
        assert_eq!(
            field_label(GROUP, "regarding.name").unwrap(),
            "involvedObject.name"
        );
        assert_eq!(
            field_label(GROUP, "reportingController").unwrap(),
            "reportingComponent"
        );
        assert_eq!(
            field_label(GROUP, "involvedObject.name").unwrap_err(),
            "field label not supported: involvedObject.name"
        );
        assert_eq!(
            field_label("", "reportingComponent").unwrap(),
            "reportingComponent"
        );
        assert_eq!(
            field_label("", "message").unwrap_err(),
            "field label not supported: message"
        );
    }
}
