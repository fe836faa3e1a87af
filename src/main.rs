//! hvagent: the guest agent's command line. Parses arguments and calls the library.
//!
//! Exit status: 0 ok, 1 runtime failure, 2 usage or configuration error.

use std::path::PathBuf;
use std::process::ExitCode;

use hvagent::config;
use hvagent::event_loop::GuestLoop;
use hvproto::guid::{self, ServiceId};

const USAGE: &str = "\
usage: hvagent [run] [--config FILE] [--control PATH]
                                      run the agent in the foreground
       hvagent status [--json] [--control PATH]
                                      what the running agent is doing, from its control socket
       hvagent doctor [--config FILE] [--root DIR]
                                      check vsock, the transport, the host, CAP_SYS_TIME, time daemons and
                                      the config, with the fix for each problem (exit 1 when one is found;
                                      --root reads /proc, /sys, /dev and /etc below DIR, for tests)
       hvagent check-config [--config FILE | --keys]
                                      print the effective configuration, or the errors (--keys: every
                                      key the file takes, with what it takes and its default)
       hvagent host-setup [--format powershell|reg] [--config FILE | --all]
                                      what the Windows host must register for the enabled services
                                      (--all: every service at its default port)
       hvagent thaw                   thaw every filesystem that can freeze (harmless when none is frozen):
                                      what systemd runs after the agent stops; needs CAP_SYS_ADMIN
       hvagent kvp list [--pool P] | get KEY [--pool P] | set KEY VALUE [--pool P] | delete KEY [--pool P]
                   [--json] [--config FILE]
                                      the key-value pools in their files (pool_dir), whether or not the
                                      agent runs: get reads the external pool unless --pool, set and delete
                                      the guest pool; P is external, guest, auto, auto-external,
                                      auto-internal or 0 to 4
       hvagent guid PORT              print the hv_sock service GUID of a vsock port (decimal or 0x-hex)
       hvagent port GUID              print the vsock port of an hv_sock service GUID
       hvagent clock-helper [--socket PATH] [--idle SECONDS] [--peer-uid UID]... [--fake-clock]
                                      step and steer the clock for the agent (hvagent-clock.service, on
                                      the socket systemd passes); --fake-clock changes a clock in memory
       hvagent --version | --help

The configuration is read from /etc/hvagent/hvagent.toml unless --config (-c) is given; a missing default file
means built-in defaults. The control socket is /run/hvagent/control.sock unless --control is given.
RUST_LOG overrides log_level.";

/// A usage error: printed with a pointer to --help, exit status 2.
struct Usage(String);

impl From<lexopt::Error> for Usage {
    fn from(error: lexopt::Error) -> Usage {
        Usage(error.to_string())
    }
}

/// Options given on the command line; each command says which it accepts.
#[derive(Default)]
struct Options {
    config: Option<PathBuf>,
    control: Option<PathBuf>,
    json: bool,
    format: Option<String>,
    all: bool,
    root: Option<PathBuf>,
    socket: Option<PathBuf>,
    idle: Option<String>,
    peer_uids: Vec<String>,
    fake_clock: bool,
    keys: bool,
    pool: Option<String>,
}

impl Options {
    fn control_path(&self) -> PathBuf {
        self.control
            .clone()
            .unwrap_or_else(|| PathBuf::from(hvagent::ops::control::DEFAULT_PATH))
    }
}

enum Command {
    Run(Options),
    Status(Options),
    CheckConfig(Option<PathBuf>),
    Keys,
    HostSetup(Options),
    Doctor(Options),
    Guid(String),
    Port(String),
    ClockHelper(Options),
    Kvp(Options, Vec<String>),
    Thaw,
    Help,
    Version,
}

fn parse_args() -> Result<Command, Usage> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut subcommand: Option<String> = None;
    let mut options = Options::default();
    let mut given: Vec<&str> = Vec::new();
    let mut operands: Vec<String> = Vec::new();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("config") | Short('c') => {
                options.config = Some(parser.value()?.into());
                given.push("--config");
            }
            Long("control") => {
                options.control = Some(parser.value()?.into());
                given.push("--control");
            }
            Long("json") => {
                options.json = true;
                given.push("--json");
            }
            Long("format") => {
                options.format = Some(parser.value()?.string()?);
                given.push("--format");
            }
            Long("all") => {
                options.all = true;
                given.push("--all");
            }
            Long("root") => {
                options.root = Some(parser.value()?.into());
                given.push("--root");
            }
            Long("socket") => {
                options.socket = Some(parser.value()?.into());
                given.push("--socket");
            }
            Long("idle") => {
                options.idle = Some(parser.value()?.string()?);
                given.push("--idle");
            }
            Long("peer-uid") => {
                options.peer_uids.push(parser.value()?.string()?);
                given.push("--peer-uid");
            }
            Long("keys") => {
                options.keys = true;
                given.push("--keys");
            }
            Long("fake-clock") => {
                options.fake_clock = true;
                given.push("--fake-clock");
            }
            Long("pool") => {
                options.pool = Some(parser.value()?.string()?);
                given.push("--pool");
            }
            Long("help") | Short('h') => return Ok(Command::Help),
            Long("version") | Short('V') => return Ok(Command::Version),
            Value(value) if subcommand.is_none() => subcommand = Some(value.string()?),
            Value(value) => operands.push(value.string()?),
            other => return Err(other.unexpected().into()),
        }
    }
    let needs_operand = |what: &str| match &operands[..] {
        [] => Err(Usage(format!("missing {what}"))),
        [one] => Ok(one.clone()),
        [_, extra, ..] => Err(Usage(format!("unexpected argument '{extra}'"))),
    };
    let no_operand = || match operands.first() {
        Some(extra) => Err(Usage(format!("unexpected argument '{extra}'"))),
        None => Ok(()),
    };
    // Options a command does not take are refused rather than ignored.
    let only = |allowed: &[&str]| match given.iter().find(|option| !allowed.contains(option)) {
        Some(option) => Err(Usage(format!(
            "{option} does not apply to '{}'",
            subcommand.as_deref().unwrap_or("run")
        ))),
        None => Ok(()),
    };
    match subcommand.as_deref() {
        None | Some("run") => {
            only(&["--config", "--control"])?;
            no_operand().map(|()| Command::Run(options))
        }
        Some("status") => {
            only(&["--json", "--control"])?;
            no_operand().map(|()| Command::Status(options))
        }
        Some("check-config") if options.keys => {
            if options.config.is_some() {
                return Err(Usage("--keys and --config exclude each other".to_string()));
            }
            only(&["--keys"])?;
            no_operand().map(|()| Command::Keys)
        }
        Some("check-config") => {
            only(&["--config"])?;
            no_operand().map(|()| Command::CheckConfig(options.config))
        }
        Some("host-setup") => {
            only(&["--config", "--format", "--all"])?;
            if options.all && options.config.is_some() {
                return Err(Usage("--all and --config exclude each other".to_string()));
            }
            no_operand().map(|()| Command::HostSetup(options))
        }
        Some("doctor") => {
            only(&["--config", "--root"])?;
            no_operand().map(|()| Command::Doctor(options))
        }
        Some("guid") => only(&[]).and_then(|()| needs_operand("PORT").map(Command::Guid)),
        Some("port") => only(&[]).and_then(|()| needs_operand("GUID").map(Command::Port)),
        Some("thaw") => only(&[]).and_then(|()| no_operand().map(|()| Command::Thaw)),
        Some("kvp") => {
            only(&["--pool", "--json", "--config"])?;
            Ok(Command::Kvp(options, operands))
        }
        Some("clock-helper") => {
            only(&["--socket", "--idle", "--peer-uid", "--fake-clock"])?;
            no_operand().map(|()| Command::ClockHelper(options))
        }
        Some(other) => Err(Usage(format!("unknown command '{other}'"))),
    }
}

fn main() -> ExitCode {
    let command = match parse_args() {
        Ok(command) => command,
        Err(Usage(message)) => {
            eprintln!("hvagent: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("hvagent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Guid(port) => {
            match guid::parse_port_number(&port) {
                Some(port) => {
                    println!("{}", ServiceId::from_port(port));
                    ExitCode::SUCCESS
                }
                None => {
                    eprintln!("hvagent: '{port}' is not a port (a number 0..4294967295, decimal or 0x-hex)");
                    ExitCode::from(2)
                }
            }
        }
        Command::Port(text) => match text.parse::<ServiceId>() {
            Ok(id) => {
                println!("{}", id.port());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("hvagent: {error}");
                ExitCode::from(2)
            }
        },
        Command::CheckConfig(path) => match config::load(path.as_deref()) {
            Ok(config) => {
                print!("{config}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("hvagent: {error}");
                ExitCode::from(2)
            }
        },
        Command::Keys => {
            print!("{}", config::docs::key_list());
            ExitCode::SUCCESS
        }
        Command::Run(options) => run(options),
        Command::Status(options) => status(&options),
        Command::HostSetup(options) => host_setup(&options),
        Command::Doctor(options) => doctor(&options),
        Command::ClockHelper(options) => clock_helper(options),
        Command::Kvp(options, operands) => kvp(&options, &operands),
        Command::Thaw => thaw(),
    }
}

/// `hvagent kvp ...`: the pools of the config's [guestinfo] section, in their files.
fn kvp(options: &Options, operands: &[String]) -> ExitCode {
    use hvagent::ops::kvp::{self, Failure};
    let settings = match config::load(options.config.as_deref()) {
        Ok(config) => config
            .services
            .iter()
            .find_map(|service| match &service.settings {
                config::ServiceSettings::GuestInfo(settings) => Some(settings.clone()),
                _ => None,
            })
            .unwrap_or_default(),
        Err(error) => {
            eprintln!("hvagent: {error}");
            return ExitCode::from(2);
        }
    };
    let outcome = kvp::parse_action(operands).and_then(|action| {
        let pool = options.pool.as_deref().map(kvp::parse_pool).transpose()?;
        kvp::run(&settings, &action, pool, options.json)
    });
    match outcome {
        Ok(text) => print_out(&text),
        Err(Failure { status, message }) => {
            eprintln!("hvagent: {message}");
            ExitCode::from(status)
        }
    }
}

/// `hvagent thaw`: thaws whatever is frozen of the mounts the backup service could freeze, as the agent does
/// at start; exit 0 also when nothing was frozen, 1 when a mount could not be thawed.
fn thaw() -> ExitCode {
    use hvagent::system::freeze::{self, SystemFreezer};
    let mut freezer = SystemFreezer::new(freeze::COMMAND_HINT);
    match hvproto::service::backup::thaw_all(&mut freezer) {
        Ok(thawed) if thawed.is_empty() => print_out("hvagent: nothing was frozen\n"),
        Ok(thawed) => print_out(&format!("hvagent: thawed {}\n", thawed.join(", "))),
        // The reason says what was missing (for EPERM: CAP_SYS_ADMIN, and how to get it).
        Err(why) => {
            eprintln!("hvagent: cannot thaw, filesystems may still be frozen: {why}");
            ExitCode::from(1)
        }
    }
}

/// `hvagent clock-helper`: serves the agent's clock requests until idle.
fn clock_helper(options: Options) -> ExitCode {
    use hvagent::clock::helper;
    let idle = match options.idle.as_deref().map(str::parse::<u64>) {
        None => helper::DEFAULT_IDLE,
        Some(Ok(seconds)) if seconds > 0 => std::time::Duration::from_secs(seconds),
        Some(_) => {
            eprintln!("hvagent: --idle takes a whole number of seconds, 1 or more");
            return ExitCode::from(2);
        }
    };
    let peer_uids = if options.peer_uids.is_empty() {
        None
    } else {
        match options
            .peer_uids
            .iter()
            .map(|uid| uid.parse::<u32>())
            .collect()
        {
            Ok(uids) => Some(uids),
            Err(_) => {
                eprintln!("hvagent: --peer-uid takes a numeric uid");
                return ExitCode::from(2);
            }
        }
    };
    hvagent::ops::systemd::init_logging(log::LevelFilter::Info);
    let options = helper::Options {
        socket: options.socket,
        fake_clock: options.fake_clock,
        peer_uids,
        idle,
    };
    match helper::run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log::error!("hvagent clock-helper: {error}");
            ExitCode::from(1)
        }
    }
}

/// `hvagent doctor`: the checks and their fixes; exit 1 when a problem was found.
fn doctor(options: &Options) -> ExitCode {
    let root = options.root.as_deref().unwrap_or(std::path::Path::new("/"));
    let findings = hvagent::ops::doctor::Doctor::new(root, options.config.as_deref()).run();
    let (text, problems) = hvagent::ops::doctor::render(&findings);
    print_out(&text);
    if problems {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `hvagent host-setup`: the registry entries the Windows host needs, as PowerShell or a .reg file.
fn host_setup(options: &Options) -> ExitCode {
    use hvagent::ops::host_setup::{self, Format};
    let format = match options
        .format
        .as_deref()
        .unwrap_or("powershell")
        .parse::<Format>()
    {
        Ok(format) => format,
        Err(message) => {
            eprintln!("hvagent: {message}");
            return ExitCode::from(2);
        }
    };
    let mut how = String::new();
    let (needed, skipped) = if options.all {
        how.push_str("--all ");
        (host_setup::all_defaults(), Vec::new())
    } else {
        match config::load(options.config.as_deref()) {
            Ok(config) => host_setup::registrations(&config),
            Err(error) => {
                eprintln!("hvagent: {error}");
                return ExitCode::from(2);
            }
        }
    };
    how.push_str(match format {
        Format::PowerShell => "--format powershell",
        Format::Reg => "--format reg",
    });
    print_out(&host_setup::render(&needed, &skipped, format, &how))
}

/// Prints to stdout; a reader that went away (`| head`) is not an error.
fn print_out(text: &str) -> ExitCode {
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
    ExitCode::SUCCESS
}

/// `hvagent status`: asks the running agent and prints its answer as text or JSON.
fn status(options: &Options) -> ExitCode {
    let path = options.control_path();
    let text = match hvagent::ops::control::fetch(&path, std::time::Duration::from_secs(5)) {
        Ok(text) => text,
        Err(error) => {
            eprintln!(
                "hvagent: cannot reach the agent at {}: {error}; is hvagent running \
                 (systemctl status hvagent), and are you root?",
                path.display()
            );
            return ExitCode::from(1);
        }
    };
    match hvagent::ops::status::AgentStatus::from_json(&text) {
        Ok(report) if options.json => print_out(&format!("{}\n", report.to_json())),
        Ok(report) => print_out(&report.render()),
        Err(error) => {
            eprintln!(
                "hvagent: the agent at {} sent a status this version cannot read: {error}",
                path.display()
            );
            ExitCode::from(1)
        }
    }
}

fn run(options: Options) -> ExitCode {
    let notifier = hvagent::ops::systemd::Notifier::from_env();
    let control = options.control_path();
    let explicit_control = options.control.is_some();
    let path = options.config;
    let config = match config::load(path.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("hvagent: {error}");
            return ExitCode::from(2);
        }
    };
    if let Err(error) = hvagent::system::limits::fit(&config) {
        eprintln!("hvagent: {error}");
        return ExitCode::from(2);
    }
    hvagent::ops::systemd::init_logging(config.log_level);
    let mut agent = match GuestLoop::new(config, path) {
        Ok(agent) => agent
            .with_notifier(notifier)
            .with_control_socket(control, explicit_control),
        Err(error) => {
            log::error!("hvagent: {error}");
            return ExitCode::from(1);
        }
    };
    match agent.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log::error!("hvagent: {error}");
            ExitCode::from(1)
        }
    }
}
