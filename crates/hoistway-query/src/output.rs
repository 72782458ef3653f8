//! Result encodings: JSON (an array of row objects), CSV with a header, and Parquet.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    Parquet,
}

impl Format {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "json" => Some(Format::Json),
            "csv" => Some(Format::Csv),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(e.to_string())
}

/// Encodes batches; JSON is an array of objects with explicit nulls.
pub fn encode(format: Format, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match format {
        Format::Json => {
            let mut writer = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow::json::writer::JsonArray>(&mut out);
            for b in batches {
                writer.write(b).map_err(internal)?;
            }
            writer.finish().map_err(internal)?;
            if out.is_empty() {
                out.extend_from_slice(b"[]");
            }
        }
        Format::Csv => {
            if let Some(nested) = schema.fields().iter().find(|f| f.data_type().is_nested()) {
                return Err(Error::Invalid(format!(
                    "CSV cannot hold column {:?} of type {}; use json or parquet, or select scalar columns",
                    nested.name(),
                    nested.data_type()
                )));
            }
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            if batches.is_empty() {
                writer
                    .write(&RecordBatch::new_empty(schema.clone()))
                    .map_err(internal)?;
            }
            for b in batches {
                writer.write(b).map_err(internal)?;
            }
        }
        Format::Parquet => {
            let mut writer =
                ArrowWriter::try_new(&mut out, schema.clone(), None).map_err(internal)?;
            for b in batches {
                writer.write(b).map_err(internal)?;
            }
            writer.close().map_err(internal)?;
        }
    }
    Ok(out)
}
