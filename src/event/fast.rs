//! The fast path of decoding: a single forward scan over the common shape of an event (a flat
//! object of unescaped strings, numbers and booleans, with a flat `inputs` object), written for
//! the contract rather than for JSON in general.
//!
//! It accepts a strict subset of what the serde path accepts and, on that subset, produces the
//! same fields: anything else (escapes, `null`, nested unknown fields, duplicate fields, big
//! integers, `-0`, trailing bytes, malformed text...) makes it give up, and the serde path
//! decodes the message from the start and names the reason when it is rejected. A property
//! test (`tests::fast_path_agrees_with_serde`) holds the two to the same result. Measured: the
//! serde path was ~28% of the per-event cost of a prompt event (see `benches/pipeline.rs`).

use super::decode::{BStr, RawEvent, Slot, Ts};
use super::{InputValue, Inputs};
use std::borrow::Cow;

/// Why the fast path gave up (never surfaced: the serde path takes over).
pub(super) struct GiveUp;

type R<T> = Result<T, GiveUp>;

/// Decode `text` into `raw` and `inputs` (both empty on entry), or give up. At most
/// `max_inputs` inputs are taken (more: give up, the serde path rejects the event).
pub(super) fn decode<'a>(
    text: &'a str,
    raw: &mut RawEvent<'a>,
    inputs: &mut Inputs<'a>,
    max_inputs: usize,
) -> R<()> {
    let mut s = Scan { text, i: 0 };
    s.ws();
    s.eat(b'{')?;
    let mut first = true;
    while let Some(key) = s.next_key(&mut first)? {
        match raw.field(key).map_err(|_| GiveUp)? {
            None => s.skip_scalar()?,
            Some(Slot::Str(v)) => *v = Some(BStr(Cow::Borrowed(s.string()?))),
            Some(Slot::Num(v)) => *v = Some(s.number()?.as_f64()),
            Some(Slot::Ts(v)) => *v = Some(s.ts()?),
            Some(Slot::Flag(v)) => *v = Some(s.boolean()?),
            Some(Slot::Inputs) => s.inputs(inputs, max_inputs)?,
        }
    }
    s.ws();
    if s.i == s.b().len() {
        Ok(())
    } else {
        Err(GiveUp)
    }
}

/// A JSON number as serde_json hands it to a visitor.
#[derive(Clone, Copy)]
enum Number {
    U(u64),
    I(i64),
    F(f64),
}

impl Number {
    fn as_f64(self) -> f64 {
        match self {
            Number::U(v) => v as f64,
            Number::I(v) => v as f64,
            Number::F(v) => v,
        }
    }
}

struct Scan<'a> {
    text: &'a str,
    i: usize,
}

impl<'a> Scan<'a> {
    #[inline]
    fn b(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b().get(self.i).copied()
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    #[inline]
    fn eat(&mut self, c: u8) -> R<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(GiveUp)
        }
    }

    /// An unescaped string, borrowed. The text is valid UTF-8 and the quotes are ASCII, so the
    /// slice between them is a `str` boundary.
    #[inline]
    fn string(&mut self) -> R<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        self.skip_plain();
        loop {
            match self.peek() {
                Some(b'"') => break,
                // an escape or a control character (an error): the serde path decides
                Some(b'\\' | 0..=0x1f) | None => return Err(GiveUp),
                Some(_) => self.i += 1,
            }
        }
        let s = self.text.get(start..self.i).ok_or(GiveUp)?;
        self.i += 1;
        Ok(s)
    }

    /// Skip eight bytes at a time while none is a quote, a backslash or a control character
    /// (SWAR: the lowest flagged byte of `x` is exact, which is all that is read).
    #[inline]
    fn skip_plain(&mut self) {
        const LO: u64 = 0x0101_0101_0101_0101;
        const HI: u64 = 0x8080_8080_8080_8080;
        while let Some(chunk) = self.b().get(self.i..self.i + 8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            let x = u64::from_le_bytes(w);
            let q = x ^ (LO * u64::from(b'"'));
            let bs = x ^ (LO * u64::from(b'\\'));
            let special = (q.wrapping_sub(LO) & !q)
                | (bs.wrapping_sub(LO) & !bs)
                | (x.wrapping_sub(LO * 0x20) & !x);
            let special = special & HI;
            if special != 0 {
                self.i += (special.trailing_zeros() / 8) as usize;
                return;
            }
            self.i += 8;
        }
    }

    fn boolean(&mut self) -> R<bool> {
        let rest = &self.b()[self.i..];
        if rest.starts_with(b"true") {
            self.i += 4;
            Ok(true)
        } else if rest.starts_with(b"false") {
            self.i += 5;
            Ok(false)
        } else {
            Err(GiveUp)
        }
    }

    /// A number in strict JSON grammar. Integers as serde_json gives them (u64, or i64 when
    /// negative); `-0` and integers past 64 bits are left to the serde path (it turns them into
    /// floats); other numbers through the correctly rounded `str::parse` (serde_json is built
    /// with `float_roundtrip`, so both round the same way); non-finite ones give up.
    #[inline]
    fn number(&mut self) -> R<Number> {
        let start = self.i;
        let neg = self.peek() == Some(b'-');
        if neg {
            self.i += 1;
        }
        let int_start = self.i;
        let mut mag: u64 = 0;
        let mut overflow = false;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            match mag
                .checked_mul(10)
                .and_then(|m| m.checked_add(u64::from(c - b'0')))
            {
                Some(m) => mag = m,
                None => overflow = true,
            }
            self.i += 1;
        }
        let digits = self.i - int_start;
        if digits == 0 || (digits > 1 && self.b()[int_start] == b'0') {
            return Err(GiveUp);
        }
        let mut float = false;
        if self.peek() == Some(b'.') {
            float = true;
            self.i += 1;
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            float = true;
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.digits()?;
        }
        if float {
            let v: f64 = self.text[start..self.i].parse().map_err(|_| GiveUp)?;
            return if v.is_finite() {
                Ok(Number::F(v))
            } else {
                Err(GiveUp)
            };
        }
        match (neg, overflow) {
            (_, true) => Err(GiveUp),
            (false, false) => Ok(Number::U(mag)),
            (true, false) if mag == 0 || mag > 1 << 63 => Err(GiveUp),
            (true, false) => Ok(Number::I((mag as i64).wrapping_neg())),
        }
    }

    fn digits(&mut self) -> R<()> {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        if self.i == start {
            Err(GiveUp)
        } else {
            Ok(())
        }
    }

    /// `ts`: an integer that fits in i64, or an RFC 3339 string.
    fn ts(&mut self) -> R<Ts> {
        match self.peek() {
            Some(b'"') => {
                let s = self.string()?;
                super::parse_rfc3339_ms(s).map(Ts).ok_or(GiveUp)
            }
            _ => match self.number()? {
                Number::U(v) => i64::try_from(v).map(Ts).map_err(|_| GiveUp),
                Number::I(v) => Ok(Ts(v)),
                Number::F(_) => Err(GiveUp),
            },
        }
    }

    #[inline]
    fn value(&mut self) -> R<InputValue<'a>> {
        match self.peek() {
            Some(b'"') => Ok(InputValue::Str(Cow::Borrowed(self.string()?))),
            Some(b't' | b'f') => Ok(InputValue::Bool(self.boolean()?)),
            _ => Ok(InputValue::Num(self.number()?.as_f64())),
        }
    }

    fn inputs(&mut self, out: &mut Inputs<'a>, max: usize) -> R<()> {
        self.eat(b'{')?;
        let mut first = true;
        while let Some(name) = self.next_key(&mut first)? {
            let v = self.value()?;
            if out.len() >= max {
                return Err(GiveUp);
            }
            out.push((Cow::Borrowed(name), v));
        }
        Ok(())
    }

    /// The next key of an object whose `{` has been read, up to its `:` (`None` at the `}`).
    #[inline]
    fn next_key(&mut self, first: &mut bool) -> R<Option<&'a str>> {
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(None);
        }
        if !*first {
            self.eat(b',')?;
            self.ws();
        }
        *first = false;
        let key = self.string()?;
        self.ws();
        self.eat(b':')?;
        self.ws();
        Ok(Some(key))
    }

    /// The value of an unknown field: a string, number or boolean (anything else gives up).
    fn skip_scalar(&mut self) -> R<()> {
        self.value().map(|_| ())
    }
}
