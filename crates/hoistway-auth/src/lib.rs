//! Who may do what: staff accounts, bearer tokens, lift credentials and the roles that gate every
//! route.
//!
//! In: credentials presented by people (password and TOTP code, session or API token) and by lifts
//! (the RFC 8628 device flow, then short-lived access tokens and rotating refresh tokens). Out: a
//! [`Principal`] per request, or an [`Error`] that says why not.
//!
//! State lives behind [`AuthStore`] (users, tokens, device grants, refresh tokens, lift
//! credentials); [`SqliteAuthStore`] is the embedded implementation and [`conformance::check`] the
//! suite every implementation passes. Access tokens are HS256 JWTs signed with a [`KeyRing`] read
//! from a [`KeyStore`] ([`FileKeyStore`]: a 0600 file; [`conformance::check_keys`]). Several nodes
//! may share both stores: [`Authority::reread_shared`] rereads what the others changed. This crate knows
//! nothing of HTTP: the server maps [`Error`] to responses.

pub mod authority;
pub mod conformance;
pub mod keys;
pub mod password;
pub mod roles;
pub mod secret;
pub mod sqlite;
pub mod store;
pub mod totp;

pub use authority::{
    Authority, AuthorityConfig, DeviceAuthorization, DeviceMode, IssuedToken, TokenPair,
    TotpEnrolment,
};
pub use keys::{FileKeyStore, KeyInfo, KeyRing, KeyStore, StoredKey};
pub use roles::{Access, Principal, Role};
pub use sqlite::SqliteAuthStore;
pub use store::{
    AuditEvent, AuditQuery, AuthStore, Device, DeviceGrant, GrantState, RefreshToken, Token,
    TokenKind, User,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("auth storage failed: {0}")]
    Storage(String),
    /// The store cannot be reached now (a shared database down); worth retrying (503).
    #[error("auth storage is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    /// No credentials, or credentials that do not hold (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// Password right; the account has a second factor and no code came with it (401).
    #[error("this account needs a TOTP code (or a recovery code)")]
    SecondFactorRequired,
    /// Valid credentials without the right (403).
    #[error("{0}")]
    Forbidden(String),
    /// An OAuth error response (RFC 6749 §5.2, RFC 8628 §3.5): `error` code and description.
    #[error("{code}: {description}")]
    OAuth {
        code: &'static str,
        description: String,
    },
    #[error(
        "{file} has schema version {version}, which this build does not read (it reads up to {reads}); run the release that wrote it or a newer one"
    )]
    Format {
        file: String,
        version: u32,
        reads: u32,
    },
    #[error("signing keys: {0}")]
    Keys(String),
}

impl Error {
    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn oauth(code: &'static str, description: impl Into<String>) -> Self {
        Self::OAuth {
            code,
            description: description.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
