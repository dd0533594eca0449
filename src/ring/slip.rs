//! Temporal slipping: a receiver that has caught up with a streaming sender waits a moment
//! before it reads on, so that the two work on different cache lines.
//!
//! When the consumer is as fast as the producer, it reads each record right after the producer
//! wrote it, while the producer is writing the next one into the same line (records are
//! `8 + len` bytes, so a 64-byte message straddles two lines): every line moves between the two
//! CPUs several times. Having found the ring empty and seen the next message arrive, a consumer
//! that has been streaming lets the producer run ahead by a few hundred nanoseconds' worth of
//! records first (the idea of FastForward's "temporal slipping", Giacomoni, Moseley and
//! Vachharajani, PPoPP 2008): the lines the producer then writes are lines the consumer does not
//! hold, and each moves across once.
//!
//! A slip only delays the consumer; it changes nothing in shared memory and nothing that is
//! checked. Whether slipping pays is learned from outcomes: a slip by whose end the producer
//! had committed at least `STREAM` more records behind the awaited one was a stream; one that
//! saw fewer (a round trip whose reply is a message or a few, a sporadic sender) cost its few
//! hundred nanoseconds of latency, and slipping is then left off for twice as many catch-ups
//! as the last time (up to `MAX_SKIP`), as adaptive mutexes back off a spin that failed. A
//! conversation whose replies are up to `STREAM` messages thus pays one slip in `MAX_SKIP`
//! waits once it has backed off; one whose replies are bursts of more pays up to one slip per
//! burst.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// How long a slip lasts: a few records' worth at streaming speed (a 64-byte record every
/// 30–50 ns here), far below a wake-up.
pub(super) const SLIP: Duration = Duration::from_nanos(300);

/// How many records must follow the awaited one by the end of a slip for it to count as a
/// stream. 1 made every round trip whose reply was two messages pay a slip (a `duplex<u64>`
/// round trip with a two-message reply: 0.58 µs instead of 0.12); 3 streams as fast as 1, 6
/// slower (a stream in the VM's slow mode does not commit that many in one slip).
pub(super) const STREAM: u32 = 3;

/// At most this many catch-ups pass without a slip after slips stopped paying.
const MAX_SKIP: u32 = 1024;

/// One consumer's slipping state (private to the endpoint).
pub(super) struct Slip {
    /// Catch-ups left before the next slip is tried.
    skip: Cell<u32>,
    /// How many catch-ups the next failed slip skips.
    backoff: Cell<u32>,
}

impl Slip {
    pub(super) fn new() -> Slip {
        Slip {
            skip: Cell::new(0),
            backoff: Cell::new(1),
        }
    }

    /// Whether to slip at this catch-up.
    #[inline]
    pub(super) fn due(&self) -> bool {
        match self.skip.get() {
            0 => true,
            n => {
                self.skip.set(n - 1);
                false
            }
        }
    }

    /// Learns from a slip: `streaming` if at least `STREAM` records followed the awaited one by
    /// its end.
    pub(super) fn outcome(&self, streaming: bool) {
        if streaming {
            self.backoff.set(1);
        } else {
            let b = self.backoff.get();
            self.skip.set(b);
            self.backoff.set((b * 2).min(MAX_SKIP));
        }
    }
}

/// Busy-waits for `d` (a slip: far too short to sleep).
pub(super) fn pause(d: Duration) {
    let start = Instant::now();
    loop {
        for _ in 0..8 {
            std::hint::spin_loop();
        }
        if start.elapsed() >= d {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_slips_back_off_exponentially_and_a_stream_resets() {
        let s = Slip::new();
        assert!(s.due());
        s.outcome(false);
        // Skips 1, then tries again.
        assert!(!s.due());
        assert!(s.due());
        s.outcome(false);
        assert_eq!((0..2).filter(|_| !s.due()).count(), 2);
        assert!(s.due());
        for _ in 0..20 {
            s.outcome(false);
            while !s.due() {}
        }
        assert_eq!(s.backoff.get(), MAX_SKIP);
        s.outcome(false);
        assert_eq!(s.skip.get(), MAX_SKIP);
        while !s.due() {}
        s.outcome(true);
        assert!(s.due());
        s.outcome(false);
        assert!(!s.due());
        assert!(s.due());
    }
}
