//! What kube-apiserver checks and maintains on pods and the workloads that template them.

use serde_json::{Value, json};

use super::status::{self, Answer};

/// The annotation apps/v1 shows a DaemonSet's template generation in.
const TEMPLATE_GENERATION: &str = "deprecated.daemonset.template.generation";

/// Where a kind keeps its pod spec, as a JSON pointer and as validation names the path.
fn pod_spec(kind: &str) -> Option<(&'static str, &'static str)> {
    match kind {
        "Pod" => Some(("/spec", "spec")),
        "DaemonSet" | "Deployment" | "ReplicaSet" | "StatefulSet" | "Job" => {
            Some(("/spec/template/spec", "spec.template.spec"))
        }
        _ => None,
    }
}

/// The required container fields (`name`, `image`) of a pod spec, as a 422 Invalid naming the
/// kind with its group (`DaemonSet.apps "aws-node" is invalid: …`). A JSON merge patch of
/// `containers` replaces the whole list, so a patch that carries only a container's env fails
/// here.
pub fn validate(kind: &str, group: &str, name: &str, object: &Value) -> Result<(), Answer> {
    let Some((pointer, path)) = pod_spec(kind) else {
        return Ok(());
    };
    let mut causes = Vec::new();
    for list in ["initContainers", "containers"] {
        let containers = object
            .pointer(&format!("{pointer}/{list}"))
            .and_then(Value::as_array);
        for (i, container) in containers.into_iter().flatten().enumerate() {
            for field in ["name", "image"] {
                if container[field].as_str().is_none_or(str::is_empty) {
                    causes.push((
                        "FieldValueRequired".to_owned(),
                        format!("{path}.{list}[{i}].{field}"),
                        "Required value".to_owned(),
                    ));
                }
            }
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(status::invalid_in(kind, group, name, causes))
    }
}

/// A DaemonSet's template generation, shown as an annotation: 1 at creation, one more each
/// time an update changes the pod template.
pub fn set_template_generation(kind: &str, current: Option<&Value>, updated: &mut Value) {
    if kind != "DaemonSet" {
        return;
    }
    let generation = |object: &Value| {
        object["metadata"]["annotations"][TEMPLATE_GENERATION]
            .as_str()
            .and_then(|g| g.parse::<i64>().ok())
    };
    let next = match current {
        None => generation(updated).unwrap_or(1),
        Some(current) if current["spec"]["template"] != updated["spec"]["template"] => {
            generation(current).unwrap_or(1) + 1
        }
        Some(current) => match generation(current) {
            Some(g) => g,
            None => return,
        },
    };
    let meta = &mut updated["metadata"];
    if !meta["annotations"].is_object() {
        meta["annotations"] = json!({});
    }
    meta["annotations"][TEMPLATE_GENERATION] = json!(next.to_string());
}
