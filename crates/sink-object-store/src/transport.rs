//! object_store's reqwest transport, with a connection the server closes before the
//! request goes out counted as the transient failure it is.
//!
//! object_store retries refused, reset and broken connections, but not hyper's
//! "operation was canceled: connection was not ready": a fresh connection that ended
//! before the request could be written (a server or load balancer coming back from an
//! outage accepts, then drops). That error is classed `Unknown`, so the first such
//! connection after an outage failed a whole backup inside its retry budget. The
//! request was never sent, so sending it again is safe whatever it is.

use async_trait::async_trait;
use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService,
    ReqwestConnector,
};

/// The transport every object-store sink is built with.
#[derive(Debug, Default)]
pub struct Transport;

impl HttpConnector for Transport {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(RetryUnsent(inner)))
    }
}

#[derive(Debug)]
struct RetryUnsent(HttpClient);

#[async_trait]
impl HttpService for RetryUnsent {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        self.0.execute(request).await.map_err(classify)
    }
}

/// `error`, as a retryable `Request` error if hyper never sent the request.
fn classify(error: HttpError) -> HttpError {
    if error.kind() == HttpErrorKind::Unknown && never_sent(&error) {
        HttpError::new(HttpErrorKind::Request, error)
    } else {
        error
    }
}

/// Whether hyper gave up on the request before sending it.
fn never_sent(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error hyper gives for a request on a connection that has already ended:
    /// what a pooled or fresh connection closed by the server yields.
    async fn unready_connection_error() -> hyper::Error {
        let (client, server) = tokio::io::duplex(64);
        drop(server);
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client))
                .await
                .unwrap();
        let _ = connection.await;
        sender
            .send_request(hyper::Request::new(String::new()))
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn a_request_hyper_never_sent_is_retried() {
        let hyper_error = unready_connection_error().await;
        assert!(hyper_error.is_canceled(), "{hyper_error}");
        let error = HttpError::new(HttpErrorKind::Unknown, hyper_error);
        assert_eq!(classify(error).kind(), HttpErrorKind::Request);
    }

    #[test]
    fn other_unknown_errors_stay_unretried() {
        let error = HttpError::new(HttpErrorKind::Unknown, std::io::Error::other("odd reply"));
        assert_eq!(classify(error).kind(), HttpErrorKind::Unknown);
        let error = HttpError::new(HttpErrorKind::Decode, std::io::Error::other("bad body"));
        assert_eq!(classify(error).kind(), HttpErrorKind::Decode);
    }
}
