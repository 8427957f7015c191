/*
 * GPTQ qweight unpacking: int words [R, M0] holding b-bit fields along axis 0 (one little-endian
 * bit stream per column) -> codes uint8 [M0, K] (K = R * W / b), i.e. unpack and transpose at once.
 *
 * For 1, 2 and 4 bits every stream byte expands through a table; 3-bit fields straddle words and
 * go through a bit-carrying loop.  Columns are processed in blocks of 16 so that each pass over the word rows reads whole cache
 * lines and writes 16 sequential output rows.  Fields that straddle words (3 bits) carry their low
 * bits over to the next word of the same column.  The GIL is released; callers may split the
 * columns across threads (disjoint output rows).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define CBLK 16

static inline uint64_t load_word(const uint8_t *p, int wbytes) {
    uint64_t v = 0;
    memcpy(&v, p, (size_t)wbytes); /* little-endian hosts; the Python side checks sys.byteorder */
    return v;
}

/* Fields of one byte, for bits dividing 8: byte -> 8/bits codes as little-endian bytes. */
static uint64_t BYTE_FIELDS[5][256];

static void init_tables(void) {
    for (int bits = 1; bits <= 4; bits *= 2)
        for (int v = 0; v < 256; ++v) {
            uint64_t f = 0;
            for (int i = 0; i < 8 / bits; ++i) f |= (uint64_t)((v >> (i * bits)) & ((1 << bits) - 1)) << (8 * i);
            BYTE_FIELDS[bits][v] = f;
        }
}

/* bits in {1, 2, 4}: no field straddles a byte, so each stream byte expands through a table.
   PER (codes per byte) is a compile-time constant in each instance so the stores stay inline. */
#define DEFINE_UNPACK_BYTES(NAME, BITS, PER)                                                        \
    static void NAME(const uint8_t *q, uint8_t *out, int64_t R, int64_t M0, int wbytes, int64_t c0, \
                     int64_t c1) {                                                                  \
        const int64_t K = R * 8 * wbytes / BITS;                                                    \
        const uint64_t *tab = BYTE_FIELDS[BITS];                                                    \
        for (int64_t cb = c0; cb < c1; cb += CBLK) {                                                \
            const int64_t n = (c1 - cb < CBLK) ? c1 - cb : CBLK;                                    \
            for (int64_t r = 0; r < R; ++r) {                                                       \
                const uint8_t *row = q + (r * M0 + cb) * wbytes;                                    \
                for (int64_t c = 0; c < n; ++c) {                                                   \
                    uint8_t *o = out + (cb + c) * K + r * wbytes * PER;                             \
                    const uint8_t *w = row + c * wbytes;                                            \
                    for (int i = 0; i < wbytes; ++i) {                                              \
                        uint64_t f = tab[w[i]];                                                     \
                        memcpy(o + i * PER, &f, PER);                                               \
                    }                                                                               \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
    }

DEFINE_UNPACK_BYTES(unpack_cols_b1, 1, 8)
DEFINE_UNPACK_BYTES(unpack_cols_b2, 2, 4)
DEFINE_UNPACK_BYTES(unpack_cols_b4, 4, 2)

static void unpack_cols(const uint8_t *q, uint8_t *out, int64_t R, int64_t M0, int wbytes, int bits,
                        int64_t c0, int64_t c1) {
    const int W = 8 * wbytes;
    const uint64_t mask = (1u << bits) - 1;
    const int64_t K = R * W / bits;
    for (int64_t cb = c0; cb < c1; cb += CBLK) {
        const int64_t n = (c1 - cb < CBLK) ? c1 - cb : CBLK;
        uint64_t carry[CBLK] = {0};
        int ncarry[CBLK] = {0};
        int64_t pos[CBLK] = {0};
        for (int64_t r = 0; r < R; ++r) {
            const uint8_t *row = q + (r * M0 + cb) * wbytes;
            for (int64_t c = 0; c < n; ++c) {
                uint64_t w = load_word(row + c * wbytes, wbytes);
                uint8_t *o = out + (cb + c) * K + pos[c];
                int sh = 0;
                if (ncarry[c]) { /* finish the field that straddles the previous word */
                    *o++ = (uint8_t)((carry[c] | (w << ncarry[c])) & mask);
                    sh = bits - ncarry[c];
                }
                for (; sh + bits <= W; sh += bits) *o++ = (uint8_t)((w >> sh) & mask);
                ncarry[c] = W - sh;
                carry[c] = ncarry[c] ? (w >> sh) : 0;
                pos[c] = o - (out + (cb + c) * K);
            }
        }
    }
}

static PyObject *py_unpack_qweight(PyObject *self, PyObject *args) {
    Py_buffer src, dst;
    long long R, M0, c0, c1;
    int wbytes, bits;
    if (!PyArg_ParseTuple(args, "y*w*LLiiLL", &src, &dst, &R, &M0, &wbytes, &bits, &c0, &c1)) return NULL;
    PyObject *result = NULL;
    if (bits < 1 || bits > 4 || (wbytes != 1 && wbytes != 2 && wbytes != 4 && wbytes != 8) || R <= 0 ||
        M0 <= 0 || (R * 8 * wbytes) % bits || c0 < 0 || c1 > M0 || c0 > c1) {
        PyErr_SetString(PyExc_ValueError, "unpack_qweight: inconsistent arguments");
        goto done;
    }
    if (src.len < R * M0 * wbytes || dst.len < M0 * (R * 8 * wbytes / bits)) {
        PyErr_SetString(PyExc_ValueError, "unpack_qweight: buffer too small");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    if (bits == 1)
        unpack_cols_b1((const uint8_t *)src.buf, (uint8_t *)dst.buf, R, M0, wbytes, c0, c1);
    else if (bits == 2)
        unpack_cols_b2((const uint8_t *)src.buf, (uint8_t *)dst.buf, R, M0, wbytes, c0, c1);
    else if (bits == 4)
        unpack_cols_b4((const uint8_t *)src.buf, (uint8_t *)dst.buf, R, M0, wbytes, c0, c1);
    else
        unpack_cols((const uint8_t *)src.buf, (uint8_t *)dst.buf, R, M0, wbytes, bits, c0, c1);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

static PyMethodDef methods[] = {
    {"unpack_qweight", py_unpack_qweight, METH_VARARGS,
     "unpack_qweight(words, out, R, M0, word_bytes, bits, col_begin, col_end): GPTQ words [R, M0] -> "
     "codes uint8 [M0, R*W/bits] for columns [col_begin, col_end), written into out."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_gptq_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__gptq_native(void) {
    init_tables();
    return PyModule_Create(&module);
}
