//! gRPC's message framing on a stream's bytes: each message is a 5-byte
//! prefix (a compressed flag and a big-endian `u32` length) and then the
//! message's bytes.
//!
//! [`encode`] frames a message once, so one list can be sent to any number
//! of streams as the same shared [`Bytes`]. [`MessageReader`] cuts the
//! DATA chunks a client sends into messages: a message that arrived whole
//! in one chunk is a slice of that chunk (no copy, nothing held); only a
//! message split across chunks is gathered, in a buffer that exists until
//! the message is complete and never grows past the size limit.
//!
//! ```
//! use bytes::Bytes;
//! use waypost_lbserver::balance::frames::{MessageReader, encode};
//! use waypost_proto::grpc::lb::v1::ClientStats;
//!
//! let frame = encode(&ClientStats { num_calls_started: 3, ..Default::default() });
//! let mut reader = MessageReader::new(1024);
//! // The frame arrives in two pieces.
//! reader.feed(frame.slice(..2)).unwrap();
//! assert!(reader.next_message().unwrap().is_none());
//! reader.feed(frame.slice(2..)).unwrap();
//! let message = reader.next_message().unwrap().unwrap();
//! let stats: ClientStats = prost::Message::decode(message).unwrap();
//! assert_eq!(stats.num_calls_started, 3);
//! ```

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The prefix's length.
pub const PREFIX: usize = 5;

/// Frames `message` as one gRPC message (uncompressed).
pub fn encode(message: &impl prost::Message) -> Bytes {
    let length = message.encoded_len();
    let mut frame = BytesMut::with_capacity(PREFIX + length);
    frame.put_u8(0);
    frame.put_u32(u32::try_from(length).expect("a list shorter than 4 GiB"));
    message
        .encode(&mut frame)
        .expect("the buffer was sized for the message");
    frame.freeze()
}

/// Why a client's bytes are not a message we take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A message longer than the limit.
    #[error("a request message of {length} bytes; the limit is {limit}")]
    TooLong {
        /// Its length as announced.
        length: u64,
        /// The limit.
        limit: usize,
    },
    /// A message with the compressed flag (this server accepts none).
    #[error("compressed request messages are not accepted")]
    Compressed,
}

/// Cuts a stream of DATA chunks into messages, each at most `limit` bytes.
#[derive(Debug)]
pub struct MessageReader {
    limit: usize,
    /// Chunks received and not yet read into messages.
    chunks: VecDeque<Bytes>,
    /// Bytes in `chunks`.
    buffered: usize,
}

impl MessageReader {
    /// A reader of messages of at most `limit` bytes.
    pub fn new(limit: usize) -> MessageReader {
        MessageReader {
            limit,
            chunks: VecDeque::new(),
            buffered: 0,
        }
    }

    /// Takes the next chunk. An error when the message it continues or
    /// begins announces more than the limit (nothing more may be read).
    pub fn feed(&mut self, chunk: Bytes) -> Result<(), FrameError> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.buffered += chunk.len();
        self.chunks.push_back(chunk);
        self.check()
    }

    /// The next complete message, if one has arrived.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, FrameError> {
        self.check()?;
        let Some(length) = self.announced() else {
            return Ok(None);
        };
        if self.buffered < PREFIX + length {
            return Ok(None);
        }
        self.skip(PREFIX);
        Ok(Some(self.take(length)))
    }

    /// Whether a message has begun and not ended (a stream that ends here
    /// was cut short).
    pub fn is_partial(&self) -> bool {
        self.buffered > 0
    }

    /// The length the next message's prefix announces, once its prefix
    /// has arrived (the flag must be 0 and the length within the limit:
    /// [`check`](Self::check)).
    fn announced(&self) -> Option<usize> {
        let prefix = self.peek_prefix()?;
        Some(u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize)
    }

    fn check(&self) -> Result<(), FrameError> {
        let Some(prefix) = self.peek_prefix() else {
            return Ok(());
        };
        if prefix[0] != 0 {
            return Err(FrameError::Compressed);
        }
        let length = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]);
        if length as usize > self.limit {
            return Err(FrameError::TooLong {
                length: u64::from(length),
                limit: self.limit,
            });
        }
        Ok(())
    }

    fn peek_prefix(&self) -> Option<[u8; PREFIX]> {
        if self.buffered < PREFIX {
            return None;
        }
        let mut prefix = [0u8; PREFIX];
        let mut have = 0;
        for chunk in &self.chunks {
            let take = (PREFIX - have).min(chunk.len());
            prefix[have..have + take].copy_from_slice(&chunk[..take]);
            have += take;
            if have == PREFIX {
                break;
            }
        }
        Some(prefix)
    }

    fn skip(&mut self, mut n: usize) {
        self.buffered -= n;
        while n > 0 {
            let front = self.chunks.front_mut().expect("n bytes are buffered");
            if front.len() > n {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.chunks.pop_front();
        }
    }

    /// The next `n` bytes: a slice of the first chunk when it holds them
    /// all, else gathered into one buffer.
    fn take(&mut self, n: usize) -> Bytes {
        if n == 0 {
            return Bytes::new();
        }
        self.buffered -= n;
        let front = self.chunks.front_mut().expect("n bytes are buffered");
        if front.len() >= n {
            let message = front.split_to(n);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            return message;
        }
        let mut message = BytesMut::with_capacity(n);
        while message.len() < n {
            let front = self.chunks.front_mut().expect("n bytes are buffered");
            let want = (n - message.len()).min(front.len());
            message.extend_from_slice(&front.split_to(want));
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        message.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for payload in payloads {
            out.push(0);
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            out.extend_from_slice(payload);
        }
        out
    }

    fn read_all(reader: &mut MessageReader) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(message) = reader.next_message().unwrap() {
            out.push(message.to_vec());
        }
        out
    }

    #[test]
    fn messages_cut_at_every_point_come_out_whole() {
        let payloads: [&[u8]; 4] = [b"first", b"", b"the third message", b"4"];
        let bytes = framed(&payloads);
        for cut_a in 0..bytes.len() {
            for cut_b in cut_a..bytes.len() {
                let mut reader = MessageReader::new(64);
                let mut got = Vec::new();
                for piece in [&bytes[..cut_a], &bytes[cut_a..cut_b], &bytes[cut_b..]] {
                    reader.feed(Bytes::copy_from_slice(piece)).unwrap();
                    got.extend(read_all(&mut reader));
                }
                let want: Vec<Vec<u8>> = payloads.iter().map(|p| p.to_vec()).collect();
                assert_eq!(got, want, "cut at {cut_a} and {cut_b}");
                assert!(!reader.is_partial());
            }
        }
    }

    #[test]
    fn a_whole_message_is_a_slice_of_its_chunk() {
        let chunk = Bytes::from(framed(&[b"abc"]));
        let mut reader = MessageReader::new(64);
        reader.feed(chunk.clone()).unwrap();
        let message = reader.next_message().unwrap().unwrap();
        assert_eq!(message.as_ptr(), chunk[PREFIX..].as_ptr());
    }

    #[test]
    fn an_announced_length_over_the_limit_fails_at_the_prefix() {
        let mut reader = MessageReader::new(10);
        let mut prefix = vec![0u8];
        prefix.extend_from_slice(&11u32.to_be_bytes());
        assert_eq!(
            reader.feed(Bytes::from(prefix)),
            Err(FrameError::TooLong {
                length: 11,
                limit: 10
            })
        );
        let mut at_limit = MessageReader::new(10);
        at_limit.feed(Bytes::from(framed(&[&[7u8; 10]]))).unwrap();
        assert_eq!(at_limit.next_message().unwrap().unwrap().len(), 10);
    }

    #[test]
    fn a_compressed_message_is_refused() {
        let mut reader = MessageReader::new(10);
        let result = reader.feed(Bytes::from_static(&[1, 0, 0, 0, 1, 9]));
        assert_eq!(result, Err(FrameError::Compressed));
    }

    #[test]
    fn a_cut_short_stream_is_partial() {
        let mut reader = MessageReader::new(10);
        reader.feed(Bytes::from_static(&[0, 0, 0])).unwrap();
        assert!(reader.next_message().unwrap().is_none());
        assert!(reader.is_partial());
    }

    #[test]
    fn encode_frames_what_prost_decodes() {
        use waypost_proto::grpc::lb::v1::ClientStats;
        let stats = ClientStats {
            num_calls_finished: 12,
            ..Default::default()
        };
        let frame = encode(&stats);
        assert_eq!(frame[0], 0);
        assert_eq!(
            u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize,
            frame.len() - PREFIX
        );
        let back: ClientStats = prost::Message::decode(&frame[PREFIX..]).unwrap();
        assert_eq!(back, stats);
    }
}
