//! hvagent: the guest agent's command line. Parses arguments and calls the library.
//!
//! Exit status: 0 ok, 1 runtime failure, 2 usage or configuration error.

use std::path::PathBuf;
use std::process::ExitCode;

use hvagent::config;
use hvagent::event_loop::Agent;
use hvagent::guid::{self, ServiceId};

const USAGE: &str = "\
usage: hvagent [run] [--config FILE]     run the agent in the foreground
       hvagent check-config [--config FILE]
                                      print the effective configuration, or the errors
       hvagent guid PORT              print the hv_sock service GUID of a vsock port (decimal or 0x-hex)
       hvagent port GUID              print the vsock port of an hv_sock service GUID
       hvagent --version | --help

The configuration is read from /etc/hvagent/hvagent.toml unless --config is given; a missing default file
means built-in defaults. RUST_LOG overrides log_level.";

/// A usage error: printed with a pointer to --help, exit status 2.
struct Usage(String);

impl From<lexopt::Error> for Usage {
    fn from(error: lexopt::Error) -> Usage {
        Usage(error.to_string())
    }
}

enum Command {
    Run(Option<PathBuf>),
    CheckConfig(Option<PathBuf>),
    Guid(String),
    Port(String),
    Help,
    Version,
}

fn parse_args() -> Result<Command, Usage> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut subcommand: Option<String> = None;
    let mut config: Option<PathBuf> = None;
    let mut operand: Option<String> = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("config") | Short('c') => config = Some(parser.value()?.into()),
            Long("help") | Short('h') => return Ok(Command::Help),
            Long("version") | Short('V') => return Ok(Command::Version),
            Value(value) if subcommand.is_none() => subcommand = Some(value.string()?),
            Value(value) if operand.is_none() => operand = Some(value.string()?),
            other => return Err(other.unexpected().into()),
        }
    }
    let needs_operand = |what: &str| {
        operand
            .clone()
            .ok_or_else(|| Usage(format!("missing {what}")))
    };
    let no_operand = || match &operand {
        Some(extra) => Err(Usage(format!("unexpected argument '{extra}'"))),
        None => Ok(()),
    };
    match subcommand.as_deref() {
        None | Some("run") => no_operand().map(|()| Command::Run(config)),
        Some("check-config") => no_operand().map(|()| Command::CheckConfig(config)),
        Some("guid") => needs_operand("PORT").map(Command::Guid),
        Some("port") => needs_operand("GUID").map(Command::Port),
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
        Command::Run(path) => run(path),
    }
}

fn run(path: Option<PathBuf>) -> ExitCode {
    let config = match config::load(path.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("hvagent: {error}");
            return ExitCode::from(2);
        }
    };
    hvagent::systemd::init_logging(config.log_level);
    let mut agent = match Agent::new(config, path) {
        Ok(agent) => agent,
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
