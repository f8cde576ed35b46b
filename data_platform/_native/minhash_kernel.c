/* MinHash signatures of a whole Arrow string column in one call, for near-duplicate
 * detection (data_platform/neardup.py holds the design and a pure-Python reference of
 * exactly this computation; the two must agree bit for bit).
 *
 * Per text:
 *   tokens     maximal runs of non-whitespace bytes (space, \t \n \v \f \r) with ASCII
 *              punctuation stripped from both ends; empty tokens are skipped. ASCII
 *              letters are lower-cased (other bytes are compared as they are).
 *   identifier a token holding an ASCII digit or '_' (inner, after stripping), or at
 *              least two upper-case ASCII letters: numbers, codes, resource names.
 *   shingles   the word bigrams (one shingle for a one-token text), plus each
 *              identifier again on its own with a larger weight: its hash values are
 *              shifted right by `ident_shift`, which makes it 2^ident_shift times as
 *              likely to hold a minimum (a weighted MinHash of an integer weight).
 *   minhash    m[k] = min over shingles of (mult[k] * v + add[k]) mod 2^16, v one
 *              16-bit half of the shingle's 32-bit hash (see minhash()): 16-bit
 *              lanes do twice the permutations per vector instruction, and minima of
 *              16 bits are exact enough (two different minima of a few dozen shingles
 *              tie with probability ~1e-3).
 * Outputs per text: `bands` 32-bit LSH keys (each a hash of `rows` consecutive m[k]),
 * a sketch of 4 bits per m[k] (a hash of it; equal m give equal nibbles, different m
 * collide with probability 1/16), and the number of tokens (saturating at 65535; 0
 * means the text has no tokens and no signature). The GIL is released while hashing,
 * so callers may run slices of a column on several threads.
 *
 * Speed: tokens of up to 16 bytes are found, classified and lower-cased 16 bytes at a
 * time (SSE2); the min loop is compiled for AVX2 and for the baseline and picked at
 * load time. About 0.7 us per 240-byte text (37 tokens) on one core of a 2.9 GHz Zen 3:
 * 0.4 us tokens and hashes, 0.25 us minima, the rest sketch and band keys.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "arrow_strings.h"
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define MAX_PERM 1024
#define BLOCK 64 /* permutations whose minima stay in registers */

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
#define LOWS7 0x7F7F7F7F7F7F7F7FULL

static unsigned char SPACE[256], PUNCT[256];

static void init_tables(void) {
    for (int c = 0; c < 256; c++) {
        SPACE[c] = c == ' ' || (c >= '\t' && c <= '\r');
        PUNCT[c] = (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
                   (c >= 0x7B && c <= 0x7E);
    }
}

/* Byte-parallel tests on 8 bytes at once: the high bit of each byte of the result is
 * set where the byte is in [lo, hi] (ASCII; bytes >= 0x80 never are). */
static inline uint64_t in_range(uint64_t x, unsigned lo, unsigned hi) {
    uint64_t h = x & LOWS7;
    uint64_t ge = h + ONES * (0x80 - lo), gt = h + ONES * (0x7F - hi);
    return ge & ~gt & ~x & HIGHS;
}

static inline uint64_t equal_to(uint64_t x, unsigned c) {
    uint64_t t = x ^ (ONES * c);
    return ~(((t & LOWS7) + LOWS7) | t) & HIGHS;
}

static inline uint64_t load_tail(const unsigned char *p, size_t n) { /* n <= 8 */
    uint64_t v = 0;
    memcpy(&v, p, n);
    return v;
}

static inline uint64_t mix64(uint64_t h) {
    h ^= h >> 32;
    h *= 0xD6E8FEB86659FD93ULL;
    h ^= h >> 29;
    return h;
}

#define C_LEN 0x9E3779B97F4A7C15ULL
#define C_CHUNK0 0xBF58476D1CE4E5B9ULL
#define C_CHUNK1 0x94D049BB133111EBULL

/* 64-bit hash of the lower-cased token p[0..len) in 8-byte little-endian chunks c0, c1,
 * ... (the last one zero-padded): h = len*C_LEN ^ c0*C_CHUNK0 ^ c1*C_CHUNK1 (two
 * independent products: short latency), then h = (h ^ c) * C_CHUNK0, h ^= h >> 31 for
 * each further chunk, and mix64(h). Bytes up to `limit` may be read (and are masked
 * off). Also reports whether the token is an identifier. */
static inline uint64_t word_hash(const unsigned char *p, size_t len, const unsigned char *limit, int *ident) {
    uint64_t h = (uint64_t)len * C_LEN;
    uint64_t special = 0, one = 0, two = 0; /* identifier evidence; upper case seen once, twice */
    for (size_t i = 0; i < len; i += 8) {
        size_t n = len - i;
        uint64_t x;
        if (p + i + 8 <= limit) {
            memcpy(&x, p + i, 8);
            if (n < 8)
                x &= (1ULL << (8 * n)) - 1;
        } else {
            x = load_tail(p + i, n < 8 ? n : 8);
        }
        uint64_t up = in_range(x, 'A', 'Z');
        two |= (up & (up - 1)) | (one != 0 ? up : 0);
        one |= up;
        special |= in_range(x, '0', '9') | equal_to(x, '_');
        x |= up >> 2; /* 'A'..'Z' -> 'a'..'z' */
        if (i == 0) {
            h ^= x * C_CHUNK0;
        } else if (i == 8) {
            h ^= x * C_CHUNK1;
        } else {
            h = (h ^ x) * C_CHUNK0;
            h ^= h >> 31;
        }
    }
    *ident = (special | two) != 0;
    return mix64(h);
}

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint32_t high32(uint64_t v, uint64_t mult) { return (uint32_t)((v * mult) >> 32); }

#ifdef __SSE2__
/* LENMASK + 16 - n: n bytes 0xFF, then zeros */
static const unsigned char LENMASK[32] = {
    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};

static inline unsigned space_mask16(__m128i v) {
    __m128i sp = _mm_cmpeq_epi8(v, _mm_set1_epi8(' '));
    __m128i t = _mm_sub_epi8(v, _mm_set1_epi8('\t')); /* \t..\r: v - 9 < 5 unsigned */
    __m128i ctl = _mm_cmpeq_epi8(_mm_min_epu8(t, _mm_set1_epi8(4)), t);
    return (unsigned)_mm_movemask_epi8(_mm_or_si128(sp, ctl));
}

static inline __m128i in_range16(__m128i v, char lo, char hi) { /* bytes >= 0x80 are negative: never */
    return _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8((char)(lo - 1))), _mm_cmplt_epi8(v, _mm_set1_epi8((char)(hi + 1))));
}

/* word_hash of a token of 1..16 bytes whose first 16 bytes (token and whatever follows)
 * are in v: the same value, computed on the whole vector at once. */
static inline uint64_t word_hash16(__m128i v, size_t len, int *ident) {
    v = _mm_and_si128(v, _mm_loadu_si128((const __m128i *)(LENMASK + 16 - len)));
    __m128i up = in_range16(v, 'A', 'Z');
    __m128i special = _mm_or_si128(in_range16(v, '0', '9'), _mm_cmpeq_epi8(v, _mm_set1_epi8('_')));
    unsigned um = (unsigned)_mm_movemask_epi8(up);
    *ident = _mm_movemask_epi8(special) != 0 || (um & (um - 1)) != 0;
    v = _mm_or_si128(v, _mm_and_si128(up, _mm_set1_epi8(0x20)));
    uint64_t lo = (uint64_t)_mm_cvtsi128_si64(v), hi = (uint64_t)_mm_cvtsi128_si64(_mm_unpackhi_epi64(v, v));
    return mix64(((uint64_t)len * C_LEN) ^ (lo * C_CHUNK0) ^ (hi * C_CHUNK1)); /* hi is 0 when len <= 8 */
}
#endif

/* Tokens and shingles of the text d[0..len). x[0..*n_plain) are plain shingles,
 * x[cap - *n_ident .. cap) identifier shingles (filled from the end). Returns the
 * token count. Bytes up to `limit` (>= d + len) may be read. */
static size_t shingles(const unsigned char *d, size_t len, const unsigned char *limit, uint32_t *x, size_t cap,
                       size_t *n_plain, size_t *n_ident) {
    size_t tokens = 0, np_ = 0, ni = 0;
    uint64_t prev = 0;
    const unsigned char *p = d, *end = d + len;
    uint32_t *xi = x + cap - 1; /* identifier shingles grow downwards from here */
    for (;;) {
        while (p < end && SPACE[*p])
            p++;
        if (p >= end)
            break;
        const unsigned char *s = p, *e;
        uint64_t w;
        int ident;
#ifdef __SSE2__
        /* fast path: a token of at most 16 bytes not starting with punctuation */
        if (p + 16 <= limit && !PUNCT[*p]) {
            __m128i v = _mm_loadu_si128((const __m128i *)p);
            size_t at = (size_t)__builtin_ctz(space_mask16(v) | 0x10000u);
            size_t room = (size_t)(end - p);
            if (at < 16 || room <= 16) {
                p += at < room ? at : room;
                e = p - PUNCT[p[-1]]; /* s is not punctuation: e stays > s */
                while (PUNCT[e[-1]])
                    e--;
                w = word_hash16(v, (size_t)(e - s), &ident);
                goto shingle;
            }
        }
#endif
        while (p < end && !SPACE[*p])
            p++;
        e = p;
        while (s < e && PUNCT[*s])
            s++;
        if (s == e)
            continue;
        while (PUNCT[e[-1]])
            e--;
        w = word_hash(s, (size_t)(e - s), limit, &ident);
#ifdef __SSE2__
    shingle:
#endif
        x[np_] = high32(rotl64(prev, 23) ^ w, 0x9FB21C651E98DF25ULL);
        np_ += tokens > 0;
        *xi = high32(w ^ 0x5BD1E9955BD1E995ULL, 0xC2B2AE3D27D4EB4FULL);
        xi -= ident;
        ni += ident;
        prev = w;
        tokens++;
    }
    if (tokens == 1)
        x[np_++] = high32(prev ^ 0x8A5CD789635D2DFFULL, 0x9FB21C651E98DF25ULL);
    *n_plain = np_;
    *n_ident = ni;
    return tokens;
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define MULTIVERSION
#endif

/* m[k] = min over the plain shingles of (mult[k] * v + add[k]) mod 2^16 and over the
 * identifier shingles of that >> shift, where v is the low 16 bits of the shingle hash
 * for permutations in even blocks of BLOCK (k / BLOCK even) and the high 16 bits in odd
 * ones. 16-bit lanes: twice the permutations per vector instruction. Each block keeps
 * its minima in vector registers while the shingles stream past. K % BLOCK == 0. */
MULTIVERSION
static void minhash(const uint32_t *restrict plain, size_t n_plain, const uint32_t *restrict ident,
                    size_t n_ident, int shift, const uint16_t *restrict mult, const uint16_t *restrict add,
                    size_t K, uint16_t *restrict m) {
    for (size_t k0 = 0; k0 < K; k0 += BLOCK) {
        int half = (int)((k0 / BLOCK) & 1) * 16;
        const uint16_t *mu = mult + k0, *ad = add + k0;
        uint16_t acc[BLOCK];
        for (int k = 0; k < BLOCK; k++)
            acc[k] = 0xFFFF;
        for (size_t i = 0; i < n_plain; i++) {
            uint16_t v = (uint16_t)(plain[i] >> half);
            for (int k = 0; k < BLOCK; k++) {
                uint16_t h = (uint16_t)((uint32_t)mu[k] * v + ad[k]);
                acc[k] = h < acc[k] ? h : acc[k];
            }
        }
        for (size_t i = 0; i < n_ident; i++) {
            uint16_t v = (uint16_t)(ident[i] >> half);
            for (int k = 0; k < BLOCK; k++) {
                uint16_t h = (uint16_t)((uint16_t)((uint32_t)mu[k] * v + ad[k]) >> shift);
                acc[k] = h < acc[k] ? h : acc[k];
            }
        }
        memcpy(m + k0, acc, sizeof acc);
    }
}

/* 4 bits per minimum (a hash of it): byte t holds m[t] in its low and m[t + K/2] in its
 * high nibble. */
static void sketch_of(const uint16_t *m, size_t K, unsigned char *out) {
    size_t half = K / 2;
    for (size_t t = 0; t < half; t++) {
        unsigned lo = (uint16_t)(m[t] * 0x9E37u) >> 12, hi = (uint16_t)(m[t + half] * 0x9E37u) >> 12;
        out[t] = (unsigned char)(lo | (hi << 4));
    }
}

/* LSH key of band j: a hash of its `rows` minima, packed four to a 64-bit word. */
static inline uint32_t band_key(const uint16_t *m, int rows, int j) {
    uint64_t h = (uint64_t)(j + 1) * 0x9E3779B97F4A7C15ULL;
    for (int q0 = 0; q0 < rows; q0 += 4) {
        uint64_t packed = 0;
        for (int t = 0; t < 4 && q0 + t < rows; t++)
            packed |= (uint64_t)m[q0 + t] << (16 * t);
        h = (h ^ packed) * 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 32;
    }
    return (uint32_t)(mix64(h) >> 32);
}

/* signatures(offsets, data, start, count, large, mult, add, bands, rows, ident_shift,
 *            keys, sketch, tokens[, minima])
 *   offsets/data: the Arrow buffers of a string (int32 offsets) or large_string (int64)
 *   array; start/count: the slots to hash (start includes the array's own offset);
 *   mult/add: K uint16 each (K a multiple of 64, at most 1024; mult odd); bands * rows
 *   <= K; 0 <= ident_shift < 16.
 * Fills the writable buffers keys (uint32[count * bands]), sketch (uint8[count * K/2]),
 * tokens (uint16[count]) and, if given and not None, minima (uint16[count * K]); a
 * caller splitting a column over threads passes each thread its slices of one output
 * array. Returns None. */
static PyObject *signatures(PyObject *self, PyObject *args) {
    Py_buffer offsets, data, mult, add, keys_b, sketch_b, tokens_b, raw_b = {0};
    int large, bands, rows, ident_shift;
    Py_ssize_t start, count;
    PyObject *raw_obj = Py_None;
    if (!PyArg_ParseTuple(args, "y*y*nnpy*y*iiiw*w*w*|O", &offsets, &data, &start, &count, &large, &mult, &add,
                          &bands, &rows, &ident_shift, &keys_b, &sketch_b, &tokens_b, &raw_obj))
        return NULL;
    PyObject *result = NULL;
    uint32_t *xbuf = NULL;
    int raw = raw_obj != Py_None;
    if (raw && PyObject_GetBuffer(raw_obj, &raw_b, PyBUF_WRITABLE) < 0)
        goto done;
    Py_ssize_t K = mult.len / 2;
    if (mult.len % 2 || mult.len != add.len || K < BLOCK || K > MAX_PERM || K % BLOCK) {
        PyErr_SetString(PyExc_ValueError, "mult and add must hold the same number of uint16, a multiple of 64 up to 1024");
        goto done;
    }
    if (bands < 1 || rows < 1 || (Py_ssize_t)bands * rows > K) {
        PyErr_SetString(PyExc_ValueError, "need bands >= 1, rows >= 1 and bands * rows <= K");
        goto done;
    }
    if (ident_shift < 0 || ident_shift > 15) {
        PyErr_SetString(PyExc_ValueError, "ident_shift must be in 0..15");
        goto done;
    }
    if (check_string_slice(&offsets, &data, start, count, large) < 0)
        goto done;
    if (keys_b.len != count * bands * 4 || sketch_b.len != count * (K / 2) || tokens_b.len != count * 2 ||
        (raw && raw_b.len != count * K * 2)) {
        PyErr_SetString(PyExc_ValueError, "output buffers do not match count, bands and K");
        goto done;
    }
    const uint16_t *mu = (const uint16_t *)mult.buf, *ad = (const uint16_t *)add.buf;
    for (Py_ssize_t k = 0; k < K; k++)
        if (!(mu[k] & 1)) {
            PyErr_SetString(PyExc_ValueError, "mult values must be odd");
            goto done;
        }
    const void *offs = offsets.buf;
    int64_t longest = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        int64_t a = offset_at(offs, large, start + i), b = offset_at(offs, large, start + i + 1);
        if (b - a > longest)
            longest = b - a;
    }
    /* A token takes at least one byte and one separator: at most len/2 + 1 tokens, so
     * at most len + 2 plain and identifier shingles together. */
    size_t cap = (size_t)longest + 2;
    xbuf = (uint32_t *)malloc(cap * sizeof(uint32_t));
    if (!xbuf) {
        PyErr_NoMemory();
        goto done;
    }
    uint32_t *keys = (uint32_t *)keys_b.buf;
    unsigned char *sketch = (unsigned char *)sketch_b.buf;
    uint16_t *tok = (uint16_t *)tokens_b.buf;
    uint16_t *rawm = raw ? (uint16_t *)raw_b.buf : NULL;
    const unsigned char *d = (const unsigned char *)data.buf;
    const unsigned char *limit = d + data.len;

    Py_BEGIN_ALLOW_THREADS
    uint16_t m[MAX_PERM];
    for (Py_ssize_t i = 0; i < count; i++) {
        int64_t a = offset_at(offs, large, start + i), b = offset_at(offs, large, start + i + 1);
        size_t n_plain, n_ident;
        size_t ntok = shingles(d + a, (size_t)(b - a), limit, xbuf, cap, &n_plain, &n_ident);
        minhash(xbuf, n_plain, xbuf + cap - n_ident, n_ident, ident_shift, mu, ad, (size_t)K, m);
        uint16_t t16 = (uint16_t)(ntok > 0xFFFF ? 0xFFFF : ntok);
        memcpy(tok + i, &t16, 2);
        sketch_of(m, (size_t)K, sketch + (size_t)i * (size_t)(K / 2));
        for (int j = 0; j < bands; j++) {
            uint32_t key = band_key(m + (size_t)j * (size_t)rows, rows, j);
            memcpy(keys + (size_t)i * (size_t)bands + j, &key, 4);
        }
        if (rawm)
            memcpy(rawm + (size_t)i * (size_t)K, m, (size_t)K * 2);
    }
    Py_END_ALLOW_THREADS

    result = Py_NewRef(Py_None);
done:
    free(xbuf);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&data);
    PyBuffer_Release(&mult);
    PyBuffer_Release(&add);
    PyBuffer_Release(&keys_b);
    PyBuffer_Release(&sketch_b);
    PyBuffer_Release(&tokens_b);
    if (raw_b.obj)
        PyBuffer_Release(&raw_b);
    return result;
}

static PyMethodDef methods[] = {
    {"signatures", signatures, METH_VARARGS, "MinHash LSH keys, sketches and token counts of a slice of an Arrow string array, into given buffers."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "minhash_kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit_minhash_kernel(void) {
    init_tables();
    return PyModule_Create(&module);
}
