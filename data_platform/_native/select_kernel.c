/* Rows of an Arrow string column copied into buffers sized exactly for them.
 *
 * Arrow's filter and take build a string column's data with a growing builder: each
 * growth is a reallocation that copies what was written into pages never touched
 * before, so a 5 MB text column filtered came out of ~3.5 MB of fresh pages that the
 * kernel had to fault in and zero. Here the caller allocates the output once, of the
 * exact size (the selected values' lengths are summed first), and this copies the
 * values in, a run of consecutive rows at a time. The GIL is released while copying.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "arrow_strings.h"

/* gather_strings(offsets, data, large, rows, out_offsets, out_data, out_at) -> out_at
 *   offsets/data: the Arrow buffers of a string (int32 offsets) or large_string (int64)
 *   array (its own offset already applied by the caller through `rows`); rows: int64
 *   slots into it, any order; out_offsets: writable, one offset per row of the output's
 *   kind (int32 when large is false, else int64): the end of each copied value;
 *   out_data: writable; out_at: where in out_data the first value goes. Returns where
 *   the next would go. Raises ValueError (nothing copied) if a row or value lies outside
 *   the buffers or the output is too small. */
static PyObject *gather_strings(PyObject *self, PyObject *args) {
    Py_buffer offsets, data, rows, out_offsets, out_data;
    int large;
    Py_ssize_t out_at;
    if (!PyArg_ParseTuple(args, "y*y*py*w*w*n", &offsets, &data, &large, &rows, &out_offsets, &out_data, &out_at))
        return NULL;
    PyObject *result = NULL;
    size_t width = large ? 8 : 4;
    Py_ssize_t slots = (Py_ssize_t)(offsets.len / width) - 1; /* values the offsets describe */
    Py_ssize_t n = rows.len / 8;
    const int64_t *at = (const int64_t *)rows.buf;
    if (rows.len % 8 || (size_t)out_offsets.len < (size_t)n * width || out_at < 0 || out_at > out_data.len) {
        PyErr_SetString(PyExc_ValueError, "rows must be int64 and out_offsets hold one offset per row");
        goto done;
    }
    /* every row and value inside the buffers, and the output big enough: checked before
     * anything is written, so the copy below runs without checks and without the GIL */
    int64_t need = out_at;
    for (Py_ssize_t j = 0; j < n; j++) {
        if (at[j] < 0 || at[j] >= slots) {
            PyErr_Format(PyExc_ValueError, "row %lld outside the array's %zd values", (long long)at[j], slots);
            goto done;
        }
        int64_t a = offset_at(offsets.buf, large, at[j]), b = offset_at(offsets.buf, large, at[j] + 1);
        if (a < 0 || b < a || b > (int64_t)data.len) {
            PyErr_SetString(PyExc_ValueError, "offsets decrease or leave the data buffer");
            goto done;
        }
        need += b - a;
    }
    if (need > (int64_t)out_data.len || (!large && need > INT32_MAX)) {
        PyErr_SetString(PyExc_ValueError, "out_data is too small for the rows' values");
        goto done;
    }
    const uint8_t *src = (const uint8_t *)data.buf;
    uint8_t *dst = (uint8_t *)out_data.buf;
    Py_BEGIN_ALLOW_THREADS
    int64_t pos = out_at;
    for (Py_ssize_t j = 0; j < n;) {
        /* a run of consecutive rows is one contiguous range of the data */
        Py_ssize_t k = j;
        int64_t first = offset_at(offsets.buf, large, at[j]);
        for (;;) {
            int64_t end = offset_at(offsets.buf, large, at[k] + 1);
            int64_t off = pos + (end - first);
            if (large)
                ((int64_t *)out_offsets.buf)[k] = off;
            else
                ((int32_t *)out_offsets.buf)[k] = (int32_t)off;
            if (k + 1 < n && at[k + 1] == at[k] + 1)
                k++;
            else
                break;
        }
        int64_t last = offset_at(offsets.buf, large, at[k] + 1);
        memcpy(dst + pos, src + first, (size_t)(last - first));
        pos += last - first;
        j = k + 1;
    }
    out_at = (Py_ssize_t)pos;
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(out_at);
done:
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&data);
    PyBuffer_Release(&rows);
    PyBuffer_Release(&out_offsets);
    PyBuffer_Release(&out_data);
    return result;
}

static PyMethodDef methods[] = {
    {"gather_strings", gather_strings, METH_VARARGS,
     "Copy rows of an Arrow string array into exactly sized output buffers."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "select_kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit_select_kernel(void) { return PyModule_Create(&module); }
