//! An HTTP/1 pass-through for the local cloud's own hops (the sandbox's
//! Runtime API, the front door): bodies stream both ways frame by frame
//! (trailers included), so a streamed chat reply is never buffered, and
//! every socket sets `TCP_NODELAY`, so a hop adds no delayed-ACK wait.

use std::future::Future;

use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};

pub type Body = BoxBody<Bytes, hyper::Error>;

/// Forwards requests to one upstream base URL, keeping connections alive.
pub struct Forwarder {
    upstream: String,
    client: Client<HttpConnector, Body>,
}

impl Forwarder {
    /// `upstream` with or without `http://`, with or without a base path.
    pub fn new(upstream: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            upstream: if upstream.starts_with("http") {
                upstream.trim_end_matches('/').to_owned()
            } else {
                format!("http://{}", upstream.trim_end_matches('/'))
            },
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Sends `request` to the upstream (its path and query appended to the
    /// base); a transport failure is a 502 naming it.
    pub async fn forward(&self, request: Request<Incoming>) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = match format!("{}{path}", self.upstream).parse() {
            Ok(uri) => uri,
            Err(_) => return status(502, "bad upstream URL"),
        };
        self.send(Request::from_parts(parts, body.boxed())).await
    }

    /// Sends a request built here.
    pub async fn send(&self, request: Request<Body>) -> Response<Body> {
        match self.client.request(request).await {
            Ok(response) => response.map(BodyExt::boxed),
            Err(error) => status(502, &format!("{}: {error}", self.upstream)),
        }
    }
}

/// A body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A plain-text answer with `code`.
pub fn status(code: u16, message: &str) -> Response<Body> {
    let mut response = Response::new(full(message.to_owned()));
    *response.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or_default();
    response
}

/// Serves `handle` on `listener` until the listener fails.
pub async fn serve<H, F>(listener: tokio::net::TcpListener, handle: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let answer = handle(request);
                async move { Ok::<_, std::convert::Infallible>(answer.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
