//! dr-agent: the per-datacenter agent of milvus-dr.
//!
//! Subsystems, one module each: [`milvus`] (the only code that speaks
//! Milvus), [`replication`] (capture, stream, apply), [`admin`] (the gRPC
//! API `drctl` uses), [`drctl`] (the operator CLI's logic), plus
//! [`config`], [`tls`] and [`metrics`]. The binaries in `src/bin/` are thin:
//! they parse arguments and call into this library.
#![forbid(unsafe_code)]
// `tonic::Status` (176 bytes) is the error type of every gRPC handler and
// client call; boxing it everywhere would only add noise.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod agent;
pub mod alert;
pub mod aws;
pub mod backup;
pub mod client;
pub mod config;
pub mod dns;
pub mod drill;
pub mod failover;
pub mod frontdoor;
pub mod health;
pub use dr_proto::logging;
pub mod metrics;
pub mod milvus;
pub mod replication;
pub use dr_proto::tls;
