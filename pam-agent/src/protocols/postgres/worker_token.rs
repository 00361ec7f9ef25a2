//! Workers that present an identity provider's token as their database password
//! (`worker_auth = "oidc"`): the agent asks for it (AuthenticationCleartextPassword:
//! drivers send a token the way they send a password), verifies it against the
//! resource's issuer, and binds it to the workload: a subject that `[[principals]]`
//! gives to another principal is refused here, so a token copied out of one workload
//! is of no use in another. The token itself is never forwarded (the agent logs in
//! upstream with the principal's login) and never journaled: only its issuer, subject,
//! groups and expiry.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

use super::wire::{backend::sqlstate, frame::Frame, frontend};
use crate::{
    govern::Session,
    journal::Event,
    oidc::Verifier,
    principal::{Principals, WorkerToken},
};

/// What a session needs to check a worker's token.
#[derive(Clone)]
pub struct TokenCheck {
    pub verifier: Arc<Verifier>,
    /// The principals in force when the session opened (their `token_subjects`).
    pub principals: Principals,
}

/// A token is a few KiB; a password message beyond this is not one.
const MAX_PASSWORD_MESSAGE: usize = 64 * 1024;

/// AuthenticationCleartextPassword.
const AUTH_CLEARTEXT: i32 = 3;

/// Why the worker's login ends here.
#[derive(Debug)]
pub enum TokenError {
    /// The worker gets FATAL 28000 with this message; the session's close says why.
    Refused(String),
    /// The worker went away or broke the protocol.
    Io(std::io::Error),
    /// The refusal or acceptance could not be journaled: nothing goes on unaudited.
    Journal(String),
}

/// Asks the worker for its token, verifies it and journals the outcome (a
/// `worker_token` record, accepted or refused) before the login goes on.
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    worker: &mut S,
    check: &TokenCheck,
    session: &Session,
) -> Result<WorkerToken, TokenError> {
    let ask = Frame::build(b'R', &AUTH_CLEARTEXT.to_be_bytes());
    worker.write_all(&ask.raw).await.map_err(TokenError::Io)?;
    worker.flush().await.map_err(TokenError::Io)?;
    let token = read_password(worker).await?;
    let issuer = check.verifier.config().issuer.clone();
    let outcome = match check.verifier.verify(&token).await {
        Err(e) => Err((
            None,
            Vec::new(),
            None,
            format!("the token was refused: {e}"),
        )),
        Ok(id) => match check
            .principals
            .token_binding(session.principal.name.as_deref(), &id.subject)
        {
            Err(why) => Err((Some(id.subject), id.groups, id.expires_at, why)),
            Ok(()) => Ok(WorkerToken {
                issuer: id.issuer,
                subject: id.subject,
                groups: id.groups,
                expires_at: id.expires_at,
            }),
        },
    };
    drop(token);
    let event = match &outcome {
        Ok(t) => Event::WorkerToken {
            accepted: true,
            issuer,
            subject: Some(t.subject.clone()),
            groups: t.groups.clone(),
            expires_at: t.expires_at,
            reason: None,
        },
        Err((subject, groups, expires_at, why)) => Event::WorkerToken {
            accepted: false,
            issuer,
            subject: subject.clone(),
            groups: groups.clone(),
            expires_at: *expires_at,
            reason: Some(why.clone()),
        },
    };
    session
        .journal
        .record(Some(session.id), event)
        .await
        .map_err(|e| TokenError::Journal(e.to_string()))?;
    outcome.map_err(|(_, _, _, why)| {
        TokenError::Refused(format!("pam-agent: worker token refused: {why}"))
    })
}

/// The SQLSTATE a refused token gets.
pub const REFUSED: &str = sqlstate::INVALID_AUTHORIZATION;

/// One PasswordMessage, read exactly (nothing after it is consumed).
async fn read_password<S: AsyncRead + Unpin>(
    worker: &mut S,
) -> Result<Zeroizing<String>, TokenError> {
    let mut head = [0u8; 5];
    worker.read_exact(&mut head).await.map_err(TokenError::Io)?;
    if head[0] != frontend::AUTH_RESPONSE {
        return Err(TokenError::Refused(format!(
            "pam-agent: expected a password message (the worker's token), got '{}'",
            head[0].escape_ascii()
        )));
    }
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    let len = usize::try_from(len)
        .ok()
        .filter(|n| (4..=MAX_PASSWORD_MESSAGE).contains(n))
        .ok_or_else(|| TokenError::Refused("pam-agent: password message of a bad length".into()))?;
    let mut body = Zeroizing::new(vec![0u8; len - 4]);
    worker.read_exact(&mut body).await.map_err(TokenError::Io)?;
    let text = body.strip_suffix(&[0]).unwrap_or(&body);
    let token = std::str::from_utf8(text)
        .map_err(|_| TokenError::Refused("pam-agent: the token is not UTF-8".into()))?;
    if token.is_empty() {
        return Err(TokenError::Refused(
            "pam-agent: this resource needs the worker's identity token as its password".into(),
        ));
    }
    Ok(Zeroizing::new(token.to_owned()))
}
