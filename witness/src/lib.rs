//! dr-witness: the witness quorum that decides which datacenter is primary.
//!
//! The decision cores ([`model`], [`decide`], [`role`], [`timing`]), the
//! failover messages on the wire ([`wire`]) and what clients of a witness
//! use ([`api`]) are pure and always built: agents link only these
//! (`default-features = false`). The witness process itself (openraft node,
//! redb log, gRPC service, metrics) is the `server` feature, on by default.
#![forbid(unsafe_code)]
// `tonic::Status` is the error type of every gRPC handler; boxing it
// everywhere would only add noise.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod config;
pub mod decide;
pub mod model;
pub mod role;
pub mod timing;
pub mod wire;

#[cfg(feature = "server")]
pub mod network;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
pub mod store;
