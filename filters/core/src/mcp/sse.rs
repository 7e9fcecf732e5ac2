//! A `text/event-stream` body, split into its events byte for byte, and an
//! event's `data` read and replaced the way the HTML standard's event
//! stream parser reads it.
//!
//! Lines end in CRLF, LF or CR; a blank line ends an event. A line
//! starting with `:` is a comment; otherwise the field name runs to the
//! first `:` and the value follows it, less one leading space (a line
//! without `:` is a field with an empty value). An event's data is its
//! `data` values joined with `\n`. A UTF-8 byte order mark may start the
//! stream. Bytes that are not UTF-8 are read as U+FFFD, as a client would.
//!
//! The stream may arrive in any chunks: a CR at the end of a chunk may be
//! half of a CRLF, so the event it might end waits for the next byte.

/// The byte order mark a stream may start with.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// An incomplete event grew past the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTooLarge;

/// Splits a stream into events as its chunks arrive.
#[derive(Debug, Clone)]
pub struct EventSplitter {
    /// The start of the stream not yet returned: an incomplete event.
    pending: Vec<u8>,
    /// Where the first incomplete line of `pending` starts.
    line_start: usize,
    /// Where the search for that line's end goes on: the bytes before it
    /// hold no line terminator, so a long line arriving in small chunks
    /// is scanned once, not once per chunk.
    scanned: usize,
    /// Whether the start of the stream (a byte order mark) is behind us.
    started: bool,
    max_event_bytes: usize,
}

impl EventSplitter {
    /// A splitter that refuses to hold an incomplete event longer than
    /// `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> EventSplitter {
        EventSplitter {
            pending: Vec::new(),
            line_start: 0,
            scanned: 0,
            started: false,
            max_event_bytes,
        }
    }

    /// Takes the next chunk of the stream, and returns the events it
    /// completes, in order, each with the blank line that ends it (a
    /// leading byte order mark comes out on its own).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, EventTooLarge> {
        self.pending.extend_from_slice(chunk);
        let events = self.split(false);
        if self.pending.len() > self.max_event_bytes {
            return Err(EventTooLarge);
        }
        Ok(events)
    }

    /// The end of the stream: the events still held, and last the rest of
    /// the stream if it ended inside an event (without its blank line).
    pub fn finish(&mut self) -> Vec<Vec<u8>> {
        let mut events = self.split(true);
        if !self.pending.is_empty() {
            events.push(std::mem::take(&mut self.pending));
        }
        self.line_start = 0;
        self.scanned = 0;
        events
    }

    /// Cuts the complete events off `pending`. `at_end`: no byte follows.
    fn split(&mut self, at_end: bool) -> Vec<Vec<u8>> {
        let mut events = Vec::new();
        if !self.started {
            if !at_end && self.pending.len() < BOM.len() && BOM.starts_with(&self.pending) {
                return events;
            }
            self.started = true;
            if self.pending.starts_with(BOM) {
                events.push(self.pending.drain(..BOM.len()).collect());
            }
        }
        let mut event_start = 0;
        let mut line = self.line_start;
        let mut search = self.scanned.max(line);
        while let Some((content_end, next)) = line_end(&self.pending, search, at_end) {
            if content_end == line {
                events.push(
                    self.pending
                        .get(event_start..next)
                        .unwrap_or_default()
                        .to_vec(),
                );
                event_start = next;
            }
            line = next;
            search = next;
        }
        // No terminator after `search`, except perhaps a CR as the last
        // byte, which the next chunk may make a CRLF: search again from
        // the last byte.
        let scanned = self.pending.len().saturating_sub(1).max(line);
        self.pending.drain(..event_start);
        self.line_start = line - event_start;
        self.scanned = scanned - event_start;
        events
    }
}

/// The end of the line that has no terminator before `from`: where its
/// content ends and the next line starts. `None` if it has no end yet (a
/// CR at the very end may be half of a CRLF, unless `at_end`).
fn line_end(bytes: &[u8], from: usize, at_end: bool) -> Option<(usize, usize)> {
    let offset = bytes
        .get(from..)?
        .iter()
        .position(|b| *b == b'\n' || *b == b'\r')?;
    let at = from + offset;
    match (bytes.get(at), bytes.get(at + 1)) {
        (Some(b'\r'), Some(b'\n')) => Some((at, at + 2)),
        (Some(b'\r'), None) if !at_end => None,
        _ => Some((at, at + 1)),
    }
}

/// The lines of one event: content and terminator (empty for a last line
/// the stream ended in).
fn lines(event: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < event.len() {
        let (content_end, next) =
            line_end(event, start, true).unwrap_or((event.len(), event.len()));
        out.push((
            event.get(start..content_end).unwrap_or_default(),
            event.get(content_end..next).unwrap_or_default(),
        ));
        start = next;
    }
    out
}

/// A line's field name and value; `None` for a comment or a blank line.
fn field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    if line.is_empty() || line.starts_with(b":") {
        return None;
    }
    Some(match line.iter().position(|b| *b == b':') {
        Some(colon) => {
            let value = line.get(colon + 1..).unwrap_or_default();
            (
                line.get(..colon).unwrap_or_default(),
                value.strip_prefix(b" ").unwrap_or(value),
            )
        }
        None => (line, &[]),
    })
}

/// The event's data, or `None` if it has no `data` field.
pub fn data(event: &[u8]) -> Option<String> {
    let event = event.strip_prefix(BOM).unwrap_or(event);
    let mut data: Option<Vec<u8>> = None;
    for (line, _) in lines(event) {
        if let Some((b"data", value)) = field(line) {
            let data = data.get_or_insert_with(Vec::new);
            data.extend_from_slice(value);
            data.push(b'\n');
        }
    }
    data.map(|mut data| {
        data.pop();
        String::from_utf8_lossy(&data).into_owned()
    })
}

/// The event with its data replaced by `data`: one `data:` line per line
/// of `data`, where the first `data` field was; the other `data` fields
/// dropped; every other line (`id:`, `event:`, `retry:`, comments, the
/// blank line) kept byte for byte.
pub fn with_data(event: &[u8], data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(event.len() + data.len());
    let mut written = false;
    for (line, terminator) in lines(event) {
        let is_data = matches!(field(line), Some((b"data", _)));
        if !is_data {
            out.extend_from_slice(line);
            out.extend_from_slice(terminator);
            continue;
        }
        if written {
            continue;
        }
        written = true;
        let between: &[u8] = if terminator.is_empty() {
            b"\n"
        } else {
            terminator
        };
        for (i, piece) in data.split('\n').enumerate() {
            if i > 0 {
                out.extend_from_slice(between);
            }
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(piece.as_bytes());
        }
        out.extend_from_slice(terminator);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(stream: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let mut splitter = EventSplitter::new(1 << 20);
        let mut events = Vec::new();
        for piece in stream.chunks(chunk.max(1)) {
            events.extend(splitter.push(piece).unwrap());
        }
        events.extend(splitter.finish());
        events
    }

    #[test]
    fn a_long_line_in_one_byte_chunks_is_scanned_once() {
        // 512 KiB of one `data:` line, a byte at a time, then its end: the
        // splitter goes on where it stopped (scanning the line again per
        // chunk took minutes for this).
        let mut stream = b"data: ".to_vec();
        stream.resize(512 * 1024, b'x');
        stream.extend_from_slice(b"\r\n\r\n");
        let started = std::time::Instant::now();
        let events = split_all(&stream, 1);
        assert_eq!(events, vec![stream.clone()]);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn events_end_at_blank_lines_in_any_line_ending() {
        let stream = b"id: 1\nevent: message\ndata: {\"a\":1}\n\n: keep-alive\r\n\r\ndata: x\rdata: y\r\rdata: tail";
        let expected: Vec<&[u8]> = vec![
            b"id: 1\nevent: message\ndata: {\"a\":1}\n\n",
            b": keep-alive\r\n\r\n",
            b"data: x\rdata: y\r\r",
            b"data: tail",
        ];
        for chunk in 1..=stream.len() {
            assert_eq!(split_all(stream, chunk), expected, "chunks of {chunk}");
        }
    }

    #[test]
    fn a_cr_at_a_chunk_end_waits_for_the_next_byte() {
        let mut splitter = EventSplitter::new(1024);
        assert_eq!(
            splitter.push(b"data: a\r\n\r").unwrap(),
            Vec::<Vec<u8>>::new()
        );
        assert_eq!(
            splitter.push(b"\n").unwrap(),
            vec![b"data: a\r\n\r\n".to_vec()]
        );
        assert_eq!(
            splitter.push(b"data: b\r\r").unwrap(),
            Vec::<Vec<u8>>::new()
        );
        assert_eq!(splitter.finish(), vec![b"data: b\r\r".to_vec()]);
    }

    #[test]
    fn a_leading_bom_stands_alone() {
        let stream = b"\xEF\xBB\xBFdata: a\n\ndata: b\n\n";
        for chunk in 1..=4 {
            let events = split_all(stream, chunk);
            assert_eq!(events[0], BOM);
            assert_eq!(data(&events[1]).as_deref(), Some("a"));
            assert_eq!(events.concat(), stream);
        }
        // A BOM later in the stream is data.
        assert_eq!(
            data(b"data: \xEF\xBB\xBFx\n\n").as_deref(),
            Some("\u{feff}x")
        );
    }

    #[test]
    fn incomplete_events_are_bounded() {
        let mut splitter = EventSplitter::new(16);
        assert!(splitter.push(b"data: 0123456789").is_ok());
        assert_eq!(splitter.push(b"abcdef"), Err(EventTooLarge));
        let mut splitter = EventSplitter::new(16);
        assert!(
            splitter
                .push(b"data: 0123456789\n\ndata: 01234567\n\n")
                .is_ok()
        );
    }

    #[test]
    fn data_joins_data_fields() {
        assert_eq!(
            data(b"data: a\ndata:b\ndata\ndata:  c\n\n").as_deref(),
            Some("a\nb\n\n c")
        );
        assert_eq!(data(b"id: 7\nevent: message\n\n"), None);
        assert_eq!(data(b": data: not a field\n\n"), None);
        assert_eq!(data(b"data:\n\n").as_deref(), Some(""));
        assert_eq!(data(b"dat: a\nDATA: b\n\n"), None);
        assert_eq!(data(b"data: \xff\n\n").as_deref(), Some("\u{fffd}"));
    }

    #[test]
    fn replacing_data_keeps_every_other_line() {
        let event = b"id: 41\r\n: comment\r\ndata: {\"a\":\r\nevent: message\r\ndata: 1}\r\nretry: 5\r\n\r\n";
        assert_eq!(
            with_data(event, "{\"b\":2}"),
            b"id: 41\r\n: comment\r\ndata: {\"b\":2}\r\nevent: message\r\nretry: 5\r\n\r\n"
        );
        assert_eq!(with_data(b"data: x\n\n", "a\nb"), b"data: a\ndata: b\n\n");
        assert_eq!(with_data(b"data: x", "a\nb"), b"data: a\ndata: b");
        assert_eq!(
            data(&with_data(b"data: x\n\n", " lead")).as_deref(),
            Some(" lead")
        );
    }
}
