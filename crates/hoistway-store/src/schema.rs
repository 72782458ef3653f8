//! The stored schemas (readings, hourly rollup partials) and how each column is encoded.
//!
//! Changing a schema changes a format other engines read: `tests/golden/*.schema` shows the
//! change in review, and docs/storage.md must follow.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, Float32Builder, Int16Builder, Int32Builder, Int64Builder, ListBuilder, MapBuilder,
    RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use hoistway_model::{Direction, DoorState, Reading};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

/// Timestamps are microseconds since the Unix epoch, UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn list_of_strings() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, false)))
}

fn map_entries() -> Field {
    Field::new(
        "entries",
        DataType::Struct(Fields::from(vec![
            Field::new("keys", DataType::Utf8, false),
            Field::new("values", DataType::Float64, true),
        ])),
        false,
    )
}

/// One row per accepted reading; files are sorted by (`lift_id`, `ts`).
pub static READINGS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("lift_id", DataType::Utf8, false),
        Field::new("ts", timestamp_type(), false),
        Field::new("received", timestamp_type(), false),
        Field::new("epoch", DataType::Int64, false),
        Field::new("seq", DataType::Int64, false),
        Field::new("floor", DataType::Int16, false),
        Field::new("direction", DataType::Utf8, false),
        Field::new("door", DataType::Utf8, false),
        Field::new("load_kg", DataType::Float32, true),
        Field::new("speed_mps", DataType::Float32, true),
        Field::new("motor_temp_c", DataType::Float32, true),
        Field::new("vibration_mm_s", DataType::Float32, true),
        Field::new("trips", DataType::Int32, false),
        Field::new("door_cycles", DataType::Int32, false),
        Field::new("faults", list_of_strings(), false),
        Field::new("events", list_of_strings(), false),
        Field::new(
            "extra",
            DataType::Map(Arc::new(map_entries()), false),
            false,
        ),
    ]))
});

/// Column positions in [`READINGS`], for code that reads arrays by index.
pub mod col {
    pub const LIFT_ID: usize = 0;
    pub const TS: usize = 1;
    pub const FLOOR: usize = 5;
    pub const LOAD: usize = 8;
    pub const MOTOR_TEMP: usize = 10;
    pub const VIBRATION: usize = 11;
    pub const TRIPS: usize = 12;
    pub const DOOR_CYCLES: usize = 13;
    pub const FAULTS: usize = 14;
    pub const EVENTS: usize = 15;
}

pub fn direction_str(d: Direction) -> &'static str {
    match d {
        Direction::Up => "up",
        Direction::Down => "down",
        Direction::Idle => "idle",
    }
}

pub fn door_str(d: DoorState) -> &'static str {
    match d {
        DoorState::Open => "open",
        DoorState::Closed => "closed",
        DoorState::Opening => "opening",
        DoorState::Closing => "closing",
        DoorState::Obstructed => "obstructed",
    }
}

/// Readings as one Arrow batch with the [`READINGS`] schema, in the given order.
pub fn readings_batch(readings: &[Reading]) -> RecordBatch {
    let n = readings.len();
    let mut lift_id = StringBuilder::with_capacity(n, n * 12);
    let mut ts = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut received = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut epoch = Int64Builder::with_capacity(n);
    let mut seq = Int64Builder::with_capacity(n);
    let mut floor = Int16Builder::with_capacity(n);
    let mut direction = StringBuilder::with_capacity(n, n * 4);
    let mut door = StringBuilder::with_capacity(n, n * 6);
    let mut load = Float32Builder::with_capacity(n);
    let mut speed = Float32Builder::with_capacity(n);
    let mut temp = Float32Builder::with_capacity(n);
    let mut vibration = Float32Builder::with_capacity(n);
    let mut trips = Int32Builder::with_capacity(n);
    let mut door_cycles = Int32Builder::with_capacity(n);
    let item = Arc::new(Field::new("item", DataType::Utf8, false));
    let mut faults = ListBuilder::new(StringBuilder::new()).with_field(item.clone());
    let mut events = ListBuilder::new(StringBuilder::new()).with_field(item);
    let mut extra = MapBuilder::new(
        None,
        StringBuilder::new(),
        arrow::array::Float64Builder::new(),
    );
    for r in readings {
        lift_id.append_value(r.lift_id.as_str());
        ts.append_value(r.ts_us);
        received.append_value(r.received_us);
        // Epochs and seqs are u64 on the wire but bounded far below i64::MAX by validation.
        epoch.append_value(r.epoch as i64);
        seq.append_value(r.seq as i64);
        floor.append_value(r.floor);
        direction.append_value(direction_str(r.direction));
        door.append_value(door_str(r.door));
        load.append_option(r.load_kg);
        speed.append_option(r.speed_mps);
        temp.append_option(r.motor_temp_c);
        vibration.append_option(r.vibration_mm_s);
        trips.append_value(r.trips as i32);
        door_cycles.append_value(r.door_cycles as i32);
        for f in &r.faults {
            faults.values().append_value(f);
        }
        faults.append(true);
        for e in &r.events {
            events.values().append_value(e.as_str());
        }
        events.append(true);
        for (k, v) in &r.extra {
            extra.keys().append_value(k);
            extra.values().append_value(*v);
        }
        extra
            .append(true)
            .expect("map keys and values are appended in pairs");
    }
    let extra = extra.finish();
    // MapBuilder names its entries field itself; give it the schema's exact field.
    let extra = arrow::array::MapArray::new(
        Arc::new(map_entries()),
        extra.offsets().clone(),
        extra.entries().clone(),
        None,
        false,
    );
    let columns: Vec<ArrayRef> = vec![
        Arc::new(lift_id.finish()),
        Arc::new(ts.finish()),
        Arc::new(received.finish()),
        Arc::new(epoch.finish()),
        Arc::new(seq.finish()),
        Arc::new(floor.finish()),
        Arc::new(direction.finish()),
        Arc::new(door.finish()),
        Arc::new(load.finish()),
        Arc::new(speed.finish()),
        Arc::new(temp.finish()),
        Arc::new(vibration.finish()),
        Arc::new(trips.finish()),
        Arc::new(door_cycles.finish()),
        Arc::new(faults.finish()),
        Arc::new(events.finish()),
        Arc::new(extra),
    ];
    RecordBatch::try_new(READINGS.clone(), columns).expect("columns match the readings schema")
}

/// Hourly partial aggregates per lift. Several partials of one (lift, hour) may exist until
/// compaction merges them; the `rollups_hourly` table merges them at query time, so late data
/// only adds a partial and every rollup stays exact.
pub static ROLLUP_PARTIALS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![
        Field::new("lift_id", DataType::Utf8, false),
        Field::new("hour", timestamp_type(), false),
        Field::new("readings", DataType::Int64, false),
        Field::new("trips", DataType::Int64, false),
        Field::new("door_cycles", DataType::Int64, false),
    ];
    for metric in ["motor_temp_c", "vibration_mm_s", "load_kg"] {
        fields.push(Field::new(format!("{metric}_min"), DataType::Float32, true));
        fields.push(Field::new(format!("{metric}_max"), DataType::Float32, true));
        fields.push(Field::new(
            format!("{metric}_sum"),
            DataType::Float64,
            false,
        ));
        fields.push(Field::new(
            format!("{metric}_count"),
            DataType::Int64,
            false,
        ));
    }
    fields.extend([
        // Bit m set: at least one reading in minute m of the hour.
        Field::new("minutes_mask", DataType::Int64, false),
        Field::new("fault_readings", DataType::Int64, false),
        Field::new("events", DataType::Int64, false),
        Field::new("entrapments", DataType::Int64, false),
        Field::new("alarms", DataType::Int64, false),
    ]);
    Arc::new(Schema::new(fields))
});

/// Parquet settings for readings: zstd, page statistics for pruning, and per column the
/// encoding that measured smallest on simulator data (docs/BENCHMARKS.md has the table):
/// delta for the per-lift monotonic `ts`, `received` and `seq`; dictionary for everything else,
/// sensors included, because sensors report at a fixed resolution (a few hundred distinct
/// values per row group). A sensor column whose dictionary outgrows its page falls back to
/// byte-stream-split, the encoding for floats with noisy low bits.
pub fn readings_writer_properties(row_group_rows: usize) -> WriterProperties {
    let mut builder =
        base_properties(row_group_rows, READINGS_PAGE_ROWS).set_sorting_columns(Some(vec![
            SortingColumn {
                column_idx: col::LIFT_ID as i32,
                descending: false,
                nulls_first: false,
            },
            SortingColumn {
                column_idx: col::TS as i32,
                descending: false,
                nulls_first: false,
            },
        ]));
    for name in ["ts", "received", "seq"] {
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(name), false)
            .set_column_encoding(ColumnPath::from(name), Encoding::DELTA_BINARY_PACKED);
    }
    for name in ["load_kg", "speed_mps", "motor_temp_c", "vibration_mm_s"] {
        // With the dictionary enabled, this is the fallback encoding.
        builder = builder.set_column_encoding(ColumnPath::from(name), Encoding::BYTE_STREAM_SPLIT);
    }
    builder.build()
}

pub fn rollup_writer_properties(row_group_rows: usize) -> WriterProperties {
    let mut builder =
        base_properties(row_group_rows, ROLLUP_PAGE_ROWS).set_sorting_columns(Some(vec![
            SortingColumn {
                column_idx: 0,
                descending: false,
                nulls_first: false,
            },
            SortingColumn {
                column_idx: 1,
                descending: false,
                nulls_first: false,
            },
        ]));
    builder = builder
        .set_column_dictionary_enabled(ColumnPath::from("hour"), false)
        .set_column_encoding(ColumnPath::from("hour"), Encoding::DELTA_BINARY_PACKED);
    builder.build()
}

/// Rows per readings data page at most (the 1 MiB page byte limit may end a page sooner).
/// Measured against 8 Ki and 256 Ki (docs/BENCHMARKS.md): 10% smaller files and less
/// per-page work in scans than 8 Ki, while one lift's day costs the same, because the lift and
/// time filters select rows before the other columns are decoded. 256 Ki made that day slower.
pub const READINGS_PAGE_ROWS: usize = 64 * 1024;

/// Rollup files are small (24 rows per lift and day) and read a lift at a time, so their pages
/// stay small.
pub const ROLLUP_PAGE_ROWS: usize = 8 * 1024;

fn base_properties(
    row_group_rows: usize,
    page_rows: usize,
) -> parquet::file::properties::WriterPropertiesBuilder {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("3 is a valid zstd level"),
        ))
        .set_max_row_group_row_count(Some(row_group_rows))
        .set_data_page_row_count_limit(page_rows)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_created_by("hoistway".into())
}

/// The schema as stable text: one `name: type [null]` line per field, for golden files.
pub fn describe(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| {
            format!(
                "{}: {}{}\n",
                f.name(),
                f.data_type(),
                if f.is_nullable() { " null" } else { "" }
            )
        })
        .collect()
}
