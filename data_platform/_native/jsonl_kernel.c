/* A fast path for JSON Lines blocks whose columns are all strings, 64-bit integers,
 * doubles, booleans or timestamps (data_platform/readers.py): one pass over the block
 * straight into Arrow buffers, ~4x faster than Arrow's JSON reader, which parses every
 * value into an intermediate form and converts it in a second pass. Timestamps are left
 * to Arrow's ISO 8601 parser: their raw string tokens go into a side JSON Lines buffer
 * (a line per row) that the caller has Arrow's reader parse.
 *
 * It accepts only a strict subset of what Arrow accepts and returns None for anything
 * else, and the caller then parses the block with Arrow as before: so every table it
 * returns is the one Arrow would have built (the tests compare the two on generated,
 * edge-case and randomly damaged blocks). The subset: each line one JSON object (JSON
 * whitespace around tokens) whose keys are column names, each at most once, without
 * escapes; a string column takes a JSON string or null, an integer column a JSON
 * integer within int64 or null, a double column any JSON number that is a finite
 * double without underflow or null, a boolean column true, false or null, a timestamp
 * column a JSON string or null (whatever Arrow then makes of it); a missing key is
 * null. Strings must be valid UTF-8; escapes are decoded (\u0000 and lone surrogates
 * are not taken). Blank lines, other keys, other value types, nested values, NaN or
 * Infinity: None.
 *
 * Buffers come from the caller's allocator (pyarrow.allocate_buffer: Arrow's memory
 * pool), are filled with the GIL released, and string data buffers are grown by the
 * allocator's resize (the GIL taken back for it, a few times per block).
 */
#define PY_SSIZE_T_CLEAN

#include <Python.h>
#include <errno.h>
#include <locale.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* KIND_ARROW: a column whose JSON strings only Arrow may convert (timestamps: its ISO
 * 8601 parser decides what is a timestamp): each row's raw tokens of such columns go to
 * a side JSON Lines buffer that the caller has Arrow's reader parse. */
enum { KIND_STRING = 's', KIND_INT = 'i', KIND_DOUBLE = 'd', KIND_BOOL = 'b', KIND_ARROW = 't' };

typedef struct {
    char kind;
    const char *name;
    Py_ssize_t name_len;
    int plain_name; /* no '"', '\\' or control byte: a key's raw bytes equal to it are it */
    PyObject *validity, *values, *data; /* pyarrow buffers (data: strings only) */
    uint8_t *valid;
    uint8_t *out;    /* int64 / double values, bool bitmap, or string offsets (int32) */
    uint8_t *chars;  /* string data */
    int64_t cap;     /* of chars */
    int64_t used;    /* bytes of chars written */
    int64_t nulls;
    int64_t seen_row;
} Column;

typedef struct {
    Column *cols;
    int ncols;
    Column *side;    /* the side JSON Lines of KIND_ARROW columns (its data), or NULL */
    int side_values; /* written into the current row's side line */
    uint32_t *slots; /* hash table of the names: column index + 1, 0 for none */
    uint32_t mask;
    PyThreadState *released; /* while the GIL is released */
    int failed_alloc;        /* a Python error is set */
} Parser;

static inline uint64_t name_hash(const uint8_t *p, Py_ssize_t n) { /* FNV-1a */
    uint64_t h = 0xcbf29ce484222325ULL;
    for (Py_ssize_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

/* The column named key[0..len), or NULL. Keys usually come in the schema's order, so
 * the column after the last one found is tried first; then the names' hash table (a
 * linear search made rows with hundreds of keys in another order 4x slower than Arrow). */
static inline Column *find_column(const Parser *ps, const uint8_t *key, Py_ssize_t len, int guess) {
    if (guess < ps->ncols) {
        Column *c = &ps->cols[guess];
        if (c->name_len == len && memcmp(c->name, key, (size_t)len) == 0)
            return c;
    }
    for (uint32_t h = (uint32_t)name_hash(key, len) & ps->mask; ps->slots[h]; h = (h + 1) & ps->mask) {
        Column *c = &ps->cols[ps->slots[h] - 1];
        if (c->name_len == len && memcmp(c->name, key, (size_t)len) == 0)
            return c;
    }
    return NULL;
}

static locale_t c_locale;

static PyObject *allocate(PyObject *allocator, int64_t size) {
    return PyObject_CallFunction(allocator, "L", (long long)(size > 0 ? size : 1));
}

static uint8_t *address(PyObject *buffer) {
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE) < 0)
        return NULL;
    uint8_t *p = view.buf;
    PyBuffer_Release(&view); /* the caller holds the buffer object; it moves only on resize */
    return p;
}

/* Room for `more` bytes of string data (+ 8 of slack for word-wide copies). */
static int reserve(Parser *ps, Column *c, int64_t more) {
    int64_t need = c->used + more + 8;
    if (need <= c->cap)
        return 1;
    int64_t cap = c->cap * 2 > need ? c->cap * 2 : need;
    PyEval_RestoreThread(ps->released);
    PyObject *r = PyObject_CallMethod(c->data, "resize", "L", (long long)cap);
    int ok = r != NULL;
    Py_XDECREF(r);
    uint8_t *p = ok ? address(c->data) : NULL;
    ps->released = PyEval_SaveThread();
    if (!p) {
        ps->failed_alloc = 1;
        return 0;
    }
    c->chars = p;
    c->cap = cap;
    return 1;
}

static inline const uint8_t *skip_ws(const uint8_t *p, const uint8_t *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r'))
        p++;
    return p;
}

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* High bit set in each byte of w that a string scan must stop at ('"', '\\', a control
 * character or a non-ASCII byte); the lowest flagged byte is always a true one. */
static inline uint64_t special(uint64_t w) {
    uint64_t q = w ^ (ONES * '"'), b = w ^ (ONES * '\\');
    return (((q - ONES) & ~q) | ((b - ONES) & ~b) | ((w - ONES * 0x20) & ~w) | w) & HIGHS;
}

static inline int hex_value(uint8_t c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static inline int read_hex4(const uint8_t *p, const uint8_t *end, uint32_t *out) {
    if (end - p < 4)
        return 0;
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hex_value(p[i]);
        if (h < 0)
            return 0;
        v = v << 4 | (uint32_t)h;
    }
    *out = v;
    return 1;
}

/* Length of the valid UTF-8 sequence starting at p (lead byte >= 0x80), else 0. */
static inline int utf8_sequence(const uint8_t *p, const uint8_t *end) {
    uint8_t a = p[0];
    int n;
    uint8_t lo = 0x80, hi = 0xBF; /* range of the second byte */
    if (a >= 0xC2 && a <= 0xDF)
        n = 2;
    else if (a >= 0xE0 && a <= 0xEF) {
        n = 3;
        if (a == 0xE0)
            lo = 0xA0;
        else if (a == 0xED)
            hi = 0x9F; /* no surrogates */
    } else if (a >= 0xF0 && a <= 0xF4) {
        n = 4;
        if (a == 0xF0)
            lo = 0x90;
        else if (a == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (end - p < n || p[1] < lo || p[1] > hi)
        return 0;
    for (int i = 2; i < n; i++)
        if ((p[i] & 0xC0) != 0x80)
            return 0;
    return n;
}

/* A JSON string (p after its opening quote) decoded into c's data; returns the byte
 * after the closing quote, or NULL. */
static const uint8_t *parse_string(Parser *ps, Column *c, const uint8_t *p, const uint8_t *end) {
    /* decoding never lengthens a string: reserving the rest of the line is enough */
    if (!reserve(ps, c, end - p))
        return NULL;
    uint8_t *o = c->chars + c->used;
    for (;;) {
        while (end - p >= 8) {
            uint64_t w, m;
            memcpy(&w, p, 8);
            memcpy(o, &w, 8);
            m = special(w);
            if (m) {
                int k = __builtin_ctzll(m) >> 3;
                p += k;
                o += k;
                goto stop;
            }
            p += 8;
            o += 8;
        }
        if (p >= end)
            return NULL;
    stop:;
        uint8_t b = *p;
        if (b == '"') {
            c->used = o - c->chars;
            return p + 1;
        }
        if (b == '\\') {
            if (end - p < 2)
                return NULL;
            uint8_t e = p[1];
            p += 2;
            switch (e) {
            case '"': *o++ = '"'; break;
            case '\\': *o++ = '\\'; break;
            case '/': *o++ = '/'; break;
            case 'b': *o++ = '\b'; break;
            case 'f': *o++ = '\f'; break;
            case 'n': *o++ = '\n'; break;
            case 'r': *o++ = '\r'; break;
            case 't': *o++ = '\t'; break;
            case 'u': {
                uint32_t cp, low;
                if (!read_hex4(p, end, &cp))
                    return NULL;
                p += 4;
                if (cp == 0 || (cp >= 0xDC00 && cp <= 0xDFFF))
                    return NULL;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || !read_hex4(p + 2, end, &low) || low < 0xDC00
                        || low > 0xDFFF)
                        return NULL;
                    p += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                }
                if (cp < 0x80)
                    *o++ = (uint8_t)cp;
                else if (cp < 0x800) {
                    *o++ = (uint8_t)(0xC0 | cp >> 6);
                    *o++ = (uint8_t)(0x80 | (cp & 0x3F));
                } else if (cp < 0x10000) {
                    *o++ = (uint8_t)(0xE0 | cp >> 12);
                    *o++ = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
                    *o++ = (uint8_t)(0x80 | (cp & 0x3F));
                } else {
                    *o++ = (uint8_t)(0xF0 | cp >> 18);
                    *o++ = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
                    *o++ = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
                    *o++ = (uint8_t)(0x80 | (cp & 0x3F));
                }
                break;
            }
            default:
                return NULL;
            }
            continue;
        }
        if (b < 0x20)
            return NULL;
        if (b >= 0x80) {
            int n = utf8_sequence(p, end);
            if (!n)
                return NULL;
            memcpy(o, p, (size_t)n);
            o += n;
            p += n;
            continue;
        }
        *o++ = b; /* an ordinary byte among the last 7 of the line */
        p++;
    }
}

static inline int is_digit(uint8_t c) { return c >= '0' && c <= '9'; }

/* A JSON number's start: past its sign (*neg set), at its first digit; NULL if none. */
static inline const uint8_t *number_start(const uint8_t *p, const uint8_t *end, int *neg) {
    *neg = p < end && *p == '-';
    p += *neg;
    return p < end && is_digit(*p) ? p : NULL;
}

/* A JSON integer into int64; NULL if not one, out of range, or a fraction/exponent. */
static const uint8_t *parse_int(const uint8_t *p, const uint8_t *end, int64_t *out) {
    int neg;
    if (!(p = number_start(p, end, &neg)))
        return NULL;
    uint64_t v = 0;
    if (*p == '0') {
        p++;
        if (neg) /* "-0" is left to Arrow */
            return NULL;
    } else {
        int digits = 0;
        while (p < end && is_digit(*p)) {
            if (++digits > 19)
                return NULL;
            v = v * 10 + (uint64_t)(*p - '0');
            p++;
        }
        if (v > (uint64_t)INT64_MAX + (uint64_t)neg)
            return NULL;
    }
    if (p < end && (is_digit(*p) || *p == '.' || *p == 'e' || *p == 'E'))
        return NULL;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return p;
}

static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* A JSON number into a double, correctly rounded (as Arrow's parser rounds); NULL if
 * not a JSON number, not finite, or underflowing. */
static const uint8_t *parse_double(const uint8_t *p, const uint8_t *end, double *out) {
    const uint8_t *start = p;
    int neg;
    if (!(p = number_start(p, end, &neg)))
        return NULL;
    /* significant digits (leading zeros skipped) into mantissa, up to 19 of them; with
     * more, only the slow path below can round correctly */
    uint64_t mantissa = 0;
    int digits = 0, scale = 0, truncated = 0; /* value = mantissa * 10^(exponent - scale) */
    if (*p == '0') {
        p++;
        if (p < end && is_digit(*p))
            return NULL;
    } else {
        for (; p < end && is_digit(*p); p++) {
            if (digits < 19) {
                mantissa = mantissa * 10 + (uint64_t)(*p - '0');
                digits++;
            } else {
                scale--;
                truncated |= *p != '0';
            }
        }
    }
    if (p < end && *p == '.') {
        p++;
        if (p >= end || !is_digit(*p))
            return NULL;
        for (; p < end && is_digit(*p); p++) {
            if (digits < 19) {
                if (mantissa || *p != '0')
                    digits++;
                mantissa = mantissa * 10 + (uint64_t)(*p - '0');
                scale++;
            } else
                truncated |= *p != '0';
        }
    }
    int exp = 0;
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        int eneg = 0;
        if (p < end && (*p == '+' || *p == '-')) {
            eneg = *p == '-';
            p++;
        }
        if (p >= end || !is_digit(*p))
            return NULL;
        while (p < end && is_digit(*p)) {
            if (exp < 100000)
                exp = exp * 10 + (*p - '0');
            p++;
        }
        if (eneg)
            exp = -exp;
    }
    /* Clinger's fast path: an exact integer mantissa below 2^53 and an exact power of
     * ten give the correctly rounded result in one operation. */
    int e10 = exp - scale;
    if (!truncated && mantissa < (1ULL << 53) && e10 >= -22 && e10 <= 22) {
        double v = (double)mantissa;
        v = e10 < 0 ? v / POW10[-e10] : v * POW10[e10];
        *out = neg ? -v : v;
        return p;
    }
    char text[128];
    if (p - start >= (ptrdiff_t)sizeof text)
        return NULL;
    memcpy(text, start, (size_t)(p - start));
    text[p - start] = '\0';
    errno = 0;
    char *stop;
    double v = strtod_l(text, &stop, c_locale);
    if (stop != text + (p - start) || errno == ERANGE || !isfinite(v))
        return NULL;
    *out = v;
    return p;
}

static inline int literal(const uint8_t *p, const uint8_t *end, const char *word, int n) {
    return end - p >= n && memcmp(p, word, (size_t)n) == 0;
}

static inline void set_valid(Column *c, int64_t row) { c->valid[row >> 3] |= (uint8_t)(1u << (row & 7)); }

static void set_null(Column *c, int64_t row) {
    c->nulls++;
    switch (c->kind) {
    case KIND_STRING: ((int32_t *)c->out)[row + 1] = (int32_t)c->used; break;
    case KIND_INT: ((int64_t *)c->out)[row] = 0; break;
    case KIND_DOUBLE: ((double *)c->out)[row] = 0.0; break;
    default: break; /* bool bitmap: zeroed */
    }
}

/* One value for column c at row; returns the byte after it or NULL. */
static const uint8_t *parse_value(Parser *ps, Column *c, int64_t row, const uint8_t *p, const uint8_t *end) {
    if (p < end && *p == 'n') {
        if (!literal(p, end, "null", 4))
            return NULL;
        set_null(c, row);
        return p + 4;
    }
    switch (c->kind) {
    case KIND_STRING:
        if (p >= end || *p != '"')
            return NULL;
        p = parse_string(ps, c, p + 1, end);
        if (!p)
            return NULL;
        if (c->used > INT32_MAX)
            return NULL;
        ((int32_t *)c->out)[row + 1] = (int32_t)c->used;
        break;
    case KIND_INT:
        p = parse_int(p, end, &((int64_t *)c->out)[row]);
        break;
    case KIND_DOUBLE:
        p = parse_double(p, end, &((double *)c->out)[row]);
        break;
    case KIND_ARROW: { /* the string's raw token, "name":token, into this row's side line */
        if (p >= end || *p != '"')
            return NULL;
        const uint8_t *q = p + 1;
        while (q < end && *q != '"')
            q += *q == '\\' ? 2 : 1;
        if (q >= end)
            return NULL;
        q++;
        Column *side = ps->side;
        uint8_t *o = side->chars + side->used;
        if (ps->side_values++)
            *o++ = ',';
        *o++ = '"';
        memcpy(o, c->name, (size_t)c->name_len);
        o += c->name_len;
        *o++ = '"';
        *o++ = ':';
        memcpy(o, p, (size_t)(q - p));
        side->used = (o + (q - p)) - side->chars;
        return q; /* validity and values: Arrow's */
    }
    case KIND_BOOL:
        if (literal(p, end, "true", 4)) {
            c->out[row >> 3] |= (uint8_t)(1u << (row & 7));
            p += 4;
        } else if (literal(p, end, "false", 5))
            p += 5;
        else
            return NULL;
        break;
    default:
        return NULL;
    }
    if (p)
        set_valid(c, row);
    return p;
}

/* One line (without its newline) as row `row`; 0 if outside the fast path. */
static int parse_line(Parser *ps, int64_t row, const uint8_t *p, const uint8_t *end) {
    if (ps->side) {
        /* a side line is at most the line plus "{}\n": each "name":token is copied from it */
        if (!reserve(ps, ps->side, (end - p) + 3))
            return 0;
        ps->side->chars[ps->side->used++] = '{';
        ps->side_values = 0;
    }
    p = skip_ws(p, end);
    if (p >= end || *p != '{')
        return 0;
    p = skip_ws(p + 1, end);
    int seen = 0, guess = 0;
    if (p < end && *p == '}')
        p++;
    else {
        for (;;) {
            if (p >= end || *p != '"')
                return 0;
            const uint8_t *key = ++p, *q;
            Column *c = guess < ps->ncols ? &ps->cols[guess] : NULL;
            /* keys usually come in the schema's order: the expected name is compared
             * in place, without searching for the closing quote first */
            if (c && c->plain_name && end - key > c->name_len && key[c->name_len] == '"'
                && memcmp(key, c->name, (size_t)c->name_len) == 0) {
                q = key + c->name_len;
            } else {
                q = memchr(p, '"', (size_t)(end - p));
                if (!q || memchr(key, '\\', (size_t)(q - key)))
                    return 0;
                c = find_column(ps, key, q - key, guess);
            }
            if (!c || c->seen_row == row)
                return 0;
            guess = (int)(c - ps->cols) + 1;
            c->seen_row = row;
            seen++;
            p = skip_ws(q + 1, end);
            if (p >= end || *p != ':')
                return 0;
            p = parse_value(ps, c, row, skip_ws(p + 1, end), end);
            if (!p)
                return 0;
            p = skip_ws(p, end);
            if (p < end && *p == ',') {
                p = skip_ws(p + 1, end);
                continue;
            }
            if (p < end && *p == '}') {
                p++;
                break;
            }
            return 0;
        }
    }
    if (skip_ws(p, end) != end)
        return 0;
    if (ps->side) {
        ps->side->chars[ps->side->used++] = '}';
        ps->side->chars[ps->side->used++] = '\n';
    }
    if (seen < ps->ncols)
        for (int k = 0; k < ps->ncols; k++)
            if (ps->cols[k].seen_row != row)
                set_null(&ps->cols[k], row);
    return 1;
}

static void release_columns(Column *cols, int n) {
    for (int k = 0; k < n; k++) {
        Py_XDECREF(cols[k].validity);
        Py_XDECREF(cols[k].values);
        Py_XDECREF(cols[k].data);
    }
    PyMem_Free(cols);
}

/* Newlines are found 64 bytes at a time (a bit per byte) rather than by a memchr per
 * line: at ~500-byte lines the calls' set-up cost as much as the whole parse. */
static inline uint64_t newline_bits(const uint8_t *p, const uint8_t *end) {
    uint8_t tail[64];
    if (end - p < 64) { /* never read past the block */
        memset(tail, 0, sizeof tail);
        memcpy(tail, p, (size_t)(end - p));
        p = tail;
    }
#ifdef __SSE2__
    const __m128i nl = _mm_set1_epi8('\n');
    uint64_t bits = 0;
    for (int i = 0; i < 4; i++)
        bits |= (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * i)), nl))
                << (16 * i);
    return bits;
#else
    uint64_t bits = 0;
    for (int i = 0; i < 64; i++)
        bits |= (uint64_t)(p[i] == '\n') << i;
    return bits;
#endif
}

/* The newlines of [p, end) in order: a 64-byte window and its newline bits not yet taken. */
typedef struct {
    const uint8_t *at, *end;
    uint64_t bits;
} Newlines;

static inline Newlines newlines_of(const uint8_t *p, const uint8_t *end) {
    return (Newlines){p, end, p < end ? newline_bits(p, end) : 0};
}

/* The next newline, or NULL when there is none. */
static inline const uint8_t *next_newline(Newlines *n) {
    while (!n->bits) {
        if (n->end - n->at <= 64)
            return NULL;
        n->at += 64;
        n->bits = newline_bits(n->at, n->end);
    }
    const uint8_t *q = n->at + __builtin_ctzll(n->bits);
    n->bits &= n->bits - 1;
    return q;
}

static int64_t newlines_in(const uint8_t *p, const uint8_t *end) {
    int64_t n = 0;
#ifdef __SSE2__
    const __m128i nl = _mm_set1_epi8('\n'), zero = _mm_setzero_si128();
    while (end - p >= 16) {
        __m128i counts = zero; /* per byte lane: at most 255 before they are summed */
        for (int i = 0; i < 255 && end - p >= 16; i++, p += 16)
            counts = _mm_sub_epi8(counts, _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)p), nl));
        __m128i sums = _mm_sad_epu8(counts, zero);
        n += _mm_cvtsi128_si64(sums) + _mm_cvtsi128_si64(_mm_unpackhi_epi64(sums, sums));
    }
#endif
    for (; p < end; p++)
        n += *p == '\n';
    return n;
}

/* count_lines(buffer) -> the number of newline bytes in it (the GIL released). */
static PyObject *count_lines(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int64_t n;
    Py_BEGIN_ALLOW_THREADS
    n = newlines_in(view.buf, (const uint8_t *)view.buf + view.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyLong_FromLongLong(n);
}

/* parse(block, kinds: bytes, names: tuple[bytes], sizes: tuple[int], allocate, newlines=-1)
 *     -> None | (rows, columns, side, side_bytes)
 * sizes: the bytes of string data to reserve per column at first (grown as needed: the
 * caller passes what the previous block used). newlines: the block's newline count if
 * the caller has it (else counted here; a wrong count gives None, never a bad table).
 * columns[i]: (validity, null_count, offsets, data, data_bytes) for a string column,
 * None for a KIND_ARROW one, (validity, null_count, values) otherwise; buffers from
 * allocate(size) (resizable). side: the KIND_ARROW columns' JSON Lines, a line per row
 * (side_bytes of it written), or None without such columns. */
static PyObject *parse(PyObject *self, PyObject *args) {
    Py_buffer block, kinds;
    PyObject *names, *sizes, *allocator;
    long long newlines = -1;
    if (!PyArg_ParseTuple(args, "y*y*O!O!O|L", &block, &kinds, &PyTuple_Type, &names, &PyTuple_Type, &sizes,
                          &allocator, &newlines))
        return NULL;
    PyObject *result = NULL;
    Column *cols = NULL, side = {0};
    uint32_t *slots = NULL;
    int ncols = (int)kinds.len;
    const uint8_t *data = block.buf, *end = data + block.len;
    if (PyTuple_GET_SIZE(names) != ncols || PyTuple_GET_SIZE(sizes) != ncols || ncols == 0) {
        PyErr_SetString(PyExc_ValueError, "one name and size per kind, at least one");
        goto done;
    }
    /* rows: lines, the last one possibly without its newline */
    if (newlines < 0)
        newlines = newlines_in(data, end);
    int64_t rows = newlines + (block.len > 0 && end[-1] != '\n');
    if (rows == 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    cols = PyMem_Calloc((size_t)ncols, sizeof(Column));
    if (!cols) {
        PyErr_NoMemory();
        goto done;
    }
    int64_t bitmap = (rows + 7) / 8;
    for (int k = 0; k < ncols; k++) {
        Column *c = &cols[k];
        PyObject *name = PyTuple_GET_ITEM(names, k);
        if (!PyBytes_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "names must be bytes");
            goto done;
        }
        c->kind = ((const char *)kinds.buf)[k];
        c->name = PyBytes_AS_STRING(name);
        c->name_len = PyBytes_GET_SIZE(name);
        c->plain_name = 1;
        for (Py_ssize_t i = 0; i < c->name_len; i++)
            if (c->name[i] == '"' || c->name[i] == '\\' || (uint8_t)c->name[i] < 0x20)
                c->plain_name = 0;
        c->seen_row = -1;
        int64_t values;
        switch (c->kind) {
        case KIND_STRING: values = 4 * (rows + 1); break;
        case KIND_INT: case KIND_DOUBLE: values = 8 * rows; break;
        case KIND_BOOL: values = bitmap; break;
        case KIND_ARROW:
            if (!side.data) {
                side.cap = block.len / 4 + 64; /* grown by the rows as they come */
                if (!(side.data = allocate(allocator, side.cap)) || !(side.chars = address(side.data)))
                    goto done;
            }
            continue;
        default:
            PyErr_Format(PyExc_ValueError, "unknown kind %c", c->kind);
            goto done;
        }
        if (!(c->validity = allocate(allocator, bitmap)) || !(c->valid = address(c->validity))
            || !(c->values = allocate(allocator, values)) || !(c->out = address(c->values)))
            goto done;
        memset(c->valid, 0, (size_t)bitmap);
        if (c->kind == KIND_BOOL)
            memset(c->out, 0, (size_t)bitmap);
        if (c->kind == KIND_STRING) {
            c->cap = PyLong_AsLongLong(PyTuple_GET_ITEM(sizes, k));
            if (c->cap == -1 && PyErr_Occurred())
                goto done;
            if (c->cap < 64)
                c->cap = 64;
            if (!(c->data = allocate(allocator, c->cap)) || !(c->chars = address(c->data)))
                goto done;
            ((int32_t *)c->out)[0] = 0;
        }
    }
    uint32_t nslots = 16;
    while (nslots < 2 * (uint32_t)ncols)
        nslots <<= 1;
    slots = PyMem_Calloc(nslots, sizeof(uint32_t));
    if (!slots) {
        PyErr_NoMemory();
        goto done;
    }
    for (int k = 0; k < ncols; k++) {
        uint32_t h = (uint32_t)name_hash((const uint8_t *)cols[k].name, cols[k].name_len) & (nslots - 1);
        while (slots[h])
            h = (h + 1) & (nslots - 1);
        slots[h] = (uint32_t)k + 1;
    }
    Parser ps = {cols, ncols, side.data ? &side : NULL, 0, slots, nslots - 1, NULL, 0};
    int ok = 1;
    ps.released = PyEval_SaveThread();
    int64_t row = 0;
    Newlines lines = newlines_of(data, end);
    for (const uint8_t *p = data; p < end && ok; row++) {
        if (row >= rows) { /* more lines than the caller counted */
            ok = 0;
            break;
        }
        const uint8_t *nl = next_newline(&lines);
        const uint8_t *line_end = nl ? nl : end;
        ok = parse_line(&ps, row, p, line_end);
        p = nl ? nl + 1 : end;
    }
    ok = ok && row == rows;
    PyEval_RestoreThread(ps.released);
    if (ps.failed_alloc)
        goto done;
    if (!ok) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *columns = PyList_New(ncols);
    if (!columns)
        goto done;
    for (int k = 0; k < ncols; k++) {
        Column *c = &cols[k];
        if (c->kind == KIND_ARROW) {
            PyList_SET_ITEM(columns, k, Py_NewRef(Py_None));
            continue;
        }
        PyObject *validity = c->nulls ? c->validity : Py_None;
        PyObject *item = c->kind == KIND_STRING
                             ? Py_BuildValue("(OLOOL)", validity, (long long)c->nulls, c->values, c->data,
                                             (long long)c->used)
                             : Py_BuildValue("(OLO)", validity, (long long)c->nulls, c->values);
        if (!item) {
            Py_DECREF(columns);
            goto done;
        }
        PyList_SET_ITEM(columns, k, item);
    }
    result = side.data ? Py_BuildValue("(LNOL)", (long long)rows, columns, side.data, (long long)side.used)
                       : Py_BuildValue("(LNOL)", (long long)rows, columns, Py_None, 0LL);
done:
    Py_XDECREF(side.data);
    PyMem_Free(slots);
    if (cols)
        release_columns(cols, ncols);
    PyBuffer_Release(&block);
    PyBuffer_Release(&kinds);
    return result;
}

static PyMethodDef methods[] = {
    {"parse", parse, METH_VARARGS, "Parse a JSON Lines block of flat rows into Arrow buffers, or None."},
    {"count_lines", count_lines, METH_O, "The number of newline bytes in a buffer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "jsonl_kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit_jsonl_kernel(void) {
    c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    if (!c_locale)
        return PyErr_NoMemory();
    return PyModule_Create(&module);
}
