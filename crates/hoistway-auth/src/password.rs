//! Password hashing: argon2id with OWASP's parameters (19 MiB, 2 passes, 1 lane).

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::{Error, Result};

/// Shortest password accepted.
pub const MIN_LEN: usize = 12;

fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub fn check_strength(password: &str) -> Result<()> {
    if password.chars().count() < MIN_LEN {
        return Err(Error::invalid(
            "password",
            format!("must have at least {MIN_LEN} characters"),
        ));
    }
    Ok(())
}

/// The PHC string to store.
pub fn hash(password: &str) -> Result<String> {
    let salt = crate::secret::random_bytes(16);
    argon2()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Storage(format!("hashing a password: {e}")))
}

/// Whether `password` matches the stored PHC string (constant time in the hash).
pub fn verify(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|parsed| {
            argon2()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash to verify against when the user does not exist, so the answer takes as long.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash("not a password of anyone").expect("hash"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn argon2id_round_trip() {
        let phc = super::hash("correct horse battery").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(super::verify("correct horse battery", &phc));
        assert!(!super::verify("correct horse batterz", &phc));
        assert!(super::check_strength("short").is_err());
    }
}
