//! The manifest: which files of a tier are committed. A data file is invisible until a manifest
//! that lists it has been written, and a manifest is written whole (a rename on local disk, a
//! single PUT on S3), so readers see either the old set of files or the new one.
//!
//! Each tier has its own manifest. The hot tier's also records the log offset that everything
//! committed covers and the next file id. File ids are unique across tiers, so a crash in the
//! middle of a tier move (the file listed in both) is resolved on open by keeping the archive's
//! copy.
//!
//! Where manifests are kept is the [`ManifestStore`] seam: [`TierManifests`] keeps each at
//! `_hoistway/manifest.json` in its tier (standalone), and a catalog database keeps them where
//! every node sees them (`hoistway_postgres::PgManifestStore`). A commit is a compare-and-swap
//! on the generation, so a writer that missed another's commit fails instead of undoing it.

use object_store::ObjectStoreExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::{Error, Result, TierStore};

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

/// Where the manifests of both tiers are committed.
#[async_trait::async_trait]
pub trait ManifestStore: Send + Sync + std::fmt::Debug {
    /// The committed manifest of `tier`, if one was ever committed.
    async fn load(&self, tier: Tier) -> Result<Option<Manifest>>;

    /// The committed manifest of `tier` unless it is still generation `known` (a reader
    /// polling for the writer's commits moves a manifest only when it changed).
    async fn load_newer(&self, tier: Tier, known: u64) -> Result<Option<Manifest>> {
        Ok(self.load(tier).await?.filter(|m| m.generation != known))
    }

    /// Commits `manifest` as `tier`'s if the committed one is still the generation before it
    /// (`manifest.generation - 1`; 0 when none was committed), else [`Error::Conflict`] and
    /// nothing changes. Durable when it returns `Ok`.
    async fn commit(&self, tier: Tier, manifest: &Manifest) -> Result<()>;

    /// Where the manifests are, for the log.
    fn describe(&self) -> String;
}

/// Each tier's manifest at [`MANIFEST_PATH`] in the tier itself (fsynced on local disk). The
/// compare-and-swap is checked against the generation this process last loaded or committed:
/// one process writes a data dir (its lock keeps others out), so that is the committed one.
#[derive(Debug)]
pub struct TierManifests {
    hot: TierStore,
    archive: TierStore,
    /// The committed generation of each tier (hot, archive), once known.
    committed: Mutex<[Option<u64>; 2]>,
}

impl TierManifests {
    pub fn new(hot: TierStore, archive: TierStore) -> Self {
        Self {
            hot,
            archive,
            committed: Mutex::new([None, None]),
        }
    }

    fn tier(&self, tier: Tier) -> &TierStore {
        match tier {
            Tier::Hot => &self.hot,
            Tier::Archive => &self.archive,
        }
    }
}

#[async_trait::async_trait]
impl ManifestStore for TierManifests {
    async fn load(&self, tier: Tier) -> Result<Option<Manifest>> {
        let manifest = Manifest::load(self.tier(tier).store.as_ref()).await?;
        self.committed.lock()[tier as usize] = Some(manifest.as_ref().map_or(0, |m| m.generation));
        Ok(manifest)
    }

    async fn commit(&self, tier: Tier, manifest: &Manifest) -> Result<()> {
        let known = self.committed.lock()[tier as usize];
        let committed = match known {
            Some(g) => g,
            None => match Manifest::load(self.tier(tier).store.as_ref()).await? {
                Some(m) => m.generation,
                None => 0,
            },
        };
        if committed + 1 != manifest.generation {
            return Err(conflict(tier, committed, manifest.generation));
        }
        manifest.save(self.tier(tier).store.as_ref()).await?;
        let t = self.tier(tier).clone();
        tokio::task::spawn_blocking(move || t.sync(MANIFEST_PATH)).await??;
        self.committed.lock()[tier as usize] = Some(manifest.generation);
        Ok(())
    }

    fn describe(&self) -> String {
        format!("{MANIFEST_PATH} in each tier")
    }
}

/// The error of a lost compare-and-swap: generation `committed` is there, and `offered` is not
/// the one after it.
pub fn conflict(tier: Tier, committed: u64, offered: u64) -> Error {
    Error::Conflict(format!(
        "the {} manifest is at generation {committed}, so generation {offered} cannot follow it \
         (another writer committed meanwhile)",
        tier.as_str()
    ))
}

/// The behaviour every [`ManifestStore`] shows; run by each implementation's tests.
pub mod conformance {
    use super::*;

    fn file(id: u64) -> FileEntry {
        FileEntry {
            id,
            kind: Kind::Readings,
            path: FileEntry::path_for(Kind::Readings, "2026-11-23", id),
            date: "2026-11-23".into(),
            level: 0,
            rows: 10 * id,
            bytes: 100 * id,
            min_ts_us: 1,
            max_ts_us: 2,
            min_lift: "L1".into(),
            max_lift: "L9".into(),
        }
    }

    /// `store` starts empty; `other` is a second handle on the same manifests (another node),
    /// or `None` where there can be no other writer.
    pub async fn check(store: &dyn ManifestStore, other: Option<&dyn ManifestStore>) {
        for tier in [Tier::Hot, Tier::Archive] {
            assert_eq!(
                store.load(tier).await.unwrap(),
                None,
                "nothing committed yet"
            );
        }
        let mut hot = Manifest::new();
        hot.generation = 1;
        hot.log_offset = 42;
        hot.next_file_id = 3;
        hot.files = vec![file(1), file(2)];
        store.commit(Tier::Hot, &hot).await.unwrap();
        assert_eq!(store.load(Tier::Hot).await.unwrap().as_ref(), Some(&hot));
        assert_eq!(
            store.load(Tier::Archive).await.unwrap(),
            None,
            "tiers are apart"
        );
        assert_eq!(store.load_newer(Tier::Hot, 1).await.unwrap(), None);
        assert_eq!(
            store.load_newer(Tier::Hot, 0).await.unwrap().as_ref(),
            Some(&hot)
        );
        assert_eq!(store.load_newer(Tier::Archive, 0).await.unwrap(), None);

        // Only the generation after the committed one.
        for generation in [1, 3] {
            let mut stale = hot.clone();
            stale.generation = generation;
            stale.files.clear();
            let err = store.commit(Tier::Hot, &stale).await.unwrap_err();
            assert!(matches!(err, Error::Conflict(_)), "{err}");
        }
        assert_eq!(store.load(Tier::Hot).await.unwrap().as_ref(), Some(&hot));
        let mut next = hot.clone();
        next.generation = 2;
        next.remove(&[1], 7);
        store.commit(Tier::Hot, &next).await.unwrap();
        assert_eq!(store.load(Tier::Hot).await.unwrap().as_ref(), Some(&next));

        let mut archive = Manifest::new();
        archive.generation = 1;
        archive.files = vec![file(1)];
        store.commit(Tier::Archive, &archive).await.unwrap();
        assert_eq!(
            store.load(Tier::Archive).await.unwrap().as_ref(),
            Some(&archive)
        );

        let Some(other) = other else { return };
        // Another node sees what was committed, and of two writers from one generation only
        // the first commits.
        assert_eq!(other.load(Tier::Hot).await.unwrap().as_ref(), Some(&next));
        let mut theirs = next.clone();
        theirs.generation = 3;
        theirs.files.push(file(3));
        other.commit(Tier::Hot, &theirs).await.unwrap();
        let mut ours = next.clone();
        ours.generation = 3;
        ours.files.push(file(4));
        let err = store.commit(Tier::Hot, &ours).await.unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{err}");
        assert_eq!(store.load(Tier::Hot).await.unwrap().as_ref(), Some(&theirs));
    }
}
