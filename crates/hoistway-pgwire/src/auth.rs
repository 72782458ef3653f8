//! Who is on a connection: the startup handshake asks for a password (cleartext, which is
//! why it wants TLS), takes the user's API or session token as that password, and keeps the
//! token on the connection; every query checks it again and runs with its user's scope.
//!
//! SCRAM is not offered: it needs the server to hold a verifier derived from the password,
//! and Hoistway keeps only a hash of each token.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{Sink, SinkExt};
use hoistway_auth::{Access, Authority, Principal, Role};
use hoistway_query::Caller;
use pgwire::api::auth::{DefaultServerParameterProvider, LoginInfo, StartupHandler};
use pgwire::api::{
    ClientInfo, PgWireConnectionState, PidSecretKeyGenerator, RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use serde::{Deserialize, Serialize};

/// Where a password may arrive without TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PlainPasswords {
    /// Only inside TLS.
    Never,
    /// Inside TLS, or from a loopback address (the default: a local psql needs no certificate,
    /// and nothing crosses a network in clear).
    #[default]
    Loopback,
    /// From anywhere (a private network the operator trusts; not recommended).
    Anywhere,
}

/// The token a connection authenticated with; checked again on every query.
struct Session {
    token: String,
}

/// The startup handshake: protocol negotiation, then a cleartext password request.
pub struct Startup {
    authority: Arc<Authority>,
    plain: PlainPasswords,
    parameters: DefaultServerParameterProvider,
    keys: RandomPidSecretKeyGenerator,
}

impl Startup {
    pub fn new(authority: Arc<Authority>, plain: PlainPasswords) -> Self {
        let mut parameters = DefaultServerParameterProvider::default();
        // What the catalogs' `SHOW` and `current_setting()` answer, reported at startup too.
        use hoistway_query::catalog::SERVER_VERSION;
        let setting = |name| hoistway_query::catalog::setting(name, 0).unwrap_or_default();
        parameters.server_version =
            format!("{SERVER_VERSION} (Hoistway {})", env!("CARGO_PKG_VERSION"));
        parameters.time_zone = setting("timezone");
        parameters.date_style = setting("datestyle");
        parameters.interval_style = setting("intervalstyle");
        parameters.search_path = setting("search_path");
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        Self {
            authority,
            plain,
            parameters,
            keys: RandomPidSecretKeyGenerator::default(),
        }
    }
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        code.into(),
        message,
    )))
}

/// Checks a presented token: it must belong to the user the client named, and allow SQL.
fn check(authority: &Authority, user: Option<&str>, token: &str) -> PgWireResult<Principal> {
    let denied = || {
        fatal(
            "28P01", // invalid_password
            format!(
                "password authentication failed for user {:?}: the password is an API token of that user (hoistway login, then POST /v1/auth/tokens)",
                user.unwrap_or_default()
            ),
        )
    };
    let principal = authority.authenticate(token).map_err(|_| denied())?;
    if user.is_none_or(|u| principal.username() != Some(u)) {
        return Err(denied());
    }
    principal
        .allows(Access::Role(Role::Viewer))
        .map_err(|e| fatal("28000", e.to_string()))?; // invalid_authorization_specification
    Ok(principal)
}

/// Checks a password message's token for the user the client named, off the async threads
/// (token lookups and the audit record touch the auth store).
async fn verify<C: ClientInfo>(
    authority: &Arc<Authority>,
    client: &C,
    token: String,
) -> PgWireResult<Session> {
    let login = LoginInfo::from_client_info(client);
    let authority = authority.clone();
    let user = login.user().map(str::to_string);
    let address = login.host().to_string();
    let checked = {
        let token = token.clone();
        tokio::task::spawn_blocking(move || {
            let checked = check(&authority, user.as_deref(), &token);
            let outcome = if checked.is_ok() { "ok" } else { "failed" };
            let who = user.as_deref().unwrap_or_default();
            authority.record(who, "sql.connect", "postgres", outcome, Some(address), "");
            checked
        })
        .await
        .map_err(|e| fatal("XX000", e.to_string()))?
    };
    checked.map(|_| Session { token })
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                pgwire::api::auth::protocol_negotiation(client, startup).await?;
                pgwire::api::auth::save_startup_parameters_to_metadata(client, startup);
                let loopback = client.socket_addr().ip().is_loopback();
                let allowed = client.is_secure()
                    || match self.plain {
                        PlainPasswords::Never => false,
                        PlainPasswords::Loopback => loopback,
                        PlainPasswords::Anywhere => true,
                    };
                if !allowed {
                    return Err(fatal(
                        "28000",
                        "this server takes passwords only over TLS: connect with sslmode=require (or verify-full)"
                            .into(),
                    ));
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                // A password before the server asked for one is a protocol error.
                if !matches!(
                    client.state(),
                    PgWireConnectionState::AuthenticationInProgress
                ) {
                    return Err(fatal(
                        "08P01", // protocol_violation
                        "a password message arrived while no authentication was in progress".into(),
                    ));
                }
                let password = message.into_password()?.password;
                let session = verify(&self.authority, client, password).await?;
                client.session_extensions().insert(session);
                let (pid, secret_key) = self.keys.generate(client);
                client.set_pid_and_secret_key(pid, secret_key);
                pgwire::api::auth::finish_authentication(client, &self.parameters).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// The caller a query on this connection runs as; the connection's token is checked again,
/// so a revoked token or a deleted user stops at the next query.
pub fn caller<C: ClientInfo + ?Sized>(authority: &Authority, client: &C) -> PgWireResult<Caller> {
    let Some(session) = client.session_extensions().get::<Session>() else {
        return Err(fatal("28000", "the connection is not authenticated".into()));
    };
    let user = client
        .metadata()
        .get(pgwire::api::METADATA_USER)
        .map(String::as_str);
    let principal = check(authority, user, &session.token)?;
    Ok(Caller {
        customer: principal.customer().map(str::to_string),
        admin: principal.has_role(Role::Admin),
    })
}

/// Records a query in the audit log, as `POST /v1/sql` does (off the async threads).
pub fn audit<C: ClientInfo + ?Sized>(authority: &Arc<Authority>, client: &C, sql: &str) {
    let authority = authority.clone();
    let user = client
        .metadata()
        .get(pgwire::api::METADATA_USER)
        .cloned()
        .unwrap_or_default();
    let address = client.socket_addr().ip().to_string();
    let text: String = sql.chars().take(2000).collect();
    tokio::task::spawn_blocking(move || {
        authority.record(&user, "sql", "postgres", "ok", Some(address), &text)
    });
}
