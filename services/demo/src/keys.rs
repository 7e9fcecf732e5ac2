//! Demo signing keys, kept on disk so that Envoy, the CLI and the e2e tests
//! all agree on them.
//!
//! A key directory holds:
//!
//! | file          | content                                                  |
//! |---------------|----------------------------------------------------------|
//! | `rs256.pem`   | RSA 2048 private key, PKCS#8 PEM (`kid` `demo-rs256`)    |
//! | `es256.pem`   | P-256 private key, PKCS#8 PEM (`kid` `demo-es256`)       |
//! | `ed25519.pem` | Ed25519 private key, PKCS#8 PEM (`kid` `demo-eddsa`)     |
//! | `hs256.key`   | 64 random bytes, base64url without padding (`demo-hs256`)|
//! | `jwks.json`   | JWK Set with the three public keys, never the secrets    |
//!
//! [`DemoKeys::load_or_generate`] creates whatever is missing and loads
//! whatever is present; it never replaces an existing file, so a running
//! Envoy keeps accepting tokens minted later. Generation is serialised with an
//! advisory lock on `DIR/.lock`, so parallel tests (threads or processes)
//! sharing one directory end up with one set of keys. If `jwks.json` exists
//! but does not describe the private keys next to it, loading fails rather
//! than silently minting tokens nobody can verify.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use jwt_simple::algorithms::{
    ECDSAP256KeyPairLike, ES256KeyPair, ES256PublicKey, Ed25519KeyPair, Ed25519PublicKey,
    EdDSAKeyPairLike, HS256Key, RS256KeyPair, RS256PublicKey, RSAKeyPairLike,
};
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Decoder, Encoder};
use jwt_simple::reexports::rand::{self, Rng};
use serde_json::{Value, json};

/// `kid` of the RS256 key in `jwks.json` and in minted token headers.
pub const KID_RS256: &str = "demo-rs256";
/// `kid` of the ES256 key.
pub const KID_ES256: &str = "demo-es256";
/// `kid` of the Ed25519 (EdDSA) key.
pub const KID_EDDSA: &str = "demo-eddsa";
/// `kid` put in HS256 token headers. The secret is not in `jwks.json`.
pub const KID_HS256: &str = "demo-hs256";

/// File names inside the key directory.
pub const RS256_FILE: &str = "rs256.pem";
pub const ES256_FILE: &str = "es256.pem";
pub const EDDSA_FILE: &str = "ed25519.pem";
pub const HS256_FILE: &str = "hs256.key";
pub const JWKS_FILE: &str = "jwks.json";
const LOCK_FILE: &str = ".lock";

const RSA_BITS: usize = 2048;
const HMAC_SECRET_LEN: usize = 64;

/// The demo key set: three asymmetric key pairs, one HMAC secret and the
/// public JWK Set describing the asymmetric ones.
pub struct DemoKeys {
    dir: PathBuf,
    rs256: RS256KeyPair,
    es256: ES256KeyPair,
    eddsa: Ed25519KeyPair,
    hs256_secret: Vec<u8>,
    jwks_json: String,
}

impl std::fmt::Debug for DemoKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("DemoKeys")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl DemoKeys {
    /// Loads the key set from `dir`, generating (and saving) any missing part
    /// first. Creates `dir` if needed. Existing files are never overwritten.
    pub fn load_or_generate(dir: &Path) -> Result<DemoKeys> {
        create_private_dir(dir)
            .with_context(|| format!("cannot create key directory {}", dir.display()))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open lock file {}", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("cannot lock {}", lock_path.display()))?;
        let keys = Self::load_or_generate_locked(dir);
        // Dropping the file releases the lock; unlock explicitly anyway so an
        // error here is not silently ignored on exotic filesystems.
        let unlocked = lock.unlock();
        let keys = keys?;
        unlocked.with_context(|| format!("cannot unlock {}", lock_path.display()))?;
        Ok(keys)
    }

    fn load_or_generate_locked(dir: &Path) -> Result<DemoKeys> {
        let rs256 = load_or_create(
            &dir.join(RS256_FILE),
            || {
                let key = RS256KeyPair::generate(RSA_BITS).map_err(|e| anyhow!(e))?;
                key.to_pem().map_err(|e| anyhow!(e))
            },
            |pem| RS256KeyPair::from_pem(pem).map_err(|e| anyhow!(e)),
        )?
        .with_key_id(KID_RS256);
        let es256 = load_or_create(
            &dir.join(ES256_FILE),
            || ES256KeyPair::generate().to_pem().map_err(|e| anyhow!(e)),
            |pem| ES256KeyPair::from_pem(pem).map_err(|e| anyhow!(e)),
        )?
        .with_key_id(KID_ES256);
        let eddsa = load_or_create(
            &dir.join(EDDSA_FILE),
            || Ok(Ed25519KeyPair::generate().to_pem()),
            |pem| Ed25519KeyPair::from_pem(pem).map_err(|e| anyhow!(e)),
        )?
        .with_key_id(KID_EDDSA);
        let hs256_secret = load_or_create(
            &dir.join(HS256_FILE),
            || {
                let mut secret = [0u8; HMAC_SECRET_LEN];
                rand::rng().fill_bytes(&mut secret);
                let mut text = Base64UrlSafeNoPadding::encode_to_string(secret)?;
                text.push('\n');
                Ok(text)
            },
            |text| {
                let secret = Base64UrlSafeNoPadding::decode_to_vec(text.trim(), None)
                    .map_err(|e| anyhow!("not base64url without padding: {e}"))?;
                if secret.len() < 32 {
                    bail!("HMAC secret is {} bytes, want at least 32", secret.len());
                }
                Ok(secret)
            },
        )?;

        let jwks = public_jwks(&rs256, &es256, &eddsa)?;
        let jwks_json = serde_json::to_string_pretty(&jwks)? + "\n";
        let jwks_path = dir.join(JWKS_FILE);
        let jwks_json = match fs::read_to_string(&jwks_path) {
            Ok(existing) => {
                let parsed: Value = serde_json::from_str(&existing)
                    .with_context(|| format!("{} is not valid JSON", jwks_path.display()))?;
                if parsed != jwks {
                    bail!(
                        "{} does not match the private keys in {}; delete the directory to \
                         generate a fresh key set",
                        jwks_path.display(),
                        dir.display()
                    );
                }
                existing
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_new_file(&jwks_path, jwks_json.as_bytes(), false)?;
                jwks_json
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", jwks_path.display()));
            }
        };

        Ok(DemoKeys {
            dir: dir.to_path_buf(),
            rs256,
            es256,
            eddsa,
            hs256_secret,
            jwks_json,
        })
    }

    /// The directory the keys were loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of `jwks.json`, e.g. for an Envoy `local_jwks` file source.
    pub fn jwks_path(&self) -> PathBuf {
        self.dir.join(JWKS_FILE)
    }

    /// The public JWK Set exactly as stored in `jwks.json` (RS256, ES256 and
    /// EdDSA public keys; never the HMAC secret).
    pub fn jwks_json(&self) -> &str {
        &self.jwks_json
    }

    /// The public JWK Set as a JSON value.
    pub fn jwks(&self) -> Result<Value> {
        serde_json::from_str(&self.jwks_json).context("jwks.json is not valid JSON")
    }

    /// The RS256 key pair, with `kid` `demo-rs256`.
    pub fn rs256(&self) -> &RS256KeyPair {
        &self.rs256
    }

    /// The ES256 key pair, with `kid` `demo-es256`.
    pub fn es256(&self) -> &ES256KeyPair {
        &self.es256
    }

    /// The Ed25519 key pair, with `kid` `demo-eddsa`.
    pub fn eddsa(&self) -> &Ed25519KeyPair {
        &self.eddsa
    }

    /// Public halves, with their `kid`s, ready for jwt-simple verification.
    pub fn rs256_public(&self) -> RS256PublicKey {
        self.rs256.public_key().with_key_id(KID_RS256)
    }

    pub fn es256_public(&self) -> ES256PublicKey {
        self.es256.public_key().with_key_id(KID_ES256)
    }

    pub fn eddsa_public(&self) -> Ed25519PublicKey {
        self.eddsa.public_key().with_key_id(KID_EDDSA)
    }

    /// The raw HMAC secret (64 bytes when generated here).
    pub fn hs256_secret(&self) -> &[u8] {
        &self.hs256_secret
    }

    /// The HMAC secret as base64url without padding, as stored in `hs256.key`.
    pub fn hs256_secret_b64(&self) -> String {
        Base64UrlSafeNoPadding::encode_to_string(&self.hs256_secret).unwrap_or_default()
    }

    /// The HMAC secret as a jwt-simple key, with `kid` `demo-hs256`.
    pub fn hs256(&self) -> HS256Key {
        HS256Key::from_bytes(&self.hs256_secret).with_key_id(KID_HS256)
    }

    /// Re-exported for the signer: jwt-simple's inner key pairs.
    pub(crate) fn rs256_inner(&self) -> &jwt_simple::algorithms::RSAKeyPair {
        self.rs256.key_pair()
    }

    pub(crate) fn es256_inner(&self) -> &jwt_simple::algorithms::P256KeyPair {
        self.es256.key_pair()
    }

    pub(crate) fn eddsa_inner(&self) -> &jwt_simple::algorithms::Edwards25519KeyPair {
        self.eddsa.key_pair()
    }
}

/// Builds the public JWK Set. All binary members are base64url without padding.
fn public_jwks(
    rs256: &RS256KeyPair,
    es256: &ES256KeyPair,
    eddsa: &Ed25519KeyPair,
) -> Result<Value> {
    let b64 =
        |bytes: &[u8]| -> Result<String> { Ok(Base64UrlSafeNoPadding::encode_to_string(bytes)?) };

    let rsa = rs256.public_key().to_components();
    let rsa_jwk = json!({
        "kty": "RSA",
        "kid": KID_RS256,
        "alg": "RS256",
        "use": "sig",
        "n": b64(strip_leading_zeros(&rsa.n))?,
        "e": b64(strip_leading_zeros(&rsa.e))?,
    });

    // SEC1 uncompressed point: 0x04 || x (32 bytes) || y (32 bytes).
    let point = es256.key_pair().public_key().to_bytes_uncompressed();
    let (x, y) = match point.as_slice() {
        [0x04, rest @ ..] if rest.len() == 64 => rest.split_at(32),
        _ => bail!(
            "unexpected P-256 public key encoding ({} bytes)",
            point.len()
        ),
    };
    let ec_jwk = json!({
        "kty": "EC",
        "kid": KID_ES256,
        "alg": "ES256",
        "use": "sig",
        "crv": "P-256",
        "x": b64(x)?,
        "y": b64(y)?,
    });

    let okp_jwk = json!({
        "kty": "OKP",
        "kid": KID_EDDSA,
        "alg": "EdDSA",
        "use": "sig",
        "crv": "Ed25519",
        "x": b64(&eddsa.public_key().to_bytes())?,
    });

    Ok(json!({ "keys": [rsa_jwk, ec_jwk, okp_jwk] }))
}

/// JWK integers are minimal big-endian (RFC 7518 §6.3.1).
fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    bytes.get(first..).unwrap_or(bytes)
}

/// Loads `path` with `parse`, or, if it does not exist, writes the output of
/// `create` to it (owner-only permissions) and parses that.
fn load_or_create<T>(
    path: &Path,
    create: impl FnOnce() -> Result<String>,
    parse: impl Fn(&str) -> Result<T>,
) -> Result<T> {
    match fs::read_to_string(path) {
        Ok(text) => parse(&text).with_context(|| format!("cannot load {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = create().with_context(|| format!("cannot generate {}", path.display()))?;
            // Parse before writing so that a file on disk is always loadable.
            let value = parse(&text)
                .with_context(|| format!("generated {} does not load back", path.display()))?;
            write_new_file(path, text.as_bytes(), true)?;
            Ok(value)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes a file atomically (temporary file + rename), so a concurrent reader
/// never sees half a key.
fn write_new_file(path: &Path, contents: &[u8], secret: bool) -> Result<()> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("bad key file path {}", path.display()))?;
    let tmp = path.with_file_name(format!(".{file_name}.tmp.{}", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    drop(file);
    fs::rename(&tmp, path)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::OnceLock;

    /// A fresh temporary directory, removed when dropped.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "ctxgate-demo-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&path);
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// RSA generation is slow in debug builds: tests share one key set.
    pub(crate) fn shared_keys() -> &'static DemoKeys {
        static KEYS: OnceLock<(TempDir, DemoKeys)> = OnceLock::new();
        &KEYS
            .get_or_init(|| {
                let dir = TempDir::new("shared");
                let keys = DemoKeys::load_or_generate(&dir.0).unwrap();
                (dir, keys)
            })
            .1
    }

    #[test]
    fn generate_then_reload_is_identical() {
        let keys = shared_keys();
        let dir = keys.dir();
        let before: Vec<Vec<u8>> = [RS256_FILE, ES256_FILE, EDDSA_FILE, HS256_FILE, JWKS_FILE]
            .iter()
            .map(|f| fs::read(dir.join(f)).unwrap())
            .collect();

        let again = DemoKeys::load_or_generate(dir).unwrap();
        assert_eq!(again.jwks_json(), keys.jwks_json());
        assert_eq!(again.hs256_secret(), keys.hs256_secret());
        assert_eq!(again.hs256_secret().len(), 64);
        assert_eq!(
            again.rs256().to_der().unwrap(),
            keys.rs256().to_der().unwrap()
        );
        assert_eq!(again.es256().to_bytes(), keys.es256().to_bytes());
        assert_eq!(again.eddsa().to_bytes(), keys.eddsa().to_bytes());

        let after: Vec<Vec<u8>> = [RS256_FILE, ES256_FILE, EDDSA_FILE, HS256_FILE, JWKS_FILE]
            .iter()
            .map(|f| fs::read(dir.join(f)).unwrap())
            .collect();
        assert_eq!(before, after, "reloading must not rewrite any file");
    }

    #[test]
    fn pem_and_der_round_trip() {
        let keys = shared_keys();
        let rs = keys.rs256();
        assert_eq!(
            RS256KeyPair::from_pem(&rs.to_pem().unwrap())
                .unwrap()
                .to_der()
                .unwrap(),
            rs.to_der().unwrap()
        );
        assert_eq!(
            RS256KeyPair::from_der(&rs.to_der().unwrap())
                .unwrap()
                .to_pem()
                .unwrap(),
            rs.to_pem().unwrap()
        );
        let es = keys.es256();
        assert_eq!(
            ES256KeyPair::from_pem(&es.to_pem().unwrap())
                .unwrap()
                .to_bytes(),
            es.to_bytes()
        );
        assert_eq!(
            ES256KeyPair::from_der(&es.to_der().unwrap())
                .unwrap()
                .to_bytes(),
            es.to_bytes()
        );
        let ed = keys.eddsa();
        assert_eq!(
            Ed25519KeyPair::from_pem(&ed.to_pem()).unwrap().to_bytes(),
            ed.to_bytes()
        );
        assert_eq!(
            Ed25519KeyPair::from_der(&ed.to_der()).unwrap().to_bytes(),
            ed.to_bytes()
        );
        // Files on disk are PKCS#8.
        for f in [RS256_FILE, ES256_FILE, EDDSA_FILE] {
            let pem = fs::read_to_string(keys.dir().join(f)).unwrap();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{f}: {pem}");
        }
    }

    #[test]
    fn jwks_has_public_members_only() {
        let jwks = shared_keys().jwks().unwrap();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 3);
        let expect = [
            ("RSA", KID_RS256, "RS256", &["n", "e"][..]),
            ("EC", KID_ES256, "ES256", &["crv", "x", "y"][..]),
            ("OKP", KID_EDDSA, "EdDSA", &["crv", "x"][..]),
        ];
        for (jwk, (kty, kid, alg, members)) in keys.iter().zip(expect) {
            let obj = jwk.as_object().unwrap();
            assert_eq!(obj["kty"], kty);
            assert_eq!(obj["kid"], kid);
            assert_eq!(obj["alg"], alg);
            assert_eq!(obj["use"], "sig");
            let mut names: Vec<&str> = obj.keys().map(String::as_str).collect();
            names.sort_unstable();
            let mut want = vec!["kty", "kid", "alg", "use"];
            want.extend_from_slice(members);
            want.sort_unstable();
            assert_eq!(names, want, "{kid} must carry public members only");
            for m in members {
                let v = obj[*m].as_str().unwrap();
                assert!(!v.contains('=') && !v.contains('+') && !v.contains('/'));
            }
        }
        assert_eq!(keys[0]["e"], "AQAB");
        assert_eq!(keys[1]["crv"], "P-256");
        assert_eq!(keys[2]["crv"], "Ed25519");
        assert!(
            !shared_keys()
                .jwks_json()
                .contains(&shared_keys().hs256_secret_b64())
        );
    }

    #[test]
    fn mismatched_jwks_is_an_error() {
        let keys = shared_keys();
        let dir = TempDir::new("mismatch");
        fs::create_dir_all(&dir.0).unwrap();
        for f in [RS256_FILE, ES256_FILE, EDDSA_FILE, HS256_FILE] {
            fs::copy(keys.dir().join(f), dir.0.join(f)).unwrap();
        }
        // Missing jwks.json is derived from the keys.
        let copy = DemoKeys::load_or_generate(&dir.0).unwrap();
        assert_eq!(copy.jwks().unwrap(), keys.jwks().unwrap());
        // A jwks.json for other keys is refused.
        fs::remove_file(dir.0.join(ES256_FILE)).unwrap();
        fs::remove_file(dir.0.join(JWKS_FILE)).unwrap();
        let regenerated = DemoKeys::load_or_generate(&dir.0).unwrap();
        assert_ne!(regenerated.jwks().unwrap(), keys.jwks().unwrap());
        fs::write(dir.0.join(JWKS_FILE), keys.jwks_json()).unwrap();
        let err = DemoKeys::load_or_generate(&dir.0).unwrap_err();
        assert!(format!("{err:#}").contains("does not match"), "{err:#}");
    }

    #[test]
    fn bad_key_file_is_a_clear_error() {
        let dir = TempDir::new("bad");
        fs::create_dir_all(&dir.0).unwrap();
        fs::write(dir.0.join(RS256_FILE), "not a key").unwrap();
        let err = DemoKeys::load_or_generate(&dir.0).unwrap_err();
        assert!(format!("{err:#}").contains(RS256_FILE), "{err:#}");
    }
}
