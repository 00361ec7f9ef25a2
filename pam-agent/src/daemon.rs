//! `pam-agent run`: wires the journal, the listeners, the kernel programs and the proxy
//! together, in the order that keeps the invariants (listen, then redirect; journal
//! before traffic), and takes them down on SIGTERM/SIGINT.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::journal::JournalStore;
use crate::{
    config::Config,
    govern::{Approvals, RulesHandle, approval::Broker},
    journal::{Event, Journal, log::LogStore},
    kernel::Redirector,
    protocols,
    proxy::{self, Listeners, Shared},
    tls::{self, AgentCa, LeafCache},
};

/// How long open sessions get to write their closing records at shutdown.
const DRAIN: Duration = Duration::from_secs(5);

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM that arrives right after READY must stop us in order,
    // not by the default action.
    let stop = StopSignals::install()?;
    let store = LogStore::open(cfg.journal.store_options())
        .with_context(|| format!("opening journal {}", cfg.journal.path.display()))?;
    tracing::info!(
        path = %cfg.journal.path.display(),
        records = store.last_seq(),
        public_key = %crate::journal::chain::hex(&store.public_key()),
        "audit journal open"
    );
    let unanswered = store
        .unanswered_approvals()
        .context("reading approval requests left by the last run")?;
    let grants = store
        .grants_in_force(jiff::Timestamp::now())
        .context("reading approval grants in force")?
        .into_iter()
        .map(|(r, approval, by)| crate::govern::approval::Grant::from_record(r, approval, by))
        .collect();
    let (journal, writer) = Journal::start_with(store, cfg.journal.writer_options());
    abandon_unanswered(&journal, unanswered).await?;

    let tls = tls_setup(&cfg)?;
    // Host names resolve before anything is attached: one that does not stops the start
    // (its resource would be unprotected).
    let dns = if cfg.resources.iter().any(|r| r.address.host().is_some()) {
        Some(crate::resolve::Dns::new(&cfg.resolver).context("setting up the resolver")?)
    } else {
        None
    };
    let resolved = crate::resolve::resolve_at_start(&cfg, dns.as_ref())
        .await
        .context("resolving host-name resources")?;
    let listeners = Listeners::bind(&cfg).context("binding the proxy listener")?;
    // The listeners go into the kernel's sockmap here: from then on a connection to
    // the redirect target reaches them or nobody.
    let fds = crate::kernel::ListenerFds {
        v4: std::os::fd::AsFd::as_fd(&listeners.v4),
        v6: listeners.v6.as_ref().map(std::os::fd::AsFd::as_fd),
    };
    let protected = crate::resolve::entries(&cfg, &resolved);
    let redirector =
        Redirector::start(&cfg, fds, &protected).context("attaching the kernel programs")?;

    journal
        .record(
            None,
            Event::AgentStarted {
                version: env!("CARGO_PKG_VERSION").into(),
                config: cfg.path.display().to_string(),
                governed: cfg
                    .governed
                    .iter()
                    .map(|g| g.path.display().to_string())
                    .collect(),
                resources: cfg.resources.iter().map(|r| r.name.clone()).collect(),
            },
        )
        .await
        .context("writing the first journal record")?;
    crate::resolve::journal_initial(&cfg, &resolved, &journal).await;

    let protocols = protocols::Services::start(
        &cfg.limits,
        cfg.resources.iter().map(|r| (r.name.as_str(), &r.settings)),
    )
    .context("starting the protocols' services")?;
    let shutdown = CancellationToken::new();
    let approvals = start_approvals(&cfg, &journal, grants, &shutdown).await?;
    let shared = Arc::new(Shared {
        protocols,
        rules: RulesHandle::new(cfg.rules.clone()),
        approvals,
        admission: crate::proxy::admission::Admission::new(
            cfg.listener.max_sessions,
            cfg.listener.max_sessions_per_principal,
        ),
        memory: crate::memory_budget::Budget::new(cfg.listener.max_buffered_bytes),
        refusals: crate::proxy::refusals::Refusals::new(
            journal.clone(),
            crate::proxy::refusals::REPORT_EVERY,
        ),
        config: cfg,
        journal: journal.clone(),
        redirector,
        tls,
    });
    let refresher = crate::resolve::Refresher::new(dns, resolved)
        .map(|r| tokio::spawn(r.run(shared.clone(), shutdown.clone())));
    let refusals_timer = tokio::spawn(shared.refusals.clone().run(shutdown.clone()));
    let admission = shared.admission.clone();
    tokio::spawn(crate::allocator::give_back(
        move || admission.ended(),
        shutdown.clone(),
    ));
    let sessions = TaskTracker::new();
    let server = tokio::spawn(proxy::serve(
        listeners,
        shared.clone(),
        shutdown.clone(),
        sessions.clone(),
    ));

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(
        port = shared.config.listener.port,
        governed = shared.config.governed.len(),
        resources = shared.config.resources.len(),
        "pam-agent ready"
    );

    let reason = stop.wait(&shared).await;
    tracing::info!(%reason, "stopping; governed connections fail until the agent is back");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    // Held statements never run now: on record as abandoned before their sessions end.
    if let Some(broker) = shared.approvals.broker() {
        broker.shutdown().await;
    }
    shutdown.cancel();
    let _ = server.await;
    sessions.close();
    if tokio::time::timeout(DRAIN, sessions.wait()).await.is_err() {
        tracing::warn!("some sessions did not finish within {DRAIN:?}");
    }
    // Nothing is accepted any more: the refusals counted but not yet written go on
    // record now, before the stop.
    let _ = refusals_timer.await;
    if let Some(refresher) = refresher {
        let _ = refresher.await;
    }
    shared.refusals.flush().await;
    journal
        .record(None, Event::AgentStopped { reason })
        .await
        .context("writing the stop record")?;
    drop(shared);
    drop(journal);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .ok();
    Ok(())
}

/// Statements held when the last run stopped or was killed never ran: says so. The
/// record names its session in words (this run does not hold that session, so the
/// record is not filed under it).
async fn abandon_unanswered(
    journal: &Journal,
    unanswered: Vec<(Option<crate::journal::SessionId>, uuid::Uuid)>,
) -> anyhow::Result<()> {
    for (session, approval) in unanswered {
        let session = session
            .map(|s| format!(" of session {s}"))
            .unwrap_or_default();
        let event = Event::ApprovalDecided {
            approval,
            outcome: crate::journal::event::ApprovalOutcome::Abandoned,
            by: "pam-agent".into(),
            reason: Some(format!(
                "the agent stopped before a decision (found at the next start); the statement{session} did not run"
            )),
            grant: None,
        };
        journal
            .record(None, event)
            .await
            .context("journaling abandoned approval requests")?;
    }
    Ok(())
}

/// The approval broker and its control socket, when `[approvals]` asks for them.
async fn start_approvals(
    cfg: &Config,
    journal: &Journal,
    grants: Vec<crate::govern::approval::Grant>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Approvals> {
    let Some(a) = &cfg.approvals else {
        return Ok(Approvals::unavailable());
    };
    let listener = crate::control::bind(a).context("opening the approvals socket")?;
    let broker = Broker::new(journal.clone(), grants);
    tokio::spawn(crate::control::serve(
        listener,
        broker.clone(),
        shutdown.clone(),
    ));
    tracing::info!(socket = %a.socket.display(), "approvals: control socket open");
    crate::approval_api::start(
        a.http.as_ref(),
        &a.webhooks,
        cfg.worker_tls.as_ref(),
        &broker,
        journal,
        shutdown,
    )
    .await?;
    Ok(Approvals::with_broker(broker))
}

/// Loads the agent CA (made on the first start when neither file exists) and each
/// resource's client TLS settings. Before anything is attached: a bad CA stops here.
fn tls_setup(cfg: &Config) -> anyhow::Result<tls::Material> {
    let leaves = match &cfg.worker_tls {
        None => None,
        Some(t) => {
            let (ca, created) = AgentCa::load_or_create(&t.ca_cert, &t.ca_key)
                .context("loading the agent CA ([worker_tls])")?;
            if created {
                tracing::warn!(
                    cert = %t.ca_cert.display(),
                    "created a new agent CA: workers that verify must trust this certificate (pam-agent ca show)"
                );
            } else {
                tracing::info!(cert = %t.ca_cert.display(), "agent CA loaded");
            }
            Some(LeafCache::new(ca, t.leaf_validity))
        }
    };
    let upstream = cfg
        .resources
        .iter()
        .map(|r| {
            protocols::upstream_tls(
                r.protocol,
                &r.settings,
                cfg.listener.upstream_connect_timeout,
            )
            .with_context(|| format!("resource `{}`: upstream TLS", r.name))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(tls::Material { leaves, upstream })
}

struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<Self> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
        })
    }

    /// Waits for SIGTERM or SIGINT; SIGHUP reloads the statement policy meanwhile.
    async fn wait(mut self, shared: &Shared) -> String {
        loop {
            tokio::select! {
                _ = self.term.recv() => return "SIGTERM".into(),
                _ = self.int.recv() => return "SIGINT".into(),
                _ = self.hup.recv() => reload_policy(shared).await,
            }
        }
    }
}

/// SIGHUP: re-reads the config and replaces the statement policy; open sessions judge
/// their next statement by it. Other sections need a restart (said in the log). An
/// invalid file changes nothing.
/// SIGHUP: re-reads the config file. Journals `config_reloaded` either way (a refused file
/// with `ok: false` and the reason, the running config staying in force), then, when the
/// file was accepted, swaps the statement policy and journals `policy_reloaded`.
async fn reload_policy(shared: &Shared) {
    let path = &shared.config.path;
    let config = path.display().to_string();
    let new = match Config::load(path) {
        Ok(new) => new,
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: config not reloaded; the running policy stays");
            let event = Event::ConfigReloaded {
                config,
                ok: false,
                detail: Some(e.to_string()),
            };
            if let Err(e) = shared.journal.record(None, event).await {
                tracing::error!(error = %e, "cannot journal the refused config reload");
            }
            return;
        }
    };
    let needs_restart = new.resources != shared.config.resources
        || new.governed != shared.config.governed
        || new.limits != shared.config.limits
        || new.worker_tls != shared.config.worker_tls
        || new.resolver != shared.config.resolver;
    if needs_restart {
        tracing::warn!(
            "SIGHUP: only [policy], [masking] and [[principals]] are reloaded; restart the agent to apply other changes"
        );
    }
    let event = Event::ConfigReloaded {
        config: config.clone(),
        ok: true,
        detail: needs_restart.then(|| {
            "only [policy], [masking] and [[principals]] are applied on reload; restart the agent to apply \
             the other changes"
                .to_string()
        }),
    };
    if let Err(e) = shared.journal.record(None, event).await {
        tracing::error!(error = %e, "cannot journal the config reload");
    }
    let rules = new.rules.policy.rules.len();
    shared.rules.replace(new.rules.clone());
    tracing::info!(config = %path.display(), rules, "SIGHUP: policy reloaded");
    let event = Event::PolicyReloaded { config, rules };
    if let Err(e) = shared.journal.record(None, event).await {
        tracing::error!(error = %e, "cannot journal the policy reload");
    }
}
