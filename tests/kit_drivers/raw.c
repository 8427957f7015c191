/*
 * Test driver without the C++ runtime (for cross-compiled kits): one T-MAC tensor through a kit's
 * preprocessor_int8 / qgemm_lut_int8 with the fork's offsets and element type (float16 on AArch64,
 * where the fork converts activations to fp16 first and outputs back to float).  The kcfg facts come
 * from the kernels' own shape table (tmac_kit_find); the C++ driver fork_like.cc covers kcfg reading.
 *
 *   raw BLOB M0 K BITS X N Y
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "t-mac/kernels.h"

#if defined(__ARM_NEON)
typedef __fp16 tmac_float_type;
#else
typedef float tmac_float_type;
#endif

static void *slurp(const char *path, long *size) {
  FILE *f = fopen(path, "rb");
  if (!f) { perror(path); exit(3); }
  fseek(f, 0, SEEK_END);
  *size = ftell(f);
  fseek(f, 0, SEEK_SET);
  void *buf = malloc(*size > 0 ? *size : 1);
  if (fread(buf, 1, *size, f) != (size_t)*size) { perror(path); exit(3); }
  fclose(f);
  return buf;
}

int main(int argc, char **argv) {
  if (argc < 8) { fprintf(stderr, "usage: %s BLOB M0 K BITS X N Y\n", argv[0]); return 3; }
  const int m0 = atoi(argv[2]), k = atoi(argv[3]), bits = atoi(argv[4]), n = atoi(argv[6]);
  long blob_size, x_size;
  uint8_t *blob = (uint8_t *)slurp(argv[1], &blob_size);
  float *x = (float *)slurp(argv[5], &x_size);
  const tmac_kit_shape *s = tmac_kit_find(m0, k, bits);
  if (!s) { fprintf(stderr, "no kernels for this shape\n"); return 4; }
  const long wbytes = (long)k * m0 * bits / 8;
  tmac_float_type *scales = (tmac_float_type *)malloc(sizeof(tmac_float_type) * s->scales_size);
  for (int i = 0; i < s->scales_size; i++) scales[i] = (tmac_float_type)((float *)(blob + wbytes))[i];
  tmac_float_type *act = (tmac_float_type *)malloc(sizeof(tmac_float_type) * (size_t)k * n);
  int8_t *qlut = (int8_t *)malloc((size_t)k * n * 4);
  tmac_float_type *ls = (tmac_float_type *)malloc(sizeof(tmac_float_type) * s->lut_scales_size * n * 2);
  tmac_float_type *lb = ls + (size_t)s->lut_scales_size * n;
  for (long i = 0; i < (long)k * n; i++) act[i] = (tmac_float_type)x[i];
  for (int r = 0; r < n; r++)
    if (preprocessor_int8(m0 * bits, k, 1, bits, act + (size_t)k * r, ls + (size_t)s->lut_scales_size * r,
                          lb + (size_t)s->lut_scales_size * r, qlut + (size_t)k * r * 4) != 0) {
      fprintf(stderr, "preprocessor failed\n");
      return 5;
    }
  const int chunk0 = m0 / s->n_tile_num;
  tmac_float_type *out = (tmac_float_type *)malloc(sizeof(tmac_float_type) * (size_t)m0 * n);
  for (int t = 0; t < s->n_tile_num; t++)
    for (int r = 0; r < n; r++)
      if (qgemm_lut_int8(chunk0 * bits, k, 1, bits, blob + t * (wbytes / s->n_tile_num),
                         qlut + (size_t)k * r * 4, scales + (size_t)t * s->scales_size / s->n_tile_num,
                         ls + (size_t)s->lut_scales_size * r, lb + (size_t)s->lut_scales_size * r,
                         out + (size_t)m0 * r + (size_t)t * chunk0) != 0) {
        fprintf(stderr, "qgemm failed\n");
        return 5;
      }
  float *y = (float *)malloc(sizeof(float) * (size_t)m0 * n);
  for (long i = 0; i < (long)m0 * n; i++) y[i] = (float)out[i];
  FILE *f = fopen(argv[7], "wb");
  if (!f || fwrite(y, 4, (size_t)m0 * n, f) != (size_t)m0 * n) { perror(argv[7]); return 3; }
  fclose(f);
  fprintf(stderr, "path %s\n", tmac_kit_path());
  return 0;
}
