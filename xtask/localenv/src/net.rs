//! Just enough HTTP and NATS protocol to health-check local endpoints without
//! pulling an async runtime into xtask.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A port the OS considers free right now, never one this process handed out
/// before: a child (chDB takes seconds to boot) binds its port only later, and in
/// that window the OS may offer the same port again, to a test running alongside.
pub fn free_port() -> anyhow::Result<u16> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    // Repeats stay bound until a new port turns up, so that the OS offers another.
    let mut repeats = Vec::new();
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").context("asking the OS for a free port")?;
        let port = listener.local_addr()?.port();
        if handed_out.insert(port) {
            return Ok(port);
        }
        repeats.push(listener);
        if repeats.len() > 100 {
            bail!("the OS offered only ports this process already uses");
        }
    }
}

pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// POSTs `body` to `http://127.0.0.1:{port}{path_and_query}`.
pub fn http_post(port: u16, path_and_query: &str, body: &str) -> anyhow::Result<HttpResponse> {
    http_request(port, "POST", path_and_query, body)
}

pub fn http_get(port: u16, path_and_query: &str) -> anyhow::Result<HttpResponse> {
    http_request(port, "GET", path_and_query, "")
}

fn http_request(port: u16, method: &str, path: &str, body: &str) -> anyhow::Result<HttpResponse> {
    let mut stream = connect(("127.0.0.1", port))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .context("reading the HTTP response")?;
    parse_http_response(&raw)
}

fn parse_http_response(raw: &[u8]) -> anyhow::Result<HttpResponse> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("HTTP response without a status code")?;
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok(HttpResponse { status, body })
}

fn dechunk(mut rest: &str) -> anyhow::Result<String> {
    let mut body = String::new();
    loop {
        let (size_line, after) = rest.split_once("\r\n").context("truncated chunked body")?;
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .context("bad chunk size")?;
        if size == 0 {
            return Ok(body);
        }
        body.push_str(after.get(..size).context("truncated chunk")?);
        rest = after.get(size + 2..).context("truncated chunk")?;
    }
}

fn connect(addr: impl ToSocketAddrs) -> anyhow::Result<TcpStream> {
    let addr = addr.to_socket_addrs()?.next().context("no address")?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// Connects to nats-server and asks JetStream for the account info, which only
/// answers once JetStream is enabled and ready.
pub fn nats_jetstream_ready(port: u16) -> anyhow::Result<()> {
    let stream = connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .context("reading the NATS INFO line")?;
    if !line.starts_with("INFO ") {
        bail!("not a NATS server: {line:?}");
    }
    writer.write_all(
        b"CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"xtask-probe\"}\r\n\
          SUB _INBOX.xtask-probe 1\r\n\
          PUB $JS.API.INFO _INBOX.xtask-probe 0\r\n\r\n",
    )?;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("NATS closed the connection");
        }
        if line.starts_with("PING") {
            writer.write_all(b"PONG\r\n")?;
        } else if line.starts_with("-ERR") {
            bail!("NATS refused the probe: {}", line.trim());
        } else if let Some(header) = line.strip_prefix("MSG ") {
            let size: usize = header
                .split_whitespace()
                .last()
                .and_then(|size| size.parse().ok())
                .context("malformed MSG line")?;
            let mut payload = vec![0; size + 2];
            reader.read_exact(&mut payload)?;
            let payload = String::from_utf8_lossy(&payload[..size]);
            if payload.contains("\"error\"") {
                bail!("JetStream is not ready: {payload}");
            }
            return Ok(());
        }
    }
}

/// Polls `check` until it succeeds or `timeout` passes, returning the last error.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(20);
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(err) if Instant::now() >= deadline => {
                return Err(err.context(format!("{what} did not become ready within {timeout:?}")));
            }
            Err(_) => {
                // Backing off between polls; this is the wait-on-condition loop itself.
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(500));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_never_hands_out_a_port_twice() {
        let ports: Vec<u16> = (0..500).map(|_| free_port().unwrap()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
    }

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain =
            parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nOk.\n").unwrap();
        assert_eq!((plain.status, plain.body.as_str()), (200, "Ok.\n"));

        let chunked = parse_http_response(
            b"HTTP/1.1 500 Internal\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nCode:\r\n3\r\n 60\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((chunked.status, chunked.body.as_str()), (500, "Code: 60"));
    }

    #[test]
    fn wait_until_returns_the_last_error_after_the_deadline() {
        let mut calls = 0;
        let err = wait_until(
            "never",
            Duration::from_millis(50),
            || -> anyhow::Result<()> {
                calls += 1;
                bail!("attempt {calls}")
            },
        )
        .unwrap_err();
        assert!(calls >= 2);
        assert!(
            format!("{err:#}").contains("never did not become ready"),
            "{err:#}"
        );
    }
}
