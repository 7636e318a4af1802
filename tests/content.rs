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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_is_resumable_by_ref_and_read_honours_offset_and_size() {
    let d = Daemon::start();
    let mut c = ContentClient::new(d.channel().await);
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let digest = sha256(&data);
    let total = data.len() as i64;

    // First session: stat, write the first 1 MB, hang up.
    let first = vec![
        api::WriteContentRequest {
            action: api::WriteAction::Stat as i32,
            r#ref: "big".into(),
            total,
            expected: digest.clone(),
            ..Default::default()
        },
        api::WriteContentRequest {
            action: api::WriteAction::Write as i32,
            r#ref: "big".into(),
            offset: 0,
            data: data[..1_000_000].to_vec(),
            ..Default::default()
        },
    ];
    let mut out = c
        .write(with_ns("t", futures::stream::iter(first)))
        .await
        .unwrap()
        .into_inner();
    let stat = out.message().await.unwrap().unwrap();
    assert_eq!((stat.offset, stat.total), (0, total));
    let w = out.message().await.unwrap().unwrap();
    assert_eq!(w.offset, 1_000_000);
    drop(out);

    // Status shows the partial write; nothing is committed.
    let st = c
        .status(with_ns("t", api::StatusRequest { r#ref: "big".into() }))
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(
        (st.offset, st.total, st.expected.as_str()),
        (1_000_000, total, digest.as_str())
    );
    let err = c
        .info(with_ns(
            "t",
            api::InfoRequest {
                digest: digest.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // Second session resumes at the offset, a wrong offset is OutOfRange.
    let bad = vec![
        api::WriteContentRequest {
            action: api::WriteAction::Stat as i32,
            r#ref: "big".into(),
            ..Default::default()
        },
        api::WriteContentRequest {
            action: api::WriteAction::Write as i32,
            r#ref: "big".into(),
            offset: 5,
            data: vec![1],
            ..Default::default()
        },
    ];
    let mut out = c
        .write(with_ns("t", futures::stream::iter(bad)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.message().await.unwrap().unwrap().offset, 1_000_000);
    assert_eq!(out.message().await.unwrap_err().code(), tonic::Code::OutOfRange);

    let rest = vec![
        api::WriteContentRequest {
            action: api::WriteAction::Stat as i32,
            r#ref: "big".into(),
            ..Default::default()
        },
        api::WriteContentRequest {
            action: api::WriteAction::Commit as i32,
            r#ref: "big".into(),
            offset: 1_000_000,
            total,
            expected: digest.clone(),
            data: data[1_000_000..].to_vec(),
            ..Default::default()
        },
    ];
    let mut out = c
        .write(with_ns("t", futures::stream::iter(rest)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.message().await.unwrap().unwrap().offset, 1_000_000);
    let commit = out.message().await.unwrap().unwrap();
    assert_eq!((commit.offset, commit.digest.as_str()), (total, digest.as_str()));
    drop(out);

    let statuses = c
        .list_statuses(with_ns("t", api::ListStatusesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(statuses.statuses.is_empty());

    // Ranged read across a chunk boundary.
    let mut rd = c
        .read(with_ns(
            "t",
            api::ReadContentRequest {
                digest: digest.clone(),
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

    // A write whose expected digest is committed already is AlreadyExists.
    let again = vec![api::WriteContentRequest {
        action: api::WriteAction::Stat as i32,
        r#ref: "again".into(),
        expected: digest.clone(),
        ..Default::default()
    }];
    let mut out = c
        .write(with_ns("t", futures::stream::iter(again)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        out.message().await.unwrap_err().code(),
        tonic::Code::AlreadyExists
    );

    // Reads beyond the end are OutOfRange; unknown digests NotFound; bad digests InvalidArgument.
    let code = |r: Result<tonic::Response<tonic::Streaming<api::ReadContentResponse>>, tonic::Status>| match r
    {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    };
    let r = c
        .read(with_ns(
            "t",
            api::ReadContentRequest {
                digest: digest.clone(),
                offset: total + 1,
                size: 0,
            },
        ))
        .await;
    assert_eq!(code(r), tonic::Code::OutOfRange);
    let r = c
        .read(with_ns(
            "t",
            api::ReadContentRequest {
                digest: sha256(b"nope"),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(code(r), tonic::Code::NotFound);
    let r = c
        .read(with_ns(
            "t",
            api::ReadContentRequest {
                digest: "sha256:../../etc".into(),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(code(r), tonic::Code::InvalidArgument);
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
