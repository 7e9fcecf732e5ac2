//! Mints a demo JWT and prints it on stdout (nothing else). Generates the
//! demo keys on first use.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use ctxgate_demo::keys::DemoKeys;
use ctxgate_demo::mint::{self, MintAlg, MintOptions};
use serde_json::{Map, Value};

const KEYS_DIR_ENV: &str = "CTXGATE_KEYS_DIR";
const DEFAULT_KEYS_DIR: &str = ".demo/keys";
/// Time offsets are limited to a century either way, so that `now + offset`
/// cannot overflow and typos are caught as usage errors.
const MAX_OFFSET_SECS: i64 = 100 * 366 * 24 * 3600;

/// Mint a JWT signed with the ctxgate demo keys.
///
/// The token has iss, sub, aud, iat, exp, tenant_id and context_scopes
/// (plus nbf with --nbf-in); --claims is merged last and can override any of
/// them. Keys and jwks.json are created in the keys directory if missing.
#[derive(Parser, Debug)]
#[command(name = "ctxgate-mint-token", version, allow_negative_numbers = true)]
struct Args {
    /// `sub` claim.
    #[arg(long, default_value = "user-1")]
    sub: String,
    /// `tenant_id` claim; an empty string omits it.
    #[arg(long, default_value = "acme")]
    tenant: String,
    /// Entry of the `context_scopes` claim, e.g. 'read:projects/*'. Repeatable.
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// Audience. Repeatable: one gives a string `aud`, several an array;
    /// `--aud ''` omits it.
    #[arg(long = "aud", value_name = "AUD", default_value = ctxgate_demo::mint::DEMO_AUDIENCE)]
    aud: Vec<String>,
    /// `iss` claim.
    #[arg(long, default_value = ctxgate_demo::mint::DEMO_ISSUER)]
    iss: String,
    /// Signing key: RS256, ES256, EdDSA or HS256.
    #[arg(long, default_value = "ES256", value_name = "ALG")]
    alg: MintAlg,
    /// Lifetime in seconds; negative mints an already expired token.
    #[arg(
        long,
        default_value_t = 3600,
        value_name = "SECONDS",
        allow_hyphen_values = true,
        value_parser = clap::value_parser!(i64).range(-MAX_OFFSET_SECS..=MAX_OFFSET_SECS)
    )]
    exp_in: i64,
    /// Set `nbf` to now + SECONDS (may be negative).
    #[arg(
        long,
        value_name = "SECONDS",
        allow_hyphen_values = true,
        value_parser = clap::value_parser!(i64).range(-MAX_OFFSET_SECS..=MAX_OFFSET_SECS)
    )]
    nbf_in: Option<i64>,
    /// Header `kid` (default: the key's kid); `--kid ''` omits it.
    #[arg(long)]
    kid: Option<String>,
    /// JSON object merged over the claims, e.g. '{"act":{"sub":"agent-1"}}'.
    #[arg(long, value_name = "JSON", value_parser = parse_claims)]
    claims: Option<Map<String, Value>>,
    /// Key directory [default: $CTXGATE_KEYS_DIR, else .demo/keys].
    #[arg(long, value_name = "DIR")]
    keys_dir: Option<PathBuf>,
}

fn parse_claims(text: &str) -> Result<Map<String, Value>, String> {
    mint::parse_claims_object(text).map_err(|e| format!("{e:#}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ctxgate-mint-token: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<String> {
    let keys_dir = args
        .keys_dir
        .or_else(|| {
            std::env::var_os(KEYS_DIR_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KEYS_DIR));
    let keys = DemoKeys::load_or_generate(&keys_dir)
        .with_context(|| format!("cannot load demo keys from {}", keys_dir.display()))?;
    let opts = MintOptions {
        sub: args.sub,
        tenant: Some(args.tenant).filter(|t| !t.is_empty()),
        scopes: args.scopes,
        aud: args.aud.into_iter().filter(|a| !a.is_empty()).collect(),
        iss: args.iss,
        alg: args.alg,
        exp_in: args.exp_in,
        nbf_in: args.nbf_in,
        kid: args.kid,
        extra_claims: args.claims.unwrap_or_default(),
    };
    mint::mint(&keys, &opts)
}
