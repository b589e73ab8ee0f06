//! eks-remedy: the library every eks-remedy Lambda function shares.
//!
//! The code follows one rhythm: gather facts (AWS, Kubernetes), decide with pure functions that
//! return a [`plan::Plan`], act on the plan (dry-run aware), and report the outcome to SNS.
//!
//! - [`events`]: the EventBridge event kinds eks-remedy accepts and their envelopes.
//! - [`config`]: configuration from the environment, shared by the Lambdas and the CLI.
//! - [`aws`] and [`access`]: AWS clients, instance facts and authenticated Kubernetes clients.
//! - [`token`]: the EKS bearer token.
//! - [`nodes`], [`drain`], [`incident`], [`lifecycle`]: the actions on the cluster and on EC2
//!   Auto Scaling.
//! - [`plan`]: the decision for one interruption notice.
//! - [`report`]: the notifications sent to SNS (Slack through Amazon Q Developer, and email).
//! - [`interruption`]: the node-interruption function's handler.
//! - [`pending`], [`cni`], [`maxpods`]: the pending-pods function: diagnosis of Pending pods,
//!   the VPC CNI's configuration and the max-pods calculator.
//! - [`volumes`]: the volume-attach function: Pod Identity for add-on controllers and volumes
//!   held by lost nodes.
//! - [`invocation`]: what every handler returns.

pub mod access;
pub mod aws;
pub mod cni;
pub mod config;
pub mod drain;
pub mod events;
pub mod incident;
pub mod interruption;
pub mod invocation;
pub mod lifecycle;
pub mod maxpods;
pub mod nodes;
pub mod pending;
pub mod plan;
pub mod report;
pub mod telemetry;
pub mod token;
pub mod volumes;
