//! The independent clients of `tests/clients/`: programs that share nothing with taskd's
//! HTTP/2, SPDY or WebSocket code, run as child processes. Each prints one JSON report as
//! its last stdout line; these helpers run them and return that report.
//!
//! - `spdy/` (Go, github.com/moby/spdystream): kubelet's SPDY/3.1 remotecommand and
//!   portforward clients; built once per test binary with Debian's Go in GOPATH mode.
//! - `grpcgo/` (Go, Debian's grpc-go 1.33): one unary call dialled as kubelet and crictl
//!   up to 1.26 dial (socket path as target and :authority).
//! - `ws_client.py` (PyPI websocket-client): WebSocket remotecommand and portforward.
//! - `cri_grpc.py` (PyPI grpcio + grpcio-tools): CRI and containerd API calls over grpcio's
//!   default unix-socket channel.
//! - `otlp_collector.py` (PyPI grpcio + opentelemetry-proto): an OTLP/gRPC trace collector
//!   on loopback that writes the spans it receives as JSON lines ([`OtlpCollector`]).
//!
//! A missing client toolchain fails the test with what to install (`scripts/test.sh`
//! installs all of it).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// What `scripts/test.sh` installs for these clients.
pub const APT: &str = "apt-get install golang-go golang-github-moby-spdystream-dev golang-google-grpc-dev";
pub const PIP: &str =
    "pip install grpcio==1.85.1 grpcio-tools==1.85.1 websocket-client==1.9.2 opentelemetry-proto==1.45.2";

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("clients")
}

/// Builds `tests/clients/<dir>` with Debian's Go (GOPATH mode, no network) into the cargo
/// target's tmp dir; panics saying what to install when Go or a library is missing.
fn go_build(dir: &str, needs: &str) -> PathBuf {
    assert!(
        crate::support::which("go").is_some(),
        "the {dir} test client needs Go: {APT}"
    );
    assert!(
        Path::new("/usr/share/gocode/src").join(needs).is_dir(),
        "the {dir} test client needs /usr/share/gocode/src/{needs}: {APT}"
    );
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("clients");
    std::fs::create_dir_all(&out_dir).expect("create the clients' build dir");
    let bin = out_dir.join(dir);
    // Built under a per-process name, then renamed: test binaries never see half a file.
    let tmp = out_dir.join(format!("{dir}.{}", std::process::id()));
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&tmp)
        .arg(format!("./{dir}"))
        .current_dir(clients_dir())
        .env("GOPATH", "/usr/share/gocode")
        .env("GO111MODULE", "off")
        .env("GOCACHE", out_dir.join("gocache"))
        .env("GOPROXY", "off")
        .env("GOENV", "off")
        .stdin(Stdio::null())
        .output()
        .expect("run go build");
    assert!(
        out.status.success(),
        "go build tests/clients/{dir} failed ({}): {}\n(needs: {APT})",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&tmp, &bin).expect("move the built client into place");
    bin
}

/// The SPDY client (`tests/clients/spdy`), built once per test binary.
pub fn spdy_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| go_build("spdy", "github.com/moby/spdystream"))
}

/// The grpc-go client (`tests/clients/grpcgo`), built once per test binary.
pub fn grpcgo_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| go_build("grpcgo", "google.golang.org/grpc"))
}

/// Panics saying what to install unless python3 can import `modules`.
fn require_python(modules: &str) {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let r = CHECKED.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import grpc, grpc_tools, websocket"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("python3: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    if let Err(e) = r {
        panic!("the {modules} test clients need Python modules: {PIP}\n{e}");
    }
}

/// The JSON report a client printed (its last stdout line), its exit status, its stderr.
pub struct Report {
    pub json: serde_json::Value,
    pub success: bool,
    pub stderr: String,
    pub what: String,
}

impl Report {
    fn from(what: String, out: Output) -> Report {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let last = stdout.lines().last().unwrap_or_default();
        let json = serde_json::from_str(last).unwrap_or_else(|e| {
            panic!(
                "{what}: no JSON report ({e}; {})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
                out.status
            )
        });
        Report {
            json,
            success: out.status.success(),
            stderr,
            what,
        }
    }

    /// The report, after asserting the client ended its session without a client-side error.
    pub fn ok(self) -> serde_json::Value {
        assert!(
            self.success,
            "{} failed: {}\n--- stderr ---\n{}",
            self.what, self.json, self.stderr
        );
        self.json
    }

    /// `json[key]` as a string ("" when absent).
    pub fn str(&self, key: &str) -> &str {
        self.json[key].as_str().unwrap_or_default()
    }
}

fn run(what: String, mut cmd: Command, stdin: Option<&[u8]>) -> Report {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = match stdin {
        None => cmd.stdin(Stdio::null()).output().expect("run a test client"),
        Some(data) => {
            use std::io::Write;
            let mut child = cmd.stdin(Stdio::piped()).spawn().expect("run a test client");
            let mut pipe = child.stdin.take().expect("client stdin");
            pipe.write_all(data).expect("write the client's stdin");
            drop(pipe);
            child.wait_with_output().expect("wait for a test client")
        }
    };
    Report::from(what, out)
}

/// `spdyclient MODE ARGS... URL` (see tests/clients/spdy/main.go for the flags).
pub fn spdy(mode: &str, args: &[&str], url: &str) -> Report {
    let mut c = Command::new(spdy_bin());
    c.arg(mode).args(args).arg(url);
    run(format!("spdyclient {mode} {args:?} {url}"), c, None)
}

/// As [`spdy`], with `stdin` piped to the client (its stdin stream, with `-stdin`).
pub fn spdy_with_stdin(mode: &str, args: &[&str], url: &str, stdin: &[u8]) -> Report {
    let mut c = Command::new(spdy_bin());
    c.arg(mode).args(args).arg(url);
    run(format!("spdyclient {mode} {args:?} {url}"), c, Some(stdin))
}

/// The async form of [`spdy`], for many sessions at once.
pub async fn spdy_async(mode: &str, args: &[&str], url: &str) -> Report {
    let out = tokio::process::Command::new(spdy_bin())
        .arg(mode)
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run spdyclient");
    Report::from(format!("spdyclient {mode} {args:?} {url}"), out)
}

/// `grpcgo -socket SOCKET -method METHOD`.
pub fn grpcgo(socket: &Path, method: &str) -> Report {
    let mut c = Command::new(grpcgo_bin());
    c.arg("-socket").arg(socket).args(["-method", method]);
    run(format!("grpcgo {method}"), c, None)
}

/// `ws_client.py MODE URL ARGS...`.
pub fn ws(mode: &str, url: &str, args: &[&str]) -> Report {
    require_python("websocket-client");
    let mut c = Command::new("python3");
    c.arg(clients_dir().join("ws_client.py"))
        .arg(mode)
        .arg(url)
        .args(args);
    run(format!("ws_client.py {mode} {url} {args:?}"), c, None)
}

/// `cri_grpc.py SOCKET ARGS...` (stubs generated from the vendored api.proto each run).
pub fn cri_grpc(socket: &Path, args: &[&str]) -> Report {
    require_python("grpcio");
    let mut c = Command::new("python3");
    c.arg(clients_dir().join("cri_grpc.py")).arg(socket).args(args);
    run(format!("cri_grpc.py {args:?}"), c, None)
}

/// `otlp_collector.py OUT`: an OTLP/gRPC trace collector on 127.0.0.1, stopped (killed) on
/// drop; it also stops by itself after ten minutes.
pub struct OtlpCollector {
    child: std::process::Child,
    pub port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl OtlpCollector {
    pub fn start() -> OtlpCollector {
        let check = Command::new("python3")
            .args([
                "-c",
                "import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run python3");
        assert!(
            check.status.success(),
            "the OTLP collector needs Python modules: {PIP}\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let dir = tempfile::tempdir().expect("the collector's temp dir");
        let out = dir.path().join("spans.jsonl");
        let mut child = Command::new("python3")
            .arg(clients_dir().join("otlp_collector.py"))
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start otlp_collector.py");
        let mut first = String::new();
        let stdout = child.stdout.take().expect("collector stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first)
            .expect("read the collector's port");
        let port = serde_json::from_str::<serde_json::Value>(&first)
            .ok()
            .and_then(|v| v["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("otlp_collector.py did not report its port: {first:?}")
            });
        OtlpCollector {
            child,
            port,
            out,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT`, for `[tracing] endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for OtlpCollector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
