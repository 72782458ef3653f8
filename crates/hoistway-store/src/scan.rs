//! Scanning committed Parquet files with DataFusion, shared by compaction (a streaming
//! sort-preserving merge) and the query engine (the `readings` and rollup tables).

use std::sync::Arc;

use arrow::compute::SortOptions;
use arrow::datatypes::SchemaRef;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{
    FileGroup, FileGroupPartitioner, FileScanConfigBuilder, ParquetFileReaderFactory, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::physical_expr::expressions::col;
use datafusion::physical_expr::{LexOrdering, PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::ExecutionPlan;

use crate::manifest::{FileEntry, Tier};

/// The URL under which a tier's store is registered with DataFusion.
pub fn tier_url(tier: Tier) -> ObjectStoreUrl {
    ObjectStoreUrl::parse(format!("hoistway://{}", tier.as_str())).expect("a valid url")
}

/// The order every stored file is written in: `first`, then `second` ascending.
pub fn sort_order(schema: &SchemaRef, first: &str, second: &str) -> Result<LexOrdering> {
    let asc = SortOptions {
        descending: false,
        nulls_first: false,
    };
    Ok(LexOrdering::new(vec![
        PhysicalSortExpr::new(col(first, schema)?, asc),
        PhysicalSortExpr::new(col(second, schema)?, asc),
    ])
    .expect("two sort keys"))
}

/// Unordered scans of at least this many bytes in all are split into byte ranges.
const SPLIT_FILES_OVER_BYTES: usize = 8 << 20;

#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Row-group and page pruning, and filtering while decoding.
    pub predicate: Option<Arc<dyn PhysicalExpr>>,
    pub projection: Option<Vec<usize>>,
    /// Keep each file in its own partition and declare its sort order.
    pub ordering: Option<LexOrdering>,
    pub limit: Option<usize>,
    /// Partitions to spread files over when no ordering is needed.
    pub partitions: usize,
    /// How files are opened; queries pass one that caches footers and page indexes (stored
    /// files never change, so a year of rollups is not 365 footer reads per query).
    pub reader_factory: Option<Arc<dyn ParquetFileReaderFactory>>,
}

/// A plan reading `files` (all in one tier) with `schema`.
pub fn parquet_scan(
    tier: Tier,
    schema: SchemaRef,
    files: &[FileEntry],
    options: ScanOptions,
) -> Result<Arc<dyn ExecutionPlan>> {
    let mut source = ParquetSource::new(schema)
        .with_enable_page_index(true)
        .with_pushdown_filters(true);
    if let Some(predicate) = &options.predicate {
        source = source.with_predicate(predicate.clone());
    }
    if let Some(factory) = options.reader_factory {
        source = source.with_parquet_file_reader_factory(factory);
    }
    let partitioned = |f: &FileEntry| PartitionedFile::new(f.path.clone(), f.bytes);
    let groups: Vec<FileGroup> = if options.ordering.is_some() {
        files
            .iter()
            .map(|f| FileGroup::new(vec![partitioned(f)]))
            .collect()
    } else {
        // Byte ranges of equal size, so every partition (core) gets the same share of a scan
        // even when there are fewer files than partitions or the files differ in size; a
        // range reads the row groups whose middle falls in it. Below the threshold, whole
        // files spread round-robin are cheaper than opening one file twice.
        let all = FileGroup::new(files.iter().map(partitioned).collect());
        FileGroupPartitioner::new()
            .with_target_partitions(options.partitions.max(1))
            .with_repartition_file_min_size(SPLIT_FILES_OVER_BYTES)
            .repartition_file_groups(std::slice::from_ref(&all))
            .unwrap_or_else(|| {
                let n = options.partitions.max(1).min(files.len().max(1));
                let mut groups = vec![Vec::new(); n];
                for (i, f) in files.iter().enumerate() {
                    groups[i % n].push(partitioned(f));
                }
                groups.into_iter().map(FileGroup::new).collect()
            })
    };
    let mut builder = FileScanConfigBuilder::new(tier_url(tier), Arc::new(source))
        .with_file_groups(groups)
        .with_projection_indices(options.projection)?
        .with_limit(options.limit);
    if let Some(ordering) = options.ordering {
        builder = builder.with_output_ordering(vec![ordering]);
    }
    Ok(DataSourceExec::from_data_source(builder.build()))
}
