//! dr-witness: the witness quorum that decides which datacenter is primary.
#![forbid(unsafe_code)]

pub mod timing;
pub mod decide;
pub mod model;
pub mod role;
pub mod store;
pub mod config;
pub mod network;
pub mod service;
