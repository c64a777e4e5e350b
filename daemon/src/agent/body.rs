//! Reading a response body within bounds: streamed, cut at `max_body`
//! measured after decompression, and a stall between chunks is an error.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZlibDecoder, ZstdDecoder};
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use http::{HeaderMap, Response, header};
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt};
use tokio_util::io::StreamReader;
use url::Url;

use super::transport::ResponseBody;
use crate::redact;

/// Longest wait for the next chunk of a body.
pub const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// More than `max_body` bytes after decompression.
    #[error("{}: body larger than max_body ({max} bytes after decompression); cut", redact::url(.url))]
    TooLarge {
        /// The URL.
        url: Url,
        /// The limit.
        max: u64,
    },
    /// No byte for [`READ_TIMEOUT`].
    #[error("{}: body stalled: no data for {}s", redact::url(.url), READ_TIMEOUT.as_secs())]
    Stalled {
        /// The URL.
        url: Url,
    },
    /// The connection broke or the encoding was bad.
    #[error("{}: cannot read the body: {message}", redact::url(.url))]
    Read {
        /// The URL.
        url: Url,
        /// What went wrong.
        message: String,
    },
}

impl BodyError {
    /// Stalls and broken connections may pass; a body too large will not.
    pub fn retryable(&self) -> bool {
        !matches!(self, BodyError::TooLarge { .. })
    }
}

/// The content codings decoded (what `transport::ACCEPT_ENCODING` offers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Gzip,
    /// HTTP's `deflate`: zlib-wrapped.
    Deflate,
    Brotli,
    Zstd,
}

/// Codings one response may stack (`Content-Encoding: gzip, br`); a
/// longer list is kept as sent.
const MAX_CODINGS: usize = 4;

impl Coding {
    /// The coding named `name`; `None` for codings polld does not decode.
    fn named(name: &str) -> Option<Coding> {
        let codings = [
            ("gzip", Coding::Gzip),
            ("x-gzip", Coding::Gzip),
            ("deflate", Coding::Deflate),
            ("br", Coding::Brotli),
            ("zstd", Coding::Zstd),
        ];
        codings
            .into_iter()
            .find(|(known, _)| name.eq_ignore_ascii_case(known))
            .map(|(_, coding)| coding)
    }

    /// The codings of a response's `Content-Encoding`, in the order they
    /// were applied (RFC 9110 §8.4: the list, over every field line, names
    /// them in that order; `identity` is none). `None` for an identity
    /// body, and for one with a coding polld does not decode (the body is
    /// then kept as sent).
    fn of(headers: &HeaderMap) -> Option<Vec<Coding>> {
        let values = headers.get_all(header::CONTENT_ENCODING);
        let mut codings = Vec::new();
        for value in values {
            for name in value.to_str().ok()?.split(',').map(str::trim) {
                if name.is_empty() || name.eq_ignore_ascii_case("identity") {
                    continue;
                }
                codings.push(Coding::named(name)?);
            }
        }
        (!codings.is_empty() && codings.len() <= MAX_CODINGS).then_some(codings)
    }
}

/// Reads the body of `response` (taken from an `Option` the caller holds),
/// decoded by its `Content-Encoding`.
pub async fn read(
    response: Option<Response<ResponseBody>>,
    max: u64,
    url: &Url,
) -> Result<Bytes, BodyError> {
    read_counting(response, max, url, &AtomicU64::new(0)).await
}

/// [`read`], adding to `received` each decoded byte as it arrives: what
/// was received is known also when the read fails or is cancelled (a body
/// cut at `max`, a stall, the poll's timeout).
pub async fn read_counting(
    response: Option<Response<ResponseBody>>,
    max: u64,
    url: &Url,
    received: &AtomicU64,
) -> Result<Bytes, BodyError> {
    let Some(response) = response else {
        return Ok(Bytes::new());
    };
    // Boxed: the decoders' state machines are kilobytes that every poll's
    // future would carry, and copy when it is spawned, also a 304's.
    Box::pin(read_response(response, max, url, received)).await
}

async fn read_response(
    response: Response<ResponseBody>,
    max: u64,
    url: &Url,
    received: &AtomicU64,
) -> Result<Bytes, BodyError> {
    let codings = Coding::of(response.headers());
    let declared = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if codings.is_none() && declared.is_some_and(|len| len > max) {
        return Err(BodyError::TooLarge {
            url: url.clone(),
            max,
        });
    }
    let body = response.into_body();
    let Some(mut codings) = codings else {
        return read_plain(body, max, url, received).await;
    };
    // The last coding applied is undone first, as the body arrives; the
    // ones under it (rare) from memory, each cut at `max` too.
    let outer = codings.pop().expect("at least one coding");
    let mut decoded = read_decoded(body, outer, max, url, received).await?;
    while let Some(coding) = codings.pop() {
        if decoded.is_empty() {
            break;
        }
        let mut data = &decoded[..];
        let mut out = BytesMut::new();
        decode(&mut data, coding, &mut out, max, url, &AtomicU64::new(0)).await?;
        decoded = out.freeze();
    }
    Ok(decoded)
}

/// A body as sent, frame by frame.
async fn read_plain(
    mut body: ResponseBody,
    max: u64,
    url: &Url,
    received: &AtomicU64,
) -> Result<Bytes, BodyError> {
    let mut out = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(READ_TIMEOUT, body.frame()).await {
            Err(_) => return Err(BodyError::Stalled { url: url.clone() }),
            Ok(None) => return Ok(out.freeze()),
            Ok(Some(Err(err))) => return Err(read_error(url, &err)),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers carry no body bytes.
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        if out.len() as u64 + chunk.len() as u64 > max {
            return Err(BodyError::TooLarge {
                url: url.clone(),
                max,
            });
        }
        if out.is_empty() && body.is_end_stream() {
            // The usual small body: one frame, kept without a copy.
            return Ok(chunk);
        }
        out.extend_from_slice(&chunk);
    }
}

/// A compressed body, decoded as it arrives and cut at `max` decoded bytes
/// (a small body may decode to gigabytes). An empty body is empty whatever
/// its coding says (as reqwest had it); a gzip body may be several members,
/// and what follows them (padding, a newline) is ignored; zstd may be
/// several frames.
async fn read_decoded(
    body: ResponseBody,
    coding: Coding,
    max: u64,
    url: &Url,
    received: &AtomicU64,
) -> Result<Bytes, BodyError> {
    let mut raw = body.into_data_stream();
    let first = loop {
        match tokio::time::timeout(READ_TIMEOUT, raw.next()).await {
            Err(_) => return Err(BodyError::Stalled { url: url.clone() }),
            Ok(None) => return Ok(Bytes::new()),
            Ok(Some(Err(err))) => return Err(read_error(url, &err)),
            Ok(Some(Ok(chunk))) if chunk.is_empty() => {}
            Ok(Some(Ok(chunk))) => break chunk,
        }
    };
    let stream = futures_util::stream::once(std::future::ready(Ok(first)))
        .chain(raw)
        .map_err(std::io::Error::other);
    let mut reader = StreamReader::new(stream);
    let mut out = BytesMut::new();
    decode(&mut reader, coding, &mut out, max, url, received).await?;
    // Whatever follows the encoded data (and the end of a chunked body,
    // which may come just after) is read and dropped, so that the
    // connection can go back to the pool; briefly, and only a little of it:
    // the body is complete, and a server that keeps sending only loses its
    // connection.
    let mut rest = reader.into_inner();
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut drained = 0usize;
        while let Some(Ok(chunk)) = rest.next().await {
            drained += chunk.len();
            if drained > DRAIN_MAX {
                break;
            }
        }
    })
    .await;
    Ok(out.freeze())
}

/// Appends to `out` what `reader` decodes to by `coding`, at most `max`
/// bytes.
async fn decode<R: AsyncBufRead + Unpin + Send>(
    mut reader: &mut R,
    coding: Coding,
    out: &mut BytesMut,
    max: u64,
    url: &Url,
    received: &AtomicU64,
) -> Result<(), BodyError> {
    loop {
        let decoder: Pin<Box<dyn AsyncRead + Send + '_>> = match coding {
            Coding::Gzip => Box::pin(GzipDecoder::new(&mut reader)),
            Coding::Deflate => Box::pin(ZlibDecoder::new(&mut reader)),
            Coding::Brotli => Box::pin(BrotliDecoder::new(&mut reader)),
            Coding::Zstd => {
                // RFC 9659 §3: a zstd content coding's window is at most
                // 8 MB; a larger one would make the decoder allocate up to
                // zstd's own limit (128 MiB) per poll.
                let window = [async_compression::zstd::DParameter::window_log_max(
                    ZSTD_WINDOW_LOG_MAX,
                )];
                let mut d = ZstdDecoder::with_params(&mut reader, &window);
                d.multiple_members(true);
                Box::pin(d)
            }
        };
        read_to_limit(decoder, out, max, url, received).await?;
        // Several gzip members are one body (RFC 1952); anything else after
        // one (padding, a newline) is not part of it.
        if coding != Coding::Gzip || !next_is_gzip_member(&mut reader).await {
            return Ok(());
        }
    }
}

/// 2^23 bytes: the 8 MB window RFC 9659 allows a zstd content coding.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// How long, and how much, the end of an encoded body is read after its
/// data: enough for a chunked body's last chunk.
const DRAIN_TIME: Duration = Duration::from_millis(100);
const DRAIN_MAX: usize = 64 * 1024;

/// Whether the next bytes of `reader` start another gzip member.
async fn next_is_gzip_member<R: AsyncBufRead + Unpin>(reader: &mut R) -> bool {
    matches!(
        tokio::time::timeout(READ_TIMEOUT, reader.fill_buf()).await,
        Ok(Ok(next)) if next.starts_with(&[0x1f, 0x8b])
    )
}

/// Appends everything `decoder` yields to `out`, which may hold at most
/// `max` bytes.
async fn read_to_limit(
    mut decoder: Pin<Box<dyn AsyncRead + Send + '_>>,
    out: &mut BytesMut,
    max: u64,
    url: &Url,
    received: &AtomicU64,
) -> Result<(), BodyError> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match tokio::time::timeout(READ_TIMEOUT, decoder.read(&mut buf)).await {
            Err(_) => return Err(BodyError::Stalled { url: url.clone() }),
            Ok(Err(err)) => return Err(read_error(url, &err)),
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(n)) => n,
        };
        received.fetch_add(n as u64, Ordering::Relaxed);
        if out.len() as u64 + n as u64 > max {
            return Err(BodyError::TooLarge {
                url: url.clone(),
                max,
            });
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// The headers of a response as the agent reads them: for a body it
/// decodes, without `Content-Encoding` and `Content-Length`, which describe
/// the bytes on the wire, not the body that conditions and versions see
/// (as reqwest presented them).
pub fn delivered_headers(headers: &HeaderMap) -> HeaderMap {
    let mut headers = headers.clone();
    if Coding::of(&headers).is_some() {
        headers.remove(header::CONTENT_ENCODING);
        headers.remove(header::CONTENT_LENGTH);
    }
    headers
}

/// A failed read in words: the error and its causes, the URL's secrets
/// masked.
fn read_error(url: &Url, err: &(dyn std::error::Error + 'static)) -> BodyError {
    let mut message = err.to_string();
    super::push_causes(&mut message, err);
    BodyError::Read {
        url: url.clone(),
        message: redact::in_text(&message, url),
    }
}
