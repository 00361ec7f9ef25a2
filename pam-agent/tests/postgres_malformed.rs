//! Malformed and oversized input: the connection that sent it ends with a FATAL
//! error the client can read, the proxy never desynchronises or panics, and other
//! sessions carry on. Raw frames are sent by a minimal client logging in as `trusty`
//! (trust authentication in the test server's pg_hba.conf).

mod postgres_support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use postgres_support::*;

struct Raw {
    s: TcpStream,
}

impl Raw {
    fn connect(proxy: &Proxy) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw { s }
    }

    fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = 196608i32.to_be_bytes().to_vec();
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut p = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        p.extend_from_slice(&body);
        p
    }

    /// Logs in as `trusty` and reads up to the first ReadyForQuery.
    fn login(proxy: &Proxy) -> Raw {
        let mut r = Raw::connect(proxy);
        r.send(&Self::startup_packet(&[
            ("user", "trusty"),
            ("database", "postgres"),
        ]));
        loop {
            let (tag, _) = r.frame().expect("login answer");
            if tag == b'Z' {
                return r;
            }
            assert_ne!(tag, b'E', "login failed");
        }
    }

    fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        self.s.read_exact(&mut head).ok()?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        self.s.read_exact(&mut body).ok()?;
        Some((head[0], body))
    }

    fn byte(&mut self) -> u8 {
        let mut b = [0u8; 1];
        self.s.read_exact(&mut b).unwrap();
        b[0]
    }

    /// Reads the FATAL error that ends the connection: (SQLSTATE, message).
    fn fatal(&mut self) -> (String, String) {
        let (tag, body) = match self.frame() {
            Some(f) => f,
            None => panic!("no ErrorResponse: {:?}", self.s.take_error()),
        };
        assert_eq!(tag, b'E');
        let fields = fields(&body);
        assert_eq!(
            fields.get(&b'S').map(String::as_str),
            Some("FATAL"),
            "{fields:?}"
        );
        let out = (fields[&b'C'].clone(), fields[&b'M'].clone());
        self.eof();
        out
    }

    fn eof(&mut self) {
        let mut b = [0u8; 1];
        assert_eq!(
            self.s.read(&mut b).unwrap_or(0),
            0,
            "connection should be closed"
        );
    }
}

fn fields(body: &[u8]) -> std::collections::HashMap<u8, String> {
    let mut out = std::collections::HashMap::new();
    let mut i = 0;
    while i < body.len() && body[i] != 0 {
        let t = body[i];
        let end = body[i + 1..].iter().position(|b| *b == 0).unwrap() + i + 1;
        out.insert(t, String::from_utf8_lossy(&body[i + 1..end]).into_owned());
        i = end + 1;
    }
    out
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

#[test]
fn malformed_startup_and_forbidden_parameters_end_with_fatal() {
    let pg = PgServer::start();
    let proxy = Proxy::start(&pg, CREW_POLICY);

    let mut r = Raw::connect(&proxy);
    r.send(&3i32.to_be_bytes());
    let (code, msg) = r.fatal();
    assert_eq!(code, "08P01");
    assert!(msg.contains("invalid startup packet"), "{msg}");

    let mut r = Raw::connect(&proxy);
    r.send(&1_000_000i32.to_be_bytes());
    let (code, msg) = r.fatal();
    assert_eq!(code, "08P01");
    assert!(msg.contains("exceeds the limit"), "{msg}");

    for (k, v) in [
        ("options", "-c role=postgres"),
        // Spellings the server reads as role / search_path (backslash dropped, - as _).
        ("options", r"-c ro\le=postgres"),
        ("options", "-c search-path=secret"),
        ("options", r"-c search\_path=secret"),
        ("options", "--search_path=secret"),
        ("options", "-O"),
        ("Role", "postgres"),
        ("search_path", "secret"),
        ("client_encoding", "SJIS"),
        ("replication", "database"),
    ] {
        let mut r = Raw::connect(&proxy);
        r.send(&Raw::startup_packet(&[("user", "trusty"), (k, v)]));
        let (code, msg) = r.fatal();
        assert_eq!(code, "42501", "{k}");
        assert!(msg.contains(&format!("`{k}`")), "{msg}");
    }
    // Harmless settings pass, in the startup packet and in options.
    let mut r = Raw::connect(&proxy);
    r.send(&Raw::startup_packet(&[
        ("user", "trusty"),
        ("database", "postgres"),
        ("application_name", "crew"),
        ("options", "-c statement_timeout=5s --lock-timeout=2s"),
    ]));
    let tags: Vec<u8> = std::iter::from_fn(|| r.frame().map(|f| f.0))
        .take_while(|t| *t != b'Z')
        .collect();
    assert!(!tags.contains(&b'E'), "{tags:?}");
    r.send(&frame(b'Q', b"SHOW statement_timeout\0"));
    let answer = r.until_ready();
    assert_eq!(&answer[1].1[6..], b"5s", "the setting reached the server");
}

#[test]
fn encryption_requests_without_tls_are_answered_n() {
    let pg = PgServer::start();
    let proxy = Proxy::start(&pg, CREW_POLICY);
    let mut r = Raw::connect(&proxy);
    r.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]); // GSSENCRequest
    assert_eq!(r.byte(), b'N');
    r.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]); // SSLRequest
    assert_eq!(r.byte(), b'N');
    r.send(&Raw::startup_packet(&[
        ("user", "trusty"),
        ("database", "postgres"),
    ]));
    let mut tags = Vec::new();
    while let Some((tag, _)) = r.frame() {
        tags.push(tag);
        if tag == b'Z' {
            break;
        }
    }
    assert_eq!(tags.first(), Some(&b'R'));
    assert!(tags.contains(&b'K'));
    // psql with sslmode=prefer falls back to clear text the same way.
    let run = proxy.psql_args("SELECT 1", &[]);
    assert!(run.ok);
}

#[test]
fn malformed_messages_after_login_end_that_connection_only() {
    let pg = PgServer::start();
    let proxy = Proxy::start(&pg, CREW_POLICY);
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        // Length below 4.
        (b"Q\0\0\0\x02".to_vec(), "08P01", "length 2 is invalid"),
        // Length announcing 1 GiB: refused before any of it is read.
        (b"Q\x40\0\0\0".to_vec(), "54000", "exceeds the limit"),
        // Bind whose parameter count lies.
        (
            frame(b'B', b"\0\0\0\0\0\x05\0\0\0\x01x"),
            "08P01",
            "malformed",
        ),
        // Parse announcing 65535 parameter types (the count is unsigned) it lacks.
        (frame(b'P', b"\0SELECT 1\0\xff\xff"), "08P01", "malformed"),
        // Describe of neither statement nor portal.
        (frame(b'D', b"X\0"), "08P01", "malformed"),
        // A backend message type from the client.
        (frame(b'Z', b"I"), "08P01", "unexpected message type"),
        // Authentication response after login.
        (frame(b'p', b"pw\0"), "08P01", "unexpected message type"),
    ];
    for (bytes, code, text) in cases {
        let mut r = Raw::login(&proxy);
        r.send(&bytes);
        let (c, m) = r.fatal();
        assert_eq!(c, code, "{text}: {m}");
        assert!(m.contains(text), "{m}");
    }
    // Other sessions are unaffected.
    let run = proxy.psql("SELECT count(*) FROM orders");
    assert_eq!(run.stdout, "5\n", "{run:?}");
}

#[test]
fn oversized_query_from_a_real_client_is_refused_clearly() {
    let pg = PgServer::start();
    let mut opts = Options::policy(CREW_POLICY);
    opts.max_message_bytes = Some(4096);
    let proxy = Proxy::with(&pg, opts);
    let big = format!("SELECT '{}'", "x".repeat(10_000));
    let run = proxy.psql(&big);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("FATAL:  54000: pam-agent: worker: message of 10015 bytes exceeds the limit of 4096 bytes"),
        "{}",
        run.stderr
    );
    assert!(proxy.psql("SELECT 1").ok);
}

#[test]
fn refused_extended_batch_after_flush_is_rolled_back_by_the_server() {
    let pg = PgServer::start();
    let proxy = Proxy::start(&pg, CREW_POLICY);
    let mut r = Raw::login(&proxy);
    // Parse/Bind/Execute an INSERT, Flush (it goes upstream and runs), then Parse a
    // refused statement and Sync: the server must roll the insert back.
    let mut b = frame(
        b'P',
        b"\0INSERT INTO audit_log (note) VALUES ('flushed')\0\0\0",
    );
    b.extend(frame(b'B', b"\0\0\0\0\0\0\0\0"));
    b.extend(frame(b'E', b"\0\0\0\0\0"));
    b.extend(frame(b'H', b""));
    r.send(&b);
    let tags: Vec<u8> = (0..3).map(|_| r.frame().unwrap().0).collect();
    assert_eq!(tags, b"12C"); // ParseComplete, BindComplete, CommandComplete
    let mut b = frame(b'P', b"\0SELECT k FROM secret.keys\0\0\0");
    b.extend(frame(b'B', b"\0\0\0\0\0\0\0\0"));
    b.extend(frame(b'E', b"\0\0\0\0\0"));
    b.extend(frame(b'S', b""));
    r.send(&b);
    let (tag, body) = r.frame().unwrap();
    assert_eq!(tag, b'E');
    let f = fields(&body);
    assert_eq!(f[&b'C'], "42501");
    assert!(f[&b'M'].contains("rule \"default\""), "{f:?}");
    let (tag, body) = r.frame().unwrap();
    assert_eq!((tag, body), (b'Z', b"I".to_vec()));
    assert_eq!(pg.direct("SELECT count(*) FROM audit_log"), "0\n");
    // The connection is usable afterwards.
    r.send(&frame(b'Q', b"SELECT 7\0"));
    let tags: Vec<u8> = std::iter::from_fn(|| r.frame().map(|f| f.0))
        .take(4)
        .collect();
    assert_eq!(tags, b"TDCZ");
}

#[test]
fn a_reloaded_policy_applies_to_open_sessions_without_dropping_them() {
    let pg = PgServer::start();
    let proxy = Proxy::start(&pg, CREW_POLICY);
    let mut r = Raw::login(&proxy);
    let mut query = |sql: &str| {
        r.send(&frame(b'Q', format!("{sql}\0").as_bytes()));
        r.until_ready()
    };
    let secret = "SELECT k FROM secret.keys";
    assert_eq!(query(secret)[0].0, b'E');
    // What `pam-agent run` does on SIGHUP: the new [policy] replaces the old one.
    let raw: pam_agent::policy::RawPolicy = toml::from_str(&format!(
        "[[rules]]\nname = \"secrets-too\"\naction = \"allow\"\ntables = [\"secret.*\"]\nkinds = [\"select\"]\n{CREW_POLICY}"
    ))
    .unwrap();
    let policy = raw
        .validate(&["db"], &pam_agent::protocols::postgres::sql::VOCABULARY)
        .unwrap()
        .0;
    let masking = proxy.rules.current().masking.clone();
    proxy.rules.replace(pam_agent::govern::Rules {
        policy,
        masking,
        principals: Default::default(),
    });
    let answer = query(secret);
    let tags: Vec<u8> = answer.iter().map(|f| f.0).collect();
    assert_eq!(tags, b"TDCZ");
    assert!(String::from_utf8_lossy(&answer[1].1).contains("the-key"));
    let d = proxy.decisions();
    assert_eq!(d.last().unwrap().2, "secrets-too");
}

#[test]
fn a_refusal_fails_the_transaction_block_as_the_servers_own_error_would() {
    let pg = PgServer::start();
    let proxy = Proxy::start(&pg, CREW_POLICY);
    let mut r = Raw::login(&proxy);
    let mut query = |sql: &str| r.query(sql).seen();
    let refused = "SELECT k FROM secret.keys";
    assert_eq!(query(refused), (b"E".to_vec(), Some("42501".into()), b'I'));
    assert_eq!(query("BEGIN").2, b'T');
    assert_eq!(query("SELECT count(*) FROM orders").2, b'T');
    // A refusal fails the transaction block as the server's own error would.
    assert_eq!(query(refused), (b"E".to_vec(), Some("42501".into()), b'E'));
    assert_eq!(
        query("SELECT count(*) FROM orders"),
        (b"E".to_vec(), Some("25P02".into()), b'E'),
        "the server ignores commands until the end of the aborted block"
    );
    let (tags, code, status) = query("COMMIT");
    assert_eq!((tags.as_slice(), code, status), (&b"C"[..], None, b'I'));
    // In a block the server failed itself, a refused statement gets the server's
    // answer to any statement there.
    assert_eq!(query("BEGIN").2, b'T');
    assert_eq!(query("SELECT 1/0").1.as_deref(), Some("22012"));
    assert_eq!(query(refused), (b"E".to_vec(), Some("25P02".into()), b'E'));
    assert_eq!(query("ROLLBACK").2, b'I');
    assert_eq!(query(refused), (b"E".to_vec(), Some("42501".into()), b'I'));
    assert_eq!(query("SELECT count(*) FROM orders").2, b'I');
}

/// The cursor the agent closes to make the server fail in place of a refusal shows in
/// `pg_stat_activity` once used. A worker that reads it there must not be able to make
/// its next refusal a success by declaring a cursor of that name: such names are refused
/// at the SQL level too, and every refusal names a fresh cursor anyway.
#[test]
fn a_cursor_named_after_a_past_refusal_cannot_answer_the_next_one() {
    let pg = PgServer::start();
    let proxy = Proxy::start(&pg, CREW_POLICY);
    let mut r = Raw::login(&proxy);
    let mut query = |sql: &str| {
        let a = r.query(sql);
        (a.tags, a.code, a.status, a.message)
    };
    let refused = "SELECT k FROM secret.keys";
    let used = || {
        pg.direct(
            "SELECT substring(query from 'pam_agent_r_[0-9a-f]+') FROM pg_stat_activity \
             WHERE query LIKE 'CLOSE pam_agent_r_%'",
        )
        .trim()
        .to_owned()
    };
    let (_, code, status, _) = query(refused);
    assert_eq!((code.as_deref(), status), (Some("42501"), b'I'));
    let first = used();
    assert!(first.starts_with("pam_agent_r_"), "{first:?}");
    assert_eq!(query("BEGIN").2, b'T');
    for sql in [
        format!("DECLARE {first} CURSOR FOR SELECT 1"),
        format!("CLOSE {first}"),
        format!("PREPARE {first} AS SELECT 1"),
    ] {
        let (tags, code, status, message) = query(&sql);
        assert_eq!(
            (tags.as_slice(), code.as_deref(), status),
            (&b"E"[..], Some("42501"), b'E'),
            "{sql}: {message}"
        );
        assert!(
            message.contains("(rule \"reserved_name\")"),
            "{sql}: {message}"
        );
        assert_eq!(query("ROLLBACK").2, b'I');
        assert_eq!(query("BEGIN").2, b'T');
    }
    // And the next refusal names a cursor of its own.
    let (_, code, status, _) = query(refused);
    assert_eq!((code.as_deref(), status), (Some("42501"), b'E'));
    let last = used();
    assert!(
        last.starts_with("pam_agent_r_") && last != first,
        "{last:?}"
    );
    assert_eq!(query("ROLLBACK").2, b'I');
    // On record: the three names refused by the reserved-name rule.
    let reserved = proxy
        .decisions()
        .into_iter()
        .filter(|(_, decision, rule)| decision == "deny" && rule == "reserved_name")
        .count();
    assert_eq!(reserved, 3);
}

impl Raw {
    /// Frames up to and including the next ReadyForQuery.
    fn until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let f = self.frame().expect("session still open");
            let done = f.0 == b'Z';
            out.push(f);
            if done {
                return out;
            }
        }
    }

    /// Sends a simple Query and reads its answer up to ReadyForQuery.
    fn query(&mut self, sql: &str) -> Answer {
        self.send(&frame(b'Q', format!("{sql}\0").as_bytes()));
        let mut answer = Answer::default();
        for (tag, body) in self.until_ready() {
            match tag {
                b'Z' => answer.status = body[0],
                b'E' => {
                    let f = fields(&body);
                    answer.code = Some(f[&b'C'].clone());
                    answer.message = f[&b'M'].clone();
                    answer.tags.push(tag);
                }
                _ => answer.tags.push(tag),
            }
        }
        answer
    }
}

/// What a simple Query got: the tags of the messages before ReadyForQuery, the error's
/// SQLSTATE and message if any, and the transaction status.
#[derive(Debug, Default)]
struct Answer {
    tags: Vec<u8>,
    code: Option<String>,
    message: String,
    status: u8,
}

impl Answer {
    /// (tags, SQLSTATE, status): what the refusal tests compare.
    fn seen(&self) -> (Vec<u8>, Option<String>, u8) {
        (self.tags.clone(), self.code.clone(), self.status)
    }
}

#[test]
fn a_query_the_server_would_call_malformed_is_an_error_and_the_session_goes_on() {
    let pg = PgServer::start();
    let proxy = Proxy::start(&pg, CREW_POLICY);
    let mut r = Raw::login(&proxy);
    // A NUL inside the text; then one without its terminator. PostgreSQL answers both
    // with ERROR 08P01 "invalid message format" and stays ready.
    for body in [&b"SELECT 1\0; DROP TABLE orders\0"[..], b"SELECT 2"] {
        r.send(&frame(b'Q', body));
        let answer = r.until_ready();
        let tags: Vec<u8> = answer.iter().map(|f| f.0).collect();
        assert_eq!(tags, b"EZ", "{answer:?}");
        let f = fields(&answer[0].1);
        assert_eq!(f[&b'S'], "ERROR", "not FATAL: {f:?}");
        assert_eq!(f[&b'C'], "08P01");
        assert_eq!(f[&b'M'], "invalid message format");
        assert_eq!(answer[1].1, b"I", "still idle, outside a transaction");
    }
    r.send(&frame(b'Q', b"SELECT count(*) FROM orders\0"));
    let answer = r.until_ready();
    assert_eq!(answer.iter().map(|f| f.0).collect::<Vec<_>>(), b"TDCZ");
    assert_eq!(
        pg.direct("SELECT count(*) FROM orders"),
        "5\n",
        "nothing was dropped"
    );
    // Both are on record as refused, in order, before the query that ran: the session's
    // three statements and nothing else.
    let d = proxy.decisions();
    let n = d.len();
    assert_eq!(n, 3, "{d:?}");
    for (text, decision, rule) in &d[..2] {
        assert_eq!(
            (decision.as_str(), rule.as_str()),
            ("deny", "unclassifiable"),
            "{text}"
        );
    }
    assert_eq!(d[n - 1].0, "SELECT count(*) FROM orders");
}

#[test]
fn parse_and_bind_with_40000_parameters_pass_through() {
    let pg = PgServer::start();
    let proxy = Proxy::start(&pg, CREW_POLICY);
    let mut r = Raw::login(&proxy);
    const N: usize = 40_000;
    let params: Vec<String> = (1..=N).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT cardinality(ARRAY[{}]::int[]) FROM orders LIMIT 1",
        params.join(",")
    );
    let mut parse = vec![0u8];
    parse.extend_from_slice(sql.as_bytes());
    parse.push(0);
    parse.extend_from_slice(&(N as u16).to_be_bytes());
    parse.extend(std::iter::repeat_n(0u8, N * 4)); // unspecified types
    let mut bind = vec![0u8, 0u8];
    bind.extend_from_slice(&0u16.to_be_bytes()); // all text
    bind.extend_from_slice(&(N as u16).to_be_bytes());
    for _ in 0..N {
        bind.extend_from_slice(&1i32.to_be_bytes());
        bind.push(b'7');
    }
    bind.extend_from_slice(&0u16.to_be_bytes());
    let mut b = frame(b'P', &parse);
    b.extend(frame(b'B', &bind));
    b.extend(frame(b'E', b"\0\0\0\0\0"));
    b.extend(frame(b'S', b""));
    r.send(&b);
    let answer = r.until_ready();
    let tags: Vec<u8> = answer.iter().map(|f| f.0).collect();
    assert_eq!(
        tags,
        b"12DCZ",
        "{:?}",
        String::from_utf8_lossy(&answer[0].1)
    );
    // DataRow: one column, "40000".
    assert_eq!(&answer[2].1[2..], b"\0\0\0\x0540000");
}

#[test]
fn a_worker_cannot_use_the_agents_reserved_statement_and_portal_names() {
    let pg = PgServer::start();
    let proxy = Proxy::start(&pg, CREW_POLICY);
    let mut r = Raw::login(&proxy);
    let insert = b"INSERT INTO audit_log (note) VALUES ('reserved')\0\0\0";
    // A statement named like the agent's, a portal named like the one whose Execute
    // fails a refused batch, an Execute and a Describe of such names: each refuses its
    // batch (42501, rule reserved_name) and nothing of the batch runs.
    let attempts: Vec<Vec<u8>> = vec![
        {
            let mut p = b"pam_agent_injected\0".to_vec();
            p.extend_from_slice(insert);
            frame(b'P', &p)
        },
        {
            let mut b = frame(b'P', &[&b"\0"[..], insert].concat());
            b.extend(frame(b'B', b"pam_agent_refused\0\0\0\0\0\0\0\0"));
            b
        },
        {
            let mut b = frame(b'P', &[&b"\0"[..], insert].concat());
            b.extend(frame(b'B', b"\0\0\0\0\0\0\0\0"));
            b.extend(frame(b'E', b"pam_agent_r_0\0\0\0\0\0"));
            b
        },
        frame(b'D', b"Ppam_agent_x\0"),
        frame(b'C', b"Spam_agent_i_1\0"),
    ];
    for mut batch in attempts {
        batch.extend(frame(b'S', b""));
        r.send(&batch);
        let answer = r.until_ready();
        let tags: Vec<u8> = answer.iter().map(|f| f.0).collect();
        assert_eq!(tags, b"EZ", "{answer:?}");
        let f = fields(&answer[0].1);
        assert_eq!(f[&b'C'], "42501");
        assert!(f[&b'M'].contains("rule \"reserved_name\""), "{f:?}");
    }
    assert_eq!(pg.direct("SELECT count(*) FROM audit_log"), "0\n");
    let refused = proxy
        .decisions()
        .into_iter()
        .filter(|(_, d, rule)| d == "deny" && rule == "reserved_name")
        .count();
    assert_eq!(refused, 5, "each attempt is journaled once");
}

/// Established TCP connections to `port` on loopback, as the kernel lists them.
fn connections_to(port: u16) -> usize {
    let out = std::process::Command::new("ss")
        .args(["-Htn", "state", "established", "dst"])
        .arg(format!("127.0.0.1:{port}"))
        .output_within()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn half_open_startups_cost_the_database_no_connection() {
    let pg = PgServer::start();
    let proxy = Proxy::start(&pg, CREW_POLICY);
    let before = connections_to(pg.port);
    // Forty workers that send half a startup packet and wait.
    let stalled: Vec<Raw> = (0..40)
        .map(|_| {
            let mut r = Raw::connect(&proxy);
            r.send(&[0, 0, 0, 40, 0, 3]);
            r
        })
        .collect();
    // A complete session meanwhile works, and is the only one that reached the server.
    let mut ok = Raw::login(&proxy);
    assert_eq!(
        connections_to(pg.port),
        before + 1,
        "only the finished startup dialed the database"
    );
    ok.send(&frame(b'Q', b"SELECT 1\0"));
    assert_eq!(ok.until_ready().last().unwrap().0, b'Z');
    drop(stalled);
}

#[test]
fn rules_match_the_database_and_role_the_worker_logged_in_with() {
    let pg = PgServer::start();
    let policy = r#"
[[rules]]
name = "trusty-on-postgres"
action = "allow"
roles = ["trusty"]
databases = ["postgres"]
kinds = ["select"]
"#;
    let proxy = Proxy::start(&pg, policy);
    // Logged in as trusty to database postgres: allowed.
    let mut r = Raw::login(&proxy);
    r.send(&frame(b'Q', b"SELECT 1\0"));
    let tags: Vec<u8> = r.until_ready().iter().map(|f| f.0).collect();
    assert_eq!(tags, b"TDCZ");
    // The same role on another database: the rule does not apply, and says why.
    let mut r = Raw::connect(&proxy);
    r.send(&Raw::startup_packet(&[
        ("user", "trusty"),
        ("database", "template1"),
    ]));
    while r.frame().expect("login").0 != b'Z' {}
    r.send(&frame(b'Q', b"SELECT 1\0"));
    let answer = r.until_ready();
    assert_eq!(answer[0].0, b'E');
    let f = fields(&answer[0].1);
    assert_eq!(f[&b'C'], "42501");
    assert!(
        f[&b'M'].contains("rule \"trusty-on-postgres\": database \"template1\" not listed"),
        "{f:?}"
    );
}
