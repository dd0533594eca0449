"""Python's multiprocessing, measured for forkipc's peer comparison (peers/ crate).

Driven by the Rust harness over stdin/stdout, one measurement per line, so that its
repetitions are interleaved with the other systems':

    harness -> "rtt SIZE N\n" or "stream SIZE N\n"
    helper  -> "ok NANOSECONDS\n" (time of the N timed messages) or "err WHAT\n"

Each request forks one child with the "fork" start method, pinned to CPU 1 (this process is
pinned to CPU 0). Transport: multiprocessing.Pipe, the standard choice:
  rtt:    Pipe(duplex=True), a Unix socketpair, buffers enlarged to 4 MiB; the parent
          send_bytes a message, the child recv_bytes_into a preallocated buffer, checks it and
          send_bytes it back, the parent recv_bytes_into and checks it;
  stream: Pipe(duplex=False), a pipe resized to 1 MiB (F_SETPIPE_SZ); the child sends, the
          parent recv_bytes_into a preallocated buffer and checks every message.
Every message carries its sequence number in its first 8 bytes and the complement in its last
8 (for 16 bytes or more), checked by the receiver. The harness's watchdog kills this process
if a measurement hangs; its child dies with it (PR_SET_PDEATHSIG).
"""
import ctypes
import fcntl
import multiprocessing as mp
import os
import socket
import struct
import sys
import time

PARENT_CPU, CHILD_CPU = 0, 1
RTT_WARMUP = 16
MASK = (1 << 64) - 1
SOCKET_BUFFER = 4 << 20
PIPE_BUFFER = 1 << 20
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33


def stream_warmup(size):
    return max(4, min(256, (1 << 20) // size))


def payload(size):
    return bytearray(((i * 131) >> 3) & 0xFF for i in range(size))


# The harness's self-test: PEERS_CORRUPT_SEQ=k stamps message k wrongly.
CORRUPT_SEQ = int(os.environ.get("PEERS_CORRUPT_SEQ", "-1"))


def stamp(buf, seq):
    struct.pack_into("<Q", buf, 0, seq ^ 1 if seq == CORRUPT_SEQ else seq)
    if len(buf) >= 16:
        struct.pack_into("<Q", buf, len(buf) - 8, ~seq & MASK)


def check(buf, n, size, seq):
    if n != size:
        raise RuntimeError(f"message {seq}: {n} bytes, expected {size}")
    if struct.unpack_from("<Q", buf, 0)[0] != seq:
        raise RuntimeError(f"message {seq}: wrong head stamp")
    if size >= 16 and struct.unpack_from("<Q", buf, size - 8)[0] != ~seq & MASK:
        raise RuntimeError(f"message {seq}: wrong tail stamp")


def child_setup():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    os.sched_setaffinity(0, {CHILD_CPU})


def enlarge(conn):
    s = socket.socket(fileno=os.dup(conn.fileno()))
    for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            s.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
    s.close()


def echo(conn, size, total):
    child_setup()
    buf = bytearray(size)
    for seq in range(total):
        n = conn.recv_bytes_into(buf)
        check(buf, n, size, seq)
        conn.send_bytes(buf, 0, n)


def produce(conn, go_fd, size, warm, n):
    child_setup()
    src = payload(size)
    for seq in range(warm):
        stamp(src, seq)
        conn.send_bytes(src)
    if os.read(go_fd, 1) != b"g":
        raise RuntimeError("go pipe closed")
    for seq in range(warm, warm + n):
        stamp(src, seq)
        conn.send_bytes(src)


def finish(p):
    p.join(10)
    if p.exitcode is None:
        p.kill()
        p.join()
        raise RuntimeError("child did not exit within 10 s")
    if p.exitcode != 0:
        raise RuntimeError(f"child exited with {p.exitcode}")


def rtt(ctx, size, n):
    mine, theirs = ctx.Pipe(duplex=True)
    enlarge(mine)
    p = ctx.Process(target=echo, args=(theirs, size, RTT_WARMUP + n))
    p.start()
    theirs.close()
    src, buf = payload(size), bytearray(size)

    def one(seq):
        stamp(src, seq)
        mine.send_bytes(src)
        check(buf, mine.recv_bytes_into(buf), size, seq)

    try:
        for seq in range(RTT_WARMUP):
            one(seq)
        t = time.perf_counter_ns()
        for seq in range(RTT_WARMUP, RTT_WARMUP + n):
            one(seq)
        elapsed = time.perf_counter_ns() - t
    except BaseException:
        p.kill()
        p.join()
        raise
    mine.close()
    finish(p)
    return elapsed


def stream(ctx, size, n):
    reader, writer = ctx.Pipe(duplex=False)
    fcntl.fcntl(writer.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BUFFER)
    go_rd, go_wr = os.pipe()
    warm = stream_warmup(size)
    p = ctx.Process(target=produce, args=(writer, go_rd, size, warm, n))
    p.start()
    writer.close()
    os.close(go_rd)
    buf = bytearray(size)
    try:
        for seq in range(warm):
            check(buf, reader.recv_bytes_into(buf), size, seq)
        t = time.perf_counter_ns()
        os.write(go_wr, b"g")
        for seq in range(warm, warm + n):
            check(buf, reader.recv_bytes_into(buf), size, seq)
        elapsed = time.perf_counter_ns() - t
    except BaseException:
        p.kill()
        p.join()
        raise
    finally:
        os.close(go_wr)
    reader.close()
    finish(p)
    return elapsed


def main():
    os.sched_setaffinity(0, {PARENT_CPU})
    ctx = mp.get_context("fork")
    print(f"ready python {sys.version.split()[0]}", flush=True)
    for line in sys.stdin:
        try:
            kind, size, n = line.split()
            size, n = int(size), int(n)
            elapsed = (rtt if kind == "rtt" else stream)(ctx, size, n)
            print(f"ok {elapsed}", flush=True)
        except Exception as e:  # reported to the harness, which fails the run
            print(f"err {type(e).__name__}: {e}".replace("\n", " "), flush=True)


if __name__ == "__main__":
    main()
