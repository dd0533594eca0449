//! The rows of what users would pick instead of forkipc: a pipe, a Unix socketpair,
//! `ipc-channel` and `ipmpsc`. Each is reduced to a sending half ([`Tx`]) and a receiving half
//! ([`Rx`]), driven by the same round-trip and stream loops, forked with the harness's own
//! `fork_child` (not forkipc's).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::fcntl::{FcntlArg, fcntl};
use nix::sys::socket::{getsockopt, setsockopt, sockopt};

use crate::harness::{Go, check, fork_child, kill_and_reap, payload, reap, stamp};
use crate::{PIPE_BUFFER, RTT_WARMUP, ring_bytes, stream_warmup};

/// Sends one message.
pub trait Tx {
    fn send(&mut self, msg: &[u8]) -> Result<(), String>;
}

/// Receives one message of `size` bytes into `buf` (replacing its contents).
pub trait Rx {
    fn recv(&mut self, buf: &mut Vec<u8>, size: usize) -> Result<(), String>;
}

/// Round trips: the parent sends each message through `parent.0` and waits for the child to
/// echo it back through `child.0` to `parent.1`. The child's halves move into the child and
/// are closed in the parent when the fork returns, so the parent sees a dead child as an
/// error, not a hang.
pub fn rtt<PT: Tx, PR: Rx, CT: Tx, CR: Rx>(
    parent: (PT, PR),
    child: (CR, CT),
    size: usize,
    n: u64,
) -> Result<Duration, String> {
    let total = RTT_WARMUP + n;
    let (c_rx, c_tx) = child;
    let pid = fork_child(move || {
        let (mut rx, mut tx) = (c_rx, c_tx);
        let mut buf = Vec::with_capacity(size);
        for seq in 0..total {
            rx.recv(&mut buf, size)
                .map_err(|e| format!("child recv, message {seq}: {e}"))?;
            check(&buf, size, seq)?;
            tx.send(&buf)
                .map_err(|e| format!("child send, message {seq}: {e}"))?;
        }
        Ok(())
    })?;
    let (mut tx, mut rx) = parent;
    let mut src = payload(size);
    let mut buf = Vec::with_capacity(size);
    let mut one = |seq: u64| -> Result<(), String> {
        stamp(&mut src, seq);
        tx.send(&src)
            .map_err(|e| format!("send, message {seq}: {e}"))?;
        rx.recv(&mut buf, size)
            .map_err(|e| format!("recv, message {seq}: {e}"))?;
        check(&buf, size, seq)
    };
    match crate::forkipc_rows::timed_rtt(n, &mut one) {
        Ok(elapsed) => {
            drop((tx, rx));
            reap(pid).map(|()| elapsed)
        }
        Err(e) => Err(kill_and_reap(pid, e)),
    }
}

/// A stream of messages from the child (`tx`) to the parent (`rx`), timed from the "go" after
/// the warm-up messages to the last message received.
pub fn stream<T: Tx, R: Rx>(tx: T, mut rx: R, size: usize, n: u64) -> Result<Duration, String> {
    let warm = stream_warmup(size);
    let (go_tx, go_rx) = Go::new()?.split();
    let pid = fork_child(move || {
        let mut tx = tx;
        let mut src = payload(size);
        go_rx.send_stream(warm, n, |seq| {
            stamp(&mut src, seq);
            tx.send(&src)
                .map_err(|e| format!("child send, message {seq}: {e}"))
        })
    })?;
    let mut buf = Vec::with_capacity(size);
    let result = go_tx.take_stream(warm, n, |seq| {
        rx.recv(&mut buf, size)
            .map_err(|e| format!("recv, message {seq}: {e}"))?;
        check(&buf, size, seq)
    });
    match result {
        Ok(elapsed) => reap(pid).map(|()| elapsed),
        Err(e) => Err(kill_and_reap(pid, e)),
    }
}

// ---------------------------------------------------------------------------------------------
// Pipes and sockets: byte streams of fixed-size messages (both sides know the size, so no
// framing is needed: the best case for a byte stream).

/// One end of a pipe or socket.
pub struct Fd(pub File);

impl Tx for Fd {
    fn send(&mut self, msg: &[u8]) -> Result<(), String> {
        self.0.write_all(msg).map_err(|e| e.to_string())
    }
}

impl Rx for Fd {
    fn recv(&mut self, buf: &mut Vec<u8>, size: usize) -> Result<(), String> {
        buf.resize(size, 0);
        self.0.read_exact(buf).map_err(|e| e.to_string())
    }
}

/// A pipe as (read end, write end), its buffer set to [`PIPE_BUFFER`] with `F_SETPIPE_SZ`.
pub fn pipe() -> Result<(Fd, Fd), String> {
    let (rd, wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe2: {e}"))?;
    fcntl(&wr, FcntlArg::F_SETPIPE_SZ(PIPE_BUFFER as i32))
        .map_err(|e| format!("F_SETPIPE_SZ({PIPE_BUFFER}): {e}"))?;
    Ok((Fd(File::from(rd)), Fd(File::from(wr))))
}

/// The pipe buffer size the kernel actually gives (for the report).
pub fn pipe_buffer_effective() -> Result<usize, String> {
    let (_rd, wr) = pipe()?;
    let size = fcntl(&wr.0, FcntlArg::F_GETPIPE_SZ).map_err(|e| e.to_string())?;
    Ok(size as usize)
}

/// Socket buffer size asked for: as large as the largest byte ring.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// A connected pair of Unix stream sockets, send and receive buffers enlarged to
/// [`SOCKET_BUFFER`] (with `SO_SNDBUFFORCE` when allowed, i.e. as root, else `SO_SNDBUF`,
/// which the kernel caps at `net.core.wmem_max`).
pub fn socketpair() -> Result<(Fd, Fd), String> {
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
    if rc != 0 {
        return Err(format!("socketpair: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: socketpair succeeded, so both are open descriptors owned by nothing else yet.
    let [a, b] = fds.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    for fd in [&a, &b] {
        enlarge_socket_buffers(fd)?;
    }
    Ok((Fd(File::from(a)), Fd(File::from(b))))
}

fn enlarge_socket_buffers(fd: &impl AsFd) -> Result<(), String> {
    let size = SOCKET_BUFFER;
    if setsockopt(fd, sockopt::SndBufForce, &size).is_err() {
        setsockopt(fd, sockopt::SndBuf, &size).map_err(|e| format!("SO_SNDBUF: {e}"))?;
    }
    if setsockopt(fd, sockopt::RcvBufForce, &size).is_err() {
        setsockopt(fd, sockopt::RcvBuf, &size).map_err(|e| format!("SO_RCVBUF: {e}"))?;
    }
    Ok(())
}

/// The socket buffer sizes (send, receive) the kernel actually gives (for the report; Linux
/// reports twice the size asked for, the doubling being its bookkeeping allowance).
pub fn socket_buffers_effective() -> Result<(usize, usize), String> {
    let (a, _b) = socketpair()?;
    let snd = getsockopt(&a.0, sockopt::SndBuf).map_err(|e| e.to_string())?;
    let rcv = getsockopt(&a.0, sockopt::RcvBuf).map_err(|e| e.to_string())?;
    Ok((snd, rcv))
}

pub fn pipe_rtt(size: usize, n: u64) -> Result<Duration, String> {
    let (down_rd, down_wr) = pipe()?;
    let (up_rd, up_wr) = pipe()?;
    rtt((down_wr, up_rd), (down_rd, up_wr), size, n)
}

pub fn pipe_stream(size: usize, n: u64) -> Result<Duration, String> {
    let (rd, wr) = pipe()?;
    stream(wr, rd, size, n)
}

pub fn socket_rtt(size: usize, n: u64) -> Result<Duration, String> {
    let (a, b) = socketpair()?;
    let a2 = Fd(a.0.try_clone().map_err(|e| e.to_string())?);
    let b2 = Fd(b.0.try_clone().map_err(|e| e.to_string())?);
    rtt((a, a2), (b, b2), size, n)
}

pub fn socket_stream(size: usize, n: u64) -> Result<Duration, String> {
    let (a, b) = socketpair()?;
    stream(b, a, size, n)
}

// ---------------------------------------------------------------------------------------------
// ipc-channel: its byte channel (`ipc::bytes_channel`: no serialization), created before the
// fork; the forked child uses its inherited ends.

pub struct IpcTx(ipc_channel::ipc::IpcBytesSender);
pub struct IpcRx(ipc_channel::ipc::IpcBytesReceiver);

impl Tx for IpcTx {
    fn send(&mut self, msg: &[u8]) -> Result<(), String> {
        self.0.send(msg).map_err(|e| e.to_string())
    }
}

impl Rx for IpcRx {
    fn recv(&mut self, buf: &mut Vec<u8>, _size: usize) -> Result<(), String> {
        // ipc-channel hands over a fresh Vec per message: keep it (no extra copy).
        *buf = self.0.recv().map_err(|e| format!("{e:?}"))?;
        Ok(())
    }
}

fn ipc_pair() -> Result<(IpcTx, IpcRx), String> {
    let (tx, rx) = ipc_channel::ipc::bytes_channel().map_err(|e| e.to_string())?;
    Ok((IpcTx(tx), IpcRx(rx)))
}

pub fn ipc_channel_rtt(size: usize, n: u64) -> Result<Duration, String> {
    let (down_tx, down_rx) = ipc_pair()?;
    let (up_tx, up_rx) = ipc_pair()?;
    rtt((down_tx, up_rx), (down_rx, up_tx), size, n)
}

pub fn ipc_channel_stream(size: usize, n: u64) -> Result<Duration, String> {
    let (tx, rx) = ipc_pair()?;
    stream(tx, rx, size, n)
}

// ---------------------------------------------------------------------------------------------
// ipmpsc: a shared-memory ring in a file mapping. Its file is made in /dev/shm (tmpfs, so no
// disk writeback) and unlinked at once: both processes use the mapping made before the fork.
// Messages are `serde_bytes::Bytes` (bincode writes them as one length and one copy); the
// receiver takes a `&[u8]` in the ring through a zero-copy context and copies it out.

pub struct IpmpscTx(ipmpsc::Sender);
pub struct IpmpscRx(ipmpsc::Receiver);

impl Tx for IpmpscTx {
    fn send(&mut self, msg: &[u8]) -> Result<(), String> {
        self.0
            .send(&serde_bytes::Bytes::new(msg))
            .map_err(|e| e.to_string())
    }
}

impl Rx for IpmpscRx {
    fn recv(&mut self, buf: &mut Vec<u8>, _size: usize) -> Result<(), String> {
        let mut ctx = self.0.zero_copy_context();
        let msg: &[u8] = ctx.recv().map_err(|e| e.to_string())?;
        buf.clear();
        buf.extend_from_slice(msg);
        Ok(())
    }
}

fn ipmpsc_pair(size: usize) -> Result<(IpmpscTx, IpmpscRx), String> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let path = format!(
        "/dev/shm/forkipc-peers-{}-{}",
        std::process::id(),
        // Relaxed: a unique-name counter, nothing is published with it.
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let bytes = u32::try_from(ring_bytes(size)).map_err(|e| e.to_string())?;
    let ring = ipmpsc::SharedRingBuffer::create(&path, bytes);
    // The mapping stays; the name is not needed past this point.
    let _ = std::fs::remove_file(&path);
    let ring = ring.map_err(|e| format!("ipmpsc ring {path}: {e}"))?;
    Ok((
        IpmpscTx(ipmpsc::Sender::new(ring.clone())),
        IpmpscRx(ipmpsc::Receiver::new(ring)),
    ))
}

pub fn ipmpsc_rtt(size: usize, n: u64) -> Result<Duration, String> {
    let (down_tx, down_rx) = ipmpsc_pair(size)?;
    let (up_tx, up_rx) = ipmpsc_pair(size)?;
    rtt((down_tx, up_rx), (down_rx, up_tx), size, n)
}

pub fn ipmpsc_stream(size: usize, n: u64) -> Result<Duration, String> {
    let (tx, rx) = ipmpsc_pair(size)?;
    stream(tx, rx, size, n)
}
