//! Stamps the git revision into the binary (`taskd_build_info{revision}`), "unknown" when
//! git is not available (e.g. a source tarball).
use std::process::Command;

fn main() {
    let rev = std::env::var("TASKD_REVISION")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        });
    println!(
        "cargo:rustc-env=TASKD_REVISION={}",
        rev.as_deref().unwrap_or("unknown")
    );
    println!("cargo:rerun-if-env-changed=TASKD_REVISION");
    println!("cargo:rerun-if-changed=build.rs");
    // Re-stamp when HEAD moves (works in worktrees: ask git where the files are).
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
    };
    let mut watch = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(r) = git(&["rev-parse", "--symbolic-full-name", "HEAD"]).filter(|r| r.starts_with("refs/")) {
        watch.push(git(&["rev-parse", "--git-path", &r]));
    }
    for path in watch.into_iter().flatten() {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
