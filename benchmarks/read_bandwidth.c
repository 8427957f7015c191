/* Streaming read bandwidth: THREADS threads each sum their slice of a float buffer of MB megabytes
 * (larger than the last-level cache), REPS times; prints the best GB/s of the passes.
 *
 *   clang -O3 -march=native -pthread read_bandwidth.c -o read_bandwidth && ./read_bandwidth 1024 1 5
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct { const float* p; size_t n; float sum; } slice_t;

static void* sum_slice(void* arg) {
  slice_t* s = (slice_t*)arg;
  float acc[16] = {0};
  size_t i = 0;
  for (; i + 16 <= s->n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += s->p[i + j];  /* 16 lanes: vectorised, no dependency chain */
  float t = 0;
  for (int j = 0; j < 16; ++j) t += acc[j];
  for (; i < s->n; ++i) t += s->p[i];
  s->sum = t;
  return NULL;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

int main(int argc, char** argv) {
  size_t mb = argc > 1 ? strtoull(argv[1], 0, 10) : 1024;
  int threads = argc > 2 ? atoi(argv[2]) : 1, reps = argc > 3 ? atoi(argv[3]) : 5;
  size_t n = mb * (1u << 20) / sizeof(float);
  float* buf = aligned_alloc(64, n * sizeof(float));
  if (!buf || threads < 1 || threads > 256) return 2;
  for (size_t i = 0; i < n; ++i) buf[i] = (float)(i & 1023) * 1e-3f;  /* touch every page */
  pthread_t tid[256];
  slice_t sl[256];
  double best = 0, check = 0;
  for (int r = 0; r < reps; ++r) {
    double t0 = now();
    for (int t = 0; t < threads; ++t) {
      size_t a = n * t / threads, b = n * (t + 1) / threads;
      sl[t] = (slice_t){buf + a, b - a, 0};
      pthread_create(&tid[t], NULL, sum_slice, &sl[t]);
    }
    for (int t = 0; t < threads; ++t) pthread_join(tid[t], NULL), check += sl[t].sum;
    double gbs = n * sizeof(float) / (now() - t0) / 1e9;
    if (gbs > best) best = gbs;
  }
  printf("{\"threads\": %d, \"mb\": %zu, \"gb_per_s\": %.3f, \"check\": %.1f}\n", threads, mb, best, check);
  free(buf);
  return 0;
}
