//! An `ipsec-engine` child process in a namespace, stopped (SIGTERM, then SIGKILL) on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running engine with its stdout / stderr in files.
pub struct EngineProcess {
    pub name: String,
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl EngineProcess {
    /// Runs `ip netns exec NS [wrapper …] EXE ARGS …` (`RUST_LOG=info`), its output in
    /// `DIR/NAME.out` and `DIR/NAME.err`, and waits up to 30 s for the "running" line; panics
    /// with the logs if it exits or does not get there. `exe` is the engine binary (the calling
    /// test's `env!("CARGO_BIN_EXE_ipsec-engine")`).
    pub fn spawn(exe: &str, dir: &Path, ns: &str, name: &str, wrapper: &[&str], args: &[&str]) -> EngineProcess {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(wrapper)
            .arg(exe)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .expect("spawn ipsec-engine");
        let mut e = EngineProcess { name: name.into(), child: Some(child), out, err };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if e.stdout().contains("running") {
                break;
            }
            if let Some(status) = e.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited at start ({status}):\n{}", e.name, e.logs());
            }
            assert!(Instant::now() < deadline, "{} did not start:\n{}", e.name, e.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        e
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        format!("--- {} stdout\n{}\n--- {} stderr\n{}", self.name, self.stdout(), self.name, self.stderr())
    }

    /// Stops the engine and returns its logs (final stats included).
    pub fn stop(&mut self) -> String {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.logs()
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
