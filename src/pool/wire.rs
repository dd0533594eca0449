//! What crosses the process boundary, and how it is encoded.
//!
//! Frames (little-endian). A job frame is one or more records `[id: u64][len: u32][payload]`;
//! a result frame (and a scratch) is one or more records `[id: u64][kind: u8][len: u32]
//! [payload]`, kind 0 = the result, 1 = the job panicked (payload: the message, UTF-8), 2 = the
//! job could not be decoded or its result encoded. Payloads are bytemuck bytes for plain data
//! ([`PlainWire`]: every job record then has the same size, so the owner finds records by
//! arithmetic), postcard for serde types ([`SerdeWire`]). Every frame is decoded from a private
//! copy and every length in it is checked: a compromised worker can send or scribble anything,
//! and the owner still sees only values and `JobError`s, never reads out of bounds, never
//! hangs. What it can do: give wrong results or failures for the jobs in flight anywhere in
//! the pool (all workers share the pool's region, and a worker inherits the rings of the
//! workers forked before it), trigger a timeout kill of another worker, and get its own
//! finished jobs run again elsewhere by erasing what it committed. Workers are a crash
//! boundary, not a security boundary between each other.
//!
//! The hot loops are instantiated per wire when the pool is built (`Codec::of`): no call
//! through a pointer per job.

use super::*;

/// How values of one type cross the process boundary. The pool's loops are instantiated per
/// wire (no call through a pointer per job): [`PlainWire`] for plain data, [`SerdeWire`] for
/// serde types.
pub(super) trait Wire<T> {
    /// The encoded size of every value, if fixed.
    const SIZE: Option<usize>;
    fn enc(v: &T, out: &mut Vec<u8>) -> Result<(), String>;
    fn dec(b: &[u8]) -> Result<T, String>;
    /// The value's encoding, if it is its bytes as they are (plain data: it cannot fail and
    /// needs no buffer of its own). Always `SIZE` bytes when `Some`.
    #[inline]
    fn as_bytes(_v: &T) -> Option<&[u8]> {
        None
    }
}

/// Plain data as its bytes (bytemuck), validated on decoding.
pub(super) struct PlainWire;

impl<T: crate::Plain> Wire<T> for PlainWire {
    const SIZE: Option<usize> = Some(std::mem::size_of::<T>());
    #[inline]
    fn enc(v: &T, out: &mut Vec<u8>) -> Result<(), String> {
        out.extend_from_slice(bytemuck::bytes_of(v));
        Ok(())
    }
    #[inline]
    fn dec(b: &[u8]) -> Result<T, String> {
        bytemuck::checked::try_pod_read_unaligned::<T>(b).map_err(|e| e.to_string())
    }
    #[inline]
    fn as_bytes(v: &T) -> Option<&[u8]> {
        Some(bytemuck::bytes_of(v))
    }
}

/// Serde types, encoded with postcard.
#[cfg(feature = "serde")]
pub(super) struct SerdeWire;

/// Appends to a buffer it borrows (so a failed encoding leaves what was there before).
#[cfg(feature = "serde")]
pub(super) struct Append<'a>(&'a mut Vec<u8>);

#[cfg(feature = "serde")]
impl Extend<u8> for Append<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

#[cfg(feature = "serde")]
impl<T: serde::Serialize + serde::de::DeserializeOwned> Wire<T> for SerdeWire {
    const SIZE: Option<usize> = None;
    fn enc(v: &T, out: &mut Vec<u8>) -> Result<(), String> {
        postcard::to_extend(v, Append(out))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    fn dec(b: &[u8]) -> Result<T, String> {
        postcard::from_bytes(b).map_err(|e| e.to_string())
    }
}

/// The owner's wire-specific code, instantiated for the pool's wire when it is built.
pub(super) struct Codec<J, R> {
    /// The encoded size of every job, if fixed (plain data): job records then have a fixed
    /// stride, so the owner finds them by arithmetic instead of walking lengths.
    pub(super) job_size: Option<usize>,
    /// Appends the records of `jobs`, with ids from `first` on, to a buffer; the ids of jobs
    /// that could not be encoded (or are too large) go to `failed` with the reason, and have
    /// no record.
    pub(super) enc_jobs: fn(jobs: &[J], first: u64, buf: &mut Vec<u8>, failed: &mut Refused),
    /// `enc_jobs` for one job, into an empty buffer (`send_one`'s frame); `false` (and the
    /// buffer in any state) if the job cannot be encoded into a frame: the queue's path then
    /// reports why.
    pub(super) enc_one: fn(job: &J, id: u64, buf: &mut Vec<u8>) -> bool,
    /// Decodes a result payload.
    pub(super) dec_res: fn(&[u8]) -> Result<R, String>,
    /// `Inner::accept`'s fast path (see `accept_run`).
    pub(super) accept_run: fn(&mut Inner<J, R>, usize, &[u8], usize) -> usize,
}

impl<J, R> Clone for Codec<J, R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<J, R> Copy for Codec<J, R> {}

impl<J, R> Codec<J, R> {
    pub(super) fn of<W: Wire<J> + Wire<R>>() -> Self {
        Codec {
            job_size: <W as Wire<J>>::SIZE,
            enc_jobs: enc_jobs::<J, W>,
            enc_one: enc_one::<J, W>,
            dec_res: <W as Wire<R>>::dec,
            accept_run: accept_run::<J, R, W>,
        }
    }
}

/// Jobs that could not be encoded: their ids, and why.
pub(super) type Refused = Vec<(u64, String)>;

/// A worker's whole life, with the pool's `work` and wire (see `worker_main`).
pub(super) type RunWorker = dyn Fn(Lane<'_>, Option<u64>, bool) -> i32;

/// `Codec::enc_jobs` for wire `W`.
pub(super) fn enc_jobs<J, W: Wire<J>>(
    jobs: &[J],
    first: u64,
    buf: &mut Vec<u8>,
    failed: &mut Refused,
) {
    if let Some(size) = W::SIZE
        && size <= MAX_FRAME - JOB_HDR
    {
        // Fixed-size payloads (plain data): every header is known up front, and a record is
        // never too large; only the encoder's own failure is checked.
        let len = (size as u32).to_le_bytes();
        let stride = JOB_HDR + size;
        if jobs.first().and_then(W::as_bytes).is_some() {
            // The payloads are the jobs' own bytes: size the buffer once and fill it in place
            // (one length check for the lot instead of two appends per record).
            let start = buf.len();
            buf.resize(start + jobs.len() * stride, 0);
            let recs = buf
                .get_mut(start..)
                .unwrap_or_default()
                .chunks_exact_mut(stride);
            for ((id, job), rec) in (first..).zip(jobs).zip(recs) {
                let (hdr, payload) = rec.split_at_mut(JOB_HDR);
                hdr[..8].copy_from_slice(&id.to_le_bytes());
                hdr[8..].copy_from_slice(&len);
                if let Some(b) = W::as_bytes(job) {
                    payload.copy_from_slice(b);
                }
            }
            return;
        }
        buf.reserve(jobs.len() * stride);
        for (id, job) in (first..).zip(jobs) {
            let start = buf.len();
            let mut hdr = [0; JOB_HDR];
            hdr[..8].copy_from_slice(&id.to_le_bytes());
            hdr[8..].copy_from_slice(&len);
            buf.extend_from_slice(&hdr);
            match W::enc(job, buf) {
                Ok(()) if buf.len() - start == JOB_HDR + size => {}
                Ok(()) => {
                    buf.truncate(start);
                    failed.push((id, "the encoder wrote the wrong size".into()));
                }
                Err(reason) => {
                    buf.truncate(start);
                    failed.push((id, reason));
                }
            }
        }
        return;
    }
    for (id, job) in (first..).zip(jobs) {
        let start = buf.len();
        let mut hdr = [0; JOB_HDR];
        hdr[..8].copy_from_slice(&id.to_le_bytes());
        buf.extend_from_slice(&hdr);
        let encoded = W::enc(job, buf);
        let len = buf.len() - start - JOB_HDR;
        let err = match encoded {
            Err(reason) => Some(reason),
            Ok(()) if len > MAX_FRAME - JOB_HDR => Some(too_large(len)),
            Ok(()) => None,
        };
        if let Some(reason) = err {
            buf.truncate(start);
            failed.push((id, reason));
            continue;
        }
        // `len <= MAX_FRAME`, so it fits a u32.
        buf[start + 8..start + JOB_HDR].copy_from_slice(&(len as u32).to_le_bytes());
    }
}

/// `Codec::enc_one` for wire `W`.
pub(super) fn enc_one<J, W: Wire<J>>(job: &J, id: u64, buf: &mut Vec<u8>) -> bool {
    let mut hdr = [0; JOB_HDR];
    hdr[..8].copy_from_slice(&id.to_le_bytes());
    buf.extend_from_slice(&hdr);
    if W::enc(job, buf).is_err() {
        return false;
    }
    let len = buf.len() - JOB_HDR;
    if len > MAX_FRAME - JOB_HDR {
        return false;
    }
    // `len <= MAX_FRAME`, so it fits a u32.
    if let Some(l) = buf.get_mut(8..JOB_HDR) {
        l.copy_from_slice(&(len as u32).to_le_bytes());
    }
    true
}

#[cold]
pub(super) fn too_large(len: usize) -> String {
    format!(
        "the encoded job takes {len} bytes; a pool job takes at most {}",
        MAX_FRAME - JOB_HDR
    )
}

/// How job records lie in the owner's buffers (the queue, the frames in flight; all written
/// by the owner, so trusted): each with its length, or, for plain jobs, at a fixed stride, found
/// by arithmetic.
#[derive(Clone, Copy)]
pub(super) struct Records {
    /// `JOB_HDR` plus the size of every job, if fixed.
    pub(super) stride: Option<usize>,
}

impl Records {
    /// The id of the job record at `at` of `b`, and where the next starts.
    #[inline]
    pub(super) fn at(self, b: &[u8], at: usize) -> Option<(u64, usize)> {
        let hdr: &[u8; JOB_HDR] = b.get(at..at + JOB_HDR)?.try_into().ok()?;
        let [i0, i1, i2, i3, i4, i5, i6, i7, l0, l1, l2, l3] = *hdr;
        let id = u64::from_le_bytes([i0, i1, i2, i3, i4, i5, i6, i7]);
        let next = match self.stride {
            Some(s) => at + s,
            None => at + JOB_HDR + u32::from_le_bytes([l0, l1, l2, l3]) as usize,
        };
        Some((id, next))
    }

    /// Where up to `n` whole records from `at` end, in at most `room` bytes (but at least one
    /// record, if there is one and `one`), and how many that is.
    #[inline]
    pub(super) fn span(
        self,
        b: &[u8],
        at: usize,
        n: usize,
        room: usize,
        one: bool,
    ) -> (usize, usize) {
        if let Some(s) = self.stride {
            let have = b.len().saturating_sub(at) / s;
            let fit = if one { (room / s).max(1) } else { room / s };
            let count = n.min(have).min(fit);
            return (at + count * s, count);
        }
        let (mut end, mut count) = (at, 0);
        while count < n {
            let Some((_, next)) = self.at(b, end) else {
                break;
            };
            if (count > 0 || !one) && next - at > room {
                break;
            }
            end = next;
            count += 1;
        }
        (end, count)
    }
}

/// The result record at `at` of a private copy of a result frame: id, kind, payload; `None`
/// if it is cut short.
#[inline]
pub(super) fn result_record(frame: &[u8], at: usize) -> Option<(u64, u8, &[u8])> {
    let hdr: &[u8; RES_HDR] = frame.get(at..at + RES_HDR)?.try_into().ok()?;
    let [i0, i1, i2, i3, i4, i5, i6, i7, kind, l0, l1, l2, l3] = *hdr;
    let id = u64::from_le_bytes([i0, i1, i2, i3, i4, i5, i6, i7]);
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    let payload = frame.get(at + RES_HDR..at.checked_add(RES_HDR + len)?)?;
    Some((id, kind, payload))
}

/// How a job failed, from a result record of kind `KIND_PANICKED` or `KIND_BAD_JOB`.
#[cold]
pub(super) fn failure(kind: u8, payload: &[u8]) -> JobError {
    let text = String::from_utf8_lossy(payload).into_owned();
    if kind == KIND_PANICKED {
        JobError::Panicked { message: text }
    } else {
        JobError::Codec { reason: text }
    }
}
