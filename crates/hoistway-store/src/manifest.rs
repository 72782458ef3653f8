//! The manifest: which files of a tier are committed. A data file is invisible until a manifest
//! that lists it has been written, and a manifest is written whole (a rename on local disk, a
//! single PUT on S3), so readers see either the old set of files or the new one.
//!
//! Each tier keeps its own manifest at `_hoistway/manifest.json`. The hot tier's also records
//! the log offset that everything committed covers and the next file id. File ids are unique
//! across tiers, so a crash in the middle of a tier move (the file listed in both) is resolved
//! on open by keeping the archive's copy.

use object_store::ObjectStoreExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The manifest format written (and the newest read). Pinned by the committed data dirs in
/// `crates/hoistway/tests/fixtures/`: a data dir of every earlier release must still open.
pub const FORMAT: u32 = 1;
pub const MANIFEST_PATH: &str = "_hoistway/manifest.json";

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[schema(as = StorageKind)]
pub enum Kind {
    /// Raw readings, under `readings/`.
    Readings,
    /// Hourly rollup partials, under `rollups_hourly/`.
    RollupsHourly,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Readings, Kind::RollupsHourly];

    pub fn dir(self) -> &'static str {
        match self {
            Kind::Readings => "readings",
            Kind::RollupsHourly => "rollups_hourly",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = StorageTier)]
pub enum Tier {
    Hot,
    Archive,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Hot => "hot",
            Tier::Archive => "archive",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub id: u64,
    pub kind: Kind,
    /// Path inside the tier's store, e.g. `readings/date=2026-11-23/f000000000042.parquet`.
    pub path: String,
    /// The partition: the UTC date (`YYYY-MM-DD`) of every row's event time, or the month
    /// (`YYYY-MM`) of an archived rollup file merged per month.
    pub date: String,
    /// 0: written by a flush; 1: written by compaction.
    pub level: u8,
    pub rows: u64,
    pub bytes: u64,
    pub min_ts_us: i64,
    pub max_ts_us: i64,
    pub min_lift: String,
    pub max_lift: String,
}

impl FileEntry {
    pub fn path_for(kind: Kind, date: &str, id: u64) -> String {
        let key = if date.len() == MONTH_LEN {
            "month"
        } else {
            "date"
        };
        format!("{}/{key}={date}/f{id:012}.parquet", kind.dir())
    }

    /// Whether this file holds a whole month (merged rollups), not one date.
    pub fn is_month(&self) -> bool {
        self.date.len() == MONTH_LEN
    }
}

/// `YYYY-MM`
const MONTH_LEN: usize = 7;

/// A file no longer listed, kept until queries that might still read it are over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Garbage {
    pub path: String,
    pub removed_us: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub generation: u64,
    /// Hot tier only: every reading from log records before this offset is in a listed file.
    #[serde(default)]
    pub log_offset: u64,
    /// Hot tier only: the id the next written file gets.
    #[serde(default)]
    pub next_file_id: u64,
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub garbage: Vec<Garbage>,
}

impl Manifest {
    pub fn new() -> Self {
        Self {
            format: FORMAT,
            next_file_id: 1,
            ..Default::default()
        }
    }

    pub async fn load(store: &dyn ObjectStore) -> Result<Option<Self>> {
        match store.get(&Path::from(MANIFEST_PATH)).await {
            Ok(got) => {
                let bytes = got.bytes().await?;
                let manifest = Self::decode(&bytes)?;
                Ok(Some(manifest))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A manifest from its JSON; a newer format is named as such even if its fields no longer
    /// parse.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let corrupt = |e: serde_json::Error| Error::Corrupt(format!("{MANIFEST_PATH}: {e}"));
        let head: Head = serde_json::from_slice(bytes).map_err(corrupt)?;
        if head.format != FORMAT {
            return Err(Error::Corrupt(format!(
                "{MANIFEST_PATH} is in format version {}, which this build does not read (it reads {FORMAT}); run the release that wrote it or a newer one",
                head.format
            )));
        }
        serde_json::from_slice(bytes).map_err(corrupt)
    }

    /// Writes the manifest whole; the previous one stays valid until this returns `Ok`.
    pub async fn save(&self, store: &dyn ObjectStore) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Corrupt(e.to_string()))?;
        store
            .put(&Path::from(MANIFEST_PATH), PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    /// Removes files from the listing and remembers them as garbage.
    pub fn remove(&mut self, ids: &[u64], now_us: i64) {
        let (gone, kept): (Vec<_>, Vec<_>) =
            self.files.drain(..).partition(|f| ids.contains(&f.id));
        self.files = kept;
        self.garbage.extend(gone.into_iter().map(|f| Garbage {
            path: f.path,
            removed_us: now_us,
        }));
    }

    pub fn rows(&self, kind: Kind) -> u64 {
        self.files
            .iter()
            .filter(|f| f.kind == kind)
            .map(|f| f.rows)
            .sum()
    }
}
