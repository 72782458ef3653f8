//! The lift registry: which lifts exist, where they stand and who owns them.
//!
//! In: lifts added, changed or removed through the API/CLI, or imported from CSV.
//! Out: [`LiftInfo`] by id (from an in-memory copy, so the processor's per-reading lookup never
//! touches disk), lists filtered by building, site or customer.
//!
//! Stored behind [`RegistryStore`]: [`SqliteRegistryStore`] is the embedded catalog
//! (`registry.sqlite3` in the data dir) and [`conformance::check`] the suite every
//! implementation passes. Writes go to the store first; the in-memory copy then takes every
//! change since the revision it last read, its own and other nodes' alike ([`Registry::refresh`]).
//! Calls block: async callers use `spawn_blocking`. This crate knows nothing of readings or
//! state.

pub mod conformance;
pub mod sqlite;
pub mod store;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use chrono::NaiveDate;
use hoistway_model::LiftId;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

pub use sqlite::{SCHEMA_VERSION, SqliteRegistryStore};
pub use store::{Changed, RegistryStore, Stored};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("registry storage failed: {0}")]
    Storage(#[from] rusqlite::Error),
    /// A shared store's failure (not SQLite's).
    #[error("registry storage failed: {0}")]
    Backend(String),
    /// A shared store that cannot be reached now; worth retrying (503).
    #[error("registry storage is unavailable: {0}")]
    Unavailable(String),
    #[error("lift {0} is not registered")]
    NotFound(String),
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    #[error("csv line {line}: {message}")]
    Csv { line: u64, message: String },
    #[error(
        "{file} has schema version {version}, which this build does not read (it reads up to {SCHEMA_VERSION}); run the release that wrote it or a newer one"
    )]
    Format { file: String, version: u32 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One registered lift. `building`, `site` and `customer` are free-form ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LiftInfo {
    pub lift_id: LiftId,
    #[serde(default)]
    pub building: String,
    #[serde(default)]
    pub site: String,
    #[serde(default)]
    pub customer: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub install_date: Option<NaiveDate>,
    /// Trips the lift had done before Hoistway saw it (added to `trips_total`).
    #[serde(default)]
    pub initial_trips: u64,
}

/// Fields a change may set; absent ones keep their value.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LiftPatch {
    pub building: Option<String>,
    pub site: Option<String>,
    pub customer: Option<String>,
    pub model: Option<String>,
    pub install_date: Option<NaiveDate>,
    pub initial_trips: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ImportReport {
    pub created: u64,
    pub updated: u64,
}

/// One period in which a lift belonged to a customer (and stood in a building). The first
/// period of a lift starts at the beginning of time: its first owner owns its whole past,
/// backlog included. A change of customer or building closes the period at the moment of the
/// change and opens the next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Assignment {
    pub customer: String,
    pub building: String,
    /// Microseconds since the epoch; `None`: since the beginning.
    pub valid_from_us: Option<i64>,
    /// Exclusive; `None`: still current.
    pub valid_to_us: Option<i64>,
}

impl Assignment {
    fn start_us(&self) -> i64 {
        self.valid_from_us.unwrap_or(i64::MIN)
    }

    fn end_us(&self) -> i64 {
        self.valid_to_us.unwrap_or(i64::MAX)
    }
}

/// Every lift's assignment history, read under one lock (see [`Registry::with_ownership`]).
pub struct Ownership<'a> {
    history: &'a HashMap<LiftId, Vec<Assignment>>,
}

impl Ownership<'_> {
    /// Whether `customer` held `lift_id` for the whole of `[from_us, end_us)`. A reading at
    /// `t` asks for `[t, t + 1)`; an hourly rollup for the whole hour.
    pub fn held(&self, customer: &str, lift_id: &str, from_us: i64, end_us: i64) -> bool {
        self.history.get(lift_id).is_some_and(|periods| {
            periods
                .iter()
                .any(|a| a.customer == customer && a.start_us() <= from_us && end_us <= a.end_us())
        })
    }

    /// Whether `customer` ever held `lift_id`.
    pub fn ever_held(&self, customer: &str, lift_id: &str) -> bool {
        self.history
            .get(lift_id)
            .is_some_and(|periods| periods.iter().any(|a| a.customer == customer))
    }
}

#[derive(Debug, Clone, Default)]
pub struct LiftFilter {
    pub building: Option<String>,
    pub site: Option<String>,
    pub customer: Option<String>,
}

impl LiftFilter {
    pub fn matches(&self, l: &LiftInfo) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        eq(&self.building, &l.building)
            && eq(&self.site, &l.site)
            && eq(&self.customer, &l.customer)
    }
}

pub struct Registry {
    store: Arc<dyn RegistryStore>,
    lifts: RwLock<Catalog>,
    /// The store revision `lifts` reflects, when it was last read, and when (µs since the
    /// epoch, this node's clock) that read began; held while changes are applied.
    rev: Mutex<(i64, std::time::Instant, i64)>,
}

/// Now, in µs since the epoch, by this node's clock.
pub(crate) fn wall_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The registered lifts in memory, indexed by id and by building (a building's page and the
/// SQL `lift_state` table ask for one building among 200,000 lifts).
#[derive(Default)]
struct Catalog {
    by_id: HashMap<LiftId, Arc<LiftInfo>>,
    /// Every id in order: a page of the list starts where the last ended, without sorting all.
    ordered: BTreeSet<LiftId>,
    by_building: HashMap<String, BTreeSet<LiftId>>,
    /// Periods oldest first; the last is open while the lift is registered.
    history: HashMap<LiftId, Vec<Assignment>>,
}

impl Catalog {
    fn insert(&mut self, info: LiftInfo) {
        let info = Arc::new(info);
        if let Some(old) = self.by_id.insert(info.lift_id.clone(), info.clone()) {
            self.unindex(&old);
        }
        self.ordered.insert(info.lift_id.clone());
        self.by_building
            .entry(info.building.clone())
            .or_default()
            .insert(info.lift_id.clone());
    }

    fn remove(&mut self, lift_id: &str) {
        if let Some(old) = self.by_id.remove(lift_id) {
            self.unindex(&old);
            self.ordered.remove(lift_id);
        }
    }

    fn unindex(&mut self, old: &LiftInfo) {
        if let Some(ids) = self.by_building.get_mut(&old.building) {
            ids.remove(&old.lift_id);
            if ids.is_empty() {
                self.by_building.remove(&old.building);
            }
        }
    }
}

fn check_text(field: &str, v: &str) -> Result<()> {
    if v.len() > 128 || v.chars().any(char::is_control) {
        return Err(Error::Invalid {
            field: field.into(),
            message: "must be at most 128 characters without control characters".into(),
        });
    }
    Ok(())
}

impl LiftInfo {
    pub fn new(lift_id: LiftId) -> Self {
        Self {
            lift_id,
            building: String::new(),
            site: String::new(),
            customer: String::new(),
            model: String::new(),
            install_date: None,
            initial_trips: 0,
        }
    }

    fn validate(&self) -> Result<()> {
        check_text("building", &self.building)?;
        check_text("site", &self.site)?;
        check_text("customer", &self.customer)?;
        check_text("model", &self.model)?;
        if self.initial_trips > i64::MAX as u64 {
            return Err(Error::Invalid {
                field: "initial_trips".into(),
                message: "is too large".into(),
            });
        }
        Ok(())
    }

    pub fn apply(&mut self, patch: LiftPatch) {
        let LiftPatch {
            building,
            site,
            customer,
            model,
            install_date,
            initial_trips,
        } = patch;
        if let Some(v) = building {
            self.building = v;
        }
        if let Some(v) = site {
            self.site = v;
        }
        if let Some(v) = customer {
            self.customer = v;
        }
        if let Some(v) = model {
            self.model = v;
        }
        if install_date.is_some() {
            self.install_date = install_date;
        }
        if let Some(v) = initial_trips {
            self.initial_trips = v;
        }
    }
}

impl Registry {
    /// Opens the embedded catalog at `path` (created if missing); `":memory:"` for tests.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::with_store(Arc::new(SqliteRegistryStore::open(path)?))
    }

    /// Reads everything `store` holds into memory.
    pub fn with_store(store: Arc<dyn RegistryStore>) -> Result<Self> {
        let began_us = wall_us();
        let stored = store.load()?;
        let mut lifts = Catalog::default();
        for info in stored.lifts {
            lifts.insert(info);
        }
        lifts.history = stored.history.into_iter().collect();
        Ok(Self {
            store,
            lifts: RwLock::new(lifts),
            rev: Mutex::new((stored.rev, std::time::Instant::now(), began_us)),
        })
    }

    /// Takes every change written since the revision last read: this node's writes and, with a
    /// shared store, other nodes'. Returns how many lifts changed. Blocking.
    pub fn refresh(&self) -> Result<usize> {
        let mut guard = self.rev.lock();
        let (rev, read_at, began) = &mut *guard;
        let began_us = wall_us();
        let (changed, newest) = self.store.changed_since(*rev)?;
        *read_at = std::time::Instant::now();
        *began = began_us;
        let n = changed.len();
        if n > 0 {
            let mut lifts = self.lifts.write();
            for c in changed {
                match c.info {
                    Some(info) => lifts.insert(info),
                    None => lifts.remove(c.lift_id.as_str()),
                }
                lifts.history.insert(c.lift_id, c.history);
            }
        }
        *rev = newest.max(*rev);
        Ok(n)
    }

    /// [`refresh`](Self::refresh), unless the store was read less than `every` ago: for a
    /// lookup that missed, where another node may have registered the lift since.
    pub fn refresh_if_older(&self, every: std::time::Duration) -> Result<usize> {
        if self.rev.lock().1.elapsed() < every {
            return Ok(0);
        }
        self.refresh()
    }

    /// [`refresh`](Self::refresh), if the last read began before `at_us` (µs since the epoch:
    /// when a reading of a lift this node does not know was received, maybe just after the
    /// lift was registered on another node). Reads are at least `every` apart: one due sooner
    /// waits for the rest of it (a flood of readings of unknown lifts reads the store that
    /// often at most). Blocking.
    pub fn refresh_if_read_before(&self, at_us: i64, every: std::time::Duration) -> Result<usize> {
        let wait = {
            let guard = self.rev.lock();
            if guard.2 > at_us {
                return Ok(0);
            }
            every.saturating_sub(guard.1.elapsed())
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        self.refresh()
    }

    pub fn get(&self, lift_id: &str) -> Option<Arc<LiftInfo>> {
        self.lifts.read().by_id.get(lift_id).cloned()
    }

    pub fn contains(&self, lift_id: &str) -> bool {
        self.lifts.read().by_id.contains_key(lift_id)
    }

    pub fn len(&self) -> usize {
        self.lifts.read().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every lift matching `filter`, sorted by id.
    pub fn list(&self, filter: &LiftFilter) -> Vec<Arc<LiftInfo>> {
        let lifts = self.lifts.read();
        if let Some(building) = &filter.building {
            // The index keeps ids sorted.
            return lifts
                .by_building
                .get(building)
                .into_iter()
                .flatten()
                .filter_map(|id| lifts.by_id.get(id))
                .filter(|l| filter.matches(l))
                .cloned()
                .collect();
        }
        let mut out: Vec<_> = lifts
            .by_id
            .values()
            .filter(|l| filter.matches(l))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.lift_id.cmp(&b.lift_id));
        out
    }

    /// The lifts matching `filter`, in no particular order: for whole-fleet passes (counts,
    /// presence) that need no order and should not pay for sorting 200,000 ids.
    pub fn all(&self, filter: &LiftFilter) -> Vec<Arc<LiftInfo>> {
        let lifts = self.lifts.read();
        match &filter.building {
            Some(b) => lifts
                .by_building
                .get(b)
                .into_iter()
                .flatten()
                .filter_map(|id| lifts.by_id.get(id))
                .filter(|l| filter.matches(l))
                .cloned()
                .collect(),
            None => lifts
                .by_id
                .values()
                .filter(|l| filter.matches(l))
                .cloned()
                .collect(),
        }
    }

    /// One page of the lifts matching `filter` and `keep`, by id, after `after`: at most
    /// `limit`, and whether more follow. Walks the ids in order and stops at the page's end, so
    /// an early page of 200,000 lifts costs what the page costs.
    pub fn page(
        &self,
        filter: &LiftFilter,
        after: Option<&str>,
        limit: usize,
        mut keep: impl FnMut(&LiftInfo) -> bool,
    ) -> (Vec<Arc<LiftInfo>>, bool) {
        use std::ops::Bound;
        let lifts = self.lifts.read();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let ids: Box<dyn Iterator<Item = &LiftId>> = match &filter.building {
            Some(b) => match lifts.by_building.get(b) {
                Some(ids) => Box::new(ids.range::<str, _>((start, Bound::Unbounded))),
                None => Box::new(std::iter::empty()),
            },
            None => Box::new(lifts.ordered.range::<str, _>((start, Bound::Unbounded))),
        };
        let mut out = Vec::with_capacity(limit.min(1024));
        for id in ids {
            let Some(info) = lifts.by_id.get(id) else {
                continue;
            };
            if !filter.matches(info) || !keep(info) {
                continue;
            }
            if out.len() == limit {
                return (out, true);
            }
            out.push(info.clone());
        }
        (out, false)
    }

    /// Lifts matching `filter` and, if given, with one of `lift_ids`; sorted by id.
    pub fn select(&self, filter: &LiftFilter, lift_ids: Option<&[String]>) -> Vec<Arc<LiftInfo>> {
        let Some(ids) = lift_ids else {
            return self.list(filter);
        };
        let mut ids: Vec<&String> = ids.iter().collect();
        ids.sort();
        ids.dedup();
        ids.into_iter()
            .filter_map(|id| self.get(id))
            .filter(|info| filter.matches(info))
            .collect()
    }

    /// Adds or replaces a lift; returns whether it was new.
    pub fn upsert(&self, info: LiftInfo) -> Result<bool> {
        Ok(self.upsert_many(vec![info])?.created == 1)
    }

    /// Adds a lift only if it is not registered yet (auto-registration).
    pub fn insert_if_absent(&self, lift_id: &LiftId) -> Result<Arc<LiftInfo>> {
        if let Some(info) = self.get(lift_id.as_str()) {
            return Ok(info);
        }
        self.upsert(LiftInfo::new(lift_id.clone()))?;
        Ok(self.get(lift_id.as_str()).expect("just inserted"))
    }

    /// Changes the given fields of a registered lift.
    pub fn update(&self, lift_id: &str, patch: LiftPatch) -> Result<Arc<LiftInfo>> {
        let mut info = (*self
            .get(lift_id)
            .ok_or_else(|| Error::NotFound(lift_id.into()))?)
        .clone();
        info.apply(patch);
        self.upsert(info)?;
        Ok(self.get(lift_id).expect("just updated"))
    }

    /// Removes a lift; its assignment history stays (its past readings keep their owners).
    pub fn remove(&self, lift_id: &str) -> Result<bool> {
        let removed = self.store.remove(lift_id, now_us())?;
        self.refresh()?;
        Ok(removed)
    }

    /// The lift's assignment periods, oldest first.
    pub fn history(&self, lift_id: &str) -> Vec<Assignment> {
        self.lifts
            .read()
            .history
            .get(lift_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Runs `f` over every lift's history under one read lock (a query filters a whole batch
    /// of rows at once).
    pub fn with_ownership<R>(&self, f: impl FnOnce(&Ownership<'_>) -> R) -> R {
        let lifts = self.lifts.read();
        f(&Ownership {
            history: &lifts.history,
        })
    }

    /// Adds or replaces many lifts in one transaction: all or nothing. A lift given twice is
    /// written as its last row.
    pub fn upsert_many(&self, infos: Vec<LiftInfo>) -> Result<ImportReport> {
        for info in &infos {
            info.validate()?;
        }
        let rows = infos.len() as u64;
        // The last row of each lift, in the order of first appearance.
        let mut at: HashMap<LiftId, usize> = HashMap::new();
        let mut distinct: Vec<LiftInfo> = Vec::new();
        for info in infos {
            match at.get(&info.lift_id) {
                Some(&k) => distinct[k] = info,
                None => {
                    at.insert(info.lift_id.clone(), distinct.len());
                    distinct.push(info);
                }
            }
        }
        let existed = self.store.upsert(&distinct, now_us())?;
        let created = existed.iter().filter(|e| !**e).count() as u64;
        self.refresh()?;
        Ok(ImportReport {
            created,
            updated: rows - created,
        })
    }

    /// Imports CSV with a header row naming any of `lift_id` (required), `building`, `site`,
    /// `customer`, `model`, `install_date` (YYYY-MM-DD), `initial_trips`. Either every row is
    /// imported or, on the first bad row, none.
    pub fn import_csv(&self, csv_text: &[u8]) -> Result<ImportReport> {
        self.upsert_many(parse_csv(csv_text)?)
    }
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

pub fn parse_csv(csv_text: &[u8]) -> Result<Vec<LiftInfo>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(csv_text);
    let headers = reader
        .headers()
        .map_err(|e| Error::Csv {
            line: 1,
            message: e.to_string(),
        })?
        .clone();
    if !headers.iter().any(|h| h == "lift_id") {
        return Err(Error::Csv {
            line: 1,
            message: "header row must name a lift_id column".into(),
        });
    }
    let known = [
        "lift_id",
        "building",
        "site",
        "customer",
        "model",
        "install_date",
        "initial_trips",
    ];
    if let Some(unknown) = headers.iter().find(|h| !known.contains(h)) {
        return Err(Error::Csv {
            line: 1,
            message: format!(
                "unknown column {unknown:?}; columns are {}",
                known.join(", ")
            ),
        });
    }
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| Error::Csv {
            line: e.position().map_or(0, |p| p.line()),
            message: e.to_string(),
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let bad = |message: String| Error::Csv { line, message };
        let get = |name: &str| {
            headers
                .iter()
                .position(|h| h == name)
                .and_then(|i| record.get(i))
                .unwrap_or("")
        };
        let lift_id = LiftId::new(get("lift_id")).map_err(|e| bad(format!("lift_id: {e}")))?;
        let install_date = match get("install_date") {
            "" => None,
            d => Some(
                d.parse()
                    .map_err(|e| bad(format!("install_date {d:?}: {e} (use YYYY-MM-DD)")))?,
            ),
        };
        let initial_trips = match get("initial_trips") {
            "" => 0,
            n => n
                .parse()
                .map_err(|e| bad(format!("initial_trips {n:?}: {e}")))?,
        };
        out.push(LiftInfo {
            lift_id,
            building: get("building").into(),
            site: get("site").into(),
            customer: get("customer").into(),
            model: get("model").into(),
            install_date,
            initial_trips,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::SCHEMA_V1;
    use rusqlite::Connection;

    #[test]
    fn the_sqlite_store_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        conformance::check(&SqliteRegistryStore::open(dir.path().join("r.sqlite3")).unwrap());
        conformance::check(&SqliteRegistryStore::open(":memory:").unwrap());
    }

    #[test]
    fn two_registries_over_one_store_follow_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.sqlite3");
        let store: Arc<dyn RegistryStore> = Arc::new(SqliteRegistryStore::open(&path).unwrap());
        conformance::check_shared(
            &Registry::with_store(store.clone()).unwrap(),
            &Registry::with_store(store).unwrap(),
        );
    }

    #[test]
    fn an_unversioned_catalog_is_migrated_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.sqlite3");
        {
            // what releases before schema versions wrote: the table, user_version 0
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_V1).unwrap();
            conn.execute(
                "INSERT INTO lifts (lift_id, building) VALUES ('L1', 'B1')",
                [],
            )
            .unwrap();
        }
        let reg = Registry::open(&path).unwrap();
        assert_eq!(reg.get("L1").unwrap().building, "B1");
        drop(reg);
        let conn = Connection::open(&path).unwrap();
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = Registry::open(&path)
            .err()
            .expect("a newer schema is refused");
        let message = err.to_string();
        assert!(
            message.contains("registry.sqlite3")
                && message.contains(&format!("schema version {}", SCHEMA_VERSION + 1)),
            "{message}"
        );
    }

    #[test]
    fn a_page_starts_after_the_cursor_keeps_what_the_filters_keep_and_says_if_more_follow() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path().join("registry.sqlite3")).unwrap();
        for i in (0..20).rev() {
            let mut info = LiftInfo::new(LiftId::new(&format!("L{i:02}")).unwrap());
            info.building = format!("B{}", i % 2);
            reg.upsert(info).unwrap();
        }
        reg.remove("L03").unwrap();
        let ids = |v: &[Arc<LiftInfo>]| v.iter().map(|i| i.lift_id.to_string()).collect::<Vec<_>>();
        let all = LiftFilter::default();
        let (page, more) = reg.page(&all, None, 3, |_| true);
        assert_eq!(
            (ids(&page), more),
            (vec!["L00".into(), "L01".into(), "L02".into()], true)
        );
        let (page, more) = reg.page(&all, Some("L02"), 2, |_| true);
        assert_eq!(
            (ids(&page), more),
            (vec!["L04".into(), "L05".into()], true),
            "L03 is gone"
        );
        let odd = LiftFilter {
            building: Some("B1".into()),
            ..Default::default()
        };
        let (page, more) = reg.page(&odd, Some("L13"), 10, |_| true);
        assert_eq!(
            (ids(&page), more),
            (vec!["L15".into(), "L17".into(), "L19".into()], false)
        );
        let (page, more) = reg.page(&all, None, 10, |i| i.lift_id.as_str().ends_with('7'));
        assert_eq!(
            (ids(&page), more),
            (vec!["L07".into(), "L17".into()], false)
        );
        let (page, more) = reg.page(&all, Some("L19"), 10, |_| true);
        assert!(page.is_empty() && !more);
        assert_eq!(
            reg.page(&all, None, 1000, |_| true).0.len(),
            reg.list(&all).len()
        );
        let mut unordered = ids(&reg.all(&odd));
        unordered.sort();
        assert_eq!(unordered, ids(&reg.list(&odd)));
    }

    #[test]
    fn a_change_of_hands_closes_one_period_and_opens_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.sqlite3");
        let reg = Registry::open(&path).unwrap();
        let mut info = LiftInfo::new(LiftId::new("L1").unwrap());
        info.customer = "acme".into();
        reg.upsert(info).unwrap();
        let before = now_us();
        // Changes that keep customer and building open no period.
        reg.update(
            "L1",
            LiftPatch {
                model: Some("M2".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(reg.history("L1").len(), 1);
        std::thread::sleep(std::time::Duration::from_millis(2));
        reg.update(
            "L1",
            LiftPatch {
                customer: Some("bolt".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let after = now_us() + 1;
        let check = |reg: &Registry| {
            let h = reg.history("L1");
            assert_eq!(h.len(), 2, "{h:?}");
            assert_eq!((h[0].customer.as_str(), h[0].valid_from_us), ("acme", None));
            assert_eq!(h[0].valid_to_us, h[1].valid_from_us);
            assert_eq!((h[1].customer.as_str(), h[1].valid_to_us), ("bolt", None));
            reg.with_ownership(|o| {
                // The first owner owns the lift's whole past, backlog included.
                assert!(o.held("acme", "L1", i64::MIN + 1, before));
                assert!(!o.held("bolt", "L1", before, before + 1));
                assert!(o.held("bolt", "L1", after, after + 1));
                assert!(!o.held("acme", "L1", after, after + 1));
                // A span across the change belongs to neither.
                assert!(!o.held("acme", "L1", before, after));
                assert!(!o.held("bolt", "L1", before, after));
                assert!(o.ever_held("acme", "L1") && !o.ever_held("carl", "L1"));
            });
        };
        check(&reg);
        drop(reg);
        check(&Registry::open(&path).unwrap());
        // Removal closes the period; the history stays for the readings already taken.
        let reg = Registry::open(&path).unwrap();
        reg.remove("L1").unwrap();
        let h = reg.history("L1");
        assert!(h[1].valid_to_us.is_some());
        reg.with_ownership(|o| assert!(!o.held("bolt", "L1", now_us() + 1, now_us() + 2)));
    }

    #[test]
    fn csv_import_survives_reopen_and_updates_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.sqlite3");
        let reg = Registry::open(&path).unwrap();
        let csv = b"lift_id,building,customer,install_date,initial_trips\nL1,B1,acme,2020-01-02,500\nL2,B1,acme,,0\n";
        assert_eq!(
            reg.import_csv(csv).unwrap(),
            ImportReport {
                created: 2,
                updated: 0
            }
        );
        let again = reg.import_csv(b"lift_id,building\nL2,B2\n").unwrap();
        assert_eq!(again.updated, 1);
        drop(reg);
        let reg = Registry::open(&path).unwrap();
        assert_eq!(reg.len(), 2);
        let l1 = reg.get("L1").unwrap();
        assert_eq!(l1.initial_trips, 500);
        assert_eq!(l1.install_date, NaiveDate::from_ymd_opt(2020, 1, 2));
        assert_eq!(reg.get("L2").unwrap().building, "B2");
        let b1 = reg.list(&LiftFilter {
            building: Some("B1".into()),
            ..Default::default()
        });
        assert_eq!(b1.len(), 1);
    }

    #[test]
    fn a_bad_csv_row_imports_nothing_and_names_the_line() {
        let reg = Registry::open(":memory:").unwrap();
        let err = reg
            .import_csv(b"lift_id,initial_trips\nL1,5\nL 2,7\n")
            .unwrap_err();
        assert!(err.to_string().contains("line 3"), "{err}");
        assert!(reg.is_empty());
        let err = reg.import_csv(b"lift,building\nL1,B\n").unwrap_err();
        assert!(err.to_string().contains("lift_id"), "{err}");
    }

    #[test]
    fn update_changes_only_given_fields() {
        let reg = Registry::open(":memory:").unwrap();
        let mut info = LiftInfo::new(LiftId::new("L1").unwrap());
        info.building = "B1".into();
        info.initial_trips = 10;
        reg.upsert(info).unwrap();
        let updated = reg
            .update(
                "L1",
                LiftPatch {
                    initial_trips: Some(99),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(updated.initial_trips, 99);
        assert_eq!(updated.building, "B1");
        assert!(matches!(
            reg.update("nope", LiftPatch::default()),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn the_building_index_follows_moves_and_removals() {
        let reg = Registry::open(":memory:").unwrap();
        reg.import_csv(b"lift_id,building,site\nL3,B1,S1\nL1,B1,S2\nL2,B2,S1\n")
            .unwrap();
        let in_building = |b: &str, site: Option<&str>| -> Vec<String> {
            reg.list(&LiftFilter {
                building: Some(b.into()),
                site: site.map(Into::into),
                ..Default::default()
            })
            .iter()
            .map(|l| l.lift_id.as_str().to_string())
            .collect()
        };
        assert_eq!(in_building("B1", None), ["L1", "L3"], "sorted by id");
        assert_eq!(
            in_building("B1", Some("S1")),
            ["L3"],
            "other fields still filter"
        );
        reg.update(
            "L3",
            LiftPatch {
                building: Some("B2".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(in_building("B1", None), ["L1"]);
        assert_eq!(in_building("B2", None), ["L2", "L3"]);
        reg.remove("L1").unwrap();
        assert!(in_building("B1", None).is_empty());
        assert!(
            !reg.lifts.read().by_building.contains_key("B1"),
            "no empty sets left"
        );
    }
}
