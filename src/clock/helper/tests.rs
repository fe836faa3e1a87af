use super::*;
use crate::clock::remote::RemoteClock;
use hvproto::clock::sim::SimClock;

#[test]
fn apply_reads_sets_and_steps_the_clock() {
    let sim = SimClock::new(1_700_000_000_000_000_000, 0.0, 0.0);
    let mut clock = sim.clone();
    let set = apply(Request::SetFrequency { scaled: -819_200 }, &mut clock);
    assert_eq!(set, Answer::ok(op::SET_FREQUENCY, 0));
    assert_eq!(sim.commanded_ppm(), -12.5);
    let read = apply(Request::ReadFrequency, &mut clock);
    assert_eq!(read, Answer::ok(op::READ_FREQUENCY, -819_200));
    let step = apply(
        Request::Step {
            delta_ns: -1_500_000_000,
        },
        &mut clock,
    );
    assert_eq!(step, Answer::ok(op::STEP, 0));
    assert_eq!(sim.steps(), vec![-1.5]);
}

#[test]
fn apply_refuses_a_frequency_beyond_500_ppm_without_touching_the_clock() {
    let sim = SimClock::new(0, 0.0, 0.0);
    let mut clock = sim.clone();
    let scaled = MAX_SCALED_FREQUENCY + 1;
    assert_eq!(
        apply(Request::SetFrequency { scaled }, &mut clock),
        Answer::error(op::SET_FREQUENCY, libc::EINVAL)
    );
    assert_eq!(
        apply(Request::SetFrequency { scaled: i64::MIN }, &mut clock),
        Answer::error(op::SET_FREQUENCY, libc::EINVAL)
    );
    assert!(sim.frequency_history().is_empty());
}

#[test]
fn apply_answers_an_unknown_op_and_a_denied_change_with_their_errno() {
    let sim = SimClock::new(0, 0.0, 0.0);
    let mut clock = sim.clone();
    assert_eq!(
        apply(Request::Unknown { op: 9, value: 1 }, &mut clock),
        Answer::error(9, libc::EOPNOTSUPP)
    );
    sim.deny_changes();
    assert_eq!(
        apply(Request::Step { delta_ns: 1 }, &mut clock),
        Answer::error(op::STEP, libc::EPERM)
    );
}

#[test]
fn uid_of_finds_the_user_in_a_passwd_text() {
    let passwd =
        "root:x:0:0:root:/root:/bin/bash\nhvagent:x:998:997::/var/lib/hvagent:/usr/sbin/nologin\n";
    assert_eq!(uid_of(passwd, "hvagent"), Some(998));
    assert_eq!(uid_of(passwd, "hvagen"), None);
    assert_eq!(uid_of("hvagent:x:oops\n", "hvagent"), None);
}

/// A helper serving a [`MemoryClock`] on a socket in a temp dir, for peers of `allowed` uids.
fn helper(
    allowed: Vec<u32>,
) -> (
    tempfile::TempDir,
    PathBuf,
    std::thread::JoinHandle<MemoryClock>,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clock.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let thread = std::thread::spawn(move || {
        let mut clock = MemoryClock::default();
        serve(&listener, &mut clock, &allowed, Duration::from_millis(300)).unwrap();
        clock
    });
    (dir, path, thread)
}

#[test]
fn remote_clock_round_trips_through_serve_on_a_fake_clock() {
    let own = hvtransport::peer::own_uid();
    let (_dir, path, thread) = helper(vec![own]);
    let mut remote = RemoteClock::new(&path);
    remote.set_frequency_ppm(17.25).unwrap();
    assert_eq!(remote.frequency_ppm(), Ok(17.25));
    remote.set_frequency_ppm(9000.0).unwrap(); // clamped to the kernel's limit before it is sent
    assert_eq!(remote.frequency_ppm(), Ok(500.0));
    remote.step(2_000_000_000).unwrap();
    assert!(remote.step(i128::MAX).is_err());
    let clock = thread.join().unwrap();
    assert_eq!(clock.offset_ns, 2_000_000_000);
    assert_eq!(clock.frequency_ppm, 500.0);
}

#[test]
fn a_peer_of_another_uid_is_refused_as_not_permitted() {
    let own = hvtransport::peer::own_uid();
    let (_dir, path, thread) = helper(vec![own.wrapping_add(1)]);
    let mut remote = RemoteClock::new(&path);
    assert_eq!(remote.step(1), Err(ClockError::NotPermitted));
    assert_eq!(remote.frequency_ppm(), Err(ClockError::NotPermitted));
    let clock = thread.join().unwrap();
    assert_eq!(clock.offset_ns, 0);
}

#[test]
fn a_missing_helper_is_an_error_naming_the_units() {
    let dir = tempfile::tempdir().unwrap();
    let remote = RemoteClock::new(&dir.path().join("absent.sock"));
    let error = remote.frequency_ppm().unwrap_err();
    assert!(matches!(
        error,
        ClockError::Helper {
            call: "adjtimex",
            ..
        }
    ));
    assert!(
        error.to_string().contains("hvagent-clock.service"),
        "{error}"
    );
}

#[test]
fn a_request_of_another_version_is_answered_eproto_and_closed() {
    let own = hvtransport::peer::own_uid();
    let (_dir, path, thread) = helper(vec![own]);
    let mut stream = UnixStream::connect(&path).unwrap();
    let mut bytes = Request::ReadFrequency.emit();
    bytes[0] = 9;
    stream.write_all(&bytes).unwrap();
    let mut answer = [0; MESSAGE_LEN];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(Answer::parse(&answer), Ok(Answer::error(0, libc::EPROTO)));
    assert_eq!(stream.read(&mut answer).unwrap(), 0);
    thread.join().unwrap();
}
