/*
 * The package's one native worker pool, shared by the LUT kernels (_lut_native) and the layout engine
 * (_layout_native).
 *
 * Why a capsule: the pool lives in its own small extension, tmac_convert._pool_native, which exports this
 * table of functions as the PyCapsule "tmac_convert._pool_native._C_API"; the other extensions import the
 * capsule at module init.  Compiling pool.c into each extension would give each its own threads (two pools
 * competing for the same cores), and merging the extensions would change module names that the Python side
 * and the runtime kit rely on.  The per-tile kernels (lut_core.h) know nothing of the pool: the fork calls
 * them from ggml's own threads.
 *
 * Model: one call at a time (pool_begin takes a process-wide lock, pool_end releases it; other callers wait).
 * Between the two, run() splits [0, n) into nt contiguous ranges (range i is [n*i/nt, n*(i+1)/nt)), thread
 * index i owning range i: thread 0 is the caller, the others persistent workers (started on first need, never
 * per call).  Each thread calls fn(ctx, begin, end, tid) on chunks of its range in order, then on chunks taken
 * from the end of the others' ranges (work stealing): a worker that wakes late or whose core is busy leaves
 * its items to the running threads.  So fn may be called several times per thread index, on any sub-range,
 * and must only use per-thread state through tid; run() returns once every item is computed (a late worker
 * then finds nothing to do).  Scratch memory only grows: a
 * shared workspace (pool_begin) and one buffer per thread index (thread_scratch), reused by later calls.
 * After fork() the child starts with no workers and a fresh lock (pthread_atfork), so a child process that
 * uses the kernels starts its own workers lazily instead of waiting on threads that do not exist there.
 */
#ifndef TMAC_POOL_H
#define TMAC_POOL_H

#include <stddef.h>
#include <stdint.h>

#define TMAC_POOL_CAPSULE "tmac_convert._pool_native._C_API"
#define TMAC_POOL_MAX_THREADS 256
#define TMAC_POOL_API_VERSION 1

typedef void (*pool_range_fn)(void *ctx, int64_t begin, int64_t end, int tid);

typedef struct {
    int version;
    /* Take the pool for one call; returns a shared workspace of at least shared_bytes (64-byte aligned),
     * or NULL when that memory cannot be had (the pool is then not taken). */
    void *(*begin)(size_t shared_bytes);
    /* Split [0, n) over min(nt, n, TMAC_POOL_MAX_THREADS) ranges and run them; returns when all are done.
     * Only between begin and end. */
    void (*run)(int nt, int64_t n, pool_range_fn fn, void *ctx);
    /* Per-thread scratch of at least bytes for thread index tid (64-byte aligned), NULL when out of memory.
     * Call it between begin and end, from the caller before run() (so that failure can be reported). */
    void *(*thread_scratch)(int tid, size_t bytes);
    void (*end)(void);
    /* Workers started so far in this process (the calling thread not counted). */
    int (*workers)(void);
} tmac_pool_api;

/* The implementation's table (pool.c). */
const tmac_pool_api *tmac_pool(void);
/* Times a worker has gone to sleep waiting for a job, since the process started (for tests: back-to-back
 * calls should keep the workers spinning, calls far apart should let them sleep). */
uint64_t tmac_pool_sleeps(void);

#ifdef Py_PYTHON_H
/* For an extension's module init: the pool table from tmac_convert._pool_native, or NULL with ImportError set. */
static inline const tmac_pool_api *tmac_pool_import(void) {
    PyObject *owner = PyImport_ImportModule("tmac_convert._pool_native"); /* PyCapsule_Import would only
                                                                            import the top package */
    if (!owner) return NULL;
    Py_DECREF(owner);
    const tmac_pool_api *api = (const tmac_pool_api *)PyCapsule_Import(TMAC_POOL_CAPSULE, 0);
    if (api && api->version != TMAC_POOL_API_VERSION) {
        PyErr_SetString(PyExc_ImportError, "tmac_convert._pool_native has another API version: rebuild the package");
        return NULL;
    }
    return api;
}
#endif

#endif
