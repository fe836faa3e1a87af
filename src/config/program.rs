//! The program of a configured command, made absolute once at load: a name without a '/' is looked up in
//! PATH then, so what runs later does not depend on PATH or the working directory at the time; a relative
//! path with a '/' is refused.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The PATH used when the agent's environment has none: systemd's default for system services.
pub const DEFAULT_SEARCH_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The agent's PATH, or [`DEFAULT_SEARCH_PATH`] when it has none.
pub fn search_path() -> OsString {
    std::env::var_os("PATH")
        .filter(|path| !path.is_empty())
        .unwrap_or_else(|| DEFAULT_SEARCH_PATH.into())
}

/// Why a program cannot be made absolute.
#[derive(Debug, PartialEq, Eq)]
pub enum ProgramError {
    /// `./x` or `bin/x`: it would depend on the working directory.
    Relative(String),
    /// No executable file of that name in any absolute directory of PATH.
    NotFound { program: String, path: String },
}

impl ProgramError {
    /// The message for `key`, a sentence saying what to write instead.
    pub fn message(&self, key: &str) -> String {
        match self {
            ProgramError::Relative(program) => format!(
                "key '{key}': program '{program}' is a relative path; give an absolute path, or a name without \
                 '/' to look up in PATH"
            ),
            ProgramError::NotFound { program, path } => format!(
                "key '{key}': program '{program}' is not in PATH ({path}); install it or give its absolute path"
            ),
        }
    }
}

/// `program` as an absolute path: itself when absolute, else the first executable file of that name in
/// the absolute directories of `path` (empty and relative entries, which mean the working directory, are
/// skipped).
pub fn resolve(program: &str, path: &OsStr) -> Result<String, ProgramError> {
    if program.starts_with('/') {
        return Ok(program.to_string());
    }
    if program.contains('/') {
        return Err(ProgramError::Relative(program.to_string()));
    }
    std::env::split_paths(path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .and_then(|found| found.to_str().map(str::to_string))
        .ok_or_else(|| ProgramError::NotFound {
            program: program.to_string(),
            path: path.to_string_lossy().into_owned(),
        })
}

fn is_executable(candidate: &Path) -> bool {
    std::fs::metadata(candidate)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// `argv` with its program made absolute.
pub fn resolve_argv(argv: &mut [String], path: &OsStr) -> Result<(), ProgramError> {
    if let Some(program) = argv.first_mut() {
        *program = resolve(program, path)?;
    }
    Ok(())
}

/// Whether `argv` is the built-in command `builtin` (a bare program name and its arguments), as written or
/// with its program made absolute: `systemctl reboot` and `/usr/bin/systemctl reboot` both are. Such a
/// command may name a program that is missing (a guest without systemd), so it is not refused at load.
pub fn is_builtin(argv: &[String], builtin: &[String]) -> bool {
    let (Some((program, args)), Some((name, builtin_args))) =
        (argv.split_first(), builtin.split_first())
    else {
        return false;
    };
    let in_a_directory = |dir: &str| dir.starts_with('/') && dir.ends_with('/');
    args == builtin_args
        && (program == name
            || program
                .strip_suffix(name.as_str())
                .is_some_and(in_a_directory))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(programs: &[(&str, u32)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, mode) in programs {
            let file = dir.path().join(name);
            std::fs::write(&file, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        dir
    }

    #[test]
    fn a_name_is_looked_up_in_path_in_order_skipping_files_that_cannot_run() {
        let first = dir_with(&[("tool", 0o644)]);
        let second = dir_with(&[("tool", 0o755)]);
        let third = dir_with(&[("tool", 0o755)]);
        let path = std::env::join_paths([first.path(), second.path(), third.path()]).unwrap();
        let found = resolve("tool", &path).unwrap();
        assert_eq!(Path::new(&found), second.path().join("tool"));
    }

    #[test]
    fn relative_path_entries_are_never_searched() {
        let path = OsString::from(":.:bin");
        assert!(matches!(
            resolve("sh", &path),
            Err(ProgramError::NotFound { .. })
        ));
    }

    #[test]
    fn absolute_paths_are_kept_and_relative_ones_refused() {
        let path = OsString::from("/nonexistent");
        assert_eq!(resolve("/opt/x/check", &path).unwrap(), "/opt/x/check");
        let error = resolve("./check", &path).unwrap_err();
        assert_eq!(error, ProgramError::Relative("./check".into()));
        assert!(error.message("k").contains("relative path"), "{error:?}");
        assert!(resolve("bin/check", &path).is_err());
    }

    #[test]
    fn a_builtin_command_is_itself_by_name_or_absolute_path_only() {
        let builtin = ["systemctl".to_string(), "reboot".to_string()];
        let argv = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        assert!(is_builtin(&argv(&["systemctl", "reboot"]), &builtin));
        assert!(is_builtin(
            &argv(&["/usr/bin/systemctl", "reboot"]),
            &builtin
        ));
        assert!(!is_builtin(&argv(&["./systemctl", "reboot"]), &builtin));
        assert!(!is_builtin(
            &argv(&["/usr/bin/mysystemctl", "reboot"]),
            &builtin
        ));
        assert!(!is_builtin(
            &argv(&["systemctl", "reboot", "--now"]),
            &builtin
        ));
        assert!(!is_builtin(&argv(&["systemctl", "poweroff"]), &builtin));
        assert!(!is_builtin(&argv(&["true"]), &[]));
    }

    #[test]
    fn a_missing_program_names_the_key_the_program_and_the_path_searched() {
        let empty = dir_with(&[]);
        let path = empty.path().as_os_str();
        let message = resolve("no-such-tool", path)
            .unwrap_err()
            .message("heartbeat.health_command");
        assert!(message.contains("heartbeat.health_command"), "{message}");
        assert!(message.contains("'no-such-tool'"), "{message}");
        assert!(
            message.contains(&empty.path().display().to_string()),
            "{message}"
        );
    }
}
