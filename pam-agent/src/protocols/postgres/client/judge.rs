//! A message's SQL as requests for the gate: classified (on the parser threads),
//! SQL-level EXECUTE read as what was prepared, the protocol's own veto on a masked
//! session, then judged and journaled.

use std::sync::{Arc, atomic::Ordering};

use super::{
    Client, Judgement, LEXER_UNSAFE, Numbered, Via,
    functions::{Unresolved, lookup_failed},
    reserved,
};
use crate::{
    govern::{Ask, Request, Verdict, masking_refusal, unreadable},
    policy::Decision,
    protocols::postgres::{
        SessionError,
        known_functions::Resolved,
        notes::Catalog,
        refusal,
        sql::{Classifier, CopyOut, Prepared, Statement, Unclassifiable, kind},
        wire::frontend,
    },
};

impl Client<'_> {
    /// Classifies a SQL text and has the gate judge and journal it.
    pub(super) async fn judge_text(
        &mut self,
        text: &[u8],
        via: Via,
    ) -> Result<Judgement, SessionError> {
        if self.shared.lexer_unsafe.load(Ordering::Relaxed) {
            self.gate.mark_unsafe(LEXER_UNSAFE);
        }
        let Ok(text) = frontend::text(text) else {
            let lossy = String::from_utf8_lossy(text);
            let ask = Ask {
                text: &lossy,
                requests: Err("text that is not UTF-8".into()),
                veto: None,
                context: Vec::new(),
            };
            let judged = self.gate.judge(ask).await?;
            return Ok(Judgement {
                verdict: judged.verdict,
                numbered: Vec::new(),
                copy: None,
                commits: false,
                failed: None,
            });
        };
        let classified = self.ctx.classifier.classify(text).await;
        let statements = match classified.as_ref() {
            Ok(sts) if sts.iter().any(|st| st.prepared.is_some()) => {
                Ok(std::borrow::Cow::Owned(self.resolve_prepared(sts)))
            }
            Ok(sts) => Ok(std::borrow::Cow::Borrowed(sts.as_slice())),
            Err(e) => Err(e.to_string()),
        };
        // A COMMIT is judged by what its transaction wrote (before it, and earlier in
        // this message), and its approvers see those statements.
        let mut context = Vec::new();
        let statements = match statements {
            Ok(sts) if sts.iter().any(|st| st.commits) => {
                let (sts, lines) = self.with_transaction(&sts);
                context = lines;
                Ok(std::borrow::Cow::Owned(sts))
            }
            other => other,
        };
        // Calls as the server will resolve them (looked up first if need be).
        let statements = match statements {
            Ok(sts) => match self.resolve_functions(sts, via).await? {
                Ok(sts) => Ok(sts),
                Err(Unresolved::Unknown(why)) => Err(why),
                Err(Unresolved::Server(error)) => {
                    // Never run unjudged: on record (its text as a statement's is, without
                    // the terminator), and the server's error shown.
                    let text = text.trim_end().trim_end_matches(';').trim_end();
                    let judged = self.gate.refuse(text, lookup_failed(&error)).await?;
                    return Ok(Judgement {
                        verdict: judged.verdict,
                        numbered: Vec::new(),
                        copy: None,
                        commits: false,
                        failed: Some(error),
                    });
                }
            },
            Err(e) => Err(e),
        };
        let (veto, copy) = match &statements {
            Ok(sts) if sts.iter().any(|s| s.reserved_name.is_some()) => (Some(reserved()), None),
            Ok(sts) if self.masked => match copy_veto(&self.ctx.classifier, sts, via).await {
                Ok(copy) => (None, copy),
                Err(d) => (Some(d), None),
            },
            _ => (None, None),
        };
        let requests: Vec<&Request> = match &statements {
            Ok(sts) => sts.iter().map(|s| &s.request).collect(),
            Err(_) => Vec::new(),
        };
        let ask = Ask {
            text,
            requests: match &statements {
                Ok(_) => Ok(&requests),
                Err(e) => Err(e.clone()),
            },
            veto,
            context,
        };
        let judged = self.gate.judge(ask).await?;
        // Text the server's parser (the agent's) rejects: refused all the same, with
        // the server's SQLSTATE for it (not when refused for another reason first).
        let failed = match (&judged.verdict, classified.as_ref()) {
            (Verdict::Refuse(d), Err(e @ Unclassifiable::Grammar(_)))
                if d.reason == unreadable(e).reason =>
            {
                Some(refusal::syntax_error(d))
            }
            _ => None,
        };
        let masker = self.gate.masker();
        let numbered = match &statements {
            Ok(sts) => sts
                .iter()
                .zip(&judged.statements)
                .map(|(st, &n)| Numbered {
                    statement: n,
                    catalog: catalog_of(st),
                    prepares: st
                        .prepared
                        .as_ref()
                        .filter(|p| !matches!(p, Prepared::Execute(_)))
                        .map(|_| Arc::new(st.clone())),
                    writes: (!st.writes.is_empty() && !st.commits)
                        .then(|| (st.text.clone(), st.writes.clone())),
                    tables: Some(Arc::new(st.tables.clone())),
                    withhold: masker
                        .map(|m| m.withheld_outputs(&st.derived))
                        .filter(|w| !w.is_empty())
                        .map(Arc::from),
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let commits = matches!(&statements, Ok(sts) if sts.iter().any(|st| st.commits));
        Ok(Judgement {
            verdict: judged.verdict,
            numbered,
            copy,
            commits,
            failed,
        })
    }
    /// The statements with each COMMIT's request naming the tables its transaction
    /// wrote (as `tables` and `writes`), and the transaction's writes for approvers.
    fn with_transaction(&self, statements: &[Statement]) -> (Vec<Statement>, Vec<String>) {
        let (mut written, mut lines) = {
            let txn = self.shared.txn.lock().unwrap_or_else(|p| p.into_inner());
            (txn.tables(), txn.lines())
        };
        let mut out = Vec::with_capacity(statements.len());
        for st in statements {
            let mut st = st.clone();
            if st.commits {
                st.request.tables.extend(written.iter().cloned());
                st.request.writes.extend(written.iter().cloned());
            } else if !st.writes.is_empty() {
                written.extend(st.writes.iter().cloned());
                lines.push(format!("(same message) {}", st.text));
            }
            out.push(st);
        }
        (out, lines)
    }

    /// Each `EXECUTE name` replaced by what `name` was prepared as (by PREPAREs the server
    /// completed, and earlier ones in the same text); unknown names stay `execute` with
    /// `dynamic_sql`, which policy refuses unless a rule permits it.
    pub(super) fn resolve_prepared(&self, statements: &[Statement]) -> Vec<Statement> {
        let mut known = self
            .shared
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        statements
            .iter()
            .map(|st| {
                let r = known.resolve(st).unwrap_or_else(|| st.clone());
                known.completed(st);
                r
            })
            .collect()
    }
}

/// What an execution may change in the catalog.
fn catalog_of(st: &Statement) -> Catalog {
    if st
        .kinds
        .iter()
        .any(|k| matches!(*k, kind::DDL | kind::DO | kind::CALL))
    {
        Catalog::Ddl
    } else if st.kind() == kind::TRANSACTION {
        Catalog::Transaction
    } else {
        Catalog::Unchanged
    }
}

/// A protocol-level FunctionCall (by OID): judged as a request of kind
/// `function_call` calling the function the OID names in the catalog (`schema.name`,
/// with its flags; `oid:<n>` read as unknown when it could not be looked up), so only a
/// rule naming that kind allows it.
pub(super) fn function_call_request(oid: u32, resolved: Resolved) -> Request {
    Request {
        text: format!("<FunctionCall oid {oid}>"),
        kinds: vec![kind::FUNCTION_CALL],
        functions: resolved.names.into_iter().collect(),
        flags: resolved.flags,
        ..Request::default()
    }
}

/// On a masked session a COPY TO STDOUT must be alone in a simple Query, in text format,
/// so its rows can be planned: the veto when not, else the COPY to describe.
async fn copy_veto(
    classifier: &Classifier,
    statements: &[Statement],
    via: Via,
) -> Result<Option<CopyOut>, Decision> {
    let Some(st) = statements
        .iter()
        .find(|st| st.kinds.contains(&kind::COPY_OUT))
    else {
        return Ok(None);
    };
    if !matches!(via, Via::Query { clean: true }) || statements.len() != 1 {
        return Err(masking_refusal(
            "on a masked connection, COPY TO STDOUT must be sent alone, as a simple query".into(),
        ));
    }
    match classifier.copy_out(&st.text).await {
        Some(Ok(copy)) => Ok(Some(copy)),
        Some(Err(e)) => Err(masking_refusal(e.to_string())),
        None => Err(masking_refusal(
            "the COPY statement could not be analysed".into(),
        )),
    }
}
