//! Where [`classify`] runs: a few dedicated threads with a known, large stack (deeply
//! nested statements overflowed the default stacks of other proxies' parsers), and
//! bounded caches, so a repeated statement costs a hash lookup: one keyed by the exact
//! text, and one keyed by the text with its literals replaced ([`normalize`]), which
//! only holds classifications no literal can change ([`literal_independent`]).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, mpsc},
    thread,
};

use super::{
    CopyOut, CopyOutError, Statement, Unclassifiable, classify, copy_out,
    normalize::{literal_independent, normalize},
};

/// The outcome of classifying one text: shared, because the cache hands out copies.
pub type Classified = Arc<Result<Vec<Statement>, Unclassifiable>>;

#[derive(Debug, Clone)]
pub struct ClassifierConfig {
    /// Texts longer than this are not parsed (and so refused).
    pub max_statement_bytes: usize,
    /// Parser threads.
    pub threads: usize,
    /// Stack of each parser thread. libpg_query limits its own recursion; the Rust side
    /// (protobuf decode, tree walk, drop) recurses once per nesting level.
    pub stack_bytes: usize,
    /// Cached texts, per cache (exact and normalised); a cache is cleared when full
    /// (simple and bounded).
    pub cache_entries: usize,
    /// Longer texts are classified every time: with `cache_entries` this bounds the
    /// cache's memory (4096 x 16 KiB = 64 MiB at most).
    pub cache_max_text: usize,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig {
            max_statement_bytes: 1 << 20,
            threads: 2,
            stack_bytes: 64 << 20,
            cache_entries: 4096,
            cache_max_text: 16 * 1024,
        }
    }
}

/// Work for a parser thread (its reply channel is inside).
type Job = Box<dyn FnOnce() + Send>;

/// Cheap to clone; all clones share the threads and the cache.
#[derive(Clone)]
pub struct Classifier {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClassifierConfig,
    jobs: Mutex<mpsc::Sender<Job>>,
    cache: Mutex<Caches>,
}

#[derive(Default)]
struct Caches {
    exact: HashMap<String, Classified>,
    /// Normalised text -> a classification of one statement that no literal changes.
    normalized: HashMap<String, Shape>,
}

/// A cached classification for texts that differ only in literals. Everything outside
/// literals is identical in such texts, so the statement's own text sits at the same
/// distance from both ends of each of them.
struct Shape {
    classified: Classified,
    /// Bytes before and after the statement's own text (white space, a final `;`).
    head: usize,
    tail: usize,
}

impl Classifier {
    pub fn start(config: ClassifierConfig) -> std::io::Result<Classifier> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..config.threads.max(1) {
            let rx = rx.clone();
            thread::Builder::new()
                .name(format!("pam-sql-{i}"))
                .stack_size(config.stack_bytes)
                .spawn(move || {
                    loop {
                        let job = {
                            let Ok(rx) = rx.lock() else { return };
                            match rx.recv() {
                                Ok(j) => j,
                                Err(_) => return,
                            }
                        };
                        job();
                    }
                })?;
        }
        Ok(Classifier {
            inner: Arc::new(Inner {
                config,
                jobs: Mutex::new(tx),
                cache: Mutex::new(Caches::default()),
            }),
        })
    }

    pub fn config(&self) -> &ClassifierConfig {
        &self.inner.config
    }

    /// From a cache when this text, or one differing only in literals that cannot
    /// change the result, was seen; else on a parser thread.
    pub async fn classify(&self, text: &str) -> Classified {
        let key = match self.lookup(text) {
            Lookup::Hit(hit) => return hit,
            Lookup::Miss(key) => key,
        };
        let out = if text.len() > self.inner.config.max_statement_bytes {
            // Not worth a thread hop, and never cached (it would pin a large key).
            return Arc::new(Err(Unclassifiable::TooLong {
                len: text.len(),
                max: self.inner.config.max_statement_bytes,
            }));
        } else {
            let (owned, max) = (text.to_owned(), self.inner.config.max_statement_bytes);
            match self
                .on_parser_thread(move || Arc::new(classify(&owned, max)))
                .await
            {
                Some(c) => c,
                None => {
                    return Arc::new(Err(Unclassifiable::Internal("parser thread failed".into())));
                }
            }
        };
        self.store(text, key, &out);
        out
    }

    /// The columns and format of a `COPY ... TO STDOUT` (for masking), on a parser thread
    /// (the parser recurses as deep as the statement nests). `None`: the threads failed.
    pub async fn copy_out(&self, text: &str) -> Option<Result<CopyOut, CopyOutError>> {
        let owned = text.to_owned();
        self.on_parser_thread(move || copy_out(&owned)).await
    }

    /// Runs `work` on one of the parser threads (their stacks are sized for deep trees).
    async fn on_parser_thread<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = reply.send(work());
        });
        self.inner.jobs.lock().ok()?.send(job).ok()?;
        rx.await.ok()
    }

    /// Synchronous form for tools and benchmarks: runs on the calling thread.
    pub fn classify_here(&self, text: &str) -> Classified {
        let key = match self.lookup(text) {
            Lookup::Hit(hit) => return hit,
            Lookup::Miss(key) => key,
        };
        let out = Arc::new(classify(text, self.inner.config.max_statement_bytes));
        self.store(text, key, &out);
        out
    }

    /// The cached classification of `text`, if any cache can answer for it.
    pub fn cached(&self, text: &str) -> Option<Classified> {
        match self.lookup(text) {
            Lookup::Hit(hit) => Some(hit),
            Lookup::Miss(_) => None,
        }
    }

    fn lookup(&self, text: &str) -> Lookup {
        if text.len() > self.inner.config.cache_max_text {
            return Lookup::Miss(None);
        }
        let Ok(cache) = self.inner.cache.lock() else {
            return Lookup::Miss(None);
        };
        if let Some(hit) = cache.exact.get(text) {
            return Lookup::Hit(hit.clone());
        }
        drop(cache);
        let Some(key) = normalize(text) else {
            return Lookup::Miss(None);
        };
        let Ok(cache) = self.inner.cache.lock() else {
            return Lookup::Miss(None);
        };
        match cache.normalized.get(&key) {
            Some(shape) => match shape.apply(text) {
                Some(hit) => Lookup::Hit(hit),
                None => Lookup::Miss(None),
            },
            None => Lookup::Miss(Some(key)),
        }
    }

    /// `key`: the normalised text, when it has one and no cache held it.
    fn store(&self, text: &str, key: Option<String>, out: &Classified) {
        // Internal failures are not cached: they may be transient.
        if matches!(out.as_ref(), Err(Unclassifiable::Internal(_)))
            || text.len() > self.inner.config.cache_max_text
        {
            return;
        }
        let shape = match (key, out.as_ref()) {
            (Some(key), Ok(statements)) if literal_independent(statements) => {
                Shape::new(text, out).map(|s| (key, s))
            }
            _ => None,
        };
        let Ok(mut cache) = self.inner.cache.lock() else {
            return;
        };
        let max = self.inner.config.cache_entries;
        match shape {
            // Texts that vary in constants would only churn the exact cache.
            Some((key, shape)) => {
                if cache.normalized.len() >= max {
                    cache.normalized.clear();
                }
                cache.normalized.insert(key, shape);
            }
            None => {
                if cache.exact.len() >= max {
                    cache.exact.clear();
                }
                cache.exact.insert(text.to_owned(), out.clone());
            }
        }
    }
}

enum Lookup {
    Hit(Classified),
    /// With the normalised key, when the text has one.
    Miss(Option<String>),
}

impl Shape {
    /// `None` unless the one statement's text is `text` less a head and a tail.
    fn new(text: &str, out: &Classified) -> Option<Shape> {
        let Ok([st]) = out.as_ref().as_ref().map(Vec::as_slice) else {
            return None;
        };
        let head = text.find(st.text.as_str())?;
        let tail = text.len().checked_sub(head + st.text.len())?;
        // Only white space and a final `;` around it: bytes the key keeps as they are.
        let around = |s: &str| s.bytes().all(|b| b" \t\n\r;".contains(&b));
        if !around(&text[..head]) || !around(&text[head + st.text.len()..]) {
            return None;
        }
        Some(Shape {
            classified: out.clone(),
            head,
            tail,
        })
    }

    /// The cached classification with the statement's own text taken from `text`, which
    /// is what is journaled.
    fn apply(&self, text: &str) -> Option<Classified> {
        let Ok([st]) = self.classified.as_ref().as_ref().map(Vec::as_slice) else {
            return None;
        };
        let own = text.get(self.head..text.len().checked_sub(self.tail)?)?;
        let mut st = st.clone();
        own.clone_into(&mut st.text);
        Some(Arc::new(Ok(vec![st])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::postgres::sql::flag;

    fn classifier() -> Classifier {
        Classifier::start(ClassifierConfig {
            threads: 1,
            stack_bytes: 8 << 20,
            ..Default::default()
        })
        .unwrap()
    }

    fn statements(c: &Classified) -> &[Statement] {
        c.as_ref().as_ref().expect("classified")
    }

    #[test]
    fn texts_differing_in_constants_share_a_classification_with_their_own_text() {
        let c = classifier();
        c.classify_here("SELECT abalance FROM pgbench_accounts WHERE aid = 57;");
        let text = "SELECT abalance FROM pgbench_accounts WHERE aid = 99812;";
        let hit = c.cached(text).expect("served from the normalised cache");
        // Exactly what a full parse of this text gives, including the text journaled.
        assert_eq!(statements(&hit), classify(text, 1 << 20).unwrap());
        assert_eq!(
            statements(&hit)[0].text,
            "SELECT abalance FROM pgbench_accounts WHERE aid = 99812"
        );
    }

    #[test]
    fn normalised_hits_equal_full_parses() {
        let c = classifier();
        let pairs = [
            (
                "UPDATE pgbench_accounts SET abalance = abalance + -4263 WHERE aid = 1",
                "UPDATE pgbench_accounts SET abalance = abalance + -12 WHERE aid = 77",
            ),
            (
                "  INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 23, 4, CURRENT_TIMESTAMP);\n",
                "  INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (10, 1, 73215, -5000, CURRENT_TIMESTAMP);\n",
            ),
            (
                "SELECT * FROM orders WHERE note = 'a' AND total > 1.5 LIMIT 3",
                "SELECT * FROM orders WHERE note = 'it''s' AND total > 99999.25 LIMIT 100",
            ),
            ("DELETE FROM t", "DELETE FROM t"),
            (
                "WITH d AS (DELETE FROM q WHERE id < 5 RETURNING *) SELECT * FROM d",
                "WITH d AS (DELETE FROM q WHERE id < 900 RETURNING *) SELECT * FROM d",
            ),
        ];
        for (first, second) in pairs {
            c.classify_here(first);
            let hit = c.classify_here(second);
            assert_eq!(
                statements(&hit),
                classify(second, 1 << 20).unwrap(),
                "{second}"
            );
        }
    }

    #[test]
    fn literals_that_decide_the_classification_are_never_shared() {
        let c = classifier();
        let flags = |text: &str| statements(&c.classify_here(text))[0].flags.clone();
        // set_config's first argument decides the flags.
        c.classify_here("SELECT set_config('work_mem', '64MB', false)");
        assert!(flags("SELECT set_config('role', 'admin', false)").contains(&flag::ROLE_CHANGE));
        c.classify_here("SELECT set_config('application_name', 'x', false) FROM t WHERE a = 1");
        assert!(
            flags("SELECT set_config('search_path', 'evil', false) FROM t WHERE a = 1")
                .contains(&flag::SEARCH_PATH_CHANGE)
        );
        // An empty COPY file name is no server file; another name is.
        c.classify_here("COPY t FROM ''");
        assert!(flags("COPY t FROM '/etc/passwd'").contains(&flag::SERVER_FILE));
        assert!(c.cached("COPY t FROM '/etc/shadow'").is_none());
    }

    #[test]
    fn texts_read_differently_do_not_meet() {
        let c = classifier();
        c.classify_here("SELECT * FROM t WHERE a = 1");
        // A bigger integer is another token for PostgreSQL; a string, an identifier, a
        // parameter or a comment are not constants of the same kind.
        for text in [
            "SELECT * FROM t WHERE a = 2147483648",
            "SELECT * FROM t WHERE a = 1.5",
            "SELECT * FROM t WHERE a = '1'",
            "SELECT * FROM t WHERE a = \"b\"",
            "SELECT * FROM t WHERE a = $1",
            "SELECT * FROM t WHERE a = 1 -- x",
            "SELECT * FROM t WHERE a = 1; DELETE FROM t",
            "SELECT * FROM t WHERE a = E'1'",
            "SELECT * FROM t WHERE a = $$1$$",
            "SELECT * FROM u WHERE a = 1",
        ] {
            assert!(c.cached(text).is_none(), "{text}");
        }
        // A select-list position names a column the masking guard judges.
        let columns = |text: &str| statements(&c.classify_here(text))[0].columns.clone();
        let by_first = columns("SELECT name, ssn FROM people WHERE id = 1 ORDER BY 1");
        let by_second = columns("SELECT name, ssn FROM people WHERE id = 1 ORDER BY 2");
        assert_ne!(by_first, by_second);
        assert_eq!(
            by_second,
            classify(
                "SELECT name, ssn FROM people WHERE id = 1 ORDER BY 2",
                1 << 20
            )
            .unwrap()[0]
                .columns
        );
        // Statements that do not parse are not shared either.
        c.classify_here("SELEC 1");
        assert!(c.cached("SELEC 2").is_none());
        let out = c.classify_here("SELECT 1 WHERE 1 = 1 FETCH FIRST 5 ROWS ONLY");
        assert!(out.is_ok());
    }

    proptest::proptest! {
        /// Whatever constants go into these templates, in any order of arrival, the
        /// classifier answers exactly what a full parse of that text answers.
        #[test]
        fn cached_answers_equal_full_parses(
            values in proptest::collection::vec(
                (0usize..TEMPLATES.len(), 0u64..5_000_000_000, "[ -&(-\\[\\]-~]{0,12}"),
                1..12,
            )
        ) {
            let c = classifier();
            for (t, n, s) in values {
                let text = TEMPLATES[t]
                    .replace("{n}", &n.to_string())
                    .replace("{s}", &s.replace('\'', "''"));
                let got = c.classify_here(&text);
                proptest::prop_assert_eq!(got.as_ref(), &classify(&text, 1 << 20), "{}", text);
            }
        }
    }

    proptest::proptest! {
        /// Two texts of one template differing in their constants: once the first is
        /// classified, the second is answered from the cache exactly as a full parse of
        /// the second text answers (the oracle: `classify`, which no cache touches). The
        /// templates in `SHARED` must be answered from the cache, so the comparison is
        /// never between two full parses.
        #[test]
        fn a_cache_hit_equals_the_full_parse_of_its_own_text(
            t in 0usize..TEMPLATES.len(),
            a in 0u64..2_000_000_000,
            b in 0u64..2_000_000_000,
            sa in "[ -&(-\\[\\]-~]{0,12}",
            sb in "[ -&(-\\[\\]-~]{0,12}",
        ) {
            let text = |n: u64, s: &str| {
                TEMPLATES[t].replace("{n}", &n.to_string()).replace("{s}", &s.replace('\'', "''"))
            };
            let (first, second) = (text(a, &sa), text(b, &sb));
            let c = classifier();
            c.classify_here(&first);
            let hit = c.cached(&second);
            if SHARED.contains(&t) {
                proptest::prop_assert!(hit.is_some(), "{} after {}: not from the cache", second, first);
            }
            if let Some(hit) = hit {
                proptest::prop_assert_eq!(hit.as_ref(), &classify(&second, 1 << 20), "{} after {}", second, first);
            }
        }
    }

    /// Templates whose constants never change the classification (so the cache shares it).
    const SHARED: &[usize] = &[0, 1, 5, 9];

    const TEMPLATES: &[&str] = &[
        "SELECT abalance FROM pgbench_accounts WHERE aid = {n}",
        "UPDATE t SET a = '{s}' WHERE id = {n};",
        "SELECT set_config('{s}', 'x', false) FROM t WHERE a = {n}",
        "SELECT set_config('role', '{s}', false) FROM t WHERE a = {n}",
        "COPY t FROM '{s}'",
        "SELECT * FROM t LIMIT {n}",
        "SELECT '{s}'::regclass, {n}",
        "FETCH {n} FROM c",
        "SET work_mem = '{s}'",
        "SELECT * FROM t WHERE a = {n}.5 OR b = '{s}'",
        "SELECT a, b FROM t WHERE c = '{s}' ORDER BY {n}",
        "PREPARE p{n} AS SELECT * FROM t WHERE a = '{s}'",
    ];
}
