/*
 * tmac_convert._lut_native: T-MAC LUT GEMM/GEMV over Format A blobs, the dequantise-then-FMA
 * baseline, and exact code dot products for verification.
 *
 * This file holds the Python binding, the run-time choice of path (scalar, AVX2, AVX-512, NEON) and the
 * threading; the kernels are in lut_scalar.c, lut_avx2.c, lut_avx512.c and lut_neon.c.
 *
 * Threads: the package's persistent worker pool (pool.h).  The tables of each activation row are built
 * first (rows split over threads; with fewer rows than threads, each row in K slices), then the tiles are
 * split into contiguous ranges, one per thread; every output is computed by one thread with the same
 * sequence of operations whatever the thread count, so results are bit-identical for any number of threads.  Tiles are the outer loop; one activation row
 * (GEMV) goes through the per-tile kernel lut_tile_<isa> (the one T-MAC's fork calls), several rows
 * (GEMM) through lut_tile_rows_<isa>, which reads each weight vector once per block of LUT_ROW_BLOCK
 * rows.  The GIL is released for the whole computation.
 *
 * Arguments are checked again here even though tmac_convert.kernels checks them: a wrong call
 * must raise ValueError, never read out of bounds.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>

#include "lut_core.h"

#include "pool.h"
#include "probe.h"

/* ---------------------------------------------------------------------------------------------
 * paths */

static int have_avx2(void) {
#ifdef TMAC_HAVE_AVX2
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* The AVX-512 kernels use AVX-512 BW (vpshufb, vpmaddubsw on 512 bits) and VL (256-bit EVEX forms the compiler
 * may pick for the AVX2-width float stage); the same test as the kit's kit_cpu_avx512. */
static int have_avx512(void) {
#if defined(TMAC_AVX512_SIMDE) /* a verification build: the AVX-512 kernels run on SIMDe's emulated intrinsics */
    return have_avx2();
#elif defined(TMAC_HAVE_AVX512)
    return have_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

static int have_neon(void) {
#ifdef TMAC_HAVE_NEON
    return 1;
#else
    return 0;
#endif
}

/* The path to run: the requested one if this build and CPU have it, the best one for PATH_AUTO;
 * -1 (with ValueError set) when the requested path is not available. */
static int choose_path(int requested) {
    switch (requested) {
    case PATH_AUTO: return have_avx512() ? PATH_AVX512 : have_avx2() ? PATH_AVX2 : have_neon() ? PATH_NEON : PATH_SCALAR;
    case PATH_SCALAR: return PATH_SCALAR;
    case PATH_AVX2: if (have_avx2()) return PATH_AVX2; break;
    case PATH_AVX512: if (have_avx512()) return PATH_AVX512; break;
    case PATH_NEON: if (have_neon()) return PATH_NEON; break;
    }
    PyErr_Format(PyExc_ValueError, "kernel path %d is not available in this build on this CPU", requested);
    return -1;
}

typedef void (*build_fn)(const float *, int64_t, int64_t, int64_t, int, void *, float *, float *);

/* Each path's functions, one table per path: what a path does not specialise is another path's function (the
 * table build of NEON, the dequantising baseline and the exact reference of AVX-512). */
typedef struct {
    build_fn build;
    lut_tile_fn tile;
    lut_tile_rows_fn tile_rows;
    dq_tile_fn dq;
    ref_fn ref;
} kernel_traits;

static const kernel_traits SCALAR_TRAITS = {lut_build_scalar, lut_tile_scalar, lut_tile_rows_scalar, dq_tile_scalar,
                                            ref_rows_scalar};
#ifdef TMAC_HAVE_AVX2
static const kernel_traits AVX2_TRAITS = {lut_build_avx2, lut_tile_avx2, lut_tile_rows_avx2, dq_tile_avx2, ref_rows_avx2};
#define X86_BASELINE dq_tile_avx2, ref_rows_avx2
#else
#define X86_BASELINE dq_tile_scalar, ref_rows_scalar
#endif
#ifdef TMAC_HAVE_AVX512
static const kernel_traits AVX512_TRAITS = {lut_build_avx512, lut_tile_avx512, lut_tile_rows_avx512, X86_BASELINE};
#endif
#ifdef TMAC_HAVE_NEON
static const kernel_traits NEON_TRAITS = {lut_build_neon, lut_tile_neon, lut_tile_rows_neon, dq_tile_scalar,
                                          ref_rows_scalar};
#endif

/* The functions of a path that resolve_path() accepted. */
static const kernel_traits *traits_for(int path) {
    switch (path) {
#ifdef TMAC_HAVE_AVX2
    case PATH_AVX2: return &AVX2_TRAITS;
#endif
#ifdef TMAC_HAVE_AVX512
    case PATH_AVX512: return &AVX512_TRAITS;
#endif
#ifdef TMAC_HAVE_NEON
    case PATH_NEON: return &NEON_TRAITS;
#endif
    default: return &SCALAR_TRAITS;
    }
}

/* ---------------------------------------------------------------------------------------------
 * threads: the package's worker pool (pool.h), imported from tmac_convert._pool_native at module init.
 * Every call takes the pool with the GIL released (begin ... end): a thread holding the pool never waits
 * for the GIL, so two Python threads calling kernels cannot deadlock; the second waits for the first. */

static const tmac_pool_api *pool;

static int clamp_threads(int nt, int64_t n) {
    if (nt > TMAC_POOL_MAX_THREADS) nt = TMAC_POOL_MAX_THREADS;
    if (nt > n) nt = (int)n;
    return nt < 1 ? 1 : nt;
}

/* Per-thread scratch of bytes for thread indices [0, nt); 0 on success, -1 when out of memory. */
static int thread_scratch(int nt, size_t bytes, void **out) {
    for (int i = 0; i < nt; ++i)
        if (!(out[i] = pool->thread_scratch(i, bytes))) return -1;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * checks shared by the entry points */

static int check_problem(lut_problem *p, Py_ssize_t blob_len, int need_ags) {
    const int64_t b = p->bits;
#define FAIL(msg) do { PyErr_SetString(PyExc_ValueError, "lut: " msg); return -1; } while (0)
    if (b < 1 || b > 4) FAIL("bits must be 1..4");
    if (p->m0 <= 0 || p->m0 % 8 || p->k <= 0) FAIL("M0 must be a positive multiple of 8 and K positive");
    if (p->bm <= 0 || p->bm % 32 || p->bm % (8 * b) || (p->m0 * b) % p->bm) FAIL("bm does not fit M0*bits");
    if (p->kf <= 0 || p->k % (4 * p->kf)) FAIL("K % (4*kfactor) != 0");
    if (p->gs <= 0 || p->k % p->gs) FAIL("group size must divide K");
    if (p->per_tensor && (p->zp || p->gs != p->k)) FAIL("a per-tensor scale has no zeros and group size K");
    if (!p->per_tensor && p->gs % (4 * p->kf)) FAIL("group_size % (4*kfactor) != 0");
    if (need_ags) {
        if (p->ags <= 0 || p->ags % 4 || p->k % p->ags) FAIL("act group size must be a multiple of 4 dividing K");
        p->actk = p->ags / 4 < p->kf ? p->ags / 4 : p->kf;
        if (p->kf % p->actk || (p->ags / 4) % p->actk) FAIL("act groups must align with kfactor chunks");
        if (p->actk > 128) FAIL("more than 128 tables per int16 sub-group could overflow");
        if (p->kf / p->actk > 32) FAIL("more than 32 act sub-groups per kfactor chunk");
        if (p->mode != LUT_INT8 && p->mode != LUT_FLOAT) FAIL("unknown LUT mode");
        if (p->fa && (p->mode != LUT_INT8 || (p->actk & (p->actk - 1)) || p->actk > 32))
            FAIL("fast aggregation needs int8 tables and a power-of-two sub-group of at most 32 tables");
    }
    const int64_t nscales = p->per_tensor ? 1 : p->m0 * (p->k / p->gs) * (p->zp ? 2 : 1);
    if (blob_len < p->m0 * p->k * b / 8 + 4 * nscales) FAIL("blob shorter than its shape needs");
#undef FAIL
    return 0;
}

static int check_len(Py_buffer *buf, int64_t want, const char *what) {
    if (buf->len < want) {
        PyErr_Format(PyExc_ValueError, "lut: %s buffer has %zd bytes, needs %lld", what, buf->len, (long long)want);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * LUT GEMM */

static int64_t lcm64(int64_t a, int64_t b) {
    int64_t x = a, y = b;
    while (y) {
        const int64_t t = x % y;
        x = y;
        y = t;
    }
    return a / x * b;
}

typedef struct {
    const lut_problem *p;
    const uint8_t *w;
    const float *S, *x;
    int64_t n, nscale, nbias, nchunk, table_bytes;
    int64_t slice, nslice; /* the build's K slices per row: nslice of slice activations */
    char *tables;
    float *lscale, *lbias, *sgscale, *vbias, *bsum; /* per row: [nscale], [nbias] x2, [nchunk] x2 */
    lut_row *rows;
    float fa_factor;
    float *y;
    void **scratch; /* per thread: (LUT_ROW_BLOCK + 1) * bm floats */
    build_fn build;
    lut_tile_fn tile;
    lut_tile_rows_fn tile_rows;
} gemm_ctx;

/* One slice [k0, k1) of row r's tables, then what the tile kernels read per sub-group and per chunk of that
 * slice.  Every quantity is local to its act group, sub-group or chunk, so a slice that starts and ends on
 * their common boundaries (gemm_ctx.slice) gives exactly the bytes the whole row would. */
static void build_slice(gemm_ctx *c, int64_t r, int64_t k0, int64_t k1) {
    const lut_problem *p = c->p;
    const int64_t nsub = p->kf / p->actk, bg = 4 * p->actk;
    const int64_t tb = c->table_bytes / (p->k / 4); /* bytes per table */
    float *ls = c->lscale + r * c->nscale + k0 / p->ags, *lb = c->lbias + r * c->nbias + k0 / bg;
    float *sgs = c->sgscale + r * c->nbias + k0 / bg;
    float *vb = c->vbias + r * c->nchunk + k0 / (4 * p->kf), *bs = c->bsum + r * c->nchunk + k0 / (4 * p->kf);
    c->build(c->x + r * p->k + k0, k1 - k0, p->ags, bg, p->mode, c->tables + r * c->table_bytes + (k0 / 4) * tb, ls, lb);
    for (int64_t sg = 0; sg < (k1 - k0) / bg; ++sg) {
        const float sc = ls[sg * bg / p->ags];
        /* fast aggregation: the tree returns about sum/actk: rescale (lut_chunk_biases removes its rounding
         * bias, spec.py) */
        sgs[sg] = p->fa ? sc * (float)p->actk : sc;
    }
    lut_chunk_biases(lb, sgs, p->fa, c->fa_factor, (k1 - k0) / (4 * p->kf), nsub, vb, bs);
}

/* Work items [i0, i1) of the build: item i is slice i % nslice of row i / nslice. */
static void gemm_build(void *arg, int64_t i0, int64_t i1, int tid) {
    gemm_ctx *c = (gemm_ctx *)arg;
    (void)tid;
    for (int64_t i = i0; i < i1; ++i) {
        const int64_t r = i / c->nslice, sl = i % c->nslice;
        build_slice(c, r, sl * c->slice, (sl + 1) * c->slice);
        if (sl == 0) {
            c->rows[r].table = c->tables + r * c->table_bytes;
            c->rows[r].sgscale = c->sgscale + r * c->nbias;
            c->rows[r].vbias = c->vbias + r * c->nchunk;
            c->rows[r].bsum = c->bsum + r * c->nchunk;
        }
    }
}

/* Tiles [t0, t1): one row (GEMV) goes through the per-tile kernel the fork also runs; several rows go
 * through the row-block kernel, LUT_ROW_BLOCK rows per pass over the tile's weights. */
static void gemm_tiles(void *arg, int64_t t0, int64_t t1, int tid) {
    gemm_ctx *c = (gemm_ctx *)arg;
    const lut_problem *p = c->p;
    const int64_t P = p->bm / p->bits, tile_bytes = p->k * p->bm / 8;
    const int64_t tile_scales = p->per_tensor ? 0 : (p->k / p->gs) * P * (p->zp ? 2 : 1);
    float *C = (float *)c->scratch[tid];
    for (int64_t t = t0; t < t1; ++t) {
        const uint8_t *w = c->w + t * tile_bytes;
        const float *S = c->S + t * tile_scales;
        if (c->n == 1) {
            c->tile(p, w, S, &c->rows[0], C, c->y + t * P);
            continue;
        }
        for (int64_t r0 = 0; r0 < c->n; r0 += LUT_ROW_BLOCK) {
            const int64_t nr = c->n - r0 < LUT_ROW_BLOCK ? c->n - r0 : LUT_ROW_BLOCK;
            c->tile_rows(p, w, S, c->rows + r0, nr, C, c->y + r0 * p->m0 + t * P, p->m0);
        }
    }
}

static PyObject *py_gemm(PyObject *self, PyObject *args) {
    Py_buffer blob, x, y;
    lut_problem p;
    long long m0, k, gs, bm, kf, ags;
    int bits, zp, per_tensor, mode, fa, path, threads;
    double fa_factor;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*w*LLiLiiLLLiidii", &blob, &x, &y, &m0, &k, &bits, &gs, &zp, &per_tensor, &bm,
                          &kf, &ags, &mode, &fa, &fa_factor, &path, &threads))
        return NULL;
    PyObject *result = NULL;
    memset(&p, 0, sizeof p);
    p.m0 = m0, p.k = k, p.gs = gs, p.bm = bm, p.kf = kf, p.ags = ags;
    p.bits = bits, p.zp = zp != 0, p.per_tensor = per_tensor != 0, p.mode = mode, p.fa = fa != 0;
    const int chosen = choose_path(path);
    if (chosen < 0 || check_problem(&p, blob.len, 1) < 0) goto done;
    const int64_t n = x.len / (4 * p.k);
    if (n < 1 || x.len != n * 4 * p.k) {
        PyErr_SetString(PyExc_ValueError, "lut: x must hold N rows of K float32");
        goto done;
    }
    if (check_len(&y, n * p.m0 * 4, "y") < 0) goto done;

    gemm_ctx c;
    void *scratch[TMAC_POOL_MAX_THREADS];
    memset(&c, 0, sizeof c);
    c.p = &p;
    c.w = (const uint8_t *)blob.buf;
    c.S = (const float *)((const uint8_t *)blob.buf + p.m0 * p.k * p.bits / 8);
    c.x = (const float *)x.buf;
    c.y = (float *)y.buf;
    c.n = n;
    c.nscale = p.k / p.ags;
    c.nbias = p.k / (4 * p.actk);
    c.nchunk = p.k / (4 * p.kf);
    c.table_bytes = (p.k / 4) * 16 * (p.mode == LUT_FLOAT ? 4 : 1);
    c.fa_factor = (float)fa_factor;
    const kernel_traits *kt = traits_for(chosen);
    c.build = kt->build;
    c.tile = kt->tile;
    c.tile_rows = kt->tile_rows;
    c.scratch = scratch;
    const int64_t ntiles = p.m0 * p.bits / p.bm;
    const int nt = clamp_threads(threads, ntiles);
    /* Fewer rows than threads (a GEMV): each row's tables are built in K slices, one per thread, on boundaries
     * of act groups and kfactor chunks (the unit), so that the build is not one thread's serial work. */
    {
        const int64_t unit = lcm64(p.ags, 4 * p.kf), units = p.k / unit;
        int64_t want = n < nt ? (nt + n - 1) / n : 1;
        if (want > units) want = units;
        while (units % want) --want; /* equal slices */
        c.nslice = want;
        c.slice = p.k / want;
    }
    /* the pool's shared workspace: tables, then per row scales, biases, sub-group scales and biases, the chunks'
     * bias sums (two kinds), then the row descriptors */
    const size_t nfl = (size_t)n * (c.nscale + 2 * c.nbias + 2 * c.nchunk);
    const size_t table_total = ((size_t)n * c.table_bytes + 63) / 64 * 64;
    const size_t fl_total = (nfl * sizeof(float) + 63) / 64 * 64;
    int ok = 0;
    Py_BEGIN_ALLOW_THREADS
    char *mem = (char *)pool->begin(table_total + fl_total + (size_t)n * sizeof(lut_row));
    if (mem) {
        if (thread_scratch(nt, (size_t)(LUT_ROW_BLOCK + 1) * p.bm * sizeof(float), scratch) == 0) {
            c.tables = mem;
            float *f = (float *)(mem + table_total);
            c.lscale = f, f += n * c.nscale;
            c.lbias = f, f += n * c.nbias;
            c.sgscale = f, f += n * c.nbias;
            c.vbias = f, f += n * c.nchunk;
            c.bsum = f;
            c.rows = (lut_row *)(mem + table_total + fl_total);
            pool->run(threads, n * c.nslice, gemm_build, &c);
            pool->run(nt, ntiles, gemm_tiles, &c);
            ok = 1;
        }
        pool->end();
    }
    Py_END_ALLOW_THREADS
    if (!ok) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&blob);
    PyBuffer_Release(&x);
    PyBuffer_Release(&y);
    return result;
}

/* build_lut(x, table, lscale, lbias, K, ags, bias_group, mode, path): the tables of N rows, for tests. */
static PyObject *py_build_lut(PyObject *self, PyObject *args) {
    Py_buffer x, table, ls, lb;
    long long k, ags, bias_group;
    int mode, path;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*w*w*w*LLLii", &x, &table, &ls, &lb, &k, &ags, &bias_group, &mode, &path))
        return NULL;
    PyObject *result = NULL;
    const int chosen = choose_path(path);
    if (chosen < 0) goto done;
    if (k <= 0 || ags <= 0 || ags % 4 || k % ags || bias_group <= 0 || bias_group % 4 || k % bias_group ||
        (mode != LUT_INT8 && mode != LUT_FLOAT)) {
        PyErr_SetString(PyExc_ValueError, "lut: bad K, act group, bias group or mode");
        goto done;
    }
    const int64_t n = x.len / (4 * k), tb = (k / 4) * 16 * (mode == LUT_FLOAT ? 4 : 1);
    if (n < 1 || x.len != n * 4 * k || check_len(&table, n * tb, "table") < 0 ||
        check_len(&ls, n * (k / ags) * 4, "scale") < 0 || check_len(&lb, n * (k / bias_group) * 4, "bias") < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "lut: x must hold N rows of K float32");
        goto done;
    }
    const build_fn build = traits_for(chosen)->build;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t r = 0; r < n; ++r)
        build((const float *)x.buf + r * k, k, ags, bias_group, mode, (char *)table.buf + r * tb,
              (float *)ls.buf + r * (k / ags), (float *)lb.buf + r * (k / bias_group));
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&x);
    PyBuffer_Release(&table);
    PyBuffer_Release(&ls);
    PyBuffer_Release(&lb);
    return result;
}

/* ---------------------------------------------------------------------------------------------
 * dequantise-then-FMA baseline */

typedef struct {
    const lut_problem *p;
    const uint8_t *w;
    const float *S, *x;
    int64_t n;
    float *y;
    void **scratch; /* per thread: scratch_per_thread floats */
    int64_t scratch_per_thread;
    dq_tile_fn tile;
} dq_ctx;

static void dq_tiles(void *arg, int64_t t0, int64_t t1, int tid) {
    dq_ctx *c = (dq_ctx *)arg;
    const lut_problem *p = c->p;
    const int64_t P = p->bm / p->bits, tile_bytes = p->k * p->bm / 8;
    const int64_t tile_scales = p->per_tensor ? 0 : (p->k / p->gs) * P * (p->zp ? 2 : 1);
    for (int64_t t = t0; t < t1; ++t)
        c->tile(p, c->w + t * tile_bytes, c->S + t * tile_scales, c->x, c->n, c->y + t * P, p->m0,
                (float *)c->scratch[tid]);
}

static PyObject *py_dequant_gemm(PyObject *self, PyObject *args) {
    Py_buffer blob, x, y;
    lut_problem p;
    long long m0, k, gs, bm, kf;
    int bits, zp, per_tensor, path, threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*w*LLiLiiLLii", &blob, &x, &y, &m0, &k, &bits, &gs, &zp, &per_tensor, &bm, &kf,
                          &path, &threads))
        return NULL;
    PyObject *result = NULL;
    void *scratch[TMAC_POOL_MAX_THREADS];
    memset(&p, 0, sizeof p);
    p.m0 = m0, p.k = k, p.gs = gs, p.bm = bm, p.kf = kf, p.bits = bits, p.zp = zp != 0, p.per_tensor = per_tensor != 0;
    const int chosen = choose_path(path);
    if (chosen < 0 || check_problem(&p, blob.len, 0) < 0) goto done;
    const int64_t n = x.len / (4 * p.k);
    if (n < 1 || x.len != n * 4 * p.k) {
        PyErr_SetString(PyExc_ValueError, "lut: x must hold N rows of K float32");
        goto done;
    }
    if (check_len(&y, n * p.m0 * 4, "y") < 0) goto done;
    const int64_t ntiles = p.m0 * p.bits / p.bm;
    const int nt = clamp_threads(threads, ntiles);
    dq_ctx c = {&p, (const uint8_t *)blob.buf, NULL, (const float *)x.buf, n, (float *)y.buf, scratch,
                4 * p.kf * 8 + 8 * n, traits_for(chosen)->dq};
    c.S = (const float *)((const uint8_t *)blob.buf + p.m0 * p.k * p.bits / 8);
    int ok = 0;
    Py_BEGIN_ALLOW_THREADS
    if (pool->begin(0)) {
        if (thread_scratch(nt, (size_t)c.scratch_per_thread * sizeof(float), scratch) == 0) {
            pool->run(nt, ntiles, dq_tiles, &c);
            ok = 1;
        }
        pool->end();
    }
    Py_END_ALLOW_THREADS
    if (!ok) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&blob);
    PyBuffer_Release(&x);
    PyBuffer_Release(&y);
    return result;
}

/* ---------------------------------------------------------------------------------------------
 * verification reference */

typedef struct {
    const uint8_t *codes;
    const int16_t *a;
    int64_t m0, k, n, gs;
    double h;
    const double *s, *z, *A;
    double *y;
    ref_fn fn;
} ref_ctx;

static void ref_range(void *arg, int64_t r0, int64_t r1, int tid) {
    ref_ctx *c = (ref_ctx *)arg;
    const int64_t G = c->k / c->gs;
    (void)tid;
    c->fn(c->codes + r0 * c->k, r1 - r0, c->k, c->a, c->n, c->gs, c->h, c->s + r0 * G, c->z ? c->z + r0 * G : NULL,
          c->A, c->y + r0, c->m0);
}

/* reference(codes, a, scales, zeros_or_None, A, y, M0, K, N, gs, bits, path, threads) */
static PyObject *py_reference(PyObject *self, PyObject *args) {
    Py_buffer codes, a, s, A, y, z;
    PyObject *zobj;
    long long m0, k, n, gs;
    int bits, path, threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*Oy*w*LLLLiii", &codes, &a, &s, &zobj, &A, &y, &m0, &k, &n, &gs, &bits, &path,
                          &threads))
        return NULL;
    PyObject *result = NULL;
    int have_z = zobj != Py_None;
    if (have_z && PyObject_GetBuffer(zobj, &z, PyBUF_SIMPLE) < 0) {
        have_z = -1;
        goto done;
    }
    const int chosen = choose_path(path);
    if (chosen < 0) goto done;
    if (m0 < 1 || k < 1 || n < 1 || gs < 1 || k % gs || bits < 1 || bits > 4) {
        PyErr_SetString(PyExc_ValueError, "lut: bad M0, K, N, group size or bits");
        goto done;
    }
    const int64_t G = k / gs;
    if (check_len(&codes, m0 * k, "codes") < 0 || check_len(&a, n * k * 2, "a") < 0 ||
        check_len(&s, m0 * G * 8, "scales") < 0 || (have_z && check_len(&z, m0 * G * 8, "zeros") < 0) ||
        check_len(&A, G * n * 8, "A") < 0 || check_len(&y, n * m0 * 8, "y") < 0)
        goto done;
    ref_ctx c = {(const uint8_t *)codes.buf, (const int16_t *)a.buf, m0, k, n, gs, (double)(1 << (bits - 1)),
                 (const double *)s.buf, have_z ? (const double *)z.buf : NULL, (const double *)A.buf,
                 (double *)y.buf, traits_for(chosen)->ref};
    Py_BEGIN_ALLOW_THREADS
    if (pool->begin(0)) { /* begin(0) only fails if no 64 bytes can be had; then the error below */
        pool->run(threads, m0, ref_range, &c);
        pool->end();
    } else {
        c.fn = NULL;
    }
    Py_END_ALLOW_THREADS
    if (!c.fn) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    if (have_z == 1) PyBuffer_Release(&z);
    PyBuffer_Release(&codes);
    PyBuffer_Release(&a);
    PyBuffer_Release(&s);
    PyBuffer_Release(&A);
    PyBuffer_Release(&y);
    return result;
}

/* ---------------------------------------------------------------------------------------------
 * read probe (benchmarks): the buffer split into 4 KiB pages over the pool, like the kernels' tiles */

typedef struct {
    const uint8_t *p;
    int64_t len;
    uint64_t sum[TMAC_POOL_MAX_THREADS];
} probe_ctx;

static void probe_range(void *arg, int64_t a, int64_t b, int tid) {
    probe_ctx *c = (probe_ctx *)arg;
    const int64_t end = b * 4096 < c->len ? b * 4096 : c->len;
    c->sum[tid] += read_probe(c->p + a * 4096, end - a * 4096);
}

static PyObject *py_read_probe(PyObject *self, PyObject *args) {
    Py_buffer buf;
    int threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*i", &buf, &threads)) return NULL;
    probe_ctx *c = (probe_ctx *)PyMem_Calloc(1, sizeof(probe_ctx));
    if (!c) {
        PyBuffer_Release(&buf);
        return PyErr_NoMemory();
    }
    c->p = (const uint8_t *)buf.buf;
    c->len = buf.len;
    uint64_t total = 0;
    int ok = 0;
    Py_BEGIN_ALLOW_THREADS
    if (pool->begin(0)) {
        pool->run(threads, (c->len + 4095) / 4096, probe_range, c);
        pool->end();
        for (int i = 0; i < TMAC_POOL_MAX_THREADS; ++i) total += c->sum[i];
        ok = 1;
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(c);
    PyBuffer_Release(&buf);
    if (!ok) return PyErr_NoMemory();
    return PyLong_FromUnsignedLongLong(total);
}

static PyObject *py_paths(PyObject *self, PyObject *noargs) {
    (void)self, (void)noargs;
    PyObject *l = PyList_New(0);
    if (!l) return NULL;
    const char *names[4] = {"scalar", have_avx2() ? "avx2" : NULL, have_avx512() ? "avx512" : NULL,
                            have_neon() ? "neon" : NULL};
    for (int i = 0; i < 4; ++i) {
        if (!names[i]) continue;
        PyObject *s = PyUnicode_FromString(names[i]);
        if (!s || PyList_Append(l, s) < 0) {
            Py_XDECREF(s);
            Py_DECREF(l);
            return NULL;
        }
        Py_DECREF(s);
    }
    return l;
}

static PyMethodDef methods[] = {
    {"gemm", py_gemm, METH_VARARGS,
     "gemm(blob, x, y, M0, K, bits, gs, zp, per_tensor, bm, kfactor, ags, mode, fa, fa_factor, path, threads): "
     "y[N, M0] float32 = LUT GEMM of x[N, K] float32 with the Format A blob."},
    {"build_lut", py_build_lut, METH_VARARGS,
     "build_lut(x, table, lscale, lbias, K, ags, bias_group, mode, path): tables of the rows of x."},
    {"dequant_gemm", py_dequant_gemm, METH_VARARGS,
     "dequant_gemm(blob, x, y, M0, K, bits, gs, zp, per_tensor, bm, kfactor, path, threads): baseline "
     "dequantise-then-FMA product over the same blob."},
    {"reference", py_reference, METH_VARARGS,
     "reference(codes, a, scales, zeros, A, y, M0, K, N, gs, bits, path, threads): y float64 [N, M0] = the "
     "verification reference from uint8 codes [M0, K], int16 a [N, K], float64 scales/zeros [M0, K/gs] (zeros "
     "may be None) and float64 A [K/gs, N] = group sums of a; exact integer dots, float64 group sums."},
    {"read_probe", py_read_probe, METH_VARARGS,
     "read_probe(buffer, threads) -> int: read every byte of the buffer (AVX2 loads, four accumulators) split "
     "over the worker pool, returning their sum; benchmarks time it as the streaming-read bandwidth."},
    {"paths", py_paths, METH_NOARGS, "paths() -> the kernel paths this build can run on this CPU."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_lut_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__lut_native(void) {
    pool = tmac_pool_import();
    if (!pool) return NULL;
    return PyModule_Create(&module);
}
