//! Exponential backoff between reconnection attempts, shared by every command that reconnects
//! (`receive`, `subset run`).

use std::time::Duration;

/// The first wait before reconnecting.
pub const FIRST_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Waits that double from [`FIRST_RECONNECT_DELAY`] up to a ceiling; [`Backoff::reset`] after an
/// attempt that went well.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        Backoff {
            next: FIRST_RECONNECT_DELAY.min(max),
            max,
        }
    }

    pub fn reset(&mut self) {
        self.next = FIRST_RECONNECT_DELAY.min(self.max);
    }

    /// The wait before this attempt; doubles the next one.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_ceiling_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(5));
        let got: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }
}
