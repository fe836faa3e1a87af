//! Who is at the other end of an accepted connection, and whether a listening service lets it speak: pure
//! decisions on what the socket said (the peer's vsock CID and our own, or the Unix peer's uid), so they are
//! tested here without a socket. docs/PROTOCOL.md §1.4 and §1.7.

use std::fmt;

use super::address::CID_LOCAL;

/// Who is at the other end of an accepted connection, as the kernel reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A vsock peer; `local_cid` is this end's CID (getsockname of the accepted socket), when known.
    Vsock {
        cid: u32,
        port: u32,
        local_cid: Option<u32>,
    },
    /// A Unix peer and its credentials (SO_PEERCRED), when they could be read.
    Unix { uid: Option<u32>, pid: Option<i32> },
    /// An address that could not be read, or of a family the listener does not speak.
    Unknown(String),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Vsock { cid, port, .. } => write!(f, "vsock CID {cid} port {port}"),
            Peer::Unix {
                uid: Some(uid),
                pid: Some(pid),
            } => write!(f, "unix peer (uid {uid}, pid {pid})"),
            Peer::Unix { uid: Some(uid), .. } => write!(f, "unix peer (uid {uid})"),
            Peer::Unix { .. } => f.write_str("unix peer (credentials unknown)"),
            Peer::Unknown(what) => write!(f, "a peer whose address {what}"),
        }
    }
}

/// The vsock CIDs a listening service accepts (`allowed_cids`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AllowedCids {
    /// Every CID except loopback (1) and the guest's own, which only an explicit entry admits.
    pub any: bool,
    /// CIDs listed by number (or `host`, `local`).
    pub cids: Vec<u32>,
}

impl AllowedCids {
    /// Only the host: CID 2.
    pub fn host_only() -> AllowedCids {
        AllowedCids {
            any: false,
            cids: vec![super::address::CID_HOST],
        }
    }
}

impl Default for AllowedCids {
    fn default() -> AllowedCids {
        AllowedCids::host_only()
    }
}

/// The Unix uids a listening service accepts (`allowed_uids`), beside the agent's own, which is always
/// accepted: a process of the agent's user can signal, trace and replace the agent anyway.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AllowedUids(pub Vec<u32>);

impl Default for AllowedUids {
    fn default() -> AllowedUids {
        AllowedUids(vec![0])
    }
}

/// Who may use a listening service.
#[derive(Clone, Copy, Debug)]
pub struct PeerRules<'a> {
    pub cids: &'a AllowedCids,
    pub uids: &'a AllowedUids,
    /// The uid the agent runs as.
    pub own_uid: u32,
}

/// The effective uid the agent runs as.
pub fn own_uid() -> u32 {
    // SAFETY: geteuid(2) takes no arguments, touches no memory and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether a vsock peer at `cid` may speak, this end being `local_cid`. A listed CID is always accepted;
/// otherwise loopback (CID 1) and our own CID (a local process dialling the guest's own address) never are,
/// since with vsock_loopback loaded any local user could reach the service that way; `any` admits the rest.
pub fn cid_allowed(cid: u32, local_cid: Option<u32>, allowed: &AllowedCids) -> bool {
    if allowed.cids.contains(&cid) {
        return true;
    }
    if cid == CID_LOCAL || local_cid == Some(cid) {
        return false;
    }
    allowed.any
}

/// Whether a Unix peer running as `uid` may speak: root and the listed uids, and the agent's own uid.
/// Unknown credentials are refused.
pub fn uid_allowed(uid: Option<u32>, allowed: &AllowedUids, own_uid: u32) -> bool {
    uid.is_some_and(|uid| uid == own_uid || allowed.0.contains(&uid))
}

/// Why `peer` may not speak, or `None` when it may.
pub fn refusal(peer: &Peer, rules: PeerRules<'_>) -> Option<String> {
    match peer {
        Peer::Vsock { cid, local_cid, .. } => (!cid_allowed(*cid, *local_cid, rules.cids)).then(|| {
            if *cid == CID_LOCAL || *local_cid == Some(*cid) {
                format!(
                    "CID {cid} is this guest itself (loopback or its own CID), accepted only when allowed_cids \
                     lists it"
                )
            } else {
                format!("CID {cid} is not in allowed_cids")
            }
        }),
        Peer::Unix { uid, .. } => (!uid_allowed(*uid, rules.uids, rules.own_uid)).then(|| match uid {
            Some(uid) => format!(
                "uid {uid} is neither the agent's own ({}) nor in allowed_uids",
                rules.own_uid
            ),
            None => "its credentials (SO_PEERCRED) could not be read".to_string(),
        }),
        Peer::Unknown(what) => Some(format!("its address {what}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::CID_HOST;

    fn cids(any: bool, cids: &[u32]) -> AllowedCids {
        AllowedCids {
            any,
            cids: cids.to_vec(),
        }
    }

    #[test]
    fn by_default_only_the_host_cid_is_accepted() {
        let allowed = AllowedCids::default();
        assert!(cid_allowed(CID_HOST, Some(3), &allowed));
        for cid in [0, CID_LOCAL, 3, 4, u32::MAX] {
            assert!(!cid_allowed(cid, Some(3), &allowed), "CID {cid}");
        }
    }

    #[test]
    fn loopback_and_the_own_cid_need_an_explicit_entry_even_with_any() {
        let any = cids(true, &[]);
        assert!(cid_allowed(5, Some(3), &any));
        assert!(!cid_allowed(CID_LOCAL, Some(3), &any));
        assert!(!cid_allowed(3, Some(3), &any));
        let listed = cids(false, &[CID_LOCAL, 3]);
        assert!(cid_allowed(CID_LOCAL, Some(3), &listed));
        assert!(cid_allowed(3, Some(3), &listed));
        assert!(!cid_allowed(CID_HOST, Some(3), &listed));
    }

    #[test]
    fn unix_peers_are_root_the_listed_uids_and_the_agents_own() {
        let allowed = AllowedUids::default();
        assert!(uid_allowed(Some(0), &allowed, 1000));
        assert!(uid_allowed(Some(1000), &allowed, 1000));
        assert!(!uid_allowed(Some(1001), &allowed, 1000));
        assert!(!uid_allowed(None, &allowed, 1000));
        assert!(uid_allowed(Some(1001), &AllowedUids(vec![1001]), 1000));
    }

    #[test]
    fn refusals_say_why_and_unknown_peers_are_refused() {
        let uids = AllowedUids::default();
        let rules = PeerRules {
            cids: &AllowedCids::default(),
            uids: &uids,
            own_uid: 1000,
        };
        let vsock = |cid| Peer::Vsock {
            cid,
            port: 9,
            local_cid: Some(3),
        };
        assert_eq!(refusal(&vsock(CID_HOST), rules), None);
        assert!(refusal(&vsock(4), rules).unwrap().contains("allowed_cids"));
        assert!(refusal(&vsock(CID_LOCAL), rules)
            .unwrap()
            .contains("itself"));
        let unix = |uid| Peer::Unix { uid, pid: Some(7) };
        assert_eq!(refusal(&unix(Some(1000)), rules), None);
        assert!(refusal(&unix(Some(7)), rules).unwrap().contains("uid 7"));
        assert!(refusal(&unix(None), rules).unwrap().contains("SO_PEERCRED"));
        let unknown = Peer::Unknown("is of family 2".into());
        assert!(refusal(&unknown, rules).unwrap().contains("family 2"));
    }
}
