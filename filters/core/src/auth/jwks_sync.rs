//! Remote JWK Sets, fetched once for all workers.
//!
//! (`<ns>` below is the plugin's namespace, and `<tag>` a digest of the
//! provider's name, issuer and JWKS endpoint: a configuration push that
//! keeps a provider keeps its keys, and a provider whose endpoint changed
//! never installs keys fetched from the old one. The number of keys grows
//! only with the number of distinct providers ever configured.)
//!
//! Each worker VM has its own root context and timer, but a provider's keys
//! should be fetched by one of them at a time and shared with the rest.
//! Two shared-data records per remote provider do that:
//!
//! * `<ns>.jwks.<tag>.schedule` holds `next_ms`, `failures` and
//!   `last_success_ms`. A VM whose tick finds `next_ms` passed claims the
//!   fetch by moving `next_ms` past the fetch timeout with compare-and-swap;
//!   only the VM whose swap succeeds fetches. It then sets the next refresh
//!   (success) or the next retry with exponential backoff (failure). If it
//!   never reports back, the claim simply expires.
//! * `<ns>.jwks.<tag>.keys` holds the last good JWK Set. Every VM installs
//!   it when its CAS version changes. A failed fetch never touches it: the
//!   last-known-good keys stay in force.
//!
//! Both are versioned records ([`crate::record`]). A key-set record that
//! does not decode is counted and not installed (the keys in force stay);
//! a schedule that does not decode is counted and replaced by a fetch
//! claim (fetching is always safe).
//!
//! A token whose `kid` is unknown asks for an early refresh (keys rotated),
//! at most once per `min_refresh_interval_seconds`. Before refusing a token
//! for an unknown `kid` or a bad signature, a worker installs a newer key
//! set from shared data if there is one and decides again, so a rotation
//! that keeps the kids takes effect on every worker with the first fetch,
//! not a tick later.

use super::Auth;
use super::config::RemoteJwksConfig;
use crate::jwt::{KeySet, Symmetric};
use crate::record::{self, Kind, RecordError};
use crate::shared::{Cas, Change, SharedStore, Update, update};

const SCHEDULE_VERSION: u8 = 1;
const KEYS_VERSION: u8 = 1;

/// Attempts at a CAS update of the schedule before giving up until the next
/// tick (another VM is updating it; that VM does the work).
const CAS_ATTEMPTS: u32 = 4;
/// Retry delay while a provider has never had keys.
const INITIAL_RETRY_MS: u64 = 500;
/// Extra time a fetch claim lasts beyond the fetch timeout.
const CLAIM_MARGIN_MS: u64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Schedule {
    next_ms: u64,
    failures: u32,
    last_success_ms: u64,
}

impl Schedule {
    fn decode(bytes: &[u8]) -> Result<Schedule, RecordError> {
        let mut r = record::reader(bytes, Kind::JwksSchedule, SCHEDULE_VERSION)?;
        let schedule = Schedule {
            next_ms: r.u64()?,
            failures: r.u32()?,
            last_success_ms: r.u64()?,
        };
        r.end()?;
        Ok(schedule)
    }

    fn encode(self) -> Vec<u8> {
        let mut w = record::writer(Kind::JwksSchedule, SCHEDULE_VERSION, 20);
        w.u64(self.next_ms)
            .u32(self.failures)
            .u64(self.last_success_ms);
        w.finish()
    }
}

/// The key-set record: the JWK Set document as fetched (empty: none yet).
fn encode_keys(body: &[u8]) -> Vec<u8> {
    let mut w = record::writer(Kind::JwksKeys, KEYS_VERSION, body.len());
    w.bytes(body);
    w.finish()
}

fn decode_keys(bytes: &[u8]) -> Result<&[u8], RecordError> {
    Ok(record::reader(bytes, Kind::JwksKeys, KEYS_VERSION)?.rest())
}

struct RemoteProvider {
    /// Index into `Auth::providers`.
    provider: usize,
    config: RemoteJwksConfig,
    schedule_key: String,
    keys_key: String,
    /// CAS version of the shared key set this VM installed last.
    installed_cas: Option<Cas>,
    /// When this VM started a fetch that has not completed.
    in_flight_since_ms: Option<u64>,
    symmetric: Symmetric,
}

/// A fetch the glue should dispatch (`dispatch_http_call`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// Pass back to [`JwksSync::fetch_completed`].
    pub slot: usize,
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout_ms: u64,
}

/// What a tick asks the glue to do.
#[derive(Default)]
pub struct TickResult {
    /// New key sets: (provider index, keys).
    pub install: Vec<(usize, KeySet)>,
    pub fetch: Vec<FetchRequest>,
}

/// Result of a completed fetch, for logs and metrics.
#[derive(Debug)]
pub enum FetchOutcome {
    Installed {
        provider: usize,
        keys: KeySet,
        skipped: Vec<String>,
    },
    Failed {
        provider: usize,
        reason: String,
        retry_in_ms: u64,
    },
}

pub struct JwksSync {
    remotes: Vec<RemoteProvider>,
    /// Shared-data records that did not decode.
    pub invalid_records: u64,
}

impl JwksSync {
    pub fn new(auth: &Auth) -> JwksSync {
        let remotes = auth
            .providers
            .iter()
            .enumerate()
            .filter_map(|(index, p)| {
                p.remote.clone().map(|config| {
                    let endpoint = format!(
                        "{}\n{}\n{}\n{}\n{:?}",
                        p.name, p.issuer, config.cluster, config.path, config.authority
                    );
                    let digest = hmac_sha256::Hash::hash(endpoint.as_bytes());
                    let tag: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
                    let prefix = format!("{}.jwks.{}-{tag}", auth.namespace, p.name);
                    RemoteProvider {
                        provider: index,
                        symmetric: if config.allow_symmetric_keys {
                            Symmetric::Allow
                        } else {
                            Symmetric::Refuse
                        },
                        config,
                        schedule_key: format!("{prefix}.schedule"),
                        keys_key: format!("{prefix}.keys"),
                        installed_cas: None,
                        in_flight_since_ms: None,
                    }
                })
            })
            .collect();
        JwksSync {
            remotes,
            invalid_records: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.remotes.is_empty()
    }

    /// Creates the shared keys. Call from `on_configure`, before serving.
    pub fn init_shared(&self, store: &dyn SharedStore) {
        for remote in &self.remotes {
            store.ensure(&remote.schedule_key, &Schedule::default().encode());
            store.ensure(&remote.keys_key, &encode_keys(b""));
        }
    }

    /// Newer keys of `provider` that another worker put in shared data and
    /// this one has not installed yet (checked on demand, between ticks,
    /// when a token needs keys this worker lacks).
    pub fn newer_shared_keys(
        &mut self,
        provider: usize,
        store: &dyn SharedStore,
    ) -> Option<KeySet> {
        let index = self.remotes.iter().position(|r| r.provider == provider)?;
        self.shared_keys(index, store)
    }

    /// The shared key set of remote `index`, if it changed since this VM
    /// installed one.
    fn shared_keys(&mut self, index: usize, store: &dyn SharedStore) -> Option<KeySet> {
        let remote = self.remotes.get_mut(index)?;
        let (value, cas) = store.get(&remote.keys_key)?;
        if remote.installed_cas == Some(cas) {
            return None;
        }
        remote.installed_cas = Some(cas);
        let body = match decode_keys(&value) {
            Ok(body) => body,
            Err(e) => {
                self.invalid_records += 1;
                log::warn!(
                    "JWKS record {} does not decode ({e}): keys in force kept",
                    remote.keys_key
                );
                return None;
            }
        };
        if body.is_empty() {
            return None;
        }
        let keys = KeySet::parse_with(std::str::from_utf8(body).ok()?, remote.symmetric).ok()?;
        Some(keys.keys)
    }

    pub fn tick(&mut self, store: &dyn SharedStore, now_ms: u64) -> TickResult {
        let mut result = TickResult::default();
        for slot in 0..self.remotes.len() {
            if let Some(keys) = self.shared_keys(slot, store)
                && let Some(remote) = self.remotes.get(slot)
            {
                result.install.push((remote.provider, keys));
            }
            let mut invalid = false;
            let Some(remote) = self.remotes.get_mut(slot) else {
                continue;
            };
            let claim_ms = remote.config.timeout_ms.saturating_add(CLAIM_MARGIN_MS);
            if remote
                .in_flight_since_ms
                .is_some_and(|since| now_ms < since.saturating_add(claim_ms))
            {
                continue;
            }
            remote.in_flight_since_ms = None;
            let claimed = update(store, &remote.schedule_key, CAS_ATTEMPTS, |value| {
                let schedule = Schedule::decode(value).unwrap_or_else(|_| {
                    invalid = true;
                    Schedule::default()
                });
                if now_ms < schedule.next_ms {
                    return Change::Keep(false);
                }
                let claim = Schedule {
                    next_ms: now_ms.saturating_add(claim_ms),
                    ..schedule
                };
                Change::Write(claim.encode(), true)
            });
            if invalid {
                self.invalid_records += 1;
            }
            if claimed == Update::Written(true) {
                remote.in_flight_since_ms = Some(now_ms);
                result.fetch.push(FetchRequest {
                    slot,
                    cluster: remote.config.cluster.clone(),
                    authority: remote
                        .config
                        .authority
                        .clone()
                        .unwrap_or_else(|| remote.config.cluster.clone()),
                    path: remote.config.path.clone(),
                    timeout_ms: remote.config.timeout_ms,
                });
            }
        }
        result
    }

    /// Records a finished fetch: `response` is the HTTP status and body, or
    /// a transport error description.
    pub fn fetch_completed(
        &mut self,
        slot: usize,
        store: &dyn SharedStore,
        now_ms: u64,
        response: Result<(u16, Vec<u8>), String>,
    ) -> Option<FetchOutcome> {
        let remote = self.remotes.get_mut(slot)?;
        remote.in_flight_since_ms = None;
        let parsed = match response {
            Err(e) => Err(e),
            Ok((200, body)) => {
                match std::str::from_utf8(&body).map_err(|_| "the body is not UTF-8".to_owned()) {
                    Ok(text) => KeySet::parse_with(text, remote.symmetric)
                        .map(|p| (p, body.clone()))
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                }
            }
            Ok((status, _)) => Err(format!("HTTP status {status}")),
        };
        let previous = match store
            .get(&remote.schedule_key)
            .map(|(v, _)| Schedule::decode(&v))
        {
            Some(Ok(schedule)) => schedule,
            Some(Err(_)) => {
                self.invalid_records += 1;
                Schedule::default()
            }
            None => Schedule::default(),
        };
        match parsed {
            Ok((parsed, body)) => {
                let _ = store.set(&remote.keys_key, &encode_keys(&body), None);
                remote.installed_cas = store.get(&remote.keys_key).map(|(_, cas)| cas);
                let refresh_ms = remote.config.refresh_interval_seconds.saturating_mul(1000);
                let next = Schedule {
                    next_ms: now_ms.saturating_add(refresh_ms),
                    failures: 0,
                    last_success_ms: now_ms,
                };
                let _ = store.set(&remote.schedule_key, &next.encode(), None);
                Some(FetchOutcome::Installed {
                    provider: remote.provider,
                    keys: parsed.keys,
                    skipped: parsed.skipped,
                })
            }
            Err(reason) => {
                let failures = previous.failures.saturating_add(1);
                // Until a first key set arrives every token of this provider
                // is refused, so retry quickly; afterwards back off.
                let retry_ms = if previous.last_success_ms == 0 {
                    backoff_ms(&remote.config, failures).min(INITIAL_RETRY_MS)
                } else {
                    backoff_ms(&remote.config, failures)
                };
                let next = Schedule {
                    next_ms: now_ms.saturating_add(retry_ms),
                    failures,
                    ..previous
                };
                let _ = store.set(&remote.schedule_key, &next.encode(), None);
                Some(FetchOutcome::Failed {
                    provider: remote.provider,
                    reason,
                    retry_in_ms: retry_ms,
                })
            }
        }
    }

    /// A token named a `kid` the provider's keys do not have: fetch again
    /// soon, unless keys were fetched very recently.
    pub fn request_early_refresh(
        &self,
        provider: usize,
        store: &dyn SharedStore,
        now_ms: u64,
    ) -> bool {
        let Some(remote) = self.remotes.iter().find(|r| r.provider == provider) else {
            return false;
        };
        let min_ms = remote
            .config
            .min_refresh_interval_seconds
            .saturating_mul(1000);
        let moved = update(store, &remote.schedule_key, CAS_ATTEMPTS, |value| {
            let Ok(schedule) = Schedule::decode(value) else {
                return Change::Keep(false);
            };
            let earliest = schedule.last_success_ms.saturating_add(min_ms).max(now_ms);
            if schedule.next_ms <= earliest || schedule.failures > 0 {
                return Change::Keep(false);
            }
            Change::Write(
                Schedule {
                    next_ms: earliest,
                    ..schedule
                }
                .encode(),
                true,
            )
        });
        moved == Update::Written(true)
    }
}

fn backoff_ms(config: &RemoteJwksConfig, failures: u32) -> u64 {
    let base = config.retry_interval_seconds.saturating_mul(1000);
    let cap = config
        .refresh_interval_seconds
        .saturating_mul(1000)
        .max(base);
    let factor = 1u64 << failures.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::MemoryStore;

    const JWKS: &str = r#"{"keys":[{"kty":"oct","kid":"k","alg":"HS256","k":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}"#;

    fn auth() -> Auth {
        let config = serde_json::json!({
            "providers": [{
                "name": "idp", "issuer": "https://idp",
                "jwks": {"remote": {"cluster": "idp", "refresh_interval_seconds": 60, "retry_interval_seconds": 1, "allow_symmetric_keys": true}}
            }]
        });
        Auth::from_json(
            config.to_string().as_bytes(),
            "test",
            crate::shared::Secret::from_bytes([0; 16]),
        )
        .unwrap()
    }

    #[test]
    fn one_worker_fetches_and_all_install() {
        let auth = auth();
        let store = MemoryStore::default();
        let mut a = JwksSync::new(&auth);
        let mut b = JwksSync::new(&auth);
        a.init_shared(&store);
        b.init_shared(&store);

        let tick_a = a.tick(&store, 1_000);
        let tick_b = b.tick(&store, 1_001);
        assert_eq!(tick_a.fetch.len(), 1, "the first worker claims the fetch");
        assert!(tick_b.fetch.is_empty(), "the second sees the claim");

        let outcome = a.fetch_completed(0, &store, 1_050, Ok((200, JWKS.as_bytes().to_vec())));
        assert!(matches!(
            outcome,
            Some(FetchOutcome::Installed { provider: 0, .. })
        ));
        assert_eq!(
            b.tick(&store, 1_100).install.len(),
            1,
            "the other worker installs the shared keys"
        );
        assert!(b.tick(&store, 1_200).install.is_empty(), "only once");
        assert!(
            a.tick(&store, 1_200).install.is_empty(),
            "the fetcher already has them"
        );

        assert!(
            a.tick(&store, 60_000).fetch.is_empty(),
            "not before the refresh interval"
        );
        assert_eq!(b.tick(&store, 61_051).fetch.len(), 1, "refresh is due");
    }

    #[test]
    fn failures_back_off_and_keep_the_last_good_keys() {
        let auth = auth();
        let store = MemoryStore::default();
        let mut a = JwksSync::new(&auth);
        a.init_shared(&store);
        a.tick(&store, 0);
        a.fetch_completed(0, &store, 10, Ok((200, JWKS.as_bytes().to_vec())));
        let good = store.get(&a.remotes[0].keys_key).unwrap().0;
        assert_eq!(decode_keys(&good).unwrap(), JWKS.as_bytes());

        assert_eq!(a.tick(&store, 60_010).fetch.len(), 1);
        let outcome = a.fetch_completed(0, &store, 60_020, Ok((503, Vec::new())));
        assert!(matches!(
            outcome,
            Some(FetchOutcome::Failed {
                retry_in_ms: 1_000,
                ..
            })
        ));
        assert_eq!(store.get(&a.remotes[0].keys_key).unwrap().0, good);

        assert!(a.tick(&store, 60_500).fetch.is_empty());
        assert_eq!(a.tick(&store, 61_020).fetch.len(), 1);
        let outcome = a.fetch_completed(0, &store, 61_030, Ok((200, b"{not json".to_vec())));
        assert!(matches!(
            outcome,
            Some(FetchOutcome::Failed {
                retry_in_ms: 2_000,
                ..
            })
        ));
        assert_eq!(store.get(&a.remotes[0].keys_key).unwrap().0, good);
        let outcome = {
            a.tick(&store, 63_030);
            a.fetch_completed(0, &store, 63_040, Err("connection refused".into()))
        };
        assert!(matches!(
            outcome,
            Some(FetchOutcome::Failed {
                retry_in_ms: 4_000,
                ..
            })
        ));
    }

    #[test]
    fn remote_symmetric_keys_are_refused_unless_allowed() {
        let config = serde_json::json!({
            "providers": [{"name": "idp", "issuer": "https://idp", "jwks": {"remote": {"cluster": "idp"}}}]
        });
        let auth = Auth::from_json(
            config.to_string().as_bytes(),
            "test",
            crate::shared::Secret::from_bytes([0; 16]),
        )
        .unwrap();
        let store = MemoryStore::default();
        let mut a = JwksSync::new(&auth);
        a.init_shared(&store);
        a.tick(&store, 0);
        let outcome = a.fetch_completed(0, &store, 10, Ok((200, JWKS.as_bytes().to_vec())));
        match outcome {
            Some(FetchOutcome::Failed { reason, .. }) => {
                assert!(reason.contains("symmetric"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn records_that_do_not_decode_are_counted_and_not_installed() {
        let auth = auth();
        let store = MemoryStore::default();
        let mut a = JwksSync::new(&auth);
        a.init_shared(&store);
        let keys_key = a.remotes[0].keys_key.clone();
        let schedule_key = a.remotes[0].schedule_key.clone();
        store.set(&keys_key, JWKS.as_bytes(), None).unwrap();
        store.set(&schedule_key, b"1 2 3", None).unwrap();
        let tick = a.tick(&store, 1_000);
        assert!(tick.install.is_empty(), "a bare JWKS is not a record");
        assert_eq!(tick.fetch.len(), 1, "an unreadable schedule means: fetch");
        assert_eq!(a.invalid_records, 2);
    }

    #[test]
    fn the_first_fetch_is_retried_quickly() {
        let auth = auth();
        let store = MemoryStore::default();
        let mut a = JwksSync::new(&auth);
        a.init_shared(&store);
        a.tick(&store, 0);
        let outcome = a.fetch_completed(0, &store, 10, Err("connection refused".into()));
        assert!(matches!(
            outcome,
            Some(FetchOutcome::Failed {
                retry_in_ms: 500,
                ..
            })
        ));
        assert_eq!(a.tick(&store, 510).fetch.len(), 1);
    }

    #[test]
    fn a_lost_fetch_is_retried_after_its_claim_expires() {
        let auth = auth();
        let store = MemoryStore::default();
        let mut a = JwksSync::new(&auth);
        let mut b = JwksSync::new(&auth);
        a.init_shared(&store);
        assert_eq!(a.tick(&store, 0).fetch.len(), 1);
        // `a` never hears back. Its claim lasts timeout (5 s) + margin (5 s).
        assert!(b.tick(&store, 9_000).fetch.is_empty());
        assert_eq!(b.tick(&store, 10_001).fetch.len(), 1);
    }

    #[test]
    fn unknown_kid_refreshes_early_but_not_too_often() {
        let auth = auth();
        let store = MemoryStore::default();
        let mut a = JwksSync::new(&auth);
        a.init_shared(&store);
        a.tick(&store, 0);
        a.fetch_completed(0, &store, 0, Ok((200, JWKS.as_bytes().to_vec())));
        // Keys fetched at 0; min_refresh_interval is 30 s.
        assert!(a.request_early_refresh(0, &store, 5_000));
        assert!(
            a.tick(&store, 10_000).fetch.is_empty(),
            "moved to 30 s, not to now"
        );
        assert_eq!(a.tick(&store, 30_000).fetch.len(), 1);
        a.fetch_completed(0, &store, 30_010, Ok((200, JWKS.as_bytes().to_vec())));
        assert!(a.request_early_refresh(0, &store, 70_000));
        assert_eq!(a.tick(&store, 70_000).fetch.len(), 1);
    }
}
