//! The hash chain: each record's hash covers its predecessor's hash and its own canonical
//! JSON, so changing, removing, inserting or reordering any record changes every hash
//! after it. The first record of a journal follows a genesis value derived from the
//! journal's id, so records cannot be moved between journals unnoticed.

/// A 32-byte BLAKE3 digest.
pub type Hash = [u8; 32];

/// Separates our inputs from any other use of BLAKE3 (a "derive key" context string).
pub const RECORD_CONTEXT: &str = "pam-agent journal record v1";
const GENESIS_CONTEXT: &str = "pam-agent journal genesis v1";

/// The hash the first record of journal `journal_id` follows.
pub fn genesis(journal_id: &[u8; 16]) -> Hash {
    let mut h = blake3::Hasher::new_derive_key(GENESIS_CONTEXT);
    h.update(journal_id);
    *h.finalize().as_bytes()
}

/// The hash of a record whose canonical JSON is `json`, following `prev`.
pub fn link(prev: &Hash, json: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new_derive_key(RECORD_CONTEXT);
    h.update(prev);
    h.update(&(json.len() as u64).to_be_bytes());
    h.update(json);
    *h.finalize().as_bytes()
}

/// Lower-case hex, for showing hashes and keys to people.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Parses lower- or upper-case hex of exactly `N` bytes.
pub fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.trim();
    if text.len() != N * 2 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

/// Reads a stored hash column, which must be exactly 32 bytes.
pub fn from_blob(blob: &[u8]) -> Option<Hash> {
    blob.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_depends_on_predecessor_and_content() {
        let g = genesis(&[1; 16]);
        assert_ne!(g, genesis(&[2; 16]));
        let a = link(&g, b"{\"seq\":1}");
        assert_ne!(a, link(&g, b"{\"seq\":2}"));
        assert_ne!(a, link(&[0; 32], b"{\"seq\":1}"));
        assert_eq!(unhex::<32>(&hex(&a)), Some(a));
        assert_eq!(unhex::<2>("zz00"), None);
    }
}
