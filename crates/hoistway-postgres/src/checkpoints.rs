//! [`CheckpointStore`] and [`DeadLetters`] in PostgreSQL: each partition's checkpoint and
//! epoch in `processor_partitions`, dead letters in `processor_dead_letters`.
//!
//! A claim takes the partition's lease where none runs (`lease_until` by the server's clock, so
//! the nodes' clocks do not matter) and raises its epoch, in one statement; a commit locks the
//! partition's row,
//! checks the committer's epoch against it, and writes the dead letters and the state in the
//! same transaction, so a fenced processor leaves nothing and a crash mid-commit leaves the
//! previous checkpoint with its dead letters. The state is the checkpoint file's bytes
//! (`hoistway_processor::checkpoint`, versioned and checksummed), the dead letters the lines of
//! a dead-letter file, so both read as their embedded counterparts do.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hoistway_dlq::{
    DeadLetter, DeadLetterQueue, DeadLetters, DlqFile, count_reasons, decode_lines, encode_lines,
};
use hoistway_processor::checkpoint;
use hoistway_processor::state::FleetState;
use hoistway_processor::store::{CheckpointStore, Claim, Claimed, Commit, Lease, StoreError};

use crate::{Error, Postgres};

/// The component name in `schema_versions`.
pub const COMPONENT: &str = "processor";

/// `MIGRATIONS[n]` takes the processor tables from version `n` to `n + 1`.
pub const MIGRATIONS: &[&str] = &["
    CREATE TABLE processor_partitions (
        partition integer PRIMARY KEY,
        epoch bigint NOT NULL,
        holder text,
        lease_until timestamptz,
        checkpoint_offset bigint,
        state bytea,
        committed_at timestamptz);
    CREATE TABLE processor_dead_letters (
        partition integer NOT NULL,
        first_offset bigint NOT NULL,
        last_offset bigint NOT NULL,
        items bigint NOT NULL,
        bytes bigint NOT NULL,
        reasons text NOT NULL,
        lines text NOT NULL,
        replayed_at timestamptz,
        PRIMARY KEY (partition, first_offset, last_offset));
    CREATE INDEX processor_dead_letters_pending ON processor_dead_letters (first_offset)
        WHERE replayed_at IS NULL;
"];

/// Checkpoints and dead letters of every partition, shared by every processor given `pg`.
pub struct PgCheckpointStore {
    pg: Postgres,
    /// Bytes of pending dead letters as last counted.
    pending: AtomicU64,
}

fn store_error(e: Error) -> StoreError {
    match e {
        Error::Unavailable(m) => StoreError::Unavailable(m),
        other => StoreError::Failed(other.to_string()),
    }
}

fn dlq_error(e: Error) -> hoistway_dlq::Error {
    match e {
        Error::Unavailable(m) => hoistway_dlq::Error::Unavailable(m),
        other => hoistway_dlq::Error::Backend(other.to_string()),
    }
}

/// A batch's id: as a dead-letter file of partition 0 is named; `p{n}-` before it for others.
fn batch_id(partition: i32, first: i64, last: i64) -> String {
    let range = format!("{first:020}-{last:020}");
    if partition == 0 {
        range
    } else {
        format!("p{partition}-{range}")
    }
}

fn parse_id(id: &str) -> Option<(i32, i64, i64)> {
    let (partition, range) = match id.strip_prefix('p') {
        Some(rest) => {
            let (p, range) = rest.split_once('-')?;
            (p.parse().ok()?, range)
        }
        None => (0, id),
    };
    let (first, last) = range.split_once('-')?;
    if first.len() != 20 || last.len() != 20 {
        return None;
    }
    Some((partition, first.parse().ok()?, last.parse().ok()?))
}

impl PgCheckpointStore {
    /// Opens the processor tables of `pg`, creating or migrating them.
    pub fn open(pg: Postgres) -> Result<Self, StoreError> {
        pg.migrate(COMPONENT, MIGRATIONS).map_err(store_error)?;
        let store = Self {
            pg,
            pending: AtomicU64::new(0),
        };
        store.size();
        Ok(store)
    }

    /// Moves a data dir's checkpoint (and the dead letters it covers) here as `partition`'s,
    /// where that partition has none yet: what a node kept in files before its checkpoints
    /// moved to PostgreSQL. The file is then renamed `checkpoint.bin.moved`. Returns the offset
    /// moved, or `None` when there was nothing to move (or PostgreSQL already holds a
    /// checkpoint, which wins: the file is left as it is, with a warning).
    pub fn adopt_files(
        &self,
        partition: u16,
        state_dir: &Path,
        dlq_dir: &Path,
    ) -> Result<Option<u64>, StoreError> {
        let path = state_dir.join(checkpoint::FILE_NAME);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let offset = checkpoint::decode(&bytes)
            .map_err(|why| {
                StoreError::Unreadable(format!("{} is unreadable: {why}", path.display()))
            })?
            .offset;
        // Dead-letter files the checkpoint covers (later ones belong to an unfinished one).
        let mut batches = Vec::new();
        if dlq_dir.is_dir() {
            let dlq = DeadLetterQueue::open(dlq_dir)?;
            for file in dlq.list()? {
                if file.first_offset < offset {
                    let letters = dlq.read(&file.id)?;
                    batches.push((file.first_offset as i64, file.last_offset as i64, letters));
                }
            }
        }
        let p = i32::from(partition);
        let adopted = self
            .pg
            .block(async {
                let mut client = self.pg.client().await?;
                let tx = client.transaction().await?;
                tx.execute(
                    "INSERT INTO processor_partitions (partition, epoch) VALUES ($1, 0)
                     ON CONFLICT (partition) DO NOTHING",
                    &[&p],
                )
                .await?;
                let held: Option<i64> = tx
                    .query_one(
                        "SELECT checkpoint_offset FROM processor_partitions
                         WHERE partition = $1 FOR UPDATE",
                        &[&p],
                    )
                    .await?
                    .get(0);
                if held.is_some() {
                    return Ok(false);
                }
                for (first, last, letters) in &batches {
                    let lines = String::from_utf8(encode_lines(letters)).expect("JSON is UTF-8");
                    tx.execute(
                        "INSERT INTO processor_dead_letters
                             (partition, first_offset, last_offset, items, bytes, reasons, lines)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)
                         ON CONFLICT (partition, first_offset, last_offset) DO NOTHING",
                        &[
                            &p,
                            first,
                            last,
                            &(letters.len() as i64),
                            &(lines.len() as i64),
                            &crate::to_json(&count_reasons(letters)),
                            &lines,
                        ],
                    )
                    .await?;
                }
                tx.execute(
                    "UPDATE processor_partitions
                     SET checkpoint_offset = $2, state = $3, committed_at = now()
                     WHERE partition = $1",
                    &[&p, &(offset as i64), &bytes],
                )
                .await?;
                tx.commit().await?;
                Ok::<_, Error>(true)
            })
            .map_err(store_error)?;
        if !adopted {
            tracing::warn!(
                file = %path.display(),
                "PostgreSQL already holds this partition's checkpoint; the data dir's is ignored"
            );
            return Ok(None);
        }
        std::fs::rename(
            &path,
            state_dir.join(format!("{}.moved", checkpoint::FILE_NAME)),
        )?;
        let _ = self.count_pending();
        Ok(Some(offset))
    }

    fn count_pending(&self) -> crate::Result<(u64, u64)> {
        let (files, bytes) = self.pg.block(async {
            let client = self.pg.client().await?;
            let row = client
                .query_one(
                    "SELECT count(*), coalesce(sum(bytes), 0)::bigint FROM processor_dead_letters
                     WHERE replayed_at IS NULL",
                    &[],
                )
                .await?;
            Ok::<_, Error>((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
        })?;
        self.pending.store(bytes, Ordering::Relaxed);
        metrics::gauge!("hoistway_dlq_pending_bytes").set(bytes as f64);
        Ok((files, bytes))
    }
}

impl PgCheckpointStore {
    fn decode(&self, partition: u16, bytes: &[u8]) -> Result<FleetState, StoreError> {
        let decoded = checkpoint::decode_partition(bytes, partition).map(|(state, _)| state);
        decoded.map_err(|why| {
            StoreError::Unreadable(format!(
                "the checkpoint of partition {partition} in the PostgreSQL schema {:?} is unreadable: {why}",
                self.pg.schema()
            ))
        })
    }
}

impl CheckpointStore for PgCheckpointStore {
    fn latest(&self, partition: u16, known: Option<u64>) -> Result<Option<FleetState>, StoreError> {
        let p = i32::from(partition);
        let known = known.map(|o| o as i64);
        let bytes = self
            .pg
            .block(async {
                let client = self.pg.client().await?;
                let row = client
                    .query_opt(
                        "SELECT state FROM processor_partitions
                         WHERE partition = $1 AND state IS NOT NULL
                           AND checkpoint_offset IS DISTINCT FROM $2",
                        &[&p, &known],
                    )
                    .await?;
                Ok::<_, Error>(row.map(|r| r.get::<_, Vec<u8>>(0)))
            })
            .map_err(store_error)?;
        bytes.map(|b| self.decode(partition, &b)).transpose()
    }

    fn claim(&self, partition: u16, lease: &Lease) -> Result<Claimed, StoreError> {
        let p = i32::from(partition);
        let ttl = lease.ttl.as_secs_f64();
        let granted = self
            .pg
            .block(async {
                let client = self.pg.client().await?;
                let row = client
                    .query_opt(
                        "INSERT INTO processor_partitions AS p (partition, epoch, holder, lease_until)
                         VALUES ($1, 1, $2, clock_timestamp() + make_interval(secs => $3))
                         ON CONFLICT (partition) DO UPDATE
                         SET epoch = p.epoch + 1, holder = excluded.holder,
                             lease_until = excluded.lease_until
                         WHERE p.lease_until IS NULL OR p.lease_until <= clock_timestamp()
                         RETURNING epoch, state",
                        &[&p, &lease.holder, &ttl],
                    )
                    .await?;
                if let Some(row) = row {
                    return Ok::<_, Error>(Ok((
                        row.get::<_, i64>(0),
                        row.get::<_, Option<Vec<u8>>>(1),
                    )));
                }
                let row = client
                    .query_one(
                        "SELECT coalesce(holder, ''),
                                greatest(extract(epoch FROM lease_until - clock_timestamp()), 0)::float8
                         FROM processor_partitions WHERE partition = $1",
                        &[&p],
                    )
                    .await?;
                Ok(Err((row.get::<_, String>(0), row.get::<_, f64>(1))))
            })
            .map_err(store_error)?;
        let (epoch, bytes) = match granted {
            Ok(granted) => granted,
            Err((holder, remaining)) => {
                return Ok(Claimed::Held {
                    holder,
                    remaining: Duration::from_secs_f64(remaining),
                });
            }
        };
        let state = bytes
            .map(|bytes| self.decode(partition, &bytes))
            .transpose()?;
        Ok(Claimed::Granted(Claim {
            epoch: epoch as u64,
            state,
        }))
    }

    fn renew(&self, partition: u16, epoch: u64, ttl: Duration) -> Result<(), StoreError> {
        let p = i32::from(partition);
        let held = epoch as i64;
        let current = self
            .pg
            .block(async {
                let client = self.pg.client().await?;
                let renewed = client
                    .execute(
                        "UPDATE processor_partitions
                         SET lease_until = clock_timestamp() + make_interval(secs => $3)
                         WHERE partition = $1 AND epoch = $2",
                        &[&p, &held, &ttl.as_secs_f64()],
                    )
                    .await?;
                if renewed == 1 {
                    return Ok::<_, Error>(held);
                }
                Ok(client
                    .query_opt(
                        "SELECT epoch FROM processor_partitions WHERE partition = $1",
                        &[&p],
                    )
                    .await?
                    .map_or(0, |r| r.get(0)))
            })
            .map_err(store_error)?;
        if current == held {
            Ok(())
        } else {
            Err(StoreError::Fenced {
                partition,
                held: epoch,
                current: current as u64,
            })
        }
    }

    fn release(&self, partition: u16, epoch: u64) -> Result<(), StoreError> {
        let p = i32::from(partition);
        self.pg
            .block(async {
                let client = self.pg.client().await?;
                client
                    .execute(
                        "UPDATE processor_partitions SET lease_until = NULL
                         WHERE partition = $1 AND epoch = $2",
                        &[&p, &(epoch as i64)],
                    )
                    .await?;
                Ok::<_, Error>(())
            })
            .map_err(store_error)
    }

    fn commit(&self, commit: &Commit<'_>) -> Result<(), StoreError> {
        let p = i32::from(commit.partition);
        let held = commit.epoch as i64;
        let offset = commit.offset as i64;
        let dead = commit.dead.map(|(first, last, letters)| {
            let lines = String::from_utf8(encode_lines(letters)).expect("JSON is UTF-8");
            let reasons = crate::to_json(&count_reasons(letters));
            (
                first as i64,
                last as i64,
                letters.len() as i64,
                lines,
                reasons,
            )
        });
        let current = self
            .pg
            .block(async {
                let mut client = self.pg.client().await?;
                let tx = client.transaction().await?;
                let current: Option<i64> = tx
                    .query_opt(
                        "SELECT epoch FROM processor_partitions WHERE partition = $1 FOR UPDATE",
                        &[&p],
                    )
                    .await?
                    .map(|r| r.get(0));
                if current != Some(held) {
                    return Ok(current.unwrap_or(0));
                }
                if let Some((first, last, items, lines, reasons)) = &dead {
                    tx.execute(
                        "INSERT INTO processor_dead_letters
                             (partition, first_offset, last_offset, items, bytes, reasons, lines)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)
                         ON CONFLICT (partition, first_offset, last_offset) DO UPDATE
                         SET items = excluded.items, bytes = excluded.bytes,
                             reasons = excluded.reasons, lines = excluded.lines,
                             replayed_at = NULL",
                        &[
                            &p,
                            first,
                            last,
                            items,
                            &(lines.len() as i64),
                            reasons,
                            lines,
                        ],
                    )
                    .await?;
                }
                tx.execute(
                    "UPDATE processor_partitions
                     SET checkpoint_offset = $2, state = $3, committed_at = now()
                     WHERE partition = $1",
                    &[&p, &offset, &commit.state],
                )
                .await?;
                tx.commit().await?;
                Ok::<_, Error>(held)
            })
            .map_err(store_error)?;
        if current != held {
            return Err(StoreError::Fenced {
                partition: commit.partition,
                held: commit.epoch,
                current: current as u64,
            });
        }
        if dead.is_some() {
            let _ = self.count_pending();
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("PostgreSQL schema {:?}", self.pg.schema())
    }
}

impl DeadLetters for PgCheckpointStore {
    fn list(&self) -> hoistway_dlq::Result<Vec<DlqFile>> {
        let rows = self
            .pg
            .block(async {
                let client = self.pg.client().await?;
                Ok::<_, Error>(
                    client
                        .query(
                            "SELECT partition, first_offset, last_offset, items, bytes, reasons
                             FROM processor_dead_letters WHERE replayed_at IS NULL
                             ORDER BY first_offset, partition",
                            &[],
                        )
                        .await?,
                )
            })
            .map_err(dlq_error)?;
        rows.iter()
            .map(|r| {
                let (partition, first, last) = (r.get(0), r.get(1), r.get(2));
                Ok(DlqFile {
                    id: batch_id(partition, first, last),
                    first_offset: first as u64,
                    last_offset: last as u64,
                    items: r.get::<_, i64>(3) as u64,
                    bytes: r.get::<_, i64>(4) as u64,
                    reasons: crate::from_json("processor_dead_letters", r.get(5))
                        .map_err(dlq_error)?,
                })
            })
            .collect()
    }

    fn read(&self, id: &str) -> hoistway_dlq::Result<Vec<DeadLetter>> {
        let Some((p, first, last)) = parse_id(id) else {
            return Err(hoistway_dlq::Error::NotFound(id.into()));
        };
        let lines: Option<String> = self
            .pg
            .block(async {
                let client = self.pg.client().await?;
                Ok::<_, Error>(
                    client
                        .query_opt(
                            "SELECT lines FROM processor_dead_letters
                             WHERE partition = $1 AND first_offset = $2 AND last_offset = $3
                               AND replayed_at IS NULL",
                            &[&p, &first, &last],
                        )
                        .await?
                        .map(|r| r.get(0)),
                )
            })
            .map_err(dlq_error)?;
        match lines {
            Some(lines) => decode_lines(id, &lines),
            None => Err(hoistway_dlq::Error::NotFound(id.into())),
        }
    }

    fn mark_replayed(&self, id: &str) -> hoistway_dlq::Result<()> {
        let Some((p, first, last)) = parse_id(id) else {
            return Err(hoistway_dlq::Error::NotFound(id.into()));
        };
        let updated = self
            .pg
            .block(async {
                let client = self.pg.client().await?;
                Ok::<_, Error>(
                    client
                        .execute(
                            "UPDATE processor_dead_letters SET replayed_at = now()
                             WHERE partition = $1 AND first_offset = $2 AND last_offset = $3
                               AND replayed_at IS NULL",
                            &[&p, &first, &last],
                        )
                        .await?,
                )
            })
            .map_err(dlq_error)?;
        if updated == 0 {
            return Err(hoistway_dlq::Error::NotFound(id.into()));
        }
        let _ = self.count_pending();
        Ok(())
    }

    fn size(&self) -> (u64, u64) {
        match self.count_pending() {
            Ok(size) => size,
            // Unreachable: what was last counted (ingest's limit keeps working on it).
            Err(e) => {
                tracing::debug!(error = %e, "cannot count dead letters");
                (0, self.pending.load(Ordering::Relaxed))
            }
        }
    }

    fn pending_bytes(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn batch_ids_read_back() {
        assert_eq!(
            batch_id(0, 3, 9),
            "00000000000000000003-00000000000000000009"
        );
        assert_eq!(parse_id(&batch_id(0, 3, 9)), Some((0, 3, 9)));
        assert_eq!(parse_id(&batch_id(17, 0, 12)), Some((17, 0, 12)));
        assert_eq!(parse_id("../x"), None);
        assert_eq!(parse_id("p1-3-9"), None);
    }
}
