//! Result encodings: JSON (an array of row objects), newline-delimited JSON, CSV with a
//! header, Parquet and the Arrow IPC stream. All but the JSON array are also written chunk by
//! chunk ([`StreamEncoder`]), for exports that never hold the whole result.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    /// One JSON object per line.
    Ndjson,
    Csv,
    Parquet,
    /// The Arrow IPC stream format (`pyarrow.ipc.open_stream`).
    Arrow,
}

impl Format {
    pub const NAMES: &'static str = "json, ndjson, csv, parquet or arrow";

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "json" => Some(Format::Json),
            "ndjson" => Some(Format::Ndjson),
            "csv" => Some(Format::Csv),
            "parquet" => Some(Format::Parquet),
            "arrow" => Some(Format::Arrow),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Parquet => "application/vnd.apache.parquet",
            Format::Arrow => "application/vnd.apache.arrow.stream",
        }
    }
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(e.to_string())
}

/// Encodes batches; JSON is an array of objects with explicit nulls.
pub fn encode(format: Format, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    if format != Format::Json {
        let mut encoder = StreamEncoder::new(format, schema)?;
        let mut out = Vec::new();
        for b in batches {
            out.extend(encoder.push(b)?);
        }
        out.extend(encoder.finish()?);
        return Ok(out);
    }
    let mut out = Vec::new();
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
    Ok(out)
}

/// Encodes a result batch by batch: each [`push`](Self::push) returns the bytes ready to send,
/// so an export holds at most one Parquet row group, or one batch of the other formats.
pub struct StreamEncoder {
    writer: Writer,
    schema: SchemaRef,
    /// CSV: the header is still to be written.
    header: bool,
}

enum Writer {
    Ndjson(arrow::json::LineDelimitedWriter<Vec<u8>>),
    Csv,
    Parquet(Box<ArrowWriter<Vec<u8>>>),
    Arrow(arrow::ipc::writer::StreamWriter<Vec<u8>>),
}

impl StreamEncoder {
    /// An encoder of `format`, which must not be the JSON array.
    pub fn new(format: Format, schema: &SchemaRef) -> Result<Self> {
        let writer = match format {
            Format::Json => {
                return Err(Error::Invalid(
                    "a JSON array cannot be streamed; use ndjson".into(),
                ));
            }
            Format::Ndjson => Writer::Ndjson(
                arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build(Vec::new()),
            ),
            Format::Csv => {
                if let Some(nested) = schema.fields().iter().find(|f| f.data_type().is_nested()) {
                    return Err(Error::Invalid(format!(
                        "CSV cannot hold column {:?} of type {}; use json or parquet, or select scalar columns",
                        nested.name(),
                        nested.data_type()
                    )));
                }
                Writer::Csv
            }
            Format::Parquet => Writer::Parquet(Box::new(
                ArrowWriter::try_new(Vec::new(), schema.clone(), None).map_err(internal)?,
            )),
            Format::Arrow => Writer::Arrow(
                arrow::ipc::writer::StreamWriter::try_new(Vec::new(), schema).map_err(internal)?,
            ),
        };
        Ok(Self {
            writer,
            schema: schema.clone(),
            header: true,
        })
    }

    /// Encodes one batch; returns what is ready to send (Parquet: empty until a row group fills).
    pub fn push(&mut self, batch: &RecordBatch) -> Result<Vec<u8>> {
        Ok(match &mut self.writer {
            Writer::Ndjson(w) => {
                w.write(batch).map_err(internal)?;
                std::mem::take(w.get_mut())
            }
            Writer::Csv => {
                let mut out = Vec::new();
                arrow::csv::WriterBuilder::new()
                    .with_header(std::mem::take(&mut self.header))
                    .build(&mut out)
                    .write(batch)
                    .map_err(internal)?;
                out
            }
            Writer::Parquet(w) => {
                w.write(batch).map_err(internal)?;
                std::mem::take(w.inner_mut())
            }
            Writer::Arrow(w) => {
                w.write(batch).map_err(internal)?;
                std::mem::take(w.get_mut())
            }
        })
    }

    /// The rest: Parquet's last row group and footer, the Arrow end marker, a CSV header of an
    /// empty result.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        if matches!(self.writer, Writer::Csv) && self.header {
            return self.push(&RecordBatch::new_empty(self.schema.clone()));
        }
        Ok(match self.writer {
            Writer::Ndjson(mut w) => {
                w.finish().map_err(internal)?;
                w.into_inner()
            }
            Writer::Csv => Vec::new(),
            Writer::Parquet(w) => w.into_inner().map_err(internal)?,
            Writer::Arrow(mut w) => {
                w.finish().map_err(internal)?;
                w.into_inner().map_err(internal)?
            }
        })
    }
}
