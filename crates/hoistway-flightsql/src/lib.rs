//! Arrow Flight SQL in front of the query engine: ADBC, the Flight SQL JDBC driver and
//! Grafana's Flight SQL data source get results as Arrow record batches, with no row-by-row
//! conversion.
//!
//! In: gRPC (arrow-flight's `FlightSqlService` over tonic), with the same accounts as the rest
//! of Hoistway: a handshake with HTTP basic auth (user name, and an API token as the password)
//! answers with that token as a bearer token, and every call carries `authorization: Bearer`.
//! Out: a statement's rows as a Flight stream, and the catalog (`hoistway`), schema (`public`)
//! and tables ADBC's `get_objects` asks for. Prepared statements take `?` or `$1` parameters,
//! bound statelessly (the handle carries the statement and its values; see `Prepared`).
//!
//! Each call runs as its caller, with the read-only guard, roles and customer scope of `POST
//! /v1/sql`. A statement's result is an export: users whose role reaches `export_role` stream
//! every row (no interactive row cap), up to `query.export_max_mb` of Arrow data; everyone else
//! gets at most `query.max_rows` rows. Passwords travel in clear inside TLS, so without TLS they
//! are taken only where [`PlainPasswords`] allows (by default from loopback).

use std::pin::Pin;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, SchemaAsIpc, Ticket,
};
use base64::Engine;
use datafusion::dataframe::DataFrame;
use datafusion::scalar::ScalarValue;
use futures::{Stream, TryStreamExt};
use hoistway_auth::{Access, Authority, Principal, Role};
use hoistway_pgwire::PlainPasswords;
use hoistway_query::{Caller, QueryEngine};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

mod io;

pub use io::Peer;

/// The Flight SQL service.
pub struct Service {
    engine: Arc<QueryEngine>,
    authority: Arc<Authority>,
    plain: PlainPasswords,
    sql_info: SqlInfoData,
}

/// A prepared statement's handle: the statement and the parameters bound to it. Hoistway keeps
/// no state per prepared statement: binding parameters answers with a new handle (Flight SQL's
/// stateless binding), so closing one frees nothing and any server can execute it. The handle
/// grants nothing: it runs as the caller of each call.
#[derive(Clone, PartialEq, prost::Message)]
struct Prepared {
    #[prost(string, tag = "1")]
    sql: String,
    /// One row of parameter values as an Arrow IPC stream; empty while none are bound.
    #[prost(bytes = "vec", tag = "2")]
    parameters: Vec<u8>,
}

impl Prepared {
    fn from_handle(handle: &[u8]) -> Result<Self, Status> {
        Prepared::decode(handle)
            .map_err(|_| Status::invalid_argument("not a prepared statement handle of Hoistway"))
    }

    /// The bound values, `$1` first.
    fn values(&self) -> Result<Vec<ScalarValue>, Status> {
        if self.parameters.is_empty() {
            return Ok(Vec::new());
        }
        let bad = |e: &dyn std::fmt::Display| {
            Status::invalid_argument(format!("the bound parameters cannot be read: {e}"))
        };
        let mut reader =
            arrow::ipc::reader::StreamReader::try_new(self.parameters.as_slice(), None)
                .map_err(|e| bad(&e))?;
        let batch = reader
            .next()
            .transpose()
            .map_err(|e| bad(&e))?
            .ok_or_else(|| bad(&"no row"))?;
        batch
            .columns()
            .iter()
            .map(|column| ScalarValue::try_from_array(column, 0).map_err(|e| bad(&e)))
            .collect()
    }
}

/// A schema as Flight SQL sends one inside a message (IPC-encapsulated).
fn ipc_schema(schema: &arrow::datatypes::Schema) -> Result<prost::bytes::Bytes, Status> {
    let IpcMessage(bytes) =
        SchemaAsIpc::new(schema, &arrow::ipc::writer::IpcWriteOptions::default())
            .try_into()
            .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(bytes)
}

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;
type HandshakeStream = Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>;

impl Service {
    pub fn new(
        engine: Arc<QueryEngine>,
        authority: Arc<Authority>,
        plain: PlainPasswords,
    ) -> Result<Self, Status> {
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, "Hoistway");
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        info.append(SqlInfo::FlightSqlServerArrowVersion, "59");
        info.append(SqlInfo::FlightSqlServerReadOnly, true);
        info.append(SqlInfo::FlightSqlServerSql, true);
        info.append(SqlInfo::FlightSqlServerSubstrait, false);
        info.append(SqlInfo::FlightSqlServerTransaction, 0i32); // none
        info.append(SqlInfo::FlightSqlServerCancel, false);
        let sql_info = info.build().map_err(|e| Status::internal(e.to_string()))?;
        Ok(Self {
            engine,
            authority,
            plain,
            sql_info,
        })
    }

    /// Whether a password may arrive on this connection.
    fn password_allowed<T>(&self, request: &Request<T>) -> bool {
        let peer = request.extensions().get::<Peer>();
        peer.is_some_and(|p| p.secure)
            || match self.plain {
                PlainPasswords::Never => false,
                PlainPasswords::Loopback => peer.is_some_and(|p| p.addr.ip().is_loopback()),
                PlainPasswords::Anywhere => true,
            }
    }

    /// The token of a call, and the user it must belong to (basic auth names one).
    fn credentials<T>(&self, request: &Request<T>) -> Result<(Option<String>, String), Status> {
        if !self.password_allowed(request) {
            return Err(Status::unauthenticated(
                "this server takes tokens only over TLS: connect with grpc+tls://",
            ));
        }
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| {
                Status::unauthenticated(
                    "no authorization: log in with your user name and an API token as the password",
                )
            })?
            .to_str()
            .map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
        if let Some(token) = header.strip_prefix("Bearer ") {
            return Ok((None, token.trim().to_string()));
        }
        let basic = header
            .strip_prefix("Basic ")
            .ok_or_else(|| Status::unauthenticated("authorization is neither Basic nor Bearer"))?;
        // Padded or not: Go's Flight client (ADBC) sends it unpadded.
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let decoded = engine
            .decode(basic.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| Status::unauthenticated("basic credentials are not base64 text"))?;
        let (user, token) = decoded
            .split_once(':')
            .ok_or_else(|| Status::unauthenticated("basic credentials need user:password"))?;
        Ok((Some(user.to_string()), token.to_string()))
    }

    /// The signed-in user of a call, checked on every call (a revoked token stops at once).
    async fn principal<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let (user, token) = self.credentials(request)?;
        self.check(user, token).await
    }

    /// The user a token belongs to, if it is `user` (when named) and may read.
    async fn check(&self, user: Option<String>, token: String) -> Result<Principal, Status> {
        let authority = self.authority.clone();
        tokio::task::spawn_blocking(move || {
            let denied = || {
                Status::unauthenticated(
                    "invalid credentials: the password is an API token of that user",
                )
            };
            let principal = authority.authenticate(&token).map_err(|_| denied())?;
            if let Some(user) = user
                && principal.username() != Some(user.as_str())
            {
                return Err(denied());
            }
            principal
                .allows(Access::Role(Role::Viewer))
                .map_err(|e| Status::permission_denied(e.to_string()))?;
            Ok(principal)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
    }

    fn address<T>(request: &Request<T>) -> Option<String> {
        request
            .extensions()
            .get::<Peer>()
            .map(|p| p.addr.ip().to_string())
    }

    /// Records a call in the audit log, as `POST /v1/sql` does (off the async threads).
    fn audit<T>(&self, request: &Request<T>, principal: &Principal, action: &str, detail: &str) {
        let authority = self.authority.clone();
        let user = principal.username().unwrap_or_default().to_string();
        let address = Self::address(request);
        let detail: String = detail.chars().take(2000).collect();
        let action = action.to_string();
        tokio::task::spawn_blocking(move || {
            authority.record(&user, &action, "flight", "ok", address, &detail)
        });
    }

    fn caller(principal: &Principal) -> Caller {
        Caller {
            customer: principal.customer().map(str::to_string),
            admin: principal.has_role(Role::Admin),
        }
    }

    /// A result as Flight data.
    fn flight_data(
        schema: SchemaRef,
        batches: impl Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static,
    ) -> Response<DoGetStream> {
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(Status::from);
        Response::new(Box::pin(stream))
    }

    /// One batch of catalog rows as a Flight stream.
    fn one_batch(batch: RecordBatch) -> Response<DoGetStream> {
        Self::flight_data(batch.schema(), futures::stream::iter([Ok(batch)]))
    }

    fn info(
        &self,
        schema: &arrow::datatypes::Schema,
        command: impl ProstMessageExt,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = Ticket::new(command.as_any().encode_to_vec());
        let info = FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(e.to_string()))?
            .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
            .with_descriptor(descriptor);
        Ok(Response::new(info))
    }

    /// A planned statement's rows: every row for a user who may export (up to
    /// `query.export_max_mb`), at most `query.max_rows` for anyone else.
    async fn results(
        &self,
        principal: &Principal,
        df: DataFrame,
    ) -> Result<Response<DoGetStream>, Status> {
        if principal
            .allows(Access::Role(self.engine.limits().export_role))
            .is_err()
        {
            let result = self.engine.collect(df).await.map_err(query_status)?;
            let batches = futures::stream::iter(result.batches.into_iter().map(Ok));
            return Ok(Self::flight_data(result.schema, batches));
        }
        let (schema, stream) = self.engine.export_frame(df).await.map_err(query_status)?;
        let batches = stream.map_err(|e| FlightError::Tonic(Box::new(query_status(e))));
        Ok(Self::flight_data(schema, batches))
    }

    /// Plans a prepared statement (`?` or `$n` parameters) with the values bound to it.
    async fn plan_prepared(
        &self,
        prepared: &Prepared,
        principal: &Principal,
    ) -> Result<DataFrame, Status> {
        let sql = hoistway_pgwire::rewrite::positional_placeholders(&prepared.sql);
        let df = self
            .engine
            .plan(&sql, &Self::caller(principal))
            .await
            .map_err(query_status)?;
        let values = prepared.values()?;
        if values.is_empty() {
            return Ok(df);
        }
        // Clients bind what their language has (a Python float is a double): each value is
        // cast to the type the statement gives its parameter (a real, say).
        let expected = hoistway_query::parameter_types(&df).map_err(query_status)?;
        let values = values
            .into_iter()
            .enumerate()
            .map(|(i, value)| match expected.get(i) {
                Some(t) if value.data_type() != *t => value.cast_to(t).map_err(|e| {
                    Status::invalid_argument(format!("parameter ${} is not a {t}: {e}", i + 1))
                }),
                _ => Ok(value),
            })
            .collect::<Result<Vec<_>, _>>()?;
        df.with_param_values(values).map_err(|e| {
            Status::invalid_argument(format!("the parameters do not fit the statement: {e}"))
        })
    }

    /// The tables a caller may read: (name, TABLE or VIEW, schema).
    async fn tables(&self, caller: &Caller) -> Result<Vec<(String, String, SchemaRef)>, Status> {
        self.engine
            .tables(caller)
            .await
            .map_err(|e| Status::internal(e.to_string()))
    }
}

fn query_status(e: hoistway_query::Error) -> Status {
    use hoistway_query::Error;
    match e {
        Error::Refused(m) | Error::Forbidden(m) => Status::permission_denied(m),
        Error::Invalid(m) => Status::invalid_argument(m),
        Error::Timeout(_) => Status::deadline_exceeded(e.to_string()),
        Error::ResourcesExhausted(m) => Status::resource_exhausted(m),
        Error::Internal(m) => Status::internal(m),
    }
}

#[tonic::async_trait]
impl FlightSqlService for Service {
    type FlightService = Service;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<HandshakeStream>, Status> {
        let (user, token) = self.credentials(&request)?;
        let principal = self.check(user.clone(), token.clone()).await;
        let outcome = if principal.is_ok() { "ok" } else { "failed" };
        let authority = self.authority.clone();
        let address = Self::address(&request);
        let who = user.unwrap_or_default();
        tokio::task::spawn_blocking(move || {
            authority.record(&who, "sql.connect", "flight", outcome, address, "")
        });
        principal?;
        let answer = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into(),
        };
        let mut response: Response<HandshakeStream> =
            Response::new(Box::pin(futures::stream::iter([Ok(answer)])));
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::internal("the token is not a header value"))?;
        response.metadata_mut().insert("authorization", bearer);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let principal = self.principal(&request).await?;
        let df = self
            .engine
            .plan(&query.query, &Self::caller(&principal))
            .await
            .map_err(query_status)?;
        let schema = df.schema().as_arrow().clone();
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        self.info(&schema, ticket, request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let principal = self.principal(&request).await?;
        let sql = String::from_utf8(ticket.statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("the statement is not UTF-8"))?;
        self.audit(&request, &principal, "sql", &sql);
        let df = self
            .engine
            .plan(&sql, &Self::caller(&principal))
            .await
            .map_err(query_status)?;
        self.results(&principal, df).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let principal = self.principal(&request).await?;
        let prepared = Prepared {
            sql: query.query,
            parameters: Vec::new(),
        };
        let df = self.plan_prepared(&prepared, &principal).await?;
        let parameters: Vec<arrow::datatypes::Field> = hoistway_query::parameter_types(&df)
            .map_err(query_status)?
            .into_iter()
            .enumerate()
            .map(|(i, t)| arrow::datatypes::Field::new(format!("${}", i + 1), t, true))
            .collect();
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: prepared.encode_to_vec().into(),
            dataset_schema: ipc_schema(df.schema().as_arrow())?,
            parameter_schema: ipc_schema(&arrow::datatypes::Schema::new(parameters))?,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        self.principal(&request).await?;
        let mut prepared = Prepared::from_handle(&query.prepared_statement_handle)?;
        let data = request.into_inner().map_err(FlightError::from);
        let batches: Vec<RecordBatch> = FlightRecordBatchStream::new_from_flight_data(data)
            .try_collect()
            .await
            .map_err(|e| Status::invalid_argument(format!("unreadable parameters: {e}")))?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        prepared.parameters = match batches.iter().find(|b| b.num_rows() > 0) {
            None => Vec::new(),
            Some(_) if rows > 1 => {
                return Err(Status::invalid_argument(format!(
                    "bind one row of parameters to a query, not {rows}"
                )));
            }
            Some(batch) => {
                let mut writer =
                    arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &batch.schema())
                        .map_err(|e| Status::internal(e.to_string()))?;
                writer
                    .write(batch)
                    .and_then(|()| writer.finish())
                    .map_err(|e| Status::internal(e.to_string()))?;
                writer
                    .into_inner()
                    .map_err(|e| Status::internal(e.to_string()))?
            }
        };
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(prepared.encode_to_vec().into()),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let principal = self.principal(&request).await?;
        let prepared = Prepared::from_handle(&query.prepared_statement_handle)?;
        let df = self.plan_prepared(&prepared, &principal).await?;
        let schema = df.schema().as_arrow().clone();
        self.info(&schema, query, request.into_inner())
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let principal = self.principal(&request).await?;
        let prepared = Prepared::from_handle(&query.prepared_statement_handle)?;
        self.audit(&request, &principal, "sql", &prepared.sql);
        let df = self.plan_prepared(&prepared, &principal).await?;
        self.results(&principal, df).await
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        // Nothing is kept per prepared statement (see `Prepared`).
        self.principal(&request).await.map(|_| ())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(&request).await?;
        let schema = query.into_builder().schema();
        self.info(&schema, query, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.principal(&request).await?;
        let mut builder = query.into_builder();
        builder.append(hoistway_query::catalog::DATABASE);
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Self::one_batch(batch))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(&request).await?;
        let schema = query.clone().into_builder().schema();
        self.info(&schema, query, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.principal(&request).await?;
        let mut builder = query.into_builder();
        builder.append(
            hoistway_query::catalog::DATABASE,
            hoistway_query::catalog::SCHEMA,
        );
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Self::one_batch(batch))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(&request).await?;
        let schema = query.clone().into_builder().schema();
        self.info(&schema, query, request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let principal = self.principal(&request).await?;
        let tables = self.tables(&Self::caller(&principal)).await?;
        let mut builder = query.into_builder();
        for (name, kind, schema) in tables {
            builder
                .append(
                    hoistway_query::catalog::DATABASE,
                    hoistway_query::catalog::SCHEMA,
                    name,
                    kind,
                    &schema,
                )
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Self::one_batch(batch))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(&request).await?;
        let schema = query.into_builder().schema();
        self.info(&schema, query, request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.principal(&request).await?;
        let mut builder = query.into_builder();
        builder.append("TABLE");
        builder.append("VIEW");
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Self::one_batch(batch))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(&request).await?;
        let schema = query.clone().into_builder(&self.sql_info).schema();
        self.info(&schema, query, request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.principal(&request).await?;
        let batch = query
            .into_builder(&self.sql_info)
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Self::one_batch(batch))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// Serves Flight SQL until `shutdown` turns true. `tls` holds the current acceptor (none: no
/// TLS), as for the PostgreSQL listener.
pub async fn serve(
    listener: TcpListener,
    service: Service,
    tls: watch::Receiver<Option<tokio_rustls::TlsAcceptor>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let incoming = io::incoming(listener, tls);
    let server = FlightServiceServer::new(service)
        .max_decoding_message_size(16 * 1024 * 1024)
        .max_encoding_message_size(usize::MAX);
    let stopped = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    if let Err(e) = tonic::transport::Server::builder()
        .add_service(server)
        .serve_with_incoming_shutdown(incoming, stopped)
        .await
    {
        tracing::warn!(error = %e, "the Flight SQL listener stopped");
    }
}
