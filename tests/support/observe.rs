//! Watching a daemon from outside: polling, Prometheus text expositions (a sample's value,
//! `promtool check metrics`), and the event stream as `ctr events` prints it.
#![allow(dead_code)]

use std::io::{BufRead, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use super::Daemon;

/// Polls `f` until it returns `Some` (bounded; panics with `what` after `limit`).
pub fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The value of the first sample of `name` in a text exposition whose labels include all of
/// `labels` (`k="v"` pairs).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (lbls, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels
                .iter()
                .all(|(k, v)| lbls.split(',').any(|p| p == format!("{k}=\"{v}\"")))
                .then(|| value.trim().parse().ok())?
        })
        .next()
}

/// `promtool check metrics`: no parse error; lint findings only the two containerd's own
/// `container_*` names cause (gauges named `*_total`, non-second time units).
pub fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (apt-get install prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => {}
        Some(3) => {
            for line in report.lines().filter(|l| !l.trim().is_empty()) {
                let containerd_name = line.starts_with("container_")
                    && (line.ends_with("non-counter metrics should not have \"_total\" suffix")
                        || line.contains("use base unit \"seconds\" instead of"));
                assert!(containerd_name, "promtool lint finding: {line}\n{report}");
            }
        }
        _ => panic!(
            "promtool check metrics failed ({}):\n{report}\n--- scrape ---\n{text}",
            out.status
        ),
    }
}

/// Kills a child we started, by pid, and reaps it.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ctr events` on a daemon, subscribed before [`EventWatcher::start`] returns (events are not
/// replayed to late subscribers). Lines are `<time> <namespace> <topic> {...}`.
pub struct EventWatcher {
    lines: Receiver<String>,
    /// Every line received so far.
    pub seen: Vec<String>,
    reader: Option<std::thread::JoinHandle<()>>,
    child: Option<KillOnDrop>,
}

impl EventWatcher {
    pub fn start(d: &Daemon) -> EventWatcher {
        let mut child = Command::new("ctr")
            .arg("--address")
            .arg(&d.socket)
            .arg("events")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run ctr events");
        let stdout = child.stdout.take().expect("ctr events stdout");
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut w = EventWatcher {
            lines,
            seen: Vec::new(),
            reader: Some(reader),
            child: Some(KillOnDrop(child)),
        };
        // Subscribed once it prints a namespace created for that.
        for i in 0.. {
            let probe = format!("events-ready-{i}");
            d.ctr_ok(&["namespaces", "create", &probe]);
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline && !w.seen.iter().any(|l| l.contains(&probe)) {
                if let Ok(line) = w.lines.recv_timeout(Duration::from_millis(50)) {
                    w.seen.push(line);
                }
            }
            d.ctr_ok(&["namespaces", "remove", &probe]);
            if w.seen.iter().any(|l| l.contains(&probe)) {
                break;
            }
            assert!(i < 30, "`ctr events` never printed an event: {:?}", w.seen);
        }
        w
    }

    /// Waits (at most `limit`) for a line that contains every one of `parts`; returns it.
    pub fn wait_for(&mut self, parts: &[&str], limit: Duration) -> String {
        let found = |l: &String| parts.iter().all(|p| l.contains(p));
        let deadline = Instant::now() + limit;
        loop {
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(line);
            }
            if let Some(l) = self.seen.iter().find(|l| found(l)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no event with {parts:?} within {limit:?}; seen: {:#?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for EventWatcher {
    fn drop(&mut self) {
        drop(self.child.take());
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// The metric families `docs/METRICS.md` lists (first cell of its tables), and those it says
/// appear only after their event (the bullets of "Families that appear only after their event").
pub fn documented_families() -> (
    std::collections::BTreeSet<String>,
    std::collections::BTreeSet<String>,
) {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/METRICS.md"))
        .expect("read docs/METRICS.md");
    let name = |s: &str| s.split('`').nth(1).map(str::to_owned);
    let mut all = std::collections::BTreeSet::new();
    let mut event_only = std::collections::BTreeSet::new();
    let mut in_event_list = false;
    for line in doc.lines() {
        if line.starts_with("## ") {
            in_event_list = line.contains("appear only after their event");
        }
        if let Some(rest) = line.strip_prefix("| `") {
            all.extend(name(&format!("`{rest}")));
        } else if in_event_list && let Some(rest) = line.strip_prefix("- `") {
            event_only.extend(name(&format!("`{rest}")));
        }
    }
    (all, event_only)
}

/// The families of a Prometheus text exposition (its `# TYPE` lines).
pub fn served_families(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Checks `docs/METRICS.md` against a scrape taken after a pod ran: every served family is
/// documented; every documented `taskd_*`/`process_*` family is served unless documented
/// as appearing only after its event.
pub fn check_metrics_doc(scrape: &str) {
    let (documented, event_only) = documented_families();
    let served = served_families(scrape);
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "served but not in docs/METRICS.md: {undocumented:?}"
    );
    let missing: Vec<_> = documented
        .iter()
        .filter(|f| f.starts_with("taskd_") || f.starts_with("process_"))
        .filter(|f| !served.contains(*f) && !event_only.contains(*f))
        .collect();
    assert!(
        missing.is_empty(),
        "in docs/METRICS.md but not served (list them under \"appear only after their event\" if so): {missing:?}"
    );
    assert!(event_only.is_subset(&documented), "{event_only:?}");
}
