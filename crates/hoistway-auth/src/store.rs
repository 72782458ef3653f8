//! The seam to where auth state lives, and its records.
//!
//! Every method is atomic on its own. The `update_*` methods are read-modify-write under one
//! transaction: the closure sees the current record and returns whether to write it back, so
//! policy (rotation, polling, decisions) stays in [`crate::Authority`] and every implementation
//! applies it the same way. Calls block: async callers use `spawn_blocking`.

use hoistway_model::LiftId;
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::roles::Role;

/// A staff account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub username: String,
    /// PHC string (argon2id).
    pub password_hash: String,
    pub role: Role,
    /// The customer whose people this user belongs to: they see only that customer's lifts
    /// and, as admins, manage only its users. `None`: the lift maker's staff (whole fleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    /// TOTP secret; `totp_confirmed` once a code from it was entered.
    pub totp_secret: Option<Vec<u8>>,
    pub totp_confirmed: bool,
    /// The last TOTP time step accepted: a code is accepted once.
    pub totp_last_step: i64,
    /// SHA-256 hex of each unused recovery code.
    pub recovery_codes: Vec<String>,
    pub created_us: i64,
}

impl User {
    pub fn has_second_factor(&self) -> bool {
        self.totp_secret.is_some() && self.totp_confirmed
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// A login session (browser cookie or `hoistway login`).
    Session,
    /// A named token for scripts, created by its owner.
    Api,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Api => "api",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "session" => Some(Self::Session),
            "api" => Some(Self::Api),
            _ => None,
        }
    }
}

/// An opaque bearer token of a staff member; only its hash is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Token {
    /// Public id (shown in lists, used to revoke).
    pub id: String,
    /// SHA-256 hex of the secret; never serialised (stores keep it as their key).
    #[serde(skip)]
    pub hash: String,
    pub owner: String,
    pub kind: TokenKind,
    pub name: String,
    pub created_us: i64,
    pub expires_us: Option<i64>,
    /// False for a session of an operator or admin who has not finished a second factor.
    pub second_factor: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum GrantState {
    Pending,
    Approved {
        building: String,
        by: String,
    },
    Denied {
        by: String,
    },
    /// Exchanged for tokens; a second exchange fails.
    Consumed,
}

/// One RFC 8628 device authorization request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceGrant {
    /// SHA-256 hex of the device code.
    pub device_code_hash: String,
    /// Normalised (upper case, no dash).
    pub user_code: String,
    pub lift_id: LiftId,
    pub created_us: i64,
    pub expires_us: i64,
    /// Seconds the lift must wait between polls; raised by `slow_down`.
    pub interval_secs: u32,
    pub last_poll_us: Option<i64>,
    pub state: GrantState,
}

/// A refresh token of a lift; only its hash is stored. Tokens rotated from one another form a
/// family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshToken {
    pub hash: String,
    pub family: String,
    pub lift_id: LiftId,
    pub created_us: i64,
    pub expires_us: i64,
    /// Set when exchanged: the successor's hash and when.
    pub rotated_to: Option<String>,
    pub rotated_us: Option<i64>,
    pub revoked: bool,
}

/// What Hoistway knows of a lift's credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Device {
    pub lift_id: LiftId,
    pub approved_us: Option<i64>,
    pub approved_by: Option<String>,
    /// Set while the lift is revoked: it gets no tokens.
    pub revoked_us: Option<i64>,
    /// Access tokens issued before this instant are refused (the last revocation), even after
    /// the lift is approved again.
    pub not_before_us: Option<i64>,
    /// Overrides `auth.devices` for this lift (`required` or `optional`).
    pub mode: Option<crate::DeviceMode>,
}

/// One security-relevant action: who did what to what, and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEvent {
    /// Assigned by the store, increasing.
    pub id: i64,
    pub at_us: i64,
    /// Username, `lift:<id>`, or what a failed login claimed to be.
    pub actor: String,
    /// e.g. `login`, `device.approve`, `token.create`, `user.role`, `dlq.replay`, `sql`.
    pub action: String,
    pub target: String,
    /// `ok`, `denied` or `failed`.
    pub outcome: String,
    pub address: Option<String>,
    pub detail: String,
    /// The actor's customer when the actor is a customer's user: that customer's admins read
    /// these events.
    pub customer: Option<String>,
}

/// A page of the audit log, oldest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub after_id: Option<i64>,
    pub actor: Option<String>,
    pub action: Option<String>,
    /// Only the events of this customer's users.
    pub customer: Option<String>,
    pub limit: usize,
}

/// Which grant an update addresses.
#[derive(Debug, Clone, Copy)]
pub enum GrantKey<'a> {
    DeviceCodeHash(&'a str),
    UserCode(&'a str),
}

pub trait AuthStore: Send + Sync + 'static {
    /// Adds a user; [`crate::Error::Conflict`] when the name is taken.
    fn insert_user(&self, user: &User) -> Result<()>;
    fn user(&self, username: &str) -> Result<Option<User>>;
    /// All users, by name.
    fn users(&self) -> Result<Vec<User>>;
    /// Read-modify-write of one user; `None` when there is no such user.
    fn update_user(
        &self,
        username: &str,
        f: &mut dyn FnMut(&mut User) -> bool,
    ) -> Result<Option<User>>;
    /// Removes a user and every token they own.
    fn delete_user(&self, username: &str) -> Result<bool>;

    fn insert_token(&self, token: &Token) -> Result<()>;
    fn token_by_hash(&self, hash: &str) -> Result<Option<Token>>;
    fn update_token(
        &self,
        hash: &str,
        f: &mut dyn FnMut(&mut Token) -> bool,
    ) -> Result<Option<Token>>;
    /// A user's tokens, oldest first.
    fn tokens(&self, owner: &str) -> Result<Vec<Token>>;
    /// Deletes `owner`'s tokens, all or the one with `id`, of `kind` or every kind. Returns how many.
    fn delete_tokens(&self, owner: &str, id: Option<&str>, kind: Option<TokenKind>) -> Result<u64>;

    /// Adds a grant; [`crate::Error::Conflict`] when its user code is in use.
    fn insert_grant(&self, grant: &DeviceGrant) -> Result<()>;
    fn update_grant(
        &self,
        key: GrantKey<'_>,
        f: &mut dyn FnMut(&mut DeviceGrant) -> bool,
    ) -> Result<Option<DeviceGrant>>;
    /// Deletes grants that expired before `before_us`. Returns how many.
    fn purge_grants(&self, before_us: i64) -> Result<u64>;

    fn insert_refresh(&self, token: &RefreshToken) -> Result<()>;
    fn update_refresh(
        &self,
        hash: &str,
        f: &mut dyn FnMut(&mut RefreshToken) -> bool,
    ) -> Result<Option<RefreshToken>>;
    /// Revokes every refresh token of a family. Returns how many changed.
    fn revoke_family(&self, family: &str) -> Result<u64>;
    /// Revokes every refresh token of a lift. Returns how many changed.
    fn revoke_lift_refresh(&self, lift: &LiftId) -> Result<u64>;

    fn device(&self, lift: &LiftId) -> Result<Option<Device>>;
    /// Every lift with credentials state, by id.
    fn devices(&self) -> Result<Vec<Device>>;
    /// Stores a lift's credentials state under a new revision, greater than every earlier one.
    /// A revision is visible only once every smaller one is, so readers that follow
    /// [`Self::devices_since`] miss no write.
    fn put_device(&self, device: &Device) -> Result<()>;
    /// The lifts written after revision `after` (`None`: all of them), each as last written, and
    /// the newest revision (0 for a store never written). How other nodes learn of a revocation.
    fn devices_since(&self, after: Option<i64>) -> Result<(Vec<Device>, i64)>;

    /// Appends an event (its `id` is ignored); returns the id given.
    fn append_audit(&self, event: &AuditEvent) -> Result<i64>;
    /// Events after `after_id` matching the filters, oldest first, at most `limit`.
    fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>>;
}
