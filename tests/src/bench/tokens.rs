//! The benchmark's tokens: ES256, signed with the demo key, minted before
//! any Envoy starts.
//!
//! Every token carries the same claims except a `jti` counter, so all of
//! them have the same size and shape, and no two are equal (ECDSA signing
//! here is deterministic, RFC 6979: without the counter, tokens minted in
//! the same second would be byte-identical and hit the caches).
//!
//! Fresh-token runs read a pool file, one token a line, through a wrk Lua
//! script. Pools are reused across rounds: every run starts a new Envoy, so
//! nothing is cached from an earlier run. Warm-up and measurement use
//! separate pools, so the measured run never sees a token the warm-up
//! already put in a cache.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ctxgate_demo::DemoKeys;
use ctxgate_demo::mint::{self, MintAlg, MintOptions};
use serde_json::{Map, Value};

use super::scenarios::{AUDIENCE, ISSUER, SCOPE};

/// Tokens stay valid for a day: far longer than any benchmark run.
const VALIDITY_SECONDS: i64 = 24 * 3600;

/// A file of tokens, one per line.
pub struct Pool {
    pub path: PathBuf,
}

/// Mints tokens for `scopes` with a distinct `jti` each.
pub struct Minter {
    keys_dir: PathBuf,
    claims: Map<String, Value>,
    header: Value,
}

impl Minter {
    pub fn new(keys: &DemoKeys) -> Result<Minter> {
        let opts = MintOptions {
            alg: MintAlg::ES256,
            iss: ISSUER.to_owned(),
            aud: vec![AUDIENCE.to_owned()],
            scopes: vec![SCOPE.to_owned()],
            exp_in: VALIDITY_SECONDS,
            ..MintOptions::default()
        };
        Ok(Minter {
            keys_dir: keys.dir().to_path_buf(),
            claims: mint::claims(&opts, mint::now())?,
            header: mint::header(&opts),
        })
    }

    /// One token with `jti` `<tag>-<n>`.
    pub fn token(&self, keys: &DemoKeys, tag: &str, n: usize) -> Result<String> {
        let mut claims = self.claims.clone();
        claims.insert("jti".into(), Value::String(format!("{tag}-{n:08}")));
        mint::try_mint_raw(keys, &self.header, &Value::Object(claims), MintAlg::ES256)
    }

    /// Writes `count` tokens tagged `tag` to `path`, signing on every core.
    pub fn pool(&self, path: &Path, tag: &str, count: usize) -> Result<Pool> {
        let workers = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(count.max(1));
        let chunk = count.div_ceil(workers);
        let chunks: Vec<Result<Vec<String>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|w| {
                    let range = (w * chunk)..((w + 1) * chunk).min(count);
                    scope.spawn(move || -> Result<Vec<String>> {
                        // Each thread loads its own copy of the (already
                        // generated) keys: the key types are not all Sync.
                        let keys = DemoKeys::load_or_generate(&self.keys_dir)?;
                        range.map(|n| self.token(&keys, tag, n)).collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a minting thread panicked")))
                })
                .collect()
        });
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        for tokens in chunks {
            for token in tokens? {
                writeln!(out, "{token}")?;
            }
        }
        out.flush()
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Pool {
            path: path.to_path_buf(),
        })
    }
}
