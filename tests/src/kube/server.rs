//! The server: routing, authentication, the store and the built-in controllers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::events;
use super::gojson;
use super::patch;
use super::rbac::{Access, Rbac};
use crate::fault_proxy::{FaultProxy, Faults, Upstream};

/// The RBAC manifest eks-remedy ships: every test holds the functions to it.
pub const SHIPPED_RBAC: &str = include_str!("../../../infra/k8s/rbac.yaml");
use super::selectors::{LabelSelector, field_value, parse_fields};
use super::status::{self, Answer};
use super::workloads;

/// An authenticated user.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn new(name: &str, groups: &[&str]) -> Self {
        Self {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }
}

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Static bearer tokens.
    pub tokens: HashMap<String, User>,
    /// The user for well-formed EKS tokens (`k8s-aws-v1.` + a presigned STS URL).
    pub eks_token_user: Option<User>,
    /// Answer requests without a token as `system:anonymous` (403 on resources) instead of 401.
    pub anonymous_auth: bool,
    /// Terminating pods are removed this long after deletion (capped by their grace period);
    /// `None` leaves them terminating for ever, as a cluster without kubelets does.
    pub kubelet_delay: Option<Duration>,
    /// Keep PodDisruptionBudget status current, as kube-controller-manager does.
    pub disruption_controller: bool,
    /// Detach a pod's volumes (delete their VolumeAttachments) once the pod is gone, as the
    /// attach/detach controller and the CSI attacher do; off leaves them attached.
    pub attach_detach_controller: bool,
    /// Added to every request.
    pub latency: Duration,
    /// RBAC for users outside `system:masters`; `None` allows every authenticated user.
    pub rbac: Option<Arc<Rbac>>,
    /// Faults on the wire (throttling, server errors, resets, slow answers): when set at start,
    /// clients reach the server through a [`FaultProxy`] that injects them and records every
    /// request, faulted or not ([`KubeServer::exchanges`]).
    pub faults: Option<Faults>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        let mut tokens = HashMap::new();
        tokens.insert(
            "admin-token".to_owned(),
            User::new("lab-admin", &["system:masters", "system:authenticated"]),
        );
        Self {
            tokens,
            eks_token_user: Some(User::new(
                "eks-remedy",
                &["eks-remediators", "system:authenticated"],
            )),
            anonymous_auth: true,
            kubelet_delay: Some(Duration::from_millis(50)),
            disruption_controller: true,
            attach_detach_controller: true,
            latency: Duration::ZERO,
            rbac: Some(Arc::new(
                Rbac::from_yaml(SHIPPED_RBAC).expect("infra/k8s/rbac.yaml parses"),
            )),
            faults: None,
        }
    }
}

/// One request the server answered.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
    pub user: String,
    /// Authorization header value, kept so tests can check what clients sent.
    pub authorization: Option<String>,
}

#[derive(Default)]
struct World {
    objects: BTreeMap<(String, String, String), Value>,
    rv: u64,
    /// When a terminating pod is to be removed by the simulated kubelet.
    removals: HashMap<(String, String), Instant>,
}

struct Shared {
    world: Mutex<World>,
    options: Mutex<ServerOptions>,
    log: Mutex<Vec<RequestRecord>>,
    evictions_in_flight: AtomicUsize,
    max_evictions_in_flight: AtomicUsize,
}

/// A running test API server.
pub struct KubeServer {
    addr: SocketAddr,
    front: Option<FaultProxy>,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for KubeServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[derive(Clone, Copy)]
struct ResourceType {
    group: &'static str,
    version: &'static str,
    resource: &'static str,
    kind: &'static str,
    namespaced: bool,
}

const RESOURCES: &[ResourceType] = &[
    ResourceType {
        group: "",
        version: "v1",
        resource: "nodes",
        kind: "Node",
        namespaced: false,
    },
    ResourceType {
        group: "",
        version: "v1",
        resource: "pods",
        kind: "Pod",
        namespaced: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        resource: "namespaces",
        kind: "Namespace",
        namespaced: false,
    },
    ResourceType {
        group: "",
        version: "v1",
        resource: "events",
        kind: "Event",
        namespaced: true,
    },
    // The same Events, stored once (see `store_key`) and shown in the newer API's shape.
    ResourceType {
        group: events::GROUP,
        version: "v1",
        resource: "events",
        kind: "Event",
        namespaced: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        resource: "persistentvolumeclaims",
        kind: "PersistentVolumeClaim",
        namespaced: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        resource: "persistentvolumes",
        kind: "PersistentVolume",
        namespaced: false,
    },
    ResourceType {
        group: "",
        version: "v1",
        resource: "secrets",
        kind: "Secret",
        namespaced: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        resource: "configmaps",
        kind: "ConfigMap",
        namespaced: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        resource: "serviceaccounts",
        kind: "ServiceAccount",
        namespaced: true,
    },
    ResourceType {
        group: "policy",
        version: "v1",
        resource: "poddisruptionbudgets",
        kind: "PodDisruptionBudget",
        namespaced: true,
    },
    ResourceType {
        group: "storage.k8s.io",
        version: "v1",
        resource: "volumeattachments",
        kind: "VolumeAttachment",
        namespaced: false,
    },
    ResourceType {
        group: "apps",
        version: "v1",
        resource: "daemonsets",
        kind: "DaemonSet",
        namespaced: true,
    },
    ResourceType {
        group: "apps",
        version: "v1",
        resource: "deployments",
        kind: "Deployment",
        namespaced: true,
    },
    ResourceType {
        group: "apps",
        version: "v1",
        resource: "replicasets",
        kind: "ReplicaSet",
        namespaced: true,
    },
];

fn resource_for_kind(api_version: &str, kind: &str) -> Option<ResourceType> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    RESOURCES
        .iter()
        .copied()
        .find(|r| r.kind == kind && r.group == group && r.version == version)
}

fn api_version(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        rt.version.to_owned()
    } else {
        format!("{}/{}", rt.group, rt.version)
    }
}

fn store_key(rt: &ResourceType) -> String {
    // Events of both APIs are one resource in storage, kept as core/v1 Events.
    let group = if rt.kind == "Event" { "" } else { rt.group };
    format!("{group}/{}", rt.resource)
}

/// An object as stored: an Event of either API as kube-apiserver keeps core/v1 Events.
fn stored(rt: &ResourceType, object: Value) -> Value {
    if rt.kind == "Event" {
        events::to_storage(object, rt.group == events::GROUP)
    } else {
        object
    }
}

/// A stored object as `rt`'s API shows it (without kind and apiVersion).
fn served(rt: &ResourceType, object: Value) -> Value {
    if rt.kind == "Event" && rt.group == events::GROUP {
        events::to_v1(&object)
    } else {
        object
    }
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A parsed request path.
struct Target {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, resource, more @ ..] => (Some(ns.to_string()), {
            let mut v = vec![*resource];
            v.extend_from_slice(more);
            v
        }),
        other => (None, other.to_vec()),
    };
    let resource = *rest.first()?;
    let rt = RESOURCES
        .iter()
        .copied()
        .find(|r| r.group == group && r.version == version && r.resource == resource)?;
    if namespace.is_some() && !rt.namespaced {
        return None;
    }
    if rest.len() > 3 {
        return None;
    }
    Some(Target {
        rt,
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

fn query_map(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

impl KubeServer {
    /// Starts a server on 127.0.0.1 with an ephemeral port.
    pub async fn start(options: ServerOptions) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let front = match &options.faults {
            Some(faults) => Some(
                FaultProxy::start(
                    &format!("http://{addr}"),
                    Upstream::Kubernetes,
                    faults.clone(),
                )
                .await?,
            ),
            None => None,
        };
        let shared = Arc::new(Shared {
            world: Mutex::new(World::default()),
            options: Mutex::new(options),
            log: Mutex::new(Vec::new()),
            evictions_in_flight: AtomicUsize::new(0),
            max_evictions_in_flight: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let controllers = {
            let shared = shared.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    run_controllers(&shared);
                }
            })
        };
        Ok(Self {
            addr,
            front,
            shared,
            tasks: vec![server, controllers],
        })
    }

    /// `http://127.0.0.1:PORT`: the fault proxy's when faults are on.
    pub fn url(&self) -> String {
        match &self.front {
            Some(front) => front.url(),
            None => format!("http://{}", self.addr),
        }
    }

    /// Every request that reached the fault proxy, faulted or not (empty without faults).
    pub fn exchanges(&self) -> Vec<crate::fault_proxy::Exchange> {
        self.front
            .as_ref()
            .map(FaultProxy::exchanges)
            .unwrap_or_default()
    }

    /// Changes the options of the running server. The built-in controllers then run once with
    /// the new options before this returns, so a controller switched on has already acted.
    pub fn configure(&self, f: impl FnOnce(&mut ServerOptions)) {
        f(&mut self.shared.options.lock().unwrap());
        run_controllers(&self.shared);
    }

    /// Writes a kubeconfig for `token` and returns its text.
    pub fn kubeconfig(&self, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\nusers:\n- name: test\n  user:\n    token: {token}\n",
            self.url()
        )
    }

    /// A kube client authenticated as the admin.
    pub fn admin_client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.url().parse().expect("url"));
        config.auth_info.token = Some("admin-token".to_owned().into());
        kube::Client::try_from(config).expect("client")
    }

    /// Creates (or replaces) an object, filling metadata as the API server does.
    pub fn create(&self, object: Value) -> Value {
        let api_version = object["apiVersion"].as_str().unwrap_or("v1").to_owned();
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        let rt = resource_for_kind(&api_version, &kind)
            .unwrap_or_else(|| panic!("test server has no resource for {api_version} {kind}"));
        let mut world = self.shared.world.lock().unwrap();
        insert(&mut world, &rt, object)
    }

    /// Reads an object.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let rt = resource_for_kind(api_version, kind)?;
        let world = self.shared.world.lock().unwrap();
        world
            .objects
            .get(&(
                store_key(&rt),
                namespace.unwrap_or("").to_owned(),
                name.to_owned(),
            ))
            .map(|o| with_type(&rt, o.clone()))
    }

    /// Changes an object in place (bumping its resourceVersion); returns false when missing.
    pub fn update(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> bool {
        let Some(rt) = resource_for_kind(api_version, kind) else {
            return false;
        };
        let mut world = self.shared.world.lock().unwrap();
        let key = (
            store_key(&rt),
            namespace.unwrap_or("").to_owned(),
            name.to_owned(),
        );
        world.rv += 1;
        let rv = world.rv;
        match world.objects.get_mut(&key) {
            Some(object) => {
                f(object);
                object["metadata"]["resourceVersion"] = json!(rv.to_string());
                true
            }
            None => false,
        }
    }

    /// Removes an object at once.
    pub fn remove(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> bool {
        let Some(rt) = resource_for_kind(api_version, kind) else {
            return false;
        };
        let mut world = self.shared.world.lock().unwrap();
        world
            .objects
            .remove(&(
                store_key(&rt),
                namespace.unwrap_or("").to_owned(),
                name.to_owned(),
            ))
            .is_some()
    }

    /// Every object of a kind.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let Some(rt) = resource_for_kind(api_version, kind) else {
            return Vec::new();
        };
        let key = store_key(&rt);
        let world = self.shared.world.lock().unwrap();
        world
            .objects
            .iter()
            .filter(|((k, _, _), _)| *k == key)
            .map(|(_, o)| with_type(&rt, o.clone()))
            .collect()
    }

    /// The requests answered so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Forgets the request log and the concurrency high-water mark.
    pub fn clear_requests(&self) {
        self.shared.log.lock().unwrap().clear();
        self.shared
            .max_evictions_in_flight
            .store(0, Ordering::SeqCst);
    }

    /// The most eviction requests that were being served at the same time.
    pub fn max_concurrent_evictions(&self) -> usize {
        self.shared.max_evictions_in_flight.load(Ordering::SeqCst)
    }
}

fn with_type(rt: &ResourceType, object: Value) -> Value {
    let mut object = served(rt, object);
    if let Some(map) = object.as_object_mut() {
        let mut typed = serde_json::Map::new();
        typed.insert("kind".into(), json!(rt.kind));
        typed.insert("apiVersion".into(), json!(api_version(rt)));
        for (k, v) in std::mem::take(map) {
            if k != "kind" && k != "apiVersion" {
                typed.insert(k, v);
            }
        }
        *map = typed;
    }
    object
}

fn without_type(mut object: Value) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.remove("kind");
        map.remove("apiVersion");
    }
    object
}

fn insert(world: &mut World, rt: &ResourceType, object: Value) -> Value {
    let mut object = stored(rt, without_type(object));
    workloads::set_template_generation(rt.kind, None, &mut object);
    world.rv += 1;
    let meta = object["metadata"].as_object_mut().expect("metadata");
    meta.entry("uid")
        .or_insert_with(|| json!(uuid::Uuid::new_v4().to_string()));
    meta.entry("creationTimestamp")
        .or_insert_with(|| json!(now_rfc3339()));
    meta.insert("resourceVersion".into(), json!(world.rv.to_string()));
    if rt.kind == "Pod"
        || rt.kind == "Deployment"
        || rt.kind == "DaemonSet"
        || rt.kind == "PodDisruptionBudget"
    {
        meta.entry("generation").or_insert(json!(1));
    }
    let ns = if rt.namespaced {
        meta.get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_owned()
    } else {
        meta.remove("namespace");
        String::new()
    };
    if rt.namespaced {
        meta.insert("namespace".into(), json!(ns));
    }
    let name = meta["name"].as_str().unwrap_or_default().to_owned();
    if rt.kind == "Node" {
        normalise_node(&mut object);
    }
    world
        .objects
        .insert((store_key(rt), ns, name), object.clone());
    with_type(rt, object)
}

fn normalise_node(node: &mut Value) {
    if let Some(spec) = node.get_mut("spec").and_then(Value::as_object_mut) {
        if spec.get("unschedulable") == Some(&json!(false))
            || spec.get("unschedulable") == Some(&Value::Null)
        {
            spec.remove("unschedulable");
        }
        if spec
            .get("taints")
            .is_some_and(|t| t.as_array().is_some_and(|a| a.is_empty()) || t.is_null())
        {
            spec.remove("taints");
        }
    }
}

struct Request<'a> {
    method: &'a Method,
    target: Target,
    query: HashMap<String, String>,
    headers: &'a HeaderMap,
    body: &'a Bytes,
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let latency = shared.options.lock().unwrap().latency;
    let is_eviction = uri.path().ends_with("/eviction") && method == Method::POST;
    if is_eviction {
        let now = shared.evictions_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared
            .max_evictions_in_flight
            .fetch_max(now, Ordering::SeqCst);
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let (answer, user) = answer(&shared, &method, &uri, &headers, &body);
    if is_eviction {
        shared.evictions_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
    shared.log.lock().unwrap().push(RequestRecord {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or_default().to_owned(),
        status: answer.code,
        user,
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    let mut response = if answer.body.is_string() {
        (
            StatusCode::from_u16(answer.code).unwrap_or(StatusCode::OK),
            [("content-type", "text/plain; charset=utf-8")],
            answer.body.as_str().unwrap_or_default().to_owned(),
        )
            .into_response()
    } else {
        (
            StatusCode::from_u16(answer.code).unwrap_or(StatusCode::OK),
            [("content-type", "application/json")],
            answer.body.to_string(),
        )
            .into_response()
    };
    for (name, value) in answer.headers {
        if let Ok(v) = value.parse() {
            response.headers_mut().insert(name, v);
        }
    }
    response
}

fn authenticate(options: &ServerOptions, headers: &HeaderMap) -> Result<User, Answer> {
    let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return if options.anonymous_auth {
            Ok(User::new("system:anonymous", &["system:unauthenticated"]))
        } else {
            Err(status::unauthorized())
        };
    };
    let token = auth
        .strip_prefix("Bearer ")
        .ok_or_else(status::unauthorized)?;
    if let Some(user) = options.tokens.get(token) {
        return Ok(user.clone());
    }
    if let (Some(user), Some(encoded)) =
        (&options.eks_token_user, token.strip_prefix("k8s-aws-v1."))
        && valid_eks_token(encoded)
    {
        return Ok(user.clone());
    }
    Err(status::unauthorized())
}

/// What the aws-iam-authenticator checks before it calls STS: base64url of an https URL to a
/// regional STS host, GetCallerIdentity, signed headers exactly `host;x-k8s-aws-id`, and an
/// X-Amz-Date no older than 15 minutes.
fn valid_eks_token(encoded: &str) -> bool {
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded) else {
        return false;
    };
    let Ok(text) = String::from_utf8(bytes) else {
        return false;
    };
    let Ok(url) = url::Url::parse(&text) else {
        return false;
    };
    let host_ok = url.scheme() == "https"
        && url
            .host_str()
            .is_some_and(|h| h.starts_with("sts.") && h.ends_with(".amazonaws.com"));
    let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
    let fresh = q
        .get("X-Amz-Date")
        .and_then(|d| chrono::NaiveDateTime::parse_from_str(d, "%Y%m%dT%H%M%SZ").ok())
        .is_some_and(|d| (Utc::now().naive_utc() - d) < chrono::TimeDelta::minutes(15));
    host_ok
        && fresh
        && q.get("Action").map(String::as_str) == Some("GetCallerIdentity")
        && q.get("X-Amz-SignedHeaders").map(String::as_str) == Some("host;x-k8s-aws-id")
        && q.contains_key("X-Amz-Signature")
}

fn answer(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> (Answer, String) {
    let options = shared.options.lock().unwrap().clone();
    let user = match authenticate(&options, headers) {
        Ok(u) => u,
        Err(a) => return (a, String::new()),
    };
    let name = user.name.clone();
    let path = uri.path();
    match path {
        "/version" => {
            return (
                Answer::ok(
                    json!({"major": "1", "minor": "36", "emulationMajor": "1", "emulationMinor": "36", "minCompatibilityMajor": "1", "minCompatibilityMinor": "35", "gitVersion": "v1.36.2", "gitCommit": "test-server", "gitTreeState": "clean", "buildDate": now_rfc3339(), "goVersion": "go1.26.4", "compiler": "gc", "platform": "linux/amd64"}),
                ),
                name,
            );
        }
        "/readyz" | "/livez" | "/healthz" => return (Answer::with(200, json!("ok")), name),
        _ => {}
    }
    // Authorization comes first, also for resources this server does not serve (kube-apiserver
    // answers 403 to a forbidden request before it looks the resource up).
    let Some(info) = request_info(path) else {
        return (status::unknown_path(), name);
    };
    let verb = verb_for(method, info.name.is_some());
    let allowed = user.name != "system:anonymous"
        && options.rbac.as_ref().is_none_or(|rbac| {
            rbac.allows(
                &user,
                &Access {
                    verb,
                    group: info.group,
                    resource: info.resource,
                    subresource: info.subresource.unwrap_or(""),
                    namespace: info.namespace,
                    name: info.name,
                },
            )
        });
    if !allowed {
        return (
            status::forbidden(
                &user.name,
                verb,
                info.resource,
                info.subresource.unwrap_or(""),
                info.group,
                info.namespace,
                info.name,
            ),
            name,
        );
    }
    let Some(target) = parse_path(path) else {
        return (status::unknown_path(), name);
    };
    let request = Request {
        method,
        target,
        query: query_map(uri),
        headers,
        body,
    };
    // Controllers also run on a timer; running them here as well means every request sees a
    // reconciled world, as it would in a cluster where they react within milliseconds.
    run_controllers(shared);
    let mut world = shared.world.lock().unwrap();
    (route(&mut world, &options, request), name)
}

/// What a resource request names, whether or not this server serves the resource, as
/// kube-apiserver's request info reads the path: `/api/v1/…` or `/apis/GROUP/VERSION/…`, then
/// `namespaces/NS/` unless that is the namespace itself, then resource, name, subresource.
struct RequestInfo<'a> {
    group: &'a str,
    namespace: Option<&'a str>,
    resource: &'a str,
    name: Option<&'a str>,
    subresource: Option<&'a str>,
}

fn request_info(path: &str) -> Option<RequestInfo<'_>> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, more @ ..]
            if !more.is_empty() && !matches!(more[0], "status" | "finalize") =>
        {
            (Some(*ns), more)
        }
        ["namespaces", ns, ..] => (Some(*ns), rest),
        other => (None, other),
    };
    let (resource, more) = rest.split_first()?;
    Some(RequestInfo {
        group,
        namespace,
        resource,
        name: more.first().copied(),
        subresource: more.get(1).copied(),
    })
}

fn verb_for(method: &Method, named: bool) -> &'static str {
    match (method.as_str(), named) {
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", _) => "delete",
        _ => "get",
    }
}

fn route(world: &mut World, options: &ServerOptions, req: Request<'_>) -> Answer {
    let rt = req.target.rt;
    let ns = req.target.namespace.clone();
    match (
        req.method.as_str(),
        req.target.name.clone(),
        req.target.subresource.clone(),
    ) {
        ("GET", None, None) => list(world, &rt, ns.as_deref(), &req.query),
        ("GET", Some(name), None) => get(world, &rt, ns.as_deref(), &name),
        ("PATCH", Some(name), None) => patch_object(world, &rt, ns.as_deref(), &name, &req),
        ("PUT", Some(name), None) => put_object(world, &rt, ns.as_deref(), &name, &req),
        ("DELETE", Some(name), None) => {
            delete_object(world, options, &rt, ns.as_deref(), &name, &req)
        }
        ("POST", None, None) => create_object(world, &rt, ns.as_deref(), &req),
        ("POST", Some(name), Some(sub)) if rt.kind == "Pod" && sub == "eviction" => evict(
            world,
            options,
            ns.as_deref().unwrap_or("default"),
            &name,
            &req,
        ),
        _ => Answer::with(
            405,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "the server does not allow this method on the requested resource", "reason": "MethodNotAllowed", "details": {}, "code": 405}),
        ),
    }
}

fn key(rt: &ResourceType, ns: Option<&str>, name: &str) -> (String, String, String) {
    (store_key(rt), ns.unwrap_or("").to_owned(), name.to_owned())
}

fn get(world: &World, rt: &ResourceType, ns: Option<&str>, name: &str) -> Answer {
    match world.objects.get(&key(rt, ns, name)) {
        Some(o) => Answer::ok(with_type(rt, o.clone())),
        None => status::not_found(rt.resource, rt.group, name),
    }
}

/// Field labels each resource supports, with the legacy aliases kube-apiserver accepts.
fn field_label(rt: &ResourceType, field: &str) -> Result<String, String> {
    let supported: &[&str] = match rt.kind {
        "Node" => &["metadata.name", "spec.unschedulable"],
        "Pod" => &[
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "Event" => return events::field_label(rt.group, field),
        "VolumeAttachment" => {
            return if matches!(field, "metadata.name" | "metadata.namespace") {
                Ok(field.to_owned())
            } else {
                Err(format!(
                    "\"{field}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
                ))
            };
        }
        _ => &["metadata.name", "metadata.namespace"],
    };
    let field = if rt.kind == "Pod" && field == "spec.host" {
        "spec.nodeName"
    } else {
        field
    };
    if supported.contains(&field) {
        Ok(field.to_owned())
    } else {
        Err(format!("field label not supported: {field}"))
    }
}

fn list(
    world: &World,
    rt: &ResourceType,
    ns: Option<&str>,
    query: &HashMap<String, String>,
) -> Answer {
    let labels =
        match LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or("")) {
            Ok(s) => s,
            Err(e) => return status::bad_request(&e),
        };
    let fields = match parse_fields(query.get("fieldSelector").map(String::as_str).unwrap_or("")) {
        Ok(f) => f,
        Err(e) => return status::bad_request(&e),
    };
    let mut resolved = Vec::new();
    for f in &fields {
        match field_label(rt, &f.field) {
            Ok(field) => resolved.push((field, f.value.clone(), f.negated)),
            Err(e) => return status::bad_request(&e),
        }
    }
    let limit: usize = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
    let (start, list_rv) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => match decode_continue(token) {
            Ok((start, rv)) => (Some(start), rv),
            Err(e) => return status::bad_request(&format!("invalid continue token: {e}")),
        },
        None => (None, world.rv),
    };

    // Objects in storage order: keys relative to the listed scope, as etcd keys are to the
    // resource prefix ("ns/name" across namespaces, "name" within one or for cluster objects).
    let store = store_key(rt);
    let mut candidates: Vec<(String, &Value)> = world
        .objects
        .iter()
        .filter(|((k, n, _), _)| *k == store && ns.is_none_or(|ns| ns == n))
        .map(|((_, n, name), o)| {
            let key = if n.is_empty() || ns.is_some() {
                name.clone()
            } else {
                format!("{n}/{name}")
            };
            (key, o)
        })
        .filter(|(key, _)| start.as_deref().is_none_or(|s| key.as_str() >= s))
        .collect();
    candidates.sort_by(|a, b| a.0.cmp(&b.0));

    let empty = serde_json::Map::new();
    let selected = |o: &Value| {
        labels.matches(o["metadata"]["labels"].as_object().unwrap_or(&empty))
            && resolved.iter().all(|(field, value, negated)| {
                let actual = match (rt.kind, field.as_str()) {
                    ("Node", "spec.unschedulable") => o["spec"]["unschedulable"]
                        .as_bool()
                        .unwrap_or(false)
                        .to_string(),
                    ("Event", field) => events::selectable(o, field),
                    _ => field_value(o, field),
                };
                (actual == *value) != *negated
            })
    };
    let mut items = Vec::new();
    let mut scanned = 0;
    for (_, o) in &candidates {
        if limit > 0 && items.len() == limit {
            break;
        }
        scanned += 1;
        if selected(o) {
            items.push(served(rt, (*o).clone()));
        }
    }

    // A full page continues while storage holds more objects after it, whether or not they
    // match: with selectors the next page can turn out empty. The count of the rest is only
    // given without selectors.
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    let rest = candidates.len() - scanned;
    if limit > 0 && items.len() == limit && rest > 0 {
        let last = &candidates[scanned - 1].0;
        metadata["continue"] = json!(encode_continue(last, list_rv));
        let unfiltered =
            fields.is_empty() && query.get("labelSelector").is_none_or(|l| l.is_empty());
        if unfiltered {
            metadata["remainingItemCount"] = json!(rest);
        }
    }
    Answer::ok(json!({
        "kind": format!("{}List", rt.kind),
        "apiVersion": api_version(rt),
        "metadata": metadata,
        "items": items,
    }))
}

/// A continue token as kube-apiserver writes it: unpadded base64url of
/// `{"v":"meta.k8s.io/v1","rv":N,"start":"<last key>\u0000"}`.
fn encode_continue(last_key: &str, rv: u64) -> String {
    let token = format!(
        "{{\"v\":\"meta.k8s.io/v1\",\"rv\":{rv},\"start\":{}}}",
        Value::String(format!("{last_key}\u{0}"))
    );
    CONTINUE_ENCODING.encode(token)
}

/// Go's `base64.RawURLEncoding`: unpadded base64url that ignores stray trailing bits.
const CONTINUE_ENCODING: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
);

/// The start key and resourceVersion of a continue token, or why it is not valid (in
/// kube-apiserver's words).
fn decode_continue(token: &str) -> Result<(String, u64), String> {
    let invalid = "continue key is not valid";
    let bytes = CONTINUE_ENCODING.decode(token).map_err(|e| {
        let at = match e {
            base64::DecodeError::InvalidByte(at, _)
            | base64::DecodeError::InvalidLastSymbol(at, _) => at,
            base64::DecodeError::InvalidLength(at) => at,
            base64::DecodeError::InvalidPadding => token.len(),
        };
        format!("{invalid}: illegal base64 data at input byte {at}")
    })?;
    if let Some(error) = gojson::syntax_error(&bytes) {
        return Err(format!("{invalid}: {error}"));
    }
    let value: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let version = value["v"].as_str().unwrap_or_default();
    if version != "meta.k8s.io/v1" {
        return Err(format!(
            "{invalid}: server does not recognize this encoded version {version}"
        ));
    }
    let rv = value["rv"].as_u64().filter(|rv| *rv > 0).ok_or_else(|| {
        format!("{invalid}: incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
    })?;
    let start = value["start"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{invalid}: encoded start key empty (version meta.k8s.io/v1)"))?;
    Ok((start.to_owned(), rv))
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned()
}

fn dry_run(query: &HashMap<String, String>) -> bool {
    query.get("dryRun").is_some_and(|v| v == "All")
}

fn patch_object(
    world: &mut World,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    req: &Request<'_>,
) -> Answer {
    let ct = content_type(req.headers);
    // Server-side apply is not implemented beyond this check (other applies get the 415 below).
    if ct == "application/apply-patch+yaml"
        && req.query.get("fieldManager").is_none_or(|m| m.is_empty())
    {
        return status::field_manager_required();
    }
    if !matches!(
        ct.as_str(),
        "application/merge-patch+json"
            | "application/strategic-merge-patch+json"
            | "application/json-patch+json"
    ) {
        return status::failure(
            415,
            "UnsupportedMediaType",
            "415: Unsupported Media Type",
            Some(json!({})),
        );
    }
    let k = key(rt, ns, name);
    let Some(current) = world.objects.get(&k).cloned() else {
        return status::not_found(rt.resource, rt.group, name);
    };
    let patch_doc: Value = match serde_json::from_slice(req.body) {
        Ok(v) => v,
        Err(_) => {
            let error = gojson::syntax_error(req.body).unwrap_or_else(|| "invalid JSON".into());
            return status::bad_request(&format!("error decoding patch: {error}"));
        }
    };
    let mut updated = with_type(rt, current.clone());
    match ct.as_str() {
        "application/json-patch+json" => {
            if patch::json(&mut updated, &patch_doc).is_err() {
                return status::patch_rejected();
            }
        }
        other => {
            if let Some(rv) = patch_doc
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                && Some(rv) != current["metadata"]["resourceVersion"].as_str()
            {
                return status::conflict_modified(rt.resource, rt.group, name);
            }
            if other == "application/merge-patch+json" {
                patch::merge(&mut updated, &patch_doc);
            } else {
                patch::strategic(&mut updated, &patch_doc);
            }
        }
    }
    if let Some(error) = type_error(rt, &updated) {
        return status::invalid_patch_result(&updated, &error);
    }
    commit_update(world, rt, &k, current, updated, dry_run(&req.query))
}

/// Go's decoding error for a patched object that no longer fits its type, for the fields
/// eks-remedy writes.
fn type_error(rt: &ResourceType, object: &Value) -> Option<String> {
    let unschedulable = object.pointer("/spec/unschedulable")?;
    let found = match unschedulable {
        Value::Bool(_) | Value::Null => return None,
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    (rt.kind == "Node").then(|| {
        format!(
            "json: cannot unmarshal {found} into Go struct field NodeSpec.spec.unschedulable of type bool"
        )
    })
}

fn commit_update(
    world: &mut World,
    rt: &ResourceType,
    k: &(String, String, String),
    current: Value,
    updated: Value,
    dry: bool,
) -> Answer {
    let name = k.2.clone();
    let mut updated = stored(rt, without_type(updated));
    if rt.kind == "Node" {
        normalise_node(&mut updated);
        if let Err(answer) = validate_node(&name, &updated) {
            return answer;
        }
    }
    if let Err(answer) = workloads::validate(rt.kind, rt.group, &name, &updated) {
        return answer;
    }
    workloads::set_template_generation(rt.kind, Some(&current), &mut updated);
    if updated["metadata"]["name"] != current["metadata"]["name"]
        || updated["metadata"]["uid"] != current["metadata"]["uid"]
    {
        return status::bad_request("metadata.name and metadata.uid cannot be changed");
    }
    // Keep the server-owned fields, then compare: a no-op write keeps the resourceVersion.
    updated["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
    if updated == current {
        return Answer::ok(with_type(rt, current));
    }
    if matches!(rt.kind, "Deployment" | "DaemonSet") && updated["spec"] != current["spec"] {
        let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
        updated["metadata"]["generation"] = json!(generation + 1);
    }
    if dry {
        return Answer::ok(with_type(rt, updated));
    }
    world.rv += 1;
    updated["metadata"]["resourceVersion"] = json!(world.rv.to_string());
    // Removing the last finalizer of an object whose deletion waits only for finalizers (no
    // grace period left) completes the deletion; the answer is its final state.
    let meta = &updated["metadata"];
    let finalized = !meta["deletionTimestamp"].is_null()
        && meta["deletionGracePeriodSeconds"].as_i64().unwrap_or(0) == 0
        && meta["finalizers"].as_array().is_none_or(|f| f.is_empty());
    if finalized {
        world.objects.remove(k);
    } else {
        world.objects.insert(k.clone(), updated.clone());
    }
    Answer::ok(with_type(rt, updated))
}

fn validate_node(name: &str, node: &Value) -> Result<(), Answer> {
    let Some(taints) = node.pointer("/spec/taints").and_then(Value::as_array) else {
        return Ok(());
    };
    let mut causes = Vec::new();
    let mut seen = HashSet::new();
    for (i, t) in taints.iter().enumerate() {
        let effect = t["effect"].as_str().unwrap_or_default();
        if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            let msg = format!(
                "Unsupported value: \"{effect}\": supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\""
            );
            for _ in 0..2 {
                causes.push((
                    "FieldValueNotSupported".to_owned(),
                    format!("metadata.taints[{i}].effect"),
                    msg.clone(),
                ));
            }
        }
        if !seen.insert((
            t["key"].as_str().unwrap_or_default().to_owned(),
            effect.to_owned(),
        )) {
            let msg = format!(
                "Duplicate value: {{\"Key\":{},\"Value\":{},\"Effect\":{},\"TimeAdded\":null}}: taints must be unique by key and effect pair",
                t["key"],
                t.get("value").cloned().unwrap_or(json!("")),
                t["effect"]
            );
            for _ in 0..2 {
                causes.push((
                    "FieldValueDuplicate".to_owned(),
                    format!("metadata.taints[{i}]"),
                    msg.clone(),
                ));
            }
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(status::invalid("Node", name, causes))
    }
}

fn put_object(
    world: &mut World,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    req: &Request<'_>,
) -> Answer {
    let k = key(rt, ns, name);
    let Some(current) = world.objects.get(&k).cloned() else {
        return status::not_found(rt.resource, rt.group, name);
    };
    let mut body = match decode_body(req.body) {
        Ok(v) => v,
        Err(answer) => return answer,
    };
    match body
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
    {
        Some(rv) if Some(rv) != current["metadata"]["resourceVersion"].as_str() => {
            return status::conflict_modified(rt.resource, rt.group, name);
        }
        _ => {}
    }
    body["metadata"]["uid"] = current["metadata"]["uid"].clone();
    body["metadata"]["creationTimestamp"] = current["metadata"]["creationTimestamp"].clone();
    // Status belongs to the status subresource: a PUT to the object ignores it.
    if has_status_subresource(rt) {
        match current.get("status") {
            Some(status) => body["status"] = status.clone(),
            None => {
                body.as_object_mut().map(|o| o.remove("status"));
            }
        }
    }
    commit_update(world, rt, &k, current, body, dry_run(&req.query))
}

fn has_status_subresource(rt: &ResourceType) -> bool {
    !matches!(rt.kind, "Event" | "ServiceAccount" | "Secret" | "ConfigMap")
}

fn create_object(
    world: &mut World,
    rt: &ResourceType,
    ns: Option<&str>,
    req: &Request<'_>,
) -> Answer {
    let mut body = match decode_body(req.body) {
        Ok(v) => v,
        Err(answer) => return answer,
    };
    let name = body
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if let Some(ns) = ns {
        body["metadata"]["namespace"] = json!(ns);
    }
    if world.objects.contains_key(&key(rt, ns, &name)) {
        return status::already_exists(rt.resource, rt.group, name.as_str());
    }
    // A new PodDisruptionBudget starts with an empty status (zeros, which the API does not
    // omit) until the disruption controller has seen it.
    if rt.kind == "PodDisruptionBudget" {
        body["status"] = json!({"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0});
    }
    // A VolumeAttachment's status belongs to the attacher; it starts unattached.
    if rt.kind == "VolumeAttachment" {
        body["status"] = json!({"attached": false});
    }
    if let Err(answer) = workloads::validate(rt.kind, rt.group, &name, &body) {
        return answer;
    }
    let created = insert(world, rt, body);
    Answer::with(201, created)
}

/// A request body as JSON, or the 400 kube-apiserver answers for one it cannot parse.
fn decode_body(body: &[u8]) -> Result<Value, Answer> {
    serde_json::from_slice(body).map_err(|_| {
        let error = gojson::syntax_error(body).unwrap_or_else(|| "invalid JSON".to_owned());
        status::bad_request(&format!(
            "couldn't get version/kind; json parse error: {error}"
        ))
    })
}

/// `DeleteOptions` from the body or the query.
fn delete_options(req: &Request<'_>) -> Value {
    let mut options: Value = serde_json::from_slice(req.body).unwrap_or_else(|_| json!({}));
    if let Some(g) = req
        .query
        .get("gracePeriodSeconds")
        .and_then(|g| g.parse::<i64>().ok())
    {
        options["gracePeriodSeconds"] = json!(g);
    }
    options
}

fn precondition_failure(kind: &str, name: &str, what: &str, wanted: &str, actual: &str) -> Answer {
    let (label, likely) = if what == "uid" {
        ("UID", "deleted and then recreated")
    } else {
        ("ResourceVersion", "modified")
    };
    status::failure(
        409,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {kind} \"{name}\": the {label} in the precondition ({wanted}) does not match the {label} in record ({actual}). The object might have been {likely}"
        ),
        Some(json!({"name": name, "kind": kind})),
    )
}

fn check_preconditions(
    kind: &str,
    name: &str,
    object: &Value,
    options: &Value,
) -> Result<(), Answer> {
    if let Some(uid) = options
        .pointer("/preconditions/uid")
        .and_then(Value::as_str)
    {
        let actual = object["metadata"]["uid"].as_str().unwrap_or_default();
        if uid != actual {
            return Err(precondition_failure(kind, name, "uid", uid, actual));
        }
    }
    if let Some(rv) = options
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
    {
        let actual = object["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        if rv != actual {
            return Err(precondition_failure(
                kind,
                name,
                "resourceVersion",
                rv,
                actual,
            ));
        }
    }
    Ok(())
}

fn delete_object(
    world: &mut World,
    options: &ServerOptions,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    req: &Request<'_>,
) -> Answer {
    let k = key(rt, ns, name);
    let Some(current) = world.objects.get(&k).cloned() else {
        return status::not_found(rt.resource, rt.group, name);
    };
    let delete = delete_options(req);
    if let Err(a) = check_preconditions(rt.kind, name, &current, &delete) {
        return a;
    }
    let dry = dry_run(&req.query);
    if rt.kind == "Pod" {
        let grace = delete["gracePeriodSeconds"].as_i64();
        let (answer, _) = terminate_pod(world, options, &k, grace, dry, None);
        return answer;
    }
    let has_finalizers = current["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    if dry {
        return Answer::ok(with_type(rt, current));
    }
    if has_finalizers {
        let mut updated = current.clone();
        if updated["metadata"]["deletionTimestamp"].is_null() {
            world.rv += 1;
            updated["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            updated["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            updated["metadata"]["resourceVersion"] = json!(world.rv.to_string());
            world.objects.insert(k, updated.clone());
        }
        return Answer::ok(with_type(rt, updated));
    }
    world.objects.remove(&k);
    Answer::ok(with_type(rt, current))
}

/// Deletes a pod as kube-apiserver's graceful deletion does. A scheduled pod that has not
/// finished gets `deletionTimestamp` = now + grace, `deletionGracePeriodSeconds` and a
/// generation bump, and stays Terminating until its kubelet is done; a pod never scheduled, a pod
/// in a terminal phase, and grace 0 go at once. Deleting a Terminating pod again only shortens
/// its grace. The answer is the pod as deleted (its last state when it is gone, the would-be
/// state on a dry run). Returns the answer and whether the pod is gone.
fn terminate_pod(
    world: &mut World,
    options: &ServerOptions,
    k: &(String, String, String),
    grace: Option<i64>,
    dry: bool,
    condition: Option<Value>,
) -> (Answer, bool) {
    let rt = RESOURCES[1];
    let current = world.objects.get(k).cloned().expect("pod exists");
    let scheduled = current
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let finished = matches!(
        current.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    let mut grace = grace
        .or_else(|| {
            current
                .pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(30)
        .max(0);
    if !scheduled || finished {
        grace = 0;
    }

    let mut updated = current.clone();
    let deletion_time = Utc::now() + chrono::TimeDelta::seconds(grace);
    let deletion_time = json!(deletion_time.to_rfc3339_opts(SecondsFormat::Secs, true));
    if current["metadata"]["deletionTimestamp"].is_null() {
        let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
        updated["metadata"]["generation"] = json!(generation + 1);
        if let Some(condition) = condition {
            let mut conditions: Vec<Value> = current["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["type"] != condition["type"])
                .cloned()
                .collect();
            conditions.push(condition);
            updated["status"]["conditions"] = json!(conditions);
        }
    } else {
        let left = current["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(0);
        if grace >= left {
            return (Answer::ok(with_type(&rt, current)), false);
        }
    }
    updated["metadata"]["deletionTimestamp"] = deletion_time;
    updated["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    if dry {
        return (Answer::ok(with_type(&rt, updated)), false);
    }

    world.rv += 1;
    updated["metadata"]["resourceVersion"] = json!(world.rv.to_string());
    let pod_key = (k.1.clone(), k.2.clone());
    if grace == 0 {
        world.objects.remove(k);
        world.removals.remove(&pod_key);
        pod_gone(world, &current, options.attach_detach_controller);
        return (Answer::ok(with_type(&rt, updated)), true);
    }
    world.objects.insert(k.clone(), updated.clone());
    if let Some(delay) = options.kubelet_delay {
        let at = Instant::now() + delay.min(Duration::from_secs(grace as u64));
        world
            .removals
            .entry(pod_key)
            .and_modify(|due| *due = (*due).min(at))
            .or_insert(at);
    }
    (Answer::ok(with_type(&rt, updated)), false)
}

/// What happens in the cluster once a pod is gone: the attach/detach controller detaches the
/// volumes its claims used on that node.
fn pod_gone(world: &mut World, pod: &Value, detach: bool) {
    if !detach {
        return;
    }
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let claims: Vec<String> = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| {
            v.pointer("/persistentVolumeClaim/claimName")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    if claims.is_empty() || node.is_empty() {
        return;
    }
    let pvs: HashSet<String> = claims
        .iter()
        .filter_map(|c| {
            world
                .objects
                .get(&("/persistentvolumeclaims".to_owned(), ns.clone(), c.clone()))
        })
        .filter_map(|pvc| {
            pvc.pointer("/spec/volumeName")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    world.objects.retain(|(k, _, _), va| {
        !(k == "storage.k8s.io/volumeattachments"
            && va.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node.as_str())
            && va
                .pointer("/spec/source/persistentVolumeName")
                .and_then(Value::as_str)
                .is_some_and(|pv| pvs.contains(pv)))
    });
}

fn run_controllers(shared: &Shared) {
    let (disruption, detach) = {
        let options = shared.options.lock().unwrap();
        (
            options.disruption_controller,
            options.attach_detach_controller,
        )
    };
    let mut world = shared.world.lock().unwrap();
    let now = Instant::now();
    let due: Vec<(String, String)> = world
        .removals
        .iter()
        .filter(|(_, at)| **at <= now)
        .map(|(k, _)| k.clone())
        .collect();
    for (ns, name) in due {
        world.removals.remove(&(ns.clone(), name.clone()));
        if let Some(pod) = world.objects.remove(&("/pods".to_owned(), ns, name)) {
            pod_gone(&mut world, &pod, detach);
        }
    }
    if disruption {
        update_pdb_status(&mut world);
    }
}

/// Whether a pod's Ready condition is True.
fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// How long the disruption controller waits for an evicted pod to start terminating before it
/// stops counting it as disrupted (kube-controller-manager's `DeletionTimeout`).
const DELETION_TIMEOUT: chrono::TimeDelta = chrono::TimeDelta::minutes(2);

fn selected_pods<'a>(world: &'a World, pdb: &Value, ns: &str) -> Vec<&'a Value> {
    let selector = selector_of(pdb);
    let empty = serde_json::Map::new();
    world
        .objects
        .iter()
        .filter(|((k, n, _), _)| k == "/pods" && n == ns)
        .filter(|(_, p)| {
            selector
                .as_ref()
                .is_some_and(|s| s.matches(p["metadata"]["labels"].as_object().unwrap_or(&empty)))
        })
        .map(|(_, p)| p)
        .collect()
}

fn selector_of(pdb: &Value) -> Option<LabelSelector> {
    let sel = pdb.pointer("/spec/selector")?;
    let mut parts: Vec<String> = sel["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    for expr in sel["matchExpressions"].as_array().into_iter().flatten() {
        let values: Vec<&str> = expr["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let key = expr["key"].as_str().unwrap_or_default();
        parts.push(match expr["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_owned(),
            _ => format!("!{key}"),
        });
    }
    LabelSelector::parse(&parts.join(",")).ok()
}

fn int_or_percent(value: &Value, total: i64) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s
            .strip_suffix('%')
            .and_then(|p| p.parse::<i64>().ok())
            .map(|p| (p * total + 99) / 100),
        _ => None,
    }
}

/// The disruption controller: for each budget, the pods its selector covers (Terminating ones
/// included), how many of them are healthy (Ready, not Terminating, not just evicted), how many
/// must stay healthy, and the `DisruptionAllowed` condition.
///
/// Limitation: `expectedPods` is the number of selected pods, also for `maxUnavailable` and
/// percentages, where kube-controller-manager uses the scale of the pods' controllers; a
/// budget over a workload with missing replicas allows more disruption here than in a cluster.
fn update_pdb_status(world: &mut World) {
    let now = Utc::now();
    let pdbs: Vec<((String, String, String), Value)> = world
        .objects
        .iter()
        .filter(|((k, _, _), _)| k == "policy/poddisruptionbudgets")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, pdb) in pdbs {
        let pods = selected_pods(world, &pdb, &k.1);
        let expected = pods.len() as i64;

        // An evicted pod counts as disrupted until it is seen Terminating (or gone), for at most
        // the deletion timeout.
        let mut disrupted = serde_json::Map::new();
        for (pod, at) in pdb["status"]["disruptedPods"]
            .as_object()
            .into_iter()
            .flatten()
        {
            let waiting = pods.iter().any(|p| {
                p["metadata"]["name"] == pod.as_str()
                    && p["metadata"]["deletionTimestamp"].is_null()
            });
            let fresh = at
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t + DELETION_TIMEOUT > now);
            if waiting && fresh {
                disrupted.insert(pod.clone(), at.clone());
            }
        }
        let healthy = pods
            .iter()
            .filter(|p| {
                p["metadata"]["deletionTimestamp"].is_null()
                    && pod_ready(p)
                    && !p["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| disrupted.contains_key(n))
            })
            .count() as i64;
        let desired = if let Some(min) = pdb.pointer("/spec/minAvailable") {
            int_or_percent(min, expected).unwrap_or(0)
        } else if let Some(max) = pdb.pointer("/spec/maxUnavailable") {
            (expected - int_or_percent(max, expected).unwrap_or(0)).max(0)
        } else {
            expected
        };
        let allowed = (healthy - desired).max(0);
        let generation = pdb["metadata"]["generation"].as_i64().unwrap_or(1);

        let mut updated = pdb.clone();
        let status = &mut updated["status"];
        status["observedGeneration"] = json!(generation);
        status["currentHealthy"] = json!(healthy);
        status["desiredHealthy"] = json!(desired);
        status["expectedPods"] = json!(expected);
        status["disruptionsAllowed"] = json!(allowed);
        if disrupted.is_empty() {
            status.as_object_mut().map(|s| s.remove("disruptedPods"));
        } else {
            status["disruptedPods"] = Value::Object(disrupted);
        }
        set_disruption_allowed_condition(&mut updated);
        if updated != pdb {
            world.rv += 1;
            updated["metadata"]["resourceVersion"] = json!(world.rv.to_string());
            world.objects.insert(k, updated);
        }
    }
}

/// Sets a budget's `DisruptionAllowed` condition from its `disruptionsAllowed`; the transition
/// time only moves when the condition's status does.
fn set_disruption_allowed_condition(pdb: &mut Value) {
    let allowed = pdb["status"]["disruptionsAllowed"].as_i64().unwrap_or(0) > 0;
    let (status, reason) = if allowed {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let generation = pdb["status"]["observedGeneration"].clone();
    let mut conditions: Vec<Value> = pdb["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let previous = conditions
        .iter()
        .position(|c| c["type"] == "DisruptionAllowed");
    let transition = match previous.map(|i| &conditions[i]) {
        Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
        _ => json!(now_rfc3339()),
    };
    let condition = json!({
        "type": "DisruptionAllowed",
        "status": status,
        "observedGeneration": generation,
        "lastTransitionTime": transition,
        "reason": reason,
        "message": "",
    });
    match previous {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
    pdb["status"]["conditions"] = json!(conditions);
}

fn evict(
    world: &mut World,
    options: &ServerOptions,
    ns: &str,
    name: &str,
    req: &Request<'_>,
) -> Answer {
    let body: Value = serde_json::from_slice(req.body).unwrap_or_else(|_| json!({}));
    let kind = body["kind"].as_str().unwrap_or("Eviction");
    if kind != "Eviction" && !body["kind"].is_null() {
        return status::bad_request(&format!(
            "{kind} in version \"{}\" cannot be handled as a Eviction: converting (v1.{kind}) to (policy.Eviction): unknown conversion",
            body["apiVersion"]
                .as_str()
                .unwrap_or("v1")
                .rsplit('/')
                .next()
                .unwrap_or("v1")
        ));
    }
    if body.pointer("/metadata/name").and_then(Value::as_str) != Some(name) {
        return status::bad_request("name in URL does not match name in Eviction object");
    }
    if let Some(body_ns) = body.pointer("/metadata/namespace").and_then(Value::as_str)
        && body_ns != ns
    {
        return status::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        );
    }
    let k = ("/pods".to_owned(), ns.to_owned(), name.to_owned());
    let Some(pod) = world.objects.get(&k).cloned() else {
        return status::not_found("pods", "", name);
    };
    let delete = body
        .get("deleteOptions")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Err(a) = check_preconditions("Pod", name, &pod, &delete) {
        return a;
    }
    let dry = dry_run(&req.query);

    // Pods that finished, never started or are already Terminating are deleted without asking
    // any budget; so are unready pods a budget lets go.
    let phase = pod.pointer("/status/phase").and_then(Value::as_str);
    let ignores_budgets = matches!(phase, Some("Succeeded" | "Failed" | "Pending"))
        || !pod["metadata"]["deletionTimestamp"].is_null();
    if !ignores_budgets {
        let empty = serde_json::Map::new();
        let labels = pod["metadata"]["labels"].as_object().unwrap_or(&empty);
        let pdbs: Vec<((String, String, String), Value)> = world
            .objects
            .iter()
            .filter(|((kk, n, _), p)| {
                kk == "policy/poddisruptionbudgets"
                    && n == ns
                    && selector_of(p).is_some_and(|s| s.matches(labels))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if pdbs.len() > 1 {
            return status::failure(
                500,
                "",
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                None,
            );
        }
        if let Some((pdb_key, pdb)) = pdbs.into_iter().next()
            && let Err(answer) = check_and_decrement(world, pdb_key, pdb, &pod, dry)
        {
            return answer;
        }
    }

    let condition = json!({"type": "DisruptionTarget", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339(), "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"});
    terminate_pod(
        world,
        options,
        &k,
        delete["gracePeriodSeconds"].as_i64(),
        dry,
        Some(condition),
    );
    status::success(201)
}

/// The budget check of an eviction: 429 while the budget is unprocessed or allows no disruption;
/// otherwise one disruption is used up and the pod recorded in `status.disruptedPods` (not on a
/// dry run). An unready pod passes without using one when the budget's
/// `unhealthyPodEvictionPolicy` lets it (`AlwaysAllow`, or by default while the budget holds).
fn check_and_decrement(
    world: &mut World,
    pdb_key: (String, String, String),
    pdb: Value,
    pod: &Value,
    dry: bool,
) -> Result<(), Answer> {
    let pdb_name = pdb_key.2.clone();
    let message = "Cannot evict pod as it would violate the pod's disruption budget.";
    let status_of = |field: &str| pdb["status"][field].as_i64().unwrap_or(0);
    let generation = pdb["metadata"]["generation"].as_i64().unwrap_or(1);
    if status_of("observedGeneration") < generation {
        let cause =
            format!("The disruption budget {pdb_name} is still being processed by the server.");
        let mut answer = status::failure(
            429,
            "TooManyRequests",
            message,
            Some(
                json!({"causes": [{"reason": "DisruptionBudget", "message": cause}], "retryAfterSeconds": 10}),
            ),
        );
        answer.headers.push(("retry-after", "10".into()));
        return Err(answer);
    }

    let (current, desired) = (status_of("currentHealthy"), status_of("desiredHealthy"));
    if !pod_ready(pod) {
        let unhealthy_may_go = match pdb["spec"]["unhealthyPodEvictionPolicy"].as_str() {
            Some("AlwaysAllow") => true,
            _ => current >= desired && desired > 0,
        };
        if unhealthy_may_go {
            return Ok(());
        }
    }

    let allowed = status_of("disruptionsAllowed");
    if allowed <= 0 {
        let cause = format!(
            "The disruption budget {pdb_name} needs {desired} healthy pods and has {current} currently"
        );
        return Err(status::failure(
            429,
            "TooManyRequests",
            message,
            Some(json!({"causes": [{"reason": "DisruptionBudget", "message": cause}]})),
        ));
    }
    if dry {
        return Ok(());
    }
    let mut updated = pdb;
    updated["status"]["disruptionsAllowed"] = json!(allowed - 1);
    if allowed == 1 {
        set_disruption_allowed_condition(&mut updated);
    }
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
    updated["status"]["disruptedPods"][pod_name] = json!(now_rfc3339());
    world.rv += 1;
    updated["metadata"]["resourceVersion"] = json!(world.rv.to_string());
    world.objects.insert(pdb_key, updated);
    Ok(())
}
