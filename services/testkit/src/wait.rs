//! Waiting for a state or a line, within a bound, never for a guessed time.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

/// How long [`eventually`] polls before the test fails.
pub const WITHIN: Duration = Duration::from_secs(10);

/// How often [`eventually`] polls: often enough that a test waits a few ms past the moment
/// its state holds.
const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it answers `Some`, for at most [`WITHIN`]; what it answered.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(what, WITHIN, check).await
}

/// [`eventually`] for at most `within`.
pub async fn eventually_within<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "waited {within:?} for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// The lines a child process prints, as they come (each echoed to the test's output).
pub struct Lines(mpsc::UnboundedReceiver<String>);

impl Lines {
    /// Reads `output` line by line, echoing each with `label`.
    pub fn read<R>(output: R, label: &'static str) -> Self
    where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
    {
        use tokio::io::AsyncBufReadExt;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut lines = tokio::io::BufReader::new(output).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                println!("{label}: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self(rx)
    }

    /// The next line matching `pred`, waiting up to 60 s (a process may start workers first).
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.0.recv()).await {
                Ok(Some(line)) if pred(&line) => return line,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the process ended before {what}"),
                Err(_) => panic!("no {what} within 60 s"),
            }
        }
    }

    /// The rest of the next line starting with `prefix`, within 60 s.
    pub async fn after(&mut self, what: &str, prefix: &str) -> String {
        self.wait_for(what, |l| l.starts_with(prefix))
            .await
            .split_off(prefix.len())
    }
}

/// Tests that load the machine (a cargo build, thousands of streams or sockets, a browser, a
/// RabbitMQ cluster) or time what a loaded machine would slow (a fault's window, a latency
/// percentile) take turns within their test binary: two of them never run at once, while the
/// light tests run beside any (a binary runs its tests side by side, two at a time on two
/// cores).
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}
