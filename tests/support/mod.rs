//! A tiny single-threaded test runner for tests that really fork.
//!
//! libtest runs every test on a spawned thread, so a `#[test]` that forks forks a multithreaded
//! process. These binaries use `harness = false` instead: `main` calls [`run`], which runs each
//! case in its own forked subprocess (so a crash, a hang or leaked state stays in that case),
//! waits for it with a deadline, kills and reaps it if it overruns, and prints libtest-style
//! lines and the closing `N passed, N failed`. A case may fork further with `forkipc::fork`.
//!
//! Arguments: substrings; only cases whose name contains one of them run. `FORKIPC_CASE_TIMEOUT`
//! (seconds, default 120) bounds each case.

#![allow(dead_code)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// What a case returns: `Err` with a description fails it.
pub type Outcome = Result<(), String>;

/// A named test case.
pub struct Case {
    pub name: &'static str,
    pub run: fn() -> Outcome,
}

/// Builds a `Case` list from function names.
#[macro_export]
macro_rules! cases {
    ($($f:ident),* $(,)?) => {
        vec![$($crate::support::Case { name: stringify!($f), run: $f }),*]
    };
}

/// Fails the case with a formatted message unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!("{}:{}: {}", file!(), line!(), format!($($msg)+)));
        }
    };
}

/// Turns any displayable error into a case failure with context.
pub trait Context<T> {
    fn ctx(self, what: &str) -> Result<T, String>;
}

impl<T, E: std::fmt::Debug> Context<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e:?}"))
    }
}

impl<T> Context<T> for Option<T> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.ok_or_else(|| format!("{what}: None"))
    }
}

fn case_timeout() -> Duration {
    std::env::var("FORKIPC_CASE_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(120))
}

/// Runs the cases and exits the process: status 0 if all passed.
pub fn run(cases: Vec<Case>) -> ! {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected: Vec<&Case> = cases
        .iter()
        .filter(|c| filters.is_empty() || filters.iter().any(|f| c.name.contains(f.as_str())))
        .collect();
    println!("\nrunning {} tests", selected.len());
    let (mut passed, mut failed) = (0usize, 0usize);
    let mut failures = Vec::new();
    for case in selected {
        let start = Instant::now();
        let result = run_isolated(case);
        let ms = start.elapsed().as_millis();
        match result {
            Ok(()) => {
                passed += 1;
                println!("test {} ... ok ({ms} ms)", case.name);
            }
            Err(e) => {
                failed += 1;
                println!("test {} ... FAILED ({ms} ms)\n    {e}", case.name);
                failures.push(case.name);
            }
        }
    }
    if !failures.is_empty() {
        println!("\nfailures: {}", failures.join(", "));
    }
    println!("\n{passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

/// Runs one case in a forked subprocess; reports its outcome through a pipe.
fn run_isolated(case: &Case) -> Outcome {
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: `fds` is a writable array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err("pipe failed".into());
    }
    // SAFETY: both fds were just created and are owned here.
    let (mut rd, wr) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    let _ = std::io::stdout().flush();
    // SAFETY: the runner is single-threaded (harness = false main), so the child may do anything.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err("fork failed".into());
    }
    if pid == 0 {
        drop(rd);
        let mut wr = wr;
        let outcome = catch_unwind(AssertUnwindSafe(case.run))
            .unwrap_or_else(|p| Err(format!("panicked: {}", panic_text(&p))));
        let msg = match &outcome {
            Ok(()) => String::from("ok"),
            Err(e) => format!("ERR{e}"),
        };
        let _ = wr.write_all(msg.as_bytes());
        let _ = std::io::stdout().flush();
        // SAFETY: leave without running the runner's destructors or atexit handlers.
        unsafe { libc::_exit(0) };
    }
    drop(wr);
    let status = wait_pid(pid, case_timeout());
    let mut text = String::new();
    let _ = rd.read_to_string(&mut text);
    match status {
        Err(e) => Err(format!("{e} (the case's process was killed)")),
        Ok(st) if text == "ok" && st.success() => Ok(()),
        Ok(st) => Err(if let Some(e) = text.strip_prefix("ERR") {
            e.to_string()
        } else {
            format!("case process ended without a verdict: {st:?}")
        }),
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic".into()
    }
}

/// Waits for `pid` until `timeout`; on overrun kills it (SIGKILL), reaps it, and errs.
pub fn wait_pid(pid: libc::pid_t, timeout: Duration) -> Result<ExitStatus, String> {
    use std::os::unix::process::ExitStatusExt;
    let start = Instant::now();
    let mut nap = Duration::from_micros(200);
    loop {
        let mut status = 0;
        // SAFETY: `status` is writable; `pid` is our child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Ok(ExitStatus::from_raw(status));
        }
        if r < 0 {
            return Err(format!(
                "waitpid({pid}) failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        if start.elapsed() >= timeout {
            // SAFETY: `pid` is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let mut status = 0;
            // SAFETY: as above; it is dead now, so this returns promptly.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            return Err(format!("timed out after {timeout:?}"));
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    }
}

/// Waits for a `forkipc::Child` with a deadline; kills and reaps it on overrun.
pub fn wait_child(child: &mut forkipc::Child, timeout: Duration) -> Result<ExitStatus, String> {
    match child.wait_timeout(timeout) {
        Ok(Some(st)) => Ok(st),
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "child {} did not exit within {timeout:?}; killed",
                child.id()
            ))
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("waiting for child {}: {e}", child.id()))
        }
    }
}

/// Waits for a child and requires exit status 0.
pub fn expect_success(child: &mut forkipc::Child, timeout: Duration) -> Outcome {
    let st = wait_child(child, timeout)?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("child {} failed: {st:?}", child.id()))
    }
}

/// Kills a child (if still running) and reaps it, ignoring errors: for cleanup paths.
pub fn kill_and_reap(child: &mut forkipc::Child) {
    let _ = child.kill();
    let _ = wait_child(child, Duration::from_secs(10));
}

/// A child that is killed and reaped when dropped (unless already reaped).
pub struct Reap(pub forkipc::Child);

impl Reap {
    /// Waits for the child with a deadline (killed and reaped on overrun).
    pub fn status(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        wait_child(&mut self.0, timeout)
    }

    /// Requires that the child ended by a SIGKILL (ours), not on its own.
    pub fn expect_killed(&mut self, what: &str, timeout: Duration) -> Outcome {
        use std::os::unix::process::ExitStatusExt;
        let st = self.status(timeout)?;
        if st.signal() == Some(libc::SIGKILL) {
            Ok(())
        } else {
            Err(format!(
                "{what} was not ended by our SIGKILL but by {st:?} (it failed on its own: see stderr)"
            ))
        }
    }

    /// Requires that the child exits with status 0.
    pub fn expect_success(&mut self, what: &str, timeout: Duration) -> Outcome {
        let st = self.status(timeout)?;
        if st.success() {
            Ok(())
        } else {
            Err(format!("{what} failed: {st:?} (see stderr)"))
        }
    }
}

impl Drop for Reap {
    fn drop(&mut self) {
        kill_and_reap(&mut self.0);
    }
}

impl std::ops::Deref for Reap {
    type Target = forkipc::Child;
    fn deref(&self) -> &forkipc::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reap {
    fn deref_mut(&mut self) -> &mut forkipc::Child {
        &mut self.0
    }
}

/// Forks a child that runs `f` on the handed-over `ends`; an `Err` is printed to stderr and
/// becomes exit status 1.
pub fn spawn<E, F>(what: &str, ends: E, f: F) -> Result<Reap, String>
where
    E: forkipc::Transfer,
    F: FnOnce(E) -> Outcome,
{
    let tag = what.to_string();
    let child = forkipc::fork(ends, move |e| match f(e) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("child '{tag}' failed: {e}");
            1
        }
    })
    .ctx(what)?;
    Ok(Reap(child))
}

/// Forks a child that runs `f` (no endpoints handed over); an `Err` is printed to stderr and
/// becomes exit status 1.
pub fn spawn_fn(what: &str, f: impl FnOnce() -> Outcome) -> Result<Reap, String> {
    spawn(what, (), move |()| f())
}

/// Leaks `t` for the rest of the case (shared with forked children, which get its copy).
pub fn leak<T>(t: T) -> &'static T {
    Box::leak(Box::new(t))
}

/// Waits until `a >= want` (polling), at most `timeout`.
pub fn wait_for(a: &std::sync::atomic::AtomicU32, want: u32, timeout: Duration) -> bool {
    wait_until(timeout, || {
        a.load(std::sync::atomic::Ordering::SeqCst) >= want
    })
}

/// Waits (at most `timeout`) until process `pid` is asleep, and still is 50 ms later.
pub fn await_asleep(pid: u32, timeout: Duration) -> Outcome {
    ensure!(
        wait_until(timeout, || proc_state(pid) == Some('S')),
        "pid {pid} never went to sleep"
    );
    std::thread::sleep(Duration::from_millis(50));
    ensure!(proc_state(pid) == Some('S'), "pid {pid} woke up again");
    Ok(())
}

/// Pins the calling thread to `cpu`.
pub fn pin_to(cpu: usize) -> Outcome {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it (`cpu` is
    // below CPU_SETSIZE).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the given size; 0 is the calling thread.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    ensure!(
        r == 0,
        "sched_setaffinity({cpu}): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Forks a process that monopolises `cpu` at SCHED_FIFO priority until `stop` becomes
/// non-zero (at most 2 s), so nothing else can run there: a process woken on that CPU stays
/// woken-but-not-running until the blocker stops. Sets `running` once it spins.
pub fn cpu_blocker(
    cpu: usize,
    running: &'static std::sync::atomic::AtomicU32,
    stop: &'static std::sync::atomic::AtomicU32,
) -> Result<Reap, String> {
    use std::sync::atomic::Ordering;
    spawn_fn("cpu blocker", move || {
        pin_to(cpu)?;
        let p = libc::sched_param { sched_priority: 50 };
        // SAFETY: `p` is a valid sched_param; 0 is the calling process.
        let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) };
        ensure!(
            r == 0,
            "SCHED_FIFO refused: {} (the test needs root)",
            std::io::Error::last_os_error()
        );
        running.store(1, Ordering::SeqCst);
        let start = Instant::now();
        while stop.load(Ordering::SeqCst) == 0 && start.elapsed() < Duration::from_secs(2) {
            std::hint::spin_loop();
        }
        Ok(())
    })
}

/// A numeric field of /proc/self/status (`VmRSS` in kB, `voluntary_ctxt_switches`...); 0 if
/// absent.
pub fn status_field(name: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.split(':').next() == Some(name))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// How many times this process has gone to sleep voluntarily (a wake-up count).
pub fn voluntary_switches() -> u64 {
    status_field("voluntary_ctxt_switches")
}

/// Runs `f` and returns its result with the CPU time and the voluntary context switches
/// (wake-ups) this process spent meanwhile: what an idle wait must keep near zero.
pub fn cost_of<T>(f: impl FnOnce() -> T) -> (T, Duration, u64) {
    let (cpu0, sw0) = (cpu_time(), voluntary_switches());
    let r = f();
    (r, cpu_time() - cpu0, voluntary_switches() - sw0)
}

/// One rule of a seccomp filter: system call `nr` fails with `errno`; with `arg`
/// `Some((i, v))`, only when the low 32 bits of its argument `i` equal `v`.
pub struct Deny {
    pub nr: libc::c_long,
    pub arg: Option<(u32, u32)>,
    pub errno: i32,
}

/// `AUDIT_ARCH_X86_64` from `<linux/audit.h>` (EM_X86_64 | 64-bit | little endian).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// Installs a seccomp filter on the calling process (and the children it forks later) that
/// applies `rules` and allows everything else.
#[cfg(target_arch = "x86_64")]
pub fn deny_syscalls(rules: &[Deny]) -> Outcome {
    use libc::{
        BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W, SECCOMP_RET_ALLOW,
        SECCOMP_RET_ERRNO, sock_filter,
    };
    let stmt = |code: u32, k: u32| sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jf: u8| sock_filter {
        code: (BPF_JMP | BPF_JEQ | BPF_K) as u16,
        jt: 0,
        jf,
        k,
    };
    let load = |offset: u32| stmt(BPF_LD | BPF_W | BPF_ABS, offset);
    // struct seccomp_data: nr at 0, arch at 4, args[6] (u64 each) from 16; little endian, so
    // an argument's low 32 bits are at 16 + 8 i.
    let mut prog = vec![
        load(4),
        sock_filter {
            code: (BPF_JMP | BPF_JEQ | BPF_K) as u16,
            jt: 1,
            jf: 0,
            k: AUDIT_ARCH_X86_64,
        },
        stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    ];
    for r in rules {
        prog.push(load(0));
        match r.arg {
            None => prog.push(jeq(r.nr as u32, 1)),
            Some((i, v)) => {
                // Not this call: skip the argument test and the return.
                prog.push(jeq(r.nr as u32, 3));
                prog.push(load(16 + 8 * i));
                prog.push(jeq(v, 1));
            }
        }
        prog.push(stmt(
            BPF_RET | BPF_K,
            SECCOMP_RET_ERRNO | (r.errno as u32 & 0xffff),
        ));
    }
    prog.push(stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    ensure!(
        r == 0,
        "PR_SET_NO_NEW_PRIVS: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fprog` points at `prog`, a valid BPF program that outlives the call (the kernel
    // copies it).
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        )
    };
    ensure!(
        r == 0,
        "PR_SET_SECCOMP: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
pub fn deny_syscalls(_: &[Deny]) -> Outcome {
    Err("the seccomp filters here are x86_64 BPF".into())
}

/// Polls `cond` (with short sleeps) until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while !cond() {
        if t.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    true
}

/// Busy-waits for `d` (a delay shorter than a sleep's granularity, or one that must not yield
/// the CPU).
pub fn spin_for(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// The scheduler state letter of process `pid` (`R`, `S`, `T` stopped, `Z`...), from the
/// third field of /proc/PID/stat.
pub fn proc_state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

/// This process's pid (a system call each time: glibc no longer caches it).
pub fn getpid() -> u32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() as u32 }
}

/// splitmix64's finaliser: a well-mixed 64-bit word from any input (a sequence number, a seed).
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Process CPU time (user + system) of this process so far.
pub fn cpu_time() -> Duration {
    // SAFETY: a zeroed rusage is a valid out-buffer.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is writable.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for all processes, so a time stored in shared
/// memory by one process (a kill) can be compared with another's (the detection).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Number of entries in /proc/self/maps.
pub fn mapping_count() -> usize {
    std::fs::read_to_string("/proc/self/maps").map_or(0, |s| s.lines().count())
}

/// Number of open file descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// A small deterministic PRNG (xorshift64*), so failures reproduce from the printed seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// `n` zeroed `AtomicU32`s in a shared mapping, visible to every process forked after this
/// (the region is leaked: it lives as long as the test process).
pub fn counters(n: usize) -> Result<&'static [std::sync::atomic::AtomicU32], String> {
    use std::sync::atomic::AtomicU32;
    let region: &'static forkipc::AnonRegion =
        Box::leak(Box::new(forkipc::AnonRegion::new(n * 4).ctx("region")?));
    for _ in 0..n {
        region.alloc(AtomicU32::new(0)).ctx("alloc")?;
    }
    // SAFETY: `n` AtomicU32s were placed contiguously at the start of the leaked region.
    Ok(unsafe { std::slice::from_raw_parts(region.as_ptr() as *const AtomicU32, n) })
}

/// The first few jobs (index, runs) whose counter in `ran` is not exactly 1; empty when every
/// job ran exactly once.
pub fn not_run_once(ran: &[std::sync::atomic::AtomicU32]) -> Vec<(usize, u32)> {
    ran.iter()
        .map(|c| c.load(std::sync::atomic::Ordering::SeqCst))
        .enumerate()
        .filter(|&(_, c)| c != 1)
        .take(10)
        .collect()
}

/// As [`counters`], with `AtomicU64`s.
pub fn shared_u64(n: usize) -> Result<&'static [std::sync::atomic::AtomicU64], String> {
    use std::sync::atomic::AtomicU64;
    let region: &'static forkipc::AnonRegion =
        Box::leak(Box::new(forkipc::AnonRegion::new(n * 8).ctx("region")?));
    for _ in 0..n {
        region.alloc(AtomicU64::new(0)).ctx("alloc")?;
    }
    // SAFETY: `n` AtomicU64s were placed contiguously at the start of the leaked region.
    Ok(unsafe { std::slice::from_raw_parts(region.as_ptr() as *const AtomicU64, n) })
}

/// Children killed and reaped when dropped.
pub struct ReapAll(pub Vec<forkipc::Child>);

impl Drop for ReapAll {
    fn drop(&mut self) {
        for c in &mut self.0 {
            kill_and_reap(c);
        }
    }
}

/// Shared writable mappings of this process: (start, len).
pub fn shared_maps() -> Vec<(usize, usize)> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let range = it.next()?;
            let perms = it.next()?;
            if perms != "rw-s" {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let a = usize::from_str_radix(a, 16).ok()?;
            let b = usize::from_str_radix(b, 16).ok()?;
            Some((a, b - a))
        })
        .collect()
}

/// A pool's scratch size (pool/mod.rs: half the 64 KiB ring, less 16).
pub const POOL_SCRATCH: usize = 64 * 1024 / 2 - 16;

/// A pool's worker slot size (pool/worker.rs: two cache lines).
pub const POOL_SLOT: usize = 128;

/// The size of an `n`-worker pool's region (pool/worker.rs: header 64 B, `n` slots of
/// `POOL_SLOT` bytes, then `n` scratches of `POOL_SCRATCH` bytes, in whole pages).
pub fn pool_region_len(n: usize) -> usize {
    (64 + POOL_SLOT * n + POOL_SCRATCH * n).div_ceil(4096) * 4096
}

/// In a worker of an `n`-worker pool: the pool's region and this worker's slot index, found
/// as the mapping of the pool region's size whose slot `k` says it runs job `id`.
pub fn find_pool_region(n: usize, id: u64) -> Option<(usize, usize)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    for (a, len) in shared_maps() {
        if len != pool_region_len(n) {
            continue;
        }
        for k in 0..n {
            // SAFETY: inside a live shared mapping of this process.
            let cur =
                unsafe { (*((a + 64 + POOL_SLOT * k) as *const AtomicU64)).load(Ordering::SeqCst) };
            if cur == id {
                return Some((a, k));
            }
        }
    }
    None
}

/// Word `word` of slot `k` of the pool region at `region`: current 0, started 1, pending 2,
/// flushes 3 (first line), cost 4, cost_at 5, cpu 6 (second line).
pub fn slot_word(region: usize, k: usize, word: usize) -> &'static std::sync::atomic::AtomicU64 {
    let at = if word < 4 {
        8 * word
    } else {
        64 + 8 * (word - 4)
    };
    // SAFETY: slot `k`'s word inside the pool region (a live shared mapping).
    unsafe { &*((region + 64 + POOL_SLOT * k + at) as *const std::sync::atomic::AtomicU64) }
}

/// No child of this process is left (all reaped).
pub fn no_children() -> bool {
    // SAFETY: waitpid with WNOHANG on any child; a null status pointer is allowed.
    let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
    r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)
}

/// Builds `builder`'s pool with this process pinned to CPU 1 (so the workers, forked now,
/// inherit that affinity) when `pinned`, then pins this process to CPU 0: the layout of
/// `cargo bench`'s pool rows.
pub fn pool_on_cpu1<J, R>(
    pinned: bool,
    builder: forkipc::PoolBuilder,
    work: impl Fn(J) -> R + 'static,
) -> Result<forkipc::Pool<J, R>, String>
where
    J: forkipc::Plain,
    R: forkipc::Plain,
{
    if pinned {
        pin_to(1)?;
    }
    let pool = builder.build(work);
    pin_to(0)?;
    pool.ctx("pool")
}

/// A 1 KiB job whose first 4 bytes are `i` (31 fit a pool's job frame, so two frames fill a
/// worker's 64 KiB job ring).
pub fn kib_job(i: u32) -> [u8; 1024] {
    let mut j = [0u8; 1024];
    j[..4].copy_from_slice(&i.to_le_bytes());
    j
}

/// A pool of 2 workers (queue of 128) running 1 KiB jobs (`kib_job`), counting each job's
/// runs in `ran` and returning its number; see `pool_on_cpu1`.
pub fn kib_pool(
    pinned: bool,
    ran: &'static [std::sync::atomic::AtomicU32],
) -> Result<forkipc::Pool<[u8; 1024], u32>, String> {
    let builder = forkipc::PoolBuilder::new().workers(2).queue_capacity(128);
    pool_on_cpu1(pinned, builder, move |j: [u8; 1024]| -> u32 {
        let id = u32::from_le_bytes([j[0], j[1], j[2], j[3]]);
        ran[id as usize].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        id
    })
}

/// Sends `sig` to process `pid` (a child of this test, or one of a pool's workers).
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, sig) };
}

/// SIGSTOPs `pid` and waits (2 s at most) until it shows as stopped, then 20 ms more.
pub fn stop_process(pid: u32) -> Outcome {
    signal(pid, libc::SIGSTOP);
    ensure!(
        wait_until(Duration::from_secs(2), || proc_state(pid) == Some('T')),
        "process {pid} did not stop"
    );
    std::thread::sleep(Duration::from_millis(20));
    Ok(())
}
