/* DuckDB's hash of strings, for a whole Arrow string column in one call.
 *
 * The row-hash index (data_platform/dedup.py) holds DuckDB's `hash()` of each row, and
 * persisted runs must keep matching: this is the same function, bit for bit, as the
 * pinned DuckDB release computes for a VARCHAR (its HashBytes: 8-byte blocks multiplied
 * in, the tail zero-padded, then MurmurHash64's finaliser). The tests compare the two on
 * random and edge-case values. Null slots are not special here: the caller overwrites
 * them with DuckDB's null hash. The GIL is released while hashing.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "arrow_strings.h"

static inline uint64_t murmur64(uint64_t x) {
    x ^= x >> 32;
    x *= 0xd6e8feb86659fd93ULL;
    x ^= x >> 32;
    x *= 0xd6e8feb86659fd93ULL;
    x ^= x >> 32;
    return x;
}

static inline uint64_t hash_bytes(const uint8_t *p, uint64_t len) {
    uint64_t h = 0xe17a1465ULL ^ (len * 0xc6a4a7935bd1e995ULL);
    const uint64_t rem = len & 7U;
    const uint8_t *end = p + (len - rem);
    for (; p != end; p += 8) {
        uint64_t block;
        memcpy(&block, p, 8);
        h ^= block;
        h *= 0xd6e8feb86659fd93ULL;
    }
    if (rem) {
        uint64_t block = 0;
        memcpy(&block, p, rem);
        h ^= block;
        h *= 0xd6e8feb86659fd93ULL;
    }
    return murmur64(h);
}

/* string_hashes(offsets, data, start, count, large, out)
 *   offsets/data: the Arrow buffers of a string (int32 offsets) or large_string (int64)
 *   array; start/count: the slots to hash; out: a writable buffer of count uint64. */
static PyObject *string_hashes(PyObject *self, PyObject *args) {
    Py_buffer offsets, data, out;
    Py_ssize_t start, count;
    int large;
    if (!PyArg_ParseTuple(args, "y*y*nnpw*", &offsets, &data, &start, &count, &large, &out))
        return NULL;
    PyObject *result = NULL;
    if (check_string_slice(&offsets, &data, start, count, large) < 0)
        goto done;
    if ((size_t)out.len < (size_t)count * 8) {
        PyErr_SetString(PyExc_ValueError, "out holds fewer than count uint64");
        goto done;
    }
    const void *offs = offsets.buf;
    const uint8_t *bytes = (const uint8_t *)data.buf;
    uint64_t *hashes = (uint64_t *)out.buf;
    Py_BEGIN_ALLOW_THREADS
    int64_t a = offset_at(offs, large, start);
    for (Py_ssize_t i = 0; i < count; i++) {
        int64_t b = offset_at(offs, large, start + i + 1);
        hashes[i] = hash_bytes(bytes + a, (uint64_t)(b - a));
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

/* found_in(keys, queries, found)
 *   keys: ascending int64; queries: ascending int64; found: a writable byte per query,
 *   set to 1 where the query is among the keys (left as it is otherwise, so that several
 *   sorted parts can be looked up into one result).
 * Each query gallops from where the one before it stopped: queries a few keys apart cost
 * a few comparisons on memory just read, where numpy's searchsorted does a whole binary
 * search per query (~3x the time on the row index's parts). */
static PyObject *found_in(PyObject *self, PyObject *args) {
    Py_buffer keys, queries, found;
    if (!PyArg_ParseTuple(args, "y*y*w*", &keys, &queries, &found))
        return NULL;
    PyObject *result = NULL;
    if (keys.len % 8 || queries.len % 8 || found.len < queries.len / 8) {
        PyErr_SetString(PyExc_ValueError, "keys and queries must be int64, found one byte per query");
        goto done;
    }
    const int64_t *k = keys.buf, *q = queries.buf;
    int64_t n = keys.len / 8, m = queries.len / 8;
    uint8_t *f = found.buf;
    Py_BEGIN_ALLOW_THREADS
    int64_t lo = 0;
    for (int64_t i = 0; i < m && lo < n; i++) {
        int64_t v = q[i], hi = lo, step = 1;
        while (hi < n && k[hi] < v) { /* every key below hi is below v */
            lo = hi + 1;
            hi = lo + step;
            step <<= 1;
        }
        if (hi > n)
            hi = n;
        while (lo < hi) { /* the first key >= v lies in [lo, hi] */
            int64_t mid = lo + (hi - lo) / 2;
            if (k[mid] < v)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo < n && k[lo] == v)
            f[i] = 1;
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&keys);
    PyBuffer_Release(&queries);
    PyBuffer_Release(&found);
    return result;
}

static PyMethodDef methods[] = {
    {"string_hashes", string_hashes, METH_VARARGS, "DuckDB's hash() of each value of a slice of an Arrow string array."},
    {"found_in", found_in, METH_VARARGS, "Which of ascending int64 queries are among ascending int64 keys."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "rowhash_kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit_rowhash_kernel(void) { return PyModule_Create(&module); }
