//! The PostgreSQL wire protocol in front of the query engine, so that psql, Grafana and BI tools
//! can run read-only SQL over everything Hoistway keeps.
//!
//! In: TCP connections speaking the PostgreSQL protocol, simple and extended queries (with
//! `$1` parameters). Out: rows from [`QueryEngine`] with the same tables, refusals and limits as
//! `POST /v1/sql`, in text or binary columns ([`encode`]). When the row limit cuts a result
//! short, the client gets a `WARNING` notice.
//!
//! Clients authenticate with their Hoistway user name and, as the password, an API token (or
//! a session token) of that user ([`auth`]); the password travels in clear inside TLS, so
//! without TLS it is taken only where [`PlainPasswords`] allows (by default from loopback).
//! Each query runs as that user: the same roles and customer scope as `POST /v1/sql`, and the
//! token is checked again on every query, so revoking it ends the connection's access.
//!
//! Statements are parsed in PostgreSQL's dialect and rewritten by datafusion-pg-catalog's
//! compatibility rules (`OPERATOR(pg_catalog.~)`, `'name'::regclass`, `COLLATE`, qualified
//! function names, the fixed queries some clients send), so the introspection psql, JDBC,
//! SQLAlchemy and Grafana run reaches the `pg_catalog` and `information_schema` of
//! [`hoistway_query::catalog`]. `SHOW` answers the fixed settings.
//!
//! Not here: `COPY`. Session commands (`SET`, `BEGIN`, `COMMIT`, `ROLLBACK`, `DISCARD`,
//! `RESET`) are acknowledged and ignored: every query is read-only over a fresh snapshot, so
//! there is no session state.

pub mod auth;
pub mod encode;
pub mod rewrite;

use std::fmt::Debug;
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime};
use datafusion::prelude::DataFrame;
use datafusion::scalar::ScalarValue;
use datafusion::sql::sqlparser::ast::Statement as Ast;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use futures::{Sink, SinkExt};
use hoistway_query::QueryEngine;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use auth::PlainPasswords;

/// Accepts connections until `shutdown` turns true; each connection runs on its own task.
/// `tls` holds the current acceptor (none: TLS off); a client that asks for TLS gets it.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<QueryEngine>,
    authority: Arc<hoistway_auth::Authority>,
    plain: PlainPasswords,
    tls: watch::Receiver<Option<pgwire::tokio::TlsAcceptor>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let handlers = Arc::new(Handlers::new(engine, authority, plain));
    let stopped = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let handlers = handlers.clone();
                    let acceptor = tls.borrow().clone();
                    tokio::spawn(async move {
                        if let Err(e) = pgwire::tokio::process_socket(socket, acceptor, handlers).await {
                            tracing::debug!(%peer, error = %e, "postgres connection ended with an error");
                        }
                    });
                }
                // Out of file descriptors and the like: wait a moment rather than spin.
                Err(e) => {
                    tracing::warn!(error = %e, "postgres listener could not accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = &mut stopped => return,
        }
    }
}

/// The protocol handlers pgwire calls for every connection.
pub struct Handlers {
    backend: Arc<Backend>,
    startup: Arc<auth::Startup>,
}

impl Handlers {
    pub fn new(
        engine: Arc<QueryEngine>,
        authority: Arc<hoistway_auth::Authority>,
        plain: PlainPasswords,
    ) -> Self {
        Self {
            backend: Arc::new(Backend {
                parser: Arc::new(Parser {
                    engine: engine.clone(),
                    authority: authority.clone(),
                    sql: PostgresCompatibilityParser::new(),
                }),
                engine,
                authority: authority.clone(),
            }),
            startup: Arc::new(auth::Startup::new(authority, plain)),
        }
    }
}

impl PgWireServerHandlers for Handlers {
    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        self.startup.clone()
    }

    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.backend.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.backend.clone()
    }
}

struct Backend {
    engine: Arc<QueryEngine>,
    authority: Arc<hoistway_auth::Authority>,
    parser: Arc<Parser>,
}

/// A parsed statement: the SQL as sent (for the audit log), what runs (planned again at each
/// execution, over a fresh snapshot), what its parameters and result look like, or the tag of
/// an ignored session command.
#[derive(Debug, Clone)]
pub struct Statement {
    sql: String,
    run: Option<Runnable>,
    session_tag: Option<&'static str>,
    parameters: Vec<DataType>,
    schema: Option<SchemaRef>,
}

/// What a statement runs as: a `SHOW` (answered from the settings) or a rewritten query.
#[derive(Debug, Clone)]
enum Runnable {
    Show(String),
    Query(Box<Ast>),
}

/// The statements of `sql`, rewritten for the catalogs; a `SHOW` is kept as text (the rules
/// are for queries).
fn split(parser: &PostgresCompatibilityParser, sql: &str) -> PgWireResult<Vec<Runnable>> {
    let start = sql.trim_start();
    if start
        .get(..4)
        .is_some_and(|w| w.eq_ignore_ascii_case("show"))
    {
        return Ok(vec![Runnable::Show(sql.to_string())]);
    }
    let statements = parser.parse(&rewrite::search_path(sql)).map_err(|e| {
        PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".into(),
            "42601".into(), // syntax_error
            format!("SQL error: {e}"),
        )))
    })?;
    Ok(statements
        .into_iter()
        .map(|mut s| {
            rewrite::catalog_lookups(&mut s);
            Runnable::Query(Box::new(s))
        })
        .collect())
}

/// Plans one statement as `caller`.
async fn plan(
    engine: &QueryEngine,
    run: &Runnable,
    caller: &hoistway_query::Caller,
) -> PgWireResult<DataFrame> {
    match run {
        Runnable::Show(sql) => engine.plan(sql, caller).await,
        Runnable::Query(ast) => engine.plan_statement((**ast).clone(), caller).await,
    }
    .map_err(query_error)
}

/// What one statement of a simple query does once planned.
pub enum Planned {
    /// A session command, acknowledged with this tag and otherwise ignored.
    Session(&'static str),
    /// A read-only query, ready to run.
    Query(DataFrame),
}

/// Plans one statement of a simple query as `caller`.
async fn plan_simple(
    engine: &QueryEngine,
    run: &Runnable,
    caller: &hoistway_query::Caller,
) -> PgWireResult<Planned> {
    if let Runnable::Query(ast) = run
        && let Some(tag) = session_command(&ast.to_string())
    {
        return Ok(Planned::Session(tag));
    }
    plan(engine, run, caller).await.map(Planned::Query)
}

/// A simple query's statements as the server plans them before running each: parsed in
/// PostgreSQL's dialect, rewritten for the catalogs and planned as `caller` under the
/// read-only guard. The server plans and runs them one at a time; this plans them all (the
/// SQL guard's fuzz target drives it).
pub async fn plan_query(
    engine: &QueryEngine,
    sql: &str,
    caller: &hoistway_query::Caller,
) -> PgWireResult<Vec<Planned>> {
    if let Some(tag) = session_command(sql) {
        return Ok(vec![Planned::Session(tag)]);
    }
    let mut planned = Vec::new();
    for run in split(&PostgresCompatibilityParser::new(), sql)? {
        planned.push(plan_simple(engine, &run, caller).await?);
    }
    Ok(planned)
}

/// The tag a session command is acknowledged with, or `None` for anything else.
fn session_command(sql: &str) -> Option<&'static str> {
    let first = sql
        .trim_start()
        .split(|c: char| c.is_whitespace() || c == ';')
        .next()?
        .to_ascii_uppercase();
    Some(match first.as_str() {
        "SET" => "SET",
        "RESET" => "RESET",
        "DISCARD" => "DISCARD ALL",
        "BEGIN" | "START" => "BEGIN",
        "COMMIT" | "END" => "COMMIT",
        "ROLLBACK" | "ABORT" => "ROLLBACK",
        _ => return None,
    })
}

/// A query error as PostgreSQL reports it, with the matching SQLSTATE.
fn query_error(e: hoistway_query::Error) -> PgWireError {
    use hoistway_query::Error;
    let code = match &e {
        Error::Refused(_) => "25006",            // read_only_sql_transaction
        Error::Invalid(_) => "42601",            // syntax_error (also unknown tables)
        Error::Timeout(_) => "57014",            // query_canceled
        Error::ResourcesExhausted(_) => "53200", // out_of_memory
        Error::Forbidden(_) => "42501",          // insufficient_privilege
        Error::Internal(_) => "XX000",           // internal_error
    };
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        code.into(),
        e.to_string(),
    )))
}

fn invalid_parameter(message: String) -> PgWireError {
    // invalid_parameter_value
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "22023".into(),
        message,
    )))
}

fn parameter_types(df: &DataFrame) -> PgWireResult<Vec<DataType>> {
    hoistway_query::parameter_types(df).map_err(query_error)
}

impl Backend {
    /// Runs a planned query and answers with its rows, or a notice and the rows that fit.
    async fn run<C>(&self, client: &mut C, df: DataFrame, format: &Format) -> PgWireResult<Response>
    where
        C: Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let result = self.engine.collect(df).await.map_err(query_error)?;
        if result.truncated {
            let notice = ErrorInfo::new(
                "WARNING".into(),
                "01000".into(),
                format!(
                    "result truncated to {} rows (query.max_rows); narrow the query or aggregate",
                    self.engine.limits().max_rows
                ),
            );
            client
                .send(PgWireBackendMessage::NoticeResponse(notice.into()))
                .await?;
        }
        let fields = Arc::new(encode::fields(&result.schema, format)?);
        let rows = encode::rows(&result.batches, fields.clone())?;
        Ok(Response::Query(QueryResponse::new(
            fields,
            futures::stream::iter(rows.into_iter().map(Ok)),
        )))
    }

    /// The bound parameters as values of the types the plan expects.
    fn parameters(
        portal: &Portal<Statement>,
        expected: &[DataType],
    ) -> PgWireResult<Vec<ScalarValue>> {
        // More may be bound than the plan uses (parameters of a rewritten-away subquery).
        if portal.parameter_len() < expected.len() {
            return Err(invalid_parameter(format!(
                "the query has {} parameters, {} were bound",
                expected.len(),
                portal.parameter_len()
            )));
        }
        expected
            .iter()
            .enumerate()
            .map(|(i, want)| {
                let declared = portal
                    .statement
                    .parameter_types
                    .get(i)
                    .cloned()
                    .flatten()
                    .unwrap_or_else(|| encode::pg_type(want));
                parameter(portal, i, &declared, want)
                    .map_err(|e| invalid_parameter(format!("parameter ${}: {e}", i + 1)))
            })
            .collect()
    }
}

/// One bound parameter: text is parsed as the expected type, binary is decoded as the type the
/// client declared and then cast.
fn parameter(
    portal: &Portal<Statement>,
    i: usize,
    declared: &Type,
    want: &DataType,
) -> Result<ScalarValue, String> {
    let Some(Some(raw)) = portal.parameters.get(i) else {
        return ScalarValue::try_from(want).map_err(|e| e.to_string());
    };
    if portal.parameter_format.is_text(i) {
        let text = std::str::from_utf8(raw).map_err(|_| "not UTF-8".to_string())?;
        return ScalarValue::try_from_string(text.to_string(), want).map_err(|e| e.to_string());
    }
    let err = |e: PgWireError| e.to_string();
    let value = match *declared {
        Type::BOOL => ScalarValue::Boolean(portal.parameter::<bool>(i, declared).map_err(err)?),
        Type::INT2 => ScalarValue::Int16(portal.parameter::<i16>(i, declared).map_err(err)?),
        Type::INT4 => ScalarValue::Int32(portal.parameter::<i32>(i, declared).map_err(err)?),
        Type::INT8 => ScalarValue::Int64(portal.parameter::<i64>(i, declared).map_err(err)?),
        Type::FLOAT4 => ScalarValue::Float32(portal.parameter::<f32>(i, declared).map_err(err)?),
        Type::FLOAT8 => ScalarValue::Float64(portal.parameter::<f64>(i, declared).map_err(err)?),
        Type::TIMESTAMPTZ => ScalarValue::TimestampMicrosecond(
            portal
                .parameter::<DateTime<FixedOffset>>(i, declared)
                .map_err(err)?
                .map(|t| t.timestamp_micros()),
            Some("UTC".into()),
        ),
        Type::TIMESTAMP => ScalarValue::TimestampMicrosecond(
            portal
                .parameter::<NaiveDateTime>(i, declared)
                .map_err(err)?
                .map(|t| t.and_utc().timestamp_micros()),
            None,
        ),
        Type::DATE => ScalarValue::Date32(
            portal
                .parameter::<NaiveDate>(i, declared)
                .map_err(err)?
                .map(|d| (d - NaiveDate::default()).num_days() as i32),
        ),
        _ => ScalarValue::Utf8(portal.parameter::<String>(i, &Type::TEXT).map_err(err)?),
    };
    value.cast_to(want).map_err(|e| e.to_string())
}

#[async_trait]
impl SimpleQueryHandler for Backend {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(tag) = session_command(query) {
            return Ok(vec![Response::Execution(Tag::new(tag))]);
        }
        let caller = auth::caller(&self.authority, client)?;
        auth::audit(&self.authority, client, query);
        let statements = split(&self.parser.sql, query)?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::with_capacity(statements.len());
        for statement in &statements {
            responses.push(match plan_simple(&self.engine, statement, &caller).await? {
                Planned::Session(tag) => Response::Execution(Tag::new(tag)),
                Planned::Query(df) => self.run(client, df, &Format::UnifiedText).await?,
            });
        }
        Ok(responses)
    }
}

/// Plans each statement once at `Parse` to describe it; execution plans it again.
struct Parser {
    engine: Arc<QueryEngine>,
    authority: Arc<hoistway_auth::Authority>,
    sql: PostgresCompatibilityParser,
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Statement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        if let Some(tag) = session_command(sql) {
            return Ok(Some(Statement {
                sql: sql.to_string(),
                run: None,
                session_tag: Some(tag),
                parameters: Vec::new(),
                schema: None,
            }));
        }
        let caller = auth::caller(&self.authority, client)?;
        let mut statements = split(&self.sql, sql)?;
        if statements.len() > 1 {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                "42601".into(),
                "cannot insert multiple commands into a prepared statement".into(),
            ))));
        }
        let Some(mut run) = statements.pop() else {
            return Ok(None);
        };
        if let Runnable::Query(ast) = &mut run {
            rewrite::declared_parameters(ast, types);
        }
        let df = plan(&self.engine, &run, &caller).await?;
        Ok(Some(Statement {
            sql: sql.to_string(),
            run: Some(run),
            session_tag: None,
            parameters: parameter_types(&df)?,
            schema: Some(Arc::new(df.schema().as_arrow().clone())),
        }))
    }

    fn get_parameter_types(&self, stmt: &Statement) -> PgWireResult<Vec<Type>> {
        Ok(stmt.parameters.iter().map(encode::pg_type).collect())
    }

    fn get_result_schema(
        &self,
        stmt: &Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match &stmt.schema {
            Some(schema) => encode::fields(schema, column_format.unwrap_or(&Format::UnifiedText)),
            None => Ok(Vec::new()),
        }
    }
}

#[async_trait]
impl ExtendedQueryHandler for Backend {
    type Statement = Statement;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statement = &portal.statement.statement;
        if let Some(tag) = statement.session_tag {
            return Ok(Response::Execution(Tag::new(tag)));
        }
        let Some(run) = &statement.run else {
            return Ok(Response::EmptyQuery);
        };
        let caller = auth::caller(&self.authority, client)?;
        auth::audit(&self.authority, client, &statement.sql);
        let df = plan(&self.engine, run, &caller).await?;
        let expected = parameter_types(&df)?;
        let df = if expected.is_empty() {
            df
        } else {
            let values = Self::parameters(portal, &expected)?;
            df.with_param_values(values)
                .map_err(|e| query_error(e.into()))?
        };
        self.run(client, df, &portal.result_column_format).await
    }
}
