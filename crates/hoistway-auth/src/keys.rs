//! The keys that sign access tokens: `keys.json` in the auth dir, created on first start with mode
//! 0600.
//!
//! The newest key signs. Rotation adds a key and retires the previous one, which still verifies
//! until every token it signed has expired, and is then dropped. The file carries a `format`.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The `keys.json` format this build writes and the newest it reads.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    /// 256-bit HMAC key, base64.
    secret: String,
    created_us: i64,
    /// When a newer key took over signing.
    retired_us: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct KeyFile {
    format: u32,
    keys: Vec<StoredKey>,
}

struct Key {
    stored: StoredKey,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// Signing keys, newest last.
pub struct KeyRing {
    path: PathBuf,
    keys: Vec<Key>,
}

/// A key as listed (no secret).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

fn new_key(now_us: i64) -> Result<Key> {
    load_key(StoredKey {
        kid: crate::secret::random_id(),
        secret: STANDARD.encode(crate::secret::random_bytes(32)),
        created_us: now_us,
        retired_us: None,
    })
}

impl KeyRing {
    /// Opens `path`, creating it with one new key if it does not exist.
    pub fn open(path: &Path, now_us: i64) -> Result<Self> {
        let keys = match std::fs::read(path) {
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
                file.keys
                    .into_iter()
                    .map(load_key)
                    .collect::<Result<Vec<_>>>()?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::Keys(format!("reading {}: {e}", path.display()))),
        };
        let mut ring = Self {
            path: path.to_path_buf(),
            keys,
        };
        if ring.keys.is_empty() {
            ring.keys.push(new_key(now_us)?);
            ring.save()?;
            tracing::info!(path = %path.display(), "created a token signing key");
        }
        Ok(ring)
    }

    fn save(&self) -> Result<()> {
        let file = KeyFile {
            format: FORMAT,
            keys: self.keys.iter().map(|k| k.stored.clone()).collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).expect("serialisable");
        write_private(&self.path, &bytes)
            .map_err(|e| Error::Keys(format!("writing {}: {e}", self.path.display())))
    }

    /// The signing key: its id and key.
    pub fn signing(&self) -> (&str, &EncodingKey) {
        let k = self.keys.last().expect("a key ring is never empty");
        (&k.stored.kid, &k.encoding)
    }

    /// The key with id `kid`, if it still verifies at `now_us`.
    pub fn verifying(&self, kid: &str, now_us: i64, max_token_us: i64) -> Option<&DecodingKey> {
        self.keys
            .iter()
            .find(|k| k.stored.kid == kid)
            .filter(|k| {
                k.stored
                    .retired_us
                    .is_none_or(|r| now_us < r + max_token_us)
            })
            .map(|k| &k.decoding)
    }

    /// Adds a new signing key, retires the current one and drops keys whose tokens have all
    /// expired. Returns the new key's id.
    pub fn rotate(&mut self, now_us: i64, max_token_us: i64) -> Result<String> {
        if let Some(current) = self.keys.last_mut() {
            current.stored.retired_us = Some(now_us);
        }
        self.keys.retain(|k| {
            k.stored
                .retired_us
                .is_none_or(|r| now_us < r + max_token_us)
        });
        let key = new_key(now_us)?;
        let kid = key.stored.kid.clone();
        self.keys.push(key);
        self.save()?;
        Ok(kid)
    }

    pub fn list(&self) -> Vec<KeyInfo> {
        let n = self.keys.len();
        self.keys
            .iter()
            .enumerate()
            .map(|(i, k)| KeyInfo {
                kid: k.stored.kid.clone(),
                created_us: k.stored.created_us,
                retired_us: k.stored.retired_us,
                signing: i + 1 == n,
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
        let mut ring = KeyRing::open(&path, 0).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let first = ring.signing().0.to_string();
        let hour = 3_600_000_000;
        let second = ring.rotate(10, hour).unwrap();
        assert_eq!(ring.signing().0, second);
        assert!(ring.verifying(&first, 10 + hour - 1, hour).is_some());
        assert!(ring.verifying(&first, 10 + hour, hour).is_none());
        let reopened = KeyRing::open(&path, 20).unwrap();
        assert_eq!(reopened.signing().0, second);
        assert_eq!(reopened.list().len(), 2);
    }
}
