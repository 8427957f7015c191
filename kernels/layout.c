/*
 * Native T-MAC Format A weight layout (pack and unpack), see docs section 1.2.
 *
 * For bit-expanded row r and LUT group j (4 activations), the 4-bit code is
 *   code = sum_t ((w[m0, 4j+t] >> i) & 1) << t,   with r = (m0/8)*8b + i*8 + m0%8,
 * and it lands in the low (h=0) or high (h=1) nibble of
 *   byte = (((tile*KO + ko)*(bm/32) + B)*kfactor + ki)*16 + l
 * where tile = r/bm, rr = r%bm, B = rr/32, h = (rr%32)/16, l = rr%16, ko = j/kfactor, ki = j%kfactor.
 *
 * Both functions work on a range of tiles, split over the package's worker pool (pool.h, imported
 * from tmac_convert._pool_native) when threads > 1; tiles own disjoint output bytes (pack) and
 * disjoint weight rows (unpack), so the bytes do not depend on the thread count.  The GIL is
 * released while they run.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"

static const tmac_pool_api *pool;

/* Gather bit 0 of each of the 4 bytes of x into a nibble (byte t -> bit t). */
static inline uint32_t gather4(uint32_t x) {
    return ((x & 0x01010101u) * 0x00204081u) >> 21 & 0xFu;
}

/* Spread the 4 bits of a nibble to bit 0 of 4 bytes (bit t -> byte t). */
static inline uint32_t spread4(uint32_t nib) {
    return (nib * 0x00204081u) & 0x01010101u;
}

static inline void row_of(int64_t r, int bits, int64_t *m0, int *plane) {
    int64_t blk = r / (8 * bits), rem = r % (8 * bits);
    *plane = (int)(rem / 8);
    *m0 = blk * 8 + rem % 8;
}

/* Little-endian 4-byte load; codes rows are byte arrays so alignment is not guaranteed. */
static inline uint32_t load4(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint32_t pack_tiles_scalar(const uint8_t *w, uint8_t *out, int64_t K, int bits, int64_t bm,
                       int64_t kfactor, int64_t t0, int64_t t1) {
    uint32_t seen = 0;
    const int64_t KO = K / (4 * kfactor);
    const int64_t nB = bm / 32;
    const int64_t tile_bytes = K * bm / 8;
    const int64_t ko_stride = nB * kfactor * 16;
    for (int64_t t = t0; t < t1; ++t) {
        for (int64_t B = 0; B < nB; ++B) {
            for (int64_t l = 0; l < 16; ++l) {
                int64_t ma, mb;
                int ia, ib;
                row_of(t * bm + B * 32 + l, bits, &ma, &ia);
                row_of(t * bm + B * 32 + 16 + l, bits, &mb, &ib);
                const uint8_t *wa = w + ma * K;
                const uint8_t *wb = w + mb * K;
                uint8_t *o = out + t * tile_bytes + B * kfactor * 16 + l;
                for (int64_t ko = 0; ko < KO; ++ko) {
                    uint8_t *oo = o + ko * ko_stride;
                    const uint8_t *pa = wa + ko * kfactor * 4;
                    const uint8_t *pb = wb + ko * kfactor * 4;
                    for (int64_t ki = 0; ki < kfactor; ++ki) {
                        uint32_t va = load4(pa + 4 * ki), vb = load4(pb + 4 * ki);
                        seen |= va | vb;
                        uint32_t lo = gather4(va >> ia);
                        uint32_t hi = gather4(vb >> ib);
                        oo[ki * 16] = (uint8_t)(lo | (hi << 4));
                    }
                }
            }
        }
    }
    return (seen | seen >> 8 | seen >> 16 | seen >> 24) & 0xFFu;
}

#if defined(__SSE2__)
#include <emmintrin.h>
#define HAVE_SIMD_PACK 1

/* Nibbles of one row for n (a multiple of 4, at most 16) consecutive LUT groups: nibble g holds
   bit `plane` of codes 4g..4g+3.  movemask collects bit 7 of every byte, so shifting bit `plane`
   up to bit 7 gathers one nibble per 4 codes. */
static inline uint64_t row_nibbles(const uint8_t *p, int n, __m128i shift, __m128i *seen) {
    uint64_t r = 0;
    for (int q = 0; q < n / 4; ++q) {
        __m128i x = _mm_loadu_si128((const __m128i *)(p + 16 * q));
        *seen = _mm_or_si128(*seen, x);
        __m128i v = _mm_sll_epi16(x, shift);
        r |= (uint64_t)(unsigned)(_mm_movemask_epi8(v) & 0xFFFF) << (16 * q);
    }
    return r;
}

/* byte g = nibble g of a | nibble g of b << 4, for g = 0..15. */
static inline __m128i merge_nibbles(uint64_t a, uint64_t b) {
    const __m128i lo4 = _mm_set1_epi8(0x0F);
    __m128i va = _mm_cvtsi64_si128((long long)a), vb = _mm_cvtsi64_si128((long long)b);
    __m128i ea = _mm_unpacklo_epi8(_mm_and_si128(va, lo4), _mm_and_si128(_mm_srli_epi16(va, 4), lo4));
    __m128i eb = _mm_unpacklo_epi8(_mm_and_si128(vb, lo4), _mm_and_si128(_mm_srli_epi16(vb, 4), lo4));
    return _mm_or_si128(ea, _mm_slli_epi16(eb, 4)); /* eb bytes are < 16: no carry across bytes */
}

/* Four rounds of pairwise unpacking (register i with i+8, widths 1, 2, 4, 8 bytes) transpose a
   16x16 byte matrix whose rows were loaded in bit-reversed order: afterwards r[c] is column c. */
static inline void transpose16_bitrev(__m128i r[16]) {
    __m128i t[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm_unpacklo_epi8(r[i], r[i + 8]);
        t[2 * i + 1] = _mm_unpackhi_epi8(r[i], r[i + 8]);
    }
    for (int i = 0; i < 8; ++i) {
        r[2 * i] = _mm_unpacklo_epi16(t[i], t[i + 8]);
        r[2 * i + 1] = _mm_unpackhi_epi16(t[i], t[i + 8]);
    }
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm_unpacklo_epi32(r[i], r[i + 8]);
        t[2 * i + 1] = _mm_unpackhi_epi32(r[i], r[i + 8]);
    }
    for (int i = 0; i < 8; ++i) {
        r[2 * i] = _mm_unpacklo_epi64(t[i], t[i + 8]);
        r[2 * i + 1] = _mm_unpackhi_epi64(t[i], t[i + 8]);
    }
}

static const int BITREV4[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};

/* Same bytes as pack_tiles_scalar, for kfactor % 4 == 0: per 32-row block and K step, the 16
   output rows (l) x kfactor bytes (ki) are built row by row, then transposed in registers into the
   kfactor x 16 order the kernel reads. */
static uint32_t pack_tiles_sse2(const uint8_t *w, uint8_t *out, int64_t K, int bits, int64_t bm,
                            int64_t kfactor, int64_t t0, int64_t t1) {
    __m128i seen = _mm_setzero_si128();
    const int64_t KO = K / (4 * kfactor);
    const int64_t nB = bm / 32;
    const int64_t tile_bytes = K * bm / 8;
    const int64_t ko_stride = nB * kfactor * 16;
    for (int64_t t = t0; t < t1; ++t) {
        for (int64_t B = 0; B < nB; ++B) {
            const uint8_t *wa[16], *wb[16];
            __m128i sa[16], sb[16];
            for (int l = 0; l < 16; ++l) {
                int64_t ma, mb;
                int ia, ib;
                row_of(t * bm + B * 32 + l, bits, &ma, &ia);
                row_of(t * bm + B * 32 + 16 + l, bits, &mb, &ib);
                wa[l] = w + ma * K;
                wb[l] = w + mb * K;
                sa[l] = _mm_cvtsi32_si128(7 - ia);
                sb[l] = _mm_cvtsi32_si128(7 - ib);
            }
            uint8_t *o = out + t * tile_bytes + B * kfactor * 16;
            for (int64_t ko = 0; ko < KO; ++ko) {
                for (int64_t c = 0; c < kfactor; c += 16) {
                    const int n = (int)(kfactor - c < 16 ? kfactor - c : 16);
                    const int64_t off = (ko * kfactor + c) * 4;
                    __m128i r[16];
                    for (int l = 0; l < 16; ++l)
                        r[BITREV4[l]] = merge_nibbles(row_nibbles(wa[l] + off, n, sa[l], &seen),
                                                      row_nibbles(wb[l] + off, n, sb[l], &seen));
                    transpose16_bitrev(r);
                    uint8_t *oo = o + ko * ko_stride + c * 16;
                    for (int ki = 0; ki < n; ++ki) _mm_storeu_si128((__m128i *)(oo + 16 * ki), r[ki]);
                }
            }
        }
    }
    uint8_t b[16];
    _mm_storeu_si128((__m128i *)b, seen);
    uint32_t any = 0;
    for (int i = 0; i < 16; ++i) any |= b[i];
    return any;
}
#endif

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_AVX2_PACK 1
#define AVX2 __attribute__((target("avx2")))

/* row_nibbles with 32 codes per load (n LUT groups, n a multiple of 4 and at most 16; n == 0 reads
   nothing): bit b of the result is bit `plane` of code b. */
static inline AVX2 uint64_t row_nibbles_avx2(const uint8_t *p, int n, __m128i shift, __m256i *seen,
                                             __m128i *seen16) {
    uint64_t r = 0;
    int off = 0;
    for (; off + 32 <= 4 * n; off += 32) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(p + off));
        *seen = _mm256_or_si256(*seen, x);
        r |= (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_sll_epi16(x, shift)) << off;
    }
    if (off < 4 * n) {
        __m128i x = _mm_loadu_si128((const __m128i *)(p + off));
        *seen16 = _mm_or_si128(*seen16, x);
        r |= (uint64_t)(unsigned)(_mm_movemask_epi8(_mm_sll_epi16(x, shift)) & 0xFFFF) << off;
    }
    return r;
}

/* merge_nibbles for two chunks at once: the low lane from (a0, b0), the high lane from (a1, b1). */
static inline AVX2 __m256i merge_nibbles2(uint64_t a0, uint64_t b0, uint64_t a1, uint64_t b1) {
    const __m256i lo4 = _mm256_set1_epi8(0x0F);
    const __m256i va = _mm256_set_epi64x(0, (long long)a1, 0, (long long)a0);
    const __m256i vb = _mm256_set_epi64x(0, (long long)b1, 0, (long long)b0);
    const __m256i ea = _mm256_unpacklo_epi8(_mm256_and_si256(va, lo4), _mm256_and_si256(_mm256_srli_epi16(va, 4), lo4));
    const __m256i eb = _mm256_unpacklo_epi8(_mm256_and_si256(vb, lo4), _mm256_and_si256(_mm256_srli_epi16(vb, 4), lo4));
    return _mm256_or_si256(ea, _mm256_slli_epi16(eb, 4));
}

/* transpose16_bitrev in each 128-bit lane: two 16x16 byte transposes for the instructions of one. */
static inline AVX2 void transpose16x2_bitrev(__m256i r[16]) {
    __m256i t[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm256_unpacklo_epi8(r[i], r[i + 8]);
        t[2 * i + 1] = _mm256_unpackhi_epi8(r[i], r[i + 8]);
    }
    for (int i = 0; i < 8; ++i) {
        r[2 * i] = _mm256_unpacklo_epi16(t[i], t[i + 8]);
        r[2 * i + 1] = _mm256_unpackhi_epi16(t[i], t[i + 8]);
    }
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm256_unpacklo_epi32(r[i], r[i + 8]);
        t[2 * i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 8]);
    }
    for (int i = 0; i < 8; ++i) {
        r[2 * i] = _mm256_unpacklo_epi64(t[i], t[i + 8]);
        r[2 * i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 8]);
    }
}

/* Same bytes as pack_tiles_sse2 (kfactor % 4 == 0): the chunks of up to 16 LUT groups of one 32-row
   block are taken two at a time, one per 128-bit lane, with 32 codes per load. */
static AVX2 uint32_t pack_tiles_avx2(const uint8_t *w, uint8_t *out, int64_t K, int bits, int64_t bm,
                                     int64_t kfactor, int64_t t0, int64_t t1) {
    __m256i seen = _mm256_setzero_si256();
    __m128i seen16 = _mm_setzero_si128();
    const int64_t KO = K / (4 * kfactor);
    const int64_t nB = bm / 32;
    const int64_t tile_bytes = K * bm / 8;
    const int64_t ko_stride = nB * kfactor * 16;
    const int64_t per_ko = (kfactor + 15) / 16; /* chunks per kfactor step */
    const int64_t nchunks = KO * per_ko;
    for (int64_t t = t0; t < t1; ++t) {
        for (int64_t B = 0; B < nB; ++B) {
            const uint8_t *wa[16], *wb[16];
            __m128i sa[16], sb[16];
            for (int l = 0; l < 16; ++l) {
                int64_t ma, mb;
                int ia, ib;
                row_of(t * bm + B * 32 + l, bits, &ma, &ia);
                row_of(t * bm + B * 32 + 16 + l, bits, &mb, &ib);
                wa[l] = w + ma * K;
                wb[l] = w + mb * K;
                sa[l] = _mm_cvtsi32_si128(7 - ia);
                sb[l] = _mm_cvtsi32_si128(7 - ib);
            }
            uint8_t *o = out + t * tile_bytes + B * kfactor * 16;
            for (int64_t u = 0; u < nchunks; u += 2) {
                /* chunk u in the low lane, u + 1 (if any) in the high lane */
                int64_t ko0 = u / per_ko, c0 = (u % per_ko) * 16, ko1 = 0, c1 = 0;
                const int n0 = (int)(kfactor - c0 < 16 ? kfactor - c0 : 16);
                int n1 = 0;
                if (u + 1 < nchunks) {
                    ko1 = (u + 1) / per_ko, c1 = ((u + 1) % per_ko) * 16;
                    n1 = (int)(kfactor - c1 < 16 ? kfactor - c1 : 16);
                }
                const int64_t off0 = (ko0 * kfactor + c0) * 4, off1 = (ko1 * kfactor + c1) * 4;
                __m256i r[16];
                for (int l = 0; l < 16; ++l)
                    r[BITREV4[l]] = merge_nibbles2(row_nibbles_avx2(wa[l] + off0, n0, sa[l], &seen, &seen16),
                                                   row_nibbles_avx2(wb[l] + off0, n0, sb[l], &seen, &seen16),
                                                   row_nibbles_avx2(wa[l] + off1, n1, sa[l], &seen, &seen16),
                                                   row_nibbles_avx2(wb[l] + off1, n1, sb[l], &seen, &seen16));
                transpose16x2_bitrev(r);
                uint8_t *oo0 = o + ko0 * ko_stride + c0 * 16, *oo1 = o + ko1 * ko_stride + c1 * 16;
                for (int ki = 0; ki < n0; ++ki) _mm_storeu_si128((__m128i *)(oo0 + 16 * ki), _mm256_castsi256_si128(r[ki]));
                for (int ki = 0; ki < n1; ++ki) _mm_storeu_si128((__m128i *)(oo1 + 16 * ki), _mm256_extracti128_si256(r[ki], 1));
            }
        }
    }
    const __m128i s = _mm_or_si128(_mm_or_si128(_mm256_castsi256_si128(seen), _mm256_extracti128_si256(seen, 1)), seen16);
    uint8_t b[16];
    _mm_storeu_si128((__m128i *)b, s);
    uint32_t any = 0;
    for (int i = 0; i < 16; ++i) any |= b[i];
    return any;
}

static int have_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}
#endif

/* The pack paths this build and CPU have, best last; set_path() picks one (the tests compare them). */
enum { PACK_SCALAR = 0, PACK_SSE2 = 1, PACK_AVX2 = 2 };
static const char *const PACK_NAMES[] = {"scalar", "sse2", "avx2"};
static int pack_available[3] = {1, 0, 0};
static int pack_path = PACK_SCALAR;

static void init_pack_paths(void) {
#ifdef HAVE_SIMD_PACK
    pack_available[PACK_SSE2] = 1;
#endif
#ifdef HAVE_AVX2_PACK
    pack_available[PACK_AVX2] = have_avx2();
#endif
    for (int i = 0; i < 3; ++i)
        if (pack_available[i]) pack_path = i;
    if (getenv("TMAC_CONVERT_SCALAR_LAYOUT")) pack_path = PACK_SCALAR; /* read once, at import */
}

/* Returns the OR of every code it read, so the caller can check the code range for free.  The SIMD
   paths need kfactor % 4 == 0 (whole 16-byte loads); other kfactors take the portable loop. */
static uint32_t pack_tiles(const uint8_t *w, uint8_t *out, int64_t K, int bits, int64_t bm,
                           int64_t kfactor, int64_t t0, int64_t t1) {
    if (kfactor % 4 == 0) {
#ifdef HAVE_AVX2_PACK
        if (pack_path == PACK_AVX2) return pack_tiles_avx2(w, out, K, bits, bm, kfactor, t0, t1);
#endif
#ifdef HAVE_SIMD_PACK
        if (pack_path >= PACK_SSE2) return pack_tiles_sse2(w, out, K, bits, bm, kfactor, t0, t1);
#endif
    }
    return pack_tiles_scalar(w, out, K, bits, bm, kfactor, t0, t1);
}

static uint32_t unpack_tiles(const uint8_t *blob, uint8_t *w, int64_t K, int bits, int64_t bm,
                         int64_t kfactor, int64_t t0, int64_t t1) {
    const int64_t KO = K / (4 * kfactor);
    const int64_t nB = bm / 32;
    const int64_t tile_bytes = K * bm / 8;
    const int64_t ko_stride = nB * kfactor * 16;
    for (int64_t t = t0; t < t1; ++t) {
        for (int64_t B = 0; B < nB; ++B) {
            for (int64_t l = 0; l < 16; ++l) {
                int64_t ma, mb;
                int ia, ib;
                row_of(t * bm + B * 32 + l, bits, &ma, &ia);
                row_of(t * bm + B * 32 + 16 + l, bits, &mb, &ib);
                uint8_t *wa = w + ma * K;
                uint8_t *wb = w + mb * K;
                const uint8_t *o = blob + t * tile_bytes + B * kfactor * 16 + l;
                for (int64_t ko = 0; ko < KO; ++ko) {
                    const uint8_t *oo = o + ko * ko_stride;
                    uint8_t *pa = wa + ko * kfactor * 4;
                    uint8_t *pb = wb + ko * kfactor * 4;
                    for (int64_t ki = 0; ki < kfactor; ++ki) {
                        uint8_t byte = oo[ki * 16];
                        /* For 3 and 4 bits both nibbles can belong to one output (two of its
                           planes), so the first store must land before the second load. */
                        uint32_t a = load4(pa + 4 * ki) | (spread4(byte & 0xFu) << ia);
                        memcpy(pa + 4 * ki, &a, 4);
                        uint32_t b = load4(pb + 4 * ki) | (spread4(byte >> 4) << ib);
                        memcpy(pb + 4 * ki, &b, 4);
                    }
                }
            }
        }
    }
    return 0;
}

typedef uint32_t (*tile_fn)(const uint8_t *, uint8_t *, int64_t, int, int64_t, int64_t, int64_t, int64_t);

typedef struct {
    tile_fn fn;
    const uint8_t *src;
    uint8_t *dst;
    int64_t K, bm, kfactor, t0;
    int bits;
    uint32_t seen[TMAC_POOL_MAX_THREADS]; /* per thread: OR of the codes it read (a thread may get several ranges) */
} layout_job;

static void layout_range(void *arg, int64_t a, int64_t b, int tid) {
    layout_job *j = (layout_job *)arg;
    j->seen[tid] |= j->fn(j->src, j->dst, j->K, j->bits, j->bm, j->kfactor, j->t0 + a, j->t0 + b);
}

/* Shared argument handling: (src, dst, M0, K, bits, bm, kfactor, tile_begin, tile_end[, threads]). */
static PyObject *run_tiles(PyObject *args, tile_fn fn, int src_is_codes) {
    Py_buffer src, dst;
    long long M0, K, bm, kfactor, t0, t1;
    int bits, threads = 1;
    if (!PyArg_ParseTuple(args, "y*w*LLiLLLL|i", &src, &dst, &M0, &K, &bits, &bm, &kfactor, &t0, &t1, &threads))
        return NULL;
    PyObject *result = NULL;
    const long long M = M0 * bits;
    const long long weight_bytes = M0 * K * bits / 8;
    const long long codes_bytes = M0 * K;
    if (bits < 1 || bits > 4 || M0 <= 0 || K <= 0 || bm <= 0 || bm % 32 || bm % (8 * bits) ||
        M % bm || kfactor <= 0 || K % (4 * kfactor) || t0 < 0 || t1 > M / bm || t0 > t1) {
        PyErr_SetString(PyExc_ValueError, "layout: inconsistent shape or tile arguments");
        goto done;
    }
    if (threads < 1) {
        PyErr_SetString(PyExc_ValueError, "layout: threads must be at least 1");
        goto done;
    }
    if (src.len < (src_is_codes ? codes_bytes : weight_bytes) ||
        dst.len < (src_is_codes ? weight_bytes : codes_bytes)) {
        PyErr_SetString(PyExc_ValueError, "layout: buffer too small for the given shape");
        goto done;
    }
    uint32_t seen = 0;
    int ok = 1;
    if (threads > TMAC_POOL_MAX_THREADS) threads = TMAC_POOL_MAX_THREADS;
    layout_job *job = (layout_job *)PyMem_Calloc(1, sizeof(layout_job));
    if (!job) {
        PyErr_NoMemory();
        goto done;
    }
    job->fn = fn, job->src = (const uint8_t *)src.buf, job->dst = (uint8_t *)dst.buf;
    job->K = K, job->bm = bm, job->kfactor = kfactor, job->t0 = t0, job->bits = bits;
    Py_BEGIN_ALLOW_THREADS
    if (threads == 1 || t1 - t0 <= 1) {
        seen = fn(job->src, job->dst, K, bits, bm, kfactor, t0, t1);
    } else if (pool->begin(0)) {
        pool->run(threads, t1 - t0, layout_range, job);
        pool->end();
        for (int i = 0; i < threads; ++i) seen |= job->seen[i];
    } else {
        ok = 0;
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(job);
    if (!ok) {
        PyErr_NoMemory();
        goto done;
    }
    result = PyLong_FromUnsignedLong(seen);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

static PyObject *py_pack(PyObject *self, PyObject *args) { return run_tiles(args, pack_tiles, 1); }
static PyObject *py_unpack(PyObject *self, PyObject *args) { return run_tiles(args, unpack_tiles, 0); }

static PyObject *py_paths(PyObject *self, PyObject *unused) {
    PyObject *t = PyList_New(0);
    for (int i = 0; t && i < 3; ++i)
        if (pack_available[i]) {
            PyObject *n = PyUnicode_FromString(PACK_NAMES[i]);
            if (!n || PyList_Append(t, n) < 0) {
                Py_XDECREF(n);
                Py_CLEAR(t);
                break;
            }
            Py_DECREF(n);
        }
    return t;
}

static PyObject *py_set_path(PyObject *self, PyObject *arg) {
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    for (int i = 0; i < 3; ++i)
        if (!strcmp(name, PACK_NAMES[i])) {
            if (!pack_available[i]) break;
            PyObject *prev = PyUnicode_FromString(PACK_NAMES[pack_path]);
            pack_path = i;
            return prev;
        }
    PyErr_Format(PyExc_ValueError, "layout: pack path %R is not available here", arg);
    return NULL;
}

static PyMethodDef methods[] = {
    {"paths", py_paths, METH_NOARGS, "paths() -> list[str]: the pack paths this build and CPU have, best last."},
    {"set_path", py_set_path, METH_O,
     "set_path(name) -> str: pack with this path from now on (for tests and benchmarks); returns the previous one."},
    {"pack_weights", py_pack, METH_VARARGS,
     "pack_weights(codes, out, M0, K, bits, bm, kfactor, tile_begin, tile_end, threads=1) -> int: codes "
     "uint8 [M0*K] -> Format A weight bytes of tiles [tile_begin, tile_end) written into out, split over "
     "the package's worker pool; returns the OR of every code of those tiles (for the range check)."},
    {"unpack_weights", py_unpack, METH_VARARGS,
     "unpack_weights(blob, codes, M0, K, bits, bm, kfactor, tile_begin, tile_end, threads=1): OR the codes "
     "of tiles [tile_begin, tile_end) into the zero-initialised uint8 [M0*K] buffer codes, split over the "
     "package's worker pool."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_layout_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__layout_native(void) {
    pool = tmac_pool_import();
    if (!pool) return NULL;
    init_pack_paths();
    return PyModule_Create(&module);
}
