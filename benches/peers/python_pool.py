"""Python's multiprocessing.Pool on the workloads of forkipc's Pool rows (cargo bench --bench ipc,
group "many children"), for the README's comparison table.

Run: python3 benches/peers/python_pool.py   (prints one line per figure; run it 3 times)

Same shapes as the Rust rows: tiny jobs (x * x), the fork start method, 1 and 2 workers;
apply() round trip of one job; map() with chunksize=1 (one job per message, like Pool::map's
per-job frames) and with the default batching.
"""
import multiprocessing as mp
import time


def square(x):
    return x * x


def rtt(pool, n):
    t = time.perf_counter()
    for i in range(n):
        assert pool.apply(square, (i,)) == i * i
    return (time.perf_counter() - t) / n


def jobs_per_sec(pool, n, chunksize=None):
    t = time.perf_counter()
    out = pool.map(square, range(n), chunksize) if chunksize else pool.map(square, range(n))
    e = time.perf_counter() - t
    assert out[-1] == (n - 1) * (n - 1)
    return n / e


def main():
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as p:
        print(f"python Pool.apply RTT, 1 worker: {rtt(p, 2000) * 1e6:.0f} us")
    for w in (1, 2):
        with ctx.Pool(w) as p:
            print(f"python Pool.map(chunksize=1), {w} worker(s): {jobs_per_sec(p, 50_000, 1) / 1e3:.0f} k jobs/s")
            print(f"python Pool.map (default chunks), {w} worker(s): {jobs_per_sec(p, 2_000_000) / 1e6:.2f} M jobs/s")


if __name__ == "__main__":
    main()
