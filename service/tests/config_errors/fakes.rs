//! Fake servers with just enough protocol for the writer's start-up to get past
//! them, so that the unreachable-server cases need no infrastructure and fail on the
//! one server that is really missing.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};

/// Answers the NATS client protocol's handshake: INFO, then PONG to every PING.
pub struct FakeNats {
    port: u16,
}

impl FakeNats {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || serve_nats(stream));
            }
        });
        Self { port }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

fn serve_nats(mut stream: TcpStream) {
    let info = r#"INFO {"server_id":"fake","server_name":"fake","version":"2.10.0","proto":1,"host":"127.0.0.1","port":4222,"headers":true,"max_payload":1048576,"jetstream":true}"#;
    if stream.write_all(format!("{info}\r\n").as_bytes()).is_err() {
        return;
    }
    let Ok(reader) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(reader).lines() {
        let Ok(line) = line else { return };
        if line.trim().eq_ignore_ascii_case("PING") && stream.write_all(b"PONG\r\n").is_err() {
            return;
        }
    }
}

/// Answers every HTTP request with one row of one `UInt8` column in
/// RowBinaryWithNamesAndTypes: what `SELECT 1` returns.
pub struct FakeClickHouse {
    port: u16,
}

impl FakeClickHouse {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || serve_clickhouse(stream));
            }
        });
        Self { port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn serve_clickhouse(stream: TcpStream) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    // Requests on one keep-alive connection, one after another.
    while read_http_request(&mut reader).is_some() {
        // 1 column named "1" of type UInt8, then the row: 1.
        let body = b"\x01\x011\x05UInt8\x01";
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(body).is_err() {
            return;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

/// Reads one request (head and body, by Content-Length or chunked); `None` at the end of
/// the connection.
fn read_http_request(reader: &mut BufReader<TcpStream>) -> Option<()> {
    let mut content_length = 0usize;
    let mut chunked = false;
    let mut first = true;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            if first {
                continue;
            }
            break;
        }
        first = false;
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse().ok()?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
    }
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                return Some(());
            }
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).ok()?;
    Some(())
}
