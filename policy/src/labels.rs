//! Labels as selectors read them: the model's map, and a packed copy laid
//! out for the decision path.
//!
//! A `BTreeMap<String, String>` puts every key and value in its own heap
//! allocation, and finding a key compares it, through `memcmp`, with keys
//! that live elsewhere: a decision from a pod no recent decision touched
//! paid a cache miss for most of the strings it read, and a call for each
//! comparison. [`PackedLabels`] holds one object's labels as a table of
//! [`Text`] heads (each string's first eight bytes as one number, and its
//! length) beside one string of every key and value: most label keys and
//! values are eight bytes or fewer, and for those a comparison is two
//! integer comparisons that never read the string.

use std::collections::BTreeMap;

/// Labels of a pod or a namespace, sorted by key.
pub type Labels = BTreeMap<String, String>;

/// What a selector needs of labels: the value of a key.
pub trait LabelSource {
    /// The value of `key`, when the label is present.
    fn value(&self, key: Text<'_>) -> Option<Text<'_>>;
}

/// A string ready to compare: its first eight bytes as one number
/// (zero-padded), and its bytes. Two texts are the same string when their
/// lengths and heads are equal and, past eight bytes, the rest is too.
#[derive(Clone, Copy, Debug)]
pub struct Text<'a> {
    head: u64,
    bytes: &'a [u8],
}

/// One object's labels packed, in key order: a head per key and value,
/// and every key then its value in one string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackedLabels {
    labels: Box<[PackedLabel]>,
    text: Box<[u8]>,
}

/// One label of [`PackedLabels`]: the heads of its key and value, and
/// where each ends in the text (the key starts where the previous value
/// ends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PackedLabel {
    key: u64,
    value: u64,
    key_end: u32,
    value_end: u32,
}

/// Labels as the index reads them: packed, or the map itself where
/// packing could not be done.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LabelsRef<'a> {
    /// The model's map.
    Map(&'a Labels),
    /// The packed copy.
    Packed(&'a PackedLabels),
}

// === impl Text ===

impl<'a> Text<'a> {
    /// A string's text.
    pub fn new(s: &'a str) -> Self {
        Self::of_bytes(s.as_bytes())
    }

    fn of_bytes(bytes: &'a [u8]) -> Self {
        Self {
            head: head_of(bytes),
            bytes,
        }
    }

    /// Whether both are the same string.
    #[inline]
    pub fn same(&self, other: &Text<'_>) -> bool {
        self.bytes.len() == other.bytes.len()
            && self.head == other.head
            && (self.bytes.len() <= 8 || self.bytes[8..] == other.bytes[8..])
    }

    /// The string's bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// The first eight bytes of a string as one number, zero-padded.
pub(crate) fn head_of(bytes: &[u8]) -> u64 {
    let mut head = [0; 8];
    let n = bytes.len().min(8);
    head[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(head)
}

/// A text whose head was computed already: `bytes` is the string.
pub(crate) fn text_with_head(head: u64, bytes: &[u8]) -> Text<'_> {
    Text { head, bytes }
}

/// Whether two strings' bytes are equal, for short keys and names:
/// compared in place where `==` would call `memcmp`, whose call costs
/// more than the comparison.
#[inline]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if a.len() > 16 {
        return a == b;
    }
    a.iter().zip(b).all(|(x, y)| x == y)
}

// === impl LabelsRef ===

impl<'a> LabelsRef<'a> {
    /// The packed copy when there is one, else the map.
    pub(crate) fn of(map: &'a Labels, packed: Option<&'a PackedLabels>) -> Self {
        packed.map_or(Self::Map(map), Self::Packed)
    }
}

impl LabelSource for LabelsRef<'_> {
    #[inline]
    fn value(&self, key: Text<'_>) -> Option<Text<'_>> {
        match self {
            Self::Map(map) => map.value(key),
            Self::Packed(packed) => packed.value(key),
        }
    }
}

// === impl Labels ===

impl LabelSource for Labels {
    fn value(&self, key: Text<'_>) -> Option<Text<'_>> {
        let key = std::str::from_utf8(key.bytes).ok()?;
        self.get(key).map(|v| Text::new(v))
    }
}

// === impl PackedLabels ===

impl PackedLabels {
    /// Packs labels; `None` when their text is longer than `u32` counts
    /// (no API server stores such an object): the caller keeps reading
    /// the map, so that no label goes missing (a missing label would
    /// satisfy `NotIn` and `DoesNotExist`).
    pub fn pack(labels: &Labels) -> Option<Self> {
        let size = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
        let mut text = Vec::with_capacity(size);
        let mut packed = Vec::with_capacity(labels.len());
        for (key, value) in labels {
            text.extend(key.as_bytes());
            let key_end = u32::try_from(text.len()).ok()?;
            text.extend(value.as_bytes());
            packed.push(PackedLabel {
                key: head_of(key.as_bytes()),
                value: head_of(value.as_bytes()),
                key_end,
                value_end: u32::try_from(text.len()).ok()?,
            });
        }
        Some(Self {
            labels: packed.into_boxed_slice(),
            text: text.into_boxed_slice(),
        })
    }

    /// Every label, in key order: its key's and its value's text.
    pub fn iter(&self) -> impl Iterator<Item = (Text<'_>, Text<'_>)> {
        let mut start = 0;
        self.labels.iter().map(move |label| {
            let (key, value) = self.texts(start, label);
            start = label.value_end as usize;
            (key, value)
        })
    }

    /// A label's key and value, its key starting at `start`.
    #[inline]
    fn texts(&self, start: usize, label: &PackedLabel) -> (Text<'_>, Text<'_>) {
        let (key_end, value_end) = (label.key_end as usize, label.value_end as usize);
        (
            text_with_head(label.key, &self.text[start..key_end]),
            text_with_head(label.value, &self.text[key_end..value_end]),
        )
    }
}

impl LabelSource for PackedLabels {
    fn value(&self, key: Text<'_>) -> Option<Text<'_>> {
        let mut start = 0;
        for label in self.labels.iter() {
            // Lengths and heads first: the text is read only for a long
            // key whose head matched.
            let key_len = label.key_end as usize - start;
            if key_len == key.bytes.len() && label.key == key.head {
                let (k, v) = self.texts(start, label);
                if k.same(&key) {
                    return Some(v);
                }
            }
            start = label.value_end as usize;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize) -> Labels {
        (0..n)
            .map(|i| (format!("key-{i:03}"), format!("value-{}", "x".repeat(i))))
            .collect()
    }

    fn text_of(found: Option<Text<'_>>) -> Option<&[u8]> {
        found.map(|t| t.bytes())
    }

    #[test]
    fn a_packed_copy_answers_every_key_as_the_map_does() {
        for n in [0, 1, 3, 8, 40] {
            let map = labels(n);
            let packed = PackedLabels::pack(&map).expect("packs");
            assert!(packed
                .iter()
                .map(|(k, v)| (k.bytes(), v.bytes()))
                .eq(map.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes()))));
            for (k, v) in &map {
                let found = text_of(packed.value(Text::new(k)));
                assert_eq!(found, Some(v.as_bytes()), "{n} labels: {k}");
            }
            for absent in ["", "key-", "key-0000", "key-999", "a", "zzz", "value-"] {
                assert_eq!(
                    text_of(packed.value(Text::new(absent))),
                    text_of(map.value(Text::new(absent))),
                    "{n} labels: {absent:?}"
                );
            }
        }
    }

    #[test]
    fn empty_keys_and_values_and_prefixes_stay_apart() {
        let map: Labels = [("", "e"), ("a", ""), ("ab", "c"), ("abc", "")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let packed = PackedLabels::pack(&map).expect("packs");
        let value = |k: &str| text_of(packed.value(Text::new(k)));
        assert_eq!(value(""), Some(&b"e"[..]));
        assert_eq!(value("a"), Some(&b""[..]));
        assert_eq!(value("ab"), Some(&b"c"[..]));
        assert_eq!(value("abc"), Some(&b""[..]));
        assert_eq!(value("abcd"), None);
        assert_eq!(value("b"), None);
    }

    #[test]
    fn texts_are_the_same_exactly_when_their_strings_are() {
        // Short, eight bytes, longer with the same head, a zero byte
        // (the padding's value) inside.
        let strings = [
            "",
            "a",
            "a\0",
            "tier1",
            "tier2",
            "12345678",
            "123456789",
            "12345678x",
            "kubernetes.io/metadata.name",
            "kubernetes.io/metadata.namf",
        ];
        for a in strings {
            for b in strings {
                assert_eq!(Text::new(a).same(&Text::new(b)), a == b, "{a:?} {b:?}");
                assert_eq!(
                    same_bytes(a.as_bytes(), b.as_bytes()),
                    a == b,
                    "{a:?} {b:?}"
                );
            }
        }
    }
}
