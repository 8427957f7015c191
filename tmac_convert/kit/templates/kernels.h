/*
 * t-mac/kernels.h for a T-MAC kernel kit written by tmac-convert: the entry points of the kit's
 * lib/kernels.cc.  This header is the same for every model; the shapes live in kernels.cc.
 *
 * Per weight shape [M0, K] of b bits, kernels.cc defines T-MAC's per-shape functions
 *   preprocessor_t1_int8_m{M0*b}_k{K}_n1_b{b}(B, LUT_Scales, LUT_Biases, QLUT)
 *   qgemm_lut_t1_int8_m{bm}_k{K}_n1_b{b}(A, LUT, Scales, LUT_Scales, LUT_Biases, C)
 * and the two dispatchers below select them by (m, k, n, b).  Both return 0 on success and non-zero
 * when the kit has no kernel for the arguments (-1) or n is not 1 (-2).
 *
 * Element types follow the fork's tmac_float_type: float on x86, float16 on AArch64 (NEON).
 *   preprocessor_int8: m = M0*b, n = 1.  B = one activation row [k]; writes QLUT int8 [k/4][16], and
 *     LUT_Scales / LUT_Biases [lut_scales_size] (the kcfg field; K/(4*min(ags/4, kfactor)) slots).
 *   qgemm_lut_int8: m = bm (one tile), n = 1.  A = the tile's weight bytes (bm*k/8), Scales = the
 *     tile's scales (scales_size/n_tile_num values; the one value of a per-tensor scale), LUT* = the
 *     row's tables from preprocessor_int8.  C = bm/b outputs, overwritten.
 */
#ifndef TMAC_KIT_KERNELS_H_
#define TMAC_KIT_KERNELS_H_

#ifdef __cplusplus
extern "C" {
#endif

int preprocessor_int8(int m, int k, int n, int b, void* B, void* LUT_Scales, void* LUT_Biases, void* QLUT);
int qgemm_lut_int8(int m, int k, int n, int b, void* A, void* LUT, void* Scales, void* LUT_Scales, void* LUT_Biases,
                   void* C);

/* One weight shape the kernels were generated for: the shape, then the kcfg section that must describe it. */
typedef struct tmac_kit_shape {
  int m0, k, bits;
  int bm, simd_n_in, simd_n_out, kfactor, group_size, lut_scales_size, scales_size, n_tile_num;
  int act_group_size, zero_point, one_scale;
} tmac_kit_shape;

int tmac_kit_num_shapes(void);
const tmac_kit_shape* tmac_kit_shape_at(int i);
/* The shape [m0, k] of `bits` bits, or NULL when the kernels were not generated for it. */
const tmac_kit_shape* tmac_kit_find(int m0, int k, int bits);
/* What the kit was written for ("<model file> (tmac-convert <version>, <isa> kit)"). */
const char* tmac_kit_description(void);
/* The kernel path in use: "scalar", "avx2", "avx512" or "neon" (TMAC_KIT_PATH forces one). */
const char* tmac_kit_path(void);

#ifdef __cplusplus
}
#endif

#endif /* TMAC_KIT_KERNELS_H_ */
