//! Where a viewer's WHEP request was addressed, which is an address the viewer can reach by
//! construction: offered back as our passive ICE-TCP candidate.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::http::uri::Authority;

use super::listener::ConnInfo;
use super::media::TcpCandidate;

/// The TCP candidate for a request: its `Host` (or, behind a trusted proxy, `X-Forwarded-Host`
/// / `Forwarded: host=`), with the port the viewer used. A host name is kept as a name for the
/// answer, with the connection's own address given to the WebRTC stack in its place.
pub fn tcp_candidate(
    headers: &HeaderMap,
    conn: &ConnInfo,
    trust_forwarded: bool,
) -> Option<TcpCandidate> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or(v).trim().to_owned())
    };
    let forwarded = trust_forwarded
        .then(|| header("x-forwarded-host").or_else(|| forwarded_param(headers, "host")))
        .flatten();
    let authority: Authority = forwarded.or_else(|| header("host"))?.parse().ok()?;
    let default_port = match trust_forwarded {
        true => header("x-forwarded-port")
            .and_then(|p| p.parse().ok())
            .or_else(|| match header("x-forwarded-proto").as_deref() {
                Some("https") => Some(443),
                _ => None,
            }),
        false => None,
    };
    let port = authority.port_u16().or(default_port).unwrap_or(80);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => Some(TcpCandidate {
            addr: SocketAddr::new(ip.to_canonical(), port),
            host: None,
        }),
        Err(_) => Some(TcpCandidate {
            addr: SocketAddr::new(conn.local.ip().to_canonical(), port),
            host: Some(host.to_ascii_lowercase()),
        }),
    }
}

/// How long an offer may wait for the name the viewer used to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_millis(500);

/// Turns a host-name candidate into an IP one when the name resolves here: browsers do not
/// reliably use host-name candidates (Firefox ignores them, RFC 8839; Chromium did not connect
/// through one in our namespace test), while the address a public name resolves to is the one
/// the viewer reached. Left as a name when it does not resolve in time.
pub async fn resolve(candidate: TcpCandidate) -> TcpCandidate {
    let Some(name) = candidate.host.clone() else {
        return candidate;
    };
    let port = candidate.addr.port();
    let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port)));
    let addrs: Vec<SocketAddr> = match lookup.await {
        Ok(Ok(addrs)) => addrs.collect(),
        _ => return candidate,
    };
    match addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()) {
        Some(addr) => TcpCandidate {
            addr: SocketAddr::new(addr.ip().to_canonical(), port),
            host: None,
        },
        None => candidate,
    }
}

/// A parameter of the first element of an RFC 7239 `Forwarded` header.
fn forwarded_param(headers: &HeaderMap, name: &str) -> Option<String> {
    let value = headers.get("forwarded")?.to_str().ok()?;
    let first = value.split(',').next()?;
    first.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim_matches('"').to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> ConnInfo {
        ConnInfo {
            peer: "192.0.2.9:50000".parse().unwrap(),
            local: "10.1.2.3:8080".parse().unwrap(),
        }
    }

    fn candidate(pairs: &[(&str, &str)], trust: bool) -> Option<TcpCandidate> {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        tcp_candidate(&headers, &conn(), trust)
    }

    fn ip(addr: &str) -> Option<TcpCandidate> {
        Some(TcpCandidate {
            addr: addr.parse().unwrap(),
            host: None,
        })
    }

    #[test]
    fn ip_hosts_become_the_candidate() {
        assert_eq!(
            candidate(&[("host", "127.0.0.1:8080")], false),
            ip("127.0.0.1:8080")
        );
        assert_eq!(
            candidate(&[("host", "[::1]:9000")], false),
            ip("[::1]:9000")
        );
        assert_eq!(
            candidate(&[("host", "198.51.100.4")], false),
            ip("198.51.100.4:80")
        );
        assert_eq!(candidate(&[], false), None);
        assert_eq!(candidate(&[("host", "bad host:x")], false), None);
    }

    #[test]
    fn names_are_kept_for_the_answer() {
        assert_eq!(
            candidate(&[("host", "Egress.example.org:8443")], false),
            Some(TcpCandidate {
                addr: "10.1.2.3:8443".parse().unwrap(),
                host: Some("egress.example.org".into()),
            })
        );
    }

    #[tokio::test]
    async fn names_that_resolve_become_addresses() {
        let named = |host: &str| TcpCandidate {
            addr: "10.1.2.3:8443".parse().unwrap(),
            host: Some(host.into()),
        };
        let resolved = resolve(named("localhost")).await;
        assert!(resolved.addr.ip().is_loopback(), "{resolved:?}");
        assert_eq!((resolved.addr.port(), resolved.host), (8443, None));
        let unresolved = named("no-such-host.invalid");
        assert_eq!(resolve(unresolved.clone()).await, unresolved);
        let ip = ip("203.0.113.5:80").unwrap();
        assert_eq!(resolve(ip.clone()).await, ip);
    }

    #[test]
    fn forwarded_headers_count_only_when_trusted() {
        let proxied = [
            ("host", "10.0.0.5:8080"),
            ("x-forwarded-host", "203.0.113.8, 10.0.0.1"),
            ("x-forwarded-port", "8000"),
        ];
        assert_eq!(candidate(&proxied, false), ip("10.0.0.5:8080"));
        assert_eq!(candidate(&proxied, true), ip("203.0.113.8:8000"));
        let rfc7239 = [
            ("host", "10.0.0.5:8080"),
            (
                "forwarded",
                "for=192.0.2.60;proto=http;host=\"203.0.113.9:7000\"",
            ),
        ];
        assert_eq!(candidate(&rfc7239, true), ip("203.0.113.9:7000"));
        let https = [
            ("host", "10.0.0.5"),
            ("x-forwarded-host", "203.0.113.8"),
            ("x-forwarded-proto", "https"),
        ];
        assert_eq!(candidate(&https, true), ip("203.0.113.8:443"));
    }
}
