//! The reference mechanisms forkipc is measured against, each measured in the same run as the
//! library so that only ratios are compared (absolute figures drift between runs on a VM).
//!
//! Every function here returns its figure in the base unit of its [`Row`]: nanoseconds per
//! round trip, messages per second, or bytes per second. The parent always runs on
//! [`PARENT_CPU`] and the forked peer on [`CHILD_CPU`].

use std::fs::File;
use std::hint::{black_box, spin_loop};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use nix::fcntl::{FcntlArg, fcntl};
use nix::unistd::pipe;

use crate::support::{
    CHILD_CPU, PARENT_CPU, Row, SharedMap, Unit, fork_pinned, iters, median_of_rounds, ns_per_op,
    per_sec, pin_to_cpu, reap, rounds, time,
};

/// Row names, for `Row::vs`.
pub const SPIN_RTT: &str = "two-atomics spin ping-pong RTT";
pub const FUTEX_RTT: &str = "raw futex ping-pong RTT";
pub const PIPE_RTT: &str = "pipe ping-pong RTT, 8 B";
pub const SOCKET_RTT: &str = "socketpair ping-pong RTT, 8 B";
pub const RING_64B: &str = "minimal spin ring, 64 B msgs";
pub const PIPE_64B: &str = "pipe stream, 64 B msgs";
pub const SOCKET_64B: &str = "socketpair stream, 64 B msgs";
pub const MEMCPY_1MIB: &str = "memcpy of 1 MiB in one process";
pub const RING_1MIB: &str = "minimal spin ring, 1 MiB msgs";
pub const PIPE_1MIB: &str = "pipe stream, 1 MiB msgs";
pub const PIPE_1MIB_BIG: &str = "pipe stream, 1 MiB msgs, 1 MiB pipe buffer";
pub const SOCKET_1MIB: &str = "socketpair stream, 1 MiB msgs";

const MIB: usize = 1 << 20;

/// Cache-line distance that keeps two hot words from sharing a line or an adjacent-line
/// prefetch pair (what `crossbeam_utils::CachePadded` uses on x86-64).
const LINE: usize = 128;

/// Measures every baseline and appends its row, with ratios: round trips against the spin
/// ping-pong, 64 B streams against the minimal ring, 1 MiB streams against the minimal ring
/// and memcpy.
pub fn all(rows: &mut Vec<Row>) {
    let rtt = |name, ns| Row::new(name, ns, Unit::Nanos);
    rows.push(rtt(SPIN_RTT, spin_pingpong_rtt()));
    rows.push(rtt(FUTEX_RTT, futex_pingpong_rtt()).vs(SPIN_RTT));
    rows.push(rtt(PIPE_RTT, pipe_pingpong_rtt()).vs(SPIN_RTT));
    rows.push(rtt(SOCKET_RTT, socketpair_pingpong_rtt()).vs(SPIN_RTT));

    let msgs = |name, per_sec| Row::new(name, per_sec, Unit::MsgsPerSec);
    rows.push(msgs(RING_64B, ring_64b_msgs_per_sec()));
    rows.push(msgs(PIPE_64B, pipe_64b_msgs_per_sec()).vs(RING_64B));
    rows.push(msgs(SOCKET_64B, socketpair_64b_msgs_per_sec()).vs(RING_64B));

    let bytes = |name, per_sec| Row::new(name, per_sec, Unit::BytesPerSec);
    rows.push(bytes(MEMCPY_1MIB, memcpy_1mib_bytes_per_sec()));
    rows.push(bytes(RING_1MIB, ring_1mib_bytes_per_sec()).vs(MEMCPY_1MIB));
    for (name, figure) in [
        (PIPE_1MIB, pipe_1mib_bytes_per_sec(None)),
        (PIPE_1MIB_BIG, pipe_1mib_bytes_per_sec(Some(MIB))),
        (SOCKET_1MIB, socketpair_1mib_bytes_per_sec()),
    ] {
        rows.push(bytes(name, figure).vs(RING_1MIB).vs(MEMCPY_1MIB));
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips through shared memory

/// Two `AtomicU64`s on separate cache lines of a shared page; the parent writes `i` to `ping`,
/// the child spins until it sees it and echoes it to `pong`. The cost of two cache-line
/// transfers: the floor for any round trip between the two CPUs.
pub fn spin_pingpong_rtt() -> f64 {
    let n = iters(300_000);
    let map = SharedMap::new(2 * LINE);
    let (ping, pong) = (map.atomic_u64(0), map.atomic_u64(LINE));
    // Relaxed throughout: the counter is the whole message, nothing else is published with it.
    let child = fork_pinned(CHILD_CPU, || {
        for i in 1..=rounds() as u64 * n {
            while ping.load(Ordering::Relaxed) != i {
                spin_loop();
            }
            pong.store(i, Ordering::Relaxed);
        }
    });
    let mut i = 0;
    let rtt = median_of_rounds(|| {
        let elapsed = time(|| {
            for _ in 0..n {
                i += 1;
                ping.store(i, Ordering::Relaxed);
                while pong.load(Ordering::Relaxed) != i {
                    spin_loop();
                }
            }
        });
        ns_per_op(elapsed, n)
    });
    reap(child);
    rtt
}

/// Blocks until `word` is woken or no longer holds `expected` (returns at once if it does not).
/// Spurious returns are possible: callers re-check in a loop.
fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: `word` is a live, aligned u32 for the whole call; FUTEX_WAIT without
    // FUTEX_PRIVATE_FLAG keys the wait on the shared page, so a waker in another process
    // finds it; a null timeout means no deadline; the extra arguments are ignored.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            std::ptr::null::<libc::timespec>(),
        )
    };
}

/// Wakes one waiter on `word`, in any process that maps the same page.
fn futex_wake(word: &AtomicU32) {
    // SAFETY: `word` is a live, aligned u32; FUTEX_WAKE only uses its address as a key.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1) };
}

/// Two futex words on separate cache lines of a shared page; each side stores the counter in
/// the other's word and wakes it, then sleeps on its own word until the echo arrives. No
/// spinning: every hop is a kernel wake-up.
pub fn futex_pingpong_rtt() -> f64 {
    let n = iters(3_000);
    let map = SharedMap::new(2 * LINE);
    let (ping, pong) = (map.atomic_u32(0), map.atomic_u32(LINE));
    // Relaxed throughout: the counter is the whole message, and the futex syscalls order the
    // store against the wake-up anyway.
    let wait_for = |word: &AtomicU32, i: u32| loop {
        let seen = word.load(Ordering::Relaxed);
        if seen == i {
            break;
        }
        futex_wait(word, seen);
    };
    let child = fork_pinned(CHILD_CPU, || {
        for i in 1..=rounds() as u64 * n {
            let i = i as u32; // wraps harmlessly: only equality matters
            wait_for(ping, i);
            pong.store(i, Ordering::Relaxed);
            futex_wake(pong);
        }
    });
    let mut i = 0u32;
    let rtt = median_of_rounds(|| {
        let elapsed = time(|| {
            for _ in 0..n {
                i = i.wrapping_add(1);
                ping.store(i, Ordering::Relaxed);
                futex_wake(ping);
                wait_for(pong, i);
            }
        });
        ns_per_op(elapsed, n)
    });
    reap(child);
    rtt
}

// ---------------------------------------------------------------------------------------------
// The minimal fixed-slot SPSC ring

/// A single-producer single-consumer ring of `capacity` slots of `SLOT` bytes in a shared
/// mapping; both sides spin. Deliberately minimal: one message per slot, indices published
/// after every message, each side caching the other's index and re-reading it only when the
/// ring looks full (producer) or empty (consumer).
///
/// ```text
/// offset 0     tail: AtomicU64   messages published; written by the producer only
/// offset 128   head: AtomicU64   messages consumed; written by the consumer only
/// offset 4096  slot[0] .. slot[capacity - 1], SLOT bytes each; message k lives in
///              slot[k % capacity]
/// ```
///
/// Invariant: `head <= tail <= head + capacity`; slot `k % capacity` belongs to the producer
/// while `k >= tail` and to the consumer while `head <= k < tail`.
struct Ring<'a, const SLOT: usize> {
    tail: &'a AtomicU64,
    head: &'a AtomicU64,
    slots: *mut u8,
    capacity: u64,
}

const RING_DATA: usize = 4096;

impl<'a, const SLOT: usize> Ring<'a, SLOT> {
    fn map_len(capacity: usize) -> usize {
        RING_DATA + capacity * SLOT
    }

    fn new(map: &'a SharedMap, capacity: usize) -> Self {
        assert!(capacity.is_power_of_two() && SLOT % 64 == 0);
        Ring {
            tail: map.atomic_u64(0),
            head: map.atomic_u64(LINE),
            slots: map.bytes(RING_DATA, capacity * SLOT),
            capacity: capacity as u64,
        }
    }

    fn slot(&self, k: u64) -> *mut u8 {
        // SAFETY: k % capacity < capacity, and `slots` points to capacity * SLOT bytes of the
        // mapping (checked by `SharedMap::bytes` in `new`).
        unsafe { self.slots.add((k & (self.capacity - 1)) as usize * SLOT) }
    }
}

/// The producer's end: its own `tail` and its last sight of the consumer's `head`.
struct Producer<'a, const SLOT: usize> {
    ring: Ring<'a, SLOT>,
    tail: u64,
    cached_head: u64,
}

impl<const SLOT: usize> Producer<'_, SLOT> {
    fn push(&mut self, msg: &[u8; SLOT]) {
        while self.tail - self.cached_head == self.ring.capacity {
            // Acquire pairs with the consumer's Release store of `head` in `pop`: its copy out
            // of the slot finishes before our copy into it starts.
            self.cached_head = self.ring.head.load(Ordering::Acquire);
            if self.tail - self.cached_head == self.ring.capacity {
                spin_loop();
            }
        }
        // SAFETY: slot `tail` is the producer's (tail < head + capacity, per the loop above),
        // SLOT bytes long, and the consumer does not touch it until `tail` is published.
        unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr(), self.ring.slot(self.tail), SLOT) };
        self.tail += 1;
        // Release pairs with the consumer's Acquire load of `tail` in `pop`: the message's
        // bytes are visible before the index that publishes them.
        self.ring.tail.store(self.tail, Ordering::Release);
    }

    /// Spins until the consumer has taken every published message.
    fn wait_drained(&self) {
        // Relaxed: this only waits for a count, it reads no slot afterwards.
        while self.ring.head.load(Ordering::Relaxed) != self.tail {
            spin_loop();
        }
    }
}

/// The consumer's end: its own `head` and its last sight of the producer's `tail`.
struct Consumer<'a, const SLOT: usize> {
    ring: Ring<'a, SLOT>,
    head: u64,
    cached_tail: u64,
}

impl<const SLOT: usize> Consumer<'_, SLOT> {
    fn pop(&mut self, out: &mut [u8; SLOT]) {
        while self.head == self.cached_tail {
            // Acquire pairs with the producer's Release store of `tail` in `push`.
            self.cached_tail = self.ring.tail.load(Ordering::Acquire);
            if self.head == self.cached_tail {
                spin_loop();
            }
        }
        // SAFETY: slot `head` is the consumer's (head < tail, per the loop above), SLOT bytes
        // long, fully written before `tail` was published, and the producer does not reuse it
        // until `head` moves past it.
        unsafe { std::ptr::copy_nonoverlapping(self.ring.slot(self.head), out.as_mut_ptr(), SLOT) };
        self.head += 1;
        // Release pairs with the producer's Acquire load of `head` in `push`.
        self.ring.head.store(self.head, Ordering::Release);
    }
}

/// Streams `iters(full_count)` messages of SLOT bytes per repetition from the parent to the
/// child through a [`Ring`] of `capacity` slots; returns messages per second, counted until the
/// consumer has taken the last one. Each message carries its sequence number, which the
/// consumer checks.
fn ring_msgs_per_sec<const SLOT: usize>(capacity: usize, full_count: u64) -> f64 {
    let n = iters(full_count);
    let map = SharedMap::new(Ring::<SLOT>::map_len(capacity));
    let child = fork_pinned(CHILD_CPU, || {
        let mut rx = Consumer {
            ring: Ring::<SLOT>::new(&map, capacity),
            head: 0,
            cached_tail: 0,
        };
        let mut msg = boxed_array::<SLOT>(0x5a);
        for seq in 0..rounds() as u64 * n {
            rx.pop(&mut msg);
            let stamp = u64::from_ne_bytes(msg[..8].try_into().unwrap());
            assert_eq!(stamp, seq, "ring delivered a wrong message");
        }
    });
    let mut tx = Producer {
        ring: Ring::<SLOT>::new(&map, capacity),
        tail: 0,
        cached_head: 0,
    };
    let mut msg = boxed_array::<SLOT>(0xa5);
    let per_sec = median_of_rounds(|| {
        let elapsed = time(|| {
            for _ in 0..n {
                msg[..8].copy_from_slice(&tx.tail.to_ne_bytes());
                tx.push(&msg);
            }
            tx.wait_drained();
        });
        per_sec(elapsed, n)
    });
    reap(child);
    per_sec
}

/// A heap array of `N` bytes (built on the heap: N may be too big for a stack).
fn boxed_array<const N: usize>(fill: u8) -> Box<[u8; N]> {
    vec![fill; N].into_boxed_slice().try_into().unwrap()
}

pub fn ring_64b_msgs_per_sec() -> f64 {
    ring_msgs_per_sec::<64>(1024, 5_000_000)
}

/// Four slots of 1 MiB.
pub fn ring_1mib_bytes_per_sec() -> f64 {
    ring_msgs_per_sec::<MIB>(4, 2_000) * MIB as f64
}

/// Copies 1 MiB between two buffers of this process: the ceiling for a transfer that copies
/// once (zero-copy IPC), and the unit for one that copies twice.
pub fn memcpy_1mib_bytes_per_sec() -> f64 {
    pin_to_cpu(PARENT_CPU);
    let n = iters(3_000);
    // Filled, not zeroed, so every page is really mapped (calloc'd zero pages would all alias
    // the kernel's zero page and read unrealistically fast).
    let src = vec![0xa5u8; MIB];
    let mut dst = vec![0x5au8; MIB];
    median_of_rounds(|| {
        let elapsed = time(|| {
            for _ in 0..n {
                dst.copy_from_slice(black_box(&src));
                black_box(&mut dst);
            }
        });
        per_sec(elapsed, n) * MIB as f64
    })
}

// ---------------------------------------------------------------------------------------------
// Pipes and Unix sockets

/// Ping-pong of 8-byte counters: the parent writes to `p_tx` and reads the echo from `p_rx`;
/// the child reads from `c_rx` and echoes to `c_tx`.
fn fd_pingpong_rtt(p_tx: &File, p_rx: &File, c_rx: &File, c_tx: &File) -> f64 {
    let n = iters(3_000);
    let child = fork_pinned(CHILD_CPU, || {
        let (mut rx, mut tx) = (c_rx, c_tx);
        let mut buf = [0u8; 8];
        for _ in 0..rounds() as u64 * n {
            rx.read_exact(&mut buf).expect("child read");
            tx.write_all(&buf).expect("child write");
        }
    });
    let (mut tx, mut rx) = (p_tx, p_rx);
    let mut buf = [0u8; 8];
    let mut i = 0u64;
    let rtt = median_of_rounds(|| {
        let elapsed = time(|| {
            for _ in 0..n {
                i += 1;
                tx.write_all(&i.to_ne_bytes()).expect("parent write");
                rx.read_exact(&mut buf).expect("parent read");
                assert_eq!(u64::from_ne_bytes(buf), i, "wrong echo");
            }
        });
        ns_per_op(elapsed, n)
    });
    reap(child);
    rtt
}

/// Streams `iters(full_count)` messages of `size` bytes per repetition, one `write` (or as
/// many as the kernel needs) per message, from `p_tx` to the child's `c_rx`, which reads each
/// message whole; after the last one the child acknowledges with one byte from `c_ack` to
/// `p_ack`, which ends the timed repetition. Returns messages per second.
fn fd_stream_msgs_per_sec(
    (p_tx, p_ack): (&File, &File),
    (c_rx, c_ack): (&File, &File),
    size: usize,
    full_count: u64,
) -> f64 {
    let n = iters(full_count);
    let child = fork_pinned(CHILD_CPU, || {
        let (mut rx, mut ack) = (c_rx, c_ack);
        let mut msg = vec![0x5au8; size];
        for _ in 0..rounds() {
            for _ in 0..n {
                rx.read_exact(&mut msg).expect("child read");
            }
            ack.write_all(&[1]).expect("child ack");
        }
    });
    let (mut tx, mut ack) = (p_tx, p_ack);
    let msg = vec![0xa5u8; size];
    let per_sec = median_of_rounds(|| {
        let elapsed = time(|| {
            for _ in 0..n {
                tx.write_all(&msg).expect("parent write");
            }
            ack.read_exact(&mut [0]).expect("parent ack");
        });
        per_sec(elapsed, n)
    });
    reap(child);
    per_sec
}

/// A pipe as (read end, write end), optionally with its buffer resized (F_SETPIPE_SZ).
fn new_pipe(buffer: Option<usize>) -> (File, File) {
    let (rd, wr) = pipe().expect("pipe");
    if let Some(size) = buffer {
        let size = i32::try_from(size).expect("pipe size");
        fcntl(&wr, FcntlArg::F_SETPIPE_SZ(size)).expect("F_SETPIPE_SZ");
    }
    (File::from(rd), File::from(wr))
}

/// A connected pair of Unix stream sockets.
fn new_socketpair() -> (File, File) {
    let mut fds = [-1; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: socketpair succeeded, so both are open descriptors owned by nothing else yet.
    let [a, b] = fds.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    (File::from(a), File::from(b))
}

pub fn pipe_pingpong_rtt() -> f64 {
    let (down_rd, down_wr) = new_pipe(None);
    let (up_rd, up_wr) = new_pipe(None);
    fd_pingpong_rtt(&down_wr, &up_rd, &down_rd, &up_wr)
}

pub fn socketpair_pingpong_rtt() -> f64 {
    let (parent, child) = new_socketpair();
    fd_pingpong_rtt(&parent, &parent, &child, &child)
}

fn pipe_stream_msgs_per_sec(buffer: Option<usize>, size: usize, full_count: u64) -> f64 {
    let (down_rd, down_wr) = new_pipe(buffer);
    let (up_rd, up_wr) = new_pipe(None);
    fd_stream_msgs_per_sec((&down_wr, &up_rd), (&down_rd, &up_wr), size, full_count)
}

fn socketpair_stream_msgs_per_sec(size: usize, full_count: u64) -> f64 {
    let (parent, child) = new_socketpair();
    fd_stream_msgs_per_sec((&parent, &parent), (&child, &child), size, full_count)
}

pub fn pipe_64b_msgs_per_sec() -> f64 {
    pipe_stream_msgs_per_sec(None, 64, 300_000)
}

pub fn socketpair_64b_msgs_per_sec() -> f64 {
    socketpair_stream_msgs_per_sec(64, 100_000)
}

/// With the default 64 KiB pipe buffer, or `buffer` bytes.
pub fn pipe_1mib_bytes_per_sec(buffer: Option<usize>) -> f64 {
    let count = if buffer.is_some() { 150 } else { 100 };
    pipe_stream_msgs_per_sec(buffer, MIB, count) * MIB as f64
}

pub fn socketpair_1mib_bytes_per_sec() -> f64 {
    socketpair_stream_msgs_per_sec(MIB, 500) * MIB as f64
}
