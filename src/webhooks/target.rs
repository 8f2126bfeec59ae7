//! Where a webhook may go. A URL that a client, a key's settings or the configuration names
//! is parsed as a URL (not matched as text), and:
//!
//! * has no user information (`http://localhost:1@evil.example/` names evil.example);
//! * is `https://`, or `http://` only to a loopback address (tests, a local relay);
//! * may reach a loopback, private, link-local (cloud metadata), shared, multicast or
//!   otherwise non-public address only if the operator lists its network in
//!   `webhooks.allow_networks`.
//!
//! The URL is checked when it is given (an address written in it, or `localhost`), and every
//! name is resolved again right before each delivery, which then connects to exactly the
//! address that was checked: a name that changes its answer in between (DNS rebinding) gains
//! nothing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::IpNet;
use url::{Host, Url};

/// Why a webhook URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not a URL, or longer than 2048 characters.
    #[error("not a valid URL")]
    Syntax,
    /// Neither https nor http.
    #[error("only https:// URLs (http:// to a loopback address)")]
    Scheme,
    /// `user:password@` in it.
    #[error("user information in a URL is not accepted")]
    UserInfo,
    /// `http://` to something other than a loopback address.
    #[error("http:// only to a loopback address; use https://")]
    PlainHttp,
    /// An address outside the public internet that no `webhooks.allow_networks` entry lists.
    #[error("{0} is not a public address (list its network in webhooks.allow_networks to allow it)")]
    NotPublic(IpAddr),
    /// The name did not resolve.
    #[error("the host name does not resolve")]
    Unresolved,
}

/// The networks the operator allows beyond the public internet.
#[derive(Debug, Clone, Default)]
pub struct TargetPolicy {
    allow: Vec<IpNet>,
}

impl TargetPolicy {
    /// From `webhooks.allow_networks` (CIDR strings; a bad one is an error naming it).
    pub fn new(networks: &[String]) -> Result<TargetPolicy, String> {
        let allow = networks
            .iter()
            .map(|n| n.parse::<IpNet>().or_else(|_| n.parse::<IpAddr>().map(IpNet::from)).map_err(|_| n.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|bad| format!("'{bad}' is not a network (CIDR such as 10.1.0.0/16) or an address"))?;
        Ok(TargetPolicy { allow })
    }

    /// Whether a delivery may connect to `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        is_public(ip) || self.allow.iter().any(|n| n.contains(&ip))
    }

    /// Checks a URL as it is given (see the module docs); the parsed URL.
    pub fn check(&self, url: &str) -> Result<Url, TargetError> {
        if url.len() > 2048 {
            return Err(TargetError::Syntax);
        }
        let parsed = Url::parse(url).map_err(|_| TargetError::Syntax)?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(TargetError::UserInfo);
        }
        let https = match parsed.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(TargetError::Scheme),
        };
        let written: Option<Vec<IpAddr>> = match parsed.host() {
            None => return Err(TargetError::Syntax),
            Some(Host::Ipv4(a)) => Some(vec![IpAddr::V4(a)]),
            Some(Host::Ipv6(a)) => Some(vec![IpAddr::V6(a)]),
            Some(Host::Domain(d))
                if d.eq_ignore_ascii_case("localhost") || d.to_ascii_lowercase().ends_with(".localhost") =>
            {
                Some(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)])
            }
            Some(Host::Domain(_)) => None,
        };
        if !https && !written.as_ref().is_some_and(|ips| ips.iter().all(|ip| canonical(*ip).is_loopback())) {
            return Err(TargetError::PlainHttp);
        }
        if let Some(ips) = written
            && let Some(bad) = ips.into_iter().find(|ip| !self.allows(*ip))
        {
            return Err(TargetError::NotPublic(bad));
        }
        Ok(parsed)
    }

    /// Resolves a checked URL's host right before a delivery: the first of its addresses that
    /// is allowed, which is the one the delivery connects to.
    pub async fn resolve(&self, url: &Url) -> Result<SocketAddr, TargetError> {
        let port = url.port_or_known_default().ok_or(TargetError::Syntax)?;
        let addrs: Vec<SocketAddr> = match url.host() {
            Some(Host::Ipv4(a)) => vec![SocketAddr::new(IpAddr::V4(a), port)],
            Some(Host::Ipv6(a)) => vec![SocketAddr::new(IpAddr::V6(a), port)],
            Some(Host::Domain(d)) => {
                tokio::net::lookup_host((d, port)).await.map_err(|_| TargetError::Unresolved)?.collect()
            }
            None => return Err(TargetError::Syntax),
        };
        match addrs.iter().find(|a| self.allows(a.ip())) {
            Some(a) => Ok(*a),
            None => Err(addrs.first().map(|a| TargetError::NotPublic(a.ip())).unwrap_or(TargetError::Unresolved)),
        }
    }
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) is that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// An address on the public internet: not loopback, private, link-local (cloud metadata
/// lives there), shared (CGNAT), benchmarking, documentation, multicast, broadcast, reserved
/// or unspecified; for IPv6 also not unique-local, and not an IPv4 address in disguise that
/// is one of those.
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(a) => {
            let [o0, o1, o2, _] = a.octets();
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_broadcast()
                || a.is_documentation()
                || a.is_multicast()
                || o0 == 0
                || (o0 == 100 && (o1 & 0xC0) == 64)
                || (o0 == 192 && o1 == 0 && o2 == 0)
                || (o0 == 198 && (o1 & 0xFE) == 18)
                || o0 >= 240)
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
                return is_public(IpAddr::V4(v4));
            }
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || (s[0] & 0xFE00) == 0xFC00
                || (s[0] & 0xFFC0) == 0xFE80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(nets: &[&str]) -> TargetPolicy {
        TargetPolicy::new(&nets.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn urls_that_name_another_host_than_they_seem_are_refused() {
        let p = policy(&["127.0.0.0/8"]);
        assert_eq!(p.check("http://localhost:1@evil.example/h").unwrap_err(), TargetError::UserInfo);
        assert_eq!(p.check("https://user:pw@hooks.example.com/").unwrap_err(), TargetError::UserInfo);
        assert_eq!(p.check("http://127.0.0.1.evil.example/h").unwrap_err(), TargetError::PlainHttp);
        assert_eq!(p.check("http://hooks.example.com/h").unwrap_err(), TargetError::PlainHttp);
        assert_eq!(p.check("ftp://hooks.example.com/").unwrap_err(), TargetError::Scheme);
        assert_eq!(p.check("not a url").unwrap_err(), TargetError::Syntax);
        assert!(p.check(&format!("https://a.example/{}", "x".repeat(2100))).is_err());
        // Addresses written in other forms are still the addresses they are.
        for hidden in ["https://2130706433/x", "https://0x7f.1/x", "https://[::ffff:169.254.169.254]/x"] {
            let parsed = policy(&[]).check(hidden);
            assert!(matches!(parsed, Err(TargetError::NotPublic(_))), "{hidden}: {parsed:?}");
        }
        assert!(p.check("http://127.0.0.1:8080/ok").is_ok());
        assert!(p.check("http://localhost/ok").is_ok());
        assert!(matches!(policy(&[]).check("https://localhost/"), Err(TargetError::NotPublic(_))));
        assert!(p.check("https://hooks.example.com/ok").is_ok(), "names are checked when they are resolved");
    }

    #[test]
    fn only_public_addresses_unless_allowed() {
        let none = policy(&[]);
        for bad in [
            "https://10.0.0.5/",
            "https://169.254.169.254/latest",
            "https://[::1]/",
            "https://100.64.1.1/",
            "https://[fd00:ec2::254]/",
            "https://192.168.1.1/",
            "https://0.0.0.0/",
        ] {
            assert!(matches!(none.check(bad), Err(TargetError::NotPublic(_))), "{bad}");
        }
        assert!(none.check("https://93.184.215.14/").is_ok());
        assert!(policy(&["10.0.0.0/8"]).check("https://10.0.0.5/").is_ok());
        assert!(policy(&["169.254.169.254"]).allows("169.254.169.254".parse().unwrap()));
        assert!(!is_public("64:ff9b::a9fe:a9fe".parse().unwrap()), "NAT64 of the metadata address");
        assert!(TargetPolicy::new(&["10.0.0.0/33".into()]).is_err());
    }
}
