//! `hvhost register` and `unregister`: the GuestCommunicationServices keys that let a Linux guest's hv_sock
//! services reach the host, `HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion\Virtualization\
//! GuestCommunicationServices\<GUID>` with a string value `ElementName` (docs/PROTOCOL.md §1.4; Microsoft's
//! "Make your own integration services"). The GUIDs and names are those `hvagent host-setup` prints: each
//! service at its default port, named `hvagent SERVICE` (the agent's tests check that the two agree).
//!
//! What to write is computed here on every target; [`apply`] writes it, on Windows only.

use std::io::Write;

use hvproto::guid::ServiceId;
use hvproto::service::ServiceKind;

/// The key every service GUID is registered under, below HKEY_LOCAL_MACHINE.
pub const KEY: &str =
    r"SOFTWARE\Microsoft\Windows NT\CurrentVersion\Virtualization\GuestCommunicationServices";

/// One service's registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub kind: ServiceKind,
    pub guid: ServiceId,
}

impl Registration {
    pub fn of(kind: ServiceKind) -> Registration {
        Registration {
            kind,
            guid: ServiceId::from_port(kind.default_port()),
        }
    }

    /// The `ElementName` value, the name Hyper-V shows: `hvagent heartbeat`.
    pub fn element_name(&self) -> String {
        format!("hvagent {}", self.kind)
    }

    /// The key below HKEY_LOCAL_MACHINE: [`KEY`]`\<guid>`, the GUID lowercase and without braces.
    pub fn subkey(&self) -> String {
        format!(r"{KEY}\{}", self.guid)
    }
}

/// Register or unregister.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Register,
    Unregister,
}

/// The registrations the words after `register` ask for: `--all`, or service names.
pub fn select(words: &[String]) -> Result<Vec<Registration>, String> {
    let names = || {
        ServiceKind::ALL
            .iter()
            .map(|kind| kind.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if words.is_empty() {
        return Err(format!(
            "name the services to register ({}) or give --all",
            names()
        ));
    }
    if words.iter().any(|word| word == "--all") {
        if words.len() > 1 {
            return Err("--all registers every service: give it alone".to_string());
        }
        return Ok(ServiceKind::ALL
            .iter()
            .map(|&kind| Registration::of(kind))
            .collect());
    }
    let mut chosen: Vec<Registration> = Vec::new();
    for word in words {
        let kind = ServiceKind::ALL
            .iter()
            .find(|kind| kind.name() == word)
            .ok_or_else(|| format!("'{word}' is not a service of hvagent ({})", names()))?;
        if !chosen.iter().any(|known| known.kind == *kind) {
            chosen.push(Registration::of(*kind));
        }
    }
    Ok(chosen)
}

/// What one step did, for its output line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Done {
    Registered,
    Unregistered,
    /// Unregister found no key: nothing to do.
    Absent,
}

/// The line printed for a step.
pub fn line(registration: &Registration, done: &Done) -> String {
    let what = match done {
        Done::Registered => "registered",
        Done::Unregistered => "unregistered",
        Done::Absent => "not registered",
    };
    format!(
        "{what} {} ElementName=\"{}\"",
        registration.guid,
        registration.element_name()
    )
}

/// Why a registry step failed. Access denied has its own words: it is what a prompt that is not elevated
/// gets, and the fix is to run as Administrator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryError {
    AccessDenied(String),
    Other(String, u32),
    /// Not on Windows: there is no registry to write.
    NotWindows,
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryError::AccessDenied(key) => write!(
                f,
                "access denied to HKLM\\{key}: registering needs administrator rights; run hvhost.exe from \
                 an elevated prompt (Run as administrator)"
            ),
            RegistryError::Other(key, code) => write!(
                f,
                "cannot change HKLM\\{key}: Windows error {code}: {}",
                std::io::Error::from_raw_os_error(*code as i32)
            ),
            RegistryError::NotWindows => f.write_str(
                "register and unregister write the Windows registry: run hvhost.exe on the Hyper-V host \
                 (or the script of hvagent host-setup there)",
            ),
        }
    }
}

/// ERROR_ACCESS_DENIED, the Win32 error of a write without the rights.
pub const ERROR_ACCESS_DENIED: u32 = 5;

/// The error for a Win32 `code` on `key`.
pub fn error(key: &str, code: u32) -> RegistryError {
    if code == ERROR_ACCESS_DENIED {
        RegistryError::AccessDenied(key.to_string())
    } else {
        RegistryError::Other(key.to_string(), code)
    }
}

/// `hvhost register|unregister WORDS`: each step's line on `out`; the exit status (0 done, 1 a step failed,
/// 2 a usage error).
pub fn run(action: Action, words: &[String], out: &mut dyn Write) -> u8 {
    let registrations = match select(words) {
        Ok(registrations) => registrations,
        Err(message) => {
            eprintln!("hvhost: {message}");
            return 2;
        }
    };
    for registration in &registrations {
        match apply(action, registration) {
            Ok(done) => {
                let _ = writeln!(out, "{}", line(registration, &done));
            }
            Err(error) => {
                eprintln!("hvhost: {error}");
                return 1;
            }
        }
    }
    let _ = out.flush();
    0
}

/// Writes or removes one registration in the registry.
#[cfg(windows)]
pub fn apply(action: Action, registration: &Registration) -> Result<Done, RegistryError> {
    let key = registration.subkey();
    match action {
        Action::Register => {
            super::winreg::set_string(&key, "ElementName", &registration.element_name())
                .map(|()| Done::Registered)
        }
        Action::Unregister => super::winreg::delete_key(&key).map(|existed| {
            if existed {
                Done::Unregistered
            } else {
                Done::Absent
            }
        }),
    }
    .map_err(|code| error(&key, code))
}

/// Off Windows there is no registry to write: the host that needs one is a Windows host.
#[cfg(not(windows))]
pub fn apply(_: Action, _: &Registration) -> Result<Done, RegistryError> {
    Err(RegistryError::NotWindows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Vec<String> {
        list.iter().map(|word| word.to_string()).collect()
    }

    #[test]
    fn all_registers_every_service_at_its_default_port_named_as_host_setup_names_it() {
        let all = select(&words(&["--all"])).unwrap();
        let shown: Vec<(String, String)> = all
            .iter()
            .map(|registration| (registration.guid.to_string(), registration.element_name()))
            .collect();
        let expected = [
            ("48560001-facb-11e6-bd58-64006a7986d3", "hvagent heartbeat"),
            ("48560002-facb-11e6-bd58-64006a7986d3", "hvagent guestinfo"),
            ("48560003-facb-11e6-bd58-64006a7986d3", "hvagent shutdown"),
            ("48560004-facb-11e6-bd58-64006a7986d3", "hvagent timesync"),
            ("48560005-facb-11e6-bd58-64006a7986d3", "hvagent backup"),
            ("48560007-facb-11e6-bd58-64006a7986d3", "hvagent filecopy"),
        ];
        assert_eq!(
            shown,
            expected.map(|(guid, name)| (guid.to_string(), name.to_string()))
        );
        assert_eq!(
            all[0].subkey(),
            "SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Virtualization\\GuestCommunicationServices\\\
             48560001-facb-11e6-bd58-64006a7986d3"
        );
    }

    #[test]
    fn services_are_chosen_by_name_once_each_and_bad_words_are_refused() {
        let chosen = select(&words(&["shutdown", "heartbeat", "shutdown"])).unwrap();
        let kinds: Vec<ServiceKind> = chosen
            .iter()
            .map(|registration| registration.kind)
            .collect();
        assert_eq!(kinds, [ServiceKind::Shutdown, ServiceKind::Heartbeat]);
        assert!(select(&[]).unwrap_err().contains("--all"));
        assert!(select(&words(&["--all", "heartbeat"])).is_err());
        let error = select(&words(&["kvp"])).unwrap_err();
        assert!(error.contains("'kvp' is not a service"), "{error}");
    }

    #[test]
    fn access_denied_says_to_run_as_administrator() {
        let denied = error(KEY, ERROR_ACCESS_DENIED).to_string();
        assert!(denied.contains("administrator rights"), "{denied}");
        assert!(denied.contains("Run as administrator"), "{denied}");
        let other = error(KEY, 2).to_string();
        assert!(other.contains("Windows error 2"), "{other}");
    }

    #[test]
    fn each_step_has_its_line() {
        let registration = Registration::of(ServiceKind::Heartbeat);
        assert_eq!(
            line(&registration, &Done::Registered),
            "registered 48560001-facb-11e6-bd58-64006a7986d3 ElementName=\"hvagent heartbeat\""
        );
        assert!(line(&registration, &Done::Absent).starts_with("not registered "));
    }
}
