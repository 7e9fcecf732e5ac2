//! A header list in one buffer: every name and value back to back, and one
//! entry per header pointing into it.
//!
//! A request's headers are read once per request and changed a dozen
//! times by the stages. As `(String, Vec<u8>)` pairs that cost two
//! allocations per header read and per header added; here the whole list
//! costs two (the buffer and the entries), and the wasm engine hands over
//! the host's own buffer without copying it.

/// Headers in order, names lower case (Envoy normalizes them), values raw
/// bytes (HTTP allows non-UTF-8 octets there).
#[derive(Debug, Clone, Default)]
pub struct Headers {
    /// Names and values. Bytes a changed or removed header no longer
    /// points at stay until the list is dropped: a request sees a few
    /// dozen changes at most.
    bytes: Vec<u8>,
    entries: Vec<Entry>,
}

/// Where one header's name and value are in the buffer.
#[derive(Debug, Clone, Copy)]
struct Entry {
    name: (usize, usize),
    value: (usize, usize),
}

/// An empty list, to borrow for as long as needed.
pub static NO_HEADERS: Headers = Headers::new();

impl Headers {
    pub const fn new() -> Headers {
        Headers {
            bytes: Vec::new(),
            entries: Vec::new(),
        }
    }

    /// Room for `headers` headers of `bytes` bytes in all, without
    /// growing.
    pub fn with_capacity(headers: usize, bytes: usize) -> Headers {
        Headers {
            bytes: Vec::with_capacity(bytes),
            entries: Vec::with_capacity(headers),
        }
    }

    /// Takes over proxy-wasm's encoding of a header map (a count, then a
    /// name length and a value length per header, then each name and each
    /// value followed by a NUL), pointing into it rather than copying it.
    /// `None` if it is not well formed. A name that is not UTF-8 (Envoy
    /// never sends one) is kept in its lossy form.
    pub fn from_proxy_wasm(bytes: Vec<u8>) -> Option<Headers> {
        let word = |at: usize| -> Option<usize> {
            let b = bytes.get(at..at.checked_add(4)?)?;
            usize::try_from(u32::from_le_bytes(b.try_into().ok()?)).ok()
        };
        let count = word(0)?;
        let mut at = count.checked_mul(8)?.checked_add(4)?;
        if at > bytes.len() {
            return None;
        }
        let mut entries = Vec::with_capacity(count.saturating_add(16));
        let mut lossy: Vec<(usize, String)> = Vec::new();
        for i in 0..count {
            let name_len = word(4 + i * 8)?;
            let value_len = word(8 + i * 8)?;
            let name = (at, at.checked_add(name_len)?);
            let value_start = name.1.checked_add(1)?;
            let value = (value_start, value_start.checked_add(value_len)?);
            if bytes.get(name.1) != Some(&0) || bytes.get(value.1) != Some(&0) {
                return None;
            }
            if let Err(e) = std::str::from_utf8(bytes.get(name.0..name.1)?) {
                let raw = bytes.get(name.0..name.1).unwrap_or_default();
                log::debug!("ctxgate: a header name is not UTF-8 ({e})");
                lossy.push((i, String::from_utf8_lossy(raw).into_owned()));
            }
            entries.push(Entry { name, value });
            at = value.1 + 1;
        }
        let mut headers = Headers { bytes, entries };
        for (i, name) in lossy {
            let start = headers.bytes.len();
            headers.bytes.extend_from_slice(name.as_bytes());
            if let Some(entry) = headers.entries.get_mut(i) {
                entry.name = (start, headers.bytes.len());
            }
        }
        Some(headers)
    }

    /// Appends a header.
    pub fn push(&mut self, name: &str, value: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(name.as_bytes());
        let middle = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.entries.push(Entry {
            name: (start, middle),
            value: (middle, self.bytes.len()),
        });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn name_bytes(&self, entry: &Entry) -> &[u8] {
        self.bytes
            .get(entry.name.0..entry.name.1)
            .unwrap_or_default()
    }

    fn value_bytes(&self, entry: &Entry) -> &[u8] {
        self.bytes
            .get(entry.value.0..entry.value.1)
            .unwrap_or_default()
    }

    /// Header `i`: its name and value.
    pub fn get(&self, i: usize) -> Option<(&str, &[u8])> {
        let entry = self.entries.get(i)?;
        // Names are pushed as `&str` or checked when taken over.
        let name = std::str::from_utf8(self.name_bytes(entry)).unwrap_or_default();
        Some((name, self.value_bytes(entry)))
    }

    /// The value of header `i`.
    pub fn value(&self, i: usize) -> Option<&[u8]> {
        Some(self.value_bytes(self.entries.get(i)?))
    }

    /// Whether header `i` is named `name`.
    pub fn is_named(&self, i: usize, name: &str) -> bool {
        self.entries
            .get(i)
            .is_some_and(|e| self.name_bytes(e) == name.as_bytes())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        (0..self.entries.len()).filter_map(|i| self.get(i))
    }

    /// The positions of the headers named `name`, in order.
    pub fn positions<'a>(&'a self, name: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.entries
            .iter()
            .enumerate()
            .filter(move |(_, e)| self.name_bytes(e) == name.as_bytes())
            .map(|(i, _)| i)
    }

    /// Every value of header `name`, in order.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.entries
            .iter()
            .filter(move |e| self.name_bytes(e) == name.as_bytes())
            .map(|e| self.value_bytes(e))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.positions(name).next().is_some()
    }

    /// Replaces the value of header `i`: in place if the new one is no
    /// longer, else after everything else.
    pub fn set_value(&mut self, i: usize, value: &[u8]) {
        let Some(entry) = self.entries.get(i).copied() else {
            return;
        };
        let (start, end) = entry.value;
        let range = if value.len() <= end.saturating_sub(start) {
            match self.bytes.get_mut(start..start + value.len()) {
                Some(slot) => slot.copy_from_slice(value),
                None => return,
            }
            (start, start + value.len())
        } else {
            let start = self.bytes.len();
            self.bytes.extend_from_slice(value);
            (start, self.bytes.len())
        };
        if let Some(entry) = self.entries.get_mut(i) {
            entry.value = range;
        }
    }

    /// Removes header `i`; the later ones move up.
    pub fn remove(&mut self, i: usize) {
        if i < self.entries.len() {
            self.entries.remove(i);
        }
    }

    /// The headers as owned pairs (tests and hosts that want them so).
    pub fn to_pairs(&self) -> Vec<(String, Vec<u8>)> {
        self.iter()
            .map(|(n, v)| (n.to_owned(), v.to_vec()))
            .collect()
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Headers) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

impl<N: AsRef<str>, V: AsRef<[u8]>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(pairs: I) -> Headers {
        let mut headers = Headers::new();
        for (name, value) in pairs {
            headers.push(name.as_ref(), value.as_ref());
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (n, v) in pairs {
            out.extend_from_slice(&(n.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (n, v) in pairs {
            out.extend_from_slice(n.as_bytes());
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    #[test]
    fn the_proxy_wasm_encoding_is_read_in_place() {
        let pairs: &[(&str, &[u8])] = &[
            (":method", b"GET"),
            ("x-empty", b""),
            ("x-raw", b"\xff\x00\x01"),
            ("x-a", b"1"),
            ("x-a", b"2"),
        ];
        let headers = Headers::from_proxy_wasm(encode(pairs)).unwrap();
        assert_eq!(headers.iter().collect::<Vec<_>>(), pairs.to_vec());
        assert_eq!(
            headers.values("x-a").collect::<Vec<_>>(),
            [b"1".as_slice(), b"2"]
        );
        assert!(headers.contains("x-empty"));
        assert!(!headers.contains("x-"));
        assert_eq!(Headers::from_proxy_wasm(encode(&[])).unwrap().len(), 0);
    }

    #[test]
    fn a_malformed_encoding_is_refused_not_guessed() {
        let good = encode(&[("a", b"b"), ("c", b"d")]);
        for cut in 0..good.len() {
            assert!(
                Headers::from_proxy_wasm(good.get(..cut).unwrap().to_vec()).is_none(),
                "{cut}"
            );
        }
        let mut no_nul = good.clone();
        let last = no_nul.len() - 1;
        no_nul[last] = b'x';
        assert!(Headers::from_proxy_wasm(no_nul).is_none());
        let mut huge = good;
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Headers::from_proxy_wasm(huge).is_none());
    }

    #[test]
    fn a_name_that_is_not_utf8_is_kept_lossy() {
        let mut bytes = encode(&[("ab", b"v")]);
        bytes[12] = 0xff;
        let headers = Headers::from_proxy_wasm(bytes).unwrap();
        assert_eq!(headers.get(0), Some(("\u{fffd}b", b"v".as_slice())));
    }

    #[test]
    fn values_are_replaced_in_place_or_after_the_rest() {
        let mut headers: Headers = [("a", "long value"), ("b", "x")].into_iter().collect();
        headers.set_value(0, b"short");
        headers.set_value(1, b"a longer value");
        headers.push("c", b"3");
        headers.set_value(0, b"");
        assert_eq!(
            headers.to_pairs(),
            [
                ("a".to_owned(), b"".to_vec()),
                ("b".to_owned(), b"a longer value".to_vec()),
                ("c".to_owned(), b"3".to_vec()),
            ]
        );
        headers.remove(1);
        headers.remove(7);
        assert_eq!(
            headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            ["a", "c"]
        );
        assert!(headers.is_named(1, "c"));
        assert_eq!(headers.positions("c").collect::<Vec<_>>(), [1]);
        assert_eq!(headers.value(1), Some(b"3".as_slice()));
        assert_eq!(headers.value(2), None);
    }
}
