//! The storm's progress on stderr: bars on a terminal (`indicatif`), otherwise one line a
//! second, which logs and tests read.

use crate::chart::count_label;
use crate::Storm;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often the bars are brought up to date.
const BAR_TICK: Duration = Duration::from_millis(200);

/// Shows the storm's progress until `stop`: `clients` returning with `queued` actions in all.
pub(crate) async fn show(storm: Arc<Storm>, clients: usize, queued: u64, stop: watch::Receiver<bool>) {
    if std::io::stderr().is_terminal() {
        bars(storm, clients, queued, stop).await;
    } else {
        lines(storm, clients, stop).await;
    }
}

/// Two bars, clients synced and actions answered, with answers per second and elapsed time.
async fn bars(storm: Arc<Storm>, clients: usize, queued: u64, mut stop: watch::Receiver<bool>) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = |template: &str| {
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ")
    };
    let synced = multi.add(
        ProgressBar::new(clients as u64)
            .with_style(style("{prefix:>8} [{bar:40.green}] {pos:>8}/{len} synced"))
            .with_prefix("clients"),
    );
    let answered = multi.add(
        ProgressBar::new(queued)
            .with_style(style("{prefix:>8} [{bar:40.cyan}] {pos:>8}/{len} answered  {msg}"))
            .with_prefix("actions"),
    );
    // (when, answered) over the last second, for the rate.
    let mut window: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut tick = tokio::time::interval(BAR_TICK);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        let now = Instant::now();
        let count = storm.answered.load(Ordering::Relaxed);
        window.push_back((now, count));
        while window.front().is_some_and(|(at, _)| now.duration_since(*at) > Duration::from_secs(1)) {
            window.pop_front();
        }
        let rate = match window.front() {
            Some(&(at, then)) if now > at => (count - then) as f64 / now.duration_since(at).as_secs_f64(),
            _ => 0.0,
        };
        synced.set_position(storm.synced.load(Ordering::Relaxed) as u64);
        answered.set_position(count);
        answered.set_message(message(rate, storm.start.elapsed()));
        if stopping {
            synced.finish();
            answered.finish();
            return;
        }
    }
}

/// The answered bar's message: `12.5k answers/s  3.2 s`.
fn message(answers_per_second: f64, elapsed: Duration) -> String {
    format!("{} answers/s  {:.1} s", count_label(answers_per_second.round()), elapsed.as_secs_f64())
}

/// A line a second: synced clients and answers in the last second.
async fn lines(storm: Arc<Storm>, clients: usize, mut stop: watch::Receiver<bool>) {
    let mut tick =
        tokio::time::interval_at((Instant::now() + Duration::from_secs(1)).into(), Duration::from_secs(1));
    let mut last = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let answered = storm.answered.load(Ordering::Relaxed);
        eprintln!(
            "sim: {:>4} s  synced {}/{clients} clients  {} actions/s  {answered} answered",
            storm.start.elapsed().as_secs(),
            storm.synced.load(Ordering::Relaxed),
            answered - last,
        );
        last = answered;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_message_rounds_the_rate_and_the_time() {
        assert_eq!(message(98_321.4, Duration::from_millis(3_240)), "98.3k answers/s  3.2 s");
        assert_eq!(message(0.0, Duration::ZERO), "0 answers/s  0.0 s");
    }
}
