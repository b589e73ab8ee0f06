//! Conformance of the test Kubernetes API server with a real kube-apiserver.
//!
//! `tests/fixtures/k8s-api/` holds exchanges recorded against kube-apiserver v1.36.2 (etcd 3.5,
//! static bearer tokens, `Node,RBAC` authorization, no kubelet, scheduler or controllers, except
//! kube-controller-manager with only the disruption controller for the later part of the
//! eviction file). Each file is a JSON array of exchanges in capture order:
//!
//! - `request`: `method`, `path`, decoded `query`, `headers` (tokens appear as `<admin-token>`,
//!   `<remediator-token>` and `<bad-token>`) and `body` (JSON, raw text, or null);
//! - `response`: `status`, the headers that matter (`Content-Type`, `Retry-After`, `Warning`,
//!   `WWW-Authenticate`, `Location`), `body` as received and `body_normalised`;
//! - `volatile_paths.response_body`: the paths whose values `body_normalised` replaced, UUIDs by
//!   `<uid>`, resourceVersions by `<rv>`, RFC 3339 times by `<ts>`, continue tokens by
//!   `<continue>`, and the random suffix of `kube-api-access-*` volumes by `<rand>`.
//!
//! Every file is replayed in order over HTTP against a fresh server that starts from the world
//! as first recorded ([`SEED`]), or as it was when the file was recorded where earlier groups
//! had changed it ([`LATER`]), so later exchanges see the effects of earlier ones as they did
//! in the lab. What the lab changed between exchanges is applied where it happened
//! ([`lab_change`], [`LAB_WRITES`]). The test compares the status code, those headers, and the
//! whole body after the same normalisation at the same paths plus the few explicit ones in
//! [`normalise`]. Every differing exchange is listed in one failure.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use eks_remedy_tests::{KubeServer, Rbac, ServerOptions, User};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The recorded files replayed, in capture order within each file.
const REPLAYED: &[&str] = &[
    "01-nodes.json",
    "02-cordon.json",
    "03-taints.json",
    "04-pods-by-node.json",
    "05-eviction.json",
    "06-delete.json",
    "07-daemonset-env.json",
    "08-deployment-restart.json",
    "09-volumeattachments.json",
    "10-events.json",
    "11-auth.json",
    "12-concurrency.json",
    "13-pagination.json",
    "15-rbac.json",
];

const REVIEW_APIS: &str = "the review APIs of authentication.k8s.io and authorization.k8s.io \
    (SelfSubjectReview, SelfSubjectAccessReview, SelfSubjectRulesReview) are not served by the \
    test server, and eks-remedy does not call them; the -after-binding ones would also need the \
    lab's bindings, which are not infra/k8s/rbac.yaml";

const SERVER_SIDE_APPLY: &str = "the test server does not implement server-side apply \
    (application/apply-patch+yaml with a fieldManager): it keeps no managedFields, so it can \
    neither find field-manager conflicts nor drop the fields an applier stops sending; it only \
    answers the missing fieldManager (07c-ssa-no-field-manager is replayed). eks-remedy patches \
    aws-node by strategic merge patch. The recorded result of each successful apply is written \
    into the server in its place, so the exchanges after them see the lab's DaemonSet";

const RBAC_OBJECTS: &str = "the test server does not serve rbac.authorization.k8s.io: its \
    authorizer takes the roles and bindings from ServerOptions.rbac, which for this file is \
    clusterrole-remediator.yaml, the manifest these four requests create";

/// Exchanges not replayed, by id prefixes, and why. Skipped writes whose recorded results later
/// exchanges depend on are carried over (see [`carry_over`]).
const SKIPPED: &[(&[&str], &str)] = &[
    (
        &[
            "07c-ssa-restore-",
            "07c-ssa-conflict",
            "07c-ssa-same-value-",
            "07c-ssa-force",
            "07c-ssa-eks-reapply-",
            "07c-ssa-dry-run",
        ],
        SERVER_SIDE_APPLY,
    ),
    (
        &["11-selfsubjectreview", "11-ssar-", "11-ssrr-"],
        REVIEW_APIS,
    ),
    (
        &["13-continue-expired"],
        "its token predates an etcd compaction done by hand in the lab; the test server keeps \
         every revision, so no continue token expires (410 Expired)",
    ),
    (
        &["15-create-clusterrole", "15-create-rolebinding-"],
        RBAC_OBJECTS,
    ),
];

/// The world every file starts from: the first recorded state of each object the replayed
/// files read or write, from answers given before any replayed exchange changed it (`00-setup`
/// is not replayed; it is the only record of two of the budgets). The groups were captured in
/// the order 00, 01, 04, 13, 10, 11, 12, 02, 03, 05, 06, 07, 08, 09, the rest of 05, 15 (and the
/// last three exchanges of 10, see [`LAB_WRITES`]), and what one changed is never read by a
/// later one but 15 (see [`LATER`]): nodes were changed and changed back (a label added and
/// removed, cordons undone, the spot taint restored) except node 1's cordon and node 3's
/// out-of-service taint, which only 15 reads; the pods 05 evicted are not those 06 deletes; 07
/// and 08 each change only their own workload.
///
/// Seeding from the recordings brings the lab's own marks along (the OpenShift configMap in
/// the projected service-account volume, the zone and region labels 1.36 admission copies onto
/// pods); no replayed exchange creates a pod, so none has to be normalised away.
const SEED: &[(&str, &str)] = &[
    // The three nodes.
    ("01-nodes.json", "01-list-nodes"),
    // Pods: node 1, node 2 (all namespaces), node 3, and the unscheduled one.
    ("04-pods-by-node.json", "04-pods-on-node"),
    ("13-pagination.json", "13-pods-page-1"),
    ("13-pagination.json", "13-pods-page-2"),
    ("13-pagination.json", "13-pods-page-3"),
    ("04-pods-by-node.json", "04-pods-on-node-instance-id"),
    ("04-pods-by-node.json", "04-pods-unscheduled"),
    // The budgets over checkout, payments and the critical tier, as created (unprocessed).
    ("00-setup.json", "00-pdb-checkout"),
    ("00-setup.json", "00-pdb-payments"),
    ("00-setup.json", "00-pdb-critical"),
    // Both VolumeAttachments.
    ("09-volumeattachments.json", "09-list-va"),
    // The aws-node DaemonSet and the EBS CSI controller Deployment.
    ("07-daemonset-env.json", "07-get-ds"),
    ("08-deployment-restart.json", "08-get-deploy-before"),
    // The events in shop, as written by the scheduler, kubelets and controllers.
    ("10-events.json", "10-core-list"),
];

/// A file recorded after earlier groups had changed what it reads: the states that replace the
/// seeded ones (from answers given before the file changed them) and the objects gone by then.
struct Later {
    file: &'static str,
    states: &'static [(&'static str, &'static str)],
    /// (kind, namespace, name)
    gone: &'static [(&'static str, &'static str, &'static str)],
}

/// 15 was recorded after 02, 03, 05 (with the disruption controller), 06, 07, 08 and 09.
const LATER: &[Later] = &[Later {
    file: "15-rbac.json",
    states: &[
        // Node 1 cordoned by 02, node 3 tainted out-of-service by 03.
        ("15-rbac.json", "15-allowed-list-nodes"),
        // web-…-7xkqp on node 1, evicted by 05 and Terminating since.
        ("05-eviction.json", "05-get-evicted-pod"),
        // Node 2, with web-…-m9zt6 evicted (Terminating) by the later part of 05.
        ("15-rbac.json", "15-allowed-list-pods-on-node"),
        // web-pdb, created by 05, and every budget's status from the disruption controller.
        ("15-rbac.json", "15-allowed-list-pdbs"),
        // After 07 and 08.
        ("15-rbac.json", "15-allowed-get-daemonset-aws-node"),
        ("15-rbac.json", "15-allowed-get-deployment-ebs-csi"),
        // The event kube-controller-manager wrote about the pod under two budgets.
        ("15-rbac.json", "15-allowed-list-events"),
    ],
    gone: &[
        // Evicted with grace 0 or unscheduled by 05, deleted by 06.
        ("Pod", "shop", "web-5d8f7c9b6d-b2r4n"),
        ("Pod", "shop", "web-5d8f7c9b6d-wq8lz"),
        ("Pod", "shop", "cache-7f9c6d5b8-zq2xk"),
        ("Pod", "shop", "debug-shell"),
        ("Pod", "shop", "db-migrate-x7p2k"),
        // Both deleted by 09 (15 creates the second one again).
        (
            "VolumeAttachment",
            "",
            "csi-d4bb56d779ad11fcc56a7956b9e3d4658718e0eff28029333ab028094b51d305",
        ),
        (
            "VolumeAttachment",
            "",
            "csi-b65b99d57a2329aa924e25d51aff26d8731992e1024a5a8040f7f21be9ab28f3",
        ),
    ],
}];

/// The object a skipped exchange left in the lab, when later exchanges read it: the recorded
/// answer of a successful write of a resource the test server stores (not a dry run, not the
/// RBAC objects it does not serve).
fn carry_over(exchange: &Exchange) -> Option<&Value> {
    let request = &exchange.request;
    let writes = matches!(request.method.as_str(), "PATCH" | "PUT" | "POST");
    let body = &exchange.response.body;
    let stored = !body["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .starts_with("rbac.authorization.k8s.io/");
    (writes
        && stored
        && (200..300).contains(&exchange.response.status)
        && !request.query.contains_key("dryRun")
        && body["metadata"]["name"].is_string())
    .then_some(body)
}

/// What was changed in the lab between two exchanges, applied before the named exchange.
fn lab_change(id: &str) -> Option<fn(&mut ServerOptions)> {
    match id {
        // kube-controller-manager (disruption controller only) was started here.
        "05-get-pdb-processed" => Some(|o| o.disruption_controller = true),
        // kube-apiserver was restarted with --anonymous-auth=false for these.
        id if id.ends_with("-anonymous-disabled") => Some(|o| o.anonymous_auth = false),
        _ => None,
    }
}

/// How the lab was set up when a file was recorded, beyond [`lab_options`].
fn file_options(file: &str, options: &mut ServerOptions) {
    if file == "15-rbac.json" {
        // kube-controller-manager ran the disruption controller, and the remediator's roles
        // were those of clusterrole-remediator.yaml (created by the file's first exchanges).
        options.disruption_controller = true;
        let path = format!("{}/clusterrole-remediator.yaml", fixtures());
        let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        options.rbac = Some(Arc::new(Rbac::from_yaml(&yaml).expect("RBAC manifest")));
    }
}

/// Objects written in the lab between two exchanges by something the replay does not play:
/// (before exchange, file, exchange whose answer holds the object, object name).
const LAB_WRITES: &[(&str, &str, &str, &str)] = &[(
    // The last three events.k8s.io exchanges of 10 were recorded after 15, when
    // kube-controller-manager had written this event about the pod under two budgets.
    "10-v1-fs-reportingcontroller",
    "15-rbac.json",
    "15-allowed-list-events",
    "payments-7b8c9d6f4-k2w9s.18ee16e1d9496684",
)];

/// Response fields that are transient in the recording itself, by exchange: (id, path, why).
const TRANSIENT: &[(&str, &str, &str)] = &[(
    "05-get-pdb-web-after-eviction",
    "status.disruptedPods",
    "the recording caught kube-controller-manager between its two syncs after the eviction \
     (it had recounted currentHealthy but not yet dropped the now Terminating pod from \
     disruptedPods); the test server's controller has always done both by the next request",
)];

fn fixtures() -> String {
    format!("{}/fixtures/k8s-api", env!("CARGO_MANIFEST_DIR"))
}

#[derive(Deserialize)]
struct Exchange {
    id: String,
    request: RecordedRequest,
    response: RecordedResponse,
    volatile_paths: VolatilePaths,
}

#[derive(Deserialize)]
struct RecordedRequest {
    method: String,
    path: String,
    query: Map<String, Value>,
    headers: HashMap<String, String>,
    body: Value,
}

#[derive(Deserialize)]
struct RecordedResponse {
    status: u16,
    headers: HashMap<String, String>,
    body: Value,
    body_normalised: Value,
}

#[derive(Deserialize)]
struct VolatilePaths {
    response_body: Vec<String>,
}

fn load(file: &str) -> Vec<Exchange> {
    let path = format!("{}/{file}", fixtures());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The lab's users before any RoleBinding existed: the admin in `system:masters`, and the
/// remediator, whose group nothing is bound to yet, so RBAC denies it everything.
fn lab_options() -> ServerOptions {
    let mut options = ServerOptions::default();
    options.tokens.insert(
        "remediator-token".to_owned(),
        User::new("remediator", &["eks-remediators", "system:authenticated"]),
    );
    options.eks_token_user = None;
    options.rbac = Some(Arc::new(Rbac::default()));
    // No kubelet and no controllers ran when most exchanges were recorded.
    options.kubelet_delay = None;
    options.disruption_controller = false;
    options
}

/// One file's replay: the server and what the recording's identifiers stand for on it.
struct Replay {
    server: KubeServer,
    /// Recorded resourceVersion → the test server's, learnt from the seed and from answers.
    resource_versions: HashMap<String, String>,
    /// Recorded continue token → the test server's.
    continue_tokens: HashMap<String, String>,
}

impl Replay {
    async fn start(file: &str, seed: &[Value]) -> Self {
        let mut options = lab_options();
        file_options(file, &mut options);
        let server = KubeServer::start(options).await.expect("test API server");
        let mut replay = Self {
            server,
            resource_versions: HashMap::new(),
            continue_tokens: HashMap::new(),
        };
        for object in seed {
            replay.write(object);
        }
        replay
    }

    /// Stores a recorded object as it is, as what the lab had at that point.
    fn write(&mut self, object: &Value) {
        let created = self.server.create(object.clone());
        self.learn_resource_version(object, &created);
    }

    fn learn_resource_version(&mut self, recorded: &Value, ours: &Value) {
        if let (Some(r), Some(o)) = (
            recorded["metadata"]["resourceVersion"].as_str(),
            ours["metadata"]["resourceVersion"].as_str(),
        ) {
            self.resource_versions.insert(r.to_owned(), o.to_owned());
        }
    }

    /// Learns what the recorded answer's resourceVersions and continue token are on the test
    /// server, pairing objects by namespace and name.
    fn learn(&mut self, recorded: &Value, ours: &Value) {
        self.learn_resource_version(recorded, ours);
        if let (Some(r), Some(o)) = (
            recorded["metadata"]["continue"].as_str(),
            ours["metadata"]["continue"].as_str(),
        ) {
            self.continue_tokens.insert(r.to_owned(), o.to_owned());
        }
        let ours_by_name: HashMap<(String, String), &Value> = ours["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|item| (object_key(item), item))
            .collect();
        for item in recorded["items"].as_array().into_iter().flatten() {
            if let Some(our_item) = ours_by_name.get(&object_key(item)) {
                self.learn_resource_version(item, our_item);
            }
        }
    }

    /// The recorded request body with recorded resourceVersions replaced by the test server's:
    /// `metadata.resourceVersion`, `preconditions.resourceVersion` and JSON patch `test` values.
    fn translate(&self, value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut out = Map::new();
                let patches_resource_version = map
                    .get("path")
                    .and_then(Value::as_str)
                    .is_some_and(|p| p.ends_with("/resourceVersion"));
                for (key, v) in map {
                    let is_rv =
                        key == "resourceVersion" || (patches_resource_version && key == "value");
                    let mapped = v
                        .as_str()
                        .filter(|_| is_rv)
                        .and_then(|rv| self.resource_versions.get(rv));
                    let v = match mapped {
                        Some(ours) => Value::String(ours.clone()),
                        None => self.translate(v),
                    };
                    out.insert(key.clone(), v);
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(|v| self.translate(v)).collect()),
            other => other.clone(),
        }
    }

    async fn send(&self, exchange: &Exchange) -> Answer {
        let request = &exchange.request;
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in &request.query {
            let value = value.as_str().unwrap_or_default();
            let value = match key.as_str() {
                "continue" => self
                    .continue_tokens
                    .get(value)
                    .map_or(value, String::as_str),
                _ => value,
            };
            query.append_pair(key, value);
        }
        let query = query.finish();
        let target = if query.is_empty() {
            request.path.clone()
        } else {
            format!("{}?{query}", request.path)
        };

        let mut headers = Vec::new();
        for name in ["Accept", "User-Agent", "Content-Type"] {
            if let Some(value) = request.headers.get(name) {
                headers.push((name, value.clone()));
            }
        }
        if let Some(auth) = request.headers.get("Authorization") {
            let token = match auth.as_str() {
                "Bearer <admin-token>" => "admin-token",
                "Bearer <remediator-token>" => "remediator-token",
                "Bearer <bad-token>" => "not-a-token-the-server-knows",
                other => panic!("{}: unexpected Authorization {other}", exchange.id),
            };
            headers.push(("Authorization", format!("Bearer {token}")));
        }

        let body = match &request.body {
            Value::Null => Vec::new(),
            Value::String(text) => text.clone().into_bytes(),
            json => self.translate(json).to_string().into_bytes(),
        };
        let addr = self.server.url().trim_start_matches("http://").to_owned();
        let method = request.method.clone();
        tokio::task::spawn_blocking(move || http(&addr, &method, &target, &headers, &body))
            .await
            .expect("HTTP exchange")
    }
}

fn object_key(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (text(&meta["namespace"]), text(&meta["name"]))
}

/// Recorded exchanges by file, each file read once.
#[derive(Default)]
struct Recordings(HashMap<String, Vec<Exchange>>);

impl Recordings {
    fn exchange(&mut self, file: &str, id: &str) -> &Exchange {
        self.0
            .entry(file.to_owned())
            .or_insert_with(|| load(file))
            .iter()
            .find(|e| e.id == id)
            .unwrap_or_else(|| panic!("exchange {id} not in {file}"))
    }

    /// The objects of an exchange's answer, typed (list items carry no kind of their own).
    fn objects(&mut self, file: &str, id: &str) -> Vec<Value> {
        let body = &self.exchange(file, id).response.body;
        match body["items"].as_array() {
            Some(items) => {
                let kind = body["kind"].as_str().unwrap_or_default();
                items
                    .iter()
                    .map(|item| {
                        let mut typed = item.clone();
                        typed["kind"] = Value::from(kind.trim_end_matches("List"));
                        typed["apiVersion"] = body["apiVersion"].clone();
                        typed
                    })
                    .collect()
            }
            None => vec![body.clone()],
        }
    }
}

fn typed_key(object: &Value) -> (String, String, String) {
    let (namespace, name) = object_key(object);
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    (kind, namespace, name)
}

/// The world a file starts from: the [`SEED`] objects (the first recorded state of each), with
/// the file's [`LATER`] states in place of theirs and its gone objects left out.
fn seed_objects(recordings: &mut Recordings, file: &str) -> Vec<Value> {
    let mut objects: Vec<Value> = Vec::new();
    let mut at: HashMap<(String, String, String), usize> = HashMap::new();
    for (seed_file, id) in SEED {
        for object in recordings.objects(seed_file, id) {
            if let std::collections::hash_map::Entry::Vacant(e) = at.entry(typed_key(&object)) {
                e.insert(objects.len());
                objects.push(object);
            }
        }
    }
    let Some(later) = LATER.iter().find(|l| l.file == file) else {
        return objects;
    };
    for (state_file, id) in later.states {
        for object in recordings.objects(state_file, id) {
            match at.get(&typed_key(&object)) {
                Some(&i) => objects[i] = object,
                None => {
                    at.insert(typed_key(&object), objects.len());
                    objects.push(object);
                }
            }
        }
    }
    let gone: Vec<(String, String, String)> = later
        .gone
        .iter()
        .map(|(kind, namespace, name)| (kind.to_string(), namespace.to_string(), name.to_string()))
        .collect();
    for key in &gone {
        assert!(at.contains_key(key), "{file}: nothing seeded is {key:?}");
    }
    objects.retain(|o| !gone.contains(&typed_key(o)));
    objects
}

/// A status code, the headers, and the body (JSON, or a string when it is not JSON).
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: Value,
}

/// One HTTP/1.1 exchange with the test server on 127.0.0.1, by hand so that nothing (retries,
/// default headers, redirects) stands between the recording and the server.
fn http(addr: &str, method: &str, target: &str, headers: &[(&str, String)], body: &[u8]) -> Answer {
    assert!(
        addr.starts_with("127.0.0.1:"),
        "only the loopback test server"
    );
    let mut stream = TcpStream::connect(addr).expect("connect to the test server");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).expect("send");
    stream.write_all(body).expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("receive");

    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut payload = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if headers
        .get("transfer-encoding")
        .is_some_and(|t| t == "chunked")
    {
        payload = dechunk(&payload);
    }
    let body = serde_json::from_slice(&payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&payload).into_owned()));
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&data[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
    out
}

// ---- normalisation ----

/// Replaces the value at a volatile path (`items[*].metadata.uid`, keys may contain dots) by its
/// placeholder, as the recording's `body_normalised` does.
fn mask_path(value: &mut Value, path: &str) {
    let Value::Object(map) = value else {
        return;
    };
    let mut keys: Vec<String> = map.keys().cloned().collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
    for key in keys {
        for (suffix, each) in [("[*]", true), ("", false)] {
            let head = format!("{key}{suffix}");
            let rest = if path == head {
                ""
            } else if let Some(rest) = path.strip_prefix(&format!("{head}.")) {
                rest
            } else {
                continue;
            };
            let child = map.get_mut(&key).expect("key");
            match (each, child) {
                (true, Value::Array(items)) => {
                    for item in items {
                        mask_or_descend(&key, item, rest);
                    }
                }
                (true, _) => continue,
                (false, child) => mask_or_descend(&key, child, rest),
            }
            return;
        }
    }
}

fn mask_or_descend(key: &str, value: &mut Value, rest: &str) {
    if rest.is_empty() {
        *value = placeholder(key, value);
    } else {
        mask_path(value, rest);
    }
}

fn placeholder(key: &str, value: &Value) -> Value {
    match (key, value) {
        ("resourceVersion", Value::String(_)) => Value::from("<rv>"),
        ("continue", Value::String(_)) => Value::from("<continue>"),
        (_, Value::String(text)) => Value::String(mask_text(text)),
        _ => value.clone(),
    }
}

/// Replaces UUIDs and RFC 3339 times inside a string, and the random suffix of a projected
/// service-account volume.
fn mask_text(text: &str) -> String {
    if let Some(suffix) = text.strip_prefix("kube-api-access-")
        && suffix.len() == 5
        && suffix.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return "kube-api-access-<rand>".to_owned();
    }
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        if let Some(n) = uuid_len(&bytes[i..]) {
            out.push_str("<uid>");
            i += n;
        } else if let Some(n) = time_len(&bytes[i..]) {
            out.push_str("<ts>");
            i += n;
        } else {
            let c = text[i..].chars().next().expect("char");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Length of the prefix of `b` shaped like `shape` ('h' lower-case hex, 'd' digit, other bytes
/// literal).
fn shaped(b: &[u8], shape: &str) -> Option<usize> {
    let ok = b.len() >= shape.len()
        && shape.bytes().zip(b).all(|(s, c)| match s {
            b'h' => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
            b'd' => c.is_ascii_digit(),
            literal => literal == *c,
        });
    ok.then_some(shape.len())
}

fn uuid_len(b: &[u8]) -> Option<usize> {
    shaped(b, "hhhhhhhh-hhhh-hhhh-hhhh-hhhhhhhhhhhh")
}

fn time_len(b: &[u8]) -> Option<usize> {
    let mut n = shaped(b, "dddd-dd-ddTdd:dd:dd")?;
    if b.get(n) == Some(&b'.') {
        let digits = b[n + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits > 0 {
            n += 1 + digits;
        }
    }
    match b.get(n) {
        Some(b'Z') => Some(n + 1),
        Some(b'+' | b'-') => shaped(&b[n + 1..], "dd:dd").map(|z| n + 1 + z),
        _ => None,
    }
}

/// The explicit normalisations, applied to both sides.
fn normalise(id: &str, mut body: Value) -> Value {
    // The test server does not do server-side field management: managedFields (who wrote
    // which field, when) are not compared.
    drop_managed_fields(&mut body);
    if let Some(items) = body.get_mut("items").and_then(Value::as_array_mut) {
        items.iter_mut().for_each(drop_managed_fields);
    }

    // A patch that breaks the type quotes the whole would-be object, in Go's field order and
    // with its managedFields; compare the message around it.
    mask_message_at(&mut body);
    if let Some(causes) = body
        .pointer_mut("/details/causes")
        .and_then(Value::as_array_mut)
    {
        causes.iter_mut().for_each(mask_message_at);
    }

    for (transient_id, path, _) in TRANSIENT {
        if *transient_id == id {
            remove_path(&mut body, path);
        }
    }
    body
}

fn drop_managed_fields(object: &mut Value) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
}

fn mask_message_at(object: &mut Value) {
    if let Some(message) = object.get_mut("message")
        && let Some(text) = message.as_str()
    {
        *message = Value::String(mask_message(text));
    }
}

fn remove_path(value: &mut Value, path: &str) {
    match path.split_once('.') {
        Some((head, rest)) => {
            if let Some(child) = value.get_mut(head) {
                remove_path(child, rest);
            }
        }
        None => {
            value.as_object_mut().map(|o| o.remove(path));
        }
    }
}

fn mask_message(text: &str) -> String {
    let mut text = text.to_owned();

    // `Invalid value: "{…object…}": json: cannot unmarshal …`
    let opening = "Invalid value: \"{";
    let closing = "}\": json: ";
    if let Some(start) = text.find(opening)
        && let Some(end) = text.rfind(closing)
        && end > start
    {
        text.replace_range(start + opening.len() - 1..end + 1, "<object>");
    }

    // Precondition failures quote resourceVersions, which are the lab's on one side and the
    // test server's on the other.
    for label in [
        "ResourceVersion in the precondition (",
        "ResourceVersion in record (",
    ] {
        if let Some(start) = text.find(label).map(|s| s + label.len())
            && let Some(len) = text[start..].find(')')
        {
            text.replace_range(start..start + len, "<rv>");
        }
    }
    text
}

// ---- comparison ----

const HEADERS: &[&str] = &[
    "Content-Type",
    "Retry-After",
    "Warning",
    "WWW-Authenticate",
    "Location",
];

fn compare(exchange: &Exchange, answer: &Answer) -> Vec<String> {
    let mut differences = Vec::new();
    let recorded = &exchange.response;
    if answer.status != recorded.status {
        differences.push(format!(
            "status {} (recorded {})",
            answer.status, recorded.status
        ));
    }
    for name in HEADERS {
        let ours = answer.headers.get(&name.to_ascii_lowercase());
        let theirs = recorded.headers.get(*name);
        if ours != theirs {
            differences.push(format!("header {name}: {ours:?} (recorded {theirs:?})"));
        }
    }

    let mut ours = answer.body.clone();
    for path in &exchange.volatile_paths.response_body {
        mask_path(&mut ours, path);
    }
    let ours = normalise(&exchange.id, ours);
    let theirs = normalise(&exchange.id, recorded.body_normalised.clone());
    diff_bodies(&ours, &theirs, &mut differences);

    // The normalisation here must be the recording's own: applied to the raw recorded body it
    // has to give `body_normalised`.
    let mut raw = recorded.body.clone();
    for path in &exchange.volatile_paths.response_body {
        mask_path(&mut raw, path);
    }
    if raw != recorded.body_normalised {
        differences.push("the test's normalisation disagrees with body_normalised".to_owned());
    }
    differences
}

fn item_names(list: &Value) -> Option<Vec<String>> {
    list["items"].as_array().map(|items| {
        items
            .iter()
            .map(|i| {
                let (ns, name) = object_key(i);
                if ns.is_empty() {
                    name
                } else {
                    format!("{ns}/{name}")
                }
            })
            .collect()
    })
}

fn diff_bodies(ours: &Value, theirs: &Value, out: &mut Vec<String>) {
    if let (Some(a), Some(b)) = (item_names(ours), item_names(theirs))
        && a != b
    {
        out.push(format!("items {a:?} (recorded {b:?})"));
        let mut ours = ours.clone();
        let mut theirs = theirs.clone();
        remove_path(&mut ours, "items");
        remove_path(&mut theirs, "items");
        return diff_values(&ours, &theirs, "", out);
    }
    diff_values(ours, theirs, "", out);
}

fn diff_values(ours: &Value, theirs: &Value, path: &str, out: &mut Vec<String>) {
    let at = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (ours, theirs) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => diff_values(x, y, &at(key), out),
                    (Some(x), None) => {
                        out.push(format!("{}: {} (not recorded)", at(key), short(x)))
                    }
                    (None, Some(y)) => {
                        out.push(format!("{}: missing (recorded {})", at(key), short(y)))
                    }
                    (None, None) => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff_values(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ if ours == theirs => {}
        _ => out.push(format!(
            "{}: {} (recorded {})",
            if path.is_empty() { "body" } else { path },
            short(ours),
            short(theirs)
        )),
    }
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 240 {
        format!("{}…", text.chars().take(240).collect::<String>())
    } else {
        text
    }
}

// ---- the test ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_server_answers_as_recorded_kube_apiserver_exchanges() {
    let mut recordings = Recordings::default();
    let mut replayed = 0;
    let mut failures = Vec::new();

    let mut skipped: Vec<Vec<String>> = vec![Vec::new(); SKIPPED.len()];

    for file in REPLAYED {
        let exchanges = load(file);
        let seed = seed_objects(&mut recordings, file);
        let mut replay = Replay::start(file, &seed).await;
        for exchange in &exchanges {
            if let Some(i) = SKIPPED
                .iter()
                .position(|(prefixes, _)| prefixes.iter().any(|p| exchange.id.starts_with(p)))
            {
                skipped[i].push(exchange.id.clone());
                if let Some(object) = carry_over(exchange) {
                    replay.write(object);
                }
                continue;
            }
            if let Some(change) = lab_change(&exchange.id) {
                replay.server.configure(change);
            }
            for (before, from_file, id, name) in LAB_WRITES {
                if *before == exchange.id {
                    let objects = recordings.objects(from_file, id);
                    let object = objects
                        .iter()
                        .find(|o| o["metadata"]["name"] == *name)
                        .unwrap_or_else(|| panic!("{name} not in the answer of {id}"));
                    replay.write(object);
                }
            }

            let answer = replay.send(exchange).await;
            replayed += 1;
            let differences = compare(exchange, &answer);
            let dry_run = exchange.request.query.contains_key("dryRun");
            if (200..300).contains(&answer.status) && !dry_run {
                replay.learn(&exchange.response.body, &answer.body);
            }
            if !differences.is_empty() {
                failures.push(format!(
                    "{} ({} {}):\n    {}",
                    exchange.id,
                    exchange.request.method,
                    exchange.request.path,
                    differences.join("\n    ")
                ));
            }
        }
    }

    let mut summary = Vec::new();
    for ((prefixes, why), ids) in SKIPPED.iter().zip(&skipped) {
        for prefix in *prefixes {
            assert!(
                ids.iter().any(|id| id.starts_with(prefix)),
                "no recorded exchange {prefix}* to skip"
            );
        }
        summary.push(format!("{} — {why}", ids.join(", ")));
    }
    eprintln!(
        "replayed {replayed} recorded exchanges; skipped {}:\n  {}",
        skipped.iter().map(Vec::len).sum::<usize>(),
        summary.join("\n  ")
    );
    assert!(
        failures.is_empty(),
        "{} of {replayed} exchanges differ from kube-apiserver:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
