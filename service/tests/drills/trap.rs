//! A TCP relay between the writer and ClickHouse that can stop the writer's next
//! INSERT at a chosen point, so that `writer-kill` kills the writer exactly there.
//!
//! Watching `system.processes` for a running INSERT and freezing the writer is a race
//! the drill can lose: a small INSERT may start and end between two polls. The relay
//! sees every INSERT's bytes, so once armed it cannot miss the next one.
//!
//! It knows just enough HTTP/1.1 for the writer's client: on a connection, requests
//! and responses alternate (no pipelining, no `Expect: 100-continue`), so the first
//! client bytes after a response start the next request, and its request line names
//! the statement (`?query=INSERT+INTO+processed_envelopes...`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Where the armed relay stops the next INSERT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// ClickHouse gets the request line and headers, never the body: the INSERT
    /// cannot commit.
    BeforeBody,
    /// ClickHouse gets the whole request and answers; the answer is held back, so the
    /// writer never learns the outcome and never acknowledges.
    BeforeAnswer,
}

/// What the armed relay stopped.
#[derive(Debug, Clone, Copy)]
pub struct Caught {
    /// ClickHouse answered 200 without an exception: the rows are committed.
    pub committed: bool,
}

struct Armed {
    cut: Cut,
    caught: oneshot::Sender<Caught>,
}

pub struct InsertTrap {
    port: u16,
    armed: Arc<Mutex<Option<Armed>>>,
    accepting: JoinHandle<()>,
}

impl InsertTrap {
    /// Listens on a free local port and relays every connection to `upstream`.
    pub async fn start(upstream: SocketAddr, table: &'static str) -> anyhow::Result<InsertTrap> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the INSERT trap's port")?;
        let port = listener.local_addr()?.port();
        let armed = Arc::new(Mutex::new(None));
        let shared = Arc::clone(&armed);
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let armed = Arc::clone(&shared);
                tokio::spawn(async move {
                    // A relay error only ends that connection; the writer sees a
                    // dropped connection, as it would with ClickHouse itself.
                    let _ = relay(client, upstream, table, armed).await;
                });
            }
        });
        Ok(InsertTrap {
            port,
            armed,
            accepting,
        })
    }

    /// The URL to give the writer instead of ClickHouse's.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The next INSERT into the table, on any connection, is stopped at `cut`; the
    /// receiver learns when that has happened.
    pub fn arm(&self, cut: Cut) -> oneshot::Receiver<Caught> {
        let (caught, receiver) = oneshot::channel();
        *self.armed.lock().expect("trap lock") = Some(Armed { cut, caught });
        receiver
    }
}

impl Drop for InsertTrap {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// The request on a connection, as far as the relay cares.
enum Request {
    /// Its request line has not fully arrived; its bytes wait in `pending`.
    Unread,
    /// Relayed both ways untouched.
    Plain,
    /// A trapped INSERT whose body is withheld; the sender is spent once the head
    /// went through.
    BodyWithheld(Option<oneshot::Sender<Caught>>),
    /// A trapped INSERT whose answer is withheld; the sender is spent at the answer.
    AnswerWithheld(Option<oneshot::Sender<Caught>>),
}

async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    table: &str,
    armed: Arc<Mutex<Option<Armed>>>,
) -> anyhow::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    let (mut client_in, mut client_out) = client.into_split();
    let (mut server_in, mut server_out) = server.into_split();
    let mut from_client = vec![0u8; 64 * 1024];
    let mut from_server = vec![0u8; 64 * 1024];
    let mut request = Request::Unread;
    let mut pending = Vec::new();
    loop {
        tokio::select! {
            read = client_in.read(&mut from_client) => {
                let n = read?;
                if n == 0 {
                    // The writer closed or died: so does its connection to ClickHouse,
                    // which then sees any withheld body end short.
                    return Ok(());
                }
                let bytes = &from_client[..n];
                match &mut request {
                    Request::Plain | Request::AnswerWithheld(_) => server_out.write_all(bytes).await?,
                    Request::BodyWithheld(None) => {}
                    Request::BodyWithheld(Some(_)) | Request::Unread => pending.extend_from_slice(bytes),
                }
                if matches!(request, Request::Unread) {
                    let Some(line_end) = find(&pending, b"\r\n") else { continue };
                    request = match take_if_insert(&pending[..line_end], table, &armed) {
                        None => Request::Plain,
                        Some(Armed { cut: Cut::BeforeBody, caught }) => Request::BodyWithheld(Some(caught)),
                        Some(Armed { cut: Cut::BeforeAnswer, caught }) => Request::AnswerWithheld(Some(caught)),
                    };
                    if !matches!(request, Request::BodyWithheld(_)) {
                        server_out.write_all(&pending).await?;
                        pending.clear();
                    }
                }
                if let Request::BodyWithheld(caught @ Some(_)) = &mut request
                    && let Some(head_end) = find(&pending, b"\r\n\r\n")
                {
                    server_out.write_all(&pending[..head_end + 4]).await?;
                    pending.clear();
                    if let Some(caught) = caught.take() {
                        let _ = caught.send(Caught { committed: false });
                    }
                }
            }
            read = server_in.read(&mut from_server) => {
                let n = read?;
                if n == 0 {
                    return Ok(());
                }
                let bytes = &from_server[..n];
                match &mut request {
                    Request::AnswerWithheld(caught) => {
                        if let Some(caught) = caught.take() {
                            let _ = caught.send(Caught { committed: is_success(bytes) });
                        }
                    }
                    Request::BodyWithheld(_) => {}
                    Request::Plain | Request::Unread => {
                        client_out.write_all(bytes).await?;
                        // Requests and answers alternate: the client's next bytes are
                        // a new request.
                        request = Request::Unread;
                        pending.clear();
                    }
                }
            }
        }
    }
}

/// The armed trap, if `request_line` is an INSERT into `table`.
fn take_if_insert(request_line: &[u8], table: &str, armed: &Mutex<Option<Armed>>) -> Option<Armed> {
    let is_insert = request_line.starts_with(b"POST ")
        && find(request_line, b"INSERT").is_some()
        && find(request_line, table.as_bytes()).is_some();
    if is_insert {
        armed.lock().expect("trap lock").take()
    } else {
        None
    }
}

/// A 200 status line, and no exception announced in the headers that came with it.
fn is_success(answer: &[u8]) -> bool {
    let status_ok = answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.0 200");
    let head_end = find(answer, b"\r\n\r\n").unwrap_or(answer.len());
    let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
    status_ok && !head.contains("x-clickhouse-exception-code")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
