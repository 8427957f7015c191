/*
 * The persistent worker pool (see pool.h for the model).  No Python here.
 *
 * Hand-off: each worker has its own generation counter and condition variable.  run() writes the job,
 * bumps the generation of each participating worker only (idle workers beyond nt are not woken) and
 * signals it.  A worker that has finished its share spins on its counter for a while before it sleeps.
 * How long adapts to the calls: run() measures each worker's idle time (from the end of its last range to
 * the new job) and keeps the longer of its last two idles as the estimate (a kernel call runs the pool twice,
 * tables then tiles, with a short idle in between and a longer one until the next call, and the spin must cover
 * the longer one); the worker spins up to twice that estimate when the estimate is short (back-to-back calls: a
 * decode loop, a benchmark), and only briefly when calls are far apart (a conversion, which calls the pool
 * between other work), so an idle pool does not burn a shared machine's cores.  After a pause the second call
 * finds the workers spinning again.  Why it matters: waking a sleeping thread costs tens to hundreds of microseconds on a virtual
 * machine, as much as a whole GEMV (measured on the EPYC VM, 4096x14336 2-bit: 2 threads were no faster
 * than 1 with a fixed 4000-pause spin, 1.7x faster with spinning through the gaps).
 * Work is claimed in chunks by compare-and-swap on each range's (front, back, run tag) word: owners from the
 * front, the others from the back (see range_t).  Completion is one atomic count of items not yet computed; the
 * caller spins on it for at most SPIN_MAX_NS, then sleeps on a condition variable (a descheduled worker needs
 * the core).  The caller waits for the items only, not for workers that have not woken yet.
 */
#define _POSIX_C_SOURCE 200809L /* posix_memalign under -std=c11 */

#include "pool.h"

#include <stdlib.h>
#include <string.h>
#ifdef _WIN32
#include <malloc.h> /* _aligned_malloc */
#include <windows.h> /* SRWLOCK */
#endif

#define ALIGN 64

static void aligned_free(void *p) {
#ifdef _WIN32
    _aligned_free(p);
#else
    free(p);
#endif
}

static void *aligned_grow(void **buf, size_t *have, size_t want) {
    if (*buf && *have >= want) return *buf;
    aligned_free(*buf);
    *buf = NULL;
    *have = 0;
    want = (want + ALIGN - 1) / ALIGN * ALIGN;
    if (want == 0) want = ALIGN;
#ifdef _WIN32
    *buf = _aligned_malloc(want, ALIGN);
#else
    if (posix_memalign(buf, ALIGN, want) != 0) *buf = NULL;
#endif
    if (*buf) *have = want;
    return *buf;
}

#ifdef _WIN32
/* No pthreads here: the same API runs every range on the calling thread, in order.  Still one call at a time
 * (pool.h's model): the callers release the GIL before pool_begin, and two of them would share the buffers. */

static SRWLOCK call_lock = SRWLOCK_INIT;

static void *shared_buf;
static size_t shared_size;
static void *scratch_buf[TMAC_POOL_MAX_THREADS];
static size_t scratch_size[TMAC_POOL_MAX_THREADS];

static void *pool_begin(size_t bytes) {
    AcquireSRWLockExclusive(&call_lock);
    void *p = aligned_grow(&shared_buf, &shared_size, bytes);
    if (!p) ReleaseSRWLockExclusive(&call_lock);
    return p;
}
static void pool_end(void) { ReleaseSRWLockExclusive(&call_lock); }
static int pool_workers(void) { return 0; }
static void *pool_thread_scratch(int tid, size_t bytes) {
    if (tid < 0 || tid >= TMAC_POOL_MAX_THREADS) return NULL;
    return aligned_grow(&scratch_buf[tid], &scratch_size[tid], bytes);
}
uint64_t tmac_pool_sleeps(void) { return 0; }
static void pool_run(int nt, int64_t n, pool_range_fn fn, void *ctx) {
    if (nt > TMAC_POOL_MAX_THREADS) nt = TMAC_POOL_MAX_THREADS;
    if (nt > n) nt = (int)n;
    if (nt < 1) nt = 1;
    for (int i = 0; i < nt; ++i) fn(ctx, n * i / nt, n * (i + 1) / nt, i);
}

#else

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

/* Spin budgets: at least about one Python call's overhead; at most 1 ms, beyond which calls are far enough
 * apart that a wake-up costs little next to the gap. */
#define SPIN_MIN_NS 20000u
#define SPIN_MAX_NS 1000000u
#define SPIN_CHECK 32 /* pauses between clock reads */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* How long a worker spins for its next job, from its estimated idle time. */
static uint64_t spin_budget(uint64_t idle_est) {
    if (idle_est > SPIN_MAX_NS / 2) return SPIN_MIN_NS; /* calls far apart: spinning would not reach the next */
    return 2 * idle_est > SPIN_MIN_NS ? 2 * idle_est : SPIN_MIN_NS;
}

typedef struct {
    _Atomic uint64_t gen;      /* bumped by run() when this worker has a range */
    _Atomic uint64_t finished; /* now_ns() when this worker last finished a range (0: never) */
    _Atomic uint64_t idle_est; /* estimated time from a range's end to the next job, ns (run() keeps it) */
    _Atomic uint64_t idle_last; /* the last idle run() measured, ns */
    pthread_cond_t cv;
    pthread_t th;
} worker;

static _Atomic uint64_t sleeps; /* times a worker went to sleep waiting for a job */

/* Range i of the current run: items [front, back) not yet claimed, packed with the run's tag.  Its owner
 * (thread index i) claims chunks from the front; a thread that has finished its own range claims chunks from
 * the back of the others' (work stealing).  So a worker that wakes late (tens to hundreds of microseconds on a
 * virtual machine) or whose core is taken by another process loses its share to the threads that are running,
 * while in the usual case every thread computes the same items as under a static partition (the same tiles on
 * the same core, call after call). */
typedef struct {
    _Atomic uint64_t fb;    /* front (16 bits) | back << 16 (16 bits) | the run's tag << 32 (32 bits) */
    _Atomic int64_t chunk;  /* units per claim; relaxed: a value read for another run is never used, since the claim's
                               compare-and-swap then fails on the tag */
    char pad[64 - sizeof(uint64_t) - sizeof(int64_t)];
} range_t;
/* A run of more items claims units of several items.  2^15 units leave the tag 32 bits: a claim could take an
 * item of another run only if its thread stalled between reading a range and its compare-and-swap for 2^32 runs
 * (the tag's wrap), hours of back-to-back calls; with 24 bits it was 2^24 runs, minutes. */
#define UNITS_MAX ((int64_t)1 << 15)
#define TAG_MASK 0xffffffffu
#define PACK(f, b, tag) ((uint64_t)(f) | ((uint64_t)(b) << 16) | ((uint64_t)(tag) << 32))
#define FRONT(v) ((int64_t)((v) & 0xffffu))
#define BACK(v) ((int64_t)(((v) >> 16) & 0xffffu))
#define TAG(v) ((uint64_t)(v) >> 32)

static struct {
    pthread_mutex_t call; /* held from begin to end: one call at a time */
    pthread_mutex_t mu;   /* guards the sleeps and wake-ups */
    pthread_cond_t done;
    _Atomic int64_t undone; /* items of the current run not yet computed */
    _Atomic uint64_t run;   /* the current run: its tag | its range count << 32 (published before its ranges) */
    int64_t n, unit;        /* the current run's items, and items per unit */
    range_t r[TMAC_POOL_MAX_THREADS];
    pool_range_fn fn;
    void *ctx;
    _Atomic int nworkers;  /* worker i serves thread index i + 1 (atomic: pool_workers reads it outside the lock) */
    worker w[TMAC_POOL_MAX_THREADS];
    void *shared;
    size_t shared_size;
    void *scratch[TMAC_POOL_MAX_THREADS];
    size_t scratch_size[TMAC_POOL_MAX_THREADS];
} P = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

static pthread_once_t once = PTHREAD_ONCE_INIT;

/* Compute units [u0, u1) for thread tid and count their items done; the thread that computes the run's last
 * item wakes the caller if it sleeps. */
static void compute(int64_t u0, int64_t u1, int tid) {
    const int64_t i0 = u0 * P.unit, i1 = u1 * P.unit < P.n ? u1 * P.unit : P.n;
    P.fn(P.ctx, i0, i1, tid);
    if (atomic_fetch_sub(&P.undone, i1 - i0) == i1 - i0) {
        pthread_mutex_lock(&P.mu);
        pthread_cond_signal(&P.done);
        pthread_mutex_unlock(&P.mu);
    }
}

/* Thread tid's share of the current run: its own range from the front, then the others' from the back.  A
 * worker that wakes after its run has ended finds either that run's ranges empty or a later run's, which it
 * serves only if it is one of that run's threads (its scratch is sized for it); a claim is a compare-and-swap
 * that also checks the run's tag, so no item of another run is taken (short of the tag's wrap: see UNITS_MAX). */
static void serve(int tid) {
    const uint64_t run = atomic_load(&P.run), tag = run & TAG_MASK;
    const int nt = (int)(run >> 32);
    if (tid >= nt) return;
    for (int d = 0; d < nt; ++d) {
        range_t *r = &P.r[(tid + d) % nt];
        uint64_t v = atomic_load(&r->fb);
        while (TAG(v) == tag && FRONT(v) < BACK(v)) {
            const int64_t f = FRONT(v), b = BACK(v), c = atomic_load_explicit(&r->chunk, memory_order_relaxed);
            /* the owner takes from the front, the others from the back */
            const int64_t lo = d ? (b - c > f ? b - c : f) : f, hi = d ? b : (f + c < b ? f + c : b);
            if (atomic_compare_exchange_weak(&r->fb, &v, d ? PACK(f, lo, tag) : PACK(hi, b, tag))) {
                compute(lo, hi, tid);
                v = atomic_load(&r->fb);
            }
        }
    }
}

static void *worker_main(void *arg) {
    worker *w = (worker *)arg;
    const int tid = (int)(w - P.w) + 1;
    uint64_t seen = 0; /* not a load: run() may have bumped gen before this thread got here */
    uint64_t fin = now_ns();
    for (;;) {
        const uint64_t budget = spin_budget(atomic_load(&w->idle_est));
        while (atomic_load(&w->gen) == seen) {
            for (int i = 0; i < SPIN_CHECK; ++i) CPU_RELAX();
            if (now_ns() - fin > budget) break;
        }
        if (atomic_load(&w->gen) == seen) {
            atomic_fetch_add(&sleeps, 1);
            pthread_mutex_lock(&P.mu);
            while (atomic_load(&w->gen) == seen) pthread_cond_wait(&w->cv, &P.mu);
            pthread_mutex_unlock(&P.mu);
        }
        seen = atomic_load(&w->gen);
        serve(tid);
        fin = now_ns();
        atomic_store(&w->finished, fin); /* the next run() reads it */
    }
    return NULL;
}

/* fork(): the child has only the forking thread.  The prepare handler takes the call lock, so the child
 * never inherits a pool in the middle of a call, and then the sleep lock, so that no worker holds it at the
 * fork (a worker takes it to go to sleep); the child releases both (the forking thread holds them), forgets its
 * (absent) workers and re-creates the completion condition.  Scratch buffers stay: their memory was copied into
 * the child. */
static void atfork_prepare(void) {
    pthread_mutex_lock(&P.call);
    pthread_mutex_lock(&P.mu);
}
static void atfork_parent(void) {
    pthread_mutex_unlock(&P.mu);
    pthread_mutex_unlock(&P.call);
}
static void atfork_child(void) {
    pthread_mutex_unlock(&P.mu);
    pthread_mutex_unlock(&P.call);
    pthread_cond_init(&P.done, NULL);
    P.nworkers = 0;
    atomic_store(&P.undone, 0);
}
static void register_atfork(void) { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); }

/* Start workers until there are want of them (or thread creation fails); with every signal blocked, so
 * that Ctrl-C reaches the interpreter's thread. */
static void grow_workers(int want) {
    if (want <= P.nworkers) return;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    while (P.nworkers < want) {
        worker *w = &P.w[P.nworkers];
        atomic_store(&w->gen, 0);
        atomic_store(&w->finished, 0);
        atomic_store(&w->idle_est, 0);
        atomic_store(&w->idle_last, 0);
        pthread_cond_init(&w->cv, NULL);
        if (pthread_create(&w->th, NULL, worker_main, w) != 0) break;
        pthread_detach(w->th);
        ++P.nworkers;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static void *pool_begin(size_t bytes) {
    pthread_once(&once, register_atfork);
    pthread_mutex_lock(&P.call);
    void *p = aligned_grow(&P.shared, &P.shared_size, bytes);
    if (!p) pthread_mutex_unlock(&P.call);
    return p;
}

static void pool_end(void) { pthread_mutex_unlock(&P.call); }

static int pool_workers(void) { return P.nworkers; }

static void *pool_thread_scratch(int tid, size_t bytes) {
    if (tid < 0 || tid >= TMAC_POOL_MAX_THREADS) return NULL;
    return aligned_grow(&P.scratch[tid], &P.scratch_size[tid], bytes);
}

static void pool_run(int nt, int64_t n, pool_range_fn fn, void *ctx) {
    if (nt > TMAC_POOL_MAX_THREADS) nt = TMAC_POOL_MAX_THREADS;
    if (nt > n) nt = (int)n;
    if (nt < 1) nt = 1;
    if (nt == 1) {
        fn(ctx, 0, n, 0);
        return;
    }
    grow_workers(nt - 1);
    if (nt - 1 > P.nworkers) nt = P.nworkers + 1; /* workers that failed to start: fewer ranges */
    static uint64_t tags;
    const uint64_t tag = ++tags & TAG_MASK;
    /* the run's parameters first, its ranges last: a range holding this tag implies all of them are visible */
    P.fn = fn;
    P.ctx = ctx;
    P.n = n;
    P.unit = (n + UNITS_MAX - 1) / UNITS_MAX;
    const int64_t units = (n + P.unit - 1) / P.unit;
    atomic_store(&P.undone, n);
    atomic_store(&P.run, tag | (uint64_t)nt << 32);
    for (int i = 0; i < nt; ++i) {
        const int64_t f = units * i / nt, b = units * (i + 1) / nt;
        atomic_store_explicit(&P.r[i].chunk, (b - f + 7) / 8, memory_order_relaxed); /* about eight claims per range */
        atomic_store(&P.r[i].fb, PACK(f, b, tag));
    }
    const uint64_t start = now_ns();
    for (int i = 0; i < nt - 1; ++i) {
        worker *w = &P.w[i];
        /* the worker's idle estimate: the longer of its last two idles (see the top of this file).  A decaying
         * maximum, tried before, kept a pause of milliseconds in the estimate for about five calls, each of
         * which then paid a wake-up (tens to hundreds of microseconds on a VM). */
        const uint64_t fin = atomic_load(&w->finished);
        if (fin) {
            const uint64_t idle = start > fin ? start - fin : 0, last = atomic_load(&w->idle_last);
            atomic_store(&w->idle_last, idle);
            atomic_store(&w->idle_est, idle > last ? idle : last);
        }
        atomic_fetch_add(&w->gen, 1);
        pthread_mutex_lock(&P.mu);
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&P.mu);
    }
    serve(0);
    /* every item claimed: wait for those still being computed (not for workers that have not woken yet) */
    const uint64_t mine = now_ns();
    while (atomic_load(&P.undone) > 0) { /* then sleep: a descheduled worker needs the core */
        for (int i = 0; i < SPIN_CHECK; ++i) CPU_RELAX();
        if (now_ns() - mine > SPIN_MAX_NS) break;
    }
    if (atomic_load(&P.undone) > 0) {
        pthread_mutex_lock(&P.mu);
        while (atomic_load(&P.undone) > 0) pthread_cond_wait(&P.done, &P.mu);
        pthread_mutex_unlock(&P.mu);
    }
}

uint64_t tmac_pool_sleeps(void) { return atomic_load(&sleeps); }

#endif

static const tmac_pool_api API = {TMAC_POOL_API_VERSION, pool_begin, pool_run, pool_thread_scratch, pool_end,
                                  pool_workers};

const tmac_pool_api *tmac_pool(void) { return &API; }
