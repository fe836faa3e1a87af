//! Channel behaviour: negotiation, heartbeats, refusals, and the host side against the guest side.

use std::time::{Duration, Instant};

use super::heartbeat::HeartbeatLogic;
use super::host::{HostChannel, HostEvent, HostState};
use super::*;
use crate::wire::heartbeat::Heartbeat;
use crate::wire::{IcFlags, Message, MessageRef, ReplyWriter};

fn v(major: u16, minor: u16) -> IcVersion {
    IcVersion::new(major, minor)
}

/// A guest channel with the heartbeat logic behind it, as the agent runs it.
struct Guest {
    channel: Channel,
    logic: HeartbeatLogic,
}

impl Guest {
    fn new(kind: ServiceKind) -> Guest {
        Guest {
            channel: Channel::new(kind, 1),
            logic: HeartbeatLogic::new(),
        }
    }

    fn handle(&mut self, message: &Message, replies: &mut Vec<Message>) -> Event {
        handle_to_messages(
            &mut self.channel,
            message,
            &mut self.logic,
            Instant::now(),
            replies,
        )
    }

    fn state(&self) -> ChannelState {
        self.channel.state()
    }

    fn heartbeats(&self) -> u64 {
        self.logic.answered()
    }
}

fn offer(frameworks: &[IcVersion], messages: &[IcVersion]) -> Message {
    let body = Negotiate {
        framework_versions: frameworks.to_vec(),
        message_versions: messages.to_vec(),
        ..Negotiate::default()
    }
    .to_body();
    Message::request(MessageType::NEGOTIATE, v(1, 0), v(1, 0), 0, body)
}

fn one_reply(channel: &mut Guest, message: &Message) -> (Message, Event) {
    let mut replies = Vec::new();
    let event = channel.handle(message, &mut replies);
    assert_eq!(replies.len(), 1, "exactly one reply for {message:?}");
    (replies.remove(0), event)
}

fn ready(kind: ServiceKind) -> Guest {
    let mut channel = Guest::new(kind);
    let messages: Vec<IcVersion> = kind.message_versions().iter().rev().copied().collect();
    one_reply(&mut channel, &offer(&[v(1, 0), v(3, 0)], &messages));
    channel
}

fn heartbeat(seq: u64, flags: u8, len: usize) -> Message {
    let mut body = vec![0; len];
    body[..8].copy_from_slice(&seq.to_le_bytes());
    let mut message = Message::request(MessageType::HEARTBEAT, v(3, 0), v(3, 0), 9, body);
    message.header.flags = IcFlags(flags);
    message
}

#[test]
fn each_service_negotiates_its_preferred_versions() {
    let cases = [
        (ServiceKind::Heartbeat, vec![v(1, 0), v(3, 0)], v(3, 0)),
        (
            ServiceKind::TimeSync,
            vec![v(1, 0), v(3, 0), v(4, 0)],
            v(4, 0),
        ),
        (ServiceKind::TimeSync, vec![v(4, 0), v(4, 1)], v(4, 1)),
        (
            ServiceKind::Shutdown,
            vec![v(1, 0), v(3, 0), v(3, 1), v(3, 2)],
            v(3, 2),
        ),
        (ServiceKind::Shutdown, vec![v(1, 0)], v(1, 0)),
    ];
    for (kind, messages, expected) in cases {
        let mut channel = Guest::new(kind);
        let (reply, event) = one_reply(&mut channel, &offer(&[v(1, 0), v(3, 0)], &messages));
        assert_eq!(
            reply.header.flags.0,
            IcFlags::TRANSACTION | IcFlags::RESPONSE
        );
        assert_eq!(reply.header.transaction_id, 0);
        assert_eq!(reply.header.status, Status::OK);
        assert_eq!(reply.body.len(), 16);
        let answer = Negotiate::parse(&reply.body).unwrap();
        assert_eq!(answer.chosen(), Some((v(3, 0), expected)), "{kind}");
        assert_eq!(
            event,
            Event::Negotiated {
                framework: v(3, 0),
                message: expected
            }
        );
    }
}

#[test]
fn framework_1_0_is_taken_when_3_0_is_not_offered() {
    let mut channel = Guest::new(ServiceKind::Heartbeat);
    let (reply, _) = one_reply(&mut channel, &offer(&[v(1, 0)], &[v(1, 0)]));
    assert_eq!(
        Negotiate::parse(&reply.body).unwrap().chosen(),
        Some((v(1, 0), v(1, 0)))
    );
}

#[test]
fn no_common_version_is_answered_with_counts_zero_and_blocks_requests() {
    let mut channel = Guest::new(ServiceKind::Heartbeat);
    let (reply, event) = one_reply(&mut channel, &offer(&[v(2, 0)], &[v(3, 0)]));
    assert_eq!(reply.body, vec![0; 16]);
    assert!(matches!(event, Event::NoCommonVersion { .. }));
    assert_eq!(channel.state(), ChannelState::NoCommonVersion);
    let (reply, _) = one_reply(&mut channel, &heartbeat(1, 3, 16));
    assert_eq!(reply.header.status, Status::FAIL);
}

#[test]
fn heartbeat_is_answered_with_seq_plus_one_same_transaction_and_length() {
    let mut channel = ready(ServiceKind::Heartbeat);
    for len in [8, 16, 40] {
        let (reply, event) = one_reply(&mut channel, &heartbeat(41, 3, len));
        assert_eq!(reply.header.status, Status::OK);
        assert_eq!(reply.header.transaction_id, 9);
        assert_eq!(reply.header.msgtype, MessageType::HEARTBEAT);
        assert_eq!(
            reply.header.flags.0,
            IcFlags::TRANSACTION | IcFlags::RESPONSE
        );
        assert_eq!(reply.body.len(), len);
        assert_eq!(Heartbeat::parse(&reply.body).unwrap().seq_num, 42);
        assert_eq!(
            event,
            Event::Served {
                msgtype: MessageType::HEARTBEAT
            }
        );
    }
    assert_eq!(channel.heartbeats(), 3);
}

#[test]
fn request_without_transaction_is_processed_silently() {
    let mut channel = ready(ServiceKind::Heartbeat);
    let mut replies = Vec::new();
    // icflags 0, as a Microsoft host sends time samples; and REQUEST alone.
    for flags in [0, IcFlags::REQUEST] {
        let event = channel.handle(&heartbeat(5, flags, 16), &mut replies);
        assert_eq!(
            event,
            Event::Served {
                msgtype: MessageType::HEARTBEAT
            }
        );
    }
    assert!(replies.is_empty());
    assert_eq!(channel.heartbeats(), 2);
}

#[test]
fn answers_are_appended_after_what_the_output_queue_holds() {
    let mut channel = ready(ServiceKind::Heartbeat);
    let mut out = b"queued".to_vec();
    let request = heartbeat(7, IcFlags::TRANSACTION | IcFlags::REQUEST, 16);
    channel
        .channel
        .handle(&request, &mut channel.logic, Instant::now(), &mut out);
    assert_eq!(&out[..6], b"queued");
    let reply = Message::parse(&out[6..]).unwrap();
    assert_eq!(Heartbeat::parse(reply.body).unwrap().seq_num, 8);
    // Without TRANSACTION nothing is added.
    let before = out.len();
    channel.channel.handle(
        &heartbeat(8, IcFlags::REQUEST, 16),
        &mut channel.logic,
        Instant::now(),
        &mut out,
    );
    assert_eq!(out.len(), before);
}

/// A logic whose answer cannot fit a message.
struct Oversized;

impl Logic for Oversized {
    fn request(
        &mut self,
        _link: LinkId,
        _request: &MessageRef<'_>,
        _version: IcVersion,
        _now: Instant,
        reply: &mut ReplyWriter<'_>,
    ) -> Result<Status, Refusal> {
        reply.extend_from_slice(&vec![0; crate::wire::MAX_MESSAGE_LEN]);
        Ok(Status::OK)
    }
}

#[test]
fn an_answer_too_large_for_a_message_becomes_hv_e_fail_echoing_the_request() {
    let mut channel = Channel::new(ServiceKind::Heartbeat, 1);
    let mut replies = Vec::new();
    let offer = offer(&[v(3, 0)], &[v(3, 0)]);
    handle_to_messages(
        &mut channel,
        &offer,
        &mut Oversized,
        Instant::now(),
        &mut replies,
    );
    replies.clear();
    let request = heartbeat(1, IcFlags::TRANSACTION | IcFlags::REQUEST, 16);
    let event = handle_to_messages(
        &mut channel,
        &request,
        &mut Oversized,
        Instant::now(),
        &mut replies,
    );
    assert_eq!(
        replies,
        vec![request.reply(Status::FAIL, request.body.clone())]
    );
    assert!(
        matches!(&event, Event::Refused { status: Status::FAIL, why, .. } if why.contains("exceeds")),
        "{event:?}"
    );
}

#[test]
fn transaction_without_request_flag_is_still_answered() {
    let mut channel = ready(ServiceKind::Heartbeat);
    let (reply, _) = one_reply(&mut channel, &heartbeat(1, IcFlags::TRANSACTION, 16));
    assert_eq!(reply.header.status, Status::OK);
}

#[test]
fn unknown_type_is_answered_with_hv_e_fail_echoing_the_body() {
    let mut channel = ready(ServiceKind::Heartbeat);
    let mut request = heartbeat(1, 3, 16);
    request.header.msgtype = MessageType(99);
    let (reply, event) = one_reply(&mut channel, &request);
    assert_eq!(reply.header.status, Status::FAIL);
    assert_eq!(reply.header.msgtype, MessageType(99));
    assert_eq!(reply.body, request.body);
    assert!(matches!(
        event,
        Event::Refused {
            status: Status::FAIL,
            ..
        }
    ));
    // The channel still works.
    let (reply, _) = one_reply(&mut channel, &heartbeat(2, 3, 16));
    assert_eq!(reply.header.status, Status::OK);
}

#[test]
fn another_services_type_is_refused_on_this_channel() {
    let mut channel = ready(ServiceKind::Heartbeat);
    let mut request = heartbeat(1, 3, 16);
    request.header.msgtype = MessageType::TIMESYNC;
    let (reply, _) = one_reply(&mut channel, &request);
    assert_eq!(reply.header.status, Status::FAIL);
}

#[test]
fn request_before_negotiation_is_answered_with_hv_e_fail() {
    let mut channel = Guest::new(ServiceKind::Heartbeat);
    let (reply, event) = one_reply(&mut channel, &heartbeat(1, 3, 16));
    assert_eq!(reply.header.status, Status::FAIL);
    assert!(matches!(event, Event::Refused { .. }));
    assert_eq!(channel.heartbeats(), 0);
}

#[test]
fn short_bodies_are_answered_with_invalid_arg() {
    let mut channel = ready(ServiceKind::Heartbeat);
    let (reply, _) = one_reply(&mut channel, &heartbeat(1, 3, 16).with_body(vec![1, 2, 3]));
    assert_eq!(reply.header.status, Status::INVALID_ARG);
    let mut bad_offer = offer(&[v(3, 0)], &[v(3, 0)]);
    bad_offer.body[0] = 101;
    let (reply, _) = one_reply(&mut channel, &bad_offer);
    assert_eq!(reply.header.status, Status::INVALID_ARG);
    // A refused renegotiation leaves the agreed versions in place.
    assert!(matches!(channel.state(), ChannelState::Ready { .. }));
}

#[test]
fn responses_nobody_asked_for_are_dropped() {
    let mut channel = ready(ServiceKind::Heartbeat);
    let mut replies = Vec::new();
    let response = heartbeat(1, IcFlags::TRANSACTION | IcFlags::RESPONSE, 16);
    let event = channel.handle(&response, &mut replies);
    assert!(replies.is_empty());
    assert_eq!(
        event,
        Event::UnexpectedResponse {
            msgtype: MessageType::HEARTBEAT,
            transaction_id: 9
        }
    );
}

#[test]
fn host_side_negotiates_and_heartbeats_with_the_guest_side() {
    let start = Instant::now();
    let mut host = HostChannel::new(ServiceKind::Heartbeat);
    let mut guest = Guest::new(ServiceKind::Heartbeat);
    let (reply, _) = one_reply(&mut guest, &host.offer());
    assert_eq!(
        host.handle(&reply, start),
        Ok(HostEvent::Negotiated {
            framework: v(3, 0),
            message: v(3, 0)
        })
    );
    assert_eq!(
        host.state(),
        HostState::Ready {
            framework: v(3, 0),
            message: v(3, 0)
        }
    );
    // Pipelined: three out, then three answers in order.
    let requests: Vec<Message> = (0..3).map(|_| host.heartbeat(start)).collect();
    assert_eq!(host.in_flight(), 3);
    for (seq, request) in requests.iter().enumerate() {
        let (reply, _) = one_reply(&mut guest, request);
        let later = start + Duration::from_micros(10);
        match host.handle(&reply, later).unwrap() {
            HostEvent::HeartbeatAnswered {
                seq_num,
                round_trip,
                state,
            } => {
                assert_eq!(seq_num, seq as u64);
                assert_eq!(round_trip, Duration::from_micros(10));
                assert_eq!(state, Some(crate::wire::heartbeat::AppState::UNKNOWN));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(host.in_flight(), 0);
}

#[test]
fn host_side_rejects_a_wrong_sequence_number() {
    let now = Instant::now();
    let mut host = HostChannel::new(ServiceKind::Heartbeat);
    let mut guest = Guest::new(ServiceKind::Heartbeat);
    let (reply, _) = one_reply(&mut guest, &host.offer());
    host.handle(&reply, now).unwrap();
    let request = host.heartbeat(now);
    let (mut reply, _) = one_reply(&mut guest, &request);
    reply.body[0] = reply.body[0].wrapping_add(1);
    assert!(host.handle(&reply, now).is_err());
}

impl Message {
    fn with_body(mut self, body: Vec<u8>) -> Message {
        self.body = body;
        self
    }
}

#[test]
fn host_time_samples_use_their_versions_body_and_probe_answers_echo_the_probe() {
    use crate::wire::timesync::{TimeSyncData, TimeSyncFlags, TimeSyncRef};
    let now = Instant::now();
    let mut host = HostChannel::new(ServiceKind::TimeSync);
    let sample = host.time_sample(TimeSyncFlags::SYNC, 42, now);
    assert_eq!(
        sample.header.flags,
        IcFlags(IcFlags::TRANSACTION | IcFlags::REQUEST)
    );
    // Before negotiation ends the host speaks 3.0: the ictimesync_data body.
    assert_eq!(sample.body.len(), TimeSyncData::MIN_LEN);
    let mut guest = Guest::new(ServiceKind::TimeSync);
    let (reply, _) = one_reply(&mut guest, &host.offer());
    assert!(matches!(
        host.handle(&reply, now),
        Ok(HostEvent::Negotiated { message, .. }) if message == v(4, 1)
    ));
    let sample = host.time_sample(TimeSyncFlags::SAMPLE, 42, now);
    assert_eq!(sample.header.message_version, v(4, 1));
    let body = TimeSyncRef::parse(&sample.body).unwrap();
    assert_eq!(sample.body.len(), TimeSyncRef::MIN_LEN);
    assert_eq!((body.parent_time, body.vm_reference_time), (42, 0));
    assert_eq!(body.flags, TimeSyncFlags::SAMPLE);
    // A probe is answered with the host's time and holding time, the rest echoed.
    let probe_body = TimeSyncData {
        child_time: 7,
        ..TimeSyncData::default()
    };
    let probe = Message::request(
        MessageType::TIMESYNC,
        v(3, 0),
        v(4, 1),
        9,
        probe_body.to_body(),
    );
    let answer = host.answer_probe(&probe, 1_000, 3).unwrap();
    assert_eq!(answer.header.transaction_id, 9);
    assert_eq!(
        answer.header.flags,
        IcFlags(IcFlags::TRANSACTION | IcFlags::RESPONSE)
    );
    let answered = TimeSyncData::parse(&answer.body).unwrap();
    assert_eq!(
        (
            answered.parent_time,
            answered.child_time,
            answered.round_trip_time
        ),
        (1_000, 7, 3)
    );
    assert_eq!(answered.flags, TimeSyncFlags::PROBE);
    let sync = TimeSyncData {
        flags: TimeSyncFlags::SYNC,
        ..probe_body
    };
    let not_a_probe = Message::request(MessageType::TIMESYNC, v(3, 0), v(4, 1), 9, sync.to_body());
    assert!(host.answer_probe(&not_a_probe, 1_000, 3).is_err());
    let mut silent = probe.clone();
    silent.header.flags = IcFlags(0);
    assert!(host.answer_probe(&silent, 1_000, 3).is_err());
}
