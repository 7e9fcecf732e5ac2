//! Report ids: what makes a retried call safe to apply.
//!
//! A client that adds hits sends `x-ctxgate-report: <reporter>-<seq>` with
//! the call: `<reporter>` is exactly 16 lowercase hex digits (a random 64-bit
//! id per reporting process, e.g. per gateway worker VM) and `<seq>` a
//! decimal u64 that the reporter never reuses. Retrying a report means
//! resending the same id with the same hits and descriptors; the service
//! applies each id at most once within the dedupe horizon ([`Dedupe`]), and
//! answers a duplicate from the counters as they are. See the crate docs for
//! why this, and not a deadline, is what makes "give up and retry" exact.
//!
//! Marks are kept per chunk of [`CHUNK_IDS`] consecutive sequence numbers of
//! one reporter, one bit per id: a reporter counting 1, 2, 3, ... costs 512
//! bytes per 4096 reports, in Redis (a bitmap per chunk, `SETBIT`) and in
//! memory alike.

use std::fmt;
use std::time::Duration;

/// The gRPC request metadata (HTTP/2 header) carrying the report id.
pub const HEADER: &str = "x-ctxgate-report";

/// How many consecutive sequence numbers of one reporter share a chunk of
/// marks (one bit each).
pub const CHUNK_IDS: u64 = 4096;

/// One report: applied at most once within the horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReportId {
    pub reporter: u64,
    pub seq: u64,
}

impl ReportId {
    /// Parses a header value: `<16 lowercase hex digits>-<decimal u64>`,
    /// nothing else (no sign, no spaces, no uppercase).
    pub fn parse(text: &str) -> Option<ReportId> {
        let (reporter, seq) = text.split_once('-')?;
        let lower_hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
        if reporter.len() != 16 || !reporter.bytes().all(lower_hex) {
            return None;
        }
        if seq.is_empty() || !seq.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        Some(ReportId {
            reporter: u64::from_str_radix(reporter, 16).ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The chunk of marks this id belongs to.
    pub fn chunk(self) -> u64 {
        self.seq / CHUNK_IDS
    }

    /// This id's bit within its chunk.
    pub fn bit(self) -> u64 {
        self.seq % CHUNK_IDS
    }
}

impl fmt::Display for ReportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.reporter, self.seq)
    }
}

/// How report ids are remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dedupe {
    /// How long an applied id is remembered (at least; a chunk lives this
    /// long after its last mark). It must exceed how long clients retry a
    /// report (ctxgate's filter gives up after 300 s): a retry arriving
    /// after its mark expired is counted again.
    pub horizon: Duration,
    /// In-memory storage only: how many chunks of marks to keep (512 bytes
    /// each, plus about 100 bytes of bookkeeping). Beyond it the least
    /// recently marked chunk is forgotten before its horizon, which can only
    /// make a later retry of one of its ids count twice, never lose a count;
    /// each such eviction is counted and logged.
    pub max_chunks: usize,
}

impl Default for Dedupe {
    fn default() -> Dedupe {
        Dedupe {
            horizon: Duration::from_secs(3600),
            max_chunks: 16_384,
        }
    }
}

impl fmt::Display for Dedupe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "report ids remembered {} s", self.horizon.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_well_formed_ids() {
        assert_eq!(
            ReportId::parse("0123456789abcdef-42"),
            Some(ReportId {
                reporter: 0x0123_4567_89ab_cdef,
                seq: 42
            })
        );
        let max = ReportId::parse("ffffffffffffffff-18446744073709551615").unwrap();
        assert_eq!((max.reporter, max.seq), (u64::MAX, u64::MAX));
        assert_eq!(max.to_string(), "ffffffffffffffff-18446744073709551615");
        assert_eq!(
            ReportId::parse("00000000000000ab-7").unwrap().to_string(),
            "00000000000000ab-7"
        );
    }

    #[test]
    fn refuses_anything_else() {
        for bad in [
            "",
            "-",
            "0123456789abcdef",
            "0123456789abcdef-",
            "0123456789abcdef1",
            "0123456789abcde-1",
            "0123456789abcdef0-1",
            "0123456789ABCDEF-1",
            "0123456789abcdeg-1",
            "0123456789abcdef-x",
            "0123456789abcdef-+1",
            "0123456789abcdef--1",
            "0123456789abcdef-1-2",
            "0123456789abcdef- 1",
            " 0123456789abcdef-1",
            "0123456789abcdef-18446744073709551616",
        ] {
            assert_eq!(ReportId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn chunks_consecutive_ids() {
        let id = |seq| ReportId { reporter: 1, seq };
        assert_eq!((id(0).chunk(), id(0).bit()), (0, 0));
        assert_eq!((id(4095).chunk(), id(4095).bit()), (0, 4095));
        assert_eq!((id(4096).chunk(), id(4096).bit()), (1, 0));
    }
}
