//! The policy: the device flow, device tokens and their rotation, staff logins, sessions and API
//! tokens. Stateless apart from caches; state is in the [`AuthStore`], time comes from the
//! injected [`Clock`].

use std::collections::HashMap;
use std::sync::Arc;

use hoistway_model::{Clock, LiftId};
use jsonwebtoken::{Algorithm, Header, Validation};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::keys::{KeyInfo, KeyRing, KeyStore};
use crate::roles::{Principal, Role};
use crate::secret;
use crate::store::{
    AuthStore, Device, DeviceGrant, GrantKey, GrantState, RefreshToken, Token, TokenKind, User,
};
use crate::{Error, Result, password, totp};

const US: i64 = 1_000_000;
/// Prefix of a staff session token.
pub const SESSION_PREFIX: &str = "hws_";
/// Prefix of a staff API token.
pub const API_TOKEN_PREFIX: &str = "hwt_";
/// Prefix of a lift's refresh token.
pub const REFRESH_PREFIX: &str = "hwr_";
/// Prefix of a device code.
pub const DEVICE_CODE_PREFIX: &str = "hwd_";
/// Prefix of a factory registration code.
pub const REGISTRATION_CODE_PREFIX: &str = "hwp_";
/// The grant type a lift uses to exchange a registration code.
pub const REGISTRATION_CODE_GRANT: &str = "urn:hoistway:params:oauth:grant-type:registration_code";
/// Recovery codes handed out when TOTP is enrolled.
pub const RECOVERY_CODES: usize = 10;
/// Most access tokens the verification cache holds before it starts over.
const CACHE_MAX: usize = 1 << 20;

/// Whether a lift must present a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceMode {
    /// Every reading needs the lift's access token (the default).
    #[default]
    Required,
    /// A registered lift's readings are accepted without a token (counted and logged), for a
    /// fleet that is rolling out tokens. A token, when sent, is still checked.
    Optional,
    /// No device authentication at all: any client may post for any lift. Only for a closed lab
    /// network; `serve` warns at start.
    Open,
}

impl DeviceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Required => "required",
            Self::Optional => "optional",
            Self::Open => "open",
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthorityConfig {
    pub access_token_secs: i64,
    pub refresh_token_days: i64,
    /// How long after a rotation the previous refresh token may be presented again (a lift that
    /// lost the response) without revoking the family.
    pub refresh_grace_secs: i64,
    pub device_code_secs: i64,
    pub poll_interval_secs: u32,
    pub session_hours: i64,
    /// Where an installer enters a user code, e.g. `https://hoistway.example.com/activate`.
    pub verification_uri: String,
    pub devices: DeviceMode,
    /// Shown in authenticator apps.
    pub issuer: String,
    /// How often [`Authority::reread_shared`] should run: the bound on how long a lift's revocation or
    /// a key rotation made on another node takes to reach this one. A rotated-in key is stored
    /// for twice this before it signs.
    pub refresh_secs: i64,
    /// While the store is out of reach, a staff token verified in the last this many seconds is
    /// still accepted, so dashboards and metrics scrapes keep working through a database outage.
    /// 0: refuse every staff token then.
    pub outage_grace_secs: i64,
}

impl Default for AuthorityConfig {
    fn default() -> Self {
        Self {
            access_token_secs: 3600,
            refresh_token_days: 90,
            refresh_grace_secs: 60,
            device_code_secs: 900,
            poll_interval_secs: 5,
            session_hours: 12,
            verification_uri: "http://127.0.0.1:8080/activate".into(),
            devices: DeviceMode::Required,
            issuer: "Hoistway".into(),
            refresh_secs: 2,
            outage_grace_secs: 300,
        }
    }
}

impl AuthorityConfig {
    /// How long a rotated-in key is stored before it signs: two refreshes, so every node has
    /// read it first.
    pub fn key_publish_us(&self) -> i64 {
        2 * self.refresh_secs.max(0) * US
    }
}

/// The answer to a device authorization request (RFC 8628 §3.2).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceAuthorization {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: String,
    pub expires_in: i64,
    pub interval: u32,
}

/// Tokens issued to a lift (RFC 6749 §5.1).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenPair {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: i64,
    pub refresh_token: String,
}

/// A new staff bearer token: the secret (shown once) and its record.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IssuedToken {
    pub token: String,
    #[serde(flatten)]
    pub record: Token,
}

/// What TOTP enrolment hands the user.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TotpEnrolment {
    pub secret: String,
    pub otpauth_uri: String,
    pub qr_svg: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    typ: String,
    iat: i64,
    exp: i64,
    /// Issue time in µs (revocation compares it).
    iat_us: i64,
}

#[derive(Clone)]
struct Verified {
    lift: LiftId,
    iat_us: i64,
    exp_us: i64,
}

/// A staff token's principal, when it was last verified in the store, and when it expires.
type SeenStaff = (Principal, i64, Option<i64>);

pub struct Authority {
    store: Arc<dyn AuthStore>,
    keys: RwLock<KeyRing>,
    key_store: Arc<dyn KeyStore>,
    clock: Arc<dyn Clock>,
    config: AuthorityConfig,
    /// Per lift: tokens issued before this are refused; mode override.
    devices: RwLock<HashMap<LiftId, Device>>,
    /// The store's device revision `devices` reflects.
    devices_rev: Mutex<i64>,
    /// Why the last [`Self::reread_shared`] failed, if it did.
    reread_failure: Mutex<Option<String>>,
    cache: Mutex<HashMap<Box<str>, Verified>>,
    /// Staff principals by token hash, with when they were last verified in the store and when
    /// the token expires: used only while the store is out of reach.
    staff_seen: Mutex<HashMap<String, SeenStaff>>,
}

impl Authority {
    /// Opens the authority over `store`, with signing keys in `key_store` (the first one made if
    /// there is none).
    pub fn open(
        store: Arc<dyn AuthStore>,
        key_store: Arc<dyn KeyStore>,
        clock: Arc<dyn Clock>,
        config: AuthorityConfig,
    ) -> Result<Self> {
        let keys = KeyRing::open(&*key_store, clock.now_us(), config.key_publish_us())?;
        let (devices, rev) = store.devices_since(None)?;
        let devices = devices
            .into_iter()
            .map(|d| (d.lift_id.clone(), d))
            .collect();
        Ok(Self {
            store,
            keys: RwLock::new(keys),
            key_store,
            clock,
            config,
            devices: RwLock::new(devices),
            devices_rev: Mutex::new(rev),
            reread_failure: Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
            staff_seen: Mutex::new(HashMap::new()),
        })
    }

    /// Reads what other nodes may have changed: the signing keys and the lifts' credentials
    /// (revocations, re-approvals, mode overrides). Blocking; run it every
    /// [`AuthorityConfig::refresh_secs`]. Returns how many lifts changed.
    pub fn reread_shared(&self) -> Result<usize> {
        let result = self.reread();
        *self.reread_failure.lock() = result.as_ref().err().map(|e| {
            format!("auth: cannot reread shared state ({e}); revocations made on other nodes wait")
        });
        result
    }

    /// Why this node's view of shared auth state may be stale (the last reread failed).
    pub fn stale_shared_state(&self) -> Option<String> {
        self.reread_failure.lock().clone()
    }

    fn reread(&self) -> Result<usize> {
        // Read the keys first, so a key is known before any token a rotation elsewhere signed.
        // Read outside the lock: verifying goes on meanwhile.
        let stored = self.key_store.load()?;
        let reloaded = self.keys.write().reload(stored)?;
        if reloaded {
            tracing::info!("token signing keys reloaded");
        }
        let mut rev = self.devices_rev.lock();
        let (changed, newest) = self.store.devices_since(Some(*rev))?;
        let n = changed.len();
        if n > 0 {
            let mut devices = self.devices.write();
            for d in changed {
                devices.insert(d.lift_id.clone(), d);
            }
        }
        *rev = newest.max(*rev);
        Ok(n)
    }

    pub fn config(&self) -> &AuthorityConfig {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn AuthStore> {
        &self.store
    }

    fn now(&self) -> i64 {
        self.clock.now_us()
    }

    // ---- devices ---------------------------------------------------------------------------

    /// The mode that applies to `lift` (its override, else the fleet's).
    pub fn device_mode(&self, lift: &str) -> DeviceMode {
        self.devices
            .read()
            .get(lift)
            .and_then(|d| d.mode)
            .unwrap_or(self.config.devices)
    }

    /// Sets or clears a lift's mode override.
    pub fn set_device_mode(&self, lift: &LiftId, mode: Option<DeviceMode>) -> Result<Device> {
        let mut device = self.device_record(lift)?;
        device.mode = mode;
        self.store.put_device(&device)?;
        self.devices.write().insert(lift.clone(), device.clone());
        Ok(device)
    }

    fn device_record(&self, lift: &LiftId) -> Result<Device> {
        Ok(self.store.device(lift)?.unwrap_or(Device {
            lift_id: lift.clone(),
            approved_us: None,
            approved_by: None,
            revoked_us: None,
            not_before_us: None,
            mode: None,
        }))
    }

    pub fn device(&self, lift: &LiftId) -> Result<Option<Device>> {
        self.store.device(lift)
    }

    pub fn devices(&self) -> Result<Vec<Device>> {
        self.store.devices()
    }

    /// RFC 8628 §3.1–3.2: a lift asks to be authorised.
    pub fn device_authorization(&self, client_id: &str) -> Result<DeviceAuthorization> {
        let lift = LiftId::new(client_id)
            .map_err(|e| Error::oauth("invalid_client", format!("client_id {e}")))?;
        let now = self.now();
        self.store.purge_grants(now)?;
        let device_code = secret::random_token(DEVICE_CODE_PREFIX);
        // A clash of user codes among live grants is rare (20^8 codes); try again.
        for _ in 0..8 {
            let user_code = secret::user_code();
            let grant = DeviceGrant {
                device_code_hash: secret::hash(&device_code),
                user_code: user_code.clone(),
                lift_id: lift.clone(),
                created_us: now,
                expires_us: now + self.config.device_code_secs * US,
                interval_secs: self.config.poll_interval_secs,
                last_poll_us: None,
                state: GrantState::Pending,
            };
            match self.store.insert_grant(&grant) {
                Ok(()) => {
                    let shown = secret::display_user_code(&user_code);
                    let mut complete = url::Url::parse(&self.config.verification_uri)
                        .map_err(|e| Error::Storage(format!("auth.verification_uri: {e}")))?;
                    complete.query_pairs_mut().append_pair("user_code", &shown);
                    return Ok(DeviceAuthorization {
                        device_code,
                        user_code: shown,
                        verification_uri: self.config.verification_uri.clone(),
                        verification_uri_complete: complete.to_string(),
                        expires_in: self.config.device_code_secs,
                        interval: self.config.poll_interval_secs,
                    });
                }
                Err(Error::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Storage("could not draw a free user code".into()))
    }

    /// The pending grant a user code names (what an installer is about to approve).
    pub fn pending_grant(&self, user_code: &str) -> Result<DeviceGrant> {
        let code = normalised(user_code)?;
        let now = self.now();
        let grant = self
            .store
            .update_grant(GrantKey::UserCode(&code), &mut |_| false)?
            .filter(|g| g.expires_us > now && g.state == GrantState::Pending)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no pending request has the code {}; it may have expired (codes last {} minutes)",
                    secret::display_user_code(&code),
                    self.config.device_code_secs / 60
                ))
            })?;
        Ok(grant)
    }

    /// An operator approves (with the lift's building) or denies a user code.
    pub fn decide(&self, user_code: &str, approve: Option<&str>, by: &str) -> Result<DeviceGrant> {
        let code = normalised(user_code)?;
        let now = self.now();
        let mut outcome: Result<()> = Ok(());
        let grant = self
            .store
            .update_grant(GrantKey::UserCode(&code), &mut |g| {
                if g.expires_us <= now {
                    outcome = Err(Error::NotFound(format!(
                        "the code {} has expired; the lift asks for a new one",
                        secret::display_user_code(&code)
                    )));
                    return false;
                }
                if g.state != GrantState::Pending {
                    outcome = Err(Error::Conflict(format!(
                        "the code {} was already decided",
                        secret::display_user_code(&code)
                    )));
                    return false;
                }
                g.state = match approve {
                    Some(building) => GrantState::Approved {
                        building: building.to_string(),
                        by: by.to_string(),
                    },
                    None => GrantState::Denied { by: by.to_string() },
                };
                outcome = Ok(());
                true
            })?;
        let grant = grant.ok_or_else(|| {
            Error::NotFound(format!(
                "no request has the code {}",
                secret::display_user_code(&code)
            ))
        })?;
        outcome?;
        if approve.is_some() {
            let mut device = self.device_record(&grant.lift_id)?;
            device.approved_us = Some(now);
            device.approved_by = Some(by.to_string());
            device.revoked_us = None;
            self.store.put_device(&device)?;
            self.devices.write().insert(device.lift_id.clone(), device);
        }
        Ok(grant)
    }

    /// Factory pre-provisioning: a one-time registration code for `lift`, approved in advance
    /// (into `building`), valid `valid_days`. The lift exchanges it once at `/oauth/token` with
    /// [`REGISTRATION_CODE_GRANT`] for the same tokens the device flow gives.
    pub fn provision(
        &self,
        lift: &LiftId,
        building: &str,
        by: &str,
        valid_days: i64,
    ) -> Result<String> {
        let now = self.now();
        let code = secret::random_token(REGISTRATION_CODE_PREFIX);
        for _ in 0..8 {
            let grant = DeviceGrant {
                device_code_hash: secret::hash(&code),
                // Never shown: a registration code needs no user code, but grants are unique by one.
                user_code: format!("P{}", secret::random_id()),
                lift_id: lift.clone(),
                created_us: now,
                expires_us: now + valid_days * 86_400 * US,
                interval_secs: 0,
                last_poll_us: None,
                state: GrantState::Approved {
                    building: building.to_string(),
                    by: by.to_string(),
                },
            };
            match self.store.insert_grant(&grant) {
                Ok(()) => {
                    let mut device = self.device_record(lift)?;
                    device.approved_us = Some(now);
                    device.approved_by = Some(by.to_string());
                    device.revoked_us = None;
                    self.store.put_device(&device)?;
                    self.devices.write().insert(lift.clone(), device);
                    return Ok(code);
                }
                Err(Error::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Storage("could not store a registration code".into()))
    }

    /// A lift exchanges its registration code (once) for tokens.
    pub fn redeem(&self, code: &str, client_id: &str) -> Result<TokenPair> {
        if !code.starts_with(REGISTRATION_CODE_PREFIX) {
            return Err(Error::oauth("invalid_grant", "not a registration code"));
        }
        self.exchange(code, client_id)
    }

    /// RFC 8628 §3.4–3.5: the lift polls with its device code.
    pub fn poll(&self, device_code: &str, client_id: &str) -> Result<TokenPair> {
        if device_code.starts_with(REGISTRATION_CODE_PREFIX) {
            return Err(Error::oauth(
                "invalid_grant",
                format!(
                    "a registration code is exchanged with grant_type {REGISTRATION_CODE_GRANT}"
                ),
            ));
        }
        self.exchange(device_code, client_id)
    }

    fn exchange(&self, device_code: &str, client_id: &str) -> Result<TokenPair> {
        let now = self.now();
        let mut answer: Result<Option<LiftId>> = Ok(None);
        let found = self.store.update_grant(
            GrantKey::DeviceCodeHash(&secret::hash(device_code)),
            &mut |g| {
                if g.lift_id.as_str() != client_id {
                    answer = Err(Error::oauth(
                        "invalid_grant",
                        "the device code was issued to another client_id",
                    ));
                    return false;
                }
                if now >= g.expires_us {
                    answer = Err(Error::oauth(
                        "expired_token",
                        "the device code has expired; start again at /oauth/device_authorization",
                    ));
                    return false;
                }
                if let Some(last) = g.last_poll_us
                    && now - last < i64::from(g.interval_secs) * US
                {
                    g.interval_secs += 5;
                    g.last_poll_us = Some(now);
                    answer = Err(Error::oauth(
                        "slow_down",
                        format!("poll at most every {} seconds", g.interval_secs),
                    ));
                    return true;
                }
                g.last_poll_us = Some(now);
                answer = match &g.state {
                    GrantState::Pending => Err(Error::oauth(
                        "authorization_pending",
                        "waiting for an operator to enter the user code",
                    )),
                    GrantState::Denied { .. } => Err(Error::oauth(
                        "access_denied",
                        "an operator denied this request",
                    )),
                    GrantState::Consumed => Err(Error::oauth(
                        "invalid_grant",
                        "the device code was already exchanged",
                    )),
                    GrantState::Approved { .. } => {
                        g.state = GrantState::Consumed;
                        Ok(Some(g.lift_id.clone()))
                    }
                };
                true
            },
        )?;
        if found.is_none() {
            return Err(Error::oauth("invalid_grant", "unknown device code"));
        }
        let lift = answer?.expect("approved grant names its lift");
        self.issue_new_family(&lift)
    }

    fn issue_new_family(&self, lift: &LiftId) -> Result<TokenPair> {
        let family = secret::random_id();
        let refresh = self.new_refresh(lift, &family)?;
        self.token_pair(lift, refresh)
    }

    fn new_refresh(&self, lift: &LiftId, family: &str) -> Result<String> {
        let now = self.now();
        let token = secret::random_token(REFRESH_PREFIX);
        self.store.insert_refresh(&RefreshToken {
            hash: secret::hash(&token),
            family: family.to_string(),
            lift_id: lift.clone(),
            created_us: now,
            expires_us: now + self.config.refresh_token_days * 86_400 * US,
            rotated_to: None,
            rotated_us: None,
            revoked: false,
        })?;
        Ok(token)
    }

    fn token_pair(&self, lift: &LiftId, refresh_token: String) -> Result<TokenPair> {
        Ok(TokenPair {
            access_token: self.access_token(lift)?,
            token_type: "Bearer".into(),
            expires_in: self.config.access_token_secs,
            refresh_token,
        })
    }

    /// A signed access token for `lift`.
    pub fn access_token(&self, lift: &LiftId) -> Result<String> {
        let now = self.now();
        let claims = Claims {
            sub: lift.as_str().to_string(),
            typ: "device".into(),
            iat: now.div_euclid(US),
            exp: (now + self.config.access_token_secs * US).div_euclid(US),
            iat_us: now,
        };
        let keys = self.keys.read();
        let (kid, key) = keys.signing(now);
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, &claims, key).map_err(|e| Error::Keys(e.to_string()))
    }

    /// RFC 6749 §6: a lift exchanges its refresh token for new tokens. The old refresh token is
    /// spent; presenting it again revokes the whole family, except within the grace period and
    /// before the new one was used (the lift lost the response).
    pub fn refresh(&self, refresh_token: &str, client_id: Option<&str>) -> Result<TokenPair> {
        let now = self.now();
        let hash = secret::hash(refresh_token);
        let grace = self.config.refresh_grace_secs * US;
        let next = secret::random_token(REFRESH_PREFIX);
        let next_hash = secret::hash(&next);
        enum Outcome {
            Rotated,
            Retry(String),
            Reused,
            Refused(&'static str),
        }
        let mut outcome = Outcome::Refused("unknown refresh token");
        let current = self.store.update_refresh(&hash, &mut |t| {
            if client_id.is_some_and(|c| c != t.lift_id.as_str()) {
                outcome = Outcome::Refused("the refresh token was issued to another client_id");
                return false;
            }
            outcome = if t.revoked {
                Outcome::Refused("the refresh token was revoked; register the lift again")
            } else if now >= t.expires_us {
                Outcome::Refused("the refresh token has expired; register the lift again")
            } else if let Some(successor) = &t.rotated_to {
                if t.rotated_us.is_some_and(|r| now - r <= grace) {
                    Outcome::Retry(successor.clone())
                } else {
                    Outcome::Reused
                }
            } else {
                t.rotated_to = Some(next_hash.clone());
                t.rotated_us = Some(now);
                return {
                    outcome = Outcome::Rotated;
                    true
                };
            };
            false
        })?;
        let Some(current) = current else {
            return Err(Error::oauth("invalid_grant", "unknown refresh token"));
        };
        let lift = current.lift_id.clone();
        if self.device_record(&lift)?.revoked_us.is_some() {
            return Err(Error::oauth(
                "invalid_grant",
                "the lift was revoked; an operator must approve it again",
            ));
        }
        match outcome {
            Outcome::Refused(why) => Err(Error::oauth("invalid_grant", why)),
            Outcome::Reused => self.reuse_detected(&current),
            Outcome::Retry(successor) => {
                // The successor must not have been used: then this is a retry, not a replay.
                let unused = self.store.update_refresh(&successor, &mut |s| {
                    if s.rotated_to.is_none() && !s.revoked {
                        s.revoked = true;
                        true
                    } else {
                        false
                    }
                })?;
                if !unused.is_some_and(|s| s.revoked && s.rotated_to.is_none()) {
                    return self.reuse_detected(&current);
                }
                self.store.update_refresh(&hash, &mut |t| {
                    t.rotated_to = Some(next_hash.clone());
                    true
                })?;
                self.insert_successor(&current, &next_hash)?;
                self.token_pair(&lift, next)
            }
            Outcome::Rotated => {
                self.insert_successor(&current, &next_hash)?;
                self.token_pair(&lift, next)
            }
        }
    }

    fn insert_successor(&self, current: &RefreshToken, next_hash: &str) -> Result<()> {
        let now = self.now();
        self.store.insert_refresh(&RefreshToken {
            hash: next_hash.to_string(),
            family: current.family.clone(),
            lift_id: current.lift_id.clone(),
            created_us: now,
            expires_us: now + self.config.refresh_token_days * 86_400 * US,
            rotated_to: None,
            rotated_us: None,
            revoked: false,
        })
    }

    fn reuse_detected(&self, current: &RefreshToken) -> Result<TokenPair> {
        let n = self.store.revoke_family(&current.family)?;
        tracing::warn!(lift_id = %current.lift_id, revoked = n, "a spent refresh token was presented again; its family is revoked");
        Err(Error::oauth(
            "invalid_grant",
            "the refresh token was already used; every refresh token of this lift's registration is revoked, register again",
        ))
    }

    /// Revokes a lift: its refresh tokens at once, its access tokens on their next use (every
    /// request checks the revocation, cached or not).
    pub fn revoke_device(&self, lift: &LiftId, by: &str) -> Result<Device> {
        let now = self.now();
        let mut device = self.device_record(lift)?;
        device.revoked_us = Some(now);
        device.not_before_us = Some(now);
        self.store.put_device(&device)?;
        self.store.revoke_lift_refresh(lift)?;
        self.devices.write().insert(lift.clone(), device.clone());
        tracing::info!(lift_id = %lift, by, "lift revoked");
        Ok(device)
    }

    /// Checks a lift's access token: signature (a key in the ring), type, expiry and revocation.
    /// Verified tokens are cached, so a lift that sends the same token for an hour costs one
    /// lookup; expiry and revocation are checked on every call.
    pub fn verify_device(&self, token: &str) -> Result<LiftId> {
        let now = self.now();
        let cached = self.cache.lock().get(token).cloned();
        let verified = match cached {
            Some(v) => v,
            None => {
                let v = self.verify_signature(token, now)?;
                let mut cache = self.cache.lock();
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
                cache.insert(token.into(), v.clone());
                v
            }
        };
        if now >= verified.exp_us {
            return Err(Error::Unauthenticated(
                "the access token has expired; refresh it at /oauth/token".into(),
            ));
        }
        if let Some(d) = self.devices.read().get(&verified.lift)
            && d.not_before_us.is_some_and(|nb| verified.iat_us <= nb)
        {
            return Err(Error::Unauthenticated(
                "the lift's tokens were revoked; an operator must approve it again".into(),
            ));
        }
        Ok(verified.lift)
    }

    fn verify_signature(&self, token: &str, now: i64) -> Result<Verified> {
        let bad = |why: &str| Error::Unauthenticated(format!("invalid access token: {why}"));
        let header = jsonwebtoken::decode_header(token).map_err(|_| bad("not a JWT"))?;
        if header.alg != Algorithm::HS256 {
            return Err(bad("unexpected algorithm"));
        }
        let kid = header.kid.ok_or_else(|| bad("no key id"))?;
        let keys = self.keys.read();
        let key = keys
            .verifying(&kid, now, self.config.access_token_secs * US)
            .ok_or_else(|| bad("unknown or retired signing key"))?;
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked against the injected clock, by the caller.
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|_| bad("signature"))?;
        let claims = data.claims;
        if claims.typ != "device" {
            return Err(bad("not a device token"));
        }
        let lift = LiftId::new(&claims.sub).map_err(|_| bad("subject"))?;
        Ok(Verified {
            lift,
            iat_us: claims.iat_us,
            exp_us: claims.exp * US,
        })
    }

    pub fn rotate_keys(&self) -> Result<String> {
        let now = self.now();
        let kid =
            self.keys
                .write()
                .rotate(&*self.key_store, now, self.config.access_token_secs * US)?;
        tracing::info!(kid, "token signing key rotated");
        Ok(kid)
    }

    pub fn keys(&self) -> Vec<KeyInfo> {
        self.keys.read().list(self.now())
    }

    // ---- audit -----------------------------------------------------------------------------

    /// Records a security-relevant action. A failure to record is logged, not raised: the action
    /// itself has happened.
    pub fn record(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        outcome: &str,
        address: Option<String>,
        detail: &str,
    ) {
        let event = crate::store::AuditEvent {
            id: 0,
            at_us: self.now(),
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            outcome: outcome.to_string(),
            address,
            detail: detail.to_string(),
            customer: self
                .store
                .user(actor)
                .ok()
                .flatten()
                .and_then(|u| u.customer),
        };
        if let Err(e) = self.store.append_audit(&event) {
            tracing::error!(error = %e, action, "could not record an audit event");
        }
    }

    pub fn audit(&self, query: &crate::store::AuditQuery) -> Result<Vec<crate::store::AuditEvent>> {
        self.store.audit(query)
    }

    // ---- staff -----------------------------------------------------------------------------

    /// Adds a staff account: the lift maker's (`customer` `None`) or one customer's.
    pub fn create_user(
        &self,
        username: &str,
        password: &str,
        role: Role,
        customer: Option<&str>,
    ) -> Result<User> {
        check_username(username)?;
        password::check_strength(password)?;
        if let Some(c) = customer {
            check_customer(c)?;
        }
        let user = User {
            username: username.to_string(),
            password_hash: password::hash(password)?,
            role,
            customer: customer.map(str::to_string),
            totp_secret: None,
            totp_confirmed: false,
            totp_last_step: 0,
            recovery_codes: Vec::new(),
            created_us: self.now(),
        };
        self.store.insert_user(&user)?;
        Ok(user)
    }

    pub fn user(&self, username: &str) -> Result<User> {
        self.store
            .user(username)?
            .ok_or_else(|| Error::NotFound(format!("no user {username:?}")))
    }

    pub fn users(&self) -> Result<Vec<User>> {
        self.store.users()
    }

    pub fn set_role(&self, username: &str, role: Role) -> Result<User> {
        self.store
            .update_user(username, &mut |u| {
                u.role = role;
                true
            })?
            .ok_or_else(|| Error::NotFound(format!("no user {username:?}")))
    }

    pub fn set_password(&self, username: &str, password: &str) -> Result<()> {
        password::check_strength(password)?;
        let phc = password::hash(password)?;
        self.store
            .update_user(username, &mut |u| {
                u.password_hash = phc.clone();
                true
            })?
            .ok_or_else(|| Error::NotFound(format!("no user {username:?}")))?;
        // A new password ends every session.
        self.store
            .delete_tokens(username, None, Some(TokenKind::Session))?;
        Ok(())
    }

    pub fn delete_user(&self, username: &str) -> Result<()> {
        if self.store.delete_user(username)? {
            Ok(())
        } else {
            Err(Error::NotFound(format!("no user {username:?}")))
        }
    }

    /// Removes a user's second factor (an admin helping someone who lost theirs).
    pub fn reset_totp(&self, username: &str) -> Result<()> {
        self.store
            .update_user(username, &mut |u| {
                u.totp_secret = None;
                u.totp_confirmed = false;
                u.recovery_codes.clear();
                true
            })?
            .ok_or_else(|| Error::NotFound(format!("no user {username:?}")))?;
        self.store.delete_tokens(username, None, None)?;
        Ok(())
    }

    /// Password, then the second factor if the account has one. The session is marked as
    /// second-factor-checked only then; an operator or admin without one can only enrol.
    pub fn login(&self, username: &str, password: &str, code: Option<&str>) -> Result<IssuedToken> {
        let wrong = || Error::Unauthenticated("wrong username or password".into());
        let user = self.store.user(username)?;
        let phc = user
            .as_ref()
            .map(|u| u.password_hash.as_str())
            .unwrap_or_else(|| password::dummy_hash());
        if !password::verify(password, phc) {
            return Err(wrong());
        }
        let user = user.ok_or_else(wrong)?;
        let second_factor = if user.has_second_factor() {
            let code = code.ok_or(Error::SecondFactorRequired)?;
            self.check_second_factor(&user.username, code)?;
            true
        } else {
            false
        };
        let expires = self.now() + self.config.session_hours * 3600 * US;
        self.issue(
            &user.username,
            TokenKind::Session,
            "login",
            Some(expires),
            second_factor,
        )
    }

    /// A TOTP code (once per time step) or an unused recovery code.
    fn check_second_factor(&self, username: &str, code: &str) -> Result<()> {
        let now_secs = self.now().div_euclid(US);
        let mut ok = false;
        self.store.update_user(username, &mut |u| {
            let Some(secret) = &u.totp_secret else {
                return false;
            };
            if let Some(step) = totp::matching_step(secret, code, now_secs)
                && step > u.totp_last_step
            {
                u.totp_last_step = step;
                ok = true;
                return true;
            }
            let recovery = secret::hash(code.trim());
            if let Some(i) = u.recovery_codes.iter().position(|h| *h == recovery) {
                u.recovery_codes.swap_remove(i);
                ok = true;
                return true;
            }
            false
        })?;
        if ok {
            Ok(())
        } else {
            Err(Error::Unauthenticated(
                "wrong or already used TOTP code".into(),
            ))
        }
    }

    fn issue(
        &self,
        owner: &str,
        kind: TokenKind,
        name: &str,
        expires_us: Option<i64>,
        second_factor: bool,
    ) -> Result<IssuedToken> {
        let prefix = match kind {
            TokenKind::Session => SESSION_PREFIX,
            TokenKind::Api => API_TOKEN_PREFIX,
        };
        let token = secret::random_token(prefix);
        let record = Token {
            id: secret::random_id(),
            hash: secret::hash(&token),
            owner: owner.to_string(),
            kind,
            name: name.to_string(),
            created_us: self.now(),
            expires_us,
            second_factor,
        };
        self.store.insert_token(&record)?;
        Ok(IssuedToken { token, record })
    }

    /// Starts (or restarts, while unconfirmed) TOTP enrolment.
    pub fn enrol_totp(&self, username: &str) -> Result<TotpEnrolment> {
        let secret = totp::new_secret();
        let mut already = false;
        self.store
            .update_user(username, &mut |u| {
                if u.has_second_factor() {
                    already = true;
                    return false;
                }
                u.totp_secret = Some(secret.clone());
                u.totp_confirmed = false;
                true
            })?
            .ok_or_else(|| Error::NotFound(format!("no user {username:?}")))?;
        if already {
            return Err(Error::Conflict(
                "TOTP is already enrolled; an admin can reset it".into(),
            ));
        }
        let uri = totp::otpauth_uri(&self.config.issuer, username, &secret);
        Ok(TotpEnrolment {
            secret: totp::base32(&secret),
            qr_svg: totp::qr_svg(&uri),
            otpauth_uri: uri,
        })
    }

    /// Confirms enrolment with a first code; returns the recovery codes (shown once) and marks
    /// the session `token_hash` as second-factor-checked.
    pub fn confirm_totp(&self, username: &str, code: &str, token_id: &str) -> Result<Vec<String>> {
        let now_secs = self.now().div_euclid(US);
        let codes: Vec<String> = (0..RECOVERY_CODES)
            .map(|_| secret::random_token("")[..16].to_string())
            .collect();
        let hashes: Vec<String> = codes.iter().map(|c| secret::hash(c)).collect();
        let mut outcome: Result<()> = Err(Error::Conflict(
            "no enrolment in progress: start one with POST /v1/auth/totp".into(),
        ));
        self.store
            .update_user(username, &mut |u| {
                let Some(secret) = &u.totp_secret else {
                    return false;
                };
                if u.totp_confirmed {
                    outcome = Err(Error::Conflict("TOTP is already enrolled".into()));
                    return false;
                }
                match totp::matching_step(secret, code, now_secs) {
                    Some(step) => {
                        u.totp_confirmed = true;
                        u.totp_last_step = step;
                        u.recovery_codes = hashes.clone();
                        outcome = Ok(());
                        true
                    }
                    None => {
                        outcome = Err(Error::invalid("code", "wrong TOTP code"));
                        false
                    }
                }
            })?
            .ok_or_else(|| Error::NotFound(format!("no user {username:?}")))?;
        outcome?;
        for t in self.store.tokens(username)? {
            if t.id == token_id {
                self.store.update_token(&t.hash, &mut |t| {
                    t.second_factor = true;
                    true
                })?;
            }
        }
        Ok(codes)
    }

    /// A named API token for scripts, owned by `username`.
    pub fn create_api_token(
        &self,
        principal: &Principal,
        name: &str,
        expires_days: Option<i64>,
    ) -> Result<IssuedToken> {
        let Principal::User {
            username,
            role,
            second_factor,
            ..
        } = principal
        else {
            return Err(Error::Forbidden("only staff create API tokens".into()));
        };
        if role.needs_second_factor() && !second_factor {
            return Err(Error::Forbidden(
                "enrol a second factor before creating API tokens".into(),
            ));
        }
        if name.is_empty() || name.len() > 100 {
            return Err(Error::invalid("name", "1 to 100 characters"));
        }
        let expires = expires_days.map(|d| self.now() + d * 86_400 * US);
        self.issue(username, TokenKind::Api, name, expires, true)
    }

    /// Issues an API token without a login (offline bootstrap by someone holding the data dir).
    pub fn bootstrap_api_token(&self, username: &str, name: &str) -> Result<IssuedToken> {
        self.user(username)?;
        self.issue(username, TokenKind::Api, name, None, true)
    }

    pub fn tokens(&self, username: &str) -> Result<Vec<Token>> {
        self.store.tokens(username)
    }

    pub fn revoke_token(&self, username: &str, id: &str) -> Result<()> {
        if self.store.delete_tokens(username, Some(id), None)? == 0 {
            return Err(Error::NotFound(format!("{username} has no token {id:?}")));
        }
        Ok(())
    }

    /// Ends every session of a user (API tokens stay).
    pub fn revoke_sessions(&self, username: &str) -> Result<u64> {
        self.store
            .delete_tokens(username, None, Some(TokenKind::Session))
    }

    /// Who holds `bearer`: a staff session or API token, or a lift's access token.
    pub fn authenticate(&self, bearer: &str) -> Result<Principal> {
        if bearer.starts_with(SESSION_PREFIX) || bearer.starts_with(API_TOKEN_PREFIX) {
            let hash = secret::hash(bearer);
            let now = self.now();
            return match self.staff(&hash, now) {
                Ok((principal, expires)) => {
                    let mut seen = self.staff_seen.lock();
                    if seen.len() >= CACHE_MAX {
                        seen.clear();
                    }
                    seen.insert(hash, (principal.clone(), now, expires));
                    Ok(principal)
                }
                // The store is out of reach: a token verified a moment ago still holds (no
                // revocation can be made meanwhile either).
                Err(Error::Unavailable(why)) => {
                    let grace = self.config.outage_grace_secs * US;
                    match self.staff_seen.lock().get(&hash) {
                        Some((principal, at, expires))
                            if now - at <= grace && expires.is_none_or(|e| now < e) =>
                        {
                            Ok(principal.clone())
                        }
                        _ => Err(Error::Unavailable(why)),
                    }
                }
                Err(e) => {
                    self.staff_seen.lock().remove(&hash);
                    Err(e)
                }
            };
        }
        self.verify_device(bearer)
            .map(|lift_id| Principal::Device { lift_id })
    }

    /// A staff token's principal and expiry, from the store.
    fn staff(&self, hash: &str, now: i64) -> Result<(Principal, Option<i64>)> {
        let invalid = || Error::Unauthenticated("unknown, expired or revoked token".into());
        let token = self.store.token_by_hash(hash)?.ok_or_else(invalid)?;
        if token.expires_us.is_some_and(|e| now >= e) {
            return Err(invalid());
        }
        let user = self.store.user(&token.owner)?.ok_or_else(invalid)?;
        Ok((
            Principal::User {
                username: user.username,
                role: user.role,
                customer: user.customer,
                token_id: token.id,
                second_factor: token.second_factor,
            },
            token.expires_us,
        ))
    }
}

fn normalised(user_code: &str) -> Result<String> {
    secret::normalise_user_code(user_code).ok_or_else(|| {
        Error::invalid(
            "user_code",
            "a user code is 8 letters from BCDFGHJKLMNPQRSTVWXZ, shown as XXXX-XXXX",
        )
    })
}

fn check_customer(customer: &str) -> Result<()> {
    if customer.is_empty() || customer.len() > 128 || customer.chars().any(char::is_control) {
        return Err(Error::invalid(
            "customer",
            "1 to 128 characters without control characters",
        ));
    }
    Ok(())
}

fn check_username(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "username",
            "1 to 64 characters of a-z, 0-9, '.', '_', '-', '@'",
        ))
    }
}
