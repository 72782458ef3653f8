//! The SQL clients analysts already use, run for real against the PostgreSQL endpoint: psql
//! 15, the PostgreSQL JDBC driver (what DBeaver and Metabase use), psycopg 3, asyncpg,
//! SQLAlchemy 2 with pandas, and the queries Grafana's PostgreSQL data source sends.
//!
//! What each client's catalog says is compared with the truth: the row description the server
//! sends for `SELECT * FROM <table>`, i.e. the columns DataFusion plans and the PostgreSQL type
//! each is sent as. Nothing is compared with a canned answer.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tokio_postgres::types::Type;

use crate::common::*;

/// Every table and view a query can name (README, docs/sql.md).
const TABLES: [&str; 9] = [
    "alert_events",
    "alerts",
    "audit",
    "lift_state",
    "lifts",
    "readings",
    "rollup_partials",
    "rollups_daily",
    "rollups_hourly",
];
const VIEWS: [&str; 2] = ["rollups_daily", "rollups_hourly"];

/// How PostgreSQL's `format_type` (psql's `\d`, SQLAlchemy's reflected types) names a type.
fn format_type(t: &Type) -> String {
    match t.name() {
        "text" => "text",
        "int2" => "smallint",
        "int4" => "integer",
        "int8" => "bigint",
        "float4" => "real",
        "float8" => "double precision",
        "bool" => "boolean",
        "numeric" => "numeric",
        "bytea" => "bytea",
        "date" => "date",
        "timestamp" => "timestamp without time zone",
        "timestamptz" => "timestamp with time zone",
        "_text" => "text[]",
        "_int4" => "integer[]",
        other => panic!("no format_type name for {other} in this test"),
    }
    .to_string()
}

/// A server with a PostgreSQL listener and the SQL fixture; its port.
async fn server() -> (TestServer, u16) {
    let pg_port = free_port();
    let listen = format!("127.0.0.1:{pg_port}");
    let server = TestServer::start(&[("HOISTWAY_QUERY__POSTGRES_LISTEN", listen.as_str())]);
    crate::sql_fixture(&server).await;
    (server, pg_port)
}

async fn connect(port: u16, user: &str, password: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user={user} password={password} dbname=hoistway"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    client
}

/// What the server sends for `SELECT * FROM <table>`, for every table: (column, type).
async fn wire_columns(client: &tokio_postgres::Client) -> BTreeMap<String, Vec<(String, Type)>> {
    let mut out = BTreeMap::new();
    for table in TABLES {
        let statement = client
            .prepare(&format!("SELECT * FROM {table}"))
            .await
            .unwrap();
        let columns = statement
            .columns()
            .iter()
            .map(|c| (c.name().to_string(), c.type_().clone()))
            .collect();
        out.insert(table.to_string(), columns);
    }
    out
}

fn psql(port: u16, token: &str, args: &[&str]) -> String {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "admin", "-d", "hoistway", "-X", "-A", "-t", "-F", "|"])
        .args(args)
        .env("PGPASSWORD", token)
        .output()
        .expect("psql is installed (postgresql-client)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "psql {args:?}: {stderr}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a client script of this folder as the admin against `port`; what it printed (JSON).
fn client_script(script: &str, port: u16, token: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sql_clients")
        .join(script);
    let run = Command::new(crate::test_python())
        .arg(path)
        .args([&port.to_string(), "admin", token])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_slice(&run.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_jdbc_and_grafana_see_every_table_as_it_is_sent() {
    let (server, port) = server().await;
    let client = connect(port, "admin", &server.token).await;
    let truth = wire_columns(&client).await;
    assert!(truth["readings"].len() > 10, "{:?}", truth["readings"]);

    // psql: \dt lists the tables, \dv the views, \d each one's columns and types.
    let listed = |meta: &str| -> Vec<String> {
        psql(port, &server.token, &["-c", meta])
            .lines()
            .map(|l| l.split('|').nth(1).unwrap().to_string())
            .collect()
    };
    let tables: Vec<&str> = TABLES.into_iter().filter(|t| !VIEWS.contains(t)).collect();
    assert_eq!(listed("\\dt"), tables);
    assert_eq!(listed("\\dv"), VIEWS);
    for (table, columns) in &truth {
        let described = psql(port, &server.token, &["-c", &format!("\\d {table}")]);
        let got: Vec<(String, String)> = described
            .lines()
            .map(|l| {
                let mut f = l.split('|');
                (f.next().unwrap().into(), f.next().unwrap().into())
            })
            .collect();
        let want: Vec<(String, String)> = columns
            .iter()
            .map(|(name, t)| (name.clone(), format_type(t)))
            .collect();
        assert_eq!(got, want, "\\d {table}");
    }
    assert!(
        psql(port, &server.token, &["-c", "\\l"])
            .lines()
            .any(|l| l.starts_with("hoistway|")),
        "\\l lists the database"
    );
    let expanded = psql(
        port,
        &server.token,
        &[
            "-c",
            "\\x",
            "-c",
            "SELECT lift_id, customer FROM lifts WHERE lift_id = 'L-B1'",
        ],
    );
    assert!(
        expanded.contains("lift_id|L-B1\ncustomer|C2"),
        "\\x shows one field per line: {expanded}"
    );

    // The PostgreSQL JDBC driver: getTables, getColumns (by type name) and a prepared query.
    let jar = debian_file("/usr/share/java/postgresql.jar", "libpostgresql-jdbc-java");
    let java = debian_file("/usr/bin/java", "default-jre-headless");
    let java = Command::new(java)
        .arg("-cp")
        .arg(&jar)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/sql_clients/Catalog.java"
        ))
        .args([&port.to_string(), "admin", &server.token])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&java.stdout);
    assert!(
        java.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&java.stderr)
    );
    let facts = |kind: &str| -> Vec<Vec<&str>> {
        out.lines()
            .filter_map(|l| l.strip_prefix(kind).and_then(|l| l.strip_prefix('\t')))
            .map(|l| l.split('\t').collect())
            .collect()
    };
    assert_eq!(facts("product"), [["PostgreSQL", "16"]]);
    let jdbc_tables: Vec<(&str, &str)> = facts("table").iter().map(|f| (f[0], f[1])).collect();
    let want_tables: Vec<(&str, &str)> = tables
        .iter()
        .map(|t| (*t, "TABLE"))
        .chain(VIEWS.iter().map(|v| (*v, "VIEW")))
        .collect();
    assert_eq!(jdbc_tables, want_tables);
    let mut jdbc_columns: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for f in facts("column") {
        jdbc_columns
            .entry(f[0].to_string())
            .or_default()
            .push((f[1].to_string(), f[2].to_string()));
    }
    let want_columns: BTreeMap<String, Vec<(String, String)>> = truth
        .iter()
        .map(|(table, columns)| {
            let columns = columns
                .iter()
                .map(|(n, t)| (n.clone(), t.name().to_string()))
                .collect();
            (table.clone(), columns)
        })
        .collect();
    assert_eq!(jdbc_columns, want_columns);
    assert_eq!(
        facts("row"),
        [
            ["L-A1", "4", "2026-01-10T11:40:00Z"],
            ["L-B1", "2", "2026-01-10T11:00:00Z"]
        ]
    );

    // Grafana's PostgreSQL data source: version, schemas, tables, a table's columns (its query
    // builder picks the time column by type), then a time series with expanded macros.
    // (int4 / 100 is int8 here: DataFusion types integer literals as int8.)
    let version: i64 = client
        .query_one(
            "SELECT current_setting('server_version_num')::int/100 as version",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 1600);
    let names = |rows: Vec<tokio_postgres::Row>| -> Vec<String> {
        rows.iter().map(|r| r.get::<_, String>(0)).collect()
    };
    let schemas = client
        .query(
            "SELECT schema_name AS \"name\" FROM information_schema.schemata \
             WHERE schema_name NOT IN ('information_schema', 'pg_catalog', 'pg_toast', \
             '_timescaledb_cache', '_timescaledb_catalog', '_timescaledb_internal', \
             '_timescaledb_config', 'timescaledb_information', 'timescaledb_experimental') \
             ORDER BY schema_name",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(names(schemas), ["public"]);
    let search_path = "quote_ident(table_schema) IN ( SELECT CASE WHEN trim(s[i]) = '\"$user\"' \
        THEN user ELSE trim(s[i]) END FROM generate_series( \
        array_lower(string_to_array(current_setting('search_path'),','),1), \
        array_upper(string_to_array(current_setting('search_path'),','),1) ) as i, \
        string_to_array(current_setting('search_path'),',') s )";
    let grafana_tables = client
        .query(
            &format!(
                "SELECT CASE WHEN {search_path} THEN quote_ident(table_name) \
                 ELSE quote_ident(table_schema) || '.' || quote_ident(table_name) END AS \"table\" \
                 FROM information_schema.tables WHERE quote_ident(table_schema) NOT IN \
                 ('information_schema', 'pg_catalog', '_timescaledb_cache', '_timescaledb_catalog', \
                 '_timescaledb_internal', '_timescaledb_config', 'timescaledb_information', \
                 'timescaledb_experimental') \
                 ORDER BY CASE WHEN {search_path} THEN 0 ELSE 1 END, 1"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(names(grafana_tables), TABLES);
    let columns = client
        .query(
            &format!(
                "SELECT quote_ident(column_name) AS \"column\", data_type AS \"type\" \
                 FROM information_schema.columns WHERE \
                 CASE WHEN array_length(parse_ident('readings'),1) = 2 \
                 THEN quote_ident(table_schema) = (parse_ident('readings'))[1] \
                 AND quote_ident(table_name) = (parse_ident('readings'))[2] \
                 ELSE quote_ident(table_name) = 'readings' AND {search_path} END"
            ),
            &[],
        )
        .await
        .unwrap();
    let columns: Vec<(String, String)> = columns.iter().map(|r| (r.get(0), r.get(1))).collect();
    let want: Vec<(String, String)> = truth["readings"]
        .iter()
        .map(|(n, t)| {
            let name = format_type(t);
            (
                n.clone(),
                if name.ends_with("[]") {
                    "ARRAY".into()
                } else {
                    name
                },
            )
        })
        .collect();
    assert_eq!(columns, want);
    // $__timeGroupAlias(ts,'20m'), $__timeFilter(ts) over 10:00–11:00, as Grafana expands them.
    let series = client
        .query(
            "SELECT floor(extract(epoch from ts)/1200)*1200 AS \"time\", \
             avg(motor_temp_c) AS motor_temp_c \
             FROM readings WHERE ts BETWEEN '2026-01-10T10:00:00Z' AND '2026-01-10T11:00:00Z' \
             AND lift_id = 'L-A1' GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let series: Vec<(f64, f64)> = series.iter().map(|r| (r.get(0), r.get(1))).collect();
    let start = 1_768_039_200.0; // 2026-01-10T10:00:00Z
    assert_eq!(
        series,
        [
            (start, 41.0),
            (start + 1200.0, 42.0),
            (start + 2400.0, 43.0),
            (start + 3600.0, 44.0)
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn python_clients_query_reflect_and_read_into_pandas() {
    let (server, port) = server().await;
    let client = connect(port, "admin", &server.token).await;
    let truth = wire_columns(&client).await;
    let out = client_script("clients.py", port, &server.token);

    // psycopg, text and binary: the same rows, typed by the row description.
    let rows = serde_json::json!([
        ["L-A1", "2026-01-10T10:20:00+00:00", 2, 2, 42.0, ["E7"]],
        ["L-A1", "2026-01-10T10:40:00+00:00", 3, 3, 43.0, []],
        ["L-A1", "2026-01-10T11:00:00+00:00", 4, 4, 44.0, []],
        ["L-A1", "2026-01-10T11:20:00+00:00", 5, 5, 45.0, []],
        ["L-A1", "2026-01-10T11:40:00+00:00", 6, 6, 46.0, []]
    ]);
    let rows_since = serde_json::json!(rows.as_array().unwrap()[1..]);
    for binary in ["False", "True"] {
        let seen = &out[format!("psycopg_binary_{binary}")];
        assert_eq!(seen["rows"], rows_since, "binary={binary}");
        // text, timestamptz, int8, int2, float4, text[]
        assert_eq!(
            seen["types"],
            serde_json::json!([25, 1184, 20, 21, 700, 1009])
        );
        assert_eq!(seen["tz"], serde_json::json!(["UTC"]));
    }
    assert_eq!(out["asyncpg"], rows_since);
    assert_eq!(out["psycopg_settings"][0], "16.0");
    assert!(
        out["psycopg_settings"][1]
            .as_str()
            .unwrap()
            .starts_with("PostgreSQL 16.0 (Hoistway"),
        "{}",
        out["psycopg_settings"]
    );
    assert_eq!(out["psycopg_show"], "UTC");

    // SQLAlchemy: tables, views, and each table's columns typed as the wire sends them.
    let tables: Vec<&str> = TABLES.into_iter().filter(|t| !VIEWS.contains(t)).collect();
    assert_eq!(out["sqlalchemy_tables"], serde_json::json!(tables));
    assert_eq!(out["sqlalchemy_views"], serde_json::json!(VIEWS));
    for (table, columns) in &truth {
        let want: Vec<(String, String)> = columns
            .iter()
            .map(|(n, t)| (n.clone(), format_type(t)))
            .collect();
        assert_eq!(
            out["sqlalchemy_columns"][table],
            serde_json::json!(want),
            "get_columns({table})"
        );
    }
    assert_eq!(
        out["sqlalchemy_reflected"],
        serde_json::json!([["L-A1", 4], ["L-A2", 1], ["L-B1", 2]])
    );
    assert_eq!(out["pandas"]["rows"], 4);
    assert_eq!(out["pandas"]["first"], "2026-01-10T10:00:00+00:00");
    assert_eq!(out["pandas"]["dtypes"]["motor_temp_c"], "float64");
    eprintln!(
        "SQLAlchemy connected and listed tables in {:.1} ms",
        out["sqlalchemy_connect_and_list_ms"].as_f64().unwrap()
    );
}

/// The rewrites Hoistway adds to datafusion-pg-catalog's (hoistway_pgwire::rewrite).
#[test]
fn catalog_lookups_and_the_search_path_become_what_datafusion_plans() {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    let rewritten = |sql: &str| {
        let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        hoistway_pgwire::rewrite::catalog_lookups(&mut statements[0]);
        statements[0].to_string()
    };
    // A one-row lookup is aggregated; a condition on the outer row alone moves out.
    assert_eq!(
        rewritten(
            "SELECT a.attname, (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid) \
             FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid) \
             FROM pg_catalog.pg_attribute a"
        ),
        "SELECT a.attname, (SELECT max(pg_catalog.pg_get_expr(d.adbin, d.adrelid)) \
         FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid) \
         FROM pg_catalog.pg_attribute a"
    );
    assert_eq!(
        rewritten(
            "SELECT (SELECT pg_catalog.pg_attrdef.adbin FROM pg_catalog.pg_attrdef \
             WHERE pg_catalog.pg_attribute.atthasdef AND pg_catalog.pg_attrdef.adrelid = pg_catalog.pg_attribute.attrelid) \
             FROM pg_catalog.pg_attribute"
        ),
        "SELECT CASE WHEN pg_catalog.pg_attribute.atthasdef THEN (SELECT max(pg_catalog.pg_attrdef.adbin) \
         FROM pg_catalog.pg_attrdef WHERE pg_catalog.pg_attrdef.adrelid = pg_catalog.pg_attribute.attrelid) END \
         FROM pg_catalog.pg_attribute"
    );
    for untouched in [
        // Over Hoistway's tables: as written (DataFusion says if it cannot run it).
        "SELECT l.lift_id, (SELECT r.ts FROM readings AS r WHERE r.lift_id = l.lift_id) FROM lifts AS l",
        // Already aggregated.
        "SELECT (SELECT count(*) FROM pg_catalog.pg_class AS c WHERE c.relnamespace = n.oid) FROM pg_catalog.pg_namespace AS n",
    ] {
        assert_eq!(rewritten(untouched), untouched);
    }
    // Grafana's search path expansion, however it is spaced, is Hoistway's one schema.
    let grafana = "SELECT 1 WHERE quote_ident(table_schema) IN (SELECT CASE WHEN trim(s[i]) = '\"$user\"' \
        THEN user ELSE trim(s[i]) END FROM generate_series(\n array_lower(string_to_array(current_setting('search_path'),','),1), \
        array_upper(string_to_array(current_setting('search_path'),','),1)) as i, string_to_array(current_setting('search_path'),',') s)";
    assert_eq!(
        hoistway_pgwire::rewrite::search_path(grafana),
        "SELECT 1 WHERE quote_ident(table_schema) IN ('public')"
    );
    assert_eq!(
        hoistway_pgwire::rewrite::search_path("SELECT 1"),
        "SELECT 1"
    );
    // JDBC-style parameters are numbered; a `?` inside a string stays text.
    assert_eq!(
        hoistway_pgwire::rewrite::positional_placeholders(
            "SELECT '?' AS q FROM readings WHERE lift_id = ? AND ts >= ?"
        ),
        "SELECT '?' AS q FROM readings WHERE lift_id = $1 AND ts >= $2"
    );
    assert_eq!(
        hoistway_pgwire::rewrite::positional_placeholders("SELECT $1"),
        "SELECT $1"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn flight_sql_clients_read_results_and_whole_exports_as_arrow() {
    let flight_port = free_port();
    let flight = format!("127.0.0.1:{flight_port}");
    let server = TestServer::start(&[
        ("HOISTWAY_QUERY__FLIGHT_LISTEN", flight.as_str()),
        ("HOISTWAY_QUERY__MAX_ROWS", "5"),
    ]);
    crate::sql_fixture(&server).await;
    let out = client_script("flight.py", flight_port, &server.token);
    assert_eq!(
        out["adbc_rows"],
        serde_json::json!([
            {"lift_id": "L-A1", "n": 6},
            {"lift_id": "L-A2", "n": 4},
            {"lift_id": "L-B1", "n": 4}
        ])
    );
    // An admin exports: every row, past query.max_rows (5), as Arrow.
    assert_eq!(
        out["adbc_export"],
        serde_json::json!({
            "rows": 14,
            "schema": [
                ["lift_id", "string"],
                ["ts", "timestamp[us, tz=UTC]"],
                ["motor_temp_c", "float"],
                ["vibration_mm_s", "float"]
            ],
            "first": "L-A1"
        })
    );
    assert_eq!(out["adbc_tables"], serde_json::json!(TABLES));
    // Prepared statements with bound parameters (a Python float cast to the column's real).
    assert_eq!(out["adbc_bound"], serde_json::json!([[6]]));
    assert_eq!(out["adbc_bound_dollar"], serde_json::json!([["L-B1"]]));
    assert_eq!(out["adbc_bound_again"], serde_json::json!([["L-A2"]]));
    assert_eq!(
        out["adbc_parameter_schema"],
        serde_json::json!([["$1", "string"], ["$2", "timestamp[us, tz=UTC]"]])
    );
    assert_eq!(
        out["pyarrow_export"],
        serde_json::json!({"rows": 14, "schema": ["lift_id", "ts", "motor_temp_c", "vibration_mm_s"]})
    );
    assert_eq!(out["wrong_password"], "refused");
    let refused = out["delete"].as_str().unwrap();
    assert!(refused.contains("only read-only queries"), "{refused}");
    // Nothing was deleted.
    assert_eq!(
        server.sql_rows("SELECT count(*) FROM readings").await,
        [["14"]]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exports_stream_whole_results_over_http_and_from_the_cli() {
    let server = TestServer::start(&[
        ("HOISTWAY_QUERY__MAX_ROWS", "5"),
        ("HOISTWAY_QUERY__EXPORT_MAX_MB", "1"),
    ]);
    crate::sql_fixture(&server).await;
    const EXPORT: &str =
        "SELECT lift_id, ts, motor_temp_c, vibration_mm_s FROM readings ORDER BY lift_id, ts";
    let s = &server;
    let export = |format: &str| {
        let body = serde_json::json!({ "sql": EXPORT, "format": format }).to_string();
        async move { s.post_json("/v1/sql/export", &body).await }
    };
    // Every row, past query.max_rows (5), in each streamed format.
    let r = export("csv").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let csv = String::from_utf8_lossy(&r.body).to_string();
    assert_eq!(csv.lines().count(), 1 + 14, "{csv}");
    assert!(csv.starts_with("lift_id,ts,motor_temp_c,vibration_mm_s\nL-A1,"));
    let r = export("ndjson").await;
    assert_eq!(r.content_type(), "application/x-ndjson");
    assert_eq!(String::from_utf8_lossy(&r.body).lines().count(), 14);
    let r = export("arrow").await;
    assert_eq!(r.content_type(), "application/vnd.apache.arrow.stream");
    let reader = arrow::ipc::reader::StreamReader::try_new(r.body.as_ref(), None).unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 14);
    // A streamed answer cannot be one JSON document; writes are refused as everywhere.
    let r = export("json").await;
    assert!(
        crate::assert_problem(&r, 400)["detail"]
            .as_str()
            .unwrap()
            .contains("ndjson")
    );
    let r = server
        .post_json("/v1/sql/export", r#"{"sql": "DELETE FROM readings"}"#)
        .await;
    crate::assert_problem(&r, 403);
    // A viewer may not export (query.export_role is operator) and is told what to do instead.
    let viewer = crate::security::staff_of(&server, "vic", "viewer", None).await;
    let r = http(
        server.addr,
        "POST",
        "/v1/sql/export",
        &[
            ("authorization", &format!("Bearer {viewer}")),
            ("content-type", "application/json"),
        ],
        bytes::Bytes::from(format!(r#"{{"sql": "{EXPORT}"}}"#)),
    )
    .await;
    let p = crate::assert_problem(&r, 403);
    assert!(
        p["detail"].as_str().unwrap().contains("operator role"),
        "{p}"
    );

    // The CLI writes the whole result to a file, as Parquet by default of --output.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{}", server.addr);
    // The format is named by --format, or else by the file's extension.
    let cli = |token: &str, format: Option<&str>, file: &Path, sql: &str| {
        use std::ffi::OsStr;
        let mut args: Vec<&OsStr> =
            vec![OsStr::new("sql"), OsStr::new("--server"), OsStr::new(&url)];
        if let Some(format) = format {
            args.extend([OsStr::new("--format"), OsStr::new(format)]);
        }
        args.extend([OsStr::new("--output"), file.as_os_str(), OsStr::new(sql)]);
        hoistway_with_env(&args, &[("HOISTWAY_TOKEN", token.as_ref())])
    };
    let file = dir.path().join("month.parquet");
    let out = cli(&server.token, None, &file, EXPORT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("wrote"), "{stderr}");
    let parquet = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&file).unwrap(),
    )
    .unwrap();
    assert_eq!(parquet.metadata().file_metadata().num_rows(), 14);
    let names: Vec<String> = parquet
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["lift_id", "ts", "motor_temp_c", "vibration_mm_s"]);
    // Past query.export_max_mb (1 MiB here) the server ends the body early: the CLI says so
    // and leaves no file that could pass for the whole result.
    let big = dir.path().join("big.csv");
    let out = cli(
        &server.token,
        Some("csv"),
        &big,
        "SELECT value FROM generate_series(1, 2000000)",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("stopped before its end"), "{stderr}");
    assert!(!big.exists());
    assert!(!dir.path().join("big.csv.partial").exists());
    // A viewer's export is refused with the server's reason.
    let out = cli(&viewer, Some("csv"), &big, EXPORT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("operator role"), "{stderr}");
}
