//! `vm:NAME`: a VM's name to its GUID, asked of Hyper-V's PowerShell module (Get-VM), as an admin would with
//! `(Get-VM -Name NAME).Id`.
//!
//! The name never becomes code. The script is fixed and goes to powershell.exe as -EncodedCommand (base64
//! of UTF-16LE, so no quoting of the command line is involved); the name reaches it in the environment
//! variable [`NAME_VARIABLE`], which PowerShell reads as a value. And the script compares names with `-eq`
//! instead of passing the name to `Get-VM -Name`, which takes wildcards: `web*` must not find `web01`.
//! Hyper-V allows two VMs one name; then both GUIDs are named and the user picks one with `hv:GUID:...`.

use std::process::{Command, Stdio};

use uuid::Uuid;

/// The program: Windows PowerShell, found on PATH as every Windows since Server 2008 R2 has it.
pub const PROGRAM: &str = "powershell.exe";
/// The environment variable that carries the name to the script.
pub const NAME_VARIABLE: &str = "HVHOST_VM_NAME";
/// The script's exit status when Get-VM is not there (no Hyper-V PowerShell module).
const NO_MODULE: i32 = 3;
/// The script's exit status when no VM has the name.
const NO_VM: i32 = 4;

/// What runs: each matching VM's GUID on a line of its own.
pub const SCRIPT: &str = "\
$ErrorActionPreference = 'Stop'
if (-not (Get-Command -Name Get-VM -ErrorAction SilentlyContinue)) { exit 3 }
$name = $env:HVHOST_VM_NAME
$found = @(Get-VM | Where-Object { $_.Name -eq $name })
if ($found.Count -eq 0) { exit 4 }
foreach ($vm in $found) { [Console]::Out.WriteLine($vm.Id.ToString()) }
exit 0
";

/// The arguments after the program: no profile (a user's profile must not change the answer), no prompt.
pub fn arguments() -> Vec<String> {
    vec![
        "-NoLogo".to_string(),
        "-NoProfile".to_string(),
        "-NonInteractive".to_string(),
        "-EncodedCommand".to_string(),
        encode_command(SCRIPT),
    ]
}

/// The command that resolves `name`: [`PROGRAM`] with [`arguments`], the name in the environment only.
pub fn command(name: &str) -> Command {
    let mut command = Command::new(PROGRAM);
    command
        .args(arguments())
        .env(NAME_VARIABLE, name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// The VM named `name`'s GUID, or why there is none.
pub fn resolve(name: &str) -> Result<Uuid, String> {
    let output = command(name).output().map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            format!(
                "cannot look up VM '{name}': {PROGRAM} was not found; vm:NAME needs Windows PowerShell with \
                 the Hyper-V module, or give the VM's GUID as hv:GUID:SERVICE"
            )
        } else {
            format!("cannot look up VM '{name}': running {PROGRAM} failed: {error}")
        }
    })?;
    read_answer(
        name,
        output.status.code(),
        &String::from_utf8_lossy(&output.stdout),
        &String::from_utf8_lossy(&output.stderr),
    )
}

/// The GUID in the script's answer, or the error for its status and output.
pub fn read_answer(
    name: &str,
    status: Option<i32>,
    stdout: &str,
    stderr: &str,
) -> Result<Uuid, String> {
    match status {
        Some(0) => {}
        Some(NO_MODULE) => {
            return Err(format!(
                "cannot look up VM '{name}': Get-VM is not available (the Hyper-V PowerShell module is not \
                 installed: Enable-WindowsOptionalFeature -Online -FeatureName \
                 Microsoft-Hyper-V-Management-PowerShell); or give the VM's GUID as hv:GUID:SERVICE"
            ))
        }
        Some(NO_VM) => return Err(format!("no VM is named '{name}' (Get-VM lists the VMs)")),
        other => {
            let status = other.map_or("no exit status".to_string(), |code| format!("status {code}"));
            let why = stderr.trim();
            return Err(format!(
                "cannot look up VM '{name}': Get-VM failed ({status}){}{why}; Get-VM needs membership of Hyper-V \
                 Administrators or an elevated prompt",
                if why.is_empty() { "" } else { ": " }
            ));
        }
    }
    let ids: Vec<&str> = stdout.split_whitespace().collect();
    match ids.as_slice() {
        [one] => Uuid::parse_str(one).map_err(|_| {
            format!("cannot look up VM '{name}': Get-VM gave '{one}', which is not a GUID")
        }),
        // The script prints a GUID or exits 4: silence and 0 is a powershell.exe that did not run it.
        [] => Err(format!(
            "cannot look up VM '{name}': {PROGRAM} exited 0 without an answer; is it Windows PowerShell?"
        )),
        many => Err(format!(
            "{} VMs are named '{name}' ({}); give the one meant as hv:GUID:SERVICE",
            many.len(),
            many.join(", ")
        )),
    }
}

/// A script as -EncodedCommand takes it: base64 of its UTF-16LE code units.
pub fn encode_command(script: &str) -> String {
    let bytes: Vec<u8> = script.encode_utf16().flat_map(u16::to_le_bytes).collect();
    base64(&bytes)
}

/// Standard base64 (RFC 4648, with padding).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let value = chunk.iter().enumerate().fold(0u32, |value, (index, byte)| {
            value | u32::from(*byte) << (16 - 8 * index)
        });
        for index in 0..4 {
            if index <= chunk.len() {
                text.push(char::from(
                    ALPHABET[(value >> (18 - 6 * index)) as usize & 63],
                ));
            } else {
                text.push('=');
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    /// The arguments as the OS passes them.
    fn argv_of(command: &Command) -> Vec<OsString> {
        command.get_args().map(OsString::from).collect()
    }

    #[test]
    fn base64_follows_rfc_4648() {
        for (bytes, text) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
            (&[0xff, 0xfe, 0xfd], "//79"),
        ] {
            assert_eq!(base64(bytes), text);
        }
        // PowerShell's own example of -EncodedCommand encodes UTF-16LE: "dir" is ZABpAHIA.
        assert_eq!(encode_command("dir"), "ZABpAHIA");
    }

    #[test]
    fn a_hostile_name_is_never_on_the_command_line() {
        let name = "x'; Remove-Item -Recurse C:\\ ; $(calc) \"quoted\" `tick *";
        let command = command(name);
        assert_eq!(command.get_program(), PROGRAM);
        let argv = argv_of(&command);
        assert_eq!(
            argv,
            arguments()
                .into_iter()
                .map(OsString::from)
                .collect::<Vec<_>>()
        );
        assert_eq!(
            &argv[..4],
            [
                "-NoLogo",
                "-NoProfile",
                "-NonInteractive",
                "-EncodedCommand"
            ]
        );
        // Base64 only: nothing a command line or PowerShell would read as syntax.
        let encoded = argv[4].to_str().unwrap();
        assert!(encoded
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c)));
        let envs: Vec<_> = command.get_envs().collect();
        assert_eq!(
            envs,
            [(
                std::ffi::OsStr::new(NAME_VARIABLE),
                Some(std::ffi::OsStr::new(name))
            )]
        );
    }

    #[test]
    fn the_script_reads_the_name_from_the_environment_and_matches_it_exactly() {
        assert!(SCRIPT.contains(&format!("$env:{NAME_VARIABLE}")));
        assert!(SCRIPT.contains("-eq $name"));
        assert!(!SCRIPT.contains("-Name $"), "Get-VM -Name takes wildcards");
        assert!(SCRIPT.contains(&format!("exit {NO_MODULE}")));
        assert!(SCRIPT.contains(&format!("exit {NO_VM}")));
    }

    #[test]
    fn answers_give_one_guid_or_say_what_is_wrong() {
        let id = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
        assert_eq!(
            read_answer("web", Some(0), &format!("{id}\r\n"), ""),
            Ok(Uuid::parse_str(id).unwrap())
        );
        let two = read_answer("web", Some(0), &format!("{id}\r\n{id}\r\n"), "").unwrap_err();
        assert!(two.contains("2 VMs are named 'web'"), "{two}");
        let module = read_answer("web", Some(3), "", "").unwrap_err();
        assert!(module.contains("Hyper-V PowerShell module"), "{module}");
        let none = read_answer("web", Some(4), "", "").unwrap_err();
        assert!(none.contains("no VM is named 'web'"), "{none}");
        let denied = read_answer(
            "web",
            Some(1),
            "",
            "You do not have the required permission\r\n",
        )
        .unwrap_err();
        assert!(denied.contains("status 1): You do not have"), "{denied}");
        let silent = read_answer("web", Some(0), "", "").unwrap_err();
        assert!(silent.contains("without an answer"), "{silent}");
        let garbage = read_answer("web", Some(0), "not-a-guid", "").unwrap_err();
        assert!(garbage.contains("not a GUID"), "{garbage}");
    }
}
