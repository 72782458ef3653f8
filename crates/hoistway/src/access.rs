//! Staff access from the command line: `login`, `logout`, the stored credentials every client
//! command sends, `users add` on a stopped server's data dir, and `devices …`.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use hoistway_auth::Role;
use hoistway_sim::client::Connection;
use hyper::{Method, StatusCode};
use serde_json::json;

/// `--token` / `HOISTWAY_TOKEN`, set once by `main`.
pub static TOKEN: OnceLock<Option<String>> = OnceLock::new();

/// Where `hoistway login` keeps tokens: `$XDG_CONFIG_HOME/hoistway/credentials.json` (or
/// `~/.config/…`), mode 0600, one token per server.
fn credentials_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("hoistway/credentials.json"))
}

fn read_credentials(path: &Path) -> BTreeMap<String, String> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn server_key(server: &str) -> String {
    server.trim_end_matches('/').to_string()
}

/// The token to send to `server`: `--token`/`HOISTWAY_TOKEN`, else the one `login` stored.
pub fn token_for(server: &str) -> Option<String> {
    if let Some(Some(t)) = TOKEN.get() {
        return Some(t.clone());
    }
    let path = credentials_path()?;
    read_credentials(&path).remove(&server_key(server))
}

/// A connection to `server` that sends the caller's token.
pub fn connect(server: &str) -> anyhow::Result<Connection> {
    let addr = crate::simulate::parse_target(server)?;
    Ok(Connection::new(addr).with_bearer(token_for(server)))
}

/// Sends a JSON request; returns the status and the parsed body.
pub async fn call_json(
    conn: &mut Connection,
    method: Method,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    let bytes = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(serde_json::to_vec(&body)?)
    };
    let reply = conn
        .send(
            method,
            path,
            "application/json",
            bytes,
            Duration::from_secs(60),
        )
        .await
        .with_context(|| format!("calling {path}"))?;
    let value = serde_json::from_slice(&reply.body).unwrap_or(serde_json::Value::Null);
    Ok((reply.status, value))
}

fn detail(v: &serde_json::Value) -> String {
    v.get("detail")
        .and_then(|d| d.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

fn prompt(label: &str, secret: bool) -> anyhow::Result<String> {
    if secret && std::io::stdin().is_terminal() {
        return Ok(rpassword::prompt_password(label)?);
    }
    eprint!("{label}");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

#[derive(clap::Args)]
pub struct LoginArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    #[arg(long)]
    username: Option<String>,
    /// Read the password from the first line of stdin (scripts); otherwise it is prompted.
    #[arg(long)]
    password_stdin: bool,
}

/// `hoistway login`: password, then a TOTP code (enrolling one first if the role needs it); the
/// session token is stored for this server.
pub async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let username = match args.username {
        Some(u) => u,
        None => prompt("username: ", false)?,
    };
    let password = prompt(
        if args.password_stdin {
            ""
        } else {
            "password: "
        },
        true,
    )?;
    let addr = crate::simulate::parse_target(&args.server)?;
    let mut conn = Connection::new(addr);
    let mut body = json!({ "username": username, "password": password });
    let (status, mut reply) =
        call_json(&mut conn, Method::POST, "/v1/auth/login", body.clone()).await?;
    if status == StatusCode::UNAUTHORIZED
        && reply["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("second-factor-required"))
    {
        body["code"] = prompt("TOTP code (or a recovery code): ", false)?.into();
        let (s, r) = call_json(&mut conn, Method::POST, "/v1/auth/login", body).await?;
        anyhow::ensure!(s.is_success(), "login refused: {}", detail(&r));
        reply = r;
    } else {
        anyhow::ensure!(status.is_success(), "login refused: {}", detail(&reply));
    }
    let token = reply["token"]
        .as_str()
        .context("no token in the answer")?
        .to_string();
    conn.set_bearer(Some(token.clone()));
    if reply["enrolment_required"].as_bool() == Some(true) {
        println!(
            "the {} role needs a second factor: add this account to an authenticator app",
            reply["role"].as_str().unwrap_or("")
        );
        let (s, e) = call_json(&mut conn, Method::POST, "/v1/auth/totp", json!(null)).await?;
        anyhow::ensure!(s.is_success(), "enrolment failed: {}", detail(&e));
        println!("  {}", e["otpauth_uri"].as_str().unwrap_or(""));
        println!("  (secret {})", e["secret"].as_str().unwrap_or(""));
        let code = prompt("first code from the app: ", false)?;
        let (s, c) = call_json(
            &mut conn,
            Method::POST,
            "/v1/auth/totp/confirm",
            json!({ "code": code }),
        )
        .await?;
        anyhow::ensure!(s.is_success(), "enrolment failed: {}", detail(&c));
        println!("recovery codes (each logs in once in place of a code; keep them offline):");
        for code in c["recovery_codes"].as_array().into_iter().flatten() {
            println!("  {}", code.as_str().unwrap_or(""));
        }
    }
    let path = credentials_path().context("no HOME or XDG_CONFIG_HOME to keep the token in")?;
    let mut all = read_credentials(&path);
    all.insert(server_key(&args.server), token);
    hoistway_auth::keys::write_private(&path, &serde_json::to_vec_pretty(&all)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "logged in to {} as {username}; token kept in {}",
        args.server,
        path.display()
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct LogoutArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
}

pub async fn logout(args: LogoutArgs) -> anyhow::Result<()> {
    let mut conn = connect(&args.server)?;
    let (status, reply) =
        call_json(&mut conn, Method::POST, "/v1/auth/logout", json!(null)).await?;
    if let Some(path) = credentials_path() {
        let mut all = read_credentials(&path);
        if all.remove(&server_key(&args.server)).is_some() {
            hoistway_auth::keys::write_private(&path, &serde_json::to_vec_pretty(&all)?)?;
        }
    }
    anyhow::ensure!(
        status.is_success() || status == StatusCode::UNAUTHORIZED,
        "logout failed: {}",
        detail(&reply)
    );
    println!("logged out of {}", args.server);
    Ok(())
}

#[derive(clap::Args)]
pub struct UsersArgs {
    #[command(subcommand)]
    command: UsersCommand,
}

#[derive(clap::Subcommand)]
enum UsersCommand {
    /// Add an account on a stopped server's data dir (the first admin). With a running server,
    /// use POST /v1/users.
    Add {
        username: String,
        #[arg(long, default_value = "admin")]
        role: Role,
        /// The customer the account belongs to (it then sees only that customer's lifts);
        /// omitted: the lift maker's staff, who see the whole fleet.
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        data_dir: PathBuf,
        /// Read the password from stdin; otherwise one is generated and printed.
        #[arg(long)]
        password_stdin: bool,
        /// Also create an API token with this name (for scripts and the simulator) and print it.
        #[arg(long)]
        api_token: Option<String>,
    },
    /// List accounts (running server).
    List {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
    },
    /// The audit log (running server; admin): logins, second factors, device approvals and
    /// revocations, tokens, role changes, replays, SQL by whom.
    Audit {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        action: Option<String>,
        /// Only events after this id (the `next_after` of the previous page).
        #[arg(long)]
        after: Option<i64>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// An offline authority on `data_dir` (the caller holds the data-dir lock).
fn offline_authority(data_dir: &Path) -> anyhow::Result<hoistway_auth::Authority> {
    let config = crate::config::Config {
        data_dir: data_dir.to_path_buf(),
        ..crate::config::Config::load(None)?
    };
    crate::serve::open_authority(&config, Arc::new(hoistway_model::SystemClock))
}

/// A random password of 20 characters from an unambiguous alphabet.
pub fn generated_password() -> String {
    let bytes = hoistway_auth::secret::random_bytes(20);
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzACDEFGHJKLMNPQRSTUVWXYZ23456789";
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// Adds a user to a stopped server's data dir; returns the password and the API token if asked.
pub fn add_user_offline(
    data_dir: &Path,
    username: &str,
    role: Role,
    customer: Option<&str>,
    password: Option<String>,
    api_token: Option<&str>,
) -> anyhow::Result<(String, Option<String>)> {
    let _lock = crate::offline::lock_data_dir(data_dir)?;
    let auth = offline_authority(data_dir)?;
    let password = password.unwrap_or_else(generated_password);
    auth.create_user(username, &password, role, customer)?;
    let token = match api_token {
        Some(name) => Some(auth.bootstrap_api_token(username, name)?.token),
        None => None,
    };
    Ok((password, token))
}

pub async fn users(args: UsersArgs) -> anyhow::Result<()> {
    match args.command {
        UsersCommand::Add {
            username,
            role,
            customer,
            data_dir,
            password_stdin,
            api_token,
        } => {
            let password = if password_stdin {
                Some(prompt("", true)?)
            } else {
                None
            };
            let given = password.is_some();
            let (password, token) = add_user_offline(
                &data_dir,
                &username,
                role,
                customer.as_deref(),
                password,
                api_token.as_deref(),
            )?;
            match &customer {
                Some(c) => println!("added {username} ({role} of customer {c})"),
                None => println!("added {username} ({role})"),
            }
            if !given {
                println!("password: {password}");
            }
            if let Some(t) = token {
                println!("api token: {t}");
            }
            if role.needs_second_factor() {
                println!(
                    "the {role} role enrols a TOTP second factor at the first `hoistway login`"
                );
            }
            Ok(())
        }
        UsersCommand::List { server } => {
            crate::admin::call(
                &server,
                Method::GET,
                "/v1/users",
                "application/json",
                vec![],
            )
            .await
        }
        UsersCommand::Audit {
            server,
            actor,
            action,
            after,
            limit,
        } => {
            let mut url = url::Url::parse("http://h/v1/audit")?;
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("limit", &limit.to_string());
                if let Some(a) = &actor {
                    q.append_pair("actor", a);
                }
                if let Some(a) = &action {
                    q.append_pair("action", a);
                }
                if let Some(a) = after {
                    q.append_pair("after", &a.to_string());
                }
            }
            let path = format!("{}?{}", url.path(), url.query().unwrap_or(""));
            crate::admin::call(&server, Method::GET, &path, "application/json", vec![]).await
        }
    }
}

#[derive(clap::Args)]
pub struct DevicesArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
    server: String,
    #[command(subcommand)]
    command: DevicesCommand,
}

#[derive(clap::Subcommand)]
enum DevicesCommand {
    /// Lifts with credentials: approvals, revocations, mode overrides.
    List,
    /// Show which lift asked for a user code, before approving it.
    Show { user_code: String },
    /// Approve the user code a lift shows; registers it in (or moves it to) the building.
    Approve {
        user_code: String,
        #[arg(long)]
        building: Option<String>,
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        customer: Option<String>,
    },
    /// Deny a user code.
    Deny { user_code: String },
    /// Factory pre-provisioning: register the lifts of a CSV (lift_id,building,…) and print one
    /// single-use registration code per lift (CSV) to flash into its controller.
    Provision {
        file: PathBuf,
        /// Days the codes stay valid.
        #[arg(long, default_value_t = 365)]
        valid_days: i64,
    },
    /// Revoke a lift's tokens: it must be approved again.
    Revoke { lift_id: String },
}

pub async fn devices(args: DevicesArgs) -> anyhow::Result<()> {
    let s = &args.server;
    let json_call = |method, path: String, body: serde_json::Value| async move {
        crate::admin::call(
            s,
            method,
            &path,
            "application/json",
            serde_json::to_vec(&body)?,
        )
        .await
    };
    match args.command {
        DevicesCommand::List => json_call(Method::GET, "/v1/devices".into(), json!(null)).await,
        DevicesCommand::Show { user_code } => {
            json_call(
                Method::GET,
                format!("/v1/devices/requests/{user_code}"),
                json!(null),
            )
            .await
        }
        DevicesCommand::Approve {
            user_code,
            building,
            site,
            customer,
        } => {
            let mut body = json!({ "user_code": user_code });
            for (k, v) in [
                ("building", building),
                ("site", site),
                ("customer", customer),
            ] {
                if let Some(v) = v {
                    body[k] = v.into();
                }
            }
            json_call(Method::POST, "/v1/devices/approve".into(), body).await
        }
        DevicesCommand::Provision { file, valid_days } => {
            let csv =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            crate::admin::call(
                s,
                Method::POST,
                &format!("/v1/devices/provision?valid_days={valid_days}"),
                "text/csv",
                csv,
            )
            .await
        }
        DevicesCommand::Deny { user_code } => {
            json_call(
                Method::POST,
                "/v1/devices/deny".into(),
                json!({ "user_code": user_code }),
            )
            .await
        }
        DevicesCommand::Revoke { lift_id } => {
            json_call(
                Method::POST,
                format!("/v1/devices/{lift_id}/revoke"),
                json!(null),
            )
            .await
        }
    }
}
