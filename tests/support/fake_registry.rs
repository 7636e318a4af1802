//! A scripted HTTP server for registry tests that docker-registry cannot play: hostile
//! registries (oversized or endless bodies) and mirrors that must never see credentials.
//!
//! Plain threads over std TCP on 127.0.0.1:<free port>, one request per connection
//! (`Connection: close`). [`FakeRegistry::start`] takes a handler from the request to a
//! [`Reply`]; every request is recorded with its headers ([`FakeRegistry::requests`]).
//! Bodies are written close-delimited (no Content-Length) unless the reply says otherwise,
//! so a client cannot rely on the header to stop; a [`Reply::Endless`] body is generated
//! until the client goes away. Dropping the server stops its accept loop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }
}

/// What to answer.
pub enum Reply {
    /// Status, extra headers, body (close-delimited).
    Full(u16, Vec<(String, String)>, Vec<u8>),
    /// 200 with `Content-Type` and a body of `len` bytes of `b'x'` (close-delimited): never
    /// held in memory.
    Endless { content_type: String, len: u64 },
}

impl Reply {
    pub fn json(body: &[u8], media_type: &str) -> Reply {
        Reply::Full(
            200,
            vec![("Content-Type".into(), media_type.into())],
            body.to_vec(),
        )
    }

    pub fn status(code: u16) -> Reply {
        Reply::Full(code, Vec::new(), Vec::new())
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

pub struct FakeRegistry {
    /// `127.0.0.1:PORT`
    pub addr: String,
    log: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl FakeRegistry {
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake registry");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr").to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (l2, s2) = (log.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (l, h) = (l2.clone(), handler.clone());
                        std::thread::spawn(move || serve(conn, &l, &*h));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeRegistry {
            addr,
            log,
            stop,
            accept: Some(accept),
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn serve(conn: TcpStream, log: &Mutex<Vec<Request>>, handler: &Handler) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_owned(),
        parts.next().unwrap_or("").to_owned(),
    );
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let req = Request {
        method,
        path,
        headers,
    };
    log.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(req.clone());
    let mut out = conn;
    let reason = |c: u16| match c {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Status",
    };
    match handler(&req) {
        Reply::Full(code, hs, body) => {
            let mut head = format!("HTTP/1.1 {code} {}\r\nConnection: close\r\n", reason(code));
            for (n, v) in hs {
                head.push_str(&format!("{n}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let _ = out.write_all(head.as_bytes());
            let _ = out.write_all(&body);
        }
        Reply::Endless { content_type, len } => {
            let head =
                format!("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: {content_type}\r\n\r\n");
            if out.write_all(head.as_bytes()).is_err() {
                return;
            }
            let chunk = vec![b'x'; 64 << 10];
            let mut left = len;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                if out.write_all(&chunk[..n]).is_err() {
                    return;
                }
                left -= n as u64;
            }
        }
    }
    let _ = out.flush();
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
    }
}
