//! A speed-mode probe. On a virtual machine the two CPUs switch between speed modes (where the
//! host runs them, how fast): a repetition that straddles a switch, or a row and its baseline
//! measured in different modes, give a ratio that means nothing. The probe measures, right
//! before and right after every repetition, the round trip of a spin ping-pong between the two
//! CPUs (with a child that sleeps between probes): about 90–100 ns in the usual mode here, 4 ×
//! that in the slow one. (An in-cache copy on one CPU was tried as a second reading and
//! dropped: it varied by a third from one repetition to the next with the cache state the
//! repetition left behind.) [`interleave`](super::interleave) keeps the readings with each
//! sample; the bench reports how many repetitions saw a switch, and pairs a row with its
//! baseline only when all four readings agree.
//!
//! ```text
//! shared page: 0        request  AtomicU32  bumped by the parent per probe; u32::MAX = exit
//!              LINE     ready    AtomicU32  the request the child has woken up for
//!              2 LINE   ping     AtomicU64  written by the parent
//!              3 LINE   pong     AtomicU64  written by the child
//! ```
//!
//! Every access is Relaxed: the words are counters, and no other data is published with them
//! (as in the two-atomics spin ping-pong baseline).

use std::cell::{Cell, RefCell};
use std::hint::spin_loop;
use std::sync::atomic::Ordering;

use nix::unistd::Pid;

use super::{CHILD_CPU, LINE, SharedMap, fork_pinned, futex_wait, futex_wake, reap, time};

/// Round trips per probe: a fraction of a millisecond.
const ROUND_TRIPS: u64 = 2_000;
const EXIT: u32 = u32::MAX;
/// Readings that differ by more than this fraction mean a switch.
pub const TOLERANCE: f64 = 0.25;

/// One probe's readings.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    /// Nanoseconds per spin round trip between the two CPUs.
    pub rtt_ns: f64,
}

impl Reading {
    /// Whether `self` and `other` look like the same speed mode.
    pub fn agrees(&self, other: &Reading) -> bool {
        let (a, b) = (self.rtt_ns, other.rtt_ns);
        (a - b).abs() <= TOLERANCE * a.min(b)
    }
}

struct Probe {
    map: SharedMap,
    child: Pid,
    request: Cell<u32>,
    turn: Cell<u64>,
}

thread_local! {
    static PROBE: RefCell<Option<Probe>> = const { RefCell::new(None) };
}

impl Probe {
    fn new() -> Probe {
        let map = SharedMap::new(4 * LINE);
        let child = {
            let map = &map;
            fork_pinned(CHILD_CPU, || serve(map))
        };
        Probe {
            map,
            child,
            request: Cell::new(0),
            turn: Cell::new(0),
        }
    }

    fn read(&self) -> Reading {
        let req = self.request.get() + 1;
        self.request.set(req);
        let (request, ready) = (self.map.atomic_u32(0), self.map.atomic_u32(LINE));
        let (ping, pong) = (self.map.atomic_u64(2 * LINE), self.map.atomic_u64(3 * LINE));
        request.store(req, Ordering::Relaxed);
        futex_wake(request);
        // A dead child never answers: the watchdog armed by the caller ends the bench.
        while ready.load(Ordering::Relaxed) != req {
            spin_loop();
        }
        let start = self.turn.get();
        let elapsed = time(|| {
            for k in start + 1..=start + ROUND_TRIPS {
                ping.store(k, Ordering::Relaxed);
                while pong.load(Ordering::Relaxed) != k {
                    spin_loop();
                }
            }
        });
        self.turn.set(start + ROUND_TRIPS);
        Reading {
            rtt_ns: elapsed.as_nanos() as f64 / ROUND_TRIPS as f64,
        }
    }
}

/// The child: sleeps until a request, then echoes `ROUND_TRIPS` pings, until `EXIT`.
fn serve(map: &SharedMap) {
    let (request, ready) = (map.atomic_u32(0), map.atomic_u32(LINE));
    let (ping, pong) = (map.atomic_u64(2 * LINE), map.atomic_u64(3 * LINE));
    let (mut seen, mut turn) = (0u32, 0u64);
    loop {
        let req = loop {
            let r = request.load(Ordering::Relaxed);
            if r != seen {
                break r;
            }
            futex_wait(request, seen);
        };
        if req == EXIT {
            return;
        }
        seen = req;
        ready.store(req, Ordering::Relaxed);
        for k in turn + 1..=turn + ROUND_TRIPS {
            while ping.load(Ordering::Relaxed) != k {
                spin_loop();
            }
            pong.store(k, Ordering::Relaxed);
        }
        turn += ROUND_TRIPS;
    }
}

/// A reading now (forking the probe's child on first use).
pub fn read() -> Reading {
    PROBE.with(|p| p.borrow_mut().get_or_insert_with(Probe::new).read())
}

/// Ends the probe's child and reaps it.
pub fn finish() {
    PROBE.with(|p| {
        if let Some(probe) = p.borrow_mut().take() {
            let request = probe.map.atomic_u32(0);
            request.store(EXIT, Ordering::Relaxed);
            futex_wake(request);
            reap(probe.child);
        }
    });
}
