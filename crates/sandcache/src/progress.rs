//! The terminal progress bar, and a log writer that draws around it.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use sandcache_engine::Progress;

static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Shows a bar for `progress` while it lives, on a terminal only.
pub struct Bar {
    bar: Option<ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Bar {
    pub fn start(label: &'static str, progress: &Arc<Progress>, enabled: bool) -> Bar {
        if !enabled || !io::stderr().is_terminal() {
            return Bar { bar: None, ticker: None };
        }
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template(
                "{spinner} {prefix} {bytes}/{total_bytes} ({binary_bytes_per_sec}) · {msg} · {elapsed}",
            )
            .expect("a valid template"),
        );
        bar.set_prefix(label);
        bar.tick();
        *BAR.lock().unwrap_or_else(|p| p.into_inner()) = Some(bar.clone());
        let (b, p) = (bar.clone(), progress.clone());
        let ticker = tokio::spawn(async move {
            loop {
                let expected = p.expected.load(Ordering::Relaxed);
                if expected > 0 {
                    b.set_length(expected);
                }
                b.set_position(p.transferred.load(Ordering::Relaxed));
                b.set_message(format!("{} files", p.files.load(Ordering::Relaxed)));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Bar { bar: Some(bar), ticker: Some(ticker) }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        *BAR.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Log output to stderr that hides the bar while a line is written.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let bar = BAR.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match bar {
            Some(bar) => bar.suspend(|| io::stderr().write_all(buf)).map(|()| buf.len()),
            None => io::stderr().write_all(buf).map(|()| buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}
