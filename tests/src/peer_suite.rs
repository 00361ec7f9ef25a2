//! A peer's own test suite as the judge of wire fidelity (issue 14): the suite runs
//! directly and from a governed cgroup through the agent, and the two runs must pass and
//! skip the same tests. The runners (`tests/clients/*_suite.py`) print one JSON object
//! as their last line: test id -> [outcome, why].

use std::{collections::BTreeMap, process::Command, time::Duration};

use crate::{Agent, Cgroup, ResourceSpec, TestHost, agent_bin, output_within, postgres::PgServer};

/// The database password of a suite's server.
pub const PASSWORD: &str = "pg-suite-password";

/// Every statement allowed: what a suite compares is the wire, not the policy.
const ALLOW_ALL: &str = "[policy]\ndefault = \"allow\"\n";

/// What a suite runs against: a PostgreSQL 15 on a test host at port 5432 (user
/// `postgres`, [`PASSWORD`]) and an agent governing `cg` that allows every statement.
pub struct Stage {
    // Field order is drop order: the agent and database go before the test host.
    pub agent: Agent,
    pub cg: Cgroup,
    _pg: PgServer,
    pub host: TestHost,
}

impl Stage {
    /// `tag` names the governed cgroup.
    pub fn start(tag: &str) -> Stage {
        let host = TestHost::new().expect("test host");
        let pg = PgServer::start(&host, 5432, PASSWORD).expect("postgres");
        let cg = Cgroup::new(tag).expect("cgroup");
        let agent = Agent::start_with_journal(
            &[&cg],
            &[ResourceSpec::postgres("suite-db", host.v4, 5432)],
            "fsync = false",
            ALLOW_ALL,
        )
        .expect("agent");
        Stage {
            agent,
            cg,
            _pg: pg,
            host,
        }
    }

    /// [`assert_same_through_agent`] on this stage.
    pub fn assert_same(
        &self,
        expect: Expect,
        run: impl Fn(&TestHost, Option<&Cgroup>, &[String]) -> Outcomes,
    ) {
        assert_same_through_agent(&self.agent, &self.cg, expect, |through, only| {
            run(&self.host, through, only)
        });
    }
}

/// A run's outcome per test id: (pass|fail|error|skip|xfail|xpass, why).
pub type Outcomes = BTreeMap<String, (String, String)>;

/// `python3 args...`, directly or `through` the agent (from the governed cgroup).
pub fn python(through: Option<&Cgroup>) -> Command {
    match through {
        Some(cg) => {
            let mut c = Command::new(agent_bin());
            c.args(["exec", "--cgroup"])
                .arg(&cg.path)
                .args(["--", "python3"]);
            c
        }
        None => Command::new("python3"),
    }
}

/// Runs a suite runner to its end (10 minutes at most) and reads its outcomes.
pub fn outcomes(cmd: &mut Command) -> Outcomes {
    let out = output_within(cmd, Duration::from_secs(600));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    let json = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("the suite printed no result:\n{tail}"));
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}\n{tail}"))
}

/// Runs again (with `run`) the tests that passed in `other` and not in `mine`, and takes
/// their new outcomes; returns those that passed now. Ids with a space (parametrised
/// subtests some runners cannot name alone) are not run again.
pub fn retry(
    run: impl FnOnce(&[String]) -> Outcomes,
    mine: &mut Outcomes,
    other: &Outcomes,
) -> Vec<String> {
    let again: Vec<String> = other
        .iter()
        .filter(|(test, (outcome, _))| {
            outcome == "pass"
                && mine.get(*test).is_some_and(|(o, _)| o != "pass")
                && !test.contains(' ')
        })
        .map(|(test, _)| test.clone())
        .collect();
    if again.is_empty() {
        return Vec::new();
    }
    let mut passed = Vec::new();
    for (test, result) in run(&again) {
        if result.0 == "pass" {
            passed.push(test.clone());
        }
        mine.insert(test, result);
    }
    passed
}

/// Tests that passed one way and not the other, or were skipped one way and not the
/// other, each with both outcomes.
pub fn differences(direct: &Outcomes, proxied: &Outcomes) -> Vec<String> {
    let none = ("missing".to_string(), String::new());
    let mut out = Vec::new();
    for test in direct
        .keys()
        .chain(proxied.keys().filter(|t| !direct.contains_key(*t)))
    {
        let (ours, why) = direct.get(test).unwrap_or(&none);
        let (theirs, their_why) = proxied.get(test).unwrap_or(&none);
        if ["pass", "skip"]
            .iter()
            .any(|o| (ours == o) != (theirs == o))
        {
            out.push(format!(
                "{test}: directly {ours} {why:?}, through the agent {theirs} {their_why:?}"
            ));
        }
    }
    out
}

/// How many tests ended `what`.
pub fn count(o: &Outcomes, what: &str) -> usize {
    o.values().filter(|(outcome, _)| outcome == what).count()
}

/// What a comparison must see before it counts: the suite really ran, and really went
/// through the agent.
pub struct Expect {
    pub name: &'static str,
    pub min_passed: usize,
    pub min_sessions: usize,
}

/// Runs the suite directly and through the agent (`run(through, only)`), gives a test
/// that passed one way and not the other two more tries the way it did not pass (a
/// few peer tests are timing-dependent), and asserts both runs pass and skip the same
/// tests, printing the agent's refusals with any difference.
pub fn assert_same_through_agent(
    agent: &crate::Agent,
    cg: &Cgroup,
    expect: Expect,
    run: impl Fn(Option<&Cgroup>, &[String]) -> Outcomes,
) {
    let mut direct = run(None, &[]);
    let mut proxied = run(Some(cg), &[]);
    let mut flaky = Vec::new();
    for _ in 0..2 {
        flaky.extend(retry(|only| run(Some(cg), only), &mut proxied, &direct));
        flaky.extend(retry(|only| run(None, only), &mut direct, &proxied));
    }
    let name = expect.name;
    assert!(
        count(&direct, "pass") >= expect.min_passed,
        "{name}: the direct run passed only {} tests",
        count(&direct, "pass")
    );
    let journal = agent.journal();
    let sessions = journal
        .iter()
        .filter(|r| r["kind"] == "session_opened")
        .count();
    assert!(
        sessions >= expect.min_sessions,
        "{name}: only {sessions} sessions went through the agent"
    );
    let differences = differences(&direct, &proxied);
    let refused: Vec<String> = journal
        .iter()
        .filter(|r| r["kind"] == "statement" && r["decision"] != "allow")
        .map(|r| format!("{} {} {}", r["rule"], r["reason"], r["text"]))
        .collect();
    eprintln!(
        "{name}: directly {} passed, {} skipped, {} failed/errored; through the agent \
         {} passed ({sessions} sessions, {} refusals); passed on a retry: {flaky:?}",
        count(&direct, "pass"),
        count(&direct, "skip"),
        count(&direct, "fail") + count(&direct, "error"),
        count(&proxied, "pass"),
        refused.len()
    );
    assert!(
        differences.is_empty(),
        "{name}: {} tests end differently through the agent:\n{}\nrefused:\n{}",
        differences.len(),
        differences.join("\n"),
        refused.join("\n")
    );
}
