//! The descriptor budget: what the enabled services may hold at once must fit RLIMIT_NOFILE, so a full set of
//! connections can never make accept(2) fail with EMFILE. The soft limit is raised at start as far as the hard
//! limit allows; a config that cannot fit is refused.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

use crate::config::{Config, Endpoint};

/// Descriptors the agent holds beside its connections: stdio, the signal pipes, the control socket and its
/// clients, a health check's pipe, chronyd's socket, and room for one connection accepted only to be closed.
pub const RESERVE: u64 = 32;

/// Descriptors `config` may hold at once: `max_connections` of each listening service and its listener, one
/// per dialling service, and [`RESERVE`].
pub fn needed(config: &Config) -> u64 {
    config
        .enabled()
        .map(|service| match service.endpoint {
            Endpoint::Listen(_) => service.max_connections as u64 + 1,
            Endpoint::Connect(_) => 1,
        })
        .sum::<u64>()
        + RESERVE
}

/// The soft limit to set for `needed` descriptors under limits `(soft, hard)`: unchanged when it is enough,
/// otherwise raised to the hard limit; an error when even the hard limit is too low.
pub fn soft_limit_for(needed: u64, soft: u64, hard: u64) -> Result<u64, String> {
    if needed <= soft {
        Ok(soft)
    } else if needed <= hard {
        Ok(hard)
    } else {
        Err(format!(
            "max_connections summed over the enabled services, with {RESERVE} descriptors for the agent itself, \
             needs {needed} open files, above the hard limit of {hard} (RLIMIT_NOFILE); lower max_connections \
             or raise the limit (LimitNOFILE= in the unit, ulimit -Hn)"
        ))
    }
}

/// Makes room for `config`'s descriptors: raises the soft RLIMIT_NOFILE if needed. Returns the soft limit
/// in force, or why the config cannot fit.
pub fn fit(config: &Config) -> Result<u64, String> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|error| format!("cannot read the open-file limit: {error}"))?;
    let wanted = soft_limit_for(needed(config), soft, hard)?;
    if wanted != soft {
        setrlimit(Resource::RLIMIT_NOFILE, wanted, hard).map_err(|error| {
            format!("cannot raise the open-file limit from {soft} to {wanted}: {error}")
        })?;
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn listeners_count_their_connections_and_dialers_one() {
        assert_eq!(needed(&Config::default()), 4 + RESERVE);
        let config = crate::config::parse(
            "[heartbeat]\nlisten = \"unix:/x\"\nmax_connections = 100\n[guestinfo]\nenabled = false\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(needed(&config), 101 + 2 + RESERVE);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one_or_the_config_refused() {
        assert_eq!(soft_limit_for(100, 1024, 4096), Ok(1024));
        assert_eq!(soft_limit_for(2000, 1024, 4096), Ok(4096));
        let error = soft_limit_for(5000, 1024, 4096).unwrap_err();
        assert!(error.contains("5000") && error.contains("4096"), "{error}");
        assert!(error.contains("max_connections"), "{error}");
    }
}
