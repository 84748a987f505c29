//! Greenlet stacks: slab allocation, guard pages, a recycling pool, and loud overflow reports.
//!
//! gevent's greenlets copy slices of the C stack in and out of the heap; evergreen gives every
//! greenlet its own fixed-size stack instead (what corosensei switches between), so the two
//! costs that matter are *making* a stack and *guarding* it.
//!
//! # Layout
//!
//! Stacks of the default size are carved out of slabs: one anonymous `mmap` holds
//! [`SLAB_STACKS`] stacks, each preceded (at the lower address, where the stack grows to) by
//! one guard page:
//!
//! ```text
//!   low addresses                                                         high addresses
//!   | guard | usable stack 0 ...... top0 | guard | usable stack 1 ...... top1 | ...
//!     ^ overflow of stack 0 faults here     ^ overflow of stack 1 faults here
//! ```
//!
//! Pages are committed lazily by the kernel, so a parked greenlet that used less than a page
//! of stack costs one page of RAM, whatever the configured size.
//!
//! # Recycling
//!
//! A finished greenlet's stack goes back to the pool *warm* (its pages still committed, so
//! the next greenlet reuses them without page faults), up to `Config::stack_pool_max` stacks.
//! Stacks freed beyond that are released to the kernel with `MADV_DONTNEED`, in batches of
//! `RELEASE_BATCH`: sorted by address, the neighbours of one slab go in one call covering
//! their whole run (guard pages included: `MADV_DONTNEED` keeps `MADV_GUARD_INSTALL` markers,
//! and a `PROT_NONE` page has nothing to release). Releasing them one by one cost a system
//! call and a TLB flush per greenlet, a third of the CPU time of spawning and ending many
//! live greenlets. Until its batch is released, a surplus stack is reused before cold ones.
//!
//! # Guard pages and `vm.max_map_count`
//!
//! * On Linux ≥ 6.13, `madvise(MADV_GUARD_INSTALL)` turns a page into a guard *inside* the
//!   slab's one mapping: 100,000 guarded stacks cost ~1,600 mappings. On Linux ≥ 6.15 the
//!   guards of a whole slab are installed by one `process_madvise(PIDFD_SELF, …)` call (one
//!   range per stack) instead of one `madvise` per stack.
//! * Elsewhere, `mprotect(PROT_NONE)` splits the mapping at every guard: two mappings per
//!   stack, so Linux's default `vm.max_map_count` of 65530 caps guarded stacks at ~32,000.
//!   [`GuardMode::Auto`] keeps count of the mappings its guards make and, *before* they would
//!   use up `vm.max_map_count` (it leaves room for the rest of the process: 1/16 of the limit,
//!   at least 1,024 mappings, since `malloc` and every other `mmap` fail once the limit is
//!   reached), falls back to dense slabs without guard pages for the rest of the hub's life.
//!   It says so once on stderr (through `log` when a logger is installed): raise the limit
//!   with `sysctl -w vm.max_map_count=262144` to keep guards. If `mprotect` fails with
//!   `ENOMEM` anyway, it falls back the same way.
//! * Unguarded stacks (`EVERGREEN_GUARD=none`, or that fallback) carry a canary word at their
//!   bottom that is checked whenever the greenlet switches out; a clobbered canary aborts the
//!   process with the greenlet's name. Each unguarded *slab* has one guard page below its
//!   lowest stack, so an overflow that runs through its neighbours' stacks faults there at
//!   the latest, and any fault while a greenlet runs on an unguarded stack is reported as a
//!   probable overflow (of that greenlet, or of a neighbour that overwrote its stack): never a
//!   silent `SIGSEGV`, though an overflow may corrupt the stacks of the greenlets below it
//!   before it is caught.
//!
//! # Overflow reports
//!
//! A stack overflow into a guard page is a `SIGSEGV`. The handler installed by
//! [`install_overflow_handler`] runs on the thread's alternate signal stack, checks whether the
//! faulting address is the guard page of the greenlet that is running, and if so writes
//!
//! ```text
//! evergreen: greenlet #12 'fetcher' overflowed its 262144-byte stack;
//! raise EVERGREEN_STACK_SIZE or use Builder::stack_size
//! ```
//!
//! and aborts. Any other fault is passed on to the handler that was installed before (Rust's
//! own, which reports overflows of thread stacks), so nothing is ever a silent `SIGSEGV`.

use std::cell::Cell;
use std::io;
use std::ptr;
use std::sync::Once;

use corosensei::stack::valgrind::ValgrindStackRegistration;
use corosensei::stack::{Stack, StackPointer};

use crate::config::GuardMode;

/// Stacks per slab mapping.
pub const SLAB_STACKS: usize = 64;

/// Freed stacks beyond the warm pool are released to the kernel this many at a time.
const RELEASE_BATCH: usize = 64;

/// `MADV_GUARD_INSTALL` (Linux 6.13, `include/uapi/asm-generic/mman-common.h`).
const MADV_GUARD_INSTALL: libc::c_int = 102;

/// The canary written at the bottom of unguarded stacks.
pub(crate) const CANARY: u64 = 0x6576_6572_6772_6e21; // "evergrn!"

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to).saturating_mul(to)
}

/// The largest stack a greenlet may ask for (address space, not RAM; 1 GiB).
pub const MAX_STACK_SIZE: usize = 1 << 30;

/// One greenlet stack. Owned by the pool, or by exactly one greenlet's core while the greenlet
/// has a coroutine (taken apart with `into_parts`: the coroutine itself holds only a
/// `StackView`).
#[derive(Debug)]
pub struct GreenStack {
    /// Highest address (exclusive): where the stack starts.
    top: usize,
    /// Lowest usable address.
    bottom: usize,
    /// Bytes of guard below `bottom` (0 for unguarded stacks).
    guard: usize,
    /// The length of the stack's own mapping (which starts at `bottom - guard`), unmapped on
    /// drop; 0 for a stack inside a slab, which lives as long as the slab.
    own_mapping_len: usize,
}

impl GreenStack {
    /// Usable bytes.
    pub fn size(&self) -> usize {
        self.top - self.bottom
    }

    /// The range `[lo, hi)` whose access means an overflow: the guard page, or for an
    /// unguarded stack its lowest page (where the canary is).
    #[inline]
    pub fn overflow_range(&self) -> (usize, usize) {
        if self.guard > 0 {
            (self.bottom - self.guard, self.bottom)
        } else {
            (self.bottom, self.bottom + page_size())
        }
    }

    /// The lowest usable address.
    pub fn bottom(&self) -> usize {
        self.bottom
    }

    /// Whether the stack has a guard page (otherwise it has a canary).
    pub fn guarded(&self) -> bool {
        self.guard > 0
    }

    /// Checks the canary of an unguarded stack; `true` if intact (always for guarded stacks).
    pub fn canary_intact(&self) -> bool {
        if self.guarded() {
            return true;
        }
        // SAFETY: `bottom` is the start of this stack's mapped, readable memory, 8-aligned.
        unsafe { ptr::read_volatile(self.bottom as *const u64) == CANARY }
    }

    fn write_canary(&self) {
        if !self.guarded() {
            // SAFETY: as in `canary_intact`; the stack is not in use by any coroutine now.
            unsafe { ptr::write_volatile(self.bottom as *mut u64, CANARY) }
        }
    }
}

impl Drop for GreenStack {
    fn drop(&mut self) {
        if self.own_mapping_len != 0 {
            // SAFETY: this mapping was created for this stack alone by `map_single`.
            unsafe {
                libc::munmap(
                    (self.bottom - self.guard) as *mut libc::c_void,
                    self.own_mapping_len,
                );
            }
        }
    }
}

// SAFETY: `top` and `bottom - guard` are page-aligned (so aligned to STACK_ALIGNMENT); the
// usable range is at least MIN_STACK_SIZE (sizes are >= 16 KiB); every stack either has a
// guard page below it or, in the documented `GuardMode::None` fallback, a canary that is
// checked on every switch-out (the one case where the trait's guard requirement is relaxed,
// chosen knowingly, logged, and documented in the module docs).
unsafe impl Stack for GreenStack {
    #[inline]
    fn base(&self) -> StackPointer {
        StackPointer::new(self.top).expect("stack top is never null")
    }

    #[inline]
    fn limit(&self) -> StackPointer {
        StackPointer::new(self.bottom - self.guard).expect("stack limit is never null")
    }
}

impl GreenStack {
    /// Takes the stack apart for a greenlet: what its coroutine needs (the two ends, a
    /// [`StackView`] that owns nothing), and what its core keeps to give the stack back
    /// ([`StackBounds`]: the stack's own four words, copied as they are, so that neither
    /// taking the stack apart nor rebuilding it computes anything). The stack is then owned
    /// by that core until [`from_parts`](Self::from_parts) rebuilds it.
    #[inline(always)]
    pub(crate) fn into_parts(self) -> (StackView, StackBounds) {
        let bounds = StackBounds {
            top: self.top,
            bottom: self.bottom,
            guard: self.guard,
            own_mapping_len: self.own_mapping_len,
        };
        // SAFETY: a stack's top and its limit (the start of its mapping, or of its slab
        // mapping's stack) are addresses of mapped memory, so not null.
        let view = unsafe {
            StackView {
                base: StackPointer::new_unchecked(self.top),
                limit: StackPointer::new_unchecked(self.bottom - self.guard),
            }
        };
        std::mem::forget(self);
        (view, bounds)
    }

    /// Rebuilds a stack taken apart by [`into_parts`](Self::into_parts).
    ///
    /// # Safety
    ///
    /// `bounds` comes from one `into_parts` call, and this is the only rebuild of that stack
    /// (it has one owner again, and it is no longer in use).
    #[inline(always)]
    pub(crate) unsafe fn from_parts(bounds: StackBounds) -> GreenStack {
        GreenStack {
            top: bounds.top,
            bottom: bounds.bottom,
            guard: bounds.guard,
            own_mapping_len: bounds.own_mapping_len,
        }
    }
}

/// What a greenlet's coroutine holds of its stack: its two ends, without owning it (the
/// greenlet's core does, see [`GreenStack::into_parts`]). Two words instead of a
/// [`GreenStack`]'s four, so the coroutine is smaller to build and to take apart when the
/// greenlet is reaped, and the stack goes back to the pool without moving the coroutine out.
#[derive(Debug)]
pub(crate) struct StackView {
    base: StackPointer,
    limit: StackPointer,
}

// SAFETY: the two ends of a `GreenStack` (see its `Stack` impl), which stays mapped and unused
// by anything else while its greenlet's core owns it, so for as long as a coroutine can use
// this view.
unsafe impl Stack for StackView {
    #[inline]
    fn base(&self) -> StackPointer {
        self.base
    }

    #[inline]
    fn limit(&self) -> StackPointer {
        self.limit
    }
}

/// The per-hub stack allocator and pool.
pub struct StackPool {
    page: usize,
    /// Usable size of default stacks.
    default_size: usize,
    mode: GuardMode,
    /// The mode that was actually used after probing (never `Auto`).
    effective: Option<GuardMode>,
    /// Recently freed default-size stacks whose pages are still committed, most recent last
    /// (reused first: their memory is hot).
    warm: Vec<GreenStack>,
    /// Free stacks with no committed memory (fresh from a slab, or released).
    cold: Vec<GreenStack>,
    /// How many freed stacks stay warm; beyond that, freed stacks are `MADV_DONTNEED`ed.
    keep_warm: usize,
    /// Freed stacks beyond `keep_warm`, still committed, waiting to be released together
    /// (see [`RELEASE_BATCH`]); reused before cold stacks.
    surplus: Vec<GreenStack>,
    /// Every slab mapping `(addr, len)`.
    slabs: Vec<(usize, usize)>,
    /// Default-size stacks made (in slabs); those not in the pool (`free_len`) are handed
    /// out. Counted here rather than on every hand-out and return.
    slab_stacks: usize,
    /// Each slab stack registered with valgrind (a no-op outside valgrind), so that memcheck
    /// understands the switches between them instead of reporting every access on the thread's
    /// own stack as invalid.
    valgrind: Vec<ValgrindStackRegistration>,
    /// Estimated memory mappings of the process, for the `mprotect` fallback: read from
    /// `/proc/self/maps` when the first `mprotect` slab is made (and again near the limit),
    /// plus what this pool's guards added since.
    maps_estimate: usize,
}

/// How many mappings the `mprotect` guards leave free for the rest of the process.
fn map_reserve(limit: usize) -> usize {
    (limit / 16).max(1024)
}

/// `vm.max_map_count` (65530 if unreadable).
fn max_map_count_value() -> usize {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65530)
}

/// How many mappings the process has now.
fn maps_in_use() -> usize {
    std::fs::read("/proc/self/maps")
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

/// Reports a fallback that must never go unnoticed: through `log` when a logger is installed,
/// on stderr otherwise.
pub(crate) fn warn_always(msg: &str) {
    if log::log_enabled!(log::Level::Warn) {
        log::warn!("{msg}");
    } else {
        eprintln!("{msg}");
    }
}

impl StackPool {
    /// A pool for stacks of `default_size` usable bytes.
    pub fn new(default_size: usize, keep_warm: usize, mode: GuardMode) -> StackPool {
        let page = page_size();
        StackPool {
            page,
            default_size: round_up(default_size.clamp(16 * 1024, MAX_STACK_SIZE), page),
            mode,
            effective: None,
            warm: Vec::new(),
            cold: Vec::new(),
            keep_warm,
            surplus: Vec::new(),
            slabs: Vec::new(),
            slab_stacks: 0,
            valgrind: Vec::new(),
            maps_estimate: 0,
        }
    }

    /// The default usable stack size.
    pub fn default_size(&self) -> usize {
        self.default_size
    }

    /// The guard mode in effect (after probing and any fallback), if a stack was made yet.
    pub fn effective_mode(&self) -> Option<GuardMode> {
        self.effective
    }

    /// Number of free stacks in the pool.
    pub fn free_len(&self) -> usize {
        self.warm.len() + self.surplus.len() + self.cold.len()
    }

    /// A warm default-size stack, if there is one: [`get(None)`](Self::get)'s hot path, for
    /// a caller that handles the rest itself.
    #[inline(always)]
    pub(crate) fn pop_warm(&mut self) -> Option<GreenStack> {
        self.warm.pop()
    }

    /// Whether [`put_warm`](Self::put_warm) may take a default-size stack now: the warm
    /// list is below its limit and has room without growing. One check: the warm list's
    /// capacity never exceeds `keep_warm` (see [`push_warm`](Self::push_warm)).
    #[inline(always)]
    pub(crate) fn has_warm_room(&self) -> bool {
        debug_assert!(self.warm.capacity() <= self.keep_warm);
        self.warm.len() < self.warm.capacity()
    }

    /// Pushes a stack on the warm list, which is shorter than `keep_warm`; the list grows to
    /// at most `keep_warm` (so that `has_warm_room` need not check the limit).
    fn push_warm(&mut self, stack: GreenStack) {
        let n = self.warm.len();
        debug_assert!(n < self.keep_warm);
        if n == self.warm.capacity() {
            let want = (n * 2).max(4).min(self.keep_warm);
            self.warm.reserve_exact(want - n);
            if self.warm.capacity() > self.keep_warm {
                // The allocator gave more than asked: keep the bound exact.
                self.warm.shrink_to(self.keep_warm);
            }
        }
        self.warm.push(stack);
    }

    /// [`put`](Self::put) of a stack from a slab when [`has_warm_room`](Self::has_warm_room):
    /// no check, no call (the reaping of a greenlet inlines it).
    #[inline(always)]
    pub(crate) fn put_warm(&mut self, stack: GreenStack) {
        debug_assert!(stack.own_mapping_len == 0 && self.has_warm_room());
        let n = self.warm.len();
        // SAFETY: `n < capacity` (`has_warm_room`): the slot is allocated and unused, and the
        // new length counts only initialised slots.
        unsafe {
            self.warm.as_mut_ptr().add(n).write(stack);
            self.warm.set_len(n + 1);
        }
    }

    /// A stack of `size` usable bytes (`None`: the default size).
    #[inline]
    pub fn get(&mut self, size: Option<usize>) -> io::Result<GreenStack> {
        if size.is_none() {
            // The hot path: a warm default-size stack.
            if let Some(s) = self.warm.pop() {
                return Ok(s);
            }
        }
        self.get_slow(size)
    }

    #[inline(never)]
    fn get_slow(&mut self, size: Option<usize>) -> io::Result<GreenStack> {
        if let Some(s) = size {
            if s > MAX_STACK_SIZE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "evergreen: a greenlet stack of {s} bytes was asked for; the limit is \
                         {MAX_STACK_SIZE} bytes"
                    ),
                ));
            }
        }
        match size {
            Some(s) if round_up(s.max(16 * 1024), self.page) != self.default_size => {
                self.map_single(round_up(s.max(16 * 1024), self.page))
            }
            _ => {
                if let Some(s) = self.warm.pop().or_else(|| self.surplus.pop()) {
                    return Ok(s);
                }
                if self.cold.is_empty() {
                    self.map_slab()?;
                }
                Ok(self.cold.pop().expect("slab refilled the pool"))
            }
        }
    }

    /// Returns a stack whose coroutine has finished.
    #[inline]
    pub fn put(&mut self, stack: GreenStack) {
        if stack.own_mapping_len == 0 && self.warm.len() < self.keep_warm {
            // The hot path: keep it warm.
            self.push_warm(stack);
            return;
        }
        self.put_slow(stack);
    }

    #[inline(never)]
    fn put_slow(&mut self, stack: GreenStack) {
        if stack.own_mapping_len != 0 {
            drop(stack);
            return;
        }
        if self.warm.len() >= self.keep_warm {
            self.surplus.push(stack);
            if self.surplus.len() >= RELEASE_BATCH {
                self.release_surplus();
            }
        } else {
            self.push_warm(stack);
        }
    }

    /// Returns the memory of the surplus stacks to the kernel and makes them cold: sorted by
    /// address, neighbours in a slab are released by one `madvise` over their whole run (the
    /// guard pages between them are kept: `MADV_DONTNEED` preserves `MADV_GUARD_INSTALL`
    /// markers, and a `PROT_NONE` page has nothing to release), so a batch costs a few system
    /// calls and TLB flushes instead of one of each per stack.
    #[cold]
    fn release_surplus(&mut self) {
        let mut batch = std::mem::take(&mut self.surplus);
        batch.sort_unstable_by_key(|s| s.bottom);
        let mut i = 0;
        while i < batch.len() {
            let lo = batch[i].bottom;
            let mut j = i + 1;
            while j < batch.len() && batch[j].bottom - batch[j].guard == batch[j - 1].top {
                j += 1;
            }
            let hi = batch[j - 1].top;
            // SAFETY: `lo..hi` covers stacks of one slab mapping that are all free (in
            // `batch`), and the guard pages between them; nothing uses that memory now.
            unsafe {
                libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_DONTNEED);
            }
            i = j;
        }
        for s in &batch {
            s.write_canary();
        }
        self.cold.append(&mut batch);
        // Keep the allocation for the next batch.
        self.surplus = batch;
    }

    fn guard_mode(&mut self) -> GuardMode {
        if let Some(m) = self.effective {
            return m;
        }
        let m = match self.mode {
            GuardMode::Auto => {
                if madvise_guard_supported(self.page) {
                    GuardMode::Madvise
                } else {
                    GuardMode::Mprotect
                }
            }
            GuardMode::Madvise if !madvise_guard_supported(self.page) => {
                log::warn!(
                    "evergreen: EVERGREEN_GUARD=madvise but this kernel has no MADV_GUARD_INSTALL \
                     (Linux >= 6.13); using mprotect guard pages instead"
                );
                GuardMode::Mprotect
            }
            m => m,
        };
        self.effective = Some(m);
        m
    }

    /// Whether `mprotect` guards for one more slab would leave too little of
    /// `vm.max_map_count` to the rest of the process (see the module docs); if so, switches
    /// this pool to unguarded stacks, saying so once.
    fn mprotect_guards_would_exhaust_maps(&mut self) -> bool {
        let limit = max_map_count_value();
        let reserve = map_reserve(limit);
        // One slab with a guard per stack: the mapping is split into 2 per stack (+ 1).
        let need = 2 * SLAB_STACKS + 1;
        if self.maps_estimate == 0 || self.maps_estimate + need + 2 * reserve > limit {
            // Near the limit (or the first time): count for real.
            self.maps_estimate = maps_in_use();
        }
        if self.maps_estimate + need + reserve <= limit {
            self.maps_estimate += need;
            return false;
        }
        warn_always(&format!(
            "evergreen: mprotect guard pages would use up vm.max_map_count ({limit}; about {} \
             mappings in use): new greenlet stacks are unguarded (canary-checked) for the rest \
             of this hub's life. Raise the limit (sysctl -w vm.max_map_count=262144) or use \
             Linux >= 6.13 to keep guard pages.",
            self.maps_estimate
        ));
        self.effective = Some(GuardMode::None);
        true
    }

    fn map_slab(&mut self) -> io::Result<()> {
        let mut mode = self.guard_mode();
        if mode == GuardMode::Mprotect
            && self.mode == GuardMode::Auto
            && self.mprotect_guards_would_exhaust_maps()
        {
            mode = GuardMode::None;
        }
        let guard = if mode == GuardMode::None {
            0
        } else {
            self.page
        };
        // An unguarded slab gets one guard page below its lowest stack (2 mappings per slab):
        // an overflow running down through its neighbours faults there at the latest.
        let slab_guard = if mode == GuardMode::None {
            self.page
        } else {
            0
        };
        let stride = guard + self.default_size;
        let len = slab_guard + stride * SLAB_STACKS;
        let base = mmap_anon(len)?;
        if slab_guard > 0 {
            // Best effort: without it, the per-stack canaries and the fault report remain.
            let _ = install_guard(GuardMode::Mprotect, base, slab_guard);
        }
        let first = base + slab_guard;
        let mut made = Vec::with_capacity(SLAB_STACKS);
        for i in 0..SLAB_STACKS {
            let lo = first + i * stride;
            made.push(GreenStack {
                top: lo + stride,
                bottom: lo + guard,
                guard,
                own_mapping_len: 0,
            });
        }
        let batched = mode == GuardMode::Madvise && install_guards_batched(&made, guard);
        if mode != GuardMode::None && !batched {
            for (i, s) in made.iter().enumerate() {
                if let Err(e) = install_guard(mode, s.bottom - guard, guard) {
                    if mode == GuardMode::Mprotect
                        && self.mode == GuardMode::Auto
                        && e.raw_os_error() == Some(libc::ENOMEM)
                    {
                        warn_always(&format!(
                            "evergreen: mprotect guard pages hit vm.max_map_count ({}): \
                             switching to unguarded stacks with canaries for the rest of this \
                             hub's life. Raise the limit (sysctl -w vm.max_map_count=262144) or \
                             use Linux >= 6.13 to keep guard pages.",
                            max_map_count()
                        ));
                        self.effective = Some(GuardMode::None);
                        // The stacks already guarded keep their guards; the others get canaries.
                        for s in &mut made[i..] {
                            s.bottom -= guard;
                            s.guard = 0;
                        }
                        break;
                    }
                    // SAFETY: unmapping the slab we just mapped; no stack of it was handed out.
                    unsafe { libc::munmap(base as *mut libc::c_void, len) };
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "evergreen: cannot install a stack guard page ({e}); with mprotect \
                             guards every live greenlet costs two memory mappings and \
                             vm.max_map_count is {}. Raise it (sysctl -w vm.max_map_count=262144), \
                             or set EVERGREEN_GUARD=none",
                            max_map_count()
                        ),
                    ));
                }
            }
        }
        for s in &made {
            s.write_canary();
            self.valgrind.push(ValgrindStackRegistration::new(
                (s.bottom - s.guard) as *mut u8,
                s.top - (s.bottom - s.guard),
            ));
        }
        self.slabs.push((base, len));
        self.slab_stacks += made.len();
        // Pop order: lowest address first.
        made.reverse();
        self.cold.extend(made);
        Ok(())
    }

    fn map_single(&mut self, size: usize) -> io::Result<GreenStack> {
        let mode = self.guard_mode();
        let guard = if mode == GuardMode::None {
            0
        } else {
            self.page
        };
        let len = guard + size;
        let base = mmap_anon(len)?;
        if guard > 0 {
            // A single mapping: mprotect splits it into two, which is unavoidable here.
            let m = if mode == GuardMode::Madvise {
                GuardMode::Madvise
            } else {
                GuardMode::Mprotect
            };
            if let Err(e) = install_guard(m, base, guard) {
                // SAFETY: unmapping the mapping we just made.
                unsafe { libc::munmap(base as *mut libc::c_void, len) };
                return Err(io::Error::new(
                    e.kind(),
                    format!("evergreen: cannot install a stack guard page: {e}"),
                ));
            }
        }
        let s = GreenStack {
            top: base + len,
            bottom: base + guard,
            guard,
            own_mapping_len: len,
        };
        s.write_canary();
        // Registered for the life of the process (a stale registration of an unmapped range is
        // harmless; keeping its id would cost every greenlet a word).
        std::mem::forget(ValgrindStackRegistration::new(base as *mut u8, len));
        Ok(s)
    }
}

impl Drop for StackPool {
    fn drop(&mut self) {
        if self.slab_stacks != self.free_len() {
            // Some coroutine still owns a stack of a slab (it was leaked); keep the memory.
            return;
        }
        self.warm.clear();
        self.surplus.clear();
        self.cold.clear();
        self.valgrind.clear();
        for &(addr, len) in &self.slabs {
            // SAFETY: every stack of these slabs is back in the pool (all made are free) and the
            // pool was just cleared, so nothing refers to this memory any more.
            unsafe {
                libc::munmap(addr as *mut libc::c_void, len);
            }
        }
    }
}

fn mmap_anon(len: usize) -> io::Result<usize> {
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing; no existing
    // memory is affected.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("evergreen: cannot map {len} bytes of greenlet stacks: {e}"),
        ));
    }
    Ok(p as usize)
}

fn install_guard(mode: GuardMode, addr: usize, len: usize) -> io::Result<()> {
    let r = match mode {
        // SAFETY: `addr..addr+len` is a page of a mapping we own that holds no live data.
        GuardMode::Madvise => unsafe {
            libc::madvise(addr as *mut libc::c_void, len, MADV_GUARD_INSTALL)
        },
        // SAFETY: as above.
        _ => unsafe { libc::mprotect(addr as *mut libc::c_void, len, libc::PROT_NONE) },
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `PIDFD_SELF` (Linux 6.15, `include/uapi/linux/pidfd.h`): the calling process.
const PIDFD_SELF: libc::c_int = -10000;

/// Installs the `MADV_GUARD_INSTALL` guard page below each of `stacks` with one
/// `process_madvise` call on the process itself (Linux ≥ 6.15 knows `PIDFD_SELF`) instead of
/// one `madvise` per stack; `false` (nothing to undo: installing a guard twice is harmless) if
/// the kernel cannot, and the caller installs them one by one.
fn install_guards_batched(stacks: &[GreenStack], guard: usize) -> bool {
    use std::sync::atomic::{AtomicBool, Ordering};
    static UNSUPPORTED: AtomicBool = AtomicBool::new(false);
    if UNSUPPORTED.load(Ordering::Relaxed) || stacks.is_empty() {
        return false;
    }
    let iov: Vec<libc::iovec> = stacks
        .iter()
        .map(|s| libc::iovec {
            iov_base: (s.bottom - guard) as *mut libc::c_void,
            iov_len: guard,
        })
        .collect();
    // SAFETY: each range is the guard page of a stack of a slab we just mapped, holding no
    // data; `iov` is a valid array of `iov.len()` (at most SLAB_STACKS, under IOV_MAX) entries.
    let r = unsafe {
        libc::syscall(
            libc::SYS_process_madvise,
            PIDFD_SELF,
            iov.as_ptr(),
            iov.len(),
            MADV_GUARD_INSTALL,
            0,
        )
    };
    if r == (guard * stacks.len()) as libc::c_long {
        return true;
    }
    if r < 0 {
        UNSUPPORTED.store(true, Ordering::Relaxed);
    }
    false
}

/// Probes `MADV_GUARD_INSTALL` once per process.
fn madvise_guard_supported(page: usize) -> bool {
    use std::sync::atomic::{AtomicU8, Ordering};
    static STATE: AtomicU8 = AtomicU8::new(0); // 0 unknown, 1 yes, 2 no
    match STATE.load(Ordering::Relaxed) {
        1 => return true,
        2 => return false,
        _ => {}
    }
    let ok = match mmap_anon(2 * page) {
        Ok(p) => {
            // SAFETY: probing on a fresh private mapping that nothing else uses.
            let r = unsafe { libc::madvise(p as *mut libc::c_void, page, MADV_GUARD_INSTALL) };
            // SAFETY: unmapping the probe mapping.
            unsafe { libc::munmap(p as *mut libc::c_void, 2 * page) };
            r == 0
        }
        Err(_) => false,
    };
    STATE.store(if ok { 1 } else { 2 }, Ordering::Relaxed);
    ok
}

/// The current `vm.max_map_count`, for messages.
pub fn max_map_count() -> String {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

// ---------------------------------------------------------------------------------------------
// Overflow reporting
// ---------------------------------------------------------------------------------------------

/// A greenlet's stack as its core keeps it while the greenlet has a coroutine (set once,
/// before it can run): a [`GreenStack`]'s own four words, for the overflow handler and canary
/// checks and to give the stack back ([`GreenStack::from_parts`]).
#[derive(Clone, Copy)]
pub(crate) struct StackBounds {
    /// Highest address (exclusive).
    pub top: usize,
    /// The lowest usable address of the stack.
    pub bottom: usize,
    /// Bytes of guard below `bottom` (0 for an unguarded stack).
    pub guard: usize,
    /// The length of the stack's own mapping; 0 for a stack inside a slab.
    pub own_mapping_len: usize,
}

impl StackBounds {
    pub(crate) const NONE: StackBounds = StackBounds {
        top: 0,
        bottom: 0,
        guard: 0,
        own_mapping_len: 0,
    };

    /// Usable bytes (0 for the root).
    pub(crate) fn size(&self) -> usize {
        self.top - self.bottom
    }

    /// As [`GreenStack::overflow_range`]: the guard range `[lo, hi)`, or for an unguarded
    /// stack its lowest page; `(0, 0)` for the root.
    pub(crate) fn overflow_range(&self) -> (usize, usize) {
        if self.top == 0 {
            (0, 0)
        } else if self.guard > 0 {
            (self.bottom - self.guard, self.bottom)
        } else {
            (self.bottom, self.bottom + page_size())
        }
    }
}

/// What the signal handler needs to know about the running greenlet: its stack bounds and
/// identity, read from its core (see `hub::running_overflow_info`).
#[derive(Clone, Copy)]
pub(crate) struct OverflowInfo {
    /// The guard range `[lo, hi)` (or the lowest page of an unguarded stack).
    pub lo: usize,
    pub hi: usize,
    /// The lowest usable address of the stack.
    pub bottom: usize,
    pub id: u64,
    pub size: usize,
    /// Pointer and length of the greenlet's name (immutable for its whole life), or null.
    pub name: *const u8,
    pub name_len: usize,
    /// Its stack has no guard page.
    pub unguarded: bool,
}

impl OverflowInfo {
    pub(crate) const NONE: OverflowInfo = OverflowInfo {
        lo: 0,
        hi: 0,
        bottom: 0,
        id: 0,
        size: 0,
        name: ptr::null(),
        name_len: 0,
        unguarded: false,
    };
}

static mut PREVIOUS: Option<libc::sigaction> = None;
static mut PREVIOUS_BUS: Option<libc::sigaction> = None;
static INSTALL: Once = Once::new();

/// Installs (once per process) the `SIGSEGV`/`SIGBUS` handler that reports greenlet stack
/// overflows, and makes sure the calling thread has an alternate signal stack.
pub fn install_overflow_handler() {
    INSTALL.call_once(|| {
        // SAFETY: installing a handler with a zeroed-then-filled sigaction; the previous action
        // is saved before any signal can reach our handler, inside `Once`.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = overflow_handler as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut sa.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGSEGV, &sa, &mut old) == 0 {
                PREVIOUS = Some(old);
            }
            let mut old_bus: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &sa, &mut old_bus) == 0 {
                PREVIOUS_BUS = Some(old_bus);
            }
        }
    });
    ensure_altstack();
}

/// Gives the thread an alternate signal stack if it has none (Rust's runtime gives one to the
/// threads it starts; foreign threads may have none). Without one, a stack overflow could not
/// run the handler at all.
fn ensure_altstack() {
    thread_local! { static DONE: Cell<bool> = const { Cell::new(false) }; }
    if DONE.with(|d| d.replace(true)) {
        return;
    }
    // SAFETY: querying and, if disabled, installing a leaked, never-freed alternate stack.
    unsafe {
        let mut cur: libc::stack_t = std::mem::zeroed();
        if libc::sigaltstack(ptr::null(), &mut cur) != 0 {
            return;
        }
        if cur.ss_flags & libc::SS_DISABLE == 0 {
            return;
        }
        let size = 64 * 1024;
        let Ok(mem) = mmap_anon(size) else { return };
        let st = libc::stack_t {
            ss_sp: mem as *mut libc::c_void,
            ss_flags: 0,
            ss_size: size,
        };
        libc::sigaltstack(&st, ptr::null_mut());
    }
}

/// The stack pointer of the interrupted context, or 0 where unknown.
fn interrupted_stack_pointer(ctx: *mut libc::c_void) -> usize {
    if ctx.is_null() {
        return 0;
    }
    let uc = ctx as *const libc::ucontext_t;
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the kernel passes a valid ucontext_t to SA_SIGINFO handlers.
        unsafe { (*uc).uc_mcontext.gregs[libc::REG_RSP as usize] as usize }
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: as above.
        unsafe { (*uc).uc_mcontext.sp as usize }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = uc;
        0
    }
}

/// Writes bytes to stderr without allocating (async-signal-safe). A raw system call: the
/// libc `write` symbol is evergreen's own monkey-patching hook.
fn raw_write(b: &[u8]) {
    // SAFETY: writing from a valid slice to fd 2.
    unsafe {
        libc::syscall(libc::SYS_write, 2, b.as_ptr(), b.len());
    }
}

fn raw_write_num(mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    raw_write(&buf[i..]);
}

extern "C" fn overflow_handler(
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let running = crate::hub::running_overflow_info().unwrap_or(OverflowInfo::NONE);
    let sp = interrupted_stack_pointer(ctx);
    const NEAR: usize = 1 << 20;
    let overflowed = running.hi != 0
        && ((addr >= running.lo && addr < running.hi)
            // The stack pointer ran off the bottom (an unguarded stack has no guard page for
            // the fault to land in).
            || (sp != 0 && sp < running.bottom && running.bottom - sp <= NEAR)
            || (addr < running.bottom && running.bottom - addr <= NEAR && sp < running.bottom + 4096));
    if overflowed || (running.hi != 0 && running.unguarded) {
        raw_write(b"\nevergreen: greenlet #");
        raw_write_num(running.id);
        if !running.name.is_null() {
            raw_write(b" '");
            // SAFETY: the name is an immutable string owned by the running greenlet, which is
            // alive while it runs.
            raw_write(unsafe { std::slice::from_raw_parts(running.name, running.name_len) });
            raw_write(b"'");
        }
        if !overflowed {
            // No guard page to tell an overflow from another fault: say what is likely.
            raw_write(b" faulted (signal ");
            raw_write_num(sig as u64);
            raw_write(b") on its unguarded ");
            raw_write_num(running.size as u64);
            raw_write(
                b"-byte stack (EVERGREEN_GUARD=none, or the fallback once guard pages would \
                  use up vm.max_map_count): most likely this greenlet overflowed its stack, or \
                  a neighbouring greenlet's overflow overwrote it; raise EVERGREEN_STACK_SIZE or \
                  use Builder::stack_size, and restore guard pages to catch it exactly\n",
            );
            // SAFETY: abort is async-signal-safe.
            unsafe { libc::abort() }
        }
        raw_write(b" overflowed its ");
        raw_write_num(running.size as u64);
        raw_write(
            b"-byte stack; raise EVERGREEN_STACK_SIZE or use Builder::stack_size for this greenlet\n",
        );
        // SAFETY: abort is async-signal-safe.
        unsafe { libc::abort() }
    }
    // Not ours: hand over to whoever handled it before us.
    // SAFETY: PREVIOUS* were written once inside `Once` before this handler was installed.
    let prev = unsafe {
        if sig == libc::SIGBUS {
            *ptr::addr_of!(PREVIOUS_BUS)
        } else {
            *ptr::addr_of!(PREVIOUS)
        }
    };
    match prev {
        Some(p) if p.sa_sigaction != libc::SIG_DFL && p.sa_sigaction != libc::SIG_IGN => {
            if p.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous handler was installed with SA_SIGINFO, so it has this
                // signature.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(p.sa_sigaction) };
                f(sig, info, ctx);
            } else {
                // SAFETY: a plain handler installed without SA_SIGINFO.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(p.sa_sigaction) };
                f(sig);
            }
        }
        _ => {
            // Restore the default action; returning re-executes the faulting instruction,
            // which now kills the process with the signal (and a core dump where enabled).
            // SAFETY: resetting a signal disposition to its default.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &sa, ptr::null_mut());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_stacks_are_distinct_aligned_and_recycled() {
        let mut pool = StackPool::new(64 * 1024, 4, GuardMode::Auto);
        let a = pool.get(None).unwrap();
        let b = pool.get(None).unwrap();
        assert_ne!(a.top, b.top);
        assert_eq!(a.top % 4096, 0);
        assert_eq!(a.size(), 64 * 1024);
        assert!(a.guarded());
        let top = b.top;
        pool.put(b);
        let c = pool.get(None).unwrap();
        assert_eq!(c.top, top, "the most recently freed stack is reused first");
        pool.put(a);
        pool.put(c);
        let odd = pool.get(Some(100 * 1024)).unwrap();
        assert_eq!(odd.size(), 100 * 1024);
        assert_ne!(odd.own_mapping_len, 0);
    }

    #[test]
    fn surplus_stacks_are_released_in_a_batch_and_keep_their_canaries() {
        for mode in [GuardMode::Auto, GuardMode::None] {
            let mut pool = StackPool::new(16 * 1024, 0, mode);
            let stacks: Vec<_> = (0..RELEASE_BATCH)
                .map(|_| pool.get(None).unwrap())
                .collect();
            for s in &stacks {
                // SAFETY: the top word of the stack's own memory, which no coroutine uses.
                unsafe { ptr::write_volatile((s.top - 8) as *mut u64, 0xabab) };
            }
            let tops: Vec<usize> = stacks.iter().map(|s| s.top).collect();
            let mut it = stacks.into_iter();
            for s in it.by_ref().take(RELEASE_BATCH - 1) {
                pool.put(s);
            }
            assert_eq!(
                pool.surplus.len(),
                RELEASE_BATCH - 1,
                "not released one by one"
            );
            pool.put(it.next().unwrap());
            assert!(pool.surplus.is_empty(), "a full batch is released");
            assert_eq!(pool.free_len(), RELEASE_BATCH);
            for &top in &tops {
                // SAFETY: as above; released memory reads as zero.
                assert_eq!(unsafe { ptr::read_volatile((top - 8) as *const u64) }, 0);
            }
            let again: Vec<_> = (0..RELEASE_BATCH)
                .map(|_| pool.get(None).unwrap())
                .collect();
            assert!(again.iter().all(|s| s.canary_intact()));
            for s in again {
                pool.put(s);
            }
        }
    }

    #[test]
    fn unguarded_stacks_have_canaries() {
        let mut pool = StackPool::new(16 * 1024, 4, GuardMode::None);
        let s = pool.get(None).unwrap();
        assert!(!s.guarded());
        assert!(s.canary_intact());
        // SAFETY: writing into the stack's own memory, which no coroutine uses.
        unsafe { ptr::write_volatile(s.bottom as *mut u64, 0) };
        assert!(!s.canary_intact());
        pool.put(s);
    }
}
