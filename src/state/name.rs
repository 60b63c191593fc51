//! A name compared against an event's without leaving its owner's cache line.
//!
//! Every event names its experiment and its inputs, and each is checked against the name the
//! state holds (a 64-bit hash is never trusted alone). With the name only on the heap, each
//! check read one more cache line: at a thousand experiments, where the state is cold, those
//! misses were ~4% of a replay (`memcmp` in the profile). The first [`HEAD`] bytes are kept
//! inline as well, so a short name (most are) compares without the heap; a longer one compares
//! its full text. Serialized as its text: snapshots do not change.

use std::ops::Deref;

/// Bytes of a name kept inline.
pub const HEAD: usize = 16;

/// A name: its text on the heap and its first [`HEAD`] bytes inline.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(from = "Box<str>")]
#[repr(C)]
pub struct Name {
    text: Box<str>,
    head: [u8; HEAD],
}

impl Name {
    /// `text` as a name.
    pub fn new(text: &str) -> Name {
        Name::from(Box::<str>::from(text))
    }

    /// Whether this name is `other`: from the inline bytes when the name is short.
    #[inline]
    pub fn is(&self, other: &str) -> bool {
        let n = other.len();
        if n != self.text.len() {
            return false;
        }
        match self.head.get(..n) {
            // or-ed differences, not `==`: a slice compare of unknown length is a call to libc's
            // `memcmp`, this is a few inline instructions
            Some(head) => {
                head.iter()
                    .zip(other.as_bytes())
                    .fold(0u8, |d, (a, b)| d | (a ^ b))
                    == 0
            }
            None => *self.text == *other,
        }
    }
}

impl From<Box<str>> for Name {
    fn from(text: Box<str>) -> Name {
        let mut head = [0u8; HEAD];
        let n = text.len().min(HEAD);
        head[..n].copy_from_slice(&text.as_bytes()[..n]);
        Name { text, head }
    }
}

/// As its text (borrowed: no copy per snapshot or report).
impl serde::Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.text, f)
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// `is` agrees with string equality, for names on either side of the inline length.
        #[test]
        fn is_agrees_with_equality(a in "[ab]{0,20}", b in "[ab]{0,20}") {
            let name = Name::new(&a);
            prop_assert_eq!(name.is(&b), a == b);
            prop_assert!(name.is(&a));
            prop_assert_eq!(&*name, a.as_str());
        }
    }

    #[test]
    fn a_long_name_compares_past_its_head() {
        let name = Name::new("0123456789abcdef-one");
        assert!(name.is("0123456789abcdef-one"));
        assert!(!name.is("0123456789abcdef-two"));
    }

    #[test]
    fn serialized_as_its_text() {
        let name = Name::new("tier");
        let json = serde_json::to_string(&name).unwrap();
        assert_eq!(json, "\"tier\"");
        let back: Name = serde_json::from_str(&json).unwrap();
        assert!(back.is("tier"));
    }
}
