//! A serde form for arrays that are mostly zero (`#[serde(with = "crate::skip_zeros")]`):
//! the length, a bitmap of the non-zero elements, then those elements in order. A dense
//! arm-model table of 1,024 cells that saw a few hundred events is ~350 snapshot bytes instead
//! of 1,026; a full array costs one bit per element more than the plain form. The array read
//! back is the one written, element for element (zeros where the bitmap has none), so a
//! restored table is the same table: its iteration order, and every count, unchanged.

use serde::de::{DeserializeOwned, Error as _};
use serde::ser::{SerializeSeq, SerializeTuple};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The elements not equal to zero, as a sequence of known length.
struct NonZero<'a, T> {
    all: &'a [T],
    count: usize,
}

impl<T: Copy + Default + PartialEq + Serialize> Serialize for NonZero<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.count))?;
        for x in self.all.iter().filter(|&&x| x != T::default()) {
            seq.serialize_element(x)?;
        }
        seq.end()
    }
}

/// The bitmap of the non-zero elements, eight to a byte, element `i` in bit `i % 8` of byte
/// `i / 8`.
struct Bitmap<'a, T>(&'a [T]);

impl<T: Copy + Default + PartialEq> Serialize for Bitmap<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len().div_ceil(8)))?;
        for chunk in self.0.chunks(8) {
            let byte = chunk
                .iter()
                .enumerate()
                .filter(|(_, &x)| x != T::default())
                .fold(0u8, |b, (i, _)| b | 1 << i);
            seq.serialize_element(&byte)?;
        }
        seq.end()
    }
}

/// Serialize `all` as its length, the bitmap of its non-zero elements and those elements.
pub fn serialize<S, T, A>(all: &A, s: S) -> Result<S::Ok, S::Error>
where
    S: Serializer,
    T: Copy + Default + PartialEq + Serialize,
    A: AsRef<[T]> + ?Sized,
{
    let all = all.as_ref();
    let count = all.iter().filter(|&&x| x != T::default()).count();
    let mut t = s.serialize_tuple(3)?;
    t.serialize_element(&all.len())?;
    t.serialize_element(&Bitmap(all))?;
    t.serialize_element(&NonZero { all, count })?;
    t.end()
}

/// Read an array written by [`serialize`]; a bitmap of the wrong length, or whose bits do not
/// match the elements given, is an error (never a table of another shape).
pub fn deserialize<'de, D, T>(d: D) -> Result<Box<[T]>, D::Error>
where
    D: Deserializer<'de>,
    T: Copy + Default + PartialEq + DeserializeOwned,
{
    let (len, bits, values): (usize, Vec<u8>, Vec<T>) = Deserialize::deserialize(d)?;
    if bits.len() != len.div_ceil(8) {
        return Err(D::Error::custom(format!(
            "a bitmap of {} bytes for {len} elements",
            bits.len()
        )));
    }
    let set: usize = bits.iter().map(|b| b.count_ones() as usize).sum();
    let past_end = len % 8 != 0 && bits.last().is_some_and(|&b| b >> (len % 8) != 0);
    if set != values.len() || past_end || values.contains(&T::default()) {
        return Err(D::Error::custom(format!(
            "{set} elements marked, {} given",
            values.len()
        )));
    }
    let mut out = vec![T::default(); len];
    let mut given = values.into_iter();
    for (i, slot) in out.iter_mut().enumerate() {
        if bits[i / 8] >> (i % 8) & 1 == 1 {
            // as many values as bits, checked above
            *slot = given.next().unwrap_or_default();
        }
    }
    Ok(out.into_boxed_slice())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Holder(#[serde(with = "super")] Box<[u16]>);

    proptest! {
        /// Any array comes back element for element, and a sparse one takes fewer bytes than
        /// the plain form.
        #[test]
        fn round_trips(v in proptest::collection::vec(prop_oneof![3 => Just(0u16), 1 => any::<u16>()], 0..300)) {
            let h = Holder(v.clone().into());
            let bytes = postcard::to_allocvec(&h).unwrap();
            let back: Holder = postcard::from_bytes(&bytes).unwrap();
            prop_assert_eq!(back, h);
            let plain = postcard::to_allocvec(&v).unwrap();
            let nonzero = v.iter().filter(|&&x| x != 0).count();
            // the bitmap's bytes against the zeros' bytes saved
            prop_assert!(bytes.len() + (v.len() - nonzero) <= plain.len() + v.len().div_ceil(8) + 4);
        }
    }

    /// A 1,024-cell byte table a fifth full: about a third of the plain form.
    #[test]
    fn a_sparse_table_is_small() {
        let v: Vec<u8> = (0..1024).map(|i| u8::from(i % 5 == 0) * 3).collect();
        #[derive(serde::Serialize)]
        struct H<'a>(#[serde(with = "super")] &'a [u8]);
        // `serialize` takes a slice: the borrowed holder serializes as the owned one does
        let bytes = postcard::to_allocvec(&H(&v)).unwrap();
        // the length, the bitmap's length and bytes, the values' count and bytes (varints)
        assert_eq!(bytes.len(), 2 + (2 + 128) + (2 + 205));
        assert!(bytes.len() * 3 < postcard::to_allocvec(&v).unwrap().len());
    }

    /// Bitmaps that do not match their elements are refused.
    #[test]
    fn mismatches_are_refused() {
        let enc = |len: usize, bits: Vec<u8>, values: Vec<u16>| {
            postcard::to_allocvec(&(len, bits, values)).unwrap()
        };
        let read = |b: &[u8]| postcard::from_bytes::<Holder>(b).is_err();
        assert!(read(&enc(9, vec![1], vec![5])), "short bitmap");
        assert!(read(&enc(8, vec![3], vec![5])), "two bits, one value");
        assert!(read(&enc(4, vec![0x11], vec![5, 6])), "a bit past the end");
        assert!(read(&enc(8, vec![1], vec![0])), "a zero given as non-zero");
        assert!(!read(&enc(8, vec![0x81], vec![5, 6])));
    }
}
