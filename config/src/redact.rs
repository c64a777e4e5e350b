//! URLs as polld shows them in logs, error messages and spans: watch lists
//! carry credentials in URLs (`https://user:pass@host/`, `?access_token=`),
//! and those must not reach the journal, the store's `last_error` or an
//! OTLP collector, nor the API (open to every local user when no
//! `api_token_file` is set). The watch list and the store keep the URL as
//! configured; everything that *shows* it goes through here.

use std::fmt;

use url::Url;

/// What a secret is replaced with.
pub const MASK: &str = "REDACTED";

/// Names (query keys, header names) that say their value is a secret: a
/// name is secret when its lowercase form contains one of these (so
/// `access_token`, `X-Amz-Signature`, `apiKey`, `X-Auth-Key`,
/// `client_secret`, `sig`, `password`, `Cookie`).
const SECRET_KEY_PARTS: &[&str] = &[
    "cookie",
    "token",
    "key",
    "secret",
    "pass",
    "pwd",
    "sig",
    "auth",
    "credential",
    "session",
];

/// `url` for display: the password of its user info and the values of
/// secret-looking query keys masked, the fragment dropped; everything else
/// verbatim (no re-encoding), so the URL stays recognisable.
pub fn url(url: &Url) -> Redacted<'_> {
    Redacted(url)
}

/// The display form of [`url`].
pub struct Redacted<'a>(&'a Url);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = self.0;
        if url.cannot_be_a_base() {
            // mailto:, data: and the like: no authority, no query keys to
            // trust; show the scheme only.
            return write!(f, "{}:{MASK}", url.scheme());
        }
        write!(f, "{}://", url.scheme())?;
        if url.password().is_some() {
            write!(f, "{}:{MASK}@", url.username())?;
        } else if !url.username().is_empty() {
            // A user name alone is the credential itself, as in
            // `https://TOKEN@github.com/` or Stripe's `https://sk_live_...:@`
            // (an empty password is no password to `url`): it used to be
            // shown, in logs, `last_error` and the API.
            write!(f, "{MASK}@")?;
        }
        if let Some(host) = url.host_str() {
            f.write_str(host)?;
        }
        if let Some(port) = url.port() {
            write!(f, ":{port}")?;
        }
        f.write_str(url.path())?;
        if let Some(query) = url.query() {
            f.write_str("?")?;
            for (i, pair) in query.split('&').enumerate() {
                if i > 0 {
                    f.write_str("&")?;
                }
                match pair.split_once('=') {
                    Some((key, _)) if is_secret_key(key) => write!(f, "{key}={MASK}")?,
                    _ => f.write_str(pair)?,
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Whether a header or parameter name says that its value is a secret.
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_KEY_PARTS.iter().any(|part| name.contains(part))
}

fn is_secret_key(raw: &str) -> bool {
    // Keys are compared decoded: `api%5Fkey` is `api_key`.
    let key: String = url::form_urlencoded::parse(raw.as_bytes())
        .next()
        .map(|(k, _)| k.to_lowercase())
        .unwrap_or_default();
    SECRET_KEY_PARTS.iter().any(|part| key.contains(part))
}

/// [`url`] for a URL kept as text (a watch's stored URL); text that is not
/// a URL is shown as it is.
pub fn url_text(text: &str) -> String {
    match Url::parse(text) {
        Ok(parsed) => url(&parsed).to_string(),
        Err(_) => text.to_owned(),
    }
}

/// `text` with every occurrence of `url`'s serialization replaced by its
/// redacted form: for messages of other libraries (reqwest's errors name the
/// URL they failed on).
pub fn in_text(text: &str, url: &Url) -> String {
    let redacted = self::url(url).to_string();
    if redacted == url.as_str() {
        return text.to_owned();
    }
    text.replace(url.as_str(), &redacted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(text: &str) -> String {
        url(&Url::parse(text).unwrap()).to_string()
    }

    #[test]
    fn plain_urls_are_shown_as_they_are() {
        for text in [
            "https://example.org/",
            "http://127.0.0.1:8080/feed.json?page=2&sort=new",
            "https://example.org/a%20b?q=x%2By&empty&=v",
        ] {
            assert_eq!(shown(text), text);
        }
    }

    #[test]
    fn passwords_and_secret_query_values_are_masked() {
        assert_eq!(
            shown("https://bob:hunter2@example.org/x"),
            "https://bob:REDACTED@example.org/x"
        );
        assert_eq!(
            shown("https://ghp_t0k3n@example.org/x"),
            "https://REDACTED@example.org/x"
        );
        assert_eq!(
            shown("https://sk_live_k3y:@example.org/x"),
            "https://REDACTED@example.org/x"
        );
        assert_eq!(
            shown("https://h/x?page=2&access_token=abc&apiKey=k&X-Amz-Signature=s&sig=1#frag"),
            "https://h/x?page=2&access_token=REDACTED&apiKey=REDACTED\
             &X-Amz-Signature=REDACTED&sig=REDACTED"
        );
        assert_eq!(
            shown("https://h/?api%5Fkey=k&pass%77ord=p"),
            "https://h/?api%5Fkey=REDACTED&pass%77ord=REDACTED"
        );
    }

    #[test]
    fn other_messages_lose_the_secret_too() {
        let url = Url::parse("https://h/x?token=t0p").unwrap();
        let message = format!("error sending request for url ({url}): refused");
        let cleaned = in_text(&message, &url);
        assert!(!cleaned.contains("t0p"), "{cleaned}");
        assert!(cleaned.contains("https://h/x?token=REDACTED"), "{cleaned}");
    }
}
