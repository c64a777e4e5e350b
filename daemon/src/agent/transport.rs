//! The agent's HTTP client: hyper-util's pooled `Client` over rustls
//! (HTTP/1.1, or HTTP/2 when a TLS server offers it), sending exactly the
//! request the agent built. No proxy from the environment, no redirects (the
//! agent follows them itself, `redirect`), no retries but of what an HTTP/2
//! server says it did not process; response bodies are decoded by `body`.
//!
//! Why not reqwest, which the CLI clients and the OTLP export still use:
//! the agent's requests are polld's hot path, and on the bench machine a
//! conditional GET through reqwest cost 17–20 µs of CPU against 11 µs
//! through the hyper-util client it wraps (`daemon/benches/http_stack.rs`):
//! reqwest parses every response's URL again for a redirect layer it always
//! installs, and clones its client and connector for every request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_platform_verifier::BuilderVerifierExt;
use url::Url;

/// The body of a request: the watch's configured body, or nothing.
pub type RequestBody = http_body_util::Full<Bytes>;

/// A request's failure before any answer (connect, TLS, protocol).
pub type SendError = hyper_util::client::legacy::Error;

/// What polld offers in `Accept-Encoding` (unless a watch sets its own):
/// every coding `body` decodes, spelled as reqwest spelled it, so that a
/// server or cache that keys on the header's text sees no change.
pub const ACCEPT_ENCODING: HeaderValue = HeaderValue::from_static("zstd,gzip,deflate,br");

/// Keep-alive connections are closed after this long unused.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
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
/// Sends of one request when an HTTP/2 server refuses it in a way that says
/// it was not processed (as reqwest retried them).
const MAX_SENDS: usize = 3;

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The TLS configuration (crypto provider, platform verifier).
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// The shared client. Cheap to clone; clones share the connection pool.
#[derive(Debug, Clone)]
pub struct Transport {
    client: Client<ConnectTimeout<HttpsConnector<HttpConnector<Resolver>>>, RequestBody>,
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
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(idle_per_host)
            .http1_max_headers(MAX_HEADERS)
            .build(connector);
        Ok(Transport { client })
    }

    /// Sends one request; the answer's body is still to be read. A request
    /// an HTTP/2 server did not process (a graceful `GOAWAY`, a
    /// `REFUSED_STREAM`) is sent again, on another connection.
    pub async fn send(
        &self,
        request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, SendError> {
        // HTTP/2 is only ever negotiated over TLS here: a plain-HTTP request
        // needs no spare copy.
        let h2_possible = request.uri().scheme() == Some(&http::uri::Scheme::HTTPS);
        let mut sends = 1;
        let mut next = request;
        loop {
            let retry = (h2_possible && sends < MAX_SENDS).then(|| copy(&next));
            match self.client.request(next).await {
                Err(err) if is_unprocessed(&err) && retry.is_some() => {
                    sends += 1;
                    next = retry.expect("checked above");
                }
                result => return result,
            }
        }
    }
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
fn is_unprocessed(err: &SendError) -> bool {
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

/// A failed request in words: what failed and each cause, innermost last
/// (hyper-util's own text is only "client error (Connect)").
pub fn error_text(err: &SendError) -> String {
    let mut text = if err.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
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
