//! The authority under an injected clock, over the SQLite store (after its conformance suite).

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hoistway_auth::authority::{API_TOKEN_PREFIX, SESSION_PREFIX};
use hoistway_auth::{
    Access, Authority, AuthorityConfig, Error, FileKeyStore, Principal, Role, SqliteAuthStore, totp,
};
use hoistway_model::time::ManualClock;
use hoistway_model::{Clock, LiftId};

const T0: i64 = 1_790_000_000_000_000;

struct Fixture {
    auth: Authority,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteAuthStore::open(&dir.path().join("auth.sqlite3")).unwrap());
    let clock = Arc::new(ManualClock::new(T0));
    let auth = Authority::open(
        store,
        Arc::new(FileKeyStore::new(&dir.path().join("keys.json"))),
        clock.clone() as Arc<dyn Clock>,
        AuthorityConfig::default(),
    )
    .unwrap();
    Fixture {
        auth,
        clock,
        _dir: dir,
    }
}

fn oauth_code(r: Result<impl std::fmt::Debug, Error>) -> &'static str {
    match r {
        Err(Error::OAuth { code, .. }) => code,
        other => panic!("expected an OAuth error, got {other:?}"),
    }
}

fn lift(id: &str) -> LiftId {
    LiftId::new(id).unwrap()
}

#[test]
fn the_sqlite_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteAuthStore::open(&dir.path().join("auth.sqlite3")).unwrap();
    hoistway_auth::conformance::check(&store);
    hoistway_auth::conformance::check(&SqliteAuthStore::in_memory().unwrap());
}

#[test]
fn two_nodes_over_one_store_share_tokens_and_revocations_reach_both() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let node = || {
        Authority::open(
            Arc::new(SqliteAuthStore::open(&dir.path().join("auth.sqlite3")).unwrap()),
            Arc::new(FileKeyStore::new(&dir.path().join("keys.json"))),
            clock.clone() as Arc<dyn Clock>,
            AuthorityConfig::default(),
        )
        .unwrap()
    };
    let (a, b) = (node(), node());
    hoistway_auth::conformance::check_shared(&a, &b, &clock);
}

#[test]
fn the_device_flow_answers_as_rfc_8628_says() {
    let f = fixture();
    let a = f.auth.device_authorization("L-1").unwrap();
    assert_eq!(a.user_code.len(), 9);
    assert_eq!(&a.user_code[4..5], "-");
    assert_eq!(a.interval, 5);
    assert_eq!(a.expires_in, 900);
    assert!(a.verification_uri_complete.contains("user_code="));
    assert_eq!(
        oauth_code(f.auth.poll(&a.device_code, "L-1")),
        "authorization_pending"
    );
    f.clock.advance_secs(1);
    assert_eq!(oauth_code(f.auth.poll(&a.device_code, "L-1")), "slow_down");
    // The interval grew by 5 s: 6 s later is still too soon.
    f.clock.advance_secs(6);
    assert_eq!(oauth_code(f.auth.poll(&a.device_code, "L-1")), "slow_down");
    f.clock.advance_secs(15);
    assert_eq!(
        oauth_code(f.auth.poll(&a.device_code, "L-1")),
        "authorization_pending"
    );
    assert_eq!(
        oauth_code(f.auth.poll(&a.device_code, "L-2")),
        "invalid_grant"
    );
    assert_eq!(
        oauth_code(f.auth.poll("hwd_forged", "L-1")),
        "invalid_grant"
    );
    // The installer types the code in lower case without the dash.
    let typed = a.user_code.replace('-', "").to_lowercase();
    assert_eq!(f.auth.pending_grant(&typed).unwrap().lift_id, lift("L-1"));
    f.auth.decide(&typed, Some("B-7"), "olivia").unwrap();
    assert!(matches!(
        f.auth.decide(&typed, Some("B-7"), "olivia"),
        Err(Error::Conflict(_))
    ));
    f.clock.advance_secs(15);
    let pair = f.auth.poll(&a.device_code, "L-1").unwrap();
    assert_eq!(pair.token_type, "Bearer");
    assert_eq!(pair.expires_in, 3600);
    assert_eq!(
        f.auth.verify_device(&pair.access_token).unwrap(),
        lift("L-1")
    );
    f.clock.advance_secs(15);
    assert_eq!(
        oauth_code(f.auth.poll(&a.device_code, "L-1")),
        "invalid_grant",
        "a device code is exchanged once"
    );

    // Denied, and expired.
    let b = f.auth.device_authorization("L-2").unwrap();
    f.auth.decide(&b.user_code, None, "olivia").unwrap();
    assert_eq!(
        oauth_code(f.auth.poll(&b.device_code, "L-2")),
        "access_denied"
    );
    let c = f.auth.device_authorization("L-3").unwrap();
    f.clock.advance_secs(900);
    assert_eq!(
        oauth_code(f.auth.poll(&c.device_code, "L-3")),
        "expired_token"
    );
    assert!(matches!(
        f.auth.decide(&c.user_code, Some("B"), "olivia"),
        Err(Error::NotFound(_))
    ));
    assert_eq!(
        oauth_code(f.auth.device_authorization("not a lift id!")),
        "invalid_client"
    );
}

fn registered(f: &Fixture, id: &str) -> hoistway_auth::TokenPair {
    let a = f.auth.device_authorization(id).unwrap();
    f.auth.decide(&a.user_code, Some("B-1"), "olivia").unwrap();
    f.auth.poll(&a.device_code, id).unwrap()
}

#[test]
fn refresh_tokens_rotate_and_a_replay_revokes_the_family_but_a_quick_retry_does_not() {
    let f = fixture();
    let first = registered(&f, "L-1");
    let second = f.auth.refresh(&first.refresh_token, Some("L-1")).unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(
        oauth_code(f.auth.refresh(&second.refresh_token, Some("L-2"))),
        "invalid_grant",
        "another client_id"
    );

    // The response carrying `second` was lost: the lift retries `first` within the grace period
    // and gets a working pair; the lost one no longer works.
    f.clock.advance_secs(10);
    let retried = f.auth.refresh(&first.refresh_token, Some("L-1")).unwrap();
    assert_eq!(
        oauth_code(f.auth.refresh(&second.refresh_token, Some("L-1"))),
        "invalid_grant"
    );
    let third = f.auth.refresh(&retried.refresh_token, Some("L-1")).unwrap();

    // Now `first` is presented again after its successor was used: a replay. The whole family
    // goes, including the newest token.
    assert_eq!(
        oauth_code(f.auth.refresh(&first.refresh_token, None)),
        "invalid_grant"
    );
    assert_eq!(
        oauth_code(f.auth.refresh(&third.refresh_token, None)),
        "invalid_grant"
    );

    // Past the grace period a second use is a replay too.
    let other = registered(&f, "L-2");
    let next = f.auth.refresh(&other.refresh_token, None).unwrap();
    f.clock.advance_secs(61);
    assert_eq!(
        oauth_code(f.auth.refresh(&other.refresh_token, None)),
        "invalid_grant"
    );
    assert_eq!(
        oauth_code(f.auth.refresh(&next.refresh_token, None)),
        "invalid_grant"
    );
}

fn b64(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn forged_expired_and_revoked_access_tokens_are_refused_cache_or_not() {
    let f = fixture();
    let pair = registered(&f, "L-1");
    let token = pair.access_token.clone();
    assert!(f.auth.verify_device(&token).is_ok());
    let parts: Vec<&str> = token.split('.').collect();
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();

    // alg: none, with and without a signature.
    let none = serde_json::json!({"alg": "none", "typ": "JWT", "kid": header["kid"]});
    for sig in ["", parts[2]] {
        let forged = format!("{}.{}.{sig}", b64(&none), parts[1]);
        assert!(f.auth.verify_device(&forged).is_err(), "alg none");
    }
    // Another lift in the payload, old signature.
    claims["sub"] = "L-2".into();
    let swapped = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);
    assert!(f.auth.verify_device(&swapped).is_err(), "payload changed");
    // Algorithm swap to HS512 and RS256 headers.
    for alg in ["HS512", "RS256", "ES256"] {
        let h = serde_json::json!({"alg": alg, "typ": "JWT", "kid": header["kid"]});
        let forged = format!("{}.{}.{}", b64(&h), parts[1], parts[2]);
        assert!(f.auth.verify_device(&forged).is_err(), "{alg}");
    }
    // Signed by another installation's key.
    let other = fixture();
    let foreign = registered(&other, "L-1").access_token;
    assert!(f.auth.verify_device(&foreign).is_err(), "wrong key");
    // A staff token is not a device token, and garbage is garbage.
    assert!(f.auth.verify_device("hwt_abc").is_err());
    assert!(f.auth.verify_device("a.b.c").is_err());

    // Expiry follows the injected clock even though the token is cached.
    f.clock.advance_secs(3599);
    assert!(f.auth.verify_device(&token).is_ok());
    f.clock.advance_secs(1);
    assert!(matches!(
        f.auth.verify_device(&token),
        Err(Error::Unauthenticated(_))
    ));

    // Revocation takes effect on the next request, cached or not, and refresh stops.
    let pair = f.auth.refresh(&pair.refresh_token, None).unwrap();
    assert!(f.auth.verify_device(&pair.access_token).is_ok());
    f.auth.revoke_device(&lift("L-1"), "olivia").unwrap();
    assert!(f.auth.verify_device(&pair.access_token).is_err());
    assert_eq!(
        oauth_code(f.auth.refresh(&pair.refresh_token, None)),
        "invalid_grant"
    );
    // Approved again: new tokens work, the revoked ones stay dead.
    f.clock.advance_secs(1);
    let again = registered(&f, "L-1");
    assert!(f.auth.verify_device(&again.access_token).is_ok());
    assert!(f.auth.verify_device(&pair.access_token).is_err());
}

#[test]
fn a_rotated_key_still_verifies_its_tokens_until_they_expire() {
    let f = fixture();
    let old = registered(&f, "L-1").access_token;
    let kid = f.auth.rotate_keys().unwrap();
    let new = f.auth.access_token(&lift("L-1")).unwrap();
    assert!(new.split('.').next().is_some());
    assert!(f.auth.verify_device(&old).is_ok());
    assert!(f.auth.verify_device(&new).is_ok());
    assert_eq!(f.auth.keys().iter().filter(|k| k.signing).count(), 1);
    assert_eq!(f.auth.keys().last().unwrap().kid, kid);
    f.clock.advance_secs(3600);
    assert!(f.auth.verify_device(&old).is_err());
}

fn code_now(f: &Fixture, secret_b32: &str) -> String {
    let secret = totp_rs::Secret::try_from_base32(secret_b32).unwrap();
    totp::code_at(&secret, f.clock.now_us() / 1_000_000)
}

#[test]
fn staff_log_in_with_a_password_and_a_totp_code_used_once() {
    let f = fixture();
    f.auth
        .create_user("olivia", "a long enough password", Role::Operator, None)
        .unwrap();
    assert!(matches!(
        f.auth
            .create_user("olivia", "a long enough password", Role::Viewer, None),
        Err(Error::Conflict(_))
    ));
    assert!(
        f.auth
            .create_user("x", "short", Role::Viewer, None)
            .is_err()
    );
    assert!(
        f.auth
            .create_user("Bad Name", "a long enough password", Role::Viewer, None)
            .is_err()
    );
    assert!(matches!(
        f.auth.login("olivia", "wrong password!!", None),
        Err(Error::Unauthenticated(_))
    ));
    assert!(matches!(
        f.auth.login("nobody", "a long enough password", None),
        Err(Error::Unauthenticated(_))
    ));

    // No second factor yet: an operator may only enrol.
    let session = f
        .auth
        .login("olivia", "a long enough password", None)
        .unwrap();
    assert!(session.token.starts_with(SESSION_PREFIX));
    let p = f.auth.authenticate(&session.token).unwrap();
    assert!(p.allows(Access::Staff).is_ok());
    assert!(p.allows(Access::Role(Role::Viewer)).is_err());
    assert!(f.auth.create_api_token(&p, "ci", None).is_err());
    let enrolment = f.auth.enrol_totp("olivia").unwrap();
    assert!(enrolment.otpauth_uri.contains("issuer=Hoistway"));
    assert!(enrolment.qr_svg.contains("<svg"));
    assert!(
        f.auth
            .confirm_totp("olivia", "000000", &session.record.id)
            .is_err()
    );
    let code = code_now(&f, &enrolment.secret);
    let recovery = f
        .auth
        .confirm_totp("olivia", &code, &session.record.id)
        .unwrap();
    assert_eq!(recovery.len(), 10);
    // The enrolling session now counts as second-factor-checked.
    let p = f.auth.authenticate(&session.token).unwrap();
    assert!(p.allows(Access::Role(Role::Operator)).is_ok());
    assert!(p.allows(Access::Role(Role::Admin)).is_err());

    // Login now needs a code, the same code works once, a recovery code works once.
    assert!(matches!(
        f.auth.login("olivia", "a long enough password", None),
        Err(Error::SecondFactorRequired)
    ));
    assert!(
        f.auth
            .login("olivia", "a long enough password", Some(&code))
            .is_err(),
        "the enrolment code was used"
    );
    f.clock.advance_secs(30);
    let code = code_now(&f, &enrolment.secret);
    let s2 = f
        .auth
        .login("olivia", "a long enough password", Some(&code))
        .unwrap();
    assert!(s2.record.second_factor);
    assert!(
        f.auth
            .login("olivia", "a long enough password", Some(&code))
            .is_err(),
        "a TOTP code is accepted once"
    );
    f.auth
        .login("olivia", "a long enough password", Some(&recovery[0]))
        .unwrap();
    assert!(
        f.auth
            .login("olivia", "a long enough password", Some(&recovery[0]))
            .is_err()
    );

    // API tokens: created by a checked session, listed, revoked.
    let p = f.auth.authenticate(&s2.token).unwrap();
    let api = f.auth.create_api_token(&p, "ci", Some(30)).unwrap();
    assert!(api.token.starts_with(API_TOKEN_PREFIX));
    let Principal::User { role, .. } = f.auth.authenticate(&api.token).unwrap() else {
        panic!("a user")
    };
    assert_eq!(role, Role::Operator);
    f.auth.revoke_token("olivia", &api.record.id).unwrap();
    assert!(f.auth.authenticate(&api.token).is_err());

    // Sessions expire, and can all be revoked.
    f.clock.advance_secs(12 * 3600);
    assert!(f.auth.authenticate(&s2.token).is_err(), "expired");
    f.clock.advance_secs(-12 * 3600);
    assert!(f.auth.authenticate(&s2.token).is_ok());
    assert!(f.auth.revoke_sessions("olivia").unwrap() >= 2);
    assert!(f.auth.authenticate(&s2.token).is_err());
}
