//! The real [`Power`]: commands spawned without a shell and never waited for in the loop, and the
//! sync + reboot(2) fallback for systems without systemd.

use std::process::{Child, Command, Stdio};

use hvproto::service::shutdown::{Power, PowerAction};

/// Runs shutdown actions on this system.
#[derive(Default)]
pub struct SystemPower {
    child: Option<Child>,
}

impl SystemPower {
    pub fn new() -> SystemPower {
        SystemPower::default()
    }
}

/// Whether `state` (the text of /sys/power/state) and `swaps` (of /proc/swaps) allow hibernation.
pub fn hibernation_possible(state: &str, swaps: &str) -> bool {
    state.split_whitespace().any(|word| word == "disk")
        && swaps.lines().skip(1).any(|line| !line.trim().is_empty())
}

impl Power for SystemPower {
    fn systemd_booted(&self) -> bool {
        super::systemd_booted()
    }

    fn can_hibernate(&self) -> bool {
        let read = |path| std::fs::read_to_string(path).unwrap_or_default();
        hibernation_possible(&read("/sys/power/state"), &read("/proc/swaps"))
    }

    fn spawn(&mut self, argv: &[String], env: &[(&'static str, String)]) -> Result<(), String> {
        let (program, args) = argv.split_first().ok_or("the command is empty")?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(key, value)| (*key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|error| error.to_string())?;
        self.child = Some(child);
        Ok(())
    }

    fn try_wait(&mut self) -> Option<Result<(), String>> {
        let child = self.child.as_mut()?;
        let outcome = match child.try_wait() {
            Ok(None) => return None,
            Ok(Some(status)) if status.success() => Ok(()),
            Ok(Some(status)) => Err(status.to_string()),
            Err(error) => Err(error.to_string()),
        };
        self.child = None;
        Some(outcome)
    }

    fn reboot_now(&mut self, action: PowerAction) -> String {
        use nix::sys::reboot::{reboot, RebootMode};
        nix::unistd::sync();
        let mode = match action {
            PowerAction::PowerOff => RebootMode::RB_POWER_OFF,
            PowerAction::Reboot => RebootMode::RB_AUTOBOOT,
            PowerAction::Hibernate => return software_suspend(),
        };
        match reboot(mode) {
            Ok(never) => match never {},
            Err(error) => error.to_string(),
        }
    }
}

/// reboot(2) with LINUX_REBOOT_CMD_SW_SUSPEND: hibernates and returns after the resume (nix's wrapper treats
/// every return as an error, so this one calls libc).
fn software_suspend() -> String {
    // SAFETY: reboot(2) takes no pointers for this command; it only changes the machine's power state.
    let result = unsafe { libc::reboot(libc::RB_SW_SUSPEND) };
    if result == 0 {
        "the guest resumed from hibernation".to_string()
    } else {
        nix::errno::Errno::last().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hibernation_needs_disk_state_and_active_swap() {
        let header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
        let swap = format!("{header}/dev/vda2 partition 1048572 0 -2\n");
        assert!(hibernation_possible("freeze mem disk\n", &swap));
        assert!(!hibernation_possible("freeze mem disk\n", header));
        assert!(!hibernation_possible("freeze mem\n", &swap));
        assert!(!hibernation_possible("", ""));
    }
}
