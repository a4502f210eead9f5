//! The API's error responses: one JSON shape for every failure.
//!
//! `{"error": "<code>", "message": "<what to do>"}`, plus `"fields"` for
//! validation failures. Database text never reaches a client; it is logged.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// SQLSTATE `unique_violation`.
const UNIQUE_VIOLATION: &str = "23505";
/// SQLSTATE `foreign_key_violation`.
const FOREIGN_KEY_VIOLATION: &str = "23503";
/// SQLSTATE `check_violation`.
const CHECK_VIOLATION: &str = "23514";
/// SQLSTATE `character_not_in_repertoire` (a NUL character in text).
const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body or the query failed validation; `fields` says why, per field.
    #[error("the request is invalid; see `fields`")]
    Validation(FieldErrors),

    /// The body is not JSON of the expected shape.
    #[error("{0}")]
    BadRequest(String),

    /// The body is not `application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),

    /// The body is larger than the API accepts.
    #[error("{0}")]
    PayloadTooLarge(String),

    /// No such resource in this tenant.
    #[error("{0} not found")]
    NotFound(&'static str),

    /// The request conflicts with existing data (a duplicate key, a taken
    /// tenant id or email, too little stock).
    #[error("{0}")]
    Conflict(String),

    /// A library error from Hidra's web crate (auth, tenancy); it knows its
    /// status and body.
    #[error(transparent)]
    Web(#[from] hidra_axum::Error),

    /// Anything else: logged, answered with a bare 500.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// Validation messages per field, in field order.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable, machine-readable code: `validation_failed`, `bad_request`,
    /// `unsupported_media_type`, `payload_too_large`, `not_found`, `conflict`, `unauthorized`, `forbidden`,
    /// `tenant_not_found`, `tenant_conflict`, `internal_error`.
    pub error: String,
    /// What went wrong and what to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// For `validation_failed`: the messages per field,
    /// `{"name": ["must be 1 to 200 characters"]}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<std::collections::HashMap<String, Vec<String>>>)]
    pub fields: Option<FieldErrors>,
}

impl ApiError {
    /// A validation failure of one field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        let mut fields = FieldErrors::new();
        fields.insert(field.to_owned(), vec![message.into()]);
        ApiError::Validation(fields)
    }

    /// Maps a database error: unique and foreign-key violations become 409
    /// and 422 with `what` in the message, anything else is internal.
    pub fn from_db(what: &'static str) -> impl FnOnce(sqlx::Error) -> ApiError {
        move |error| {
            let code = error
                .as_database_error()
                .and_then(|e| e.code())
                .map(|c| c.into_owned());
            match code.as_deref() {
                Some(UNIQUE_VIOLATION) => {
                    ApiError::Conflict(format!("a {what} with these values already exists"))
                }
                Some(FOREIGN_KEY_VIOLATION) => ApiError::Conflict(format!(
                    "the {what} is referenced by other records or references a missing one"
                )),
                Some(CHECK_VIOLATION) => {
                    ApiError::BadRequest(format!("the {what} breaks a database constraint"))
                }
                // Checked at the edge too; this catches a field that was not.
                Some(CHARACTER_NOT_IN_REPERTOIRE) => ApiError::field("body", NUL_MESSAGE),
                _ if hidra::is_connection_error(&error) => ApiError::Web(error.into()),
                _ => ApiError::Internal(anyhow::Error::new(error).context(what)),
            }
        }
    }
}

impl From<hidra::Error> for ApiError {
    fn from(error: hidra::Error) -> Self {
        ApiError::Web(error.into())
    }
}

impl From<hidra_apalis::Error> for ApiError {
    fn from(error: hidra_apalis::Error) -> Self {
        match error {
            hidra_apalis::Error::Hidra(e) => e.into(),
            other => ApiError::Internal(anyhow::Error::new(other).context("enqueueing a job")),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        let code = error.as_database_error().and_then(|e| e.code());
        if code.as_deref() == Some(CHARACTER_NOT_IN_REPERTOIRE) {
            return ApiError::field("body", NUL_MESSAGE);
        }
        drop(code);
        if hidra::is_connection_error(&error) {
            // Lost or unavailable connection: 503 with Retry-After.
            return ApiError::Web(error.into());
        }
        ApiError::Internal(error.into())
    }
}

/// What a text with a NUL character gets (PostgreSQL text cannot hold one).
const NUL_MESSAGE: &str = "must not contain NUL characters (\\u0000)";

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            // Well-formed JSON of the wrong shape (a missing field, a string
            // for a number): a validation failure of the body.
            JsonRejection::JsonDataError(e) => ApiError::field("body", e.body_text()),
            other => match other.status() {
                StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(
                    "send the body as JSON with `Content-Type: application/json`".into(),
                ),
                StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::PayloadTooLarge("the body is larger than the 2 MB limit".into())
                }
                _ => ApiError::BadRequest(other.body_text()),
            },
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, message, fields) = match self {
            ApiError::Web(e) => return e.into_response(),
            ApiError::Validation(fields) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some("the request is invalid; see `fields`".to_owned()),
                Some(fields),
            ),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", Some(m), None),
            ApiError::UnsupportedMediaType(m) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                Some(m),
                None,
            ),
            ApiError::PayloadTooLarge(m) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                Some(m),
                None,
            ),
            ApiError::NotFound(what) => (
                StatusCode::NOT_FOUND,
                "not_found",
                Some(format!("{what} not found")),
                None,
            ),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", Some(m), None),
            ApiError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    None,
                    None,
                )
            }
        };
        let body = ErrorBody {
            error: error.to_owned(),
            message,
            fields,
        };
        (status, Json(body)).into_response()
    }
}

/// Collects validation failures of a request body, field by field.
#[derive(Debug, Default)]
pub struct Checks {
    fields: FieldErrors,
}

impl Checks {
    /// Records `message` for `field` unless `ok`.
    pub fn check(&mut self, ok: bool, field: &str, message: &str) -> &mut Self {
        if !ok {
            self.fields
                .entry(field.to_owned())
                .or_default()
                .push(message.to_owned());
        }
        self
    }

    /// Records a failure for `field` unless `value` has 1 to `max`
    /// characters besides surrounding whitespace, none of them NUL.
    pub fn text(&mut self, field: &str, value: &str, max: usize) -> &mut Self {
        let len = value.trim().chars().count();
        self.check(
            (1..=max).contains(&len),
            field,
            &format!("must be 1 to {max} characters"),
        )
        .no_nul(field, value)
    }

    /// Records a failure for `field` if `value` holds a NUL character, which
    /// PostgreSQL text cannot store.
    pub fn no_nul(&mut self, field: &str, value: &str) -> &mut Self {
        self.check(!value.contains('\0'), field, NUL_MESSAGE)
    }

    /// `Ok` when every check passed, else the 422 naming every failure.
    pub fn finish(&mut self) -> Result<(), ApiError> {
        if self.fields.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(std::mem::take(&mut self.fields)))
        }
    }
}
