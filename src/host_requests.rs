//! hvhost's one-shot requests to a listening agent: `hvhost shutdown` and `hvhost kvp`. Each dials, negotiates,
//! sends its request(s) and prints what the guest answered, one line each.

use std::io::Write;

use crate::host_peer::{self, say, Client, PeerError};
use crate::service::host::HostEvent;
use crate::service::shutdown::display_text;
use crate::service::ServiceKind;
use crate::transport::Address;
use crate::wire::shutdown::{flags, ShutdownRequest, DISPLAY_MESSAGE_LEN};
use crate::wire::Status;

/// What `hvhost shutdown` sends.
#[derive(Clone, Debug, Default)]
pub struct ShutdownOptions {
    pub reboot: bool,
    pub hibernate: bool,
    pub force: bool,
    pub reason: u32,
    pub message: String,
}

impl ShutdownOptions {
    /// The request body: flags from the options, the message as bytes padded to Linux's 2048.
    pub fn body(&self) -> ShutdownRequest {
        let mut value = 0;
        if self.reboot {
            value |= flags::REBOOT;
        }
        if self.hibernate {
            value |= flags::HIBERNATE;
        }
        if self.force {
            value |= flags::FORCE;
        }
        let mut display_message = self.message.as_bytes().to_vec();
        display_message.truncate(DISPLAY_MESSAGE_LEN - 1);
        display_message.resize(DISPLAY_MESSAGE_LEN, 0);
        ShutdownRequest {
            reason_code: self.reason,
            timeout_seconds: 0,
            flags: value,
            display_message,
        }
    }
}

/// Dials `address` and negotiates `kind`, printing both steps.
pub fn open(
    address: &Address,
    kind: ServiceKind,
    out: &mut dyn Write,
) -> Result<Client, PeerError> {
    let fd = host_peer::dial(address)?;
    say(out, &format!("connected {address}"));
    let mut client = Client::new(fd, kind);
    if let HostEvent::Negotiated { framework, message } = client.negotiate()? {
        say(
            out,
            &format!("negotiated framework={framework} message={message}"),
        );
    }
    Ok(client)
}

/// A refusal by the guest: the status it answered with.
#[derive(Debug)]
pub struct Refused(pub Status);

/// `hvhost shutdown`: Ok(true) when the guest answered HV_S_OK.
pub fn shutdown(
    address: &Address,
    options: &ShutdownOptions,
    out: &mut dyn Write,
) -> Result<bool, PeerError> {
    let mut client = open(address, ServiceKind::Shutdown, out)?;
    let body = options.body();
    let (status, _) = client.exchange(body.to_body())?;
    say(
        out,
        &format!(
            "shutdown flags={:#x} reason={:#010x} message=\"{}\" answer={status}",
            body.flags,
            body.reason_code,
            display_text(&body.display_message)
        ),
    );
    Ok(status == Status::OK)
}
