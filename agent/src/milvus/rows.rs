//! Columnar rows as Milvus returns them: primary keys, per-row content
//! hashes, and selecting rows out of a page.
//!
//! A row hash covers every column of the row (sorted by field name) with the
//! column's type, so two clusters hold the same row exactly when the hashes
//! agree (up to 2^-64 collisions).

use milvus::proto::schema::{
    field_data::Field, scalar_field::Data as S, vector_field::Data as V, ArrayArray, BoolArray,
    BytesArray, DoubleArray, FieldData, FloatArray, IntArray, JsonArray, LongArray, ScalarField,
    StringArray, VectorField,
};
use xxhash_rust::xxh3::Xxh3;

/// The type of a collection's primary key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PkType {
    Int,
    Str,
}

/// A primary key value. Ordered as Milvus orders them (numbers numerically,
/// strings bytewise).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pk {
    Int(i64),
    Str(String),
}

impl std::fmt::Display for Pk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pk::Int(v) => write!(f, "{v}"),
            Pk::Str(v) => write!(f, "{v:?}"),
        }
    }
}

impl Pk {
    /// Stable 64-bit hash of the key alone (digest bucketing).
    pub fn hash64(&self) -> u64 {
        match self {
            Pk::Int(v) => xxhash_rust::xxh3::xxh3_64_with_seed(&v.to_le_bytes(), 1),
            Pk::Str(s) => xxhash_rust::xxh3::xxh3_64_with_seed(s.as_bytes(), 2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("malformed row data: {0}")]
pub struct RowsError(pub String);

/// Number of rows in a set of columns (they must agree).
pub fn num_rows(fields: &[FieldData]) -> Result<usize, RowsError> {
    let mut n: Option<usize> = None;
    for f in fields {
        let len = column_len(f)?;
        match n {
            None => n = Some(len),
            Some(m) if m != len => {
                return Err(RowsError(format!(
                    "column {} has {len} rows, others {m}",
                    f.field_name
                )))
            }
            _ => {}
        }
    }
    Ok(n.unwrap_or(0))
}

fn scalar_len(s: &ScalarField) -> usize {
    match &s.data {
        Some(S::BoolData(a)) => a.data.len(),
        Some(S::IntData(a)) => a.data.len(),
        Some(S::LongData(a)) => a.data.len(),
        Some(S::FloatData(a)) => a.data.len(),
        Some(S::DoubleData(a)) => a.data.len(),
        Some(S::StringData(a)) => a.data.len(),
        Some(S::BytesData(a)) => a.data.len(),
        Some(S::ArrayData(a)) => a.data.len(),
        Some(S::JsonData(a)) => a.data.len(),
        _ => 0,
    }
}

/// Bytes per row of a fixed-width vector column.
fn vector_row_width(v: &VectorField) -> Result<usize, RowsError> {
    let dim = usize::try_from(v.dim).map_err(|_| RowsError("negative dim".into()))?;
    Ok(match &v.data {
        Some(V::FloatVector(_)) => dim,
        Some(V::BinaryVector(_)) => dim.div_ceil(8),
        Some(V::Float16Vector(_)) | Some(V::Bfloat16Vector(_)) => dim * 2,
        Some(V::Int8Vector(_)) => dim,
        _ => 0,
    })
}

pub fn column_len(f: &FieldData) -> Result<usize, RowsError> {
    Ok(match &f.field {
        Some(Field::Scalars(s)) => scalar_len(s),
        Some(Field::Vectors(v)) => {
            let w = vector_row_width(v)?;
            if w == 0 {
                return Err(RowsError(format!(
                    "unsupported vector column {}",
                    f.field_name
                )));
            }
            let total = match &v.data {
                Some(V::FloatVector(a)) => a.data.len(),
                Some(V::BinaryVector(b))
                | Some(V::Float16Vector(b))
                | Some(V::Bfloat16Vector(b))
                | Some(V::Int8Vector(b)) => b.len(),
                _ => 0,
            };
            total / w
        }
        None => 0,
        Some(_) => {
            return Err(RowsError(format!(
                "unsupported column type in {}",
                f.field_name
            )))
        }
    })
}

/// The primary-key column's values.
pub fn primary_keys(fields: &[FieldData], pk_field: &str) -> Result<Vec<Pk>, RowsError> {
    let col = fields
        .iter()
        .find(|f| f.field_name == pk_field)
        .ok_or_else(|| RowsError(format!("primary key column {pk_field} missing")))?;
    match &col.field {
        Some(Field::Scalars(ScalarField {
            data: Some(S::LongData(a)),
            ..
        })) => Ok(a.data.iter().map(|v| Pk::Int(*v)).collect()),
        Some(Field::Scalars(ScalarField {
            data: Some(S::StringData(a)),
            ..
        })) => Ok(a.data.iter().map(|v| Pk::Str(v.clone())).collect()),
        _ => Err(RowsError(format!(
            "primary key column {pk_field} is neither Int64 nor VarChar"
        ))),
    }
}

fn hash_scalar_at(h: &mut Xxh3, s: &ScalarField, i: usize) {
    match &s.data {
        Some(S::BoolData(a)) => {
            h.update(&[1, a.data[i] as u8]);
        }
        Some(S::IntData(a)) => {
            h.update(&[2]);
            h.update(&a.data[i].to_le_bytes());
        }
        Some(S::LongData(a)) => {
            h.update(&[3]);
            h.update(&a.data[i].to_le_bytes());
        }
        Some(S::FloatData(a)) => {
            h.update(&[4]);
            h.update(&a.data[i].to_bits().to_le_bytes());
        }
        Some(S::DoubleData(a)) => {
            h.update(&[5]);
            h.update(&a.data[i].to_bits().to_le_bytes());
        }
        Some(S::StringData(a)) => {
            h.update(&[6]);
            h.update(&(a.data[i].len() as u64).to_le_bytes());
            h.update(a.data[i].as_bytes());
        }
        Some(S::BytesData(a)) => {
            h.update(&[7]);
            h.update(&(a.data[i].len() as u64).to_le_bytes());
            h.update(&a.data[i]);
        }
        Some(S::JsonData(a)) => {
            h.update(&[8]);
            h.update(&(a.data[i].len() as u64).to_le_bytes());
            h.update(&a.data[i]);
        }
        Some(S::ArrayData(a)) => {
            h.update(&[9]);
            let inner = &a.data[i];
            let n = scalar_len(inner);
            h.update(&(n as u64).to_le_bytes());
            for j in 0..n {
                hash_scalar_at(h, inner, j);
            }
        }
        _ => {
            h.update(&[0]);
        }
    }
    if let Some(valid) = s.valid_data.get(i) {
        h.update(&[0xA0 | *valid as u8]);
    }
}

fn hash_vector_at(h: &mut Xxh3, v: &VectorField, i: usize) {
    let w = vector_row_width(v).unwrap_or(0);
    match &v.data {
        Some(V::FloatVector(a)) => {
            h.update(&[20]);
            // One update per row, not per float: much faster for wide vectors.
            let mut buf = [0u8; 4 * 64];
            for chunk in a.data[i * w..(i + 1) * w].chunks(64) {
                for (j, x) in chunk.iter().enumerate() {
                    buf[4 * j..4 * j + 4].copy_from_slice(&x.to_bits().to_le_bytes());
                }
                h.update(&buf[..4 * chunk.len()]);
            }
        }
        Some(V::BinaryVector(b)) => {
            h.update(&[21]);
            h.update(&b[i * w..(i + 1) * w]);
        }
        Some(V::Float16Vector(b)) | Some(V::Bfloat16Vector(b)) | Some(V::Int8Vector(b)) => {
            h.update(&[22]);
            h.update(&b[i * w..(i + 1) * w]);
        }
        _ => {}
    }
}

/// Content hash of every row: all columns, in field-name order.
pub fn row_hashes(fields: &[FieldData]) -> Result<Vec<u64>, RowsError> {
    let n = num_rows(fields)?;
    let mut cols: Vec<&FieldData> = fields.iter().collect();
    cols.sort_by(|a, b| a.field_name.cmp(&b.field_name));
    let mut out = Vec::with_capacity(n);
    let mut h = Xxh3::new();
    for i in 0..n {
        h.reset();
        for c in &cols {
            h.update(c.field_name.as_bytes());
            h.update(&[0xff]);
            match &c.field {
                Some(Field::Scalars(s)) => hash_scalar_at(&mut h, s, i),
                Some(Field::Vectors(v)) => hash_vector_at(&mut h, v, i),
                _ => {}
            }
        }
        // Never 0: the capture state uses 0 for "unknown".
        out.push(h.digest() | 1);
    }
    Ok(out)
}

fn take_scalar(s: &ScalarField, idx: &[usize]) -> ScalarField {
    fn pick<T: Clone>(v: &[T], idx: &[usize]) -> Vec<T> {
        idx.iter().map(|&i| v[i].clone()).collect()
    }
    let data = match &s.data {
        Some(S::BoolData(a)) => Some(S::BoolData(BoolArray {
            data: pick(&a.data, idx),
        })),
        Some(S::IntData(a)) => Some(S::IntData(IntArray {
            data: pick(&a.data, idx),
        })),
        Some(S::LongData(a)) => Some(S::LongData(LongArray {
            data: pick(&a.data, idx),
        })),
        Some(S::FloatData(a)) => Some(S::FloatData(FloatArray {
            data: pick(&a.data, idx),
        })),
        Some(S::DoubleData(a)) => Some(S::DoubleData(DoubleArray {
            data: pick(&a.data, idx),
        })),
        Some(S::StringData(a)) => Some(S::StringData(StringArray {
            data: pick(&a.data, idx),
        })),
        Some(S::BytesData(a)) => Some(S::BytesData(BytesArray {
            data: pick(&a.data, idx),
        })),
        Some(S::JsonData(a)) => Some(S::JsonData(JsonArray {
            data: pick(&a.data, idx),
        })),
        Some(S::ArrayData(a)) => Some(S::ArrayData(ArrayArray {
            data: pick(&a.data, idx),
            element_type: a.element_type,
        })),
        other => other.clone(),
    };
    ScalarField {
        data,
        valid_data: if s.valid_data.is_empty() {
            vec![]
        } else {
            idx.iter().map(|&i| s.valid_data[i]).collect()
        },
    }
}

fn take_vector(v: &VectorField, idx: &[usize]) -> VectorField {
    let w = vector_row_width(v).unwrap_or(0);
    let bytes = |b: &[u8]| -> Vec<u8> {
        let mut out = Vec::with_capacity(idx.len() * w);
        for &i in idx {
            out.extend_from_slice(&b[i * w..(i + 1) * w]);
        }
        out
    };
    let data = match &v.data {
        Some(V::FloatVector(a)) => {
            let mut out = Vec::with_capacity(idx.len() * w);
            for &i in idx {
                out.extend_from_slice(&a.data[i * w..(i + 1) * w]);
            }
            Some(V::FloatVector(FloatArray { data: out }))
        }
        Some(V::BinaryVector(b)) => Some(V::BinaryVector(bytes(b))),
        Some(V::Float16Vector(b)) => Some(V::Float16Vector(bytes(b))),
        Some(V::Bfloat16Vector(b)) => Some(V::Bfloat16Vector(bytes(b))),
        Some(V::Int8Vector(b)) => Some(V::Int8Vector(bytes(b))),
        other => other.clone(),
    };
    VectorField {
        dim: v.dim,
        data,
        valid_data: vec![],
    }
}

/// Appends the rows of `more` to `into`, column by column (matched by
/// name). Returns `false`, changing nothing, when the two do not have the
/// same columns of the same types.
pub fn append(into: &mut [FieldData], more: &[FieldData]) -> bool {
    fn same_kind(a: &FieldData, b: &FieldData) -> bool {
        match (&a.field, &b.field) {
            (Some(Field::Scalars(x)), Some(Field::Scalars(y))) => {
                x.valid_data.is_empty()
                    && y.valid_data.is_empty()
                    && std::mem::discriminant(&x.data) == std::mem::discriminant(&y.data)
                    && match (&x.data, &y.data) {
                        (Some(S::ArrayData(p)), Some(S::ArrayData(q))) => {
                            p.element_type == q.element_type
                        }
                        _ => true,
                    }
            }
            (Some(Field::Vectors(x)), Some(Field::Vectors(y))) => {
                x.dim == y.dim
                    && std::mem::discriminant(&x.data) == std::mem::discriminant(&y.data)
                    && matches!(
                        x.data,
                        Some(V::FloatVector(_))
                            | Some(V::BinaryVector(_))
                            | Some(V::Float16Vector(_))
                            | Some(V::Bfloat16Vector(_))
                            | Some(V::Int8Vector(_))
                    )
            }
            _ => false,
        }
    }
    if into.len() != more.len() {
        return false;
    }
    let mut pairs = Vec::with_capacity(into.len());
    for (i, a) in into.iter().enumerate() {
        let Some(j) = more.iter().position(|b| b.field_name == a.field_name) else {
            return false;
        };
        if !same_kind(a, &more[j]) {
            return false;
        }
        pairs.push((i, j));
    }
    for (i, j) in pairs {
        match (&mut into[i].field, &more[j].field) {
            (Some(Field::Scalars(x)), Some(Field::Scalars(y))) => match (&mut x.data, &y.data) {
                (Some(S::BoolData(a)), Some(S::BoolData(b))) => a.data.extend_from_slice(&b.data),
                (Some(S::IntData(a)), Some(S::IntData(b))) => a.data.extend_from_slice(&b.data),
                (Some(S::LongData(a)), Some(S::LongData(b))) => a.data.extend_from_slice(&b.data),
                (Some(S::FloatData(a)), Some(S::FloatData(b))) => a.data.extend_from_slice(&b.data),
                (Some(S::DoubleData(a)), Some(S::DoubleData(b))) => {
                    a.data.extend_from_slice(&b.data)
                }
                (Some(S::StringData(a)), Some(S::StringData(b))) => {
                    a.data.extend_from_slice(&b.data)
                }
                (Some(S::BytesData(a)), Some(S::BytesData(b))) => a.data.extend_from_slice(&b.data),
                (Some(S::JsonData(a)), Some(S::JsonData(b))) => a.data.extend_from_slice(&b.data),
                (Some(S::ArrayData(a)), Some(S::ArrayData(b))) => a.data.extend_from_slice(&b.data),
                _ => {}
            },
            (Some(Field::Vectors(x)), Some(Field::Vectors(y))) => match (&mut x.data, &y.data) {
                (Some(V::FloatVector(a)), Some(V::FloatVector(b))) => {
                    a.data.extend_from_slice(&b.data)
                }
                (Some(V::BinaryVector(a)), Some(V::BinaryVector(b)))
                | (Some(V::Float16Vector(a)), Some(V::Float16Vector(b)))
                | (Some(V::Bfloat16Vector(a)), Some(V::Bfloat16Vector(b)))
                | (Some(V::Int8Vector(a)), Some(V::Int8Vector(b))) => a.extend_from_slice(b),
                _ => {}
            },
            _ => {}
        }
    }
    true
}

/// The rows at `idx` (in that order) of every column.
pub fn take(fields: &[FieldData], idx: &[usize]) -> Vec<FieldData> {
    fields
        .iter()
        .map(|f| FieldData {
            r#type: f.r#type,
            field_name: f.field_name.clone(),
            field_id: f.field_id,
            is_dynamic: f.is_dynamic,
            valid_data: if f.valid_data.is_empty() {
                vec![]
            } else {
                idx.iter().map(|&i| f.valid_data[i]).collect()
            },
            field: match &f.field {
                Some(Field::Scalars(s)) => Some(Field::Scalars(take_scalar(s, idx))),
                Some(Field::Vectors(v)) => Some(Field::Vectors(take_vector(v, idx))),
                other => other.clone(),
            },
        })
        .collect()
}

/// Approximate encoded size, to cut batches by bytes.
pub fn approx_bytes(fields: &[FieldData]) -> usize {
    use prost::Message;
    fields.iter().map(|f| f.encoded_len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use milvus::proto::schema::DataType;

    fn long(name: &str, v: Vec<i64>) -> FieldData {
        FieldData {
            r#type: DataType::Int64 as i32,
            field_name: name.into(),
            field: Some(Field::Scalars(ScalarField {
                data: Some(S::LongData(LongArray { data: v })),
                valid_data: vec![],
            })),
            ..Default::default()
        }
    }

    fn fvec(name: &str, dim: i64, v: Vec<f32>) -> FieldData {
        FieldData {
            r#type: DataType::FloatVector as i32,
            field_name: name.into(),
            field: Some(Field::Vectors(VectorField {
                dim,
                data: Some(V::FloatVector(FloatArray { data: v })),
                valid_data: vec![],
            })),
            ..Default::default()
        }
    }

    #[test]
    fn take_selects_rows_in_every_column() {
        let cols = vec![
            long("id", vec![10, 20, 30]),
            fvec("v", 2, vec![1., 2., 3., 4., 5., 6.]),
        ];
        let picked = take(&cols, &[2, 0]);
        assert_eq!(num_rows(&picked).unwrap(), 2);
        assert_eq!(
            primary_keys(&picked, "id").unwrap(),
            vec![Pk::Int(30), Pk::Int(10)]
        );
        let h_all = row_hashes(&cols).unwrap();
        let h_picked = row_hashes(&picked).unwrap();
        assert_eq!(h_picked, vec![h_all[2], h_all[0]]);
    }

    #[test]
    fn hashes_see_every_column_and_column_order_does_not_matter() {
        let a = vec![long("id", vec![1]), fvec("v", 2, vec![1., 2.])];
        let b = vec![fvec("v", 2, vec![1., 2.]), long("id", vec![1])];
        let c = vec![long("id", vec![1]), fvec("v", 2, vec![1., 2.5])];
        assert_eq!(row_hashes(&a).unwrap(), row_hashes(&b).unwrap());
        assert_ne!(row_hashes(&a).unwrap(), row_hashes(&c).unwrap());
        assert!(row_hashes(&a).unwrap()[0] & 1 == 1);
    }

    #[test]
    fn mismatched_columns_are_an_error() {
        let cols = vec![long("id", vec![1, 2]), fvec("v", 2, vec![1., 2.])];
        assert!(num_rows(&cols).is_err());
    }

    #[test]
    fn key_order_matches_milvus() {
        assert!(Pk::Int(-5) < Pk::Int(3));
        assert!(Pk::Str("B".into()) < Pk::Str("a".into()));
        assert!(Pk::Str("a".into()) < Pk::Str("ab".into()));
    }
}
