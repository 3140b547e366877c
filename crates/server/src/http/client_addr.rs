//! The client's address. Behind a load balancer every request comes from
//! the balancer: a limit or an audit entry keyed on the peer would lump the
//! whole fleet together (and one client failing its credentials would block
//! every host). When the peer is a trusted proxy (`--trusted-proxy`), the
//! client is the right-most address of `X-Forwarded-For` (or `Forwarded:
//! for=`) that is not itself a trusted proxy; otherwise those headers are
//! ignored, since any client can send them.
//!
//! Owns: that one decision, made once per request. The layer replaces the
//! request's `ConnectInfo<SocketAddr>` with the client's address (port 0
//! when forwarded), so every reader of the caller's address sees the same
//! one. Must not: know credentials or routes.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

use crate::AppState;

/// The client behind `peer`, given the request's headers.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Every hop the proxies appended, left (first) to right (last).
    let mut hops: Vec<IpAddr> = Vec::new();
    for v in headers.get_all("forwarded") {
        let Ok(v) = v.to_str() else { continue };
        for element in v.split(',') {
            for pair in element.split(';') {
                let Some((k, val)) = pair.trim().split_once('=') else {
                    continue;
                };
                if k.trim().eq_ignore_ascii_case("for") {
                    if let Some(ip) = parse_node(val.trim().trim_matches('"')) {
                        hops.push(ip);
                    }
                }
            }
        }
    }
    if hops.is_empty() {
        for v in headers.get_all("x-forwarded-for") {
            let Ok(v) = v.to_str() else { continue };
            hops.extend(v.split(',').filter_map(|h| parse_node(h.trim())));
        }
    }
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

/// `1.2.3.4`, `1.2.3.4:80`, `[::1]`, `[::1]:80` or `::1`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.split(']').next())
        .and_then(|ip| ip.parse().ok())
}

/// Replaces the peer's address with the client's, when a trusted proxy
/// forwarded it.
pub async fn layer(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let trusted = &state.http.trusted_proxies;
    if !trusted.is_empty() {
        if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied()
        {
            let client = client_ip(peer.ip(), req.headers(), trusted);
            if client != peer.ip() {
                req.extensions_mut()
                    .insert(ConnectInfo(SocketAddr::new(client, 0)));
            }
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_a_trusted_proxy() {
        let lb: IpAddr = "10.0.0.5".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/24".parse().unwrap()];
        let xff = h(&[("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(
            client_ip(lb, &xff, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // Not trusted: the header is anyone's to send.
        let other: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(client_ip(other, &xff, &trusted), other);
        assert_eq!(client_ip(lb, &xff, &[]), lb);
        // A client's own forged entries stand left of what the proxy added.
        let forged = h(&[("x-forwarded-for", "203.0.113.1, 198.51.100.7")]);
        assert_eq!(
            client_ip(lb, &forged, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // Two proxies in the chain, both trusted.
        let chain = h(&[("x-forwarded-for", "198.51.100.7, 10.0.0.9")]);
        assert_eq!(
            client_ip(lb, &chain, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // RFC 7239, with ports and IPv6.
        let fwd = h(&[(
            "forwarded",
            "for=\"[2001:db8::7]:4711\";proto=https, for=10.0.0.9",
        )]);
        assert_eq!(
            client_ip(lb, &fwd, &trusted),
            "2001:db8::7".parse::<IpAddr>().unwrap()
        );
        // Garbage: the peer.
        assert_eq!(
            client_ip(lb, &h(&[("x-forwarded-for", "nonsense")]), &trusted),
            lb
        );
    }
}
