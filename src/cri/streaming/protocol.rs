//! Subprotocol negotiation and what the error stream carries.
//!
//! ```text
//! remotecommand over SPDY   X-Stream-Protocol-Version: v4.channel.k8s.io, v3.…, v2.…, channel.k8s.io
//! remotecommand over WS     Sec-WebSocket-Protocol:    v5.channel.k8s.io, v4.channel.k8s.io
//! portforward over SPDY     X-Stream-Protocol-Version: portforward.k8s.io
//! portforward over WS       Sec-WebSocket-Protocol:    portforward.k8s.io, v4.channel.k8s.io
//! ```
//!
//! The first protocol of the client's list that the server speaks wins (as kubelet picks).
//! v4+ report the end of an exec as a JSON metav1 Status on the error stream; older
//! versions write the error text only when there is an error.

use serde::Serialize;

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";
pub const V3: &str = "v3.channel.k8s.io";
pub const V2: &str = "v2.channel.k8s.io";
pub const V1: &str = "channel.k8s.io";
pub const PORT_FORWARD: &str = "portforward.k8s.io";

/// What the SPDY transport offers for exec/attach, in preference order.
pub const SPDY_REMOTECOMMAND: &[&str] = &[V4, V3, V2, V1];
pub const WS_REMOTECOMMAND: &[&str] = &[V5, V4];
pub const SPDY_PORT_FORWARD: &[&str] = &[PORT_FORWARD];
pub const WS_PORT_FORWARD: &[&str] = &[PORT_FORWARD, V4];

/// The client's protocols, from every value of the header (comma-separated lists).
pub fn client_protocols<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    values
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The first of the client's protocols the server speaks.
pub fn negotiate(client: &[String], server: &[&'static str]) -> Option<&'static str> {
    client
        .iter()
        .find_map(|c| server.iter().find(|s| **s == c.as_str()).copied())
}

/// The remotecommand protocol version (1..=5) of a negotiated name.
pub fn version(protocol: &str) -> u8 {
    match protocol {
        V5 => 5,
        V4 => 4,
        V3 => 3,
        V2 => 2,
        _ => 1,
    }
}

/// How an exec or attach ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The process exited with this code.
    Exited { code: i32, cmd: Vec<String> },
    /// The session failed (the text goes to the client).
    Failed(String),
}

#[derive(Serialize)]
struct Status<'a> {
    metadata: Empty,
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Details {
    causes: Vec<Cause>,
}

#[derive(Serialize)]
struct Cause {
    reason: &'static str,
    message: String,
}

impl Outcome {
    /// What the error stream carries for protocol `version`; None = nothing (success
    /// before v4).
    pub fn error_stream(&self, version: u8) -> Option<Vec<u8>> {
        let message = match self {
            Outcome::Exited { code: 0, .. } => None,
            Outcome::Exited { code, cmd } => Some(format!(
                "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                cmd.join(" ")
            )),
            Outcome::Failed(m) => Some(m.clone()),
        };
        if version < 4 {
            return message.map(String::into_bytes);
        }
        let status = match (self, message) {
            (_, None) => Status {
                metadata: Empty {},
                status: "Success",
                message: None,
                reason: None,
                details: None,
            },
            (Outcome::Exited { code, .. }, Some(m)) => Status {
                metadata: Empty {},
                status: "Failure",
                message: Some(m),
                reason: Some("NonZeroExitCode"),
                details: Some(Details {
                    causes: vec![Cause {
                        reason: "ExitCode",
                        message: code.to_string(),
                    }],
                }),
            },
            (Outcome::Failed(_), Some(m)) => Status {
                metadata: Empty {},
                status: "Failure",
                message: Some(m),
                reason: Some("InternalError"),
                details: None,
            },
        };
        serde_json::to_vec(&status).ok()
    }
}

/// A terminal size from the resize stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct TermSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// Bytes of the resize stream not yet parsed, at most.
pub const MAX_RESIZE_BUFFER: usize = 4096;

/// Decodes the resize stream: JSON objects one after another, split anywhere.
#[derive(Default)]
pub struct ResizeDecoder {
    buf: Vec<u8>,
}

impl ResizeDecoder {
    /// Feeds bytes; returns the sizes completed by them. Garbage or an object over
    /// [`MAX_RESIZE_BUFFER`] is an error.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<TermSize>, String> {
        self.buf.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<TermSize>();
        let mut used = 0;
        loop {
            match it.next() {
                Some(Ok(s)) => {
                    sizes.push(s);
                    used = it.byte_offset();
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => return Err(format!("resize stream: {e}")),
                None => {
                    used = self.buf.len();
                    break;
                }
            }
        }
        self.buf.drain(..used);
        if self.buf.len() > MAX_RESIZE_BUFFER {
            return Err(format!("resize stream: an object over {MAX_RESIZE_BUFFER} bytes"));
        }
        Ok(sizes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(v: &[&str]) -> Vec<String> {
        client_protocols(v.iter().copied())
    }

    #[test]
    fn the_clients_first_known_protocol_wins() {
        let c = list(&["v4.channel.k8s.io, v3.channel.k8s.io", "channel.k8s.io"]);
        assert_eq!(c.len(), 3);
        assert_eq!(negotiate(&c, SPDY_REMOTECOMMAND), Some(V4));
        assert_eq!(
            negotiate(&list(&["v9.x", "v2.channel.k8s.io"]), SPDY_REMOTECOMMAND),
            Some(V2)
        );
        assert_eq!(negotiate(&list(&["v5.channel.k8s.io"]), SPDY_REMOTECOMMAND), None);
        assert_eq!(
            negotiate(&list(&["v5.channel.k8s.io", V4]), WS_REMOTECOMMAND),
            Some(V5)
        );
        assert_eq!(negotiate(&list(&[V4]), WS_PORT_FORWARD), Some(V4));
        assert_eq!(negotiate(&list(&[]), SPDY_PORT_FORWARD), None);
        assert_eq!((version(V5), version(V3), version(V1)), (5, 3, 1));
    }

    #[test]
    fn v4_status_json_is_what_kubectl_decodes() {
        let ok = Outcome::Exited {
            code: 0,
            cmd: vec!["true".into()],
        };
        assert_eq!(
            String::from_utf8(ok.error_stream(4).unwrap()).unwrap(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        assert_eq!(ok.error_stream(3), None);
        let bad = Outcome::Exited {
            code: 3,
            cmd: vec!["sh".into(), "-c".into(), "exit 3".into()],
        };
        assert_eq!(
            String::from_utf8(bad.error_stream(5).unwrap()).unwrap(),
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
        );
        assert_eq!(
            String::from_utf8(bad.error_stream(2).unwrap()).unwrap(),
            "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
        );
        let failed = Outcome::Failed("container c1 is not running".into());
        let v: serde_json::Value = serde_json::from_slice(&failed.error_stream(4).unwrap()).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["message"], "container c1 is not running");
    }

    #[test]
    fn resize_objects_split_anywhere_are_decoded() {
        let mut d = ResizeDecoder::default();
        assert_eq!(d.push(br#"{"Width":80,"Hei"#).unwrap(), vec![]);
        assert_eq!(
            d.push(b"ght\":24}\n{\"Width\":100,\"Height\":30}\n{").unwrap(),
            vec![
                TermSize {
                    width: 80,
                    height: 24
                },
                TermSize {
                    width: 100,
                    height: 30
                }
            ]
        );
        assert_eq!(
            d.push(br#""Width":1,"Height":2}"#).unwrap(),
            vec![TermSize { width: 1, height: 2 }]
        );
        assert!(d.push(b"nonsense").is_err());
        let mut d = ResizeDecoder::default();
        let mut big = b"{\"Width\":1,\"x\":\"".to_vec();
        big.extend(vec![b'a'; MAX_RESIZE_BUFFER + 1]);
        assert!(d.push(&big).is_err());
    }
}
