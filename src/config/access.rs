//! Who may have written the config file: root or the agent's own user, and no one else (not group- or
//! world-writable). The file names the commands the agent runs, so a file another user could change is
//! refused before anything in it is used.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Why a file owned by `owner` with `mode` may not configure an agent running as `own_uid`, with the fix.
pub fn refusal(path: &Path, owner: u32, mode: u32, own_uid: u32) -> Option<String> {
    let shown = path.display();
    if owner != 0 && owner != own_uid {
        return Some(format!(
            "is owned by uid {owner}, neither root nor the agent's user (uid {own_uid}), so that user could \
             change the commands the agent runs; run: chown root: {shown}"
        ));
    }
    if mode & 0o022 != 0 {
        return Some(format!(
            "is writable by {} (mode {:03o}), so others could change the commands the agent runs; run: \
             chmod go-w {shown}",
            if mode & 0o002 != 0 { "everyone" } else { "its group" },
            mode & 0o777
        ));
    }
    None
}

/// [`refusal`] for the file as it is on disk.
pub fn check(path: &Path, metadata: &std::fs::Metadata) -> Option<String> {
    refusal(
        path,
        metadata.uid(),
        metadata.mode(),
        hvtransport::peer::own_uid(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_or_the_agents_own_file_writable_only_by_its_owner_is_accepted() {
        let path = Path::new("/etc/hvagent/hvagent.toml");
        assert_eq!(refusal(path, 0, 0o644, 998), None);
        assert_eq!(refusal(path, 998, 0o600, 998), None);
        let other = refusal(path, 1000, 0o644, 998).unwrap();
        assert!(
            other.contains("uid 1000") && other.contains("chown root:"),
            "{other}"
        );
        let group = refusal(path, 0, 0o664, 0).unwrap();
        assert!(
            group.contains("its group") && group.contains("chmod go-w"),
            "{group}"
        );
        let world = refusal(path, 0, 0o646, 0).unwrap();
        assert!(
            world.contains("everyone") && world.contains("646"),
            "{world}"
        );
    }
}
