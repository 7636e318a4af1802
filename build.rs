//! Stamps the build with the git revision (`TASKD_REVISION`), shown by the version
//! service (`ctr version`). `TASKD_REVISION` in the environment wins (for builds from a
//! source tarball); without git the revision is "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

/// Watch a path only if it exists: a missing watched path would rerun this script (and
/// rebuild the crate) on every build.
fn watch(path: Option<String>) {
    if let Some(p) = path
        && std::path::Path::new(&p).exists()
    {
        println!("cargo:rerun-if-changed={p}");
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=TASKD_REVISION");
    let revision = match std::env::var("TASKD_REVISION") {
        Ok(r) if !r.is_empty() => r,
        _ => {
            // Rebuild when HEAD moves: watch HEAD, the branch it points to and packed-refs.
            watch(git(&["rev-parse", "--git-path", "HEAD"]));
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch(git(&["rev-parse", "--git-path", &branch]));
            }
            watch(git(&["rev-parse", "--git-path", "packed-refs"]));
            git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    println!("cargo:rustc-env=TASKD_REVISION={revision}");
}
