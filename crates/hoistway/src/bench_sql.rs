//! The SQL client phase of `hoistway bench-storage --sql-clients`: every stored reading exported
//! by the clients analysts use, against the same query engine and files, in one run:
//!
//! - ADBC's Flight SQL driver (Arrow all the way to a `pyarrow.Table`);
//! - psycopg 3 over the PostgreSQL protocol (binary results, rows as Python tuples), the path
//!   most tools take;
//! - pyarrow reading the same Parquet files itself, with the same columns and time filter: the
//!   ceiling, no server at all;
//! - SQLAlchemy creating an engine, connecting and listing the tables (what a notebook or
//!   Superset does first), timed inside the client after its imports.
//!
//! The endpoints run in this process over the bench's engine, with a fresh admin account.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::Context;
use hoistway_model::Clock;
use hoistway_query::QueryEngine;
use serde_json::Value;

/// The packages the phase needs, pinned as for the test suite.
const REQUIREMENTS: &str = include_str!("../tests/python-requirements.txt");

const SCRIPT: &str = r#"
import json, statistics, sys, time, urllib.parse
from datetime import datetime
import pyarrow as pa
import pyarrow.dataset as ds
import adbc_driver_flightsql.dbapi as flightsql
import psycopg
import sqlalchemy
import sqlalchemy.dialects.postgresql.psycopg  # imported before the clock starts
from sqlalchemy import inspect

args = json.loads(sys.argv[1])
sql, runs, user, token = args["sql"], args["runs"], args["user"], args["token"]
columns = ["lift_id", "ts", "motor_temp_c", "vibration_mm_s"]
out = {}

def timed(fn, n):
    times, rows = [], 0
    for _ in range(n):
        t = time.perf_counter()
        rows = fn()
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "runs_s": times, "rows": rows}

# The ceiling: pyarrow on the files, the same columns and time range.
stamp = lambda s: pa.scalar(datetime.fromisoformat(s), pa.timestamp("us", tz="UTC"))
dataset = ds.dataset(args["files"], format="parquet")
where = (ds.field("ts") >= stamp(args["from"])) & (ds.field("ts") < stamp(args["to"]))
out["pyarrow"] = timed(lambda: dataset.to_table(columns=columns, filter=where).num_rows, runs)

# Flight SQL through ADBC (connected once, as a notebook is).
with flightsql.connect(f"grpc://127.0.0.1:{args['flight']}",
                       db_kwargs={"username": user, "password": token}) as conn:
    cur = conn.cursor()
    def flight():
        cur.execute(sql)
        return cur.fetch_arrow_table().num_rows
    out["flight"] = timed(flight, runs)
    cur.close()

# The PostgreSQL protocol through psycopg, binary results (its faster mode).
with psycopg.connect(host="127.0.0.1", port=args["postgres"], user=user, password=token,
                     dbname="hoistway") as pg:
    def postgres():
        with pg.cursor(binary=True) as c:
            c.execute(sql)
            return len(c.fetchall())
    out["postgres"] = timed(postgres, args["postgres_runs"])

# SQLAlchemy: a new engine, a connection and the table list, five times.
url = (f"postgresql+psycopg://{user}:{urllib.parse.quote(token, safe='')}"
       f"@127.0.0.1:{args['postgres']}/hoistway")
times, tables = [], []
for _ in range(5):
    t = time.perf_counter()
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as c:
        tables = inspect(c).get_table_names()
    times.append(time.perf_counter() - t)
    engine.dispose()
out["sqlalchemy"] = {"first_ms": times[0] * 1000, "median_ms": statistics.median(times) * 1000,
                     "tables": len(tables)}
print(json.dumps(out))
"#;

/// Installs what `python` lacks of [`REQUIREMENTS`].
fn ensure_packages(python: &Path) -> anyhow::Result<()> {
    let have = Command::new(python)
        .args([
            "-c",
            "import pyarrow, adbc_driver_flightsql, psycopg, sqlalchemy",
        ])
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?
        .status
        .success();
    if have {
        return Ok(());
    }
    let file = std::env::temp_dir().join(format!("hoistway-bench-{}.txt", std::process::id()));
    std::fs::write(&file, REQUIREMENTS)?;
    let ok = Command::new(python)
        .args(["-m", "pip", "install", "--quiet", "-r"])
        .arg(&file)
        .status()
        .context("pip install")?
        .success();
    let _ = std::fs::remove_file(&file);
    anyhow::ensure!(ok, "pip install of the SQL clients failed");
    Ok(())
}

/// Runs the phase over `engine` (whose row limit must let the PostgreSQL path return every
/// row) and the readings `files` it reads; returns the report.
pub async fn run(
    python: &Path,
    root: &Path,
    engine: Arc<QueryEngine>,
    clock: Arc<dyn Clock>,
    files: &[String],
    rows: u64,
    (from, to): (&str, &str),
) -> anyhow::Result<String> {
    ensure_packages(python)?;
    // A fresh account in a dir of its own.
    let auth_dir = root.join(format!("bench-auth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&auth_dir);
    let config = crate::config::Config {
        data_dir: auth_dir.clone(),
        ..Default::default()
    };
    let authority = Arc::new(crate::serve::open_authority(&config, clock)?);
    authority.create_user(
        "bench",
        "a long enough bench password",
        hoistway_auth::Role::Admin,
        None,
    )?;
    let token = authority.bootstrap_api_token("bench", "bench")?.token;

    let plain = hoistway_pgwire::PlainPasswords::Loopback;
    let (_tls_tx, tls) = tokio::sync::watch::channel(None);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let pg_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let pg_port = pg_listener.local_addr()?.port();
    let flight_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let flight_port = flight_listener.local_addr()?.port();
    let pg = tokio::spawn(hoistway_pgwire::serve(
        pg_listener,
        engine.clone(),
        authority.clone(),
        plain,
        tls.clone(),
        stopped.clone(),
    ));
    let service = hoistway_flightsql::Service::new(engine, authority, plain)
        .map_err(|e| anyhow::anyhow!("Flight SQL: {e}"))?;
    let flight = tokio::spawn(hoistway_flightsql::serve(
        flight_listener,
        service,
        tls,
        stopped,
    ));

    let sql = format!(
        "SELECT lift_id, ts, motor_temp_c, vibration_mm_s FROM readings WHERE ts >= '{from}' AND ts < '{to}'"
    );
    let input = serde_json::json!({
        "sql": sql, "runs": 3, "postgres_runs": 1, "user": "bench", "token": token,
        "files": files, "from": from, "to": to,
        "flight": flight_port, "postgres": pg_port,
    });
    let python = python.to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg("-c")
            .arg(SCRIPT)
            .arg(input.to_string())
            .output()
    })
    .await?
    .context("cannot run the SQL clients")?;
    let _ = stop.send(true);
    let _ = tokio::join!(pg, flight);
    let _ = std::fs::remove_dir_all(&auth_dir);
    anyhow::ensure!(
        output.status.success(),
        "the SQL clients failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("{}", String::from_utf8_lossy(&output.stdout)))?;
    report(&out, rows, &sql)
}

fn report(out: &Value, rows: u64, sql: &str) -> anyhow::Result<String> {
    let secs = |client: &str| out[client]["median_s"].as_f64().unwrap_or(f64::NAN);
    for client in ["pyarrow", "flight", "postgres"] {
        anyhow::ensure!(
            out[client]["rows"].as_u64() == Some(rows),
            "{client} read {} rows, not {rows}",
            out[client]["rows"]
        );
    }
    let (pyarrow, flight, postgres) = (secs("pyarrow"), secs("flight"), secs("postgres"));
    let rate = |s: f64| rows as f64 / s / 1e6;
    let sqlalchemy = &out["sqlalchemy"];
    Ok(format!(
        "## SQL clients ({rows} readings exported: {sql})\n\
         pyarrow on the files (the ceiling, median of 3): {pyarrow:.2} s, {:.1} M rows/s\n\
         Flight SQL → ADBC (median of 3): {flight:.2} s, {:.1} M rows/s — {:.2}× pyarrow's time\n\
         PostgreSQL protocol → psycopg, binary (1 run): {postgres:.2} s, {:.2} M rows/s — Flight SQL is {:.1}× faster\n\
         SQLAlchemy create_engine + connect + get_table_names ({} tables): first {:.1} ms, median of 5 {:.1} ms",
        rate(pyarrow),
        rate(flight),
        flight / pyarrow,
        rate(postgres),
        postgres / flight,
        sqlalchemy["tables"],
        sqlalchemy["first_ms"].as_f64().unwrap_or(f64::NAN),
        sqlalchemy["median_ms"].as_f64().unwrap_or(f64::NAN),
    ))
}
