//! dr-agent: the per-datacenter agent of milvus-dr.
//!
//! Subsystems, one folder each: [`milvus`] (the only code that speaks
//! Milvus), [`replication`] (capture, stream, apply), [`admin`] (the gRPC
//! API `drctl` uses), plus [`config`], [`tls`] and [`metrics`]. The binaries
//! in `src/bin/` are thin: they parse arguments and call [`agent::run`].
#![forbid(unsafe_code)]

pub mod config;
pub mod milvus;
pub mod replication;
pub mod tls;
