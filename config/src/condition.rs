//! Conditions on a response (`status=200`, `json:/status=completed`,
//! `json:/id`, `!json:/errors`, `header:X-Job-Status=finished`), shared by
//! `polld await` and the `until` / `fail_if` keys of a watch, and the JSON
//! pointers (RFC 6901) they and cursors use.

use std::fmt;
use std::str::FromStr;

use http::{HeaderMap, HeaderName};
use serde_json::Value;

/// Why a condition or pointer could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConditionError(String);

/// A validated JSON pointer (RFC 6901): empty, or `/`-separated tokens in
/// which `~` only appears as `~0` or `~1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JsonPointer(String);

impl JsonPointer {
    /// The value the pointer designates in `document`, if any.
    pub fn resolve<'v>(&self, document: &'v Value) -> Option<&'v Value> {
        document.pointer(&self.0)
    }

    /// The pointer as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for JsonPointer {
    type Err = ConditionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if !text.is_empty() && !text.starts_with('/') {
            return Err(ConditionError(format!(
                "invalid JSON pointer {text:?}: it must start with \"/\" (e.g. \"/status\")"
            )));
        }
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                return Err(ConditionError(format!(
                    "invalid JSON pointer {text:?}: \"~\" must be written \"~0\" and \"/\" inside a key \"~1\""
                )));
            }
        }
        Ok(JsonPointer(text.to_owned()))
    }
}

impl fmt::Display for JsonPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A condition on one response.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `status=200`: the final status code is this one.
    Status(u16),
    /// `json:/pointer=value`: the pointer designates this JSON value, or a
    /// string equal to the text after `=`.
    JsonEquals {
        /// Where in the body.
        pointer: JsonPointer,
        /// The text after `=`, as written.
        raw: String,
        /// The text after `=` read as JSON, when it is JSON.
        value: Option<Value>,
    },
    /// `json:/pointer`: the body is JSON and the pointer designates a value.
    JsonExists(JsonPointer),
    /// `!json:/pointer`: the body is not JSON or the pointer designates nothing.
    JsonAbsent(JsonPointer),
    /// `header:Name=value`: the response has this header with exactly this value.
    HeaderEquals {
        /// Header name (case-insensitive).
        name: HeaderName,
        /// Expected value.
        value: String,
    },
    /// `header:Name`: the response has this header.
    HeaderExists(HeaderName),
}

/// A response as conditions see it: status, headers, and the body parsed as
/// JSON once (None when it is not JSON).
#[derive(Debug)]
pub struct ResponseView<'a> {
    status: u16,
    headers: &'a HeaderMap,
    json: Option<Value>,
}

impl<'a> ResponseView<'a> {
    /// Builds a view; the body is parsed as JSON here, once.
    pub fn new(status: u16, headers: &'a HeaderMap, body: &[u8]) -> Self {
        ResponseView {
            status,
            headers,
            json: serde_json::from_slice(body).ok(),
        }
    }

    /// The body as JSON, when it is JSON.
    pub fn json(&self) -> Option<&Value> {
        self.json.as_ref()
    }
}

impl Condition {
    /// Whether the condition holds for `response`.
    pub fn holds(&self, response: &ResponseView<'_>) -> bool {
        let lookup = |pointer: &JsonPointer| response.json().and_then(|doc| pointer.resolve(doc));
        match self {
            Condition::Status(code) => response.status == *code,
            Condition::JsonEquals {
                pointer,
                raw,
                value,
            } => match lookup(pointer) {
                Some(found) => {
                    value.as_ref() == Some(found)
                        || found.as_str() == Some(raw.as_str())
                        || same_number(value.as_ref(), found)
                }
                None => false,
            },
            Condition::JsonExists(pointer) => lookup(pointer).is_some(),
            Condition::JsonAbsent(pointer) => lookup(pointer).is_none(),
            Condition::HeaderEquals { name, value } => response
                .headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.trim() == value)),
            Condition::HeaderExists(name) => response.headers.contains_key(name),
        }
    }
}

/// Whether two JSON numbers are the same number written differently (`3`
/// and `3.0`, `1e2` and `100`): serde_json tells integers from floats.
fn same_number(expected: Option<&serde_json::Value>, found: &serde_json::Value) -> bool {
    match (expected.and_then(serde_json::Value::as_f64), found.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

impl FromStr for Condition {
    type Err = ConditionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let expected = || {
            ConditionError(format!(
                "invalid condition {text:?}; expected status=CODE, json:/POINTER=VALUE, json:/POINTER, !json:/POINTER, header:NAME=VALUE or header:NAME"
            ))
        };
        if let Some(code) = text.strip_prefix("status=") {
            return match code.trim().parse::<u16>() {
                Ok(code) if (100..=599).contains(&code) => Ok(Condition::Status(code)),
                _ => Err(ConditionError(format!(
                    "invalid condition {text:?}: {code:?} is not an HTTP status code (100-599)"
                ))),
            };
        }
        if let Some(pointer) = text.strip_prefix("!json:") {
            return Ok(Condition::JsonAbsent(pointer.parse()?));
        }
        if let Some(rest) = text.strip_prefix("json:") {
            return Ok(match rest.split_once('=') {
                Some((pointer, raw)) => Condition::JsonEquals {
                    pointer: pointer.parse()?,
                    raw: raw.to_owned(),
                    value: serde_json::from_str(raw).ok(),
                },
                None => Condition::JsonExists(rest.parse()?),
            });
        }
        if let Some(rest) = text.strip_prefix("header:") {
            let (name, value) = match rest.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (rest, None),
            };
            let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                ConditionError(format!(
                    "invalid condition {text:?}: {name:?} is not a header name"
                ))
            })?;
            return Ok(match value {
                Some(value) => Condition::HeaderEquals {
                    name,
                    value: value.trim().to_owned(),
                },
                None => Condition::HeaderExists(name),
            });
        }
        Err(expected())
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Status(code) => write!(f, "status={code}"),
            Condition::JsonEquals { pointer, raw, .. } => write!(f, "json:{pointer}={raw}"),
            Condition::JsonExists(pointer) => write!(f, "json:{pointer}"),
            Condition::JsonAbsent(pointer) => write!(f, "!json:{pointer}"),
            Condition::HeaderEquals { name, value } => write!(f, "header:{name}={value}"),
            Condition::HeaderExists(name) => write!(f, "header:{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(headers: &'a HeaderMap, body: &str) -> ResponseView<'a> {
        ResponseView::new(200, headers, body.as_bytes())
    }

    #[test]
    fn parses_every_form_and_round_trips() {
        for text in [
            "status=200",
            "json:/status=completed",
            "json:/job_id",
            "!json:/errors",
            "header:x-job-status=finished",
            "header:location",
        ] {
            let condition: Condition = text.parse().unwrap();
            assert_eq!(condition.to_string(), text);
        }
        for bad in [
            "status=abc",
            "status=99",
            "json:status",
            "json:/a~2",
            "xml:/a",
            "header:bad name=1",
        ] {
            assert!(bad.parse::<Condition>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn evaluates_against_a_response() {
        let mut headers = HeaderMap::new();
        headers.insert("x-job-status", "finished".parse().unwrap());
        let body = r#"{"status":"completed","count":3,"done":true,"a/b":{"~":1}}"#;
        let response = view(&headers, body);
        let holds = |c: &str| c.parse::<Condition>().unwrap().holds(&response);
        assert!(holds("status=200"));
        assert!(!holds("status=202"));
        assert!(holds("json:/status=completed"));
        assert!(holds("json:/status=\"completed\""));
        assert!(!holds("json:/status=failed"));
        assert!(holds("json:/count=3"));
        // The same number written another way.
        assert!(holds("json:/count=3.0"));
        assert!(holds("json:/count=3e0"));
        assert!(!holds("json:/count=3.5"));
        assert!(!holds("json:/status=3"));
        assert!(holds("json:/done=true"));
        assert!(holds("json:/a~1b/~0"));
        assert!(holds("!json:/errors"));
        assert!(!holds("json:/errors"));
        assert!(holds("header:X-Job-Status=finished"));
        assert!(!holds("header:X-Job-Status=running"));
        let text = view(&headers, "not json");
        assert!("!json:/status".parse::<Condition>().unwrap().holds(&text));
        assert!(!"json:/status".parse::<Condition>().unwrap().holds(&text));
    }
}
