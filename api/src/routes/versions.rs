//! `/v1/watches/{id}/versions`, one version's body (polld as a
//! conditional-GET cache: strong `ETag`, `Last-Modified`, 304), and
//! `/v1/watches/{id}/diff` (unified text diff or RFC 6902 patch).

use std::borrow::Cow;
use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use polld_store::{StoreError, Version, VersionsView};
use serde::Deserialize;
use utoipa::IntoParams;

use super::query;
use super::watches::no_watch;
use crate::error::ApiError;
use crate::feed::blocking;
use crate::json::{BinaryBody, ErrorJson, VersionJson, VersionList, hex, stored_header};
use crate::state::ApiState;

/// The versions of a watch, oldest first.
#[utoipa::path(get, path = "/v1/watches/{id}/versions", tag = "versions",
    params(("id" = String, Path, description = "Watch id")),
    responses(
        (status = 200, description = "The versions", body = VersionList),
        (status = 404, description = "No such watch", body = ErrorJson),
    ))]
pub(crate) async fn list(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<VersionList>, ApiError> {
    let store = state.inner.store.clone();
    let key = id.clone();
    let versions = blocking(move || {
        if store.watch(&key)?.is_none() {
            return Ok(None);
        }
        store.versions(&key).map(Some)
    })
    .await?
    .ok_or_else(|| no_watch(&id))?;
    Ok(Json(VersionList {
        versions: versions.iter().map(VersionJson::from).collect(),
    }))
}

/// `n` of a version path: a number or `latest`.
fn parse_n(n: &str) -> Result<Option<u64>, ApiError> {
    if n == "latest" {
        return Ok(None);
    }
    n.parse::<u64>().map(Some).map_err(|_| {
        ApiError::BadRequest(format!("version must be a number or \"latest\", got {n:?}"))
    })
}

/// What a body lookup found.
enum Lookup<T> {
    NoWatch,
    NoVersion(u64),
    NoVersions,
    Found(T),
}

/// The strong entity tag of a body: its content hash.
fn etag(v: &Version) -> String {
    format!("\"{}\"", hex(&v.hash))
}

fn last_modified(v: &Version) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(v.fetched_at_ms))
}

/// Whether `If-None-Match` (or, without it, `If-Modified-Since`) says the
/// client already has this body. `If-None-Match` compares weakly (RFC 9110
/// 13.1.2), so `W/"h"` matches `"h"`.
fn not_modified(headers: &HeaderMap, v: &Version) -> bool {
    let tag = etag(v);
    let inm: Vec<&str> = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .collect();
    if !inm.is_empty() {
        return inm.iter().flat_map(|h| h.split(',')).any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == tag
        });
    }
    let since = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| httpdate::parse_http_date(h).ok());
    since.is_some_and(|since| {
        // HTTP dates have whole seconds: compare at that precision. A date
        // after the server's own time is invalid and ignored (RFC 9110
        // 13.1.3): a client's clock ahead must not pin an old body.
        let modified = UNIX_EPOCH + Duration::from_secs(v.fetched_at_ms / 1000);
        modified <= since && since <= std::time::SystemTime::now()
    })
}

/// One version's body with its original `Content-Type` (and
/// `Content-Language`, when the response had one), a strong `ETag` (the
/// content hash) and `Last-Modified` (when it was fetched).
#[utoipa::path(get, path = "/v1/watches/{id}/versions/{n}", tag = "versions",
    params(
        ("id" = String, Path, description = "Watch id"),
        ("n" = String, Path, description = "Version number, or `latest`"),
        ("If-None-Match" = Option<String>, Header, description = "ETags the client has"),
    ),
    responses(
        (status = 200, description = "The stored body, with its original Content-Type", content_type = "application/octet-stream", body = BinaryBody,
            headers(
                ("ETag" = String, description = "Strong: the body's BLAKE3 hash"),
                ("Last-Modified" = String, description = "When the version was fetched"),
                ("Content-Language" = String, description = "The Content-Language of the response that carried it, when it had one"),
            )),
        (status = 304, description = "The client's copy is current"),
        (status = 400, description = "Bad version number", body = ErrorJson),
        (status = 404, description = "No such watch or version", body = ErrorJson),
    ))]
pub(crate) async fn body(
    State(state): State<ApiState>,
    Path((id, n)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let wanted = parse_n(&n)?;
    let store = state.inner.store.clone();
    let key = id.clone();
    let conditional = headers.contains_key(header::IF_NONE_MATCH)
        || headers.contains_key(header::IF_MODIFIED_SINCE);
    let found = blocking(move || {
        if store.watch(&key)?.is_none() {
            return Ok(Lookup::NoWatch);
        }
        // One read transaction: `latest` is still there when its body is
        // read, whatever a commit pruned in between.
        store.read_versions(&key, |view| {
            let version = match wanted {
                Some(n) => view.get(n)?.ok_or(n),
                None => match view.latest()? {
                    Some(v) => Ok(v),
                    None => return Ok(Lookup::NoVersions),
                },
            };
            let version = match version {
                Ok(version) => version,
                Err(n) => return Ok(Lookup::NoVersion(n)),
            };
            // A conditional request checks the small record first: a 304
            // needs no body, which may be megabytes to decompress.
            if conditional && not_modified(&headers, &version) {
                return Ok(Lookup::Found((version, None)));
            }
            let body = view.body(&version)?;
            Ok(Lookup::Found((version, Some(body))))
        })
    })
    .await?;
    let (version, body) = match found {
        Lookup::Found(found) => found,
        Lookup::NoWatch => return Err(no_watch(&id)),
        Lookup::NoVersions => {
            return Err(ApiError::NotFound(format!(
                "watch {id:?} has no versions yet"
            )));
        }
        Lookup::NoVersion(n) => {
            return Err(ApiError::NotFound(format!(
                "watch {id:?} has no version {n} (never made, or pruned)"
            )));
        }
    };
    let mut res = match body {
        None => StatusCode::NOT_MODIFIED.into_response(),
        Some(body) => {
            let mut res = Body::from(body).into_response();
            let ct = version
                .content_type
                .as_deref()
                .and_then(|ct| HeaderValue::from_str(ct).ok())
                .unwrap_or(HeaderValue::from_static("application/octet-stream"));
            res.headers_mut().insert(header::CONTENT_TYPE, ct);
            // Representation metadata, like the type: sent with the body,
            // not with a 304 (RFC 9110 §15.4.5).
            if let Some(lang) = stored_header(&version.headers, "content-language") {
                insert(res.headers_mut(), header::CONTENT_LANGUAGE, &lang);
            }
            res
        }
    };
    let h = res.headers_mut();
    insert(h, header::ETAG, &etag(&version));
    insert(h, header::LAST_MODIFIED, &last_modified(&version));
    insert(h, "x-polld-version", &version.number.to_string());
    // A numbered version never changes; `latest` does.
    let cache = if wanted.is_some() {
        "max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    insert(h, header::CACHE_CONTROL, cache);
    // The body is someone else's content served from the API's origin: a
    // stored HTML page must not run scripts here, nor be sniffed into one.
    insert(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    insert(h, header::CONTENT_SECURITY_POLICY, "sandbox");
    Ok(res)
}

fn insert(h: &mut HeaderMap, name: impl axum::http::header::IntoHeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        h.insert(name, value);
    }
}

/// The two versions to compare.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DiffQuery {
    /// The older version (default: the version before `to`).
    from: Option<String>,
    /// The newer version (default: the latest).
    to: Option<String>,
}

/// A diff that takes longer than this is cut to a coarser one.
const DIFF_DEADLINE: Duration = Duration::from_secs(2);
/// The JSON Patch media type (RFC 6902).
const JSON_PATCH: &str = "application/json-patch+json";

/// The difference between two versions: a unified diff (`text/x-diff`), or
/// with `Accept: application/json-patch+json` an RFC 6902 patch between two
/// JSON bodies. Binary bodies get a one-line summary.
#[utoipa::path(get, path = "/v1/watches/{id}/diff", tag = "versions",
    params(("id" = String, Path, description = "Watch id"), DiffQuery),
    responses(
        (status = 200, description = "A unified diff, or an RFC 6902 patch when `Accept: application/json-patch+json` and both bodies are JSON; a short summary when a body is binary",
            content((String = "text/x-diff"), (Vec<Object> = "application/json-patch+json"))),
        (status = 400, description = "Bad version number", body = ErrorJson),
        (status = 404, description = "No such watch or version, or fewer than two versions", body = ErrorJson),
        (status = 406, description = "Only a JSON patch is acceptable, but a body is not JSON", body = ErrorJson),
    ))]
pub(crate) async fn diff(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    q: Result<Query<DiffQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let parse = |name: &str, raw: Option<String>| -> Result<Option<u64>, ApiError> {
        raw.map(|raw| {
            raw.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!("{name} must be a version number, got {raw:?}"))
            })
        })
        .transpose()
    };
    let from = parse("from", q.from)?;
    let to = parse("to", q.to)?;
    let format = negotiate(&headers);

    let store = state.inner.store.clone();
    let key = id.clone();
    let bodies = blocking(move || {
        if store.watch(&key)?.is_none() {
            return Ok(Err(no_watch(&key)));
        }
        // One read transaction: the versions listed are the ones read.
        store.read_versions(&key, |view| pick_pair(view, &key, from, to))
    })
    .await??;
    let [(va, a), (vb, b)]: [(Version, Vec<u8>); 2] = bodies
        .try_into()
        .map_err(|_| ApiError::Internal("two bodies expected".into()))?;
    // Diffing megabytes is CPU work: keep it off the async workers.
    let id2 = id.clone();
    let answer = tokio::task::spawn_blocking(move || match format {
        DiffFormat::Text => Ok(text_diff_response(&id2, &va, &a, &vb, &b)),
        DiffFormat::Patch { or_text } => match json_patch_response(&va, &a, &vb, &b) {
            Err(ApiError::NotAcceptable(_)) if or_text => {
                Ok(text_diff_response(&id2, &va, &a, &vb, &b))
            }
            answer => answer,
        },
    })
    .await
    .map_err(|err| ApiError::Internal(format!("diff task failed: {err}")))?;
    // The representation depends on `Accept`: a shared cache must not
    // hand one client's patch to another that asked for text.
    let mut res = answer.unwrap_or_else(IntoResponse::into_response);
    res.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept"));
    Ok(res)
}

/// What a diff request accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiffFormat {
    /// A unified diff: without `Accept`, or when a patch is not preferred.
    Text,
    /// An RFC 6902 patch; when a body is not JSON, the unified diff if the
    /// client accepts text too (`or_text`), else 406.
    Patch { or_text: bool },
}

/// The two versions a diff compares, with their bodies: `to` (default: the
/// latest) and `from` (default: the one before `to`). The inner error is
/// the answer for a version that is not there.
#[allow(clippy::type_complexity)]
fn pick_pair(
    view: &VersionsView<'_>,
    key: &str,
    from: Option<u64>,
    to: Option<u64>,
) -> Result<Result<Vec<(Version, Vec<u8>)>, ApiError>, StoreError> {
    let versions = view.list()?;
    let to = match to.or(versions.last().map(|v| v.number)) {
        Some(to) => to,
        None => {
            return Ok(Err(ApiError::NotFound(format!(
                "watch {key:?} has no versions yet"
            ))));
        }
    };
    if !versions.iter().any(|v| v.number == to) {
        return Ok(Err(ApiError::NotFound(format!(
            "watch {key:?} has no version {to} (never made, or pruned)"
        ))));
    }
    let from = match from.or_else(|| versions.iter().rev().map(|v| v.number).find(|&n| n < to)) {
        Some(from) => from,
        None => {
            return Ok(Err(ApiError::NotFound(format!(
                "watch {key:?} has no version before {to} to compare with; \
                 name one with from=N"
            ))));
        }
    };
    let mut pair = Vec::with_capacity(2);
    for n in [from, to] {
        match view.get(n)? {
            Some(version) => {
                let body = view.body(&version)?;
                pair.push((version, body));
            }
            None => {
                return Ok(Err(ApiError::NotFound(format!(
                    "watch {key:?} has no version {n} (never made, or pruned)"
                ))));
            }
        }
    }
    Ok(Ok(pair))
}

/// Negotiates the diff's format from `Accept` (RFC 9110 12.5.1): each
/// type gets the q-value of the most specific range naming it, `q=0`
/// refuses it, and a patch is sent when it is acceptable and at least as
/// preferred as text. An `Accept` that accepts neither gets the text diff,
/// as every other route answers in its one format whatever `Accept` says.
fn negotiate(headers: &HeaderMap) -> DiffFormat {
    // (type, subtype, q in thousandths)
    let ranges: Vec<(String, String, u16)> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(','))
        .filter_map(|range| {
            let mut parts = range.split(';');
            let (ty, sub) = parts.next()?.trim().split_once('/')?;
            let mut q = Some(1000);
            for param in parts {
                if let Some((name, value)) = param.split_once('=')
                    && name.trim().eq_ignore_ascii_case("q")
                {
                    q = parse_q(value.trim());
                }
            }
            Some((
                ty.trim().to_ascii_lowercase(),
                sub.trim().to_ascii_lowercase(),
                q?,
            ))
        })
        .collect();
    // The q of the most specific range that matches `ty/sub`; 0 when none.
    let quality = |ty: &str, sub: &str| {
        let specificity = |(t, s, _): &&(String, String, u16)| match (t.as_str(), s.as_str()) {
            (t, s) if t == ty && s == sub => Some(2),
            (t, "*") if t == ty => Some(1),
            ("*", "*") => Some(0),
            _ => None,
        };
        ranges
            .iter()
            .filter_map(|r| specificity(&r).map(|rank| (rank, r.2)))
            .max_by_key(|&(rank, _)| rank)
            .map_or(0, |(_, q)| q)
    };
    let (p_ty, p_sub) = JSON_PATCH.split_once('/').unwrap_or_default();
    let patch = quality(p_ty, p_sub);
    let text = quality("text", "x-diff");
    if patch > 0 && patch >= text {
        DiffFormat::Patch { or_text: text > 0 }
    } else {
        DiffFormat::Text
    }
}

/// A qvalue (`0`, `0.5`, `1.000`, …) in thousandths; `None` when malformed.
fn parse_q(raw: &str) -> Option<u16> {
    let (int, frac) = raw.split_once('.').unwrap_or((raw, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_value = format!("{frac:0<3}").parse::<u16>().ok()?;
    match int {
        "0" => Some(frac_value),
        "1" if frac_value == 0 => Some(1000),
        _ => None,
    }
}

fn json_patch_response(
    va: &Version,
    a: &[u8],
    vb: &Version,
    b: &[u8],
) -> Result<Response, ApiError> {
    let parse = |v: &Version, body: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(body).map_err(|_| {
            ApiError::NotAcceptable(format!(
                "version {} is not JSON: no JSON patch; ask for text/x-diff instead",
                v.number
            ))
        })
    };
    let patch = json_patch::diff(&parse(va, a)?, &parse(vb, b)?);
    let body = serde_json::to_vec(&patch)
        .map_err(|err| ApiError::Internal(format!("cannot serialize a patch: {err}")))?;
    Ok(([(header::CONTENT_TYPE, JSON_PATCH)], body).into_response())
}

/// The text of a body for the line diff, decoded from the charset a
/// UTF-16 BOM names, else the one its `Content-Type` declares, else UTF-8;
/// `None` when it is to be treated as binary: a media type that is not
/// text, bytes that are not valid in that charset, or NUL characters (what
/// git looks at).
fn text_of<'a>(v: &Version, body: &'a [u8]) -> Option<Cow<'a, str>> {
    let ct = v.content_type.as_deref().map(str::to_ascii_lowercase);
    let mut params = ct.as_deref().unwrap_or("").split(';');
    let essence = params.next().unwrap_or("").trim();
    let textual_type = ct.is_none()
        || essence.starts_with("text/")
        || essence.contains("json")
        || essence.contains("xml")
        || essence.contains("javascript")
        || essence.contains("yaml")
        || essence.contains("csv")
        || essence == "application/x-www-form-urlencoded";
    if !textual_type {
        return None;
    }
    let declared = params.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        (name.trim() == "charset").then(|| value.trim().trim_matches('"'))
    });
    let utf16_bom = encoding_rs::Encoding::for_bom(body)
        .map(|(e, _)| e)
        .filter(|e| *e != encoding_rs::UTF_8);
    // An unknown label is tried as UTF-8, as a body without one is.
    let encoding = utf16_bom
        .or_else(|| declared.and_then(|l| encoding_rs::Encoding::for_label(l.as_bytes())))
        .unwrap_or(encoding_rs::UTF_8);
    let text = if encoding == encoding_rs::UTF_8 {
        Cow::Borrowed(std::str::from_utf8(body).ok()?)
    } else {
        let (text, malformed) = encoding.decode_with_bom_removal(body);
        if malformed {
            return None;
        }
        text
    };
    (!text.contains('\0')).then_some(text)
}

fn text_diff_response(id: &str, va: &Version, a: &[u8], vb: &Version, b: &[u8]) -> Response {
    let old = format!("{id}@{}", va.number);
    let new = format!("{id}@{}", vb.number);
    let text = match (text_of(va, a), text_of(vb, b)) {
        (Some(a), Some(b)) => {
            let diff = similar::TextDiff::configure()
                .algorithm(similar::Algorithm::Myers)
                .deadline(std::time::Instant::now() + DIFF_DEADLINE)
                .diff_lines(a.as_ref(), b.as_ref());
            diff.unified_diff()
                .context_radius(3)
                .header(&old, &new)
                .to_string()
        }
        _ if va.hash == vb.hash => String::new(),
        _ => format!(
            "Binary versions {old} and {new} differ ({} -> {} bytes, {} -> {})\n",
            va.size,
            vb.size,
            short(&va.hash),
            short(&vb.hash)
        ),
    };
    ([(header::CONTENT_TYPE, "text/x-diff; charset=utf-8")], text).into_response()
}

fn short(hash: &[u8]) -> String {
    hex(&hash[..hash.len().min(6)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(content_type: Option<&str>, at_ms: u64) -> Version {
        Version {
            number: 1,
            fetched_at_ms: at_ms,
            hash: [7; 32],
            size: 3,
            content_type: content_type.map(str::to_owned),
            headers: Vec::new(),
        }
    }

    #[test]
    fn conditional_headers() {
        let v = version(None, 1_700_000_000_500);
        let tag = etag(&v);
        let mut h = HeaderMap::new();
        assert!(!not_modified(&h, &v));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"x\", W/{tag}")).unwrap(),
        );
        assert!(not_modified(&h, &v), "weak comparison matches");
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        // An ETag that does not match wins over a matching date.
        h.insert(
            header::IF_MODIFIED_SINCE,
            HeaderValue::from_str(&last_modified(&v)).unwrap(),
        );
        assert!(!not_modified(&h, &v));
        h.remove(header::IF_NONE_MATCH);
        assert!(not_modified(&h, &v), "same second counts as not modified");
        h.insert(
            header::IF_MODIFIED_SINCE,
            HeaderValue::from_static("Tue, 14 Nov 2023 22:13:19 GMT"),
        );
        assert!(!not_modified(&h, &v));
    }

    #[test]
    fn binary_detection() {
        let is_binary = |ct: Option<&str>, body: &[u8]| text_of(&version(ct, 0), body).is_none();
        assert!(!is_binary(Some("application/json"), b"{}"));
        assert!(!is_binary(None, b"plain"));
        assert!(is_binary(None, b"a\0b"));
        assert!(is_binary(Some("text/plain"), &[0xc3, 0x28]));
        assert!(is_binary(Some("image/png"), b"png"));
        assert!(is_binary(Some("image/png; charset=utf-8"), b"png"));
        assert!(!is_binary(Some("Text/Plain; Charset=latin1"), &[0xe9]));
        assert!(!is_binary(Some("text/plain; charset=no-such"), b"plain"));
        assert!(is_binary(Some("text/plain; charset=no-such"), &[0xe9]));
        // A UTF-16 BOM decides; its NUL bytes are not NUL characters.
        assert!(!is_binary(Some("text/plain"), &[0xff, 0xfe, b'a', 0]));
        assert!(is_binary(Some("text/plain"), &[0xff, 0xfe, 0, 0]));
    }

    #[test]
    fn q_values() {
        assert_eq!(parse_q("1"), Some(1000));
        assert_eq!(parse_q("1.000"), Some(1000));
        assert_eq!(parse_q("0"), Some(0));
        assert_eq!(parse_q("0.5"), Some(500));
        assert_eq!(parse_q("0.05"), Some(50));
        assert_eq!(parse_q("0.001"), Some(1));
        // RFC 9110 12.4.2: `1.` and `0.` are well-formed too.
        assert_eq!(parse_q("1."), Some(1000));
        assert_eq!(parse_q("0."), Some(0));
        for bad in ["", "1.5", "2", "0.0001", "-0", "0.x", "abc", ".5"] {
            assert!(parse_q(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn version_numbers() {
        assert_eq!(parse_n("latest").unwrap(), None);
        assert_eq!(parse_n("12").unwrap(), Some(12));
        assert!(parse_n("-1").is_err());
        assert!(parse_n("Latest").is_err());
    }
}
