//! Reading a response body within bounds: streamed, cut at `max_body`
//! measured after decompression, and a stall between chunks is an error.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use url::Url;

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

/// Reads the body of `response` (taken from an `Option` the caller holds).
pub async fn read(
    response: Option<reqwest::Response>,
    max: u64,
    url: &Url,
) -> Result<Bytes, BodyError> {
    let Some(mut response) = response else {
        return Ok(Bytes::new());
    };
    if response.content_length().is_some_and(|len| len > max)
        && response.headers().get("content-encoding").is_none()
    {
        return Err(BodyError::TooLarge {
            url: url.clone(),
            max,
        });
    }
    let mut body = BytesMut::new();
    loop {
        let chunk = match tokio::time::timeout(READ_TIMEOUT, response.chunk()).await {
            Err(_) => return Err(BodyError::Stalled { url: url.clone() }),
            Ok(Err(err)) => {
                let mut message = err.to_string();
                let mut source = std::error::Error::source(&err);
                while let Some(cause) = source {
                    message.push_str(": ");
                    message.push_str(&cause.to_string());
                    source = cause.source();
                }
                return Err(BodyError::Read {
                    url: url.clone(),
                    message: redact::in_text(&message, url),
                });
            }
            Ok(Ok(None)) => return Ok(body.freeze()),
            Ok(Ok(Some(chunk))) => chunk,
        };
        if body.len() as u64 + chunk.len() as u64 > max {
            return Err(BodyError::TooLarge {
                url: url.clone(),
                max,
            });
        }
        body.extend_from_slice(&chunk);
    }
}
