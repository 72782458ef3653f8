//! `POST /v1/backups`: an online backup of the data dir, taken by the server that holds it.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hoistway_backup::Error;
use serde::Deserialize;

use crate::AppState;
use crate::problem::{ApiResult, Problem};
use crate::routes::{json_body, read_limited};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    /// Where to: an absolute directory on the server's machine, or `s3://bucket/prefix` (with
    /// the credentials of `[storage.s3]`); absent: `backup.target`. Files already there from
    /// an earlier backup are not copied again.
    #[serde(default)]
    pub to: String,
}

/// `POST /v1/backups`: takes a backup now and answers when it is complete.
#[utoipa::path(post, path = "/v1/backups", summary = "Take a backup now", request_body = BackupRequest,
    responses(
        (status = 200, description = "The backup is complete", body = hoistway_backup::BackupReport),
        (status = 409, description = "Another backup is running", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`to` names no usable target", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn take(State(app): State<AppState>, body: Body) -> ApiResult<Response> {
    let bytes = read_limited(body, 64 << 10).await?;
    let request: BackupRequest = json_body(&bytes)?;
    let Some(backups) = &app.backups else {
        return Err(Problem::conflict(
            "this server takes no backups: its log is a NATS JetStream stream (back the stream up with NATS), or it does not hold the data dir",
        ));
    };
    // On a task of its own: a client that hangs up or times out does not cut the backup short
    // (the server logs how it ended; `hoistway backup list` shows it).
    let (backups, to) = (backups.clone(), request.to);
    let outcome = tokio::spawn(async move { backups.run(&to).await })
        .await
        .map_err(|e| Problem::internal(&e))?;
    match outcome {
        Ok(report) => Ok(Json(report).into_response()),
        Err(Error::Busy) => Err(Problem::conflict(Error::Busy.to_string())),
        Err(Error::Invalid(why)) => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-backup-target",
            "Invalid backup target",
            why,
        )),
        Err(e) => Err(Problem::internal(&e)),
    }
}
