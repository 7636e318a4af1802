//! A small client for the registry HTTP API (OCI distribution), over reqwest: what a
//! server-side pull needs and nothing more, with the limits a hostile registry calls for.
//!
//! ```text
//! Remote::new(endpoint, credentials?)    one reqwest client per endpoint: its TLS roots (ca),
//!                                        client certificates, skip_verify, headers
//! manifest(repo, ref, accept, max)       GET <base>/<repo>/manifests/<ref>, body read through
//!                                        a size-checked stream (Content-Length and running
//!                                        count), cut off at `max`
//! blob(repo, digest, size)               GET <base>/<repo>/blobs/<digest>: a stream that ends
//!                                        with an error the moment it passes `size`
//! 401 + WWW-Authenticate: Bearer          token from the realm (credentials as Basic, if
//!                                        allowed), kept for the endpoint; Basic → credentials
//! ```
//!
//! `<base>` is `<scheme>://<host>/v2`, or the endpoint's own path with `override_path`.
//!
//! Credentials (issue 16 item 7) are attached only when the endpoint allows them
//! (`Endpoint::send_credentials`: the registry itself, or a mirror whose config says so), and
//! never over plain http to a host that is not loopback: then the challenge fails with
//! [`RegistryError::CredentialsWithheld`]. reqwest drops `Authorization` on a redirect to
//! another host.

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use oci_client::secrets::RegistryAuth;
use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue, WWW_AUTHENTICATE,
};
use tokio::sync::Mutex;

use super::hosts::{Endpoint, is_local};

/// The largest token response read.
const MAX_TOKEN_RESPONSE: u64 = 64 << 10;
/// Connecting gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of registry requests.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{endpoint}: {what}: {source}")]
    Http {
        endpoint: String,
        what: String,
        source: reqwest::Error,
    },
    #[error("{endpoint}: {what}: not found")]
    NotFound { endpoint: String, what: String },
    #[error("{endpoint}: {what}: unauthorized ({status})")]
    Unauthorized {
        endpoint: String,
        what: String,
        status: u16,
    },
    #[error("{endpoint}: {what}: credentials withheld: {reason}")]
    CredentialsWithheld {
        endpoint: String,
        what: String,
        reason: String,
    },
    #[error("{endpoint}: {what}: registry answered {status}")]
    Status {
        endpoint: String,
        what: String,
        status: u16,
    },
    #[error("{endpoint}: {what}: larger than {limit} bytes (the limit)")]
    TooLarge {
        endpoint: String,
        what: String,
        limit: u64,
    },
    #[error("{endpoint}: {what}: more than the {declared} bytes its descriptor declares")]
    LongerThanDeclared {
        endpoint: String,
        what: String,
        declared: u64,
    },
    #[error("{endpoint}: bad TLS material {path}: {reason}")]
    Tls {
        endpoint: String,
        path: String,
        reason: String,
    },
    #[error("{endpoint}: bad header {name:?}: {reason}")]
    Header {
        endpoint: String,
        name: String,
        reason: String,
    },
    #[error("{endpoint}: malformed token response from {realm}: {reason}")]
    Token {
        endpoint: String,
        realm: String,
        reason: String,
    },
}

impl RegistryError {
    /// The registry sent more than allowed (a hostile or broken registry): the pull stops
    /// instead of trying the next endpoint.
    pub fn is_over_limit(&self) -> bool {
        matches!(
            self,
            RegistryError::TooLarge { .. } | RegistryError::LongerThanDeclared { .. }
        )
    }
}

impl crate::errdefs::ErrorKind for RegistryError {
    fn kind(&self) -> crate::errdefs::Kind {
        use crate::errdefs::Kind;
        match self {
            RegistryError::NotFound { .. } => Kind::NotFound,
            RegistryError::Unauthorized { .. } | RegistryError::CredentialsWithheld { .. } => {
                Kind::Unauthenticated
            }
            RegistryError::TooLarge { .. } | RegistryError::LongerThanDeclared { .. } => {
                Kind::FailedPrecondition
            }
            RegistryError::Tls { .. } | RegistryError::Header { .. } => Kind::FailedPrecondition,
            RegistryError::Http { .. } | RegistryError::Status { .. } | RegistryError::Token { .. } => {
                Kind::Unavailable
            }
        }
    }
}

/// One endpoint, ready to use.
pub struct Remote {
    pub endpoint: Endpoint,
    client: reqwest::Client,
    /// Credentials this endpoint may receive.
    credentials: RegistryAuth,
    /// Why credentials that were given are not sent here (for the error on a challenge).
    withheld: Option<String>,
    /// The `Authorization` value that worked (a bearer token, or Basic), reused.
    authorization: Mutex<Option<HeaderValue>>,
}

fn read_file(endpoint: &str, path: &std::path::Path) -> Result<Vec<u8>, RegistryError> {
    std::fs::read(path).map_err(|e| RegistryError::Tls {
        endpoint: endpoint.to_owned(),
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn basic(user: &str, password: &str) -> Option<HeaderValue> {
    use base64::Engine;
    let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    HeaderValue::from_str(&format!("Basic {v}")).ok()
}

impl Remote {
    /// A client for `endpoint`. `credentials`: what the caller has for the registry; they are
    /// kept only when the endpoint may receive them.
    pub fn new(endpoint: Endpoint, credentials: Option<RegistryAuth>) -> Result<Remote, RegistryError> {
        let name = endpoint.host.clone();
        let mut b = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("taskd/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(endpoint.skip_verify);
        for ca in &endpoint.ca_files {
            let pem = read_file(&name, ca)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| RegistryError::Tls {
                endpoint: name.clone(),
                path: ca.display().to_string(),
                reason: e.to_string(),
            })?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if let Some((cert, key)) = endpoint.client_certs.first() {
            let (c, k) = (read_file(&name, cert)?, read_file(&name, key)?);
            let id = reqwest::Identity::from_pkcs8_pem(&c, &k).map_err(|e| RegistryError::Tls {
                endpoint: name.clone(),
                path: format!("{} + {}", cert.display(), key.display()),
                reason: e.to_string(),
            })?;
            b = b.identity(id);
        }
        let mut headers = HeaderMap::new();
        for (k, values) in &endpoint.headers {
            let bad = |reason: String| RegistryError::Header {
                endpoint: name.clone(),
                name: k.clone(),
                reason,
            };
            let hn = HeaderName::from_bytes(k.as_bytes()).map_err(|e| bad(e.to_string()))?;
            for v in values {
                headers.append(
                    hn.clone(),
                    HeaderValue::from_str(v).map_err(|e| bad(e.to_string()))?,
                );
            }
        }
        b = b.default_headers(headers);
        let client = b.build().map_err(|source| RegistryError::Http {
            endpoint: name.clone(),
            what: "build client".into(),
            source,
        })?;
        let given = credentials
            .or_else(|| {
                (!endpoint.username.is_empty())
                    .then(|| RegistryAuth::Basic(endpoint.username.clone(), endpoint.password.clone()))
            })
            .filter(|c| !matches!(c, RegistryAuth::Anonymous));
        let (credentials, withheld) = match given {
            None => (RegistryAuth::Anonymous, None),
            Some(_) if !endpoint.send_credentials => (
                RegistryAuth::Anonymous,
                Some(
                    "the credentials are for the registry, not this mirror (its config does not allow them)"
                        .to_owned(),
                ),
            ),
            Some(_) if endpoint.plain_http && !is_local(&endpoint.host) => (
                RegistryAuth::Anonymous,
                Some("plain http to a host that is not loopback".to_owned()),
            ),
            Some(c) => (c, None),
        };
        Ok(Remote {
            endpoint,
            client,
            credentials,
            withheld,
            authorization: Mutex::new(None),
        })
    }

    /// `<scheme>://<host><path>` of the API root (`/v2`, or the override path).
    fn base(&self) -> String {
        let scheme = if self.endpoint.plain_http { "http" } else { "https" };
        format!("{scheme}://{}{}", self.endpoint.host, self.endpoint.path)
    }

    /// GET `url` with the endpoint's auth: a 401 is answered once (bearer token or basic).
    async fn get(&self, url: &str, accept: &str, what: &str) -> Result<reqwest::Response, RegistryError> {
        let send = |auth: Option<HeaderValue>| {
            let mut r = self.client.get(url);
            if !accept.is_empty() {
                r = r.header(ACCEPT, accept);
            }
            if let Some(a) = auth {
                r = r.header(AUTHORIZATION, a);
            }
            r.send()
        };
        let http = |source| RegistryError::Http {
            endpoint: self.endpoint.host.clone(),
            what: what.to_owned(),
            source,
        };
        let cached = self.authorization.lock().await.clone();
        let mut resp = send(cached.clone()).await.map_err(http)?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            if let Some(auth) = self.answer(&challenge, what).await? {
                *self.authorization.lock().await = Some(auth.clone());
                resp = send(Some(auth)).await.map_err(http)?;
            }
        }
        let status = resp.status();
        match status {
            s if s.is_success() => Ok(resp),
            StatusCode::NOT_FOUND => Err(RegistryError::NotFound {
                endpoint: self.endpoint.host.clone(),
                what: what.to_owned(),
            }),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => match &self.withheld {
                Some(reason) => Err(RegistryError::CredentialsWithheld {
                    endpoint: self.endpoint.host.clone(),
                    what: what.to_owned(),
                    reason: reason.clone(),
                }),
                None => Err(RegistryError::Unauthorized {
                    endpoint: self.endpoint.host.clone(),
                    what: what.to_owned(),
                    status: status.as_u16(),
                }),
            },
            s => Err(RegistryError::Status {
                endpoint: self.endpoint.host.clone(),
                what: what.to_owned(),
                status: s.as_u16(),
            }),
        }
    }

    /// The `Authorization` that answers `challenge`, if there is one to try.
    async fn answer(&self, challenge: &str, what: &str) -> Result<Option<HeaderValue>, RegistryError> {
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Ok(match &self.credentials {
                RegistryAuth::Basic(u, p) => basic(u, p),
                _ => None,
            });
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Ok(None);
        }
        if let RegistryAuth::Bearer(t) = &self.credentials {
            return Ok(HeaderValue::from_str(&format!("Bearer {t}")).ok());
        }
        let params = parse_challenge(params);
        let get = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        let Some(realm) = get("realm") else {
            return Ok(None);
        };
        let bad = |reason: String| RegistryError::Token {
            endpoint: self.endpoint.host.clone(),
            realm: realm.to_owned(),
            reason,
        };
        let mut url = reqwest::Url::parse(realm).map_err(|e| bad(e.to_string()))?;
        {
            let mut q = url.query_pairs_mut();
            for k in ["scope", "service"] {
                if let Some(v) = get(k) {
                    q.append_pair(k, v);
                }
            }
        }
        let mut req = self.client.get(url.clone());
        if let RegistryAuth::Basic(u, p) = &self.credentials {
            // The realm gets the credentials only under the same rules as the endpoint.
            let realm_host = url.host_str().unwrap_or("");
            if (url.scheme() == "https" || is_local(realm_host))
                && let Some(v) = basic(u, p)
            {
                req = req.header(AUTHORIZATION, v);
            }
        }
        let resp = req.send().await.map_err(|source| RegistryError::Http {
            endpoint: self.endpoint.host.clone(),
            what: format!("token for {what}"),
            source,
        })?;
        if !resp.status().is_success() {
            // No token: the original 401 stands.
            return Ok(None);
        }
        let body = read_capped(resp, MAX_TOKEN_RESPONSE, &self.endpoint.host, "token response").await?;
        #[derive(serde::Deserialize)]
        struct Token {
            #[serde(default)]
            token: String,
            #[serde(default)]
            access_token: String,
        }
        let t: Token = serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
        let t = if t.token.is_empty() {
            t.access_token
        } else {
            t.token
        };
        if t.is_empty() {
            return Err(bad("no token".into()));
        }
        Ok(HeaderValue::from_str(&format!("Bearer {t}")).ok())
    }

    /// The manifest (or index) `reference` (a tag or a digest) of `repository`, at most `max`
    /// bytes; returns the body and its Content-Type.
    pub async fn manifest(
        &self,
        repository: &str,
        reference: &str,
        accept: &[&str],
        max: u64,
    ) -> Result<(Bytes, String), RegistryError> {
        let url = format!("{}/{repository}/manifests/{reference}", self.base());
        let what = format!("manifest {repository}:{reference}");
        let resp = self.get(&url, &accept.join(", "), &what).await?;
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = read_capped(resp, max, &self.endpoint.host, &what).await?;
        Ok((body, media_type))
    }

    /// The blob `digest` of `repository` as a stream that fails the moment it passes `size`.
    pub async fn blob(
        &self,
        repository: &str,
        digest: &str,
        size: u64,
    ) -> Result<impl Stream<Item = Result<Bytes, RegistryError>> + Send + use<>, RegistryError> {
        let url = format!("{}/{repository}/blobs/{digest}", self.base());
        let what = format!("blob {digest}");
        let resp = self.get(&url, "", &what).await?;
        let endpoint = self.endpoint.host.clone();
        check_length(&resp, size, &endpoint, &what, true)?;
        Ok(capped(resp, size, endpoint, what, true))
    }
}

/// Fails when the response announces more than `limit` bytes.
fn check_length(
    resp: &reqwest::Response,
    limit: u64,
    endpoint: &str,
    what: &str,
    declared: bool,
) -> Result<(), RegistryError> {
    let len = resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match len {
        Some(n) if n > limit => Err(over(endpoint, what, limit, declared)),
        _ => Ok(()),
    }
}

fn over(endpoint: &str, what: &str, limit: u64, declared: bool) -> RegistryError {
    if declared {
        RegistryError::LongerThanDeclared {
            endpoint: endpoint.to_owned(),
            what: what.to_owned(),
            declared: limit,
        }
    } else {
        RegistryError::TooLarge {
            endpoint: endpoint.to_owned(),
            what: what.to_owned(),
            limit,
        }
    }
}

/// The body as a stream that errs once more than `limit` bytes arrived (and then ends).
fn capped(
    resp: reqwest::Response,
    limit: u64,
    endpoint: String,
    what: String,
    declared: bool,
) -> impl Stream<Item = Result<Bytes, RegistryError>> + Send {
    resp.bytes_stream()
        .scan((0u64, false), move |(seen, done), chunk| {
            let item = if *done {
                None
            } else {
                Some(match chunk {
                    Ok(c) => {
                        *seen = seen.saturating_add(c.len() as u64);
                        if *seen > limit {
                            *done = true;
                            Err(over(&endpoint, &what, limit, declared))
                        } else {
                            Ok(c)
                        }
                    }
                    Err(source) => {
                        *done = true;
                        Err(RegistryError::Http {
                            endpoint: endpoint.clone(),
                            what: what.clone(),
                            source,
                        })
                    }
                })
            };
            futures::future::ready(item)
        })
}

/// The whole body, at most `limit` bytes (else TooLarge, read no further).
async fn read_capped(
    resp: reqwest::Response,
    limit: u64,
    endpoint: &str,
    what: &str,
) -> Result<Bytes, RegistryError> {
    check_length(&resp, limit, endpoint, what, false)?;
    let mut out = bytes::BytesMut::new();
    let mut s = std::pin::pin!(capped(resp, limit, endpoint.to_owned(), what.to_owned(), false));
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c?);
    }
    Ok(out.freeze())
}

/// `k="v",k2=v2` → pairs (quoted values may hold commas).
fn parse_challenge(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_owned();
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (q[..end].to_owned(), &q[end + 1..]),
                None => (q.to_owned(), ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (after[..end].trim().to_owned(), &after[end..]),
                None => (after.trim().to_owned(), ""),
            }
        };
        out.push((k, v));
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn challenge_params() {
        let p =
            super::parse_challenge(r#"realm="http://a/token",service="test",scope="repository:x:pull,push""#);
        assert_eq!(
            p,
            vec![
                ("realm".to_owned(), "http://a/token".to_owned()),
                ("service".to_owned(), "test".to_owned()),
                ("scope".to_owned(), "repository:x:pull,push".to_owned()),
            ]
        );
        assert_eq!(super::parse_challenge("realm=x, service=y").len(), 2);
    }

    #[test]
    fn credentials_are_withheld_from_mirrors_and_plain_http_off_loopback() {
        use super::{Endpoint, RegistryAuth, Remote};
        let creds = || Some(RegistryAuth::Basic("u".into(), "p".into()));
        let e = |host: &str, plain_http: bool, send_credentials: bool| Endpoint {
            host: host.into(),
            path: "/v2".into(),
            plain_http,
            send_credentials,
            pull: true,
            resolve: true,
            ..Default::default()
        };
        let sent = |e: Endpoint| {
            let r = Remote::new(e, creds()).unwrap();
            (matches!(r.credentials, RegistryAuth::Basic(..)), r.withheld)
        };
        assert_eq!(sent(e("registry.example.com", false, true)), (true, None));
        assert_eq!(sent(e("127.0.0.1:5000", true, true)), (true, None));
        let (ok, why) = sent(e("registry.example.com", true, true));
        assert!(!ok && why.unwrap().contains("plain http"));
        let (ok, why) = sent(e("mirror.example.com", false, false));
        assert!(!ok && why.unwrap().contains("mirror"));
    }
}
