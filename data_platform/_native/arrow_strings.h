/* What the kernels share about Arrow string arrays: the offsets buffer is int32 for
 * string and int64 for large_string; value i spans [offset_at(i), offset_at(i + 1)). */
#ifndef DATA_PLATFORM_ARROW_STRINGS_H
#define DATA_PLATFORM_ARROW_STRINGS_H

#include <Python.h>
#include <stdint.h>

static inline int64_t offset_at(const void *offsets, int large, Py_ssize_t i) {
    return large ? ((const int64_t *)offsets)[i] : (int64_t)((const int32_t *)offsets)[i];
}

#endif
