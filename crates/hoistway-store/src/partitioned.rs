//! Several partitions' stores, read as one.
//!
//! With several partitions each partition's holder writes its own files, under
//! `partitions/<p>/` in the shared tiers, and lists them in its own catalog (its own manifests),
//! so holders never share a manifest or a file id and one partition moving to another node
//! touches no other. Queries see every partition at once: [`Stores::snapshot`] merges the
//! partitions' snapshots, with each file's path taken from the tier's root. With one partition
//! the files stay where a standalone server keeps them, at the tiers' roots.

use std::sync::Arc;

use crate::{
    FileEntry, MaintenanceReport, Manifest, Result, Snapshot, Store, StoreConfig, StoreStatus,
    Tier, TierManifests, TierStore, status_of,
};

/// Where partition `partition`'s files are in shared tiers, when there are several partitions.
pub fn partition_dir(partition: u16) -> String {
    format!("partitions/{partition}")
}

impl TierStore {
    /// The same tier, scoped to the directory `dir` inside it (created if local).
    pub fn within(&self, dir: &str) -> Result<Self> {
        let store: Arc<dyn object_store::ObjectStore> = Arc::new(
            object_store::prefix::PrefixStore::new(self.store.clone(), dir),
        );
        let local_dir = match &self.local_dir {
            Some(root) => {
                let dir = root.join(dir);
                std::fs::create_dir_all(&dir)?;
                Some(dir)
            }
            None => None,
        };
        Ok(Self { store, local_dir })
    }
}

impl StoreConfig {
    /// Partition `partition`'s share of these tiers, among `partitions`: the tiers themselves
    /// when there is one partition, its [`partition_dir`] in each when there are several, with
    /// the manifests in those directories ([`TierManifests`]; a catalog kept elsewhere, such as
    /// PostgreSQL's, is set on the result).
    pub fn of_partition(&self, partition: u16, partitions: u16) -> Result<Self> {
        let mut config = self.clone();
        if partitions > 1 {
            let dir = partition_dir(partition);
            config.hot = self.hot.within(&dir)?;
            config.archive = self.archive.within(&dir)?;
            config.manifests = Arc::new(TierManifests::new(
                config.hot.clone(),
                config.archive.clone(),
            ));
        }
        Ok(config)
    }
}

/// Every partition's store of a node, read as one.
#[derive(Clone)]
pub struct Stores {
    hot: TierStore,
    archive: TierStore,
    /// Each partition's store, with its files' directory in the tiers ("" with one partition).
    parts: Arc<[(String, Arc<Store>)]>,
}

impl Stores {
    /// One partition's store (a standalone server's).
    pub fn one(store: Arc<Store>) -> Self {
        Self {
            hot: store.config().hot.clone(),
            archive: store.config().archive.clone(),
            parts: Arc::new([(String::new(), store)]),
        }
    }

    /// `parts[p]` opened on [`StoreConfig::of_partition`]`(p, parts.len())` of `tiers`.
    pub fn partitioned(tiers: &StoreConfig, parts: Vec<Arc<Store>>) -> Self {
        assert!(
            !parts.is_empty(),
            "a node has at least one partition's store"
        );
        let several = parts.len() > 1;
        Self {
            hot: tiers.hot.clone(),
            archive: tiers.archive.clone(),
            parts: parts
                .into_iter()
                .enumerate()
                .map(|(p, store)| {
                    let dir = if several {
                        partition_dir(p as u16)
                    } else {
                        String::new()
                    };
                    (dir, store)
                })
                .collect(),
        }
    }

    /// The tier every partition's files are in (paths in [`Stores::snapshot`] are from here).
    pub fn tier(&self, tier: Tier) -> &TierStore {
        match tier {
            Tier::Hot => &self.hot,
            Tier::Archive => &self.archive,
        }
    }

    /// Each partition's store, in partition order.
    pub fn parts(&self) -> impl Iterator<Item = &Arc<Store>> {
        self.parts.iter().map(|(_, store)| store)
    }

    /// One view of every partition for a query, each partition's as of the same moment, files
    /// with their paths from the tiers' roots.
    pub fn snapshot(&self) -> Snapshot {
        if let [(dir, store)] = &self.parts[..]
            && dir.is_empty()
        {
            return store.snapshot();
        }
        let (mut hot, mut archive, mut buffer) = (Manifest::new(), Manifest::new(), Vec::new());
        for (dir, store) in self.parts.iter() {
            let part = store.snapshot();
            let rooted = |f: &FileEntry| FileEntry {
                path: format!("{dir}/{}", f.path),
                ..f.clone()
            };
            hot.files.extend(part.hot.files.iter().map(rooted));
            archive.files.extend(part.archive.files.iter().map(rooted));
            buffer.extend(part.buffer);
        }
        Snapshot {
            hot: Arc::new(hot),
            archive: Arc::new(archive),
            buffer,
        }
    }

    /// The files and readings of every partition together.
    pub fn status(&self) -> StoreStatus {
        if let [(_, store)] = &self.parts[..] {
            return store.status();
        }
        let mut catalogs = Vec::with_capacity(self.parts.len());
        let mut buffered_rows = 0;
        let mut cutoff = i64::MAX;
        for store in self.parts() {
            let (manifests, buffered) = store.catalog();
            catalogs.push(manifests);
            buffered_rows += buffered;
            cutoff = cutoff.min(store.clock.now_us() - store.config.hot_retention_us);
        }
        status_of(&catalogs, buffered_rows, cutoff)
    }

    /// One pass of upkeep over each partition's files, in turn.
    pub async fn maintain(&self) -> Result<MaintenanceReport> {
        let mut total = MaintenanceReport::default();
        for store in self.parts() {
            total.add(&store.maintain().await?);
        }
        Ok(total)
    }
}

impl From<Arc<Store>> for Stores {
    fn from(store: Arc<Store>) -> Self {
        Self::one(store)
    }
}
