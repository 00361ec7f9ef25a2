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
