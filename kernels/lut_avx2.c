/*
 * AVX2 paths (x86 with GCC or Clang; chosen at run time with __builtin_cpu_supports).
 *
 * LUT tile kernel (the T-MAC structure):
 *   - the int8 tables of one activation row are built once (lut_build_avx2) and shared by all tiles;
 *   - per chunk and 32-row block, one 32-byte load takes the weight vectors of two consecutive tables
 *     (j in the low 128-bit lane, j+1 in the high lane), and one 32-byte load takes those two tables,
 *     so a single _mm256_shuffle_epi8 looks up 16 rows in two tables: once with the low nibbles
 *     (rows 0..15 of the block) and once with the high nibbles (rows 16..31);
 *   - 2 and 4 bits (sums_pair): the weight vector's bytes are first shuffled into plane pairs, so that each
 *     lookup vector holds, per output, bit-plane p next to plane p+1, and one pmaddubsw against 1,2 both
 *     widens to int16 and combines the two planes (S_p + 2 S_{p+1}); 1 and 3 bits (sums_int8): two tables'
 *     lookups interleaved bytewise (no lane crossing) and widened and added by one pmaddubsw against ones,
 *     the planes combined in int32 afterwards (fold_int);
 *     only at the end of the sub-group are the two lanes (tables j, j+1) added;
 *   - the float stage then repeats reference.py's operations in the same order, per output, 8 outputs per
 *     vector: one fused multiply-add per output and sub-group into an accumulator that starts at the chunk's
 *     bias sum, and two per output and chunk (the weight scale, the zero point's share).
 * The planes combined in integers before the float stage (the reference's comb = sum_i 2^i S_i) are what
 * let the pair trick replace 4 of the 13 vector operations per table pair with 1 and halve the float stage
 * (2-bit): measured on the EPYC, 4096x14336 in one process, old and new modules alternated, the GEMV 1.13-1.14x
 * faster at 2 bits (1 and 2 threads), 1.07-1.19x at 4 bits, the row block (N = 256) 1.24-1.47x; 1 bit (no
 * planes to pair) 0.96x.  Combining the planes alone, with the even/odd widening kept, was no faster.
 * Measured on this project's AMD EPYC (shared, 4096x14336 2-bit GEMV): the table loop unrolled four
 * times (8 tables) beat no unrolling (-20%) and full unrolling (register spills, -25%); widening by
 * shifts alone (3 shift ops per vector) was marginally slower, one pmaddubsw and one shift faster; keeping a block's accumulators in registers
 * across K (block-outer order) and processing two blocks per table load were both slower.
 * Tried on 2026-12-03 in an interleaved C harness (rdtsc, bit-identical outputs), with the float stage still per
 * bit-plane, not kept:
 *   - row block: the two tables' lookups interleaved bytewise (punpcklbw/hbw) and summed in pairs by one
 *     pmaddubsw against ones, in natural row order: 1-bit and 4-bit 7-13% faster, 2-bit 1-3% slower;
 *   - row block: sums widened in place (pmaddwd against 1,0 and psrad: no lane crossing) in a strided row
 *     order: 14% faster on its own, but 2-5% slower once the float stage followed that order (scales
 *     permuted once per chunk and 32-row block, plane 0 as a lane mask, the zero-point term on every vector);
 *   - both kernels: tables biased by 0x80, summed as whole words with the odd bytes taken by pmaddubsw
 *     (bias removed exactly through the start values): 2-9% slower in the GEMV, no change in the row block;
 *   - row block: tables broadcast once per chunk into 32-byte copies: 3-5% slower.
 */
#include "lut_core.h"

#ifdef TMAC_HAVE_AVX2

#include <immintrin.h>
#include <string.h>

#define AVX2 __attribute__((target("avx2,fma")))
#define INLINE_FWD static inline __attribute__((always_inline))
/* The float stage and the plane-pair helpers, shared with lut_avx512.c. */
#define LUT_FLOAT_TARGET AVX2
#include "lut_float_x86.h"

/* Software prefetch in the GEMV tile kernel: the weights 4 KiB ahead and the scales two weight groups ahead.
 * At one thread the kernel's arithmetic alone runs at about the machine's read bandwidth, so the hardware
 * prefetchers alone leave the loads exposed: measured on this project's EPYC (4096x14336 2-bit, streaming
 * over 2.2 GB of copies, interleaved in one run) 7.5 -> 8.9 GB/s at 1 thread and 12.9 -> 16.2 GB/s at 2;
 * 2 KiB was less, 16 KiB and more no better; hints T1/NTA no better than T0. */
#define LUT_PREFETCH_BYTES 4096
#define LUT_PREFETCH_GROUPS 2

/* ---------------------------------------------------------------------------------------------
 * LUT build.  int8 mode only (float tables are an exact-check mode and use the scalar builder). */

/* Four vectors of two tables each (one table's 4 activations per 128-bit lane) transposed in each lane: q[i] holds
 * activation i of the lanes' tables, in the order v0, v1, v2, v3. */
static inline AVX2 void transpose_quads(__m256 v0, __m256 v1, __m256 v2, __m256 v3, __m256 q[4]) {
    const __m256 t0 = _mm256_unpacklo_ps(v0, v1), t1 = _mm256_unpacklo_ps(v2, v3);
    const __m256 t2 = _mm256_unpackhi_ps(v0, v1), t3 = _mm256_unpackhi_ps(v2, v3);
    q[0] = _mm256_shuffle_ps(t0, t1, 0x44), q[1] = _mm256_shuffle_ps(t0, t1, 0xEE);
    q[2] = _mm256_shuffle_ps(t2, t3, 0x44), q[3] = _mm256_shuffle_ps(t2, t3, 0xEE);
}

/* Eight consecutive tables (32 floats from x) transposed: q[i] holds activation i of tables 0, 2, 4, 6 (low lane)
 * and 1, 3, 5, 7 (high lane).  That order is the one in which a lane-wise unpack of two byte vectors gives tables
 * t | t+1, i.e. 32 contiguous bytes of the output. */
static inline AVX2 void load_quads8(const float *x, __m256 q[4]) {
    transpose_quads(_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8), _mm256_loadu_ps(x + 16), _mm256_loadu_ps(x + 24), q);
}

/* LUT biases of 8 consecutive bias groups at once (lut_build_passes' `biases`): lane u runs group u's chain
 * b = b - (((q0 + q1) + q2) + q3), group u's tables starting at x + u*bias_group. */
static AVX2 void biases8(const float *x, int64_t bias_group, float *lbias) {
    __m256 b = _mm256_setzero_ps();
    for (int64_t j = 0; j < bias_group / 4; ++j) {
        const float *q = x + 4 * j;
        __m256 v[4]; /* activation i of groups 0..7 */
        transpose_quads(_mm256_loadu2_m128(q + 4 * bias_group, q),
                        _mm256_loadu2_m128(q + 5 * bias_group, q + bias_group),
                        _mm256_loadu2_m128(q + 6 * bias_group, q + 2 * bias_group),
                        _mm256_loadu2_m128(q + 7 * bias_group, q + 3 * bias_group), v);
        b = _mm256_sub_ps(b, _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(v[0], v[1]), v[2]), v[3]));
    }
    _mm256_storeu_ps(lbias, b);
}

/* The largest |x0|+|x1|+|x2|+|x3| (summed in that order) of n tables, n a multiple of 8 (lut_build_passes' `amax`).
 * All sums are >= +0 and not NaN for finite input, so the order of the maxima does not matter. */
static AVX2 float amax_avx2(const float *x, int64_t n) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 vmax = _mm256_setzero_ps();
    for (int64_t j = 0; j < n; j += 8) {
        __m256 q[4];
        load_quads8(x + 4 * j, q);
        const __m256 a = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(_mm256_and_ps(q[0], absmask),
                                                                   _mm256_and_ps(q[1], absmask)),
                                                     _mm256_and_ps(q[2], absmask)),
                                       _mm256_and_ps(q[3], absmask));
        vmax = _mm256_max_ps(vmax, a);
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

/* Eight tables (x: their 32 activations, t: their 8*16 bytes) quantised with the reciprocal scale vr.  The odd
 * entries c = 2c'+1 are ((x0 +- x1) +- x2) +- x3 with + where bit 0, 1, 2 of c' is set; the prefixes are shared
 * (14 additions for 64 entries), each entry rounded as in the scalar build. */
static inline AVX2 void tables8(const float *x, __m256 vr, int8_t *t) {
    __m256 q[4];
    load_quads8(x, q);
    const __m256 a0 = _mm256_sub_ps(q[0], q[1]), a1 = _mm256_add_ps(q[0], q[1]);
    const __m256 b0 = _mm256_sub_ps(a0, q[2]), b1 = _mm256_sub_ps(a1, q[2]);
    const __m256 b2 = _mm256_add_ps(a0, q[2]), b3 = _mm256_add_ps(a1, q[2]);
#define QE(v) _mm256_cvtps_epi32(_mm256_mul_ps(v, vr)) /* rint (MXCSR default: half to even) */
    const __m256i e0 = QE(_mm256_sub_ps(b0, q[3])), e1 = QE(_mm256_sub_ps(b1, q[3]));
    const __m256i e2 = QE(_mm256_sub_ps(b2, q[3])), e3 = QE(_mm256_sub_ps(b3, q[3]));
    const __m256i e4 = QE(_mm256_add_ps(b0, q[3])), e5 = QE(_mm256_add_ps(b1, q[3]));
    const __m256i e6 = QE(_mm256_add_ps(b2, q[3])), e7 = QE(_mm256_add_ps(b3, q[3]));
#undef QE
    /* saturate to int8; per lane, byte 4c'+i of lo (c' < 4) or hi (c' >= 4) is entry c' of the lane's table i */
    const __m256i lo = _mm256_packs_epi16(_mm256_packs_epi32(e0, e1), _mm256_packs_epi32(e2, e3));
    const __m256i hi = _mm256_packs_epi16(_mm256_packs_epi32(e4, e5), _mm256_packs_epi32(e6, e7));
    const __m256i by_table = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                              0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m256i lt = _mm256_shuffle_epi8(lo, by_table), ht = _mm256_shuffle_epi8(hi, by_table);
    /* the 8 odd entries of tables 0, 2 | 1, 3 and of 4, 6 | 5, 7 */
    const __m256i oa = _mm256_unpacklo_epi32(lt, ht), ob = _mm256_unpackhi_epi32(lt, ht);
    /* entry 2i = -odd[7-i] (the mirror, negated after saturation as in the scalar build), entry 2i+1 = odd[i] */
    const __m256i rev = _mm256_setr_epi8(7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8,
                                         7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8);
    const __m256i na = _mm256_shuffle_epi8(_mm256_sub_epi8(_mm256_setzero_si256(), oa), rev);
    const __m256i nb = _mm256_shuffle_epi8(_mm256_sub_epi8(_mm256_setzero_si256(), ob), rev);
    _mm256_storeu_si256((__m256i *)t, _mm256_unpacklo_epi8(na, oa));        /* tables 0 | 1 */
    _mm256_storeu_si256((__m256i *)(t + 32), _mm256_unpackhi_epi8(na, oa)); /* tables 2 | 3 */
    _mm256_storeu_si256((__m256i *)(t + 64), _mm256_unpacklo_epi8(nb, ob)); /* tables 4 | 5 */
    _mm256_storeu_si256((__m256i *)(t + 96), _mm256_unpackhi_epi8(nb, ob)); /* tables 6 | 7 */
}

/* n tables (a multiple of 8) with the reciprocal scale r (lut_build_passes' `tables`). */
static AVX2 void tables_avx2(const float *x, int64_t n, float r, int8_t *t) {
    const __m256 vr = _mm256_set1_ps(r);
    for (int64_t j = 0; j < n; j += 8) tables8(x + 4 * j, vr, t + 16 * j);
}

/* Eight tables per vector (lut_build_passes).  Measured on the EPYC (K = 14336, act group 64, C harness, alternated
 * with the per-table build it replaced: 4 broadcasts, 3 sign flips and 3 additions per table, the scale computed
 * between each act group's tables, the biases a scalar chain): 2.5x faster (5.6-7.2 us against 14.2-18.1), the
 * biases 1 us of it against 5. */
AVX2 void lut_build_avx2(const float *x, int64_t k, int64_t ags, int64_t bias_group, int mode, void *table,
                         float *lscale, float *lbias) {
    lut_build_passes(x, k, ags, bias_group, mode, table, lscale, lbias, 8, biases8, amax_avx2, tables_avx2);
}

/* ---------------------------------------------------------------------------------------------
 * LUT tile kernel */

/* Signed rounding-halving average (a + b + 1) >> 1 from the unsigned one: bias both by 128. */
static inline AVX2 __m256i ravg_epi8(__m256i a, __m256i b) {
    const __m256i k80 = _mm256_set1_epi8((char)0x80);
    return _mm256_xor_si256(_mm256_avg_epu8(_mm256_xor_si256(a, k80), _mm256_xor_si256(b, k80)), k80);
}
static inline AVX2 __m128i ravg_epi8_128(__m128i a, __m128i b) {
    const __m128i k80 = _mm_set1_epi8((char)0x80);
    return _mm_xor_si128(_mm_avg_epu8(_mm_xor_si128(a, k80), _mm_xor_si128(b, k80)), k80);
}

/* w >> 4 in each 16-bit word (the high nibbles in the low four bits of each byte, as _mm256_srli_epi16(w, 4)) by
 * the unsigned high-half multiply by 2^12: exact, and it runs on the multiplier pipes, which the 1- and 3-bit step
 * below leaves half idle, instead of the shuffle pipes that its lookups and interleaves fill (on AMD Zen 3 shifts
 * and byte shuffles share two pipes).  Measured on a Zen 3 EPYC, one tile alternated in a C harness: 3-bit 1.05-1.09x
 * faster, 1-bit 1.01-1.02x; the 2- and 4-bit step (balanced already) gained nothing from it. */
static inline AVX2 __m256i high_nibbles_mul(__m256i w) { return _mm256_mulhi_epu16(w, _mm256_set1_epi16(0x1000)); }

/* int8 sums of one sub-group for the 32 rows of a block, as 4 int32 vectors (rows 0-7, ..., 24-31): 1 and 3 bits.
 * wv: the sub-group's first weight vector; tv: its first table; n: tables in the sub-group.
 * Four tables per step: two 32-byte weight vectors (tables j, j+1 and j+2, j+3, one per lane) give lookup vectors
 * a0 = (j | j+1), a1 = (j+2 | j+3) for rows 0..15 (low nibbles) and b0, b1 for rows 16..31.  Interleaving a0 and
 * a1 bytewise (punpcklbw/hbw: no lane crossing) puts row r of table j next to row r of table j+2 (and j+1 next
 * to j+3 in the high lane), so one pmaddubsw against ones widens and adds two tables' lookups of the same row:
 * 3 operations per 32 lookups instead of 4 (pmaddubsw 1,0 + add, psraw 8 + add).  The rows come out in order;
 * the two lanes are added at the end.  Exact: |sum| <= 128 * actk. */
INLINE_FWD AVX2 void sums_int8(const uint8_t *wv, const int8_t *tv, int64_t n, __m256i f[4]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi8(1);
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0; /* rows 0-7, 8-15, 16-23, 24-31 */
#pragma GCC unroll 2
    for (int64_t i = 0; i < n; i += 4) {
        __m256i W[2], T[2];
        for (int h = 0; h < 2; ++h) {
            const int64_t j = i + 2 * h;
            if (j + 1 < n) {
                W[h] = _mm256_loadu_si256((const __m256i *)(wv + 16 * j));
                T[h] = _mm256_loadu_si256((const __m256i *)(tv + 16 * j));
            } else if (j < n) { /* odd count: a zero table in the high lane looks up zeros */
                W[h] = _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)(wv + 16 * j)));
                T[h] = _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)(tv + 16 * j)));
            } else {
                W[h] = T[h] = _mm256_setzero_si256();
            }
        }
        const __m256i a0 = _mm256_shuffle_epi8(T[0], _mm256_and_si256(W[0], m4));
        const __m256i b0 = _mm256_shuffle_epi8(T[0], _mm256_and_si256(high_nibbles_mul(W[0]), m4));
        const __m256i a1 = _mm256_shuffle_epi8(T[1], _mm256_and_si256(W[1], m4));
        const __m256i b1 = _mm256_shuffle_epi8(T[1], _mm256_and_si256(high_nibbles_mul(W[1]), m4));
        s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(ones, _mm256_unpacklo_epi8(a0, a1)));
        s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(ones, _mm256_unpackhi_epi8(a0, a1)));
        s2 = _mm256_add_epi16(s2, _mm256_maddubs_epi16(ones, _mm256_unpacklo_epi8(b0, b1)));
        s3 = _mm256_add_epi16(s3, _mm256_maddubs_epi16(ones, _mm256_unpackhi_epi8(b0, b1)));
    }
    f[0] = _mm256_cvtepi16_epi32(add_lanes_epi16(s0));
    f[1] = _mm256_cvtepi16_epi32(add_lanes_epi16(s1));
    f[2] = _mm256_cvtepi16_epi32(add_lanes_epi16(s2));
    f[3] = _mm256_cvtepi16_epi32(add_lanes_epi16(s3));
}

/* 2 and 4 bits: the two bit-planes of an output in adjacent bytes, combined by one pmaddubsw against 1,2.
 * In the layout a 16-byte weight vector's bytes 0-7 are plane p of 8 outputs and bytes 8-15 plane p + 1 of the
 * same outputs (in both nibbles: rows 0..15 and 16..31); one byte shuffle of the weight vector (PAIR_PERM:
 * 0,8,1,9,...) puts the two planes of each output side by side before the nibbles are split, so that every
 * lookup vector holds (plane p, plane p + 1) pairs and pmaddubsw(1,2,...) sums S_p + 2 S_{p+1} into int16
 * directly: one shuffle replaces the even/odd widening (two operations per lookup vector) and the plane fold.
 * Exact: |S_p + 2 S_{p+1}| <= 3 * 128 * actk fits int16 for actk <= 32.
 * comb: 2 bits, outputs 0-7 (low nibbles) and 8-15 (high nibbles); 4 bits, outputs 0-7
 * (planes 0,1 + 4 * planes 2,3). */
#define PAIR_PERM() _mm256_setr_epi8(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15, \
                                     0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15)
#define ROWS_PAIRED 4 /* rows per index load in the row block (one accumulator per row) */

INLINE_FWD AVX2 void sums_pair(const uint8_t *wv, const int8_t *tv, int64_t n, const int BITS, __m256i comb[4]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), perm = PAIR_PERM(), c12 = _mm256_set1_epi16(0x0201);
    __m256i a16 = _mm256_setzero_si256(), b16 = a16;
#pragma GCC unroll 4
    for (int64_t i = 0; i < n; i += 2) {
        __m256i W, T;
        if (i + 1 < n) {
            W = _mm256_loadu_si256((const __m256i *)(wv + 16 * i));
            T = _mm256_loadu_si256((const __m256i *)(tv + 16 * i));
        } else { /* odd count: a zero table in the high lane looks up zeros */
            W = _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)(wv + 16 * i)));
            T = _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)(tv + 16 * i)));
        }
        W = _mm256_shuffle_epi8(W, perm);
        const __m256i a = _mm256_shuffle_epi8(T, _mm256_and_si256(W, m4));
        const __m256i b = _mm256_shuffle_epi8(T, _mm256_and_si256(_mm256_srli_epi16(W, 4), m4));
        a16 = _mm256_add_epi16(a16, _mm256_maddubs_epi16(c12, a));
        b16 = _mm256_add_epi16(b16, _mm256_maddubs_epi16(c12, b));
    }
    if (BITS == 4 && n <= 16) {
        /* 4 bits: planes 0,1 (low nibbles) plus 4 times planes 2,3 (high nibbles) combined in int16, before the
         * lane sum and the widening (5 operations instead of 8).  Exact: a table's pair sum is at most 3 * 128 in
         * magnitude, so one lane of a + 4b is at most 5 * 3 * 128 * n / 2 and the lane sum 1920 * n <= 30720 for
         * n <= 16 tables (act group 64 and less).  Measured on a Zen 3 EPYC, one tile alternated in a C harness:
         * the 4-bit GEMV 1.025-1.03x faster. */
        comb[0] = _mm256_cvtepi16_epi32(add_lanes_epi16(_mm256_add_epi16(a16, _mm256_slli_epi16(b16, 2))));
        return;
    }
    /* tables j (low lane) and j + 1 (high lane) added */
    pair_sums_to_int32(add_lanes_epi16(a16), add_lanes_epi16(b16), BITS, comb);
}

/* Fast aggregation: the same lookups reduced by a tree of rounding-halving averages.  The first level
 * averages the two lanes (tables 2i, 2i+1); later levels average whole vectors of 32 rows. */
INLINE_FWD AVX2 void sums_fa(const uint8_t *wv, const int8_t *tv, int64_t n, __m256i f[4]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256i lv[16];
    lv[0] = _mm256_setzero_si256();
    if (n == 1) {
        const __m128i w = _mm_loadu_si128((const __m128i *)wv);
        const __m256i idx = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(w, 4), w), m4);
        lv[0] = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)tv)), idx);
    } else {
        for (int64_t i = 0; i < n; i += 2) {
            const __m256i W = _mm256_loadu_si256((const __m256i *)(wv + 16 * i));
            const __m256i T = _mm256_loadu_si256((const __m256i *)(tv + 16 * i));
            const __m256i a = _mm256_shuffle_epi8(T, _mm256_and_si256(W, m4));
            const __m256i b = _mm256_shuffle_epi8(T, _mm256_and_si256(_mm256_srli_epi16(W, 4), m4));
            const __m128i ra = ravg_epi8_128(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
            const __m128i rb = ravg_epi8_128(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
            lv[i / 2] = _mm256_set_m128i(rb, ra);
        }
        for (int64_t m = n / 2; m > 1; m /= 2)
            for (int64_t i = 0; i < m / 2; ++i) lv[i] = ravg_epi8(lv[2 * i], lv[2 * i + 1]);
    }
    const __m128i lo = _mm256_castsi256_si128(lv[0]), hi = _mm256_extracti128_si256(lv[0], 1);
    f[0] = _mm256_cvtepi8_epi32(lo);
    f[1] = _mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8));
    f[2] = _mm256_cvtepi8_epi32(hi);
    f[3] = _mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8));
}

/* Float tables (the exact-check mode): the same lookups in float32, 8 rows per vector.  A table's 16 floats
 * sit in two vectors; vpermps picks from each with the index's low 3 bits and bit 3 (moved to the sign
 * position) chooses between them.  Each row's sum runs over the tables in order from +0, as in the scalar
 * statement, so the result is the same bits. */
INLINE_FWD AVX2 void sums_float(const uint8_t *wv, const float *tv, int64_t n, __m256 f[4]) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (int64_t i = 0; i < n; ++i) {
        const __m256 lo = _mm256_loadu_ps(tv + 16 * i), hi = _mm256_loadu_ps(tv + 16 * i + 8);
        const __m256i b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(wv + 16 * i)));     /* bytes 0-7 */
        const __m256i b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(wv + 16 * i + 8))); /* bytes 8-15 */
#define LOOKUP(c) _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, c), _mm256_permutevar8x32_ps(hi, c), \
                                   _mm256_castsi256_ps(_mm256_slli_epi32(c, 28)))
        s0 = _mm256_add_ps(s0, LOOKUP(b0));                           /* rows 0-7: low nibbles */
        s1 = _mm256_add_ps(s1, LOOKUP(b1));                           /* rows 8-15 */
        s2 = _mm256_add_ps(s2, LOOKUP(_mm256_srli_epi32(b0, 4)));     /* rows 16-23: high nibbles */
        s3 = _mm256_add_ps(s3, LOOKUP(_mm256_srli_epi32(b1, 4)));     /* rows 24-31 */
#undef LOOKUP
    }
    f[0] = s0, f[1] = s1, f[2] = s2, f[3] = s3;
}

/* The tile kernel body, inlined per sub-group size so that the table loops unroll (ACTK is a
 * compile-time constant in the specialised copies below; 0 means "use p->actk"). */
#define INLINE static inline __attribute__((always_inline))

enum { AGG_INT16 = 0, AGG_FAST = 1, AGG_FLOAT = 2 }; /* int8 tables summed in int16; -fa tree; float tables */

INLINE AVX2 void tile_kernel(const lut_problem *p, const uint8_t *w, const float *S, const lut_row *row, float *C,
                             float *y, const int64_t ACTK, const int64_t KF, const int agg, const int BITS) {
    const int64_t actk = ACTK ? ACTK : p->actk;
    const int64_t bm = p->bm, kf = KF ? KF : p->kf, KO = p->k / (4 * kf), nB = bm / 32, nsub = kf / actk, P = bm / BITS;
    const int blk = p->zp ? 16 : 8, zp = p->zp, per_tensor = p->per_tensor;
    const int8_t *table = (const int8_t *)row->table;
    const float *ftable = (const float *)row->table;
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
                __m256 f[4];
                if (agg == AGG_FLOAT) {
                    for (int bl = 0; bl < NB(BITS); ++bl) {
                        __m256 v[4];
                        sums_float(wb + (bl * kf + sub * actk) * 16, ftable + (ko * kf + sub * actk) * 16, actk, v);
                        fold_float(v, bl, BITS, f);
                    }
                } else {
                    __m256i comb[4];
                    if (agg == AGG_INT16 && PAIRED(BITS)) { /* NB is 1: the block's combined sums directly */
                        sums_pair(wb + sub * actk * 16, tk + sub * actk * 16, actk, BITS, comb);
                    } else {
                        for (int bl = 0; bl < NB(BITS); ++bl) {
                            __m256i v[4];
                            if (agg == AGG_FAST)
                                sums_fa(wb + (bl * kf + sub * actk) * 16, tk + sub * actk * 16, actk, v);
                            else
                                sums_int8(wb + (bl * kf + sub * actk) * 16, tk + sub * actk * 16, actk, v);
                            fold_int(v, bl, BITS, comb);
                        }
                    }
                    comb_to_floats(comb, NOG(BITS), f);
                }
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

AVX2 void lut_tile_avx2(const lut_problem *p, const uint8_t *w, const float *S, const lut_row *row, float *C,
                        float *y) {
#define FLOAT_TILE(A, F, B) tile_kernel(p, w, S, row, C, y, A, F, AGG_FLOAT, B)
#define FAST_TILE(A, F, B) tile_kernel(p, w, S, row, C, y, A, F, AGG_FAST, B)
#define INT_TILE(A, F, B) tile_kernel(p, w, S, row, C, y, A, F, AGG_INT16, B)
    if (p->mode == LUT_FLOAT) {
        LUT_BY_BITS(FLOAT_TILE, 0, 0)
    } else if (p->fa) {
        LUT_BY_BITS(FAST_TILE, 0, 0)
    } else {
        LUT_BY_SHAPE(INT_TILE)
    }
}

/* ---------------------------------------------------------------------------------------------
 * Row block (GEMM): per chunk and 32-row block, the block's weight vectors are split into their low and
 * high nibbles once (at 2 and 4 bits after the plane-pair shuffle), then every row of the block looks its
 * tables up with them.  The weight bytes are read once per row block instead of once per row, and the
 * shuffle and nibble extraction are shared.  Each row's integer sums are exact and its float operations are
 * those of tile_kernel, in the same order, so the outputs are the same bits. */

/* Row sums of one sub-group for R activation rows from pre-split indices: idx[i] holds table i's low nibbles
 * (rows 0..15) in the low lane and its high nibbles (rows 16..31) in the high lane, so one lookup in table i
 * broadcast to both lanes gives all 32 rows (the GEMV kernel, which splits each weight vector once, keeps two
 * tables per register instead).  Two tables per step: their lookups interleaved bytewise (as in sums_int8) and
 * summed in pairs by one pmaddubsw against ones.  Each index vector is loaded once for the R rows.
 * v[r][0..3]: int32 sums of rows 0-7, ..., 24-31 of row r's lookups (1 and 3 bits, whose planes are folded
 * afterwards). */
INLINE_FWD AVX2 void sums_bcast(const __m256i *idx, const int8_t *const *t, int64_t n, const int R, __m256i v[][4]) {
    const __m256i ones = _mm256_set1_epi8(1);
    __m256i lo[4], hi[4]; /* rows 0-7 | 16-23 and rows 8-15 | 24-31 */
    for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int64_t i = 0; i < n; i += 2) {
        const __m256i ix0 = _mm256_load_si256(idx + i);
        const __m256i ix1 = i + 1 < n ? _mm256_load_si256(idx + i + 1) : _mm256_setzero_si256();
        for (int r = 0; r < R; ++r) {
            const __m256i a0 = _mm256_shuffle_epi8(
                _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(t[r] + 16 * i))), ix0);
            const __m256i a1 = i + 1 < n ? _mm256_shuffle_epi8(
                _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(t[r] + 16 * i + 16))), ix1)
                                         : _mm256_setzero_si256(); /* odd count: zeros */
            lo[r] = _mm256_add_epi16(lo[r], _mm256_maddubs_epi16(ones, _mm256_unpacklo_epi8(a0, a1)));
            hi[r] = _mm256_add_epi16(hi[r], _mm256_maddubs_epi16(ones, _mm256_unpackhi_epi8(a0, a1)));
        }
    }
    for (int r = 0; r < R; ++r) {
        v[r][0] = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(lo[r]));
        v[r][1] = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(hi[r]));
        v[r][2] = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(lo[r], 1));
        v[r][3] = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(hi[r], 1));
    }
}

/* The same for 2 and 4 bits from indices whose bytes were put in plane pairs (PAIR_PERM, as in sums_pair): one
 * lookup, one pmaddubsw against 1,2 and one add per table and row, and the sums come out combined.
 * comb[r]: 2 bits, outputs 0-7 and 8-15; 4 bits, outputs 0-7. */
INLINE_FWD AVX2 void sums_pair_bcast(const __m256i *idx, const int8_t *const *t, int64_t n, const int R, const int BITS,
                                     __m256i comb[][4]) {
    const __m256i c12 = _mm256_set1_epi16(0x0201);
    __m256i s[4];
    for (int r = 0; r < R; ++r) s[r] = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int64_t i = 0; i < n; ++i) {
        const __m256i ix = _mm256_load_si256(idx + i);
        for (int r = 0; r < R; ++r) {
            const __m256i T = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(t[r] + 16 * i)));
            const __m256i a = _mm256_shuffle_epi8(T, ix);
            s[r] = _mm256_add_epi16(s[r], _mm256_maddubs_epi16(c12, a));
        }
    }
    for (int r = 0; r < R; ++r)
        pair_sums_to_int32(_mm256_castsi256_si128(s[r]), _mm256_extracti128_si256(s[r], 1), BITS, comb[r]);
}

#define ROWS_MAX_KF 32

/* R rows (rows[0..R-1]) of a row block through one chunk and super-block: sums, float stage, partial outputs. */
INLINE AVX2 void rows_step(const lut_problem *p, const __m256i *idx, const lut_row *rows, const int R, int64_t ko,
                           int64_t o0, float *C, int64_t P, const float *Sg, const int64_t actk, const int64_t kf,
                           const int BITS) {
    const int64_t nsub = kf / actk;
    const int blk = p->zp ? 16 : 8;
    const int8_t *tk[4];
    for (int r = 0; r < R; ++r) tk[r] = (const int8_t *)rows[r].table + ko * kf * 16;
    __m256 acc[4][4];
    for (int r = 0; r < R; ++r) start_chunk(NOG(BITS), _mm256_set1_ps(rows[r].vbias[ko]), acc[r]);
    for (int64_t sub = 0; sub < nsub; ++sub) {
        const int64_t sg = ko * nsub + sub;
        const int8_t *t[4];
        for (int r = 0; r < R; ++r) t[r] = tk[r] + sub * actk * 16;
        __m256i comb[4][4];
        if (PAIRED(BITS)) {
            sums_pair_bcast(idx + sub * actk, t, actk, R, BITS, comb);
        } else {
            for (int bl = 0; bl < NB(BITS); ++bl) {
                __m256i v[4][4];
                sums_bcast(idx + bl * kf + sub * actk, t, actk, R, v);
                for (int r = 0; r < R; ++r) fold_int(v[r], bl, BITS, comb[r]);
            }
        }
        for (int r = 0; r < R; ++r) {
            __m256 f[4];
            comb_to_floats(comb[r], NOG(BITS), f);
            add_subgroup(f, NOG(BITS), _mm256_set1_ps(rows[r].sgscale[sg]), acc[r]);
        }
    }
    for (int r = 0; r < R; ++r)
        update_outputs(C + r * P + o0, acc[r], NOG(BITS), Sg + (o0 / 8) * blk, _mm256_set1_ps(2.0f * rows[r].bsum[ko]),
                       p->per_tensor, p->zp, blk);
}

INLINE AVX2 void tile_rows_int8(const lut_problem *p, const uint8_t *w, const float *S, const lut_row *rows,
                                int64_t nrows, float *C, float *y, int64_t ldy, const int64_t ACTK, const int64_t KF,
                                const int BITS) {
    const int64_t actk = ACTK ? ACTK : p->actk;
    const int64_t bm = p->bm, kf = KF ? KF : p->kf, KO = p->k / (4 * kf), nB = bm / 32, P = bm / BITS;
    const int blk = p->zp ? 16 : 8, per_tensor = p->per_tensor;
    const __m256i m4 = _mm256_set1_epi8(0x0F), perm = PAIR_PERM();
    __m256i idx[NB(BITS) * ROWS_MAX_KF];
    const int64_t group_stride = (P / 8) * blk, chunks_per_group = per_tensor ? KO : p->gs / (4 * kf);
    memset(C, 0, (size_t)(nrows * P) * sizeof(float));
    const float *Sg = S;
    int64_t left = chunks_per_group;
    for (int64_t ko = 0; ko < KO; ++ko) {
        const uint8_t *wk = w + ko * nB * kf * 16;
        for (int64_t B0 = 0; B0 < nB; B0 += NB(BITS)) {
            const uint8_t *wb = wk + B0 * kf * 16;
            for (int64_t i = 0; i < NB(BITS) * kf / 2; ++i) { /* tables 2i, 2i+1: low nibbles | high nibbles */
                __m256i W = _mm256_loadu_si256((const __m256i *)(wb + 32 * i));
                if (PAIRED(BITS)) W = _mm256_shuffle_epi8(W, perm);
                const __m256i lo = _mm256_and_si256(W, m4), hi = _mm256_and_si256(_mm256_srli_epi16(W, 4), m4);
                idx[2 * i] = _mm256_permute2x128_si256(lo, hi, 0x20);
                idx[2 * i + 1] = _mm256_permute2x128_si256(lo, hi, 0x31);
            }
            const int64_t o0 = B0 * 32 / BITS;
            int64_t r = 0;
            if (PAIRED(BITS))
                for (; r + ROWS_PAIRED <= nrows; r += ROWS_PAIRED)
                    rows_step(p, idx, rows + r, ROWS_PAIRED, ko, o0, C + r * P, P, Sg, actk, kf, BITS);
            for (; r + 2 <= nrows; r += 2) rows_step(p, idx, rows + r, 2, ko, o0, C + r * P, P, Sg, actk, kf, BITS);
            if (r < nrows) rows_step(p, idx, rows + r, 1, ko, o0, C + r * P, P, Sg, actk, kf, BITS);
        }
        if (--left == 0) {
            Sg += group_stride;
            left = chunks_per_group;
        }
    }
    for (int64_t r = 0; r < nrows; ++r) finish_outputs(C + r * P, y + r * ldy, P, per_tensor, per_tensor ? S[0] : 0.0f);
}

AVX2 void lut_tile_rows_avx2(const lut_problem *p, const uint8_t *w, const float *S, const lut_row *rows,
                             int64_t nrows, float *C, float *y, int64_t ldy) {
    /* float tables, fast aggregation, odd sub-groups or wide chunks: one row at a time */
    if (p->mode != LUT_INT8 || p->fa || (p->actk & 1) || p->kf > ROWS_MAX_KF) {
        for (int64_t r = 0; r < nrows; ++r) lut_tile_avx2(p, w, S, rows + r, C, y + r * ldy);
        return;
    }
#define ROWS(A, F, B) tile_rows_int8(p, w, S, rows, nrows, C, y, ldy, A, F, B)
    LUT_BY_ACTK(ROWS)
}

/* ---------------------------------------------------------------------------------------------
 * Baseline: dequantise then FMA.  Per block of 8 outputs and kfactor chunk, the codes of the 8
 * outputs for 4*kf activations are decoded from their bit-planes into float weights
 * w = code*s + (-(2^(b-1))*s - z) (one FMA per 8 weights), stored in a small buffer, and every
 * activation row then accumulates them with one FMA per 8 weights.  It reads the same packed bits
 * as the LUT kernel, so the comparison isolates table lookup against dequantisation. */

INLINE AVX2 void dq_tile(const lut_problem *p, const uint8_t *w, const float *S, const float *x, int64_t n,
                         float *y, int64_t ldy, float *work, const int b) {
    const int64_t kf = p->kf, KO = p->k / (4 * kf), nB = p->bm / 32, P = p->bm / b;
    const int blk = p->zp ? 16 : 8;
    const __m256i m1 = _mm256_set1_epi32(1);
    const __m256 half = _mm256_set1_ps((float)(1 << (b - 1)));
    float *wf = work;                /* [4kf][8] */
    float *acc = work + 4 * kf * 8;  /* [n][8] */
    for (int64_t ob = 0; ob < P / 8; ++ob) {
        /* where plane i of this block lives: byte offset of its 8 rows and the nibble shift */
        int64_t off[4];
        __m128i sh[4];
        for (int i = 0; i < b; ++i) {
            const int64_t rr = ob * 8 * b + 8 * i;
            off[i] = (rr / 32) * kf * 16 + rr % 16;
            sh[i] = _mm_cvtsi32_si128((int)((rr % 32) / 16) * 4);
        }
        memset(acc, 0, (size_t)n * 8 * sizeof(float));
        for (int64_t ko = 0; ko < KO; ++ko) {
            __m256 s, o;
            if (p->per_tensor) {
                s = _mm256_set1_ps(S[0]);
                o = _mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(half, s));
            } else {
                const float *Sg = S + (ko * 4 * kf / p->gs) * (P / 8) * blk + ob * blk;
                s = _mm256_loadu_ps(Sg);
                o = _mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(half, s));
                if (p->zp) o = _mm256_sub_ps(o, _mm256_loadu_ps(Sg + 8));
            }
            const uint8_t *wk = w + ko * nB * kf * 16;
            for (int64_t ki = 0; ki < kf; ++ki) {
                __m256i nib[4];
                for (int i = 0; i < b; ++i) {
                    const __m128i bytes = _mm_loadl_epi64((const __m128i *)(wk + off[i] + ki * 16));
                    nib[i] = _mm256_srl_epi32(_mm256_cvtepu8_epi32(bytes), sh[i]);
                }
                for (int t = 0; t < 4; ++t) {
                    __m256i code = _mm256_setzero_si256();
                    for (int i = 0; i < b; ++i) {
                        const __m256i bit = _mm256_and_si256(_mm256_srli_epi32(nib[i], t), m1);
                        code = _mm256_or_si256(code, _mm256_slli_epi32(bit, i));
                    }
                    _mm256_storeu_ps(wf + (ki * 4 + t) * 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(code), s, o));
                }
            }
            for (int64_t j = 0; j < n; ++j) {
                const float *xj = x + j * p->k + ko * 4 * kf;
                __m256 a0 = _mm256_loadu_ps(acc + j * 8), a1 = _mm256_setzero_ps(), a2 = a1, a3 = a1;
                for (int64_t kk = 0; kk < 4 * kf; kk += 4) { /* four chains hide the FMA latency */
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(wf + kk * 8), _mm256_broadcast_ss(xj + kk), a0);
                    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(wf + kk * 8 + 8), _mm256_broadcast_ss(xj + kk + 1), a1);
                    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(wf + kk * 8 + 16), _mm256_broadcast_ss(xj + kk + 2), a2);
                    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(wf + kk * 8 + 24), _mm256_broadcast_ss(xj + kk + 3), a3);
                }
                _mm256_storeu_ps(acc + j * 8, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
            }
        }
        for (int64_t j = 0; j < n; ++j) memcpy(y + j * ldy + ob * 8, acc + j * 8, 8 * sizeof(float));
    }
}

AVX2 void dq_tile_avx2(const lut_problem *p, const uint8_t *w, const float *S, const float *x, int64_t n,
                       float *y, int64_t ldy, float *work) {
    switch (p->bits) { /* constant bit widths let the plane loops unroll */
    case 1: dq_tile(p, w, S, x, n, y, ldy, work, 1); break;
    case 2: dq_tile(p, w, S, x, n, y, ldy, work, 2); break;
    case 3: dq_tile(p, w, S, x, n, y, ldy, work, 3); break;
    default: dq_tile(p, w, S, x, n, y, ldy, work, 4); break;
    }
}

/* ---------------------------------------------------------------------------------------------
 * Verification reference: 16 codes widened to int16, multiplied by int16 activations and summed in
 * pairs with pmaddwd into int32 lanes, flushed to int64 often enough that no lane can overflow
 * (|a| < 2^15, codes < 16: one pmaddwd adds < 2^20 per lane, so 2^10 steps stay below 2^31).
 * The group combination is scalar double arithmetic in the same order as ref_rows_scalar. */

static inline AVX2 int64_t hsum_epi32(__m256i v) {
    const __m256i w = _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(v)),
                                       _mm256_cvtepi32_epi64(_mm256_extracti128_si256(v, 1)));
    const __m128i u = _mm_add_epi64(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    return _mm_cvtsi128_si64(u) + _mm_extract_epi64(u, 1);
}

/* Four int32 vectors reduced at once: lane i of the result is the sum of v[i]'s eight lanes.  Exact while
   every sum stays below 2^31 (the caller's limit on the group size). */
static inline AVX2 __m128i hsum4_epi32(__m256i v0, __m256i v1, __m256i v2, __m256i v3) {
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/* Group sums of codes times activation rows, exact in int32 lanes: the caller keeps every group at most
   REF_GROUP_MAX codes, so neither a lane nor a reduced sum can overflow. */
#define REF_NB 4
#define REF_GROUP_MAX 4096 /* 4096 codes < 16 times any int16 (|a| <= 2^15): below 2^31 */

/* `ng` consecutive groups times `nj` activation rows (ng*nj == 4), reduced together: dot[g*REF_NB + j]. */
static inline __attribute__((always_inline)) AVX2 void ref_four(const uint8_t *c, const int16_t *a, int64_t k,
                                                                int64_t gs, const int ng, const int nj, int64_t *dot) {
    __m256i v[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int g = 0; g < ng; ++g)
        for (int64_t i = 0; i < gs; i += 16) {
            const __m256i cw = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(c + g * gs + i)));
            for (int j = 0; j < nj; ++j)
                v[g * nj + j] = _mm256_add_epi32(v[g * nj + j], _mm256_madd_epi16(
                                                     cw, _mm256_loadu_si256((const __m256i *)(a + j * k + g * gs + i))));
        }
    int32_t t[4];
    _mm_storeu_si128((__m128i *)t, hsum4_epi32(v[0], v[1], v[2], v[3]));
    for (int g = 0; g < ng; ++g)
        for (int j = 0; j < nj; ++j) dot[g * REF_NB + j] = t[g * nj + j];
}

AVX2 void ref_rows_avx2(const uint8_t *codes, int64_t rows, int64_t k, const int16_t *a, int64_t n, int64_t gs,
                        double h, const double *s, const double *z, const double *A, double *y, int64_t ldy) {
    enum { NB = REF_NB, FLUSH = 1024, GC = 64 };
    const int64_t G = k / gs;
    /* Groups of whole 16-code steps whose int32 sums cannot overflow: the sums of four (group, row) pairs
       are reduced together with phaddd instead of one widening reduction each. */
    const int batched = gs % 16 == 0 && gs <= REF_GROUP_MAX;
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t j0 = 0; j0 < n; j0 += NB) {
            const int64_t nj = n - j0 < NB ? n - j0 : NB;
            double acc[NB] = {0.0, 0.0, 0.0, 0.0};
            for (int64_t g0 = 0; g0 < G; g0 += GC) {
                const int64_t gn = G - g0 < GC ? G - g0 : GC;
                int64_t dot[GC * NB];
                if (batched && (nj == 1 || nj == 2 || nj == 4) && gn % (4 / nj) == 0) {
                    const uint8_t *c = codes + r * k + g0 * gs;
                    const int16_t *aj = a + j0 * k + g0 * gs;
                    const int ng = 4 / (int)nj;
                    for (int64_t g = 0; g < gn; g += ng) {
                        if (nj == 4) ref_four(c + g * gs, aj + g * gs, k, gs, 1, 4, dot + g * NB);
                        else if (nj == 2) ref_four(c + g * gs, aj + g * gs, k, gs, 2, 2, dot + g * NB);
                        else ref_four(c + g * gs, aj + g * gs, k, gs, 4, 1, dot + g * NB);
                    }
                } else {
                    for (int64_t g = 0; g < gn; ++g) {
                        const uint8_t *c = codes + r * k + (g0 + g) * gs;
                        int64_t *d = dot + g * NB;
                        for (int64_t jj = 0; jj < nj; ++jj) d[jj] = 0;
                        int64_t i = 0;
                        while (i + 16 <= gs) {
                            __m256i v[NB] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                                             _mm256_setzero_si256()};
                            for (int64_t steps = 0; steps < FLUSH && i + 16 <= gs; ++steps, i += 16) {
                                const __m256i cw = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(c + i)));
                                for (int64_t jj = 0; jj < nj; ++jj)
                                    v[jj] = _mm256_add_epi32(v[jj], _mm256_madd_epi16(cw, _mm256_loadu_si256(
                                                                     (const __m256i *)(a + (j0 + jj) * k + (g0 + g) * gs + i))));
                            }
                            for (int64_t jj = 0; jj < nj; ++jj) d[jj] += hsum_epi32(v[jj]);
                        }
                        for (; i < gs; ++i)
                            for (int64_t jj = 0; jj < nj; ++jj) d[jj] += (int64_t)c[i] * a[(j0 + jj) * k + (g0 + g) * gs + i];
                    }
                }
                for (int64_t g = 0; g < gn; ++g)
                    for (int64_t jj = 0; jj < nj; ++jj) {
                        const double Ag = A[(g0 + g) * n + j0 + jj];
                        acc[jj] += s[r * G + g0 + g] * ((double)dot[g * NB + jj] - h * Ag);
                        if (z) acc[jj] -= z[r * G + g0 + g] * Ag;
                    }
            }
            for (int64_t jj = 0; jj < nj; ++jj) y[(j0 + jj) * ldy + r] = acc[jj];
        }
}

#endif /* TMAC_HAVE_AVX2 */
