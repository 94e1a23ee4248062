//! A raw HTTP/1.1 client: one-shot requests, raw exchanges, keep-alive connections, and the
//! response reader the echo upstream shares.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Reads header lines up to the blank line; an early end of stream is an error.
pub(super) fn read_headers(r: &mut impl BufRead) -> std::io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            return Ok(headers);
        }
        let (k, v) = h.split_once(':').unwrap_or((h, ""));
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
}

/// Reads a chunked or Content-Length body; `None` when the message has neither.
pub(super) fn read_framed_body(
    r: &mut impl BufRead,
    headers: &[(String, String)],
) -> std::io::Result<Option<Vec<u8>>> {
    if header_value(headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            if r.read_line(&mut size)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(std::io::Error::other)?;
            if n == 0 {
                let mut end = String::new();
                r.read_line(&mut end)?;
                return Ok(Some(body));
            }
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk[..n]);
        }
    }
    match header_value(headers, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        Some(n) => {
            let mut body = vec![0u8; n];
            r.read_exact(&mut body)?;
            Ok(Some(body))
        }
        None => Ok(None),
    }
}

/// Reads one HTTP/1.1 response from a buffered stream.
pub fn read_response(r: &mut impl BufRead, head_request: bool) -> std::io::Result<Resp> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let headers = read_headers(r)?;
    let body = if head_request || status == 204 || status == 304 || status / 100 == 1 {
        Vec::new()
    } else {
        match read_framed_body(r, &headers)? {
            Some(body) => body,
            None => {
                let mut body = Vec::new();
                r.read_to_end(&mut body)?;
                body
            }
        }
    };
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// Sends raw bytes and returns everything the server answered until it closed (or timeout).
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    try_raw_exchange(addr, bytes, timeout).unwrap()
}

/// `raw_exchange`, or the error when the connection cannot be made or written (a server that
/// is being killed).
pub fn try_raw_exchange(
    addr: SocketAddr,
    bytes: &[u8],
    timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(bytes)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    Ok(out)
}

/// The bytes of an HTTP/1.1 request that closes its connection, with `Content-Length` for a body.
pub fn one_shot_request(
    host: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    bytes
}

/// One request on a fresh connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let bytes = one_shot_request("gateway", method, target, headers, body);
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    (&s).write_all(&bytes).unwrap();
    let mut r = BufReader::new(s);
    read_response(&mut r, method == "HEAD").unwrap()
}

/// A keep-alive HTTP/1.1 connection for many requests in a row.
pub struct KeepAlive {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl KeepAlive {
    pub fn connect(addr: SocketAddr) -> KeepAlive {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        KeepAlive {
            writer: s.try_clone().unwrap(),
            reader: BufReader::new(s),
        }
    }

    pub fn send(&mut self, method: &str, target: &str, headers: &[(&str, &str)]) -> Resp {
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: gateway\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.writer.write_all(req.as_bytes()).unwrap();
        read_response(&mut self.reader, method == "HEAD").unwrap()
    }
}

/// Splits a raw exchange into responses: (status, headers, body) of each, in order.
pub fn parse_responses(mut bytes: &[u8]) -> Vec<Resp> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut r = BufReader::new(bytes);
        match read_response(&mut r, false) {
            Ok(resp) => {
                let remaining = r.buffer().len() + r.get_ref().len();
                out.push(resp);
                bytes = &bytes[bytes.len() - remaining..];
            }
            Err(_) => break,
        }
    }
    out
}
