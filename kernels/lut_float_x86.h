/*
 * The float stage of the x86 LUT tile kernels (lut_avx2.c and lut_avx512.c), in 256-bit vectors: one
 * sub-group's integer sums scaled and biased, a chunk's sums times the weight scales (plus the zero points'
 * share), the bit-planes combined.  The operations and their order are reference.py's (mul, then add; never
 * FMA): both paths use this one copy, so they give the scalar kernel's bits for the same reason.
 *
 * Not a stand-alone header: the includer first includes the intrinsics (immintrin.h, or SIMDe's emulation)
 * and defines LUT_FLOAT_TARGET, its function target attribute (empty under SIMDe).
 */
#ifndef TMAC_LUT_FLOAT_X86_H
#define TMAC_LUT_FLOAT_X86_H

#define LUT_FLOAT_INLINE static inline __attribute__((always_inline)) LUT_FLOAT_TARGET

/* Where row block q (0..3) of 32-row block B lives: plane 0 or not, and the offset of its 8 scales.  With a
 * compile-time BITS of 1, 2 or 4 (4 divides 32/8), both follow from q alone, with no table look-up or branch
 * on data; otherwise from the precomputed info table. */
#define PLANE0(q) ((BITS == 1 || BITS == 2 || BITS == 4) ? ((q) % (BITS ? BITS : 1) == 0) : (bi[q] & 1))
#define SOFF(q) ((BITS == 1 || BITS == 2 || BITS == 4) ? (B * (4 / (BITS ? BITS : 1)) + (q) / (BITS ? BITS : 1)) * blk \
                                                        : (int64_t)(bi[q] >> 1))

/* The float stage of both tile kernels, in the reference's order (mul, then add; no FMA), so that the GEMV
 * and the row block give the same bits.  bi, B, blk and BITS locate the block's planes and scales (PLANE0,
 * SOFF). */

/* One sub-group's int16 sums (as floats) scaled by its table scale, plane 0 biased, added to acc. */
LUT_FLOAT_INLINE void add_subgroup(const __m256 f[4], __m256 vs, float vbias, int64_t sub, const int32_t *bi,
                              const int BITS, __m256 acc[4]) {
    for (int q = 0; q < 4; ++q) {
        __m256 v = _mm256_mul_ps(f[q], vs);
        if (PLANE0(q)) v = _mm256_add_ps(v, _mm256_set1_ps(vbias));
        acc[q] = sub ? _mm256_add_ps(acc[q], v) : v;
    }
}

/* A chunk's accumulators into the block's 32 partial outputs cb: times the weight scales, plus the zero
 * offsets' share on plane 0 (vbsum: the chunk's table-bias sum). */
LUT_FLOAT_INLINE void update_block(float *cb, const __m256 acc[4], const float *Sg, __m256 vbsum, int per_tensor, int zp,
                              const int32_t *bi, int64_t B, int blk, const int BITS) {
    const __m256 two = _mm256_set1_ps(2.0f);
    for (int q = 0; q < 4; ++q) {
        __m256 cv = _mm256_loadu_ps(cb + q * 8);
        if (per_tensor) {
            cv = _mm256_add_ps(cv, acc[q]);
        } else {
            const float *sq = Sg + SOFF(q);
            cv = _mm256_add_ps(cv, _mm256_mul_ps(acc[q], _mm256_loadu_ps(sq)));
            if (zp && PLANE0(q))
                cv = _mm256_add_ps(cv, _mm256_mul_ps(two, _mm256_mul_ps(_mm256_loadu_ps(sq + 8), vbsum)));
        }
        _mm256_storeu_ps(cb + q * 8, cv);
    }
}

/* y = sum_i alpha_i C[plane i] (alpha = 1/2, 1, 2, 4), times the per-tensor scale s0 where there is one. */
LUT_FLOAT_INLINE void combine_planes(const float *C, float *y, int64_t P, int b, int per_tensor, float s0) {
    for (int64_t ob = 0; ob < P / 8; ++ob) {
        __m256 v = _mm256_mul_ps(_mm256_set1_ps(0.5f), _mm256_loadu_ps(C + ob * 8 * b));
        for (int i = 1; i < b; ++i)
            v = _mm256_add_ps(v, _mm256_mul_ps(_mm256_set1_ps((float)(1 << (i - 1))), _mm256_loadu_ps(C + ob * 8 * b + i * 8)));
        if (per_tensor) v = _mm256_mul_ps(v, _mm256_set1_ps(s0));
        _mm256_storeu_ps(y + ob * 8, v);
    }
}

/* Per 8-row block of a tile: the offset of its 8 scales within a group's scales, times 2, plus 1 on bit-plane
 * 0 (what PLANE0 and SOFF read for bit widths other than 1, 2 and 4).  Precomputed so that no division is
 * left in the loops. */
static inline void block_info(int32_t *info, int64_t bm, int b, int blk) {
    for (int64_t ib = 0; ib < bm / 8; ++ib) info[ib] = (int32_t)((ib / b) * blk * 2 + (ib % b == 0));
}

#endif
