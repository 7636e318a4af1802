//! Single-use tokens: an Exec/Attach/PortForward RPC caches its request under a random
//! token and answers the URL carrying it; the streaming server takes the request out when
//! the client connects. A token is good once, for [`TOKEN_TTL`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a token stays valid (kubelet's and containerd's cache TTL).
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Tokens waiting at once; beyond that the RPC answers ResourceExhausted.
pub const MAX_PENDING: usize = 4096;

/// What a streaming session will do, as the RPC validated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    Exec(ExecRequest),
    Attach(ExecRequest),
    PortForward { sandbox_id: String, ports: Vec<u16> },
}

/// The cached options of an Exec or Attach (`cmd` empty for Attach).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecRequest {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl Pending {
    /// The URL path segment of its kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Pending::Exec(_) => "exec",
            Pending::Attach(_) => "attach",
            Pending::PortForward { .. } => "portforward",
        }
    }
}

#[derive(Default)]
pub struct TokenStore {
    entries: Mutex<HashMap<String, (Instant, Pending)>>,
}

impl TokenStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Pending)>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Caches `req` under a fresh token (122 random bits, uuid v4); None when
    /// [`MAX_PENDING`] unexpired tokens are waiting.
    pub fn insert(&self, req: Pending) -> Option<String> {
        self.insert_at(req, Instant::now())
    }

    fn insert_at(&self, req: Pending, now: Instant) -> Option<String> {
        let mut m = self.lock();
        m.retain(|_, (at, _)| now.saturating_duration_since(*at) < TOKEN_TTL);
        if m.len() >= MAX_PENDING {
            return None;
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        m.insert(token.clone(), (now, req));
        Some(token)
    }

    /// Takes the request of `token` if it is of `kind` and unexpired; the token is gone
    /// after this whatever the answer.
    pub fn take(&self, kind: &str, token: &str) -> Option<Pending> {
        self.take_at(kind, token, Instant::now())
    }

    fn take_at(&self, kind: &str, token: &str, now: Instant) -> Option<Pending> {
        let (at, req) = self.lock().remove(token)?;
        (now.saturating_duration_since(at) < TOKEN_TTL && req.kind() == kind).then_some(req)
    }

    /// Tokens waiting (expired ones included until the next insert).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> Pending {
        Pending::Exec(ExecRequest {
            container_id: "c1".into(),
            cmd: vec!["sh".into()],
            stdout: true,
            ..Default::default()
        })
    }

    #[test]
    fn a_token_is_single_use() {
        let s = TokenStore::default();
        let t = s.insert(exec()).unwrap();
        assert_eq!(t.len(), 32);
        assert_eq!(s.take("exec", &t), Some(exec()));
        assert_eq!(s.take("exec", &t), None, "second use");
        assert_eq!(s.take("exec", "nope"), None);
        assert!(s.is_empty());
    }

    #[test]
    fn a_token_of_another_kind_is_refused_and_burnt() {
        let s = TokenStore::default();
        let t = s.insert(exec()).unwrap();
        assert_eq!(s.take("attach", &t), None);
        assert_eq!(s.take("exec", &t), None);
    }

    #[test]
    fn tokens_expire_and_are_swept() {
        let s = TokenStore::default();
        let then = Instant::now();
        let t = s.insert_at(exec(), then).unwrap();
        assert_eq!(s.take_at("exec", &t, then + TOKEN_TTL), None);
        s.insert_at(exec(), then).unwrap();
        s.insert_at(exec(), then + TOKEN_TTL + Duration::from_secs(1))
            .unwrap();
        assert_eq!(s.len(), 1, "the expired one was swept");
    }

    #[test]
    fn tokens_are_distinct_and_capped() {
        let s = TokenStore::default();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..MAX_PENDING {
            assert!(seen.insert(s.insert(exec()).unwrap()));
        }
        assert_eq!(s.insert(exec()), None);
    }
}
