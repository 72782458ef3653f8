//! The keys that sign access tokens, and the [`KeyStore`] seam to where they live.
//!
//! The newest published key signs. Rotation adds a key and retires the previous one, which
//! still verifies until every token it signed has expired, and is then dropped. Every node must
//! verify every other node's tokens, so in a cluster the keys are shared state: a key added by a
//! rotation is *published* (stored, and read by every node within its refresh interval) for
//! `publish_us` before it signs, so no node meets a token signed by a key it has not read yet.
//!
//! [`FileKeyStore`] keeps them in `keys.json` in the auth dir (mode 0600, with a `format`).

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{DecodingKey, EncodingKey};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The `keys.json` format this build writes and the newest it reads.
pub const FORMAT: u32 = 1;

/// A signing key as stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    pub kid: String,
    /// 256-bit HMAC key, base64.
    pub secret: String,
    pub created_us: i64,
    /// When a newer key took over signing.
    pub retired_us: Option<i64>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("created_us", &self.created_us)
            .field("retired_us", &self.retired_us)
            .finish_non_exhaustive()
    }
}

/// The seam to where signing keys live.
pub trait KeyStore: Send + Sync + 'static {
    /// The stored keys, oldest first (empty before the first start).
    fn load(&self) -> Result<Vec<StoredKey>>;
    /// Read-modify-write of the whole set under one lock or transaction, so two nodes starting or
    /// rotating at once never both add a key: `f` sees the stored keys and returns whether to
    /// write them back. Returns the keys as stored afterwards. Durable when it returns.
    fn update(
        &self,
        f: &mut dyn FnMut(&mut Vec<StoredKey>) -> Result<bool>,
    ) -> Result<Vec<StoredKey>>;
}

#[derive(Debug, Serialize, Deserialize)]
struct KeyFile {
    format: u32,
    keys: Vec<StoredKey>,
}

/// [`KeyStore`] in a 0600 JSON file (one process).
pub struct FileKeyStore {
    path: PathBuf,
    lock: Mutex<()>,
}

impl FileKeyStore {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            lock: Mutex::new(()),
        }
    }

    fn read(&self) -> Result<Vec<StoredKey>> {
        let path = &self.path;
        match std::fs::read(path) {
            Ok(bytes) => {
                let file: KeyFile = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::Keys(format!("{} is unreadable: {e}", path.display())))?;
                if file.format > FORMAT {
                    return Err(Error::Format {
                        file: path.display().to_string(),
                        version: file.format,
                        reads: FORMAT,
                    });
                }
                Ok(file.keys)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::Keys(format!("reading {}: {e}", path.display()))),
        }
    }
}

impl KeyStore for FileKeyStore {
    fn load(&self) -> Result<Vec<StoredKey>> {
        let _guard = self.lock.lock();
        self.read()
    }

    fn update(
        &self,
        f: &mut dyn FnMut(&mut Vec<StoredKey>) -> Result<bool>,
    ) -> Result<Vec<StoredKey>> {
        let _guard = self.lock.lock();
        let mut keys = self.read()?;
        if f(&mut keys)? {
            let file = KeyFile {
                format: FORMAT,
                keys: keys.clone(),
            };
            let bytes = serde_json::to_vec_pretty(&file).expect("serialisable");
            write_private(&self.path, &bytes)
                .map_err(|e| Error::Keys(format!("writing {}: {e}", self.path.display())))?;
        }
        Ok(keys)
    }
}

struct Key {
    stored: StoredKey,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// The signing keys in memory, oldest first, as last read from a [`KeyStore`].
pub struct KeyRing {
    keys: Vec<Key>,
    /// How long a new key is stored before it signs.
    publish_us: i64,
}

/// A key as listed (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct KeyInfo {
    pub kid: String,
    pub created_us: i64,
    pub retired_us: Option<i64>,
    pub signing: bool,
}

fn load_key(stored: StoredKey) -> Result<Key> {
    let secret = STANDARD
        .decode(&stored.secret)
        .map_err(|e| Error::Keys(format!("key {} is not base64: {e}", stored.kid)))?;
    if secret.len() < 32 {
        return Err(Error::Keys(format!(
            "key {} is shorter than 256 bits",
            stored.kid
        )));
    }
    Ok(Key {
        encoding: EncodingKey::from_secret(&secret),
        decoding: DecodingKey::from_secret(&secret),
        stored,
    })
}

fn new_key(now_us: i64) -> StoredKey {
    StoredKey {
        kid: crate::secret::random_id(),
        secret: STANDARD.encode(crate::secret::random_bytes(32)),
        created_us: now_us,
        retired_us: None,
    }
}

impl KeyRing {
    /// Reads the keys from `store`, adding the first one if there is none. A ring's only key
    /// signs at once: no node can hold tokens of a ring that did not exist.
    pub fn open(store: &dyn KeyStore, now_us: i64, publish_us: i64) -> Result<Self> {
        let mut created = false;
        let stored = store.update(&mut |keys| {
            if keys.is_empty() {
                keys.push(new_key(now_us));
                created = true;
            }
            Ok(created)
        })?;
        if created {
            tracing::info!("created a token signing key");
        }
        Self::from_stored(stored, publish_us)
    }

    fn from_stored(stored: Vec<StoredKey>, publish_us: i64) -> Result<Self> {
        if stored.is_empty() {
            return Err(Error::Keys("the key store holds no signing key".into()));
        }
        Ok(Self {
            keys: stored.into_iter().map(load_key).collect::<Result<_>>()?,
            publish_us,
        })
    }

    /// Takes the keys as read again from the store (another node may have rotated them).
    /// Returns whether they changed.
    pub fn reload(&mut self, stored: Vec<StoredKey>) -> Result<bool> {
        let same = stored.len() == self.keys.len()
            && stored.iter().zip(&self.keys).all(|(s, k)| *s == k.stored);
        if !same {
            *self = Self::from_stored(stored, self.publish_us)?;
        }
        Ok(!same)
    }

    /// The signing key at `now_us`: the newest one published for `publish_us`, else the oldest.
    pub fn signing(&self, now_us: i64) -> (&str, &EncodingKey) {
        let k = self
            .keys
            .iter()
            .rev()
            .find(|k| k.stored.created_us + self.publish_us <= now_us)
            .or(self.keys.first())
            .expect("a key ring is never empty");
        (&k.stored.kid, &k.encoding)
    }

    /// Until when a key retired at `retired_us` may have signed tokens that still verify.
    fn verifies_until(&self, retired_us: i64, max_token_us: i64) -> i64 {
        // It signs on until its successor is published.
        retired_us + self.publish_us + max_token_us
    }

    /// The key with id `kid`, if it still verifies at `now_us`.
    pub fn verifying(&self, kid: &str, now_us: i64, max_token_us: i64) -> Option<&DecodingKey> {
        self.keys
            .iter()
            .find(|k| k.stored.kid == kid)
            .filter(|k| {
                k.stored
                    .retired_us
                    .is_none_or(|r| now_us < self.verifies_until(r, max_token_us))
            })
            .map(|k| &k.decoding)
    }

    /// Adds a new key, which signs once published, retires the current one and drops keys whose
    /// tokens have all expired. Returns the new key's id.
    pub fn rotate(
        &mut self,
        store: &dyn KeyStore,
        now_us: i64,
        max_token_us: i64,
    ) -> Result<String> {
        let key = new_key(now_us);
        let kid = key.kid.clone();
        let publish_us = self.publish_us;
        let stored = store.update(&mut |keys| {
            if let Some(current) = keys.last_mut() {
                current.retired_us = Some(now_us);
            }
            keys.retain(|k| {
                k.retired_us
                    .is_none_or(|r| now_us < r + publish_us + max_token_us)
            });
            keys.push(key.clone());
            Ok(true)
        })?;
        *self = Self::from_stored(stored, publish_us)?;
        Ok(kid)
    }

    pub fn list(&self, now_us: i64) -> Vec<KeyInfo> {
        let signing = self.signing(now_us).0.to_string();
        self.keys
            .iter()
            .map(|k| KeyInfo {
                kid: k.stored.kid.clone(),
                created_us: k.stored.created_us,
                retired_us: k.stored.retired_us,
                signing: k.stored.kid == signing,
            })
            .collect()
    }
}

/// Writes a file only its owner can read: temp file (0600), fsync, rename, fsync of the dir.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_private_then_rotated_with_the_old_key_verifying_until_its_tokens_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth/keys.json");
        let store = FileKeyStore::new(&path);
        let publish = 5;
        let mut ring = KeyRing::open(&store, 0, publish).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let first = ring.signing(0).0.to_string();
        let hour = 3_600_000_000;
        let second = ring.rotate(&store, 10, hour).unwrap();
        // Published first: the old key signs until then.
        assert_eq!(ring.signing(10 + publish - 1).0, first);
        assert_eq!(ring.signing(10 + publish).0, second);
        assert!(
            ring.verifying(&first, 10 + publish + hour - 1, hour)
                .is_some()
        );
        assert!(ring.verifying(&first, 10 + publish + hour, hour).is_none());
        let reopened = KeyRing::open(&store, 20, publish).unwrap();
        assert_eq!(reopened.signing(20).0, second);
        assert_eq!(reopened.list(20).len(), 2);
    }

    #[test]
    fn the_file_store_passes_the_key_store_suite() {
        let dir = tempfile::tempdir().unwrap();
        crate::conformance::check_keys(&FileKeyStore::new(&dir.path().join("keys.json")));
    }
}
