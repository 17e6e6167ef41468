//! The part of RFC 8941 (Structured Field Values) that `Signature-Input` and
//! `Signature` use: a dictionary whose members are inner lists of strings with
//! parameters, or byte sequences. Every input is client bytes: the parser never
//! panics, caps lengths and counts, and refuses what it does not understand rather
//! than guessing. It also serialises an inner list back to its canonical form, which
//! is what RFC 9421 signs as `@signature-params`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// Longest field value read (after joining repeated header lines).
pub const MAX_FIELD_BYTES: usize = 8 * 1024;
/// Most dictionary members.
pub const MAX_MEMBERS: usize = 8;
/// Most items in one inner list, and most parameters on one item.
pub const MAX_ITEMS: usize = 32;

/// A bare item as RFC 8941 defines the ones used here (no decimals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bare {
    Integer(i64),
    String(String),
    Token(String),
    Bytes(Vec<u8>),
    Boolean(bool),
}

pub type Params = Vec<(String, Bare)>;

/// An item with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub value: Bare,
    pub params: Params,
}

/// A dictionary member: an item or an inner list (with the list's parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    Item(Item),
    InnerList(Vec<Item>, Params),
}

/// The field could not be read as a structured field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Parses a dictionary (RFC 8941 §4.2.2). Duplicate keys: the last one wins, as the
/// RFC says.
pub fn parse_dictionary(input: &str) -> Result<Vec<(String, Member)>, Malformed> {
    if input.len() > MAX_FIELD_BYTES {
        return Err(Malformed);
    }
    let mut p = Parser { s: input.as_bytes(), i: 0 };
    p.skip_sp();
    let mut out: Vec<(String, Member)> = Vec::new();
    if p.done() {
        return Ok(out);
    }
    loop {
        let key = p.key()?;
        let member = if p.eat(b'=') {
            p.member()?
        } else {
            Member::Item(Item { value: Bare::Boolean(true), params: p.params()? })
        };
        out.retain(|(k, _)| *k != key);
        out.push((key, member));
        if out.len() > MAX_MEMBERS {
            return Err(Malformed);
        }
        p.skip_ows();
        if p.done() {
            return Ok(out);
        }
        if !p.eat(b',') {
            return Err(Malformed);
        }
        p.skip_ows();
        if p.done() {
            return Err(Malformed);
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }
    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }
    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn key(&mut self) -> Result<String, Malformed> {
        let start = self.i;
        match self.peek() {
            Some(b) if b.is_ascii_lowercase() || b == b'*' => self.i += 1,
            _ => return Err(Malformed),
        }
        while let Some(b) = self.peek() {
            if b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b) {
                self.i += 1;
            } else {
                break;
            }
        }
        self.text(start)
    }

    fn text(&self, start: usize) -> Result<String, Malformed> {
        let bytes = self.s.get(start..self.i).ok_or(Malformed)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Malformed)
    }

    fn member(&mut self) -> Result<Member, Malformed> {
        if self.peek() == Some(b'(') {
            let items = self.inner_list()?;
            Ok(Member::InnerList(items, self.params()?))
        } else {
            let value = self.bare()?;
            Ok(Member::Item(Item { value, params: self.params()? }))
        }
    }

    fn inner_list(&mut self) -> Result<Vec<Item>, Malformed> {
        if !self.eat(b'(') {
            return Err(Malformed);
        }
        let mut items = Vec::new();
        loop {
            self.skip_sp();
            if self.eat(b')') {
                return Ok(items);
            }
            let value = self.bare()?;
            items.push(Item { value, params: self.params()? });
            if items.len() > MAX_ITEMS {
                return Err(Malformed);
            }
            if !matches!(self.peek(), Some(b' ' | b')')) {
                return Err(Malformed);
            }
        }
    }

    fn params(&mut self) -> Result<Params, Malformed> {
        let mut out: Params = Vec::new();
        while self.eat(b';') {
            self.skip_sp();
            let key = self.key()?;
            let value = if self.eat(b'=') { self.bare()? } else { Bare::Boolean(true) };
            out.retain(|(k, _)| *k != key);
            out.push((key, value));
            if out.len() > MAX_ITEMS {
                return Err(Malformed);
            }
        }
        Ok(out)
    }

    fn bare(&mut self) -> Result<Bare, Malformed> {
        match self.peek() {
            Some(b'-') | Some(b'0'..=b'9') => self.integer(),
            Some(b'"') => self.string(),
            Some(b':') => self.bytes(),
            Some(b'?') => self.boolean(),
            Some(b) if b.is_ascii_alphabetic() || b == b'*' => self.token(),
            _ => Err(Malformed),
        }
    }

    fn integer(&mut self) -> Result<Bare, Malformed> {
        let negative = self.eat(b'-');
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        let digits = self.i - start;
        // RFC 8941 integers have at most 15 digits; decimals are not used here.
        if digits == 0 || digits > 15 || self.peek() == Some(b'.') {
            return Err(Malformed);
        }
        let n: i64 = self.text(start)?.parse().map_err(|_| Malformed)?;
        Ok(Bare::Integer(if negative { -n } else { n }))
    }

    fn string(&mut self) -> Result<Bare, Malformed> {
        self.i += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(Malformed),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(Bare::String(out));
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => out.push(c as char),
                        _ => return Err(Malformed),
                    }
                    self.i += 1;
                }
                Some(c) if (0x20..0x7f).contains(&c) => {
                    out.push(c as char);
                    self.i += 1;
                }
                Some(_) => return Err(Malformed),
            }
        }
    }

    fn token(&mut self) -> Result<Bare, Malformed> {
        let start = self.i;
        self.i += 1;
        while let Some(b) = self.peek() {
            if crate::request::is_token_byte(b) || b == b':' || b == b'/' {
                self.i += 1;
            } else {
                break;
            }
        }
        Ok(Bare::Token(self.text(start)?))
    }

    fn bytes(&mut self) -> Result<Bare, Malformed> {
        self.i += 1;
        let start = self.i;
        while let Some(b) = self.peek() {
            if b.is_ascii_alphanumeric() || b"+/=".contains(&b) {
                self.i += 1;
            } else {
                break;
            }
        }
        let decoded = STANDARD.decode(self.s.get(start..self.i).ok_or(Malformed)?).map_err(|_| Malformed)?;
        if !self.eat(b':') {
            return Err(Malformed);
        }
        Ok(Bare::Bytes(decoded))
    }

    fn boolean(&mut self) -> Result<Bare, Malformed> {
        self.i += 1;
        let value = match self.peek() {
            Some(b'1') => true,
            Some(b'0') => false,
            _ => return Err(Malformed),
        };
        self.i += 1;
        Ok(Bare::Boolean(value))
    }
}

/// The canonical serialisation of an inner list with its parameters (RFC 8941 §4.1.1).
pub fn serialize_inner_list(items: &[Item], params: &Params) -> String {
    let mut out = String::from("(");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        serialize_bare(&item.value, &mut out);
        serialize_params(&item.params, &mut out);
    }
    out.push(')');
    serialize_params(params, &mut out);
    out
}

fn serialize_params(params: &Params, out: &mut String) {
    for (key, value) in params {
        out.push(';');
        out.push_str(key);
        if *value != Bare::Boolean(true) {
            out.push('=');
            serialize_bare(value, out);
        }
    }
}

fn serialize_bare(value: &Bare, out: &mut String) {
    match value {
        Bare::Integer(n) => out.push_str(&n.to_string()),
        Bare::String(s) => {
            out.push('"');
            for c in s.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
        Bare::Token(t) => out.push_str(t),
        Bare::Bytes(b) => {
            out.push(':');
            out.push_str(&STANDARD.encode(b));
            out.push(':');
        }
        Bare::Boolean(b) => out.push_str(if *b { "?1" } else { "?0" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn a_signature_input_round_trips_to_its_canonical_form() {
        let field = r#"sig1=("@method" "content-digest");created=1618884473;keyid="k\"1";nonce="n""#;
        let dict = parse_dictionary(field).unwrap();
        let [(label, Member::InnerList(items, params))] = dict.as_slice() else { panic!("{dict:?}") };
        assert_eq!(label, "sig1");
        assert_eq!(items.len(), 2);
        assert_eq!(params[0], ("created".to_string(), Bare::Integer(1618884473)));
        assert_eq!(params[1], ("keyid".to_string(), Bare::String("k\"1".into())));
        assert_eq!(format!("sig1={}", serialize_inner_list(items, params)), field);
    }

    #[test]
    fn byte_sequences_and_several_members_parse() {
        let dict = parse_dictionary("a=:AQI=:, b=:aGk=:;x").unwrap();
        assert_eq!(dict.len(), 2);
        assert_eq!(dict[0].1, Member::Item(Item { value: Bare::Bytes(vec![1, 2]), params: vec![] }));
    }

    #[test]
    fn broken_fields_are_refused_not_guessed() {
        let too_long = format!("a=\"{}\"", "x".repeat(MAX_FIELD_BYTES));
        let too_many = (0..=MAX_MEMBERS).map(|i| format!("k{i}=1")).collect::<Vec<_>>().join(", ");
        for bad in [
            "A=1",
            "a=(",
            "a=(\"x\"",
            "a=(\"x\"\"y\")",
            "a=:AQI=",
            "a=:***:",
            "a=\"unterminated",
            "a=\"bad\\escape\"",
            "a=1,",
            "a=1 b=2",
            "a=1234567890123456",
            "a=1.5",
            "a=?2",
            "a=\u{e9}",
            &too_long,
            &too_many,
        ] {
            assert_eq!(parse_dictionary(bad), Err(Malformed), "{bad}");
        }
    }
}
