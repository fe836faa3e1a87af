//! The version-negotiation body (`struct icmsg_negotiate`, Linux `include/linux/hyperv.h`; docs/PROTOCOL.md §4.2) and
//! the guest's choice of versions (Linux `vmbus_prep_negotiate_resp`).
//!
//! ```text
//!  0       2       4               8
//!  +-------+-------+---------------+----------------------+----------------------+
//!  |fw cnt |msg cnt| reserved      | fw cnt × ic_version  | msg cnt × ic_version |
//!  +-------+-------+---------------+----------------------+----------------------+
//!  ic_version = u16 major, u16 minor
//! ```

use super::{le_u16, le_u32, require_body, IcVersion, WireError};

/// Linux's IC_VERSION_NEGOTIATION_MAX_VER_COUNT: the most versions of each kind a body may list.
pub const MAX_VERSIONS: u16 = 100;
/// Bytes before the version list.
const FIXED_LEN: usize = 8;
/// Bytes per `ic_version`.
const VERSION_LEN: usize = 4;

/// A negotiation body: the versions offered (by the host) or chosen (by the guest).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Negotiate {
    pub framework_versions: Vec<IcVersion>,
    pub message_versions: Vec<IcVersion>,
    /// The reserved u32, kept so a parsed body re-encodes exactly.
    pub reserved: u32,
    /// Bytes after the version lists, kept for the same reason.
    pub trailing: Vec<u8>,
}

impl Negotiate {
    /// Parses a body, refusing counts over [`MAX_VERSIONS`] or lists that do not fit.
    pub fn parse(body: &[u8]) -> Result<Negotiate, WireError> {
        require_body("negotiate", body, FIXED_LEN)?;
        let framework = le_u16(body, 0..2);
        let message = le_u16(body, 2..4);
        let listed = (framework as usize + message as usize) * VERSION_LEN;
        if framework > MAX_VERSIONS || message > MAX_VERSIONS || FIXED_LEN + listed > body.len() {
            return Err(WireError::TooManyVersions { framework, message });
        }
        let version_at = |index: usize| {
            let at = FIXED_LEN + index * VERSION_LEN;
            IcVersion::new(le_u16(body, at..at + 2), le_u16(body, at + 2..at + 4))
        };
        Ok(Negotiate {
            framework_versions: (0..framework as usize).map(version_at).collect(),
            message_versions: (framework as usize..(framework + message) as usize)
                .map(version_at)
                .collect(),
            reserved: le_u32(body, 4..8),
            trailing: body[FIXED_LEN + listed..].to_vec(),
        })
    }

    /// The body's bytes. Lists longer than [`MAX_VERSIONS`] are cut there, as no peer would accept them.
    pub fn to_body(&self) -> Vec<u8> {
        let framework =
            &self.framework_versions[..self.framework_versions.len().min(MAX_VERSIONS as usize)];
        let message =
            &self.message_versions[..self.message_versions.len().min(MAX_VERSIONS as usize)];
        let mut out = Vec::with_capacity(
            FIXED_LEN + (framework.len() + message.len()) * VERSION_LEN + self.trailing.len(),
        );
        out.extend_from_slice(&(framework.len() as u16).to_le_bytes());
        out.extend_from_slice(&(message.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.reserved.to_le_bytes());
        for version in framework.iter().chain(message) {
            out.extend_from_slice(&version.major.to_le_bytes());
            out.extend_from_slice(&version.minor.to_le_bytes());
        }
        out.extend_from_slice(&self.trailing);
        out
    }

    /// The guest's choice, as Linux makes it: walk our own preference lists and take the first version the
    /// offer also lists exactly, framework first. `None` when either kind has no match.
    pub fn choose(
        &self,
        our_frameworks: &[IcVersion],
        our_messages: &[IcVersion],
    ) -> Option<(IcVersion, IcVersion)> {
        let first_common = |ours: &[IcVersion], offered: &[IcVersion]| {
            ours.iter()
                .copied()
                .find(|version| offered.contains(version))
        };
        Some((
            first_common(our_frameworks, &self.framework_versions)?,
            first_common(our_messages, &self.message_versions)?,
        ))
    }

    /// The answer body: both counts 1 with the chosen versions, or both counts 0 (and zero versions) when
    /// nothing matched. Always 16 bytes, as Linux sends (icmsgsize 0x10).
    pub fn answer(chosen: Option<(IcVersion, IcVersion)>) -> Negotiate {
        match chosen {
            Some((framework, message)) => Negotiate {
                framework_versions: vec![framework],
                message_versions: vec![message],
                ..Negotiate::default()
            },
            None => Negotiate {
                trailing: vec![0; 2 * VERSION_LEN],
                ..Negotiate::default()
            },
        }
    }

    /// Reads a guest's answer: the chosen pair when both counts are 1.
    pub fn chosen(&self) -> Option<(IcVersion, IcVersion)> {
        match (&self.framework_versions[..], &self.message_versions[..]) {
            ([framework], [message]) => Some((*framework, *message)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u16, minor: u16) -> IcVersion {
        IcVersion::new(major, minor)
    }

    #[test]
    fn parses_a_host_offer_and_chooses_like_linux() {
        // Framework 1.0, 3.0 ascending, as OpenVMM offers; shutdown 1.0, 3.0, 3.1, 3.2.
        let offer = Negotiate {
            framework_versions: vec![v(1, 0), v(3, 0)],
            message_versions: vec![v(1, 0), v(3, 0), v(3, 1), v(3, 2)],
            ..Negotiate::default()
        };
        let body = offer.to_body();
        assert_eq!(body.len(), 8 + 6 * 4);
        let parsed = Negotiate::parse(&body).unwrap();
        assert_eq!(parsed, offer);
        let chosen = parsed.choose(&[v(3, 0), v(1, 0)], &[v(3, 2), v(3, 1), v(3, 0), v(1, 0)]);
        assert_eq!(chosen, Some((v(3, 0), v(3, 2))));
    }

    #[test]
    fn no_common_version_gives_counts_zero_in_a_16_byte_answer() {
        let offer = Negotiate {
            framework_versions: vec![v(2, 0)],
            message_versions: vec![v(3, 0)],
            ..Negotiate::default()
        };
        assert_eq!(offer.choose(&[v(3, 0)], &[v(3, 0)]), None);
        let body = Negotiate::answer(None).to_body();
        assert_eq!(body, vec![0; 16]);
        let ok = Negotiate::answer(Some((v(3, 0), v(4, 1)))).to_body();
        assert_eq!(ok, vec![1, 0, 1, 0, 0, 0, 0, 0, 3, 0, 0, 0, 4, 0, 1, 0]);
        assert_eq!(
            Negotiate::parse(&ok).unwrap().chosen(),
            Some((v(3, 0), v(4, 1)))
        );
    }

    #[test]
    fn a_hundred_versions_are_accepted_and_101_refused() {
        let mut offer = Negotiate {
            framework_versions: vec![v(3, 0); 100],
            message_versions: vec![v(1, 0); 100],
            ..Negotiate::default()
        };
        assert!(Negotiate::parse(&offer.to_body()).is_ok());
        let mut body = offer.to_body();
        body[0..2].copy_from_slice(&101u16.to_le_bytes());
        body.extend_from_slice(&[0; 4]);
        assert_eq!(
            Negotiate::parse(&body),
            Err(WireError::TooManyVersions {
                framework: 101,
                message: 100
            })
        );
        offer.message_versions.truncate(1);
        let mut short = offer.to_body();
        short.truncate(short.len() - 1);
        assert!(matches!(
            Negotiate::parse(&short),
            Err(WireError::TooManyVersions { .. })
        ));
    }

    #[test]
    fn counts_that_do_not_fit_the_body_are_refused() {
        let body = [5, 0, 5, 0, 0, 0, 0, 0, 1, 0, 0, 0];
        assert!(matches!(
            Negotiate::parse(&body),
            Err(WireError::TooManyVersions {
                framework: 5,
                message: 5
            })
        ));
        assert!(matches!(
            Negotiate::parse(&[0; 7]),
            Err(WireError::BodyTooShort { needed: 8, .. })
        ));
    }
}
