//! The IP-info operations of the guest-info service (docs/PROTOCOL.md §9.7): GET_IP_INFO answered from the
//! system for the adapter the host names, SET_IP_INFO handed to a configured command. The encoding is
//! [`crate::wire::ipinfo`]; the system is behind [`Network`].
//!
//! Statuses: an adapter the guest does not have is HV_GUID_NOTFOUND (0x80041002), as hv_kvp_daemon answers
//! a SET for an unknown device (its GET answers HV_E_FAIL there; the host only reads "failed" either way);
//! SET_IP_INFO without a command configured is HV_ERROR_NOT_SUPPORTED; the command's exit 0 is HV_S_OK and
//! anything else HV_E_FAIL. The SET answer waits for the command (polled every [`SET_POLL`] while it runs,
//! never while idle); one SET runs at a time, as the host sends one at a time.

use std::time::{Duration, Instant};

use crate::service::logic::{LinkId, Refusal};
use crate::wire::ipinfo::{self, IpInfo};
use crate::wire::{IcVersion, Message, MessageRef, Status};

/// How often a running SET_IP_INFO command is checked.
pub const SET_POLL: Duration = Duration::from_millis(50);

/// The system's network, as the IP-info operations need it.
pub trait Network {
    /// The settings of the adapter the host names by `id` (a MAC address, in any of the forms hosts write:
    /// `00:15:5D:00:01:02`, `00-15-5d-00-01-02`, `00155D000102`); None when the guest has none such.
    fn adapter(&self, id: &str) -> Option<IpInfo>;
    /// Starts the configured command for a SET_IP_INFO of `info`; the refusal says why it cannot run
    /// (none configured, an unknown adapter, a failed start).
    fn start_set(&mut self, info: &IpInfo) -> Result<(), Refusal>;
    /// How the command started last ended: None while it runs, Some(Err) for a failure or its time limit.
    fn poll_set(&mut self, now: Instant) -> Option<Result<(), String>>;
}

/// A guest whose network is not looked at: no adapter is known, and SET_IP_INFO is not supported.
pub struct NoNetwork;

impl Network for NoNetwork {
    fn adapter(&self, _id: &str) -> Option<IpInfo> {
        None
    }
    fn start_set(&mut self, _info: &IpInfo) -> Result<(), Refusal> {
        Err(not_supported())
    }
    fn poll_set(&mut self, _now: Instant) -> Option<Result<(), String>> {
        Some(Err("no command runs".to_string()))
    }
}

/// SET_IP_INFO without a command to run.
pub fn not_supported() -> Refusal {
    Refusal::new(
        Status::NOT_SUPPORTED,
        "SET_IP_INFO is not supported: set_ip_command in [guestinfo] names no command",
    )
}

/// An adapter the guest does not have.
pub fn unknown_adapter(id: &str) -> Refusal {
    Refusal::new(
        Status::GUID_NOT_FOUND,
        format!(
            "no network adapter of this guest is {:?}",
            id.escape_debug().to_string()
        ),
    )
}

/// The IP operations' state: the edge and the SET waiting for its command.
pub struct IpConfig {
    network: Box<dyn Network>,
    /// The running SET's answer (None when the host wants none), and when to look at it next.
    running: Option<(Option<(LinkId, Message)>, Instant)>,
}

/// What an IP request got.
pub enum IpAnswer {
    /// The answer body, with HV_S_OK.
    Now(Vec<u8>),
    /// Answered when the command ends.
    Later,
}

impl IpConfig {
    pub fn new(network: Box<dyn Network>) -> IpConfig {
        IpConfig {
            network,
            running: None,
        }
    }

    /// GET_IP_INFO: the request's body with the adapter's settings written in.
    pub fn get(&self, request: &MessageRef<'_>, version: IcVersion) -> Result<IpAnswer, Refusal> {
        let binary = ipinfo::binary_form(version);
        let id = ipinfo::adapter_id(request.body, binary).map_err(Refusal::invalid)?;
        let info = self
            .network
            .adapter(&id)
            .ok_or_else(|| unknown_adapter(&id))?;
        let mut body = request.body.to_vec();
        ipinfo::emit(&info, &mut body, binary).map_err(Refusal::invalid)?;
        Ok(IpAnswer::Now(body))
    }

    /// SET_IP_INFO: starts the command; answered when it ends.
    pub fn set(
        &mut self,
        link: LinkId,
        request: &MessageRef<'_>,
        version: IcVersion,
        now: Instant,
    ) -> Result<IpAnswer, Refusal> {
        if self.running.is_some() {
            return Err(Refusal::new(
                Status::FAIL,
                "a SET_IP_INFO command is still running",
            ));
        }
        let info =
            ipinfo::parse(request.body, ipinfo::binary_form(version)).map_err(Refusal::invalid)?;
        self.network.start_set(&info)?;
        let answer = request
            .header
            .flags
            .expects_answer()
            .then(|| (link, request.reply(Status::OK, request.body.to_vec())));
        self.running = Some((answer, now + SET_POLL));
        Ok(IpAnswer::Later)
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.running.as_ref().map(|(_, at)| *at)
    }

    /// Looks at the running command when due; its answer goes to `out` once it ended.
    pub fn on_timer(&mut self, now: Instant, out: &mut Vec<(LinkId, Message)>) {
        let Some((_, at)) = &mut self.running else {
            return;
        };
        if *at > now {
            return;
        }
        let Some(outcome) = self.network.poll_set(now) else {
            *at = now + SET_POLL;
            return;
        };
        let Some((answer, _)) = self.running.take() else {
            return;
        };
        if let Err(why) = &outcome {
            log::warn!("guestinfo: SET_IP_INFO answered HV_E_FAIL: {why}");
        }
        if let Some((link, mut answer)) = answer {
            answer.header.status = if outcome.is_ok() {
                Status::OK
            } else {
                Status::FAIL
            };
            out.push((link, answer));
        }
    }

    /// `link` is gone: the running command's answer has nowhere to go.
    pub fn forget_link(&mut self, link: LinkId) {
        if let Some((answer, _)) = &mut self.running {
            if answer.as_ref().is_some_and(|(to, _)| *to == link) {
                *answer = None;
            }
        }
    }
}
