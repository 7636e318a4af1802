//! The host's service manager and taskd's health: systemctl through a configurable command
//! (`nsenter -t 1 -m -u -i -n -p -- systemctl` by default; tests put a script there), the
//! new binary's `taskd config check`, and taskd's `/readyz`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the systemctl command is empty")]
    EmptyCommand,
    #[error("run {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("config {path} refused by {binary}: {message}")]
    ConfigRefused {
        path: PathBuf,
        binary: PathBuf,
        message: String,
    },
    #[error("readyz url {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{url} not ready after {waited:?}: {last}")]
    NotReady {
        url: String,
        waited: Duration,
        last: String,
    },
}

/// Runs systemctl on the host.
#[derive(Debug, Clone)]
pub struct Systemctl {
    argv: Vec<String>,
}

impl Systemctl {
    /// `command` is split on whitespace: program, then its arguments; systemctl's own
    /// arguments are appended.
    pub fn new(command: &str) -> Result<Systemctl, Error> {
        let argv: Vec<String> = command.split_whitespace().map(str::to_string).collect();
        if argv.is_empty() {
            return Err(Error::EmptyCommand);
        }
        Ok(Systemctl { argv })
    }

    async fn output(&self, args: &[&str]) -> Result<std::process::Output, Error> {
        let command = format!("{} {}", self.argv.join(" "), args.join(" "));
        Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .args(args)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| Error::Spawn { command, source })
    }

    /// Runs `systemctl ARGS`; a non-zero exit is an error carrying stderr.
    pub async fn run(&self, args: &[&str]) -> Result<(), Error> {
        let out = self.output(args).await?;
        if out.status.success() {
            return Ok(());
        }
        Err(Error::Failed {
            command: format!("{} {}", self.argv.join(" "), args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    /// `systemctl is-active UNIT` exited 0.
    pub async fn is_active(&self, unit: &str) -> Result<bool, Error> {
        Ok(self
            .output(&["is-active", "--quiet", unit])
            .await?
            .status
            .success())
    }
}

/// `<taskd> config check FILE`: the new binary accepts the new config.
pub async fn check_config(taskd: &Path, config: &Path) -> Result<(), Error> {
    let out = Command::new(taskd)
        .args(["config", "check"])
        .arg(config)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| Error::Spawn {
            command: format!("{} config check {}", taskd.display(), config.display()),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let mut message = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if message.is_empty() {
        message = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    Err(Error::ConfigRefused {
        path: config.to_path_buf(),
        binary: taskd.to_path_buf(),
        message,
    })
}

/// `taskd --version` → "0.1.0" (the second word; the whole line when it has one word).
pub async fn taskd_version(taskd: &Path) -> Result<String, Error> {
    let command = format!("{} --version", taskd.display());
    let out = Command::new(taskd)
        .arg("--version")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut words = line.split_whitespace();
    let first = words.next().unwrap_or_default().to_string();
    Ok(words.next().map(str::to_string).unwrap_or(first))
}

/// The /readyz URL of a taskd config: `[metrics] address`, with a wildcard host replaced by
/// loopback (the agent shares the node's network).
pub fn readyz_url(config_toml: &str) -> Result<String, Error> {
    let bad = |reason: String| Error::BadUrl {
        url: "[metrics] address".into(),
        reason,
    };
    let value: toml::Table = config_toml.parse().map_err(|e| bad(format!("config: {e}")))?;
    let address = value
        .get("metrics")
        .and_then(|m| m.get("address"))
        .and_then(|a| a.as_str())
        .unwrap_or("127.0.0.1:1338");
    if address.is_empty() {
        return Err(bad(
            "metrics are disabled (empty address): taskd-node needs /readyz".into(),
        ));
    }
    let address = if let Some(port) = address.strip_prefix("0.0.0.0:") {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = address.strip_prefix("[::]:") {
        format!("[::1]:{port}")
    } else {
        address.to_string()
    };
    Ok(format!("http://{address}/readyz"))
}

/// One GET of /readyz: Ok when it answers 200.
pub async fn probe(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    match tokio::time::timeout(Duration::from_secs(2), client.get(uri)).await {
        Err(_) => Err("timed out".into()),
        Ok(Err(e)) => Err(format!("{e}")),
        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
        Ok(Ok(resp)) => Err(format!("HTTP {}", resp.status())),
    }
}

/// Polls /readyz until it answers 200 or `timeout` passes.
pub async fn wait_ready(url: &str, timeout: Duration) -> Result<(), Error> {
    let start = Instant::now();
    loop {
        let last = match probe(url).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            return Err(Error::NotReady {
                url: url.to_string(),
                waited: start.elapsed(),
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_url_from_config() {
        assert_eq!(readyz_url("version = 1").unwrap(), "http://127.0.0.1:1338/readyz");
        assert_eq!(
            readyz_url("[metrics]\naddress = \"0.0.0.0:9000\"").unwrap(),
            "http://127.0.0.1:9000/readyz"
        );
        assert!(readyz_url("[metrics]\naddress = \"\"").is_err());
    }
}
