//! The journal's on-disk format, pinned: known answers computed from the formulas in
//! docs/journal.md by an independent implementation (`common::format`, blake3 and
//! ed25519 used directly), compared with what the product computes and writes. A change
//! of formula, context string, length encoding or record JSON fails here; such a change
//! needs a new format version and a migration, not a new expected value.

mod common;

use common::format;
use jiff::Timestamp;
use pam_agent::journal::{
    Event, Record, SessionId, chain,
    event::{Decision, SessionEnd},
    signing,
};

const ID: [u8; 16] = *b"0123456789abcdef";

/// BLAKE3-derive-key("pam-agent journal genesis v1", "0123456789abcdef").
const GENESIS: &str = "80a371a20345e384b9b5569c6f7a7269d3f77371f108c4f2e14510039944e2ea";
/// The record below, linked after GENESIS.
const LINK_1: &str = "61491df3341a8f973b9da837c8c339e70c79920cfee175a7baad6a027986026a";
/// A second record linked after LINK_1.
const LINK_2: &str = "d235123be534f6c8d1c765b1652407a997030c6e7bb1026181044684f24a073d";

/// A statement record as the agent stores it: flat JSON, fields in declaration order,
/// optional fields absent rather than null.
fn statement() -> Record {
    Record {
        seq: 1,
        ts: "2026-01-02T03:04:05.123456789Z"
            .parse::<Timestamp>()
            .unwrap(),
        session: Some(SessionId(
            "01890a5d-ac96-774b-bcce-b302099a8057".parse().unwrap(),
        )),
        event: Event::Statement {
            statement: Some(3),
            text: Some("SELECT \"é\"\n".into()),
            fingerprint: Some("a1b2".into()),
            kinds: vec!["select".into()],
            tables: vec!["public.orders".into()],
            functions: Vec::new(),
            flags: Vec::new(),
            decision: Decision::Deny,
            rule: Some("no-ddl".into()),
            reason: None,
            duration_ms: None,
            rows: None,
            error: None,
        },
    }
}

const STATEMENT_JSON: &str = r#"{"seq":1,"ts":"2026-01-02T03:04:05.123456789Z","session":"01890a5d-ac96-774b-bcce-b302099a8057","kind":"statement","statement":3,"text":"SELECT \"é\"\n","fingerprint":"a1b2","kinds":["select"],"tables":["public.orders"],"decision":"deny","rule":"no-ddl"}"#;

fn closed() -> Record {
    Record {
        seq: 2,
        ts: "2026-01-02T03:04:06Z".parse::<Timestamp>().unwrap(),
        session: Some(SessionId(
            "01890a5d-ac96-774b-bcce-b302099a8057".parse().unwrap(),
        )),
        event: Event::SessionClosed {
            bytes_from_worker: 10,
            bytes_to_worker: 20,
            duration_ms: 30,
            end: SessionEnd::AgentShutdown,
            detail: None,
        },
    }
}

const CLOSED_JSON: &str = r#"{"seq":2,"ts":"2026-01-02T03:04:06Z","session":"01890a5d-ac96-774b-bcce-b302099a8057","kind":"session_closed","bytes_from_worker":10,"bytes_to_worker":20,"duration_ms":30,"end":"agent_shutdown"}"#;

/// Checkpoint at seq 2 (hash LINK_2, ts_us 1767323046000000), ed25519 seed [7; 32]
/// (ed25519 is deterministic; cross-checked once with Python's `cryptography`).
const CHECKPOINT_SIG: &str = "b0fdaf1ff7715817c8b365e21bffc3783b277744c8d71493b0dcc562f3cdc1c5746ab6add071d2700ba0472300f03bfb30b308f81de9e6f7e417f5443ac3c308";
/// Anchor "record 2 follows LINK_1" at the same time, same key.
const ANCHOR_SIG: &str = "2e0197408d1e2fa50472d08a090a3d5c08ab612fee8ebffc7b300c2dadb83e369a3585b3401da78bf0b2b241b81b651b9817b9011be1ab5837e2b978619fe208";
const TS_US: i64 = 1_767_323_046_000_000;
const SEED: [u8; 32] = [7; 32];

fn h32(text: &str) -> [u8; 32] {
    format::unhex(text).try_into().unwrap()
}

#[test]
fn the_documented_formulas_give_the_known_answers() {
    // The independent implementation against the pinned values: guards the oracle itself.
    assert_eq!(format::hex(&format::genesis(&ID)), GENESIS);
    assert_eq!(
        format::hex(&format::link(&h32(GENESIS), STATEMENT_JSON.as_bytes())),
        LINK_1
    );
    assert_eq!(
        format::hex(&format::link(&h32(LINK_1), CLOSED_JSON.as_bytes())),
        LINK_2
    );
    let cp = format::checkpoint_message(&ID, 2, &h32(LINK_2), TS_US);
    assert_eq!(format::hex(&format::sign(&SEED, &cp)), CHECKPOINT_SIG);
    let an = format::anchor_message(&ID, 2, &h32(LINK_1), TS_US);
    assert_eq!(format::hex(&format::sign(&SEED, &an)), ANCHOR_SIG);
}

#[test]
fn records_serialise_to_the_pinned_json() {
    assert_eq!(serde_json::to_string(&statement()).unwrap(), STATEMENT_JSON);
    assert_eq!(serde_json::to_string(&closed()).unwrap(), CLOSED_JSON);
    // And read back to the same record (what `verify` and `query` parse).
    assert_eq!(
        serde_json::from_str::<Record>(STATEMENT_JSON).unwrap(),
        statement()
    );
}

#[test]
fn the_product_chain_matches_the_known_answers() {
    assert_eq!(chain::hex(&chain::genesis(&ID)), GENESIS);
    let l1 = chain::link(&h32(GENESIS), STATEMENT_JSON.as_bytes());
    assert_eq!(chain::hex(&l1), LINK_1);
    assert_eq!(
        chain::hex(&chain::link(&l1, CLOSED_JSON.as_bytes())),
        LINK_2
    );
}

#[test]
fn the_product_signs_the_documented_messages() {
    let cp = signing::checkpoint_message(&ID, 2, &h32(LINK_2), TS_US);
    assert_eq!(cp, format::checkpoint_message(&ID, 2, &h32(LINK_2), TS_US));
    let an = signing::anchor_message(&ID, 2, &h32(LINK_1), TS_US);
    assert_eq!(an, format::anchor_message(&ID, 2, &h32(LINK_1), TS_US));
    let key = ed25519_dalek::SigningKey::from_bytes(&SEED);
    assert_eq!(format::hex(&signing::sign(&key, &cp)), CHECKPOINT_SIG);
    let public = key.verifying_key().to_bytes();
    assert!(signing::verify(
        &public,
        &cp,
        &format::unhex(CHECKPOINT_SIG)
    ));
    assert!(!signing::verify(
        &public,
        &an,
        &format::unhex(CHECKPOINT_SIG)
    ));
}

/// A journal the agent's writer stores from genesis: every stored `prev_hash` and `hash`
/// is the documented formula over the stored `record` text, starting from the genesis of
/// the journal's id.
#[test]
fn the_writer_stores_the_documented_chain() {
    use common::{Scratch, every_kind, open, options};
    let dir = Scratch::new("format-writer");
    let path = dir.path("journal.db");
    let (j, h) = open(options(&path));
    let s = SessionId::new();
    for (session, event) in every_kind(s) {
        j.record_blocking(session, event).unwrap();
    }
    drop(j);
    h.join().unwrap();
    let c = rusqlite::Connection::open(&path).unwrap();
    let id: String = c
        .query_row("SELECT value FROM meta WHERE key = 'journal_id'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let mut prev = format::genesis(&format::unhex(&id).try_into().unwrap());
    let mut st = c
        .prepare("SELECT seq, record, prev_hash, hash FROM records ORDER BY seq")
        .unwrap();
    let rows: Vec<(u64, String, Vec<u8>, Vec<u8>)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), every_kind(s).len());
    for (i, (seq, json, stored_prev, stored_hash)) in rows.into_iter().enumerate() {
        assert_eq!(seq, i as u64 + 1);
        assert_eq!(stored_prev, prev, "seq {seq}: prev_hash");
        prev = format::link(&prev, json.as_bytes());
        assert_eq!(stored_hash, prev, "seq {seq}: hash");
    }
}

// ---- Format 2: segment files. ----

/// BLAKE3 (plain hash) of the segment `documented_segment` lays out: the header (ID,
/// first seq 1, a checkpoint every 1000 records, GENESIS), the two records above, and the
/// checkpoint at seq 2 (CHECKPOINT_SIG). Computed with the independent encoder.
const SEGMENT_BLAKE3: &str = "6f1c2d1648058e750d2c108eeaf558bab52b7ff6c87d83665208684c1f79c418";

fn documented_segment() -> Vec<u8> {
    let public = ed25519_dalek::SigningKey::from_bytes(&SEED)
        .verifying_key()
        .to_bytes();
    let sig: [u8; 64] = format::unhex(CHECKPOINT_SIG).try_into().unwrap();
    [
        format::segment_header(&ID, 1, 1000, &h32(GENESIS)),
        format::record_frame(&h32(GENESIS), STATEMENT_JSON.as_bytes(), &h32(LINK_1)),
        format::record_frame(&h32(LINK_1), CLOSED_JSON.as_bytes(), &h32(LINK_2)),
        format::signed_frame(b'C', 2, &h32(LINK_2), TS_US, &public, &sig),
    ]
    .concat()
}

#[test]
fn the_documented_segment_layout_gives_the_known_answer() {
    let bytes = documented_segment();
    assert_eq!(
        bytes.len(),
        72 + (69 + STATEMENT_JSON.len()) + (69 + CLOSED_JSON.len()) + 145
    );
    assert_eq!(blake3::hash(&bytes).to_hex().as_str(), SEGMENT_BLAKE3);
}

/// The product's encoder writes exactly the documented bytes, and its verifier accepts
/// them (signed by the known key, and only by it).
#[test]
fn the_product_encodes_and_verifies_the_documented_segment() {
    use pam_agent::journal::{
        segment::{self, Header, Signed},
        verify::{Report, VerifyOptions},
        verify_log,
    };
    let key = ed25519_dalek::SigningKey::from_bytes(&SEED);
    let mut b = Vec::new();
    Header {
        journal_id: ID,
        first_seq: 1,
        checkpoint_every: 1000,
        prev_hash: h32(GENESIS),
    }
    .encode(&mut b);
    segment::encode_record(
        &mut b,
        &h32(GENESIS),
        STATEMENT_JSON.as_bytes(),
        &h32(LINK_1),
    );
    segment::encode_record(&mut b, &h32(LINK_1), CLOSED_JSON.as_bytes(), &h32(LINK_2));
    segment::encode_checkpoint(
        &mut b,
        &Signed {
            seq: 2,
            hash: h32(LINK_2),
            ts_us: TS_US,
            public_key: key.verifying_key().to_bytes(),
            signature: format::unhex(CHECKPOINT_SIG).try_into().unwrap(),
        },
    );
    assert_eq!(b, documented_segment());

    let dir = common::Scratch::new("format-segment");
    std::fs::write(dir.path(&segment::file_name(1)), &b).unwrap();
    let verify = |trusted: Vec<[u8; 32]>| {
        let mut report = Report::default();
        verify_log::verify_segments(
            &dir.0,
            &VerifyOptions {
                trusted_keys: trusted,
                expect_seq: Some(2),
            },
            &mut report,
        );
        report
    };
    let ok = verify(vec![key.verifying_key().to_bytes()]);
    assert!(ok.ok(), "{:?}", ok.problems);
    assert_eq!((ok.records, ok.last_signed), (2, Some(2)));
    assert!(!verify(vec![[9; 32]]).ok());
}

/// The writer's segment, read with the test's own parser: the header names the journal
/// and genesis, every record frame links by the documented formula.
#[test]
fn the_writer_stores_the_documented_segments() {
    use common::{Scratch, every_kind, open, options};
    let dir = Scratch::new("format-writer-v2");
    let path = dir.path("journal.db");
    let (j, h) = open(options(&path));
    let s = SessionId::new();
    for (session, event) in every_kind(s) {
        j.record_blocking(session, event).unwrap();
    }
    drop(j);
    h.join().unwrap();
    let seg = dir.path("journal.db.segments/00000000000000000001.seg");
    let bytes = std::fs::read(seg).unwrap();
    let (header, frames) = format::split_segment(&bytes);
    assert_eq!(&header[..8], b"PAMJSEG2");
    let id: [u8; 16] = header[8..24].try_into().unwrap();
    assert_eq!(u64::from_be_bytes(header[24..32].try_into().unwrap()), 1);
    assert_eq!(u64::from_be_bytes(header[32..40].try_into().unwrap()), 10);
    let mut prev = format::genesis(&id);
    assert_eq!(header[40..72], prev);
    let mut seq = 0;
    for (tag, frame) in frames {
        match tag {
            b'R' => {
                seq += 1;
                let (p, record, hash) = format::record_parts(&frame);
                assert_eq!(p, prev, "seq {seq}: prev_hash");
                prev = format::link(&prev, &record);
                assert_eq!(hash, prev, "seq {seq}: hash");
                let v: serde_json::Value = serde_json::from_slice(&record).unwrap();
                assert_eq!(v["seq"], seq);
            }
            b'C' => {
                assert_eq!(u64::from_be_bytes(frame[1..9].try_into().unwrap()), seq);
                assert_eq!(
                    frame[9..41],
                    prev,
                    "a checkpoint names the record before it"
                );
            }
            t => panic!("unexpected frame {t}"),
        }
    }
    assert_eq!(seq, every_kind(s).len() as u64);
}
