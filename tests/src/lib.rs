//! Test support for eks-remedy: a Kubernetes API server and a Lambda Runtime API server that
//! run in-process on 127.0.0.1, helpers for the moto AWS emulator, and builders for the test
//! world (clusters, nodes, pods, events).

pub use kube::{KubeServer, Rbac, RequestRecord, SHIPPED_RBAC, ServerOptions, User};

pub mod aws;
pub mod fault_proxy;
mod kube;
pub mod runtime_api;
pub mod world;
