//! The three patch flavours kube-apiserver accepts for the resources eks-remedy patches.

use serde_json::Value;

/// RFC 7386 JSON merge patch: lists are replaced whole.
pub fn merge(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// The list fields that strategic merge patch merges by a key (others are replaced, as
/// `spec.taints` is).
fn merge_key(path: &[String]) -> Option<&'static str> {
    let last = path.last().map(String::as_str)?;
    match last {
        "containers" | "initContainers" | "env" | "volumes" | "volumeMounts" | "ports"
        | "imagePullSecrets" => Some(if last == "ports" {
            "containerPort"
        } else {
            "name"
        }),
        "conditions" => Some("type"),
        "addresses" => Some("type"),
        _ => None,
    }
}

/// Strategic merge patch for the built-in types eks-remedy touches: maps merge, lists with a
/// merge key merge item by item and are then ordered as kube-apiserver orders them (see
/// [`order_merged`]), `null` deletes, other lists are replaced.
pub fn strategic(target: &mut Value, patch: &Value) {
    strategic_at(target, patch, &mut Vec::new());
}

fn strategic_at(target: &mut Value, patch: &Value, path: &mut Vec<String>) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let target_map = target.as_object_mut().expect("object");
    for (key, value) in patch_map {
        if key.starts_with("$") {
            continue;
        }
        if value.is_null() {
            target_map.remove(key);
            continue;
        }
        path.push(key.clone());
        match (merge_key(path), value, target_map.get_mut(key)) {
            (Some(mk), Value::Array(items), Some(Value::Array(existing))) => {
                let original = existing.clone();
                for item in items {
                    let id = item.get(mk).cloned();
                    match existing
                        .iter_mut()
                        .find(|e| id.is_some() && e.get(mk) == id.as_ref())
                    {
                        Some(current) => strategic_at(current, item, path),
                        None => existing.push(item.clone()),
                    }
                }
                *existing = order_merged(std::mem::take(existing), items, &original, mk);
            }
            (_, Value::Object(_), Some(current)) if current.is_object() => {
                strategic_at(current, value, path);
            }
            _ => {
                target_map.insert(key.clone(), value.clone());
            }
        }
        path.pop();
    }
}

/// The order of a merged list with a merge key, as apimachinery's strategic merge gives it:
/// the items the patch names keep the patch's order, the others keep the live order, and the
/// two are interleaved by the live order where both items were live. So a new item lands right
/// after the patch item before it: patching `B` and adding `X` to `[A, B, C]` gives
/// `[A, B, X, C]`.
fn order_merged(merged: Vec<Value>, patch: &[Value], original: &[Value], mk: &str) -> Vec<Value> {
    let position = |list: &[Value], item: &Value| {
        item.get(mk)
            .and_then(|key| list.iter().position(|e| e.get(mk) == Some(key)))
    };
    let (mut patched, mut server_only): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|item| position(patch, item).is_some());
    patched.sort_by_key(|item| position(patch, item));
    server_only.sort_by_key(|item| position(original, item));

    let mut ordered = Vec::with_capacity(patched.len() + server_only.len());
    let (mut left, mut right) = (
        server_only.into_iter().peekable(),
        patched.into_iter().peekable(),
    );
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (Some(l), Some(r)) => matches!(
                (position(original, l), position(original, r)),
                (Some(li), Some(ri)) if li < ri
            ),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let next = if take_left { left.next() } else { right.next() };
        ordered.extend(next);
    }
    ordered
}

/// RFC 6902 JSON patch, with kube-apiserver's one leniency: `replace` of an absent field adds it.
pub fn json(target: &mut Value, ops: &Value) -> Result<(), String> {
    let mut ops = ops.clone();
    if let Some(list) = ops.as_array_mut() {
        for op in list {
            let is_replace = op.get("op").and_then(Value::as_str) == Some("replace");
            let path = op.get("path").and_then(Value::as_str).unwrap_or_default();
            if is_replace && target.pointer(path).is_none() {
                op["op"] = Value::String("add".into());
            }
        }
    }
    let patch: json_patch::Patch = serde_json::from_value(ops).map_err(|e| e.to_string())?;
    json_patch::patch(target, &patch).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_keeps_other_containers_and_env() {
        let mut ds = json!({"spec": {"containers": [
            {"name": "aws-node", "env": [{"name": "A", "value": "1"}]},
            {"name": "agent", "image": "x"}
        ], "taints": [{"key": "a"}]}});
        strategic(
            &mut ds,
            &json!({"spec": {"containers": [{"name": "aws-node", "env": [{"name": "B", "value": "2"}]}],
                "taints": [{"key": "b"}]}}),
        );
        assert_eq!(ds["spec"]["containers"].as_array().unwrap().len(), 2);
        assert_eq!(
            ds["spec"]["containers"][0]["env"].as_array().unwrap().len(),
            2
        );
        assert_eq!(ds["spec"]["taints"], json!([{"key": "b"}]));
    }

    #[test]
    fn strategic_merge_inserts_new_items_after_their_patched_neighbour() {
        let env = |names: &[&str]| -> Value {
            names
                .iter()
                .map(|n| json!({"name": n, "value": "1"}))
                .collect()
        };
        let mut ds = json!({"containers": [{"name": "aws-node", "env": env(&["WARM_ENI_TARGET",
            "ENABLE_PREFIX_DELEGATION", "AWS_VPC_K8S_CNI_LOGLEVEL"])}, {"name": "agent"}]});
        strategic(
            &mut ds,
            &json!({"containers": [{"name": "aws-node", "env":
                env(&["ENABLE_PREFIX_DELEGATION", "WARM_PREFIX_TARGET"])}]}),
        );
        let names: Vec<&str> = ds["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "WARM_ENI_TARGET",
                "ENABLE_PREFIX_DELEGATION",
                "WARM_PREFIX_TARGET",
                "AWS_VPC_K8S_CNI_LOGLEVEL"
            ]
        );
        assert_eq!(ds["containers"][1]["name"], "agent");
    }

    #[test]
    fn json_patch_replace_of_absent_field_adds_it() {
        let mut node = json!({"spec": {}});
        json(
            &mut node,
            &json!([{"op": "replace", "path": "/spec/unschedulable", "value": true}]),
        )
        .unwrap();
        assert_eq!(node["spec"]["unschedulable"], json!(true));
        assert!(
            json(
                &mut node,
                &json!([{"op": "test", "path": "/spec/unschedulable", "value": false}])
            )
            .is_err()
        );
    }
}
