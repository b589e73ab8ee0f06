//! Benchmarks of the release functions, run by `tests/bench/run.sh`: they print numbers, they
//! assert nothing but that the work was done.
//!
//! - Cold start: the node-interruption binary started under the Runtime API test server, from
//!   process start to the response to an event it ignores (an instance EC2 does not know),
//!   against a Python drainer doing the same first call; interleaved, median of the rounds.
//! - Drain: a node of 110 pods on the Kubernetes test server with 20 ms added to every
//!   request and pods that go away once evicted; node-interruption from event to response,
//!   against `kubectl drain` on an identical node of the same server. Wall time and peak RSS.
//! - Burst: interruption warnings for many nodes of one cluster delivered at once to as many
//!   function processes (as Lambda scales out); time until every node is cordoned, and the
//!   Kubernetes and AWS requests per event.
//!
//! Everything runs on 127.0.0.1: moto (from `EKS_REMEDY_TEST_AWS_ENDPOINT`), the test servers
//! and the processes, which get fake credentials and no instance metadata.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::Utc;
use eks_remedy_tests::fault_proxy::{FaultProxy, Faults, Upstream};
use eks_remedy_tests::runtime_api::{RuntimeApi, credential_vars};
use eks_remedy_tests::world::{
    World, aws_node_daemonset, daemonset_pod, pod, sample, spot_warning,
};
use eks_remedy_tests::{KubeServer, ServerOptions};
use serde_json::{Value, json};

const USAGE: &str = "usage: bench --functions DIR --python PATH --drainer PATH --kubectl PATH \
    [--rounds N] [--drain-rounds N] [--pods N] [--burst N] [--only cold-start|drain|burst]";

struct Args {
    /// Where the release binaries are (`node-interruption`).
    functions: PathBuf,
    /// The Python of the venv with `kubernetes` and `boto3`.
    python: PathBuf,
    /// `tests/bench/drainer.py`.
    drainer: PathBuf,
    kubectl: PathBuf,
    rounds: usize,
    drain_rounds: usize,
    pods: usize,
    burst: usize,
    only: Option<String>,
}

fn args() -> Args {
    let mut args = Args {
        functions: PathBuf::new(),
        python: PathBuf::new(),
        drainer: PathBuf::new(),
        kubectl: PathBuf::from("/usr/bin/kubectl"),
        rounds: 20,
        drain_rounds: 3,
        pods: 110,
        burst: 100,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value\n{USAGE}"));
        let number = || value.parse::<usize>().unwrap_or_else(|_| panic!("{USAGE}"));
        match flag.as_str() {
            "--functions" => args.functions = value.into(),
            "--python" => args.python = value.into(),
            "--drainer" => args.drainer = value.into(),
            "--kubectl" => args.kubectl = value.into(),
            "--rounds" => args.rounds = number(),
            "--drain-rounds" => args.drain_rounds = number(),
            "--pods" => args.pods = number(),
            "--burst" => args.burst = number(),
            "--only" => args.only = Some(value),
            _ => panic!("unknown flag {flag}\n{USAGE}"),
        }
    }
    assert!(
        args.functions.join("node-interruption").is_file(),
        "no release node-interruption in {:?}\n{USAGE}",
        args.functions
    );
    args
}

#[tokio::main]
async fn main() {
    let args = args();
    println!("machine: {}", machine());
    println!("date: {}", Utc::now().format("%Y-%m-%d %H:%M UTC"));
    println!();
    let run = |section: &str| args.only.as_deref().is_none_or(|only| only == section);
    if run("cold-start") {
        cold_start(&args).await;
    }
    if run("drain") {
        drain(&args).await;
    }
    if run("burst") {
        burst(&args).await;
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| format!("{} GiB", (kb + (1 << 19)) >> 20))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores ({cpu}), {memory}, Linux")
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Peak resident set of a running process, from `/proc/PID/status` (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The spot warning of the AWS docs for an instance EC2 does not know, so the function
/// ignores it after its first AWS call.
fn unknown_instance_warning() -> Value {
    let mut event = sample("ec2-spot-instance-interruption-warning.json");
    event["time"] = json!(Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    event["region"] = json!("us-east-1");
    event["detail"]["instance-id"] = json!("i-0e5c0ffee0000dead");
    event["detail"]["instance-action"] = json!("terminate");
    event
}

/// Starts `command` while the event waits in `api`; returns the time from spawn to the
/// answer, and the answer.
async fn first_answer(
    api: &RuntimeApi,
    mut command: tokio::process::Command,
    event: Value,
) -> (Duration, Value) {
    command.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = None;
    let started = Instant::now();
    let (answer, ()) = tokio::join!(api.invoke(event, Duration::from_secs(60)), async {
        child = Some(command.spawn().expect("the function starts"));
    });
    let elapsed = started.elapsed();
    drop(child);
    let answer = answer.unwrap_or_else(|e| panic!("the invocation failed: {e}"));
    (elapsed, answer)
}

async fn cold_start(args: &Args) {
    let binary = args.functions.join("node-interruption");
    let mut rust = Vec::new();
    let mut python = Vec::new();
    // One round more than measured: the first warms the page cache and moto's EC2 backend.
    for round in 0..=args.rounds {
        let api = RuntimeApi::start("node-interruption")
            .await
            .expect("runtime API");
        let mut command = api.command(&binary);
        command.env("EKS_REMEDY_CLUSTERS", "*");
        let (took, answer) = first_answer(&api, command, unknown_instance_warning()).await;
        assert_eq!(answer["reports"][0]["outcome"], "ignored", "{answer}");
        if round > 0 {
            rust.push(took);
        }

        let api = RuntimeApi::start("python-drainer")
            .await
            .expect("runtime API");
        let mut command = api.command(&args.python);
        command.arg(&args.drainer);
        let (took, answer) = first_answer(&api, command, unknown_instance_warning()).await;
        assert_eq!(answer["reports"][0]["outcome"], "ignored", "{answer}");
        if round > 0 {
            python.push(took);
        }
    }
    let (rust_median, python_median) = (median(rust.clone()), median(python.clone()));
    println!(
        "## Cold start: process start to the response for an ignored event (median of {})",
        args.rounds
    );
    println!("| function | median | min | max |");
    println!("|---|---|---|---|");
    for (name, runs, m) in [
        ("node-interruption (Rust, release)", &rust, rust_median),
        (
            "Python drainer (boto3 + kubernetes)",
            &python,
            python_median,
        ),
    ] {
        println!(
            "| {name} | {} | {} | {} |",
            ms(m),
            ms(*runs.iter().min().unwrap_or(&m)),
            ms(*runs.iter().max().unwrap_or(&m))
        );
    }
    println!(
        "Python / Rust: {:.1}x",
        python_median.as_secs_f64() / rust_median.as_secs_f64()
    );
    println!();
}

/// A node with `pods` application pods and the two DaemonSet pods every EKS node runs.
async fn loaded_node(world: &World, pods: usize) -> String {
    let node = world.node(None).await;
    for i in 0..pods {
        world.kube.create(pod(
            "shop",
            &format!("{}-web-{i:03}", node.name),
            &node.name,
            "web",
        ));
    }
    world.kube.create(daemonset_pod(
        &format!("aws-node-{}", node.name),
        &node.name,
    ));
    world.kube.create(daemonset_pod(
        &format!("kube-proxy-{}", node.name),
        &node.name,
    ));
    node.instance_id
}

fn left_to_drain(world: &World, node: &str) -> usize {
    world
        .pods_on(node)
        .iter()
        .filter(|p| !p.starts_with("aws-node-") && !p.starts_with("kube-proxy-"))
        .count()
}

/// node-interruption drains the node of `instance` (named after it): event to response.
async fn drain_with_function(args: &Args, world: &World, instance: &str) -> (Duration, u64) {
    let api = RuntimeApi::start("node-interruption")
        .await
        .expect("runtime API");
    let mut command = api.command(args.functions.join("node-interruption"));
    command
        .envs(credential_vars(&world.sdk).await)
        .env("EKS_REMEDY_CLUSTERS", &world.cluster)
        .env("EKS_REMEDY_TOPIC_ARN", &world.topic_arn)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = command.spawn().expect("the function starts");
    let pid = child.id().expect("a pid");
    // Warm: the process has started and waits for its first event.
    while api.next_requests() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let started = Instant::now();
    let answer = api
        .invoke(
            spot_warning(world, instance, Utc::now()),
            Duration::from_secs(120),
        )
        .await
        .unwrap_or_else(|e| panic!("the drain failed: {e}"));
    let took = started.elapsed();

    let outcome = answer["reports"]
        .as_array()
        .and_then(|r| r.last())
        .map(|r| r["outcome"].clone());
    assert_eq!(outcome, Some(json!("drained")), "{answer}");
    assert_eq!(left_to_drain(world, instance), 0);
    let rss = peak_rss_kib(pid).unwrap_or_default();
    drop(child);
    (took, rss)
}

/// `kubectl drain` of the node of `instance`, with GNU time for its peak RSS.
async fn drain_with_kubectl(
    args: &Args,
    world: &World,
    instance: &str,
    kubeconfig: &Path,
) -> (Duration, u64) {
    let started = Instant::now();
    let output = tokio::process::Command::new("/usr/bin/time")
        .arg("-f")
        .arg("peak-rss-kib %M")
        .arg(&args.kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "drain",
            instance,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=120s",
        ])
        .env_clear()
        .env("HOME", std::env::temp_dir())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("kubectl runs");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "kubectl drain failed: {stderr}");
    assert_eq!(left_to_drain(world, instance), 0);
    let rss = stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak-rss-kib "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_default();
    (took, rss)
}

async fn drain(args: &Args) {
    let options = ServerOptions {
        latency: Duration::from_millis(20),
        kubelet_delay: Some(Duration::ZERO),
        ..ServerOptions::default()
    };
    let world = World::with_options("bench-drain", false, options).await;
    world.kube.create(aws_node_daemonset("v1.19.0", &[]));
    let front = discovery_front(world.kube.url()).await;
    let kubeconfig = std::env::temp_dir().join(format!(
        "eks-remedy-bench-{}.kubeconfig",
        std::process::id()
    ));
    let config = world
        .kube
        .kubeconfig("admin-token")
        .replace(&world.kube.url(), &front);
    std::fs::write(&kubeconfig, config).expect("kubeconfig");

    let mut function = Vec::new();
    let mut kubectl = Vec::new();
    for _ in 0..args.drain_rounds {
        let instance = loaded_node(&world, args.pods).await;
        function.push(drain_with_function(args, &world, &instance).await);
        let instance = loaded_node(&world, args.pods).await;
        kubectl.push(drain_with_kubectl(args, &world, &instance, &kubeconfig).await);
    }
    let _ = std::fs::remove_file(&kubeconfig);

    let summary = |runs: &[(Duration, u64)]| {
        let time = median(runs.iter().map(|r| r.0).collect());
        let rss = runs.iter().map(|r| r.1).max().unwrap_or_default();
        (time, rss)
    };
    let (f_time, f_rss) = summary(&function);
    let (k_time, k_rss) = summary(&kubectl);
    println!(
        "## Drain: {} pods, 20 ms per request, pods gone once evicted (median of {})",
        args.pods, args.drain_rounds
    );
    println!("| drainer | wall time | peak RSS |");
    println!("|---|---|---|");
    println!(
        "| node-interruption (event to response: EC2, EKS, drain, SNS) | {} | {} |",
        ms(f_time),
        mib(f_rss)
    );
    println!("| kubectl drain | {} | {} |", ms(k_time), mib(k_rss));
    println!(
        "node-interruption / kubectl drain: {:.3} ({:.1}x faster)",
        f_time.as_secs_f64() / k_time.as_secs_f64(),
        k_time.as_secs_f64() / f_time.as_secs_f64()
    );
    println!(
        "all runs (function, kubectl): {:?} / {:?}",
        function.iter().map(|r| ms(r.0)).collect::<Vec<_>>(),
        kubectl.iter().map(|r| ms(r.0)).collect::<Vec<_>>()
    );
    println!();
}

async fn burst(args: &Args) {
    let options = ServerOptions {
        latency: Duration::from_millis(20),
        kubelet_delay: Some(Duration::ZERO),
        ..ServerOptions::default()
    };
    let world = World::with_options("bench-burst", false, options).await;
    let mut instances = Vec::new();
    for _ in 0..args.burst {
        let node = world.node(None).await;
        world.kube.create(pod(
            "shop",
            &format!("{}-web", node.name),
            &node.name,
            "web",
        ));
        instances.push(node.instance_id);
    }
    let aws = FaultProxy::start(
        &eks_remedy_tests::aws::endpoint(),
        Upstream::Aws,
        Faults::none(),
    )
    .await
    .expect("recording proxy in front of moto");
    let credentials = credential_vars(&world.sdk).await;
    let mut apis = Vec::new();
    for _ in 0..args.burst {
        apis.push(
            RuntimeApi::start("node-interruption")
                .await
                .expect("runtime API"),
        );
    }
    world.kube.clear_requests();

    let started = Instant::now();
    let invocations =
        futures::future::join_all(apis.iter().zip(&instances).map(|(api, instance)| {
            let mut command = api.command(args.functions.join("node-interruption"));
            command
                .envs(credentials.iter().map(|(k, v)| (*k, v.as_str())))
                .env("AWS_ENDPOINT_URL", aws.url())
                .env("EKS_REMEDY_CLUSTERS", &world.cluster)
                .env("EKS_REMEDY_TOPIC_ARN", &world.topic_arn);
            let event = spot_warning(&world, instance, Utc::now());
            async move { first_answer(api, command, event).await }
        }));
    let cordoned = async {
        loop {
            if all_cordoned(&world.kube, &instances) {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let (answers, all_cordoned_after) = tokio::join!(invocations, cordoned);
    let all_answered_after = started.elapsed();
    let drained = answers
        .iter()
        .filter(|(_, a)| {
            a["reports"]
                .as_array()
                .and_then(|r| r.last())
                .map(|r| &r["outcome"])
                == Some(&json!("drained"))
        })
        .count();

    let kube_requests = world.kube.requests().len();
    let exchanges = aws.exchanges();
    let mut by_action = std::collections::BTreeMap::<String, usize>::new();
    for e in &exchanges {
        *by_action.entry(e.aws_action()).or_default() += 1;
    }
    let per = |n: usize| n as f64 / args.burst as f64;
    println!(
        "## Burst: {} spot warnings for {} nodes at once, one function process each, 20 ms per Kubernetes request",
        args.burst, args.burst
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!("| all nodes cordoned after | {} |", ms(all_cordoned_after));
    println!(
        "| all invocations answered after | {} |",
        ms(all_answered_after)
    );
    println!("| drained | {drained} of {} |", args.burst);
    println!(
        "| Kubernetes requests per event | {:.1} |",
        per(kube_requests)
    );
    println!("| AWS requests per event | {:.1} |", per(exchanges.len()));
    println!("AWS requests by action: {by_action:?}");

    // The AWS emulator answers one request at a time: its share of the time to cordon.
    let (describe_instances, describe_cluster) = moto_latency(&world, &instances[0]).await;
    println!(
        "moto, one request at a time: DescribeInstances {}, DescribeCluster {}; {} events need {} of it before the last cordon",
        ms(describe_instances),
        ms(describe_cluster),
        args.burst,
        ms((describe_instances + describe_cluster) * args.burst as u32)
    );
    println!();
}

/// Mean latency of moto's DescribeInstances and DescribeCluster, asked one after the other.
async fn moto_latency(world: &World, instance: &str) -> (Duration, Duration) {
    const TIMES: u32 = 20;
    let started = Instant::now();
    for _ in 0..TIMES {
        world
            .aws
            .ec2
            .describe_instances()
            .instance_ids(instance)
            .send()
            .await
            .expect("DescribeInstances");
    }
    let instances = started.elapsed() / TIMES;
    let started = Instant::now();
    for _ in 0..TIMES {
        world
            .aws
            .eks
            .describe_cluster()
            .name(&world.cluster)
            .send()
            .await
            .expect("DescribeCluster");
    }
    (instances, started.elapsed() / TIMES)
}

fn all_cordoned(kube: &KubeServer, instances: &[String]) -> bool {
    instances.iter().all(|i| {
        kube.get("v1", "Node", None, i)
            .is_some_and(|n| n["spec"]["unschedulable"] == true)
    })
}

/// What kubectl asks before it drains: the API discovery documents the test server does not
/// serve, for the resources a drain touches.
fn discovery(path: &str) -> Option<Value> {
    let resource = |name: &str, kind: &str, namespaced: bool, verbs: &[&str]| {
        json!({"name": name, "singularName": kind.to_lowercase(), "namespaced": namespaced,
            "kind": kind, "verbs": verbs})
    };
    let all = [
        "create", "delete", "get", "list", "patch", "update", "watch",
    ];
    let group = |name: &str| {
        let version = json!({"groupVersion": format!("{name}/v1"), "version": "v1"});
        json!({"name": name, "versions": [version], "preferredVersion": version})
    };
    match path {
        "/api" => Some(json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})),
        "/apis" => Some(json!({"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [group("apps"), group("policy")]})),
        "/api/v1" => Some(
            json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                resource("nodes", "Node", false, &all),
                resource("pods", "Pod", true, &all),
                {"name": "pods/eviction", "singularName": "", "namespaced": true, "group": "policy",
                    "version": "v1", "kind": "Eviction", "verbs": ["create"]},
            ]}),
        ),
        "/apis/apps/v1" => Some(json!({"kind": "APIResourceList", "groupVersion": "apps/v1",
            "resources": [resource("daemonsets", "DaemonSet", true, &all)]})),
        "/apis/policy/v1" => Some(
            json!({"kind": "APIResourceList", "groupVersion": "policy/v1",
            "resources": [resource("poddisruptionbudgets", "PodDisruptionBudget", true, &all)]}),
        ),
        _ => None,
    }
}

/// A front for kubectl on 127.0.0.1: discovery answered here, every other request forwarded
/// to the test server with the admin's token (one more loopback hop for kubectl than for
/// node-interruption).
async fn discovery_front(upstream: String) -> String {
    use axum::body::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a 127.0.0.1 port");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let client = client.clone();
        let upstream = upstream.clone();
        async move {
            if let Some(document) = discovery(request.uri().path()) {
                return axum::response::IntoResponse::into_response((
                    [("content-type", "application/json")],
                    document.to_string(),
                ));
            }
            let (mut parts, body) = request.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let path = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            parts.uri = format!("{upstream}{path}").parse().expect("upstream URI");
            parts.headers.remove("host");
            // kubectl sends no credentials over plain HTTP (client-go only sets them for TLS):
            // the front authenticates it as the admin, as a TLS endpoint would receive it.
            parts
                .headers
                .entry("authorization")
                .or_insert(http::HeaderValue::from_static("Bearer admin-token"));
            let answer = client
                .request(http::Request::from_parts(parts, Full::new(body)))
                .await
                .expect("the test server answers");
            let (parts, body) = answer.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            axum::response::IntoResponse::into_response((parts, body))
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}
