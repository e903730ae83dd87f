//! The per-thread pin cache behind `Handle::get` (verdant's `pin_cache.rs`),
//! against the real fixture libraries:
//!
//! - `status()`'s `in_flight` of a retired version is the number of pins
//!   held on it, however many of them one thread's cache counts, and
//!   whichever thread drops them;
//! - after every one of many reloads, every thread's next `get()` serves the
//!   new generation, while the retired ones detach once their pins are gone;
//! - a thread that cached a version and exited keeps nothing alive, and its
//!   cell serves the next thread;
//! - the cells of a dropped registry's slots serve later slots: the cells
//!   ever allocated stop growing however many registries come and go, and a
//!   version cached by a thread that never calls again still detaches when
//!   its slot goes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier};

use fixture_api::{Probe, Shared};
use verdant::{DetachState, Handle, Outcome, Pinned, Verdant};
use verdant_tests::{attached, eventually, poll_until, Artifact};

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

/// What a long-lived worker thread is asked to do with a handle.
enum Work {
    /// Call a few times, keep one pin and report its generation.
    Pin(Handle<dyn Probe>),
    /// Call a few times and send one pin back (dropped by the main thread).
    Hand(Handle<dyn Probe>),
    /// Drop the pin kept.
    Unpin,
}

/// A worker thread that lives across every registry of a test: its
/// thread-local entries of dropped slots must never make it use or give up a
/// cell rebound since.
fn worker(work: mpsc::Receiver<Work>, done: mpsc::Sender<Option<Pinned<dyn Probe>>>) {
    let mut kept = None;
    for work in work {
        match work {
            Work::Pin(probe) => {
                (0..3).for_each(|_| assert_eq!(probe.get().expect("get").version(), 1));
                kept = Some(probe.get().expect("get"));
                done.send(None).expect("main");
            }
            Work::Hand(probe) => {
                (0..3).for_each(|_| assert_eq!(probe.get().expect("get").version(), 1));
                done.send(Some(probe.get().expect("get"))).expect("main");
            }
            Work::Unpin => {
                kept = None;
                done.send(None).expect("main");
            }
        }
    }
    drop(kept);
}

/// Many registries, one after the other, each called from the main thread,
/// two long-lived workers (one keeping a pin past the registry's drop, one
/// handing a pin to the main thread, dropped there after the registry) and
/// a thread of its own: the cells ever allocated stop growing (each
/// registry's are recycled for the next), and every version detaches.
#[test]
fn cells_of_dropped_slots_serve_later_slots() {
    const REGISTRIES: u64 = 50;
    let artifact = Artifact::new("good-v1");
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (to_worker, work) = mpsc::channel();
            let (done, from_worker) = mpsc::channel();
            (to_worker, from_worker, std::thread::spawn(move || worker(work, done)))
        })
        .collect();
    let mut allocated = Vec::new();
    for round in 0..REGISTRIES {
        let (verdant, shared, probe) = attached(&artifact);
        workers[0].0.send(Work::Pin(probe.clone())).expect("worker");
        assert!(workers[0].1.recv().expect("worker").is_none());
        workers[1].0.send(Work::Hand(probe.clone())).expect("worker");
        let handed = workers[1].1.recv().expect("worker").expect("a pin");
        let own = probe.clone();
        std::thread::spawn(move || assert_eq!(own.get().expect("get").version(), 1)).join().expect("thread");
        drop(probe);
        drop(verdant);
        // Both pins outlive their slot; dropped on the owner and on another
        // thread.
        assert_eq!(handed.version(), 1);
        drop(handed);
        workers[0].0.send(Work::Unpin).expect("worker");
        assert!(workers[0].1.recv().expect("worker").is_none());
        poll_until_detached(&shared, round);
        allocated.push(verdant::__private::pin_cells_allocated());
    }
    for (to_worker, _, thread) in workers {
        drop(to_worker);
        thread.join().expect("worker");
    }
    // Four threads call each registry: four cells would do; a registry
    // dropped while a drop elsewhere still runs may take a few more, once.
    let last = *allocated.last().expect("rounds");
    assert!(last <= 8, "{last} cells for {REGISTRIES} registries of 4 threads each: {allocated:?}");
    assert_eq!(allocated[9], last, "still growing after 10 registries: {allocated:?}");
}

/// Polls until the one instance of a registry's probe detached.
fn poll_until_detached(shared: &Shared, round: u64) {
    assert!(eventually(|| detaches_of(shared, 1) == 1), "round {round}: v1 never detached: {:?}", shared.detached());
}

/// A thread that cached a version (one call, pin dropped) and one that still
/// holds a pin when the registry is dropped, neither calling again: the
/// version detaches once the pin is gone, and their cells are recycled.
#[test]
fn a_version_cached_by_a_dropped_slot_detaches_without_another_call() {
    let artifact = Artifact::new("good-v1");
    let (verdant, shared, probe) = attached(&artifact);
    let (to_caller, wait) = mpsc::channel::<()>();
    let (called, from_caller) = mpsc::channel::<()>();
    // Calls once, pins once more, then waits, alive, without calling again.
    let caller = {
        let probe = probe.clone();
        std::thread::spawn(move || {
            assert_eq!(probe.get().expect("get").version(), 1);
            let pinned = probe.get().expect("get");
            drop(probe);
            called.send(()).expect("main");
            wait.recv().expect("main");
            drop(pinned);
            called.send(()).expect("main");
            // Alive, cell still listed, until the main thread is done.
            let _ = wait.recv();
        })
    };
    from_caller.recv().expect("caller");
    let before = verdant::__private::pin_cells_allocated();
    drop(probe);
    drop(verdant);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(detaches_of(&shared, 1), 0, "detached while pinned");
    to_caller.send(()).expect("caller");
    from_caller.recv().expect("caller");
    assert!(eventually(|| detaches_of(&shared, 1) == 1), "v1 never detached: {:?}", shared.detached());
    // Both cells (the caller's and the main thread's) are free: a new
    // registry called from both threads' successors takes them.
    let (verdant, _shared, probe) = attached(&artifact);
    std::thread::spawn(move || assert_eq!(probe.get().expect("get").version(), 1)).join().expect("thread");
    assert_eq!(verdant::__private::pin_cells_allocated(), before, "the dropped slot's cells were not reused");
    drop(verdant);
    drop(to_caller);
    caller.join().expect("caller");
}
