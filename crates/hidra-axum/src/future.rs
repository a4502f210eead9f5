//! Future types of [`TenantService`](crate::TenantService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::{Body, Bytes, HttpBody};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use hidra::context::Scoped;

use crate::error::BoxError;
use crate::extract::Scope;
use crate::layer::settle;

pin_project_lite::pin_project! {
    /// The response future of [`TenantService`](crate::TenantService).
    ///
    /// It runs the inner service's future `F` with the request's tenant as the
    /// task's current one, then settles the request's transaction. A request
    /// whose tenant was found without waiting (the usual case: a header and a
    /// record cached on this thread) costs no allocation here; one that has
    /// to wait for a resolver or the registry is boxed.
    pub struct ResponseFuture<F: Future, E> {
        #[pin]
        state: State<F, E>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F: Future, E> {
        /// Answered before the inner service ran (a refusal).
        Ready { response: Option<Response> },
        /// An excluded path: the inner service alone.
        Plain { #[pin] future: F },
        /// The inner service, in the tenant's scope.
        Scoped {
            #[pin]
            future: Scoped<F>,
            scope: Option<Scope>,
            span: Option<tracing::Span>,
        },
        /// Waiting for the tenant, or settling the request's transaction.
        Boxed { future: BoxFuture<'static, Result<Response, E>> },
    }
}

impl<F: Future, E> ResponseFuture<F, E> {
    pub(crate) fn ready(response: Response) -> Self {
        ResponseFuture {
            state: State::Ready {
                response: Some(response),
            },
        }
    }

    pub(crate) fn plain(future: F) -> Self {
        ResponseFuture {
            state: State::Plain { future },
        }
    }

    pub(crate) fn scoped(future: Scoped<F>, scope: Scope, span: Option<tracing::Span>) -> Self {
        ResponseFuture {
            state: State::Scoped {
                future,
                scope: Some(scope),
                span,
            },
        }
    }

    pub(crate) fn boxed(
        future: impl Future<Output = Result<Response, E>> + Send + 'static,
    ) -> Self {
        ResponseFuture {
            state: State::Boxed {
                future: Box::pin(future),
            },
        }
    }
}

impl<F: Future, E> fmt::Debug for ResponseFuture<F, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, E>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    E: Send + 'static,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let settling = match state.as_mut().project() {
                StateProj::Ready { response } => {
                    let response = response.take().expect("polled after completion");
                    return Poll::Ready(Ok(response));
                }
                StateProj::Plain { future } => {
                    return Poll::Ready(ready!(future.poll(cx)).map(|res| res.map(Body::new)));
                }
                StateProj::Boxed { future } => return future.as_mut().poll(cx),
                StateProj::Scoped {
                    future,
                    scope,
                    span,
                } => {
                    let (tx, response) = {
                        let _entered = span.as_ref().map(tracing::Span::enter);
                        let response = ready!(future.poll(cx))?.map(Body::new);
                        let scope = scope.take().expect("polled after completion");
                        match scope.take_tx() {
                            Ok(None) => return Poll::Ready(Ok(response)),
                            Ok(Some(tx)) => (tx, response),
                            Err(error) => return Poll::Ready(Ok(error.into_response())),
                        }
                    };
                    // Boxed: settling is a large future, needed only when the
                    // handler began a transaction.
                    let settle = settle(tx, response);
                    let future: BoxFuture<'static, Result<Response, E>> = match span.take() {
                        Some(span) => {
                            use tracing::Instrument;
                            Box::pin(async move { Ok(settle.instrument(span).await) })
                        }
                        None => Box::pin(async move { Ok(settle.await) }),
                    };
                    future
                }
            };
            state.set(State::Boxed { future: settling });
        }
    }
}
