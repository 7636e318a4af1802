//! The daemon's skeleton against the real binary and the real `ctr`: startup, sockets,
//! locking, config, signals, HTTP endpoints.

mod support;

use support::Daemon;

#[test]
fn smoke_daemon_serves_and_ctr_reaches_it() {
    support::require_bin("ctr", "containerd");
    let mut d = Daemon::start();
    assert!(std::os::unix::net::UnixStream::connect(&d.socket).is_ok());
    assert!(std::os::unix::net::UnixStream::connect(&d.ttrpc_socket).is_ok());
    // `ctr version` reaches the server (whatever it answers, the client part prints).
    let out = d.ctr(&["version"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Client:"), "{stdout}");
    let status = d.stop();
    assert!(status.success(), "{status}\n{}", d.log());
}
