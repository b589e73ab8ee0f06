//! `Status` bodies exactly as kube-apiserver writes them.

use serde_json::{Value, json};

/// An API answer: status code, body and extra headers.
#[derive(Debug, Clone)]
pub struct Answer {
    pub code: u16,
    pub body: Value,
    pub headers: Vec<(&'static str, String)>,
}

impl Answer {
    pub fn ok(body: Value) -> Self {
        Self::with(200, body)
    }

    pub fn with(code: u16, body: Value) -> Self {
        Self {
            code,
            body,
            headers: Vec::new(),
        }
    }
}

/// A failure Status.
pub fn failure(code: u16, reason: &str, message: &str, details: Option<Value>) -> Answer {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if reason.is_empty() {
        body.as_object_mut().map(|o| o.remove("reason"));
    }
    if let Some(details) = details {
        body["details"] = details;
    }
    Answer::with(code, body)
}

/// `resource[.group]`, as messages name a resource.
pub fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    }
}

fn details(name: &str, group: &str, kind: &str) -> Value {
    let mut d = json!({"name": name, "kind": kind});
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    d
}

pub fn not_found(resource: &str, group: &str, name: &str) -> Answer {
    failure(
        404,
        "NotFound",
        &format!("{} \"{name}\" not found", qualified(resource, group)),
        Some(details(name, group, resource)),
    )
}

pub fn unknown_path() -> Answer {
    failure(
        404,
        "NotFound",
        "the server could not find the requested resource",
        Some(json!({})),
    )
}

pub fn bad_request(message: &str) -> Answer {
    failure(400, "BadRequest", message, None)
}

pub fn conflict_modified(resource: &str, group: &str, name: &str) -> Answer {
    failure(
        409,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            qualified(resource, group)
        ),
        Some(details(name, group, resource)),
    )
}

pub fn unauthorized() -> Answer {
    failure(401, "Unauthorized", "Unauthorized", None)
}

pub fn forbidden(
    user: &str,
    verb: &str,
    resource: &str,
    subresource: &str,
    group: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Answer {
    let full = if subresource.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}/{subresource}")
    };
    let named = name.map(|n| format!("\"{n}\" ")).unwrap_or_default();
    let scope = match namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_owned(),
    };
    // The message starts with the resource alone, `pods "x" is forbidden: … "pods/eviction"`.
    let message = format!(
        "{} {named}is forbidden: User \"{user}\" cannot {verb} resource \"{full}\" in API group \"{group}\" {scope}",
        qualified(resource, group)
    );
    let mut d = json!({"kind": resource});
    if let Some(n) = name {
        d["name"] = json!(n);
    }
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    failure(403, "Forbidden", &message, Some(d))
}

/// 422 for a failed JSON patch (`test` mismatch, missing path).
pub fn patch_rejected() -> Answer {
    failure(
        422,
        "Invalid",
        "the server rejected our request due to an error in our request",
        Some(json!({})),
    )
}

/// 422 Invalid with field causes. The message lists each distinct cause once, while `causes`
/// keeps them all (node taint validation reports each of its causes twice).
pub fn invalid(kind: &str, name: &str, causes: Vec<(String, String, String)>) -> Answer {
    invalid_in(kind, "", name, causes)
}

/// [`invalid`] for a kind of an API group: the message names `Kind.group`, and the details
/// carry the group (and the name only when there is one).
pub fn invalid_in(
    kind: &str,
    group: &str,
    name: &str,
    causes: Vec<(String, String, String)>,
) -> Answer {
    let qualified_kind = if group.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}.{group}")
    };
    let mut summary: Vec<String> = Vec::new();
    for (_, field, message) in &causes {
        let line = format!("{field}: {message}");
        if !summary.contains(&line) {
            summary.push(line);
        }
    }
    let message = format!(
        "{qualified_kind} \"{name}\" is invalid: {}",
        if summary.len() == 1 {
            summary[0].clone()
        } else {
            format!("[{}]", summary.join(", "))
        }
    );
    let causes: Vec<Value> = causes
        .into_iter()
        .map(|(reason, field, message)| json!({"reason": reason, "message": message, "field": field}))
        .collect();
    let mut details = json!({"kind": kind, "causes": causes});
    if !name.is_empty() {
        details["name"] = json!(name);
    }
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    failure(422, "Invalid", &message, Some(details))
}

/// 422 for a server-side apply without the `fieldManager` it requires.
pub fn field_manager_required() -> Answer {
    invalid_in(
        "PatchOptions",
        "meta.k8s.io",
        "",
        vec![(
            "FieldValueRequired".to_owned(),
            "fieldManager".to_owned(),
            "Required value: is required for apply patch".to_owned(),
        )],
    )
}

/// 422 for a patch whose result does not decode into the resource's type (a string where a
/// boolean belongs): kube-apiserver quotes the whole patched object and Go's decoding error, and
/// names neither the object nor its kind.
pub fn invalid_patch_result(patched: &Value, error: &str) -> Answer {
    let value = format!(
        "Invalid value: {}: {error}",
        Value::String(patched.to_string())
    );
    failure(
        422,
        "Invalid",
        &format!(" \"\" is invalid: patch: {value}"),
        Some(
            json!({"causes": [{"reason": "FieldValueInvalid", "message": value, "field": "patch"}]}),
        ),
    )
}

pub fn already_exists(resource: &str, group: &str, name: &str) -> Answer {
    failure(
        409,
        "AlreadyExists",
        &format!("{} \"{name}\" already exists", qualified(resource, group)),
        Some(details(name, group, resource)),
    )
}

pub fn success(code: u16) -> Answer {
    Answer::with(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code}),
    )
}
