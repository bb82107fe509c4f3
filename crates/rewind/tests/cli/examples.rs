//! Every file under `examples/` is a config a user may copy: each must pass `rewind check`.

use std::path::PathBuf;

use crate::common::BIN;

#[test]
fn every_example_config_is_valid() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/").flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "toml") {
            n += 1;
            let out = std::process::Command::new(BIN)
                .arg("-c")
                .arg(&p)
                .arg("check")
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}: {}",
                p.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert!(n >= 3, "only {n} example configs");
}
