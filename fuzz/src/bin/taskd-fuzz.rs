//! The libFuzzer binary: one for every target (one link), the target named by
//! `TASKD_FUZZ_TARGET`. Run it through `scripts/fuzz.sh TARGET SECONDS`.
#![no_main]

use std::sync::OnceLock;

static TARGET: OnceLock<fn(&[u8])> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let run = TARGET.get_or_init(|| {
        let name = std::env::var("TASKD_FUZZ_TARGET").unwrap_or_default();
        match taskd_fuzz::target(&name) {
            Some(t) => t,
            None => {
                eprintln!(
                    "TASKD_FUZZ_TARGET={name:?}: not a target (one of: {})",
                    taskd_fuzz::names().join(", ")
                );
                std::process::exit(2);
            }
        }
    });
    run(data);
});
