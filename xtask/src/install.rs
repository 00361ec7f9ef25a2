//! `cargo xtask install`: runs deploy/install.sh with the release binary.

use std::process::Command;

use crate::util;

pub fn run() -> anyhow::Result<()> {
    let root = util::root();
    util::run(
        Command::new("sh")
            .arg(root.join("deploy/install.sh"))
            .arg(util::bin_dir(true).join("pam-agent")),
    )
}
