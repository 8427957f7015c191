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

/* ---------------------------------------------------------------------------------------------
 * AVX2, 2- and 4-bit fields in 32-bit words (what GPTQ writers store): 16 columns per pass, two 32-byte
 * loads per word row; the fields of each byte are split by shifts and masks and put back in stream order
 * by byte and word interleaves, so each word's codes leave as one store.  Chosen at run time; the same
 * bytes as the table path above (tests/test_gptq_bits.py compares them). */
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define GPTQ_HAVE_AVX2 1
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2")))

static int have_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}

/* 8 words (4 per 128-bit lane) of 2-bit fields -> 8 runs of 16 codes, word i's run stored at o[i]. */
static inline AVX2 void b2_words(__m256i v, uint8_t *const o[8]) {
    const __m256i m = _mm256_set1_epi8(0x03);
    const __m256i t0 = _mm256_and_si256(v, m), t1 = _mm256_and_si256(_mm256_srli_epi16(v, 2), m);
    const __m256i t2 = _mm256_and_si256(_mm256_srli_epi16(v, 4), m), t3 = _mm256_and_si256(_mm256_srli_epi16(v, 6), m);
    const __m256i a = _mm256_unpacklo_epi8(t0, t1), b = _mm256_unpacklo_epi8(t2, t3);   /* bytes 0-7: words 0, 1 */
    const __m256i c = _mm256_unpackhi_epi8(t0, t1), d = _mm256_unpackhi_epi8(t2, t3);   /* bytes 8-15: words 2, 3 */
    const __m256i w0 = _mm256_unpacklo_epi16(a, b), w1 = _mm256_unpackhi_epi16(a, b);
    const __m256i w2 = _mm256_unpacklo_epi16(c, d), w3 = _mm256_unpackhi_epi16(c, d);
    _mm_storeu_si128((__m128i *)o[0], _mm256_castsi256_si128(w0));
    _mm_storeu_si128((__m128i *)o[1], _mm256_castsi256_si128(w1));
    _mm_storeu_si128((__m128i *)o[2], _mm256_castsi256_si128(w2));
    _mm_storeu_si128((__m128i *)o[3], _mm256_castsi256_si128(w3));
    _mm_storeu_si128((__m128i *)o[4], _mm256_extracti128_si256(w0, 1));
    _mm_storeu_si128((__m128i *)o[5], _mm256_extracti128_si256(w1, 1));
    _mm_storeu_si128((__m128i *)o[6], _mm256_extracti128_si256(w2, 1));
    _mm_storeu_si128((__m128i *)o[7], _mm256_extracti128_si256(w3, 1));
}

/* 8 words of 4-bit fields -> 8 runs of 8 codes. */
static inline AVX2 void b4_words(__m256i v, uint8_t *const o[8]) {
    const __m256i m = _mm256_set1_epi8(0x0F);
    const __m256i t0 = _mm256_and_si256(v, m), t1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
    const __m256i a = _mm256_unpacklo_epi8(t0, t1), c = _mm256_unpackhi_epi8(t0, t1); /* words 0,1 | 2,3 */
    const __m128i a0 = _mm256_castsi256_si128(a), a1 = _mm256_extracti128_si256(a, 1);
    const __m128i c0 = _mm256_castsi256_si128(c), c1 = _mm256_extracti128_si256(c, 1);
    _mm_storel_epi64((__m128i *)o[0], a0);
    _mm_storel_pd((double *)o[1], _mm_castsi128_pd(_mm_unpackhi_epi64(a0, a0)));
    _mm_storel_epi64((__m128i *)o[2], c0);
    _mm_storel_pd((double *)o[3], _mm_castsi128_pd(_mm_unpackhi_epi64(c0, c0)));
    _mm_storel_epi64((__m128i *)o[4], a1);
    _mm_storel_pd((double *)o[5], _mm_castsi128_pd(_mm_unpackhi_epi64(a1, a1)));
    _mm_storel_epi64((__m128i *)o[6], c1);
    _mm_storel_pd((double *)o[7], _mm_castsi128_pd(_mm_unpackhi_epi64(c1, c1)));
}

/* Columns [c0, c1) of 32-bit words, bits 2 or 4; returns the first column left to the table path. */
static AVX2 int64_t unpack_w32_avx2(const uint8_t *q, uint8_t *out, int64_t R, int64_t M0, int bits, int64_t c0,
                                    int64_t c1) {
    const int64_t per = 32 / bits, K = R * per;
    int64_t cb = c0;
    for (; cb + CBLK <= c1; cb += CBLK) {
        for (int64_t r = 0; r < R; ++r) {
            const uint8_t *row = q + (r * M0 + cb) * 4;
            for (int h = 0; h < CBLK; h += 8) {
                uint8_t *o[8];
                for (int i = 0; i < 8; ++i) o[i] = out + (cb + h + i) * K + r * per;
                const __m256i v = _mm256_loadu_si256((const __m256i *)(row + 4 * h));
                if (bits == 2)
                    b2_words(v, o);
                else
                    b4_words(v, o);
            }
        }
    }
    return cb;
}
#endif

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
#ifdef GPTQ_HAVE_AVX2
    if (wbytes == 4 && (bits == 2 || bits == 4) && have_avx2())
        c0 = unpack_w32_avx2((const uint8_t *)src.buf, (uint8_t *)dst.buf, R, M0, bits, c0, c1);
#endif
    if (bits == 1) /* the columns the AVX2 path left, if any (none: the loops below do nothing) */
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

/* ---------------------------------------------------------------------------------------------
 * float16 scales and zero offsets, transposed from GPTQ's [G, M0] to T-MAC's [M0, G]:
 *   scales_t[m, g] = s[g, m],   zeros_t[m, g] = f16(((stored[g, m] + add) - half) * f32(s[g, m]))
 * The product of a small integer and a float16 value is exact in float32, so one F16C conversion with
 * round-to-nearest-even is exactly numpy's float16 multiply (what the Python fallback computes). */
#ifdef GPTQ_HAVE_AVX2
#define F16C __attribute__((target("avx2,f16c")))

static int have_f16c(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
}

static F16C void offsets_f16(const uint8_t *stored, const uint16_t *s, int64_t G, int64_t M0, int add, int half,
                             uint16_t *scales_t, uint16_t *zeros_t) {
    const __m256 bias = _mm256_set1_ps((float)(add - half));
    for (int64_t g = 0; g < G; ++g) {
        const uint8_t *st = stored + g * M0;
        const uint16_t *sg = s + g * M0;
        int64_t m = 0;
        for (; m + 8 <= M0; m += 8) {
            const __m128i sh = _mm_loadu_si128((const __m128i *)(sg + m));
            uint16_t zs[8], ss[8];
            _mm_storeu_si128((__m128i *)ss, sh);
            if (zeros_t) {
                const __m256 z = _mm256_add_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(st + m)))), bias);
                _mm_storeu_si128((__m128i *)zs, _mm256_cvtps_ph(_mm256_mul_ps(z, _mm256_cvtph_ps(sh)), _MM_FROUND_TO_NEAREST_INT));
            }
            for (int i = 0; i < 8; ++i) {
                scales_t[(m + i) * G + g] = ss[i];
                if (zeros_t) zeros_t[(m + i) * G + g] = zs[i];
            }
        }
        for (; m < M0; ++m) {
            scales_t[m * G + g] = sg[m];
            if (zeros_t) {
                const float z = (float)((int)st[m] + add - half) * _cvtsh_ss(sg[m]);
                zeros_t[m * G + g] = _cvtss_sh(z, _MM_FROUND_TO_NEAREST_INT);
            }
        }
    }
}
#endif

/* offsets_f16(stored, s, G, M0, add, half, scales_t, zeros_t_or_None) -> bool: False (nothing written)
   where this build or CPU has no F16C. */
static PyObject *py_offsets_f16(PyObject *self, PyObject *args) {
    Py_buffer st = {0}, sc = {0}, so = {0}, zo = {0};
    PyObject *zobj;
    long long G, M0;
    int add, half;
    if (!PyArg_ParseTuple(args, "y*y*LLiiw*O", &st, &sc, &G, &M0, &add, &half, &so, &zobj)) return NULL;
    PyObject *result = NULL;
    const int with_zeros = zobj != Py_None;
    if (with_zeros && PyObject_GetBuffer(zobj, &zo, PyBUF_WRITABLE) < 0) goto done;
    if (G <= 0 || M0 <= 0 || add < 0 || add > 1 || half < 1 || half > 8) {
        PyErr_SetString(PyExc_ValueError, "offsets_f16: inconsistent arguments");
        goto done;
    }
    if (sc.len < 2 * G * M0 || so.len < 2 * G * M0 || (with_zeros && (st.len < G * M0 || zo.len < 2 * G * M0))) {
        PyErr_SetString(PyExc_ValueError, "offsets_f16: buffer too small");
        goto done;
    }
#ifdef GPTQ_HAVE_AVX2
    if (have_f16c()) {
        Py_BEGIN_ALLOW_THREADS
        offsets_f16((const uint8_t *)st.buf, (const uint16_t *)sc.buf, G, M0, add, half, (uint16_t *)so.buf,
                    with_zeros ? (uint16_t *)zo.buf : NULL);
        Py_END_ALLOW_THREADS
        result = Py_True;
    } else
#endif
        result = Py_False;
    Py_INCREF(result);
done:
    PyBuffer_Release(&st);
    PyBuffer_Release(&sc);
    PyBuffer_Release(&so);
    if (with_zeros && zo.obj) PyBuffer_Release(&zo);
    return result;
}

/* The scan's facts about one tensor's float16 scales s [n] (as uint16) and stored zero fields [n], in one pass
 * of integer tests on the bits (no F16C needed):
 *   finite: no scale is infinite or NaN;
 *   max_abs: the largest |s| as float16 bits (the magnitude bits of finite values order like the values);
 *   exact_zero[i]: every z' = (z - 2^(b-1))·s is 0 when the field z = 2^(b-1) is stored as at[i], i.e. every
 *   field equals at[i] or its scale is +0 or -0. */
static void scale_facts_f16(const uint8_t *stored, const uint16_t *s, int64_t n, const int at[2], int *finite,
                            int *max_abs, int exact_zero[2]) {
    uint16_t mx = 0;
    int nonfinite = 0, off0 = 0, off1 = 0;
    const uint8_t a0 = (uint8_t)at[0], a1 = (uint8_t)at[1];
    for (int64_t i = 0; i < n; ++i) {
        const uint16_t m = s[i] & 0x7fff;
        const int nz = m != 0;
        nonfinite |= m >= 0x7c00;
        mx = m > mx ? m : mx;
        off0 |= (stored[i] != a0) & nz;
        off1 |= (stored[i] != a1) & nz;
    }
    *finite = !nonfinite;
    *max_abs = mx;
    exact_zero[0] = !off0;
    exact_zero[1] = !off1;
}

/* scale_facts_f16(stored, s, n, at0, at1) -> (finite, max_abs_bits, exact_zero0, exact_zero1) */
static PyObject *py_scale_facts_f16(PyObject *self, PyObject *args) {
    Py_buffer st = {0}, sc = {0};
    long long n;
    int at[2];
    if (!PyArg_ParseTuple(args, "y*y*Lii", &st, &sc, &n, &at[0], &at[1])) return NULL;
    PyObject *result = NULL;
    if (n < 0 || st.len < n || sc.len < 2 * n || at[0] < 0 || at[0] > 255 || at[1] < 0 || at[1] > 255) {
        PyErr_SetString(PyExc_ValueError, "scale_facts_f16: inconsistent arguments");
    } else {
        int finite, max_abs, zero[2];
        Py_BEGIN_ALLOW_THREADS
        scale_facts_f16((const uint8_t *)st.buf, (const uint16_t *)sc.buf, n, at, &finite, &max_abs, zero);
        Py_END_ALLOW_THREADS
        result = Py_BuildValue("(OiOO)", finite ? Py_True : Py_False, max_abs, zero[0] ? Py_True : Py_False,
                               zero[1] ? Py_True : Py_False);
    }
    PyBuffer_Release(&st);
    PyBuffer_Release(&sc);
    return result;
}

static PyMethodDef methods[] = {
    {"unpack_qweight", py_unpack_qweight, METH_VARARGS,
     "unpack_qweight(words, out, R, M0, word_bytes, bits, col_begin, col_end): GPTQ words [R, M0] -> "
     "codes uint8 [M0, R*W/bits] for columns [col_begin, col_end), written into out."},
    {"offsets_f16", py_offsets_f16, METH_VARARGS,
     "offsets_f16(stored, scales, G, M0, add, half, scales_t, zeros_t) -> bool: float16 scales [G, M0] (as uint16) "
     "-> scales_t [M0, G] and (zeros_t not None) zero offsets f16((stored + add - half) * s) [M0, G]; False, "
     "with nothing written, where the CPU has no F16C."},
    {"scale_facts_f16", py_scale_facts_f16, METH_VARARGS,
     "scale_facts_f16(stored, scales, n, at0, at1) -> (finite, max_abs_bits, exact_zero0, exact_zero1): one pass "
     "over float16 scales (as uint16) and stored zero fields (uint8), n of each."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_gptq_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__gptq_native(void) {
    init_tables();
    return PyModule_Create(&module);
}
