//! The `pam-agent` command: the daemon and the operator's tools.

use std::{os::unix::process::CommandExt, path::PathBuf, process::ExitCode};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use pam_agent::{
    audit,
    config::{Config, DEFAULT_CONFIG_PATH, DEFAULT_PIN_DIR},
    daemon,
    govern::{self, Request},
    kernel::{self, cgroup},
    principal::Principal,
    protocols,
    tls::AgentCa,
};

#[derive(Parser)]
#[command(
    name = "pam-agent",
    version,
    about = "Privileged access management for AI-agent workers"
)]
struct Cli {
    /// Log format for the daemon's own log (stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: attach to the governed cgroups and proxy their connections.
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Validate a config file without running anything.
    Check {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Start a command inside a governed cgroup (for tries and tests).
    Exec {
        /// Config whose first governed cgroup is used when --cgroup is not given.
        #[arg(long)]
        config: Option<PathBuf>,
        /// cgroup to run in: absolute, or relative to the cgroup2 mount.
        #[arg(long)]
        cgroup: Option<String>,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true, num_args = 1..)]
        command: Vec<String>,
    },
    /// Show whether enforcement is attached to every governed cgroup and the agent is
    /// listening. Exits 0 when both hold, 3 otherwise.
    Status {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Turn enforcement off: detach every program and remove the pinned state. Stop the
    /// agent first; governed workers then connect directly.
    Disable {
        #[arg(long, conflicts_with = "pin_dir")]
        config: Option<PathBuf>,
        #[arg(long)]
        pin_dir: Option<PathBuf>,
    },
    /// Read, verify and export the audit journal.
    Audit {
        #[command(flatten)]
        journal: audit::JournalArgs,
        #[command(subcommand)]
        command: Box<audit::AuditCommand>,
    },
    /// Which principal (`[[principals]]`) a process is, and why.
    Principals {
        #[command(subcommand)]
        command: PrincipalsCommand,
    },
    /// Statement policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The agent CA that signs the certificates workers see (`[worker_tls]`).
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Statements held for approval: list, show, approve, deny; grants. Talks to the
    /// running agent over its control socket, which knows who you are (SO_PEERCRED).
    Approvals {
        /// Config naming the socket (`[approvals] socket`).
        #[arg(long, default_value = DEFAULT_CONFIG_PATH, conflicts_with = "socket")]
        config: PathBuf,
        /// The socket itself, instead of reading the config.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print the agent's JSON answer instead of text.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
}

#[derive(Subcommand)]
enum ApprovalsCommand {
    /// Pending requests, oldest first.
    List,
    /// Everything about one request: who, where, what, why.
    Show { id: uuid::Uuid },
    /// Approve; with --for, also let the same principal run the same statement
    /// fingerprint on the same resource for that long.
    Approve {
        id: uuid::Uuid,
        /// A grant's length, e.g. 15m, 1h.
        #[arg(long = "for")]
        grant: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny: the worker gets an error naming the request and the reason.
    Deny {
        id: uuid::Uuid,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Grants in force.
    Grants,
    /// End a grant before its time.
    Revoke { grant: uuid::Uuid },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create the CA certificate and key at the configured paths (key 0600). Does
    /// nothing when both exist; `run` also creates them on its first start.
    Init {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Print the CA certificate (PEM) to give to workers (`sslrootcert` / PGSSLROOTCERT
    /// or the system trust store).
    Show {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum PrincipalsCommand {
    /// Show the facts of a running process (or a unit's first process), every
    /// `[[principals]]` entry tried and the name it gets. Exits 0 when an entry names
    /// it, 2 when it is `unknown`.
    Explain {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// A running process.
        #[arg(long, required_unless_present = "unit", conflicts_with = "unit")]
        pid: Option<u32>,
        /// A systemd unit (or any cgroup) by name, e.g. `crew-1.service`.
        #[arg(long)]
        unit: Option<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Show how the policy judges a SQL text: its classification, every rule tried,
    /// and the decision. Exits 0 when allowed, 2 when refused.
    Explain {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Who runs it: comma-separated `user=NAME,uid=N,group=NAME,gid=N,unit=NAME,
        /// cgroup=PATH,exe=PATH` (any subset; absent values match no rule that asks for
        /// them), or `pid=N` for a running process's facts; the principal name comes
        /// from `[[principals]]` unless `name=NAME` is given.
        #[arg(long, default_value = "")]
        principal: String,
        /// The resource's name in the config.
        #[arg(long)]
        resource: String,
        /// The SQL text (may hold several statements).
        sql: String,
    },
}

fn main() -> ExitCode {
    pam_agent::allocator::configure();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    if let Command::Audit { journal, command } = cli.command {
        return audit::run(&journal, *command);
    }
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pam-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Approvals {
            config,
            socket,
            json,
            command,
        } => approvals(&config, socket, json, command),
        Command::Run { config } => {
            let cfg = Config::load(&config)?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(daemon::run(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => {
            let cfg = Config::load(&config)?;
            println!("{}: ok", cfg.path.display());
            println!(
                "  listener: {}:{} and [{}]:{}",
                cfg.listener.ipv4, cfg.listener.port, cfg.listener.ipv6, cfg.listener.port
            );
            for g in &cfg.governed {
                println!("  governs:  {}", g.path.display());
            }
            let resolved = resolve_for_check(&cfg);
            for (r, addresses) in cfg.resources.iter().zip(&resolved) {
                println!(
                    "  protects: {} {} port {} ({}{})",
                    r.name,
                    r.address,
                    r.port,
                    r.protocol,
                    protocols::describe(r.protocol, &r.settings)
                );
                if !addresses.is_empty() {
                    println!("            {addresses}");
                }
            }
            if !cfg.rules.principals.is_empty() {
                let names: Vec<&str> = cfg.rules.principals.names().collect();
                println!("  principals: {} (others: unknown)", names.join(", "));
            }
            match &cfg.worker_tls {
                Some(t) => {
                    let state = if t.ca_cert.exists() || t.ca_key.exists() {
                        AgentCa::load(&t.ca_cert, &t.ca_key)?;
                        "present"
                    } else {
                        "not made yet: pam-agent ca init, or the first start"
                    };
                    println!("  worker TLS: agent CA {} ({state})", t.ca_cert.display())
                }
                None => println!("  worker TLS: off (SSLRequest answered 'N')"),
            }
            println!("  journal:  {}", cfg.journal.path.display());
            // `run` refuses to start with a host name that does not resolve.
            if resolved.iter().any(|a| a.starts_with(UNRESOLVED)) {
                eprintln!(
                    "pam-agent: a host-name resource does not resolve: the agent would not start"
                );
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec {
            config,
            cgroup: name,
            command,
        } => {
            let path = match (name, config) {
                (Some(name), _) => cgroup::resolve(&name)?,
                (None, Some(config)) => {
                    let cfg = Config::load(&config)?;
                    cfg.governed[0].path.clone()
                }
                (None, None) => bail!("name the cgroup with --cgroup, or give --config"),
            };
            cgroup::join(&path, false)?;
            let err = std::process::Command::new(&command[0])
                .args(&command[1..])
                .exec();
            bail!("cannot run {}: {err}", command[0])
        }
        Command::Status { config } => status(&Config::load(&config)?),
        Command::Principals {
            command: PrincipalsCommand::Explain { config, pid, unit },
        } => principals_explain(&config, pid, unit.as_deref()),
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    config,
                    principal,
                    resource,
                    sql,
                },
        } => policy_explain(&config, &principal, &resource, &sql),
        Command::Disable { config, pin_dir } => {
            let dir = match (config, pin_dir) {
                // Only the pin directory is needed: a config whose governed cgroups are
                // gone must still let enforcement be turned off.
                (Some(c), _) => Config::pin_dir_of(&c)?,
                (None, Some(d)) => d,
                (None, None) => PathBuf::from(DEFAULT_PIN_DIR),
            };
            let removed = kernel::disable(&dir)?;
            println!(
                "pam-agent disabled: detached {} program links, removed {} pinned maps from {}",
                removed.links,
                removed.maps,
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { journal, command } => Ok(audit::run(&journal, *command)),
        Command::Ca { command } => ca(command),
    }
}

fn ca(command: CaCommand) -> anyhow::Result<ExitCode> {
    let config = match &command {
        CaCommand::Init { config } | CaCommand::Show { config } => config,
    };
    let cfg = Config::load(config)?;
    let Some(tls) = &cfg.worker_tls else {
        bail!(
            "{}: no [worker_tls] section: the agent answers workers' SSLRequest with 'N'",
            cfg.path.display()
        );
    };
    match command {
        CaCommand::Init { .. } => {
            let (_, created) = AgentCa::load_or_create(&tls.ca_cert, &tls.ca_key)?;
            println!(
                "{} agent CA: certificate {}, key {}",
                if created {
                    "created"
                } else {
                    "kept the existing"
                },
                tls.ca_cert.display(),
                tls.ca_key.display()
            );
            println!("give the certificate to workers: pam-agent ca show > pam-agent-ca.pem");
        }
        CaCommand::Show { .. } => {
            if !tls.ca_cert.exists() {
                bail!(
                    "{} does not exist yet: run `pam-agent ca init` (or start the agent)",
                    tls.ca_cert.display()
                );
            }
            // The certificate alone: showing it needs no access to the key.
            print!("{}", AgentCa::read_cert_pem(&tls.ca_cert)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How `check` marks a host name that does not resolve.
const UNRESOLVED: &str = "DOES NOT RESOLVE: ";

/// What each resource resolves to now, as `check` shows it under the resource (empty
/// for a fixed network): `resolves to 10.0.0.5, fd00::5 (TTL 30 s)` or [`UNRESOLVED`]
/// and why.
fn resolve_for_check(cfg: &Config) -> Vec<String> {
    let hosts = cfg.resources.iter().any(|r| r.address.host().is_some());
    if !hosts {
        return vec![String::new(); cfg.resources.len()];
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return vec![format!("{UNRESOLVED}no async runtime: {e}"); cfg.resources.len()],
    };
    rt.block_on(async {
        let dns = match pam_agent::resolve::Dns::new(&cfg.resolver) {
            Ok(d) => d,
            Err(e) => return vec![format!("{UNRESOLVED}{e}"); cfg.resources.len()],
        };
        let mut out = Vec::new();
        for r in &cfg.resources {
            out.push(match r.address.host() {
                None => String::new(),
                Some(host) => match dns.lookup(host).await {
                    Ok(a) => format!(
                        "resolves to {} (TTL {} s)",
                        pam_agent::resolve::list(&a.addresses),
                        a.ttl.as_secs()
                    ),
                    Err(e) => format!("{UNRESOLVED}{e}"),
                },
            });
        }
        out
    })
}

fn status(cfg: &Config) -> anyhow::Result<ExitCode> {
    let links = kernel::pinned_links(&cfg.pin_dir)?;
    let mut healthy = true;
    println!("pin directory: {}", cfg.pin_dir.display());
    for g in &cfg.governed {
        let id = cgroup::id(&g.path).with_context(|| format!("cgroup {}", g.path.display()))?;
        let missing = kernel::missing_programs(&links, id)?;
        if missing.is_empty() {
            println!("governed:  {} (cgroup id {id}): enforced", g.path.display());
        } else {
            healthy = false;
            println!(
                "governed:  {} (cgroup id {id}): NOT enforced, missing {}",
                g.path.display(),
                missing.join(", ")
            );
        }
    }
    // The listener counts only if the kernel shows it to us: the socket in the pinned
    // sockmap (which sk_lookup delivers to) is one the agent process itself holds.
    let target = std::net::SocketAddr::from((cfg.listener.ipv4, cfg.listener.port));
    let held = kernel::listener_status(&cfg.pin_dir)?;
    match &held.v4 {
        kernel::ListenerProof::HeldByAgent { pid, cookie } => println!(
            "listener:  {target} held by the agent (pid {pid}, socket cookie {cookie}): agent running"
        ),
        kernel::ListenerProof::NotTheAgent { pid, cookie } => {
            healthy = false;
            println!(
                "listener:  {target}: socket cookie {cookie} is NOT held by the agent (pid {pid}): agent NOT running"
            )
        }
        kernel::ListenerProof::Absent => {
            healthy = false;
            println!(
                "listener:  {target}: no agent socket: agent NOT running, governed connections are refused"
            )
        }
    }
    if !matches!(held.v6, kernel::ListenerProof::HeldByAgent { .. }) {
        println!(
            "listener:  the agent has no IPv6 listener: governed IPv6 connections are refused"
        );
    }
    // What the kernel protects now (a host name: what the agent last resolved it to).
    let entries = kernel::protected_entries(&cfg.pin_dir)?;
    for (i, r) in cfg.resources.iter().enumerate() {
        let mine: Vec<String> = entries
            .iter()
            .filter(|e| e.resource_id == i as u32 && e.port == r.port)
            .map(|e| match r.address {
                pam_agent::resolve::Address::Host(_) => e.net.addr().to_string(),
                pam_agent::resolve::Address::Net(_) => e.net.to_string(),
            })
            .collect();
        if mine.is_empty() {
            healthy = false;
            println!(
                "resource:  {} {} port {}: NOT in the kernel's map",
                r.name, r.address, r.port
            );
        } else {
            println!(
                "resource:  {} {} port {}: protected: {}",
                r.name,
                r.address,
                r.port,
                mine.join(", ")
            );
        }
    }
    if held.steering {
        println!("steering:  sk_lookup attached to this network namespace");
    } else {
        healthy = false;
        println!(
            "steering:  sk_lookup NOT attached: the listener port is not protected from squatters"
        );
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

fn policy_explain(
    config: &std::path::Path,
    principal: &str,
    resource: &str,
    sql: &str,
) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config)?;
    let Some(r) = cfg.resources.iter().find(|r| r.name == resource) else {
        bail!("{}: no resource is named `{resource}`", cfg.path.display());
    };
    let who = parse_principal(principal, &cfg.rules.principals)?;
    let policy = &cfg.rules.policy;
    let decision = match protocols::requests_of(r.protocol, sql, &cfg.limits)? {
        Ok(requests) => {
            let requests: Vec<&Request> = requests.iter().collect();
            let subject = pam_agent::policy::Subject::new(&who, resource);
            print!("{}", policy.explain(&subject, &requests));
            policy.decide_all(&subject, requests)
        }
        Err(why) => {
            let d = govern::unreadable(&why);
            println!("decision: {} (rule: {})\n  {}", d.action, d.rule, d.reason);
            d
        }
    };
    Ok(if decision.allowed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn principals_explain(
    config: &std::path::Path,
    pid: Option<u32>,
    unit: Option<&str>,
) -> anyhow::Result<ExitCode> {
    use pam_agent::principal::probe;
    let cfg = Config::load(config)?;
    let mut who = match (pid, unit) {
        (Some(pid), _) => probe::process(pid)?,
        (None, Some(unit)) => probe::unit(unit)?,
        (None, None) => bail!("give --pid or --unit"),
    };
    let (text, naming) = cfg.rules.principals.explain(&mut who);
    print!("{text}");
    Ok(match naming {
        Some(n) if n.name == pam_agent::principal::UNKNOWN => ExitCode::from(2),
        _ => ExitCode::SUCCESS,
    })
}

/// `--principal` of `policy explain`: facts written out (`user=crew,unit=x.service`), or
/// `pid=N` for a running process's own; named by `[[principals]]` unless `name=` says.
fn parse_principal(
    spec: &str,
    principals: &pam_agent::principal::Principals,
) -> anyhow::Result<Principal> {
    let mut p = Principal {
        uid: u32::MAX,
        gid: u32::MAX,
        ..Default::default()
    };
    let mut named = false;
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            bail!("--principal: `{part}` is not key=value");
        };
        let number = |v: &str| -> anyhow::Result<u32> {
            v.parse()
                .with_context(|| format!("--principal: {k} `{v}` is not a number"))
        };
        match k {
            "pid" => p = pam_agent::principal::probe::process(number(v)?)?,
            "name" => {
                p.name = Some(v.to_owned());
                named = true;
            }
            "user" => p.user = Some(v.to_owned()),
            "uid" => p.uid = number(v)?,
            "group" => p.group = Some(v.to_owned()),
            "gid" => p.gid = number(v)?,
            "unit" => p.unit = Some(v.to_owned()),
            "cgroup" => p.cgroup = Some(v.to_owned()),
            "exe" => p.exe = Some(v.to_owned()),
            other => bail!(
                "--principal: unknown key `{other}` (pid, name, user, uid, group, gid, unit, cgroup, exe)"
            ),
        }
    }
    if !named {
        principals.name(&mut p);
    }
    Ok(p)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into a file or the system journal.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `pam-agent approvals ...`: one request to the agent's control socket.
fn approvals(
    config: &std::path::Path,
    socket: Option<PathBuf>,
    json: bool,
    command: ApprovalsCommand,
) -> anyhow::Result<ExitCode> {
    use pam_agent::control::{self, Request};
    let socket = match socket {
        Some(s) => s,
        None => {
            let cfg = Config::load(config)?;
            cfg.approvals
                .map(|a| a.socket)
                .ok_or_else(|| anyhow::anyhow!("{}: no [approvals] section", cfg.path.display()))?
        }
    };
    let request = match command {
        ApprovalsCommand::List => Request::List,
        ApprovalsCommand::Show { id } => Request::Show { id },
        ApprovalsCommand::Approve { id, grant, reason } => {
            let grant_secs = grant
                .map(|g| {
                    g.parse::<jiff::SignedDuration>()
                        .ok()
                        .filter(|d| d.is_positive())
                        .map(|d| d.as_secs() as u64)
                        .ok_or_else(|| anyhow::anyhow!("--for {g}: not a duration (e.g. 15m)"))
                })
                .transpose()?;
            Request::Approve {
                id,
                grant_secs,
                reason,
            }
        }
        ApprovalsCommand::Deny { id, reason } => Request::Deny { id, reason },
        ApprovalsCommand::Grants => Request::Grants,
        ApprovalsCommand::Revoke { grant } => Request::Revoke { grant },
    };
    let response = control::call(&socket, &request)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&response)?);
        return Ok(match response {
            control::Response::Error { .. } => ExitCode::from(2),
            _ => ExitCode::SUCCESS,
        });
    }
    Ok(print_response(response))
}

/// The agent's answer, as text for people.
fn print_response(response: pam_agent::control::Response) -> ExitCode {
    use pam_agent::control::Response;
    match response {
        Response::Error { message } => {
            eprintln!("pam-agent: {message}");
            return ExitCode::from(2);
        }
        Response::Requests { requests } => {
            if requests.is_empty() {
                println!("no statement waits for approval");
            }
            for r in requests {
                println!(
                    "{}  {} (uid {})  {}  rule {}  until {}  {}",
                    r.id,
                    r.principal.user.as_deref().unwrap_or("?"),
                    r.principal.uid,
                    r.resource,
                    r.rule,
                    r.expires_at,
                    one_line(&r.text, 80)
                );
            }
        }
        Response::Request { request: r } => print_request(&r),
        Response::Decided { decided } => {
            use pam_agent::govern::approval::Decided;
            match decided {
                Decided::Approved => println!("approved: the statement runs"),
                Decided::Counted { have, need } => {
                    println!("approval counted: {have} of {need}; the statement still waits")
                }
                Decided::Denied => println!("denied: the worker gets an error"),
            }
        }
        Response::Grants { grants } => {
            if grants.is_empty() {
                println!("no grant in force");
            }
            for g in grants {
                println!(
                    "{}  uid {}  {}  fingerprint {}  until {}  by {}",
                    g.id, g.uid, g.resource, g.fingerprint, g.until, g.by
                );
            }
        }
        Response::Done => println!("done"),
    }
    ExitCode::SUCCESS
}

/// One request, everything an approver needs to decide.
fn print_request(r: &pam_agent::govern::approval::Summary) {
    let p = &r.principal;
    println!("request:    {}", r.id);
    println!("session:    {}", r.session);
    println!(
        "principal:  user {} uid {} unit {} cgroup {} exe {}",
        p.user.as_deref().unwrap_or("?"),
        p.uid,
        p.unit.as_deref().unwrap_or("-"),
        p.cgroup.as_deref().unwrap_or("?"),
        p.exe.as_deref().unwrap_or("?")
    );
    println!("resource:   {}", r.resource);
    println!("rule:       {} ({})", r.rule, r.reason);
    println!("statement:  {}", r.text);
    println!("kinds:      {}", r.kinds.join(", "));
    println!("tables:     {}", r.tables.join(", "));
    println!("flags:      {}", r.flags.join(", "));
    println!("records:    statement(s) {:?} of the session", r.statements);
    if !r.context.is_empty() {
        println!("transaction:");
        for line in &r.context {
            println!("  {line}");
        }
    }
    println!(
        "approvals:  {} of {} ({})",
        r.approved_by.len(),
        r.min_approvals,
        r.approved_by.join("; ")
    );
    println!("expires:    {}", r.expires_at);
}

fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &flat[..i]),
        None => flat,
    }
}
