//! Property tests: random and mutated bytes fed to the wire codec and the SQL
//! classifier never panic, and framing never desynchronises however input is split.

use bytes::BytesMut;
use pam_agent::protocols::postgres::{
    sql,
    wire::{
        backend,
        frame::{Frame, FrameError, parse_frame},
        frontend, startup,
    },
};
use proptest::prelude::*;

const MAX: usize = 1 << 16;

fn any_frame() -> impl Strategy<Value = Frame> {
    (
        prop::sample::select(b"QPBDESHFdcfXpCZKRTsIN".to_vec()),
        prop::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(|(tag, body)| Frame::build(tag, &body))
}

/// Valid extended-protocol frames, then mutated.
fn valid_frontend() -> impl Strategy<Value = Frame> {
    prop_oneof![
        "[a-z ]{0,40}".prop_map(|q| Frame::build(b'Q', format!("{q}\0").as_bytes())),
        ("[a-z_]{0,8}", "[a-z ]{0,40}", 0i16..4).prop_map(|(n, q, p)| {
            let mut b = format!("{n}\0{q}\0").into_bytes();
            b.extend_from_slice(&p.to_be_bytes());
            for _ in 0..p {
                b.extend_from_slice(&23u32.to_be_bytes());
            }
            Frame::build(b'P', &b)
        }),
        (prop::collection::vec(prop::collection::vec(any::<u8>(), 0..8), 0..4)).prop_map(
            |params| {
                let mut b = b"portal\0stmt\0\0\0".to_vec();
                b.extend_from_slice(&(params.len() as i16).to_be_bytes());
                for p in &params {
                    b.extend_from_slice(&(p.len() as i32).to_be_bytes());
                    b.extend_from_slice(p);
                }
                b.extend_from_slice(&0i16.to_be_bytes());
                Frame::build(b'B', &b)
            }
        ),
        "[a-z]{0,8}".prop_map(|p| Frame::build(b'E', format!("{p}\0\0\0\0\0").as_bytes())),
    ]
}

fn decode_everything(f: &Frame) {
    let _ = frontend::query(f);
    let _ = frontend::parse(f);
    let _ = frontend::bind(f);
    let _ = frontend::execute(f);
    let _ = frontend::target(f);
    let _ = frontend::function_call(f);
    let _ = backend::error_code(f);
    let _ = backend::command_rows(f);
    let _ = backend::backend_key(f);
    let _ = backend::parameter_status(f);
    let _ = backend::ready_status(f);
    let _ = backend::auth_code(f);
    let _ = startup::parse(f.body());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let mut buf = BytesMut::from(&bytes[..]);
        loop {
            match parse_frame(&mut buf, MAX) {
                Ok(Some(f)) => {
                    prop_assert_eq!(f.raw.len(), 1 + i32::from_be_bytes([f.raw[1], f.raw[2], f.raw[3], f.raw[4]]) as usize);
                    decode_everything(&f);
                }
                Ok(None) => break,
                Err(FrameError::BadLength(_) | FrameError::TooLarge { .. }) => break,
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
        let _ = startup::parse(&bytes);
    }

    #[test]
    fn framing_survives_any_split(frames in prop::collection::vec(any_frame(), 1..20), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10)) {
        let all: Vec<u8> = frames.iter().flat_map(|f| f.raw.to_vec()).collect();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(all.len() + 1)).collect();
        points.push(all.len());
        points.sort_unstable();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut at = 0;
        for p in points {
            buf.extend_from_slice(&all[at..p]);
            at = p;
            while let Some(f) = parse_frame(&mut buf, MAX).unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(got, frames);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn mutated_valid_messages_never_panic(f in valid_frontend(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in any::<prop::sample::Index>()) {
        decode_everything(&f);
        let mut body = f.body().to_vec();
        for (i, b) in &flips {
            if !body.is_empty() {
                let i = i.index(body.len());
                body[i] = *b;
            }
        }
        let cut_at = cut.index(body.len() + 1);
        decode_everything(&Frame::build(f.tag, &body));
        decode_everything(&Frame::build(f.tag, &body[..cut_at]));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// The classifier answers (statements or a refusal reason) for any text.
    #[test]
    fn classifier_never_panics(parts in prop::collection::vec(prop::sample::select(vec![
        "SELECT", "*", "FROM", "t", "WHERE", "(", ")", ";", "'", "$$", "WITH", "AS", "DELETE",
        "UPDATE", "SET", "x", "=", "1", ",", "--", "/*", "*/", "\"", "E'\\\\'", "COPY", "DO",
        "pg_read_file", "INSERT", "INTO", "VALUES", "EXPLAIN", "ANALYZE", "\n",
    ]), 0..40)) {
        let text = parts.join(" ");
        let _ = sql::classify(&text, 1 << 20);
    }

    #[test]
    fn classifier_handles_arbitrary_unicode(text in "\\PC{0,200}") {
        let _ = sql::classify(&text, 1 << 20);
    }
}

#[test]
fn deep_nesting_is_refused_or_classified_without_overflow() {
    // Run where the daemon runs the parser: a Classifier thread with a sized stack.
    let classifier = sql::Classifier::start(sql::ClassifierConfig::default()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for depth in [100, 1_000, 10_000, 100_000] {
        let text = format!("SELECT {}1{}", "(".repeat(depth), ")".repeat(depth));
        let out = rt.block_on(classifier.classify(&text));
        if depth <= 100 {
            assert!(out.is_ok(), "{depth}: {out:?}");
        }
        // Deeper texts are refused by libpg_query's own depth check: never a crash.
    }
}
