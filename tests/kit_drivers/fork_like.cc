// Test driver: one T-MAC tensor through a kit exactly the way T-MAC's llama.cpp fork drives it
// (ggml-tmac.cpp and the GGML_USE_TMAC block of ggml.c, without the TVM thread pool):
//   kcfg via TMAC::TMACGeMMWrapper::get_kcfg (checked against the kernels), scales converted to
//   tmac_float_type, a workspace of exactly ggml_tmac_mul_mat_get_wsize bytes, preprocessor once per
//   activation row, qgemm once per (tile, row) with the fork's weight/scale/LUT/output offsets, the
//   tiles shared out among `threads` threads.
//
//   fork_like BLOB M0 K BITS X N Y [THREADS]
//     BLOB: the tensor's bytes as in the GGUF (Format A weights, then float32 scales)
//     X: N rows of K float32 activations; Y: written, N rows of M0 float32 outputs
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "t-mac/tmac_gemm_wrapper.h"

#if defined(__ARM_NEON)
#include <arm_neon.h>
typedef float16_t tmac_float_type;
#else
typedef float tmac_float_type;
#endif

static std::vector<char> slurp(const char* path) {
  FILE* f = std::fopen(path, "rb");
  if (!f) { std::perror(path); std::exit(3); }
  std::vector<char> buf;
  char tmp[1 << 16];
  size_t n;
  while ((n = std::fread(tmp, 1, sizeof tmp, f)) > 0) buf.insert(buf.end(), tmp, tmp + n);
  std::fclose(f);
  return buf;
}

int main(int argc, char** argv) {
  if (argc < 8) {
    std::fprintf(stderr, "usage: %s BLOB M0 K BITS X N Y [THREADS]\n", argv[0]);
    return 3;
  }
  const int m0 = std::atoi(argv[2]), k = std::atoi(argv[3]), bits = std::atoi(argv[4]), n = std::atoi(argv[6]);
  const int nthreads = argc > 8 ? std::atoi(argv[8]) : 1;
  std::vector<char> blob = slurp(argv[1]);
  std::vector<char> xbytes = slurp(argv[5]);
  if ((long)xbytes.size() != (long)n * k * 4) { std::fprintf(stderr, "X has the wrong size\n"); return 3; }

  TMAC::TMACGeMMWrapper<tmac_float_type> wrapper;
  const TMAC::TMACGeMMConfig kcfg = wrapper.get_kcfg(m0, k, 1, bits);
  if (kcfg.bm == 0) { std::fprintf(stderr, "no kcfg\n"); return 4; }
  // ggml_tmac_get_nbytes
  const size_t nbytes = (size_t)k * m0 / 8 * bits + (size_t)kcfg.scales_size * sizeof(float);
  if (blob.size() < nbytes) { std::fprintf(stderr, "blob %zu bytes < %zu\n", blob.size(), nbytes); return 4; }
  // ggml_tmac_transform_tensor (I-types: no permutation; scales to tmac_float_type)
  uint8_t* qweights = (uint8_t*)blob.data();
  std::vector<tmac_float_type> scales(kcfg.scales_size);
  const float* file_scales = (const float*)(qweights + (size_t)k * m0 / 8 * bits);
  for (int i = 0; i < kcfg.scales_size; i++) scales[i] = (tmac_float_type)file_scales[i];

  // ggml_tmac_mul_mat_get_wsize, allocated exactly (a sanitizer build catches any write past it)
  size_t wsize = (size_t)k * n * 4 + (size_t)kcfg.lut_scales_size * n * 2 * sizeof(tmac_float_type);
  if (sizeof(tmac_float_type) == 2) wsize += (size_t)std::max(k, m0) * n * sizeof(tmac_float_type);
  char* wdata = (char*)std::malloc(wsize);
  char* cur = wdata;
  tmac_float_type* f_ptr = (tmac_float_type*)wdata;
  if (sizeof(tmac_float_type) == 2) cur = wdata + (size_t)std::max(k, m0) * n * sizeof(tmac_float_type);
  int8_t* qlut = (int8_t*)cur;
  tmac_float_type* lut_scales = (tmac_float_type*)(qlut + (size_t)k * n * 4);
  tmac_float_type* lut_biases = lut_scales + (size_t)kcfg.lut_scales_size * n;

  const float* x = (const float*)xbytes.data();
  for (int r = 0; r < n; r++) {
    void* act = (void*)(x + (size_t)k * r);
    if (sizeof(tmac_float_type) == 2) {
      for (int i = 0; i < k; i++) f_ptr[(size_t)k * r + i] = (tmac_float_type)x[(size_t)k * r + i];
      act = f_ptr + (size_t)k * r;
    }
    wrapper.llama_cpp_init(act, qlut + (size_t)k * r * 4, lut_scales + (size_t)kcfg.lut_scales_size * r,
                           lut_biases + (size_t)kcfg.lut_scales_size * r, m0, k, 1, bits);
  }

  const int n_tile_num = kcfg.n_tile_num;
  const int chunk0 = m0 / n_tile_num;
  const size_t w_chunk = (size_t)k * m0 * bits / 8 / n_tile_num;
  std::vector<tmac_float_type> out((size_t)n * m0);
  auto work = [&](int tid) {
    for (int t = tid; t < n_tile_num; t += nthreads) {
      const size_t scales_offset = (size_t)t * kcfg.scales_size / n_tile_num;
      for (int r = 0; r < n; r++) {
        wrapper.llama_cpp_compute(qweights + t * w_chunk, scales.data() + scales_offset, qlut + (size_t)k * r * 4,
                                  lut_scales + (size_t)kcfg.lut_scales_size * r,
                                  lut_biases + (size_t)kcfg.lut_scales_size * r,
                                  out.data() + (size_t)m0 * r + (size_t)t * chunk0, chunk0, k, 1, bits);
      }
    }
  };
  std::vector<std::thread> pool;
  for (int i = 1; i < nthreads; i++) pool.emplace_back(work, i);
  work(0);
  for (auto& th : pool) th.join();

  std::vector<float> y(out.size());
  for (size_t i = 0; i < out.size(); i++) y[i] = (float)out[i];
  FILE* f = std::fopen(argv[7], "wb");
  if (!f || std::fwrite(y.data(), 4, y.size(), f) != y.size()) { std::perror(argv[7]); return 3; }
  std::fclose(f);
  std::free(wdata);
  std::fprintf(stderr, "path %s\n", tmac_kit_path());
  return 0;
}
