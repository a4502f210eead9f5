//! Extractors whose rejections are the API's JSON errors, and pagination.

use axum::extract::{FromRequest, FromRequestParts};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, Checks};

/// `axum::Json`, rejecting with a JSON [`ApiError`] instead of plain text.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query`, rejecting with a JSON [`ApiError`].
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// `axum::extract::Path`, rejecting with a JSON [`ApiError`].
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// The largest page a list returns.
pub const MAX_LIMIT: i64 = 100;
/// The page size when none is asked for.
pub const DEFAULT_LIMIT: i64 = 20;

/// `?limit=&offset=` of every list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Items to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

/// A validated page request.
#[derive(Clone, Copy, Debug)]
pub struct Page {
    /// Items per page.
    pub limit: i64,
    /// Items skipped.
    pub offset: i64,
}

impl PageParams {
    /// Checks the bounds; out of range is a 422 naming the field.
    pub fn page(&self) -> Result<Page, ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        let offset = self.offset.unwrap_or(0);
        Checks::default()
            .check(
                (1..=MAX_LIMIT).contains(&limit),
                "limit",
                "must be between 1 and 100",
            )
            .check(offset >= 0, "offset", "must not be negative")
            .finish()?;
        Ok(Page { limit, offset })
    }
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Paginated<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// The page size asked for.
    pub limit: i64,
    /// The items skipped.
    pub offset: i64,
    /// How many items the whole list has.
    pub total: i64,
}

impl<T> Paginated<T> {
    /// A page of `items` out of `total`.
    pub fn new(items: Vec<T>, page: Page, total: i64) -> Self {
        Paginated {
            items,
            limit: page.limit,
            offset: page.offset,
            total,
        }
    }
}

/// Whether `email` looks like an address: one `@` with text on both sides,
/// no spaces. (The mail server is the real judge; this catches typos.)
pub fn looks_like_email(email: &str) -> bool {
    let email = email.trim();
    match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !email.chars().any(char::is_whitespace)
                && email.len() <= 254
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert!(looks_like_email("ada@acme.test"));
        assert!(!looks_like_email("ada"));
        assert!(!looks_like_email("@acme.test"));
        assert!(!looks_like_email("ada@"));
        assert!(!looks_like_email("a b@acme.test"));
        assert!(!looks_like_email("a@b@c"));
    }

    #[test]
    fn pages() {
        let p = PageParams::default().page().unwrap();
        assert_eq!((p.limit, p.offset), (20, 0));
        for (limit, offset) in [(0, 0), (101, 0), (10, -1)] {
            let params = PageParams {
                limit: Some(limit),
                offset: Some(offset),
            };
            assert!(matches!(params.page(), Err(ApiError::Validation(_))));
        }
    }
}

/// Who is asking, for the brute-force limits of login and sign-up: the
/// peer's IP address (`unknown` when the server was not started with
/// connect info). Behind a reverse proxy every client shares the proxy's
/// address: take the client's address from the proxy's header instead.
#[derive(Clone, Debug)]
pub struct ClientKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientKey {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map_or_else(|| "unknown".to_owned(), |info| info.0.ip().to_string());
        Ok(ClientKey(peer))
    }
}
