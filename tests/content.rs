//! The content service against a real taskd: the real `ctr content …` commands, and a tonic
//! client for what ctr does not expose (resumed writes, ranged reads, statuses).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use sha2::Digest;
use support::Daemon;
use taskd_proto::containerd::services::content::v1 as api;
use taskd_proto::containerd::services::content::v1::content_client::ContentClient;
use tonic::Request;

fn sha256(data: &[u8]) -> String {
    let mut s = String::from("sha256:");
    for b in sha2::Sha256::digest(data) {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// `ctr --address SOCK ARGS` with `input` on stdin.
fn ctr_stdin(d: &Daemon, args: &[&str], input: &[u8]) -> Output {
    support::require(&[support::Need::Bin("ctr", "containerd")]);
    let mut child = Command::new("ctr")
        .arg("--address")
        .arg(&d.socket)
        .args(args)
        .env_remove("CONTAINERD_ADDRESS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ctr");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn with_ns<T>(ns: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("containerd-namespace", ns.parse().unwrap());
    r
}

#[test]
#[ignore = "e2e: needs ctr (containerd)"]
fn ctr_content_ingest_ls_get_label_rm() {
    let d = Daemon::start();
    let data = b"hello from ctr content ingest\n";
    let digest = sha256(data);
    ok(
        ctr_stdin(
            &d,
            &[
                "-n",
                "t",
                "content",
                "ingest",
                "--expected-size",
                "30",
                "--expected-digest",
                &digest,
                "ref1",
            ],
            data,
        ),
        "content ingest",
    );
    let ls = d.ctr_ok(&["-n", "t", "content", "ls"]);
    assert!(ls.contains(&digest) && ls.contains("30B"), "{ls}");
    assert_eq!(d.ctr_ok(&["-n", "t", "content", "get", &digest]).as_bytes(), data);
    d.ctr_ok(&["-n", "t", "content", "label", &digest, "app=web"]);
    let ls = d.ctr_ok(&["-n", "t", "content", "ls"]);
    assert!(ls.contains("app=web"), "{ls}");
    // Another namespace does not see it.
    assert!(!d.ctr_ok(&["-n", "other", "content", "ls"]).contains(&digest));
    // A namespace holding content cannot be deleted.
    let out = d.ctr(&["namespaces", "rm", "t"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("content blob"), "{err}");
    let path = d
        .root
        .join("io.containerd.content.v1.content/blobs/sha256")
        .join(&digest["sha256:".len()..]);
    assert!(path.exists());
    d.ctr_ok(&["-n", "t", "content", "rm", &digest]);
    assert!(!d.ctr_ok(&["-n", "t", "content", "ls"]).contains(&digest));
    assert!(!path.exists(), "the last namespace's delete removes the file");
    d.ctr_ok(&["namespaces", "rm", "t"]);
}

#[test]
#[ignore = "e2e: needs ctr (containerd)"]
fn ctr_content_ingest_with_a_wrong_digest_fails_naming_both_and_commits_nothing() {
    let d = Daemon::start();
    let data = b"actual bytes";
    let wrong = sha256(b"other bytes");
    let out = ctr_stdin(
        &d,
        &["content", "ingest", "--expected-digest", &wrong, "bad"],
        data,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&wrong) && err.contains(&sha256(data)), "{err}");
    assert!(err.contains("failed precondition"), "{err}");
    let ls = d.ctr_ok(&["content", "ls", "-q"]);
    assert!(ls.trim().is_empty(), "{ls}");
    // The ingest stays, visible as active, until aborted.
    assert!(d.ctr_ok(&["content", "active"]).contains("bad"));
    let out = ctr_stdin(&d, &["content", "ingest", "--expected-size", "3", "short"], data);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("unexpected size"), "{err}");
}

/// One `Write` session in namespace `t` under `r#ref`: sends `msgs` and returns the
/// response stream.
async fn write_session(
    c: &mut ContentClient<tonic::transport::Channel>,
    msgs: Vec<api::WriteContentRequest>,
) -> tonic::Streaming<api::WriteContentResponse> {
    c.write(with_ns("t", futures::stream::iter(msgs)))
        .await
        .unwrap()
        .into_inner()
}

fn stat_msg(r#ref: &str) -> api::WriteContentRequest {
    api::WriteContentRequest {
        action: api::WriteAction::Stat as i32,
        r#ref: r#ref.into(),
        ..Default::default()
    }
}

/// A `Write` (or `Commit`) message on ref `big` carrying `data` at `offset`.
fn chunk_msg(action: api::WriteAction, offset: i64, data: &[u8]) -> api::WriteContentRequest {
    api::WriteContentRequest {
        action: action as i32,
        r#ref: "big".into(),
        offset,
        data: data.to_vec(),
        ..Default::default()
    }
}

/// 3 MB that are not all one byte: more than two of the store's 1 MiB read chunks.
fn big_data() -> Vec<u8> {
    (0..3_000_000u32).map(|i| (i % 251) as u8).collect()
}

/// A first session on ref `big` that stats (with total and expected digest), writes the
/// first 1 MB of `data` and hangs up; checks the two replies.
async fn write_first_megabyte_and_hang_up(c: &mut ContentClient<tonic::transport::Channel>, data: &[u8]) {
    let total = data.len() as i64;
    let first = vec![
        api::WriteContentRequest {
            total,
            expected: sha256(data),
            ..stat_msg("big")
        },
        chunk_msg(api::WriteAction::Write, 0, &data[..1_000_000]),
    ];
    let mut out = write_session(c, first).await;
    let stat = out.message().await.unwrap().unwrap();
    assert_eq!((stat.offset, stat.total), (0, total));
    let w = out.message().await.unwrap().unwrap();
    assert_eq!(w.offset, 1_000_000);
}

/// The session that resumes ref `big` after [`write_first_megabyte_and_hang_up`]: stat
/// (which reports the offset reached) and commit the rest.
async fn resume_and_commit(c: &mut ContentClient<tonic::transport::Channel>, data: &[u8]) {
    let (digest, total) = (sha256(data), data.len() as i64);
    let rest = vec![
        stat_msg("big"),
        api::WriteContentRequest {
            total,
            expected: digest.clone(),
            ..chunk_msg(api::WriteAction::Commit, 1_000_000, &data[1_000_000..])
        },
    ];
    let mut out = write_session(c, rest).await;
    assert_eq!(out.message().await.unwrap().unwrap().offset, 1_000_000);
    let commit = out.message().await.unwrap().unwrap();
    assert_eq!((commit.offset, commit.digest.as_str()), (total, digest.as_str()));
}

/// A daemon holding [`big_data`] committed in namespace `t` (in two sessions, as a client
/// that resumes would); returns the client and the data.
async fn daemon_with_big_blob() -> (Daemon, ContentClient<tonic::transport::Channel>, Vec<u8>) {
    let d = Daemon::start();
    let mut c = ContentClient::new(d.channel().await);
    let data = big_data();
    write_first_megabyte_and_hang_up(&mut c, &data).await;
    resume_and_commit(&mut c, &data).await;
    (d, c, data)
}

/// The status code of a `Read` call (the error comes with the response or not at all).
async fn read_code(
    c: &mut ContentClient<tonic::transport::Channel>,
    req: api::ReadContentRequest,
) -> tonic::Code {
    match c.read(with_ns("t", req)).await {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_hangs_up_is_a_partial_status_and_commits_nothing() {
    let d = Daemon::start();
    let mut c = ContentClient::new(d.channel().await);
    let data = big_data();
    let digest = sha256(&data);
    write_first_megabyte_and_hang_up(&mut c, &data).await;

    let st = c
        .status(with_ns("t", api::StatusRequest { r#ref: "big".into() }))
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(
        (st.offset, st.total, st.expected.as_str()),
        (1_000_000, data.len() as i64, digest.as_str())
    );
    let err = c
        .info(with_ns("t", api::InfoRequest { digest }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_write_at_another_offset_than_the_one_reached_is_out_of_range() {
    let d = Daemon::start();
    let mut c = ContentClient::new(d.channel().await);
    write_first_megabyte_and_hang_up(&mut c, &big_data()).await;
    let bad = vec![stat_msg("big"), chunk_msg(api::WriteAction::Write, 5, &[1])];
    let mut out = write_session(&mut c, bad).await;
    assert_eq!(out.message().await.unwrap().unwrap().offset, 1_000_000);
    assert_eq!(out.message().await.unwrap_err().code(), tonic::Code::OutOfRange);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_resumed_by_ref_commits_and_leaves_no_status() {
    // daemon_with_big_blob resumes the write and checks the stat and commit replies.
    let (_d, mut c, _) = daemon_with_big_blob().await;
    let statuses = c
        .list_statuses(with_ns("t", api::ListStatusesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(statuses.statuses.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ranged_read_across_a_chunk_boundary_returns_exactly_the_range() {
    let (_d, mut c, data) = daemon_with_big_blob().await;
    let mut rd = c
        .read(with_ns(
            "t",
            api::ReadContentRequest {
                digest: sha256(&data),
                offset: 1_048_000,
                size: 2_000,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = rd.message().await.unwrap() {
        assert_eq!(m.offset, 1_048_000 + got.len() as i64);
        got.extend(m.data);
    }
    assert_eq!(got, data[1_048_000..1_050_000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_expecting_a_committed_digest_is_already_exists() {
    let (_d, mut c, data) = daemon_with_big_blob().await;
    let again = vec![api::WriteContentRequest {
        expected: sha256(&data),
        ..stat_msg("again")
    }];
    let mut out = write_session(&mut c, again).await;
    assert_eq!(
        out.message().await.unwrap_err().code(),
        tonic::Code::AlreadyExists
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_beyond_the_end_is_out_of_range() {
    let (_d, mut c, data) = daemon_with_big_blob().await;
    let req = api::ReadContentRequest {
        digest: sha256(&data),
        offset: data.len() as i64 + 1,
        size: 0,
    };
    assert_eq!(read_code(&mut c, req).await, tonic::Code::OutOfRange);
}

/// The status code of a whole-blob `Read` of `digest` on a fresh daemon.
async fn read_code_on_an_empty_store(digest: String) -> tonic::Code {
    let d = Daemon::start();
    let mut c = ContentClient::new(d.channel().await);
    let req = api::ReadContentRequest {
        digest,
        ..Default::default()
    };
    read_code(&mut c, req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_an_unknown_digest_is_not_found() {
    let code = read_code_on_an_empty_store(sha256(b"nope")).await;
    assert_eq!(code, tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_a_malformed_digest_is_invalid_argument() {
    let code = read_code_on_an_empty_store("sha256:../../etc".into()).await;
    assert_eq!(code, tonic::Code::InvalidArgument);
}

#[test]
#[ignore = "e2e: needs ctr (containerd)"]
fn content_survives_a_restart() {
    let mut d = Daemon::start();
    let data = b"durable";
    let digest = sha256(data);
    ok(ctr_stdin(&d, &["content", "ingest", "r"], data), "ingest");
    let partial = b"partial";
    // A partial write (no commit): ctr ingest with a wrong size leaves the ingest behind.
    let _ = ctr_stdin(
        &d,
        &["content", "ingest", "--expected-size", "100", "part"],
        partial,
    );
    d.kill9();
    d.restart();
    assert_eq!(d.ctr_ok(&["content", "get", &digest]).as_bytes(), data);
    let active = d.ctr_ok(&["content", "active"]);
    assert!(active.contains("part"), "{active}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs ctr (containerd)"]
async fn content_written_under_a_lease_survives_gc_until_the_lease_is_deleted() {
    let d = Daemon::start_with("[plugins.\"io.containerd.internal.v1.gc\"]\ninterval_ms = 200\n");
    let mut c = ContentClient::new(d.channel().await);
    d.ctr_ok(&["-n", "t", "leases", "create", "--id", "keep"]);
    let data = b"leased bytes".to_vec();
    let digest = sha256(&data);
    let msgs = vec![api::WriteContentRequest {
        action: api::WriteAction::Commit as i32,
        r#ref: "leased".into(),
        total: data.len() as i64,
        expected: digest.clone(),
        data: data.clone(),
        ..Default::default()
    }];
    let mut req = with_ns("t", futures::stream::iter(msgs));
    req.metadata_mut()
        .insert("containerd-lease", "keep".parse().unwrap());
    let mut out = c.write(req).await.unwrap().into_inner();
    assert_eq!(out.message().await.unwrap().unwrap().digest, digest);
    drop(out);
    let res = d.ctr_ok(&["-n", "t", "leases", "ls"]);
    assert!(res.contains("keep"), "{res}");

    // Unreferenced content without a lease goes at the next collection...
    let loose = b"loose bytes";
    let out = ctr_stdin(&d, &["-n", "t", "content", "ingest", "loose"], loose);
    assert!(out.status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while d
        .ctr_ok(&["-n", "t", "content", "ls", "-q"])
        .contains(&sha256(loose))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "loose content never collected"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // ... while the leased one stays.
    assert_eq!(d.ctr_ok(&["-n", "t", "content", "get", &digest]).as_bytes(), data);

    // Deleting the lease with --sync collects before returning.
    d.ctr_ok(&["-n", "t", "leases", "rm", "--sync", "keep"]);
    assert!(!d.ctr_ok(&["-n", "t", "content", "ls", "-q"]).contains(&digest));
}
