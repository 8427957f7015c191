/*
 * Streaming-read probe for benchmarks/bench_kernels.py: the read bandwidth a kernel could reach on a
 * working set, measured with the same threads.  AVX2 32-byte loads into four independent accumulators
 * (x86 with GCC/Clang, chosen at run time), else 8-byte loads; the sum is returned so that the loads
 * cannot be optimised away.  Not part of the per-tile kernels the runtime kit emits.
 */
#include <stdint.h>
#include <string.h>

#include "probe.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

__attribute__((target("avx2"))) static uint64_t probe_avx2(const uint8_t *p, int64_t n) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 128 <= n; i += 128) {
        a0 = _mm256_add_epi64(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_loadu_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_add_epi64(a2, _mm256_loadu_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_add_epi64(a3, _mm256_loadu_si256((const __m256i *)(p + i + 96)));
    }
    const __m256i s = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    uint64_t out[4];
    _mm256_storeu_si256((__m256i *)out, s);
    uint64_t r = out[0] + out[1] + out[2] + out[3];
    for (; i < n; ++i) r += p[i];
    return r;
}
#define HAVE_PROBE_AVX2 1
#endif

static uint64_t probe_scalar(const uint8_t *p, int64_t n) {
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, v[4];
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        memcpy(v, p + i, 32);
        a0 += v[0], a1 += v[1], a2 += v[2], a3 += v[3];
    }
    for (; i < n; ++i) a0 += p[i];
    return a0 + a1 + a2 + a3;
}

uint64_t read_probe(const uint8_t *p, int64_t n) {
#ifdef HAVE_PROBE_AVX2
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) return probe_avx2(p, n);
#endif
    return probe_scalar(p, n);
}
