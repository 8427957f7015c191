/*
 * AVX-512 paths (x86 with GCC or Clang; chosen at run time on CPUs with AVX-512 F, BW and VL).
 *
 * LUT tile kernel: the structure of the AVX2 one (lut_avx2.c) at twice the width.
 *   - Per chunk and 32-row block, one 64-byte load takes the weight vectors of four consecutive tables
 *     (one per 128-bit lane) and one 64-byte load those four tables, so one _mm512_shuffle_epi8 looks up
 *     16 rows in four tables: once with the low nibbles (rows 0..15 of the block), once with the high
 *     nibbles (rows 16..31).
 *   - The int8 results are widened to int16 as on AVX2 (pmaddubsw against 1,0,1,0... for the even rows,
 *     an arithmetic shift right by 8 for the odd rows) and summed over the sub-group's tables; the four
 *     lanes are added only at the end of the sub-group (integer sums of at most 128 tables are exact in
 *     int16 in any order), then the even and odd rows are re-interleaved and converted to float.
 *   - A sub-group whose table count is not a multiple of four reads its last 1-3 weight vectors and
 *     tables into a zeroed register (nothing past the sub-group is read): a zero lane looks up entry 0
 *     of a zero table, adding 0.
 *   - The float stage is lut_avx2.c's, in 256-bit vectors (8 rows, one block of 8 outputs of one
 *     outputs), repeating reference.py's operations in the same order (fused multiply-adds where it fuses).
 * The row block (GEMM) splits each 32-row block's weight nibbles once and looks up every row's tables
 * with them.  Float tables and fast aggregation go to the AVX2 functions, and so does the table build.
 * VBMI's vpermb (64-byte lookups) is not used: the layout already puts one table in each 128-bit lane,
 * so a 64-byte lookup would do no more per instruction than vpshufb does.
 *
 * Verification: kernels/lut_selftest.c built with -DTMAC_AVX512_SIMDE compiles this same source with every
 * intrinsic emulated by SIMDe and checks it bit for bit against the scalar kernel (tests/test_kernels_avx512.py);
 * on AVX-512 CPUs the self-test and the Python tests run it natively.
 * Measured on an AMD EPYC Zen 4 (AVX-512 executed as two 256-bit halves), 4096x14336 GEMV, one thread: as fast as
 * the AVX2 path at 2 and 4 bits (both at about the single-core read bandwidth: the kernel's arithmetic, not
 * memory, is the limit there); 1 and 3 bits 1.08-1.11x faster than before the bytewise interleave below.  Tried
 * there and not kept: the 2-bit float stage in 512-bit vectors (the lane sums of two sub-groups formed together,
 * 16 outputs per conversion and fused multiply-add, scales gathered by vpermt2ps): 1.15x slower (register spills
 * in the two sub-groups' loops, cross-lane shuffles on the critical path); no software prefetch: 1.2x slower with
 * the tensor in the L3, no faster streaming; prefetching 16 KiB ahead instead of 4: 1.2x slower streaming.
 */
#include "lut_core.h"

#ifdef TMAC_HAVE_AVX512

#include <string.h>

#ifdef TMAC_AVX512_SIMDE
/* Emulation for verification: the _mm512_* and _mm256_* names below become SIMDe's portable versions. */
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#define AVX512
#else
#include <immintrin.h>
#define AVX512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl")))
#endif

/* What this file does not specialise: float tables and fast aggregation. */
#ifdef TMAC_HAVE_AVX2
#define FALLBACK(name) name##_avx2
#else /* only with SIMDe on a machine without AVX2 */
#define FALLBACK(name) name##_scalar
#endif

#define INLINE static inline __attribute__((always_inline))
/* The float stage and the plane-pair helpers, shared with lut_avx2.c. */
#define LUT_FLOAT_TARGET AVX512
#include "lut_float_x86.h"
/* Software prefetch in the GEMV tile kernel, as in lut_avx2.c (whose values were measured there, for AVX2). */
#define LUT_PREFETCH_BYTES 4096
#define LUT_PREFETCH_GROUPS 2

void lut_build_avx512(const float *x, int64_t k, int64_t ags, int64_t bias_group, int mode, void *table,
                      float *lscale, float *lbias) {
    FALLBACK(lut_build)(x, k, ags, bias_group, mode, table, lscale, lbias);
}

/* ---------------------------------------------------------------------------------------------
 * Integer sums of one sub-group */

/* r (1..4) consecutive 16-byte vectors at p, one per 128-bit lane; zeros in the lanes from r on. */
INLINE AVX512 __m512i load_lanes(const void *p, int64_t r) {
    const uint8_t *b = (const uint8_t *)p;
    if (r >= 4) return _mm512_loadu_si512(p);
    const __m512i z = _mm512_setzero_si512();
    if (r == 1) return _mm512_inserti32x4(z, _mm_loadu_si128((const __m128i *)b), 0);
    const __m512i two = _mm512_inserti64x4(z, _mm256_loadu_si256((const __m256i *)b), 0);
    return r == 2 ? two : _mm512_inserti32x4(two, _mm_loadu_si128((const __m128i *)(b + 32)), 2);
}

/* Four tables (one per lane) looked up with their rows' low-nibble (lo: rows 0..15) and high-nibble
 * (hi: rows 16..31) indices, widened and added to acc: even rows 0..15, odd rows 0..15, even rows
 * 16..31, odd rows 16..31. */
INLINE AVX512 void lookup4(__m512i T, __m512i lo, __m512i hi, __m512i acc[4]) {
    const __m512i even = _mm512_set1_epi16(0x0001);
    const __m512i a = _mm512_shuffle_epi8(T, lo), b = _mm512_shuffle_epi8(T, hi);
    acc[0] = _mm512_add_epi16(acc[0], _mm512_maddubs_epi16(even, a));
    acc[1] = _mm512_add_epi16(acc[1], _mm512_srai_epi16(a, 8));
    acc[2] = _mm512_add_epi16(acc[2], _mm512_maddubs_epi16(even, b));
    acc[3] = _mm512_add_epi16(acc[3], _mm512_srai_epi16(b, 8));
}

/* acc (as lookup4 leaves it) to int32: the four lanes added, the rows put back in order;
 * f[0..3] = rows 0-7, 8-15, 16-23, 24-31. */
INLINE AVX512 void sums_to_int32(const __m512i acc[4], __m256i f[4]) {
    /* lanes (ae0+ae2, ae1+ae3, be0+be2, be1+be3), the same for the odd rows */
    const __m512i e = _mm512_add_epi16(_mm512_shuffle_i32x4(acc[0], acc[2], 0x44),
                                       _mm512_shuffle_i32x4(acc[0], acc[2], 0xEE));
    const __m512i o = _mm512_add_epi16(_mm512_shuffle_i32x4(acc[1], acc[3], 0x44),
                                       _mm512_shuffle_i32x4(acc[1], acc[3], 0xEE));
    /* lanes: even rows 0-15, even rows 16-31, odd rows 0-15, odd rows 16-31 */
    const __m512i s = _mm512_add_epi16(_mm512_shuffle_i32x4(e, o, 0x88), _mm512_shuffle_i32x4(e, o, 0xDD));
    const __m256i ev = _mm512_castsi512_si256(s), od = _mm512_extracti64x4_epi64(s, 1);
    const __m256i lo = _mm256_unpacklo_epi16(ev, od), hi = _mm256_unpackhi_epi16(ev, od); /* rows 0-7|16-23, 8-15|24-31 */
    f[0] = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(lo));
    f[1] = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(hi));
    f[2] = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(lo, 1));
    f[3] = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(hi, 1));
}

/* int8 sums of one sub-group for the 32 rows of a block, as 4 int32 vectors (rows 0-7, ..., 24-31): 1 and 3 bits.
 * wv: the sub-group's first weight vector; tv: its first table; n: tables in the sub-group.
 * Eight tables per step, as lut_avx2.c's sums_int8 does four: two 64-byte weight vectors (tables j..j+3 and
 * j+4..j+7, one per lane) give lookup vectors a0, a1 (rows 0..15) and b0, b1 (rows 16..31); interleaving a0 and a1
 * bytewise (no lane crossing) puts row r of table j+l next to row r of table j+4+l in lane l, and one pmaddubsw
 * against ones widens and adds the two: 3 operations per 64 lookups instead of 4 (pmaddubsw 1,0 and psraw 8, each
 * with its add).  The rows come out in order in every lane; the four lanes (tables) are added at the end.  Measured
 * on an AMD EPYC (Zen 4), 4096x14336 1-bit GEMV: this path had been 1.09x slower than the AVX2 one.
 * Exact: |sum| <= 128 * n fits int16 for n <= 128 (and the sums are exact in any order). */
INLINE AVX512 void sums_int8(const uint8_t *wv, const int8_t *tv, int64_t n, __m256i f[4]) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), ones = _mm512_set1_epi8(1);
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0; /* rows 0-7, 8-15, 16-23, 24-31 per lane */
#pragma GCC unroll 2
    for (int64_t i = 0; i < n; i += 8) {
        __m512i W[2], T[2];
        for (int h = 0; h < 2; ++h) {
            const int64_t j = i + 4 * h, r = n - j;
            if (r >= 4) {
                W[h] = _mm512_loadu_si512(wv + 16 * j);
                T[h] = _mm512_loadu_si512(tv + 16 * j);
            } else if (r > 0) { /* zero lanes look up zeros in zero tables */
                W[h] = load_lanes(wv + 16 * j, r);
                T[h] = load_lanes(tv + 16 * j, r);
            } else {
                W[h] = T[h] = _mm512_setzero_si512();
            }
        }
        const __m512i a0 = _mm512_shuffle_epi8(T[0], _mm512_and_si512(W[0], m4));
        const __m512i b0 = _mm512_shuffle_epi8(T[0], _mm512_and_si512(_mm512_srli_epi16(W[0], 4), m4));
        const __m512i a1 = _mm512_shuffle_epi8(T[1], _mm512_and_si512(W[1], m4));
        const __m512i b1 = _mm512_shuffle_epi8(T[1], _mm512_and_si512(_mm512_srli_epi16(W[1], 4), m4));
        s0 = _mm512_add_epi16(s0, _mm512_maddubs_epi16(ones, _mm512_unpacklo_epi8(a0, a1)));
        s1 = _mm512_add_epi16(s1, _mm512_maddubs_epi16(ones, _mm512_unpackhi_epi8(a0, a1)));
        s2 = _mm512_add_epi16(s2, _mm512_maddubs_epi16(ones, _mm512_unpacklo_epi8(b0, b1)));
        s3 = _mm512_add_epi16(s3, _mm512_maddubs_epi16(ones, _mm512_unpackhi_epi8(b0, b1)));
    }
    /* lanes added: t01 = (s0 l0+l2, s0 l1+l3, s1 l0+l2, s1 l1+l3), then u = (s0, s1, s2, s3), one per lane */
    const __m512i t01 = _mm512_add_epi16(_mm512_shuffle_i32x4(s0, s1, 0x44), _mm512_shuffle_i32x4(s0, s1, 0xEE));
    const __m512i t23 = _mm512_add_epi16(_mm512_shuffle_i32x4(s2, s3, 0x44), _mm512_shuffle_i32x4(s2, s3, 0xEE));
    const __m512i u = _mm512_add_epi16(_mm512_shuffle_i32x4(t01, t23, 0x88), _mm512_shuffle_i32x4(t01, t23, 0xDD));
    const __m256i u01 = _mm512_castsi512_si256(u), u23 = _mm512_extracti64x4_epi64(u, 1);
    f[0] = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(u01));
    f[1] = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(u01, 1));
    f[2] = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(u23));
    f[3] = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(u23, 1));
}

/* The same from indices split beforehand (the row block): lo[g], hi[g] for tables 4g..4g+3. */
INLINE AVX512 void sums_split(const __m512i *lo, const __m512i *hi, const int8_t *tv, int64_t n, __m256i f[4]) {
    __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
    int64_t i = 0, g = 0;
#pragma GCC unroll 4
    for (; i + 4 <= n; i += 4, ++g) lookup4(_mm512_loadu_si512(tv + 16 * i), lo[g], hi[g], acc);
    if (i < n) lookup4(load_lanes(tv + 16 * i, n - i), lo[g], hi[g], acc);
    sums_to_int32(acc, f);
}


/* 2 and 4 bits (PAIRED): the weight vector's bytes shuffled into plane pairs (0,8,1,9,... in every lane), so
 * that one pmaddubsw against 1,2 sums S_p + 2 S_{p+1} of each output (see lut_avx2.c's sums_pair). */
INLINE AVX512 __m512i pair_perm(void) {
    return _mm512_broadcast_i32x4(_mm_setr_epi8(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15));
}

/* Four tables (one per lane) looked up with plane-paired indices, the pairs summed into a (low nibbles) and
 * b (high nibbles). */
INLINE AVX512 void lookup4_pair(__m512i T, __m512i lo, __m512i hi, __m512i *a, __m512i *b) {
    const __m512i c12 = _mm512_set1_epi16(0x0201);
    *a = _mm512_add_epi16(*a, _mm512_maddubs_epi16(c12, _mm512_shuffle_epi8(T, lo)));
    *b = _mm512_add_epi16(*b, _mm512_maddubs_epi16(c12, _mm512_shuffle_epi8(T, hi)));
}

/* The four lanes of a and b added (the four tables of each step), then combined per output. */
INLINE AVX512 void pair_lanes_to_int32(__m512i a, __m512i b, const int BITS, __m256i comb[4]) {
    const __m256i a2 = _mm256_add_epi16(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64(a, 1));
    const __m256i b2 = _mm256_add_epi16(_mm512_castsi512_si256(b), _mm512_extracti64x4_epi64(b, 1));
    pair_sums_to_int32(add_lanes_epi16(a2), add_lanes_epi16(b2), BITS, comb);
}

INLINE AVX512 void sums_pair(const uint8_t *wv, const int8_t *tv, int64_t n, const int BITS, __m256i comb[4]) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), perm = pair_perm();
    __m512i a = _mm512_setzero_si512(), b = a;
    int64_t i = 0;
#pragma GCC unroll 4
    for (; i + 4 <= n; i += 4) {
        const __m512i W = _mm512_shuffle_epi8(_mm512_loadu_si512(wv + 16 * i), perm);
        lookup4_pair(_mm512_loadu_si512(tv + 16 * i), _mm512_and_si512(W, m4),
                     _mm512_and_si512(_mm512_srli_epi16(W, 4), m4), &a, &b);
    }
    if (i < n) { /* zero lanes look up zeros in zero tables */
        const __m512i W = _mm512_shuffle_epi8(load_lanes(wv + 16 * i, n - i), perm);
        lookup4_pair(load_lanes(tv + 16 * i, n - i), _mm512_and_si512(W, m4),
                     _mm512_and_si512(_mm512_srli_epi16(W, 4), m4), &a, &b);
    }
    pair_lanes_to_int32(a, b, BITS, comb);
}

/* The same from indices split (and paired) beforehand: the row block. */
INLINE AVX512 void sums_split_pair(const __m512i *lo, const __m512i *hi, const int8_t *tv, int64_t n, const int BITS,
                                   __m256i comb[4]) {
    __m512i a = _mm512_setzero_si512(), b = a;
    int64_t i = 0, g = 0;
#pragma GCC unroll 4
    for (; i + 4 <= n; i += 4, ++g) lookup4_pair(_mm512_loadu_si512(tv + 16 * i), lo[g], hi[g], &a, &b);
    if (i < n) lookup4_pair(load_lanes(tv + 16 * i, n - i), lo[g], hi[g], &a, &b);
    pair_lanes_to_int32(a, b, BITS, comb);
}

/* ---------------------------------------------------------------------------------------------
 * One row through one tile (GEMV), int8 tables summed in int16.  ACTK and BITS are compile-time constants
 * in the specialised copies below (0: read them from p). */

INLINE AVX512 void tile_kernel(const lut_problem *p, const uint8_t *w, const float *S, const lut_row *row, float *C,
                               float *y, const int64_t ACTK, const int64_t KF,
                               const int BITS) {
    const int64_t actk = ACTK ? ACTK : p->actk;
    const int64_t bm = p->bm, kf = KF ? KF : p->kf, KO = p->k / (4 * kf), nB = bm / 32, nsub = kf / actk, P = bm / BITS;
    const int blk = p->zp ? 16 : 8, zp = p->zp, per_tensor = p->per_tensor;
    const int8_t *table = (const int8_t *)row->table;
    const int64_t group_stride = (P / 8) * blk, chunks_per_group = per_tensor ? KO : p->gs / (4 * kf);
    memset(C, 0, (size_t)P * sizeof(float));
    const float *Sg = S;
    int64_t left = chunks_per_group, pf = 0; /* pf: the next scale line to prefetch within a later group */
    /* every line of a group's scales is prefetched while the group before the one two ahead is computed: the
     * group's lines spread over its super-blocks (one line per super-block left half of them unfetched at 2 bits
     * with zero points, three quarters at 1 bit) */
    const int64_t sb_per_group = (nB / NB(BITS)) * chunks_per_group, group_lines = (group_stride * 4 + 63) / 64;
    const int64_t lines_per_sb = (group_lines + sb_per_group - 1) / sb_per_group;
    for (int64_t ko = 0; ko < KO; ++ko) {
        const uint8_t *wk = w + ko * nB * kf * 16;
        const int8_t *tk = table + ko * kf * 16;
        const __m256 vbsum2 = _mm256_set1_ps(2.0f * row->bsum[ko]), vbc = _mm256_set1_ps(row->vbias[ko]);
        for (int64_t B0 = 0; B0 < nB; B0 += NB(BITS)) { /* one super-block: NOG(BITS) groups of 8 outputs */
            const uint8_t *wb = wk + B0 * kf * 16;
            for (int64_t o = 0; o < NB(BITS) * kf * 16; o += 64)
                _mm_prefetch((const char *)(wb + LUT_PREFETCH_BYTES + o), _MM_HINT_T0);
            if (!per_tensor && group_stride >= 16) /* the super-block's share of a later group's scale lines */
                for (int64_t l = 0; l < lines_per_sb; ++l) {
                    _mm_prefetch((const char *)(Sg + LUT_PREFETCH_GROUPS * group_stride + pf), _MM_HINT_T0);
                    pf = pf + 16 < group_stride ? pf + 16 : pf + 16 - group_stride; /* no division in the loop */
                }
            __m256 acc[4];
            start_chunk(NOG(BITS), vbc, acc);
#pragma GCC unroll 4 /* a chunk's sub-groups (2 at kfactor 32, act group 64): 1-4% in the C harness */
            for (int64_t sub = 0; sub < nsub; ++sub) {
                const int64_t sg = ko * nsub + sub;
                __m256i comb[4];
                if (PAIRED(BITS)) {
                    sums_pair(wb + sub * actk * 16, tk + sub * actk * 16, actk, BITS, comb);
                } else {
                    for (int bl = 0; bl < NB(BITS); ++bl) {
                        __m256i v[4];
                        sums_int8(wb + (bl * kf + sub * actk) * 16, tk + sub * actk * 16, actk, v);
                        fold_int(v, bl, BITS, comb);
                    }
                }
                __m256 f[4];
                comb_to_floats(comb, NOG(BITS), f);
                add_subgroup(f, NOG(BITS), _mm256_set1_ps(row->sgscale[sg]), acc);
            }
            const int64_t o0 = B0 * 32 / BITS; /* the super-block's first output */
            update_outputs(C + o0, acc, NOG(BITS), Sg + (o0 / 8) * blk, vbsum2, per_tensor, zp, blk);
        }
        if (--left == 0) { /* next weight group */
            Sg += group_stride;
            left = chunks_per_group;
            pf = 0;
        }
    }
    finish_outputs(C, y, P, per_tensor, per_tensor ? S[0] : 0.0f);
}

AVX512 void lut_tile_avx512(const lut_problem *p, const uint8_t *w, const float *S, const lut_row *row, float *C,
                            float *y) {
    if (p->mode != LUT_INT8 || p->fa) {
        FALLBACK(lut_tile)(p, w, S, row, C, y);
        return;
    }
#define TILE(A, F, B) tile_kernel(p, w, S, row, C, y, A, F, B)
    LUT_BY_SHAPE(TILE)
}

/* ---------------------------------------------------------------------------------------------
 * Row block (GEMM): per chunk and 32-row block, the weight nibbles are split once (per sub-group, four
 * tables per vector, the last vector of a sub-group zero-padded) and every row of the block looks its
 * tables up with them.  Each row's integer sums and float operations are those of tile_kernel. */

#define ROWS_MAX_KF 32 /* split vectors per block: nsub * ceil(actk/4) <= kf */

INLINE AVX512 void tile_rows_int8(const lut_problem *p, const uint8_t *w, const float *S, const lut_row *rows,
                                  int64_t nrows, float *C, float *y, int64_t ldy, const int64_t ACTK, const int64_t KF,
                                  const int BITS) {
    const int64_t actk = ACTK ? ACTK : p->actk;
    const int64_t bm = p->bm, kf = KF ? KF : p->kf, KO = p->k / (4 * kf), nB = bm / 32, nsub = kf / actk, P = bm / BITS;
    const int64_t nv = (actk + 3) / 4; /* split vectors per sub-group */
    const int blk = p->zp ? 16 : 8, zp = p->zp, per_tensor = p->per_tensor;
    const __m512i m4 = _mm512_set1_epi8(0x0F), perm = pair_perm();
    __m512i lo[NB(BITS) * ROWS_MAX_KF], hi[NB(BITS) * ROWS_MAX_KF];
    const int64_t group_stride = (P / 8) * blk, chunks_per_group = per_tensor ? KO : p->gs / (4 * kf);
    memset(C, 0, (size_t)(nrows * P) * sizeof(float));
    const float *Sg = S;
    int64_t left = chunks_per_group;
    for (int64_t ko = 0; ko < KO; ++ko) {
        const uint8_t *wk = w + ko * nB * kf * 16;
        for (int64_t B0 = 0; B0 < nB; B0 += NB(BITS)) {
            for (int bl = 0; bl < NB(BITS); ++bl) {
                const uint8_t *wb = wk + (B0 + bl) * kf * 16;
                for (int64_t sub = 0; sub < nsub; ++sub)
                    for (int64_t g = 0; g < nv; ++g) {
                        const int64_t j = sub * actk + 4 * g, r = actk - 4 * g, at = (bl * nsub + sub) * nv + g;
                        __m512i W = load_lanes(wb + 16 * j, r);
                        if (PAIRED(BITS)) W = _mm512_shuffle_epi8(W, perm);
                        lo[at] = _mm512_and_si512(W, m4);
                        hi[at] = _mm512_and_si512(_mm512_srli_epi16(W, 4), m4);
                    }
            }
            const int64_t o0 = B0 * 32 / BITS;
            for (int64_t r = 0; r < nrows; ++r) {
                const lut_row *row = rows + r;
                const int8_t *tk = (const int8_t *)row->table + ko * kf * 16;
                __m256 acc[4];
                start_chunk(NOG(BITS), _mm256_set1_ps(row->vbias[ko]), acc);
                for (int64_t sub = 0; sub < nsub; ++sub) {
                    const int64_t sg = ko * nsub + sub;
                    __m256i comb[4];
                    if (PAIRED(BITS)) {
                        sums_split_pair(lo + sub * nv, hi + sub * nv, tk + sub * actk * 16, actk, BITS, comb);
                    } else {
                        for (int bl = 0; bl < NB(BITS); ++bl) {
                            const int64_t at = (bl * nsub + sub) * nv;
                            __m256i v[4];
                            sums_split(lo + at, hi + at, tk + sub * actk * 16, actk, v);
                            fold_int(v, bl, BITS, comb);
                        }
                    }
                    __m256 f[4];
                    comb_to_floats(comb, NOG(BITS), f);
                    add_subgroup(f, NOG(BITS), _mm256_set1_ps(row->sgscale[sg]), acc);
                }
                update_outputs(C + r * P + o0, acc, NOG(BITS), Sg + (o0 / 8) * blk, _mm256_set1_ps(2.0f * row->bsum[ko]),
                               per_tensor, zp, blk);
            }
        }
        if (--left == 0) {
            Sg += group_stride;
            left = chunks_per_group;
        }
    }
    for (int64_t r = 0; r < nrows; ++r) finish_outputs(C + r * P, y + r * ldy, P, per_tensor, per_tensor ? S[0] : 0.0f);
}

AVX512 void lut_tile_rows_avx512(const lut_problem *p, const uint8_t *w, const float *S, const lut_row *rows,
                                 int64_t nrows, float *C, float *y, int64_t ldy) {
    if (p->mode != LUT_INT8 || p->fa) {
        FALLBACK(lut_tile_rows)(p, w, S, rows, nrows, C, y, ldy);
        return;
    }
    if (p->kf > ROWS_MAX_KF) { /* wide chunks: one row at a time */
        for (int64_t r = 0; r < nrows; ++r) lut_tile_avx512(p, w, S, rows + r, C, y + r * ldy);
        return;
    }
#define ROWS(A, F, B) tile_rows_int8(p, w, S, rows, nrows, C, y, ldy, A, F, B)
    LUT_BY_ACTK(ROWS)
}

#endif /* TMAC_HAVE_AVX512 */
