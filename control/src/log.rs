//! The daemon's log: one line per event, prefixed with the seconds since start.
//!
//! Nothing secret is ever formatted into it: PSKs and keys only exist in types whose `Debug`
//! redacts them, and the daemon logs SPIs, algorithms, selectors and addresses only.
//!
//! Lines are written with one `write` each, unless the logger is *deferred*
//! ([`Logger::set_deferred`]): then they collect in memory and reach the output at
//! [`Logger::flush`], which the daemon calls once per event-loop iteration (and on shutdown and
//! drop). Under load one iteration handles many datagrams, each logged twice; a `write` + flush
//! per line cost the responder about a sixth of its CPU per IKE SA (`perf-lab ike`).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Deferred lines beyond this many bytes are written at once, without waiting for a flush.
const MAX_DEFERRED: usize = 64 * 1024;

struct Out {
    w: Box<dyn Write + Send>,
    pending: Vec<u8>,
    deferred: bool,
}

impl Out {
    fn write_pending(&mut self) {
        if !self.pending.is_empty() {
            let _ = self.w.write_all(&self.pending);
            let _ = self.w.flush();
            self.pending.clear();
        }
    }
}

/// A shared line logger.
#[derive(Clone)]
pub struct Logger {
    out: Arc<Mutex<Out>>,
    start: Instant,
}

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Logger")
    }
}

impl Logger {
    /// A logger writing to `out`, each line at once.
    #[must_use]
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Logger {
            out: Arc::new(Mutex::new(Out { w: out, pending: Vec::new(), deferred: false })),
            start: Instant::now(),
        }
    }

    /// A logger writing to stderr.
    #[must_use]
    pub fn stderr() -> Self {
        Self::new(Box::new(std::io::stderr()))
    }

    /// Writes one line (or queues it while deferred).
    pub fn line(&self, args: std::fmt::Arguments<'_>) {
        let t = self.start.elapsed();
        if let Ok(mut o) = self.out.lock() {
            let o = &mut *o;
            let _ = writeln!(o.pending, "[{:>5}.{:03}] {args}", t.as_secs(), t.subsec_millis());
            if !o.deferred || o.pending.len() >= MAX_DEFERRED {
                o.write_pending();
            }
        }
    }

    /// Defers lines until [`Logger::flush`] (`true`), or writes each at once again (`false`,
    /// which flushes what is queued).
    pub fn set_deferred(&self, deferred: bool) {
        if let Ok(mut o) = self.out.lock() {
            o.deferred = deferred;
            if !deferred {
                o.write_pending();
            }
        }
    }

    /// Writes the queued lines.
    pub fn flush(&self) {
        if let Ok(mut o) = self.out.lock() {
            o.write_pending();
        }
    }
}

/// Logs a formatted line: `logln!(logger, "...", args)`.
#[macro_export]
macro_rules! logln {
    ($l:expr, $($arg:tt)*) => { $l.line(format_args!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let mut s = self.0.lock().unwrap();
            s.0.extend_from_slice(b);
            s.1 += 1;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn deferred_lines_arrive_in_order_at_flush_with_one_write() {
        let sink = Sink::default();
        let log = Logger::new(Box::new(sink.clone()));
        crate::logln!(log, "first");
        assert_eq!(sink.0.lock().unwrap().1, 1, "written at once");
        log.set_deferred(true);
        crate::logln!(log, "second {}", 2);
        crate::logln!(log, "third");
        assert_eq!(sink.0.lock().unwrap().1, 1, "queued");
        log.flush();
        let (text, writes) = sink.0.lock().unwrap().clone();
        assert_eq!(writes, 2, "one write for both queued lines");
        let text = String::from_utf8(text).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].ends_with("] first") && lines[1].ends_with("] second 2") && lines[2].ends_with("] third"));
        crate::logln!(log, "fourth");
        log.set_deferred(false);
        assert!(String::from_utf8(sink.0.lock().unwrap().0.clone()).unwrap().ends_with("] fourth\n"));
    }
}
