//! One TOML value read, or printed back: the pieces the table's parsers are made of. Each reader returns
//! what is wrong as a sentence without the key; the caller names the key and the place in the file.

use std::path::PathBuf;
use std::time::Duration;

use hvtransport::Address;

/// A number of seconds within `min..=max`; `zero`, when set, says what 0 means and allows it.
pub struct Seconds {
    pub min: f64,
    pub max: f64,
    pub zero: Option<&'static str>,
}

impl Seconds {
    /// What the key takes, as refusals and docs say it.
    pub fn describe(&self) -> String {
        match self.zero {
            Some(zero) if self.min == 0.0 => {
                format!("0 ({zero}) or a number of seconds up to {}", self.max)
            }
            Some(zero) => format!(
                "0 ({zero}) or a number of seconds from {} to {}",
                self.min, self.max
            ),
            None => format!("a number of seconds from {} to {}", self.min, self.max),
        }
    }

    /// An integer or a float within bounds.
    pub fn read(&self, value: &toml::Value) -> Result<Duration, String> {
        let allowed = |seconds: &f64| {
            (*seconds == 0.0 && self.zero.is_some()) || (self.min..=self.max).contains(seconds)
        };
        let seconds = match value {
            toml::Value::Integer(whole) => Some(*whole as f64),
            toml::Value::Float(seconds) if seconds.is_finite() => Some(*seconds),
            _ => None,
        };
        seconds
            .filter(allowed)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("{} is not {}", describe(value), self.describe()))
    }
}

/// A duration as the printed config writes it: seconds, fractional where needed.
pub fn seconds_text(duration: Duration) -> String {
    duration.as_secs_f64().to_string()
}

/// A value of a plain type (a boolean, an integer, a string), refused in serde's words ("invalid type:
/// string \"yes\", expected a boolean").
pub fn typed<T: serde::de::DeserializeOwned>(value: &toml::Value) -> Result<T, String> {
    value
        .clone()
        .try_into()
        .map_err(|error: toml::de::Error| error.message().trim_end().to_string())
}

/// A TOML value as a refusal shows it.
pub fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::Integer(whole) => whole.to_string(),
        toml::Value::Float(number) => number.to_string(),
        toml::Value::String(text) => format!("'{text}'"),
        toml::Value::Array(_) => "an array".to_string(),
        other => format!("a {}", other.type_str()),
    }
}

/// `names` as a sentence lists them: "a, b or c".
pub fn listed(names: &[&str]) -> String {
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// The names of every choice, listed.
pub fn choices<E: Copy>(all: &[E], name: fn(E) -> &'static str) -> String {
    let names: Vec<&str> = all.iter().map(|&choice| name(choice)).collect();
    listed(&names)
}

/// One of `all`, by name; a refusal says "'x' is not WHAT (a, b or c)", or "'x' is not a, b or c" when
/// `what` is empty.
pub fn choice<E: Copy>(
    value: &toml::Value,
    what: &str,
    all: &[E],
    name: fn(E) -> &'static str,
) -> Result<E, String> {
    let text: String = typed(value)?;
    all.iter()
        .copied()
        .find(|&choice| name(choice) == text)
        .ok_or_else(|| match what {
            "" => format!("'{text}' is not {}", choices(all, name)),
            what => format!("'{text}' is not {what} ({})", choices(all, name)),
        })
}

/// An absolute path; `hint` follows the refusal of a relative one.
pub fn absolute_path(value: &toml::Value, hint: &str) -> Result<PathBuf, String> {
    let text: String = typed(value)?;
    if !text.starts_with('/') {
        return Err(format!("'{text}' is not an absolute path{hint}"));
    }
    Ok(PathBuf::from(text))
}

/// An argv from a command value: an array of strings, or one line split at whitespace with no quoting
/// at all, so a line with quotes or backslashes is refused: an array says exactly which arguments are
/// meant. The program is made absolute later (`program`), once the whole file is read.
pub fn command(value: &toml::Value) -> Result<Vec<String>, String> {
    let argv: Vec<String> = match value {
        toml::Value::String(line) if line.contains(['"', '\'', '\\']) => return Err(
            "a command line is split at spaces without a shell, so quotes and backslashes are not \
                 understood; give an array such as [\"prog\", \"an argument\"]"
                .to_string(),
        ),
        toml::Value::String(line) => line.split_whitespace().map(str::to_string).collect(),
        toml::Value::Array(_) => typed::<Vec<String>>(value).map_err(|_| not_a_command(value))?,
        other => return Err(not_a_command(other)),
    };
    if argv.first().map_or(true, String::is_empty) {
        return Err("the command is empty".to_string());
    }
    Ok(argv)
}

fn not_a_command(value: &toml::Value) -> String {
    format!(
        "{} is not a command (a line split at spaces, or an array of strings)",
        describe(value)
    )
}

/// A service's address: `vsock:` or `unix:` (hvhost's `hybrid:` is for the host side).
pub fn address(value: &toml::Value) -> Result<Address, String> {
    let text: String = typed(value)?;
    let address: Address = text.parse().map_err(|error| format!("{error}"))?;
    if let Address::Hybrid { .. } = address {
        return Err(
            "hybrid: addresses are for hvhost on the host side; the agent uses vsock:CID:PORT or unix:PATH"
                .to_string(),
        );
    }
    Ok(address)
}

/// `text` as a TOML basic string: quoted, with `\`, `"` and every control character escaped, so whatever a
/// path or argument holds, the printed config parses back to the same string.
pub fn toml_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            '\r' => quoted.push_str("\\r"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// A TOML array of strings.
pub fn toml_argv(argv: &[String]) -> String {
    let items: Vec<String> = argv.iter().map(|arg| toml_string(arg)).collect();
    format!("[{}]", items.join(", "))
}
