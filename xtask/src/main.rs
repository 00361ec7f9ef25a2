//! Project tasks: `cargo xtask <task>`. One module per task.
//!
//! - `setup`: install what building and testing need, skipping what is there.
//! - `build`: build the agent (its build script builds the eBPF object).
//! - `test`: the whole suite (fmt, clippy, unit and end-to-end tests).
//! - `demo`: the main job, live: an unmodified worker against a real PostgreSQL through
//!   the agent.
//! - `bench`: measurements written to docs/benchmarks.md.
//! - `install`: install the daemon as a systemd service.

mod bench;
mod bench_approvals;
mod bench_journal;
mod bench_mask;
mod bench_pg;
mod demo;
mod install;
mod setup;
mod suite;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install prerequisites (apt packages, nightly rust-src, bpf-linker, Python clients).
    Setup,
    /// Build the agent and test binaries (debug, or --release).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run the whole test suite: fmt, clippy, unit tests, end-to-end tests (as root).
    Test,
    /// Set up a test host with PostgreSQL, run the agent, and run a worker through it.
    Demo,
    /// Run the benchmarks and write docs/benchmarks.md.
    Bench {
        /// Bytes for the bulk transfer (default 1 GiB).
        #[arg(long, default_value_t = 1 << 30)]
        bulk_bytes: u64,
        /// connect() calls per connect-latency run.
        #[arg(long, default_value_t = 10_000)]
        connects: usize,
        /// Seconds per pgbench run (8 points, four setups each).
        #[arg(long, default_value_t = 12)]
        pg_seconds: u32,
        /// Size of the large result read through masking (default 1 GiB).
        #[arg(long, default_value_t = 1 << 30)]
        mask_bytes: u64,
        /// Run only these parts (`redirect`, `postgres`, `masking`, `approvals`,
        /// `journal`); all by default.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Install the release build, the systemd unit and the default config.
    Install,
}

fn main() -> anyhow::Result<()> {
    let task = Cli::parse().task;
    // Before any thread starts: every task's children find the Python clients' own
    // environment first (setup creates it).
    setup::use_venv();
    match task {
        Task::Setup => setup::run(),
        Task::Build { release } => {
            setup::run()?;
            util::build(release)
        }
        Task::Test => {
            setup::run()?;
            util::test()
        }
        Task::Demo => {
            setup::run()?;
            util::build(false)?;
            demo::run()
        }
        Task::Bench {
            bulk_bytes,
            connects,
            pg_seconds,
            mask_bytes,
            only,
        } => {
            setup::run()?;
            util::build(true)?;
            let wanted = |part: &str| only.is_empty() || only.iter().any(|o| o == part);
            if wanted("redirect") || wanted("postgres") {
                bench::run(bench::Options {
                    bulk_bytes,
                    connects,
                    pg_seconds,
                    redirect: wanted("redirect"),
                    postgres: wanted("postgres"),
                })?;
            }
            if wanted("masking") {
                bench_mask::run(mask_bytes)?;
            }
            if wanted("approvals") {
                bench_approvals::run()?;
            }
            if wanted("journal") {
                bench_journal::run()?;
            }
            Ok(())
        }
        Task::Install => {
            setup::run()?;
            util::build(true)?;
            install::run()
        }
    }
}
