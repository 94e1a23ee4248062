//! Runs of the binary that are meant to end on their own (start-up refusals, `check-config`):
//! exit code, everything it printed, and how long it took.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How a run of the binary ended.
pub struct Exit {
    pub code: i32,
    /// stdout then stderr.
    pub output: String,
    pub took: Duration,
}

/// Runs `agentry-gateway <command> --config FILE` and waits up to `timeout` for it to exit
/// (killed and a test failure past that).
pub fn run_to_exit(command: &str, config: &Path, timeout: Duration) -> Exit {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentry-gateway"))
        .args([command, "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`{command}` still running after {timeout:?}:\n{}{}",
                std::fs::read_to_string(&out).unwrap_or_default(),
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Exit {
        code: status.code().unwrap_or(-1),
        output: std::fs::read_to_string(&out).unwrap_or_default()
            + &std::fs::read_to_string(&err).unwrap_or_default(),
        took: started.elapsed(),
    }
}
