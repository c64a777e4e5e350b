//! Cursors: the URL a cursored poll starts at, and the next cursor read
//! from a JSON body (pointer), a header, or `Link: <...>; rel="next"`.

use http::HeaderMap;
use polld_config::{CursorConfig, CursorSource, Watch};
use url::Url;

/// The URL to request with `cursor`: the cursor itself for `link:next`,
/// else `url` with the cursor in the `param` query parameter (replacing
/// one already there).
pub fn request_url(watch: &Watch, url: &Url, cursor: Option<&str>) -> Url {
    let (Some(config), Some(cursor)) = (&watch.cursor, cursor) else {
        return url.clone();
    };
    match (&config.from, &config.param) {
        (CursorSource::LinkNext, _) => Url::parse(cursor).unwrap_or_else(|_| url.clone()),
        (_, Some(param)) => {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(k, _)| k != param)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let mut next = url.clone();
            {
                let mut query = next.query_pairs_mut();
                query.clear();
                for (k, v) in &pairs {
                    query.append_pair(k, v);
                }
                query.append_pair(param, cursor);
            }
            next
        }
        (_, None) => url.clone(),
    }
}

/// The next cursor a response gives, if any.
pub fn next_cursor(
    config: &CursorConfig,
    base: &Url,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<String> {
    match &config.from {
        CursorSource::Json(pointer) => {
            let document: serde_json::Value = serde_json::from_slice(body).ok()?;
            match pointer.resolve(&document)? {
                serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        }
        CursorSource::Header(name) => headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty()),
        CursorSource::LinkNext => link_next(headers, base).map(|u| u.to_string()),
    }
}

/// The `rel="next"` target of the `Link` headers, resolved against `base`.
/// The first link whose relation types include `next` (compared without
/// regard to case) wins; a link value that does not parse is skipped, not
/// the whole header.
pub fn link_next(headers: &HeaderMap, base: &Url) -> Option<Url> {
    headers
        .get_all(http::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            links(v).into_iter().find_map(|(target, rel)| {
                rel.split_ascii_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("next"))
                    .then_some(target)
            })
        })
        .and_then(|raw| base.join(raw.trim()).ok())
}

/// The link values of one `Link` field (RFC 8288 §3): each target with
/// the value of its first `rel` parameter, if any. The grammar is followed
/// rather than split at every `,` and `;`: a URI may hold commas
/// (`?sort=name,asc`) and query parameters without `=`, a quoted parameter
/// value commas and semicolons, and a parameter may have no value at all.
/// A malformed link value is skipped up to the next `,` between links.
fn links(field: &str) -> Vec<(&str, String)> {
    let bytes = field.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < bytes.len() && matches!(bytes[*i], b' ' | b'\t') {
            *i += 1;
        }
    };
    while i < bytes.len() {
        skip_ws(&mut i);
        if i < bytes.len() && bytes[i] == b',' {
            i += 1;
            continue;
        }
        if i >= bytes.len() {
            break;
        }
        let target = if bytes[i] == b'<' {
            field[i + 1..].find('>').map(|end| {
                let target = &field[i + 1..i + 1 + end];
                i += end + 2;
                target
            })
        } else {
            None
        };
        let mut rel: Option<String> = None;
        let mut broken = target.is_none();
        // Parameters: `; name [= token / quoted-string]`, up to the `,`
        // that ends the link value.
        loop {
            skip_ws(&mut i);
            if i >= bytes.len() {
                break;
            }
            if broken || bytes[i] != b';' {
                if bytes[i] != b',' {
                    broken = true;
                    // Skip to the next `,` outside a quoted string.
                    let mut quoted = false;
                    while i < bytes.len() && (quoted || bytes[i] != b',') {
                        match bytes[i] {
                            b'\\' if quoted => i += 1,
                            b'"' => quoted = !quoted,
                            _ => {}
                        }
                        i += 1;
                    }
                }
                break;
            }
            i += 1;
            skip_ws(&mut i);
            let start = i;
            while i < bytes.len() && !matches!(bytes[i], b'=' | b';' | b',' | b' ' | b'\t') {
                i += 1;
            }
            let name = &field[start..i];
            skip_ws(&mut i);
            let mut value = String::new();
            if i < bytes.len() && bytes[i] == b'=' {
                i += 1;
                skip_ws(&mut i);
                if i < bytes.len() && bytes[i] == b'"' {
                    i += 1;
                    while i < bytes.len() && bytes[i] != b'"' {
                        if bytes[i] == b'\\' && i + 1 < bytes.len() {
                            i += 1;
                        }
                        let c = field[i..].chars().next().unwrap_or_default();
                        value.push(c);
                        i += c.len_utf8();
                    }
                    i += 1;
                } else {
                    let start = i;
                    while i < bytes.len() && !matches!(bytes[i], b';' | b',' | b' ' | b'\t') {
                        i += 1;
                    }
                    value.push_str(&field[start..i]);
                }
            }
            if rel.is_none() && name.eq_ignore_ascii_case("rel") {
                rel = Some(value);
            }
        }
        if !broken && let Some(target) = target {
            out.push((target, rel.unwrap_or_default()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_next_is_found_and_resolved() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "link",
            "</items?page=2>; rel=\"next\", <https://a.example/items?page=9>; rel=\"last\""
                .parse()
                .unwrap(),
        );
        let base = Url::parse("https://a.example/items?page=1").unwrap();
        assert_eq!(
            link_next(&headers, &base).unwrap().as_str(),
            "https://a.example/items?page=2"
        );
        assert!(link_next(&HeaderMap::new(), &base).is_none());
    }

    fn next_of(values: &[&str]) -> Option<String> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("link", v.parse().unwrap());
        }
        let base = Url::parse("https://a.example/items?page=1").unwrap();
        link_next(&headers, &base).map(|u| u.to_string())
    }

    /// RFC 8288 link values as servers send them: commas and valueless
    /// parameters inside the URI, links without `rel`, parameters without a
    /// value, relation lists, any case, quoted commas.
    #[test]
    fn link_next_reads_every_rfc_8288_form() {
        let next = |v: &str| next_of(&[v]);
        let page2 = Some("https://a.example/items?page=2".to_owned());
        // Spring Data REST: a comma in the query.
        assert_eq!(
            next("<https://a.example/items?page=2&sort=name,asc>; rel=\"next\""),
            Some("https://a.example/items?page=2&sort=name,asc".to_owned())
        );
        assert_eq!(
            next("<https://a.example/items?page=2&pretty>; rel=\"next\""),
            Some("https://a.example/items?page=2&pretty".to_owned()),
            "a query parameter without a value"
        );
        assert_eq!(
            next("</style.css>; as=style; rel=preload, </items?page=2>; rel=next"),
            page2
        );
        assert_eq!(
            next("</style.css>; as=style, </items?page=2>; rel=next"),
            page2,
            "another link without rel does not hide rel=next"
        );
        assert_eq!(
            next("</x>; crossorigin; rel=preload, </items?page=2>; rel=\"next\""),
            page2,
            "a parameter without a value"
        );
        assert_eq!(next("</items?page=2>; rel=\"prefetch next\""), page2);
        assert_eq!(next("</items?page=2>; REL=Next"), page2, "case-insensitive");
        assert_eq!(
            next("</items?page=9>; rel=\"last\"; title=\"a, rel=next\", </items?page=2>; rel=next"),
            page2,
            "a quoted comma is not a separator"
        );
        assert_eq!(
            next("</items?page=2> ; rel = \"next\" "),
            page2,
            "whitespace around ';' and '='"
        );
        assert_eq!(next("</items?page=2>; rel=\"nextish\""), None);
        assert_eq!(next("</items?page=2>; title=next"), None);
        // The first rel parameter counts (RFC 8288 §3.3).
        assert_eq!(next("</items?page=2>; rel=prev; rel=next"), None);
        // A broken link value does not hide a good one after it.
        assert_eq!(next("garbage, </items?page=2>; rel=next"), page2);
        assert_eq!(
            next_of(&["</items?page=9>; rel=last", "</items?page=2>; rel=next"]),
            page2
        );
        // Truncated or odd fields end the parse, never panic.
        for odd in [
            "<",
            "<a",
            ";",
            "<a>;",
            "<a>; rel=\"",
            "<a>; rel=\"\\",
            "<a>;;rel=next;",
            "ü<ä>; rel=\"ö\\ü\", <b>; rel=next",
            ",,,",
            "<a>; =x",
            "<a> x; rel=next",
        ] {
            let _ = next(odd);
        }
        assert_eq!(
            next("<a>; rel=\"x\\\"y\", <https://b.example/2>; rel=next"),
            Some("https://b.example/2".to_owned())
        );
    }
}
