//! Where a START_FILE_COPY may write, decided from the names alone, before anything is opened: the
//! directory the host named must be an allowed directory or beneath one, written as an absolute path with
//! no `..`; the file name must be one plain name. What the names point to on disk (symlinks, device files,
//! missing directories) is for the edge to find out, beneath the allowed directory it is handed.
//!
//! Paths are guest paths, '/'-separated whatever the platform this crate is built for; they are compared
//! component by component, so `/srv/in` does not allow `/srv/inbox`.

use std::fmt;

/// What a START asks for, resolved beneath an allowed directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The allowed directory, as configured (absolute).
    pub base: String,
    /// The directories below `base` to the file's directory, each one plain name.
    pub dirs: Vec<String>,
    /// The file's name in that directory.
    pub name: String,
    /// Directories that are missing may be made (CREATE_PATH).
    pub create_path: bool,
    /// The size START announced.
    pub size: u64,
    /// The mode the file is created with (`file_mode`).
    pub mode: u32,
}

impl Target {
    /// The whole path, for logs.
    pub fn path(&self) -> String {
        let mut path = self.base.trim_end_matches('/').to_string();
        for part in self.dirs.iter().chain(std::iter::once(&self.name)) {
            path.push('/');
            path.push_str(part);
        }
        path
    }
}

/// Why the names of a START are refused before anything is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameRefusal {
    /// A `..` component, in the path or as the file name.
    Traversal(String),
    /// An absolute path that is not beneath any allowed directory, or a relative one.
    Outside(String),
    /// A file name that is empty, `.`, or holds a '/' or a NUL.
    BadName(String),
}

impl fmt::Display for NameRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameRefusal::Traversal(path) => write!(f, "{path:?} climbs out with '..'"),
            NameRefusal::Outside(path) => {
                write!(f, "{path:?} is not beneath any of allowed_dirs")
            }
            NameRefusal::BadName(name) => write!(
                f,
                "{name:?} is not one plain file name (empty, '.', or holding '/' or NUL)"
            ),
        }
    }
}

/// The components of an absolute guest path: `.` and empty ones dropped, `..` kept for the caller to
/// refuse. None for a relative path.
fn components(path: &str) -> Option<Vec<&str>> {
    path.starts_with('/').then(|| {
        path.split('/')
            .filter(|part| !part.is_empty() && *part != ".")
            .collect()
    })
}

/// Resolves `dir` (the host's path name) and `name` beneath the first of `allowed` that holds it; the
/// longest match wins, so a directory allowed inside another is its own base.
pub fn resolve(
    allowed: &[String],
    dir: &str,
    name: &str,
) -> Result<(String, Vec<String>, String), NameRefusal> {
    if name == ".." {
        return Err(NameRefusal::Traversal(format!("{dir}/{name}")));
    }
    if name.is_empty() || name == "." || name.contains('/') || name.contains('\0') {
        return Err(NameRefusal::BadName(name.to_string()));
    }
    let Some(parts) = components(dir) else {
        return Err(NameRefusal::Outside(dir.to_string()));
    };
    if parts.contains(&"..") {
        return Err(NameRefusal::Traversal(dir.to_string()));
    }
    let best = allowed
        .iter()
        .filter_map(|base| {
            let base_parts = components(base)?;
            parts
                .starts_with(&base_parts)
                .then_some((base, base_parts.len()))
        })
        .max_by_key(|(_, len)| *len);
    let Some((base, len)) = best else {
        return Err(NameRefusal::Outside(dir.to_string()));
    };
    let below = parts[len..].iter().map(|part| part.to_string()).collect();
    Ok((base.clone(), below, name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        vec!["/srv/in".to_string(), "/srv/in/deep/own/".to_string()]
    }

    #[test]
    fn a_directory_beneath_an_allowed_one_resolves_to_its_components() {
        assert_eq!(
            resolve(&allowed(), "/srv/in/a//./b/", "f.txt"),
            Ok((
                "/srv/in".to_string(),
                vec!["a".to_string(), "b".to_string()],
                "f.txt".to_string()
            ))
        );
        assert_eq!(
            resolve(&allowed(), "/srv/in", "f"),
            Ok(("/srv/in".to_string(), vec![], "f".to_string()))
        );
        // The longest allowed directory is the base.
        assert_eq!(
            resolve(&allowed(), "/srv/in/deep/own/x", "f").unwrap().0,
            "/srv/in/deep/own/"
        );
    }

    #[test]
    fn dot_dot_is_refused_even_where_it_would_stay_inside() {
        for dir in ["/srv/in/../etc", "/srv/in/a/..", "/srv/../srv/in"] {
            assert!(
                matches!(
                    resolve(&allowed(), dir, "f"),
                    Err(NameRefusal::Traversal(_))
                ),
                "{dir}"
            );
        }
        assert!(matches!(
            resolve(&allowed(), "/srv/in", ".."),
            Err(NameRefusal::Traversal(_))
        ));
    }

    #[test]
    fn paths_outside_and_relative_paths_are_refused() {
        for dir in ["/etc", "/srv/inbox", "/srv", "/", "srv/in", "", "C:\\Temp"] {
            assert!(
                matches!(resolve(&allowed(), dir, "f"), Err(NameRefusal::Outside(_))),
                "{dir}"
            );
        }
        assert!(resolve(&[], "/srv/in", "f").is_err());
    }

    #[test]
    fn a_file_name_must_be_one_plain_name() {
        for name in ["", ".", "a/b", "/etc/passwd", "a\0b"] {
            assert!(
                matches!(
                    resolve(&allowed(), "/srv/in", name),
                    Err(NameRefusal::BadName(_))
                ),
                "{name:?}"
            );
        }
    }

    #[test]
    fn the_path_for_logs_joins_base_dirs_and_name() {
        let target = Target {
            base: "/srv/in/".to_string(),
            dirs: vec!["a".to_string()],
            name: "f".to_string(),
            create_path: false,
            size: 0,
            mode: 0o640,
        };
        assert_eq!(target.path(), "/srv/in/a/f");
    }
}
