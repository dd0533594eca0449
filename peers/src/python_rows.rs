//! Python's multiprocessing rows: `peers/python/mp_peer.py` runs as a helper process for the
//! whole run and takes one measurement per request line, so its repetitions interleave with
//! the other systems' like any row's.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use crate::harness::set_python;

/// The running helper. Dropped without [`Python::stop`] (a failed run), it is killed and
/// reaped.
pub struct Python {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// The helper's first line: "ready python 3.x.y".
    pub version: String,
}

impl Python {
    /// Starts the helper, or says why not (no python3: the row is left out, with a note).
    pub fn start(script: &std::path::Path) -> Result<Python, String> {
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("python3 {}: {e}", script.display()))?;
        set_python(child.id() as i32);
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("python3: no pipes".into());
        };
        let mut py = Python {
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
            version: String::new(),
        };
        let line = py.line()?;
        match line.strip_prefix("ready python ") {
            Some(v) => py.version = v.to_string(),
            None => return Err(format!("python helper said {line:?}")),
        }
        Ok(py)
    }

    fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err("python helper exited".into()),
            Ok(_) => Ok(line.trim_end().to_string()),
            Err(e) => Err(format!("python helper: {e}")),
        }
    }

    /// One measurement: `kind` is "rtt" or "stream"; returns the time of the `n` timed messages.
    pub fn measure(&mut self, kind: &str, size: usize, n: u64) -> Result<Duration, String> {
        let stdin = self.stdin.as_mut().ok_or("python helper stopped")?;
        writeln!(stdin, "{kind} {size} {n}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("python helper: {e}"))?;
        let line = self.line()?;
        match line.strip_prefix("ok ") {
            Some(ns) => ns
                .parse::<u64>()
                .map(Duration::from_nanos)
                .map_err(|e| format!("python helper said {line:?}: {e}")),
            None => Err(format!("python {kind} {size} B: {line}")),
        }
    }

    /// Closes the helper's stdin (it exits) and reaps it.
    pub fn stop(mut self) -> Result<(), String> {
        drop(self.stdin.take());
        let status = self.child.wait().map_err(|e| e.to_string())?;
        set_python(0);
        if status.success() {
            Ok(())
        } else {
            Err(format!("python helper exited with {status}"))
        }
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            set_python(0);
        }
    }
}
