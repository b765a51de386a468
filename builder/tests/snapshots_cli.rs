//! What `comfy-build` users read, pinned as snapshots (insta): its help texts. A changed word
//! shows up as a diff to review (`cargo insta review`).
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn help_texts() {
    for args in [
        vec!["--help"],
        vec!["build", "--help"],
        vec!["diff", "--help"],
        vec!["doctor", "--help"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_comfy-build"))
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success());
        insta::with_settings!({ prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!(
                format!("help-{}", args[0].trim_start_matches('-')),
                String::from_utf8_lossy(&out.stdout)
            );
        });
    }
}
