//! Channel names: which are valid, their namespace, and the patterns of a
//! token's `channels` claim.

pub use crate::limits::MAX_CHANNEL_BYTES;

/// Whether `name` matches `[A-Za-z0-9_.:@-]{1,255}`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHANNEL_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:@-".contains(&b))
}

/// The namespace: the part before the first `:`, or `""`.
pub fn namespace(name: &str) -> &str {
    name.split_once(':').map(|(ns, _)| ns).unwrap_or("")
}

/// Does `pattern` (exact, or ending in `*` as a prefix match) match `name`?
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}
