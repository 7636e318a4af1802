//! install / upgrade / rollback / uninstall / status: the steps, in order, each idempotent.
//!
//! Install (and upgrade, which is an install of other binaries or config):
//! 1. the new `taskd` checks the new config (`taskd config check`); refused → nothing changes;
//! 2. the binaries go to `opt/taskd/releases/<id>`; what was running becomes the previous
//!    release (with `config.toml.previous`);
//! 3. config, metrics token, unit and the `current` link are replaced;
//! 4. systemd reloads, enables and (when something changed or it is down) restarts taskd —
//!    KillMode=process leaves the shims and pods running, taskd recovers its tasks;
//! 5. /readyz must answer in time, else the previous release comes back by itself;
//! 6. the Node gets its label and annotations, the RuntimeClasses are synced, an Event says
//!    what happened; with --switch-kubelet, kubelet is pointed at taskd.

use std::path::PathBuf;
use std::time::Duration;

use crate::cluster::{self, Cluster, WantedClass};
use crate::host::{self, Host, Release, State};
use crate::service::{self, Systemctl};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Host(#[from] host::Error),
    #[error(transparent)]
    Service(#[from] service::Error),
    #[error(transparent)]
    Cluster(#[from] cluster::Error),
    #[error("upgrade to {to} did not come ready ({cause}); rolled back to {back}")]
    RolledBack {
        to: String,
        back: String,
        cause: Box<service::Error>,
    },
    #[error("nothing to roll back to: no previous release on this node")]
    NoPrevious,
    #[error("taskd is not installed on this node")]
    NotInstalled,
    #[error("NODE_NAME is not set (the agent acts only on its own node)")]
    NoNodeName,
    #[error("{0} of the status checks failed")]
    Unhealthy(usize),
}

/// What every subcommand shares.
pub struct Agent {
    pub host: Host,
    pub systemctl: Systemctl,
    /// The kubelet config file, a host path.
    pub kubelet_config: String,
    /// The API, unless --no-api.
    pub cluster: Option<Cluster>,
    pub ready_timeout: Duration,
}

pub struct InstallArgs {
    /// `upgrade`: refuse when taskd is not installed yet.
    pub require_installed: bool,
    pub source_dir: PathBuf,
    pub config: PathBuf,
    pub runtime_classes: Vec<WantedClass>,
    pub switch_kubelet: bool,
    pub metrics_token: Option<PathBuf>,
}

/// What an install did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Installed,
    Upgraded { from: String },
    Unchanged,
}

impl Agent {
    async fn event(&self, type_: &str, reason: &str, message: &str) {
        if let Some(c) = &self.cluster
            && let Err(e) = c.event(type_, reason, message).await
        {
            tracing::warn!(error = %e, reason, "could not record the Event");
        }
    }

    fn readyz(&self) -> Result<String, Error> {
        let config = self.host.read(host::CONFIG)?.unwrap_or_default();
        Ok(service::readyz_url(&String::from_utf8_lossy(&config))?)
    }

    async fn restart_and_wait(&self) -> Result<(), service::Error> {
        let unit = self.host.unit_name();
        self.systemctl.run(&["restart", unit]).await?;
        let url = self.readyz().map_err(|e| service::Error::BadUrl {
            url: "[metrics] address".into(),
            reason: e.to_string(),
        })?;
        service::wait_ready(&url, self.ready_timeout).await
    }

    pub async fn install(&self, args: &InstallArgs) -> Result<Outcome, Error> {
        let r = self.install_inner(args).await;
        if let Err(e) = &r {
            let reason = match e {
                Error::RolledBack { .. } => "TaskdRolledBack",
                _ => "TaskdInstallFailed",
            };
            self.event("Warning", reason, &e.to_string()).await;
        }
        r
    }

    async fn install_inner(&self, args: &InstallArgs) -> Result<Outcome, Error> {
        let files = host::source_files(&args.source_dir)?;
        let new_taskd = args.source_dir.join("taskd");
        // 1. Nothing is replaced before the new binary accepts the new config.
        service::check_config(&new_taskd, &args.config).await?;
        let new_config = std::fs::read(&args.config).map_err(|source| host::Error::Io {
            op: "read",
            path: args.config.clone(),
            source,
        })?;
        // The readyz address must be usable before anything changes.
        service::readyz_url(&String::from_utf8_lossy(&new_config))?;
        let version = service::taskd_version(&new_taskd).await?;
        let id = host::release_id(&args.source_dir, &files)?;
        let release = Release {
            id: id.clone(),
            version: version.clone(),
        };

        let mut state = self.host.load_state()?;
        if args.require_installed && state.current.is_none() {
            return Err(Error::NotInstalled);
        }
        // 2. Stage the release.
        self.host.stage_release(&id, &args.source_dir, &files)?;
        let before = state.clone();
        let previous_config_before = self.host.read(host::CONFIG_PREVIOUS)?;
        let old_config = self.host.read(host::CONFIG)?;
        let unit = host::render_unit();
        let token = match &args.metrics_token {
            Some(p) => Some(std::fs::read(p).map_err(|source| host::Error::Io {
                op: "read",
                path: p.clone(),
                source,
            })?),
            None => None,
        };
        let release_changed = state.current.as_ref().map(|r| &r.id) != Some(&id)
            || self.host.current_id().as_deref() != Some(id.as_str());
        let config_changed = old_config.as_deref() != Some(new_config.as_slice());
        let unit_changed = self.host.read_unit()?.as_deref() != Some(unit.as_bytes());
        let token_changed = match &token {
            Some(t) => self.host.read(host::METRICS_TOKEN)?.as_deref() != Some(t.as_slice()),
            None => false,
        };
        let outcome = match &state.current {
            None => Outcome::Installed,
            Some(cur) if release_changed || config_changed => Outcome::Upgraded {
                from: format!("{} ({})", cur.version, cur.id),
            },
            Some(_) => Outcome::Unchanged,
        };

        // What was running becomes the previous release.
        if outcome != Outcome::Unchanged
            && let (Some(cur), Some(old)) = (state.current.clone(), old_config.as_ref())
        {
            self.host.write(host::CONFIG_PREVIOUS, old, 0o644)?;
            state.previous = Some(cur);
        }

        // 3. Replace config, token, unit, current.
        if config_changed {
            self.host.write(host::CONFIG, &new_config, 0o644)?;
        }
        if let Some(t) = &token
            && token_changed
        {
            self.host.write(host::METRICS_TOKEN, t, 0o600)?;
        }
        if unit_changed {
            self.host.write_unit(&unit)?;
        }
        self.host.set_current(&id)?;
        state.current = Some(release.clone());
        self.host.save_state(&state)?;

        // 4. systemd.
        let unit_name = self.host.unit_name().to_string();
        if unit_changed {
            self.systemctl.run(&["daemon-reload"]).await?;
        }
        self.systemctl.run(&["enable", &unit_name]).await?;
        let active = self.systemctl.is_active(&unit_name).await?;
        let must_restart = release_changed || config_changed || unit_changed || token_changed;
        // 5. Ready, or back to the previous release.
        let ready = if must_restart || !active {
            self.restart_and_wait().await
        } else {
            service::wait_ready(&self.readyz()?, self.ready_timeout).await
        };
        if let Err(cause) = ready {
            // Back to exactly what ran before (release, config, state), when something did.
            let Some(prev) = before
                .current
                .clone()
                .filter(|_| matches!(outcome, Outcome::Upgraded { .. }))
            else {
                return Err(cause.into());
            };
            tracing::error!(error = %cause, "new release not ready; rolling back");
            self.host.set_current(&prev.id)?;
            if let Some(old) = &old_config {
                self.host.write(host::CONFIG, old, 0o644)?;
            }
            match &previous_config_before {
                Some(c) => self.host.write(host::CONFIG_PREVIOUS, c, 0o644)?,
                None => self.host.remove(host::CONFIG_PREVIOUS)?,
            }
            self.host.save_state(&before)?;
            self.restart_and_wait().await?;
            if prev.id != id && before.previous.as_ref().map(|p| &p.id) != Some(&id) {
                host::remove_path(&self.host.release_dir(&id))?;
            }
            return Err(Error::RolledBack {
                to: format!("{version} ({id})"),
                back: format!("{} ({})", prev.version, prev.id),
                cause: Box::new(cause),
            });
        }
        // Only the running and the previous release stay on disk.
        let keep: Vec<&str> = [Some(id.as_str()), state.previous.as_ref().map(|p| p.id.as_str())]
            .into_iter()
            .flatten()
            .collect();
        self.host.prune_releases(&keep)?;

        // 6. kubelet and the API.
        if args.switch_kubelet {
            self.switch_kubelet(&new_config, &mut state).await?;
        }
        if let Some(c) = &self.cluster {
            c.mark_ready(&version, &id).await?;
            let (changed, refused) = c.sync_classes(&args.runtime_classes).await?;
            if !changed.is_empty() {
                tracing::info!(?changed, "RuntimeClasses synced");
            }
            for e in refused {
                tracing::warn!(error = %e, "RuntimeClass skipped");
                self.event("Warning", "TaskdRuntimeClassNotOwned", &e.to_string())
                    .await;
            }
        }
        match &outcome {
            Outcome::Installed => {
                self.event(
                    "Normal",
                    "TaskdInstalled",
                    &format!("taskd {version} ({id}) installed and ready"),
                )
                .await;
            }
            Outcome::Upgraded { from } => {
                self.event(
                    "Normal",
                    "TaskdUpgraded",
                    &format!("taskd upgraded from {from} to {version} ({id}), ready"),
                )
                .await;
            }
            Outcome::Unchanged => {}
        }
        Ok(outcome)
    }

    async fn switch_kubelet(&self, config: &[u8], state: &mut State) -> Result<(), Error> {
        let table: toml::Table = String::from_utf8_lossy(config).parse().unwrap_or_default();
        let socket = table
            .get("grpc")
            .and_then(|g| g.get("address"))
            .and_then(|a| a.as_str())
            .unwrap_or("/run/taskd/taskd.sock")
            .to_string();
        let endpoint = format!("unix://{socket}");
        let path = self.host.path(&self.kubelet_config);
        if let Some(previous) = host::set_kubelet_endpoint(&path, &endpoint)? {
            if state.kubelet_endpoint.is_none() {
                state.kubelet_endpoint = Some(previous);
                self.host.save_state(state)?;
            }
            self.systemctl.run(&["restart", "kubelet.service"]).await?;
            self.event(
                "Normal",
                "TaskdKubeletSwitched",
                &format!("kubelet now uses {endpoint}"),
            )
            .await;
        }
        Ok(())
    }

    /// Back to the previous release and config; the one running now becomes "previous", so a
    /// second rollback goes forward again.
    pub async fn rollback(&self) -> Result<Release, Error> {
        let r = self.rollback_inner().await;
        match &r {
            Ok(rel) => {
                if let Some(c) = &self.cluster {
                    c.mark_ready(&rel.version, &rel.id).await?;
                }
                self.event(
                    "Normal",
                    "TaskdRolledBack",
                    &format!("taskd rolled back to {} ({})", rel.version, rel.id),
                )
                .await;
            }
            Err(e) => self.event("Warning", "TaskdRollbackFailed", &e.to_string()).await,
        }
        r
    }

    async fn rollback_inner(&self) -> Result<Release, Error> {
        let mut state = self.host.load_state()?;
        let prev = state.previous.clone().ok_or(Error::NoPrevious)?;
        let cur = state.current.clone().ok_or(Error::NotInstalled)?;
        self.host.set_current(&prev.id)?;
        let config = self.host.read(host::CONFIG)?;
        if let Some(old) = self.host.read(host::CONFIG_PREVIOUS)? {
            self.host.write(host::CONFIG, &old, 0o644)?;
        }
        if let Some(c) = config {
            self.host.write(host::CONFIG_PREVIOUS, &c, 0o644)?;
        }
        state.current = Some(prev.clone());
        state.previous = Some(cur);
        self.host.save_state(&state)?;
        self.restart_and_wait().await?;
        Ok(prev)
    }

    /// Reverses install: Node marks, RuntimeClasses (once no other node has taskd), kubelet's
    /// endpoint, the unit, the files; the data dirs only with `purge_data`.
    pub async fn uninstall(&self, purge_data: bool) -> Result<bool, Error> {
        let state = self.host.load_state()?;
        let had_taskd = state.current.is_some() || self.host.read_unit()?.is_some();
        if let Some(c) = &self.cluster {
            c.unmark().await?;
            if c.other_nodes_with_taskd().await?.is_empty() {
                let deleted = c.delete_owned_classes().await?;
                if !deleted.is_empty() {
                    tracing::info!(?deleted, "RuntimeClasses deleted");
                }
            }
        }
        if let Some(previous) = &state.kubelet_endpoint {
            let path = self.host.path(&self.kubelet_config);
            if host::set_kubelet_endpoint(&path, previous)?.is_some() {
                self.systemctl.run(&["restart", "kubelet.service"]).await?;
            }
        }
        let config = self.host.read(host::CONFIG)?.unwrap_or_default();
        let unit = self.host.unit_name().to_string();
        if self.host.read_unit()?.is_some() {
            self.systemctl.run(&["stop", &unit]).await?;
            self.systemctl.run(&["disable", &unit]).await?;
            host::remove_path(&self.host.unit_path())?;
            self.systemctl.run(&["daemon-reload"]).await?;
        }
        for rel in [host::OPT_DIR, "etc/taskd", "var/lib/taskd-node"] {
            self.host.remove(rel)?;
        }
        if purge_data {
            let table: toml::Table = String::from_utf8_lossy(&config).parse().unwrap_or_default();
            for (key, default) in [("root", "/var/lib/taskd"), ("state", "/run/taskd")] {
                let dir = table.get(key).and_then(|v| v.as_str()).unwrap_or(default);
                self.host.remove(dir)?;
            }
        }
        if had_taskd {
            self.event("Normal", "TaskdUninstalled", "taskd removed from the node")
                .await;
        }
        Ok(had_taskd)
    }

    /// Each step, one line each; Err(Unhealthy) when any is not ok.
    pub async fn status(&self, out: &mut impl std::io::Write) -> Result<(), Error> {
        let mut failed = 0;
        let mut line = |ok: bool, step: &str, detail: String| {
            if !ok {
                failed += 1;
            }
            let _ = writeln!(out, "{:<15} {:<8} {detail}", step, if ok { "ok" } else { "FAIL" });
        };
        let state = self.host.load_state()?;
        match (&state.current, self.host.current_id()) {
            (Some(r), Some(link)) if r.id == link && self.host.release_dir(&r.id).join("taskd").is_file() => {
                line(true, "binaries", format!("taskd {} release {}", r.version, r.id));
            }
            (Some(r), link) => line(
                false,
                "binaries",
                format!("state says {} but current is {link:?}", r.id),
            ),
            (None, _) => line(false, "binaries", "not installed".into()),
        }
        match &state.previous {
            Some(p) => line(
                true,
                "rollback",
                format!("previous release {} ({})", p.version, p.id),
            ),
            None => line(true, "rollback", "no previous release".into()),
        }
        let config = self.host.read(host::CONFIG)?;
        line(
            config.is_some(),
            "config",
            self.host.path(host::CONFIG).display().to_string(),
        );
        let unit_ok = self.host.read_unit()?.as_deref() == Some(host::render_unit().as_bytes());
        line(unit_ok, "unit", self.host.unit_path().display().to_string());
        let active = self
            .systemctl
            .is_active(self.host.unit_name())
            .await
            .unwrap_or(false);
        line(
            active,
            "service",
            if active {
                "active".into()
            } else {
                "not active".into()
            },
        );
        match self.readyz() {
            Ok(url) => match service::probe(&url).await {
                Ok(()) => line(true, "readyz", url),
                Err(e) => line(false, "readyz", format!("{url}: {e}")),
            },
            Err(e) => line(false, "readyz", e.to_string()),
        }
        if let Some(prev) = &state.kubelet_endpoint {
            let path = self.host.path(&self.kubelet_config);
            let now = host::kubelet_endpoint(&path).unwrap_or_default();
            line(true, "kubelet", format!("switched to {now} (was {prev:?})"));
        }
        if let Some(c) = &self.cluster {
            match c.node_marks().await {
                Ok((label, version)) => line(
                    label.as_deref() == Some("ready"),
                    "node label",
                    format!("{}={label:?} version={version:?}", cluster::RUNTIME_LABEL),
                ),
                Err(e) => line(false, "node label", e.to_string()),
            }
            match c.owned_classes().await {
                Ok(names) => line(true, "runtimeclasses", format!("{names:?}")),
                Err(e) => line(false, "runtimeclasses", e.to_string()),
            }
        }
        if failed > 0 {
            Err(Error::Unhealthy(failed))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// uninstall keeps the data dirs named by the host's config unless asked to purge them.
    #[tokio::test]
    async fn uninstall_purges_data_dirs_only_when_asked() {
        let tmp = tempfile::tempdir().unwrap();
        for purge in [false, true] {
            let root = tmp.path().join(format!("host-{purge}"));
            let host = Host::new(root.clone(), "taskd.service".into());
            host.write(
                host::CONFIG,
                b"version = 1\nroot = \"/data/root\"\nstate = \"/data/state\"\n",
                0o644,
            )
            .unwrap();
            host.write_unit(&host::render_unit()).unwrap();
            for d in ["data/root/content", "data/state/sockets"] {
                std::fs::create_dir_all(root.join(d)).unwrap();
            }
            let agent = Agent {
                host,
                // The systemctl command is configurable; `true` accepts every call.
                systemctl: Systemctl::new("true").unwrap(),
                kubelet_config: "/var/lib/kubelet/config.yaml".into(),
                cluster: None,
                ready_timeout: Duration::from_secs(1),
            };
            assert!(agent.uninstall(purge).await.unwrap(), "something was installed");
            assert!(
                !root.join("etc/taskd").exists() && !root.join(host::UNIT_DIR).join("taskd.service").exists()
            );
            assert_eq!(root.join("data/root/content").exists(), !purge);
            assert_eq!(root.join("data/state/sockets").exists(), !purge);
            assert!(
                !agent.uninstall(purge).await.unwrap(),
                "second uninstall: nothing left"
            );
        }
    }
}
