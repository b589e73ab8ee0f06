//! Node operations: find the node of an instance, cordon, add and remove taints, and the retry
//! rule every Kubernetes call shares.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use tokio::time::Instant;

/// Taint eks-remedy adds to a node whose instance is being interrupted (value: the notice kind).
pub const INTERRUPTION_TAINT_KEY: &str = "eks-remedy.io/interruption";
/// The non-graceful node shutdown taint: pods and volumes are released at once.
pub const OUT_OF_SERVICE_TAINT_KEY: &str = "node.kubernetes.io/out-of-service";

/// The taint that marks an interruption in progress.
pub fn interruption_taint(kind: &str) -> Taint {
    Taint {
        key: INTERRUPTION_TAINT_KEY.into(),
        value: Some(kind.into()),
        effect: "NoSchedule".into(),
        time_added: None,
    }
}

/// The out-of-service taint, `node.kubernetes.io/out-of-service=nodeshutdown:NoExecute`.
pub fn out_of_service_taint() -> Taint {
    Taint {
        key: OUT_OF_SERVICE_TAINT_KEY.into(),
        value: Some("nodeshutdown".into()),
        effect: "NoExecute".into(),
        time_added: None,
    }
}

/// Whether an error is worth another try: throttling (API Priority and Fairness), server
/// errors, timeouts and broken connections.
pub fn is_transient(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => matches!(status.code, 429 | 500 | 502 | 503 | 504),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// The HTTP status of an API error, if it is one.
pub fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Runs `op` until it succeeds, fails for good, or `deadline` passes; transient errors are
/// retried with exponential backoff (100 ms doubling to 2 s).
pub async fn retrying<T, F, Fut>(deadline: Instant, mut op: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match op().await {
            Err(err) if is_transient(&err) && Instant::now() + delay < deadline => {
                tracing::debug!(error = %err, "transient Kubernetes error, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// The instance id in a node's `spec.providerID` (`aws:///<zone>/<instance-id>`).
pub fn instance_id_of(node: &Node) -> Option<&str> {
    let provider_id = node.spec.as_ref()?.provider_id.as_deref()?;
    let id = provider_id.strip_prefix("aws://")?.rsplit('/').next()?;
    id.starts_with("i-").then_some(id)
}

/// Finds the node of an instance by `spec.providerID`, whatever the node is named. The API
/// server cannot select on that field, so nodes are listed page by page and matched here.
pub async fn find_by_instance(
    nodes: &Api<Node>,
    instance_id: &str,
    deadline: Instant,
) -> Result<Option<Node>, kube::Error> {
    let mut params = ListParams::default().limit(500);
    loop {
        let page = retrying(deadline, || nodes.list(&params)).await?;
        if let Some(node) = page
            .items
            .into_iter()
            .find(|n| instance_id_of(n) == Some(instance_id))
        {
            return Ok(Some(node));
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(None),
        }
    }
}

/// Whether the node's Ready condition is True.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// Whether the node is cordoned.
pub fn is_cordoned(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

/// The node's taints.
pub fn taints(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[])
}

/// Marks the node unschedulable. Returns whether anything changed.
pub async fn cordon(nodes: &Api<Node>, name: &str, deadline: Instant) -> Result<bool, kube::Error> {
    let node = retrying(deadline, || nodes.get(name)).await?;
    if is_cordoned(&node) {
        return Ok(false);
    }
    retrying(deadline, || nodes.cordon(name)).await?;
    Ok(true)
}

/// Makes the node schedulable again. Returns whether anything changed.
pub async fn uncordon(
    nodes: &Api<Node>,
    name: &str,
    deadline: Instant,
) -> Result<bool, kube::Error> {
    let node = retrying(deadline, || nodes.get(name)).await?;
    if !is_cordoned(&node) {
        return Ok(false);
    }
    retrying(deadline, || nodes.uncordon(name)).await?;
    Ok(true)
}

/// Adds a taint and keeps every other one. A strategic merge patch of `spec.taints` would
/// replace the whole list, so this reads the node and sends a JSON patch guarded by the
/// resourceVersion it read, re-reading on a conflict. Returns whether anything changed.
pub async fn add_taint(
    nodes: &Api<Node>,
    name: &str,
    taint: &Taint,
    deadline: Instant,
) -> Result<bool, kube::Error> {
    loop {
        let node = retrying(deadline, || nodes.get(name)).await?;
        if taints(&node)
            .iter()
            .any(|t| t.key == taint.key && t.effect == taint.effect)
        {
            return Ok(false);
        }
        let rv = node.metadata.resource_version.clone().unwrap_or_default();
        let mut ops = vec![json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv})];
        if node.spec.as_ref().and_then(|s| s.taints.as_ref()).is_none() {
            ops.push(json!({"op": "add", "path": "/spec/taints", "value": [taint]}));
        } else {
            ops.push(json!({"op": "add", "path": "/spec/taints/-", "value": taint}));
        }
        match patch_json(nodes, name, ops, deadline).await {
            Ok(()) => return Ok(true),
            Err(err) if is_conflict(&err) && Instant::now() < deadline => continue,
            Err(err) => return Err(err),
        }
    }
}

/// Removes every taint with `key`, guarded like [`add_taint`]. Returns whether anything changed.
pub async fn remove_taint(
    nodes: &Api<Node>,
    name: &str,
    key: &str,
    deadline: Instant,
) -> Result<bool, kube::Error> {
    loop {
        let node = retrying(deadline, || nodes.get(name)).await?;
        let current = taints(&node);
        if !current.iter().any(|t| t.key == key) {
            return Ok(false);
        }
        let kept: Vec<&Taint> = current.iter().filter(|t| t.key != key).collect();
        let rv = node.metadata.resource_version.clone().unwrap_or_default();
        let ops = vec![
            json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv}),
            json!({"op": "replace", "path": "/spec/taints", "value": kept}),
        ];
        match patch_json(nodes, name, ops, deadline).await {
            Ok(()) => return Ok(true),
            Err(err) if is_conflict(&err) && Instant::now() < deadline => continue,
            Err(err) => return Err(err),
        }
    }
}

/// A failed `test` operation (422) or a stale resourceVersion (409).
pub fn is_conflict(err: &kube::Error) -> bool {
    matches!(status_code(err), Some(409 | 422))
}

/// Sends a JSON patch to an object.
pub async fn patch_json<K>(
    nodes: &Api<K>,
    name: &str,
    ops: Vec<serde_json::Value>,
    deadline: Instant,
) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).map_err(kube::Error::SerdeError)?;
    let patch = Patch::Json::<()>(patch);
    let params = PatchParams::default();
    retrying(deadline, || nodes.patch(name, &params, &patch)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(provider_id: &str) -> Node {
        serde_json::from_value(
            json!({"metadata": {"name": "n"}, "spec": {"providerID": provider_id}}),
        )
        .unwrap()
    }

    #[test]
    fn instance_id_comes_from_the_provider_id() {
        assert_eq!(
            instance_id_of(&node("aws:///us-east-1a/i-0aaa1111bbbb2222c")),
            Some("i-0aaa1111bbbb2222c")
        );
        assert_eq!(instance_id_of(&node("gce://p/z/i-1")), None);
        assert_eq!(instance_id_of(&node("aws:///us-east-1a/")), None);
    }
}
