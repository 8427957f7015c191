/* Streaming-read probe (probe.c): sum of the bytes [p, p+n) as 64-bit words, read as fast as this CPU can. */
#ifndef TMAC_PROBE_H
#define TMAC_PROBE_H
#include <stdint.h>
uint64_t read_probe(const uint8_t *p, int64_t n);
#endif
