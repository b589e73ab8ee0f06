//! Label and field selectors with kube-apiserver's rules and error messages.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<Requirement>);

fn split_top_level(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if text.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in split_top_level(text) {
            let part = part.trim();
            let req = if let Some((k, rest)) = part.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), set_values(rest)?)
            } else if let Some((k, rest)) = part.split_once(" in ") {
                Requirement::In(k.trim().into(), set_values(rest)?)
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), single_value(v, "!=")?)
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(k.trim().into(), single_value(v, "==")?)
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(k.trim().into(), single_value(v, "=")?)
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            let key = match &req {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::In(k, _)
                | Requirement::NotIn(k, _)
                | Requirement::Exists(k)
                | Requirement::NotExists(k) => k,
            };
            if !valid_key(key) {
                return Err(format!(
                    "unable to parse requirement: invalid label key {key:?}"
                ));
            }
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    pub fn matches(&self, labels: &serde_json::Map<String, Value>) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }
}

fn single_value(v: &str, op: &str) -> Result<String, String> {
    let v = v.trim();
    if v.contains('=') || v.contains('!') {
        let found = if v.starts_with('=') { "==" } else { op };
        return Err(format!("found '{found}', expected: ',' or 'end of string'"));
    }
    Ok(v.to_owned())
}

fn set_values(rest: &str) -> Result<Vec<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("found '{rest}', expected: '('"))?;
    Ok(inner.split(',').map(|s| s.trim().to_owned()).collect())
}

/// One field requirement.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldRequirement {
    pub field: String,
    pub value: String,
    pub negated: bool,
}

/// Parses a field selector; set-based syntax and bare keys are errors. Like kube-apiserver, it
/// sorts the terms before reading them, so an error names the first bad term in sort order.
pub fn parse_fields(text: &str) -> Result<Vec<FieldRequirement>, String> {
    let mut terms: Vec<&str> = text.split(',').filter(|t| !t.is_empty()).collect();
    terms.sort_unstable();
    terms
        .into_iter()
        .map(|term| {
            let (field, op, value) = split_term(term)
                .ok_or_else(|| format!("invalid selector: '{text}'; can't understand '{term}'"))?;
            Ok(FieldRequirement {
                field: field.to_owned(),
                value: value.to_owned(),
                negated: op == "!=",
            })
        })
        .collect()
}

/// Splits a term at the first operator found from the left, trying `!=`, `==`, `=` at each
/// position.
fn split_term(term: &str) -> Option<(&str, &str, &str)> {
    term.char_indices().find_map(|(i, _)| {
        let rest = &term[i..];
        ["!=", "==", "="]
            .into_iter()
            .find(|op| rest.starts_with(op))
            .map(|op| (&term[..i], op, &rest[op.len()..]))
    })
}

/// Reads a dotted path of an object as a string, the way field selectors compare it.
pub fn field_value(object: &Value, path: &str) -> String {
    let mut current = object;
    for part in path.split('.') {
        match current.get(part) {
            Some(v) => current = v,
            None => return String::new(),
        }
    }
    match current {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_parse_and_match() {
        let labels = json!({"app": "web", "tier": "front"});
        let labels = labels.as_object().unwrap();
        assert!(LabelSelector::parse("app=web").unwrap().matches(labels));
        assert!(
            LabelSelector::parse("app in (web,api),tier")
                .unwrap()
                .matches(labels)
        );
        assert!(
            !LabelSelector::parse("app notin (web)")
                .unwrap()
                .matches(labels)
        );
        assert!(LabelSelector::parse("!missing").unwrap().matches(labels));
        let err = LabelSelector::parse("a==b==").unwrap_err();
        assert_eq!(err, "found '==', expected: ',' or 'end of string'");
    }

    #[test]
    fn field_selectors_reject_set_syntax() {
        assert!(parse_fields("spec.nodeName").is_err());
        let reqs = parse_fields("spec.nodeName=n1,status.phase!=Succeeded").unwrap();
        assert_eq!(reqs.len(), 2);
        assert!(reqs[1].negated);
        let err = parse_fields("spec.nodeName in (a,b)").unwrap_err();
        assert_eq!(
            err,
            "invalid selector: 'spec.nodeName in (a,b)'; can't understand 'b)'"
        );
    }
}
