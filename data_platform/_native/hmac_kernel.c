/* Keyed pseudonyms for a whole Arrow string column in one call.
 *
 * HMAC(k, m) = H((k ^ opad) || H((k ^ ipad) || m)). The two padded key blocks are the
 * same for every value, so their SHA-256 states are computed once and copied per value:
 * two compressions per short value instead of four (what hashing the blocks anew
 * costs). OpenSSL's SHA-256 uses the CPU's SHA extensions where present. Where the CPU
 * has them (x86-64 SHA-NI), values of at most 55 bytes (one block: emails, phones, IPs,
 * names, ids) are hashed here instead, two at a time: one compression's rounds are a
 * chain of dependent instructions, so two independent values fill each other's waits
 * (~100 -> ~50 ns per value; OpenSSL's calls cost one value at a time). The tests hold
 * both paths equal to Python's hmac. The GIL is released while hashing, so callers may
 * run slices of a column on several threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <string.h>

#include "arrow_strings.h"

static const char HEX[] = "0123456789abcdef";

static int sha_extensions; /* set at import where the CPU has SHA-NI; tests may turn it off */

#if defined(__x86_64__) && defined(__GNUC__)
#define SHANI 1
#define SHANI_MAX_VALUE 55 /* bytes: the value, 0x80 and the 8-byte length fit one block */
#include <immintrin.h>
#define SHANI_TARGET __attribute__((target("sha,sse4.1,ssse3")))

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
static const uint32_t IV256[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                  0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

/* A SHA-256 state as the SHA instructions hold it: (A, B, E, F) and (C, D, G, H). */
typedef struct {
    __m128i abef, cdgh;
} ShaState;

SHANI_TARGET static inline ShaState state_in(const uint32_t h[8]) {
    __m128i t = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)h), 0xB1);    /* CDAB */
    __m128i u = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)(h + 4)), 0x1B); /* EFGH */
    return (ShaState){_mm_alignr_epi8(t, u, 8), _mm_blend_epi16(u, t, 0xF0)};
}

SHANI_TARGET static inline void state_out(ShaState s, uint32_t h[8]) {
    __m128i t = _mm_shuffle_epi32(s.abef, 0x1B); /* FEBA */
    __m128i u = _mm_shuffle_epi32(s.cdgh, 0xB1); /* DCHG */
    _mm_storeu_si128((__m128i *)h, _mm_blend_epi16(t, u, 0xF0)); /* DCBA */
    _mm_storeu_si128((__m128i *)(h + 4), _mm_alignr_epi8(u, t, 8)); /* HGFE */
}

/* The message words of a 64-byte block, big-endian as SHA-256 reads them. */
SHANI_TARGET static inline void block_words(const unsigned char *b, __m128i w[4]) {
    const __m128i swap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    for (int i = 0; i < 4; i++)
        w[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(b + 16 * i)), swap);
}

/* One block compressed into each of two states (independent: their rounds interleave). */
SHANI_TARGET static void compress2(ShaState *x, const __m128i wx[4], ShaState *y, const __m128i wy[4]) {
    __m128i ax = x->abef, cx = x->cdgh, ay = y->abef, cy = y->cdgh;
    __m128i mx[4] = {wx[0], wx[1], wx[2], wx[3]}, my[4] = {wy[0], wy[1], wy[2], wy[3]};
#pragma GCC unroll 16
    for (int j = 0; j < 16; j++) {
        if (j >= 4) { /* W[4j..4j+3] from the four groups before */
            __m128i nx = _mm_sha256msg2_epu32(
                _mm_add_epi32(_mm_sha256msg1_epu32(mx[j & 3], mx[(j + 1) & 3]), _mm_alignr_epi8(mx[(j + 3) & 3], mx[(j + 2) & 3], 4)),
                mx[(j + 3) & 3]);
            __m128i ny = _mm_sha256msg2_epu32(
                _mm_add_epi32(_mm_sha256msg1_epu32(my[j & 3], my[(j + 1) & 3]), _mm_alignr_epi8(my[(j + 3) & 3], my[(j + 2) & 3], 4)),
                my[(j + 3) & 3]);
            mx[j & 3] = nx;
            my[j & 3] = ny;
        }
        __m128i k = _mm_loadu_si128((const __m128i *)(K256 + 4 * j));
        __m128i tx = _mm_add_epi32(mx[j & 3], k), ty = _mm_add_epi32(my[j & 3], k);
        cx = _mm_sha256rnds2_epu32(cx, ax, tx);
        cy = _mm_sha256rnds2_epu32(cy, ay, ty);
        ax = _mm_sha256rnds2_epu32(ax, cx, _mm_shuffle_epi32(tx, 0x0E));
        ay = _mm_sha256rnds2_epu32(ay, cy, _mm_shuffle_epi32(ty, 0x0E));
    }
    x->abef = _mm_add_epi32(ax, x->abef);
    x->cdgh = _mm_add_epi32(cx, x->cdgh);
    y->abef = _mm_add_epi32(ay, y->abef);
    y->cdgh = _mm_add_epi32(cy, y->cdgh);
}

/* The midstate after one 64-byte block (a padded key block). */
SHANI_TARGET static ShaState midstate(const unsigned char *block) {
    uint32_t h[8];
    memcpy(h, IV256, sizeof h);
    ShaState s = state_in(h), unused = s;
    __m128i w[4];
    block_words(block, w);
    compress2(&s, w, &unused, w);
    return s;
}

/* HMAC of two values of at most 55 bytes from the two midstates: the words of each
 * digest, in order (H0..H7). */
SHANI_TARGET static void hmac2(ShaState inner0, ShaState outer0, const unsigned char *m0, size_t n0,
                               const unsigned char *m1, size_t n1, uint32_t d0[8], uint32_t d1[8]) {
    unsigned char b0[64] = {0}, b1[64] = {0};
    memcpy(b0, m0, n0);
    memcpy(b1, m1, n1);
    b0[n0] = b1[n1] = 0x80;
    uint64_t bits0 = (64 + n0) * 8, bits1 = (64 + n1) * 8; /* the key block came first */
    for (int i = 0; i < 8; i++) {
        b0[63 - i] = (unsigned char)(bits0 >> (8 * i));
        b1[63 - i] = (unsigned char)(bits1 >> (8 * i));
    }
    __m128i w0[4], w1[4];
    block_words(b0, w0);
    block_words(b1, w1);
    ShaState s0 = inner0, s1 = inner0;
    compress2(&s0, w0, &s1, w1);
    /* outer: the inner digest (its words as they are), 0x80, zeros, 768 bits */
    state_out(s0, d0);
    state_out(s1, d1);
    w0[0] = _mm_loadu_si128((const __m128i *)d0);
    w0[1] = _mm_loadu_si128((const __m128i *)(d0 + 4));
    w1[0] = _mm_loadu_si128((const __m128i *)d1);
    w1[1] = _mm_loadu_si128((const __m128i *)(d1 + 4));
    w0[2] = w1[2] = _mm_set_epi32(0, 0, 0, (int)0x80000000u);
    w0[3] = w1[3] = _mm_set_epi32(768, 0, 0, 0);
    s0 = outer0;
    s1 = outer0;
    compress2(&s0, w0, &s1, w1);
    state_out(s0, d0);
    state_out(s1, d1);
}
#endif

/* The digest words' bytes, big-endian (a SHA-256 digest). */
static inline void digest_bytes(const uint32_t d[8], unsigned char out[32]) {
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(d[i] >> 24);
        out[4 * i + 1] = (unsigned char)(d[i] >> 16);
        out[4 * i + 2] = (unsigned char)(d[i] >> 8);
        out[4 * i + 3] = (unsigned char)d[i];
    }
}

/* HMAC with OpenSSL from the two midstates. */
static void openssl_hmac(const SHA256_CTX *inner0, const SHA256_CTX *outer0, const unsigned char *m, size_t n,
                         unsigned char digest[SHA256_DIGEST_LENGTH]) {
    SHA256_CTX c = *inner0;
    SHA256_Update(&c, m, n);
    SHA256_Final(digest, &c);
    c = *outer0;
    SHA256_Update(&c, digest, SHA256_DIGEST_LENGTH);
    SHA256_Final(digest, &c);
}

/* A pseudonym written at out (prefix, then hex_chars hex digits of the digest) and its
 * key (the digest's first 8 bytes, big-endian). */
static inline void emit(const unsigned char *digest, unsigned char *out, const void *prefix, Py_ssize_t prefix_len,
                        int hex_chars, int64_t *key) {
    memcpy(out, prefix, (size_t)prefix_len);
    unsigned char *h = out + prefix_len;
    for (int k = 0; k < hex_chars / 2; k++) {
        h[2 * k] = HEX[digest[k] >> 4];
        h[2 * k + 1] = HEX[digest[k] & 15];
    }
    uint64_t v = 0;
    for (int k = 0; k < 8; k++)
        v = (v << 8) | digest[k];
    *key = (int64_t)v;
}

/* pseudonyms(ipad, opad, prefix, hex_chars, offsets, data, start, count, large)
 *   ipad, opad: the 64-byte padded key blocks; prefix: bytes put before the hex digits;
 *   offsets/data: the Arrow buffers of a string (int32 offsets) or large_string (int64)
 *   array; start/count: the slots to hash. An empty value gives an empty result.
 * Returns (offsets: int32[count + 1] as bytes, data: bytes) of a new string array, and
 * keys: int64[count] as bytes, the first 8 bytes of each HMAC read big-endian (0 for an
 * empty value): compact keys of the pseudonyms for the erasure index. */
static PyObject *pseudonyms(PyObject *self, PyObject *args) {
    Py_buffer ipad, opad, prefix, offsets, data;
    int hex_chars, large;
    Py_ssize_t start, count;
    if (!PyArg_ParseTuple(args, "y*y*y*iy*y*nnp", &ipad, &opad, &prefix, &hex_chars, &offsets, &data,
                          &start, &count, &large))
        return NULL;
    PyObject *result = NULL, *out_offsets = NULL, *out_data = NULL, *out_keys = NULL;
    if (ipad.len != SHA256_CBLOCK || opad.len != SHA256_CBLOCK) {
        PyErr_SetString(PyExc_ValueError, "ipad and opad must be 64-byte blocks");
        goto done;
    }
    if (hex_chars < 0 || hex_chars > 2 * SHA256_DIGEST_LENGTH || hex_chars % 2) {
        PyErr_SetString(PyExc_ValueError, "hex_chars must be even and at most 64");
        goto done;
    }
    if (check_string_slice(&offsets, &data, start, count, large) < 0)
        goto done;
    const void *offs = offsets.buf;
    Py_ssize_t non_empty = 0;
    for (Py_ssize_t i = 0; i < count; i++)
        non_empty += offset_at(offs, large, start + i + 1) > offset_at(offs, large, start + i);
    size_t item = (size_t)prefix.len + (size_t)hex_chars;
    if ((uint64_t)non_empty * item > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "result exceeds a string array: hash fewer values per call");
        goto done;
    }
    out_offsets = PyBytes_FromStringAndSize(NULL, (count + 1) * 4);
    out_data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(non_empty * item));
    out_keys = PyBytes_FromStringAndSize(NULL, count * 8);
    if (!out_offsets || !out_data || !out_keys)
        goto done;
    int64_t *keys = (int64_t *)PyBytes_AS_STRING(out_keys);
    int32_t *o = (int32_t *)PyBytes_AS_STRING(out_offsets);
    unsigned char *w = (unsigned char *)PyBytes_AS_STRING(out_data);
    const unsigned char *d = (const unsigned char *)data.buf;

    Py_BEGIN_ALLOW_THREADS
    SHA256_CTX inner0, outer0;
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256_Init(&inner0);
    SHA256_Update(&inner0, ipad.buf, SHA256_CBLOCK);
    SHA256_Init(&outer0);
    SHA256_Update(&outer0, opad.buf, SHA256_CBLOCK);
    int32_t pos = 0; /* each non-empty value's output starts at o[i] */
    o[0] = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        pos += offset_at(offs, large, start + i + 1) > offset_at(offs, large, start + i) ? (int32_t)item : 0;
        o[i + 1] = pos;
    }
#ifdef SHANI
    const int use_sha = sha_extensions; /* read once: a call never mixes the two paths' setup */
    ShaState inner_mid, outer_mid;
    if (use_sha) {
        inner_mid = midstate(ipad.buf);
        outer_mid = midstate(opad.buf);
    }
    Py_ssize_t waiting = -1; /* a short value hashed with the next one */
#endif
    for (Py_ssize_t i = 0; i < count; i++) {
        int64_t a = offset_at(offs, large, start + i), b = offset_at(offs, large, start + i + 1);
        if (b <= a) {
            keys[i] = 0;
            continue;
        }
#ifdef SHANI
        if (use_sha && b - a <= SHANI_MAX_VALUE) {
            if (waiting < 0) {
                waiting = i;
                continue;
            }
            int64_t wa = offset_at(offs, large, start + waiting), wb = offset_at(offs, large, start + waiting + 1);
            uint32_t dw[8], di[8];
            hmac2(inner_mid, outer_mid, d + wa, (size_t)(wb - wa), d + a, (size_t)(b - a), dw, di);
            digest_bytes(dw, digest);
            emit(digest, w + o[waiting], prefix.buf, prefix.len, hex_chars, &keys[waiting]);
            digest_bytes(di, digest);
            emit(digest, w + o[i], prefix.buf, prefix.len, hex_chars, &keys[i]);
            waiting = -1;
            continue;
        }
#endif
        openssl_hmac(&inner0, &outer0, d + a, (size_t)(b - a), digest);
        emit(digest, w + o[i], prefix.buf, prefix.len, hex_chars, &keys[i]);
    }
#ifdef SHANI
    if (waiting >= 0) {
        int64_t wa = offset_at(offs, large, start + waiting), wb = offset_at(offs, large, start + waiting + 1);
        openssl_hmac(&inner0, &outer0, d + wa, (size_t)(wb - wa), digest);
        emit(digest, w + o[waiting], prefix.buf, prefix.len, hex_chars, &keys[waiting]);
    }
#endif
    Py_END_ALLOW_THREADS

    result = PyTuple_Pack(3, out_offsets, out_data, out_keys);
done:
    Py_XDECREF(out_keys);
    Py_XDECREF(out_offsets);
    Py_XDECREF(out_data);
    PyBuffer_Release(&ipad);
    PyBuffer_Release(&opad);
    PyBuffer_Release(&prefix);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&data);
    return result;
}

/* set_sha_extensions(enabled) -> bool: whether short values are hashed with the CPU's
 * SHA instructions (never where it has none); returns the previous setting. */
static PyObject *set_sha_extensions(PyObject *self, PyObject *arg) {
    int enabled = PyObject_IsTrue(arg);
    if (enabled < 0)
        return NULL;
    int previous = sha_extensions;
#ifdef SHANI
    __builtin_cpu_init();
    sha_extensions = enabled && __builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1");
#endif
    return PyBool_FromLong(previous);
}

static PyMethodDef methods[] = {
    {"pseudonyms", pseudonyms, METH_VARARGS, "HMAC-SHA-256 pseudonyms of a slice of an Arrow string array."},
    {"set_sha_extensions", set_sha_extensions, METH_O, "Use the CPU's SHA instructions where it has them; returns the previous setting."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "hmac_kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit_hmac_kernel(void) {
    PyObject *m = PyModule_Create(&module);
    if (m)
        Py_XDECREF(set_sha_extensions(m, Py_True));
    return m;
}
