//! Arrow columns as PostgreSQL values: which type each Arrow type is sent as, and the rows.
//!
//! Scalars map to their PostgreSQL types (`text`, `int2/4/8`, `float4/8`, `bool`, `timestamptz`,
//! `timestamp`, `date`, `bytea`) in text or binary format, as the client asks. Lists, maps,
//! structs and anything else are sent as `text` in Arrow's display form (`[E101, E205]`).

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Float16Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type,
    Int64Type, Schema, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::{DateTime, NaiveDate};
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::{DataRowEncoder, FieldInfo};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;

/// The PostgreSQL type an Arrow type is sent as.
pub fn pg_type(data_type: &DataType) -> Type {
    match data_type {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => Type::INT8,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Date32 => Type::DATE,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Type::BYTEA,
        _ => Type::TEXT,
    }
}

/// The row description of a result, each column in the format the client asked for.
pub fn fields(schema: &Schema, format: &Format) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            FieldInfo::new(
                f.name().clone(),
                None,
                None,
                pg_type(f.data_type()),
                format.format_for(i),
            )
        })
        .collect()
}

fn out_of_range(what: String) -> PgWireError {
    // numeric_value_out_of_range
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "22003".into(),
        what,
    )))
}

/// Every row of `batches` as a `DataRow`.
pub fn rows(batches: &[RecordBatch], fields: Arc<Vec<FieldInfo>>) -> PgWireResult<Vec<DataRow>> {
    let mut encoder = DataRowEncoder::new(fields);
    let mut out = Vec::with_capacity(batches.iter().map(|b| b.num_rows()).sum());
    let options = FormatOptions::default();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        for row in 0..batch.num_rows() {
            for (column, formatter) in batch.columns().iter().zip(&formatters) {
                value(&mut encoder, column.as_ref(), formatter, row)?;
            }
            out.push(encoder.take_row());
        }
    }
    Ok(out)
}

fn timestamp_micros(array: &dyn Array, unit: &TimeUnit, row: usize) -> i64 {
    match unit {
        TimeUnit::Second => array
            .as_primitive::<TimestampSecondType>()
            .value(row)
            .saturating_mul(1_000_000),
        TimeUnit::Millisecond => array
            .as_primitive::<TimestampMillisecondType>()
            .value(row)
            .saturating_mul(1000),
        TimeUnit::Microsecond => array.as_primitive::<TimestampMicrosecondType>().value(row),
        TimeUnit::Nanosecond => array
            .as_primitive::<TimestampNanosecondType>()
            .value(row)
            .div_euclid(1000),
    }
}

fn value(
    encoder: &mut DataRowEncoder,
    array: &dyn Array,
    formatter: &ArrayFormatter<'_>,
    row: usize,
) -> PgWireResult<()> {
    if array.is_null(row) {
        return encoder.encode_field(&None::<i32>);
    }
    match array.data_type() {
        DataType::Boolean => encoder.encode_field(&array.as_boolean().value(row)),
        DataType::Int8 => {
            encoder.encode_field(&i16::from(array.as_primitive::<Int8Type>().value(row)))
        }
        DataType::Int16 => encoder.encode_field(&array.as_primitive::<Int16Type>().value(row)),
        DataType::UInt8 => {
            encoder.encode_field(&i16::from(array.as_primitive::<UInt8Type>().value(row)))
        }
        DataType::Int32 => encoder.encode_field(&array.as_primitive::<Int32Type>().value(row)),
        DataType::UInt16 => {
            encoder.encode_field(&i32::from(array.as_primitive::<UInt16Type>().value(row)))
        }
        DataType::Int64 => encoder.encode_field(&array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt32 => {
            encoder.encode_field(&i64::from(array.as_primitive::<UInt32Type>().value(row)))
        }
        DataType::UInt64 => {
            let v = array.as_primitive::<UInt64Type>().value(row);
            let v = i64::try_from(v).map_err(|_| out_of_range(format!("{v} does not fit int8")))?;
            encoder.encode_field(&v)
        }
        DataType::Float16 => {
            encoder.encode_field(&f32::from(array.as_primitive::<Float16Type>().value(row)))
        }
        DataType::Float32 => encoder.encode_field(&array.as_primitive::<Float32Type>().value(row)),
        DataType::Float64 => encoder.encode_field(&array.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => encoder.encode_field(&array.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => encoder.encode_field(&array.as_string::<i64>().value(row)),
        DataType::Utf8View => encoder.encode_field(&array.as_string_view().value(row)),
        DataType::Binary => encoder.encode_field(&array.as_binary::<i32>().value(row)),
        DataType::LargeBinary => encoder.encode_field(&array.as_binary::<i64>().value(row)),
        DataType::BinaryView => encoder.encode_field(&array.as_binary_view().value(row)),
        DataType::Timestamp(unit, tz) => {
            let micros = timestamp_micros(array, unit, row);
            let t = DateTime::from_timestamp_micros(micros)
                .ok_or_else(|| out_of_range(format!("timestamp {micros} µs is out of range")))?;
            if tz.is_some() {
                encoder.encode_field(&t)
            } else {
                encoder.encode_field(&t.naive_utc())
            }
        }
        DataType::Date32 => {
            let days = array.as_primitive::<Date32Type>().value(row);
            let date = NaiveDate::default()
                .checked_add_signed(chrono::TimeDelta::days(days.into()))
                .ok_or_else(|| out_of_range(format!("date {days} days is out of range")))?;
            encoder.encode_field(&date)
        }
        _ => encoder.encode_field(&formatter.value(row).to_string()),
    }
}
