//! Random secrets, their stored hashes, and user codes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The RFC 8628 §6.1 alphabet: 20 consonants, no vowels (no words), no lookalikes.
pub const USER_CODE_ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";
/// Characters of a user code (8 of 20: 20^8 ≈ 2.56e10 codes).
pub const USER_CODE_LEN: usize = 8;

/// A new random secret: `prefix` then 32 random bytes, base64url (256 bits).
pub fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// A short random id (for listing and revoking tokens; not a secret).
pub fn random_id() -> String {
    let mut bytes = [0u8; 9];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// How a secret is stored and looked up: SHA-256, hex. The secrets are 256-bit random, so a
/// fast hash is enough (a slow one is for passwords).
pub fn hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A new user code, normalised (no dash).
pub fn user_code() -> String {
    let mut rng = rand::rng();
    (0..USER_CODE_LEN)
        .map(|_| {
            // Rejection sampling keeps every character equally likely.
            loop {
                let b = (rng.next_u32() & 0xff) as u8;
                if b < 240 {
                    return USER_CODE_ALPHABET[(b % 20) as usize] as char;
                }
            }
        })
        .collect()
}

/// A user code as typed (any case, dashes, spaces) → its normal form, or `None` if it cannot be
/// one.
pub fn normalise_user_code(typed: &str) -> Option<String> {
    let code: String = typed
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (code.len() == USER_CODE_LEN && code.bytes().all(|b| USER_CODE_ALPHABET.contains(&b)))
        .then_some(code)
}

/// `XXXX-XXXX`, as shown to people.
pub fn display_user_code(code: &str) -> String {
    if code.len() == USER_CODE_LEN {
        format!("{}-{}", &code[..4], &code[4..])
    } else {
        code.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_use_the_alphabet_and_normalise() {
        for _ in 0..200 {
            let code = user_code();
            assert_eq!(code.len(), 8);
            assert!(code.bytes().all(|b| USER_CODE_ALPHABET.contains(&b)));
            let shown = display_user_code(&code).to_lowercase();
            assert_eq!(normalise_user_code(&shown).as_deref(), Some(code.as_str()));
        }
        assert_eq!(normalise_user_code("BCDF-GHJA"), None, "A is a vowel");
        assert_eq!(normalise_user_code("BCD"), None);
    }

    #[test]
    fn tokens_are_long_and_distinct() {
        let a = random_token("hwt_");
        assert!(a.starts_with("hwt_") && a.len() == 4 + 43);
        assert_ne!(a, random_token("hwt_"));
        assert_eq!(hash("x").len(), 64);
    }
}
