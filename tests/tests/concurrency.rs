//! Concurrency, coalescing and lifetimes, against the real fixture libraries.
//!
//! - a call blocked inside the library across a reload keeps its version
//!   alive, the reload does not wait for it (make-before-break), and the old
//!   instance is detached exactly once after the call returns;
//! - reload triggers that arrive while a reload runs coalesce into one
//!   follow-up transaction that loads the newest file;
//! - many threads calling through handles while the main thread reloads
//!   never fail, never see a version go backwards, and every instance ever
//!   attached is detached exactly once after `revoke()`.
//!
//! No test sleeps to synchronise: gates and barriers order the threads;
//! bounded polling loops only wait for events that happen on verdant's own
//! background threads (detach on the retirement thread).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use fixture_api::{Gate, Probe, Shared};
use verdant::{DetachState, Handle, HandleError, Outcome};
use verdant_tests::{attached, poll_until, reload_held_in_attach, Artifact};

/// How many detach records `instance` has.
fn detaches_of(shared: &Shared, instance: u64) -> usize {
    shared.detached().iter().filter(|(i, _)| *i == instance).count()
}

#[test]
fn a_call_blocked_in_the_library_survives_a_reload_and_detaches_after_it() {
    let artifact = Artifact::new("good-v1");
    let (verdant, shared, probe) = attached(&artifact);
    let v1_instance = probe.get().unwrap().instance();

    // A call pins v1 and blocks inside the library.
    let gate = Arc::new(Gate::closed());
    let caller = {
        let probe = probe.clone();
        let gate = gate.clone();
        std::thread::spawn(move || {
            let pinned = probe.get().expect("get before the reload");
            let answer = pinned.version_after(&gate);
            (answer, pinned.generation(), pinned.instance())
        })
    };
    gate.until_waiting(1);

    // The reload runs while the call is blocked. It must not wait for the
    // call: run it on a thread so that a reload which does wait fails this
    // test instead of hanging it.
    artifact.install("good-v2");
    let (done, reloaded) = mpsc::channel();
    let reloader = {
        let verdant = verdant.clone();
        std::thread::spawn(move || done.send(verdant.reload_blocking(None)).unwrap())
    };
    let mut result = None;
    for _ in 0..400 {
        match reloaded.recv_timeout(Duration::from_millis(25)) {
            Ok(r) => {
                result = Some(r);
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the reload thread died"),
        }
    }
    let Some(result) = result else {
        gate.open(); // let the test end
        panic!("reload_blocking waited for the call pinned to the old version\n{}", verdant.status());
    };
    reloader.join().unwrap();
    let report = result.expect("reload while a call is blocked on the old version");
    assert_eq!(report.generation, 2, "{report}");
    assert!(matches!(report.outcome("probe"), Some(Outcome::Swapped { old: Some(_), .. })), "{report}");

    // New calls get v2 at once.
    let new = probe.get().unwrap();
    assert_eq!((new.version(), new.generation()), (2, 2));
    assert_ne!(new.instance(), v1_instance);
    drop(new);

    // The old instance is still alive, pinned once.
    assert_eq!(detaches_of(&shared, v1_instance), 0, "v1 detached while a call was in it: {:?}", shared.detached());
    assert!(shared.detached().iter().all(|(_, v)| *v != 1), "{:?}", shared.detached());
    let status = verdant.status();
    let retired = &status.loadables[0].retired;
    assert_eq!(retired.len(), 1, "{status}");
    assert_eq!(retired[0].version.generation, 1, "{status}");
    assert_eq!(retired[0].in_flight, 1, "{status}");
    assert_eq!(retired[0].detach, DetachState::Pending, "{status}");

    // The call finishes on the version it started on.
    gate.open();
    let (answer, generation, instance) = caller.join().expect("the blocked call");
    assert_eq!((answer, generation, instance), (1, 1, v1_instance));

    // Then v1 is detached, exactly once, and nothing pins it.
    poll_until(&verdant, "v1 detached after its last call returned", || {
        let status = verdant.status();
        detaches_of(&shared, v1_instance) > 0
            && status.loadables[0].retired[0].in_flight == 0
            && status.loadables[0].retired[0].detach == DetachState::Detached
    });
    assert_eq!(shared.detached(), vec![(v1_instance, 1)]);
    assert_eq!(probe.get().unwrap().version(), 2);
    assert_eq!(shared.attach_count(), 2);
}

#[test]
fn revoke_does_not_wait_for_a_pinned_call_which_finishes_on_its_version() {
    let artifact = Artifact::new("good-v1");
    let (verdant, shared, probe) = attached(&artifact);

    let gate = Arc::new(Gate::closed());
    let caller = {
        let probe = probe.clone();
        let gate = gate.clone();
        std::thread::spawn(move || probe.get().expect("get before revoke").version_after(&gate))
    };
    gate.until_waiting(1);

    // revoke() returns while the call is still inside the library.
    let (done, revoked) = mpsc::channel();
    let revoker = {
        let verdant = verdant.clone();
        std::thread::spawn(move || {
            verdant.revoke();
            done.send(()).unwrap();
        })
    };
    let returned = (0..400).any(|_| revoked.recv_timeout(Duration::from_millis(25)).is_ok());
    if !returned {
        gate.open();
        panic!("revoke() waited for a call pinned to the serving version\n{}", verdant.status());
    }
    revoker.join().unwrap();

    assert!(matches!(probe.get(), Err(HandleError::Revoked { .. })));
    assert!(matches!(verdant.reload_blocking(None), Err(verdant::Error::Revoked)));
    assert_eq!(shared.detached(), vec![], "detached while a call was in it");
    let status = verdant.status();
    assert_eq!(status.loadables[0].retired.len(), 1, "{status}");
    assert_eq!(status.loadables[0].retired[0].in_flight, 1, "{status}");

    gate.open();
    assert_eq!(caller.join().expect("the pinned call"), 1);
    poll_until(&verdant, "v1 detached after its last call", || {
        verdant.status().loadables[0].retired[0].detach == DetachState::Detached
    });
    assert_eq!(shared.detached(), vec![(1, 1)]);
    assert_eq!(verdant.status().loadables[0].retired[0].in_flight, 0);
}

#[test]
fn revoke_during_an_attach_swaps_nothing_and_detaches_both_instances_once() {
    let artifact = Artifact::new("good-v1");
    let (verdant, shared, probe) = attached(&artifact);

    let reload = reload_held_in_attach(&verdant, &shared, &artifact, "good-v2");
    let revoker = {
        let verdant = verdant.clone();
        std::thread::spawn(move || verdant.revoke())
    };
    // revoke() marks the registry first, then waits for the transaction.
    poll_until(&verdant, "revoke() started", || verdant.status().revoked);
    shared.attach_gate.open();

    match reload.join().unwrap() {
        Err(verdant::Error::Revoked) => {}
        other => panic!("a reload overtaken by revoke() must fail with Revoked: {other:?}"),
    }
    revoker.join().unwrap();
    assert!(matches!(probe.get(), Err(HandleError::Revoked { .. })));
    assert_eq!(shared.attach_count(), 2);
    poll_until(&verdant, "v1 and the never-served v2 detached", || shared.detached().len() >= 2);
    let mut detached = shared.detached();
    detached.sort();
    assert_eq!(detached, vec![(1, 1), (2, 2)]);
    let status = verdant.status();
    assert!(status.loadables[0].current.is_none(), "{status}");
    assert_eq!(status.loadables[0].retired.len(), 1, "only v1 ever served\n{status}");
}

#[test]
fn triggers_during_a_reload_coalesce_into_one_follow_up_that_loads_the_newest_file() {
    const TRIGGERS: usize = 100;
    let artifact = Artifact::new("good-v1");
    let (verdant, shared, probe) = attached(&artifact);
    let attaches_before = shared.attach_count();

    // Reload 1 (to v2) blocks inside the v2 attach hook.
    let first = reload_held_in_attach(&verdant, &shared, &artifact, "good-v2");

    // A newer build lands, and 100 triggers are queued while reload 1 runs.
    artifact.install("good-v3");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let results = runtime.block_on(async {
        let mut calls: Vec<_> = (0..TRIGGERS).map(|_| Box::pin(verdant.reload(None))).collect();
        let mut noop = Context::from_waker(Waker::noop());
        for (i, call) in calls.iter_mut().enumerate() {
            // The first poll submits the trigger; it cannot be answered yet,
            // because the worker is inside reload 1.
            assert!(call.as_mut().poll(&mut noop).is_pending(), "trigger {i} was answered while reload 1 ran");
        }
        shared.attach_gate.open();
        let mut results = Vec::with_capacity(TRIGGERS);
        for call in calls {
            results.push(call.await);
        }
        results
    });

    let first = first.join().unwrap().expect("reload 1");
    assert_eq!((first.generation, first.coalesced), (2, 1), "{first}");
    assert!(matches!(first.outcome("probe"), Some(Outcome::Swapped { new, .. }) if new.generation == 2), "{first}");

    let mut generations = BTreeSet::new();
    for (i, result) in results.iter().enumerate() {
        let report = result.as_ref().unwrap_or_else(|e| panic!("trigger {i} failed: {e}"));
        generations.insert(report.generation);
        assert_eq!(report.coalesced, TRIGGERS, "trigger {i}: {report}");
        assert!(
            matches!(report.outcome("probe"), Some(Outcome::Swapped { new, .. }) if new.generation == report.generation),
            "trigger {i}: {report}"
        );
    }
    assert_eq!(generations, BTreeSet::from([3]), "the 100 triggers must share one follow-up transaction");

    let status = verdant.status();
    assert!(
        status.generation - 1 <= 2,
        "{} transactions after the attach for 101 triggers\n{status}",
        status.generation - 1
    );
    assert_eq!(status.generation, 3, "{status}");
    let serving = probe.get().unwrap();
    assert_eq!((serving.version(), serving.generation()), (3, 3), "the follow-up must load the newest file");
    drop(serving);
    assert_eq!(shared.attach_count() - attaches_before, 2, "attach hooks run for 101 triggers");

    // v1 and v2 are detached once each; v3 serves.
    poll_until(&verdant, "v1 and v2 detached", || shared.detached().len() >= 2);
    assert_eq!(shared.detached(), vec![(1, 1), (2, 2)]);
}

/// What one calling thread of the stress test saw.
#[derive(Debug, Default)]
struct CallerLog {
    calls: u64,
    failures: Vec<String>,
    generations_seen: BTreeSet<u64>,
}

/// Sets the flag when dropped, so that a failing test stops its threads.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The fixture version that generation `g` serves when reload `k` installs
/// `CYCLE[k % 3]` (generation 1 is the attach of good-v1).
fn version_of_generation(generation: u64) -> u32 {
    ((generation - 1) % 3) as u32 + 1
}

#[test]
fn calls_from_many_threads_never_fail_across_reloads_and_every_instance_detaches_once() {
    const THREADS: usize = 8;
    const RELOADS: u64 = 30;
    /// A safety bound; the threads stop on the flag long before (about
    /// 10 million calls each here), also when the main thread panics.
    const MAX_CALLS_PER_THREAD: u64 = 1_000_000_000;
    const CYCLE: [&str; 3] = ["good-v1", "good-v2", "good-v3"];

    let started = Instant::now();
    let artifact = Artifact::new("good-v1");
    let (verdant, shared, probe) = attached(&artifact);

    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = StopOnDrop(stop.clone());
    let barrier = Arc::new(Barrier::new(THREADS + 1));
    // The newest generation each thread has called.
    let latest: Arc<Vec<AtomicU64>> = Arc::new((0..THREADS).map(|_| AtomicU64::new(0)).collect());
    let callers: Vec<_> = (0..THREADS)
        .map(|t| {
            let probe = probe.clone();
            let (stop, barrier, latest) = (stop.clone(), barrier.clone(), latest.clone());
            std::thread::spawn(move || {
                let mut log = CallerLog::default();
                let mut last_generation = 0;
                barrier.wait();
                while !stop.load(Ordering::Relaxed) && log.calls < MAX_CALLS_PER_THREAD {
                    log.calls += 1;
                    let pinned = match probe.get() {
                        Ok(pinned) => pinned,
                        Err(e) => {
                            log.failures.push(format!("call {}: get: {e}", log.calls));
                            continue;
                        }
                    };
                    let generation = pinned.generation();
                    let version = pinned.version();
                    if generation < last_generation {
                        log.failures
                            .push(format!("call {}: generation {generation} after {last_generation}", log.calls));
                    }
                    if version != version_of_generation(generation) {
                        log.failures.push(format!("call {}: generation {generation} answered v{version}", log.calls));
                    }
                    if log.calls % 64 == 0 {
                        // One pin, several calls: all on the same instance.
                        let instance = pinned.instance();
                        if instance != generation || pinned.version() != version || pinned.instance() != instance {
                            log.failures.push(format!(
                                "call {}: generation {generation} (v{version}) answered instance {instance}",
                                log.calls
                            ));
                        }
                    }
                    if generation != last_generation {
                        last_generation = generation;
                        log.generations_seen.insert(generation);
                        latest[t].store(generation, Ordering::Release);
                    }
                }
                (log, probe)
            })
        })
        .collect();

    barrier.wait();
    let reloads_started = Instant::now();
    for k in 1..=RELOADS {
        artifact.install(CYCLE[(k % 3) as usize]);
        let report = verdant.reload_blocking(None).unwrap_or_else(|e| panic!("reload {k}: {e}"));
        let generation = k + 1;
        assert_eq!(report.generation, generation, "{report}");
        assert!(
            matches!(report.outcome("probe"), Some(Outcome::Swapped { new, .. }) if new.generation == generation),
            "reload {k} must swap (the file changed): {report}"
        );
        // Every thread makes calls on every generation before the next
        // reload, so calls and reloads really overlap.
        for (t, seen) in latest.iter().enumerate() {
            for _ in 0..10_000 {
                if seen.load(Ordering::Acquire) >= generation {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(seen.load(Ordering::Acquire) >= generation, "thread {t} never called generation {generation}");
        }
    }
    let reloads_took = reloads_started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (logs, handles): (Vec<CallerLog>, Vec<Handle<dyn Probe>>) =
        callers.into_iter().map(|c| c.join().expect("caller thread")).unzip();

    let total_calls: u64 = logs.iter().map(|l| l.calls).sum();
    let failures: Vec<&String> = logs.iter().flat_map(|l| &l.failures).collect();
    assert!(
        failures.is_empty(),
        "{} of {total_calls} calls failed; first: {:?}",
        failures.len(),
        &failures[..failures.len().min(20)]
    );
    for (t, log) in logs.iter().enumerate() {
        assert_eq!(log.generations_seen.len() as u64, RELOADS + 1, "thread {t} saw {:?}", log.generations_seen);
        assert!(log.calls < MAX_CALLS_PER_THREAD, "thread {t} hit the safety bound before the reloads ended");
    }

    // Revoke: every instance ever attached is detached exactly once.
    verdant.revoke();
    let attached_total = shared.attach_count();
    assert_eq!(attached_total, RELOADS + 1);
    poll_until(&verdant, "every instance detached after revoke", || {
        shared.detached().len() as u64 >= attached_total
            && verdant.status().loadables[0].retired.iter().all(|r| r.detach != DetachState::Pending)
    });
    let detached = shared.detached();
    assert_eq!(detached.len() as u64, attached_total, "{detached:?}");
    let instances: BTreeSet<u64> = detached.iter().map(|(i, _)| *i).collect();
    assert_eq!(instances.len(), detached.len(), "an instance was detached twice: {detached:?}");
    let expected: BTreeSet<(u64, u32)> = (1..=attached_total).map(|g| (g, version_of_generation(g))).collect();
    assert_eq!(detached.iter().copied().collect::<BTreeSet<_>>(), expected);

    for handle in handles.iter().chain([&probe, &verdant.handle::<dyn Probe>("probe").unwrap()]) {
        match handle.get() {
            Err(HandleError::Revoked { name }) => assert_eq!(name, "probe"),
            other => panic!("get() after revoke: {other:?}"),
        }
    }
    let status = verdant.status();
    assert!(status.revoked, "{status}");
    assert!(status.loadables[0].current.is_none(), "{status}");
    // status() may forget old finished versions; those it lists are done.
    let listed = status.loadables[0].retired.len() as u64;
    assert!(listed >= 1 && listed <= attached_total, "{status}");
    for retired in &status.loadables[0].retired {
        assert_eq!(retired.in_flight, 0, "{status}");
        assert_eq!(retired.detach, DetachState::Detached, "{status}");
    }

    println!(
        "stress: {THREADS} threads, {total_calls} calls ({:?} per thread), {RELOADS} reloads in {reloads_took:.2?} \
         ({:.1?} per reload), test total {:.2?}",
        logs.iter().map(|l| l.calls).collect::<Vec<_>>(),
        reloads_took / RELOADS as u32,
        started.elapsed()
    );
}

/// Once `reload()` returned, no `get()` may serve the old version on any
/// thread (a guard against any caching of the serving version, per thread or
/// otherwise): threads that call all the time, some of them holding a pin
/// across each reload, read the
/// generation the main thread published after each reload returned, then
/// call `get()`, which must serve that generation or a newer one.
#[test]
fn a_get_after_reload_returned_never_serves_the_old_version_on_any_thread() {
    const THREADS: usize = 4;
    const RELOADS: u64 = 20;
    const CYCLE: [&str; 3] = ["good-v1", "good-v2", "good-v3"];
    let artifact = Artifact::new("good-v1");
    let (verdant, _shared, probe) = attached(&artifact);

    // The generation of the last reload that returned.
    let returned = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = StopOnDrop(stop.clone());
    let barrier = Arc::new(Barrier::new(THREADS + 1));
    let callers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (probe, returned, stop, barrier) = (probe.clone(), returned.clone(), stop.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut stale = Vec::new();
                let mut calls = 0u64;
                // Odd threads keep one pin alive across whatever reloads
                // happen while they make 1000 calls.
                let mut held = None;
                barrier.wait();
                while !stop.load(Ordering::Relaxed) && calls < 1_000_000_000 {
                    calls += 1;
                    let published = returned.load(Ordering::Acquire);
                    let pinned = probe.get().expect("get");
                    if pinned.generation() < published {
                        stale.push((published, pinned.generation()));
                    }
                    if pinned.version() != version_of_generation(pinned.generation()) {
                        stale.push((published, u64::MAX));
                    }
                    if t % 2 == 1 && calls.is_multiple_of(1000) {
                        held = Some(pinned);
                    }
                }
                drop(held);
                (stale, calls)
            })
        })
        .collect();

    barrier.wait();
    for k in 1..=RELOADS {
        // Let every thread call for a while on the serving version.
        std::thread::sleep(Duration::from_millis(5));
        artifact.install(CYCLE[(k % 3) as usize]);
        let report = verdant.reload_blocking(None).unwrap_or_else(|e| panic!("reload {k}: {e}"));
        assert!(matches!(report.outcome("probe"), Some(Outcome::Swapped { .. })), "{report}");
        returned.store(report.generation, Ordering::Release);
    }
    std::thread::sleep(Duration::from_millis(5));
    stop.store(true, Ordering::Relaxed);
    for (t, caller) in callers.into_iter().enumerate() {
        let (stale, calls) = caller.join().expect("caller thread");
        assert!(
            stale.is_empty(),
            "thread {t}: {} of {calls} calls after a reload got an older generation: {:?}",
            stale.len(),
            &stale[..stale.len().min(10)]
        );
        assert!(calls > RELOADS, "thread {t} made {calls} calls");
    }
}

/// Waits until instance `instance` (the generation that attached it) is
/// detached, panicking with the registry's status if it never is.
fn until_detached(verdant: &verdant::Verdant, shared: &Shared, instance: u64, what: &str) {
    poll_until(verdant, what, || detaches_of(shared, instance) == 1);
}

/// A thread that called `get()` and then went idle must not keep the
/// version it cached from detaching after a reload retires it; nor may a
/// thread whose pin spanned the reload once that pin is dropped, on its own
/// thread or on another one (a `Pinned` moved across an `.await`).
#[test]
fn an_idle_threads_cache_never_keeps_a_retired_version_from_detaching() {
    let artifact = Artifact::new("good-v1");
    let (verdant, shared, probe) = attached(&artifact);

    // Three threads cache generation 1 and stay alive: one idle with
    // nothing pinned, one holding a pin that it drops itself after the
    // reload, one that hands its pin to the main thread.
    let (idle_done, idle_wait) = mpsc::channel::<()>();
    let (holder_drop, holder_wait) = mpsc::channel::<()>();
    let (ready, cached) = mpsc::channel::<Option<verdant::Pinned<dyn Probe>>>();
    let idle = {
        let (probe, ready) = (probe.clone(), ready.clone());
        std::thread::spawn(move || {
            assert_eq!(probe.get().expect("get").generation(), 1);
            ready.send(None).unwrap();
            idle_wait.recv().ok(); // idle until the test ends
        })
    };
    let holder = {
        let (probe, ready) = (probe.clone(), ready.clone());
        std::thread::spawn(move || {
            let pinned = probe.get().expect("get");
            assert_eq!(pinned.generation(), 1);
            ready.send(None).unwrap();
            holder_wait.recv().unwrap();
            drop(pinned);
            holder_wait.recv().ok(); // then idle until the test ends
        })
    };
    let (sender_done, sender_wait) = mpsc::channel::<()>();
    let sender = {
        let (probe, ready) = (probe.clone(), ready.clone());
        std::thread::spawn(move || {
            let pinned = probe.get().expect("get");
            ready.send(Some(pinned)).unwrap();
            sender_wait.recv().ok(); // idle until the test ends
        })
    };
    let mut moved = None;
    for _ in 0..3 {
        if let Some(pinned) = cached.recv().unwrap() {
            moved = Some(pinned);
        }
    }
    let moved = moved.expect("the sender's pin");
    assert_eq!(moved.generation(), 1);

    artifact.install("good-v2");
    let report = verdant.reload_blocking(None).expect("reload to v2");
    assert!(matches!(report.outcome("probe"), Some(Outcome::Swapped { .. })), "{report}");
    assert_eq!(probe.get().unwrap().generation(), 2);
    // Two pins of generation 1 are alive: no detach yet.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(detaches_of(&shared, 1), 0, "v1 detached while pinned: {:?}", shared.detached());

    holder_drop.send(()).unwrap();
    drop(moved); // on the main thread, not the one whose cache pinned it
    until_detached(&verdant, &shared, 1, "v1 detached once its last pin was dropped, with three threads idle");

    // Once more with a fresh thread that cached generation 2 and went idle
    // (the main thread cached it too).
    let warm = {
        let probe = probe.clone();
        let (done, wait) = mpsc::channel::<()>();
        let (ready, is_ready) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            assert_eq!(probe.get().expect("get").generation(), 2);
            ready.send(()).unwrap();
            wait.recv().ok();
        });
        is_ready.recv().unwrap();
        (done, thread)
    };
    artifact.install("good-v3");
    verdant.reload_blocking(None).expect("reload to v3");
    until_detached(&verdant, &shared, 2, "v2 detached with an idle thread that had cached it");

    drop((idle_done, holder_drop, sender_done, warm.0));
    for thread in [idle, holder, sender, warm.1] {
        thread.join().expect("helper thread");
    }
}
