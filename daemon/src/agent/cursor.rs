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
pub fn link_next(headers: &HeaderMap, base: &Url) -> Option<Url> {
    headers
        .get_all(http::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| parse_link_header::parse_with_rel(v).ok())
        .find_map(|links| links.get("next").map(|link| link.raw_uri.clone()))
        .and_then(|raw| base.join(&raw).ok())
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
}
