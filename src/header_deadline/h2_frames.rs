//! The HTTP/2 side of the request-head deadline: finds frame boundaries in the bytes a
//! client sends, so the deadline can run while a header block or any non-DATA frame is
//! incomplete, and stop while the connection idles or streams request bodies.

/// The client connection preface (RFC 9113 §3.4), skipped before the first frame.
pub(super) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const PREFACE_LEN: u8 = PREFACE.len() as u8;
const FRAME_HEADER_LEN: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// Where in the frame stream the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameScan {
    preface_left: u8,
    header: [u8; FRAME_HEADER_LEN],
    header_len: u8,
    payload_left: u32,
    payload_is_data: bool,
    /// A HEADERS (or PUSH_PROMISE) frame without END_HEADERS was seen: CONTINUATION frames
    /// follow until one carries END_HEADERS.
    in_header_block: bool,
}

impl Default for FrameScan {
    fn default() -> Self {
        FrameScan {
            preface_left: PREFACE_LEN,
            header: [0; FRAME_HEADER_LEN],
            header_len: 0,
            payload_left: 0,
            payload_is_data: false,
            in_header_block: false,
        }
    }
}

impl FrameScan {
    /// Advances over bytes read from the client.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let n = bytes.len().min(self.preface_left as usize);
                self.preface_left -= n as u8;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = bytes.len().min(self.payload_left as usize);
                self.payload_left -= n as u32;
                bytes = &bytes[n..];
            } else {
                let at = self.header_len as usize;
                let n = bytes.len().min(FRAME_HEADER_LEN - at);
                self.header[at..at + n].copy_from_slice(&bytes[..n]);
                self.header_len += n as u8;
                bytes = &bytes[n..];
                if self.header_len as usize == FRAME_HEADER_LEN {
                    self.header_len = 0;
                    self.start_frame();
                }
            }
        }
    }

    fn start_frame(&mut self) {
        let h = self.header;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
        let (kind, flags) = (h[3], h[4]);
        if matches!(kind, HEADERS | PUSH_PROMISE | CONTINUATION) {
            self.in_header_block = flags & END_HEADERS == 0;
        }
        self.payload_left = len;
        self.payload_is_data = kind == DATA;
    }

    /// Whether something that must arrive whole is incomplete: a frame header, a frame
    /// other than DATA, or a header block (HEADERS + CONTINUATION, from its first byte).
    pub fn head_pending(&self) -> bool {
        self.preface_left > 0 && self.preface_left < PREFACE_LEN
            || self.header_len > 0
            || self.in_header_block
            || (self.payload_left > 0 && !self.payload_is_data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags, 0, 0, 0, 1]);
        f.extend_from_slice(payload);
        f
    }

    fn scan_after(chunks: &[&[u8]]) -> FrameScan {
        let mut s = FrameScan::default();
        for c in chunks {
            s.feed(c);
        }
        s
    }

    #[test]
    fn the_preface_and_whole_frames_leave_nothing_pending() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, &[0; 6])); // SETTINGS
        bytes.extend(frame(HEADERS, END_HEADERS, b"hpack"));
        assert!(!scan_after(&[&bytes]).head_pending());
        // The same bytes one at a time end in the same state.
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert!(!scan_after(&singles).head_pending());
        assert!(scan_after(&[&PREFACE[..5]]).head_pending());
    }

    #[test]
    fn a_header_block_is_pending_until_end_headers() {
        let mut s = scan_after(&[PREFACE]);
        s.feed(&frame(HEADERS, 0, b"part"));
        assert!(s.head_pending(), "HEADERS without END_HEADERS");
        for _ in 0..3 {
            s.feed(&frame(CONTINUATION, 0, b"more"));
            assert!(s.head_pending(), "CONTINUATION without END_HEADERS");
        }
        s.feed(&frame(CONTINUATION, END_HEADERS, b"end"));
        assert!(!s.head_pending());
    }

    #[test]
    fn partial_frames_are_pending_except_data_payloads() {
        let mut s = scan_after(&[PREFACE]);
        let headers = frame(HEADERS, END_HEADERS | 0x1, b"0123456789");
        s.feed(&headers[..4]);
        assert!(s.head_pending(), "a frame header cut short");
        s.feed(&headers[4..12]);
        assert!(s.head_pending(), "a HEADERS payload cut short");
        s.feed(&headers[12..]);
        assert!(!s.head_pending());
        let data = frame(DATA, 0, &[7; 100]);
        s.feed(&data[..50]);
        assert!(!s.head_pending(), "a body streams at its own pace");
        s.feed(&data[50..]);
        assert!(!s.head_pending());
    }
}
