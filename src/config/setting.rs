//! What one row of the table of keys is, and how a table of them reads a section, checks it, prints it and
//! describes it. The rows themselves are in `keys.rs`: each key's name, what it takes, how it is read and
//! printed (its default is what it prints for the built-in settings) and what it does, written once.

use std::ffi::OsStr;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::program::{self, ProgramError};
use super::values::{self, Seconds};

/// A rule across the keys of a section, given the section's settings and the keys it gave.
pub type Check<T> = fn(&T, &Given) -> Result<(), String>;

/// One key of the file, read into and printed from a `T`.
pub struct Setting<T: 'static> {
    pub name: &'static str,
    /// What it does, in one sentence.
    pub doc: &'static str,
    parser: Parser<T>,
    /// A rule across keys, run after the whole section was read when this key was given, and reported at it.
    check: Option<Check<T>>,
    /// What the docs give as the default where the sections' defaults differ.
    default_doc: Option<&'static str>,
    /// A comment the printed config adds after the value.
    note: Option<fn(&T) -> Option<String>>,
}

/// How a key's value is read and printed.
pub enum Parser<T: 'static> {
    Seconds {
        range: Seconds,
        get: fn(&T) -> Duration,
        set: fn(&mut T, Duration),
    },
    /// A command (argv, or a line split at whitespace); its program is made absolute once the file is
    /// read, and the printed config leaves an empty one out.
    Command {
        get: fn(&T) -> &[String],
        set: fn(&mut T, Vec<String>),
    },
    /// An absolute path; `hint` follows the refusal of a relative one.
    Path {
        hint: &'static str,
        get: fn(&T) -> &Path,
        set: fn(&mut T, PathBuf),
    },
    /// Anything else: `takes` says what is accepted, `show` prints it (None: left out).
    Other {
        takes: fn() -> String,
        read: fn(&mut T, &toml::Value) -> Result<(), String>,
        show: fn(&T) -> Option<String>,
    },
}

impl<T: 'static> Setting<T> {
    pub const fn new(name: &'static str, doc: &'static str, parser: Parser<T>) -> Setting<T> {
        Setting {
            name,
            doc,
            parser,
            check: None,
            default_doc: None,
            note: None,
        }
    }

    pub const fn checked(self, check: Check<T>) -> Setting<T> {
        Setting {
            check: Some(check),
            ..self
        }
    }

    pub const fn default_doc(self, default_doc: &'static str) -> Setting<T> {
        Setting {
            default_doc: Some(default_doc),
            ..self
        }
    }

    pub const fn noted(self, note: fn(&T) -> Option<String>) -> Setting<T> {
        Setting {
            note: Some(note),
            ..self
        }
    }

    /// What the key accepts, as the docs say it.
    pub fn takes(&self) -> String {
        match &self.parser {
            Parser::Seconds { range, .. } => range.describe(),
            Parser::Command { .. } => "a command: an array, or a line split at spaces".to_string(),
            Parser::Path { .. } => "an absolute path".to_string(),
            Parser::Other { takes, .. } => takes(),
        }
    }

    fn read(&self, target: &mut T, value: &toml::Value) -> Result<(), String> {
        match &self.parser {
            Parser::Seconds { range, set, .. } => set(target, range.read(value)?),
            Parser::Command { set, .. } => set(target, values::command(value)?),
            Parser::Path { hint, set, .. } => set(target, values::absolute_path(value, hint)?),
            Parser::Other { read, .. } => read(target, value)?,
        }
        Ok(())
    }

    /// The value as the printed config writes it; None when it is left out.
    pub fn show(&self, target: &T) -> Option<String> {
        match &self.parser {
            Parser::Seconds { get, .. } => Some(values::seconds_text(get(target))),
            Parser::Command { get, .. } => Some(get(target))
                .filter(|argv| !argv.is_empty())
                .map(values::toml_argv),
            Parser::Path { get, .. } => {
                Some(values::toml_string(&get(target).display().to_string()))
            }
            Parser::Other { show, .. } => show(target),
        }
    }
}

/// The keys a section gave, with the spans of their values.
#[derive(Default)]
pub struct Given(Vec<(&'static str, Range<usize>)>);

impl Given {
    pub fn has(&self, name: &str) -> bool {
        self.span(name).is_some()
    }

    pub fn span(&self, name: &str) -> Option<Range<usize>> {
        self.0
            .iter()
            .find(|(given, _)| *given == name)
            .map(|(_, span)| span.clone())
    }

    pub fn push(&mut self, name: &'static str, span: Range<usize>) {
        self.0.push((name, span));
    }
}

/// A type whose fields some keys of the file set.
pub trait Table: Sized + 'static {
    /// Its keys, in the order the printed config and the docs show them.
    fn settings() -> &'static [Setting<Self>];
    /// The built-in values: one for each section these keys are read into.
    fn defaults() -> Vec<Self>;
}

/// A key as the docs show it.
pub struct KeyDoc {
    pub name: &'static str,
    pub takes: String,
    /// As the printed config writes it; None where there is none.
    pub default: Option<String>,
    pub doc: &'static str,
}

/// What a table does with its type, whichever type it is (so each service's settings can be handled
/// through one `&dyn Keys`).
pub trait Keys {
    /// Reads `value` when `name` is one of these keys: the key's own name and whether the value was fine.
    fn read_key(
        &mut self,
        name: &str,
        value: &toml::Value,
    ) -> Option<(&'static str, Result<(), String>)>;
    /// The rules across keys of the keys `given`; a broken one as the key to report it at and why.
    fn check_keys(&self, given: &Given) -> Result<(), (&'static str, String)>;
    /// The keys as `name = value` lines of the printed config.
    fn write_keys(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
    fn names(&self) -> Vec<&'static str>;
    fn docs(&self) -> Vec<KeyDoc>;
    /// Makes the programs of the commands `given` absolute, searching `path`; a command that is its key's
    /// built-in one is left for [`Keys::resolve_builtin_programs`].
    fn resolve_programs(
        &mut self,
        given: &Given,
        path: &OsStr,
    ) -> Result<(), (&'static str, ProgramError)>;
    /// Makes the programs still named bare (the built-in commands: the file's own are absolute once
    /// parsed) absolute where `path` has them; where it has none the name stays, which is no error (the
    /// shutdown's reboot(2) fallback needs no program).
    fn resolve_builtin_programs(&mut self, path: &OsStr);
}

impl<T: Table> Keys for T {
    fn read_key(
        &mut self,
        name: &str,
        value: &toml::Value,
    ) -> Option<(&'static str, Result<(), String>)> {
        let setting = T::settings().iter().find(|setting| setting.name == name)?;
        Some((setting.name, setting.read(self, value)))
    }

    fn check_keys(&self, given: &Given) -> Result<(), (&'static str, String)> {
        for setting in T::settings()
            .iter()
            .filter(|setting| given.has(setting.name))
        {
            if let Some(check) = setting.check {
                check(self, given).map_err(|why| (setting.name, why))?;
            }
        }
        Ok(())
    }

    fn write_keys(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for setting in T::settings() {
            let Some(value) = setting.show(self) else {
                continue;
            };
            write!(f, "{} = {value}", setting.name)?;
            match setting.note.and_then(|note| note(self)) {
                Some(note) => writeln!(f, "  # {note}")?,
                None => writeln!(f)?,
            }
        }
        Ok(())
    }

    fn names(&self) -> Vec<&'static str> {
        names_of::<T>()
    }

    fn docs(&self) -> Vec<KeyDoc> {
        docs_of::<T>()
    }

    fn resolve_programs(
        &mut self,
        given: &Given,
        path: &OsStr,
    ) -> Result<(), (&'static str, ProgramError)> {
        let builtin = T::defaults();
        for setting in T::settings()
            .iter()
            .filter(|setting| given.has(setting.name))
        {
            let Parser::Command { get, set } = &setting.parser else {
                continue;
            };
            let mut argv = get(self).to_vec();
            if builtin
                .iter()
                .any(|values| program::is_builtin(&argv, get(values)))
            {
                continue;
            }
            program::resolve_argv(&mut argv, path).map_err(|error| (setting.name, error))?;
            set(self, argv);
        }
        Ok(())
    }

    fn resolve_builtin_programs(&mut self, path: &OsStr) {
        for setting in T::settings() {
            let Parser::Command { get, set } = &setting.parser else {
                continue;
            };
            let mut argv = get(self).to_vec();
            let bare = argv.first().is_some_and(|program| !program.contains('/'));
            if bare && program::resolve_argv(&mut argv, path).is_ok() {
                set(self, argv);
            }
        }
    }
}

/// The names of `T`'s keys.
pub fn names_of<T: Table>() -> Vec<&'static str> {
    T::settings().iter().map(|setting| setting.name).collect()
}

/// `T`'s keys as the docs show them; a key's default is what it prints for the built-in values.
pub fn docs_of<T: Table>() -> Vec<KeyDoc> {
    let defaults = T::defaults();
    T::settings()
        .iter()
        .map(|setting| {
            let mut shown: Vec<Option<String>> =
                defaults.iter().map(|value| setting.show(value)).collect();
            shown.dedup();
            let default = match (setting.default_doc, shown.as_slice()) {
                (Some(text), _) => Some(text.to_string()),
                (None, [one]) => one.clone(),
                // A test keeps every key whose sections differ documented by default_doc.
                (None, _) => None,
            };
            KeyDoc {
                name: setting.name,
                takes: setting.takes(),
                default,
                doc: setting.doc,
            }
        })
        .collect()
}
