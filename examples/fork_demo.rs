use forkipc::{AnonRegion, ShmMutex, channel, fork};
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let region = AnonRegion::new(4096)?;
    let counter = region.alloc(ShmMutex::new(0u64))?;
    let (tx, rx) = channel::<u64>(64)?;
    let mut child = fork(tx, |tx| {
        for i in 0..100_000u64 {
            *counter.lock().unwrap() += 1;
            tx.send(i).unwrap();
        }
        0
    })?;
    let mut n = 0u64;
    let mut sum = 0u64;
    for v in rx.iter() { assert_eq!(v, n); n += 1; sum += v; *counter.lock().unwrap() += 1; }
    println!("received {n} sum {sum} counter {}", *counter.lock().unwrap());
    println!("child: {:?} reason {:?}", child.wait()?, rx.disconnect_reason());
    Ok(())
}
