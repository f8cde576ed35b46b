/* What the kernels share about Arrow string arrays: the offsets buffer is int32 for
 * string and int64 for large_string; value i spans [offset_at(i), offset_at(i + 1)).
 * The arrays come from Python as plain buffers, so the kernels check them first. */
#ifndef DATA_PLATFORM_ARROW_STRINGS_H
#define DATA_PLATFORM_ARROW_STRINGS_H

#include <Python.h>
#include <stdint.h>

static inline int64_t offset_at(const void *offsets, int large, Py_ssize_t i) {
    return large ? ((const int64_t *)offsets)[i] : (int64_t)((const int32_t *)offsets)[i];
}

/* 0 if slots [start, start + count) lie in the array's buffers: their offsets inside the
 * offsets buffer, never decreasing, and inside the data buffer; else -1 with a ValueError
 * set. Checked once, before a kernel's loop runs without the GIL, so that the loop reads
 * within the buffers whatever they hold. */
static inline int check_string_slice(const Py_buffer *offsets, const Py_buffer *data, Py_ssize_t start,
                                     Py_ssize_t count, int large) {
    size_t width = (size_t)(large ? 8 : 4);
    if (start < 0 || count < 0 || start > PY_SSIZE_T_MAX / 8 - count - 1 ||
        (size_t)offsets->len < (size_t)(start + count + 1) * width) {
        PyErr_SetString(PyExc_ValueError, "start/count outside the offsets buffer");
        return -1;
    }
    int64_t previous = offset_at(offsets->buf, large, start);
    int ok = previous >= 0;
    for (Py_ssize_t i = 1; ok && i <= count; i++) {
        int64_t next = offset_at(offsets->buf, large, start + i);
        ok = next >= previous;
        previous = next;
    }
    if (!ok || previous > (int64_t)data->len) {
        PyErr_SetString(PyExc_ValueError, "offsets decrease or leave the data buffer");
        return -1;
    }
    return 0;
}

#endif
