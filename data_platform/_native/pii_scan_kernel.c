/* Which free-text values may hold an email, a phone number or an IP address: the cheap
 * superset that data_platform/privacy.py runs over every text before its exact patterns
 * see the few values it selects. The same test as privacy._CANDIDATE, byte by byte:
 *
 *     @  |  [0-9][ ./)-]\(?[0-9]  |  [0-9A-Fa-f]:[0-9A-Fa-f]  |  ::  |  \+[0-9]
 *
 * Every byte in it is ASCII and UTF-8 continuation or lead bytes are >= 0x80, so a byte
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

/* whether the byte at i starts a match (c = p[i] is one of the START bytes) */
static inline int match_at(const uint8_t *p, int64_t i, int64_t n) {
    switch (p[i]) {
    case '@':
        return 1;
    case ':':
        return (i + 1 < n && p[i + 1] == ':') || (is(p, i - 1, n, HEX) && is(p, i + 1, n, HEX));
    case '+':
        return is(p, i + 1, n, DIGIT);
    default: /* a digit */
        if (is(p, i + 1, n, SEPARATOR)) {
            int64_t j = i + 2;
            if (j < n && p[j] == '(')
                j++;
            return is(p, j, n, DIGIT);
        }
        return 0;
    }
}

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* nonzero if a byte of x lies in '+' (0x2b) .. '@' (0x40), the range that holds every
 * START byte (bytes >= 0x80 never count): most words of a text have none and are
 * skipped 8 bytes at a time (the "hasbetween" bit trick) */
static inline uint64_t may_start(uint64_t x) {
    const uint64_t low = 0x2a, high = 0x41; /* exclusive bounds */
    return ((ONES * (127 + high) - (x & ONES * 127)) & ~x & ((x & ONES * 127) + ONES * (127 - low))) & HIGHS;
}

static int may_hold_pii(const uint8_t *p, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        if (!may_start(w))
            continue;
        for (int64_t k = i; k < i + 8; k++)
            if ((byte_class[p[k]] & START) && match_at(p, k, n))
                return 1;
    }
    for (; i < n; i++)
        if ((byte_class[p[i]] & START) && match_at(p, i, n))
            return 1;
    return 0;
}

/* candidates(offsets, data, start, count, large, out)
 *   offsets/data: the Arrow buffers of a string (int32 offsets) or large_string (int64)
 *   array; start/count: the slots to scan; out: a writable buffer of count bytes, set to
 *   1 where the value may hold personal data, else 0 (null slots are the caller's). */
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
        flags[i] = (uint8_t)may_hold_pii(bytes + a, b - a);
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
    {"candidates", candidates, METH_VARARGS, "Which values of a slice of an Arrow string array may hold an email, phone or IP."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "pii_scan_kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit_pii_scan_kernel(void) {
    init_classes();
    return PyModule_Create(&module);
}
