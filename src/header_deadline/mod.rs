//! A total deadline for reading each request head, against clients that dribble headers.
//!
//! Pingora 0.9 times each read of a request head separately (60 s), so a client sending one
//! byte every 59 s holds a connection for hours. It offers no hook between accept and header
//! parsing, so the deadline lives in the connection itself: `HeaderDeadline` wraps the proxy
//! app and hands it a `DeadlineStream`. From the first byte of a request head, the whole head
//! (up to its blank line) must arrive within the deadline or the read fails and the connection
//! closes. The clock stops at the end of the head (bodies stream at their own pace) and
//! starts again with the first byte after the response began.
//!
//! On HTTP/2 (ALPN `h2`, or prior knowledge when `server.http2.cleartext` is on) the same
//! deadline covers each header block (HEADERS and its CONTINUATION frames) and every other
//! frame except DATA payloads; see `h2_frames`. The listener's TLS handshake, when TLS is on,
//! happens here too, before any of this (see `crate::tls`).

mod h2_frames;

use crate::request_head::line::{scan_line, RequestLine};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::ALPN;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Wraps a server app so each connection's request heads are read against a deadline.
pub struct HeaderDeadline<A> {
    inner: Arc<A>,
    limit: Duration,
    tls: Option<Arc<crate::tls::FrontDoor>>,
    /// Accept HTTP/2 with prior knowledge on plaintext connections.
    h2c: bool,
}

impl<A> HeaderDeadline<A> {
    pub fn new(inner: A, limit: Duration) -> HeaderDeadline<A> {
        HeaderDeadline {
            inner: Arc::new(inner),
            limit,
            tls: None,
            h2c: false,
        }
    }

    /// Terminates TLS on every new connection before anything else.
    pub fn with_tls(mut self, tls: Option<Arc<crate::tls::FrontDoor>>) -> Self {
        self.tls = tls;
        self
    }

    /// Takes plaintext connections that open with the HTTP/2 preface as HTTP/2.
    pub fn with_h2c(mut self, h2c: bool) -> Self {
        self.h2c = h2c;
        self
    }

    /// Whether a plaintext connection opens with the HTTP/2 preface (read within the
    /// deadline; a client that sends nothing is closed).
    async fn opens_with_h2_preface(&self, stream: &mut Stream) -> Option<bool> {
        let mut buf = [0u8; h2_frames::PREFACE.len()];
        match tokio::time::timeout(self.limit, stream.try_peek(&mut buf)).await {
            Ok(Ok(true)) => Some(&buf == h2_frames::PREFACE),
            Ok(Ok(false)) => Some(false),
            Ok(Err(_)) | Err(_) => None,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeaderDeadline<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A reused keep-alive connection comes back already wrapped.
        if stream.as_any().is::<DeadlineStream>() {
            return self.inner.process_new(stream, shutdown).await;
        }
        let mut stream = match &self.tls {
            Some(tls) => tls.accept(stream).await?,
            None => stream,
        };
        let h2 = match stream.selected_alpn_proto() {
            Some(ALPN::H2) => true,
            _ if self.h2c && self.tls.is_none() => self.opens_with_h2_preface(&mut stream).await?,
            _ => false,
        };
        let stream: Stream = Box::new(DeadlineStream::new(stream, self.limit, h2));
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first byte of the next request head; no clock runs.
    Fresh,
    /// Reading a request head, on the clock. `in_request` turns true at the first byte that
    /// is not CR or LF: the HTTP parser skips empty lines before a request line (RFC 9112
    /// §2.2), so they must not be taken for the blank line that ends the head. `tail` holds
    /// the last bytes of the request proper, to find its blank line across reads.
    Head { tail: [u8; 3], in_request: bool },
    /// The head is complete: the body (if any) reads without a deadline.
    Body,
}

/// A connection whose request heads must arrive within a deadline.
pub struct DeadlineStream {
    inner: Stream,
    limit: Duration,
    phase: Phase,
    line: RequestLine,
    /// `Some` on an HTTP/2 connection: its frame scanner replaces `phase` and `line`.
    h2: Option<h2_frames::FrameScan>,
    /// The deadline, when armed; the timer is allocated once per connection and reset.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl std::fmt::Debug for DeadlineStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadlineStream")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

impl DeadlineStream {
    fn new(inner: Stream, limit: Duration, h2: bool) -> DeadlineStream {
        DeadlineStream {
            inner,
            limit,
            phase: Phase::Fresh,
            line: RequestLine::Before,
            h2: h2.then(h2_frames::FrameScan::default),
            timer: None,
            armed: false,
        }
    }

    /// Starts the clock (if it is not already running).
    fn arm(&mut self) {
        if self.armed {
            return;
        }
        let deadline = Instant::now() + self.limit;
        match self.timer.as_mut() {
            Some(t) => t.as_mut().reset(deadline),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.armed = true;
    }

    /// Feeds freshly read bytes to the head scanner. The clock starts at the read that brought
    /// a head's first byte, and only if that read left the head incomplete.
    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Some(scan) = self.h2.as_mut() {
            scan.feed(bytes);
            // Whatever is still incomplete began in these bytes or is already on the clock.
            if scan.head_pending() {
                self.arm();
            } else {
                self.armed = false;
            }
            return;
        }
        self.line = scan_line(self.line, bytes);
        self.phase = scan(self.phase, bytes);
        // The clock starts only for a head still incomplete after the read that brought its
        // first byte, taken then (the same read, so the same start to within its parsing). A
        // head that arrives whole in one read, as nearly every head does, touches no clock
        // and no timer: no `Instant::now`, no timer-wheel insert, no timed park of the worker.
        if self.phase == Phase::Body {
            self.armed = false;
        } else {
            self.arm();
        }
    }

    /// Whether this read should go through the scanner.
    fn scanning(&self) -> bool {
        self.h2.is_some() || self.phase != Phase::Body
    }
}

impl DeadlineStream {
    /// Whether the request line of the head just read was sent as pingora parsed it:
    /// `METHOD SP target SP version`, no byte in it that pingora would rewrite. True while
    /// no head has been read.
    pub fn request_line_was_plain(&self) -> bool {
        !matches!(self.line, RequestLine::Done { ok: false })
    }
}

/// Advances the head scanner over `bytes`: `Body` once a blank line (`\r\n\r\n` or `\n\n`)
/// ends a head whose request line has begun; CR and LF before the request line are skipped.
/// Only line feeds are looked at one by one (memchr): a head is read once, at memory speed.
fn scan(phase: Phase, bytes: &[u8]) -> Phase {
    let (mut tail, in_request) = match phase {
        Phase::Fresh => ([0; 3], false),
        Phase::Head { tail, in_request } => (tail, in_request),
        Phase::Body => return phase,
    };
    // The usual read: a whole head (no body), ending in its blank line. The request has begun
    // (earlier, or at this read's first byte), so that blank line ends it, whatever is before.
    let begun = in_request || bytes.first().is_some_and(|&b| b != b'\r' && b != b'\n');
    if begun && (bytes.ends_with(b"\n\r\n") || bytes.ends_with(b"\n\n")) {
        return Phase::Body;
    }
    let bytes = if in_request {
        bytes
    } else {
        match bytes.iter().position(|&b| b != b'\r' && b != b'\n') {
            Some(start) => &bytes[start..],
            None => return Phase::Head { tail, in_request },
        }
    };
    // The byte `back` places before position `i`: from `bytes`, or from the previous reads.
    let before = |i: usize, back: usize| -> u8 {
        if i >= back {
            bytes[i - back]
        } else {
            tail[3 - (back - i)]
        }
    };
    for i in memchr::memchr_iter(b'\n', bytes) {
        // `\n\n`, or `\n\r\n`: the line that just ended was empty.
        if before(i, 1) == b'\n' || (before(i, 1) == b'\r' && before(i, 2) == b'\n') {
            return Phase::Body;
        }
    }
    for &b in bytes.iter().rev().take(3).rev() {
        tail = [tail[1], tail[2], b];
    }
    Phase::Head {
        tail,
        in_request: true,
    }
}

impl AsyncRead for DeadlineStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if self.scanning() {
                    self.as_mut().get_mut().saw(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let armed = self.armed;
                if let Some(timer) = self.timer.as_mut().filter(|_| armed) {
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "request head not received within the header deadline",
                        )));
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for DeadlineStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        // A response is going out: whatever the client sends next starts a new head.
        if self.phase == Phase::Body {
            self.phase = Phase::Fresh;
            self.line = RequestLine::Before;
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.phase == Phase::Body {
            self.phase = Phase::Fresh;
            self.line = RequestLine::Before;
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for DeadlineStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for DeadlineStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for DeadlineStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for DeadlineStream {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for DeadlineStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for DeadlineStream {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for DeadlineStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod scan_equivalence {
    //! `scan` against its byte-at-a-time definition, on random heads cut at
    //! random places.
    use super::*;
    use proptest::prelude::*;

    fn reference(phase: Phase, bytes: &[u8]) -> Phase {
        let (mut tail, mut in_request) = match phase {
            Phase::Fresh => ([0; 3], false),
            Phase::Head { tail, in_request } => (tail, in_request),
            Phase::Body => return phase,
        };
        for &b in bytes {
            if !in_request {
                if b == b'\r' || b == b'\n' {
                    continue;
                }
                in_request = true;
            }
            if b == b'\n' && (tail[1..] == [b'\n', b'\r'] || tail[2] == b'\n') {
                return Phase::Body;
            }
            tail = [tail[1], tail[2], b];
        }
        Phase::Head { tail, in_request }
    }

    /// Feeds `bytes`, cut at `cuts`, to a scanner and to its definition; the states must agree
    /// after every piece.
    fn same_in_pieces<S: Copy + PartialEq + std::fmt::Debug>(
        start: S,
        bytes: &[u8],
        cuts: Vec<usize>,
        fast: fn(S, &[u8]) -> S,
        slow: fn(S, &[u8]) -> S,
    ) -> Result<(), TestCaseError> {
        let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= bytes.len()).collect();
        cuts.sort_unstable();
        let (mut f, mut s) = (start, start);
        let mut at = 0;
        for end in cuts.into_iter().chain(std::iter::once(bytes.len())) {
            f = fast(f, &bytes[at..end]);
            s = slow(s, &bytes[at..end]);
            prop_assert_eq!(f, s);
            at = end;
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn same_as_byte_at_a_time(
            bytes in proptest::collection::vec(prop_oneof![
                Just(b'\r'), Just(b'\n'), Just(b'a'), Just(b' '), Just(b':')
            ], 0..40),
            cuts in proptest::collection::vec(0usize..40, 0..6),
        ) {
            same_in_pieces(Phase::Fresh, &bytes, cuts, scan, reference)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase_after(chunks: &[&[u8]]) -> Phase {
        chunks.iter().fold(Phase::Fresh, |p, c| scan(p, c))
    }

    #[test]
    fn finds_the_end_of_the_head_across_reads() {
        assert_eq!(
            phase_after(&[b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]),
            Phase::Body
        );
        assert_eq!(
            phase_after(&[b"GET / HTTP/1.1\r\n", b"Host: x\r", b"\n\r", b"\n"]),
            Phase::Body
        );
        assert_eq!(phase_after(&[b"GET / HTTP/1.1\n\n"]), Phase::Body);
        assert!(matches!(
            phase_after(&[b"GET / HTTP/1.1\r\nHost: x\r\n"]),
            Phase::Head {
                in_request: true,
                ..
            }
        ));
    }

    #[test]
    fn empty_lines_before_the_request_line_do_not_end_the_head() {
        for lead in [
            &b"\r\n\r\n"[..],
            b"\n\n",
            b"\r\n",
            b"\n",
            b"\r\r\n\n",
            b"\r\n\r\n\r\n\r\n\r\n\r\n",
        ] {
            assert_eq!(
                phase_after(&[lead]),
                Phase::Head {
                    tail: [0; 3],
                    in_request: false
                },
                "{lead:?}"
            );
            assert!(
                matches!(
                    phase_after(&[lead, b"GET / HTTP/1.1\r\n", b"Host: x\r\n"]),
                    Phase::Head {
                        in_request: true,
                        ..
                    }
                ),
                "{lead:?}"
            );
            // Byte by byte, too.
            let mut all = lead.to_vec();
            all.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n");
            let chunks: Vec<&[u8]> = all.chunks(1).collect();
            assert!(
                matches!(phase_after(&chunks), Phase::Head { .. }),
                "{lead:?}"
            );
            all.extend_from_slice(b"\r\n");
            let chunks: Vec<&[u8]> = all.chunks(1).collect();
            assert_eq!(phase_after(&chunks), Phase::Body, "{lead:?}");
        }
    }

    /// A stream over one end of an in-memory pipe, and the other end to write into.
    fn piped(limit: Duration) -> (DeadlineStream, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(4096);
        (DeadlineStream::new(Box::new(ours), limit, false), theirs)
    }

    async fn read_once(s: &mut DeadlineStream) -> std::io::Result<usize> {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        s.read(&mut buf).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_read_whole_starts_no_clock_and_a_partial_one_does() {
        use tokio::io::AsyncWriteExt;
        let limit = Duration::from_secs(5);
        let (mut s, mut client) = piped(limit);
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        client.write_all(head).await.unwrap();
        assert_eq!(read_once(&mut s).await.unwrap(), head.len());
        assert_eq!(s.phase, Phase::Body);
        assert!(!s.armed);
        assert!(s.timer.is_none(), "a whole head must not create a timer");

        // The next head, in two pieces: the clock starts at the first one's read and holds.
        s.phase = Phase::Fresh;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        read_once(&mut s).await.unwrap();
        assert!(s.armed);
        let started = Instant::now();
        let deadline = s.timer.as_ref().map(|t| t.deadline()).unwrap();
        assert_eq!(deadline, started + limit);
        tokio::time::advance(Duration::from_secs(2)).await;
        client.write_all(b"Host: x\r\n").await.unwrap();
        read_once(&mut s).await.unwrap();
        assert_eq!(s.timer.as_ref().map(|t| t.deadline()), Some(deadline));
        // Nothing more comes: the read fails at the deadline, not before.
        let err = tokio::time::timeout(limit, read_once(&mut s))
            .await
            .expect("the head deadline ends the read")
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(Instant::now(), deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_completed_in_time_stops_the_clock() {
        use tokio::io::AsyncWriteExt;
        let (mut s, mut client) = piped(Duration::from_secs(5));
        client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        read_once(&mut s).await.unwrap();
        assert!(s.armed);
        client.write_all(b"st: x\r\n\r\n").await.unwrap();
        read_once(&mut s).await.unwrap();
        assert_eq!(s.phase, Phase::Body);
        assert!(!s.armed);
        // Long past the deadline, a body read still waits for its bytes.
        tokio::time::advance(Duration::from_secs(60)).await;
        client.write_all(b"body").await.unwrap();
        assert_eq!(read_once(&mut s).await.unwrap(), 4);
    }
}
