//! Where [`classify`] runs: a few dedicated threads with a known, large stack (deeply
//! nested statements overflowed the default stacks of other proxies' parsers), and a
//! bounded cache keyed by the exact text, so a repeated statement costs a hash lookup.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, mpsc},
    thread,
};

use super::{Statement, Unclassifiable, classify};

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
    /// Cached texts; the cache is cleared when full (simple and bounded).
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

struct Job {
    text: String,
    reply: tokio::sync::oneshot::Sender<Classified>,
}

/// Cheap to clone; all clones share the threads and the cache.
#[derive(Clone)]
pub struct Classifier {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClassifierConfig,
    jobs: Mutex<mpsc::Sender<Job>>,
    cache: Mutex<HashMap<String, Classified>>,
}

impl Classifier {
    pub fn start(config: ClassifierConfig) -> std::io::Result<Classifier> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..config.threads.max(1) {
            let rx = rx.clone();
            let max = config.max_statement_bytes;
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
                        let out = Arc::new(classify(&job.text, max));
                        let _ = job.reply.send(out);
                    }
                })?;
        }
        Ok(Classifier {
            inner: Arc::new(Inner {
                config,
                jobs: Mutex::new(tx),
                cache: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn config(&self) -> &ClassifierConfig {
        &self.inner.config
    }

    /// From the cache when this exact text was seen, else on a parser thread.
    pub async fn classify(&self, text: &str) -> Classified {
        if let Some(hit) = self.cached(text) {
            return hit;
        }
        let out = if text.len() > self.inner.config.max_statement_bytes {
            // Not worth a thread hop, and never cached (it would pin a large key).
            return Arc::new(Err(Unclassifiable::TooLong {
                len: text.len(),
                max: self.inner.config.max_statement_bytes,
            }));
        } else {
            let (reply, rx) = tokio::sync::oneshot::channel();
            let sent = self
                .inner
                .jobs
                .lock()
                .map(|j| {
                    j.send(Job {
                        text: text.to_owned(),
                        reply,
                    })
                    .is_ok()
                })
                .unwrap_or(false);
            if !sent {
                return Arc::new(Err(Unclassifiable::Internal("parser threads gone".into())));
            }
            match rx.await {
                Ok(c) => c,
                Err(_) => {
                    return Arc::new(Err(Unclassifiable::Internal("parser thread failed".into())));
                }
            }
        };
        self.store(text, &out);
        out
    }

    /// Synchronous form for tools and benchmarks: runs on the calling thread.
    pub fn classify_here(&self, text: &str) -> Classified {
        if let Some(hit) = self.cached(text) {
            return hit;
        }
        let out = Arc::new(classify(text, self.inner.config.max_statement_bytes));
        self.store(text, &out);
        out
    }

    pub fn cached(&self, text: &str) -> Option<Classified> {
        self.inner.cache.lock().ok()?.get(text).cloned()
    }

    fn store(&self, text: &str, out: &Classified) {
        // Internal failures are not cached: they may be transient.
        if matches!(out.as_ref(), Err(Unclassifiable::Internal(_)))
            || text.len() > self.inner.config.cache_max_text
        {
            return;
        }
        if let Ok(mut cache) = self.inner.cache.lock() {
            if cache.len() >= self.inner.config.cache_entries {
                cache.clear();
            }
            cache.insert(text.to_owned(), out.clone());
        }
    }
}
