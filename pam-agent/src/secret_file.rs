//! Files holding private keys (the journal's signing key, the agent CA's key): created
//! once and never replaced, readable by the agent's user only, checked before use.

use std::{
    fs::{self, Metadata, OpenOptions},
    io::Write,
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    #[error("{path} is readable by group or others (mode {mode:o}); it must be 0600")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path} belongs to uid {owner}, not to the agent (uid {me})")]
    NotOwner { path: PathBuf, owner: u32, me: u32 },
}

/// Refuses a key file others could read, or that another user could have written.
pub fn check_private(path: &Path, meta: &Metadata) -> Result<(), PrivateFileError> {
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PrivateFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(PrivateFileError::NotOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    Ok(())
}

/// Writes a new file with `mode` (its directory, if missing, 0700), synced to disk.
/// `create_new`: an existing file (a key someone trusts, or one another agent just
/// created) is never replaced.
pub fn write_new(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(dir)?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(data)?;
    file.sync_all()
}
