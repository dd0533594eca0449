//! Bounded spinning before sleeping, through the shim so loom sees every iteration.

use std::time::Duration;

/// How a blocked operation waits for its peer.
///
/// ```
/// use forkipc::WaitPolicy;
/// use std::time::Duration;
/// let (tx, rx) = forkipc::channel::<u64>(16)?;
/// rx.set_wait_policy(WaitPolicy::Block); // a rarely-busy receiver: never spin
/// tx.set_wait_policy(WaitPolicy::Adaptive(Duration::from_micros(200)));
/// # Ok::<(), forkipc::Error>(())
/// ```
///
/// Waking a sleeping process costs tens of microseconds on a virtual machine (an idle vCPU
/// halts), so a waiter that spins for a while first answers at close to the speed of the
/// cache-coherence protocol while the conversation is active, and still sleeps (using no CPU)
/// when it is idle.
///
/// Under `Spin` and `Adaptive`, a receiver that catches up with a sender streaming messages
/// also lets it run ahead for about 0.3 µs before reading on, so that the two CPUs stop
/// passing the same cache lines back and forth (a stream of 64-byte messages ran 5–25 %
/// faster in our benchmark). It learns from each such pause: a conversation of round trips
/// whose replies are up to three messages soon stops pausing (one pause per 1 024 waits at
/// most); replies that are bursts of more messages may pay one pause per burst. `Block`
/// never pauses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitPolicy {
    /// Spin until the peer acts; never sleep (burns a CPU while waiting; lowest latency).
    Spin,
    /// Spin for up to this long, then sleep on a futex. The default spins for 50 µs.
    Adaptive(Duration),
    /// Sleep at once (lowest CPU use, highest latency).
    Block,
}

impl WaitPolicy {
    /// The default spin budget of [`WaitPolicy::Adaptive`]: long enough that a ping-pong partner
    /// on this kind of machine (≈45 µs to wake a sleeping vCPU) answers before we give up.
    pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);
}

impl Default for WaitPolicy {
    fn default() -> Self {
        WaitPolicy::Adaptive(Self::DEFAULT_SPIN)
    }
}

/// One waiter's spin phase.
pub(crate) struct Spinner {
    policy: WaitPolicy,
    iterations: u32,
    #[cfg(not(loom))]
    started: Option<std::time::Instant>,
    /// Spinning has lasted past `YIELD_AFTER`: yield instead of spinning.
    #[cfg(not(loom))]
    yielding: bool,
}

/// How long a waiter spins before it starts yielding the CPU between looks (see `spin`).
#[cfg(not(loom))]
const YIELD_AFTER: std::time::Duration = std::time::Duration::from_micros(3);

impl Spinner {
    /// True once every 1024 spins: time for a slow check (is the peer still alive?).
    pub(crate) fn checkpoint(&self) -> bool {
        self.iterations.is_multiple_of(1024)
    }

    pub(crate) fn new(policy: WaitPolicy) -> Spinner {
        Spinner {
            policy,
            iterations: 0,
            #[cfg(not(loom))]
            started: None,
            #[cfg(not(loom))]
            yielding: false,
        }
    }

    /// Spins once and returns `true` while the budget lasts; `false` means "go to sleep".
    #[cfg(not(loom))]
    pub(crate) fn spin(&mut self) -> bool {
        let budget = match self.policy {
            WaitPolicy::Block => return false,
            WaitPolicy::Spin => None,
            WaitPolicy::Adaptive(d) => Some(d),
        };
        self.iterations = self.iterations.wrapping_add(1);
        // Read the clock only every 64 iterations: a vDSO call costs ~20 ns.
        if let Some(budget) = budget
            && self.iterations % 64 == 1
        {
            let now = std::time::Instant::now();
            let start = *self.started.get_or_insert(now);
            let spent = now.duration_since(start);
            if spent >= budget {
                return false;
            }
            // Past the first microseconds, a peer that has not answered may be waiting for
            // *this* CPU (same CPU, more runnable processes than CPUs): spinning cannot help it,
            // yielding can. Between two idle CPUs an answer comes long before this.
            self.yielding = spent >= YIELD_AFTER;
        }
        if self.yielding || (budget.is_none() && self.iterations >= 1 << 20) {
            // Gives the CPU to whoever is runnable on it, if anyone (else returns at once).
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
        true
    }

    /// Under loom: yield (so the model sees progress) and give up quickly, so the sleep path
    /// is explored too.
    #[cfg(loom)]
    pub(crate) fn spin(&mut self) -> bool {
        self.iterations += 1;
        match self.policy {
            WaitPolicy::Block => false,
            WaitPolicy::Spin => {
                loom::thread::yield_now();
                true
            }
            WaitPolicy::Adaptive(_) => {
                if self.iterations > 1 {
                    return false;
                }
                loom::thread::yield_now();
                true
            }
        }
    }
}
