//! The one error type of the crate, which is also the rejection of its
//! extractors.
//!
//! Every [`Error`] turns into a response with a status and a small JSON body
//! (`{"error": "<code>"}`, plus a `message` for mistakes in the application's
//! own setup). Database and driver text never reaches the client: it is logged
//! with `tracing` at the `error` level and kept as the error's
//! [`source`](std::error::Error::source).

use std::borrow::Cow;

use axum::response::{IntoResponse, Response};
use http::StatusCode;

/// A boxed error from a custom [`TenantResolver`](crate::TenantResolver).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as its default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong between a request and a tenant-scoped handler.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request names more than one tenant: two sources disagree, a
    /// verified source (token, API key) disagrees with another, or one header
    /// carries several different ids. Answered with `403 Forbidden`.
    #[error(
        "the request names more than one tenant; send one tenant id, and the same one in every place"
    )]
    Conflict,

    /// A resolver found credentials it refuses (an invalid token, an unknown
    /// API key). Answered with `401 Unauthorized`.
    #[error("unauthorized: {0}")]
    Unauthorized(Cow<'static, str>),

    /// The tenant used up its request rate (see
    /// [`TenantLayer::with_rate_limit`](crate::TenantLayer::with_rate_limit)).
    /// Answered with `429 Too Many Requests` and `Retry-After`.
    #[error("the tenant's request rate is used up; retry after {retry_after:?}")]
    RateLimited {
        /// How long until a request would be let through.
        retry_after: std::time::Duration,
    },

    /// The tenant holds its whole share of the connection pool and none of
    /// its connections came free in time ([`hidra::Error::TenantBusy`]).
    /// Answered with `503` (or the status of
    /// [`TenantLayer::with_busy_status`](crate::TenantLayer::with_busy_status)),
    /// `Retry-After` and `{"error":"tenant_busy"}`.
    #[error("the tenant holds its share of the connection pool; retry shortly")]
    TenantBusy {
        /// `503`, or `429` when the layer is configured so.
        status: StatusCode,
        /// The core's error, naming the tenant and its cap.
        #[source]
        source: hidra::Error,
    },

    /// An extractor found no tenant: the route is not behind
    /// [`TenantLayer`](crate::TenantLayer) or is excluded from it. A mistake in
    /// the application's setup, answered with `500`.
    #[error(
        "no tenant in request extensions: is `TenantLayer` installed, and is this route not excluded from it?"
    )]
    MissingTenant,

    /// [`RequestTx`](crate::RequestTx) was extracted while another `RequestTx` of
    /// the same request was still alive. Answered with `500`.
    #[error(
        "`RequestTx` was extracted twice for one request; extract it once and pass it to the code that needs it"
    )]
    TxInUse,

    /// A [`RequestTx`](crate::RequestTx) was still held (moved into a spawned
    /// task?) when the response was ready, so it could not be committed; it
    /// rolls back when dropped. Answered with `500`.
    #[error(
        "a `RequestTx` outlived its request and was not committed; do not move it into spawned tasks"
    )]
    TxOutlivedRequest,

    /// The tenant registry could not be read. Answered with `503`. (Shared:
    /// concurrent lookups of one id wait on one read and get the same error.)
    #[error("could not read the tenant registry")]
    Registry(#[source] std::sync::Arc<hidra::Error>),

    /// Committing the request's [`RequestTx`](crate::RequestTx) failed (a
    /// deferred constraint, a serialization failure, a lost connection): the
    /// handler's work is lost. Answered with `500`, or `503` with
    /// `Retry-After` when the connection was lost under it (a retryable error).
    #[error("committing the request's transaction failed")]
    Commit(#[source] hidra::Error),

    /// The database failed while acquiring a connection or beginning or
    /// rolling back a transaction. Answered with `503`.
    #[error("database error while {context}")]
    Database {
        /// What was being done.
        context: &'static str,
        /// What the core returned.
        #[source]
        source: hidra::Error,
    },

    /// A query of the handler failed (see [`From<sqlx::Error>`](#impl-From<Error>-for-Error)):
    /// answered with `503` and `Retry-After` when the connection was lost or
    /// none could be had ([`hidra::is_connection_error`]), `422`
    /// `{"error":"invalid_text"}` for text PostgreSQL cannot store (a NUL
    /// character, SQLSTATE `22021`), else with `500`.
    /// Lets handlers use `?` on sqlx queries.
    #[error("a query failed")]
    Query(#[source] hidra::sqlx::Error),

    /// A custom resolver failed. Answered with `500`.
    #[error("a tenant resolver failed")]
    Resolver(#[source] BoxError),

    /// An operation of the core failed for another reason than an
    /// authentication refusal (see [`From<hidra::Error>`](#impl-From<Error>-for-Error)).
    /// Answered with `500`.
    #[error("a hidra operation failed")]
    Core(#[source] hidra::Error),

    /// An authentication or authorization check refused (feature `auth`).
    /// Answered by kind, with the same body for every kind of a status:
    ///
    /// | kind | status | body |
    /// |------|--------|------|
    /// | [`is_unauthenticated`](hidra::auth::AuthError::is_unauthenticated) (bad token, key, credentials) | 401 | `{"error":"unauthorized"}` |
    /// | [`is_forbidden`](hidra::auth::AuthError::is_forbidden) (wrong tenant, missing role, permission, scope) | 403 | `{"error":"forbidden"}` |
    /// | `EmailTaken` | 409 | `{"error":"email_taken","message":…}` |
    /// | `TooManyAttempts` | 429, `Retry-After` | `{"error":"too_many_attempts","message":…}` |
    /// | `InvalidEmail`, `InvalidPassword`, `UnknownRole` | 422 | `{"error":"invalid_email"`/`"invalid_password"`/`"unknown_role","message":…}` |
    ///
    /// The `message` of 409 and 422 is the kind's own text, which says how to
    /// fix the request and nothing else.
    #[cfg(feature = "auth")]
    #[error(transparent)]
    Auth(#[from] hidra::auth::AuthError),
}

/// Keeps authentication refusals as `Error::Auth` (feature `auth`), so that
/// handlers can use `?` on the core's login, registration and guard calls;
/// every other core error becomes [`Error::Core`] (`500`, logged, never sent).
impl From<hidra::Error> for Error {
    fn from(error: hidra::Error) -> Self {
        match error {
            #[cfg(feature = "auth")]
            hidra::Error::Auth(kind) => Error::Auth(kind),
            source @ hidra::Error::TenantBusy { .. } => Error::TenantBusy {
                status: StatusCode::SERVICE_UNAVAILABLE,
                source,
            },
            // The database is away: worth retrying (503), not a bug (500).
            other if other.is_retryable() => Error::Database {
                context: "reaching the database",
                source: other,
            },
            other => Error::Core(other),
        }
    }
}

/// A handler's query error: `503` for a lost or unavailable connection, `500`
/// otherwise, and never the database's text in the body.
impl From<hidra::sqlx::Error> for Error {
    fn from(error: hidra::sqlx::Error) -> Self {
        Error::Query(error)
    }
}

#[cfg(feature = "auth")]
fn auth_status(kind: &hidra::auth::AuthError) -> (StatusCode, &'static str) {
    use hidra::auth::AuthError;
    if kind.is_unauthenticated() {
        return (StatusCode::UNAUTHORIZED, "unauthorized");
    }
    match kind {
        AuthError::EmailTaken => (StatusCode::CONFLICT, "email_taken"),
        AuthError::TooManyAttempts { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts"),
        AuthError::InvalidEmail => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_email"),
        AuthError::InvalidPassword { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_password"),
        AuthError::UnknownRole(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_role"),
        // `is_forbidden`, and any future kind: refuse.
        _ => (StatusCode::FORBIDDEN, "forbidden"),
    }
}

impl Error {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            // The connection went away under the commit: the outcome is
            // unknown to the client either way, and retrying is the answer.
            Error::Commit(e) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            Error::Conflict => StatusCode::FORBIDDEN,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::TenantBusy { status, .. } => *status,
            Error::MissingTenant
            | Error::TxInUse
            | Error::TxOutlivedRequest
            | Error::Commit(_)
            | Error::Resolver(_)
            | Error::Core(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Query(e) if hidra::is_connection_error(e) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Query(e) if is_invalid_text(e) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Query(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Registry(_) | Error::Database { .. } => StatusCode::SERVICE_UNAVAILABLE,
            #[cfg(feature = "auth")]
            Error::Auth(kind) => auth_status(kind).0,
        }
    }

    /// The stable code in the response body's `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Commit(e) if e.is_retryable() => "service_unavailable",
            Error::Conflict => "tenant_conflict",
            Error::Unauthorized(_) => "unauthorized",
            Error::RateLimited { .. } => "rate_limited",
            Error::TenantBusy { .. } => "tenant_busy",
            Error::MissingTenant
            | Error::TxInUse
            | Error::TxOutlivedRequest
            | Error::Commit(_)
            | Error::Resolver(_)
            | Error::Core(_) => "internal_error",
            Error::Query(e) if hidra::is_connection_error(e) => "service_unavailable",
            Error::Query(e) if is_invalid_text(e) => "invalid_text",
            Error::Query(_) => "internal_error",
            Error::Registry(_) | Error::Database { .. } => "service_unavailable",
            #[cfg(feature = "auth")]
            Error::Auth(kind) => auth_status(kind).1,
        }
    }

    /// A message safe to show a client: only for mistakes in the
    /// application's setup, never database text.
    fn public_message(&self) -> Option<String> {
        match self {
            Error::MissingTenant | Error::TxInUse | Error::TxOutlivedRequest => {
                Some(self.to_string())
            }
            Error::Query(e) if is_invalid_text(e) => Some(
                "a text value holds a NUL character (\\u0000), which PostgreSQL cannot store"
                    .to_owned(),
            ),
            #[cfg(feature = "auth")]
            Error::Auth(kind)
                if matches!(
                    self.status(),
                    StatusCode::CONFLICT
                        | StatusCode::UNPROCESSABLE_ENTITY
                        | StatusCode::TOO_MANY_REQUESTS
                ) =>
            {
                Some(kind.to_string())
            }
            _ => None,
        }
    }

    pub(crate) fn db(context: &'static str) -> impl FnOnce(hidra::Error) -> Error {
        move |source| Error::Database { context, source }
    }
}

/// SQLSTATE `character_not_in_repertoire`: text with a NUL character.
fn is_invalid_text(e: &hidra::sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "22021")
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = &self as &dyn std::error::Error, "request failed");
        } else {
            tracing::debug!(error = %self, "request refused");
        }
        let body = match self.public_message() {
            Some(message) => serde_json::json!({ "error": self.code(), "message": message }),
            None => serde_json::json!({ "error": self.code() }),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE || matches!(self, Error::TenantBusy { .. }) {
            // The database is away for now: tell clients when to come back.
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        #[cfg(feature = "auth")]
        if let Error::Auth(hidra::auth::AuthError::TooManyAttempts { retry_after_secs }) = &self {
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(*retry_after_secs),
            );
        }
        if let Error::RateLimited { retry_after } = &self {
            // Whole seconds, rounded up: a client that waits that long passes.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(secs.max(1)),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750: a 401 names the scheme the client should use.
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_lost_with_its_connection_is_retryable() {
        let lost = Error::Commit(hidra::Error::Database {
            context: "committing",
            source: hidra::sqlx::Error::PoolTimedOut,
        });
        assert_eq!(lost.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(lost.code(), "service_unavailable");
        let response = lost.into_response();
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "1");
        let refused = Error::Commit(hidra::Error::Database {
            context: "committing",
            source: hidra::sqlx::Error::RowNotFound,
        });
        assert_eq!(refused.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn a_tenant_at_its_pool_cap_gets_503_with_retry_after() {
        let busy = Error::from(hidra::Error::TenantBusy {
            id: hidra::TenantId::new("acme").unwrap(),
            cap: 5,
            waited: std::time::Duration::from_secs(5),
        });
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.code(), "tenant_busy");
        let response = busy.into_response();
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "1");
        let too_many = Error::TenantBusy {
            status: StatusCode::TOO_MANY_REQUESTS,
            source: hidra::Error::TenantBusy {
                id: hidra::TenantId::new("acme").unwrap(),
                cap: 5,
                waited: std::time::Duration::from_secs(5),
            },
        };
        let response = too_many.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "1");
    }
}
