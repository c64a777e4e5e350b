//! The request guards, as one middleware: the DNS-rebinding `Host` check
//! (every path), the bearer token (every `/v1` path), and the rewrite of any
//! error response without a JSON body (axum's own rejections, 405s) into
//! `{"error": "..."}`.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use axum::body::HttpBody as _;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use tower::Service;

use crate::error::{ApiError, json_error};
use crate::state::{ApiState, ApiToken};

/// The whole API: the router inside all the guards: the `Host` check, the
/// token, the call, JSON error bodies, and a debug log line. Built by
/// [`crate::router`]; a `tower::Service` for any request body, so that it
/// serves hyper's connections and `tower::ServiceExt::oneshot` alike.
///
/// Why it wraps the router once, by hand, rather than as a
/// `Router::layer` or `axum::middleware::from_fn`: a held long poll keeps
/// its whole future stack allocated, and woken together 10,000 of them
/// walk it. `from_fn` added a boxed ~1 KiB async block and a boxed clone
/// of the inner route per request; `Router::layer` wraps every route in a
/// second route (another boxed service clone and boxed future per
/// request: 0.4 KiB per held request, and about 2.5 ms of the time in which
/// 10,000 waiters are answered, `api/benches/waiters.rs`).
#[derive(Clone)]
pub struct Api {
    state: ApiState,
    inner: Router,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").finish_non_exhaustive()
    }
}

impl Api {
    pub(crate) fn new(state: ApiState, inner: Router) -> Api {
        Api { state, inner }
    }
}

impl<B> Service<axum::http::Request<B>> for Api
where
    B: axum::body::HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ApiFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let mut req = req.map(Body::new);
        let log = Log {
            method: req.method().clone(),
            path: log_path(req.uri().path()),
        };
        // HEAD is answered as GET, and its body dropped here, after any
        // rewrite to JSON: the router would drop it before the rewrite
        // could read the error's text, and the length would not be GET's.
        let head = req.method() == Method::HEAD;
        if head {
            *req.method_mut() = Method::GET;
        }
        let stage = match check(&self.state, &req) {
            Err(err) => Stage::Answered(Some(err.into_response())),
            // Called in place, not through a clone: the router's future
            // owns what it needs (the router clones the route it calls).
            Ok(()) => Stage::Called(self.inner.call(req)),
        };
        ApiFuture { stage, log, head }
    }
}

/// What the log line needs of the request. The query and headers are not
/// logged: headers carry the token.
struct Log {
    method: Method,
    path: Cow<'static, str>,
}

/// Paths that need no copy for the log line: the ones without parameters.
/// A held long poll's copy would be freed by each of 10,000 waiters woken
/// at once, one more cold cache line each.
const FIXED_PATHS: [&str; 7] = [
    "/v1/changes",
    "/v1/changes/stream",
    "/v1/watches",
    "/v1/openapi.json",
    "/metrics",
    "/healthz",
    "/readyz",
];

fn log_path(path: &str) -> Cow<'static, str> {
    FIXED_PATHS
        .iter()
        .find(|fixed| **fixed == path)
        .map_or_else(
            || Cow::Owned(path.to_owned()),
            |fixed| Cow::Borrowed(*fixed),
        )
}

/// The answer of [`Api`] to one request.
pub struct ApiFuture {
    stage: Stage,
    log: Log,
    /// A HEAD request, answered as GET without the body.
    head: bool,
}

impl std::fmt::Debug for ApiFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiFuture")
            .field("method", &self.log.method)
            .field("path", &self.log.path)
            .finish_non_exhaustive()
    }
}

enum Stage {
    /// Refused by a guard; taken when answered.
    Answered(Option<Response>),
    /// The router.
    Called(<Router as Service<Request>>::Future),
    /// An error answer being rewritten as JSON (rare, so boxed).
    Rewriting(Pin<Box<dyn Future<Output = Response> + Send>>),
}

impl Future for ApiFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut res = loop {
            match &mut this.stage {
                Stage::Answered(res) => break res.take().unwrap_or_default(),
                Stage::Called(fut) => {
                    let Ok(res) = ready!(Pin::new(fut).poll(cx));
                    if !needs_json(&res) {
                        break res;
                    }
                    this.stage = Stage::Rewriting(Box::pin(json_errors(res)));
                }
                Stage::Rewriting(fut) => break ready!(fut.as_mut().poll(cx)),
            }
        };
        if this.head {
            drop_body(&mut res);
        }
        let status = res.status();
        let Log { method, path } = &this.log;
        if status.is_server_error() {
            tracing::warn!(%method, %path, status = status.as_u16(), "API request failed");
        } else {
            tracing::debug!(%method, %path, status = status.as_u16(), "API request");
        }
        Poll::Ready(Ok(res))
    }
}

/// A HEAD answer: GET's head with the length its body would have had, and
/// no body.
fn drop_body(res: &mut Response) {
    if !res.headers().contains_key(header::CONTENT_LENGTH)
        && let Some(size) = res.body().size_hint().exact()
    {
        res.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    *res.body_mut() = Body::empty();
}

fn check(state: &ApiState, req: &Request) -> Result<(), ApiError> {
    let options = &state.inner.options;
    // DNS rebinding: a web page on `evil.example` can rebind its name to
    // 127.0.0.1 and then read this API from the victim's browser; the
    // browser still sends `Host: evil.example`. IP literals cannot be
    // rebound, so they pass (that covers the listen address whatever its
    // port). A request without `Host` (HTTP/1.0, tests) did not come from a
    // browser and passes too.
    if let Some(host) = host_of(req.headers())
        && !host_allowed(&host, &options.allowed_hosts)
    {
        tracing::debug!(host = %host, "rejected a request for another host");
        return Err(ApiError::ForbiddenHost(host));
    }
    if let Some(token) = &options.token {
        let path = req.uri().path();
        if (path == "/v1" || path.starts_with("/v1/")) && !token_matches(req, token) {
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(())
}

fn host_of(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::HOST)?;
    // A Host that is not even text is certainly not ours.
    Some(value.to_str().unwrap_or("\u{fffd}").to_owned())
}

/// Whether `host` (as sent, with or without a port) may be served.
pub(crate) fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = name_of(host);
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() {
        return true;
    }
    allowed
        .iter()
        .any(|a| name_of(a).eq_ignore_ascii_case(name))
}

/// The host name of a `Host` value, without the port and without the one
/// trailing dot of a fully qualified name (`localhost.` is `localhost`).
fn name_of(host: &str) -> &str {
    let name = strip_port(host);
    name.strip_suffix('.').unwrap_or(name)
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

/// Whether the request carries `Authorization: Bearer TOKEN`, compared in
/// constant time so that the answer time does not leak how much of a guess
/// was right.
fn token_matches(req: &Request, token: &ApiToken) -> bool {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .is_some_and(|p| constant_time_eq::constant_time_eq(p.as_bytes(), token.as_bytes()))
}

/// Whether `res` is an error whose body is not JSON yet.
fn needs_json(res: &Response) -> bool {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return false;
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    !is_json
}

/// Every 4xx/5xx leaves as JSON: responses that are errors but not JSON
/// (axum's extractor rejections, the 405 of a method router) get their text
/// wrapped.
async fn json_errors(res: Response) -> Response {
    let status = res.status();
    let (parts, body) = res.into_parts();
    // Rejection texts are short; the cap keeps a surprise from being buffered.
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text.trim().to_owned()
    };
    let mut out = json_error(status, &message);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// Paths that exist nowhere.
pub(crate) async fn not_found(req: Request<Body>) -> ApiError {
    ApiError::NotFound(format!("no such path: {}", req.uri().path()))
}

/// Methods a path does not serve.
pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_paths_are_routes_and_logged_without_a_copy() {
        let doc = crate::openapi();
        for path in FIXED_PATHS {
            assert!(doc.paths.paths.contains_key(path), "{path} is not a route");
            assert!(matches!(log_path(path), Cow::Borrowed(p) if p == path));
        }
        assert_eq!(log_path("/v1/watches/a"), "/v1/watches/a");
        assert!(matches!(log_path("/v1/watches/a"), Cow::Owned(_)));
    }

    #[test]
    fn hosts() {
        let allowed = vec!["polld.internal".to_owned()];
        for ok in [
            "localhost",
            "LOCALHOST:8377",
            "127.0.0.1:8377",
            "127.0.0.1",
            "[::1]:8377",
            "[::1]",
            "10.1.2.3:80",
            "polld.internal",
            "polld.internal:8377",
            // Fully qualified: the same names.
            "localhost.",
            "localhost.:8377",
            "polld.internal.",
            "POLLD.internal.:8377",
            "127.0.0.1.:8377",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok} should pass");
        }
        for bad in [
            "evil.example",
            "evil.example:8377",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "polld.internal.evil",
            "evil.example.",
            "localhost..",
            ".",
            "",
            "\u{fffd}",
        ] {
            assert!(!host_allowed(bad, &allowed), "{bad} should be rejected");
        }
        // A configured name written fully qualified matches too.
        let dotted = vec!["polld.lan.".to_owned()];
        assert!(host_allowed("polld.lan:8377", &dotted));
        assert!(host_allowed("polld.lan.", &dotted));
        assert!(!host_allowed("evil.lan", &dotted));
    }
}
