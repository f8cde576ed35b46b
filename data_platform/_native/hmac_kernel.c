/* Keyed pseudonyms for a whole Arrow string column in one call.
 *
 * HMAC(k, m) = H((k ^ opad) || H((k ^ ipad) || m)). The two padded key blocks are the
 * same for every value, so their SHA-256 states are computed once and copied per value:
 * two compressions per short value instead of four (what hashing the blocks anew
 * costs). OpenSSL's SHA-256 uses the CPU's SHA extensions where present. The GIL is
 * released while hashing, so callers may run slices of a column on several threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <string.h>

#include "arrow_strings.h"

static const char HEX[] = "0123456789abcdef";

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
    SHA256_CTX inner0, outer0, c;
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256_Init(&inner0);
    SHA256_Update(&inner0, ipad.buf, SHA256_CBLOCK);
    SHA256_Init(&outer0);
    SHA256_Update(&outer0, opad.buf, SHA256_CBLOCK);
    int32_t pos = 0;
    o[0] = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        int64_t a = offset_at(offs, large, start + i), b = offset_at(offs, large, start + i + 1);
        if (b > a) {
            c = inner0;
            SHA256_Update(&c, d + a, (size_t)(b - a));
            SHA256_Final(digest, &c);
            c = outer0;
            SHA256_Update(&c, digest, SHA256_DIGEST_LENGTH);
            SHA256_Final(digest, &c);
            memcpy(w + pos, prefix.buf, (size_t)prefix.len);
            unsigned char *h = w + pos + prefix.len;
            for (int k = 0; k < hex_chars / 2; k++) {
                h[2 * k] = HEX[digest[k] >> 4];
                h[2 * k + 1] = HEX[digest[k] & 15];
            }
            pos += (int32_t)item;
            uint64_t key = 0;
            for (int k = 0; k < 8; k++)
                key = (key << 8) | digest[k];
            keys[i] = (int64_t)key;
        } else {
            keys[i] = 0;
        }
        o[i + 1] = pos;
    }
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

static PyMethodDef methods[] = {
    {"pseudonyms", pseudonyms, METH_VARARGS, "HMAC-SHA-256 pseudonyms of a slice of an Arrow string array."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "hmac_kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit_hmac_kernel(void) { return PyModule_Create(&module); }
