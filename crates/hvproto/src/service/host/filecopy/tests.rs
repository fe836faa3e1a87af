//! The host's copy sequence against the guest's own channel and file-copy logic, with a sink in memory:
//! what the host sends is what the guest accepts, and the answers are matched back in order.

use std::cell::RefCell;
use std::rc::Rc;

use super::*;
use crate::service::filecopy::{
    Commit, CopySink, FileCopyLogic, FileCopySettings, SinkError, Target,
};
use crate::service::{handle_to_messages, Channel, ServiceKind};
use crate::wire::fcopy::CopyFlags;

type Files = Rc<RefCell<(Vec<u8>, Option<Vec<u8>>)>>;

/// Keeps the temporary file and the file put in place.
struct MemorySink(Files);

impl CopySink for MemorySink {
    fn begin(&mut self, _: &Target, _: bool) -> Result<(), SinkError> {
        self.0.borrow_mut().0.clear();
        Ok(())
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        let mut files = self.0.borrow_mut();
        assert_eq!(files.0.len() as u64, offset);
        files.0.extend_from_slice(data);
        Ok(())
    }
    fn commit(&mut self, _: bool) -> Result<Commit, SinkError> {
        let mut files = self.0.borrow_mut();
        let data = std::mem::take(&mut files.0);
        files.1 = Some(data);
        Ok(Commit::Done)
    }
    fn abort(&mut self) {}
}

/// A host channel and a guest channel that negotiated with each other.
fn negotiated(guest: &mut Channel, logic: &mut FileCopyLogic, now: Instant) -> HostChannel {
    let mut host = channel();
    let mut replies = Vec::new();
    handle_to_messages(guest, &host.offer(), logic, now, &mut replies);
    host.handle(&replies[0], now).unwrap();
    host
}

#[test]
fn fragments_cover_the_file_in_order_with_a_short_last_one() {
    let all: Vec<(u64, usize)> = fragments(6144 * 2 + 5).collect();
    assert_eq!(all, [(0, 6144), (6144, 6144), (12288, 5)]);
    assert_eq!(fragments(0).count(), 0);
    assert_eq!(fragments(6144).collect::<Vec<_>>(), [(0, 6144)]);
}

#[test]
fn a_windowed_copy_is_accepted_by_the_guest_and_every_answer_matches_its_request() {
    let now = Instant::now();
    let files: Files = Rc::default();
    let settings = FileCopySettings {
        allowed_dirs: vec!["/in".to_string()],
        ..FileCopySettings::default()
    };
    let mut logic = FileCopyLogic::new(settings, Box::new(MemorySink(files.clone())));
    let mut guest = Channel::new(ServiceKind::FileCopy, 1);
    let host = negotiated(&mut guest, &mut logic, now);
    assert_eq!(guest.version(), Some(IcVersion::new(1, 1)));
    let mut sender = CopySender::new(&host, 4).unwrap();
    let data: Vec<u8> = (0..50_000u32).map(|i| i as u8).collect();
    let start = Start {
        file_name: "f".to_string(),
        path_name: "/in".to_string(),
        flags: CopyFlags(0),
        file_size: data.len() as u64,
    };
    let mut requests = vec![sender.start(&start, now).unwrap()];
    for (offset, len) in fragments(data.len() as u64) {
        let at = offset as usize;
        requests.push(sender.write(offset, &data[at..at + len], now).unwrap());
    }
    requests.push(sender.complete(now));
    // The window bounds what is in flight; the guest answers in order.
    let mut answers = Vec::new();
    let mut pending = std::collections::VecDeque::new();
    for request in &requests {
        pending.push_back(request);
        if pending.len() == 4 {
            let oldest = pending.pop_front().unwrap();
            handle_to_messages(&mut guest, oldest, &mut logic, now, &mut answers);
        }
    }
    for request in pending {
        handle_to_messages(&mut guest, request, &mut logic, now, &mut answers);
    }
    let checked: Vec<CopyAnswer> = answers
        .iter()
        .map(|answer| sender.handle(answer, now).unwrap())
        .collect();
    assert!(checked.iter().all(CopyAnswer::is_ok), "{checked:?}");
    assert_eq!(checked.last().unwrap().operation, Operation::COMPLETE_FCOPY);
    assert_eq!(checked[2].offset, 6144);
    assert_eq!(files.borrow().1.as_deref(), Some(&data[..]));
    assert_eq!(sender.in_flight(), 0);
}

#[test]
fn an_answer_out_of_order_or_for_another_operation_is_a_protocol_error() {
    let now = Instant::now();
    let mut logic = FileCopyLogic::new(
        FileCopySettings::default(),
        Box::new(MemorySink(Rc::default())),
    );
    let mut guest = Channel::new(ServiceKind::FileCopy, 1);
    let host = negotiated(&mut guest, &mut logic, now);
    let mut sender = CopySender::new(&host, 2).unwrap();
    let first = sender.complete(now);
    let second = sender.cancel(now);
    assert!(!sender.can_send());
    let wrong_order = second.reply(Status::OK, second.body.clone());
    assert!(sender.handle(&wrong_order, now).is_err());
    let mut sender = CopySender::new(&host, 2).unwrap();
    let first_again = sender.complete(now);
    assert_eq!(
        first_again.header.transaction_id,
        first.header.transaction_id
    );
    let wrong_body = first_again.reply(Status::OK, fcopy::header_body(Operation::CANCEL_FCOPY));
    assert!(sender.handle(&wrong_body, now).is_err());
    assert!(CopySender::new(&channel(), 1).is_err(), "not negotiated");
}
