//! A registry token-auth front (Docker's token flow) for tests, on 127.0.0.1:<free port>:
//!
//! - `GET /token?service=test&scope=…` with `Authorization: Basic <user:password>` answers
//!   `{"token": T, "access_token": T}`; other credentials get 401.
//! - Any other request with `Authorization: Bearer T` is forwarded to the upstream registry
//!   (one request per connection: `Connection: close` both ways, so every request is checked).
//! - Anything else gets 401 with
//!   `WWW-Authenticate: Bearer realm="http://ADDR/token",service="test",scope="repository:R:pull"`.
//!
//! Plain threads over std TCP; [`TokenAuth::requests`] records `METHOD PATH -> STATUS` lines.
//! Dropping it stops the accept loop (its threads end with their connections).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The bearer token the front hands out.
pub const TOKEN: &str = "taskd-test-token-0123456789";
/// The `service` of the challenge.
pub const SERVICE: &str = "test";

pub struct TokenAuth {
    /// `127.0.0.1:PORT`: pull from `ADDR/repo:tag`.
    pub addr: String,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

struct Front {
    addr: String,
    upstream: String,
    basic: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl TokenAuth {
    /// A front for the registry at `upstream` (`127.0.0.1:PORT`) that gives tokens for
    /// `user`/`password`.
    pub fn start(upstream: &str, user: &str, password: &str) -> TokenAuth {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token front");
        let addr = listener.local_addr().expect("local addr").to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let front = Arc::new(Front {
            addr: addr.clone(),
            upstream: upstream.to_owned(),
            basic: format!("Basic {}", base64(format!("{user}:{password}").as_bytes())),
            log: log.clone(),
        });
        let stopping = stop.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let front = front.clone();
                std::thread::spawn(move || front.serve(conn));
            }
        });
        TokenAuth {
            addr,
            log,
            stop,
            accept: Some(accept),
        }
    }

    /// `METHOD PATH -> STATUS` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for TokenAuth {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // wake the accept loop
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// One parsed request head.
struct Head {
    method: String,
    path: String,
    /// (name, value) as sent.
    headers: Vec<(String, String)>,
    /// Bytes read past the head (start of the body).
    rest: Vec<u8>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_head(conn: &mut TcpStream) -> Option<Head> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Some(Head {
        method,
        path,
        headers,
        rest: buf[end + 4..].to_vec(),
    })
}

impl Front {
    fn record(&self, head: &Head, status: u16) {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(format!("{} {} -> {status}", head.method, head.path));
    }

    fn respond(&self, conn: &mut TcpStream, head: &Head, status: u16, extra: &str, body: &str) {
        self.record(head, status);
        let reason = match status {
            200 => "OK",
            401 => "Unauthorized",
            _ => "Bad Gateway",
        };
        let _ = write!(
            conn,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
            body.len()
        );
    }

    fn serve(&self, mut conn: TcpStream) {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
        let Some(head) = read_head(&mut conn) else {
            return;
        };
        let auth = head.header("authorization").unwrap_or_default().to_owned();
        if head.path.starts_with("/token") {
            if auth == self.basic {
                let body = format!(r#"{{"token":"{TOKEN}","access_token":"{TOKEN}","expires_in":300}}"#);
                self.respond(&mut conn, &head, 200, "", &body);
            } else {
                let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#;
                self.respond(&mut conn, &head, 401, "", body);
            }
            return;
        }
        if auth != format!("Bearer {TOKEN}") {
            let scope = repository(&head.path)
                .map(|r| format!(",scope=\"repository:{r}:pull\""))
                .unwrap_or_default();
            let challenge = format!(
                "WWW-Authenticate: Bearer realm=\"http://{}/token\",service=\"{SERVICE}\"{scope}\r\n",
                self.addr
            );
            let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
            self.respond(&mut conn, &head, 401, &challenge, body);
            return;
        }
        self.forward(conn, head);
    }

    /// Sends the request upstream (without the token, with `Connection: close`) and copies
    /// the whole answer back.
    fn forward(&self, mut conn: TcpStream, head: Head) {
        let Ok(mut up) = TcpStream::connect(&self.upstream) else {
            self.respond(&mut conn, &head, 502, "", "");
            return;
        };
        let mut req = format!("{} {} HTTP/1.1\r\n", head.method, head.path);
        for (n, v) in &head.headers {
            if n.eq_ignore_ascii_case("connection") || n.eq_ignore_ascii_case("authorization") {
                continue;
            }
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("Connection: close\r\n\r\n");
        let body_len: usize = head
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if up.write_all(req.as_bytes()).is_err() || up.write_all(&head.rest).is_err() {
            return;
        }
        if body_len > head.rest.len() {
            let mut body = (&mut conn).take((body_len - head.rest.len()) as u64);
            if std::io::copy(&mut body, &mut up).is_err() {
                return;
            }
        }
        let mut first = [0u8; 12];
        let mut status = 0;
        if up.read_exact(&mut first).is_ok() {
            status = String::from_utf8_lossy(&first[9..12]).parse().unwrap_or(0);
            let _ = conn.write_all(&first);
        }
        let _ = std::io::copy(&mut up, &mut conn);
        self.record(&head, status);
        let _ = conn.shutdown(std::net::Shutdown::Both);
    }
}

/// The repository of a `/v2/<repo>/(manifests|blobs|tags)/…` path.
fn repository(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v2/")?;
    let rest = rest.split('?').next()?;
    ["/manifests/", "/blobs/", "/tags/"]
        .iter()
        .find_map(|k| rest.find(k).map(|i| rest[..i].to_owned()))
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
