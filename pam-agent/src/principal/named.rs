//! Named principals: `[[principals]]` in the config gives names to kinds of workers,
//! chosen by what the kernel and the system say about the process (in the manner of
//! SPIRE's unix and systemd attestors), so rules speak of `orders-crew` rather than of
//! uids and paths. The first entry whose selectors all hold names the connection; a
//! connection none names is [`UNKNOWN`], which allow and approval rules match only
//! when they name it.
//!
//! ```toml
//! [[principals]]
//! name = "orders-crew"
//! units = ["crew-orders@*.service"]     # systemd unit (glob)
//! users = ["crew"]                       # and the uid's name
//! exe_sha256 = ["9f86d0…"]               # and exactly this binary
//! ```

use serde::Deserialize;

use super::{Principal, attest};
use crate::glob;

/// The name of a connection no `[[principals]]` entry selects.
pub const UNKNOWN: &str = "unknown";

/// One `[[principals]]` entry as written. Each selector present must hold (a list
/// holds when any entry does); a fact that could not be established holds for none.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrincipal {
    pub name: String,
    /// systemd units (`crew-*.service`), innermost unit of the connecting cgroup.
    pub units: Option<Vec<String>>,
    /// cgroup v2 paths (globs), as under the cgroup2 mount (`/pam-workers.slice/*`).
    pub cgroups: Option<Vec<String>>,
    pub uids: Option<Vec<u32>>,
    pub users: Option<Vec<String>>,
    pub gids: Option<Vec<u32>>,
    pub groups: Option<Vec<String>>,
    /// Executable paths (globs), believed only when the file is the one the kernel saw.
    pub exes: Option<Vec<String>>,
    /// SHA-256 of the executable, hex.
    pub exe_sha256: Option<Vec<String>>,
    /// Audit login uids (who logged in, kept across su and sudo).
    pub auids: Option<Vec<u32>>,
    /// Container ids (globs) from the cgroup path.
    pub container_ids: Option<Vec<String>>,
    /// Not a selector: the subjects (globs) of worker tokens (`worker_auth = "oidc"`)
    /// this principal may present. A subject another entry lists is refused to every
    /// principal that does not list it too, so a token copied to another workload is
    /// of no use there.
    pub token_subjects: Option<Vec<String>>,
}

impl RawPrincipal {
    /// How many entries each selector lists (`None`: not set).
    fn selector_sizes(&self) -> [Option<usize>; 10] {
        let n = |l: &Option<Vec<String>>| l.as_ref().map(Vec::len);
        let m = |l: &Option<Vec<u32>>| l.as_ref().map(Vec::len);
        [
            n(&self.units),
            n(&self.cgroups),
            n(&self.users),
            n(&self.groups),
            n(&self.exes),
            n(&self.exe_sha256),
            n(&self.container_ids),
            m(&self.uids),
            m(&self.gids),
            m(&self.auids),
        ]
    }
}

/// The compiled `[[principals]]`, in config order.
#[derive(Debug, Clone, Default)]
pub struct Principals {
    entries: Vec<NamedPrincipal>,
}

/// One compiled entry.
#[derive(Debug, Clone)]
pub struct NamedPrincipal {
    raw: RawPrincipal,
}

/// Which entry named a connection, and for `principals explain`, why each before it did
/// not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    pub name: String,
    /// `(entry, first selector that failed)` for every entry tried before the match.
    pub misses: Vec<(String, String)>,
}

impl Principals {
    /// Validates `[[principals]]`; errors are (field, reason).
    pub fn compile(raw: Vec<RawPrincipal>) -> Result<Principals, (String, String)> {
        let mut entries: Vec<NamedPrincipal> = Vec::new();
        for (i, p) in raw.into_iter().enumerate() {
            let at = |f: &str| format!("principals[{i}].{f}");
            if p.name.is_empty()
                || !p
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
            {
                return Err((
                    at("name"),
                    format!(
                        "`{}` is not a principal name (letters, digits, - _ . @)",
                        p.name
                    ),
                ));
            }
            if p.name == UNKNOWN {
                return Err((
                    at("name"),
                    format!("`{UNKNOWN}` names connections no entry selects; choose another name"),
                ));
            }
            if entries.iter().any(|e| e.raw.name == p.name) {
                return Err((at("name"), format!("`{}` is named twice", p.name)));
            }
            if let Some(hashes) = &p.exe_sha256
                && let Some(bad) = hashes
                    .iter()
                    .find(|h| h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err((
                    at("exe_sha256"),
                    format!("`{bad}` is not a SHA-256 in hex (64 digits)"),
                ));
            }
            let sizes = p.selector_sizes();
            if sizes.contains(&Some(0)) {
                return Err((
                    at("name"),
                    format!(
                        "principal `{}` has an empty selector list, which nothing would match",
                        p.name
                    ),
                ));
            }
            if sizes.iter().all(Option::is_none) {
                return Err((
                    at("name"),
                    format!(
                        "principal `{}` has no selector: it would name every connection",
                        p.name
                    ),
                ));
            }
            entries.push(NamedPrincipal { raw: p });
        }
        Ok(Principals { entries })
    }

    /// No `[[principals]]` in the config: connections stay unnamed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.raw.name.as_str())
    }

    /// Names `who` (and fills in the facts the naming needed, e.g. the executable's
    /// hash). `None` when no principals are configured.
    pub fn name(&self, who: &mut Principal) -> Option<Naming> {
        if self.entries.is_empty() {
            return None;
        }
        let mut misses = Vec::new();
        for e in &self.entries {
            match e.mismatch(who) {
                None => {
                    who.name = Some(e.raw.name.clone());
                    return Some(Naming {
                        name: e.raw.name.clone(),
                        misses,
                    });
                }
                Some(why) => misses.push((e.raw.name.clone(), why)),
            }
        }
        who.name = Some(UNKNOWN.into());
        Some(Naming {
            name: UNKNOWN.into(),
            misses,
        })
    }
}

impl Principals {
    /// Whether the principal named `name` may present a token of `subject`: `Err` says
    /// why not.
    pub fn token_binding(&self, name: Option<&str>, subject: &str) -> Result<(), String> {
        let lists = |e: &NamedPrincipal| {
            e.raw
                .token_subjects
                .as_ref()
                .is_some_and(|l| l.iter().any(|p| glob::matches(p, subject)))
        };
        let own = self
            .entries
            .iter()
            .find(|e| Some(e.raw.name.as_str()) == name);
        let label = name.unwrap_or(UNKNOWN);
        if let Some(e) = own
            && e.raw.token_subjects.is_some()
        {
            return if lists(e) {
                Ok(())
            } else {
                Err(format!(
                    "principal \"{label}\" may not present a token of subject \"{subject}\""
                ))
            };
        }
        match self.entries.iter().find(|e| lists(e)) {
            Some(other) => Err(format!(
                "a token of subject \"{subject}\" belongs to principal \"{}\", not \"{label}\"",
                other.raw.name
            )),
            None => Ok(()),
        }
    }

    /// The facts `who` was judged on, every entry tried and the name it gets: what
    /// `pam-agent principals explain` prints.
    pub fn explain(&self, who: &mut Principal) -> (String, Option<Naming>) {
        use std::fmt::Write;
        // Shown so an operator can pin the binary with `exe_sha256`.
        if who.exe_sha256.is_none()
            && let (Some(path), Some(id)) = (who.exe.as_deref(), who.exe_id)
        {
            who.exe_sha256 = attest::exe_sha256(path, id);
        }
        let naming = self.name(who);
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let mut out = String::new();
        let _ = writeln!(
            out,
            "process:   pid {} comm {:?} uid {} ({}) gid {} ({}) auid {}",
            who.pid,
            who.comm,
            who.uid,
            opt(&who.user),
            who.gid,
            opt(&who.group),
            who.auid.map_or("unset".into(), |a| a.to_string()),
        );
        let _ = writeln!(
            out,
            "unit:      {} (invocation {})",
            opt(&who.unit),
            opt(&who.invocation_id)
        );
        let _ = writeln!(out, "cgroup:    {}", opt(&who.cgroup));
        let _ = writeln!(
            out,
            "exe:       {}{}",
            opt(&who.exe),
            who.exe_sha256
                .as_ref()
                .map(|h| format!(" (sha256 {h})"))
                .unwrap_or_default()
        );
        let _ = writeln!(out, "container: {}", opt(&who.container_id));
        match &naming {
            None => {
                let _ = writeln!(
                    out,
                    "principal: none (the config declares no [[principals]]; rules match the facts above)"
                );
            }
            Some(n) => {
                for (name, why) in &n.misses {
                    let _ = writeln!(out, "  principal {name:?}: no match: {why}");
                }
                if n.name == UNKNOWN {
                    let _ = writeln!(
                        out,
                        "principal: {UNKNOWN} (no entry selects it: only rules that list `{UNKNOWN}` allow it)"
                    );
                } else {
                    let _ = writeln!(out, "  principal {:?}: MATCH", n.name);
                    let _ = writeln!(out, "principal: {}", n.name);
                }
            }
        }
        (out, naming)
    }
}

impl NamedPrincipal {
    /// `None` when every selector holds, else the first that does not.
    fn mismatch(&self, who: &mut Principal) -> Option<String> {
        let p = &self.raw;
        fn globs(field: &str, pats: &Option<Vec<String>>, value: Option<&str>) -> Option<String> {
            let pats = pats.as_ref()?;
            match value {
                Some(v) if pats.iter().any(|p| glob::matches(p, v)) => None,
                Some(v) => Some(format!("{field} {v:?} not listed")),
                None => Some(format!("{field} unknown")),
            }
        }
        fn ids(field: &str, list: &Option<Vec<u32>>, value: Option<u32>) -> Option<String> {
            let list = list.as_ref()?;
            match value {
                Some(v) if list.contains(&v) => None,
                Some(v) => Some(format!("{field} {v} not listed")),
                None => Some(format!("{field} unknown")),
            }
        }
        let found = globs("unit", &p.units, who.unit.as_deref())
            .or_else(|| globs("cgroup", &p.cgroups, who.cgroup.as_deref()))
            .or_else(|| ids("uid", &p.uids, Some(who.uid).filter(|u| *u != u32::MAX)))
            .or_else(|| exact("user", &p.users, who.user.as_deref()))
            .or_else(|| ids("gid", &p.gids, Some(who.gid).filter(|g| *g != u32::MAX)))
            .or_else(|| exact("group", &p.groups, who.group.as_deref()))
            .or_else(|| ids("auid", &p.auids, who.auid))
            .or_else(|| {
                globs(
                    "container id",
                    &p.container_ids,
                    who.container_id.as_deref(),
                )
            })
            .or_else(|| globs("exe", &p.exes, who.exe.as_deref()));
        if found.is_some() {
            return found;
        }
        // Last: hashing a binary is the one selector that costs more than a comparison.
        let hashes = p.exe_sha256.as_ref()?;
        if who.exe_sha256.is_none()
            && let (Some(path), Some(id)) = (who.exe.as_deref(), who.exe_id)
        {
            who.exe_sha256 = attest::exe_sha256(path, id);
        }
        match &who.exe_sha256 {
            Some(h) if hashes.iter().any(|w| w.eq_ignore_ascii_case(h)) => None,
            Some(h) => Some(format!("exe sha256 {h} not listed")),
            None => Some("exe sha256 unknown".into()),
        }
    }
}

fn exact(field: &str, list: &Option<Vec<String>>, value: Option<&str>) -> Option<String> {
    let list = list.as_ref()?;
    match value {
        Some(v) if list.iter().any(|l| l == v) => None,
        Some(v) => Some(format!("{field} {v:?} not listed")),
        None => Some(format!("{field} unknown")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(name: &str) -> RawPrincipal {
        RawPrincipal {
            name: name.into(),
            ..Default::default()
        }
    }

    fn worker(uid: u32, unit: &str) -> Principal {
        Principal {
            uid,
            gid: 100,
            user: Some("crew".into()),
            unit: Some(unit.into()),
            cgroup: Some(format!("/crew.slice/{unit}")),
            ..Default::default()
        }
    }

    #[test]
    fn first_match_names_and_the_rest_are_unknown() {
        let ps = Principals::compile(vec![
            RawPrincipal {
                units: Some(vec!["orders-*.service".into()]),
                ..raw("orders")
            },
            RawPrincipal {
                uids: Some(vec![1000]),
                ..raw("uid-1000")
            },
        ])
        .unwrap();
        let mut a = worker(1000, "orders-1.service");
        assert_eq!(ps.name(&mut a).unwrap().name, "orders");
        assert_eq!(a.name.as_deref(), Some("orders"));
        // Same uid, another unit: another principal.
        let mut b = worker(1000, "billing-1.service");
        let n = ps.name(&mut b).unwrap();
        assert_eq!(n.name, "uid-1000");
        assert_eq!(
            n.misses,
            vec![(
                "orders".to_owned(),
                "unit \"billing-1.service\" not listed".to_owned()
            )]
        );
        let mut c = worker(1001, "billing-1.service");
        assert_eq!(ps.name(&mut c).unwrap().name, UNKNOWN);
        // No principals configured: nobody is named.
        let mut d = worker(1000, "orders-1.service");
        assert_eq!(Principals::default().name(&mut d), None);
        assert_eq!(d.name, None);
    }

    #[test]
    fn an_unknown_fact_satisfies_no_selector() {
        let ps = Principals::compile(vec![RawPrincipal {
            exes: Some(vec!["*".into()]),
            ..raw("any-exe")
        }])
        .unwrap();
        let mut w = worker(1000, "x.service");
        assert_eq!(w.exe, None);
        let n = ps.name(&mut w).unwrap();
        assert_eq!(n.name, UNKNOWN);
        assert_eq!(n.misses[0].1, "exe unknown");
    }

    #[test]
    fn bad_entries_are_refused_with_the_field() {
        let err = |p: RawPrincipal| Principals::compile(vec![p]).unwrap_err();
        assert_eq!(err(raw("x")).0, "principals[0].name");
        assert!(err(raw("x")).1.contains("no selector"));
        let unknown = RawPrincipal {
            uids: Some(vec![1]),
            ..raw(UNKNOWN)
        };
        assert!(err(unknown).1.contains("choose another name"));
        let hash = RawPrincipal {
            exe_sha256: Some(vec!["abc".into()]),
            ..raw("h")
        };
        assert_eq!(err(hash).0, "principals[0].exe_sha256");
        let empty = RawPrincipal {
            units: Some(vec![]),
            ..raw("e")
        };
        assert!(err(empty).1.contains("empty selector"));
        let twice = Principals::compile(vec![
            RawPrincipal {
                uids: Some(vec![1]),
                ..raw("a")
            },
            RawPrincipal {
                uids: Some(vec![2]),
                ..raw("a")
            },
        ])
        .unwrap_err();
        assert_eq!(twice.0, "principals[1].name");
    }
}
