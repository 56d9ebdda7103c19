//! Health checks and test queries against local endpoints, without an async
//! runtime in xtask: HTTP through ureq (plain HTTP/1.1 on loopback, no TLS), and
//! just enough of the NATS protocol to ask JetStream whether it is ready.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const IO_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

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

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// POSTs `body` to `http://127.0.0.1:{port}{path_and_query}`.
pub fn http_post(port: u16, path_and_query: &str, body: &str) -> anyhow::Result<HttpResponse> {
    http_post_with_headers(port, path_and_query, &[], body)
}

/// [`http_post`] with request headers, for example ClickHouse's
/// `X-ClickHouse-User`/`X-ClickHouse-Key`, which carry credentials without the
/// URL encoding a query string would need (and without them in the URL an error quotes).
pub fn http_post_with_headers(
    port: u16,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<HttpResponse> {
    let url = format!("http://127.0.0.1:{port}{path_and_query}");
    let mut request = agent().post(&url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send(body).with_context(|| format!("POST {url}"))?;
    read_response(response, &url)
}

/// GETs `http://127.0.0.1:{port}{path_and_query}`.
pub fn http_get(port: u16, path_and_query: &str) -> anyhow::Result<HttpResponse> {
    let url = format!("http://127.0.0.1:{port}{path_and_query}");
    let response = agent()
        .get(&url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    read_response(response, &url)
}

/// Probes and test queries against loopback servers: any status is an answer (the
/// caller judges it), no proxy from the environment, and no kept-alive connection,
/// since the servers probed are stopped and restarted on the same port.
fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_idle_connections(0)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_per_read(Some(IO_TIMEOUT))
            .timeout_per_write(Some(IO_TIMEOUT))
            .build()
            .into()
    })
}

fn read_response(
    mut response: ureq::http::Response<ureq::Body>,
    url: &str,
) -> anyhow::Result<HttpResponse> {
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading the response of {url}"))?;
    Ok(HttpResponse { status, body })
}

fn connect(addr: impl ToSocketAddrs) -> anyhow::Result<TcpStream> {
    let addr = addr.to_socket_addrs()?.next().context("no address")?;
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
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

/// How long a started NATS or ClickHouse process may take to answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

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

    /// Serves one canned response on a loopback port and returns the request it got.
    fn serve_once(response: &'static str) -> (u16, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let mut content_length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(length) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    content_length = length.trim().parse().unwrap();
                }
                request.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; content_length];
            reader.read_exact(&mut body).unwrap();
            request.push_str(&String::from_utf8(body).unwrap());
            (&stream).write_all(response.as_bytes()).unwrap();
            request
        });
        (port, server)
    }

    #[test]
    fn an_error_status_is_an_answer_and_chunked_bodies_are_joined() {
        let (port, server) = serve_once(
            "HTTP/1.1 500 Internal\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
             5\r\nCode:\r\n3\r\n 60\r\n0\r\n\r\n",
        );
        let response = http_post(port, "/?query=x", "SELECT 1").unwrap();
        assert_eq!((response.status, response.body.as_str()), (500, "Code: 60"));
        let request = server.join().unwrap();
        assert!(
            request.starts_with("POST /?query=x HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.ends_with("\r\n\r\nSELECT 1"), "{request}");
    }

    #[test]
    fn a_plain_response_is_read_whole() {
        let (port, server) =
            serve_once("HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nOk.\n");
        let response = http_get(port, "/ping").unwrap();
        assert_eq!((response.status, response.body.as_str()), (200, "Ok.\n"));
        assert!(server.join().unwrap().starts_with("GET /ping HTTP/1.1\r\n"));
    }

    #[test]
    fn nothing_listening_is_an_error_naming_the_url() {
        let port = free_port().unwrap();
        let err = http_get(port, "/readyz").unwrap_err();
        assert!(format!("{err:#}").contains(&format!("GET http://127.0.0.1:{port}/readyz")));
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
