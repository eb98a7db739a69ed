//! dr-proto: the milvus-dr wire protocol.
//!
//! `pb` holds the code generated from `proto/milvusdr.proto`; [`tls`] is the
//! mutual TLS every party uses; the rest of this crate is the small set of
//! checks every receiver runs before acting on a message, so that a
//! malformed message becomes `Status::invalid_argument` instead of a
//! half-applied change.
#![forbid(unsafe_code)]
// `tonic::Status` is the error type of every gRPC handler; boxing it
// everywhere would only add noise.
#![allow(clippy::result_large_err)]

pub mod alert;
pub mod channel;
pub mod logging;
pub mod statefile;
pub mod systemd;
pub mod tls;

/// Milliseconds since the Unix epoch (wall clock: for what hosts report to
/// each other; leases use monotonic clocks).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("milvusdr.v1");
}

/// A configuration error of any milvus-dr program: which field, what is
/// wrong, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}; fix: {fix}")]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
    pub fix: String,
}

impl ConfigError {
    pub fn new(
        field: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            field: field.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// A message that fails validation on receipt.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {message}: {problem}")]
pub struct ProtocolError {
    pub message: &'static str,
    pub problem: String,
}

impl ProtocolError {
    pub fn new(message: &'static str, problem: impl Into<String>) -> Self {
        Self {
            message,
            problem: problem.into(),
        }
    }
}

impl From<ProtocolError> for tonic::Status {
    fn from(e: ProtocolError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// Checks a change batch before it is applied.
pub fn validate_batch(b: &pb::ChangeBatch) -> Result<(), ProtocolError> {
    let err = |p: &str| Err(ProtocolError::new("ChangeBatch", p));
    if b.epoch == 0 {
        return err("epoch must be at least 1");
    }
    if b.seq == 0 {
        return err("seq must be at least 1");
    }
    let has_rows = b.upserts.as_ref().is_some_and(|r| r.num_rows > 0)
        || b.inserts.as_ref().is_some_and(|r| r.num_rows > 0)
        || b.deletes
            .as_ref()
            .is_some_and(|k| !k.ints.is_empty() || !k.strs.is_empty());
    if has_rows && b.collection.is_empty() {
        return err("rows without a collection name");
    }
    for rows in [&b.upserts, &b.inserts].into_iter().flatten() {
        if rows.num_rows > 0 && rows.fields.is_empty() {
            return err("rows without field data");
        }
    }
    if let Some(k) = &b.deletes {
        if !k.ints.is_empty() && !k.strs.is_empty() {
            return err("deletes mix integer and string keys");
        }
    }
    if b.pass_snapshot_ms < 0 {
        return err("pass_snapshot_ms must not be negative");
    }
    for d in &b.ddl {
        if d.op.is_none() {
            return err("empty DDL operation");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> pb::ChangeBatch {
        pb::ChangeBatch {
            epoch: 1,
            seq: 1,
            collection: "c".into(),
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_minimal_batch() {
        assert_eq!(validate_batch(&batch()), Ok(()));
    }

    #[test]
    fn rejects_zero_epoch_and_seq() {
        let mut b = batch();
        b.epoch = 0;
        assert!(validate_batch(&b).unwrap_err().problem.contains("epoch"));
        let mut b = batch();
        b.seq = 0;
        assert!(validate_batch(&b).unwrap_err().problem.contains("seq"));
    }

    #[test]
    fn rejects_rows_without_fields_or_collection() {
        let mut b = batch();
        b.upserts = Some(pb::Rows {
            num_rows: 3,
            fields: vec![],
        });
        assert!(validate_batch(&b).is_err());
        let mut b = batch();
        b.collection.clear();
        b.deletes = Some(pb::Keys {
            ints: vec![1],
            strs: vec![],
        });
        assert!(validate_batch(&b).is_err());
    }

    #[test]
    fn status_is_invalid_argument() {
        let s: tonic::Status = ProtocolError::new("X", "bad").into();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
    }
}
