//! Sleeping until a deadline with finer resolution than tokio's timer, so that a publisher at
//! a fixed rate sends its messages evenly instead of in bursts.
//!
//! tokio's timer wheel counts whole milliseconds: a publisher at 20,000 messages/s that sleeps
//! with it wakes once per millisecond and sends the ~20 messages due at once. Every broker
//! then fans out a burst, and the last message of each burst waits for the ones before it:
//! a latency the load generator made, not the broker. [`sleep_until`] sleeps the coarse part
//! with tokio and the last millisecond on one background thread per process, which wakes each
//! waiter at its deadline (within the kernel's timer slack, about 50 µs).

use std::sync::OnceLock;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Waits shorter than this go to the pacing thread; longer ones sleep with tokio first.
const FINE: Duration = Duration::from_millis(2);

type Request = (Instant, oneshot::Sender<()>);

/// Sleeps until `deadline`, to within the kernel's timer slack rather than tokio's 1 ms.
pub async fn sleep_until(deadline: tokio::time::Instant) {
    let deadline = deadline.into_std();
    let now = Instant::now();
    if deadline <= now {
        return;
    }
    if deadline - now > FINE {
        tokio::time::sleep_until((deadline - FINE).into()).await;
    }
    let (tx, rx) = oneshot::channel();
    if pacer().send((deadline, tx)).is_err() {
        // No pacing thread (it could not start): tokio's resolution will do.
        tokio::time::sleep_until(deadline.into()).await;
        return;
    }
    let _ = rx.await;
}

fn pacer() -> &'static mpsc::Sender<Request> {
    static PACER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    PACER.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        // If the thread cannot start, `rx` is dropped and every send fails (handled above).
        let _ = std::thread::Builder::new()
            .name("bench-pacer".into())
            .spawn(move || run(&rx));
        tx
    })
}

/// The pacing thread: keeps the waiters ordered by deadline and wakes each at its time.
fn run(rx: &mpsc::Receiver<Request>) {
    let mut waiting: Vec<Request> = Vec::new();
    loop {
        let next = match waiting.first() {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some((deadline, _)) => {
                rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            }
        };
        match next {
            Ok(request) => {
                let at = waiting.partition_point(|(d, _)| *d <= request.0);
                waiting.insert(at, request);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let due = waiting.partition_point(|(d, _)| *d <= now);
        for (_, waiter) in waiting.drain(..due) {
            let _ = waiter.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_at_the_deadline_not_before() {
        for micros in [0u64, 100, 700, 2_500] {
            let start = tokio::time::Instant::now();
            let deadline = start + Duration::from_micros(micros);
            sleep_until(deadline).await;
            assert!(tokio::time::Instant::now() >= deadline, "{micros} µs");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_waiters_all_wake_none_early() {
        let start = tokio::time::Instant::now();
        let tasks: Vec<_> = (0..50u64)
            .map(|i| {
                let deadline = start + Duration::from_micros(97 * (i % 25));
                tokio::spawn(async move {
                    sleep_until(deadline).await;
                    tokio::time::Instant::now() >= deadline
                })
            })
            .collect();
        for t in tasks {
            let on_time = tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("every waiter wakes")
                .unwrap();
            assert!(on_time);
        }
    }
}
