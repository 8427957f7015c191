/*
 * Native T-MAC Format A weight layout (pack and unpack), see docs section 1.2.
 *
 * For bit-expanded row r and LUT group j (4 activations), the 4-bit code is
 *   code = sum_t ((w[m0, 4j+t] >> i) & 1) << t,   with r = (m0/8)*8b + i*8 + m0%8,
 * and it lands in the low (h=0) or high (h=1) nibble of
 *   byte = (((tile*KO + ko)*(bm/32) + B)*kfactor + ki)*16 + l
 * where tile = r/bm, rr = r%bm, B = rr/32, h = (rr%32)/16, l = rr%16, ko = j/kfactor, ki = j%kfactor.
 *
 * Both functions work on a range of tiles so the caller can split a tensor across threads;
 * tiles own disjoint output bytes (pack) and disjoint weight rows (unpack).  The GIL is
 * released while they run.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Gather bit 0 of each of the 4 bytes of x into a nibble (byte t -> bit t). */
static inline uint32_t gather4(uint32_t x) {
    return ((x & 0x01010101u) * 0x00204081u) >> 21 & 0xFu;
}

/* Spread the 4 bits of a nibble to bit 0 of 4 bytes (bit t -> byte t). */
static inline uint32_t spread4(uint32_t nib) {
    return (nib * 0x00204081u) & 0x01010101u;
}

static inline void row_of(int64_t r, int bits, int64_t *m0, int *plane) {
    int64_t blk = r / (8 * bits), rem = r % (8 * bits);
    *plane = (int)(rem / 8);
    *m0 = blk * 8 + rem % 8;
}

/* Little-endian 4-byte load; codes rows are byte arrays so alignment is not guaranteed. */
static inline uint32_t load4(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static void pack_tiles(const uint8_t *w, uint8_t *out, int64_t K, int bits, int64_t bm,
                       int64_t kfactor, int64_t t0, int64_t t1) {
    const int64_t KO = K / (4 * kfactor);
    const int64_t nB = bm / 32;
    const int64_t tile_bytes = K * bm / 8;
    const int64_t ko_stride = nB * kfactor * 16;
    for (int64_t t = t0; t < t1; ++t) {
        for (int64_t B = 0; B < nB; ++B) {
            for (int64_t l = 0; l < 16; ++l) {
                int64_t ma, mb;
                int ia, ib;
                row_of(t * bm + B * 32 + l, bits, &ma, &ia);
                row_of(t * bm + B * 32 + 16 + l, bits, &mb, &ib);
                const uint8_t *wa = w + ma * K;
                const uint8_t *wb = w + mb * K;
                uint8_t *o = out + t * tile_bytes + B * kfactor * 16 + l;
                for (int64_t ko = 0; ko < KO; ++ko) {
                    uint8_t *oo = o + ko * ko_stride;
                    const uint8_t *pa = wa + ko * kfactor * 4;
                    const uint8_t *pb = wb + ko * kfactor * 4;
                    for (int64_t ki = 0; ki < kfactor; ++ki) {
                        uint32_t lo = gather4(load4(pa + 4 * ki) >> ia);
                        uint32_t hi = gather4(load4(pb + 4 * ki) >> ib);
                        oo[ki * 16] = (uint8_t)(lo | (hi << 4));
                    }
                }
            }
        }
    }
}

static void unpack_tiles(const uint8_t *blob, uint8_t *w, int64_t K, int bits, int64_t bm,
                         int64_t kfactor, int64_t t0, int64_t t1) {
    const int64_t KO = K / (4 * kfactor);
    const int64_t nB = bm / 32;
    const int64_t tile_bytes = K * bm / 8;
    const int64_t ko_stride = nB * kfactor * 16;
    for (int64_t t = t0; t < t1; ++t) {
        for (int64_t B = 0; B < nB; ++B) {
            for (int64_t l = 0; l < 16; ++l) {
                int64_t ma, mb;
                int ia, ib;
                row_of(t * bm + B * 32 + l, bits, &ma, &ia);
                row_of(t * bm + B * 32 + 16 + l, bits, &mb, &ib);
                uint8_t *wa = w + ma * K;
                uint8_t *wb = w + mb * K;
                const uint8_t *o = blob + t * tile_bytes + B * kfactor * 16 + l;
                for (int64_t ko = 0; ko < KO; ++ko) {
                    const uint8_t *oo = o + ko * ko_stride;
                    uint8_t *pa = wa + ko * kfactor * 4;
                    uint8_t *pb = wb + ko * kfactor * 4;
                    for (int64_t ki = 0; ki < kfactor; ++ki) {
                        uint8_t byte = oo[ki * 16];
                        /* For 3 and 4 bits both nibbles can belong to one output (two of its
                           planes), so the first store must land before the second load. */
                        uint32_t a = load4(pa + 4 * ki) | (spread4(byte & 0xFu) << ia);
                        memcpy(pa + 4 * ki, &a, 4);
                        uint32_t b = load4(pb + 4 * ki) | (spread4(byte >> 4) << ib);
                        memcpy(pb + 4 * ki, &b, 4);
                    }
                }
            }
        }
    }
}

typedef void (*tile_fn)(const uint8_t *, uint8_t *, int64_t, int, int64_t, int64_t, int64_t, int64_t);

/* Shared argument handling: (src, dst, M0, K, bits, bm, kfactor, tile_begin, tile_end). */
static PyObject *run_tiles(PyObject *args, tile_fn fn, int src_is_codes) {
    Py_buffer src, dst;
    long long M0, K, bm, kfactor, t0, t1;
    int bits;
    if (!PyArg_ParseTuple(args, "y*w*LLiLLLL", &src, &dst, &M0, &K, &bits, &bm, &kfactor, &t0, &t1))
        return NULL;
    PyObject *result = NULL;
    const long long M = M0 * bits;
    const long long weight_bytes = M0 * K * bits / 8;
    const long long codes_bytes = M0 * K;
    if (bits < 1 || bits > 4 || M0 <= 0 || K <= 0 || bm <= 0 || bm % 32 || bm % (8 * bits) ||
        M % bm || kfactor <= 0 || K % (4 * kfactor) || t0 < 0 || t1 > M / bm || t0 > t1) {
        PyErr_SetString(PyExc_ValueError, "layout: inconsistent shape or tile arguments");
        goto done;
    }
    if (src.len < (src_is_codes ? codes_bytes : weight_bytes) ||
        dst.len < (src_is_codes ? weight_bytes : codes_bytes)) {
        PyErr_SetString(PyExc_ValueError, "layout: buffer too small for the given shape");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    fn((const uint8_t *)src.buf, (uint8_t *)dst.buf, K, bits, bm, kfactor, t0, t1);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

static PyObject *py_pack(PyObject *self, PyObject *args) { return run_tiles(args, pack_tiles, 1); }
static PyObject *py_unpack(PyObject *self, PyObject *args) { return run_tiles(args, unpack_tiles, 0); }

static PyMethodDef methods[] = {
    {"pack_weights", py_pack, METH_VARARGS,
     "pack_weights(codes, out, M0, K, bits, bm, kfactor, tile_begin, tile_end): codes uint8 [M0*K] "
     "-> Format A weight bytes of tiles [tile_begin, tile_end) written into out."},
    {"unpack_weights", py_unpack, METH_VARARGS,
     "unpack_weights(blob, codes, M0, K, bits, bm, kfactor, tile_begin, tile_end): OR the codes of "
     "tiles [tile_begin, tile_end) into the zero-initialised uint8 [M0*K] buffer codes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_layout_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__layout_native(void) { return PyModule_Create(&module); }
