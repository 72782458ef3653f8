//! Arrow Flight SQL in front of the query engine: ADBC, the Flight SQL JDBC driver and
//! Grafana's Flight SQL data source get results as Arrow record batches, with no row-by-row
//! conversion.
//!
//! In: gRPC (arrow-flight's `FlightSqlService` over tonic), with the same accounts as the rest
//! of Hoistway: a handshake with HTTP basic auth (user name, and an API token as the password)
//! answers with that token as a bearer token, and every call carries `authorization: Bearer`.
//! Out: a statement's rows as a Flight stream, and the catalog (`hoistway`), schema (`public`)
//! and tables ADBC's `get_objects` asks for.
//!
//! Each call runs as its caller, with the read-only guard, roles and customer scope of `POST
//! /v1/sql`. A statement's result is an export: users whose role reaches `export_role` stream
//! every row (no interactive row cap), up to `export_max_bytes` of Arrow data; everyone else
//! gets at most `query.max_rows` rows. Passwords travel in clear inside TLS, so without TLS they
//! are taken only where [`PlainPasswords`] allows (by default from loopback).

use std::pin::Pin;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes,
    CommandGetTables, CommandStatementQuery, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, Ticket,
};
use base64::Engine;
use futures::{Stream, StreamExt, TryStreamExt};
use hoistway_auth::{Access, Authority, Principal, Role};
use hoistway_pgwire::PlainPasswords;
use hoistway_query::{Caller, QueryEngine};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

mod io;

pub use io::Peer;

/// Who may stream a whole result, and how much.
#[derive(Debug, Clone, Copy)]
pub struct Exports {
    /// The least role that streams past the interactive row cap.
    pub role: Role,
    /// Arrow bytes one statement may stream; beyond it the stream ends with an error.
    pub max_bytes: u64,
}

/// The Flight SQL service.
pub struct Service {
    engine: Arc<QueryEngine>,
    authority: Arc<Authority>,
    plain: PlainPasswords,
    exports: Exports,
    sql_info: SqlInfoData,
}

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;
type HandshakeStream = Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>;

impl Service {
    pub fn new(
        engine: Arc<QueryEngine>,
        authority: Arc<Authority>,
        plain: PlainPasswords,
        exports: Exports,
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
            exports,
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
        let caller = Self::caller(&principal);
        if principal.allows(Access::Role(self.exports.role)).is_err() {
            // Not an exporter: the interactive answer, capped at query.max_rows.
            let df = self
                .engine
                .plan(&sql, &caller)
                .await
                .map_err(query_status)?;
            let result = self.engine.collect(df).await.map_err(query_status)?;
            let batches = futures::stream::iter(result.batches.into_iter().map(Ok));
            return Ok(Self::flight_data(result.schema, batches));
        }
        let (schema, stream) = self
            .engine
            .stream(&sql, &caller)
            .await
            .map_err(query_status)?;
        let max = self.exports.max_bytes;
        let mut sent = 0u64;
        let capped = stream.map(move |batch| {
            let batch = batch.map_err(|e| FlightError::ExternalError(Box::new(e)))?;
            sent += batch.get_array_memory_size() as u64;
            if sent > max {
                return Err(FlightError::Tonic(Box::new(Status::resource_exhausted(
                    format!(
                        "the result passed query.export_max_bytes ({max} bytes of Arrow data); narrow the query"
                    ),
                ))));
            }
            Ok(batch)
        });
        Ok(Self::flight_data(schema, capped))
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
