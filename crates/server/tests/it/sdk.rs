//! The TypeScript SDK's own suite (`clients/typescript/test`, node's test
//! runner) against this build's `wsgate` binary: the suite starts and
//! stops the binary itself (restarts, a TCP proxy it cuts, the disconnect
//! API). `scripts/test.sh` installs its npm dependencies.

use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Command;

#[tokio::test]
async fn typescript_sdk_suite_passes_against_the_binary() {
    let sdk = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../clients/typescript");
    assert!(
        sdk.join("node_modules/typescript").is_dir(),
        "run `npm ci --prefix clients/typescript` (scripts/test.sh does it)"
    );
    let build = Command::new("npm")
        .args(["run", "--silent", "build"])
        .current_dir(&sdk)
        .output()
        .await
        .expect("npm runs");
    assert!(
        build.status.success(),
        "the SDK builds:\n{}{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );
    // Its own process group: on a timeout the whole tree (npm, node and
    // the servers the suite started) is killed, not only npm.
    let child = Command::new("npm")
        .args(["run", "--silent", "test"])
        .current_dir(&sdk)
        .env("WSGATE_BIN", env!("CARGO_BIN_EXE_wsgate"))
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("npm runs");
    let group = child.id().expect("a running child has a pid");
    let Ok(out) = tokio::time::timeout(Duration::from_secs(240), child.wait_with_output()).await
    else {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{group}")])
            .status();
        panic!("the SDK suite did not end within 4 minutes (its process group was killed)");
    };
    let out = out.expect("npm runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the SDK suite failed:\n{report}");
    // node's test runner ends with "# pass N" / "# fail 0": a suite that ran
    // nothing is not a pass.
    let passed = report
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("# pass ")
                .or_else(|| l.trim().strip_prefix("ℹ pass "))
        })
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    assert!(passed >= 10, "the SDK suite ran {passed} tests:\n{report}");
}
