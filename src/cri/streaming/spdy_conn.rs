//! A server-side SPDY/3.1 connection: the reader half turns frames into streams and
//! routes their data; the writer half ([`write_loop`]) sends what sessions queue.
//!
//! ```text
//! client SYN_STREAM(id odd, > last) ──▶ SYN_REPLY queued first, then the Stream is handed
//!                                      out (id, headers, inbound rx, outbound Sink)
//!        SYN_STREAM (even / not increasing) ──▶ RST_STREAM PROTOCOL_ERROR, ignored
//!        DATA ──▶ the stream's bounded queue (the reader waits: backpressure via TCP);
//!                 FIN closes the queue (the session reads EOF)
//!        RST_STREAM ──▶ the queue closes;  PING (odd id) ──▶ echoed;  GOAWAY / EOF ──▶ end
//!        SETTINGS, WINDOW_UPDATE, HEADERS, unknown types ──▶ ignored (spdystream does not
//!                 do flow control: waiting for window updates would stall it)
//! writer: frames in queue order; when every sender is gone: GOAWAY, flush, shutdown
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::conn::{Activity, IN_QUEUE, Out, Sink};
use super::spdy::{self, Decoder, Encoder, FLAG_FIN, Frame, FrameError, Headers};

/// A stream the client opened.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    /// What the client sends on it; closed at its FIN or RST_STREAM.
    pub rx: mpsc::Receiver<Bytes>,
    pub sink: Sink,
}

impl Stream {
    pub fn header(&self, name: &str) -> Option<&str> {
        spdy::header(&self.headers, name)
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("read: {0}")]
    Io(#[from] std::io::Error),
}

/// The reader half.
pub struct SpdyConn<R> {
    reader: R,
    buf: BytesMut,
    decoder: Decoder,
    routes: HashMap<u32, mpsc::Sender<Bytes>>,
    last_id: Arc<AtomicU32>,
    out: mpsc::Sender<Out>,
    activity: Activity,
}

impl<R: AsyncRead + Unpin> SpdyConn<R> {
    pub fn new(reader: R, out: mpsc::Sender<Out>, activity: Activity, last_id: Arc<AtomicU32>) -> Self {
        SpdyConn {
            reader,
            buf: BytesMut::with_capacity(64 * 1024),
            decoder: Decoder::default(),
            routes: HashMap::new(),
            last_id,
            out,
            activity,
        }
    }

    /// The writer queue (to reset streams, for instance).
    pub fn out(&self) -> &mpsc::Sender<Out> {
        &self.out
    }

    /// Reads until the client opens a stream (returned) or the connection ends (None).
    /// Not cancel-safe while routing data; callers drop it only when the session ends.
    pub async fn next_stream(&mut self) -> Result<Option<Stream>, ConnError> {
        loop {
            while let Some(frame) = self.decoder.decode(&mut self.buf)? {
                match self.handle(frame).await {
                    Handled::Stream(s) => return Ok(Some(s)),
                    Handled::End => return Ok(None),
                    Handled::Continue => {}
                }
            }
            // Room for one more read; the decoder never keeps more than a piece.
            self.buf.reserve(64 * 1024);
            let n = self.reader.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Ok(None);
            }
            self.activity.touch();
        }
    }

    async fn handle(&mut self, frame: Frame) -> Handled {
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => {
                let last = self.last_id.load(Ordering::Relaxed);
                if stream_id % 2 == 0 || stream_id <= last {
                    let _ = self
                        .out
                        .send(Out::Reset(stream_id, spdy::RST_PROTOCOL_ERROR))
                        .await;
                    return Handled::Continue;
                }
                self.last_id.store(stream_id, Ordering::Relaxed);
                if self.out.send(Out::Reply(stream_id)).await.is_err() {
                    return Handled::End;
                }
                let (tx, rx) = mpsc::channel(IN_QUEUE);
                if flags & FLAG_FIN == 0 {
                    self.routes.insert(stream_id, tx);
                }
                Handled::Stream(Stream {
                    id: stream_id,
                    headers,
                    rx,
                    sink: Sink::new(stream_id, self.out.clone()),
                })
            }
            Frame::Data { stream_id, fin, data } => {
                if let Some(tx) = self.routes.get(&stream_id)
                    && !data.is_empty()
                    && tx.send(data).await.is_err()
                {
                    // The session stopped reading this stream: drop what comes.
                    self.routes.remove(&stream_id);
                }
                if fin {
                    self.routes.remove(&stream_id);
                }
                Handled::Continue
            }
            Frame::RstStream { stream_id, .. } => {
                self.routes.remove(&stream_id);
                Handled::Continue
            }
            Frame::Ping(id) => {
                // Odd ids are the client's pings (ours would be even): echo them.
                if id % 2 == 1 && self.out.send(Out::Ping(id)).await.is_err() {
                    return Handled::End;
                }
                Handled::Continue
            }
            Frame::GoAway { .. } => Handled::End,
            Frame::SynReply { .. }
            | Frame::Headers { .. }
            | Frame::Settings(_)
            | Frame::WindowUpdate { .. }
            | Frame::Unknown(_) => Handled::Continue,
        }
    }
}

enum Handled {
    Stream(Stream),
    End,
    Continue,
}

/// Writes what the sessions queue, in order, until every sender is gone; then GOAWAY and
/// shutdown. A write error ends it (the senders then see the connection gone).
pub async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Out>,
    activity: Activity,
    last_id: Arc<AtomicU32>,
) -> std::io::Result<()> {
    let mut enc = Encoder::default();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let encode = |enc: &mut Encoder, buf: &mut BytesMut, m: Out| -> std::io::Result<()> {
        let frame = match m {
            Out::Data(id, data) => Frame::Data {
                stream_id: id,
                fin: false,
                data,
            },
            Out::Close(id) => Frame::Data {
                stream_id: id,
                fin: true,
                data: Bytes::new(),
            },
            Out::Reset(id, status) => Frame::RstStream {
                stream_id: id,
                status,
            },
            Out::Reply(id) => Frame::SynReply {
                stream_id: id,
                flags: 0,
                headers: Vec::new(),
            },
            Out::Ping(id) => Frame::Ping(id),
        };
        enc.encode(&frame, buf).map_err(std::io::Error::other)
    };
    while let Some(m) = rx.recv().await {
        encode(&mut enc, &mut buf, m)?;
        // Batch what is already queued into one write.
        while buf.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(m) => encode(&mut enc, &mut buf, m)?,
                Err(_) => break,
            }
        }
        w.write_all(&buf).await?;
        w.flush().await?;
        buf.clear();
        activity.touch();
    }
    enc.encode(
        &Frame::GoAway {
            last_good: last_id.load(Ordering::Relaxed),
            status: 0,
        },
        &mut buf,
    )
    .map_err(std::io::Error::other)?;
    w.write_all(&buf).await?;
    w.flush().await?;
    w.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's bytes: frames encoded with the client's own compression context.
    fn client_bytes(frames: &[Frame]) -> Vec<u8> {
        let mut enc = Encoder::default();
        let mut buf = BytesMut::new();
        for f in frames {
            enc.encode(f, &mut buf).unwrap();
        }
        buf.to_vec()
    }

    fn syn(id: u32, kind: &str, flags: u8) -> Frame {
        Frame::SynStream {
            stream_id: id,
            associated: 0,
            priority: 0,
            flags,
            headers: vec![("streamtype".into(), kind.into())],
        }
    }

    #[tokio::test]
    async fn streams_data_fin_ping_and_bad_ids() {
        let bytes = client_bytes(&[
            syn(1, "error", 0),
            syn(3, "stdin", 0),
            Frame::Data {
                stream_id: 3,
                fin: false,
                data: Bytes::from_static(b"abc"),
            },
            Frame::Ping(5),
            Frame::WindowUpdate {
                stream_id: 3,
                delta: 10,
            },
            Frame::Data {
                stream_id: 3,
                fin: true,
                data: Bytes::new(),
            },
            syn(2, "stdout", 0),
            syn(3, "stdout", 0),
        ]);
        let (tx, mut out) = mpsc::channel(16);
        let mut conn = SpdyConn::new(&bytes[..], tx, Activity::default(), Arc::default());
        let e = conn.next_stream().await.unwrap().unwrap();
        assert_eq!((e.id, e.header("streamtype")), (1, Some("error")));
        let mut stdin = conn.next_stream().await.unwrap().unwrap();
        assert_eq!(stdin.id, 3);
        assert!(conn.next_stream().await.unwrap().is_none(), "EOF ends it");
        assert_eq!(stdin.rx.recv().await.unwrap(), Bytes::from_static(b"abc"));
        assert!(stdin.rx.recv().await.is_none(), "FIN closes the queue");
        let mut got = Vec::new();
        while let Ok(m) = out.try_recv() {
            got.push(format!("{m:?}"));
        }
        assert_eq!(
            got,
            ["Reply(1)", "Reply(3)", "Ping(5)", "Reset(2, 1)", "Reset(3, 1)"]
        );
    }

    #[tokio::test]
    async fn a_malformed_frame_ends_the_connection_with_an_error() {
        let mut bytes = client_bytes(&[syn(1, "error", 0)]);
        bytes.extend_from_slice(&[0x80, 0x03, 0x00, 0x03, 0, 0, 0, 1, 0]);
        let (tx, _out) = mpsc::channel(16);
        let mut conn = SpdyConn::new(&bytes[..], tx, Activity::default(), Arc::default());
        assert!(conn.next_stream().await.unwrap().is_some());
        assert!(matches!(conn.next_stream().await, Err(ConnError::Frame(_))));
    }

    #[tokio::test]
    async fn the_writer_replies_sends_data_and_goes_away() {
        let (tx, rx) = mpsc::channel(16);
        let (client, server) = tokio::io::duplex(1 << 20);
        tx.send(Out::Reply(1)).await.unwrap();
        tx.send(Out::Data(1, Bytes::from_static(b"out"))).await.unwrap();
        tx.send(Out::Close(1)).await.unwrap();
        drop(tx);
        write_loop(server, rx, Activity::default(), Arc::new(AtomicU32::new(1)))
            .await
            .unwrap();
        let mut bytes = Vec::new();
        let mut client = client;
        client.read_to_end(&mut bytes).await.unwrap();
        let mut dec = Decoder::default();
        let mut buf = BytesMut::from(&bytes[..]);
        let mut frames = Vec::new();
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            frames.push(f);
        }
        assert_eq!(
            frames,
            vec![
                Frame::SynReply {
                    stream_id: 1,
                    flags: 0,
                    headers: vec![]
                },
                Frame::Data {
                    stream_id: 1,
                    fin: false,
                    data: Bytes::from_static(b"out")
                },
                Frame::Data {
                    stream_id: 1,
                    fin: true,
                    data: Bytes::new()
                },
                Frame::GoAway {
                    last_good: 1,
                    status: 0
                },
            ]
        );
    }
}
