//! The runtime's order of work on one link, with a real socket pair and fake edges.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::Instant;

use super::Link;
use crate::config::ServiceConfig;
use crate::event_loop::quiet::Quiet;
use hvproto::service::host::HostChannel;
use hvproto::service::shutdown::ShutdownSettings;
use hvproto::service::shutdown::{Power, PowerAction, ShutdownLogic};
use hvproto::service::ServiceKind;
use hvproto::wire::shutdown::ShutdownRequest;
use hvproto::wire::{Decoder, IcVersion, Message, MessageType, Status};

/// A power edge that, when asked to run a command, reads what the host side of the socket has received.
struct Witness {
    host: UnixStream,
    seen_at_spawn: Rc<RefCell<Option<Vec<Message>>>>,
}

impl Power for Witness {
    fn systemd_booted(&self) -> bool {
        true
    }
    fn can_hibernate(&self) -> bool {
        false
    }
    fn spawn(&mut self, _argv: &[String], _env: &[(&'static str, String)]) -> Result<(), String> {
        let mut bytes = vec![0u8; 65536];
        let count = self.host.read(&mut bytes).unwrap_or(0);
        let mut decoder = Decoder::new();
        decoder.push(&bytes[..count]);
        let mut messages = Vec::new();
        while let Ok(Some(message)) = decoder.next_message() {
            messages.push(message.to_owned_message());
        }
        *self.seen_at_spawn.borrow_mut() = Some(messages);
        Ok(())
    }
    fn try_wait(&mut self) -> Option<Result<(), String>> {
        None
    }
    fn reboot_now(&mut self, _action: PowerAction) -> String {
        panic!("the test configures a command; reboot(2) must not be reached")
    }
}

#[test]
fn the_shutdown_answer_is_on_the_socket_before_the_command_runs() {
    let (agent, mut host) = UnixStream::pair().unwrap();
    agent.set_nonblocking(true).unwrap();
    let witness_end = host.try_clone().unwrap();
    witness_end.set_nonblocking(true).unwrap();
    let seen = Rc::new(RefCell::new(None));
    let config = ShutdownSettings {
        poweroff: vec!["/bin/true".into()],
        ..ShutdownSettings::default()
    };
    let mut logic = ShutdownLogic::new(
        config,
        Box::new(Witness {
            host: witness_end,
            seen_at_spawn: seen.clone(),
        }),
    );
    let now = Instant::now();
    let mut link = Link::new(
        OwnedFd::from(agent),
        &ServiceConfig::default_for(ServiceKind::Shutdown),
        1,
        "test peer".to_string(),
        now,
    );
    let offer = HostChannel::new(ServiceKind::Shutdown).offer();
    let request = Message::request(
        MessageType::SHUTDOWN,
        IcVersion::new(3, 0),
        IcVersion::new(3, 2),
        9,
        ShutdownRequest::default().to_body(),
    );
    host.write_all(&offer.to_bytes().unwrap()).unwrap();
    host.write_all(&request.to_bytes().unwrap()).unwrap();
    link.read_and_answer(&mut Quiet::new("shutdown"), &mut logic, now);
    let seen = seen.borrow();
    let seen = seen.as_ref().expect("the command was started");
    let answer = seen
        .iter()
        .find(|message| message.header.msgtype == MessageType::SHUTDOWN)
        .expect("the shutdown answer had reached the host when the command started");
    assert_eq!(answer.header.status, Status::OK);
    assert_eq!(answer.header.transaction_id, 9);
}

#[test]
fn accept_errors_of_exhaustion_pause_and_unknown_ones_reopen_the_listener() {
    use super::{classify, AcceptError};
    use nix::errno::Errno;
    for errno in [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM] {
        assert_eq!(classify(errno), AcceptError::Exhausted, "{errno}");
    }
    for errno in [
        Errno::ECONNABORTED,
        Errno::EINTR,
        Errno::EPROTO,
        Errno::EPERM,
    ] {
        assert_eq!(classify(errno), AcceptError::Connection, "{errno}");
    }
    for errno in [Errno::EBADF, Errno::EINVAL, Errno::ENOTSOCK] {
        assert_eq!(classify(errno), AcceptError::Listener, "{errno}");
    }
}
