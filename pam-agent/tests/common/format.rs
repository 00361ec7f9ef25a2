//! The journal's on-disk formulas as docs/journal.md states them, written here with
//! `blake3` and `ed25519-dalek` directly and never with the product's `journal::chain` or
//! `journal::signing`: known-answer tests compare the product with this, and tamper tests
//! forge with it, so a change to the product's formula cannot hide behind itself.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// `BLAKE3-derive-key("pam-agent journal genesis v1", journal_id)`.
pub fn genesis(journal_id: &[u8; 16]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("pam-agent journal genesis v1");
    h.update(journal_id);
    *h.finalize().as_bytes()
}

/// `BLAKE3-derive-key("pam-agent journal record v1", prev_hash || len(record) || record)`,
/// `len` as 8 bytes big-endian.
pub fn link(prev: &[u8; 32], record: &[u8]) -> [u8; 32] {
    let mut input = Vec::with_capacity(40 + record.len());
    input.extend_from_slice(prev);
    input.extend_from_slice(&(record.len() as u64).to_be_bytes());
    input.extend_from_slice(record);
    blake3::derive_key("pam-agent journal record v1", &input)
}

/// `domain || journal_id || seq (u64 BE) || hash || ts_us (i64 BE)`.
fn signed_message(domain: &[u8], id: &[u8; 16], seq: u64, hash: &[u8; 32], ts_us: i64) -> Vec<u8> {
    [
        domain,
        &id[..],
        &seq.to_be_bytes()[..],
        &hash[..],
        &ts_us.to_be_bytes()[..],
    ]
    .concat()
}

/// What a checkpoint signs: "journal `id` had hash `hash` at `seq`".
pub fn checkpoint_message(id: &[u8; 16], seq: u64, hash: &[u8; 32], ts_us: i64) -> Vec<u8> {
    signed_message(b"pam-agent journal checkpoint v1\0", id, seq, hash, ts_us)
}

/// What an anchor signs: "record `first_seq` follows `prev_hash`".
pub fn anchor_message(id: &[u8; 16], first_seq: u64, prev_hash: &[u8; 32], ts_us: i64) -> Vec<u8> {
    signed_message(
        b"pam-agent journal anchor v1\0",
        id,
        first_seq,
        prev_hash,
        ts_us,
    )
}

pub fn sign(seed: &[u8; 32], message: &[u8]) -> [u8; 64] {
    SigningKey::from_bytes(seed).sign(message).to_bytes()
}

pub fn signature_ok(public: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let (Ok(public), Ok(sig)) = (
        <[u8; 32]>::try_from(public),
        Signature::from_slice(signature),
    ) else {
        return false;
    };
    VerifyingKey::from_bytes(&public).is_ok_and(|k| k.verify(message, &sig).is_ok())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

// ---- Format 2: segment files, as docs/journal.md lays them out (big-endian). ----

/// `"PAMJSEG2" | journal_id | first_seq | checkpoint_every | prev_hash` (72 bytes).
pub fn segment_header(id: &[u8; 16], first_seq: u64, every: u64, prev: &[u8; 32]) -> Vec<u8> {
    [
        &b"PAMJSEG2"[..],
        &id[..],
        &first_seq.to_be_bytes()[..],
        &every.to_be_bytes()[..],
        &prev[..],
    ]
    .concat()
}

/// `'R' | len(record) u32 | prev_hash | record | hash`.
pub fn record_frame(prev: &[u8; 32], record: &[u8], hash: &[u8; 32]) -> Vec<u8> {
    [
        &b"R"[..],
        &(record.len() as u32).to_be_bytes()[..],
        &prev[..],
        record,
        &hash[..],
    ]
    .concat()
}

/// `'C' | seq | hash | ts_us | public_key | signature` (and `'A'` for an anchor).
pub fn signed_frame(
    tag: u8,
    seq: u64,
    hash: &[u8; 32],
    ts_us: i64,
    public: &[u8; 32],
    sig: &[u8; 64],
) -> Vec<u8> {
    [
        &[tag][..],
        &seq.to_be_bytes()[..],
        &hash[..],
        &ts_us.to_be_bytes()[..],
        &public[..],
        &sig[..],
    ]
    .concat()
}

/// A frame of a segment, as bytes: `(tag, whole frame)`.
pub type RawFrame = (u8, Vec<u8>);

/// Splits a segment file into its header and frames (the test's own parser).
pub fn split_segment(bytes: &[u8]) -> (Vec<u8>, Vec<RawFrame>) {
    let header = bytes[..72].to_vec();
    let mut frames = Vec::new();
    let mut at = 72;
    while at < bytes.len() {
        let tag = bytes[at];
        let len = match tag {
            b'R' => {
                let n = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
                1 + 4 + 32 + n + 32
            }
            b'C' | b'A' => 1 + 8 + 32 + 8 + 32 + 64,
            other => panic!("byte {other:#x} at {at} starts no frame"),
        };
        frames.push((tag, bytes[at..at + len].to_vec()));
        at += len;
    }
    (header, frames)
}

/// An `R` frame's parts: (prev_hash, record, hash).
pub fn record_parts(frame: &[u8]) -> ([u8; 32], Vec<u8>, [u8; 32]) {
    let n = u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize;
    (
        frame[5..37].try_into().unwrap(),
        frame[37..37 + n].to_vec(),
        frame[37 + n..69 + n].try_into().unwrap(),
    )
}
