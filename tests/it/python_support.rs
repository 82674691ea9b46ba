//! Python tools from PyPI for the tests that use an implementation nobody
//! here wrote (Amazon's SDKs, schemathesis, the Standard Webhooks library):
//! each in its own virtual environment under `target/`, made once, pinned.
//! Without Python or PyPI a test prints a note and passes, except under
//! `CI=true`, where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The virtual environment `target/{name}` with `requirements` installed
/// (each `package==version`), made if missing or different; its directory.
pub fn venv_with(name: &str, requirements: &[&str]) -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(name);
    let python = venv.join("bin/python");
    let check: String = requirements
        .iter()
        .map(|r| {
            let (package, version) = r.split_once("==").expect("package==version");
            format!("assert m.version('{package}') == '{version}'; ")
        })
        .collect();
    let installed = || {
        Command::new(&python)
            .args(["-c", &format!("import importlib.metadata as m; {check}")])
            .status()
            .is_ok_and(|s| s.success())
    };
    if python.exists() && installed() {
        return Some(venv);
    }
    let made = Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success());
    let pip = made
        && Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(requirements)
            .status()
            .is_ok_and(|s| s.success());
    if pip && installed() {
        return Some(venv);
    }
    let message = format!(
        "`pip install {}` into target/{name} failed (Debian's python3-venv; PyPI)",
        requirements.join(" ")
    );
    if is_ci() {
        panic!("CI=true and {message}");
    }
    eprintln!("SKIPPED: {message}");
    None
}
