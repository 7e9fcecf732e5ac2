//! One versioned encoding for every shared-data record.
//!
//! Shared data outlives configurations and module versions: during a
//! rollout an old and a new module, or two plugins that share a `vm_id`,
//! read each other's records. So every value ctxgate writes starts with a
//! three-byte header: a magic byte, the record kind and the kind's format
//! version. A reader checks all three and then decodes a payload whose
//! length it checks too. What does not decode is an error the caller
//! handles explicitly and counts (`shared_record_invalid`); it is never
//! read as "empty, start fresh", because for a rate-limit bucket or a
//! circuit breaker starting fresh is exactly what an attacker would want.
//!
//! Fixed-width integers are little-endian.
//!
//! Changing a format means a new version number, and a module that writes
//! version N must still read version N - 1 (and rewrite it as N): during a
//! rollout old and new modules run side by side, and an old module treats
//! the new version as a record it cannot read (counted, failing as each
//! record's owner documents) until it is replaced. A record that does not
//! decode is left as it is: it stays unreadable until it is rewritten by
//! a module that reads it, or Envoy restarts.

use std::fmt;

const MAGIC: u8 = 0xC7;
const HEADER: usize = 3;

/// What a record holds. The numbers are part of the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    BucketSlot = 1,
    TokenCacheSlot = 2,
    JwksSchedule = 3,
    JwksKeys = 4,
    AdaptiveWorker = 5,
    AdaptiveRegistry = 6,
    Breaker = 7,
    Secret = 8,
    McpSession = 9,
    NonceBucket = 10,
    TenantLabels = 11,
}

/// Why a shared-data value could not be read as the record expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// No ctxgate header (written by something else, or truncated).
    NotARecord,
    /// A ctxgate record of another kind.
    WrongKind(u8),
    /// A version this module does not read (a newer module wrote it).
    UnknownVersion(u8),
    /// The header is right but the payload does not decode.
    Malformed,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::NotARecord => f.write_str("not a ctxgate record"),
            RecordError::WrongKind(k) => write!(f, "a ctxgate record of another kind ({k})"),
            RecordError::UnknownVersion(v) => write!(f, "record format version {v} is unknown"),
            RecordError::Malformed => f.write_str("the record payload does not decode"),
        }
    }
}

impl std::error::Error for RecordError {}

/// Starts a record of `kind` at `version`; append the payload with the
/// [`Writer`] methods.
pub fn writer(kind: Kind, version: u8, capacity: usize) -> Writer {
    let mut out = Vec::with_capacity(HEADER + capacity);
    out.extend_from_slice(&[MAGIC, kind as u8, version]);
    Writer(out)
}

/// Checks the header of `bytes` and returns a reader over the payload.
pub fn reader(bytes: &[u8], kind: Kind, version: u8) -> Result<Reader<'_>, RecordError> {
    let (header, payload) = bytes
        .split_at_checked(HEADER)
        .ok_or(RecordError::NotARecord)?;
    match *header {
        [MAGIC, k, v] if k == kind as u8 && v == version => Ok(Reader(payload)),
        [MAGIC, k, _] if k != kind as u8 => Err(RecordError::WrongKind(k)),
        [MAGIC, _, v] => Err(RecordError::UnknownVersion(v)),
        _ => Err(RecordError::NotARecord),
    }
}

/// Builds a record payload.
pub struct Writer(Vec<u8>);

impl Writer {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    /// A length-prefixed (u16) byte string; `None` if it is too long.
    pub fn short_bytes(&mut self, v: &[u8]) -> Option<&mut Self> {
        let len = u16::try_from(v.len()).ok()?;
        self.u16(len);
        self.0.extend_from_slice(v);
        Some(self)
    }
    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Reads a record payload; every read is bounds-checked.
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub fn u8(&mut self) -> Result<u8, RecordError> {
        let (&first, rest) = self.0.split_first().ok_or(RecordError::Malformed)?;
        self.0 = rest;
        Ok(first)
    }
    pub fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let (head, rest) = self.0.split_at_checked(N).ok_or(RecordError::Malformed)?;
        self.0 = rest;
        head.try_into().map_err(|_| RecordError::Malformed)
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(RecordError::Malformed)?;
        self.0 = rest;
        Ok(head)
    }
    /// A byte string written by [`Writer::short_bytes`].
    pub fn short_bytes(&mut self) -> Result<&'a [u8], RecordError> {
        let len = self.u16()?;
        self.bytes(usize::from(len))
    }
    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Fails unless the whole payload was read.
    pub fn end(&self) -> Result<(), RecordError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(RecordError::Malformed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut w = writer(Kind::Breaker, 1, 16);
        w.u8(7).u16(513).u32(70_000).u64(u64::MAX);
        w.short_bytes(b"kid").unwrap();
        let bytes = w.finish();
        let mut r = reader(&bytes, Kind::Breaker, 1).unwrap();
        assert_eq!(r.u8(), Ok(7));
        assert_eq!(r.u16(), Ok(513));
        assert_eq!(r.u32(), Ok(70_000));
        assert_eq!(r.u64(), Ok(u64::MAX));
        assert_eq!(r.short_bytes(), Ok(&b"kid"[..]));
        assert_eq!(r.end(), Ok(()));
        assert_eq!(r.u8(), Err(RecordError::Malformed));
    }

    #[test]
    fn foreign_values_are_told_apart() {
        let bytes = writer(Kind::Breaker, 1, 0).finish();
        assert!(matches!(
            reader(&bytes, Kind::BucketSlot, 1),
            Err(RecordError::WrongKind(7))
        ));
        assert!(matches!(
            reader(&bytes, Kind::Breaker, 2),
            Err(RecordError::UnknownVersion(1))
        ));
        assert!(matches!(
            reader(b"", Kind::Breaker, 1),
            Err(RecordError::NotARecord)
        ));
        assert!(matches!(
            reader(b"1700000000 0 0", Kind::JwksSchedule, 1),
            Err(RecordError::NotARecord)
        ));
    }
}
