//! The masking engine on real PostgreSQL 15 results: a temporary server seeded with personal
//! data, a minimal protocol-v3 client (trust auth, simple and extended Query, COPY), and the
//! engine between them, the way the PostgreSQL session will use it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;

use pam_agent::mask::{
    ColumnName, MaskSource, Masker, MaskingConfig, MaskingPolicy, RowPlan, StrategyKind, Subject,
};
use pam_agent::protocols::postgres::masking::datarow::values;
use pam_agent::protocols::postgres::masking::{
    CatalogRow, ColumnResolver, CopyTextOptions, FieldInfo, FieldSource, PlanResults,
    PlannedColumn, RewriteRows,
};

#[path = "postgres_support/template.rs"]
mod pg_template;

use pg_template::deadline::Deadline;

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A throwaway server, stopped and removed on drop.
struct Server {
    dir: tempfile::TempDir,
    port: u16,
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag| {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output_within()
            .expect("id");
        assert!(
            out.status.success(),
            "no `postgres` user: install Debian's postgresql package"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    (id("-u"), id("-g"))
}

impl Server {
    fn start() -> Server {
        let (uid, gid) = postgres_ids();
        let dir = tempfile::Builder::new()
            .prefix("pam-mask-pg")
            .tempdir()
            .unwrap();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        let data = dir.path().join("data");
        pg_template::copy_to(
            &data,
            &[
                "--auth=trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            None,
            "",
        );
        // Ask the kernel for a free port; the tiny window before the server binds is harmless here.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{BIN}/pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-o")
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1",
                dir.path().display()
            ))
            .arg("-l")
            .arg(dir.path().join("log"))
            .args(["-w", "start"])
            .output_within()
            .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Server { dir, port }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{BIN}/pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output_within();
    }
}

/// One backend message: type byte and body.
struct Msg {
    tag: u8,
    body: Vec<u8>,
}

/// A RowDescription field.
#[derive(Debug, Clone)]
struct Field {
    name: String,
    info: FieldInfo,
}

/// What one statement returned.
#[derive(Default)]
struct Result {
    fields: Vec<Field>,
    rows: Vec<Vec<u8>>,
    copy: Vec<Vec<u8>>,
}

/// The smallest protocol-v3 client that serves the test: trust auth, no TLS.
struct Client {
    s: TcpStream,
}

impl Client {
    fn connect(port: u16) -> Client {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut body = 196608i32.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0postgres\0database\0postgres\0client_encoding\0UTF8\0\0");
        let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        s.write_all(&msg).unwrap();
        let mut c = Client { s };
        loop {
            let m = c.read();
            match m.tag {
                b'R' => assert_eq!(m.body[..4], [0, 0, 0, 0], "trust auth: AuthenticationOk"),
                b'Z' => return c,
                b'E' => panic!("startup: {}", String::from_utf8_lossy(&m.body)),
                _ => {}
            }
        }
    }

    fn read(&mut self) -> Msg {
        let mut head = [0u8; 5];
        self.s.read_exact(&mut head).unwrap();
        let len = i32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0; len - 4];
        self.s.read_exact(&mut body).unwrap();
        Msg { tag: head[0], body }
    }

    fn send(&mut self, tag: u8, body: &[u8]) {
        let mut msg = vec![tag];
        msg.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        msg.extend_from_slice(body);
        self.s.write_all(&msg).unwrap();
    }

    /// Reads until ReadyForQuery; DataRow bodies and CopyData payloads as they came.
    fn collect(&mut self) -> Result {
        let mut r = Result::default();
        loop {
            let m = self.read();
            match m.tag {
                b'T' => {
                    r.fields = row_description(&m.body);
                    let engine =
                        pam_agent::protocols::postgres::masking::row_description::parse(&m.body)
                            .unwrap();
                    let ours: Vec<FieldInfo> = r.fields.iter().map(|f| f.info).collect();
                    assert_eq!(
                        engine, ours,
                        "the engine reads RowDescription as this client does"
                    );
                }
                b'D' => r.rows.push(m.body),
                b'd' => r.copy.push(m.body),
                b'E' => panic!("server error: {}", String::from_utf8_lossy(&m.body)),
                b'Z' => return r,
                _ => {}
            }
        }
    }

    fn query(&mut self, sql: &str) -> Result {
        self.send(b'Q', &cstr(sql));
        self.collect()
    }

    /// Parse/Bind/Describe/Execute/Sync with every result column in binary format.
    fn query_binary(&mut self, sql: &str) -> Result {
        let mut parse = cstr("");
        parse.extend_from_slice(&cstr(sql));
        parse.extend_from_slice(&0i16.to_be_bytes());
        self.send(b'P', &parse);
        let mut bind = cstr("");
        bind.extend_from_slice(&cstr(""));
        bind.extend_from_slice(&0i16.to_be_bytes()); // parameter formats
        bind.extend_from_slice(&0i16.to_be_bytes()); // parameters
        bind.extend_from_slice(&1i16.to_be_bytes()); // one result format for all columns:
        bind.extend_from_slice(&1i16.to_be_bytes()); // binary
        self.send(b'B', &bind);
        let mut describe = vec![b'P'];
        describe.extend_from_slice(&cstr(""));
        self.send(b'D', &describe);
        let mut execute = cstr("");
        execute.extend_from_slice(&0i32.to_be_bytes());
        self.send(b'E', &execute);
        self.send(b'S', &[]);
        self.collect()
    }
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn row_description(body: &[u8]) -> Vec<Field> {
    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut pos = 2;
    let mut out = Vec::new();
    let u32_at = |p: usize| u32::from_be_bytes(body[p..p + 4].try_into().unwrap());
    let i16_at = |p: usize| i16::from_be_bytes(body[p..p + 2].try_into().unwrap());
    for _ in 0..n {
        let end = pos + body[pos..].iter().position(|&b| b == 0).unwrap();
        let name = String::from_utf8(body[pos..end].to_vec()).unwrap();
        pos = end + 1;
        let info = FieldInfo {
            source: FieldSource {
                table_oid: u32_at(pos),
                attnum: i16_at(pos + 4),
            },
            type_oid: u32_at(pos + 6),
            format: i16_at(pos + 16),
        };
        pos += 18;
        out.push(Field { name, info });
    }
    out
}

const SEED: &str = r#"
CREATE TABLE customers (
    id          int4 PRIMARY KEY,
    full_name   text NOT NULL,
    email       varchar(200) NOT NULL,
    phone       text,
    ssn         char(11),
    card_number text,
    iban        text,
    notes       text,
    balance     numeric(12,2),
    ext_id      uuid,
    created     timestamptz DEFAULT '2024-03-01 09:30:00+00'
);
INSERT INTO customers (id, full_name, email, phone, ssn, card_number, iban, notes, balance, ext_id) VALUES
 (1, 'Maria Garcia', 'maria.garcia@example.com', '+1 415-555-0132', '536-22-1234', '4111 1111 1111 1111',
  'DE89 3704 0044 0532 0130 00', 'Prefers e-mail: maria.g@personal.example.org. Card on file 5555 5555 5555 4444.',
  1520.75, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'),
 (2, 'Wei Chen', 'wei.chen@example.net', '(212) 555-0199', '219-09-9999', '378282246310005',
  'GB82 WEST 1234 5698 7654 32', 'Called from 203.0.113.7; API key sk-proj-9fXkq2LmZp81Rt7Wbv4cYh0e leaked in ticket',
  88.10, 'b1ffcd88-1d1c-4ef9-8c7e-7cc0ce491b22'),
 (3, 'Ana O''Neil', 'ana.oneil@example.org', NULL, NULL, NULL, NULL,
  'Order #88412 shipped 2024-05-01, tracking 1Z999AA10123456784', 0, NULL);
CREATE VIEW customer_contacts AS SELECT id, full_name, email FROM customers;
"#;

const RULES: &str = r#"
hash_key = "8f1c2e3d4b5a69788796a5b4c3d2e1f0"

[[rules]]
name = "crew-pii"
refuse_side_channels = true
when = { users = ["crew"], resources = ["crm"] }

[[rules.columns]]
columns = ["public.customers.email"]
strategy = { kind = "email" }

[[rules.columns]]
columns = ["public.customers.ssn", "public.customers.card_number"]
strategy = { kind = "partial", keep_last = 4 }

[[rules.columns]]
columns = ["public.customers.id", "public.customers.ext_id", "public.customers.balance"]
strategy = { kind = "keyed_hash", length = 16 }

[[rules.columns]]
columns = ["public.customers.phone"]
strategy = { kind = "redact", text = "[phone]" }

[[rules.content]]
detectors = ["email", "payment_card", "iban", "ipv4", "api_key", "us_ssn", "phone"]
strategy = { kind = "redact", text = "[redacted]" }
"#;

fn masker() -> Masker {
    let policy = MaskingPolicy::compile(&toml::from_str::<MaskingConfig>(RULES).unwrap()).unwrap();
    policy.for_subject(&Subject {
        user: Some("crew"),
        resource: Some("crm"),
        ..Subject::default()
    })
}

/// What the session does at RowDescription: name unknown columns with one catalog query.
fn resolve(client: &mut Client, resolver: &mut ColumnResolver, fields: &[Field]) {
    let sources: Vec<FieldSource> = fields.iter().map(|f| f.info.source).collect();
    let asked = resolver.unresolved(&sources);
    if let Some(sql) = ColumnResolver::catalog_query(&asked) {
        let rows = client.query(&sql).rows;
        let rows: Vec<CatalogRow> = rows
            .iter()
            .map(|b| CatalogRow::from_data_row(b).unwrap())
            .collect();
        resolver.absorb(&asked, rows);
    }
}

fn plan_for(client: &mut Client, resolver: &mut ColumnResolver, m: &Masker, r: &Result) -> RowPlan {
    resolve(client, resolver, &r.fields);
    let infos: Vec<FieldInfo> = r.fields.iter().map(|f| f.info).collect();
    m.plan(&infos, resolver).unwrap()
}

/// Rewrites every DataRow and decodes what the client would receive.
fn masked_rows(plan: &mut RowPlan, r: &Result) -> Vec<Vec<Option<Vec<u8>>>> {
    let mut out = Vec::new();
    r.rows
        .iter()
        .map(|body| {
            out.clear();
            plan.rewrite_data_row(body, &mut out).unwrap();
            assert_eq!(out[0], b'D');
            assert_eq!(
                i32::from_be_bytes(out[1..5].try_into().unwrap()) as usize,
                out.len() - 1
            );
            values(&out[5..])
                .unwrap()
                .into_iter()
                .map(|v| v.map(<[u8]>::to_vec))
                .collect()
        })
        .collect()
}

fn text(v: &Option<Vec<u8>>) -> Option<&str> {
    v.as_deref().map(|b| std::str::from_utf8(b).unwrap())
}

fn resolved_names(resolver: &ColumnResolver, r: &Result) -> Vec<Option<String>> {
    r.fields
        .iter()
        .map(|f| {
            resolver
                .lookup(f.info.source)
                .flatten()
                .map(|c| c.name.to_string())
        })
        .collect()
}

#[test]
fn masks_real_postgres_results() {
    let server = Server::start();
    let mut c = Client::connect(server.port);
    c.query(SEED);
    let m = masker();
    let mut resolver = ColumnResolver::new();

    // --- The catalog query names columns, whatever the select list calls them.
    let star = c.query("SELECT * FROM customers ORDER BY id");
    resolve(&mut c, &mut resolver, &star.fields);
    let names = resolved_names(&resolver, &star);
    let expected: Vec<Option<String>> = star
        .fields
        .iter()
        .map(|f| Some(format!("public.customers.{}", f.name)))
        .collect();
    assert_eq!(
        names, expected,
        "SELECT *: every column named by table OID + attnum"
    );

    let aliased = c.query(
        "SELECT email AS e, upper(full_name) AS shout, id + 0 AS n FROM customers ORDER BY id",
    );
    resolve(&mut c, &mut resolver, &aliased.fields);
    assert_eq!(aliased.fields[0].name, "e");
    assert_eq!(
        resolved_names(&resolver, &aliased),
        [Some("public.customers.email".to_string()), None, None],
        "an alias still resolves to its column; expressions have no column"
    );

    // --- Text format: column rules, detectors on everything else of a text type.
    let r = c.query("SELECT id, full_name, email, phone, ssn, card_number, iban, notes, balance, ext_id, created FROM customers ORDER BY id");
    let mut plan = plan_for(&mut c, &mut resolver, &m, &r);
    let rows = masked_rows(&mut plan, &r);
    let maria = &rows[0];
    assert!(
        text(&maria[0]).unwrap().parse::<i32>().is_ok(),
        "int4 id hashed to an int4"
    );
    assert_ne!(text(&maria[0]), Some("1"));
    assert_eq!(
        text(&maria[1]),
        Some("Maria Garcia"),
        "names have no rule and no detector"
    );
    assert_eq!(text(&maria[2]), Some("m***@example.com"));
    assert_eq!(text(&maria[3]), Some("[phone]"));
    assert_eq!(
        text(&maria[4]),
        Some("*******1234"),
        "bpchar keeps the last 4"
    );
    assert_eq!(text(&maria[5]), Some("***************1111"));
    assert_eq!(
        text(&maria[6]),
        Some("[redacted]"),
        "IBAN found by its checksum"
    );
    assert_eq!(
        text(&maria[7]),
        Some("Prefers e-mail: [redacted]. Card on file [redacted].")
    );
    assert_eq!(maria[8], None, "numeric cannot hold a keyed hash: NULL");
    let uuid = text(&maria[9]).unwrap();
    assert_eq!(
        (uuid.len(), &uuid[14..15]),
        (36, "8"),
        "uuid hashed to a v8 uuid: {uuid}"
    );
    assert_eq!(
        text(&maria[10]),
        Some("2024-03-01 09:30:00+00"),
        "timestamps pass"
    );
    assert_eq!(
        text(&rows[1][7]),
        Some("Called from [redacted]; API key [redacted] leaked in ticket")
    );
    assert_eq!(
        text(&rows[2][7]),
        Some("Order #88412 shipped 2024-05-01, tracking 1Z999AA10123456784"),
        "no false positives on order numbers, dates, tracking ids"
    );
    assert_eq!(rows[2][3], None, "NULL stays NULL");
    let text_ids: Vec<String> = rows
        .iter()
        .map(|r| text(&r[0]).unwrap().to_string())
        .collect();

    let report = plan.take_report();
    assert_eq!(report.rows, 3);
    let count = |src: MaskSource| {
        report
            .entries
            .iter()
            .find(|e| e.source == src)
            .map(|e| (e.strategy, e.count, e.nulled_for_type))
    };
    assert_eq!(
        count(MaskSource::Column {
            pattern: "public.customers.email".into(),
            column: "public.customers.email".into()
        }),
        Some((StrategyKind::Email, 3, 0))
    );
    assert_eq!(
        count(MaskSource::Column {
            pattern: "public.customers.balance".into(),
            column: "public.customers.balance".into()
        }),
        Some((StrategyKind::KeyedHash, 0, 3))
    );
    assert_eq!(
        count(MaskSource::Detector {
            detector: "iban".into()
        }),
        Some((StrategyKind::Redact, 2, 0))
    );
    let audit = serde_json::to_string(&report).unwrap();
    for secret in ["maria", "4111", "536-22", "DE89", "sk-proj", "203.0.113"] {
        assert!(
            !audit.contains(secret),
            "the audit report carries no values: {audit}"
        );
    }

    // --- An alias and an expression: the rule follows the column; detectors catch the rest.
    let mut plan = plan_for(&mut c, &mut resolver, &m, &aliased);
    let rows = masked_rows(&mut plan, &aliased);
    assert_eq!(text(&rows[1][0]), Some("w***@example.net"));
    assert_eq!(text(&rows[1][1]), Some("WEI CHEN"));
    let expr =
        c.query("SELECT lower(email) || ' / ' || coalesce(ssn, '') FROM customers ORDER BY id");
    let mut plan = plan_for(&mut c, &mut resolver, &m, &expr);
    let rows = masked_rows(&mut plan, &expr);
    assert_eq!(text(&rows[0][0]), Some("[redacted] / [redacted]"));

    // --- A view column reports the view's OID; it is linked to its base column.
    let view = c.query("SELECT * FROM customer_contacts ORDER BY id");
    let mut plan = plan_for(&mut c, &mut resolver, &m, &view);
    let col = resolver
        .lookup(view.fields[2].info.source)
        .flatten()
        .unwrap()
        .clone();
    assert_eq!(
        col.name,
        ColumnName::new("public", "customer_contacts", "email")
    );
    assert_eq!(col.base, [ColumnName::new("public", "customers", "email")]);
    let rows = masked_rows(&mut plan, &view);
    assert_eq!(text(&rows[2][2]), Some("a***@example.org"));
    assert_eq!(
        rows[2][0],
        masked_rows(&mut plan_for(&mut c, &mut resolver, &m, &r), &r)[2][0]
    );

    // --- Preloading: one catalog query at connection start names every column the rules can
    // name; afterwards no result waits for the catalog, and the output is the same.
    let mut preloaded = ColumnResolver::new();
    let sql = m.preload_query().expect("the rules name columns");
    let rows = c.query(&sql).rows;
    // One row is the horizon (the highest relation OID), some carry the definitions of
    // views and generated columns (followed apart, masking/defined.rs), the rest name
    // columns.
    let horizon = rows
        .iter()
        .find_map(|b| ColumnResolver::horizon_of(b))
        .expect("horizon row");
    preloaded.absorb_preload(
        rows.iter()
            .filter(|b| {
                ColumnResolver::horizon_of(b).is_none()
                    && pam_agent::protocols::postgres::masking::Definition::from_data_row(b)
                        .is_none()
            })
            .map(|b| CatalogRow::from_data_row(b).unwrap()),
    );
    preloaded.set_horizon(horizon);
    for result in [&r, &view, &aliased] {
        let sources: Vec<FieldSource> = result.fields.iter().map(|f| f.info.source).collect();
        assert!(preloaded.unresolved(&sources).is_empty());
        let infos: Vec<FieldInfo> = result.fields.iter().map(|f| f.info).collect();
        let mut p1 = m.plan(&infos, &preloaded).unwrap();
        let mut p2 = plan_for(&mut c, &mut resolver, &m, result);
        let (a, b) = (masked_rows(&mut p1, result), masked_rows(&mut p2, result));
        // Keyed hashes are equal too: same key, same values.
        assert_eq!(a, b, "preloaded and per-result resolution mask alike");
    }
    let view_email = preloaded
        .lookup(view.fields[2].info.source)
        .flatten()
        .unwrap();
    assert_eq!(
        view_email.base,
        [ColumnName::new("public", "customers", "email")]
    );
    // full_name: no rule can name it. Its table has masked columns, so the preload names
    // all of its columns (generated columns are followed from them): it resolves to itself
    // with no base column, and the plans above leave it as it is.
    let full_name = preloaded.lookup(r.fields[1].info.source);
    assert!(
        match &full_name {
            Some(None) => true,
            Some(Some(c)) => {
                c.name == ColumnName::new("public", "customers", "full_name") && c.base.is_empty()
            }
            None => false,
        },
        "full_name: {full_name:?}"
    );

    // --- Binary format (extended protocol, result format 1).
    let b =
        c.query_binary("SELECT id, email, ssn, ext_id, balance, notes FROM customers ORDER BY id");
    assert!(b.fields.iter().all(|f| f.info.format == 1));
    let mut plan = plan_for(&mut c, &mut resolver, &m, &b);
    let rows = masked_rows(&mut plan, &b);
    let id = i32::from_be_bytes(rows[0][0].as_deref().unwrap().try_into().expect("4 bytes"));
    assert_eq!(
        id.to_string(),
        text_ids[0],
        "the same id hashes alike in text and binary format"
    );
    assert_eq!(text(&rows[0][1]), Some("m***@example.com"));
    assert_eq!(text(&rows[0][2]), Some("*******1234"));
    assert_eq!(
        rows[0][3].as_ref().map(Vec::len),
        Some(16),
        "uuid stays 16 bytes"
    );
    assert_eq!(rows[0][4], None, "binary numeric: NULL");
    assert_eq!(
        text(&rows[1][5]),
        Some("Called from [redacted]; API key [redacted] leaked in ticket")
    );

    // --- COPY TO STDOUT, text format: names from a zero-row describe of the same columns.
    let shape = c.query("SELECT id, email, notes FROM customers LIMIT 0");
    resolve(&mut c, &mut resolver, &shape.fields);
    let cols: Vec<PlannedColumn> = shape
        .fields
        .iter()
        .map(|f| PlannedColumn {
            name: resolver.lookup(f.info.source).flatten().cloned(),
            type_oid: f.info.type_oid,
            format: 0,
        })
        .collect();
    let mut plan = m.plan_columns(&cols).unwrap();
    c.query("UPDATE customers SET notes = E'line one\\nmail: ana@example.org\\tend' WHERE id = 3");
    let copy = c.query("COPY customers (id, email, notes) TO STDOUT");
    let mut out = Vec::new();
    for row in &copy.copy {
        plan.rewrite_copy_text_row(row, &CopyTextOptions::default(), &mut out)
            .unwrap();
    }
    let out = String::from_utf8(out).unwrap();
    let ana = out
        .lines()
        .find(|l| l.contains("a***@example.org"))
        .expect("ana's row");
    assert_eq!(
        ana.split('\t').nth(2),
        Some("line one\\nmail: [redacted]\\tend"),
        "unescaped, masked, re-escaped"
    );
    assert!(!out.contains("maria.g@personal"));
    assert_eq!(out.lines().count(), 3);

    // --- After DDL the cache is dropped and names are asked again.
    c.query("ALTER TABLE customers RENAME COLUMN email TO contact_email");
    resolver.invalidate_all();
    let renamed = c.query("SELECT contact_email FROM customers ORDER BY id");
    let mut plan = plan_for(&mut c, &mut resolver, &m, &renamed);
    assert_eq!(
        resolved_names(&resolver, &renamed),
        [Some("public.customers.contact_email".to_string())]
    );
    let rows = masked_rows(&mut plan, &renamed);
    assert_eq!(
        text(&rows[0][0]),
        Some("[redacted]"),
        "no column rule now; the e-mail detector still masks"
    );
}
