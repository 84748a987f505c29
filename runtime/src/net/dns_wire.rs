//! The DNS message layer of the resolver, and the parsing of its two configuration files.
//! No I/O happens here: this module turns names into query bytes, response bytes into
//! addresses, and the text of `/etc/hosts` and `/etc/resolv.conf` into values. The
//! cooperative socket code in `net/` sends and receives; gevent's `resolver/` splits the work
//! the same way (its `dnshelper` and `_hostsfile` know nothing about sockets).
//!
//! # Why the runtime has its own resolver
//!
//! glibc's `getaddrinfo` makes its socket calls internally, past the monkey hooks, so a green
//! thread that called it would block the whole hub for as long as the DNS server takes.
//! The runtime therefore speaks DNS itself, over its own cooperative UDP and TCP sockets.
//!
//! # What a lookup does with this module
//!
//! ```text
//!   name ──► lookup_hosts(parse_hosts(/etc/hosts))  ── found ──► addresses
//!              │ not found
//!              ▼
//!   ResolvConf::candidates(name)      (search list and ndots, as glibc applies them)
//!              │ for each candidate, for each nameserver, `attempts` times:
//!              ▼
//!   build_query(id, candidate, A|AAAA) ──UDP──► parse_response(id, candidate, type, bytes)
//!                                                  │ truncated (TC bit)?
//!                                                  ▼
//!              tcp_frame(query) ──TCP──► tcp_frame_len + read ──► parse_response
//! ```
//!
//! # Wire format handled here (RFC 1035 §4, RFC 3596)
//!
//! A message is a 12-byte header (id, flags, four section counts), then the question, answer,
//! authority and additional sections. Names are sequences of length-prefixed labels ending in
//! a zero byte; a label length with the top two bits set is instead a 14-bit *compression
//! pointer* to an earlier name in the message. Queries built here carry one question, class
//! IN, with recursion desired (RD) and no EDNS(0) record, so a server answers over UDP with at
//! most [`MAX_UDP_PAYLOAD`] bytes and sets the truncation bit (TC) when the answer does not
//! fit; the caller then asks again over TCP, where each message is preceded by its length
//! as two big-endian bytes ([`tcp_frame`], [`tcp_frame_len`]).
//!
//! # Robustness
//!
//! Response bytes come from the network, so [`parse_response`] treats them as hostile: every
//! read is bounds-checked and fails with [`DnsError::Malformed`] naming the byte offset;
//! compression pointers are followed at most [`MAX_POINTER_JUMPS`] times and a decoded name
//! may not exceed 255 bytes, so a pointer loop ends in an error instead of a hang; CNAME chains
//! are followed at most once per record, so a CNAME loop ends in [`DnsError::CnameLoop`].
//! Nothing in this module panics on any input (the tests feed it random and truncated bytes).
//! The response must carry the query's id and echo its question (names compared
//! case-insensitively), which is the usual defence against spoofed or stale answers; choosing
//! an unpredictable id is the caller's job.
//!
//! # Differences from glibc worth knowing
//!
//! * Without a `search`/`domain` line, glibc derives a search domain from the host name; this
//!   module does no I/O and leaves the search list empty.
//! * The `LOCALDOMAIN` and `RES_OPTIONS` environment variables are not read here.
//! * IPv6 link-local nameservers with a named scope (`fe80::1%eth0`) are skipped, because
//!   turning an interface name into an index needs a system call; numeric scopes work.
//! * IDNA is not supported: non-ASCII names are rejected with [`DnsError::InvalidName`].

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

/// The largest DNS message a server sends over UDP to a client that, like this one, sends no
/// EDNS(0) record (RFC 1035 §4.2.1). A receive buffer of this size never truncates a datagram
/// from a well-behaved server.
pub(crate) const MAX_UDP_PAYLOAD: usize = 512;

/// How many compression pointers one name may follow before it is declared a pointer loop.
/// A legitimate name has at most 127 labels and a sane encoder uses at most one pointer per
/// name, so this bound only ever stops hostile or broken messages.
pub(crate) const MAX_POINTER_JUMPS: usize = 128;

/// The longest name accepted in text form, without the trailing dot (255 bytes on the wire).
const MAX_NAME_TEXT: usize = 253;
/// The longest name on the wire, length bytes and final zero included (RFC 1035 §3.1).
const MAX_NAME_WIRE: usize = 255;
/// The longest label (RFC 1035 §2.3.4).
const MAX_LABEL: usize = 63;
/// The size of the fixed message header.
const HEADER_LEN: usize = 12;

/// Record type CNAME (RFC 1035 §3.2.2).
const TYPE_CNAME: u16 = 5;
/// Class IN, the Internet (RFC 1035 §3.2.4).
const CLASS_IN: u16 = 1;

/// Header flag: this message is a response (QR).
const FLAG_QR: u16 = 0x8000;
/// Header flag mask: the operation code; 0 is a standard query.
const FLAG_OPCODE: u16 = 0x7800;
/// Header flag: the message was truncated to fit the transport (TC).
const FLAG_TC: u16 = 0x0200;
/// Header flag: recursion desired (RD).
const FLAG_RD: u16 = 0x0100;
/// Header flag mask: the response code.
const FLAG_RCODE: u16 = 0x000F;

/// glibc's cap on `nameserver` lines (`MAXNS`); later ones are ignored.
const MAX_NAMESERVERS: usize = 3;
/// glibc's cap on `options ndots:` (`RES_MAXNDOTS`).
const MAX_NDOTS: u32 = 15;
/// glibc's cap on `options timeout:` in seconds (`RES_MAXRETRANS`).
const MAX_TIMEOUT_SECS: u32 = 30;
/// glibc's cap on `options attempts:` (`RES_MAXRETRY`).
const MAX_ATTEMPTS: u32 = 5;

/// The record type a query asks for. Only address lookups are needed by the resolver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum QType {
    /// An IPv4 address record (type 1, RFC 1035).
    A,
    /// An IPv6 address record (type 28, RFC 3596).
    Aaaa,
}

impl QType {
    /// The type's code on the wire.
    pub(crate) fn code(self) -> u16 {
        match self {
            QType::A => 1,
            QType::Aaaa => 28,
        }
    }

    /// The length of this type's record data: the size of the address.
    fn rdata_len(self) -> usize {
        match self {
            QType::A => 4,
            QType::Aaaa => 16,
        }
    }
}

impl fmt::Display for QType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(type_name(self.code()))
    }
}

/// The usable content of one response, as [`parse_response`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The addresses of the queried type for the queried name, or for the end of the CNAME
    /// chain that starts at it, in the order the server listed them. Empty means the name
    /// exists but has no record of this type (NODATA), or that the server returned a CNAME
    /// chain without the target's records, or (when `truncated`) that they did not fit.
    pub(crate) addrs: Vec<IpAddr>,
    /// The server set the TC bit: the answer did not fit in the datagram and the query should
    /// be repeated over TCP. `addrs` then holds only the records that arrived complete.
    pub(crate) truncated: bool,
    /// How long the answer may be cached: the smallest TTL among the address records used and
    /// the CNAME records that led to them. `None` when `addrs` is empty.
    pub(crate) ttl: Option<u32>,
}

/// Everything that can be wrong with a name, a query or a response.
///
/// The first group is the caller's fault (a bad name), the second the responder's (a message
/// that is not a valid answer to our query: a broken or spoofed server, or a stale reply),
/// the third is the DNS's verdict about the name. Convert to [`io::Error`] with `?`/`into()`:
/// NXDOMAIN becomes [`io::ErrorKind::NotFound`] with the message `host not found: <name>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DnsError {
    /// The name cannot be sent as a DNS query. The caller's fault.
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The response is not a well-formed DNS message: it is cut short, or a name, pointer or
    /// record is inconsistent. The responder's fault.
    Malformed {
        /// The byte offset in the message where the problem was found.
        offset: usize,
        /// What was wrong there.
        what: &'static str,
    },
    /// The response carries another query's id: a stale or spoofed reply. Ignore it and keep
    /// waiting for the right one.
    IdMismatch {
        /// The id of our query.
        expected: u16,
        /// The id in the response.
        got: u16,
    },
    /// The message with our id is a query, not a response (QR bit clear).
    NotResponse,
    /// The response's question is not ours (other name, type or class, or none at all): a
    /// stale or spoofed reply.
    QuestionMismatch {
        /// Our question, as `name TYPE`.
        expected: String,
        /// The response's question, as `name TYPE`, or a note that it had none.
        got: String,
    },
    /// The name does not exist (RCODE 3, NXDOMAIN). Authoritative: try the next search
    /// candidate, not the next server.
    NxDomain {
        /// The name that was looked up.
        name: String,
    },
    /// The server could not answer (RCODE 2, SERVFAIL), often because an upstream
    /// authoritative server failed. Trying another nameserver may help.
    ServFail {
        /// The name that was looked up.
        name: String,
    },
    /// The server refused to answer (RCODE 5, REFUSED), usually by policy. Try another
    /// nameserver.
    Refused {
        /// The name that was looked up.
        name: String,
    },
    /// Another non-zero response code (1 FORMERR, 4 NOTIMP, ...).
    OtherRcode {
        /// The name that was looked up.
        name: String,
        /// The response code.
        rcode: u8,
    },
    /// The CNAME records in the answer form a cycle. The zone's fault.
    CnameLoop {
        /// The name that was looked up.
        name: String,
    },
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::InvalidName { name, reason } => {
                write!(f, "invalid host name {name:?}: {reason}")
            }
            DnsError::Malformed { offset, what } => {
                write!(f, "malformed DNS response at byte {offset}: {what}")
            }
            DnsError::IdMismatch { expected, got } => write!(
                f,
                "DNS response id {got:#06x} does not match query id {expected:#06x} \
                 (stale or spoofed reply)"
            ),
            DnsError::NotResponse => {
                f.write_str("DNS message with our query id is a query, not a response")
            }
            DnsError::QuestionMismatch { expected, got } => write!(
                f,
                "DNS response answers {got}, not the question asked ({expected}) \
                 (stale or spoofed reply)"
            ),
            DnsError::NxDomain { name } => write!(f, "host not found: {name}"),
            DnsError::ServFail { name } => {
                write!(f, "DNS server failure (SERVFAIL) looking up {name}")
            }
            DnsError::Refused { name } => {
                write!(f, "DNS server refused (REFUSED) to look up {name}")
            }
            DnsError::OtherRcode { name, rcode } => write!(
                f,
                "DNS server answered {} (rcode {rcode}) looking up {name}",
                rcode_name(*rcode)
            ),
            DnsError::CnameLoop { name } => {
                write!(f, "CNAME records for {name} form a loop")
            }
        }
    }
}

impl std::error::Error for DnsError {}

impl From<DnsError> for io::Error {
    /// NXDOMAIN becomes `NotFound` (`host not found: <name>`), a bad name `InvalidInput`, a
    /// message that is not a valid answer `InvalidData`, and a server's refusal or failure
    /// `Other`. The `DnsError` stays available as the error's source.
    fn from(e: DnsError) -> io::Error {
        let kind = match e {
            DnsError::NxDomain { .. } => io::ErrorKind::NotFound,
            DnsError::InvalidName { .. } => io::ErrorKind::InvalidInput,
            DnsError::Malformed { .. }
            | DnsError::IdMismatch { .. }
            | DnsError::NotResponse
            | DnsError::QuestionMismatch { .. } => io::ErrorKind::InvalidData,
            DnsError::ServFail { .. }
            | DnsError::Refused { .. }
            | DnsError::OtherRcode { .. }
            | DnsError::CnameLoop { .. } => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// The mnemonic of a response code, for messages.
fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "an unknown response code",
    }
}

/// The mnemonic of a record type, for messages.
fn type_name(code: u16) -> &'static str {
    match code {
        1 => "A",
        5 => "CNAME",
        28 => "AAAA",
        _ => "TYPE?",
    }
}

/// Shorthand for a [`DnsError::Malformed`].
fn malformed(offset: usize, what: &'static str) -> DnsError {
    DnsError::Malformed { offset, what }
}

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

/// Validates a name given in text form and returns it in *canonical wire form*: its labels,
/// each preceded by its length, lowercased, without the final zero byte. Two names are equal
/// in DNS (case-insensitively, RFC 4343) exactly when their canonical forms are equal.
///
/// Rules: labels of 1..=63 bytes, at most 253 bytes in all without a trailing dot, no empty
/// label except that one trailing dot is allowed (it marks the name absolute and changes
/// nothing on the wire), printable ASCII only.
fn encode_name(name: &str) -> Result<Vec<u8>, DnsError> {
    let invalid = |reason| DnsError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    let body = name.strip_suffix('.').unwrap_or(name);
    if body.is_empty() {
        return Err(invalid("empty name"));
    }
    if body.len() > MAX_NAME_TEXT {
        return Err(invalid("name longer than 253 bytes"));
    }
    if !body.is_ascii() {
        return Err(invalid("non-ASCII character (IDNA is not supported)"));
    }
    if body.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(invalid("control character or space"));
    }
    let mut out = Vec::with_capacity(body.len() + 1);
    for label in body.split('.') {
        if label.is_empty() {
            return Err(invalid("empty label (two dots in a row, or a leading dot)"));
        }
        if label.len() > MAX_LABEL {
            return Err(invalid("label longer than 63 bytes"));
        }
        // Fits: checked against MAX_LABEL just above.
        out.push(label.len() as u8);
        out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    Ok(out)
}

/// Renders a canonical wire-form name as text, for messages: labels joined by dots, with a
/// trailing dot (the name is absolute), and `\.`, `\\` and `\DDD` escapes for bytes that
/// would otherwise be ambiguous or unprintable. The root is `.`.
fn name_to_text(canonical: &[u8]) -> String {
    let mut out = String::new();
    let mut rest = canonical;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (label, tail) = tail.split_at(len);
        for &b in label {
            match b {
                b'.' => out.push_str("\\."),
                b'\\' => out.push_str("\\\\"),
                0x21..=0x7e => out.push(char::from(b)),
                _ => out.push_str(&format!("\\{b:03}")),
            }
        }
        out.push('.');
        rest = tail;
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

/// Reads the possibly compressed name that starts at `start`.
///
/// Returns the name in canonical wire form (see [`encode_name`]) and the offset just past the
/// name's bytes at `start` (past the first pointer, if it used one). Fails when a label or
/// pointer runs past the end of `msg`, a pointer points past the end, a reserved label type
/// (0x40, 0x80) appears, the name exceeds 255 bytes, or more than [`MAX_POINTER_JUMPS`]
/// pointers are followed (a pointer loop).
fn read_name(msg: &[u8], start: usize) -> Result<(Vec<u8>, usize), DnsError> {
    let mut out = Vec::new();
    let mut pos = start;
    // Where parsing resumes in the caller's record: set by the first pointer.
    let mut resume = None;
    let mut jumps = 0;
    loop {
        let len = *msg
            .get(pos)
            .ok_or_else(|| malformed(pos, "name runs past the end of the message"))?;
        match len & 0xC0 {
            0x00 if len == 0 => return Ok((out, resume.unwrap_or(pos + 1))),
            0x00 => {
                let len = usize::from(len);
                let label = msg
                    .get(pos + 1..pos + 1 + len)
                    .ok_or_else(|| malformed(pos, "label runs past the end of the message"))?;
                // +1 for this label's length byte, +1 for the final zero still to come.
                if out.len() + 1 + len + 1 > MAX_NAME_WIRE {
                    return Err(malformed(pos, "name longer than 255 bytes"));
                }
                out.push(len as u8);
                out.extend(label.iter().map(u8::to_ascii_lowercase));
                pos += 1 + len;
            }
            0xC0 => {
                let low = *msg.get(pos + 1).ok_or_else(|| {
                    malformed(pos, "compression pointer runs past the end of the message")
                })?;
                jumps += 1;
                if jumps > MAX_POINTER_JUMPS {
                    return Err(malformed(
                        pos,
                        "too many compression pointers (pointer loop)",
                    ));
                }
                let target = (usize::from(len & 0x3F) << 8) | usize::from(low);
                if target >= msg.len() {
                    return Err(malformed(
                        pos,
                        "compression pointer points past the end of the message",
                    ));
                }
                resume.get_or_insert(pos + 2);
                pos = target;
            }
            _ => return Err(malformed(pos, "reserved label type (0x40 or 0x80)")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Queries and responses
// ---------------------------------------------------------------------------------------------

/// Builds a standard query for `name`'s records of type `qtype`: header with id `id` and the
/// RD (recursion desired) bit, one question of class IN, no other records.
///
/// `name` may end with a dot (`"localhost."`); it is validated as [`encode_name`] describes
/// and fails with [`DnsError::InvalidName`] saying what is wrong. The result is at most
/// 12 + 255 + 4 bytes, so it always fits a UDP datagram and a TCP frame.
pub(crate) fn build_query(id: u16, name: &str, qtype: QType) -> Result<Vec<u8>, DnsError> {
    let qname = encode_name(name)?;
    let mut msg = Vec::with_capacity(HEADER_LEN + qname.len() + 5);
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&FLAG_RD.to_be_bytes());
    msg.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    msg.extend_from_slice(&[0; 6]); // ANCOUNT, NSCOUNT, ARCOUNT
    msg.extend_from_slice(&qname);
    msg.push(0);
    msg.extend_from_slice(&qtype.code().to_be_bytes());
    msg.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(msg)
}

/// Reads a big-endian `u16` at `pos`, or fails naming `what` was cut short.
fn read_u16(msg: &[u8], pos: usize, what: &'static str) -> Result<u16, DnsError> {
    match msg.get(pos..pos + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(malformed(pos, what)),
    }
}

/// Reads a big-endian `u32` at `pos`, or fails naming `what` was cut short.
fn read_u32(msg: &[u8], pos: usize, what: &'static str) -> Result<u32, DnsError> {
    match msg.get(pos..pos + 4) {
        Some(b) => Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        None => Err(malformed(pos, what)),
    }
}

/// One resource record of the answer section, with its owner name decoded.
struct Record {
    /// The owner name in canonical wire form.
    owner: Vec<u8>,
    /// The record type.
    rtype: u16,
    /// The record class.
    class: u16,
    /// The time to live in seconds (values with the top bit set read as 0, RFC 2181 §8).
    ttl: u32,
    /// The offset of the record data in the message.
    rdata: usize,
    /// The length of the record data.
    rdlength: usize,
}

/// Reads the resource record at `pos`; returns it and the offset of the next one.
fn read_record(msg: &[u8], pos: usize) -> Result<(Record, usize), DnsError> {
    let (owner, pos) = read_name(msg, pos)?;
    let rtype = read_u16(msg, pos, "record type cut short")?;
    let class = read_u16(msg, pos + 2, "record class cut short")?;
    let ttl = read_u32(msg, pos + 4, "record TTL cut short")?;
    let rdlength = usize::from(read_u16(msg, pos + 8, "record data length cut short")?);
    let rdata = pos + 10;
    if rdata + rdlength > msg.len() {
        return Err(malformed(
            rdata,
            "record data runs past the end of the message",
        ));
    }
    let ttl = if ttl > i32::MAX as u32 { 0 } else { ttl };
    let record = Record {
        owner,
        rtype,
        class,
        ttl,
        rdata,
        rdlength,
    };
    Ok((record, rdata + rdlength))
}

/// Checks that `msg` is the response to the query [`build_query`] made from `id`, `name` and
/// `qtype`, and extracts the addresses it gives for that name.
///
/// In order:
/// 1. The header must be complete, carry `id` ([`DnsError::IdMismatch`] otherwise: keep
///    waiting, this is not our reply), have the QR bit ([`DnsError::NotResponse`]) and
///    opcode QUERY.
/// 2. The question must be ours: same name (case-insensitively), type and class IN
///    ([`DnsError::QuestionMismatch`]). A response without a question is accepted only when it
///    reports an error code, as some servers send REFUSED that way.
/// 3. The response code: 3 is [`DnsError::NxDomain`], 2 [`DnsError::ServFail`], 5
///    [`DnsError::Refused`], any other non-zero one [`DnsError::OtherRcode`].
/// 4. The answer section is read in full. Starting at the queried name, CNAME records are
///    followed to the end of their chain; the records of type `qtype` and class IN owned by
///    that final name are the answer, in order. Records for other names, types or classes
///    are ignored, so are the authority and additional sections.
///
/// When the TC bit is set the answer section may be cut off: [`Answer::truncated`] is set and
/// the records that did arrive complete are used, instead of failing on the cut. Any other
/// inconsistency is a [`DnsError::Malformed`] naming the offset. Never panics.
pub(crate) fn parse_response(
    id: u16,
    name: &str,
    qtype: QType,
    msg: &[u8],
) -> Result<Answer, DnsError> {
    let qname = encode_name(name)?;
    if msg.len() < HEADER_LEN {
        return Err(malformed(
            msg.len(),
            "message shorter than the 12-byte header",
        ));
    }
    let got_id = u16::from_be_bytes([msg[0], msg[1]]);
    if got_id != id {
        return Err(DnsError::IdMismatch {
            expected: id,
            got: got_id,
        });
    }
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    if flags & FLAG_QR == 0 {
        return Err(DnsError::NotResponse);
    }
    if flags & FLAG_OPCODE != 0 {
        return Err(malformed(2, "opcode is not QUERY"));
    }
    let truncated = flags & FLAG_TC != 0;
    // Fits: masked to four bits.
    let rcode = (flags & FLAG_RCODE) as u8;
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    let ancount = u16::from_be_bytes([msg[6], msg[7]]);

    let expected_question = || format!("{} {}", name_to_text(&qname), qtype);
    let mut pos = HEADER_LEN;
    match qdcount {
        0 if rcode == 0 => {
            return Err(DnsError::QuestionMismatch {
                expected: expected_question(),
                got: "a response without a question".to_owned(),
            });
        }
        0 => {}
        1 => {
            let (got_name, next) = read_name(msg, pos)?;
            let got_type = read_u16(msg, next, "question type cut short")?;
            let got_class = read_u16(msg, next + 2, "question class cut short")?;
            if got_name != qname || got_type != qtype.code() || got_class != CLASS_IN {
                let class = if got_class == CLASS_IN {
                    ""
                } else {
                    " (class not IN)"
                };
                return Err(DnsError::QuestionMismatch {
                    expected: expected_question(),
                    got: format!(
                        "{} {}{class}",
                        name_to_text(&got_name),
                        match got_type {
                            1 | 5 | 28 => type_name(got_type).to_owned(),
                            other => format!("TYPE{other}"),
                        }
                    ),
                });
            }
            pos = next + 4;
        }
        _ => return Err(malformed(4, "more than one question")),
    }

    let name = name.to_owned();
    match rcode {
        0 => {}
        2 => return Err(DnsError::ServFail { name }),
        3 => return Err(DnsError::NxDomain { name }),
        5 => return Err(DnsError::Refused { name }),
        rcode => return Err(DnsError::OtherRcode { name, rcode }),
    }

    let mut records = Vec::with_capacity(usize::from(ancount).min(64));
    for _ in 0..ancount {
        match read_record(msg, pos) {
            Ok((record, next)) => {
                records.push(record);
                pos = next;
            }
            // A truncated message may end anywhere; keep what arrived complete.
            Err(_) if truncated => break,
            Err(e) => return Err(e),
        }
    }

    // Follow the CNAME chain. Each CNAME record may be used once, so a cycle ends the loop.
    let mut current = qname;
    let mut used = vec![false; records.len()];
    let mut ttl: Option<u32> = None;
    while let Some(i) = records.iter().enumerate().position(|(i, r)| {
        r.rtype == TYPE_CNAME && r.class == CLASS_IN && r.owner == current && !used[i]
    }) {
        used[i] = true;
        let r = &records[i];
        let (target, end) = read_name(msg, r.rdata)?;
        if end != r.rdata + r.rdlength {
            return Err(malformed(
                r.rdata,
                "CNAME record data length does not match its name",
            ));
        }
        ttl = Some(ttl.map_or(r.ttl, |t| t.min(r.ttl)));
        if records
            .iter()
            .enumerate()
            .any(|(j, r)| used[j] && r.owner == target)
        {
            return Err(DnsError::CnameLoop { name });
        }
        current = target;
    }

    let mut addrs = Vec::new();
    for r in &records {
        if r.rtype != qtype.code() || r.class != CLASS_IN || r.owner != current {
            continue;
        }
        if r.rdlength != qtype.rdata_len() {
            return Err(malformed(
                r.rdata,
                match qtype {
                    QType::A => "A record data is not 4 bytes",
                    QType::Aaaa => "AAAA record data is not 16 bytes",
                },
            ));
        }
        let data = &msg[r.rdata..r.rdata + r.rdlength];
        let addr = match qtype {
            QType::A => IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
            QType::Aaaa => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(data);
                IpAddr::V6(Ipv6Addr::from(octets))
            }
        };
        addrs.push(addr);
        ttl = Some(ttl.map_or(r.ttl, |t| t.min(r.ttl)));
    }
    let ttl = if addrs.is_empty() { None } else { ttl };
    Ok(Answer {
        addrs,
        truncated,
        ttl,
    })
}

/// Frames a message for DNS over TCP (RFC 1035 §4.2.2): its length as two big-endian bytes,
/// then the message.
///
/// # Panics
///
/// If `msg` is longer than 65535 bytes, which a DNS message cannot be; queries from
/// [`build_query`] are at most 271 bytes.
pub(crate) fn tcp_frame(msg: &[u8]) -> Vec<u8> {
    let len = u16::try_from(msg.len()).expect("a DNS message is at most 65535 bytes");
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    framed
}

/// The length of the DNS message that follows a TCP length prefix: read these two bytes,
/// then exactly this many.
pub(crate) fn tcp_frame_len(prefix: [u8; 2]) -> usize {
    usize::from(u16::from_be_bytes(prefix))
}

// ---------------------------------------------------------------------------------------------
// /etc/hosts
// ---------------------------------------------------------------------------------------------

/// Parses `/etc/hosts`: each line is an address followed by a canonical name and aliases,
/// separated by blanks; `#` starts a comment. Returns one `(name, address)` pair per name on
/// each valid line, names lowercased and without a trailing dot, in file order.
///
/// Lines whose first field is not an IPv4 or IPv6 address are skipped, as glibc does; so are
/// IPv6 addresses with a zone (`fe80::1%eth0`), which [`IpAddr`] cannot carry.
pub(crate) fn parse_hosts(text: &str) -> Vec<(String, IpAddr)> {
    let mut entries = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_ascii_whitespace();
        let Some(Ok(addr)) = fields.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        for name in fields {
            let name = name.strip_suffix('.').unwrap_or(name);
            if !name.is_empty() {
                entries.push((name.to_ascii_lowercase(), addr));
            }
        }
    }
    entries
}

/// The addresses `entries` (from [`parse_hosts`]) give for `name`, in file order without
/// duplicates. The match ignores ASCII case and a trailing dot on `name`.
pub(crate) fn lookup_hosts(entries: &[(String, IpAddr)], name: &str) -> Vec<IpAddr> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut addrs = Vec::new();
    for (entry, addr) in entries {
        if entry.eq_ignore_ascii_case(name) && !addrs.contains(addr) {
            addrs.push(*addr);
        }
    }
    addrs
}

// ---------------------------------------------------------------------------------------------
// /etc/resolv.conf
// ---------------------------------------------------------------------------------------------

/// The resolver settings from `/etc/resolv.conf`, with glibc's defaults and limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ResolvConf {
    /// The servers to ask, in order, on port 53: at most three (glibc's `MAXNS`), and
    /// `127.0.0.1:53` when the file names none, as glibc does.
    pub nameservers: Vec<SocketAddr>,
    /// The search list, from the last `search` or `domain` line, without trailing dots.
    /// Empty by default (glibc would derive one from the host name; see the module docs).
    pub search: Vec<String>,
    /// `options ndots:n`: a name with at least this many dots is tried as given before the
    /// search list is applied. Default 1, at most 15.
    pub ndots: u32,
    /// `options timeout:n`: how long to wait for one server's reply. Default 5 s, 1..=30 s.
    pub timeout: Duration,
    /// `options attempts:n`: how many rounds through the server list before giving up.
    /// Default 2, 1..=5.
    pub attempts: u32,
}

impl Default for ResolvConf {
    /// glibc's settings for an empty `/etc/resolv.conf`.
    fn default() -> Self {
        ResolvConf {
            nameservers: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 53))],
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

/// Parses the text of `/etc/resolv.conf`.
///
/// Understood: `nameserver ADDR` (IPv4, IPv6, IPv6 with a numeric `%scope`), `search D...`,
/// `domain D` (the last of `search`/`domain` wins), `options` with `ndots:n`, `timeout:n`
/// and `attempts:n` (out-of-range values are clamped as glibc does, unparsable ones
/// ignored). Comments start with `#` or `;`. Unknown keywords and options, and malformed
/// lines, are ignored. Never fails: an empty text gives [`ResolvConf::default`].
pub(crate) fn parse_resolv_conf(text: &str) -> ResolvConf {
    let mut conf = ResolvConf {
        nameservers: Vec::new(),
        ..ResolvConf::default()
    };
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut fields = line.split_ascii_whitespace();
        match fields.next() {
            Some("nameserver") if conf.nameservers.len() < MAX_NAMESERVERS => {
                if let Some(addr) = fields.next().and_then(parse_nameserver) {
                    conf.nameservers.push(addr);
                }
            }
            Some("search") => {
                conf.search = fields.filter_map(search_domain).collect();
            }
            Some("domain") => {
                conf.search = fields.next().and_then(search_domain).into_iter().collect();
            }
            Some("options") => {
                for option in fields {
                    let Some((key, value)) = option.split_once(':') else {
                        continue;
                    };
                    let Ok(value) = value.parse::<u32>() else {
                        continue;
                    };
                    match key {
                        "ndots" => conf.ndots = value.min(MAX_NDOTS),
                        "timeout" => {
                            let secs = value.clamp(1, MAX_TIMEOUT_SECS);
                            conf.timeout = Duration::from_secs(u64::from(secs));
                        }
                        "attempts" => conf.attempts = value.clamp(1, MAX_ATTEMPTS),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if conf.nameservers.is_empty() {
        conf.nameservers = ResolvConf::default().nameservers;
    }
    conf
}

/// Parses a `nameserver` address into a socket address on port 53. A `%scope` suffix on an
/// IPv6 address is accepted when it is numeric (an interface index).
fn parse_nameserver(field: &str) -> Option<SocketAddr> {
    if let Ok(ip) = field.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    let (ip, scope) = field.split_once('%')?;
    let ip = ip.parse::<Ipv6Addr>().ok()?;
    let scope = scope.parse::<u32>().ok()?;
    Some(SocketAddr::V6(SocketAddrV6::new(ip, 53, 0, scope)))
}

/// Normalises one search domain: trailing dot removed; the root alone gives nothing.
fn search_domain(field: &str) -> Option<String> {
    let domain = field.strip_suffix('.').unwrap_or(field);
    (!domain.is_empty()).then(|| domain.to_owned())
}

impl ResolvConf {
    /// The names to query for `name`, in the order to try them, by glibc's rules
    /// (`res_search`):
    ///
    /// * a name ending with a dot is absolute: only it is tried (without the dot);
    /// * a name with at least [`ndots`](Self::ndots) dots is tried as given first, then with
    ///   each search domain appended;
    /// * otherwise each search domain is tried first, and the name as given last.
    ///
    /// Candidates longer than 253 bytes are left out, as glibc skips them. An empty name
    /// gives no candidates. The caller moves on to the next candidate after NXDOMAIN (or an
    /// empty answer), and stops at the first one that has addresses.
    pub(crate) fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(absolute) = name.strip_suffix('.') {
            return if absolute.is_empty() {
                Vec::new()
            } else {
                vec![absolute.to_owned()]
            };
        }
        if name.is_empty() {
            return Vec::new();
        }
        let searched = self.search.iter().map(|domain| format!("{name}.{domain}"));
        let dots = name.bytes().filter(|&b| b == b'.').count();
        let enough_dots = dots as u64 >= u64::from(self.ndots);
        let all: Vec<String> = if enough_dots {
            std::iter::once(name.to_owned()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(name.to_owned())).collect()
        };
        all.into_iter()
            .filter(|n| n.len() <= MAX_NAME_TEXT)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    // --- helpers to hand-build responses -----------------------------------------------------

    /// A response header: id, flags, counts.
    fn header(id: u16, flags: u16, qd: u16, an: u16) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&qd.to_be_bytes());
        m.extend_from_slice(&an.to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        m
    }

    /// Flags of a plain successful recursive answer: QR, RD, RA.
    const OK: u16 = 0x8180;

    /// An uncompressed name in wire form.
    fn wire(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for label in name.split('.').filter(|l| !l.is_empty()) {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out
    }

    /// Appends a question (uncompressed name, type, class IN).
    fn question(m: &mut Vec<u8>, name: &str, qtype: u16) {
        m.extend_from_slice(&wire(name));
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
    }

    /// Appends a record whose owner is given as raw bytes (a name or a pointer).
    fn record(m: &mut Vec<u8>, owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) {
        m.extend_from_slice(owner);
        m.extend_from_slice(&rtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&ttl.to_be_bytes());
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(rdata);
    }

    /// A pointer to the question name, which always starts at offset 12.
    const QPTR: [u8; 2] = [0xC0, 0x0C];

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    /// A valid response with two A records for example.com, owners compressed.
    fn two_a_records() -> Vec<u8> {
        let mut m = header(0x1234, OK, 1, 2);
        question(&mut m, "example.com", 1);
        record(&mut m, &QPTR, 1, 300, &[93, 184, 216, 34]);
        record(&mut m, &QPTR, 1, 120, &[10, 0, 0, 1]);
        m
    }

    // --- build_query -------------------------------------------------------------------------

    #[test]
    fn query_bytes_are_exact() {
        let q = build_query(0xBEEF, "Example.COM", QType::A).unwrap();
        let expected: &[u8] = &[
            0xBE, 0xEF, // id
            0x01, 0x00, // flags: RD
            0, 1, 0, 0, 0, 0, 0, 0, // QDCOUNT 1
            7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 3, b'c', b'o', b'm', 0, // name
            0, 1, // A
            0, 1, // IN
        ];
        assert_eq!(q, expected);
        let q6 = build_query(1, "example.com.", QType::Aaaa).unwrap();
        assert_eq!(&q6[q6.len() - 4..], &[0, 28, 0, 1]);
        assert_eq!(
            q6[12..q6.len() - 4],
            q[12..q.len() - 4],
            "trailing dot changes nothing"
        );
    }

    #[test]
    fn query_accepts_absolute_single_label_and_limits() {
        assert!(build_query(1, "localhost.", QType::A).is_ok());
        assert!(build_query(1, "localhost", QType::A).is_ok());
        let label63 = "a".repeat(63);
        assert!(build_query(1, &label63, QType::A).is_ok());
        // 4 labels of 63 + 3 dots = 255 > 253; 3 labels of 63 + 61 + 3 dots = 253.
        let ok = format!("{label63}.{label63}.{label63}.{}", "b".repeat(61));
        assert_eq!(ok.len(), 253);
        let q = build_query(1, &ok, QType::A).unwrap();
        assert_eq!(q.len(), 12 + 255 + 4);
        assert!(build_query(1, &format!("{ok}."), QType::A).is_ok());
    }

    #[test]
    fn query_rejects_bad_names_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "empty name"),
            (".", "empty name"),
            ("a..b", "empty label"),
            (".a", "empty label"),
            ("a.b..", "empty label"),
            ("héllo.com", "non-ASCII"),
            ("a b.com", "control character or space"),
            ("a\tb", "control character or space"),
        ];
        for (name, reason) in cases {
            match build_query(1, name, QType::A) {
                Err(DnsError::InvalidName { name: n, reason: r }) => {
                    assert_eq!(n, *name);
                    assert!(r.contains(reason), "{name:?}: {r}");
                }
                other => panic!("{name:?}: {other:?}"),
            }
        }
        let long_label = "a".repeat(64);
        assert!(matches!(
            build_query(1, &long_label, QType::A),
            Err(DnsError::InvalidName {
                reason: "label longer than 63 bytes",
                ..
            })
        ));
        let long_name = vec!["a".repeat(63); 4].join(".");
        assert!(matches!(
            build_query(1, &long_name, QType::A),
            Err(DnsError::InvalidName {
                reason: "name longer than 253 bytes",
                ..
            })
        ));
        let e: io::Error = build_query(1, "a..b", QType::A).unwrap_err().into();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    // --- parse_response: success paths ------------------------------------------------------

    #[test]
    fn a_records_with_compressed_owners() {
        let m = two_a_records();
        let a = parse_response(0x1234, "example.com", QType::A, &m).unwrap();
        assert_eq!(a.addrs, vec![v4(93, 184, 216, 34), v4(10, 0, 0, 1)]);
        assert!(!a.truncated);
        assert_eq!(a.ttl, Some(120), "smallest TTL");
    }

    #[test]
    fn question_matches_case_insensitively_and_with_trailing_dot() {
        let mut m = header(7, OK, 1, 1);
        question(&mut m, "ExAmPlE.cOm", 1);
        record(&mut m, &QPTR, 1, 60, &[1, 2, 3, 4]);
        let a = parse_response(7, "EXAMPLE.com.", QType::A, &m).unwrap();
        assert_eq!(a.addrs, vec![v4(1, 2, 3, 4)]);
    }

    #[test]
    fn aaaa_record() {
        let mut m = header(9, OK, 1, 1);
        question(&mut m, "v6.example", 28);
        let ip: Ipv6Addr = "2001:db8::1".parse().unwrap();
        record(&mut m, &QPTR, 28, 3600, &ip.octets());
        let a = parse_response(9, "v6.example", QType::Aaaa, &m).unwrap();
        assert_eq!(a.addrs, vec![IpAddr::V6(ip)]);
        assert_eq!(a.ttl, Some(3600));
    }

    #[test]
    fn cname_chain_with_compression_is_followed() {
        // www.example.com CNAME web.example.com CNAME cdn.example.net A 5.6.7.8
        let mut m = header(0x42, OK, 1, 4);
        question(&mut m, "www.example.com", 1); // name at 12; "example.com" at 16
                                                // CNAME www -> web.<ptr to example.com at 16>
        let cname1_rdata_at = m.len() + 2 + 10;
        record(
            &mut m,
            &QPTR,
            TYPE_CNAME,
            600,
            &[3, b'w', b'e', b'b', 0xC0, 16],
        );
        // An unrelated A record for another name must be ignored.
        record(&mut m, &wire("other.org"), 1, 5, &[9, 9, 9, 9]);
        // CNAME web (pointer to the first CNAME's rdata) -> cdn.example.net
        let owner = [0xC0, cname1_rdata_at as u8];
        let cname2_rdata_at = m.len() + 2 + 10;
        record(&mut m, &owner, TYPE_CNAME, 200, &wire("cdn.example.net"));
        record(
            &mut m,
            &[0xC0, cname2_rdata_at as u8],
            1,
            300,
            &[5, 6, 7, 8],
        );
        let a = parse_response(0x42, "www.example.com", QType::A, &m).unwrap();
        assert_eq!(a.addrs, vec![v4(5, 6, 7, 8)]);
        assert_eq!(a.ttl, Some(200), "CNAME TTLs count");
    }

    #[test]
    fn cname_without_target_records_is_an_empty_answer() {
        let mut m = header(1, OK, 1, 1);
        question(&mut m, "alias.test", 1);
        record(&mut m, &QPTR, TYPE_CNAME, 60, &wire("target.test"));
        let a = parse_response(1, "alias.test", QType::A, &m).unwrap();
        assert_eq!(
            a,
            Answer {
                addrs: vec![],
                truncated: false,
                ttl: None
            }
        );
    }

    #[test]
    fn cname_loop_is_reported() {
        let mut m = header(1, OK, 1, 2);
        question(&mut m, "a.test", 1);
        record(&mut m, &QPTR, TYPE_CNAME, 60, &wire("b.test"));
        record(&mut m, &wire("b.test"), TYPE_CNAME, 60, &wire("a.test"));
        assert_eq!(
            parse_response(1, "a.test", QType::A, &m),
            Err(DnsError::CnameLoop {
                name: "a.test".into()
            })
        );
        // A CNAME to itself too.
        let mut m = header(1, OK, 1, 1);
        question(&mut m, "a.test", 1);
        record(&mut m, &QPTR, TYPE_CNAME, 60, &QPTR);
        assert!(matches!(
            parse_response(1, "a.test", QType::A, &m),
            Err(DnsError::CnameLoop { .. })
        ));
    }

    #[test]
    fn nodata_and_other_types_are_empty() {
        // An AAAA query answered with only an A record: ignored, empty answer.
        let mut m = header(3, OK, 1, 1);
        question(&mut m, "x.test", 28);
        record(&mut m, &QPTR, 1, 60, &[1, 1, 1, 1]);
        let a = parse_response(3, "x.test", QType::Aaaa, &m).unwrap();
        assert!(a.addrs.is_empty());
        assert_eq!(a.ttl, None);
    }

    #[test]
    fn authority_and_additional_sections_are_ignored() {
        let mut m = two_a_records();
        m[9] = 1; // NSCOUNT 1, never written: the parser must not read it.
        m[11] = 5; // ARCOUNT 5, likewise.
        let a = parse_response(0x1234, "example.com", QType::A, &m).unwrap();
        assert_eq!(a.addrs.len(), 2);
    }

    #[test]
    fn ttl_with_top_bit_reads_as_zero() {
        let mut m = header(3, OK, 1, 1);
        question(&mut m, "x.test", 1);
        record(&mut m, &QPTR, 1, 0x8000_0001, &[1, 1, 1, 1]);
        assert_eq!(
            parse_response(3, "x.test", QType::A, &m).unwrap().ttl,
            Some(0)
        );
    }

    // --- truncation --------------------------------------------------------------------------

    #[test]
    fn tc_bit_without_answers() {
        let mut m = header(5, OK | FLAG_TC, 1, 0);
        question(&mut m, "big.test", 1);
        let a = parse_response(5, "big.test", QType::A, &m).unwrap();
        assert!(a.truncated);
        assert!(a.addrs.is_empty());
    }

    #[test]
    fn tc_bit_with_cut_answer_keeps_complete_records() {
        let mut m = header(5, OK | FLAG_TC, 1, 3);
        question(&mut m, "big.test", 1);
        record(&mut m, &QPTR, 1, 60, &[1, 1, 1, 1]);
        record(&mut m, &QPTR, 1, 60, &[2, 2, 2, 2]);
        m.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0]); // third record cut off
        let a = parse_response(5, "big.test", QType::A, &m).unwrap();
        assert!(a.truncated);
        assert_eq!(a.addrs, vec![v4(1, 1, 1, 1), v4(2, 2, 2, 2)]);
        // Without TC the same bytes are malformed, and the error names the offset.
        m[2] &= !0x02;
        match parse_response(5, "big.test", QType::A, &m) {
            Err(DnsError::Malformed { offset, .. }) => assert!(offset >= m.len() - 3),
            other => panic!("{other:?}"),
        }
    }

    // --- response codes ----------------------------------------------------------------------

    #[test]
    fn rcodes_map_to_errors() {
        let cases = [
            (
                2,
                DnsError::ServFail {
                    name: "n.test".into(),
                },
            ),
            (
                3,
                DnsError::NxDomain {
                    name: "n.test".into(),
                },
            ),
            (
                5,
                DnsError::Refused {
                    name: "n.test".into(),
                },
            ),
            (
                1,
                DnsError::OtherRcode {
                    name: "n.test".into(),
                    rcode: 1,
                },
            ),
            (
                4,
                DnsError::OtherRcode {
                    name: "n.test".into(),
                    rcode: 4,
                },
            ),
        ];
        for (rcode, expected) in cases {
            let mut m = header(8, OK | rcode, 1, 0);
            question(&mut m, "n.test", 1);
            assert_eq!(parse_response(8, "n.test", QType::A, &m), Err(expected));
        }
        // REFUSED without a question is still REFUSED.
        let m = header(8, OK | 5, 0, 0);
        assert!(matches!(
            parse_response(8, "n.test", QType::A, &m),
            Err(DnsError::Refused { .. })
        ));
    }

    #[test]
    fn nxdomain_becomes_not_found() {
        let mut m = header(8, OK | 3, 1, 0);
        question(&mut m, "nope.example", 1);
        let e = parse_response(8, "nope.example", QType::A, &m).unwrap_err();
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
        assert_eq!(io.to_string(), "host not found: nope.example");
        let inner = io.get_ref().and_then(|e| e.downcast_ref::<DnsError>());
        assert!(matches!(inner, Some(DnsError::NxDomain { .. })));
    }

    #[test]
    fn error_kinds() {
        let kind = |e: DnsError| io::Error::from(e).kind();
        assert_eq!(kind(malformed(3, "x")), io::ErrorKind::InvalidData);
        assert_eq!(
            kind(DnsError::IdMismatch {
                expected: 1,
                got: 2
            }),
            io::ErrorKind::InvalidData
        );
        assert_eq!(
            kind(DnsError::ServFail { name: "a".into() }),
            io::ErrorKind::Other
        );
        assert_eq!(
            malformed(17, "label runs past the end of the message").to_string(),
            "malformed DNS response at byte 17: label runs past the end of the message"
        );
    }

    // --- not our answer ----------------------------------------------------------------------

    #[test]
    fn id_mismatch() {
        let m = two_a_records();
        assert_eq!(
            parse_response(0x1235, "example.com", QType::A, &m),
            Err(DnsError::IdMismatch {
                expected: 0x1235,
                got: 0x1234
            })
        );
    }

    #[test]
    fn query_is_not_a_response() {
        let q = build_query(0x1234, "example.com", QType::A).unwrap();
        assert_eq!(
            parse_response(0x1234, "example.com", QType::A, &q),
            Err(DnsError::NotResponse)
        );
    }

    #[test]
    fn question_mismatch() {
        let m = two_a_records();
        match parse_response(0x1234, "example.org", QType::A, &m) {
            Err(DnsError::QuestionMismatch { expected, got }) => {
                assert_eq!(expected, "example.org. A");
                assert_eq!(got, "example.com. A");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_response(0x1234, "example.com", QType::Aaaa, &m),
            Err(DnsError::QuestionMismatch { .. })
        ));
        // NOERROR without a question is not an answer to anything.
        let m = header(1, OK, 0, 0);
        assert!(matches!(
            parse_response(1, "a.test", QType::A, &m),
            Err(DnsError::QuestionMismatch { .. })
        ));
    }

    // --- malformed input ---------------------------------------------------------------------

    #[test]
    fn pointer_loop_is_an_error_not_a_hang() {
        // The question name is a pointer to itself.
        let m: Vec<u8> = vec![
            0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, // header
            0xC0, 0x0C, 0, 1, 0, 1, // question: name = pointer to offset 12 (itself)
        ];
        assert_eq!(
            parse_response(1, "a.test", QType::A, &m),
            Err(malformed(
                12,
                "too many compression pointers (pointer loop)"
            ))
        );
        // Two pointers pointing at each other, via a label.
        let m: Vec<u8> = vec![
            0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, // header
            1, b'a', 0xC0, 0x0C, 0, 1, 0, 1, // "a" then pointer back to 12
        ];
        match parse_response(1, "a.test", QType::A, &m) {
            Err(DnsError::Malformed { what, .. }) => assert!(what.contains("255"), "{what}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_messages_name_the_offset() {
        let m = two_a_records();
        // Cut inside the header.
        assert_eq!(
            parse_response(0x1234, "example.com", QType::A, &m[..5]),
            Err(malformed(5, "message shorter than the 12-byte header"))
        );
        // Cut inside the question name: label "example" at 12 needs bytes up to 20.
        assert_eq!(
            parse_response(0x1234, "example.com", QType::A, &m[..15]),
            Err(malformed(12, "label runs past the end of the message"))
        );
        // Pointer past the end.
        let mut bad = m.clone();
        let first_owner = 12 + 13 + 4;
        bad[first_owner + 1] = 0xFF;
        assert_eq!(
            parse_response(0x1234, "example.com", QType::A, &bad),
            Err(malformed(
                first_owner,
                "compression pointer points past the end of the message"
            ))
        );
        // Reserved label type.
        let mut bad = m.clone();
        bad[first_owner] = 0x40;
        assert_eq!(
            parse_response(0x1234, "example.com", QType::A, &bad),
            Err(malformed(first_owner, "reserved label type (0x40 or 0x80)"))
        );
        // rdlength larger than the message.
        let mut bad = m.clone();
        let rdlength_at = first_owner + 2 + 8;
        bad[rdlength_at + 1] = 200;
        assert_eq!(
            parse_response(0x1234, "example.com", QType::A, &bad),
            Err(malformed(
                rdlength_at + 2,
                "record data runs past the end of the message"
            ))
        );
        // A record with 5 bytes of data.
        let mut bad = header(2, OK, 1, 1);
        question(&mut bad, "x.test", 1);
        record(&mut bad, &QPTR, 1, 1, &[1, 2, 3, 4, 5]);
        assert!(matches!(
            parse_response(2, "x.test", QType::A, &bad),
            Err(DnsError::Malformed {
                what: "A record data is not 4 bytes",
                ..
            })
        ));
        // Two questions.
        let mut bad = m.clone();
        bad[5] = 2;
        assert_eq!(
            parse_response(0x1234, "example.com", QType::A, &bad),
            Err(malformed(4, "more than one question"))
        );
        // CNAME whose rdlength does not match its name.
        let mut bad = header(2, OK, 1, 1);
        question(&mut bad, "x.test", 1);
        let mut rdata = wire("y.test");
        rdata.push(0xAA);
        record(&mut bad, &QPTR, TYPE_CNAME, 1, &rdata);
        assert!(matches!(
            parse_response(2, "x.test", QType::A, &bad),
            Err(DnsError::Malformed {
                what: "CNAME record data length does not match its name",
                ..
            })
        ));
        // Non-QUERY opcode.
        let mut bad = m.clone();
        bad[2] |= 0x10; // opcode 2 (STATUS)
        assert_eq!(
            parse_response(0x1234, "example.com", QType::A, &bad),
            Err(malformed(2, "opcode is not QUERY"))
        );
    }

    /// A small xorshift generator, so the property tests are deterministic without a crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Sample valid responses to garble.
    fn samples() -> Vec<(u16, &'static str, QType, Vec<u8>)> {
        let mut cname = header(0x42, OK, 1, 3);
        question(&mut cname, "www.example.com", 1);
        record(
            &mut cname,
            &QPTR,
            TYPE_CNAME,
            600,
            &[3, b'w', b'e', b'b', 0xC0, 16],
        );
        record(
            &mut cname,
            &[3, b'w', b'e', b'b', 0xC0, 16],
            TYPE_CNAME,
            60,
            &wire("c.net"),
        );
        record(&mut cname, &wire("c.net"), 1, 60, &[1, 2, 3, 4]);
        let mut aaaa = header(9, OK, 1, 1);
        question(&mut aaaa, "v6.example", 28);
        record(&mut aaaa, &QPTR, 28, 1, &[0x20; 16]);
        let mut nx = header(8, OK | 3, 1, 0);
        question(&mut nx, "n.test", 1);
        vec![
            (0x1234, "example.com", QType::A, two_a_records()),
            (0x42, "www.example.com", QType::A, cname),
            (9, "v6.example", QType::Aaaa, aaaa),
            (8, "n.test", QType::A, nx),
        ]
    }

    #[test]
    fn every_prefix_of_a_valid_message_is_handled() {
        for (id, name, qtype, msg) in samples() {
            let full = parse_response(id, name, qtype, &msg);
            for len in 0..msg.len() {
                let r = parse_response(id, name, qtype, &msg[..len]);
                // A strict prefix never decodes to the same non-empty answer.
                if let (Ok(full), Ok(part)) = (&full, &r) {
                    assert!(part.addrs.len() < full.addrs.len() || full.addrs.is_empty());
                }
                if let Err(DnsError::Malformed { offset, .. }) = r {
                    assert!(offset <= len, "offset {offset} beyond input of {len}");
                }
            }
        }
    }

    #[test]
    fn garbled_and_random_bytes_never_panic() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let samples = samples();
        for round in 0..20_000 {
            let (id, name, qtype, msg) = &samples[round % samples.len()];
            let mut m = msg.clone();
            match rng.below(4) {
                // Flip a few bytes of a valid message, keeping its header's id and QR.
                0 | 1 => {
                    for _ in 0..1 + rng.below(4) {
                        let i = 4 + rng.below(m.len() - 4);
                        m[i] = rng.next() as u8;
                    }
                }
                // Pointers everywhere: the worst case for the name decoder.
                2 => {
                    for _ in 0..1 + rng.below(6) {
                        let i = 12 + rng.below(m.len() - 13);
                        m[i] = 0xC0 | (rng.next() as u8 & 0x01);
                        m[i + 1] = rng.next() as u8;
                    }
                }
                // Entirely random bytes after a plausible header.
                _ => {
                    let len = rng.below(300);
                    m.truncate(4);
                    m.extend((0..len).map(|_| rng.next() as u8));
                }
            }
            let _ = parse_response(*id, name, *qtype, &m);
            let _ = read_name(&m, rng.below(m.len() + 2));
        }
        // Random names: build_query either fails with InvalidName or builds a query that
        // parses back as its own question.
        for _ in 0..5_000 {
            let len = rng.below(80);
            let name: String = (0..len)
                .map(|_| *b"aZ0.-_.\xff. \x01".get(rng.below(11)).unwrap() as char)
                .collect();
            match build_query(1, &name, QType::A) {
                Ok(q) => {
                    let (parsed, end) = read_name(&q, 12).unwrap();
                    assert_eq!(end, q.len() - 4);
                    assert_eq!(parsed, encode_name(&name).unwrap());
                }
                Err(e) => assert!(matches!(e, DnsError::InvalidName { .. }), "{e}"),
            }
        }
    }

    #[test]
    fn name_text_escapes() {
        assert_eq!(name_to_text(&[]), ".");
        assert_eq!(name_to_text(&[3, b'a', b'.', 1, 1, b'x']), "a\\.\\001.x.");
    }

    // --- TCP framing -------------------------------------------------------------------------

    #[test]
    fn tcp_framing() {
        let q = build_query(1, "example.com", QType::A).unwrap();
        let framed = tcp_frame(&q);
        assert_eq!(framed.len(), q.len() + 2);
        assert_eq!(tcp_frame_len([framed[0], framed[1]]), q.len());
        assert_eq!(&framed[2..], &q[..]);
        assert_eq!(tcp_frame_len([0x01, 0x02]), 258);
        assert_eq!(tcp_frame(&[]), vec![0, 0]);
    }

    // --- /etc/hosts --------------------------------------------------------------------------

    const HOSTS: &str = "\
# The following lines are desirable for IPv4 capable hosts
127.0.0.1       localhost
127.0.1.1\tMyBox.example.org   mybox   # this host
::1             localhost ip6-localhost ip6-loopback
fe00::0         ip6-localnet
fe80::1%lo0     linklocal
   10.0.0.5 db.internal. DB
not-an-ip  junk
10.0.0.300 bad
192.168.1.1
\t
10.0.0.6 db.internal
10.0.0.5 db.internal
";

    #[test]
    fn hosts_file_parses() {
        let entries = parse_hosts(HOSTS);
        assert_eq!(entries[0], ("localhost".to_owned(), v4(127, 0, 0, 1)));
        assert_eq!(
            entries[1],
            ("mybox.example.org".to_owned(), v4(127, 0, 1, 1))
        );
        assert_eq!(entries[2], ("mybox".to_owned(), v4(127, 0, 1, 1)));
        assert!(entries
            .iter()
            .all(|(n, _)| n != "this" && n != "host" && n != "#"));
        assert!(entries
            .iter()
            .all(|(n, _)| n != "junk" && n != "bad" && n != "linklocal"));
        assert!(
            entries.iter().any(|(n, _)| n == "db"),
            "aliases are lowercased"
        );
        assert_eq!(entries.len(), 11);
    }

    #[test]
    fn hosts_lookup() {
        let entries = parse_hosts(HOSTS);
        let v6_loopback = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(
            lookup_hosts(&entries, "localhost"),
            vec![v4(127, 0, 0, 1), v6_loopback]
        );
        assert_eq!(
            lookup_hosts(&entries, "LOCALHOST."),
            vec![v4(127, 0, 0, 1), v6_loopback]
        );
        assert_eq!(lookup_hosts(&entries, "ip6-loopback"), vec![v6_loopback]);
        assert_eq!(lookup_hosts(&entries, "mybox"), vec![v4(127, 0, 1, 1)]);
        assert_eq!(
            lookup_hosts(&entries, "db.internal"),
            vec![v4(10, 0, 0, 5), v4(10, 0, 0, 6)],
            "file order, duplicates removed"
        );
        assert!(lookup_hosts(&entries, "nothere").is_empty());
        assert!(lookup_hosts(&entries, "").is_empty());
    }

    // --- /etc/resolv.conf --------------------------------------------------------------------

    #[test]
    fn resolv_conf_defaults() {
        let c = parse_resolv_conf("");
        assert_eq!(c, ResolvConf::default());
        assert_eq!(
            c.nameservers,
            vec!["127.0.0.1:53".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            (c.ndots, c.timeout, c.attempts),
            (1, Duration::from_secs(5), 2)
        );
        assert!(c.search.is_empty());
    }

    #[test]
    fn resolv_conf_parses() {
        let text = "\
# generated by NetworkManager
; another comment style
nameserver 10.0.0.1
nameserver 2001:db8::53   # v6
nameserver fe80::1%2
nameserver 10.0.0.4
domain ignored.example
search corp.example. eng.corp.example
options ndots:2 timeout:3 attempts:4 rotate edns0 ndots:x
nameserver not-an-ip
bogus line
";
        let c = parse_resolv_conf(text);
        assert_eq!(
            c.nameservers,
            vec![
                "10.0.0.1:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
                SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 2)),
            ],
            "at most three, as glibc"
        );
        assert_eq!(c.search, vec!["corp.example", "eng.corp.example"]);
        assert_eq!(c.ndots, 2);
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(c.attempts, 4);
    }

    #[test]
    fn resolv_conf_last_search_or_domain_wins_and_limits_apply() {
        let c = parse_resolv_conf("search a.example b.example\ndomain only.example\n");
        assert_eq!(c.search, vec!["only.example"]);
        let c = parse_resolv_conf("options ndots:99 timeout:0 attempts:100\n");
        assert_eq!(
            (c.ndots, c.timeout, c.attempts),
            (15, Duration::from_secs(1), 5)
        );
        let c = parse_resolv_conf("nameserver fe80::1%eth0\nnameserver ::1\n");
        assert_eq!(
            c.nameservers,
            vec!["[::1]:53".parse::<SocketAddr>().unwrap()]
        );
        let c = parse_resolv_conf("options ndots:0\n");
        assert_eq!(c.ndots, 0);
    }

    #[test]
    fn candidates_follow_glibc_rules() {
        let mut c = parse_resolv_conf("search corp.example lab.example\n");
        // Absolute: only the name.
        assert_eq!(c.candidates("host.corp."), vec!["host.corp"]);
        assert_eq!(c.candidates("localhost."), vec!["localhost"]);
        // Fewer dots than ndots (1): search list first, then as given.
        assert_eq!(
            c.candidates("db"),
            vec!["db.corp.example", "db.lab.example", "db"]
        );
        // Enough dots: as given first.
        assert_eq!(
            c.candidates("db.eu"),
            vec!["db.eu", "db.eu.corp.example", "db.eu.lab.example"]
        );
        c.ndots = 3;
        assert_eq!(
            c.candidates("a.b.c"),
            vec!["a.b.c.corp.example", "a.b.c.lab.example", "a.b.c"]
        );
        c.ndots = 0;
        assert_eq!(c.candidates("db")[0], "db");
        // No search list: the name alone.
        assert_eq!(ResolvConf::default().candidates("db"), vec!["db"]);
        assert!(c.candidates("").is_empty());
        assert!(c.candidates(".").is_empty());
        // Too-long candidates are skipped.
        let long = vec!["a".repeat(60); 4].join(".");
        assert_eq!(c.candidates(&long), vec![long.clone()]);
    }
}
