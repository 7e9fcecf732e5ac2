//! The chained batch: one JSON line, and the verifier of a file of them.
//!
//! ```text
//! {"chain":"<32 hex>","seq":N,"prev":"<64 hex>","time_ms":T,"dropped":D,"count":K,"records":[...],"hash":"<64 hex>"}
//! ```
//!
//! * `records`: one per request: what the request carried (request id,
//!   tenant, subject, ...) once, and `decisions`, one event per stage
//!   decision (an array, see the README); `count` is the number of events;
//! * `chain`: random per singleton start; `seq` counts from 1 in a chain;
//! * `prev`: the `hash` of batch `seq - 1` of the chain (64 zeros for
//!   the first);
//! * `dropped`: events lost since the previous batch (queue or backlog
//!   full), so a loss is part of the record, not a gap in it;
//! * `hash`: SHA-256 of the line's bytes up to (not including)
//!   `,"hash":`. The line is its canonical form: the collector writes the
//!   bytes it received.
//!
//! Editing a line breaks its own hash; deleting one breaks the sequence
//! and the next line's `prev`; swapping two breaks the sequence. (As with
//! any hash chain without an external anchor, removing the newest batches
//! of a chain is not visible in the file alone: the singleton's
//! `ctxgate_audit.batches_delivered` counter tells how many there were.)

use serde::Deserialize;

use super::event::hex;

/// `prev` of a chain's first batch.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HASH_FIELD: &[u8] = b",\"hash\":\"";

/// SHA-256 (the `sha2` implementation: a quarter faster than
/// `hmac-sha256` on batch-sized inputs in V8).
fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// A batch's bytes and its hash.
pub struct Batch {
    pub bytes: Vec<u8>,
    pub hash: String,
}

/// Writes a batch. `records`: the records' JSON joined by commas (the
/// inside of the `records` array), holding `events` decisions in all.
pub fn encode(
    chain: &str,
    seq: u64,
    prev: &str,
    time_ms: u64,
    dropped: u64,
    events: usize,
    records: &[u8],
) -> Batch {
    let mut bytes = Vec::with_capacity(records.len() + 320);
    bytes.extend_from_slice(
        format!(
            "{{\"chain\":\"{chain}\",\"seq\":{seq},\"prev\":\"{prev}\",\"time_ms\":{time_ms},\
             \"dropped\":{dropped},\"count\":{events},\"records\":["
        )
        .as_bytes(),
    );
    bytes.extend_from_slice(records);
    bytes.push(b']');
    let hash = hex(&sha256(&bytes));
    bytes.extend_from_slice(HASH_FIELD);
    bytes.extend_from_slice(hash.as_bytes());
    bytes.extend_from_slice(b"\"}");
    Batch { bytes, hash }
}

/// Which batch a line is (the collector's duplicate check).
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct Head {
    pub chain: String,
    pub seq: u64,
}

pub fn head(line: &[u8]) -> Option<Head> {
    serde_json::from_slice(line).ok()
}

#[derive(Deserialize)]
struct Line {
    chain: String,
    seq: u64,
    prev: String,
    dropped: u64,
    count: usize,
    records: Vec<RecordEvents>,
    hash: String,
}

#[derive(Deserialize)]
struct RecordEvents {
    decisions: Vec<serde::de::IgnoredAny>,
}

/// What an intact file holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub chains: usize,
    pub batches: u64,
    /// One per request.
    pub records: u64,
    /// One per decision.
    pub events: u64,
    pub dropped: u64,
}

/// The first place a file breaks.
#[derive(Debug, PartialEq, Eq)]
pub struct Broken {
    /// 1-based line number.
    pub line: usize,
    pub chain: Option<String>,
    pub seq: Option<u64>,
    pub what: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}", self.line)?;
        if let Some(chain) = &self.chain {
            write!(f, ", chain {chain}")?;
        }
        if let Some(seq) = self.seq {
            write!(f, ", seq {seq}")?;
        }
        write!(f, ": {}", self.what)
    }
}

/// Checks every chain in `lines` (one batch per line, in file order).
pub fn verify<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Result<Summary, Broken> {
    let mut summary = Summary::default();
    // chain -> (last seq, last hash)
    let mut chains: std::collections::HashMap<String, (u64, String)> =
        std::collections::HashMap::new();
    for (i, line) in lines.into_iter().enumerate() {
        let number = i + 1;
        let broken = |chain: Option<&str>, seq: Option<u64>, what: String| Broken {
            line: number,
            chain: chain.map(str::to_owned),
            seq,
            what,
        };
        if line.is_empty() {
            return Err(broken(None, None, "empty line".to_owned()));
        }
        let parsed: Line = serde_json::from_slice(line)
            .map_err(|e| broken(None, None, format!("not a batch: {e}")))?;
        let (chain, seq) = (Some(parsed.chain.as_str()), Some(parsed.seq));
        let content = line
            .len()
            .checked_sub(HASH_FIELD.len() + 64 + 2)
            .and_then(|end| line.get(..end))
            .filter(|content| {
                line.get(content.len()..)
                    .is_some_and(|tail| tail.starts_with(HASH_FIELD) && tail.ends_with(b"\"}"))
            });
        let Some(content) = content else {
            return Err(broken(
                chain,
                seq,
                "the line does not end with its hash".to_owned(),
            ));
        };
        if hex(&sha256(content)) != parsed.hash {
            return Err(broken(
                chain,
                seq,
                "content does not match its hash (edited)".to_owned(),
            ));
        }
        let events: usize = parsed.records.iter().map(|r| r.decisions.len()).sum();
        if parsed.count != events {
            return Err(broken(
                chain,
                seq,
                format!("count {} but {events} events", parsed.count),
            ));
        }
        let (expected_seq, expected_prev) = match chains.get(&parsed.chain) {
            Some((last, hash)) => (last.saturating_add(1), hash.as_str()),
            None => (1, GENESIS),
        };
        if parsed.seq != expected_seq {
            return Err(broken(
                chain,
                seq,
                format!("expected seq {expected_seq}: a batch is missing or out of order"),
            ));
        }
        if parsed.prev != expected_prev {
            return Err(broken(
                chain,
                seq,
                "prev is not the hash of the chain's previous batch".to_owned(),
            ));
        }
        summary.batches += 1;
        summary.records += parsed.records.len() as u64;
        summary.events += events as u64;
        summary.dropped = summary.dropped.saturating_add(parsed.dropped);
        chains.insert(parsed.chain, (parsed.seq, parsed.hash));
    }
    summary.chains = chains.len();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash that chains batches is the standard SHA-256 on every
    /// target (on wasm32 the `sha2` crate uses its SIMD backend): the
    /// FIPS 180-2 vector, and a second implementation at every length
    /// around the block and padding boundaries.
    #[test]
    fn the_chain_hash_is_standard_sha256() {
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let data: Vec<u8> = (0..1200u32).map(|i| (i * 31 % 251) as u8).collect();
        for len in (0..300).chain([511, 512, 513, 1199]) {
            let bytes = data.get(..len).unwrap();
            assert_eq!(
                sha256(bytes),
                hmac_sha256::Hash::hash(bytes),
                "length {len}"
            );
        }
    }
}
