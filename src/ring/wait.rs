//! How a side that cannot proceed waits: spin per its policy, then announce itself asleep
//! (Dekker's handshake with the publishing side, see `sync::barrier`) and sleep on its `wait`
//! word and on the peer owner's presence word at once, so that a message, free space, the
//! peer's close and the peer's death all wake it.

use std::time::Duration;

use super::{DisconnectReason, RingError, SideState};
use crate::presence::{self, Liveness, PresenceRef};
use crate::sync::spin::Spinner;
use crate::sync::{Deadline, Ordering, WaitPolicy, Wake, barrier};

/// How long a waiter sleeps at most when the kernel lacks `futex_waitv` (it then re-checks the
/// peer's presence itself).
const FALLBACK_POLL: Duration = Duration::from_millis(20);

/// How long a waiter sleeps at most when its barrier failed (`barrier::heavy` returned
/// `false`): a publisher may then have missed its `wait = 1` and skipped the wake-up.
const UNFENCED_NAP: Duration = Duration::from_millis(10);

/// Waits until `ready` returns `Ok(true)`; `me` is the waiting side's shared state, `peer` the
/// other side's. A disconnect (the peer closed or died) is reported only after one more
/// `ready`, so whatever was committed before it is still delivered.
pub(super) fn wait_until(
    me: &SideState,
    peer: &SideState,
    policy: WaitPolicy,
    deadline: Option<&Deadline>,
    mut ready: impl FnMut() -> Result<bool, RingError>,
) -> Result<(), RingError> {
    let mut spinner = Spinner::new(policy);
    let peer_closed = || peer.closed.load(Ordering::SeqCst) != 0;
    // After a death is seen: an owner that closed its side and then exited closed it.
    let died = || {
        RingError::Disconnected(if peer_closed() {
            DisconnectReason::PeerDropped
        } else {
            DisconnectReason::PeerDied
        })
    };
    loop {
        if ready()? {
            return Ok(());
        }
        if peer_closed() {
            return last_look(
                &mut ready,
                RingError::Disconnected(DisconnectReason::PeerDropped),
            );
        }
        if deadline.is_some_and(Deadline::expired) {
            // A dead peer is a disconnect, whatever the timeout (`Duration::ZERO` included).
            if !peer.owner_alive() {
                return last_look(&mut ready, died());
            }
            return Err(RingError::Timeout);
        }
        if spinner.spin() {
            // A pure spinner never reaches `sleep`, where death is noticed: look now and then.
            if spinner.checkpoint() && !peer.owner_alive() {
                return last_look(&mut ready, died());
            }
            continue;
        }
        // Release: pairs with the Acquire load of `wait` in `wake_if_asleep`, so a publisher
        // that sees 1 also sees every earlier store to this side (a `Select`'s disarmed bell).
        me.wait.store(1, Ordering::Release);
        // Dekker: our `wait = 1` before our re-check; pairs with the publisher's light barrier
        // (`notify_consumer`, `ReadGuard::drop`) and the fence in `close`/`set_owner`. If the
        // barrier failed, a wake-up may be lost: sleep at most `UNFENCED_NAP`, then look again.
        let nap = (!barrier::heavy()).then(|| Deadline::after(UNFENCED_NAP).min_with(deadline));
        let outcome = if ready()? || peer_closed() {
            Ok(Wake::Retry)
        } else {
            sleep(me, peer, nap.as_ref().or(deadline))
        };
        me.wait.store(0, Ordering::Relaxed);
        match outcome {
            Ok(Wake::Retry) => {}
            // Only the nap ended, not the caller's deadline.
            Ok(Wake::TimedOut) if nap.is_some() && !deadline.is_some_and(Deadline::expired) => {}
            Ok(Wake::TimedOut) => return last_look(&mut ready, RingError::Timeout),
            Err(DisconnectReason::PeerDied) => return last_look(&mut ready, died()),
            Err(reason) => return last_look(&mut ready, RingError::Disconnected(reason)),
        }
    }
}

/// The policy a wait uses: `WaitPolicy::Block` instead of `Adaptive` when the peer's process
/// last started waiting on this very CPU (noted in the presence slots): it cannot act while we
/// spin, so a round trip on one CPU costs two futex hand-offs, like a pipe's, instead of two
/// spin budgets. A hint: a wrong guess costs one wait's spin phase, or sleeps once too early.
pub(super) fn effective_policy(peer: &SideState, policy: WaitPolicy) -> WaitPolicy {
    #[cfg(not(loom))]
    if let WaitPolicy::Adaptive(_) = policy {
        let cpu = crate::sys::current_cpu_plus_one();
        presence::note_my_cpu(cpu);
        if cpu != 0 && presence::cpu_of(peer.owner_ref()) == cpu {
            return WaitPolicy::Block;
        }
    }
    let _ = peer;
    policy
}

/// One more look before reporting `e`.
fn last_look(
    ready: &mut impl FnMut() -> Result<bool, RingError>,
    e: RingError,
) -> Result<(), RingError> {
    if ready()? { Ok(()) } else { Err(e) }
}

/// Sleeps on `me.wait` (expected 1) and on the peer owner's presence, if known.
///
/// The kernel wakes only one sleeper when a process dies; whoever learns of the death passes
/// it on (even if a message woke it at the same moment), so every endpoint waiting on the dead
/// process hears of it. While asleep, the presence word is named in this thread's
/// `list_op_pending`, so that if this process is killed after being woken and before passing
/// the news on, the kernel wakes the next sleeper in its place.
fn sleep(
    me: &SideState,
    peer: &SideState,
    deadline: Option<&Deadline>,
) -> Result<Wake, DisconnectReason> {
    let peer_owner = PresenceRef(peer.owner.load(Ordering::SeqCst));
    match presence::arm(peer_owner) {
        Some((word, val)) => {
            presence::announce_waiter(peer_owner);
            let (w, _) = me
                .wait
                .wait_any(1, None, &[(word, val)], deadline, FALLBACK_POLL);
            presence::testing::after_wake();
            if presence::check(peer_owner) == Liveness::Dead {
                presence::pass_on_death(peer_owner);
            }
            presence::waiter_done();
            Ok(w)
        }
        None if peer_owner == PresenceRef::NONE => Ok(me.wait.wait(1, deadline)),
        None => {
            presence::pass_on_death(peer_owner);
            if peer.owner_alive() {
                Ok(Wake::Retry) // handed to a new owner meanwhile: arm on that one
            } else {
                Err(DisconnectReason::PeerDied)
            }
        }
    }
}
