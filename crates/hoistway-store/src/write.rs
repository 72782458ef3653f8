//! Encoding readings and rollup partials as Parquet: whole files in memory for a flush, and a
//! streaming, rolling writer for compaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use arrow::datatypes::{SchemaRef, TimestampMicrosecondType};
use bytes::Bytes;
use object_store::ObjectStore;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::ArrowWriter;
use parquet::arrow::async_writer::AsyncArrowWriter;
use parquet::file::properties::WriterProperties;

use crate::manifest::{FileEntry, Kind};
use crate::schema::{self, READINGS, ROLLUP_PARTIALS, col};
use crate::{DAY_US, Result, date_of, rollup};

/// A file encoded in memory, not yet written.
#[derive(Debug)]
pub struct Encoded {
    pub kind: Kind,
    pub date: String,
    pub bytes: Bytes,
    pub stats: BatchStats,
}

#[derive(Debug, Clone, Default)]
pub struct BatchStats {
    pub rows: u64,
    pub min_ts_us: i64,
    pub max_ts_us: i64,
    pub min_lift: String,
    pub max_lift: String,
}

impl BatchStats {
    /// Stats of a batch sorted by lift id, whose columns 0 and 1 are the lift id and a time.
    pub fn of_sorted(batch: &RecordBatch) -> Self {
        let n = batch.num_rows();
        if n == 0 {
            return Self::default();
        }
        let lift = batch.column(0).as_string::<i32>();
        let ts = batch.column(1).as_primitive::<TimestampMicrosecondType>();
        Self {
            rows: n as u64,
            min_ts_us: arrow::compute::min(ts).unwrap_or_default(),
            max_ts_us: arrow::compute::max(ts).unwrap_or_default(),
            min_lift: lift.value(0).to_owned(),
            max_lift: lift.value(n - 1).to_owned(),
        }
    }

    pub fn merge(&mut self, other: &BatchStats) {
        if other.rows == 0 {
            return;
        }
        if self.rows == 0 {
            *self = other.clone();
            return;
        }
        self.rows += other.rows;
        self.min_ts_us = self.min_ts_us.min(other.min_ts_us);
        self.max_ts_us = self.max_ts_us.max(other.max_ts_us);
        if other.min_lift < self.min_lift {
            self.min_lift = other.min_lift.clone();
        }
        if other.max_lift > self.max_lift {
            self.max_lift = other.max_lift.clone();
        }
    }

    pub fn entry(&self, kind: Kind, date: &str, id: u64, level: u8, bytes: u64) -> FileEntry {
        FileEntry {
            id,
            kind,
            path: FileEntry::path_for(kind, date, id),
            date: date.to_owned(),
            level,
            rows: self.rows,
            bytes,
            min_ts_us: self.min_ts_us,
            max_ts_us: self.max_ts_us,
            min_lift: self.min_lift.clone(),
            max_lift: self.max_lift.clone(),
        }
    }
}

impl Encoded {
    pub fn entry(&self, id: u64, level: u8) -> FileEntry {
        self.stats
            .entry(self.kind, &self.date, id, level, self.bytes.len() as u64)
    }
}

/// Sorts a batch by its first two columns (lift id, time).
pub fn sort_by_lift_and_time(batch: &RecordBatch) -> Result<RecordBatch> {
    let indices = lexsort_to_indices(
        &[
            SortColumn {
                values: batch.column(0).clone(),
                options: None,
            },
            SortColumn {
                values: batch.column(1).clone(),
                options: None,
            },
        ],
        None,
    )?;
    Ok(take_record_batch(batch, &indices)?)
}

pub fn encode(batch: &RecordBatch, props: WriterProperties) -> Result<Bytes> {
    let mut out = Vec::with_capacity(batch.get_array_memory_size() / 4);
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(props))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(Bytes::from(out))
}

/// A flush's files: per UTC date of the event time, one readings file sorted by (lift, ts) and
/// one file of hourly rollup partials.
pub fn encode_flush(batches: &[RecordBatch], row_group_rows: usize) -> Result<Vec<Encoded>> {
    let all = concat_batches(&READINGS, batches)?;
    let sorted = sort_by_lift_and_time(&all)?;
    let ts = sorted
        .column(col::TS)
        .as_primitive::<TimestampMicrosecondType>();
    let mut rows_by_day: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    for (i, t) in ts.values().iter().enumerate() {
        rows_by_day
            .entry(t.div_euclid(DAY_US))
            .or_default()
            .push(i as u32);
    }
    let mut out = Vec::new();
    for (day, rows) in rows_by_day {
        let date = date_of(day * DAY_US);
        let day_batch = if rows.len() == sorted.num_rows() {
            sorted.clone()
        } else {
            take_record_batch(&sorted, &UInt32Array::from(rows))?
        };
        let partials = rollup::partials_of_readings(std::slice::from_ref(&day_batch));
        out.push(Encoded {
            kind: Kind::Readings,
            date: date.clone(),
            bytes: encode(
                &day_batch,
                schema::readings_writer_properties(row_group_rows),
            )?,
            stats: BatchStats::of_sorted(&day_batch),
        });
        out.push(Encoded {
            kind: Kind::RollupsHourly,
            date,
            bytes: encode(&partials, schema::rollup_writer_properties(row_group_rows))?,
            stats: BatchStats::of_sorted(&partials),
        });
    }
    Ok(out)
}

pub fn schema_of(kind: Kind) -> SchemaRef {
    match kind {
        Kind::Readings => READINGS.clone(),
        Kind::RollupsHourly => ROLLUP_PARTIALS.clone(),
    }
}

pub fn properties_of(kind: Kind, row_group_rows: usize) -> WriterProperties {
    match kind {
        Kind::Readings => schema::readings_writer_properties(row_group_rows),
        Kind::RollupsHourly => schema::rollup_writer_properties(row_group_rows),
    }
}

/// A file written while streaming (multipart upload on S3); finished files are returned with
/// their stats but are not committed.
pub struct RollingWriter {
    store: Arc<dyn ObjectStore>,
    kind: Kind,
    date: String,
    props: WriterProperties,
    max_rows: usize,
    ids: Box<dyn FnMut() -> u64 + Send>,
    current: Option<(u64, AsyncArrowWriter<BufWriter>, BatchStats)>,
    pub finished: Vec<(u64, BatchStats, String)>,
}

impl RollingWriter {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        kind: Kind,
        date: String,
        props: WriterProperties,
        max_rows: usize,
        ids: Box<dyn FnMut() -> u64 + Send>,
    ) -> Self {
        Self {
            store,
            kind,
            date,
            props,
            max_rows,
            ids,
            current: None,
            finished: Vec::new(),
        }
    }

    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.current.is_none() {
            let id = (self.ids)();
            let path = FileEntry::path_for(self.kind, &self.date, id);
            let object = BufWriter::new(self.store.clone(), Path::from(path));
            let writer =
                AsyncArrowWriter::try_new(object, schema_of(self.kind), Some(self.props.clone()))?;
            self.current = Some((id, writer, BatchStats::default()));
        }
        let (_, writer, stats) = self.current.as_mut().expect("just opened");
        writer.write(batch).await?;
        stats.merge(&BatchStats::of_sorted(batch));
        if stats.rows as usize >= self.max_rows {
            self.roll().await?;
        }
        Ok(())
    }

    async fn roll(&mut self) -> Result<()> {
        if let Some((id, writer, stats)) = self.current.take() {
            writer.close().await?;
            let path = FileEntry::path_for(self.kind, &self.date, id);
            self.finished.push((id, stats, path));
        }
        Ok(())
    }

    /// Closes the current file; returns every file written.
    pub async fn finish(mut self) -> Result<Vec<(u64, BatchStats, String)>> {
        self.roll().await?;
        Ok(self.finished)
    }

    /// Paths of every file started, for cleanup after a failure.
    pub fn started_paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = self.finished.iter().map(|f| f.2.clone()).collect();
        if let Some((id, _, _)) = &self.current {
            paths.push(FileEntry::path_for(self.kind, &self.date, *id));
        }
        paths
    }
}
