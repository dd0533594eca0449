//! The reference mechanisms forkipc is measured against, each measured in the same run as the
//! library so that only ratios are compared (absolute figures drift between runs on a VM).
//!
//! Every measurement here is a [`Session`] whose figure is in the base unit of its [`Row`]:
//! nanoseconds per round trip, messages per second, or bytes per second. The parent always
//! runs on [`PARENT_CPU`] and the forked peer on [`CHILD_CPU`], parked on a [`Gate`] between
//! repetitions.

use std::fs::File;
use std::hint::{black_box, spin_loop};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use nix::fcntl::{FcntlArg, fcntl};
use nix::unistd::pipe;

use crate::support::{
    CHILD_CPU, Gate, LINE, PARENT_CPU, Row, Session, SharedMap, Unit, fork_pinned, futex_wait,
    futex_wake, iters, ns_per_op, per_sec, pin_to_cpu, reap, rounds, time,
};

/// Row names, for `Row::vs`.
pub const SPIN_RTT: &str = "two-atomics spin ping-pong RTT";
pub const FUTEX_RTT: &str = "raw futex ping-pong RTT";
pub const PIPE_RTT: &str = "pipe ping-pong RTT, 8 B";
pub const SOCKET_RTT: &str = "socketpair ping-pong RTT, 8 B";
/// The Lamport rings of 64 B messages, by capacity in messages ([`STREAM_CAPACITIES`]).
pub const LAMPORT_64B: [&str; 3] = [
    "Lamport ring, 64 slots x 64 B",
    "Lamport ring, 1024 slots x 64 B",
    "Lamport ring, 4096 slots x 64 B",
];
/// The capacities, in messages, at which 64 B streams are compared.
pub const STREAM_CAPACITIES: [usize; 3] = [64, 1024, 4096];
/// What the Lamport rows measure, printed with the table: a ratio is only worth what its
/// baseline is worth.
pub const LAMPORT_PARAMS: &str = "Lamport ring: N slots of 64 B in a MAP_SHARED mapping; head \
     and tail indices on separate 128-byte-aligned lines; each side caches the other's index and \
     re-reads it only when the ring looks full (producer) or empty (consumer); indices \
     published after every message (Release/Acquire); busy-spin with PAUSE, no sleeping; one \
     memcpy in, one out, 64-byte-aligned buffers; the child produces on CPU 1, the parent \
     consumes on CPU 0 and checks every sequence number";
pub const PIPE_64B: &str = "pipe stream, 64 B msgs";
pub const SOCKET_64B: &str = "socketpair stream, 64 B msgs";
pub const MEMCPY_1MIB: &str = "memcpy of 1 MiB in one process";
pub const RING_1MIB: &str = "Lamport ring, 4 slots x 1 MiB";
pub const PIPE_1MIB: &str = "pipe stream, 1 MiB msgs";
pub const PIPE_1MIB_BIG: &str = "pipe stream, 1 MiB msgs, 1 MiB pipe buffer";
pub const SOCKET_1MIB: &str = "socketpair stream, 1 MiB msgs";

const MIB: usize = 1 << 20;

/// The round-trip baselines, with ratios against the spin ping-pong.
pub fn rtt() -> Vec<Session> {
    let rtt = |name| Row::new(name, Unit::Nanos);
    vec![
        spin_pingpong_rtt(rtt(SPIN_RTT)),
        futex_pingpong_rtt(rtt(FUTEX_RTT).vs(SPIN_RTT)),
        pipe_pingpong_rtt(rtt(PIPE_RTT).vs(SPIN_RTT)),
        socketpair_pingpong_rtt(rtt(SOCKET_RTT).vs(SPIN_RTT)),
    ]
}

/// The 64 B stream baselines: the Lamport ring at each compared capacity, then a pipe and a
/// socketpair (against the largest ring).
pub fn msgs_64b() -> Vec<Session> {
    let msgs = |name| Row::new(name, Unit::MsgsPerSec);
    let mut v: Vec<Session> = LAMPORT_64B
        .iter()
        .zip(STREAM_CAPACITIES)
        .map(|(&name, cap)| ring_64b_msgs_per_sec(msgs(name), cap))
        .collect();
    v.push(pipe_64b_msgs_per_sec(msgs(PIPE_64B).vs(LAMPORT_64B[2])));
    v.push(socketpair_64b_msgs_per_sec(
        msgs(SOCKET_64B).vs(LAMPORT_64B[2]),
    ));
    v
}

/// The 1 MiB baselines, with ratios against the Lamport ring and memcpy.
pub fn mib() -> Vec<Session> {
    let bytes = |name| Row::new(name, Unit::BytesPerSec);
    let vs_both = |name| bytes(name).vs(RING_1MIB).vs(MEMCPY_1MIB);
    vec![
        memcpy_1mib_bytes_per_sec(bytes(MEMCPY_1MIB)),
        ring_1mib_bytes_per_sec(bytes(RING_1MIB).vs(MEMCPY_1MIB)),
        pipe_1mib_bytes_per_sec(vs_both(PIPE_1MIB), None),
        pipe_1mib_bytes_per_sec(vs_both(PIPE_1MIB_BIG), Some(MIB)),
        socketpair_1mib_bytes_per_sec(vs_both(SOCKET_1MIB)),
    ]
}

// ---------------------------------------------------------------------------------------------
// Round trips through shared memory

/// Two `AtomicU64`s on separate cache lines of a shared page; the parent writes `i` to `ping`,
/// the child spins until it sees it and echoes it to `pong`. The cost of two cache-line
/// transfers: the floor for any round trip between the two CPUs.
pub fn spin_pingpong_rtt(row: Row) -> Session {
    let n = iters(300_000);
    let map = SharedMap::new(2 * LINE);
    let gate = Gate::new();
    // Relaxed throughout: the counter is the whole message, nothing else is published with it.
    let child = fork_pinned(CHILD_CPU, || {
        let (ping, pong) = (map.atomic_u64(0), map.atomic_u64(LINE));
        let mut i = 0;
        for round in 0..rounds() {
            gate.enter(round);
            for _ in 0..n {
                i += 1;
                while ping.load(Ordering::Relaxed) != i {
                    spin_loop();
                }
                pong.store(i, Ordering::Relaxed);
            }
        }
    });
    let mut i = 0;
    let rep = move || {
        gate.open_next();
        let (ping, pong) = (map.atomic_u64(0), map.atomic_u64(LINE));
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
    };
    Session::new(row, rep, move || reap(child))
}

/// Two futex words on separate cache lines of a shared page; each side stores the counter in
/// the other's word and wakes it, then sleeps on its own word until the echo arrives. No
/// spinning: every hop is a kernel wake-up.
pub fn futex_pingpong_rtt(row: Row) -> Session {
    let n = iters(3_000);
    let map = SharedMap::new(2 * LINE);
    let gate = Gate::new();
    // Relaxed throughout: the counter is the whole message, and the futex syscalls order the
    // store against the wake-up anyway.
    fn wait_for(word: &AtomicU32, i: u32) {
        loop {
            let seen = word.load(Ordering::Relaxed);
            if seen == i {
                break;
            }
            futex_wait(word, seen);
        }
    }
    let child = fork_pinned(CHILD_CPU, || {
        let (ping, pong) = (map.atomic_u32(0), map.atomic_u32(LINE));
        let mut i = 0u32; // wraps harmlessly: only equality matters
        for round in 0..rounds() {
            gate.enter(round);
            for _ in 0..n {
                i = i.wrapping_add(1);
                wait_for(ping, i);
                pong.store(i, Ordering::Relaxed);
                futex_wake(pong);
            }
        }
    });
    let mut i = 0u32;
    let rep = move || {
        gate.open_next();
        let (ping, pong) = (map.atomic_u32(0), map.atomic_u32(LINE));
        let elapsed = time(|| {
            for _ in 0..n {
                i = i.wrapping_add(1);
                ping.store(i, Ordering::Relaxed);
                futex_wake(ping);
                wait_for(pong, i);
            }
        });
        ns_per_op(elapsed, n)
    };
    Session::new(row, rep, move || reap(child))
}

// ---------------------------------------------------------------------------------------------
// The Lamport ring (fixed-slot SPSC)

/// Lamport's single-producer single-consumer ring of `capacity` slots of `SLOT` bytes in a
/// shared mapping, as a competent hand-written one: both sides spin (PAUSE), one message per
/// slot, indices published after every message, each side caching the other's index and
/// re-reading it only when the ring looks full (producer) or empty (consumer), indices on
/// lines of their own (and not in the same 128-byte pair, which the adjacent-line prefetcher
/// fetches together), slots and message buffers 64-byte aligned. See [`LAMPORT_PARAMS`].
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
        assert!(capacity.is_power_of_two() && SLOT.is_multiple_of(64));
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
/// child through a [`Ring`] of `capacity` slots; the figure is messages per second, counted
/// until the consumer has taken the last one, times `scale`. Each message carries its sequence
/// number, which the consumer checks.
fn ring_stream<const SLOT: usize>(
    row: Row,
    capacity: usize,
    full_count: u64,
    scale: f64,
) -> Session {
    let n = iters(full_count);
    let map = SharedMap::new(Ring::<SLOT>::map_len(capacity));
    let gate = Gate::new();
    let child = fork_pinned(CHILD_CPU, || {
        let mut rx = Consumer {
            ring: Ring::<SLOT>::new(&map, capacity),
            head: 0,
            cached_tail: 0,
        };
        let mut msg = aligned_buffer::<SLOT>(0x5a);
        let mut seq = 0;
        for round in 0..rounds() {
            gate.enter(round);
            for _ in 0..n {
                rx.pop(&mut msg.0);
                let stamp = u64::from_ne_bytes(msg.0[..8].try_into().unwrap());
                assert_eq!(stamp, seq, "ring delivered a wrong message");
                seq += 1;
            }
        }
    });
    let mut msg = aligned_buffer::<SLOT>(0xa5);
    // The producer's private state, kept between repetitions (the `Producer` borrows `map`).
    let (mut tail, mut cached_head) = (0, 0);
    let rep = move || {
        gate.open_next();
        let mut tx = Producer {
            ring: Ring::<SLOT>::new(&map, capacity),
            tail,
            cached_head,
        };
        let elapsed = time(|| {
            for _ in 0..n {
                msg.0[..8].copy_from_slice(&tx.tail.to_ne_bytes());
                tx.push(&msg.0);
            }
            tx.wait_drained();
        });
        (tail, cached_head) = (tx.tail, tx.cached_head);
        per_sec(elapsed, n) * scale
    };
    Session::new(row, rep, move || reap(child))
}

/// `N` bytes, 64-byte aligned (as a slot), on the heap (`N` may be too big for a stack).
#[repr(C, align(64))]
struct Aligned<const N: usize>([u8; N]);

fn aligned_buffer<const N: usize>(fill: u8) -> Box<Aligned<N>> {
    let layout = std::alloc::Layout::new::<Aligned<N>>();
    // SAFETY: the layout has a non-zero size (`N > 0` in every use).
    let p = unsafe { std::alloc::alloc(layout) }.cast::<Aligned<N>>();
    if p.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: `p` is a fresh allocation of `Aligned<N>`'s layout; every byte is written here
    // before the `Box` takes it over, and `Box` frees it with the same layout.
    unsafe {
        p.cast::<u8>().write_bytes(fill, N);
        Box::from_raw(p)
    }
}

/// A Lamport ring of `capacity` slots of 64 B; messages per second.
pub fn ring_64b_msgs_per_sec(row: Row, capacity: usize) -> Session {
    ring_stream::<64>(row, capacity, 5_000_000, 1.0)
}

/// Four slots of 1 MiB; bytes per second.
pub fn ring_1mib_bytes_per_sec(row: Row) -> Session {
    ring_stream::<MIB>(row, 4, 2_000, MIB as f64)
}

/// Copies 1 MiB between two buffers of this process: the ceiling for a transfer that copies
/// once (zero-copy IPC), and the unit for one that copies twice.
pub fn memcpy_1mib_bytes_per_sec(row: Row) -> Session {
    pin_to_cpu(PARENT_CPU);
    let n = iters(3_000);
    // Filled, not zeroed, so every page is really mapped (calloc'd zero pages would all alias
    // the kernel's zero page and read unrealistically fast).
    let src = vec![0xa5u8; MIB];
    let mut dst = vec![0x5au8; MIB];
    let rep = move || {
        let elapsed = time(|| {
            for _ in 0..n {
                dst.copy_from_slice(black_box(&src));
                black_box(&mut dst);
            }
        });
        per_sec(elapsed, n) * MIB as f64
    };
    Session::new(row, rep, || {})
}

// ---------------------------------------------------------------------------------------------
// Pipes and Unix sockets

/// Ping-pong of 8-byte counters: the parent writes to `p_tx` and reads the echo from `p_rx`;
/// the child reads from `c_rx` and echoes to `c_tx`. The session owns the parent's ends; the
/// child's are dropped in the parent once it has forked.
fn fd_pingpong_rtt(row: Row, (p_tx, p_rx): (File, File), (c_rx, c_tx): (File, File)) -> Session {
    fd_pingpong_rtt_on(row, CHILD_CPU, (p_tx, p_rx), (c_rx, c_tx))
}

fn fd_pingpong_rtt_on(
    row: Row,
    child_cpu: usize,
    (p_tx, p_rx): (File, File),
    (c_rx, c_tx): (File, File),
) -> Session {
    let n = iters(3_000);
    let gate = Gate::new();
    let child = fork_pinned(child_cpu, || {
        let (mut rx, mut tx) = (&c_rx, &c_tx);
        let mut buf = [0u8; 8];
        for round in 0..rounds() {
            gate.enter(round);
            for _ in 0..n {
                rx.read_exact(&mut buf).expect("child read");
                tx.write_all(&buf).expect("child write");
            }
        }
    });
    drop((c_rx, c_tx));
    let mut buf = [0u8; 8];
    let mut i = 0u64;
    let rep = move || {
        gate.open_next();
        let (mut tx, mut rx) = (&p_tx, &p_rx);
        let elapsed = time(|| {
            for _ in 0..n {
                i += 1;
                tx.write_all(&i.to_ne_bytes()).expect("parent write");
                rx.read_exact(&mut buf).expect("parent read");
                assert_eq!(u64::from_ne_bytes(buf), i, "wrong echo");
            }
        });
        ns_per_op(elapsed, n)
    };
    Session::new(row, rep, move || reap(child))
}

/// Streams `iters(full_count)` messages of `size` bytes per repetition, one `write` (or as
/// many as the kernel needs) per message, from `p_tx` to the child's `c_rx`, which reads each
/// message whole; after the last one the child acknowledges with one byte from `c_ack` to
/// `p_ack`, which ends the timed repetition. The figure is messages per second times `scale`.
fn fd_stream(
    row: Row,
    (p_tx, p_ack): (File, File),
    (c_rx, c_ack): (File, File),
    size: usize,
    full_count: u64,
    scale: f64,
) -> Session {
    let n = iters(full_count);
    let gate = Gate::new();
    let child = fork_pinned(CHILD_CPU, || {
        let (mut rx, mut ack) = (&c_rx, &c_ack);
        let mut msg = vec![0x5au8; size];
        for round in 0..rounds() {
            gate.enter(round);
            for _ in 0..n {
                rx.read_exact(&mut msg).expect("child read");
            }
            ack.write_all(&[1]).expect("child ack");
        }
    });
    drop((c_rx, c_ack));
    let msg = vec![0xa5u8; size];
    let rep = move || {
        gate.open_next();
        let (mut tx, mut ack) = (&p_tx, &p_ack);
        let elapsed = time(|| {
            for _ in 0..n {
                tx.write_all(&msg).expect("parent write");
            }
            ack.read_exact(&mut [0]).expect("parent ack");
        });
        per_sec(elapsed, n) * scale
    };
    Session::new(row, rep, move || reap(child))
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

pub fn pipe_pingpong_rtt(row: Row) -> Session {
    let (down_rd, down_wr) = new_pipe(None);
    let (up_rd, up_wr) = new_pipe(None);
    fd_pingpong_rtt(row, (down_wr, up_rd), (down_rd, up_wr))
}

/// As [`pipe_pingpong_rtt`] with the child on the parent's CPU (a loaded machine's case).
pub fn pipe_pingpong_rtt_same_cpu(row: Row) -> Session {
    let (down_rd, down_wr) = new_pipe(None);
    let (up_rd, up_wr) = new_pipe(None);
    fd_pingpong_rtt_on(
        row,
        crate::support::PARENT_CPU,
        (down_wr, up_rd),
        (down_rd, up_wr),
    )
}

pub fn socketpair_pingpong_rtt(row: Row) -> Session {
    let (parent, child) = new_socketpair();
    let (parent2, child2) = (clone(&parent), clone(&child));
    fd_pingpong_rtt(row, (parent, parent2), (child, child2))
}

fn pipe_stream(row: Row, buffer: Option<usize>, size: usize, count: u64, scale: f64) -> Session {
    let (down_rd, down_wr) = new_pipe(buffer);
    let (up_rd, up_wr) = new_pipe(None);
    fd_stream(row, (down_wr, up_rd), (down_rd, up_wr), size, count, scale)
}

fn socketpair_stream(row: Row, size: usize, count: u64, scale: f64) -> Session {
    let (parent, child) = new_socketpair();
    let (parent2, child2) = (clone(&parent), clone(&child));
    fd_stream(row, (parent, parent2), (child, child2), size, count, scale)
}

/// A second descriptor for the same open file (both ends of a socket are one file).
fn clone(file: &File) -> File {
    file.try_clone().expect("dup")
}

pub fn pipe_64b_msgs_per_sec(row: Row) -> Session {
    pipe_stream(row, None, 64, 300_000, 1.0)
}

pub fn socketpair_64b_msgs_per_sec(row: Row) -> Session {
    socketpair_stream(row, 64, 100_000, 1.0)
}

/// With the default 64 KiB pipe buffer, or `buffer` bytes; bytes per second.
pub fn pipe_1mib_bytes_per_sec(row: Row, buffer: Option<usize>) -> Session {
    let count = if buffer.is_some() { 150 } else { 100 };
    pipe_stream(row, buffer, MIB, count, MIB as f64)
}

/// Bytes per second.
pub fn socketpair_1mib_bytes_per_sec(row: Row) -> Session {
    socketpair_stream(row, MIB, 500, MIB as f64)
}
