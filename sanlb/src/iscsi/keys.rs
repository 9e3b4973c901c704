//! Text key=value pairs (§6.1): `key=value` strings, each ended by a NUL.

use std::net::{IpAddr, SocketAddr};

use super::{KeyError, Limits};

/// An ordered list of `key=value` pairs, as they travel in the data segment
/// of login and text PDUs. Order is kept and keys may repeat (a SendTargets
/// answer repeats `TargetName` and `TargetAddress`);
/// [`Keys::check_unique`] is there for negotiations, where they may not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys(Vec<(String, String)>);

impl Keys {
    /// No pairs.
    pub fn new() -> Keys {
        Keys(Vec::new())
    }

    /// Parses a complete text. Every pair must end with a NUL; NULs in a
    /// row (padding some initiators add) are skipped. Keys follow §6.1: a
    /// capital letter, then letters, digits and `.-+@_#`; values are UTF-8.
    pub fn parse(data: &[u8], limits: &Limits) -> Result<Keys, KeyError> {
        if data.is_empty() {
            return Ok(Keys::new());
        }
        if data.last() != Some(&0) {
            return Err(KeyError::Unterminated);
        }
        let mut pairs = Vec::new();
        for (index, piece) in data[..data.len() - 1]
            .split(|&b| b == 0)
            .filter(|p| !p.is_empty())
            .enumerate()
        {
            if index >= limits.max_keys {
                return Err(KeyError::TooMany {
                    max: limits.max_keys,
                });
            }
            let Some(eq) = piece.iter().position(|&b| b == b'=') else {
                return Err(KeyError::NoEquals { index });
            };
            let (key, value) = (&piece[..eq], &piece[eq + 1..]);
            check_key(key, index, limits)?;
            // Checked: ASCII only.
            let key = String::from_utf8_lossy(key).into_owned();
            if value.len() > limits.max_value_len {
                return Err(KeyError::ValueTooLong {
                    key,
                    len: value.len(),
                    max: limits.max_value_len,
                });
            }
            let Ok(value) = std::str::from_utf8(value) else {
                return Err(KeyError::NotUtf8 { key });
            };
            pairs.push((key, value.to_owned()));
        }
        Ok(Keys(pairs))
    }

    /// Appends a pair.
    pub fn push(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.push((key.into(), value.into()));
    }

    /// The value of the first pair named `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Fails on the first key that appears twice.
    pub fn check_unique(&self) -> Result<(), KeyError> {
        for (i, (k, _)) in self.0.iter().enumerate() {
            if self.0[..i].iter().any(|(seen, _)| seen == k) {
                return Err(KeyError::Duplicate(k.clone()));
            }
        }
        Ok(())
    }

    /// Appends the text: `key=value\0` for each pair.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        for (k, v) in &self.0 {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
    }

    /// The text: `key=value\0` for each pair.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Keys {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        Keys(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

fn check_key(key: &[u8], index: usize, limits: &Limits) -> Result<(), KeyError> {
    let bad = |why| KeyError::BadKey {
        index,
        key: String::from_utf8_lossy(&key[..key.len().min(64)]).into_owned(),
        why,
    };
    let Some(first) = key.first() else {
        return Err(bad("empty"));
    };
    if key.len() > limits.max_key_len {
        return Err(bad("too long"));
    }
    if !first.is_ascii_uppercase() {
        return Err(bad("does not start with a capital letter"));
    }
    if !key
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b".-+@_#".contains(b))
    {
        return Err(bad("holds a character outside letters, digits and .-+@_#"));
    }
    Ok(())
}

/// `IP:PORT` as a TargetAddress value (§13.8): IPv6 in brackets, an
/// IPv4-mapped IPv6 address as plain IPv4, no scope id, no portal group tag.
pub fn target_address(addr: SocketAddr) -> String {
    match addr.ip().to_canonical() {
        IpAddr::V4(ip) => format!("{ip}:{}", addr.port()),
        IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(data: &[u8]) -> Result<Keys, KeyError> {
        Keys::parse(data, &Limits::default())
    }

    #[test]
    fn parses_pairs_in_order() {
        let keys =
            parse(b"InitiatorName=iqn.x:h1\0SessionType=Discovery\0X-com.example=a=b\0").unwrap();
        assert_eq!(
            keys.iter().collect::<Vec<_>>(),
            [
                ("InitiatorName", "iqn.x:h1"),
                ("SessionType", "Discovery"),
                ("X-com.example", "a=b")
            ]
        );
        assert_eq!(keys.get("SessionType"), Some("Discovery"));
        assert_eq!(keys.get("TargetName"), None);
    }

    #[test]
    fn empty_values_and_nul_padding_are_accepted() {
        let keys = parse(b"SendTargets=\0\0\0").unwrap();
        assert_eq!(keys.iter().collect::<Vec<_>>(), [("SendTargets", "")]);
        assert!(parse(b"").unwrap().is_empty());
        assert!(parse(b"\0\0\0\0").unwrap().is_empty());
    }

    #[test]
    fn encodes_byte_exactly() {
        let keys: Keys = [
            ("TargetName", "iqn.x:t1"),
            ("TargetAddress", "10.0.0.2:3260,1"),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            keys.encode(),
            b"TargetName=iqn.x:t1\0TargetAddress=10.0.0.2:3260,1\0"
        );
        assert_eq!(parse(&keys.encode()).unwrap(), keys);
    }

    #[test]
    fn refuses_malformed_text() {
        assert_eq!(parse(b"A=b"), Err(KeyError::Unterminated));
        assert_eq!(parse(b"A=b\0Cd\0"), Err(KeyError::NoEquals { index: 1 }));
        for (text, why) in [
            (&b"=v\0"[..], "empty"),
            (b"lower=v\0", "does not start with a capital letter"),
            (
                b"Bad key=v\0",
                "holds a character outside letters, digits and .-+@_#",
            ),
        ] {
            match parse(text) {
                Err(KeyError::BadKey { why: w, .. }) => assert_eq!(w, why),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        let long_key = format!("K{}=v\0", "k".repeat(63));
        assert!(matches!(
            parse(long_key.as_bytes()),
            Err(KeyError::BadKey {
                why: "too long",
                ..
            })
        ));
        let long_value = format!("K={}\0", "v".repeat(256));
        assert_eq!(
            parse(long_value.as_bytes()),
            Err(KeyError::ValueTooLong {
                key: "K".into(),
                len: 256,
                max: 255
            })
        );
        assert_eq!(
            parse(b"K=\xff\0"),
            Err(KeyError::NotUtf8 { key: "K".into() })
        );
        let many: String = (0..65).map(|i| format!("K{i}=v\0")).collect();
        assert_eq!(parse(many.as_bytes()), Err(KeyError::TooMany { max: 64 }));
    }

    #[test]
    fn limits_are_inclusive() {
        let key = format!("K{}=v\0", "k".repeat(62));
        assert!(parse(key.as_bytes()).is_ok());
        let value = format!("K={}\0", "v".repeat(255));
        assert!(parse(value.as_bytes()).is_ok());
        let many: String = (0..64).map(|i| format!("K{i}=v\0")).collect();
        assert_eq!(parse(many.as_bytes()).unwrap().len(), 64);
    }

    #[test]
    fn duplicates_are_found() {
        let keys = parse(b"A=1\0B=2\0A=3\0").unwrap();
        assert_eq!(keys.check_unique(), Err(KeyError::Duplicate("A".into())));
        assert_eq!(keys.get("A"), Some("1"));
        assert!(parse(b"A=1\0B=2\0").unwrap().check_unique().is_ok());
    }

    #[test]
    fn target_addresses_follow_section_13_8() {
        for (addr, text) in [
            ("198.18.1.1:3261", "198.18.1.1:3261"),
            ("[2001:2::1]:3260", "[2001:2::1]:3260"),
            ("[::ffff:198.18.1.1]:3261", "198.18.1.1:3261"),
            ("[fe80::1%2]:3260", "[fe80::1]:3260"),
        ] {
            assert_eq!(target_address(addr.parse().unwrap()), text, "{addr}");
        }
    }
}
