/* Which free-text values may hold an email, a phone number or an IP address: the cheap
 * supersets that data_platform/privacy.py runs over every text before its exact patterns
 * see the few values they select. A value's flags have a bit per kind, each the same
 * test as its pattern in privacy._TRIGGERS, byte by byte (a value with no bit set is
 * not looked at again):
 *
 *     email  @
 *     ip     [0-9A-Fa-f]:[0-9A-Fa-f]  |  ::  |  [0-9]\.[0-9]
 *     phone  [0-9][ ./)-]\(?[0-9]  |  \+[0-9]
 *
 * Every byte in them is ASCII and UTF-8 continuation or lead bytes are >= 0x80, so a byte
 * scan decides exactly what RE2 decides on the UTF-8 text (the tests compare the two).
 * RE2's DFA ran at ~0.55 GB/s on the benchmark's texts; this scan skips the words of 8
 * bytes that hold no byte a match can start at. The GIL is released while scanning.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "arrow_strings.h"

enum { DIGIT = 1, HEX = 2, SEPARATOR = 4, START = 8 };
enum { EMAIL = 1, IP = 2, PHONE = 4, ALL_KINDS = 7 }; /* the flags' bits */

static uint8_t byte_class[256];

static void init_classes(void) {
    for (int c = '0'; c <= '9'; c++)
        byte_class[c] |= DIGIT | HEX | START;
    for (int c = 'a'; c <= 'f'; c++)
        byte_class[c] |= HEX;
    for (int c = 'A'; c <= 'F'; c++)
        byte_class[c] |= HEX;
    for (const char *s = " ./)-"; *s; s++)
        byte_class[(uint8_t)*s] |= SEPARATOR;
    /* bytes a match can hinge on: the scan stops only at these */
    for (const char *s = "@:+"; *s; s++)
        byte_class[(uint8_t)*s] |= START;
}

static inline int is(const uint8_t *p, int64_t i, int64_t n, int cls) {
    return i >= 0 && i < n && (byte_class[p[i]] & cls);
}

/* the kinds whose trigger starts at the byte at i (one of the START bytes) */
static inline int kinds_at(const uint8_t *p, int64_t i, int64_t n) {
    switch (p[i]) {
    case '@':
        return EMAIL;
    case ':':
        return (i + 1 < n && p[i + 1] == ':') || (is(p, i - 1, n, HEX) && is(p, i + 1, n, HEX)) ? IP : 0;
    case '+':
        return is(p, i + 1, n, DIGIT) ? PHONE : 0;
    default: /* a digit */
        if (is(p, i + 1, n, SEPARATOR)) {
            int64_t j = i + 2;
            int paren = j < n && p[j] == '(';
            if (is(p, j + paren, n, DIGIT))
                return PHONE | (p[i + 1] == '.' && !paren ? IP : 0);
        }
        return 0;
    }
}

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* the high bit of each byte of x that is a START byte: a digit or ':' (0x30..0x3a, the
 * "hasbetween" bit trick, exact per byte below 0x80) or '@' or '+' (the "haszero" trick
 * on x ^ c, exact for the lowest such byte; a later flag may be false, and the caller
 * checks each byte). Most words of a text have none and are skipped 8 bytes at a time;
 * in the others only the flagged bytes are looked at. */
static inline uint64_t start_bytes(uint64_t x) {
    const uint64_t low = 0x2f, high = 0x3b; /* exclusive bounds */
    uint64_t seven = x & ONES * 127, at = x ^ ONES * '@', plus = x ^ ONES * '+';
    return (((ONES * (127 + high) - seven) & ~x & (seven + ONES * (127 - low))) | ((at - ONES) & ~at)
            | ((plus - ONES) & ~plus)) & HIGHS;
}

static int kinds_in(const uint8_t *p, int64_t n) {
    int found = 0;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        for (uint64_t m = start_bytes(w); m; m &= m - 1) {
            int64_t k = i + (__builtin_ctzll(m) >> 3);
            if (byte_class[p[k]] & START) {
                found |= kinds_at(p, k, n);
                if (found == ALL_KINDS)
                    return found;
            }
        }
    }
    for (; i < n; i++)
        if (byte_class[p[i]] & START)
            found |= kinds_at(p, i, n);
    return found;
}

/* candidates(offsets, data, start, count, large, out)
 *   offsets/data: the Arrow buffers of a string (int32 offsets) or large_string (int64)
 *   array; start/count: the slots to scan; out: a writable buffer of count bytes, set to
 *   the kinds each value may hold (bits EMAIL 1, IP 2, PHONE 4; 0: none; null slots are
 *   the caller's). */
static PyObject *candidates(PyObject *self, PyObject *args) {
    Py_buffer offsets, data, out;
    Py_ssize_t start, count;
    int large;
    if (!PyArg_ParseTuple(args, "y*y*nnpw*", &offsets, &data, &start, &count, &large, &out))
        return NULL;
    PyObject *result = NULL;
    if (check_string_slice(&offsets, &data, start, count, large) < 0)
        goto done;
    if ((size_t)out.len < (size_t)count) {
        PyErr_SetString(PyExc_ValueError, "out holds fewer than count bytes");
        goto done;
    }
    const void *offs = offsets.buf;
    const uint8_t *bytes = (const uint8_t *)data.buf;
    uint8_t *flags = (uint8_t *)out.buf;
    Py_BEGIN_ALLOW_THREADS
    int64_t a = offset_at(offs, large, start);
    for (Py_ssize_t i = 0; i < count; i++) {
        int64_t b = offset_at(offs, large, start + i + 1);
        flags[i] = (uint8_t)kinds_in(bytes + a, b - a);
        a = b;
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"candidates", candidates, METH_VARARGS, "The kinds of personal data (bits: email 1, ip 2, phone 4) each value of a slice of an Arrow string array may hold."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "pii_scan_kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit_pii_scan_kernel(void) {
    init_classes();
    return PyModule_Create(&module);
}
