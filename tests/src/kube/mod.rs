//! A Kubernetes API server for tests: an in-memory store served over HTTP on 127.0.0.1 that
//! answers the calls eks-remedy makes as kube-apiserver v1.36 does (status codes, Status
//! bodies, selectors, patches, eviction with PodDisruptionBudgets, pagination, optimistic
//! concurrency, Events through core/v1 and events.k8s.io/v1, RBAC). Server-side apply is not
//! implemented. The conformance test replays recorded kube-apiserver exchanges against it.
//!
//! Beyond the API it can stand in for the parts of a cluster a drain depends on: a kubelet that
//! removes terminating pods after a delay, the attach/detach controller that removes a pod's
//! VolumeAttachments once it is gone, and the disruption controller that keeps
//! PodDisruptionBudget status current. It also counts requests and concurrent evictions and can
//! add latency, so tests can prove behaviour without timing assertions.

mod events;
mod gojson;
mod patch;
mod rbac;
mod selectors;
mod server;
mod status;
mod workloads;

pub use rbac::Rbac;
pub use server::{KubeServer, RequestRecord, SHIPPED_RBAC, ServerOptions, User};
