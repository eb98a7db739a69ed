//! dr-witness: the witness quorum that decides which datacenter is primary.
#![forbid(unsafe_code)]
// `tonic::Status` is the error type of every gRPC handler; boxing it
// everywhere would only add noise.
#![allow(clippy::result_large_err)]

pub mod config;
pub mod decide;
pub mod model;
pub mod network;
pub mod role;
pub mod service;
pub mod store;
pub mod timing;
