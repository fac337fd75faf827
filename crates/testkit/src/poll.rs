//! Waiting with a deadline: tests poll for the state they need instead of sleeping a fixed time.
//!
//! For conditions on one cluster the [`crate::Cluster`] methods that wait (`wait_replay`, `catch_up`)
//! report the server log too; these are for everything else (a file appearing, a row on another
//! server, a child process's progress).

use std::time::{Duration, Instant};

/// How long a test waits for anything by default: `WALRELAY_TEST_TIMEOUT_SECS`, else 120 s —
/// generous, because two cores run several clusters at once ([`crate::env::timeout`]).
pub fn timeout() -> Duration {
    crate::env::timeout()
}

/// Calls `f` every `every` until it returns `Some`, and returns that; panics naming `what` (and what
/// `describe` says about the current state) after `limit`.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {}s waiting for {what}; {}",
                limit.as_secs(),
                describe()
            );
        }
        std::thread::sleep(every);
    }
}

/// [`wait_for`] a condition, with the default timeout and a 100 ms period.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool, describe: impl Fn() -> String) {
    wait_for(
        what,
        timeout(),
        Duration::from_millis(100),
        || f().then_some(()),
        describe,
    )
}
