//! The per-thread pin cache behind `Handle::get` (verdant's `pin_cache.rs`),
//! against the real fixture libraries:
//!
//! - `status()`'s `in_flight` of a retired version is the number of pins
//!   held on it, however many of them one thread's cache counts, and
//!   whichever thread drops them;
//! - after every one of many reloads, every thread's next `get()` serves the
//!   new generation, while the retired ones detach once their pins are gone;
//! - a thread that cached a version and exited keeps nothing alive, and its
//!   cell serves the next thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier};

use fixture_api::{Probe, Shared};
use verdant::{DetachState, Outcome, Pinned, Verdant};
use verdant_tests::{attached, poll_until, Artifact};

/// `(in flight, detach)` of every retired version of the probe.
fn retired(verdant: &Verdant) -> Vec<(usize, DetachState)> {
    let status = verdant.status();
    let loadable = status.loadables.iter().find(|l| l.name == "probe").expect("registered");
    loadable.retired.iter().map(|r| (r.in_flight, r.detach.clone())).collect()
}

/// How many detach records `instance` has.
fn detaches_of(shared: &Shared, instance: u64) -> usize {
    shared.detached().iter().filter(|(i, _)| *i == instance).count()
}

fn reload_to(verdant: &Verdant, artifact: &Artifact, fixture: &str) -> u64 {
    artifact.install(fixture);
    let report = verdant.reload_blocking(None).unwrap_or_else(|e| panic!("reload to {fixture}: {e}"));
    assert!(matches!(report.outcome("probe"), Some(Outcome::Swapped { .. })), "{report}");
    report.generation
}

/// Pins on two threads (three on a helper, two on the main thread), one of
/// the helper's moved to the main thread: `in_flight` counts each pin once,
/// goes down by one per pin dropped on whichever thread, and the version
/// detaches after the last.
#[test]
fn in_flight_counts_every_cached_pin_on_every_thread() {
    let artifact = Artifact::new("good-v1");
    let (verdant, shared, probe) = attached(&artifact);

    let mine: Vec<Pinned<dyn Probe>> = (0..2).map(|_| probe.get().expect("get")).collect();
    let (to_main, from_helper) = mpsc::channel::<Pinned<dyn Probe>>();
    let (drop_one, drop_wait) = mpsc::channel::<()>();
    let helper = {
        let probe = probe.clone();
        std::thread::spawn(move || {
            let mut pins: Vec<_> = (0..3).map(|_| probe.get().expect("get")).collect();
            to_main.send(probe.get().expect("get")).expect("main thread");
            assert!(pins.iter().all(|pin| pin.generation() == 1));
            // Drop one per message; the thread stays alive until done.
            while drop_wait.recv().is_ok() {
                pins.pop();
            }
        })
    };
    let moved = from_helper.recv().expect("the helper's pin");
    assert_eq!(moved.generation(), 1);

    reload_to(&verdant, &artifact, "good-v2");
    assert_eq!(probe.get().expect("get").generation(), 2);
    assert_eq!(retired(&verdant), [(6, DetachState::Pending)], "{}", verdant.status());

    drop(moved); // the helper's cache, dropped on the main thread
    assert_eq!(retired(&verdant), [(5, DetachState::Pending)]);
    for expected in [4, 3] {
        drop_one.send(()).expect("helper");
        poll_until(&verdant, "the helper dropped a pin", || retired(&verdant)[0].0 == expected);
    }
    let mut mine = mine;
    mine.pop();
    assert_eq!(retired(&verdant), [(2, DetachState::Pending)]);
    drop(mine);
    assert_eq!(retired(&verdant), [(1, DetachState::Pending)]);
    assert_eq!(detaches_of(&shared, 1), 0, "detached while pinned");
    drop_one.send(()).expect("helper");
    poll_until(&verdant, "v1 detached after its last pin", || detaches_of(&shared, 1) == 1);
    assert_eq!(retired(&verdant), [(0, DetachState::Detached)]);

    drop(drop_one);
    helper.join().expect("helper thread");
}

/// Threads call all the time across many reloads, some holding a pin across
/// each (so their cells are busy when it comes), some handing pins to
/// another thread: after each reload returned, every `get()` on every thread
/// serves that generation or a newer one, and once the threads stop, every
/// retired version has detached with nothing counted in flight.
#[test]
fn every_get_after_each_of_many_reloads_serves_the_new_generation() {
    const THREADS: usize = 3;
    const RELOADS: u64 = 30;
    const CYCLE: [&str; 3] = ["good-v1", "good-v2", "good-v3"];
    let artifact = Artifact::new("good-v1");
    let (verdant, shared, probe) = attached(&artifact);

    let returned = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(THREADS + 1));
    let (hand_over, handed) = mpsc::channel::<Pinned<dyn Probe>>();
    // Drops the pins the callers hand over, on a thread of its own.
    let dropper = std::thread::spawn(move || handed.iter().count());
    let callers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (probe, returned, stop, barrier) = (probe.clone(), returned.clone(), stop.clone(), barrier.clone());
            let hand_over = hand_over.clone();
            std::thread::spawn(move || {
                let (mut stale, mut calls) = (Vec::new(), 0u64);
                let mut held = None;
                barrier.wait();
                while !stop.load(Ordering::Relaxed) {
                    calls += 1;
                    let published = returned.load(Ordering::Acquire);
                    let pinned = probe.get().expect("get");
                    if pinned.generation() < published {
                        stale.push((published, pinned.generation()));
                    }
                    if calls.is_multiple_of(500) {
                        match t {
                            0 => held = Some(pinned),
                            1 => hand_over.send(pinned).expect("dropper"),
                            _ => {}
                        }
                    }
                }
                drop(held);
                (stale, calls)
            })
        })
        .collect();
    drop(hand_over);

    barrier.wait();
    let mut generation = 1;
    for k in 1..=RELOADS {
        std::thread::sleep(std::time::Duration::from_millis(3));
        generation = reload_to(&verdant, &artifact, CYCLE[(k % 3) as usize]);
        returned.store(generation, Ordering::Release);
    }
    stop.store(true, Ordering::Relaxed);
    for (t, caller) in callers.into_iter().enumerate() {
        let (stale, calls) = caller.join().expect("caller thread");
        assert!(stale.is_empty(), "thread {t}: {} of {calls} calls got an older generation: {stale:?}", stale.len());
    }
    dropper.join().expect("dropper thread");
    // The callers exited; every retired version detaches, counted idle.
    poll_until(&verdant, "every retired version detached", || {
        (1..generation).all(|instance| detaches_of(&shared, instance) == 1)
    });
    assert!(retired(&verdant).iter().all(|(in_flight, _)| *in_flight == 0), "{}", verdant.status());
}

/// A thread that cached a version and exited keeps it from nothing: the
/// retired version detaches at once, and the next thread adopts the cell.
#[test]
fn a_thread_that_exited_keeps_no_version_and_its_cell_serves_the_next() {
    let artifact = Artifact::new("good-v1");
    let (verdant, shared, probe) = attached(&artifact);
    for expected in [1, 1] {
        let probe = probe.clone();
        let generation = std::thread::spawn(move || probe.get().expect("get").generation()).join().expect("thread");
        assert_eq!(generation, expected);
    }
    // A thread that exits holding a pin that lives on (handed out).
    let (to_main, from_thread) = mpsc::channel();
    {
        let probe = probe.clone();
        std::thread::spawn(move || to_main.send(probe.get().expect("get")).expect("main")).join().expect("thread");
    }
    let orphan = from_thread.recv().expect("pin");
    reload_to(&verdant, &artifact, "good-v2");
    assert_eq!(retired(&verdant), [(1, DetachState::Pending)]);
    drop(orphan);
    poll_until(&verdant, "v1 detached", || detaches_of(&shared, 1) == 1);
    assert_eq!(retired(&verdant), [(0, DetachState::Detached)]);
    let probe2 = probe.clone();
    let generation = std::thread::spawn(move || probe2.get().expect("get").generation()).join().expect("thread");
    assert_eq!(generation, 2);
}
