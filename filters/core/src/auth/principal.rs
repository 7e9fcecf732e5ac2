//! Service principals: a calling service identified by its client
//! certificate (mTLS), as Envoy verified it on the listener.
//!
//! The configuration maps one certificate identity (the first URI SAN or
//! SPIFFE ID, the first DNS SAN, or the RFC 2253 subject: what Envoy's
//! `connection.*_peer_certificate` attributes expose) to a principal with
//! its own tenant and scopes. The certificate is read only when services
//! are configured or the operation requires one, and only the attributes
//! the configuration compares are read.
//!
//! A principal's identity, the string its service tokens must carry as
//! `sub` and that users name in `may_act`, is the certificate value it was
//! matched on (e.g. `spiffe://cluster.local/ns/ctx/sa/ingest`); its `name`
//! is what the upstream receives in the service header.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Deserialize;

use super::identity::{Identity, is_valid_label, is_valid_tenant};
use crate::config::ConfigError;
use crate::contract::Caller;
use crate::host::Attribute;
use crate::scope::ScopeSet;

/// The issuer recorded for a request authenticated by its certificate.
pub const MTLS_ISSUER: &str = "mtls";

/// A service principal: a client certificate identity, and what the
/// service may do.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The principal's name, sent upstream in the service header
    /// (`[A-Za-z0-9._-]+`, unique).
    pub name: String,
    /// The certificate identity this principal is: exactly one of
    /// `spiffe_id`, `uri_san`, `dns_san`, `subject`.
    #[serde(rename = "match")]
    pub peer: PeerMatch,
    /// The tenant the service acts in when it calls for itself.
    pub tenant: String,
    /// Context scopes granted to the service (`read:projects/*`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Require a service token (a `service` role provider's token) next to
    /// the certificate, whose `sub` is the certificate identity: 401
    /// `missing_service_token` without one, 403 `service_token_mismatch`
    /// for another subject.
    #[serde(default)]
    pub require_token: bool,
}

/// How a certificate is recognised. Envoy exposes only the first URI SAN
/// and the first DNS SAN of a certificate: a second SPIFFE ID in it is
/// never seen.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum PeerMatch {
    /// The first URI SAN, a SPIFFE ID (`spiffe://trust-domain/path`).
    SpiffeId(String),
    /// The first URI SAN, any URI, compared exactly.
    UriSan(String),
    /// The first DNS SAN, compared case-insensitively.
    DnsSan(String),
    /// The subject in RFC 2253 form, last RDN first (`CN=ingest,O=ctx`),
    /// compared exactly.
    Subject(String),
}

impl PeerMatch {
    fn attribute(&self) -> Attribute {
        match self {
            PeerMatch::SpiffeId(_) | PeerMatch::UriSan(_) => Attribute::PeerUriSan,
            PeerMatch::DnsSan(_) => Attribute::PeerDnsSan,
            PeerMatch::Subject(_) => Attribute::PeerSubject,
        }
    }

    /// The identity this entry names.
    pub fn value(&self) -> &str {
        match self {
            PeerMatch::SpiffeId(v)
            | PeerMatch::UriSan(v)
            | PeerMatch::DnsSan(v)
            | PeerMatch::Subject(v) => v,
        }
    }

    fn matches(&self, seen: &str) -> bool {
        match self {
            PeerMatch::DnsSan(want) => want.eq_ignore_ascii_case(seen),
            _ => self.value() == seen,
        }
    }
}

/// Checks the `services` section.
pub fn validate(services: &[ServiceConfig]) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    let mut identities = HashSet::new();
    for (i, s) in services.iter().enumerate() {
        let field = |f: &str| format!("services[{i}].{f}");
        if s.name.is_empty()
            || s.name.len() > 128
            || !s
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(ConfigError::new(
                field("name"),
                "must be 1-128 characters of [A-Za-z0-9._-]",
            ));
        }
        if !names.insert(&s.name) {
            return Err(ConfigError::new(
                field("name"),
                format!("'{}' is used twice", s.name),
            ));
        }
        let value = s.peer.value();
        let kind = match &s.peer {
            PeerMatch::SpiffeId(_) => "spiffe_id",
            PeerMatch::UriSan(_) => "uri_san",
            PeerMatch::DnsSan(_) => "dns_san",
            PeerMatch::Subject(_) => "subject",
        };
        if !is_valid_label(value) {
            return Err(ConfigError::new(
                field(&format!("match.{kind}")),
                "must be a non-empty printable value",
            ));
        }
        if matches!(s.peer, PeerMatch::SpiffeId(_))
            && !value
                .strip_prefix("spiffe://")
                .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        {
            return Err(ConfigError::new(
                field("match.spiffe_id"),
                "must be spiffe://<trust domain>/<path>",
            ));
        }
        if !identities.insert((s.peer.attribute() as u8, value.to_ascii_lowercase())) {
            return Err(ConfigError::new(
                field("match"),
                format!("'{value}' is matched by an earlier entry"),
            ));
        }
        if !is_valid_tenant(&s.tenant) {
            return Err(ConfigError::new(
                field("tenant"),
                format!("'{}' is not a valid tenant id", s.tenant),
            ));
        }
        if ScopeSet::parse(s.scopes.iter().map(String::as_str)).is_err() {
            return Err(ConfigError::new(
                field("scopes"),
                "a scope is ambiguous (whitespace, %, ;, \\, . or ..)",
            ));
        }
    }
    Ok(())
}

/// A service principal, compiled.
pub struct Service {
    pub name: String,
    pub peer: PeerMatch,
    pub require_token: bool,
    /// The request's identity when the service calls for itself.
    pub identity: Arc<Identity>,
}

impl Service {
    /// Compiles `services[i]` (validated).
    pub(super) fn compile(
        i: usize,
        s: ServiceConfig,
        default_tier: &str,
    ) -> Result<Service, ConfigError> {
        let scopes = ScopeSet::parse(s.scopes.iter().map(String::as_str))
            .map_err(|e| ConfigError::new(format!("services[{i}].scopes"), e.to_string()))?;
        if scopes.rejected() > 0 {
            return Err(ConfigError::new(
                format!("services[{i}].scopes"),
                "every scope must be ACTION:PATH with action read, write or admin",
            ));
        }
        let subject = s.peer.value().to_owned();
        let caller = Caller {
            tenant: s.tenant.clone(),
            subject: subject.clone(),
            tier: default_tier.to_owned(),
            issuer: MTLS_ISSUER.to_owned(),
            actors: Vec::new(),
            rate_limits: None,
            claims: Default::default(),
            service: Some(s.name.clone()),
            on_behalf_of: false,
        };
        let filter_state = serde_json::to_vec(&caller)
            .map_err(|e| ConfigError::new(format!("services[{i}]"), e.to_string()))?;
        let identity = Identity {
            provider: String::new(),
            provider_index: usize::MAX,
            key: None,
            issuer: MTLS_ISSUER.to_owned(),
            subject,
            tenant: s.tenant,
            tier: default_tier.to_owned(),
            scopes_header: scopes
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            scopes: Arc::new(scopes),
            actors: Vec::new(),
            actor_chain_header: String::new(),
            delegation: None,
            delegatable: ScopeSet::default(),
            may_act: Vec::new(),
            rate_limits: None,
            valid_until: None,
            filter_state,
            caller: Arc::new(caller),
            service: Some(s.name.clone()),
        };
        Ok(Service {
            name: s.name,
            peer: s.peer,
            require_token: s.require_token,
            identity: Arc::new(identity),
        })
    }
}

/// What the request's client certificate says.
pub enum Peer<'a> {
    /// The connection has no verified client certificate.
    NoCertificate,
    /// A certificate no principal matches; what it showed, for the log.
    Unknown(String),
    Service(&'a Service),
}

/// Finds the principal of the connection's certificate. `read` looks an
/// attribute up in the proxy; each is read at most once.
pub fn identify<'a>(
    services: &'a [Service],
    read: &dyn Fn(Attribute) -> Option<String>,
) -> Peer<'a> {
    if read(Attribute::PeerMtls).as_deref() != Some("true") {
        return Peer::NoCertificate;
    }
    let mut seen: [(Attribute, Option<Option<String>>); 3] = [
        (Attribute::PeerUriSan, None),
        (Attribute::PeerDnsSan, None),
        (Attribute::PeerSubject, None),
    ];
    let mut value_of = |attribute: Attribute| -> Option<String> {
        let slot = seen.iter_mut().find(|(a, _)| *a == attribute)?;
        slot.1.get_or_insert_with(|| read(attribute)).clone()
    };
    for service in services {
        if value_of(service.peer.attribute()).is_some_and(|v| service.peer.matches(&v)) {
            return Peer::Service(service);
        }
    }
    let shown = value_of(Attribute::PeerUriSan)
        .or_else(|| value_of(Attribute::PeerSubject))
        .unwrap_or_default();
    Peer::Unknown(shown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn service(name: &str, peer: PeerMatch) -> Service {
        Service::compile(
            0,
            ServiceConfig {
                name: name.into(),
                peer,
                tenant: "acme".into(),
                scopes: vec!["read:projects/*".into()],
                require_token: false,
            },
            "standard",
        )
        .unwrap()
    }

    #[test]
    fn certificates_map_to_principals_reading_only_what_is_compared() {
        let services = [
            service(
                "ingest",
                PeerMatch::SpiffeId("spiffe://c/ns/ctx/sa/ingest".into()),
            ),
            service("batch", PeerMatch::DnsSan("Batch.ctx.svc".into())),
        ];
        let reads = RefCell::new(Vec::new());
        let reads = &reads;
        let cert = |uri: Option<&'static str>, dns: Option<&'static str>| {
            move |a: Attribute| -> Option<String> {
                reads.borrow_mut().push(a);
                match a {
                    Attribute::PeerMtls => Some("true".into()),
                    Attribute::PeerUriSan => uri.map(String::from),
                    Attribute::PeerDnsSan => dns.map(String::from),
                    Attribute::PeerSubject => Some("CN=x,O=y".into()),
                    _ => None,
                }
            }
        };
        let read = cert(Some("spiffe://c/ns/ctx/sa/ingest"), None);
        assert!(matches!(identify(&services, &read), Peer::Service(s) if s.name == "ingest"));
        assert_eq!(
            *reads.borrow(),
            [Attribute::PeerMtls, Attribute::PeerUriSan]
        );
        reads.borrow_mut().clear();
        let read = cert(None, Some("batch.CTX.svc"));
        assert!(matches!(identify(&services, &read), Peer::Service(s) if s.name == "batch"));
        let read = cert(Some("spiffe://c/ns/ctx/sa/other"), Some("x.ctx.svc"));
        assert!(
            matches!(identify(&services, &read), Peer::Unknown(seen) if seen == "spiffe://c/ns/ctx/sa/other")
        );
        // The URI SAN was read once for the two entries and the log.
        assert_eq!(
            reads
                .borrow()
                .iter()
                .filter(|a| **a == Attribute::PeerUriSan)
                .count(),
            2
        );
        let plain = |a: Attribute| (a == Attribute::PeerMtls).then(|| "false".to_owned());
        assert!(matches!(identify(&services, &plain), Peer::NoCertificate));
        let nothing = |_: Attribute| None;
        assert!(matches!(identify(&services, &nothing), Peer::NoCertificate));
    }

    #[test]
    fn the_principal_is_an_identity_with_its_own_tenant_and_scopes() {
        let s = service("ingest", PeerMatch::Subject("CN=ingest,O=ctx".into()));
        assert_eq!(s.identity.subject, "CN=ingest,O=ctx");
        assert_eq!(s.identity.tenant, "acme");
        assert_eq!(s.identity.scopes_header, "read:projects/*");
        assert_eq!(s.identity.service.as_deref(), Some("ingest"));
        let caller: Caller = serde_json::from_slice(&s.identity.filter_state).unwrap();
        assert_eq!(caller.service.as_deref(), Some("ingest"));
        assert!(!caller.on_behalf_of);
    }

    #[test]
    fn bad_entries_name_their_field() {
        let entry = |extra: serde_json::Value| -> ServiceConfig {
            let mut v = serde_json::json!({
                "name": "ingest", "match": {"spiffe_id": "spiffe://c/sa/ingest"}, "tenant": "acme"
            });
            if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
                v.extend(extra.clone());
            }
            serde_json::from_value(v).unwrap()
        };
        let field = |services: &[ServiceConfig]| validate(services).unwrap_err().field;
        assert!(validate(&[entry(serde_json::json!({}))]).is_ok());
        assert_eq!(
            field(&[entry(serde_json::json!({"name": "a b"}))]),
            "services[0].name"
        );
        assert_eq!(
            field(&[entry(
                serde_json::json!({"match": {"spiffe_id": "https://x"}})
            )]),
            "services[0].match.spiffe_id"
        );
        assert_eq!(
            field(&[entry(serde_json::json!({"tenant": "-x"}))]),
            "services[0].tenant"
        );
        assert_eq!(
            field(&[entry(serde_json::json!({"scopes": ["read:a b"]}))]),
            "services[0].scopes"
        );
        let twin = entry(serde_json::json!({"name": "other"}));
        assert_eq!(
            field(&[entry(serde_json::json!({})), twin]),
            "services[1].match"
        );
        assert!(
            serde_json::from_value::<ServiceConfig>(serde_json::json!({
                "name": "x", "match": {"spiffe_id": "spiffe://a/b", "subject": "CN=x"}, "tenant": "acme"
            }))
            .is_err()
        );
    }
}
