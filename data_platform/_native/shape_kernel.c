/* Which strings of an Arrow string column are ISO dates or timestamps that Arrow's safe
 * cast surely accepts, for data_platform/validation.py: a column whose cast fails has its
 * values of another shape tried one by one, so the shapes that surely cast are told
 * apart first. This is the test `validation._SURELY_CASTABLE` holds as a regular
 * expression (the tests keep the two equal), and the calendar beside it:
 *
 *   date       YYYY-MM-DD, month 01-12, day 01-31 and within its month (29 February
 *              in leap years only)
 *   timestamp  a date, optionally followed by [T or space]HH (00-23), then optionally
 *              :MM (00-59), then :SS (00-59), then .f (1-6 digits), each only after
 *              the one before; then optionally Z or +HH, -HH, +HHMM, +HH:MM (after a
 *              time only)
 *
 * Digits are ASCII only. One pass of a few comparisons per value replaced an RE2 match
 * over the column and a numpy pass over the days of the matched values. The GIL is
 * released while scanning.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "arrow_strings.h"

/* the n ASCII digits at p as a number, or -1 */
static inline int number(const unsigned char *p, int n) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        unsigned d = (unsigned)p[i] - '0';
        if (d > 9)
            return -1;
        v = v * 10 + (int)d;
    }
    return v;
}

static inline int days_in_month(int year, int month) {
    static const int DAYS[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (year % 4 == 0) && (year % 100 != 0 || year % 400 == 0);
    return DAYS[month - 1] + (month == 2 && leap);
}

/* 1 if s[0..n) is a date (or, with `timestamp`, a timestamp) of a shape above */
static int surely_castable(const unsigned char *s, size_t n, int timestamp) {
    if (n < 10 || s[4] != '-' || s[7] != '-')
        return 0;
    int year = number(s, 4), month = number(s + 5, 2), day = number(s + 8, 2);
    if (year < 0 || month < 1 || month > 12 || day < 1 || day > days_in_month(year, month))
        return 0;
    if (n == 10)
        return 1;
    if (!timestamp || (s[10] != 'T' && s[10] != ' ') || n < 13)
        return 0;
    int hour = number(s + 11, 2);
    if (hour < 0 || hour > 23)
        return 0;
    size_t i = 13;
    if (i < n && s[i] == ':') { /* minutes, then seconds, then a fraction */
        int minute = i + 3 <= n ? number(s + i + 1, 2) : -1;
        if (minute < 0 || minute > 59)
            return 0;
        i += 3;
        if (i < n && s[i] == ':') {
            int second = i + 3 <= n ? number(s + i + 1, 2) : -1;
            if (second < 0 || second > 59)
                return 0;
            i += 3;
            if (i < n && s[i] == '.') {
                size_t k = 0;
                while (i + 1 + k < n && (unsigned)s[i + 1 + k] - '0' <= 9)
                    k++;
                if (k < 1 || k > 6)
                    return 0;
                i += 1 + k;
            }
        }
    }
    if (i == n)
        return 1;
    if (s[i] == 'Z')
        return i + 1 == n;
    if (s[i] != '+' && s[i] != '-')
        return 0;
    if (i + 3 > n || number(s + i + 1, 2) < 0)
        return 0;
    i += 3;
    if (i == n)
        return 1;
    if (s[i] == ':')
        i++;
    return i + 2 == n && number(s + i, 2) >= 0;
}

/* surely_castable(offsets, data, start, count, large, timestamp, out) -> None
 *   offsets/data: the Arrow buffers of a string (int32 offsets) or large_string (int64)
 *   array; start/count: the slots to test (start includes the array's own offset);
 *   timestamp: false for the date shape; out: writable, count bytes, set to 1 where the
 *   value is of the shape and 0 elsewhere (null slots are tested as whatever bytes
 *   they span: the caller masks them). */
static PyObject *py_surely_castable(PyObject *self, PyObject *args) {
    Py_buffer offsets, data, out;
    Py_ssize_t start, count;
    int large, timestamp;
    if (!PyArg_ParseTuple(args, "y*y*nnppw*", &offsets, &data, &start, &count, &large, &timestamp, &out))
        return NULL;
    PyObject *result = NULL;
    if (check_string_slice(&offsets, &data, start, count, large) < 0)
        goto done;
    if (out.len != count) {
        PyErr_SetString(PyExc_ValueError, "out must hold one byte per value");
        goto done;
    }
    const unsigned char *d = (const unsigned char *)data.buf;
    unsigned char *o = (unsigned char *)out.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++) {
        int64_t a = offset_at(offsets.buf, large, start + i), b = offset_at(offsets.buf, large, start + i + 1);
        o[i] = (unsigned char)surely_castable(d + a, (size_t)(b - a), timestamp);
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
    {"surely_castable", py_surely_castable, METH_VARARGS,
     "Flags the values of a slice of an Arrow string array that are ISO dates or timestamps Arrow surely casts."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "shape_kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit_shape_kernel(void) { return PyModule_Create(&module); }
