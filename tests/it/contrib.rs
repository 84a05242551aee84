//! The files in `contrib/`: the systemd unit passes `systemd-analyze verify` (with
//! its `ExecStart` pointed at the binary just built, which must exist for the
//! check), and any complaint, even one systemd only warns about and ignores (an
//! unknown key, a bad value), fails the test.

use std::path::Path;
use std::process::Command;

/// The unit as shipped, its binary replaced by the one under test.
fn unit_for_this_build(dir: &Path) -> std::path::PathBuf {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/postbote.service"),
    )
    .expect("contrib/postbote.service");
    assert!(
        shipped.contains(
            "ExecStart=/usr/local/bin/postbote --config /etc/postbote/postbote.toml serve"
        ),
        "the documented ExecStart"
    );
    let unit = dir.join("postbote.service");
    std::fs::write(
        &unit,
        shipped.replace("/usr/local/bin/postbote", env!("CARGO_BIN_EXE_postbote")),
    )
    .unwrap();
    unit
}

/// `systemd-analyze verify` on `unit`: (success, everything it printed).
fn verify(unit: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("systemd-analyze (package systemd) is installed");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said.trim().to_owned())
}

#[test]
fn the_systemd_unit_verifies_without_a_complaint() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_this_build(dir.path());
    let (ok, said) = verify(&unit);
    assert!(ok && said.is_empty(), "systemd-analyze verify: {said}");

    let text = std::fs::read_to_string(&unit).unwrap();
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "StateDirectory=postbote",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(text.contains(hardening), "missing {hardening:?}");
    }
}

#[test]
fn a_unit_with_a_mistake_is_what_the_check_catches() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_this_build(dir.path());
    let text = std::fs::read_to_string(&unit).unwrap();
    for broken in [
        text.replace("ProtectSystem=strict", "ProtectSystem=strickt"),
        text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"),
        text.replace(env!("CARGO_BIN_EXE_postbote"), "/nonexistent/postbote"),
    ] {
        std::fs::write(&unit, broken).unwrap();
        let (ok, said) = verify(&unit);
        assert!(!ok || !said.is_empty(), "a broken unit passed");
    }
}
