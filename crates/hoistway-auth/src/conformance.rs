//! The behaviour every [`AuthStore`] and [`KeyStore`] implementation must show. Call [`check`]
//! and [`check_keys`] on fresh, empty stores; they panic on the first difference.

use hoistway_model::LiftId;

use crate::Error;
use crate::keys::{KeyStore, StoredKey};
use crate::roles::Role;
use crate::store::{
    AuthStore, Device, DeviceGrant, GrantKey, GrantState, RefreshToken, Token, TokenKind, User,
};

fn user(name: &str) -> User {
    User {
        username: name.into(),
        password_hash: "$argon2id$x".into(),
        role: Role::Viewer,
        customer: (name == "bob").then(|| "acme".to_string()),
        totp_secret: None,
        totp_confirmed: false,
        totp_last_step: 0,
        recovery_codes: vec![],
        created_us: 1,
    }
}

fn token(id: &str, owner: &str, kind: TokenKind) -> Token {
    Token {
        id: id.into(),
        hash: format!("hash-{id}"),
        owner: owner.into(),
        kind,
        name: format!("name-{id}"),
        created_us: 2,
        expires_us: Some(100),
        second_factor: false,
    }
}

fn refresh(hash: &str, family: &str, lift: &str) -> RefreshToken {
    RefreshToken {
        hash: hash.into(),
        family: family.into(),
        lift_id: LiftId::new(lift).unwrap(),
        created_us: 1,
        expires_us: 1_000,
        rotated_to: None,
        rotated_us: None,
        revoked: false,
    }
}

/// Runs every check against `store`, which must start empty.
pub fn check(store: &dyn AuthStore) {
    users(store);
    tokens(store);
    grants(store);
    refresh_tokens(store);
    devices(store);
    audit(store);
}

fn audit(store: &dyn AuthStore) {
    use crate::store::{AuditEvent, AuditQuery};
    let event = |actor: &str, action: &str| AuditEvent {
        id: 0,
        at_us: 5,
        actor: actor.into(),
        action: action.into(),
        target: "t".into(),
        outcome: "ok".into(),
        address: Some("127.0.0.1".into()),
        detail: "d".into(),
        customer: (actor == "bob").then(|| "acme".to_string()),
    };
    let a = store.append_audit(&event("alice", "login")).unwrap();
    let b = store.append_audit(&event("bob", "login")).unwrap();
    let c = store.append_audit(&event("alice", "sql")).unwrap();
    assert!(a < b && b < c, "ids increase");
    let all = store
        .audit(&AuditQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), [a, b, c]);
    assert_eq!(
        all[0],
        AuditEvent {
            id: a,
            ..event("alice", "login")
        }
    );
    let q = |after_id, actor: Option<&str>, action: Option<&str>, limit| AuditQuery {
        after_id,
        actor: actor.map(str::to_string),
        action: action.map(str::to_string),
        customer: None,
        limit,
    };
    let ids = |q: AuditQuery| {
        store
            .audit(&q)
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(q(None, Some("alice"), None, 10)), [a, c]);
    assert_eq!(ids(q(None, None, Some("login"), 10)), [a, b]);
    assert_eq!(ids(q(Some(a), None, None, 1)), [b], "after an id, limited");
    let acme = AuditQuery {
        customer: Some("acme".into()),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(ids(acme), [b], "a customer's people's events");
}

fn users(store: &dyn AuthStore) {
    assert!(store.user("alice").unwrap().is_none());
    store.insert_user(&user("bob")).unwrap();
    store.insert_user(&user("alice")).unwrap();
    assert!(matches!(
        store.insert_user(&user("alice")),
        Err(Error::Conflict(_))
    ));
    let names: Vec<_> = store
        .users()
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, ["alice", "bob"], "users come by name");
    assert_eq!(
        store.user("bob").unwrap().unwrap().customer.as_deref(),
        Some("acme"),
        "a user's customer is kept"
    );
    // A closure that returns false writes nothing.
    let seen = store
        .update_user("alice", &mut |u| {
            u.role = Role::Admin;
            false
        })
        .unwrap()
        .unwrap();
    assert_eq!(seen.role, Role::Admin, "the closure's view is returned");
    assert_eq!(store.user("alice").unwrap().unwrap().role, Role::Viewer);
    store
        .update_user("alice", &mut |u| {
            u.role = Role::Operator;
            u.totp_secret = Some(vec![1, 2, 3]);
            u.recovery_codes = vec!["r1".into()];
            true
        })
        .unwrap();
    let alice = store.user("alice").unwrap().unwrap();
    assert_eq!(alice.role, Role::Operator);
    assert_eq!(alice.totp_secret.as_deref(), Some(&[1u8, 2, 3][..]));
    assert_eq!(alice.recovery_codes, ["r1"]);
    assert!(
        store
            .update_user("nobody", &mut |_| true)
            .unwrap()
            .is_none()
    );
    store
        .insert_token(&token("bob-1", "bob", TokenKind::Api))
        .unwrap();
    assert!(store.delete_user("bob").unwrap());
    assert!(!store.delete_user("bob").unwrap());
    assert!(
        store.token_by_hash("hash-bob-1").unwrap().is_none(),
        "a deleted user's tokens go with them"
    );
}

fn tokens(store: &dyn AuthStore) {
    store
        .insert_token(&token("t1", "alice", TokenKind::Session))
        .unwrap();
    store
        .insert_token(&token("t2", "alice", TokenKind::Api))
        .unwrap();
    store
        .insert_token(&token("t3", "alice", TokenKind::Session))
        .unwrap();
    store
        .insert_token(&token("c1", "carol", TokenKind::Session))
        .unwrap();
    let t = store.token_by_hash("hash-t2").unwrap().unwrap();
    assert_eq!(
        t,
        token("t2", "alice", TokenKind::Api),
        "the hash comes back too"
    );
    let ids: Vec<_> = store
        .tokens("alice")
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, ["t1", "t2", "t3"], "oldest first");
    store
        .update_token("hash-t1", &mut |t| {
            t.second_factor = true;
            true
        })
        .unwrap();
    assert!(
        store
            .token_by_hash("hash-t1")
            .unwrap()
            .unwrap()
            .second_factor
    );
    assert_eq!(
        store.delete_tokens("alice", Some("c1"), None).unwrap(),
        0,
        "only the owner's"
    );
    assert_eq!(
        store
            .delete_tokens("alice", None, Some(TokenKind::Session))
            .unwrap(),
        2
    );
    assert_eq!(store.delete_tokens("alice", Some("t2"), None).unwrap(), 1);
    assert!(store.tokens("alice").unwrap().is_empty());
    assert_eq!(store.tokens("carol").unwrap().len(), 1);
}

fn grants(store: &dyn AuthStore) {
    let grant = |code: &str, hash: &str, expires_us| DeviceGrant {
        device_code_hash: hash.into(),
        user_code: code.into(),
        lift_id: LiftId::new("L-1").unwrap(),
        created_us: 0,
        expires_us,
        interval_secs: 5,
        last_poll_us: None,
        state: GrantState::Pending,
    };
    store.insert_grant(&grant("BCDFGHJK", "d1", 100)).unwrap();
    assert!(matches!(
        store.insert_grant(&grant("BCDFGHJK", "d2", 100)),
        Err(Error::Conflict(_))
    ));
    store.insert_grant(&grant("LMNPQRST", "d3", 50)).unwrap();
    store
        .update_grant(GrantKey::UserCode("BCDFGHJK"), &mut |g| {
            g.state = GrantState::Approved {
                building: "B1".into(),
                by: "alice".into(),
            };
            true
        })
        .unwrap()
        .unwrap();
    let by_hash = store
        .update_grant(GrantKey::DeviceCodeHash("d1"), &mut |g| {
            g.last_poll_us = Some(7);
            true
        })
        .unwrap()
        .unwrap();
    assert!(matches!(by_hash.state, GrantState::Approved { .. }));
    assert_eq!(by_hash.last_poll_us, Some(7));
    assert!(
        store
            .update_grant(GrantKey::UserCode("ZZZZZZZZ"), &mut |_| true)
            .unwrap()
            .is_none()
    );
    assert_eq!(store.purge_grants(60).unwrap(), 1, "only the expired one");
    assert!(
        store
            .update_grant(GrantKey::DeviceCodeHash("d3"), &mut |_| false)
            .unwrap()
            .is_none()
    );
}

fn refresh_tokens(store: &dyn AuthStore) {
    store.insert_refresh(&refresh("r1", "f1", "L-1")).unwrap();
    store.insert_refresh(&refresh("r2", "f1", "L-1")).unwrap();
    store.insert_refresh(&refresh("r3", "f2", "L-1")).unwrap();
    store.insert_refresh(&refresh("r4", "f3", "L-2")).unwrap();
    store
        .update_refresh("r1", &mut |t| {
            t.rotated_to = Some("r2".into());
            t.rotated_us = Some(5);
            true
        })
        .unwrap();
    let r1 = store.update_refresh("r1", &mut |_| false).unwrap().unwrap();
    assert_eq!(r1.rotated_to.as_deref(), Some("r2"));
    assert_eq!(store.revoke_family("f1").unwrap(), 2);
    assert_eq!(store.revoke_family("f1").unwrap(), 0, "already revoked");
    assert_eq!(
        store
            .revoke_lift_refresh(&LiftId::new("L-1").unwrap())
            .unwrap(),
        1,
        "r3; r1 and r2 were revoked already"
    );
    let r4 = store.update_refresh("r4", &mut |_| false).unwrap().unwrap();
    assert!(!r4.revoked, "another lift's family is untouched");
    assert!(
        store
            .update_refresh("nope", &mut |_| true)
            .unwrap()
            .is_none()
    );
}

fn devices(store: &dyn AuthStore) {
    let lift = LiftId::new("L-9").unwrap();
    assert!(store.device(&lift).unwrap().is_none());
    let mut d = Device {
        lift_id: lift.clone(),
        approved_us: Some(1),
        approved_by: Some("alice".into()),
        revoked_us: None,
        not_before_us: None,
        mode: None,
    };
    store.put_device(&d).unwrap();
    d.revoked_us = Some(3);
    d.mode = Some(crate::DeviceMode::Optional);
    store.put_device(&d).unwrap();
    assert_eq!(store.device(&lift).unwrap().unwrap(), d);
    store
        .put_device(&Device {
            lift_id: LiftId::new("L-0").unwrap(),
            ..d.clone()
        })
        .unwrap();
    let ids: Vec<_> = store
        .devices()
        .unwrap()
        .into_iter()
        .map(|d| d.lift_id)
        .collect();
    assert_eq!(ids, [LiftId::new("L-0").unwrap(), lift.clone()]);

    // Revisions: every write is after the revision a reader saw, and a reader sees each once.
    let (all, rev) = store.devices_since(None).unwrap();
    assert_eq!(all.len(), 2);
    assert!(rev > 0, "a written store has a revision");
    assert!(store.devices_since(Some(rev)).unwrap().0.is_empty());
    assert_eq!(store.devices_since(Some(rev)).unwrap().1, rev);
    let mut revoked = d.clone();
    revoked.not_before_us = Some(7);
    store.put_device(&revoked).unwrap();
    let (changed, newer) = store.devices_since(Some(rev)).unwrap();
    assert_eq!(changed, [revoked.clone()]);
    assert!(newer > rev);
    assert!(store.devices_since(Some(newer)).unwrap().0.is_empty());
    // An older reader gets the newest body once, not one per write.
    store.put_device(&d).unwrap();
    let (changed, _) = store.devices_since(Some(rev)).unwrap();
    assert_eq!(changed, [d]);
}

fn key(kid: &str, created_us: i64) -> StoredKey {
    StoredKey {
        kid: kid.into(),
        secret: "c2VjcmV0".into(),
        created_us,
        retired_us: None,
    }
}

/// Runs every check against `store`, which must start empty.
pub fn check_keys(store: &dyn KeyStore) {
    assert!(store.load().unwrap().is_empty());
    // A closure that declines to write leaves nothing.
    let seen = store
        .update(&mut |keys| {
            keys.push(key("dropped", 0));
            Ok(false)
        })
        .unwrap();
    assert_eq!(seen.len(), 1, "update returns what the closure left");
    assert!(store.load().unwrap().is_empty(), "nothing was written");
    let stored = store
        .update(&mut |keys| {
            keys.push(key("a", 1));
            keys.push(key("b", 2));
            Ok(true)
        })
        .unwrap();
    assert_eq!(store.load().unwrap(), stored);
    // Order is kept, and a retirement is stored.
    store
        .update(&mut |keys| {
            keys[1].retired_us = Some(3);
            keys.remove(0);
            keys.push(key("c", 3));
            Ok(true)
        })
        .unwrap();
    let kids: Vec<_> = store.load().unwrap().into_iter().map(|k| k.kid).collect();
    assert_eq!(kids, ["b", "c"]);
    assert_eq!(store.load().unwrap()[0].retired_us, Some(3));
    // A closure's error aborts the update and is returned.
    let err = store
        .update(&mut |keys| {
            keys.clear();
            Err(Error::Keys("no".into()))
        })
        .unwrap_err();
    assert!(matches!(err, Error::Keys(_)), "{err}");
    assert_eq!(store.load().unwrap().len(), 2);
}

/// Two nodes over one shared state: `a` and `b` are [`crate::Authority`]s opened (in that order)
/// over the same stores, with the same config, both reading `clock`. Checks that each verifies
/// the other's tokens and that a revocation or a key rotation on one reaches the other at its
/// next [`crate::Authority::reread_shared`].
pub fn check_shared(
    a: &crate::Authority,
    b: &crate::Authority,
    clock: &hoistway_model::ManualClock,
) {
    let lift = LiftId::new("L-SHARED").unwrap();
    assert_eq!(a.keys(), b.keys(), "one key ring");

    // A lift's token from one node is good on the other; a revocation on one reaches the other
    // at its next reread, not before (it verifies from memory).
    let token = a.access_token(&lift).unwrap();
    assert_eq!(b.verify_device(&token).unwrap(), lift);
    clock.advance_secs(1);
    a.revoke_device(&lift, "admin").unwrap();
    assert!(a.verify_device(&token).is_err(), "refused where revoked");
    assert!(b.reread_shared().unwrap() >= 1, "the revocation is read");
    assert!(
        matches!(b.verify_device(&token), Err(Error::Unauthenticated(_))),
        "refused on the other node after its reread"
    );
    assert_eq!(b.reread_shared().unwrap(), 0, "each change is read once");

    // A key rotated on one node signs only once published; by then the other has read it.
    let before = a.keys();
    let kid = b.rotate_keys().unwrap();
    let other = LiftId::new("L-OTHER").unwrap();
    let early = b.access_token(&other).unwrap();
    assert_eq!(
        a.verify_device(&early).unwrap(),
        other,
        "the old key signs until the new one is published"
    );
    a.reread_shared().unwrap();
    assert_ne!(a.keys(), before);
    clock.advance_secs(a.config().key_publish_us() / 1_000_000);
    let late = b.access_token(&other).unwrap();
    let header = jsonwebtoken::decode_header(&late).unwrap();
    assert_eq!(
        header.kid.as_deref(),
        Some(kid.as_str()),
        "the new key signs"
    );
    assert_eq!(a.verify_device(&late).unwrap(), other);
    assert_eq!(
        a.verify_device(&early).unwrap(),
        other,
        "old tokens still hold"
    );
    assert_eq!(a.keys(), b.keys());

    // Staff: an account and a token made on one node work on the other at once, and a
    // revocation on one holds on the other at once (tokens are looked up in the store).
    a.create_user(
        "shared-ops",
        "correct horse battery",
        crate::Role::Viewer,
        None,
    )
    .unwrap();
    let session = b
        .login("shared-ops", "correct horse battery", None)
        .unwrap();
    assert!(a.authenticate(&session.token).is_ok());
    a.revoke_token("shared-ops", &session.record.id).unwrap();
    assert!(b.authenticate(&session.token).is_err());
}
