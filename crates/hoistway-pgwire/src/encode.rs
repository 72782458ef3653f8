//! Arrow columns as PostgreSQL values, by arrow-pg, with the type mapping the catalogs report
//! ([`hoistway_query::catalog::pg_type`]), so that a column is described and sent as one type.
//!
//! Scalars map to their PostgreSQL types (`text`, `int2/4/8`, `float4/8`, `numeric`, `bool`,
//! `timestamptz`, `timestamp`, `date`, `bytea`), lists of text to `text[]`, in text or binary
//! format as the client asks; catalog columns tagged as `oid` or `"char"` are sent as those.
//! Anything else (a map such as `extra`, a struct) is sent as `text` in Arrow's display form
//! (`{cabin_temp_c: 22.0}`).

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use hoistway_query::catalog::sent_natively;
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::FieldInfo;
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;

/// The PostgreSQL type an Arrow type is sent as.
pub fn pg_type(data_type: &DataType) -> Type {
    hoistway_query::catalog::pg_type(data_type)
}

/// The row description of a result, each column in the format the client asked for.
pub fn fields(schema: &Schema, format: &Format) -> PgWireResult<Vec<FieldInfo>> {
    let sent: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            if sent_natively(f.data_type()) {
                f.as_ref().clone()
            } else {
                Field::new(f.name(), DataType::Utf8, f.is_nullable())
            }
        })
        .collect();
    arrow_pg::datatypes::arrow_schema_to_pg_fields(&Schema::new(sent), format, None)
}

fn api_error(e: arrow::error::ArrowError) -> PgWireError {
    PgWireError::ApiError(Box::new(e))
}

/// A column as it is sent: itself, or its display form as text.
fn as_sent(column: &ArrayRef) -> PgWireResult<ArrayRef> {
    if sent_natively(column.data_type()) {
        return Ok(column.clone());
    }
    let options = FormatOptions::default();
    let formatter = ArrayFormatter::try_new(column.as_ref(), &options).map_err(api_error)?;
    // Logical nulls: a NULL-typed column (`SELECT NULL`) has no validity buffer.
    let nulls = column.logical_nulls();
    let text: StringArray = (0..column.len())
        .map(|i| {
            let null = nulls.as_ref().is_some_and(|n| n.is_null(i));
            (!null).then(|| formatter.value(i).to_string())
        })
        .collect();
    Ok(Arc::new(text))
}

/// Every row of `batches` as a `DataRow`.
pub fn rows(batches: &[RecordBatch], fields: Arc<Vec<FieldInfo>>) -> PgWireResult<Vec<DataRow>> {
    let mut out = Vec::with_capacity(batches.iter().map(|b| b.num_rows()).sum());
    for batch in batches {
        let columns = batch
            .columns()
            .iter()
            .map(as_sent)
            .collect::<PgWireResult<Vec<_>>>()?;
        let schema = Schema::new(
            batch
                .schema()
                .fields()
                .iter()
                .zip(&columns)
                .map(|(f, c)| {
                    Field::new(f.name(), c.data_type().clone(), f.is_nullable())
                        .with_metadata(f.metadata().clone())
                })
                .collect::<Vec<_>>(),
        );
        let batch = RecordBatch::try_new(Arc::new(schema), columns).map_err(api_error)?;
        for row in arrow_pg::datatypes::encode_recordbatch(fields.clone(), batch) {
            out.push(row?);
        }
    }
    Ok(out)
}
