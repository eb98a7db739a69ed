//! Milvus columns ↔ Arrow record batches (and so Parquet).
//!
//! | Milvus                      | Arrow / Parquet                     |
//! |-----------------------------|-------------------------------------|
//! | Bool, Int8/16/32/64         | Boolean, Int8/16/32/64              |
//! | Float, Double               | Float32, Float64                    |
//! | VarChar                     | Utf8                                |
//! | JSON, dynamic field `$meta` | Utf8 (the JSON text)                |
//! | Array(T)                    | List(T)                             |
//! | FloatVector(dim)            | FixedSizeList(Float32, dim)         |
//! | BinaryVector(dim)           | FixedSizeBinary(dim / 8)            |
//! | Float16/BFloat16Vector(dim) | FixedSizeBinary(2 · dim)            |
//!
//! Every Arrow field carries its Milvus type in the metadata key
//! `milvus.type`. Converting back yields columns whose row hashes equal
//! those of the columns Milvus returned, which is what digests check.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use arrow_array::builder::{
    BooleanBuilder, Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder,
    Int8Builder, ListBuilder, StringBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type};
use arrow_array::{
    Array, ArrayRef, BooleanArray, FixedSizeBinaryArray, FixedSizeListArray, Float32Array,
    Float64Array, Int16Array, Int32Array, Int64Array, Int8Array, RecordBatch, StringArray,
};
use arrow_schema::{DataType as A, Field, Schema, SchemaRef};
use milvus::proto::schema::{
    field_data::Field as F, scalar_field::Data as S, vector_field::Data as V, ArrayArray,
    BoolArray, CollectionSchema, DataType as M, DoubleArray, FieldData, FieldSchema, FloatArray,
    IntArray, JsonArray, LongArray, ScalarField, StringArray as MStringArray, VectorField,
};

use crate::milvus::DYNAMIC_FIELD;

/// One column of a backup: its Milvus description and Arrow type.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub field_id: i64,
    pub data_type: M,
    pub element_type: M,
    pub dim: usize,
    pub dynamic: bool,
}

fn dim_of(f: &FieldSchema) -> usize {
    f.type_params
        .iter()
        .find(|p| p.key == "dim")
        .and_then(|p| p.value.parse().ok())
        .unwrap_or(0)
}

/// Whether a column is a single top-level Parquet column (not a vector,
/// not an array), so its Parquet column path is just its name.
pub fn is_flat_scalar(c: &Column) -> bool {
    !matches!(
        c.data_type,
        M::FloatVector | M::BinaryVector | M::Float16Vector | M::BFloat16Vector | M::Array
    )
}

/// The columns a backup stores, in the order Milvus is queried for them.
pub fn columns(schema: &CollectionSchema) -> Vec<Column> {
    let mut out: Vec<Column> = schema
        .fields
        .iter()
        .filter(|f| !f.is_dynamic)
        .map(|f| Column {
            name: f.name.clone(),
            field_id: f.field_id,
            data_type: f.data_type(),
            element_type: M::try_from(f.element_type).unwrap_or(M::None),
            dim: dim_of(f),
            dynamic: false,
        })
        .collect();
    if schema.enable_dynamic_field {
        out.push(Column {
            name: DYNAMIC_FIELD.into(),
            field_id: schema
                .fields
                .iter()
                .find(|f| f.is_dynamic)
                .map(|f| f.field_id)
                .unwrap_or(0),
            data_type: M::Json,
            element_type: M::None,
            dim: 0,
            dynamic: true,
        });
    }
    out
}

fn scalar_arrow(t: M) -> Result<A> {
    Ok(match t {
        M::Bool => A::Boolean,
        M::Int8 => A::Int8,
        M::Int16 => A::Int16,
        M::Int32 => A::Int32,
        M::Int64 => A::Int64,
        M::Float => A::Float32,
        M::Double => A::Float64,
        M::VarChar | M::String | M::Json => A::Utf8,
        other => bail!("Milvus type {other:?} has no Parquet mapping yet"),
    })
}

fn arrow_type(c: &Column) -> Result<A> {
    Ok(match c.data_type {
        M::Array => A::List(Arc::new(Field::new(
            "item",
            scalar_arrow(c.element_type)?,
            true,
        ))),
        M::FloatVector => A::FixedSizeList(
            Arc::new(Field::new("item", A::Float32, false)),
            i32::try_from(c.dim).context("vector dim")?,
        ),
        M::BinaryVector => A::FixedSizeBinary(i32::try_from(c.dim.div_ceil(8))?),
        M::Float16Vector | M::BFloat16Vector => A::FixedSizeBinary(i32::try_from(c.dim * 2)?),
        t => scalar_arrow(t)?,
    })
}

/// The Arrow schema of a collection's backup.
pub fn arrow_schema(cols: &[Column]) -> Result<SchemaRef> {
    let fields: Vec<Field> = cols
        .iter()
        .map(|c| {
            let mut md = HashMap::from([(
                "milvus.type".to_string(),
                c.data_type.as_str_name().to_string(),
            )]);
            if c.data_type == M::Array {
                md.insert(
                    "milvus.element_type".into(),
                    c.element_type.as_str_name().into(),
                );
            }
            Ok(Field::new(&c.name, arrow_type(c)?, false).with_metadata(md))
        })
        .collect::<Result<_>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

fn list_of(elem: M, rows: &[ScalarField]) -> Result<ArrayRef> {
    macro_rules! list {
        ($builder:expr, $variant:ident, $conv:expr) => {{
            let mut b = ListBuilder::new($builder);
            for r in rows {
                match &r.data {
                    Some(S::$variant(a)) => {
                        for v in &a.data {
                            b.values().append_value($conv(v));
                        }
                    }
                    None => {}
                    Some(_) => bail!("array element of an unexpected type"),
                }
                b.append(true);
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    Ok(match elem {
        M::Bool => list!(BooleanBuilder::new(), BoolData, |v: &bool| *v),
        M::Int8 => list!(Int8Builder::new(), IntData, |v: &i32| *v as i8),
        M::Int16 => list!(Int16Builder::new(), IntData, |v: &i32| *v as i16),
        M::Int32 => list!(Int32Builder::new(), IntData, |v: &i32| *v),
        M::Int64 => list!(Int64Builder::new(), LongData, |v: &i64| *v),
        M::Float => list!(Float32Builder::new(), FloatData, |v: &f32| *v),
        M::Double => list!(Float64Builder::new(), DoubleData, |v: &f64| *v),
        M::VarChar | M::String => {
            list!(StringBuilder::new(), StringData, String::as_str)
        }
        other => bail!("arrays of {other:?} are not supported"),
    })
}

fn to_array(c: &Column, f: &FieldData) -> Result<ArrayRef> {
    let bad = || anyhow!("column {} does not hold {:?} data", c.name, c.data_type);
    Ok(match &f.field {
        Some(F::Scalars(s)) => match (&s.data, c.data_type) {
            (Some(S::BoolData(a)), M::Bool) => Arc::new(BooleanArray::from(a.data.clone())),
            (Some(S::IntData(a)), M::Int8) => {
                Arc::new(Int8Array::from_iter_values(a.data.iter().map(|v| *v as i8)))
            }
            (Some(S::IntData(a)), M::Int16) => Arc::new(Int16Array::from_iter_values(
                a.data.iter().map(|v| *v as i16),
            )),
            (Some(S::IntData(a)), M::Int32) => Arc::new(Int32Array::from(a.data.clone())),
            (Some(S::LongData(a)), M::Int64) => Arc::new(Int64Array::from(a.data.clone())),
            (Some(S::FloatData(a)), M::Float) => Arc::new(Float32Array::from(a.data.clone())),
            (Some(S::DoubleData(a)), M::Double) => Arc::new(Float64Array::from(a.data.clone())),
            (Some(S::StringData(a)), M::VarChar | M::String) => {
                Arc::new(StringArray::from_iter_values(a.data.iter()))
            }
            (Some(S::JsonData(a)), M::Json) => {
                let mut b = StringBuilder::new();
                for v in &a.data {
                    b.append_value(
                        std::str::from_utf8(v)
                            .with_context(|| format!("column {}: JSON is not UTF-8", c.name))?,
                    );
                }
                Arc::new(b.finish())
            }
            (Some(S::ArrayData(a)), M::Array) => list_of(c.element_type, &a.data)?,
            _ => return Err(bad()),
        },
        Some(F::Vectors(v)) => match (&v.data, c.data_type) {
            (Some(V::FloatVector(a)), M::FloatVector) => {
                let dim = i32::try_from(c.dim)?;
                Arc::new(FixedSizeListArray::try_new(
                    Arc::new(Field::new("item", A::Float32, false)),
                    dim,
                    Arc::new(Float32Array::from(a.data.clone())),
                    None,
                )?)
            }
            (Some(V::BinaryVector(b)), M::BinaryVector)
            | (Some(V::Float16Vector(b)), M::Float16Vector)
            | (Some(V::Bfloat16Vector(b)), M::BFloat16Vector) => {
                let w = match c.data_type {
                    M::BinaryVector => c.dim.div_ceil(8),
                    _ => c.dim * 2,
                };
                Arc::new(FixedSizeBinaryArray::try_new(
                    i32::try_from(w)?,
                    arrow_buffer::Buffer::from(b.clone()),
                    None,
                )?)
            }
            _ => return Err(bad()),
        },
        None => return Err(bad()),
        Some(_) => return Err(bad()),
    })
}

/// A page of Milvus columns as one record batch.
pub fn to_batch(schema: &SchemaRef, cols: &[Column], page: &[FieldData]) -> Result<RecordBatch> {
    let arrays = cols
        .iter()
        .map(|c| {
            let f = page
                .iter()
                .find(|f| f.field_name == c.name || (c.dynamic && f.is_dynamic))
                .ok_or_else(|| anyhow!("Milvus returned no column {}", c.name))?;
            to_array(c, f)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), arrays)?)
}

fn scalar_field(data: S) -> Option<F> {
    Some(F::Scalars(ScalarField {
        data: Some(data),
        valid_data: vec![],
    }))
}

fn list_elements(elem: M, a: &dyn Array) -> Result<S> {
    Ok(match elem {
        M::Bool => S::BoolData(BoolArray {
            data: a.as_boolean().iter().map(|v| v.unwrap_or(false)).collect(),
        }),
        M::Int8 => S::IntData(IntArray {
            data: a
                .as_primitive::<Int8Type>()
                .values()
                .iter()
                .map(|v| *v as i32)
                .collect(),
        }),
        M::Int16 => S::IntData(IntArray {
            data: a
                .as_primitive::<Int16Type>()
                .values()
                .iter()
                .map(|v| *v as i32)
                .collect(),
        }),
        M::Int32 => S::IntData(IntArray {
            data: a.as_primitive::<Int32Type>().values().to_vec(),
        }),
        M::Int64 => S::LongData(LongArray {
            data: a.as_primitive::<Int64Type>().values().to_vec(),
        }),
        M::Float => S::FloatData(FloatArray {
            data: a.as_primitive::<Float32Type>().values().to_vec(),
        }),
        M::Double => S::DoubleData(DoubleArray {
            data: a.as_primitive::<Float64Type>().values().to_vec(),
        }),
        M::VarChar | M::String => S::StringData(MStringArray {
            data: a
                .as_string::<i32>()
                .iter()
                .map(|v| v.unwrap_or_default().to_string())
                .collect(),
        }),
        other => bail!("arrays of {other:?} are not supported"),
    })
}

fn from_array(c: &Column, a: &dyn Array) -> Result<FieldData> {
    let field = match c.data_type {
        M::Bool => scalar_field(S::BoolData(BoolArray {
            data: a.as_boolean().iter().map(|v| v.unwrap_or(false)).collect(),
        })),
        M::Int8 | M::Int16 | M::Int32 => scalar_field(S::IntData(IntArray {
            data: list_elements(c.data_type, a).map(|d| match d {
                S::IntData(i) => i.data,
                _ => vec![],
            })?,
        })),
        M::Int64 => scalar_field(S::LongData(LongArray {
            data: a.as_primitive::<Int64Type>().values().to_vec(),
        })),
        M::Float => scalar_field(S::FloatData(FloatArray {
            data: a.as_primitive::<Float32Type>().values().to_vec(),
        })),
        M::Double => scalar_field(S::DoubleData(DoubleArray {
            data: a.as_primitive::<Float64Type>().values().to_vec(),
        })),
        M::VarChar | M::String => scalar_field(S::StringData(MStringArray {
            data: a
                .as_string::<i32>()
                .iter()
                .map(|v| v.unwrap_or_default().to_string())
                .collect(),
        })),
        M::Json => scalar_field(S::JsonData(JsonArray {
            data: a
                .as_string::<i32>()
                .iter()
                .map(|v| v.unwrap_or_default().as_bytes().to_vec())
                .collect(),
        })),
        M::Array => {
            let l = a.as_list::<i32>();
            let mut rows = Vec::with_capacity(l.len());
            for i in 0..l.len() {
                let v = l.value(i);
                rows.push(ScalarField {
                    data: Some(list_elements(c.element_type, v.as_ref())?),
                    valid_data: vec![],
                });
            }
            scalar_field(S::ArrayData(ArrayArray {
                data: rows,
                element_type: c.element_type as i32,
            }))
        }
        M::FloatVector => {
            let l = a.as_fixed_size_list();
            let values = l.values().as_primitive::<Float32Type>();
            let start = l.offset() * c.dim;
            let end = start + l.len() * c.dim;
            if values.len() < end {
                bail!("column {}: vector data shorter than its rows", c.name);
            }
            Some(F::Vectors(VectorField {
                dim: c.dim as i64,
                data: Some(V::FloatVector(FloatArray {
                    data: values.values()[start..end].to_vec(),
                })),
                valid_data: vec![],
            }))
        }
        M::BinaryVector | M::Float16Vector | M::BFloat16Vector => {
            let b = a.as_fixed_size_binary();
            let mut bytes = Vec::with_capacity(b.len() * b.value_length() as usize);
            for i in 0..b.len() {
                bytes.extend_from_slice(b.value(i));
            }
            let data = match c.data_type {
                M::BinaryVector => V::BinaryVector(bytes),
                M::Float16Vector => V::Float16Vector(bytes),
                _ => V::Bfloat16Vector(bytes),
            };
            Some(F::Vectors(VectorField {
                dim: c.dim as i64,
                data: Some(data),
                valid_data: vec![],
            }))
        }
        other => bail!("Milvus type {other:?} has no Parquet mapping yet"),
    };
    Ok(FieldData {
        r#type: c.data_type as i32,
        field_name: c.name.clone(),
        field_id: c.field_id,
        is_dynamic: c.dynamic,
        field,
        valid_data: vec![],
    })
}

/// A record batch read back from Parquet as Milvus columns, ready to insert.
pub fn from_batch(cols: &[Column], batch: &RecordBatch) -> Result<Vec<FieldData>> {
    cols.iter()
        .map(|c| {
            let a = batch
                .column_by_name(&c.name)
                .ok_or_else(|| anyhow!("the Parquet data has no column {}", c.name))?;
            from_array(c, a.as_ref()).with_context(|| format!("column {}", c.name))
        })
        .collect()
}

/// Rough bytes per row, to size batches of wide rows.
pub fn approx_row_bytes(cols: &[Column]) -> usize {
    cols.iter()
        .map(|c| match c.data_type {
            M::FloatVector => 4 * c.dim,
            M::BinaryVector => c.dim.div_ceil(8),
            M::Float16Vector | M::BFloat16Vector => 2 * c.dim,
            M::VarChar | M::String | M::Json | M::Array => 256,
            _ => 8,
        })
        .sum::<usize>()
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::milvus::rows::row_hashes;

    fn schema() -> CollectionSchema {
        let f = |id, name: &str, t: M| FieldSchema {
            field_id: id,
            name: name.into(),
            data_type: t as i32,
            ..Default::default()
        };
        let mut v = f(5, "v", M::FloatVector);
        v.type_params.push(milvus::proto::common::KeyValuePair {
            key: "dim".into(),
            value: "2".into(),
        });
        let mut arr = f(6, "arr", M::Array);
        arr.element_type = M::Int16 as i32;
        let mut pk = f(1, "pk", M::VarChar);
        pk.is_primary_key = true;
        CollectionSchema {
            name: "c".into(),
            enable_dynamic_field: true,
            fields: vec![pk, f(2, "i8", M::Int8), f(3, "j", M::Json), v, arr],
            ..Default::default()
        }
    }

    fn sc(name: &str, t: M, d: S) -> FieldData {
        FieldData {
            r#type: t as i32,
            field_name: name.into(),
            field: scalar_field(d),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_keeps_row_hashes() {
        let s = schema();
        let cols = columns(&s);
        let page = vec![
            sc(
                "pk",
                M::VarChar,
                S::StringData(MStringArray {
                    data: vec!["a".into(), "b".into()],
                }),
            ),
            sc("i8", M::Int8, S::IntData(IntArray { data: vec![-3, 7] })),
            sc(
                "j",
                M::Json,
                S::JsonData(JsonArray {
                    data: vec![br#"{"x":1}"#.to_vec(), b"[]".to_vec()],
                }),
            ),
            FieldData {
                r#type: M::FloatVector as i32,
                field_name: "v".into(),
                field: Some(F::Vectors(VectorField {
                    dim: 2,
                    data: Some(V::FloatVector(FloatArray {
                        data: vec![1.0, -0.5, 3.25, 0.0],
                    })),
                    valid_data: vec![],
                })),
                ..Default::default()
            },
            sc(
                "arr",
                M::Array,
                S::ArrayData(ArrayArray {
                    data: vec![
                        ScalarField {
                            data: Some(S::IntData(IntArray { data: vec![1, 2] })),
                            valid_data: vec![],
                        },
                        ScalarField {
                            data: Some(S::IntData(IntArray { data: vec![] })),
                            valid_data: vec![],
                        },
                    ],
                    element_type: M::Int16 as i32,
                }),
            ),
            FieldData {
                is_dynamic: true,
                ..sc(
                    "$meta",
                    M::Json,
                    S::JsonData(JsonArray {
                        data: vec![br#"{"k":"v"}"#.to_vec(), b"{}".to_vec()],
                    }),
                )
            },
        ];
        let schema = arrow_schema(&cols).unwrap();
        let batch = to_batch(&schema, &cols, &page).unwrap();
        assert_eq!(batch.num_rows(), 2);
        let back = from_batch(&cols, &batch).unwrap();
        assert_eq!(row_hashes(&page).unwrap(), row_hashes(&back).unwrap());
        assert!(back.iter().any(|f| f.is_dynamic && f.field_name == "$meta"));
    }
}
