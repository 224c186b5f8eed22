//! Who sent an HTTP/1.1 request: the pure, I/O-free reading of request heads that a mesh attributed by header
//! (see `mesh`) uses to tell which node opened a connection. etcd's peer transport (rafthttp) names its member
//! on every raft request with `X-Server-From: <member id in hex>`: streams (`GET /raft/stream/...`), pipeline
//! messages (`POST /raft`) and snapshots (`POST /raft/snapshot`). Its RTT probes (`GET /raft/probing`) and the
//! server's `/version`, `/members` and `/leases` calls name no sender, and may share a kept-alive connection with
//! raft requests, so a connection is followed request by request until one names its sender:
//! [`RequestScanner`] walks a connection's request bytes (heads, `Content-Length` and chunked bodies) and says
//! which bytes may go on and where the first head that names a sender ends.
//!
//! Everything read is bounded: a head by [`HEAD_BYTES_MAX`] and [`HEADER_LINES_MAX`], a chunk-size or trailer
//! line by [`CHUNK_LINE_BYTES_MAX`], a method by [`METHOD_BYTES_MAX`]. Input that is not an HTTP/1.x request
//! the scanner can follow is an error, never a guess: the connection cannot be attributed, so the caller
//! closes it.

use std::fmt;
use std::str::FromStr;

/// The request header in which etcd's rafthttp names the member that sends the request.
pub const SENDER_HEADER: &str = "X-Server-From";

/// Longest request head (request line, header lines and the blank line) the scanner reads; etcd's peer heads
/// are under 1 KiB.
pub const HEAD_BYTES_MAX: usize = 16 * 1024;

/// Most header lines one request head may have.
pub const HEADER_LINES_MAX: usize = 64;

/// Longest chunk-size line or trailer line of a chunked body, line end included.
pub const CHUNK_LINE_BYTES_MAX: usize = 1024;

/// Longest request method (`OPTIONS` and `CONNECT` have 7 letters).
pub const METHOD_BYTES_MAX: usize = 16;

/// Most hex digits of a member id (a u64) or of a chunk size.
const HEX_DIGITS_MAX: usize = 16;

const LINE_END: &[u8] = b"\r\n";
const HEAD_END: &[u8] = b"\r\n\r\n";

/// An etcd member id: a u64 that etcd writes as lowercase hex without leading zeros (`8e9e05c52164694d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId(pub u64);

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl FromStr for MemberId {
    type Err = SniffError;

    /// Reads 1 to 16 hex digits, either case (`etcdctl member list --hex` and `X-Server-From` both write them).
    fn from_str(text: &str) -> Result<MemberId, SniffError> {
        let invalid = || SniffError::InvalidMemberId(text.to_string());
        if text.is_empty()
            || text.len() > HEX_DIGITS_MAX
            || !text.bytes().all(|byte| byte.is_ascii_hexdigit())
        {
            return Err(invalid());
        }
        u64::from_str_radix(text, 16)
            .map(MemberId)
            .map_err(|_| invalid())
    }
}

/// Why bytes cannot be read as HTTP/1.x requests whose senders can be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SniffError {
    #[error("request head longer than {HEAD_BYTES_MAX} bytes")]
    HeadTooLong,
    #[error("more than {HEADER_LINES_MAX} header lines")]
    TooManyHeaders,
    #[error("malformed request line {0:?} (expected METHOD TARGET HTTP/1.x)")]
    RequestLine(String),
    #[error("malformed header line {0:?}")]
    HeaderLine(String),
    #[error(
        "invalid member id {0:?}: expected 1 to {HEX_DIGITS_MAX} hex digits, e.g. 8e9e05c52164694d"
    )]
    InvalidMemberId(String),
    #[error("two different {SENDER_HEADER} headers in one request")]
    TwoSenders,
    #[error("invalid or repeated Content-Length {0:?}")]
    ContentLength(String),
    #[error("unsupported Transfer-Encoding {0:?} (only chunked is followed)")]
    TransferEncoding(String),
    #[error("both Content-Length and Transfer-Encoding: the body length is ambiguous")]
    AmbiguousLength,
    #[error("malformed chunk line {0:?}")]
    ChunkLine(String),
    #[error("chunk line longer than {CHUNK_LINE_BYTES_MAX} bytes")]
    ChunkLineTooLong,
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
}

/// How the body after a request head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body: neither `Content-Length` nor `Transfer-Encoding`.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A complete request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head, up to and including the blank line.
    pub len: usize,
    pub method: String,
    pub target: String,
    /// The member named by `X-Server-From`, if the request names one.
    pub sender: Option<MemberId>,
    pub body: Body,
}

/// Reads the request head at the start of `bytes`: `Ok(None)` while it is incomplete (more bytes may complete
/// it), the head once its blank line is there, an error as soon as the bytes cannot be the start of a request
/// head this module reads.
pub fn parse_head(bytes: &[u8]) -> Result<Option<RequestHead>, SniffError> {
    let Some(end) = find(bytes, HEAD_END) else {
        check_partial_head(bytes)?;
        return Ok(None);
    };
    let len = end + HEAD_END.len();
    if len > HEAD_BYTES_MAX {
        return Err(SniffError::HeadTooLong);
    }
    let mut lines = crlf_lines(&bytes[..end]);
    let request_line = lines.next().unwrap_or_default();
    let (method, target) = parse_request_line(request_line)?;
    let mut sender = None;
    let mut content_length = None;
    let mut chunked = false;
    for (count, line) in lines.enumerate() {
        if count >= HEADER_LINES_MAX {
            return Err(SniffError::TooManyHeaders);
        }
        let (name, value) = parse_header_line(line)?;
        if name.eq_ignore_ascii_case(SENDER_HEADER) {
            let member: MemberId = value.parse()?;
            if sender.is_some_and(|earlier| earlier != member) {
                return Err(SniffError::TwoSenders);
            }
            sender = Some(member);
        } else if name.eq_ignore_ascii_case("Content-Length") {
            let length = parse_content_length(value)?;
            if content_length.is_some() {
                return Err(SniffError::ContentLength(value.to_string()));
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("Transfer-Encoding") {
            if !value.eq_ignore_ascii_case("chunked") || chunked {
                return Err(SniffError::TransferEncoding(value.to_string()));
            }
            chunked = true;
        }
    }
    let body = match (content_length, chunked) {
        (Some(_), true) => return Err(SniffError::AmbiguousLength),
        (Some(length), false) => Body::Length(length),
        (None, true) => Body::Chunked,
        (None, false) => Body::Empty,
    };
    Ok(Some(RequestHead {
        len,
        method,
        target,
        sender,
        body,
    }))
}

/// Rejects an incomplete head early when it is already too long, or when its start cannot be a request line
/// (a TLS handshake, an HTTP/2 preface, a bare LF), so the caller does not wait for a blank line that will
/// never come.
fn check_partial_head(bytes: &[u8]) -> Result<(), SniffError> {
    if bytes.len() >= HEAD_BYTES_MAX {
        return Err(SniffError::HeadTooLong);
    }
    let first_line_end = find(bytes, LINE_END);
    let request_line = &bytes[..first_line_end.unwrap_or(bytes.len())];
    let method_end = request_line
        .iter()
        .position(|&byte| byte == b' ')
        .unwrap_or(request_line.len());
    let method = &request_line[..method_end];
    let method_ok = method.len() <= METHOD_BYTES_MAX && method.iter().all(u8::is_ascii_uppercase);
    let bare_line_feed = bytes[..first_line_end.unwrap_or(bytes.len())].contains(&b'\n');
    if !method_ok || bare_line_feed {
        return Err(SniffError::RequestLine(lossy(request_line)));
    }
    if first_line_end.is_some() {
        parse_request_line(request_line)?;
    }
    Ok(())
}

/// `METHOD SP TARGET SP HTTP/1.x`: returns the method and the target.
fn parse_request_line(line: &[u8]) -> Result<(String, String), SniffError> {
    let invalid = || SniffError::RequestLine(lossy(line));
    let text = std::str::from_utf8(line).map_err(|_| invalid())?;
    let mut parts = text.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    let method_ok = !method.is_empty()
        && method.len() <= METHOD_BYTES_MAX
        && method.bytes().all(|byte| byte.is_ascii_uppercase());
    let target_ok = !target.is_empty() && target.bytes().all(|byte| byte.is_ascii_graphic());
    if !method_ok || !target_ok || !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(invalid());
    }
    Ok((method.to_string(), target.to_string()))
}

/// The lines of `bytes`, split at each CRLF (a bare CR or LF stays inside its line).
fn crlf_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(bytes);
    std::iter::from_fn(move || {
        let current = rest?;
        match find(current, LINE_END) {
            Some(end) => {
                rest = Some(&current[end + LINE_END.len()..]);
                Some(&current[..end])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// `Name: value` with a token name and optional whitespace around the value. Obsolete line folding (a line
/// that starts with whitespace), control characters and a bare CR or LF are errors.
fn parse_header_line(line: &[u8]) -> Result<(&str, &str), SniffError> {
    let invalid = || SniffError::HeaderLine(lossy(line));
    let colon = line
        .iter()
        .position(|&byte| byte == b':')
        .ok_or_else(invalid)?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&byte| is_token(byte)) {
        return Err(invalid());
    }
    if value
        .iter()
        .any(|&byte| byte.is_ascii_control() && byte != b'\t')
    {
        return Err(invalid());
    }
    // Names are ASCII tokens; a value may carry obs-text (bytes >= 0x80), which this module never needs to read.
    let name = std::str::from_utf8(name).map_err(|_| invalid())?;
    let value = std::str::from_utf8(value)
        .unwrap_or_default()
        .trim_matches([' ', '\t']);
    Ok((name, value))
}

fn parse_content_length(value: &str) -> Result<u64, SniffError> {
    let invalid = || SniffError::ContentLength(value.to_string());
    if value.is_empty() || !value.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid());
    }
    value.parse().map_err(|_| invalid())
}

/// RFC 9110 token characters.
fn is_token(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// At most the first 80 bytes, as text, for an error message.
fn lossy(bytes: &[u8]) -> String {
    const SHOWN_BYTES_MAX: usize = 80;
    String::from_utf8_lossy(&bytes[..bytes.len().min(SHOWN_BYTES_MAX)]).into_owned()
}

/// What the scanner says about the bytes it was shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The first this-many bytes belong to a head that names no sender or to a body: they may go on. Call
    /// again with the bytes after them.
    Forward(usize),
    /// The bytes start with a complete head, `head_len` bytes long, that names `sender`.
    Sender { head_len: usize, sender: MemberId },
    /// The bytes are the start of something (a head, a chunk line) that is not complete yet: call again with
    /// the same bytes and more.
    NeedMore,
}

/// Where the scanner is in the request stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// At the start of a request head.
    Head,
    /// Inside a body of known length, with this many bytes to go.
    Body { remaining: u64 },
    /// At a chunk-size line.
    ChunkSize,
    /// Inside a chunk's data, with this many bytes to go.
    ChunkData { remaining: u64 },
    /// At the CRLF after a chunk's data.
    ChunkDataEnd,
    /// At a trailer line, or the blank line that ends a chunked body.
    Trailer,
}

/// Follows the request direction of one connection from its first byte, one request after another, so that
/// a head can be told from body bytes that look like one.
#[derive(Debug, Clone)]
pub struct RequestScanner {
    position: Position,
}

impl Default for RequestScanner {
    fn default() -> Self {
        RequestScanner::new()
    }
}

impl RequestScanner {
    /// A scanner at the start of a connection.
    pub fn new() -> RequestScanner {
        RequestScanner {
            position: Position::Head,
        }
    }

    /// Looks at the bytes that follow everything earlier calls settled. `Forward(n)` has always `n > 0`.
    pub fn step(&mut self, bytes: &[u8]) -> Result<Step, SniffError> {
        if bytes.is_empty() {
            return Ok(Step::NeedMore);
        }
        match self.position {
            Position::Head => {
                let Some(head) = parse_head(bytes)? else {
                    return Ok(Step::NeedMore);
                };
                self.position = match head.body {
                    Body::Empty | Body::Length(0) => Position::Head,
                    Body::Length(remaining) => Position::Body { remaining },
                    Body::Chunked => Position::ChunkSize,
                };
                Ok(match head.sender {
                    Some(sender) => Step::Sender {
                        head_len: head.len,
                        sender,
                    },
                    None => Step::Forward(head.len),
                })
            }
            Position::Body { remaining } => {
                let taken = take(remaining, bytes.len());
                self.position = match remaining - taken as u64 {
                    0 => Position::Head,
                    remaining => Position::Body { remaining },
                };
                Ok(Step::Forward(taken))
            }
            Position::ChunkSize => {
                let Some((line, len)) = chunk_line(bytes)? else {
                    return Ok(Step::NeedMore);
                };
                self.position = match parse_chunk_size(line)? {
                    0 => Position::Trailer,
                    remaining => Position::ChunkData { remaining },
                };
                Ok(Step::Forward(len))
            }
            Position::ChunkData { remaining } => {
                let taken = take(remaining, bytes.len());
                self.position = match remaining - taken as u64 {
                    0 => Position::ChunkDataEnd,
                    remaining => Position::ChunkData { remaining },
                };
                Ok(Step::Forward(taken))
            }
            Position::ChunkDataEnd => {
                if bytes.len() < LINE_END.len() {
                    return if LINE_END.starts_with(bytes) {
                        Ok(Step::NeedMore)
                    } else {
                        Err(SniffError::ChunkEnd)
                    };
                }
                if !bytes.starts_with(LINE_END) {
                    return Err(SniffError::ChunkEnd);
                }
                self.position = Position::ChunkSize;
                Ok(Step::Forward(LINE_END.len()))
            }
            Position::Trailer => {
                let Some((line, len)) = chunk_line(bytes)? else {
                    return Ok(Step::NeedMore);
                };
                if line.is_empty() {
                    self.position = Position::Head;
                } else {
                    parse_header_line(line)?;
                }
                Ok(Step::Forward(len))
            }
        }
    }
}

/// How many of `available` bytes a body part with `remaining` bytes to go takes.
fn take(remaining: u64, available: usize) -> usize {
    usize::try_from(remaining).map_or(available, |remaining| remaining.min(available))
}

/// The CRLF-ended line at the start of `bytes` (without its CRLF) and its length with it, or `None` while
/// it is incomplete.
fn chunk_line(bytes: &[u8]) -> Result<Option<(&[u8], usize)>, SniffError> {
    let window = &bytes[..bytes.len().min(CHUNK_LINE_BYTES_MAX)];
    match find(window, LINE_END) {
        Some(end) => Ok(Some((&bytes[..end], end + LINE_END.len()))),
        None if bytes.len() >= CHUNK_LINE_BYTES_MAX => Err(SniffError::ChunkLineTooLong),
        None => Ok(None),
    }
}

/// `HEX[;extensions]`: the chunk's size.
fn parse_chunk_size(line: &[u8]) -> Result<u64, SniffError> {
    let invalid = || SniffError::ChunkLine(lossy(line));
    let size_end = line
        .iter()
        .position(|&byte| byte == b';')
        .unwrap_or(line.len());
    let size = std::str::from_utf8(&line[..size_end])
        .map_err(|_| invalid())?
        .trim_end_matches([' ', '\t']);
    if size.is_empty()
        || size.len() > HEX_DIGITS_MAX
        || !size.bytes().all(|byte| byte.is_ascii_hexdigit())
    {
        return Err(invalid());
    }
    u64::from_str_radix(size, 16).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What etcd 3.4's stream reader sends (headers as Go's net/http writes them).
    const STREAM_HEAD: &[u8] = b"GET /raft/stream/msgappv2/8e9e05c52164694d HTTP/1.1\r\n\
        Host: 127.0.0.1:6651\r\n\
        User-Agent: Go-http-client/1.1\r\n\
        X-Etcd-Cluster-Id: cdf818194e3a8c32\r\n\
        X-Min-Cluster-Version: 3.0.0\r\n\
        X-Peerurls: http://127.0.0.1:6651\r\n\
        X-Raft-To: 91bc3c398fb3c146\r\n\
        X-Server-From: 8e9e05c52164694d\r\n\
        X-Server-Version: 3.4.23\r\n\
        Accept-Encoding: gzip\r\n\r\n";

    /// An RTT probe: no sender.
    const PROBE_HEAD: &[u8] = b"GET /raft/probing HTTP/1.1\r\nHost: 127.0.0.1:6652\r\n\
        User-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n\r\n";

    const SENDER: MemberId = MemberId(0x8e9e_05c5_2164_694d);

    fn pipeline_post(body: &[u8]) -> Vec<u8> {
        let mut request = format!(
            "POST /raft HTTP/1.1\r\nHost: 127.0.0.1:6652\r\nContent-Length: {}\r\n\
             Content-Type: application/protobuf\r\nX-Server-From: 8e9e05c52164694d\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        request
    }

    #[test]
    fn member_ids_read_hex_and_write_it_back_as_etcd_does() {
        let id: MemberId = "8e9e05c52164694d".parse().unwrap();
        assert_eq!(id, SENDER);
        assert_eq!(id.to_string(), "8e9e05c52164694d");
        assert_eq!("8E9E05C52164694D".parse::<MemberId>().unwrap(), SENDER);
        assert_eq!("0a".parse::<MemberId>().unwrap().to_string(), "a");
        for bad in ["", "xyz", "8e9e05c52164694d0", "-1", " 1", "1 ", "0x1a"] {
            assert!(
                matches!(bad.parse::<MemberId>(), Err(SniffError::InvalidMemberId(_))),
                "{bad:?} parsed"
            );
        }
    }

    #[test]
    fn etcd_stream_head_names_its_sender() {
        let head = parse_head(STREAM_HEAD).unwrap().unwrap();
        assert_eq!(head.len, STREAM_HEAD.len());
        assert_eq!(head.method, "GET");
        assert_eq!(head.target, "/raft/stream/msgappv2/8e9e05c52164694d");
        assert_eq!(head.sender, Some(SENDER));
        assert_eq!(head.body, Body::Empty);
    }

    #[test]
    fn probe_head_names_no_sender() {
        let head = parse_head(PROBE_HEAD).unwrap().unwrap();
        assert_eq!(head.sender, None);
        assert_eq!(head.len, PROBE_HEAD.len());
    }

    #[test]
    fn a_head_is_incomplete_until_its_blank_line_at_every_split() {
        for cut in 0..STREAM_HEAD.len() {
            assert_eq!(
                parse_head(&STREAM_HEAD[..cut]),
                Ok(None),
                "prefix of {cut} bytes"
            );
        }
    }

    #[test]
    fn header_names_are_case_insensitive_and_values_trimmed() {
        let head =
            parse_head(b"POST /raft HTTP/1.0\r\nx-server-from:\t 1a \r\ncontent-length: 0\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(head.sender, Some(MemberId(0x1a)));
        assert_eq!(head.body, Body::Length(0));
        // The same sender twice is harmless.
        let twice = b"GET / HTTP/1.1\r\nX-Server-From: 1a\r\nX-Server-From: 1A\r\n\r\n";
        assert_eq!(
            parse_head(twice).unwrap().unwrap().sender,
            Some(MemberId(0x1a))
        );
    }

    #[test]
    fn malformed_heads_are_errors_not_guesses() {
        let cases: &[(&[u8], &str)] = &[
            (b"GET /raft\r\n\r\n", "malformed request line"),
            (b"GET /raft HTTP/2.0\r\n\r\n", "malformed request line"),
            (
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                "malformed request line",
            ),
            (b"get / HTTP/1.1\r\n\r\n", "malformed request line"),
            (b"GET  / HTTP/1.1\r\n\r\n", "malformed request line"),
            (b"GET / HTTP/1.1 extra\r\n\r\n", "malformed request line"),
            (b"GET /\xff HTTP/1.1\r\n\r\n", "malformed request line"),
            (
                b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
                "malformed header line",
            ),
            (
                b"GET / HTTP/1.1\r\n: empty name\r\n\r\n",
                "malformed header line",
            ),
            (
                b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
                "malformed header line",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
                "malformed header line",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
                "malformed header line",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
                "malformed header line",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
                "malformed header line",
            ),
            (
                b"GET / HTTP/1.1\r\nX-Server-From: \r\n\r\n",
                "invalid member id",
            ),
            (
                b"GET / HTTP/1.1\r\nX-Server-From: node1\r\n\r\n",
                "invalid member id",
            ),
            (
                b"GET / HTTP/1.1\r\nX-Server-From: 1234567890abcdef0\r\n\r\n",
                "invalid member id",
            ),
            (
                b"GET / HTTP/1.1\r\nX-Server-From: 1\r\nX-Server-From: 2\r\n\r\n",
                "two different",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                "Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n",
                "Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                "Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                "Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                "Transfer-Encoding",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                "ambiguous",
            ),
        ];
        for (bytes, reason) in cases {
            let error = parse_head(bytes).unwrap_err().to_string();
            assert!(
                error.contains(reason),
                "{:?}: {error}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn incomplete_input_that_cannot_become_a_request_fails_at_once() {
        // A TLS ClientHello, a lowercase method, an over-long method, a bare LF, a bad request line already
        // complete: no blank line needed to know.
        for bytes in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
            b"get /raft",
            b"ABCDEFGHIJKLMNOPQRSTU",
            b"GET /raft HTTP/1.1\nHost: x",
            b"GET /raft SPDY/3\r\nHost",
        ] {
            assert!(
                matches!(parse_head(bytes), Err(SniffError::RequestLine(_))),
                "{:?} was accepted",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn heads_are_bounded_in_bytes_and_lines() {
        let mut long = b"GET / HTTP/1.1\r\nX-Padding: ".to_vec();
        long.resize(HEAD_BYTES_MAX, b'a');
        assert_eq!(parse_head(&long), Err(SniffError::HeadTooLong));
        long.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_head(&long), Err(SniffError::HeadTooLong));

        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for line in 0..=HEADER_LINES_MAX {
            many.extend_from_slice(format!("X-Line-{line}: x\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_head(&many), Err(SniffError::TooManyHeaders));
    }

    /// Feeds `stream` to a scanner as a proxy would, `chunk` bytes per read, and returns what it decided: the
    /// bytes forwarded before a sender was found, and the sender with its head's length.
    fn scan(stream: &[u8], chunk: usize) -> Result<(usize, Option<(usize, MemberId)>), SniffError> {
        let mut scanner = RequestScanner::new();
        let mut forwarded = 0;
        let mut available = 0;
        while available < stream.len() {
            available = (available + chunk).min(stream.len());
            loop {
                match scanner.step(&stream[forwarded..available])? {
                    Step::Forward(len) => {
                        assert!(len > 0);
                        forwarded += len;
                    }
                    Step::Sender { head_len, sender } => {
                        return Ok((forwarded, Some((head_len, sender))))
                    }
                    Step::NeedMore => break,
                }
            }
        }
        Ok((forwarded, None))
    }

    #[test]
    fn scanner_skips_sender_less_requests_and_stops_at_the_first_sender() {
        // A probe, a /leases POST whose body looks like a head with a sender, a chunked POST whose data does
        // too, then a pipeline POST: the sender is found at the pipeline's head, at every read size.
        let fake = b"GET / HTTP/1.1\r\nX-Server-From: 1\r\n\r\n";
        let mut stream = PROBE_HEAD.to_vec();
        stream.extend_from_slice(
            format!(
                "POST /leases HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                fake.len()
            )
            .as_bytes(),
        );
        stream.extend_from_slice(fake);
        stream.extend_from_slice(b"POST /upload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        stream.extend_from_slice(format!("{:x};name=value\r\n", fake.len()).as_bytes());
        stream.extend_from_slice(fake);
        stream.extend_from_slice(b"\r\n3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n");
        let before = stream.len();
        let pipeline = pipeline_post(b"raft message bytes");
        stream.extend_from_slice(&pipeline);

        for chunk in 1..=stream.len() {
            let (forwarded, found) = scan(&stream, chunk).unwrap();
            assert_eq!(forwarded, before, "read size {chunk}");
            assert_eq!(
                found,
                Some((pipeline.len() - 18, SENDER)),
                "read size {chunk}"
            );
        }
    }

    #[test]
    fn scanner_waits_for_more_inside_a_head_or_a_chunk_line() {
        let mut scanner = RequestScanner::new();
        assert_eq!(scanner.step(b""), Ok(Step::NeedMore));
        assert_eq!(
            scanner.step(b"POST /x HTTP/1.1\r\nTransfer-"),
            Ok(Step::NeedMore)
        );
        let head = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scanner.step(head), Ok(Step::Forward(head.len())));
        assert_eq!(scanner.step(b"1"), Ok(Step::NeedMore));
        assert_eq!(scanner.step(b"1\r\n"), Ok(Step::Forward(3)));
        assert_eq!(scanner.step(b"z"), Ok(Step::Forward(1)));
        assert_eq!(scanner.step(b"\r"), Ok(Step::NeedMore));
        assert_eq!(scanner.step(b"\r\n"), Ok(Step::Forward(2)));
        assert_eq!(scanner.step(b"0\r\n\r\n"), Ok(Step::Forward(3)));
        assert_eq!(scanner.step(b"\r\n"), Ok(Step::Forward(2)));
        assert_eq!(
            scanner.step(STREAM_HEAD).unwrap(),
            Step::Sender {
                head_len: STREAM_HEAD.len(),
                sender: SENDER
            }
        );
    }

    #[test]
    fn scanner_rejects_malformed_bodies() {
        let chunked = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let cases: &[(&[u8], SniffError)] = &[
            (b"zz\r\n", SniffError::ChunkLine("zz".to_string())),
            (b"\r\n", SniffError::ChunkLine(String::new())),
            (
                b"11111111111111111\r\n",
                SniffError::ChunkLine("11111111111111111".to_string()),
            ),
            (b"1\r\nab", SniffError::ChunkEnd),
            (
                b"0\r\nbad trailer\r\n",
                SniffError::HeaderLine("bad trailer".to_string()),
            ),
        ];
        for (body, expected) in cases {
            let mut stream = chunked.to_vec();
            stream.extend_from_slice(body);
            assert_eq!(scan(&stream, stream.len()).unwrap_err(), *expected);
        }
        let mut endless = chunked.to_vec();
        endless.resize(chunked.len() + CHUNK_LINE_BYTES_MAX, b'1');
        assert_eq!(
            scan(&endless, endless.len()).unwrap_err(),
            SniffError::ChunkLineTooLong
        );
        // Garbage where the next head should start.
        let mut stream = PROBE_HEAD.to_vec();
        stream.extend_from_slice(b"\x00\x01garbage");
        assert!(matches!(
            scan(&stream, stream.len()),
            Err(SniffError::RequestLine(_))
        ));
    }

    #[test]
    fn large_bodies_are_skipped_whatever_their_length() {
        let mut scanner = RequestScanner::new();
        let head = format!(
            "POST /raft/snapshot HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            u64::MAX
        );
        assert_eq!(scanner.step(head.as_bytes()), Ok(Step::Forward(head.len())));
        let data = [b'x'; 1000];
        for _ in 0..3 {
            assert_eq!(scanner.step(&data), Ok(Step::Forward(data.len())));
        }
    }
}
