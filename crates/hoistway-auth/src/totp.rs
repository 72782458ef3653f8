//! TOTP (RFC 6238): SHA-1, 6 digits, 30 s steps, one step of drift either way. The caller keeps the
//! last step used, so a code is accepted once.

use totp_rs::{Algorithm, Builder, Secret, Totp};

pub const STEP_SECS: i64 = 30;
const DIGITS: usize = 6;

/// A new 160-bit secret (RFC 4226's recommended length).
pub fn new_secret() -> Vec<u8> {
    crate::secret::random_bytes(20)
}

fn totp(secret: &[u8]) -> Option<Totp> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(DIGITS as u8)
        .with_skew(1)
        .with_step_duration(STEP_SECS as u64)
        .with_secret(secret.to_vec())
        .build()
        .ok()
}

pub fn base32(secret: &[u8]) -> String {
    Secret::from(secret.to_vec()).to_base32()
}

/// The `otpauth://` URI authenticator apps read (usually from a QR code).
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    let mut url = url::Url::parse("otpauth://totp/").expect("static url");
    url.set_path(&format!("{issuer}:{account}"));
    url.query_pairs_mut()
        .append_pair("secret", &base32(secret))
        .append_pair("issuer", issuer)
        .append_pair("algorithm", "SHA1")
        .append_pair("digits", &DIGITS.to_string())
        .append_pair("period", &STEP_SECS.to_string());
    url.to_string()
}

/// The URI as a QR code, SVG.
pub fn qr_svg(uri: &str) -> String {
    match qrcode::QrCode::new(uri.as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(200, 200)
            .build(),
        Err(_) => String::new(),
    }
}

/// A secret as enrolment shows it (base32) → its bytes.
pub fn decode_base32(secret: &str) -> Option<Vec<u8>> {
    Secret::try_from_base32(secret)
        .ok()
        .map(|s| s.as_ref().to_vec())
}

/// The code for `now_secs` (for tests and the CLI's own checks).
pub fn code_at(secret: &[u8], now_secs: i64) -> String {
    totp(secret)
        .map(|t| t.generate(now_secs.max(0) as u64).to_string())
        .unwrap_or_default()
}

/// The time step `code` belongs to, if it is valid at `now_secs` (±1 step).
pub fn matching_step(secret: &[u8], code: &str, now_secs: i64) -> Option<i64> {
    let code = code.trim();
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = totp(secret)?;
    let now_step = now_secs.div_euclid(STEP_SECS);
    (now_step - 1..=now_step + 1).find(|step| {
        let expected = t.generate((step * STEP_SECS).max(0) as u64).to_string();
        constant_time_eq(expected.as_bytes(), code.as_bytes())
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_vector_and_drift() {
        // RFC 6238 appendix B, SHA-1 secret "12345678901234567890", T = 59 → 94287082 (8 digits);
        // its last six digits are the 6-digit code.
        let secret = b"12345678901234567890";
        assert_eq!(code_at(secret, 59), "287082");
        assert_eq!(matching_step(secret, "287082", 59), Some(1));
        assert_eq!(
            matching_step(secret, "287082", 59 + 30),
            Some(1),
            "one step late"
        );
        assert_eq!(
            matching_step(secret, "287082", 59 + 60),
            None,
            "two steps late"
        );
        assert_eq!(matching_step(secret, "28708", 59), None);
        let uri = otpauth_uri("Hoistway", "alice", secret);
        assert!(
            uri.starts_with(
                "otpauth://totp/Hoistway:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
            )
        );
        assert!(qr_svg(&uri).contains("<svg"));
    }
}
