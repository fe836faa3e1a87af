//! hvhost: the host-side peer of hvagent, for Linux hosts, Windows Hyper-V hosts (hvhost.exe) and tests.
//! Parses arguments and calls the library.
//!
//! Exit status: 0 ok, 1 the agent answered wrongly or the connection failed, 2 usage error; `backup` adds
//! 3 freeze refused, 4 command failed, 5 thaw failed; `copy` adds 3 START refused, 4 refused during the copy.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use hvhost::backup::{self, BackupCommand};
use hvhost::client::{self, heartbeat_line, say, Client, RoundTrips};
use hvhost::copy::{self, CopyRequest};
use hvhost::net::Address;
use hvhost::requests::{self, parse_pool, KvpCommand, ShutdownOptions};
use hvhost::server::{serve, ServeOptions};
use hvhost::windows::registry;
use hvproto::service::host::HostEvent;
use hvproto::service::ServiceKind;

const USAGE: &str = "\
usage: hvhost serve ADDR [--service heartbeat|timesync] [--interval SECONDS] [--count N] [--quiet]
                  [--sample-interval SECONDS] [--clock-offset SECONDS]
           listen for agents that dial in and negotiate with each. heartbeat (the default): a heartbeat every
           --interval (default 1, 0 = back to back); with --count, exit 0 once N heartbeats were answered on
           one connection. timesync: a SYNC at once, then a SAMPLE every --sample-interval (default 5), and
           an answer to every probe; with --count, exit 0 after N probes. --clock-offset makes the host
           report times that far ahead (negative: behind) of its real clock, which it never changes
       hvhost heartbeat ADDR [--count N] [--interval SECONDS] [--quiet]
           dial a listening agent and send N heartbeats (default 1)
       hvhost shutdown ADDR [--reboot|--hibernate] [--force] [--reason N] [--message TEXT]
           ask a listening agent to power off (reboot, hibernate); exit 0 when it answers HV_S_OK
       hvhost kvp ADDR enumerate [--pool P] | get KEY [--pool P] | set KEY VALUE [--pool P] | delete KEY [--pool P]
                       | ip-info MAC | ip-info-strings MAC
           key-value exchange with a listening agent; P is external (default for get/set/delete), guest,
           auto (default for enumerate), auto-external, auto-internal or a number. ip-info: GET_IP_INFO for
           the adapter with that MAC address (KVP 5.0's binary form; ip-info-strings offers 4.0 alone and
           gets Linux's string form)
       hvhost backup ADDR --freeze | --thaw | --run CMD [ARG...]  [--timeout SECONDS]
           ask a listening agent's backup service to freeze the guest's filesystems, to thaw them, or to
           freeze, run CMD on the host (everything after --run, no shell) and thaw whatever CMD did;
           --timeout bounds each answer (default 60). Exit 0 when all went well, 3 freeze refused,
           4 CMD failed or could not start (the guest was thawed), 5 thaw not answered HV_S_OK
       hvhost copy ADDR LOCAL_FILE GUEST_DIR [--name NAME] [--overwrite] [--create-path] [--timeout SECONDS]
           copy LOCAL_FILE into GUEST_DIR of a listening agent's file-copy service (as NAME, default its own
           name); --overwrite may replace a file there, --create-path may make missing directories;
           --timeout bounds each answer (default 60). Progress on a terminal. Exit 0 only when the guest
           confirmed the COMPLETE, 3 START refused (nothing created), 4 refused during the copy (the guest
           removed what it had)

       hvhost register [--all | SERVICE...] | unregister [--all | SERVICE...]
           Windows: write (remove) the GuestCommunicationServices keys of hvagent's services, as
           hvagent host-setup prints them; SERVICE is heartbeat, guestinfo, shutdown, timesync, backup or filecopy
";

/// What ADDR is, on this host.
#[cfg(unix)]
const ADDRESSES: &str = "\
ADDR is unix:PATH, vsock:CID:PORT (a KVM host to its guest) or hybrid:PATH:PORT (the Unix socket of
Firecracker, Cloud Hypervisor or vhost-device-vsock). PORT is decimal, 0x-hex or a template GUID.";

/// What ADDR is, on this host.
#[cfg(windows)]
const ADDRESSES: &str = "\
ADDR is hv:VMID:SERVICE (VMID a VM's GUID, or wildcard, children, loopback or parent), vm:NAME:SERVICE
(the VM's GUID looked up with Get-VM) or, for tests only, tcp:127.0.0.1:PORT. SERVICE is a vsock port,
decimal or 0x-hex, or its template GUID: hv:children:0x48560001 = hv:children:48560001-facb-11e6-bd58-64006a7986d3.";

/// The usage text: the commands, then what ADDR is here.
fn usage() -> String {
    format!("{USAGE}\n{ADDRESSES}")
}

struct Options {
    command: String,
    address: Address,
    interval: Option<Duration>,
    count: Option<u64>,
    quiet: bool,
    service: ServiceKind,
    sample_interval: Option<Duration>,
    clock_offset: f64,
    shutdown: ShutdownOptions,
    /// Positional arguments after the address (the kvp operation and its operands).
    rest: Vec<String>,
    pool: Option<String>,
    /// `backup`: the steps asked for (none when neither --freeze, --thaw nor --run was given).
    backup: Option<BackupCommand>,
    timeout: Duration,
    /// `copy`: --name, --overwrite, --create-path.
    name: Option<String>,
    overwrite: bool,
    create_path: bool,
}

/// The next argument as a string.
fn string_value(parser: &mut lexopt::Parser) -> Result<String, String> {
    use lexopt::ValueExt;
    parser
        .value()
        .map_err(|e| e.to_string())?
        .string()
        .map_err(|e| e.to_string())
}

/// The next argument as a finite number of seconds, at least `min`.
fn seconds_value(parser: &mut lexopt::Parser, name: &str, min: f64) -> Result<f64, String> {
    let text = string_value(parser)?;
    text.parse()
        .ok()
        .filter(|seconds: &f64| seconds.is_finite() && *seconds >= min && seconds.abs() < 1e9)
        .ok_or(format!("{name} '{text}' is not a number of seconds"))
}

/// A u32 in decimal or 0x-hex.
fn parse_u32(text: &str) -> Option<u32> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

fn parse_args() -> Result<Option<Options>, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut positional = Vec::new();
    let mut interval = None;
    let mut count = None;
    let mut quiet = false;
    let mut service = ServiceKind::Heartbeat;
    let mut sample_interval = None;
    let mut clock_offset = 0.0;
    let mut shutdown = ShutdownOptions::default();
    let mut pool = None;
    let mut backup = None;
    let mut timeout = backup::DEFAULT_TIMEOUT;
    let (mut name, mut overwrite, mut create_path) = (None, false, false);
    let mut set_backup = |command: BackupCommand| match backup.replace(command) {
        None => Ok(()),
        Some(_) => Err("--freeze, --thaw and --run exclude each other".to_string()),
    };
    while let Some(arg) = parser.next().map_err(|error| error.to_string())? {
        match arg {
            Long("help") | Short('h') => return Ok(None),
            Long("interval") => {
                let seconds = seconds_value(&mut parser, "--interval", 0.0)?;
                interval = Some(Duration::from_secs_f64(seconds));
            }
            Long("sample-interval") => {
                let seconds = seconds_value(&mut parser, "--sample-interval", 0.001)?;
                sample_interval = Some(Duration::from_secs_f64(seconds));
            }
            Long("clock-offset") => {
                clock_offset = seconds_value(&mut parser, "--clock-offset", f64::MIN)?;
            }
            Long("service") => {
                service = match string_value(&mut parser)?.as_str() {
                    "heartbeat" => ServiceKind::Heartbeat,
                    "timesync" => ServiceKind::TimeSync,
                    other => {
                        return Err(format!(
                            "--service '{other}' is not a service hvhost serves (heartbeat or timesync)"
                        ))
                    }
                };
            }
            Long("count") | Short('n') => {
                let text = string_value(&mut parser)?;
                count = Some(
                    text.parse()
                        .map_err(|_| format!("--count '{text}' is not a number"))?,
                );
            }
            Long("quiet") | Short('q') => quiet = true,
            Long("reboot") => shutdown.reboot = true,
            Long("hibernate") => shutdown.hibernate = true,
            Long("force") => shutdown.force = true,
            Long("reason") => {
                let text = string_value(&mut parser)?;
                shutdown.reason = parse_u32(&text).ok_or(format!(
                    "--reason '{text}' is not a number (decimal or 0x-hex)"
                ))?;
            }
            Long("message") => shutdown.message = string_value(&mut parser)?,
            Long("pool") => pool = Some(string_value(&mut parser)?),
            Long("name") => name = Some(string_value(&mut parser)?),
            Long("overwrite") => overwrite = true,
            Long("create-path") => create_path = true,
            Long("freeze") => set_backup(BackupCommand::Freeze)?,
            Long("thaw") => set_backup(BackupCommand::Thaw)?,
            Long("run") => {
                // Everything after --run is the command, as env(1) and find -exec take theirs.
                let argv: Vec<OsString> = parser.raw_args().map_err(|e| e.to_string())?.collect();
                if argv.is_empty() {
                    return Err(
                        "--run needs a command to run while the guest is frozen".to_string()
                    );
                }
                set_backup(BackupCommand::Run(argv))?;
            }
            Long("timeout") => {
                timeout = Duration::from_secs_f64(seconds_value(&mut parser, "--timeout", 0.001)?);
            }
            Value(value) => positional.push(value.string().map_err(|e| e.to_string())?),
            other => return Err(other.unexpected().to_string()),
        }
    }
    if shutdown.reboot && shutdown.hibernate {
        return Err("--reboot and --hibernate exclude each other".to_string());
    }
    if positional.len() < 2 {
        return Err("expected a command and an address".to_string());
    }
    let rest = positional.split_off(2);
    let [command, address] = <[String; 2]>::try_from(positional)
        .map_err(|_| "expected a command and an address".to_string())?;
    if !rest.is_empty() && command != "kvp" && command != "copy" {
        return Err(format!("unexpected argument '{}'", rest[0]));
    }
    if command != "backup" && backup.is_some() {
        return Err("--freeze, --thaw and --run are for backup".to_string());
    }
    if command != "copy" && (name.is_some() || overwrite || create_path) {
        return Err("--name, --overwrite and --create-path are for copy".to_string());
    }
    let address = address.parse().map_err(|error| format!("{error}"))?;
    Ok(Some(Options {
        command,
        address,
        interval,
        count,
        quiet,
        service,
        sample_interval,
        clock_offset,
        shutdown,
        rest,
        pool,
        backup,
        timeout,
        name,
        overwrite,
        create_path,
    }))
}

/// `hvhost register|unregister [--all | SERVICE...]`, which takes no address; None for every other command.
fn registration() -> Option<ExitCode> {
    let mut args = std::env::args().skip(1);
    let action = match args.next()?.as_str() {
        "register" => registry::Action::Register,
        "unregister" => registry::Action::Unregister,
        _ => return None,
    };
    let words: Vec<String> = args.collect();
    if words.iter().any(|word| word == "--help" || word == "-h") {
        println!("{}", usage());
        return Some(ExitCode::SUCCESS);
    }
    let stdout = std::io::stdout();
    Some(ExitCode::from(registry::run(
        action,
        &words,
        &mut stdout.lock(),
    )))
}

fn main() -> ExitCode {
    if let Some(code) = registration() {
        return code;
    }
    let options = match parse_args() {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("hvhost: {message}\n{}", usage());
            return ExitCode::from(2);
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = match options.command.as_str() {
        "serve" => serve(
            &options.address,
            &ServeOptions {
                interval: options.interval.unwrap_or(Duration::from_secs(1)),
                count: options.count,
                quiet: options.quiet,
                service: options.service,
                sample_interval: options.sample_interval.unwrap_or(Duration::from_secs(5)),
                clock_offset: options.clock_offset,
            },
            &mut out,
        ),
        "heartbeat" => heartbeat(&options, &mut out),
        "kvp" => {
            let command = match KvpCommand::parse(&options.rest) {
                Ok(command) => command,
                Err(message) => {
                    eprintln!("hvhost: {message}\n{}", usage());
                    return ExitCode::from(2);
                }
            };
            let pool = match options.pool.as_deref().map(parse_pool).transpose() {
                Ok(pool) => pool,
                Err(message) => {
                    eprintln!("hvhost: {message}");
                    return ExitCode::from(2);
                }
            };
            match requests::kvp(&options.address, pool, &command, &mut out) {
                Ok(true) => Ok(()),
                Ok(false) => return ExitCode::from(1),
                Err(error) => Err(error),
            }
        }
        "shutdown" => match requests::shutdown(&options.address, &options.shutdown, &mut out) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(error) => Err(error),
        },
        "backup" => {
            let Some(command) = &options.backup else {
                eprintln!(
                    "hvhost: backup needs one of --freeze, --thaw or --run CMD\n{}",
                    usage()
                );
                return ExitCode::from(2);
            };
            match backup::backup(&options.address, command, options.timeout, &mut out) {
                Ok(outcome) => {
                    if let Some(problem) = outcome.problem() {
                        eprintln!("hvhost: {problem}");
                    }
                    return ExitCode::from(outcome.exit_code());
                }
                Err(error) => Err(error),
            }
        }
        "copy" => {
            let [local, guest_dir] = match <[String; 2]>::try_from(options.rest.clone()) {
                Ok(paths) => paths,
                Err(_) => {
                    eprintln!("hvhost: copy needs LOCAL_FILE and GUEST_DIR\n{USAGE}");
                    return ExitCode::from(2);
                }
            };
            let request = CopyRequest {
                local: local.into(),
                guest_dir,
                name: options.name.clone(),
                overwrite: options.overwrite,
                create_path: options.create_path,
                timeout: options.timeout,
            };
            match copy::copy(&options.address, &request, &mut out) {
                Ok(outcome) => {
                    if let Some(problem) = outcome.problem() {
                        eprintln!("hvhost: {problem}");
                    }
                    return ExitCode::from(outcome.exit_code());
                }
                Err(error) => {
                    eprintln!("hvhost: {error}");
                    return ExitCode::from(1);
                }
            }
        }
        other => {
            eprintln!("hvhost: unknown command '{other}'\n{}", usage());
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hvhost: {error}");
            ExitCode::from(1)
        }
    }
}

fn heartbeat(options: &Options, out: &mut dyn Write) -> Result<(), client::PeerError> {
    let fd = client::dial(&options.address)?;
    say(out, &format!("connected {}", options.address));
    let mut client = Client::new(fd, ServiceKind::Heartbeat);
    if let HostEvent::Negotiated { framework, message } = client.negotiate()? {
        say(
            out,
            &format!("negotiated framework={framework} message={message}"),
        );
    }
    let mut trips = RoundTrips::default();
    for seq in 0..options.count.unwrap_or(1) {
        if seq > 0 {
            if let Some(interval) = options.interval {
                std::thread::sleep(interval);
            }
        }
        for (round_trip, state) in client.heartbeats(1)? {
            trips.record(round_trip);
            if !options.quiet {
                say(out, &heartbeat_line(seq, round_trip, state));
            }
        }
    }
    say(out, &trips.summary());
    Ok(())
}
