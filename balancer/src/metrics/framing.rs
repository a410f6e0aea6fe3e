//! Counting gRPC message payload bytes in a stream of DATA chunks: each
//! message is a 5-byte prefix (compressed flag, 4-byte big-endian length)
//! and that many payload bytes. gRFC A66's message sizes count payloads
//! (compressed, not encrypted), not prefixes.

/// Counts payload bytes across chunks split anywhere.
///
/// ```
/// use waypost_balancer::metrics::PayloadCounter;
/// let mut counter = PayloadCounter::default();
/// // One message of 3 bytes, split across two chunks.
/// counter.feed(&[0, 0, 0]);
/// counter.feed(&[0, 3, b'a', b'b', b'c']);
/// assert_eq!(counter.payload_bytes(), 3);
/// assert_eq!(counter.messages(), 1);
/// ```
#[derive(Debug, Clone, Default)]
pub struct PayloadCounter {
    /// Prefix bytes seen of the message being read (0–5).
    prefix: [u8; 5],
    prefix_len: usize,
    /// Payload bytes still to come in the current message.
    remaining: u64,
    payload: u64,
    messages: u64,
}

impl PayloadCounter {
    /// Feeds the next chunk.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let take = (chunk.len() as u64).min(self.remaining);
                self.remaining -= take;
                self.payload += take;
                chunk = &chunk[take as usize..];
                continue;
            }
            let take = (5 - self.prefix_len).min(chunk.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&chunk[..take]);
            self.prefix_len += take;
            chunk = &chunk[take..];
            if self.prefix_len == 5 {
                let [_, a, b, c, d] = self.prefix;
                self.remaining = u64::from(u32::from_be_bytes([a, b, c, d]));
                self.prefix_len = 0;
                self.messages += 1;
            }
        }
    }

    /// Payload bytes seen so far.
    pub fn payload_bytes(&self) -> u64 {
        self.payload
    }

    /// Messages begun so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_counted_however_the_chunks_split() {
        let mut wire = Vec::new();
        for payload in [&b"hello"[..], b"", &[7u8; 300][..]] {
            wire.push(0);
            wire.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            wire.extend_from_slice(payload);
        }
        for split in 1..wire.len() {
            let mut counter = PayloadCounter::default();
            for chunk in wire.chunks(split) {
                counter.feed(chunk);
            }
            assert_eq!(counter.payload_bytes(), 305, "split {split}");
            assert_eq!(counter.messages(), 3, "split {split}");
        }
    }
}
