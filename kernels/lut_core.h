/*
 * T-MAC LUT kernels: shared types and the per-path entry points (no Python here).
 *
 * The semantics, including the order of every float operation, are those of
 * tmac_convert/kernels/reference.py; each path (scalar, AVX2, AVX-512, NEON) reproduces them bit for bit.
 * The reference's fused multiply-adds are fused here too (fmaf, vfmadd, vfmaq_f32) and every other operation
 * is not: the code is built with -ffp-contract=off, so that no compiler fuses a mul and an add the reference
 * rounds twice.
 *
 * Blob layout (docs section 1): tile t holds bm bit-rows; its weight bytes are
 * [K/(4*kf)][bm/32][kf][16]: the 16 bytes of (chunk ko, block B, table ki) carry, in their low
 * nibbles, the 4-bit codes of rows 32B+0..15 and, in their high nibbles, rows 32B+16..31, all
 * for LUT table j = ko*kf + ki (activations 4j..4j+3).  Row rr of a tile is output
 * (rr/(8b))*8 + rr%8 of the tile, bit-plane (rr/8) % b.
 */
#ifndef TMAC_LUT_CORE_H
#define TMAC_LUT_CORE_H

#include <stdint.h>

enum { LUT_INT8 = 0, LUT_FLOAT = 1 };

/* LUT biases: bias = sum_j LUT_j[0] = -sum x, one per sub-group of bias_group activations, summed
 * sequentially in table order (that order is part of the result, so every path shares this loop). */
static inline void lut_biases(const float *x, int64_t k, int64_t bias_group, float *lbias) {
    for (int64_t g = 0; g < k / bias_group; ++g) {
        float b = 0.0f;
        for (int64_t j = g * bias_group / 4; j < (g + 1) * bias_group / 4; ++j) {
            const float *q = x + 4 * j;
            b = b - (((q[0] + q[1]) + q[2]) + q[3]);
        }
        lbias[g] = b;
    }
}
/* Per kfactor chunk (nsub sub-groups each), what the tile kernels add once per chunk, in reference.py's order:
 * bsum, the sub-groups' raw biases lbias added in order (the zero-point term), and vbias, the biases the
 * sub-groups contribute (the raw ones, or with fast aggregation the raw ones less sgscale times its bias factor)
 * added in order (the start of the chunk's accumulator).  lbias, sgscale: [nchunk*nsub]; sgscale is read only
 * with fa. */
static inline void lut_chunk_biases(const float *lbias, const float *sgscale, int fa, float fa_factor,
                                    int64_t nchunk, int64_t nsub, float *vbias, float *bsum) {
    for (int64_t ko = 0; ko < nchunk; ++ko) {
        float b = 0.0f, v = 0.0f;
        for (int64_t sub = 0; sub < nsub; ++sub) {
            const int64_t sg = ko * nsub + sub;
            const float vsub = fa ? lbias[sg] - sgscale[sg] * fa_factor : lbias[sg];
            b = sub ? b + lbias[sg] : lbias[sg];
            v = sub ? v + vsub : vsub;
        }
        bsum[ko] = b;
        vbias[ko] = v;
    }
}

enum { PATH_AUTO = 0, PATH_SCALAR = 1, PATH_AVX2 = 2, PATH_NEON = 3, PATH_AVX512 = 4 };

/* One kernel problem, checked by the caller (tmac_convert/kernels/spec.py and lut.c). */
typedef struct {
    int64_t m0, k;     /* outputs, inputs */
    int64_t gs;        /* weight group size along K (K for a per-tensor scale) */
    int64_t bm, kf;    /* tile height in bit-rows, LUT tables per K chunk */
    int64_t ags;       /* activations per LUT scale */
    int64_t actk;      /* tables per int16 sub-group: min(ags/4, kf) */
    int bits, zp, per_tensor;
    int mode;          /* LUT_INT8 or LUT_FLOAT */
    int fa;            /* fast aggregation (int8 only) */
} lut_problem;

/* The tables of one activation row, as the tile kernels read them.  Sub-group sg = ko*(kf/actk) + sub
 * covers tables [sg*actk, (sg+1)*actk). */
typedef struct {
    const void *table;    /* int8 or float [K/4][16], natural code order */
    const float *sgscale; /* [K/(4 actk)]: multiplies sub-group sg's integer (or float) sum */
    const float *vbias;   /* [K/(4 kf)]: per chunk, the sub-groups' biases added in order: the start of the
                             chunk's accumulator, which the sub-groups' scaled sums are fused-multiply-added to */
    const float *bsum;    /* [K/(4 kf)]: per chunk, the sub-groups' raw biases (-sum x) added in order,
                             for the zero-point term (equal to vbias except with fast aggregation) */
} lut_row;

/* Build one row's tables: table [K/4][16] (int8 or float), lscale [K/ags], lbias [K/bias_group]. */
void lut_build_scalar(const float *x, int64_t k, int64_t ags, int64_t bias_group, int mode,
                      void *table, float *lscale, float *lbias);

/* One activation row through one tile: y gets the tile's bm/bits outputs; C is 2*bm floats of scratch.
 * w points at the tile's weight bytes, s at the tile's scales (the whole scale array for a
 * per-tensor scale). */
typedef void (*lut_tile_fn)(const lut_problem *p, const uint8_t *w, const float *s, const lut_row *row,
                            float *C, float *y);
void lut_tile_scalar(const lut_problem *p, const uint8_t *w, const float *s, const lut_row *row,
                     float *C, float *y);

/* Several activation rows through one tile (the GEMM): rows[r] as in lut_tile_*, row r's outputs at
 * y + r*ldy; C is (nrows + 1)*bm floats of scratch.  Gives exactly what nrows calls of the one-row
 * function give (every output's float operations are the same); the SIMD versions read each weight
 * vector once for all the rows.  nrows is at most LUT_ROW_BLOCK.  Measured on the EPYC (GEMM 4096x14336, N=256,
 * 1 thread, interleaved builds): with the per-table index kernel 8 and 16 rows are within noise (322-351 ms), so 8
 * keeps a row block's tables (8 x 4K bytes: 459 KiB at K = 14336) in the L2. */
#define LUT_ROW_BLOCK 8
typedef void (*lut_tile_rows_fn)(const lut_problem *p, const uint8_t *w, const float *s, const lut_row *rows,
                                 int64_t nrows, float *C, float *y, int64_t ldy);
void lut_tile_rows_scalar(const lut_problem *p, const uint8_t *w, const float *s, const lut_row *rows,
                          int64_t nrows, float *C, float *y, int64_t ldy);

/* Baseline: dequantise a tile's weights to float and multiply by n activation rows with FMAs.
 * x is [n][k], y gets [n][ldy] at the tile's outputs; work is 4*kf*8 + 8*n floats of scratch. */
typedef void (*dq_tile_fn)(const lut_problem *p, const uint8_t *w, const float *s, const float *x,
                           int64_t n, float *y, int64_t ldy, float *work);
void dq_tile_scalar(const lut_problem *p, const uint8_t *w, const float *s, const float *x, int64_t n,
                    float *y, int64_t ldy, float *work);

/* Verification reference from plain row-major codes (no layout involved): for rows [0, rows),
 *   y[j][r] = sum_g s[r][g] * (P - h*A[g][j]) - z[r][g] * A[g][j],  P = sum_{k in g} codes[r][k] * a[j][k]
 * with A[g][j] = sum_{k in g} a[j][k]; P and A exact (integers), the sum over groups in float64 in group
 * order.  s, z: double [rows][K/gs] (z may be NULL); A: double [K/gs][n]; y: double, row j at y + j*ldy. */
typedef void (*ref_fn)(const uint8_t *codes, int64_t rows, int64_t k, const int16_t *a, int64_t n, int64_t gs,
                       double h, const double *s, const double *z, const double *A, double *y, int64_t ldy);
void ref_rows_scalar(const uint8_t *codes, int64_t rows, int64_t k, const int16_t *a, int64_t n, int64_t gs,
                     double h, const double *s, const double *z, const double *A, double *y, int64_t ldy);

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define TMAC_HAVE_AVX2 1
void lut_build_avx2(const float *x, int64_t k, int64_t ags, int64_t bias_group, int mode, void *table,
                    float *lscale, float *lbias);
void lut_tile_avx2(const lut_problem *p, const uint8_t *w, const float *s, const lut_row *row, float *C,
                   float *y);
void lut_tile_rows_avx2(const lut_problem *p, const uint8_t *w, const float *s, const lut_row *rows,
                        int64_t nrows, float *C, float *y, int64_t ldy);
void dq_tile_avx2(const lut_problem *p, const uint8_t *w, const float *s, const float *x, int64_t n,
                  float *y, int64_t ldy, float *work);
void ref_rows_avx2(const uint8_t *codes, int64_t rows, int64_t k, const int16_t *a, int64_t n, int64_t gs,
                   double h, const double *s, const double *z, const double *A, double *y, int64_t ldy);
#endif

/* AVX-512 (lut_avx512.c): compiled with per-function target attributes and chosen at run time, like AVX2;
 * TMAC_AVX512_SIMDE builds it on any CPU with SIMDe's emulated intrinsics (verification only).  Float tables,
 * fast aggregation and the table build are the AVX2 ones. */
#if defined(TMAC_AVX512_SIMDE) || ((defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)))
#define TMAC_HAVE_AVX512 1
void lut_build_avx512(const float *x, int64_t k, int64_t ags, int64_t bias_group, int mode, void *table,
                      float *lscale, float *lbias);
void lut_tile_avx512(const lut_problem *p, const uint8_t *w, const float *s, const lut_row *row, float *C,
                     float *y);
void lut_tile_rows_avx512(const lut_problem *p, const uint8_t *w, const float *s, const lut_row *rows,
                          int64_t nrows, float *C, float *y, int64_t ldy);
#endif

#if defined(__ARM_NEON) && defined(__aarch64__)
#define TMAC_HAVE_NEON 1
void lut_build_neon(const float *x, int64_t k, int64_t ags, int64_t bias_group, int mode, void *table, float *lscale,
                    float *lbias);
void lut_tile_neon(const lut_problem *p, const uint8_t *w, const float *s, const lut_row *row, float *C,
                   float *y);
void lut_tile_rows_neon(const lut_problem *p, const uint8_t *w, const float *s, const lut_row *rows,
                        int64_t nrows, float *C, float *y, int64_t ldy);
#endif

/* 1/scale, or 0 where that is not finite (all-zero groups, or a scale so small that 1/scale
 * overflows): the group's entries then quantise to 0. */
static inline float lut_reciprocal(float scale) {
    const float r = scale != 0.0f ? 1.0f / scale : 0.0f;
    return (r - r == 0.0f) ? r : 0.0f; /* r - r is NaN for an infinity */
}

/* The vectorised int8 table build of the SIMD paths (lut_build_avx2, lut_build_neon), in three passes: the biases,
 * `width` bias groups per call of `biases` (each lane its group's sequential chain, as lut_biases; the groups left
 * over by lut_biases itself); every act group's scale, amax/127 with `amax` the largest |x0|+|x1|+|x2|+|x3| of the
 * group's tables; then the tables of each act group from its reciprocal scale.  Separate passes let the scales'
 * divisions overlap the table arithmetic instead of stalling it once per act group.  The path functions work on
 * whole vectors of `width` tables, so act groups of other sizes (and float tables) take lut_build_scalar; every
 * value is the scalar build's, computed with its operations in its order. */
typedef void (*lut_biases_block_fn)(const float *x, int64_t bias_group, float *lbias);
typedef float (*lut_amax_fn)(const float *x, int64_t ntables);
typedef void (*lut_tables_fn)(const float *x, int64_t ntables, float r, int8_t *t);
static inline __attribute__((always_inline)) void lut_build_passes(const float *x, int64_t k, int64_t ags,
                                                                   int64_t bias_group, int mode, void *table,
                                                                   float *lscale, float *lbias, int64_t width,
                                                                   lut_biases_block_fn biases, lut_amax_fn amax,
                                                                   lut_tables_fn tables) {
    if (mode != LUT_INT8 || ags % (4 * width)) {
        lut_build_scalar(x, k, ags, bias_group, mode, table, lscale, lbias);
        return;
    }
    const int64_t nbias = k / bias_group, nag = k / ags;
    int64_t g = 0;
    for (; g + width <= nbias; g += width) biases(x + g * bias_group, bias_group, lbias + g);
    if (g < nbias) lut_biases(x + g * bias_group, k - g * bias_group, bias_group, lbias + g);
    for (g = 0; g < nag; ++g) lscale[g] = amax(x + g * ags, ags / 4) / 127.0f;
    for (g = 0; g < nag; ++g) /* act group g's tables start at table g*ags/4, 16 bytes each */
        tables(x + g * ags, ags / 4, lut_reciprocal(lscale[g]), (int8_t *)table + 4 * g * ags);
}

/* 32-row blocks per super-block: the fewest whole blocks that hold whole outputs (all b bit-planes of each), so
 * that the planes can be combined in integers before the float stage: 32*n rows = 32*n/b outputs.  One block
 * for 1, 2 and 4 bits, three for 3 bits (bm is a multiple of 96 then). */
static inline int64_t lut_super_blocks(int bits) { return bits == 3 ? 3 : 1; }

/* Dispatch to a kernel copy whose bit width, act sub-group size (tables) and kfactor are compile-time constants:
 * CALL(ACTK, KF, BITS), with ACTK = KF = 0 for shapes outside T-MAC's configurations (act sub-groups and chunks of
 * 8, 16 or 32 tables), whose copies read them from p.  Constant bits keep the plane folds in registers; constant
 * sub-group and chunk sizes let a chunk's sub-groups unroll, so that one sub-group's float stage overlaps the next
 * one's lookups (measured on the EPYC, C harness, 4096x1024 GEMV, kfactor 32: 1.07-1.14x). */
#define LUT_BY_BITS(CALL, A, F) switch (p->bits) { \
    case 1: CALL(A, F, 1); break; case 2: CALL(A, F, 2); break; case 3: CALL(A, F, 3); break; default: CALL(A, F, 4); break; }
#define LUT_BY_SHAPE(CALL) \
    if (p->actk == 8 && p->kf == 8) LUT_BY_BITS(CALL, 8, 8) \
    else if (p->actk == 8 && p->kf == 16) LUT_BY_BITS(CALL, 8, 16) \
    else if (p->actk == 8 && p->kf == 32) LUT_BY_BITS(CALL, 8, 32) \
    else if (p->actk == 16 && p->kf == 16) LUT_BY_BITS(CALL, 16, 16) \
    else if (p->actk == 16 && p->kf == 32) LUT_BY_BITS(CALL, 16, 32) \
    else if (p->actk == 32 && p->kf == 32) LUT_BY_BITS(CALL, 32, 32) \
    else LUT_BY_BITS(CALL, 0, 0)
/* The same with only the sub-group size and the bits constant (kfactor read from p): the row block, where a
 * constant kfactor measured no faster, and half as many copies keep the compile time down. */
#define LUT_BY_ACTK(CALL) \
    if (p->actk == 8) LUT_BY_BITS(CALL, 8, 0) \
    else if (p->actk == 16) LUT_BY_BITS(CALL, 16, 0) \
    else if (p->actk == 32) LUT_BY_BITS(CALL, 32, 0) \
    else LUT_BY_BITS(CALL, 0, 0)

#endif
