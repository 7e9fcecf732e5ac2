//! Who sent a request, when no verified identity says so: its address.
//!
//! Used to key anonymous rate limits and the throttle on failed token
//! verifications. A client must not be able to choose its own key, so the
//! address is either the one Envoy computed for the connection (with
//! `use_remote_address` and `xff_num_trusted_hops` set on the listener,
//! that is already the real client behind trusted proxies), or the
//! `X-Forwarded-For` element appended by the outermost trusted proxy: the
//! `trusted_hops`-th from the right. Never the first element, which the
//! client writes itself.
//!
//! IPv6 clients usually own a whole /64 (or more), so IPv6 addresses are
//! aggregated to a configurable prefix; IPv4 addresses optionally too.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Deserialize;

use crate::config::ConfigError;
use crate::http::RequestHead;

/// Where the client address comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "snake_case")]
pub enum ClientSource {
    /// The downstream address Envoy computed (`source.address`).
    #[default]
    ClientAddress,
    /// `X-Forwarded-For`, `trusted_hops` elements from the right.
    ForwardedFor,
}

/// How a client address becomes a key.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// `client_address` (the downstream address Envoy computed) or
    /// `forwarded_for` (`X-Forwarded-For`, `trusted_hops` from the right).
    pub source: ClientSource,
    /// With `forwarded_for`: how many trusted proxies (1-16) in front of Envoy
    /// append to `X-Forwarded-For`. The client is the element the outermost
    /// of them appended, `trusted_hops` from the right. A request whose
    /// header has fewer elements did not come through the trusted proxies:
    /// all such requests share one key, `unknown` (Envoy's own address for
    /// it may come from that very header, which the client wrote).
    pub trusted_hops: u32,
    /// IPv6 addresses are keyed by their first `ipv6_prefix` bits
    /// (16-128): a client usually owns a whole /64.
    pub ipv6_prefix: u8,
    /// IPv4 addresses are keyed by their first `ipv4_prefix` bits (8-32).
    pub ipv4_prefix: u8,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            source: ClientSource::ClientAddress,
            trusted_hops: 1,
            ipv6_prefix: 64,
            ipv4_prefix: 32,
        }
    }
}

impl ClientConfig {
    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        if self.source == ClientSource::ForwardedFor && !(1..=16).contains(&self.trusted_hops) {
            return Err(ConfigError::new(
                format!("{field}.trusted_hops"),
                "must be between 1 and 16 with source forwarded_for",
            ));
        }
        if !(16..=128).contains(&self.ipv6_prefix) {
            return Err(ConfigError::new(
                format!("{field}.ipv6_prefix"),
                "must be between 16 and 128",
            ));
        }
        if !(8..=32).contains(&self.ipv4_prefix) {
            return Err(ConfigError::new(
                format!("{field}.ipv4_prefix"),
                "must be between 8 and 32",
            ));
        }
        Ok(())
    }

    /// Whether the key needs Envoy's downstream address (a proxy property
    /// read), or only the request's headers.
    pub fn reads_address(&self) -> bool {
        self.source == ClientSource::ClientAddress
    }

    /// The key of a request: `address` is Envoy's downstream address if
    /// [`ClientConfig::reads_address`], `X-Forwarded-For` is read from
    /// `head`.
    pub fn key_of(&self, head: &RequestHead<'_>, address: Option<&str>) -> String {
        match self.source {
            ClientSource::ClientAddress => self.key(address, None),
            ClientSource::ForwardedFor => self.key(None, forwarded_for(head).as_deref()),
        }
    }

    /// The client's key: `203.0.113.7`, `2001:db8:1:2::/64`, or `unknown`.
    /// `address` is Envoy's downstream address (`ip:port`), `forwarded_for`
    /// the request's `X-Forwarded-For` values (joined by commas).
    pub fn key(&self, address: Option<&str>, forwarded_for: Option<&str>) -> String {
        let text = match self.source {
            ClientSource::ClientAddress => address,
            ClientSource::ForwardedFor => forwarded_for.and_then(|header| {
                let hops = usize::try_from(self.trusted_hops).unwrap_or(usize::MAX);
                header.rsplit(',').nth(hops.checked_sub(1)?).map(str::trim)
            }),
        };
        let Some(text) = text else {
            return "unknown".to_owned();
        };
        match parse_address(text) {
            Some(IpAddr::V4(v4)) => mask_v4(v4, self.ipv4_prefix),
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => mask_v4(v4, self.ipv4_prefix),
                None => mask_v6(v6, self.ipv6_prefix),
            },
            None => "unknown".to_owned(),
        }
    }
}

/// The request's `X-Forwarded-For` values, joined by commas (borrowed
/// when there is one, as there usually is).
fn forwarded_for<'a>(head: &RequestHead<'a>) -> Option<Cow<'a, str>> {
    let mut values = head
        .header_values("x-forwarded-for")
        .filter_map(|v| std::str::from_utf8(v).ok());
    let first = values.next()?;
    match values.next() {
        None => Some(Cow::Borrowed(first)),
        Some(second) => {
            let mut joined = format!("{first},{second}");
            for value in values {
                joined.push(',');
                joined.push_str(value);
            }
            Some(Cow::Owned(joined))
        }
    }
}

/// `10.0.0.1`, `10.0.0.1:5555`, `::1`, `[::1]:5555` -> the address.
fn parse_address(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    let (host, port) = text.rsplit_once(':')?;
    port.bytes().all(|b| b.is_ascii_digit()).then_some(())?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

fn mask_v4(ip: Ipv4Addr, prefix: u8) -> String {
    if prefix >= 32 {
        return v4_text(ip, None);
    }
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    v4_text(Ipv4Addr::from(u32::from(ip) & mask), Some(prefix))
}

/// `a.b.c.d` or `a.b.c.d/prefix`, as `Display` writes it, without the
/// formatting machinery: a key is made for every audited request.
fn v4_text(ip: Ipv4Addr, prefix: Option<u8>) -> String {
    let mut text = String::with_capacity(18);
    let mut digits = itoa::Buffer::new();
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        text.push_str(digits.format(octet));
    }
    if let Some(prefix) = prefix {
        text.push('/');
        text.push_str(digits.format(prefix));
    }
    text
}

fn mask_v6(ip: Ipv6Addr, prefix: u8) -> String {
    if prefix >= 128 {
        return ip.to_string();
    }
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    format!("{}/{prefix}", Ipv6Addr::from(u128::from(ip) & mask))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_keys_are_written_as_display_writes_them() {
        for (ip, prefix) in [
            ([0, 0, 0, 0], 32),
            ([255, 255, 255, 255], 32),
            ([10, 0, 0, 7], 32),
            ([203, 0, 113, 77], 24),
            ([198, 51, 100, 9], 8),
            ([1, 22, 133, 4], 31),
        ] {
            let ip = Ipv4Addr::from(ip);
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            let expected = if prefix == 32 {
                ip.to_string()
            } else {
                format!("{}/{prefix}", Ipv4Addr::from(u32::from(ip) & mask))
            };
            assert_eq!(mask_v4(ip, prefix), expected);
        }
    }

    fn forwarded(hops: u32) -> ClientConfig {
        ClientConfig {
            source: ClientSource::ForwardedFor,
            trusted_hops: hops,
            ..ClientConfig::default()
        }
    }

    #[test]
    fn the_connection_address_is_the_default() {
        let c = ClientConfig::default();
        assert_eq!(c.key(Some("10.0.0.7:5123"), Some("1.2.3.4")), "10.0.0.7");
        assert_eq!(c.key(None, None), "unknown");
        assert_eq!(c.key(Some("garbage"), None), "unknown");
    }

    #[test]
    fn forwarded_for_is_read_from_the_right_never_the_left() {
        let xff = "6.6.6.6, 203.0.113.9, 10.0.0.2";
        assert_eq!(forwarded(1).key(Some("10.0.0.3:1"), Some(xff)), "10.0.0.2");
        assert_eq!(
            forwarded(2).key(Some("10.0.0.3:1"), Some(xff)),
            "203.0.113.9"
        );
        // Too few elements: not through the trusted proxies; one shared key
        // (Envoy's address for such a request may come from the header).
        assert_eq!(forwarded(4).key(Some("10.0.0.3:1"), Some(xff)), "unknown");
        assert_eq!(forwarded(1).key(Some("10.0.0.3:1"), None), "unknown");
    }

    #[test]
    fn ipv6_clients_are_aggregated_to_their_prefix() {
        let c = ClientConfig::default();
        assert_eq!(
            c.key(Some("[2001:db8:1:2:aaaa::1]:443"), None),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            c.key(Some("[2001:db8:1:2:bbbb::9]:80"), None),
            "2001:db8:1:2::/64"
        );
        assert_eq!(c.key(Some("[::ffff:192.0.2.1]:80"), None), "192.0.2.1");
        let wide = ClientConfig {
            ipv6_prefix: 48,
            ipv4_prefix: 24,
            ..ClientConfig::default()
        };
        assert_eq!(wide.key(Some("2001:db8:1:2::1"), None), "2001:db8:1::/48");
        assert_eq!(wide.key(Some("192.0.2.77:9"), None), "192.0.2.0/24");
    }
}
