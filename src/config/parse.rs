//! The file's text to a [`Config`]: TOML read with the span of every key and value, each key read by its
//! row of the table (`keys.rs`), a key of another section refused naming the section it belongs in, and
//! then, the file read, the programs of its commands made absolute (the one step that looks at the
//! system). Every error names the file, line, column and key.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use toml::Spanned;

use super::keys::{self, Place};
use super::setting::{Given, Keys};
use super::{program, Config, ConfigError, ServiceConfig, SERVICES};
use hvproto::service::ServiceKind;

/// Parses and validates the text of a config file; `path` is only used in messages.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let located = |span: Range<usize>, message: String| {
        let (line, column) = line_and_column(text, span.start);
        ConfigError::Invalid {
            path: path.to_path_buf(),
            line,
            column,
            message,
        }
    };
    let document: Document = toml::from_str(text).map_err(|error| {
        let span = error.span().unwrap_or(0..0);
        let message = error.message().trim_end().replace('\n', " ");
        match key_at(text, span.start) {
            Some(key) => located(span, format!("key '{key}': {message}")),
            None => located(span, message),
        }
    })?;
    let mut config = Config::default();
    read(&document, &mut config, &program::search_path())
        .map_err(|error| located(error.span, error.message))?;
    Ok(config)
}

/// A validation failure at a byte span of the file.
struct SpanError {
    span: Range<usize>,
    message: String,
}

/// A key and its value as written, each with its span.
struct Entry {
    key: Spanned<String>,
    value: Spanned<toml::Value>,
}

/// The file as written: the top-level keys, and each service's section with its keys, in file order.
struct Document {
    top: Vec<Entry>,
    sections: Vec<(ServiceKind, Vec<Entry>)>,
}

fn read(
    document: &Document,
    config: &mut Config,
    search_path: &std::ffi::OsStr,
) -> Result<(), SpanError> {
    read_top(config, &document.top)?;
    for (kind, entries) in &document.sections {
        let service = config
            .services
            .iter_mut()
            .find(|service| service.kind() == *kind)
            .expect("the default config has every service a section can name");
        let given = read_section(service, entries)?;
        if service.enabled {
            if let Some((key, why)) = service.settings.unusable() {
                return Err(SpanError {
                    span: given.span(key).unwrap_or_default(),
                    message: format!("key '{}': {why}", dotted(Some(*kind), key)),
                });
            }
        }
        service
            .settings
            .keys_mut()
            .resolve_programs(&given, search_path)
            .map_err(|(key, error)| SpanError {
                span: given.span(key).unwrap_or_default(),
                message: error.message(&dotted(Some(*kind), key)),
            })?;
    }
    Ok(())
}

/// Reads the top-level keys into `config`.
fn read_top(config: &mut Config, entries: &[Entry]) -> Result<(), SpanError> {
    let mut given = Given::default();
    for entry in entries {
        let name = entry.key.get_ref();
        let Some((key, outcome)) = config.read_key(name, entry.value.get_ref()) else {
            return Err(refusal(None, entry));
        };
        given.push(key, entry.value.span());
        outcome.map_err(|why| value_error(None, entry, why))?;
    }
    config
        .check_keys(&given)
        .map_err(|(key, why)| checked(None, &given, key, why))
}

/// Reads a service's section: the connection keys into `service`, the service's own into its settings.
/// The keys of its own settings it gave, for their commands' programs.
fn read_section(service: &mut ServiceConfig, entries: &[Entry]) -> Result<Given, SpanError> {
    let section = Some(service.kind());
    let (mut connection, mut own) = (Given::default(), Given::default());
    for entry in entries {
        let (name, value) = (entry.key.get_ref(), entry.value.get_ref());
        let outcome = if let Some((key, outcome)) = service.read_key(name, value) {
            connection.push(key, entry.value.span());
            outcome
        } else if let Some((key, outcome)) = service.settings.keys_mut().read_key(name, value) {
            own.push(key, entry.value.span());
            outcome
        } else {
            return Err(refusal(section, entry));
        };
        outcome.map_err(|why| value_error(section, entry, why))?;
    }
    let checks = [
        (service.check_keys(&connection), &connection),
        (service.settings.keys().check_keys(&own), &own),
    ];
    for (outcome, given) in checks {
        outcome.map_err(|(key, why)| checked(section, given, key, why))?;
    }
    Ok(own)
}

/// `key` as messages name it: `section.key`, or `key` at the top level (no section).
fn dotted(section: Option<ServiceKind>, key: &str) -> String {
    match section {
        Some(kind) => format!("{kind}.{key}"),
        None => key.to_string(),
    }
}

fn value_error(section: Option<ServiceKind>, entry: &Entry, why: String) -> SpanError {
    SpanError {
        span: entry.value.span(),
        message: format!("key '{}': {why}", dotted(section, entry.key.get_ref())),
    }
}

fn checked(section: Option<ServiceKind>, given: &Given, key: &str, why: String) -> SpanError {
    SpanError {
        span: given.span(key).unwrap_or_default(),
        message: format!("key '{}': {why}", dotted(section, key)),
    }
}

/// Why a key that `section` (None: the top level) does not take is refused: it was removed (with what
/// replaced it), it belongs in another place (which), or there is no such key (and what is taken there).
fn refusal(section: Option<ServiceKind>, entry: &Entry) -> SpanError {
    let name = entry.key.get_ref();
    let dotted = dotted(section, name);
    let at_key = |message: String| SpanError {
        span: entry.key.span(),
        message,
    };
    if let Some(why) = section.and_then(|kind| keys::removed(name, kind)) {
        return at_key(format!("key '{dotted}': {why}"));
    }
    if let Some(owner) = keys::owner(name) {
        return SpanError {
            span: entry.value.span(),
            message: format!(
                "key '{dotted}': {name} is a setting of {}",
                owner.describe()
            ),
        };
    }
    let sections = || {
        let names: Vec<String> = SERVICES.iter().map(|kind| format!("[{kind}]")).collect();
        names.join(", ")
    };
    match (section, entry.value.get_ref()) {
        (Some(kind), _) => {
            let keys = [Place::EveryService.names(), Place::Service(kind).names()].concat();
            at_key(format!(
                "key '{dotted}': unknown key '{name}'; [{kind}] takes {}",
                keys.join(", ")
            ))
        }
        (None, toml::Value::Table(_)) => at_key(format!(
            "unknown section [{name}]; the sections are {}",
            sections()
        )),
        (None, _) => at_key(format!(
            "key '{dotted}': unknown key '{name}'; the top level takes {} and the sections {}",
            Place::Top.names().join(", "),
            sections()
        )),
    }
}

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Document, D::Error> {
        deserializer.deserialize_map(TableVisitor { top: true })
    }
}

/// The keys of one section, with their spans.
struct Section(Vec<Entry>);

impl<'de> Deserialize<'de> for Section {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Section, D::Error> {
        let table = deserializer.deserialize_map(TableVisitor { top: false })?;
        Ok(Section(table.top))
    }
}

/// Reads a TOML table key by key, keeping spans; at the top level, a service's section is read as a table of
/// its own, so that its keys keep their spans too.
struct TableVisitor {
    top: bool,
}

impl<'de> Visitor<'de> for TableVisitor {
    type Value = Document;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table of keys")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Document, M::Error> {
        let mut table = Document {
            top: Vec::new(),
            sections: Vec::new(),
        };
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            match keys::section(key.get_ref()).filter(|_| self.top) {
                Some(kind) => {
                    let Section(entries) = map.next_value()?;
                    table.sections.push((kind, entries));
                }
                None => {
                    let value = map.next_value()?;
                    table.top.push(Entry { key, value });
                }
            }
        }
        Ok(table)
    }
}

/// 1-based line and column of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |tail| tail.chars().count())
        + 1;
    (line, column)
}

/// The dotted key (`section.key`) written on the line that holds `offset`, for TOML's own errors.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |at| at + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line.split_once('=')?.0.trim();
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let section = text[..line_start].lines().rev().find_map(|previous| {
        let previous = previous.trim();
        previous
            .strip_prefix('[')
            .and_then(|rest| rest.split(']').next())
            .map(|name| name.trim().to_string())
    });
    Some(match section {
        Some(section) => format!("{section}.{key}"),
        None => key.to_string(),
    })
}
