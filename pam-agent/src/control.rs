//! The local control channel: a unix socket approvers reach with `pam-agent approvals`.
//! Who is on the other end is what the kernel says (SO_PEERCRED), never what the client
//! claims; the socket is mode 0660, owned by root and the approvers' group, so only root
//! and that group can connect at all. One JSON request per line, one JSON answer per
//! line.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::govern::approval::{Approver, Broker, Decided, Grant, Summary};

/// Where the socket is unless the config says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/pam-agent/approvals.sock";

/// `[approvals]` as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawApprovals {
    /// The control socket (default `/run/pam-agent/approvals.sock`).
    pub socket: Option<PathBuf>,
    /// The group whose members may connect (and so approve); root always may.
    pub group: Option<String>,
    /// The HTTP API for remote approvers ([`crate::approval_api::http`]).
    pub http: Option<crate::approval_api::RawHttp>,
    /// Notices of requests and decisions ([`crate::approval_api::webhook`]).
    #[serde(default)]
    pub webhooks: Vec<crate::approval_api::RawWebhook>,
}

/// `[approvals]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalsConfig {
    pub socket: PathBuf,
    /// The group's id, resolved at load so a typo fails `check`.
    pub group: Option<(String, u32)>,
    pub http: Option<crate::approval_api::HttpConfig>,
    pub webhooks: Vec<crate::approval_api::WebhookConfig>,
}

impl RawApprovals {
    /// Errors are (field, reason).
    pub fn validate(self) -> Result<ApprovalsConfig, (String, String)> {
        let socket = self.socket.unwrap_or_else(|| DEFAULT_SOCKET.into());
        if !socket.is_absolute() {
            return Err(("approvals.socket".into(), "must be an absolute path".into()));
        }
        let group = match self.group {
            None => None,
            Some(name) => match nix::unistd::Group::from_name(&name) {
                Ok(Some(g)) => Some((name, g.gid.as_raw())),
                _ => {
                    return Err(("approvals.group".into(), format!("no group named `{name}`")));
                }
            },
        };
        let http = self.http.map(|h| h.validate()).transpose()?;
        let webhooks = self
            .webhooks
            .into_iter()
            .enumerate()
            .map(|(i, w)| w.validate(i))
            .collect::<Result<_, _>>()?;
        Ok(ApprovalsConfig {
            socket,
            group,
            http,
            webhooks,
        })
    }
}

/// A request on the socket.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    List,
    Show {
        id: Uuid,
    },
    Approve {
        id: Uuid,
        /// Seconds of a grant for the same principal, resource and fingerprint.
        grant_secs: Option<u64>,
        reason: Option<String>,
    },
    Deny {
        id: Uuid,
        reason: Option<String>,
    },
    Grants,
    Revoke {
        grant: Uuid,
    },
}

/// The answer to one request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Requests { requests: Vec<Summary> },
    Request { request: Box<Summary> },
    Decided { decided: Decided },
    Grants { grants: Vec<Grant> },
    Done,
    Error { message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot reach the agent's control socket {path}: {source} (is the agent running \
         with an [approvals] section, and are you root or in its approvals group?)"
    )]
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path}: {source}")]
    Exchange {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Binds the socket (replacing a stale one), 0660, group `cfg.group`.
pub fn bind(cfg: &ApprovalsConfig) -> Result<UnixListener, ControlError> {
    let path = &cfg.socket;
    let err = |source| ControlError::Socket {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    if let Some((_, gid)) = cfg.group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| err(e.into()))?;
    }
    let mode = if cfg.group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(listener)
}

/// Serves approvers until `shutdown`.
pub async fn serve(listener: UnixListener, broker: Broker, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                let broker = broker.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, broker).await {
                        tracing::debug!(error = %e, "control connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, broker: Broker) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let approver = approver_of(cred.uid(), cred.gid());
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(req) => handle(&broker, &approver, req).await,
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        };
        let mut out = serde_json::to_vec(&response)?;
        out.push(b'\n');
        w.write_all(&out).await?;
    }
    Ok(())
}

/// The approver the kernel says is connected: uid, its name and groups.
fn approver_of(uid: u32, gid: u32) -> Approver {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten();
    let name = user
        .as_ref()
        .map(|u| u.name.clone())
        .unwrap_or_else(|| format!("uid:{uid}"));
    let mut groups = Vec::new();
    if let Some(u) = &user
        && let Ok(c) = std::ffi::CString::new(u.name.clone())
        && let Ok(gids) = nix::unistd::getgrouplist(&c, nix::unistd::Gid::from_raw(gid))
    {
        for g in gids {
            if let Ok(Some(g)) = nix::unistd::Group::from_gid(g) {
                groups.push(g.name);
            }
        }
    }
    Approver {
        uid: Some(uid),
        subject: None,
        user: name,
        groups,
        channel: "cli".into(),
    }
}

async fn handle(broker: &Broker, who: &Approver, req: Request) -> Response {
    let failed = |e: crate::govern::approval::ApprovalError| Response::Error {
        message: e.to_string(),
    };
    match req {
        Request::List => Response::Requests {
            requests: broker.list(),
        },
        Request::Show { id } => match broker.show(id) {
            Some(request) => Response::Request {
                request: Box::new(request),
            },
            None => Response::Error {
                message: format!("no pending approval request {id}"),
            },
        },
        Request::Approve {
            id,
            grant_secs,
            reason,
        } => match broker
            .approve(id, who, grant_secs.map(Duration::from_secs), reason)
            .await
        {
            Ok(decided) => Response::Decided { decided },
            Err(e) => failed(e),
        },
        Request::Deny { id, reason } => match broker.deny(id, who, reason).await {
            Ok(decided) => Response::Decided { decided },
            Err(e) => failed(e),
        },
        Request::Grants => Response::Grants {
            grants: broker.grants(),
        },
        Request::Revoke { grant } => match broker.revoke(grant, who).await {
            Ok(()) => Response::Done,
            Err(e) => failed(e),
        },
    }
}

/// One request from the CLI: connect, send, read the answer.
pub fn call(socket: &Path, req: &Request) -> Result<Response, ControlError> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|source| {
        ControlError::Unreachable {
            path: socket.to_owned(),
            source,
        }
    })?;
    let exchange = |source| ControlError::Exchange {
        path: socket.to_owned(),
        source,
    };
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(exchange)?;
    let mut line = serde_json::to_vec(req).map_err(|e| exchange(e.into()))?;
    line.push(b'\n');
    s.write_all(&line).map_err(exchange)?;
    let mut answer = String::new();
    std::io::BufReader::new(&s)
        .read_line(&mut answer)
        .map_err(exchange)?;
    serde_json::from_str(&answer).map_err(|e| exchange(e.into()))
}
