//! hvhost's one-shot requests to a listening agent: `hvhost shutdown` and `hvhost kvp`. Each dials, negotiates,
//! sends its request(s) and prints what the guest answered, one line each.

use std::io::Write;

use crate::client::{self, say, Client, PeerError};
use crate::net::Address;
use hvproto::service::host::{HostChannel, HostEvent};
use hvproto::service::shutdown::display_text;
use hvproto::service::ServiceKind;
use hvproto::wire::kvp::{
    display_value, lossy, utf16, utf16_bytes, value_type, KvpBody, KvpMessage, Operation, Pool,
    ValueRecord,
};
use hvproto::wire::shutdown::{flags, ShutdownRequest, DISPLAY_MESSAGE_LEN};
use hvproto::wire::Status;

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
    open_channel(address, HostChannel::new(kind), out)
}

/// Dials `address` and negotiates what `channel` offers, printing both steps.
pub fn open_channel(
    address: &Address,
    channel: HostChannel,
    out: &mut dyn Write,
) -> Result<Client, PeerError> {
    let fd = client::dial(address)?;
    say(out, &format!("connected {address}"));
    let mut client = Client::on_channel(fd, channel);
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

/// What `hvhost kvp` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvpCommand {
    Enumerate,
    Get(String),
    Set(String, String),
    Delete(String),
    /// GET_IP_INFO for the adapter with this MAC address; `strings`: offer KVP 4.0 only, so the answer is
    /// Linux's string form rather than openvmm's binary one.
    IpInfo {
        adapter: String,
        strings: bool,
    },
}

impl KvpCommand {
    /// The operation and its operands from the words after the address.
    pub fn parse(words: &[String]) -> Result<KvpCommand, String> {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        match words.as_slice() {
            ["enumerate"] => Ok(KvpCommand::Enumerate),
            ["get", key] => Ok(KvpCommand::Get(key.to_string())),
            ["set", key, value] => Ok(KvpCommand::Set(key.to_string(), value.to_string())),
            ["delete", key] => Ok(KvpCommand::Delete(key.to_string())),
            ["ip-info", mac] => Ok(KvpCommand::IpInfo {
                adapter: mac.to_string(),
                strings: false,
            }),
            ["ip-info-strings", mac] => Ok(KvpCommand::IpInfo {
                adapter: mac.to_string(),
                strings: true,
            }),
            _ => Err(
                "kvp needs enumerate, get KEY, set KEY VALUE, delete KEY, ip-info MAC or ip-info-strings \
                 MAC after the address"
                    .to_string(),
            ),
        }
    }

    /// The pool used when none is given: auto for enumerate, external otherwise.
    pub fn default_pool(&self) -> Pool {
        match self {
            KvpCommand::Enumerate => Pool::AUTO,
            _ => Pool::EXTERNAL,
        }
    }
}

/// A pool by name (external, guest, auto, auto-external, auto-internal) or number.
pub fn parse_pool(text: &str) -> Result<Pool, String> {
    Pool::parse(text).ok_or_else(|| {
        format!("--pool '{text}' is not external, guest, auto, auto-external, auto-internal or a number")
    })
}

/// Most items `hvhost kvp enumerate` asks for before it stops on its own.
const MAX_ENUMERATE: u32 = 2048;

fn record_for(key: &str, value: Option<&str>) -> ValueRecord {
    let value = value.map_or_else(Vec::new, |text| utf16_bytes(&utf16(text)));
    ValueRecord::new(value_type::STRING, &utf16(key), &value)
}

/// `hvhost kvp`: Ok(true) when the guest answered as a success (for enumerate: items, then HV_S_CONT).
pub fn kvp(
    address: &Address,
    pool: Option<Pool>,
    command: &KvpCommand,
    out: &mut dyn Write,
) -> Result<bool, PeerError> {
    let pool = pool.unwrap_or_else(|| command.default_pool());
    if let KvpCommand::IpInfo { adapter, strings } = command {
        return ip_info(address, adapter, *strings, out);
    }
    let mut client = open(address, ServiceKind::GuestInfo, out)?;
    let mut ask = |message: KvpMessage| -> Result<(Status, Option<KvpMessage>), PeerError> {
        let (status, body) = client.exchange(message.to_body())?;
        Ok((status, KvpMessage::parse(&body).ok()))
    };
    let shown = |answer: &Option<KvpMessage>| -> (String, String) {
        answer.as_ref().and_then(KvpMessage::record).map_or(
            (String::new(), String::new()),
            |record| {
                let key = record.key().map(|units| lossy(&units)).unwrap_or_default();
                let value = record
                    .value()
                    .map(|bytes| display_value(record.value_type, bytes))
                    .unwrap_or_default();
                (key, value)
            },
        )
    };
    let pool_name = pool.name();
    match command {
        KvpCommand::Enumerate => {
            let mut index = 0;
            let status = loop {
                let record = record_for("", None);
                let (status, answer) = ask(KvpMessage::new(
                    Operation::ENUMERATE,
                    pool,
                    KvpBody::Enumerate { index, record },
                ))?;
                if status != Status::OK || index >= MAX_ENUMERATE {
                    break status;
                }
                let (key, value) = shown(&answer);
                say(
                    out,
                    &format!(
                        "kvp pool={pool_name} index={index} key={} value=\"{}\"",
                        key.escape_debug(),
                        value.escape_debug()
                    ),
                );
                index += 1;
            };
            say(
                out,
                &format!("done items={index} pool={pool_name} last={status}"),
            );
            Ok(status == Status::CONTINUE)
        }
        KvpCommand::Get(key) => {
            let (status, answer) = ask(KvpMessage::new(
                Operation::GET,
                pool,
                KvpBody::Value(record_for(key, None)),
            ))?;
            let value = if status == Status::OK {
                format!(" value=\"{}\"", shown(&answer).1.escape_debug())
            } else {
                String::new()
            };
            say(
                out,
                &format!(
                    "kvp get pool={pool_name} key={} answer={status}{value}",
                    key.escape_debug()
                ),
            );
            Ok(status == Status::OK)
        }
        KvpCommand::Set(key, value) => {
            let (status, _) = ask(KvpMessage::new(
                Operation::SET,
                pool,
                KvpBody::Value(record_for(key, Some(value))),
            ))?;
            say(
                out,
                &format!(
                    "kvp set pool={pool_name} key={} value=\"{}\" answer={status}",
                    key.escape_debug(),
                    value.escape_debug()
                ),
            );
            Ok(status == Status::OK)
        }
        KvpCommand::Delete(key) => {
            let key_area = utf16_bytes(&utf16(key));
            let (status, _) = ask(KvpMessage::new(
                Operation::DELETE,
                pool,
                KvpBody::Delete {
                    key_size: key_area.len() as u32,
                    key_area,
                },
            ))?;
            say(
                out,
                &format!(
                    "kvp delete pool={pool_name} key={} answer={status}",
                    key.escape_debug()
                ),
            );
            Ok(status == Status::OK)
        }
        KvpCommand::IpInfo { .. } => Ok(false),
    }
}

/// KVP 4.0 alone: the version whose IP info is Linux's string form.
const STRING_FORM_VERSIONS: [hvproto::wire::IcVersion; 1] = [hvproto::wire::IcVersion::new(4, 0)];

/// `hvhost kvp ADDR ip-info MAC`: GET_IP_INFO, the answer printed one field a line.
fn ip_info(
    address: &Address,
    adapter: &str,
    strings: bool,
    out: &mut dyn Write,
) -> Result<bool, PeerError> {
    use hvproto::wire::ipinfo::{self, format_ipv4, format_ipv6, IpInfo};
    let channel = if strings {
        hvproto::service::host::HostChannel::for_messages(
            hvproto::wire::MessageType::KVP_EXCHANGE,
            &STRING_FORM_VERSIONS,
        )
    } else {
        hvproto::service::host::HostChannel::new(ServiceKind::GuestInfo)
    };
    let mut client = open_channel(address, channel, out)?;
    let binary = client.message_version().is_some_and(ipinfo::binary_form);
    // As openvmm sends it: the two header bytes and 0x1d02 more, the adapter id in the form's place.
    let mut body = vec![0u8; ipinfo::STRING_FORM_LEN];
    body[0] = Operation::GET_IP_INFO.0;
    body[1] = Pool::GUEST.0;
    let request = IpInfo {
        adapter_id: adapter.to_string(),
        ..IpInfo::default()
    };
    ipinfo::emit(&request, &mut body, binary)
        .map_err(|error| PeerError::Protocol(hvproto::service::host::HostError::Body(error)))?;
    let id_at = if binary { 28 } else { 2 };
    for (slot, unit) in body[id_at..id_at + 254]
        .chunks_exact_mut(2)
        .zip(adapter.encode_utf16())
    {
        slot.copy_from_slice(&unit.to_le_bytes());
    }
    let (status, answer) = client.exchange(body)?;
    let form = if binary { "binary" } else { "string" };
    say(
        out,
        &format!(
            "kvp ip-info adapter={} form={form} answer={status}",
            adapter.escape_debug()
        ),
    );
    if status != Status::OK {
        return Ok(false);
    }
    let info = ipinfo::parse(&answer, binary)
        .map_err(|error| PeerError::Protocol(hvproto::service::host::HostError::Body(error)))?;
    say(
        out,
        &format!(
            "family={} dhcp={}",
            info.family,
            u8::from(info.dhcp_enabled)
        ),
    );
    for entry in &info.ipv4 {
        let prefix = u32::from_be_bytes(entry.mask).leading_ones();
        say(
            out,
            &format!(
                "address={}/{prefix} origin={}",
                format_ipv4(entry.address),
                entry.origin.0
            ),
        );
    }
    for entry in &info.ipv6 {
        say(
            out,
            &format!(
                "address={}/{} origin={}",
                format_ipv6(entry.address),
                entry.prefix,
                entry.origin.0
            ),
        );
    }
    for gateway in info
        .ipv4_gateways
        .iter()
        .map(|a| format_ipv4(*a))
        .chain(info.ipv6_gateways.iter().map(|a| format_ipv6(*a)))
    {
        say(out, &format!("gateway={gateway}"));
    }
    for dns in info
        .ipv4_dns
        .iter()
        .map(|a| format_ipv4(*a))
        .chain(info.ipv6_dns.iter().map(|a| format_ipv6(*a)))
    {
        say(out, &format!("dns={dns}"));
    }
    Ok(true)
}
