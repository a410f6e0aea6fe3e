//! The version handshake and the mux label: pure parsers and encoders plus
//! the two async drivers that run them on a fresh connection.
//!
//! ```
//! use waypost_rpc::handshake::{ClientHello, Parsed};
//!
//! let hello = ClientHello { min_version: 1, max_version: 1, max_frame: 1 << 20, extensions: vec![] };
//! let bytes = hello.encode();
//! match ClientHello::parse(&bytes).unwrap() {
//!     Parsed::Complete(parsed, used) => {
//!         assert_eq!(parsed, hello);
//!         assert_eq!(used, bytes.len());
//!     }
//!     Parsed::Incomplete(_) => unreachable!(),
//! }
//! ```

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version this crate speaks.
pub const VERSION: u16 = 1;
/// First bytes a client sends.
pub const CLIENT_MAGIC: &[u8; 4] = b"WPRC";
/// First bytes a server sends.
pub const SERVER_MAGIC: &[u8; 4] = b"WPRS";
/// Longest extension list or rejection reason.
pub const MAX_TEXT: usize = 1024;
/// Longest mux label.
pub const MAX_LABEL: usize = 64;
/// The smallest frame payload limit a side may announce.
pub const MIN_FRAME: u32 = 16 * 1024;

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The bytes are not a waypost-rpc handshake.
    #[error("not a waypost-rpc peer: {0}")]
    Malformed(&'static str),
    /// The peer refused us and said why.
    #[error("rejected by the peer: {0}")]
    Rejected(String),
    /// We refused the peer (the reason was sent to it).
    #[error("refused the peer: {0}")]
    Refused(String),
    /// A step did not finish in time.
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
    /// The connection failed.
    #[error("handshake I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// The outcome of parsing a prefix of the input.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    /// A complete message and how many bytes it took.
    Complete(T, usize),
    /// At least this many bytes in all are needed.
    Incomplete(usize),
}

fn text(bytes: &[u8], what: &'static str) -> Result<String, HandshakeError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| HandshakeError::Malformed(what))
}

fn split_extensions(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

fn put_text(b: &mut BytesMut, s: &str) {
    let s = &s.as_bytes()[..s.len().min(MAX_TEXT)];
    b.put_u16(s.len() as u16);
    b.put_slice(s);
}

/// Reads a u16-length-prefixed text at `at`.
fn get_text(buf: &[u8], at: usize, what: &'static str) -> Result<Parsed<String>, HandshakeError> {
    if buf.len() < at + 2 {
        return Ok(Parsed::Incomplete(at + 2));
    }
    let len = u16::from_be_bytes([buf[at], buf[at + 1]]) as usize;
    if len > MAX_TEXT {
        return Err(HandshakeError::Malformed(
            "text field longer than 1024 bytes",
        ));
    }
    let end = at + 2 + len;
    if buf.len() < end {
        return Ok(Parsed::Incomplete(end));
    }
    Ok(Parsed::Complete(text(&buf[at + 2..end], what)?, end))
}

/// What a client announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// Lowest version it speaks.
    pub min_version: u16,
    /// Highest version it speaks.
    pub max_version: u16,
    /// The largest frame payload it is willing to receive.
    pub max_frame: u32,
    /// Extensions it supports.
    pub extensions: Vec<String>,
}

impl ClientHello {
    /// Its wire form.
    pub fn encode(&self) -> BytesMut {
        let mut b = BytesMut::with_capacity(16);
        b.put_slice(CLIENT_MAGIC);
        b.put_u16(self.min_version);
        b.put_u16(self.max_version);
        b.put_u32(self.max_frame);
        put_text(&mut b, &self.extensions.join(","));
        b
    }

    /// Parses a prefix of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Parsed<ClientHello>, HandshakeError> {
        let have = buf.len().min(4);
        if buf[..have] != CLIENT_MAGIC[..have] {
            return Err(HandshakeError::Malformed("bad client magic"));
        }
        if buf.len() < 12 {
            return Ok(Parsed::Incomplete(12));
        }
        let min_version = u16::from_be_bytes([buf[4], buf[5]]);
        let max_version = u16::from_be_bytes([buf[6], buf[7]]);
        let max_frame = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        if min_version > max_version {
            return Err(HandshakeError::Malformed("min_version above max_version"));
        }
        Ok(match get_text(buf, 12, "extensions not UTF-8")? {
            Parsed::Complete(ext, used) => Parsed::Complete(
                ClientHello {
                    min_version,
                    max_version,
                    max_frame,
                    extensions: split_extensions(&ext),
                },
                used,
            ),
            Parsed::Incomplete(n) => Parsed::Incomplete(n),
        })
    }
}

/// What a server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerHello {
    /// Accepted: the version and frame limit both sides use, and the
    /// extensions enabled.
    Accept {
        /// The version spoken from now on.
        version: u16,
        /// The largest frame payload either side sends.
        max_frame: u32,
        /// The extensions both support.
        extensions: Vec<String>,
    },
    /// Rejected, with a readable reason; the server closes after it.
    Reject(String),
}

impl ServerHello {
    /// Its wire form.
    pub fn encode(&self) -> BytesMut {
        let mut b = BytesMut::with_capacity(16);
        b.put_slice(SERVER_MAGIC);
        match self {
            ServerHello::Accept {
                version,
                max_frame,
                extensions,
            } => {
                b.put_u8(0);
                b.put_u16(*version);
                b.put_u32(*max_frame);
                put_text(&mut b, &extensions.join(","));
            }
            ServerHello::Reject(reason) => {
                b.put_u8(1);
                put_text(&mut b, reason);
            }
        }
        b
    }

    /// Parses a prefix of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Parsed<ServerHello>, HandshakeError> {
        let have = buf.len().min(4);
        if buf[..have] != SERVER_MAGIC[..have] {
            return Err(HandshakeError::Malformed("bad server magic"));
        }
        if buf.len() < 5 {
            return Ok(Parsed::Incomplete(5));
        }
        match buf[4] {
            0 => {
                if buf.len() < 11 {
                    return Ok(Parsed::Incomplete(11));
                }
                let version = u16::from_be_bytes([buf[5], buf[6]]);
                let max_frame = u32::from_be_bytes([buf[7], buf[8], buf[9], buf[10]]);
                Ok(match get_text(buf, 11, "extensions not UTF-8")? {
                    Parsed::Complete(ext, used) => Parsed::Complete(
                        ServerHello::Accept {
                            version,
                            max_frame,
                            extensions: split_extensions(&ext),
                        },
                        used,
                    ),
                    Parsed::Incomplete(n) => Parsed::Incomplete(n),
                })
            }
            1 => Ok(match get_text(buf, 5, "reason not UTF-8")? {
                Parsed::Complete(reason, used) => {
                    Parsed::Complete(ServerHello::Reject(reason), used)
                }
                Parsed::Incomplete(n) => Parsed::Incomplete(n),
            }),
            _ => Err(HandshakeError::Malformed("unknown server hello status")),
        }
    }
}

/// A mux label as sent by the client.
pub fn encode_label(label: &str) -> BytesMut {
    let mut b = BytesMut::with_capacity(1 + label.len());
    let l = &label.as_bytes()[..label.len().min(MAX_LABEL)];
    b.put_u8(l.len() as u8);
    b.put_slice(l);
    b
}

/// Parses a client's mux label.
pub fn parse_label(buf: &[u8]) -> Result<Parsed<String>, HandshakeError> {
    let Some(&len) = buf.first() else {
        return Ok(Parsed::Incomplete(1));
    };
    let len = len as usize;
    if len == 0 || len > MAX_LABEL {
        return Err(HandshakeError::Malformed(
            "label empty or longer than 64 bytes",
        ));
    }
    if buf.len() < 1 + len {
        return Ok(Parsed::Incomplete(1 + len));
    }
    Ok(Parsed::Complete(
        text(&buf[1..1 + len], "label not UTF-8")?,
        1 + len,
    ))
}

/// The server's answer to a label: `None` = accepted, else the reason.
pub fn encode_label_answer(rejection: Option<&str>) -> BytesMut {
    let mut b = BytesMut::with_capacity(3);
    match rejection {
        None => {
            b.put_u8(0);
            b.put_u16(0);
        }
        Some(reason) => {
            b.put_u8(1);
            put_text(&mut b, reason);
        }
    }
    b
}

/// Parses the server's answer to a label: `Ok(None)` = accepted.
pub fn parse_label_answer(buf: &[u8]) -> Result<Parsed<Option<String>>, HandshakeError> {
    let Some(&status) = buf.first() else {
        return Ok(Parsed::Incomplete(1));
    };
    if status > 1 {
        return Err(HandshakeError::Malformed("unknown label answer status"));
    }
    Ok(match get_text(buf, 1, "reason not UTF-8")? {
        Parsed::Complete(reason, used) => Parsed::Complete((status == 1).then_some(reason), used),
        Parsed::Incomplete(n) => Parsed::Incomplete(n),
    })
}

/// Reads exactly one message with `parse`, never past its end.
async fn read_message<T, R: AsyncRead + Unpin>(
    io: &mut R,
    parse: impl Fn(&[u8]) -> Result<Parsed<T>, HandshakeError>,
) -> Result<T, HandshakeError> {
    let mut buf = Vec::with_capacity(32);
    loop {
        match parse(&buf)? {
            Parsed::Complete(message, _) => return Ok(message),
            Parsed::Incomplete(want) => {
                let start = buf.len();
                buf.resize(want, 0);
                io.read_exact(&mut buf[start..]).await?;
            }
        }
    }
}

/// The versions, frame limit and extensions one side supports.
#[derive(Debug, Clone)]
pub struct HandshakeConfig {
    /// Lowest version spoken.
    pub min_version: u16,
    /// Highest version spoken.
    pub max_version: u16,
    /// Largest frame payload accepted.
    pub max_frame: u32,
    /// Extensions supported.
    pub extensions: Vec<String>,
    /// Bound on each side's whole handshake (hello and label).
    pub timeout: Duration,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        HandshakeConfig {
            min_version: VERSION,
            max_version: VERSION,
            max_frame: 1 << 20,
            extensions: Vec::new(),
            timeout: Duration::from_secs(10),
        }
    }
}

impl HandshakeConfig {
    /// Adds `extension` to those offered, once.
    pub fn offer(&mut self, extension: &str) {
        if !self.extensions.iter().any(|e| e == extension) {
            self.extensions.push(extension.to_owned());
        }
    }
}

/// What both sides agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreed {
    /// The version spoken.
    pub version: u16,
    /// The largest frame payload either side sends.
    pub max_frame: u32,
    /// Extensions both support.
    pub extensions: Vec<String>,
    /// The mux label.
    pub label: String,
}

impl Agreed {
    /// Whether both sides support `extension`.
    pub fn has(&self, extension: &str) -> bool {
        self.extensions.iter().any(|e| e == extension)
    }
}

/// Decides a client's hello against our configuration: pure.
pub fn decide(config: &HandshakeConfig, hello: &ClientHello) -> ServerHello {
    let low = config.min_version.max(hello.min_version);
    let high = config.max_version.min(hello.max_version);
    if low > high {
        return ServerHello::Reject(format!(
            "no common protocol version: client speaks {}..={}, server {}..={}",
            hello.min_version, hello.max_version, config.min_version, config.max_version
        ));
    }
    if hello.max_frame < MIN_FRAME {
        return ServerHello::Reject(format!(
            "client frame limit {} is below the minimum {MIN_FRAME}",
            hello.max_frame
        ));
    }
    ServerHello::Accept {
        version: high,
        max_frame: config.max_frame.min(hello.max_frame),
        extensions: hello
            .extensions
            .iter()
            .filter(|e| config.extensions.contains(e))
            .cloned()
            .collect(),
    }
}

/// Runs the client side: hello, then the label. Bounded by
/// `config.timeout`.
pub async fn client<IO: AsyncRead + AsyncWrite + Unpin>(
    io: &mut IO,
    config: &HandshakeConfig,
    label: &str,
) -> Result<Agreed, HandshakeError> {
    let run = async {
        let hello = ClientHello {
            min_version: config.min_version,
            max_version: config.max_version,
            max_frame: config.max_frame,
            extensions: config.extensions.clone(),
        };
        // Hello and label go out together: one round trip.
        let mut out = hello.encode();
        out.extend_from_slice(&encode_label(label));
        io.write_all(&out).await?;
        io.flush().await?;
        let (version, max_frame, extensions) = match read_message(io, ServerHello::parse).await? {
            ServerHello::Accept {
                version,
                max_frame,
                extensions,
            } => (version, max_frame, extensions),
            ServerHello::Reject(reason) => return Err(HandshakeError::Rejected(reason)),
        };
        if version < config.min_version || version > config.max_version {
            return Err(HandshakeError::Malformed(
                "server chose a version we did not offer",
            ));
        }
        if max_frame < MIN_FRAME || max_frame > config.max_frame {
            return Err(HandshakeError::Malformed(
                "server chose a frame limit outside the allowed range",
            ));
        }
        if let Some(reason) = read_message(io, parse_label_answer).await? {
            return Err(HandshakeError::Rejected(reason));
        }
        Ok(Agreed {
            version,
            max_frame,
            extensions,
            label: label.to_owned(),
        })
    };
    tokio::time::timeout(config.timeout, run)
        .await
        .map_err(|_| HandshakeError::Timeout(config.timeout))?
}

/// Runs the server side: reads the hello, answers, reads the label and
/// answers it with `accept_label`'s verdict (`None` = accepted). A refusal
/// is sent to the peer with its reason before returning. Bounded by
/// `config.timeout`.
pub async fn server<IO: AsyncRead + AsyncWrite + Unpin>(
    io: &mut IO,
    config: &HandshakeConfig,
    accept_label: impl Fn(&str) -> Option<String>,
) -> Result<Agreed, HandshakeError> {
    let run = async {
        let hello = match read_message(io, ClientHello::parse).await {
            Ok(hello) => hello,
            Err(HandshakeError::Malformed(what)) => {
                let answer = ServerHello::Reject(format!("not a waypost-rpc hello: {what}"));
                let _ = io.write_all(&answer.encode()).await;
                let _ = io.shutdown().await;
                return Err(HandshakeError::Malformed(what));
            }
            Err(e) => return Err(e),
        };
        let answer = decide(config, &hello);
        io.write_all(&answer.encode()).await?;
        let (version, max_frame, extensions) = match answer {
            ServerHello::Accept {
                version,
                max_frame,
                extensions,
            } => (version, max_frame, extensions),
            ServerHello::Reject(reason) => {
                io.flush().await?;
                let _ = io.shutdown().await;
                return Err(HandshakeError::Refused(reason));
            }
        };
        let label = read_message(io, parse_label).await?;
        let verdict = accept_label(&label);
        io.write_all(&encode_label_answer(verdict.as_deref()))
            .await?;
        io.flush().await?;
        if let Some(reason) = verdict {
            let _ = io.shutdown().await;
            return Err(HandshakeError::Refused(reason));
        }
        Ok(Agreed {
            version,
            max_frame,
            extensions,
            label,
        })
    };
    tokio::time::timeout(config.timeout, run)
        .await
        .map_err(|_| HandshakeError::Timeout(config.timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete<T>(p: Parsed<T>) -> (T, usize) {
        match p {
            Parsed::Complete(t, n) => (t, n),
            Parsed::Incomplete(n) => panic!("incomplete, wants {n}"),
        }
    }

    #[test]
    fn hellos_round_trip_and_need_every_byte() {
        let hello = ClientHello {
            min_version: 1,
            max_version: 3,
            max_frame: 1 << 20,
            extensions: vec!["crc32".into(), "zstd".into()],
        };
        let bytes = hello.encode();
        assert_eq!(
            complete(ClientHello::parse(&bytes).unwrap()),
            (hello, bytes.len())
        );
        for cut in 0..bytes.len() {
            assert!(matches!(
                ClientHello::parse(&bytes[..cut]).unwrap(),
                Parsed::Incomplete(n) if n > cut
            ));
        }
        for answer in [
            ServerHello::Accept {
                version: 1,
                max_frame: 65536,
                extensions: vec![],
            },
            ServerHello::Reject("no".into()),
        ] {
            let bytes = answer.encode();
            assert_eq!(complete(ServerHello::parse(&bytes).unwrap()).0, answer);
        }
    }

    #[test]
    fn garbage_is_malformed_at_the_first_byte() {
        assert!(ClientHello::parse(b"G").is_err());
        assert!(ClientHello::parse(b"GET / HTTP/1.1").is_err());
        assert!(ServerHello::parse(b"HTTP/1.1 400").is_err());
        let mut bad = ClientHello {
            min_version: 1,
            max_version: 1,
            max_frame: 1 << 20,
            extensions: vec![],
        }
        .encode();
        bad[12] = 0xff; // extension length 65,280
        assert!(ClientHello::parse(&bad).is_err());
    }

    #[test]
    fn decide_picks_the_highest_common_version() {
        let config = HandshakeConfig {
            min_version: 1,
            max_version: 2,
            max_frame: 1 << 20,
            extensions: vec!["crc32".into()],
            ..HandshakeConfig::default()
        };
        let hello = ClientHello {
            min_version: 1,
            max_version: 5,
            max_frame: 1 << 18,
            extensions: vec!["crc32".into(), "other".into()],
        };
        assert_eq!(
            decide(&config, &hello),
            ServerHello::Accept {
                version: 2,
                max_frame: 1 << 18,
                extensions: vec!["crc32".into()]
            }
        );
        let too_new = ClientHello {
            min_version: 3,
            max_version: 4,
            ..hello.clone()
        };
        match decide(&config, &too_new) {
            ServerHello::Reject(reason) => assert!(reason.contains("3..=4"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let tiny = ClientHello {
            max_frame: 10,
            ..hello
        };
        assert!(matches!(decide(&config, &tiny), ServerHello::Reject(_)));
    }

    #[test]
    fn labels_round_trip() {
        let bytes = encode_label("data");
        assert_eq!(complete(parse_label(&bytes).unwrap()), ("data".into(), 5));
        assert!(parse_label(&[0]).is_err());
        assert!(matches!(
            parse_label(&[4, b'd']).unwrap(),
            Parsed::Incomplete(5)
        ));
        let ok = encode_label_answer(None);
        assert_eq!(complete(parse_label_answer(&ok).unwrap()).0, None);
        let no = encode_label_answer(Some("unknown label \"x\""));
        assert_eq!(
            complete(parse_label_answer(&no).unwrap()).0.as_deref(),
            Some("unknown label \"x\"")
        );
    }
}
