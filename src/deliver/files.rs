//! Messages written as files, for the transports that deliver to a folder: email as `.eml`,
//! `log` channels as `.json`.

use std::path::Path;

use super::retry::Verdict;

/// Writes one message as the file `name` in `dir`, through a temporary file and a rename, so
/// that a crash never leaves half a message and a resend replaces rather than duplicates it. A
/// failure to write is worth a retry.
pub(super) async fn write_message_file(dir: &Path, name: &str, bytes: &[u8]) -> Verdict {
    match write_atomically(dir, name, bytes).await {
        Ok(()) => Verdict::Sent { result: None },
        Err(error) => Verdict::Retry {
            reason: format!("cannot write {name} in {}: {error}", dir.display()),
            after: None,
        },
    }
}

async fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    let temporary = dir.join(format!(".{name}.tmp"));
    tokio::fs::write(&temporary, bytes).await?;
    tokio::fs::rename(&temporary, dir.join(name)).await
}
