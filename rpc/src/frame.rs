//! The data-connection frame codec: pure, no I/O.
//!
//! A frame is an 8-byte header — `u8 type`, `u8 flags`, `u16` reserved (0),
//! `u32` payload length, all big-endian — followed by the payload. The
//! decoder checks the length against the agreed maximum *before* it
//! reserves any memory for the payload, so a peer cannot make us allocate
//! more than one maximum-sized frame.
//!
//! ```
//! use bytes::BytesMut;
//! use waypost_rpc::frame::{Decoder, FrameType, encode_header};
//!
//! let mut wire = BytesMut::new();
//! wire.extend_from_slice(&encode_header(FrameType::Data, 0, 5));
//! wire.extend_from_slice(b"hello");
//! let mut decoder = Decoder::new(1024);
//! let frame = decoder.decode(&mut wire).unwrap().unwrap();
//! assert_eq!(frame.kind, FrameType::Data);
//! assert_eq!(&frame.payload[..], b"hello");
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Length of a frame header.
pub const HEADER_LEN: usize = 8;

/// Flag on [`FrameType::Request`] and [`FrameType::Response`]: a body
/// (DATA frames, then END or an error trailer) follows.
pub const FLAG_BODY: u8 = 0x01;

/// Flag on [`FrameType::Request`]: a metadata block follows the endpoint
/// (see [`RequestHead`]).
pub const FLAG_METADATA: u8 = 0x02;

/// The largest metadata block a request may carry.
pub const MAX_METADATA: usize = 8 * 1024;

/// Flag on [`FrameType::Error`]: more error frames follow.
pub const FLAG_MORE: u8 = 0x01;

/// Flag on [`FrameType::End`]: a CRC-32 of the body follows the byte count.
pub const FLAG_CHECKSUM: u8 = 0x01;

/// The longest error message a receiver accepts over all continuation
/// frames of one error trailer.
pub const MAX_ERROR_MESSAGE: usize = 64 * 1024;

/// Frame types (see `PROTOCOL.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// Client → server: starts an exchange (endpoint + request message).
    Request,
    /// Server → client: the handler accepted (response message).
    Response,
    /// Body bytes.
    Data,
    /// Clean end of a body: byte count and optional checksum.
    End,
    /// Error trailer: code + message, possibly over several frames.
    Error,
    /// The receiver of a body stops receiving it.
    Cancel,
    /// Keeps a write-idle direction alive.
    Heartbeat,
    /// The sender is closing the connection.
    Reset,
}

impl FrameType {
    /// The wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            FrameType::Request => 0x01,
            FrameType::Response => 0x02,
            FrameType::Data => 0x03,
            FrameType::End => 0x04,
            FrameType::Error => 0x05,
            FrameType::Cancel => 0x06,
            FrameType::Heartbeat => 0x07,
            FrameType::Reset => 0x08,
        }
    }

    /// Parses a wire value.
    pub fn from_u8(value: u8) -> Option<FrameType> {
        Some(match value {
            0x01 => FrameType::Request,
            0x02 => FrameType::Response,
            0x03 => FrameType::Data,
            0x04 => FrameType::End,
            0x05 => FrameType::Error,
            0x06 => FrameType::Cancel,
            0x07 => FrameType::Heartbeat,
            0x08 => FrameType::Reset,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Its type.
    pub kind: FrameType,
    /// Its flags.
    pub flags: u8,
    /// Its payload.
    pub payload: Bytes,
}

impl Frame {
    /// A frame without payload.
    pub fn empty(kind: FrameType) -> Frame {
        Frame {
            kind,
            flags: 0,
            payload: Bytes::new(),
        }
    }

    /// The header that goes in front of the payload on the wire.
    pub fn header(&self) -> [u8; HEADER_LEN] {
        // Payloads are bounded by the agreed maximum (a u32) when built.
        encode_header(self.kind, self.flags, self.payload.len() as u32)
    }
}

/// Why bytes are not a valid frame stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header announces more than the agreed maximum.
    #[error("frame of {len} bytes exceeds the agreed maximum of {max}")]
    TooLarge {
        /// Announced payload length.
        len: u32,
        /// Agreed maximum.
        max: u32,
    },
    /// An unknown frame type.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// A non-zero reserved field.
    #[error("reserved header bits set (0x{0:04x})")]
    Reserved(u16),
    /// A payload that does not parse for its type.
    #[error("malformed {kind:?} frame: {reason}")]
    Malformed {
        /// The frame type.
        kind: FrameType,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Encodes a frame header.
pub fn encode_header(kind: FrameType, flags: u8, len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = kind.to_u8();
    h[1] = flags;
    h[4..8].copy_from_slice(&len.to_be_bytes());
    h
}

/// Decodes frames from a byte buffer, one at a time.
#[derive(Debug, Clone)]
pub struct Decoder {
    max_payload: u32,
}

impl Decoder {
    /// A decoder that rejects payloads above `max_payload` bytes.
    pub fn new(max_payload: u32) -> Decoder {
        Decoder { max_payload }
    }

    /// The largest payload accepted.
    pub fn max_payload(&self) -> u32 {
        self.max_payload
    }

    /// How many bytes `buf` must hold before [`Decoder::decode`] can return
    /// the next frame (after checking its header), so the caller reads
    /// exactly as much as needed — and never reserves more than one
    /// maximum frame.
    pub fn wanted(&self, buf: &[u8]) -> Result<usize, FrameError> {
        if buf.len() < HEADER_LEN {
            return Ok(HEADER_LEN);
        }
        let header = self.check_header(buf)?;
        Ok(HEADER_LEN + header.2 as usize)
    }

    fn check_header(&self, buf: &[u8]) -> Result<(FrameType, u8, u32), FrameError> {
        let kind = FrameType::from_u8(buf[0]).ok_or(FrameError::UnknownType(buf[0]))?;
        let reserved = u16::from_be_bytes([buf[2], buf[3]]);
        if reserved != 0 {
            return Err(FrameError::Reserved(reserved));
        }
        let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        if len > self.max_payload {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_payload,
            });
        }
        Ok((kind, buf[1], len))
    }

    /// Takes the next complete frame off the front of `buf`, or `None` if
    /// more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let (kind, flags, len) = self.check_header(buf)?;
        let total = HEADER_LEN + len as usize;
        if buf.len() < total {
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        let payload = buf.split_to(len as usize).freeze();
        Ok(Some(Frame {
            kind,
            flags,
            payload,
        }))
    }
}

/// The payload of a [`FrameType::Request`] frame: `endpoint_len` (2)
/// and the endpoint; with [`FLAG_METADATA`], `metadata_len` (2, at most
/// [`MAX_METADATA`]) and the metadata entries, each `name_len` (1), a name
/// of lowercase letters, digits and `-_.`, `value_len` (2) and a value of
/// visible ASCII, spaces and tabs; then the request message (the rest).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestHead {
    /// Which handler endpoint.
    pub endpoint: String,
    /// Metadata for the handler (e.g. grpclb's `lb-token`), in order.
    pub metadata: Vec<(String, String)>,
    /// The request message (usually protobuf), opaque here.
    pub message: Bytes,
}

/// Longest endpoint name.
pub const MAX_ENDPOINT: usize = 1024;

/// Whether `name` may be a metadata name (as HTTP/2 header names: 1 to 255
/// lowercase letters, digits, `-`, `_`, `.`).
pub fn valid_metadata_name(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
}

/// Whether `value` may be a metadata value (visible ASCII, spaces, tabs).
pub fn valid_metadata_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b.is_ascii_graphic() || b == b' ' || b == b'\t')
}

impl RequestHead {
    /// The flags its frame needs besides [`FLAG_BODY`].
    pub fn flags(&self) -> u8 {
        if self.metadata.is_empty() {
            0
        } else {
            FLAG_METADATA
        }
    }

    /// Encodes it as a payload (with [`RequestHead::flags`] on its frame).
    /// The caller checks the endpoint and metadata limits first
    /// ([`RequestHead::check`]).
    pub fn encode(&self) -> Bytes {
        let metadata_len: usize = self
            .metadata
            .iter()
            .map(|(n, v)| 3 + n.len() + v.len())
            .sum();
        let mut b =
            BytesMut::with_capacity(4 + self.endpoint.len() + metadata_len + self.message.len());
        b.put_u16(self.endpoint.len() as u16);
        b.put_slice(self.endpoint.as_bytes());
        if !self.metadata.is_empty() {
            b.put_u16(metadata_len as u16);
            for (name, value) in &self.metadata {
                b.put_u8(name.len() as u8);
                b.put_slice(name.as_bytes());
                b.put_u16(value.len() as u16);
                b.put_slice(value.as_bytes());
            }
        }
        b.put_slice(&self.message);
        b.freeze()
    }

    /// Checks what [`RequestHead::encode`] assumes: an endpoint of 1 to
    /// 1024 bytes, valid metadata names and values, at most
    /// [`MAX_METADATA`] bytes of metadata.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.endpoint.is_empty() || self.endpoint.len() > MAX_ENDPOINT {
            return Err("endpoint must be 1..=1024 bytes");
        }
        let mut total = 0;
        for (name, value) in &self.metadata {
            if !valid_metadata_name(name) {
                return Err("metadata names are 1..=255 of a-z 0-9 - _ .");
            }
            if !valid_metadata_value(value) {
                return Err("metadata values are visible ASCII, spaces and tabs");
            }
            total += 3 + name.len() + value.len();
        }
        if total > MAX_METADATA {
            return Err("metadata is larger than 8 KiB");
        }
        Ok(())
    }

    /// Parses a payload carried with `flags`.
    pub fn decode(flags: u8, mut payload: Bytes) -> Result<RequestHead, FrameError> {
        let malformed = |reason| FrameError::Malformed {
            kind: FrameType::Request,
            reason,
        };
        if payload.len() < 2 {
            return Err(malformed("shorter than its endpoint length"));
        }
        let len = payload.get_u16() as usize;
        if len == 0 || len > MAX_ENDPOINT {
            return Err(malformed("endpoint empty or longer than 1024 bytes"));
        }
        if payload.len() < len {
            return Err(malformed("endpoint runs past the payload"));
        }
        let endpoint = payload.split_to(len);
        let endpoint =
            String::from_utf8(endpoint.to_vec()).map_err(|_| malformed("endpoint not UTF-8"))?;
        let mut metadata = Vec::new();
        if flags & FLAG_METADATA != 0 {
            if payload.len() < 2 {
                return Err(malformed("no metadata length"));
            }
            let len = payload.get_u16() as usize;
            if len > MAX_METADATA {
                return Err(malformed("metadata longer than 8 KiB"));
            }
            if payload.len() < len {
                return Err(malformed("metadata runs past the payload"));
            }
            let mut block = payload.split_to(len);
            while block.has_remaining() {
                let name_len = block.get_u8() as usize;
                if name_len == 0 || block.len() < name_len + 2 {
                    return Err(malformed("metadata name runs past its block"));
                }
                let name = block.split_to(name_len);
                let value_len = block.get_u16() as usize;
                if block.len() < value_len {
                    return Err(malformed("metadata value runs past its block"));
                }
                let value = block.split_to(value_len);
                let (Ok(name), Ok(value)) = (
                    String::from_utf8(name.to_vec()),
                    String::from_utf8(value.to_vec()),
                ) else {
                    return Err(malformed("metadata not ASCII"));
                };
                if !valid_metadata_name(&name) || !valid_metadata_value(&value) {
                    return Err(malformed("metadata name or value has invalid characters"));
                }
                metadata.push((name, value));
            }
        }
        Ok(RequestHead {
            endpoint,
            metadata,
            message: payload,
        })
    }
}

/// The payload of a [`FrameType::End`] frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    /// Body bytes sent in this direction's DATA frames.
    pub bytes: u64,
    /// CRC-32 (IEEE) of those bytes, when the sender computed one.
    pub crc32: Option<u32>,
}

impl End {
    /// Encodes it as (flags, payload).
    pub fn encode(&self) -> (u8, Bytes) {
        let mut b = BytesMut::with_capacity(12);
        b.put_u64(self.bytes);
        let mut flags = 0;
        if let Some(crc) = self.crc32 {
            b.put_u32(crc);
            flags |= FLAG_CHECKSUM;
        }
        (flags, b.freeze())
    }

    /// Parses a frame's flags and payload.
    pub fn decode(flags: u8, mut payload: Bytes) -> Result<End, FrameError> {
        let want = if flags & FLAG_CHECKSUM != 0 { 12 } else { 8 };
        if payload.len() != want {
            return Err(FrameError::Malformed {
                kind: FrameType::End,
                reason: "payload is not 8 (count) or 12 (count + CRC-32) bytes",
            });
        }
        let bytes = payload.get_u64();
        let crc32 = (want == 12).then(|| payload.get_u32());
        Ok(End { bytes, crc32 })
    }
}

/// Splits an error trailer (code + message) into frame payloads of at
/// most `max_payload` bytes each; every frame but the last has
/// [`FLAG_MORE`]. The message is cut at [`MAX_ERROR_MESSAGE`] bytes (on a
/// character boundary).
pub fn encode_error(code: i32, message: &str, max_payload: u32) -> Vec<(u8, Bytes)> {
    let mut message = message;
    if message.len() > MAX_ERROR_MESSAGE {
        let mut cut = MAX_ERROR_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message = &message[..cut];
    }
    let max = (max_payload as usize).max(8);
    let mut all = BytesMut::with_capacity(4 + message.len());
    all.put_i32(code);
    all.put_slice(message.as_bytes());
    let mut all = all.freeze();
    let mut frames = Vec::new();
    loop {
        let take = all.len().min(max);
        let chunk = all.split_to(take);
        let more = !all.is_empty();
        frames.push((if more { FLAG_MORE } else { 0 }, chunk));
        if !more {
            return frames;
        }
    }
}

/// Reassembles an error trailer from its frames.
#[derive(Debug, Default)]
pub struct ErrorAssembler {
    buf: Vec<u8>,
}

impl ErrorAssembler {
    /// Adds one frame; returns `(code, message)` once the last one arrived.
    pub fn push(&mut self, flags: u8, payload: &[u8]) -> Result<Option<(i32, String)>, FrameError> {
        if self.buf.len() + payload.len() > 4 + MAX_ERROR_MESSAGE {
            return Err(FrameError::Malformed {
                kind: FrameType::Error,
                reason: "error message longer than 64 KiB",
            });
        }
        self.buf.extend_from_slice(payload);
        if flags & FLAG_MORE != 0 {
            return Ok(None);
        }
        if self.buf.len() < 4 {
            return Err(FrameError::Malformed {
                kind: FrameType::Error,
                reason: "shorter than its 4-byte code",
            });
        }
        let code = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let message = String::from_utf8_lossy(&self.buf[4..]).into_owned();
        self.buf.clear();
        Ok(Some((code, message)))
    }

    /// Whether a multi-frame trailer is half received.
    pub fn in_progress(&self) -> bool {
        !self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(kind: FrameType, flags: u8, payload: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&encode_header(kind, flags, payload.len() as u32));
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn round_trip_every_type() {
        for v in 0x01..=0x08 {
            let kind = FrameType::from_u8(v).unwrap();
            assert_eq!(kind.to_u8(), v);
            let mut buf = frame_bytes(kind, 3, b"abc");
            let f = Decoder::new(16).decode(&mut buf).unwrap().unwrap();
            assert_eq!(f.kind, kind);
            assert_eq!(f.flags, 3);
            assert_eq!(&f.payload[..], b"abc");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn partial_input_needs_more() {
        let full = frame_bytes(FrameType::Data, 0, b"hello world");
        let mut d = Decoder::new(64);
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(d.decode(&mut part).unwrap(), None, "cut at {cut}");
            assert_eq!(part.len(), cut, "nothing consumed");
        }
        assert_eq!(d.wanted(&full[..3]).unwrap(), HEADER_LEN);
        assert_eq!(d.wanted(&full[..8]).unwrap(), HEADER_LEN + 11);
    }

    #[test]
    fn length_above_max_is_rejected_from_the_header_alone() {
        let header = encode_header(FrameType::Data, 0, u32::MAX);
        let d = Decoder::new(1 << 20);
        assert_eq!(
            d.wanted(&header),
            Err(FrameError::TooLarge {
                len: u32::MAX,
                max: 1 << 20
            })
        );
        let mut buf = BytesMut::from(&header[..]);
        assert!(matches!(
            Decoder::new(1 << 20).decode(&mut buf),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_is_rejected() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert_eq!(
            Decoder::new(1024).decode(&mut buf),
            Err(FrameError::UnknownType(b'G'))
        );
        let mut reserved = BytesMut::from(&[3u8, 0, 0, 1, 0, 0, 0, 0][..]);
        assert_eq!(
            Decoder::new(1024).decode(&mut reserved),
            Err(FrameError::Reserved(1))
        );
    }

    #[test]
    fn request_head_round_trip_and_errors() {
        let head = RequestHead {
            endpoint: "files/get".into(),
            metadata: Vec::new(),
            message: Bytes::from_static(b"\x0a\x03abc"),
        };
        assert_eq!(head.flags(), 0);
        assert_eq!(RequestHead::decode(0, head.encode()).unwrap(), head);
        assert!(RequestHead::decode(0, Bytes::from_static(b"\x00")).is_err());
        assert!(RequestHead::decode(0, Bytes::from_static(b"\x00\x00")).is_err());
        assert!(RequestHead::decode(0, Bytes::from_static(b"\x00\x09abc")).is_err());
        assert!(RequestHead::decode(0, Bytes::from_static(b"\x00\x02\xff\xfe")).is_err());

        let with_metadata = RequestHead {
            metadata: vec![
                ("lb-token".into(), "0123abcd".into()),
                ("x-empty".into(), String::new()),
            ],
            ..head
        };
        assert!(with_metadata.check().is_ok());
        assert_eq!(with_metadata.flags(), FLAG_METADATA);
        let encoded = with_metadata.encode();
        assert_eq!(
            RequestHead::decode(FLAG_METADATA, encoded.clone()).unwrap(),
            with_metadata
        );
        // Every cut inside the endpoint and metadata is an error, never a panic.
        let message_at = encoded.len() - with_metadata.message.len();
        for cut in 0..message_at {
            assert!(
                RequestHead::decode(FLAG_METADATA, encoded.slice(..cut)).is_err(),
                "cut at {cut}"
            );
        }
        // Bad names, values and lengths.
        for bad in [
            &b"\x00\x01e\x00\x05\x02Ab\x00\x00"[..], // uppercase name
            b"\x00\x01e\x00\x05\x01a\x00\x01\n",     // control character
            b"\x00\x01e\x00\x04\x00\x00\x00\x00",    // empty name
            b"\x00\x01e\x20\x01",                    // block over 8 KiB
        ] {
            assert!(
                RequestHead::decode(FLAG_METADATA, Bytes::copy_from_slice(bad)).is_err(),
                "{bad:?}"
            );
        }
        let too_much = RequestHead {
            endpoint: "e".into(),
            metadata: vec![("a".into(), "v".repeat(9000))],
            message: Bytes::new(),
        };
        assert!(too_much.check().is_err());
    }

    #[test]
    fn end_round_trip() {
        for end in [
            End {
                bytes: 0,
                crc32: None,
            },
            End {
                bytes: 10 << 30,
                crc32: Some(0xdead_beef),
            },
        ] {
            let (flags, payload) = end.encode();
            assert_eq!(End::decode(flags, payload).unwrap(), end);
        }
        assert!(End::decode(FLAG_CHECKSUM, Bytes::from_static(&[0; 8])).is_err());
        assert!(End::decode(0, Bytes::from_static(&[0; 3])).is_err());
    }

    #[test]
    fn error_trailer_spans_frames() {
        let message = "é".repeat(5000); // 10,000 bytes
        let frames = encode_error(13, &message, 1024);
        assert!(frames.len() >= 10);
        let mut asm = ErrorAssembler::default();
        let mut out = None;
        for (i, (flags, payload)) in frames.iter().enumerate() {
            assert!(payload.len() <= 1024);
            let r = asm.push(*flags, payload).unwrap();
            if i + 1 < frames.len() {
                assert!(r.is_none());
                assert!(asm.in_progress());
            } else {
                out = r;
            }
        }
        assert_eq!(out, Some((13, message)));
    }

    #[test]
    fn error_trailer_is_capped() {
        let huge = "x".repeat(MAX_ERROR_MESSAGE + 10);
        let frames = encode_error(2, &huge, 1 << 20);
        let mut asm = ErrorAssembler::default();
        let (code, message) = asm.push(frames[0].0, &frames[0].1).unwrap().unwrap();
        assert_eq!(code, 2);
        assert_eq!(message.len(), MAX_ERROR_MESSAGE);
        // A peer that keeps sending continuation frames is cut off.
        let mut asm = ErrorAssembler::default();
        let chunk = vec![b'y'; 1024];
        let mut failed = false;
        for _ in 0..100 {
            if asm.push(FLAG_MORE, &chunk).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
    }
}
