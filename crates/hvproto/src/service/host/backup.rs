//! The host side of a backup (VSS, IC message type 5) exchange, as `hvhost backup` plays it: the versions a
//! host offers, the request for each operation, and what each answer says. The channel rules (negotiation,
//! one request outstanding, the answer matched by its transaction id) are [`HostChannel`]'s; the body is
//! [`crate::wire::vss`]'s. docs/PROTOCOL.md §10.

use std::time::{Duration, Instant};

use super::{HostChannel, HostError, HostEvent};
use crate::wire::vss::{self, Operation};
use crate::wire::{IcVersion, Message, MessageType, Status};

/// The message versions the host offers: 5.0 only. Linux's `hv_snapshot.c` offers 5.0 alone, and FREEZE and
/// THAW exist from 5.0 on (openvmm's `hyperv_ic_protocol` defines 4.0 to 7.0); a host that also offered 4.0
/// could be given a version in which it cannot ask for either.
pub const MESSAGE_VERSIONS: [IcVersion; 1] = [IcVersion::new(5, 0)];

/// A host channel for the backup service, offering framework 3.0/1.0 and [`MESSAGE_VERSIONS`].
pub fn channel() -> HostChannel {
    HostChannel::for_messages(MessageType::VSS, &MESSAGE_VERSIONS)
}

/// The request for `operation`, Linux's 12-byte body with flags zero; its answer comes back from
/// [`HostChannel::handle`] as [`HostEvent::Answered`], for [`BackupAnswer::read`].
pub fn request(channel: &mut HostChannel, operation: Operation, now: Instant) -> Message {
    channel.request(vss::request_body(operation), now)
}

/// What the guest answered to one backup request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupAnswer {
    pub operation: Operation,
    /// HV_S_OK when the guest did what was asked; anything else is its refusal, not a protocol error.
    pub status: Status,
    /// The flags the answer carries (CHECK_HOT_BACKUP: [`vss::NO_AUTO_RECOVERY`] from Linux).
    pub flags: Option<u32>,
    pub round_trip: Duration,
}

impl BackupAnswer {
    /// Reads the answer to a request for `asked`. The guest echoes the request's body, so an answer for
    /// another operation (or too short to say) is a protocol error, whatever its status.
    pub fn read(asked: Operation, event: HostEvent) -> Result<BackupAnswer, HostError> {
        let HostEvent::Answered {
            status,
            body,
            round_trip,
        } = event
        else {
            return Err(HostError::Unexpected(format!(
                "{event:?} where the answer to a backup {asked} request was expected"
            )));
        };
        let operation = vss::operation(&body).map_err(HostError::Body)?;
        if operation != asked {
            return Err(HostError::Unexpected(format!(
                "a backup {asked} request answered for {operation}"
            )));
        }
        Ok(BackupAnswer {
            operation,
            status,
            flags: vss::flags(&body),
            round_trip,
        })
    }

    pub fn is_ok(&self) -> bool {
        self.status == Status::OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::host::HostState;
    use crate::wire::negotiate::Negotiate;
    use crate::wire::IcFlags;

    fn v(major: u16, minor: u16) -> IcVersion {
        IcVersion::new(major, minor)
    }

    /// A channel that negotiated framework 3.0 and message 5.0 with a guest that chose them as Linux does.
    fn negotiated(now: Instant) -> HostChannel {
        let mut host = channel();
        let offer = host.offer();
        let offered = Negotiate::parse(&offer.body).unwrap();
        assert_eq!(offered.message_versions, [v(5, 0)]);
        let chosen = offered.choose(&[v(3, 0), v(1, 0)], &[v(5, 0)]);
        let answer = offer.reply(Status::OK, Negotiate::answer(chosen).to_body());
        assert_eq!(
            host.handle(&answer, now),
            Ok(HostEvent::Negotiated {
                framework: v(3, 0),
                message: v(5, 0)
            })
        );
        host
    }

    /// The guest's answer to `request`: its body echoed, with `flags` written, as Linux answers.
    fn answer(request: &Message, status: Status, flags: Option<u32>) -> Message {
        let mut body = request.body.clone();
        if let Some(flags) = flags {
            body[8..12].copy_from_slice(&flags.to_le_bytes());
        }
        request.reply(status, body)
    }

    #[test]
    fn a_backup_request_is_a_vss_transaction_at_the_negotiated_versions() {
        let now = Instant::now();
        let mut host = negotiated(now);
        assert_eq!(
            host.state(),
            HostState::Ready {
                framework: v(3, 0),
                message: v(5, 0)
            }
        );
        let freeze = request(&mut host, Operation::FREEZE, now);
        assert_eq!(freeze.header.msgtype, MessageType::VSS);
        assert_eq!(freeze.header.framework_version, v(3, 0));
        assert_eq!(freeze.header.message_version, v(5, 0));
        assert!(freeze.header.flags.contains(IcFlags::TRANSACTION));
        assert_eq!(freeze.body, vss::request_body(Operation::FREEZE));
    }

    #[test]
    fn an_answer_is_matched_by_transaction_id_and_read_with_its_flags() {
        let now = Instant::now();
        let mut host = negotiated(now);
        let check = request(&mut host, Operation::HOT_BACKUP, now);
        let later = now + Duration::from_millis(3);
        let event = host
            .handle(
                &answer(&check, Status::OK, Some(vss::NO_AUTO_RECOVERY)),
                later,
            )
            .unwrap();
        let read = BackupAnswer::read(Operation::HOT_BACKUP, event).unwrap();
        assert_eq!(
            read,
            BackupAnswer {
                operation: Operation::HOT_BACKUP,
                status: Status::OK,
                flags: Some(vss::NO_AUTO_RECOVERY),
                round_trip: Duration::from_millis(3),
            }
        );
        // The next request has a transaction id of its own; an answer carrying the old one is refused.
        let freeze = request(&mut host, Operation::FREEZE, now);
        assert_ne!(freeze.header.transaction_id, check.header.transaction_id);
        let mut stale = answer(&freeze, Status::OK, None);
        stale.header.transaction_id = check.header.transaction_id;
        assert!(matches!(
            host.handle(&stale, now),
            Err(HostError::Unexpected(why)) if why.contains("transaction id")
        ));
    }

    #[test]
    fn a_refused_freeze_is_an_answer_with_its_status_not_an_error() {
        let now = Instant::now();
        let mut host = negotiated(now);
        let freeze = request(&mut host, Operation::FREEZE, now);
        let event = host
            .handle(&answer(&freeze, Status::FAIL, None), now)
            .unwrap();
        let read = BackupAnswer::read(Operation::FREEZE, event).unwrap();
        assert_eq!(read.status, Status::FAIL);
        assert!(!read.is_ok());
    }

    #[test]
    fn an_answer_for_another_operation_or_without_a_header_is_a_protocol_error() {
        let now = Instant::now();
        let mut host = negotiated(now);
        let thaw = request(&mut host, Operation::THAW, now);
        let mut wrong = answer(&thaw, Status::OK, None);
        wrong.body[0] = Operation::FREEZE.0;
        let event = host.handle(&wrong, now).unwrap();
        assert!(matches!(
            BackupAnswer::read(Operation::THAW, event),
            Err(HostError::Unexpected(why)) if why.contains("answered for freeze")
        ));
        let thaw = request(&mut host, Operation::THAW, now);
        let event = host
            .handle(&thaw.reply(Status::OK, vec![6, 0, 0]), now)
            .unwrap();
        assert!(matches!(
            BackupAnswer::read(Operation::THAW, event),
            Err(HostError::Body(_))
        ));
    }

    #[test]
    fn a_guest_choosing_a_version_we_did_not_offer_is_refused() {
        let mut host = channel();
        let offer = host.offer();
        let answer = offer.reply(
            Status::OK,
            Negotiate::answer(Some((v(3, 0), v(4, 0)))).to_body(),
        );
        assert!(matches!(
            host.handle(&answer, Instant::now()),
            Err(HostError::Unexpected(why)) if why.contains("did not offer")
        ));
    }
}
