//! Which redirects the agent follows: http(s) targets only, and never from
//! a public address to a loopback, private or link-local one (a watch that
//! names such an address directly is the operator's choice). A name is
//! judged by the addresses it resolves to, when connecting
//! ([`needs_public_address`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

use crate::redact;

/// Whether a host is loopback, private, link-local or unspecified, judged
/// from literal addresses and the name `localhost` (names are not resolved
/// here).
pub fn is_internal(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => internal_v4(ip),
        Some(Host::Ipv6(ip)) => internal_v6(ip),
        Some(Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        None => true,
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        // 0.0.0.0/8, "this network": Linux connects 0.x.y.z to this host
        || ip.octets()[0] == 0
        // 100.64.0.0/10, carrier-grade NAT
        || (ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64)
}

fn internal_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return internal_v4(v4);
    }
    let segments = ip.segments();
    // An IPv4 address inside an IPv6 one: IPv4-compatible `::a.b.c.d`
    // (deprecated, `::` and `::1` aside) and NAT64's well-known prefix
    // 64:ff9b::/96, which a NAT64 gateway translates to that IPv4 address.
    let embedded = Ipv4Addr::from(ip.to_bits() as u32);
    if (segments[..6] == [0; 6] && ip.to_bits() > 1) || segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
    {
        return internal_v4(embedded);
    }
    let first = segments[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
}

/// Why a redirect is refused, if it is.
pub fn refusal(from: &Url, to: &Url, allow_internal: bool) -> Option<String> {
    if !matches!(to.scheme(), "http" | "https") {
        return Some(format!(
            "redirect to {} refused: only http and https are followed",
            redact::url(to)
        ));
    }
    if !allow_internal && !is_internal(from) && is_internal(to) {
        return Some(format!(
            "redirect from {} to the internal address {} refused",
            redact::url(from),
            redact::url(to)
        ));
    }
    None
}

/// Whether a request to `to`, reached from `from` in a poll of a watch
/// configured at `configured`, goes out on the public-only client
/// ([`super::transport::Transport::public_only`]): a name (literal
/// addresses are judged by [`refusal`]) on another host than the watch's
/// own, reached from a public one. A name is only known to be internal once
/// resolved, and [`refusal`] judges names by their text.
pub fn needs_public_address(configured: &Url, from: &Url, to: &Url, allow_internal: bool) -> bool {
    !allow_internal
        && matches!(to.host(), Some(Host::Domain(_)))
        && to.host() != configured.host()
        && !is_internal(from)
}

/// Whether a permanent redirect from `from` to `to` may re-point a watch.
/// A move from https to plain http is followed for the poll but never
/// re-points: every later answer could then be altered in transit.
pub fn may_re_point(from: &Url, to: &Url) -> bool {
    !(from.scheme() == "https" && to.scheme() != "https")
}

/// Whether two URLs share an origin (scheme, host and port).
pub fn same_origin(a: &Url, b: &Url) -> bool {
    // `Url::origin` allocates; this runs twice per poll, so compare the
    // parts directly for the tuple origins of http(s) (RFC 6454 §4).
    if matches!(a.scheme(), "http" | "https") {
        a.scheme() == b.scheme()
            && a.host() == b.host()
            && a.port_or_known_default() == b.port_or_known_default()
    } else {
        a.origin() == b.origin()
    }
}

/// Whether an address is internal (for callers that resolved a name).
pub fn is_internal_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn public_to_internal_is_refused_internal_to_internal_is_not() {
        let public = u("https://example.org/a");
        for target in [
            "http://127.0.0.1/x",
            "http://localhost:8080/",
            "http://10.1.2.3/",
            "http://192.168.0.1/",
            "http://172.16.5.5/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[fe80::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://0.0.0.0/",
            "http://0.1.2.3/",
            // Decimal, octal and short forms are parsed to 127.0.0.1.
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[64:ff9b::10.0.0.1]/",
        ] {
            assert!(refusal(&public, &u(target), false).is_some(), "{target}");
            assert!(
                refusal(&public, &u(target), true).is_none(),
                "{target} allowed when configured"
            );
        }
        assert!(refusal(&public, &u("https://example.com/b"), false).is_none());
        for public_target in [
            "http://[64:ff9b::8.8.8.8]/",
            "http://[2001:db8::1]/",
            "http://8.8.8.8/",
        ] {
            assert!(
                refusal(&public, &u(public_target), false).is_none(),
                "{public_target}"
            );
        }
        let internal = u("http://127.0.0.1:8080/a");
        assert!(refusal(&internal, &u("http://127.0.0.1:9090/b"), false).is_none());
        assert!(refusal(&public, &u("file:///etc/passwd"), true).is_some());
        assert!(refusal(&internal, &u("ftp://127.0.0.1/"), true).is_some());
    }

    #[test]
    fn a_move_to_plain_http_never_re_points_an_https_watch() {
        let secure = u("https://example.org/a");
        assert!(!may_re_point(&secure, &u("http://example.org/a")));
        assert!(!may_re_point(&secure, &u("http://elsewhere.example/a")));
        assert!(may_re_point(&secure, &u("https://example.org/b")));
        // Upgrades and plain-http moves re-point as before.
        let plain = u("http://example.org/a");
        assert!(may_re_point(&plain, &u("https://example.org/a")));
        assert!(may_re_point(&plain, &u("http://example.org/b")));
    }

    #[test]
    fn names_reached_from_public_hosts_need_public_addresses() {
        let watch = u("https://api.example.org/feed");
        let evil = u("http://127.0.0.1.nip.io/x");
        // A redirect (or next page, job) from the watch's host to a name.
        assert!(needs_public_address(&watch, &watch, &evil, false));
        assert!(!needs_public_address(&watch, &watch, &evil, true));
        // And on from there, on that host too.
        assert!(needs_public_address(
            &watch,
            &evil,
            &u("http://127.0.0.1.nip.io/y"),
            false
        ));
        // A re-pointed watch's first request is a hop from its configured URL.
        assert!(needs_public_address(
            &watch,
            &watch,
            &u("https://moved.example/"),
            false
        ));
        // The watch's own host is the operator's choice.
        assert!(!needs_public_address(
            &watch,
            &watch,
            &u("https://API.example.org/b"),
            false
        ));
        assert!(!needs_public_address(
            &watch,
            &evil,
            &u("https://api.example.org/c"),
            false
        ));
        // Literals are judged by `refusal`; internal sources may go anywhere.
        assert!(!needs_public_address(
            &watch,
            &watch,
            &u("http://10.0.0.1/"),
            false
        ));
        let internal = u("http://127.0.0.1:8080/");
        assert!(!needs_public_address(
            &internal,
            &internal,
            &u("http://svc.lan/"),
            false
        ));
    }

    #[test]
    fn origins() {
        assert!(same_origin(
            &u("https://A.example:443/x"),
            &u("https://a.example/y?q")
        ));
        assert!(!same_origin(
            &u("https://a.example/"),
            &u("https://b.example/")
        ));
        assert!(!same_origin(
            &u("http://a.example/"),
            &u("ftp://a.example/")
        ));
        assert!(same_origin(
            &u("http://a.example/x"),
            &u("http://a.example:80/y")
        ));
        assert!(!same_origin(
            &u("http://127.0.0.1:1/"),
            &u("http://127.0.0.1:2/")
        ));
        assert!(!same_origin(
            &u("http://a.example/"),
            &u("https://a.example/")
        ));
    }
}
