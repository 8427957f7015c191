/*
 * The float stage of the x86 LUT tile kernels (lut_avx2.c and lut_avx512.c), in 256-bit vectors: a
 * super-block's bit-plane sums combined per output (in integers), one sub-group's combined sums times its table
 * scale fused-added to the chunk's accumulators, which start at the chunk's bias sum; a chunk's sums times the
 * weight scales (plus the zero points' share), the halving at the end.  The operations and their order are
 * reference.py's (fused where it fuses, never elsewhere): both paths use this one copy, so they give the scalar
 * kernel's bits for the same reason.
 *
 * Not a stand-alone header: the includer first includes the intrinsics (immintrin.h, or SIMDe's emulation)
 * and defines LUT_FLOAT_TARGET, its function target attribute (empty under SIMDe).
 */
#ifndef TMAC_LUT_FLOAT_X86_H
#define TMAC_LUT_FLOAT_X86_H

#define LUT_FLOAT_INLINE static inline __attribute__((always_inline)) LUT_FLOAT_TARGET

/* Super-blocks (lut_super_blocks): NB(BITS) 32-row blocks holding NOG(BITS) whole groups of 8 outputs.  BITS is a
 * compile-time constant in every copy of the kernels, so these and the folds below resolve to registers. */
#define NB(BITS) ((BITS) == 3 ? 3 : 1)
#define NOG(BITS) (4 * NB(BITS) / (BITS))

/* Row group q (rows 8q..8q+7) of block bl of a super-block is row group g8 = 4*bl + q: bit-plane g8 % BITS of
 * output group g8 / BITS.  One block's exact int32 sums (v[q]: rows 8q..8q+7) folded into the super-block's
 * combined sums, comb[og] = sum_i 2^i * plane_i: exact, |comb| <= 15*128*actk. */
LUT_FLOAT_INLINE void fold_int(const __m256i v[4], const int bl, const int BITS, __m256i comb[4]) {
    for (int q = 0; q < 4; ++q) {
        const int g8 = 4 * bl + q, plane = g8 % BITS, og = g8 / BITS;
        comb[og] = plane ? _mm256_add_epi32(comb[og], _mm256_slli_epi32(v[q], plane)) : v[q];
    }
}

/* The same for float sums (float tables): c = plane 0, then c = c + 2^i * plane i in plane order. */
LUT_FLOAT_INLINE void fold_float(const __m256 v[4], const int bl, const int BITS, __m256 comb[4]) {
    for (int q = 0; q < 4; ++q) {
        const int g8 = 4 * bl + q, plane = g8 % BITS, og = g8 / BITS;
        comb[og] = plane ? _mm256_add_ps(comb[og], _mm256_mul_ps(_mm256_set1_ps((float)(1 << plane)), v[q])) : v[q];
    }
}

/* Fused multiply-add a*b + c, rounded once (reference.py's fma32).  SIMDe's emulation of _mm256_fmadd_ps rounds
 * twice unless the compiler targets FMA itself, so the emulated build (the AVX-512 self-test) uses fmaf. */
#ifdef TMAC_AVX512_SIMDE
#include <math.h>
LUT_FLOAT_INLINE __m256 lut_fmadd(__m256 a, __m256 b, __m256 c) {
    float fa[8], fb[8], fc[8];
    _mm256_storeu_ps(fa, a), _mm256_storeu_ps(fb, b), _mm256_storeu_ps(fc, c);
    for (int i = 0; i < 8; ++i) fc[i] = fmaf(fa[i], fb[i], fc[i]);
    return _mm256_loadu_ps(fc);
}
#else
#define lut_fmadd _mm256_fmadd_ps
#endif

/* The start of a chunk's accumulators: the chunk's bias sum (vbias), for every output.  With the fused
 * multiply-adds this leaves one float operation per output and sub-group after the conversion (it was three:
 * mul, add bias, add) and two per chunk (five): measured on the EPYC (4096x14336, old and new modules
 * alternated in one process), the GEMV 1.02-1.09x faster at 1, 2 and 4 bits, the row block within noise. */
LUT_FLOAT_INLINE void start_chunk(const int nog, __m256 vb, __m256 acc[4]) {
    for (int o = 0; o < nog; ++o) acc[o] = vb;
}

/* One sub-group's combined sums (as floats) times its table scale, fused-added to acc. */
LUT_FLOAT_INLINE void add_subgroup(const __m256 f[4], const int nog, __m256 vs, __m256 acc[4]) {
    for (int o = 0; o < nog; ++o) acc[o] = lut_fmadd(f[o], vs, acc[o]);
}

/* A chunk's accumulators into the super-block's nog*8 partial outputs cb: times the weight scales (sq: the first
 * output group's blk floats, 8 scales and then 8 zero offsets with zero points), plus the zero offsets' share
 * (vbsum2: twice the chunk's raw-bias sum), each by one fused multiply-add. */
LUT_FLOAT_INLINE void update_outputs(float *cb, const __m256 acc[4], const int nog, const float *sq, __m256 vbsum2,
                                     int per_tensor, int zp, int blk) {
    for (int o = 0; o < nog; ++o) {
        __m256 cv = _mm256_loadu_ps(cb + o * 8);
        if (per_tensor) {
            cv = _mm256_add_ps(cv, acc[o]);
        } else {
            cv = lut_fmadd(acc[o], _mm256_loadu_ps(sq + o * blk), cv);
            if (zp) cv = lut_fmadd(_mm256_loadu_ps(sq + o * blk + 8), vbsum2, cv);
        }
        _mm256_storeu_ps(cb + o * 8, cv);
    }
}

/* y = C/2 (alpha_0), times the per-tensor scale s0 where there is one. */
LUT_FLOAT_INLINE void finish_outputs(const float *C, float *y, int64_t P, int per_tensor, float s0) {
    for (int64_t o = 0; o < P; o += 8) {
        __m256 v = _mm256_mul_ps(_mm256_set1_ps(0.5f), _mm256_loadu_ps(C + o));
        if (per_tensor) v = _mm256_mul_ps(v, _mm256_set1_ps(s0));
        _mm256_storeu_ps(y + o, v);
    }
}

/* 2 and 4 bits: the kernels put the two bit-planes of each output side by side in the lookup vectors (a byte
 * shuffle of the weight vector, see lut_avx2.c's sums_pair) and sum them with one pmaddubsw against 1,2.
 * lo and hi: the int16 pair sums of the low and high nibbles, 8 outputs each; comb (int32): 2 bits, outputs 0-7
 * and 8-15; 4 bits, outputs 0-7 (planes 0,1 plus 4 times planes 2,3). */
#define PAIRED(BITS) ((BITS) == 2 || (BITS) == 4)

/* The two 128-bit lanes of v added as int16 (sums of the tables held one per lane). */
LUT_FLOAT_INLINE __m128i add_lanes_epi16(__m256i v) {
    return _mm_add_epi16(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
}
LUT_FLOAT_INLINE void pair_sums_to_int32(__m128i lo, __m128i hi, const int BITS, __m256i comb[4]) {
    const __m256i a = _mm256_cvtepi16_epi32(lo), b = _mm256_cvtepi16_epi32(hi);
    if (BITS == 2) {
        comb[0] = a;
        comb[1] = b;
    } else {
        comb[0] = _mm256_add_epi32(a, _mm256_slli_epi32(b, 2));
    }
}

/* int32 row sums of a super-block to floats. */
LUT_FLOAT_INLINE void comb_to_floats(const __m256i comb[4], const int nog, __m256 f[4]) {
    for (int o = 0; o < nog; ++o) f[o] = _mm256_cvtepi32_ps(comb[o]);
}

#endif
