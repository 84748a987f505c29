//! Greenlet stacks: 100k parked greenlets on a default system, loud overflow reports (checked
//! in a child process, since an overflow ends the process), stack recycling, and
//! greenlet-local values dropped at death.
//!
//! The tests that measure process-wide quantities (RSS, the number of memory mappings) hold
//! [`HEAVY`] so that they do not measure each other.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::rc::Rc;
use std::sync::{Mutex, MutexGuard};

use evergreen::config::GuardMode;
use evergreen::stack::{max_map_count, StackPool};
use evergreen::{getcurrent, spawn, Builder, Error, Event, Greenlet, Local};

/// Serialises the tests that measure the whole process.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Number of memory mappings of this process.
fn maps_count() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("read /proc/self/maps")
        .lines()
        .count()
}

/// Resident set size of this process, in bytes.
fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm has a resident field");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    pages * page
}

const MIB: usize = 1024 * 1024;

/// The guard mode that `GuardMode::Auto` resolves to on this machine (the probe is
/// process-wide, so the hubs of this process resolve it the same way until `mprotect` guards
/// would exhaust `vm.max_map_count`).
fn auto_guard_mode() -> GuardMode {
    let mut pool = StackPool::new(64 * 1024, 0, GuardMode::Auto);
    let s = pool.get(None).expect("a stack");
    let mode = pool
        .effective_mode()
        .expect("resolved after making a stack");
    pool.put(s);
    mode
}

// ---- (a) 100k parked greenlets ----------------------------------------------------------------

#[test]
fn a_hundred_thousand_greenlets_park_on_one_event_with_the_default_configuration() {
    const N: usize = 100_000;
    let _heavy = heavy();
    let mode = auto_guard_mode();
    let max_maps: usize = max_map_count().parse().unwrap_or(65530);
    common::run(move || {
        let maps_before = maps_count();
        let ev = Rc::new(Event::new());
        let finished = Rc::new(Cell::new(0usize));
        let gs: Vec<Greenlet<()>> = (0..N)
            .map(|_| {
                let (ev, finished) = (ev.clone(), finished.clone());
                spawn(move || {
                    ev.wait();
                    finished.set(finished.get() + 1);
                })
            })
            .collect();
        common::settle();

        // All of them are alive and parked on the event, each on its own default-size stack.
        assert_eq!(ev.waiter_count(), N);
        assert_eq!(evergreen::hub::live_count(), N);
        let info = evergreen::debug::run_info();
        assert_eq!(info.len(), N);
        let default_size = evergreen::config::Config::from_env().stack_size;
        assert!(info
            .iter()
            .all(|i| i.state == "parked" && i.waiting_on == "Event::wait"));
        assert!(info.iter().all(|i| i.stack_size == default_size));

        // Guard pages must not cost a memory mapping per stack.
        let maps = maps_count();
        eprintln!(
            "100k parked greenlets: guard mode {mode:?}, {maps} mappings ({} before), \
             vm.max_map_count {max_maps}, RSS {} MiB",
            maps_before,
            rss_bytes() / MIB
        );
        assert!(maps < max_maps, "{maps} mappings reached vm.max_map_count");
        if mode == GuardMode::Madvise {
            assert!(
                maps < 20_000,
                "{maps} mappings for {N} guarded stacks: guards are not inside the slabs"
            );
        }

        ev.set();
        for g in &gs {
            g.join();
            assert!(g.successful(), "{:?}", g.exception());
        }
        assert_eq!(finished.get(), N, "not every greenlet finished");
        assert_eq!(evergreen::hub::live_count(), 0);
    });
}

// ---- (b), (c) stack overflow is never silent --------------------------------------------------

/// Set (to `small` or `slab`) in the child process that overflows a stack on purpose.
const CHILD_ENV: &str = "EVERGREEN_TEST_OVERFLOW_CHILD";

/// Recurses with a 4 KiB frame until the stack overflows.
#[inline(never)]
fn deep_recursion(depth: u64) -> u64 {
    let mut frame = [0u8; 4096];
    frame[(depth % 4096) as usize] = depth as u8;
    let frame = std::hint::black_box(frame);
    if depth == u64::MAX {
        return 0;
    }
    deep_recursion(depth + 1) + u64::from(frame[(depth % 4096) as usize])
}

/// The child side: does nothing unless `EVERGREEN_TEST_OVERFLOW_CHILD` is set; then overflows
/// the stack of a greenlet named `deep-recursion` (32 KiB, or the default size for `slab`).
#[test]
fn overflow_child() {
    let Some(kind) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let small = kind != "slab" && kind != "neighbours" && kind != "released";
    common::run(move || {
        if kind == "released" {
            // Run with a pool that keeps no stack warm: these 128 stacks are all released to
            // the kernel in batches when they end, and the recursing greenlet below gets one
            // of them.
            let ev = Rc::new(Event::new());
            let gs: Vec<_> = (0..128)
                .map(|_| {
                    let e = ev.clone();
                    spawn(move || e.wait())
                })
                .collect();
            evergreen::sleep(std::time::Duration::ZERO);
            ev.set();
            evergreen::joinall(&gs);
        }
        // With "neighbours", parked greenlets take the stacks below the recursing one's, so
        // an unguarded overflow runs through their stacks before anything faults.
        let ev = Rc::new(Event::new());
        let parked: Vec<_> = (0..if kind == "neighbours" { 8 } else { 0 })
            .map(|_| {
                let e = ev.clone();
                spawn(move || e.wait())
            })
            .collect();
        evergreen::sleep(std::time::Duration::ZERO);
        let mut b = Builder::new().name("deep-recursion");
        if small {
            b = b.stack_size(32 * 1024);
        }
        let g = b.spawn(|| deep_recursion(0));
        g.join();
        eprintln!(
            "child: the greenlet ended without overflowing: {:?}",
            g.exception()
        );
        ev.set();
        evergreen::joinall(&parked);
    });
}

/// Runs [`overflow_child`] in a child process and returns how it ended and its stderr.
fn overflow_in_child(kind: &str, guard: Option<&str>) -> (std::process::ExitStatus, String) {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "overflow_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, kind)
    .env_remove("EVERGREEN_GUARD")
    .env_remove("EVERGREEN_STACK_SIZE");
    if kind == "released" {
        cmd.env("EVERGREEN_STACK_POOL_MAX", "0");
    }
    if let Some(g) = guard {
        cmd.env("EVERGREEN_GUARD", g);
    }
    let out = cmd.output().expect("run the child test process");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_overflow_reported(status: std::process::ExitStatus, stderr: &str, size: usize) {
    assert!(
        status.signal().is_some(),
        "the child was not killed by a signal ({status}); stderr:\n{stderr}"
    );
    for needle in [
        "overflowed its",
        "deep-recursion",
        "EVERGREEN_STACK_SIZE",
        &format!("{size}-byte"),
    ] {
        assert!(
            stderr.contains(needle),
            "the overflow report lacks {needle:?} ({status}); stderr:\n{stderr}"
        );
    }
}

#[test]
fn stack_overflow_is_reported_with_the_greenlets_name_and_the_setting_to_raise() {
    let (status, stderr) = overflow_in_child("small", None);
    assert_overflow_reported(status, &stderr, 32 * 1024);
}

#[test]
fn stack_overflow_is_reported_with_mprotect_guard_pages() {
    let (status, stderr) = overflow_in_child("small", Some("mprotect"));
    assert_overflow_reported(status, &stderr, 32 * 1024);
}

#[test]
fn stack_overflow_of_a_pooled_default_size_stack_is_reported() {
    let (status, stderr) = overflow_in_child("slab", None);
    assert_overflow_reported(status, &stderr, 256 * 1024);
}

#[test]
fn stack_overflow_of_a_pooled_stack_is_reported_with_mprotect_guard_pages() {
    let (status, stderr) = overflow_in_child("slab", Some("mprotect"));
    assert_overflow_reported(status, &stderr, 256 * 1024);
}

/// Stacks freed beyond the warm pool are released to the kernel in batches, one `madvise`
/// over each run of neighbouring stacks, guard pages included: the guards must survive it.
#[test]
fn stack_overflow_of_a_released_and_reused_stack_is_reported() {
    let (status, stderr) = overflow_in_child("released", None);
    assert_overflow_reported(status, &stderr, 256 * 1024);
}

/// The same with `mprotect` guard pages (the batch's range spans their `PROT_NONE` mappings).
#[test]
fn stack_overflow_of_a_released_and_reused_stack_is_reported_with_mprotect_guard_pages() {
    let (status, stderr) = overflow_in_child("released", Some("mprotect"));
    assert_overflow_reported(status, &stderr, 256 * 1024);
}

/// The same without guard pages: the canary of every released stack is written again.
#[test]
fn stack_overflow_of_a_released_and_reused_unguarded_stack_is_reported() {
    let (status, stderr) = overflow_in_child("released", Some("none"));
    assert_overflow_reported(status, &stderr, 256 * 1024);
}

/// Runtime bug: without guard pages (`EVERGREEN_GUARD=none`, and what `GuardMode::Auto` falls
/// back to once `mprotect` guards exhaust `vm.max_map_count` on kernels before 6.13), a deep
/// recursion dies by a bare `SIGSEGV` with no report. The canary is only checked when the
/// greenlet switches out, and the signal handler's "overflow range" of an unguarded stack is
/// its lowest, mapped and writable page, where no fault can ever happen; the fault happens
/// below it (or, inside a slab, the recursion silently writes over the neighbouring stack).
#[test]
fn stack_overflow_is_reported_without_guard_pages() {
    let (status, stderr) = overflow_in_child("small", Some("none"));
    assert_overflow_reported(status, &stderr, 32 * 1024);
}

/// Issue 7, item 10: an unguarded overflow with neighbours (it runs through the stacks of the
/// greenlets below it, far past the "near the bottom" rule) used to end in a bare `SIGSEGV`.
#[test]
fn an_unguarded_overflow_through_neighbouring_stacks_is_reported() {
    let (status, stderr) = overflow_in_child("neighbours", Some("none"));
    assert!(
        status.signal().is_some(),
        "the child was not killed by a signal ({status}); stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("'deep-recursion'")
            && (stderr.contains("overflowed its") || stderr.contains("unguarded"))
            && stderr.contains("EVERGREEN_STACK_SIZE"),
        "no overflow report ({status}); stderr:\n{stderr}"
    );
}

/// Set in the child process of the `vm.max_map_count` fallback test.
const MAPS_CHILD: &str = "EVERGREEN_TEST_MAPS_CHILD";

/// The child side: parks 40,000 greenlets with 16 KiB stacks, then ends them all.
#[test]
fn maps_child() {
    if std::env::var_os(MAPS_CHILD).is_none() {
        return;
    }
    let n: usize = std::env::var("EVERGREEN_TEST_MAPS_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40_000);
    common::run(move || {
        let ev = Rc::new(Event::new());
        let gs: Vec<_> = (0..n)
            .map(|_| {
                let e = ev.clone();
                spawn(move || e.wait())
            })
            .collect();
        evergreen::sleep(std::time::Duration::ZERO);
        assert_eq!(evergreen::hub::live_count(), n);
        // The rest of the process still gets new mappings: large allocations (malloc maps
        // them one by one) and a thread's stack.
        let big: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 1 << 20]).collect();
        assert_eq!(big[63][12345], 63);
        std::thread::spawn(|| ()).join().expect("a new thread");
        drop(big);
        ev.set();
        evergreen::joinall(&gs);
        eprintln!("child ok: {n} greenlets parked and ended");
    });
}

/// Builds the `LD_PRELOAD` shim that makes `madvise(MADV_GUARD_INSTALL)` fail with `EINVAL`
/// (a kernel before 6.13) and returns its path.
fn build_no_madvise_guard_shim() -> std::path::PathBuf {
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/no_madvise_guard.c");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let out = dir.join("no_madvise_guard.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let st = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .arg("-ldl")
        .status()
        .unwrap_or_else(|e| {
            panic!("this test builds an LD_PRELOAD shim with a C compiler ({cc}): {e}")
        });
    assert!(st.success(), "building {} failed", src.display());
    out
}

/// Issue 7, item 9: on a kernel without `MADV_GUARD_INSTALL`, `mprotect` guards used to use up
/// `vm.max_map_count` and the process aborted at ~33,000 greenlets (the next `mmap`, of the
/// pool's own bookkeeping, failed). The fallback must leave room, keep going, and say so.
#[test]
fn without_madvise_guards_the_mprotect_fallback_leaves_room_and_keeps_going() {
    let _heavy = heavy();
    let shim = build_no_madvise_guard_shim();
    let exe = std::env::current_exe().expect("current_exe");
    let out = Command::new(exe)
        .args(["--exact", "maps_child", "--nocapture", "--test-threads=1"])
        .env(MAPS_CHILD, "1")
        .env("LD_PRELOAD", &shim)
        .env("EVERGREEN_STACK_SIZE", "16k")
        .env_remove("EVERGREEN_GUARD")
        .output()
        .expect("run the child test process");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the child failed ({}); stderr:\n{stderr}",
        out.status
    );
    assert!(stderr.contains("child ok: 40000 greenlets"), "{stderr}");
    assert!(
        stderr.contains("would use up vm.max_map_count") || stderr.contains("hit vm.max_map_count"),
        "no fallback warning; stderr:\n{stderr}"
    );
}

// ---- (d) stacks are recycled ------------------------------------------------------------------

/// Uses 16 KiB of stack (so a fresh stack per greenlet would commit at least 4 pages) and
/// returns the address of that frame.
#[inline(never)]
fn use_16k_of_stack() -> usize {
    let frame = std::hint::black_box([1u8; 16 * 1024]);
    std::hint::black_box(&frame) as *const _ as usize
}

#[test]
fn stacks_are_recycled_so_sequential_greenlets_do_not_grow_memory() {
    const N: usize = 10_000;
    let _heavy = heavy();
    common::run(|| {
        // Warm up the stack pool and the allocator.
        for _ in 0..100 {
            spawn(use_16k_of_stack).join();
        }
        let rss_before = rss_bytes();
        let mut frames = HashSet::new();
        for _ in 0..N {
            let g = spawn(use_16k_of_stack);
            frames.insert(g.get().expect("the greenlet returns"));
        }
        let grown = rss_bytes().saturating_sub(rss_before);
        assert!(
            grown < 8 * MIB,
            "RSS grew by {} KiB over {N} sequential greenlets: stacks are not recycled",
            grown / 1024
        );
        assert!(
            frames.len() <= 2,
            "{} distinct stacks for {N} sequential greenlets: the most recently freed stack \
             is not reused",
            frames.len()
        );

        // Stacks of a custom size have their own mapping, which is unmapped when the greenlet
        // ends: neither RSS nor the number of mappings grows.
        let rss_before = rss_bytes();
        let maps_before = maps_count();
        for _ in 0..1_000 {
            let g = Builder::new().stack_size(64 * 1024).spawn(use_16k_of_stack);
            g.join();
        }
        let grown = rss_bytes().saturating_sub(rss_before);
        assert!(
            grown < 8 * MIB,
            "RSS grew by {} KiB (custom-size stacks)",
            grown / 1024
        );
        let maps_after = maps_count();
        assert!(
            maps_after < maps_before + 50,
            "mappings grew from {maps_before} to {maps_after}: custom-size stacks are leaked"
        );
    });
}

// ---- (e) greenlet-local values die with their greenlet ----------------------------------------

/// A greenlet-local value that counts its drops and records which greenlet dropped it.
struct Tracked {
    drops: common::DropToken,
    dropped_by: Rc<RefCell<Vec<u64>>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.dropped_by.borrow_mut().push(getcurrent().id());
        let _ = &self.drops;
    }
}

#[test]
fn greenlet_local_values_are_dropped_when_their_greenlet_dies() {
    common::run(|| {
        let drops = common::DropCounter::new();
        let dropped_by = Rc::new(RefCell::new(Vec::new()));
        let made = Rc::new(Cell::new(0usize));
        let local = Rc::new({
            let (drops, dropped_by, made) = (drops.clone(), dropped_by.clone(), made.clone());
            Local::new(move || {
                made.set(made.get() + 1);
                Tracked {
                    drops: drops.token(),
                    dropped_by: dropped_by.clone(),
                }
            })
        });
        let touch = |local: &Rc<Local<Tracked>>| {
            let local = local.clone();
            move || local.with(|_| ())
        };

        // Ten greenlets make their value and park: the values live while they do.
        let ev = Rc::new(Event::new());
        let parked: Vec<Greenlet<()>> = (0..10)
            .map(|_| {
                let (touch, ev) = (touch(&local), ev.clone());
                spawn(move || {
                    touch();
                    ev.wait();
                })
            })
            .collect();
        common::settle();
        assert_eq!((made.get(), drops.count()), (10, 0));
        ev.set();
        for g in &parked {
            g.join();
        }
        assert_eq!(
            drops.count(),
            10,
            "values of finished greenlets were not dropped"
        );
        let ids: Vec<u64> = parked.iter().map(|g| g.id()).collect();
        assert_eq!(
            *dropped_by.borrow(),
            ids,
            "each value is dropped by its own greenlet, as it dies"
        );

        // Dropped before the joiner wakes, whether it returned, was killed or panicked.
        let g = spawn(touch(&local));
        g.join();
        assert_eq!(drops.count(), 11, "returned");

        let g = {
            let touch = touch(&local);
            spawn(move || {
                touch();
                Event::new().wait();
            })
        };
        common::settle();
        assert_eq!(drops.count(), 11);
        g.kill();
        assert_eq!(g.exception(), Some(Error::Killed));
        assert_eq!(drops.count(), 12, "killed while parked");

        let g = {
            let touch = touch(&local);
            spawn(move || {
                touch();
                panic!("boom");
            })
        };
        g.join();
        assert!(matches!(g.exception(), Some(Error::Panicked(_))));
        assert_eq!(drops.count(), 13, "panicked");

        // A greenlet that never used the local, or never ran, makes no value.
        spawn(|| ()).join();
        let never = spawn(touch(&local));
        never.kill();
        assert!(!never.started());
        assert_eq!((made.get(), drops.count()), (13, 13));

        // The root's own value lives until its hub is destroyed.
        local.with(|_| ());
        assert_eq!((made.get(), drops.count()), (14, 13));
        for _ in 0..3 {
            spawn(touch(&local)).join();
        }
        assert_eq!(
            (made.get(), drops.count()),
            (17, 16),
            "the root's value was dropped"
        );
        evergreen::hub::destroy();
        assert_eq!(drops.count(), 17, "the root's value outlived its hub");
    });
}
