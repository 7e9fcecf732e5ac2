//! The subset of RFC 8941 structured fields that `Signature-Input`,
//! `Signature` and `Content-Digest` use: dictionaries whose members are
//! items or inner lists, with parameters; bare items that are integers,
//! strings, tokens, byte sequences or booleans.
//!
//! Strict on purpose: whatever RFC 8941 would reject is rejected, and so
//! is what it would accept but a signature verifier must not guess at:
//! a dictionary key or parameter given twice (RFC 8941 keeps the last,
//! another parser might keep the first: the two would verify different
//! signatures) and decimals (no field here uses them).
//!
//! Inner lists are serialised again (RFC 8941 section 4.1.1) for the
//! `@signature-params` line of the signature base.

use std::fmt::{self, Write};

use jwt_simple::reexports::ct_codecs::{Base64, Decoder, Encoder};

/// Why a field value is not a structured field this parser accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SfError(pub &'static str);

impl fmt::Display for SfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bare {
    Integer(i64),
    String(String),
    Token(String),
    Bytes(Vec<u8>),
    Boolean(bool),
}

/// Parameters in their order; keys are unique.
pub type Params = Vec<(String, Bare)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub bare: Bare,
    pub params: Params,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    Item(Item),
    InnerList(Vec<Item>, Params),
}

/// Longest field value parsed, in bytes: a signature header is a few
/// hundred bytes; a longer one is refused before it is read.
pub const MAX_FIELD_BYTES: usize = 8192;

/// Parses a dictionary (RFC 8941 section 4.2.2): members in order, keys
/// unique.
pub fn parse_dictionary(text: &str) -> Result<Vec<(String, Member)>, SfError> {
    if text.len() > MAX_FIELD_BYTES {
        return Err(SfError("the field is too long"));
    }
    let mut p = Parser {
        input: text.as_bytes(),
        pos: 0,
    };
    p.skip_sp();
    let mut members: Vec<(String, Member)> = Vec::new();
    while !p.at_end() {
        let key = p.key()?;
        let member = if p.eat(b'=') {
            p.member()?
        } else {
            Member::Item(Item {
                bare: Bare::Boolean(true),
                params: p.params()?,
            })
        };
        if members.iter().any(|(k, _)| *k == key) {
            return Err(SfError("a dictionary key is given twice"));
        }
        members.push((key, member));
        p.skip_ows();
        if p.at_end() {
            break;
        }
        if !p.eat(b',') {
            return Err(SfError("dictionary members must be separated by commas"));
        }
        p.skip_ows();
        if p.at_end() {
            return Err(SfError("a trailing comma ends the dictionary"));
        }
    }
    Ok(members)
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.input.len()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &str {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        // Only ASCII bytes are ever taken, so this is valid UTF-8.
        self.input
            .get(start..self.pos)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }

    fn key(&mut self) -> Result<String, SfError> {
        if !self
            .peek()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'*')
        {
            return Err(SfError("a key must start with a lower-case letter or '*'"));
        }
        Ok(self
            .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b))
            .to_owned())
    }

    fn member(&mut self) -> Result<Member, SfError> {
        if self.peek() == Some(b'(') {
            self.inner_list()
        } else {
            Ok(Member::Item(self.item()?))
        }
    }

    fn inner_list(&mut self) -> Result<Member, SfError> {
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            self.skip_sp();
            if self.eat(b')') {
                return Ok(Member::InnerList(items, self.params()?));
            }
            items.push(self.item()?);
            if !matches!(self.peek(), Some(b' ' | b')')) {
                return Err(SfError("inner list items must be separated by spaces"));
            }
        }
    }

    fn item(&mut self) -> Result<Item, SfError> {
        let bare = self.bare()?;
        let params = self.params()?;
        Ok(Item { bare, params })
    }

    fn params(&mut self) -> Result<Params, SfError> {
        let mut params: Params = Vec::new();
        while self.eat(b';') {
            self.skip_sp();
            let key = self.key()?;
            let value = if self.eat(b'=') {
                self.bare()?
            } else {
                Bare::Boolean(true)
            };
            if params.iter().any(|(k, _)| *k == key) {
                return Err(SfError("a parameter is given twice"));
            }
            params.push((key, value));
        }
        Ok(params)
    }

    fn bare(&mut self) -> Result<Bare, SfError> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => self.integer(),
            Some(b'"') => self.string(),
            Some(b':') => self.bytes(),
            Some(b'?') => self.boolean(),
            Some(b) if b.is_ascii_alphabetic() || b == b'*' => Ok(Bare::Token(
                self.take_while(|b| is_tchar(b) || b == b':' || b == b'/')
                    .to_owned(),
            )),
            _ => Err(SfError(
                "an item must be an integer, string, token, byte sequence or boolean",
            )),
        }
    }

    fn integer(&mut self) -> Result<Bare, SfError> {
        let negative = self.eat(b'-');
        let digits = self.take_while(|b| b.is_ascii_digit());
        let value: Option<i64> = (1..=15)
            .contains(&digits.len())
            .then(|| digits.parse().ok())
            .flatten();
        let Some(value) = value else {
            return Err(SfError("an integer has 1 to 15 digits"));
        };
        if self.peek() == Some(b'.') {
            return Err(SfError("decimals are not accepted here"));
        }
        Ok(Bare::Integer(if negative { -value } else { value }))
    }

    fn string(&mut self) -> Result<Bare, SfError> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(SfError("a string is not closed")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Bare::String(out));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => out.push(char::from(c)),
                        _ => {
                            return Err(SfError(
                                "a string escapes something other than '\"' or '\\'",
                            ));
                        }
                    }
                    self.pos += 1;
                }
                Some(c @ 0x20..=0x7e) => {
                    out.push(char::from(c));
                    self.pos += 1;
                }
                Some(_) => {
                    return Err(SfError("a string holds a byte that is not printable ASCII"));
                }
            }
        }
    }

    fn bytes(&mut self) -> Result<Bare, SfError> {
        self.pos += 1;
        let encoded = self
            .take_while(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
            .to_owned();
        if !self.eat(b':') {
            return Err(SfError("a byte sequence is not closed by ':'"));
        }
        decode_base64(&encoded)
            .map(Bare::Bytes)
            .ok_or(SfError("a byte sequence is not canonical padded base64"))
    }

    fn boolean(&mut self) -> Result<Bare, SfError> {
        self.pos += 1;
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                Ok(Bare::Boolean(false))
            }
            Some(b'1') => {
                self.pos += 1;
                Ok(Bare::Boolean(true))
            }
            _ => Err(SfError("a boolean is ?0 or ?1")),
        }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Standard padded base64 (RFC 4648 section 4), canonical only: decoding
/// and encoding again must give the same text, so one signature has one
/// spelling.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let bytes = Base64::decode_to_vec(text, None).ok()?;
    (encode_base64(&bytes) == text).then_some(bytes)
}

pub fn encode_base64(bytes: &[u8]) -> String {
    Base64::encode_to_string(bytes).unwrap_or_default()
}

/// RFC 8941 section 4.1 serialisation of a bare item.
pub fn write_bare(out: &mut String, bare: &Bare) {
    let _ = match bare {
        Bare::Integer(i) => write!(out, "{i}"),
        Bare::String(s) => {
            out.push('"');
            for c in s.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
            Ok(())
        }
        Bare::Token(t) => write!(out, "{t}"),
        Bare::Bytes(b) => write!(out, ":{}:", encode_base64(b)),
        Bare::Boolean(true) => write!(out, "?1"),
        Bare::Boolean(false) => write!(out, "?0"),
    };
}

pub fn write_params(out: &mut String, params: &Params) {
    for (key, value) in params {
        out.push(';');
        out.push_str(key);
        if *value != Bare::Boolean(true) {
            out.push('=');
            write_bare(out, value);
        }
    }
}

/// RFC 8941 section 4.1.1.1 serialisation of an inner list.
pub fn write_inner_list(items: &[Item], params: &Params) -> String {
    let mut out = String::from("(");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        write_bare(&mut out, &item.bare);
        write_params(&mut out, &item.params);
    }
    out.push(')');
    write_params(&mut out, params);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(s: &str) -> Item {
        Item {
            bare: Bare::String(s.into()),
            params: vec![],
        }
    }

    #[test]
    fn a_signature_input_parses_and_serialises_canonically() {
        let text = r#"sig1=( "@method"  "@path" );created=1618884473;keyid="k \"1\"";nonce="abc""#;
        let members = parse_dictionary(text).unwrap();
        let [(label, Member::InnerList(items, params))] = members.as_slice() else {
            panic!("{members:?}")
        };
        assert_eq!(label, "sig1");
        assert_eq!(items, &[string("@method"), string("@path")]);
        assert_eq!(
            write_inner_list(items, params),
            r#"("@method" "@path");created=1618884473;keyid="k \"1\"";nonce="abc""#
        );
    }

    #[test]
    fn items_of_every_kind_parse() {
        let members =
            parse_dictionary("a=1, b=-7 ,c=tok/x:y,\td=:AAE=:, e=?0, f, g;x=?1;y").unwrap();
        let bares: Vec<_> = members
            .iter()
            .map(|(_, m)| match m {
                Member::Item(i) => i.bare.clone(),
                Member::InnerList(..) => unreachable!(),
            })
            .collect();
        assert_eq!(
            bares,
            [
                Bare::Integer(1),
                Bare::Integer(-7),
                Bare::Token("tok/x:y".into()),
                Bare::Bytes(vec![0, 1]),
                Bare::Boolean(false),
                Bare::Boolean(true),
                Bare::Boolean(true),
            ]
        );
        let Some((_, Member::Item(g))) = members.last() else {
            panic!()
        };
        let mut out = String::new();
        write_params(&mut out, &g.params);
        assert_eq!(out, ";x;y");
    }

    #[test]
    fn ambiguous_or_invalid_fields_are_refused() {
        for bad in [
            "a=1, a=2",           // duplicate key
            "a=(\"x\");k=1;k=2",  // duplicate parameter
            "a=1,",               // trailing comma
            "a=1 b=2",            // no comma
            "A=1",                // upper-case key
            "a=1.5",              // decimal
            "a=1234567890123456", // 16 digits
            "a=\"unclosed",       // string not closed
            "a=\"bad\\n\"",       // bad escape
            "a=:AAE:",            // unpadded base64
            "a=:AAF=:",           // non-canonical base64 (trailing bits)
            "a=:AAE=",            // byte sequence not closed
            "a=(\"x\"\"y\")",     // items not separated
            "a=(\"x\"",           // inner list not closed
            "a=?2",               // bad boolean
            "a=\"caf\u{e9}\"",    // non-ASCII in a string
            "a=@x",               // not an item
        ] {
            assert!(parse_dictionary(bad).is_err(), "{bad}");
        }
        assert!(parse_dictionary(&"a=1,".repeat(3000)).is_err());
    }

    #[test]
    fn base64_is_canonical_only() {
        assert_eq!(decode_base64("AAE="), Some(vec![0, 1]));
        assert_eq!(decode_base64("AAF="), None);
        assert_eq!(decode_base64("AAE"), None);
        assert_eq!(decode_base64(""), Some(vec![]));
    }
}
