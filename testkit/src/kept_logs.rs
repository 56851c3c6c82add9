//! Logs kept in memory for a test to read: the tests that check what a consumer or a
//! relay says (the server it names, an error logged once) read them here.

use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing::subscriber::DefaultGuard;

/// What a tracing subscriber wrote, at info and above, without colours.
#[derive(Clone, Default)]
pub struct KeptLogs(Arc<Mutex<Vec<u8>>>);

impl KeptLogs {
    /// Keeps what this thread logs until the guard is dropped. With a current-thread
    /// runtime (`#[sqlx::test]`'s and `#[tokio::test]`'s default) that is every task
    /// the test spawns; the global subscriber of `capture_logs` sees none of it then.
    pub fn keep_on_this_thread(&self) -> DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// Everything kept so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lines()).into_owned()
    }

    /// The lines at `level` (`"ERROR"`, `"WARN"`, ...) that mention `text`.
    pub fn count(&self, level: &str, text: &str) -> usize {
        self.text()
            .lines()
            .filter(|line| line.contains(level) && line.contains(text))
            .count()
    }

    fn lines(&self) -> Vec<u8> {
        self.0.lock().expect("never poisoned").clone()
    }
}

impl Write for KeptLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("never poisoned")
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
