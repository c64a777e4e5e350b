//! The agent's HTTP client: hyper's HTTP/1.1 and HTTP/2 connections (HTTP/2
//! when a TLS server offers it) over rustls, kept alive in polld's own pool
//! (`pool`), sending exactly the request the agent built. No proxy from the
//! environment, no redirects (the agent follows them itself, `redirect`), no
//! retries but of a request no connection took, of a GET or HEAD that met
//! its kept-alive connection's close, and of what an HTTP/2 server says it
//! did not process; response bodies are decoded by `body`.
//!
//! Why not reqwest, which the CLI clients and the OTLP export still use:
//! the agent's requests are polld's hot path, and on the bench machine a
//! conditional GET through reqwest cost 17–20 µs of CPU against 11 µs
//! through the hyper-util client it wraps (`daemon/benches/http_stack.rs`):
//! reqwest parses every response's URL again for a redirect layer it always
//! installs, and clones its client and connector for every request. Why not
//! hyper-util's client either: see `pool`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_platform_verifier::BuilderVerifierExt;
use tower::ServiceExt;
use url::Url;

use super::pool::{Conn, Origin, Pool};

/// The body of a request: the watch's configured body, or nothing.
pub type RequestBody = http_body_util::Full<Bytes>;

/// What polld offers in `Accept-Encoding` (unless a watch sets its own):
/// every coding `body` decodes, spelled as reqwest spelled it, so that a
/// server or cache that keys on the header's text sees no change.
pub const ACCEPT_ENCODING: HeaderValue = HeaderValue::from_static("zstd,gzip,deflate,br");

/// Response headers accepted at most (HTTP/1).
const MAX_HEADERS: usize = 200;
/// TCP keepalive probes on pooled connections (reqwest's defaults): a
/// connection that a NAT or firewall silently dropped is found out before a
/// poll waits on it for its whole timeout.
const KEEPALIVE: Duration = Duration::from_secs(15);
const KEEPALIVE_RETRIES: u32 = 3;
/// Unacknowledged data this old fails the connection (Linux).
#[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request waits for a kept-alive HTTP/1 connection to finish
/// its last exchange before it takes another.
const REUSE_READY_WAIT: Duration = Duration::from_secs(1);
/// Sends of one request when an HTTP/2 server refuses it in a way that says
/// it was not processed (as reqwest retried them), or when the kept-alive
/// connection it was given had closed before taking it.
const MAX_SENDS: usize = 3;

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The TLS configuration (crypto provider, platform verifier).
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// A request's failure before any answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection (DNS, TCP, TLS, or the HTTP/2 handshake).
    #[error("connect")]
    Connect(#[source] BoxError),
    /// The connection failed the request (reset, closed, malformed answer).
    #[error("send")]
    Send(#[source] hyper::Error),
    /// The request's URI has no scheme or host (the agent's never lack one).
    #[error("not an absolute http(s) URI: {0}")]
    Uri(http::Uri),
}

impl SendError {
    /// Whether no connection could be made.
    #[must_use]
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }
}

type Connector = ConnectTimeout<HttpsConnector<HttpConnector<Resolver>>>;

/// The shared client. Cheap to clone; clones share the connection pool.
#[derive(Debug, Clone)]
pub struct Transport {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    connector: Connector,
    pool: Arc<Pool>,
}

impl Transport {
    /// A client whose connects give up after `connect_timeout`, keeping up
    /// to `idle_per_host` idle connections per host.
    pub fn new(connect_timeout: Duration, idle_per_host: usize) -> Result<Transport, BuildError> {
        Transport::build(connect_timeout, idle_per_host, false)
    }

    /// A client that connects to public addresses only: a name that
    /// resolves to loopback, private or link-local addresses alone is not
    /// connected to (of a name with both, only the public ones are used).
    /// For the hops a remote server chose (redirects, job locations, next
    /// pages) away from a public address: judging the target's name by its
    /// text let `http://127.0.0.1.nip.io/` (or any name an attacker points
    /// at 169.254.169.254) through. The check is made at connect time, on
    /// the addresses connected to, so a name rebound after a check cannot
    /// slip by; its own pool keeps connections made without it apart.
    pub fn public_only(
        connect_timeout: Duration,
        idle_per_host: usize,
    ) -> Result<Transport, BuildError> {
        Transport::build(connect_timeout, idle_per_host, true)
    }

    fn build(
        connect_timeout: Duration,
        idle_per_host: usize,
        public_only: bool,
    ) -> Result<Transport, BuildError> {
        // The provider named, not the process default: more than one may be
        // compiled in (reqwest brings aws-lc-rs, other crates ring).
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_platform_verifier()?
            .with_no_client_auth();
        Ok(Transport::with_tls(
            tls,
            connect_timeout,
            idle_per_host,
            public_only,
        ))
    }

    /// The client over `tls` (the tests' own roots; the platform's in
    /// [`Transport::build`]).
    fn with_tls(
        tls: rustls::ClientConfig,
        connect_timeout: Duration,
        idle_per_host: usize,
        public_only: bool,
    ) -> Transport {
        let mut http = HttpConnector::new_with_resolver(Resolver {
            gai: GaiResolver::new(),
            public_only,
        });
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(KEEPALIVE));
        http.set_keepalive_interval(Some(KEEPALIVE));
        http.set_keepalive_retries(Some(KEEPALIVE_RETRIES));
        #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
        http.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let connector = ConnectTimeout {
            inner: https,
            timeout: connect_timeout,
        };
        Transport {
            inner: Arc::new(Shared {
                connector,
                pool: Pool::new(idle_per_host),
            }),
        }
    }

    /// Sends one request on a kept-alive connection to its origin, or a
    /// new one; the answer's body is still to be read (its connection goes
    /// back to the pool when it ends). A request a kept-alive connection
    /// did not take (its server had just closed it), a GET or HEAD that got
    /// no answer because its kept-alive connection closed as it went out,
    /// and one that an HTTP/2 server did not process (a graceful `GOAWAY`,
    /// a `REFUSED_STREAM`) are sent again on another connection.
    pub async fn send(
        &self,
        request: Request<RequestBody>,
    ) -> Result<Response<ResponseBody>, SendError> {
        // Boxed: requests and connections in flight are more than a
        // kilobyte that every poll's future would carry, and copy when it
        // is spawned.
        Box::pin(self.send_on_pool(request)).await
    }

    async fn send_on_pool(
        &self,
        request: Request<RequestBody>,
    ) -> Result<Response<ResponseBody>, SendError> {
        let uri = request.uri().clone();
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(SendError::Uri(uri));
        };
        let origin = Origin {
            scheme: scheme.clone(),
            authority: authority.clone(),
        };
        let mut sends = 1;
        let mut next = request;
        // After a kept-alive connection failed a request: a new one.
        let mut fresh = false;
        loop {
            let pooled = if fresh {
                None
            } else {
                self.inner.pool.checkout(&origin)
            };
            let (conn, reused) = match pooled {
                Some(conn) => (conn, true),
                // Boxed: a connect's state machine (DNS, TCP, TLS, the
                // handshake) is kilobytes that every request would carry.
                None => (Box::pin(self.connect(&origin, &uri)).await?, false),
            };
            match conn {
                Conn::Http1(mut sender) => {
                    if reused {
                        // Checked in as its last answer's body ended (or was
                        // dropped), it is ready within moments; one still
                        // busy (a request body its server never reads) is
                        // not waited for, nor one closed meanwhile.
                        match tokio::time::timeout(REUSE_READY_WAIT, sender.ready()).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) | Err(_) => continue,
                        }
                    } else {
                        sender.ready().await.map_err(SendError::Send)?;
                    }
                    // A copy in case a kept-alive connection turns out to
                    // have closed (below).
                    let retry = (reused
                        && sends < MAX_SENDS
                        && matches!(*next.method(), Method::GET | Method::HEAD))
                    .then(|| copy(&next));
                    let request = origin_form(next, &origin);
                    match sender.try_send_request(request).await {
                        Ok(response) => {
                            let keep = Keep {
                                pool: self.inner.pool.clone(),
                                origin,
                                sender,
                            };
                            return Ok(response.map(|body| ResponseBody::new(body, Some(keep))));
                        }
                        Err(mut err) => match err.take_message() {
                            // Not written: the connection had closed.
                            Some(mut request) if reused && sends < MAX_SENDS => {
                                *request.uri_mut() = uri.clone();
                                sends += 1;
                                next = request;
                            }
                            // Written to a kept-alive connection that its
                            // server closed as it went out, with no answer:
                            // a GET or HEAD is sent again on a new one
                            // (RFC 9110 §9.2.2), as curl and browsers do.
                            None if retry.is_some() && crossed_close(err.error()) => {
                                sends += 1;
                                next = retry.expect("checked above");
                                fresh = true;
                            }
                            _ => return Err(SendError::Send(err.into_error())),
                        },
                    }
                }
                Conn::Http2(mut sender) => {
                    match sender.ready().await {
                        Ok(()) => {}
                        Err(_) if reused => continue,
                        Err(err) => return Err(SendError::Send(err)),
                    }
                    // Kept for a second send only when one may follow.
                    let retry = (sends < MAX_SENDS).then(|| copy(&next));
                    match sender.try_send_request(next).await {
                        Ok(response) => {
                            return Ok(response.map(|body| ResponseBody::new(body, None)));
                        }
                        Err(mut err) => {
                            let unsent = err.take_message();
                            let err = err.into_error();
                            next = match (unsent, retry) {
                                (Some(request), _) if sends < MAX_SENDS => request,
                                (_, Some(request)) if is_unprocessed(&err) => request,
                                _ => return Err(SendError::Send(err)),
                            };
                            sends += 1;
                        }
                    }
                }
            }
        }
    }

    /// A new connection to `origin`: HTTP/2 when TLS negotiated it (then
    /// shared through the pool at once), HTTP/1.1 otherwise. Its task
    /// reads and writes the socket until the connection closes.
    async fn connect(&self, origin: &Origin, uri: &http::Uri) -> Result<Conn, SendError> {
        let io = self
            .inner
            .connector
            .clone()
            .oneshot(uri.clone())
            .await
            .map_err(SendError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(|e| SendError::Connect(e.into()))?;
            drive(connection, "HTTP/2");
            self.inner.pool.share(origin, sender.clone());
            Ok(Conn::Http2(sender))
        } else {
            let (sender, connection) = http1::Builder::new()
                .max_headers(MAX_HEADERS)
                .handshake(io)
                .await
                .map_err(|e| SendError::Connect(e.into()))?;
            drive(connection, "HTTP/1");
            Ok(Conn::Http1(sender))
        }
    }
}

/// Reads and writes a connection's socket, in a task of its own, until the
/// connection ends.
fn drive(
    connection: impl Future<Output = hyper::Result<()>> + Send + 'static,
    protocol: &'static str,
) {
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, protocol, "connection ended");
        }
    });
}

/// An answer's body. Its HTTP/1 connection goes back to the pool when the
/// body has ended or is dropped (a redirect's, an error's: hyper reads what
/// is left of a small body and drops the rest with the connection, which a
/// later checkout then finds closed).
#[derive(Debug)]
pub struct ResponseBody {
    inner: Incoming,
    keep: Option<Keep>,
}

/// The HTTP/1 connection an answer came on, and where it goes back to.
#[derive(Debug)]
struct Keep {
    pool: Arc<Pool>,
    origin: Origin,
    sender: http1::SendRequest<RequestBody>,
}

impl ResponseBody {
    fn new(inner: Incoming, keep: Option<Keep>) -> ResponseBody {
        let mut body = ResponseBody { inner, keep };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(keep) = self.keep.take() {
            keep.pool.checkin(&keep.origin, keep.sender);
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.release();
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.keep = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `request` as HTTP/1.1 sends it: the target in origin form (path and
/// query), the host and any port but the scheme's default in `Host` unless
/// the watch set its own.
fn origin_form(mut request: Request<RequestBody>, origin: &Origin) -> Request<RequestBody> {
    if !request.headers().contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(&host_header(origin))
    {
        request.headers_mut().insert(header::HOST, host);
    }
    let path = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    *request.uri_mut() = http::Uri::from(path);
    request
}

/// `Host` for `origin`: its host (IPv6 in brackets, as the authority has
/// it), and its port unless that is the scheme's default; never user info.
fn host_header(origin: &Origin) -> String {
    let host = origin.authority.host();
    let default = match origin.scheme.as_str() {
        "https" => 443,
        _ => 80,
    };
    match origin.authority.port_u16() {
        Some(port) if port != default => format!("{host}:{port}"),
        _ => host.to_owned(),
    }
}

/// Whether a request on a kept-alive connection met its server's close: the
/// end of the stream (the server read the request and closed), or a reset
/// (it closed with the request unread, and the kernel answered with RST).
fn crossed_close(err: &hyper::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    err.is_incomplete_message()
        || std::error::Error::source(err)
            .and_then(|cause| cause.downcast_ref::<std::io::Error>())
            .is_some_and(|io| matches!(io.kind(), ConnectionReset | BrokenPipe | ConnectionAborted))
}

/// A second copy of a request (the body is shared bytes).
fn copy(request: &Request<RequestBody>) -> Request<RequestBody> {
    let mut copy = Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// Whether an HTTP/2 server said it did not process the request, so that
/// sending it again is safe (RFC 9113, section 8.7).
fn is_unprocessed(err: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && ((h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR))
                    || (h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)));
        }
        source = cause.source();
    }
    false
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The system resolver, keeping only public addresses when `public_only`.
#[derive(Debug, Clone)]
pub struct Resolver {
    gai: GaiResolver,
    public_only: bool,
}

impl tower::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<std::net::SocketAddr>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, std::io::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
        self.gai.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let public_only = self.public_only;
        let resolving = self.gai.call(name.clone());
        Box::pin(async move {
            let mut addrs: Vec<std::net::SocketAddr> = resolving.await?.collect();
            if public_only {
                let internal = addrs
                    .iter()
                    .find(|a| super::redirect::is_internal_ip(a.ip()))
                    .copied();
                addrs.retain(|a| !super::redirect::is_internal_ip(a.ip()));
                if let (true, Some(internal)) = (addrs.is_empty(), internal) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        format!(
                            "{} resolves to the internal address {}, not followed from a \
                             public address (allow_private_redirects allows it)",
                            name.as_str(),
                            internal.ip()
                        ),
                    ));
                }
            }
            Ok(addrs.into_iter())
        })
    }
}

/// A connector whose whole connect (DNS, TCP, TLS) ends after `timeout`:
/// hyper-util's own timeout covers the TCP connect alone, and a server that
/// accepts and never answers the TLS handshake would otherwise hold a poll
/// for its whole `timeout`.
#[derive(Debug, Clone)]
pub struct ConnectTimeout<C> {
    inner: C,
    timeout: Duration,
}

impl<C> tower::Service<http::Uri> for ConnectTimeout<C>
where
    C: tower::Service<http::Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (connect, timeout) = (self.inner.call(uri), self.timeout);
        Box::pin(async move {
            match tokio::time::timeout(timeout, connect).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "connect (DNS, TCP, TLS) timed out after {}",
                        humantime::format_duration(timeout)
                    ),
                )
                .into()),
            }
        })
    }
}

/// A failed request in words: what failed and each cause, innermost last.
pub fn error_text(err: &SendError) -> String {
    let mut text = match err {
        SendError::Connect(_) => "cannot connect".to_owned(),
        SendError::Send(_) => "request failed".to_owned(),
        SendError::Uri(_) => err.to_string(),
    };
    super::push_causes(&mut text, err);
    text
}

/// A request as polld sends it: `headers` (the watch's own), then polld's
/// defaults where they set none: `User-Agent`, `Accept: */*`,
/// `Accept-Encoding` (not with a `Range`: a range of an encoded body is not
/// a range of the body), and, when `with_url_credentials`, the URL's user
/// info as `Authorization: Basic`.
pub fn request(
    method: &Method,
    url: &Url,
    mut headers: HeaderMap,
    body: Option<&[u8]>,
    user_agent: &HeaderValue,
    with_url_credentials: bool,
) -> Result<Request<RequestBody>, http::Error> {
    if with_url_credentials
        && !headers.contains_key(header::AUTHORIZATION)
        && let Some(basic) = basic_auth(url)
    {
        headers.insert(header::AUTHORIZATION, basic);
    }
    let defaults = [
        (header::USER_AGENT, user_agent.clone()),
        (header::ACCEPT, HeaderValue::from_static("*/*")),
    ];
    for (name, value) in defaults {
        if !headers.contains_key(&name) {
            headers.insert(name, value);
        }
    }
    if !headers.contains_key(header::ACCEPT_ENCODING) && !headers.contains_key(header::RANGE) {
        headers.insert(header::ACCEPT_ENCODING, ACCEPT_ENCODING);
    }
    let body = body.map_or_else(RequestBody::default, |b| {
        RequestBody::new(Bytes::copy_from_slice(b))
    });
    let mut request = Request::new(body);
    *request.method_mut() = method.clone();
    *request.uri_mut() = request_uri(url)?;
    *request.headers_mut() = headers;
    Ok(request)
}

/// The request target of `url`: without its user info (sent as
/// `Authorization` instead) and its fragment. The URL's own text, sliced:
/// it is already normalized, and this runs for every poll.
fn request_uri(url: &Url) -> Result<http::Uri, http::Error> {
    use url::Position;
    let uri = if url.username().is_empty() && url.password().is_none() {
        http::Uri::try_from(&url[..Position::AfterQuery])
    } else {
        http::Uri::try_from(format!(
            "{}{}",
            &url[..Position::BeforeUsername],
            &url[Position::BeforeHost..Position::AfterQuery]
        ))
    };
    Ok(uri?)
}

/// `Authorization: Basic` from a URL's user info (percent-decoded), as
/// browsers, curl and reqwest send it.
fn basic_auth(url: &Url) -> Option<HeaderValue> {
    use base64::Engine;
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let decode = |s: &str| percent_encoding::percent_decode_str(s).collect::<Vec<u8>>();
    let mut credentials = decode(url.username());
    credentials.push(b':');
    credentials.extend(decode(url.password().unwrap_or_default()));
    let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::uri::Scheme;
    use http_body_util::BodyExt;

    use super::*;

    /// An HTTP/2-only TLS server on loopback for `localhost` that counts
    /// its connections and answers every request with its HTTP version;
    /// and a client that trusts its certificate.
    async fn h2_server() -> (String, Arc<AtomicUsize>, Transport) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = certified.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der())
            .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service =
                        hyper::service::service_fn(|request: Request<Incoming>| async move {
                            let version = format!("{:?}", request.version());
                            Ok::<_, std::convert::Infallible>(Response::new(RequestBody::new(
                                Bytes::from(version),
                            )))
                        });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = Transport::with_tls(tls, Duration::from_secs(5), 4, false);
        (format!("https://localhost:{port}/"), connections, client)
    }

    async fn get(client: &Transport, url: &str) -> String {
        let request = request(
            &Method::GET,
            &Url::parse(url).unwrap(),
            HeaderMap::new(),
            None,
            &HeaderValue::from_static("polld-test"),
            false,
        )
        .unwrap();
        let response = client.send(request).await.unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[test]
    fn host_is_the_host_and_any_port_but_the_default() {
        let host = |scheme: Scheme, authority: &'static str| {
            host_header(&Origin {
                scheme,
                authority: http::uri::Authority::from_static(authority),
            })
        };
        assert_eq!(host(Scheme::HTTP, "example.org:80"), "example.org");
        assert_eq!(host(Scheme::HTTPS, "example.org:443"), "example.org");
        assert_eq!(host(Scheme::HTTP, "example.org:443"), "example.org:443");
        assert_eq!(
            host(Scheme::HTTPS, "user:pw@example.org:8443"),
            "example.org:8443"
        );
        assert_eq!(host(Scheme::HTTP, "[::1]:8080"), "[::1]:8080");
    }

    #[tokio::test]
    async fn an_http2_server_s_connection_is_shared_by_requests_in_a_row_and_at_once() {
        let (url, connections, client) = h2_server().await;
        for _ in 0..3 {
            assert_eq!(get(&client, &url).await, "HTTP/2.0");
        }
        let at_once = futures_util::future::join_all((0..8).map(|_| get(&client, &url))).await;
        assert!(at_once.iter().all(|v| v == "HTTP/2.0"), "{at_once:?}");
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }
}
