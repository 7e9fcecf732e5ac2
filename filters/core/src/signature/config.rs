//! The `signature` section of the plugin configuration (JSON).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::matcher::StringMatcher;

/// HTTP Message Signatures (RFC 9421, `hmac-sha256`) with
/// `Content-Digest` (RFC 9530) on the routes that require them.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct SignatureConfig {
    /// The shared secrets, by key id (the `keyid` signature parameter):
    /// `{"ingest-1": {"secret": "<base64>"}}`. At least one. Keys come
    /// only from here, never from the request.
    pub keys: BTreeMap<String, KeyConfig>,
    /// The requests that must be signed: those any route matches. At
    /// least one.
    pub routes: Vec<SignedRoute>,
    /// How old a signature's `created` may be, in seconds (1 to 3600);
    /// its nonce is remembered this long. Default 300.
    #[serde(default = "defaults::max_age_seconds")]
    pub max_age_seconds: u64,
    /// How far in the future `created` may be, in seconds (clock skew,
    /// 0 to 300). Default 5.
    #[serde(default = "defaults::max_skew_seconds")]
    pub max_skew_seconds: u64,
    /// The longest body read to check its digest, in bytes (0 to
    /// 16777216); a longer one is refused with 413. Default 1048576.
    #[serde(default = "defaults::body_limit")]
    pub body_limit: u64,
    /// The nonce store: how many nonces the gateway remembers at once
    /// (`buckets` x `per_bucket`). A request whose bucket is full of live
    /// nonces is refused (503 `nonce_store_full`), never let through with
    /// its nonce forgotten.
    #[serde(default)]
    pub nonces: NonceStoreConfig,
}

/// One shared secret.
#[derive(Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The secret, standard padded base64 (RFC 4648 section 4), at least
    /// 32 bytes once decoded.
    pub secret: String,
}

impl std::fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyConfig { secret: .. }")
    }
}

/// Requests that must carry a valid signature.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct SignedRoute {
    /// The request path without its query, as a string matcher
    /// (`{"prefix": "/admin/"}`).
    pub path: StringMatcher,
    /// Methods (upper case) this applies to; default: every method.
    #[serde(default)]
    #[cfg_attr(feature = "schema", serde(skip_serializing_if = "Option::is_none"))]
    pub methods: Option<Vec<String>>,
}

/// Size of the nonce store.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct NonceStoreConfig {
    /// Shared-data entries (1 to 65536). Default 1024.
    #[serde(default = "defaults::buckets")]
    pub buckets: u32,
    /// Live nonces one bucket holds (1 to 64). Default 16.
    #[serde(default = "defaults::per_bucket")]
    pub per_bucket: u8,
}

impl Default for NonceStoreConfig {
    fn default() -> NonceStoreConfig {
        NonceStoreConfig {
            buckets: defaults::buckets(),
            per_bucket: defaults::per_bucket(),
        }
    }
}

mod defaults {
    pub fn max_age_seconds() -> u64 {
        300
    }
    pub fn max_skew_seconds() -> u64 {
        5
    }
    pub fn body_limit() -> u64 {
        1 << 20
    }
    pub fn buckets() -> u32 {
        1024
    }
    pub fn per_bucket() -> u8 {
        16
    }
}

/// The shortest secret accepted: HMAC-SHA256's output length (RFC 2104
/// section 3).
pub const MIN_SECRET_BYTES: usize = 32;

impl SignatureConfig {
    /// The secrets, decoded, by key id.
    pub fn validate(&self) -> Result<BTreeMap<String, Vec<u8>>, ConfigError> {
        if self.keys.is_empty() {
            return Err(ConfigError::new("keys", "at least one key is needed"));
        }
        let mut keys = BTreeMap::new();
        for (id, key) in &self.keys {
            let field = format!("keys.{id}.secret");
            if id.is_empty() || !id.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
                return Err(ConfigError::new(
                    format!("keys.{id}"),
                    "a key id is printable ASCII and not empty",
                ));
            }
            let secret = super::sfv::decode_base64(&key.secret)
                .ok_or_else(|| ConfigError::new(&field, "is not canonical padded base64"))?;
            if secret.len() < MIN_SECRET_BYTES {
                return Err(ConfigError::new(
                    &field,
                    format!(
                        "is {} bytes; at least {MIN_SECRET_BYTES} are needed",
                        secret.len()
                    ),
                ));
            }
            keys.insert(id.clone(), secret);
        }
        if self.routes.is_empty() {
            return Err(ConfigError::new("routes", "at least one route is needed"));
        }
        for (i, route) in self.routes.iter().enumerate() {
            for method in route.methods.iter().flatten() {
                if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(ConfigError::new(
                        format!("routes[{i}].methods"),
                        format!("'{method}' is not an upper-case method"),
                    ));
                }
            }
        }
        let ranges = [
            ("max_age_seconds", self.max_age_seconds, 1, 3600),
            ("max_skew_seconds", self.max_skew_seconds, 0, 300),
            ("body_limit", self.body_limit, 0, 1 << 24),
            ("nonces.buckets", u64::from(self.nonces.buckets), 1, 65_536),
            (
                "nonces.per_bucket",
                u64::from(self.nonces.per_bucket),
                1,
                64,
            ),
        ];
        for (field, value, low, high) in ranges {
            if !(low..=high).contains(&value) {
                return Err(ConfigError::new(
                    field,
                    format!("must be between {low} and {high}"),
                ));
            }
        }
        Ok(keys)
    }
}
