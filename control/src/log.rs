//! The daemon's log: one line per event, prefixed with the seconds since start.
//!
//! Nothing secret is ever formatted into it: PSKs and keys only exist in types whose `Debug`
//! redacts them, and the daemon logs SPIs, algorithms, selectors and addresses only.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A shared line logger.
#[derive(Clone)]
pub struct Logger {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    start: Instant,
}

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Logger")
    }
}

impl Logger {
    /// A logger writing to `out`.
    #[must_use]
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Logger { out: Arc::new(Mutex::new(out)), start: Instant::now() }
    }

    /// A logger writing to stderr.
    #[must_use]
    pub fn stderr() -> Self {
        Self::new(Box::new(std::io::stderr()))
    }

    /// Writes one line.
    pub fn line(&self, args: std::fmt::Arguments<'_>) {
        let t = self.start.elapsed();
        if let Ok(mut o) = self.out.lock() {
            let _ = writeln!(o, "[{:>5}.{:03}] {args}", t.as_secs(), t.subsec_millis());
            let _ = o.flush();
        }
    }
}

/// Logs a formatted line: `logln!(logger, "...", args)`.
#[macro_export]
macro_rules! logln {
    ($l:expr, $($arg:tt)*) => { $l.line(format_args!($($arg)*)) };
}
