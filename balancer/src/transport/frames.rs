//! The frames a server sends, as far as the subchannel must know them
//! before `h2` tells: the first one (a server's preface is a SETTINGS
//! frame) and the first GOAWAY.
//!
//! [`FrameReader`] is fed the bytes read from the socket, cut anywhere, and
//! walks the frame headers (9 bytes: length 3, type 1, flags 1, stream 4),
//! skipping payloads; it copies nothing but a GOAWAY's first 8 payload
//! bytes (last stream id, error code). It stops once it has nothing more
//! to report.

/// What the server's first frame header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Preface {
    /// A SETTINGS frame: the peer speaks HTTP/2.
    Settings,
    /// A TLS record (handshake or alert): the server speaks TLS, and this
    /// connection does not.
    Tls,
    /// Something else: not an HTTP/2 server.
    NotHttp2,
}

/// Whether a server's first two bytes start a TLS record: content type
/// handshake (22) or alert (21), protocol major version 3. (A SETTINGS
/// frame starting so would be over a megabyte long.)
pub(crate) fn looks_like_tls(first: u8, second: u8) -> bool {
    matches!(first, 0x15 | 0x16) && second == 0x03
}

/// A GOAWAY the server sent: no streams above `last_stream_id` will be
/// processed, and the connection closes once the others finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GoAway {
    pub(crate) last_stream_id: u32,
    /// The HTTP/2 error code (0 is NO_ERROR, a graceful shutdown).
    pub(crate) code: u32,
}

/// Something worth reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    Preface(Preface),
    GoAway(GoAway),
}

const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;

/// Classifies the first frame header the server sent.
pub(crate) fn classify(header: &[u8; 9]) -> Preface {
    // A preface SETTINGS frame has type 0x4, no ACK flag, and stream 0.
    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    if header[3] == SETTINGS && header[4] & 0x1 == 0 && stream == 0 {
        Preface::Settings
    } else {
        Preface::NotHttp2
    }
}

/// Walks the frames of a server's byte stream.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    header: [u8; 9],
    filled: usize,
    /// Payload bytes of the current frame still to skip.
    skip: usize,
    /// While reading a GOAWAY's payload: its first bytes, how many are in,
    /// and how many are wanted.
    go_away: Option<([u8; 8], usize, usize)>,
    frames: u64,
    done: bool,
}

impl FrameReader {
    pub(crate) fn new() -> Self {
        FrameReader::default()
    }

    /// Whether nothing more will be reported (the bytes need not be fed).
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// Reads the next bytes from the server, calling `report` for the
    /// first frame and the first GOAWAY.
    pub(crate) fn read(&mut self, mut bytes: &[u8], mut report: impl FnMut(Seen)) {
        while !bytes.is_empty() && !self.done {
            if let Some((payload, have, want)) = &mut self.go_away {
                let take = (*want - *have).min(bytes.len());
                payload[*have..*have + take].copy_from_slice(&bytes[..take]);
                *have += take;
                self.skip -= take;
                bytes = &bytes[take..];
                if *have == *want {
                    let word = |at: usize| {
                        u32::from_be_bytes([
                            payload[at],
                            payload[at + 1],
                            payload[at + 2],
                            payload[at + 3],
                        ])
                    };
                    report(Seen::GoAway(GoAway {
                        last_stream_id: word(0) & 0x7fff_ffff,
                        code: word(4),
                    }));
                    self.done = true;
                }
                continue;
            }
            if self.skip > 0 {
                let take = self.skip.min(bytes.len());
                self.skip -= take;
                bytes = &bytes[take..];
                continue;
            }
            let take = (9 - self.filled).min(bytes.len());
            self.header[self.filled..self.filled + take].copy_from_slice(&bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            // A TLS server answers a plaintext client with a short alert
            // record and closes: tell from the first two bytes.
            if self.frames == 0
                && self.filled >= 2
                && looks_like_tls(self.header[0], self.header[1])
            {
                report(Seen::Preface(Preface::Tls));
                self.done = true;
                return;
            }
            if self.filled < 9 {
                continue;
            }
            self.filled = 0;
            self.frames += 1;
            let length = u32::from_be_bytes([0, self.header[0], self.header[1], self.header[2]]);
            self.skip = length as usize;
            if self.frames == 1 {
                let preface = classify(&self.header);
                report(Seen::Preface(preface));
                if preface == Preface::NotHttp2 {
                    self.done = true;
                    return;
                }
            }
            if self.header[3] == GOAWAY {
                // A GOAWAY shorter than its 8 fixed bytes is malformed (h2
                // ends the connection); read what there is.
                let want = self.skip.min(8);
                self.go_away = Some(([0; 8], 0, want));
                if want == 0 {
                    report(Seen::GoAway(GoAway {
                        last_stream_id: 0,
                        code: 0x1,
                    }));
                    self.done = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut bytes = len.to_be_bytes()[1..].to_vec();
        bytes.push(kind);
        bytes.push(flags);
        bytes.extend_from_slice(&stream.to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    fn go_away(last: u32, code: u32) -> Vec<u8> {
        let mut payload = last.to_be_bytes().to_vec();
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(b"debug data");
        frame(GOAWAY, 0, 0, &payload)
    }

    fn read_all(stream: &[u8], cut: usize) -> Vec<Seen> {
        let mut reader = FrameReader::new();
        let mut seen = Vec::new();
        for piece in stream.chunks(cut) {
            reader.read(piece, |s| seen.push(s));
        }
        seen
    }

    #[test]
    fn only_a_settings_frame_on_stream_zero_counts() {
        assert_eq!(classify(&[0, 0, 6, 4, 0, 0, 0, 0, 0]), Preface::Settings);
        assert_eq!(
            classify(&[0, 0, 0, 4, 1, 0, 0, 0, 0]),
            Preface::NotHttp2,
            "a SETTINGS ACK is not a preface"
        );
        assert_eq!(classify(&[0, 0, 0, 4, 0, 0, 0, 0, 1]), Preface::NotHttp2);
        assert_eq!(classify(b"HTTP/1.1 "), Preface::NotHttp2);
        assert!(looks_like_tls(0x15, 0x03) && looks_like_tls(0x16, 0x03));
        assert!(!looks_like_tls(0x00, 0x00) && !looks_like_tls(0x16, 0x00));
    }

    #[test]
    fn the_preface_and_a_goaway_are_seen_however_the_bytes_are_cut() {
        let mut stream = frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]);
        stream.extend(frame(SETTINGS, 1, 0, &[]));
        stream.extend(frame(0x1, 0x4, 1, &[0x88; 30])); // HEADERS
        stream.extend(frame(0x0, 0, 1, &[7; 1000])); // DATA
        stream.extend(frame(0x6, 0, 0, &[0; 8])); // PING
        stream.extend(go_away(0x8000_0003, 0xb));
        stream.extend(go_away(1, 0)); // only the first is reported
        for cut in 1..=stream.len() {
            assert_eq!(
                read_all(&stream, cut),
                vec![
                    Seen::Preface(Preface::Settings),
                    Seen::GoAway(GoAway {
                        last_stream_id: 3,
                        code: 0xb
                    })
                ],
                "cut every {cut}"
            );
        }
    }

    #[test]
    fn a_server_that_is_not_http2_is_reported_once_and_not_read_further() {
        let mut stream = b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec();
        stream.extend(go_away(0, 0));
        let mut reader = FrameReader::new();
        let mut seen = Vec::new();
        reader.read(&stream, |s| seen.push(s));
        assert_eq!(seen, vec![Seen::Preface(Preface::NotHttp2)]);
        assert!(reader.is_done());
    }

    #[test]
    fn a_goaway_without_its_fixed_fields_is_a_protocol_error() {
        let mut stream = frame(SETTINGS, 0, 0, &[]);
        stream.extend(frame(GOAWAY, 0, 0, &[]));
        assert_eq!(
            read_all(&stream, 3)[1],
            Seen::GoAway(GoAway {
                last_stream_id: 0,
                code: 1
            })
        );
    }
}
