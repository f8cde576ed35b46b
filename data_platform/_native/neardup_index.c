/* The lookup structures of a near-duplicate index (data_platform/neardup.py holds the
 * design): a ring of the `cap` most recently indexed rows (sketch, token count, upload,
 * row) and, per LSH band, a hash table of buckets of 16 uint32 entries (one cache line)
 * keyed by the band key.
 *
 * An entry is fp << b | (gid mod 2^b): gid numbers the indexed rows in order (never
 * reused); 2^b >= 2 * cap, and entries older than `cap` rows are stale (treated as
 * empty, and cleared by a sweep every cap / 2 rows, before their gid bits could alias).
 * fp (32 - b bits, never 0) is a second hash of the key: a band key is recognised by
 * its bucket and fp, without storing it. A bucket keeps at most `probe` entries of one
 * fingerprint (the newest replace the oldest); a full bucket drops its oldest entry.
 *
 * Until the tables reach the size for `cap` rows they grow with the ring (a rebuild
 * from the band keys the ring keeps of each row), so a small index costs memory in
 * proportion to its rows. The ring's rows of an upload can be copied out (`export`):
 * they are its run, when the upload's rows were the last indexed.
 *
 * `detect` decides the rows of a table in order, against everything indexed before
 * them (earlier uploads, tables, rows of this table): candidates are the entries of
 * the row's band keys, verified by token counts and the sketch's estimated Jaccard; a
 * row without a verified match is indexed at once. The GIL is released meanwhile.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define SLOTS 16
#define HUGE (2u << 20)
#define PREFETCH 8

typedef struct {
    uint32_t row;
    uint32_t upload;
    uint16_t tokens;
    uint16_t pad;
} Meta;

typedef struct {
    void *map;
    size_t len;
} Region;

typedef struct {
    PyObject_HEAD
    int bands, sk, probe, mtd;
    float threshold;
    double ratio, load;
    int64_t cap;    /* rows held at most */
    int64_t head;   /* next gid */
    int64_t hpos;   /* its ring position: head % cap */
    uint8_t *sketch; /* rc * sk */
    Meta *meta;      /* rc */
    uint32_t *keys;  /* rc * bands: each row's band keys (resizes, exports) */
    uint32_t *tab;   /* bands * nb * SLOTS */
    Region tab_r, sketch_r, meta_r, keys_r;
    int64_t nb, nb_max;
    int b;
    uint32_t gmask;
    int64_t last_sweep;
    int64_t nup;     /* uploads known */
    int64_t *ucount; /* rows held per upload */
    uint8_t *udead;
    int64_t live;    /* rows held of uploads not forgotten */

    int64_t *cgid;
} Index;

/* Zeroed memory in its own mapping, on transparent huge pages where large: lookups
 * touch random buckets and rows, and with 4 KiB pages each would be a TLB miss too.
 * Reserved for the most it may hold; pages are only backed as they are written. */
static void *reserve(size_t bytes, Region *r) {
    size_t len = bytes + HUGE;
    void *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED)
        return NULL;
    uintptr_t at = ((uintptr_t)map + HUGE - 1) & ~(uintptr_t)(HUGE - 1);
#ifdef MADV_HUGEPAGE
    if (bytes >= HUGE)
        madvise((void *)at, bytes & ~(size_t)(HUGE - 1), MADV_HUGEPAGE);
#endif
    r->map = map, r->len = len;
    return (void *)at;
}

static void release(Region *r) {
    if (r->map)
        munmap(r->map, r->len);
    r->map = NULL, r->len = 0;
}

static int alloc_table(Index *x, int64_t nb) {
    Region r;
    uint32_t *tab = (uint32_t *)reserve((size_t)x->bands * (size_t)nb * SLOTS * 4, &r);
    if (!tab)
        return -1;
    release(&x->tab_r);
    x->tab_r = r;
    x->tab = tab;
    x->nb = nb;
    return 0;
}

static inline uint32_t fmix32(uint32_t h) {
    h ^= h >> 16;
    h *= 0x85EBCA6BU;
    h ^= h >> 13;
    h *= 0xC2B2AE35U;
    h ^= h >> 16;
    return h;
}

static inline uint32_t *bucket_of(const Index *x, int j, uint32_t key) {
    uint64_t bk = ((uint64_t)key * (uint64_t)x->nb) >> 32;
    return x->tab + ((size_t)j * (size_t)x->nb + (size_t)bk) * SLOTS;
}

static inline uint32_t fp_of(const Index *x, uint32_t key) {
    uint32_t fp = fmix32(key ^ 0x5BD1E995U) >> x->b;
    return fp ? fp : 1;
}

/* age of an entry relative to the newest gid (head - 1) */
static inline uint32_t age_of(const Index *x, uint32_t v) { return (uint32_t)(((uint64_t)(x->head - 1) - (v & x->gmask)) & x->gmask); }

/* Bit s of *live: slot s holds an entry of the last `cap` rows; of *match: also of
 * fingerprint fp. */
static inline void scan(const Index *x, const uint32_t *B, uint32_t fp, unsigned *live, unsigned *match) {
#ifdef __SSE2__
    const __m128i zero = _mm_setzero_si128(), gm = _mm_set1_epi32((int)x->gmask);
    const __m128i newest = _mm_set1_epi32((int)(uint32_t)(x->head - 1)), cap = _mm_set1_epi32((int)x->cap);
    const __m128i fpv = _mm_set1_epi32((int)fp), shift = _mm_cvtsi32_si128(x->b);
    unsigned l = 0, m = 0;
    for (int q = 0; q < SLOTS / 4; q++) {
        __m128i v = _mm_loadu_si128((const __m128i *)(B + 4 * q));
        __m128i age = _mm_and_si128(_mm_sub_epi32(newest, _mm_and_si128(v, gm)), gm);
        __m128i ok = _mm_andnot_si128(_mm_cmpeq_epi32(v, zero), _mm_cmplt_epi32(age, cap));
        __m128i same = _mm_and_si128(ok, _mm_cmpeq_epi32(_mm_srl_epi32(v, shift), fpv));
        l |= (unsigned)_mm_movemask_ps(_mm_castsi128_ps(ok)) << (4 * q);
        m |= (unsigned)_mm_movemask_ps(_mm_castsi128_ps(same)) << (4 * q);
    }
    *live = l, *match = m;
#else
    unsigned l = 0, m = 0;
    for (int s = 0; s < SLOTS; s++) {
        uint32_t v = B[s];
        if (v && (int64_t)age_of(x, v) < x->cap) {
            l |= 1u << s;
            if ((v >> x->b) == fp)
                m |= 1u << s;
        }
    }
    *live = l, *match = m;
#endif
}

static inline int oldest_of(const Index *x, const uint32_t *B, unsigned mask) {
    int best = -1;
    uint32_t best_age = 0;
    for (; mask; mask &= mask - 1) {
        int s = __builtin_ctz(mask);
        uint32_t age = age_of(x, B[s]);
        if (best < 0 || age > best_age)
            best = s, best_age = age;
    }
    return best;
}

/* bits set in a bucket's slot mask; inline (a portable build turns __builtin_popcount
 * into a call to libgcc, ~5% of the index's time) */
static inline int popcount16(unsigned v) {
    v = v - ((v >> 1) & 0x5555u);
    v = (v & 0x3333u) + ((v >> 2) & 0x3333u);
    v = (v + (v >> 4)) & 0x0F0Fu;
    return (int)((v + (v >> 8)) & 0x1Fu);
}

static void insert_entry(Index *x, int j, uint32_t key, int64_t gid) {
    uint32_t *B = bucket_of(x, j, key);
    uint32_t fp = fp_of(x, key);
    unsigned live, match;
    scan(x, B, fp, &live, &match);
    int slot;
    if (popcount16(match) >= x->probe)
        slot = oldest_of(x, B, match); /* a key keeps its `probe` newest rows */
    else if (live != (1u << SLOTS) - 1)
        slot = __builtin_ctz(~live); /* empty or stale */
    else
        slot = oldest_of(x, B, live); /* a full bucket drops its oldest entry */
    B[slot] = (fp << x->b) | ((uint32_t)gid & x->gmask);
}

static inline void prefetch_row(Index *x, const uint32_t *keys) {
    for (int j = 0; j < x->bands; j++)
        __builtin_prefetch(bucket_of(x, j, keys[j]));
}

static void sweep(Index *x) {
    size_t n = (size_t)x->bands * (size_t)x->nb * SLOTS;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = x->tab[i];
        if (v && (int64_t)age_of(x, v) >= x->cap)
            x->tab[i] = 0;
    }
    x->last_sweep = x->head;
}

static int64_t buckets_for(Index *x, int64_t rows) {
    int64_t nb = (int64_t)ceil((double)rows / (SLOTS * x->load));
    if (nb < 1)
        nb = 1;
    return nb > x->nb_max ? x->nb_max : nb;
}

/* tables sized for `nb` buckets, rebuilt from the kept band keys (no ring wrap yet:
 * gids 0 .. head-1 sit at ring positions 0 .. head-1) */
static int resize(Index *x, int64_t nb) {
    if (alloc_table(x, nb) < 0)
        return -1;
    int64_t head = x->head;
    for (int64_t g = 0; g < head; g++) {
        x->head = g + 1; /* ages as when the row was indexed */
        if (g + PREFETCH < head)
            prefetch_row(x, x->keys + (size_t)(g + PREFETCH) * x->bands);
        for (int j = 0; j < x->bands; j++)
            insert_entry(x, j, x->keys[(size_t)g * x->bands + j], g);
    }
    x->head = head;
    return 0;
}

/* index one row; -1 on out of memory */
static int add_row(Index *x, const uint32_t *keys, const uint8_t *sketch, uint16_t tokens, uint32_t row,
                   uint32_t upload) {
    int64_t gid = x->head;
    int64_t pos = x->hpos;
    x->hpos = pos + 1 == x->cap ? 0 : pos + 1;
    if (gid >= x->cap) {
        uint32_t u = x->meta[pos].upload;
        x->ucount[u]--;
        if (!x->udead[u])
            x->live--;
    }
    memcpy(x->sketch + (size_t)pos * x->sk, sketch, (size_t)x->sk);
    Meta m = {row, upload, tokens, 0};
    x->meta[pos] = m;
    x->ucount[upload]++;
    x->live++;
    x->head = gid + 1;
    memcpy(x->keys + (size_t)pos * x->bands, keys, (size_t)x->bands * 4);
    if (x->nb < x->nb_max) {
        int64_t held = x->head < x->cap ? x->head : x->cap;
        if (held > x->nb * SLOTS * x->load)
            return resize(x, buckets_for(x, 4 * held));
    }
    for (int j = 0; j < x->bands; j++)
        insert_entry(x, j, keys[j], gid);
    if (x->head > x->cap && x->head - x->last_sweep >= (x->cap + 1) / 2)
        sweep(x);
    return 0;
}

static inline float similarity(const uint8_t *a, const uint8_t *b, int sk) {
    int diff = 0;
    int i = 0;
    for (; i + 8 <= sk; i += 8) {
        uint64_t p, q;
        memcpy(&p, a + i, 8);
        memcpy(&q, b + i, 8);
        uint64_t v = p ^ q;
        v |= v >> 1;
        v |= v >> 2;
        v &= 0x1111111111111111ULL; /* one bit per differing nibble: add them up bytewise */
        v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
        diff += (int)((v * 0x0101010101010101ULL) >> 56);
    }
    for (; i < sk; i++) {
        uint8_t v = a[i] ^ b[i];
        diff += ((v & 0x0F) != 0) + ((v & 0xF0) != 0);
    }
    int K = 2 * sk;
    double e = (double)(K - diff) / K;
    return (float)((e - 1.0 / 16) / (15.0 / 16));
}

/* ring position of the row `age` rows older than the newest */
static inline int64_t pos_of(const Index *x, uint32_t age) {
    int64_t p = x->hpos - 1 - (int64_t)age;
    return p < 0 ? p + x->cap : p;
}

/* a few rows ahead: the rows the candidates of a row sit in */
static inline void prefetch_candidates(const Index *x, const uint32_t *keys) {
    for (int j = 0; j < x->bands; j++) {
        const uint32_t *B = bucket_of(x, j, keys[j]);
        unsigned live, match;
        scan(x, B, fp_of(x, keys[j]), &live, &match);
        for (; match; match &= match - 1) {
            int64_t pos = pos_of(x, age_of(x, B[__builtin_ctz(match)]));
            __builtin_prefetch(x->meta + pos);
            __builtin_prefetch(x->sketch + (size_t)pos * x->sk);
        }
    }
}

/* best verified match of a row among the indexed rows: its ring position, or -1 */
static int64_t best_match(Index *x, const uint32_t *keys, const uint8_t *sketch, uint16_t tokens, float *sim_out) {
    int nc = 0;
    int64_t *ca = x->cgid; /* candidates' ages */
    for (int j = 0; j < x->bands; j++) {
        const uint32_t *B = bucket_of(x, j, keys[j]);
        unsigned live, match;
        scan(x, B, fp_of(x, keys[j]), &live, &match);
        for (; match; match &= match - 1) {
            int64_t a = age_of(x, B[__builtin_ctz(match)]);
            int dup = 0;
            for (int c = 0; c < nc; c++)
                if (ca[c] == a) {
                    dup = 1;
                    break;
                }
            if (!dup)
                ca[nc++] = a;
        }
    }
    int64_t best = -1, best_age = 0;
    float best_sim = 0;
    float thr = x->threshold;
    for (int c = 0; c < nc; c++) {
        int64_t pos = pos_of(x, (uint32_t)ca[c]);
        const Meta *m = x->meta + pos;
        if (x->udead[m->upload])
            continue;
        int ta = tokens, tb = m->tokens;
        double allowed = fmax((double)x->mtd, x->ratio * (double)(ta > tb ? ta : tb));
        if ((double)abs(ta - tb) > allowed)
            continue;
        float s = similarity(sketch, x->sketch + (size_t)pos * x->sk, x->sk);
        /* the most similar; of equally similar rows, the most recent */
        if (s >= thr && (best < 0 || s > best_sim || (s == best_sim && ca[c] < best_age)))
            best = pos, best_sim = s, best_age = ca[c];
    }
    *sim_out = best_sim;
    return best;
}

/* -- Python glue -------------------------------------------------------------------------- */

static void Index_dealloc(Index *x) {
    release(&x->sketch_r);
    release(&x->meta_r);
    release(&x->keys_r);
    release(&x->tab_r);
    free(x->ucount);
    free(x->udead);
    free(x->cgid);
    Py_TYPE(x)->tp_free((PyObject *)x);
}

static int Index_init(Index *x, PyObject *args, PyObject *kw) {
    long long cap;
    int bands, sk, probe, mtd;
    double threshold, ratio, load;
    if (!PyArg_ParseTuple(args, "Liiiiddd", &cap, &bands, &sk, &probe, &mtd, &threshold, &ratio, &load))
        return -1;
    if (cap < 1 || cap > (1LL << 26) || bands < 1 || bands > 4096 || sk < 1 || probe < 1 || probe > SLOTS ||
        load <= 0 || load > 1) {
        PyErr_SetString(PyExc_ValueError, "need 1 <= cap <= 2^26, 1 <= bands <= 4096, 1 <= probe <= 16, 0 < load <= 1");
        return -1;
    }
    x->cap = cap, x->bands = bands, x->sk = sk, x->probe = probe, x->mtd = mtd;
    x->threshold = (float)threshold, x->ratio = ratio, x->load = load;
    int b = 1;
    while ((1LL << b) < 2 * cap)
        b++;
    x->b = b;
    x->gmask = (uint32_t)((1ULL << b) - 1);
    x->nb_max = (int64_t)ceil((double)cap / (SLOTS * load));
    if (x->nb_max < 1)
        x->nb_max = 1;
    x->cgid = (int64_t *)malloc((size_t)bands * SLOTS * sizeof(int64_t));
    int64_t nb = buckets_for(x, 1024);
    if (x->tab_r.map || x->cgid == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "initialised twice, or out of memory");
        return -1;
    }
    if (alloc_table(x, nb) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    x->sketch = (uint8_t *)reserve((size_t)cap * sk, &x->sketch_r);
    x->meta = (Meta *)reserve((size_t)cap * sizeof(Meta), &x->meta_r);
    x->keys = (uint32_t *)reserve((size_t)cap * bands * 4, &x->keys_r);
    if (!x->sketch || !x->meta || !x->keys) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static PyObject *Index_new_upload(Index *x, PyObject *unused) {
    int64_t n = x->nup + 1;
    int64_t *c = (int64_t *)realloc(x->ucount, (size_t)n * sizeof(int64_t));
    if (!c)
        return PyErr_NoMemory();
    x->ucount = c;
    uint8_t *d = (uint8_t *)realloc(x->udead, (size_t)n);
    if (!d)
        return PyErr_NoMemory();
    x->udead = d;
    x->ucount[x->nup] = 0;
    x->udead[x->nup] = 0;
    x->nup = n;
    return PyLong_FromLongLong(n - 1);
}

static PyObject *Index_kill(Index *x, PyObject *arg) {
    long long u = PyLong_AsLongLong(arg);
    if (u == -1 && PyErr_Occurred())
        return NULL;
    if (u < 0 || u >= x->nup) {
        PyErr_SetString(PyExc_IndexError, "no such upload");
        return NULL;
    }
    if (!x->udead[u]) {
        x->udead[u] = 1;
        x->live -= x->ucount[u];
    }
    Py_RETURN_NONE;
}

typedef struct {
    Py_buffer keys, sketch, tokens, rows;
} Inputs;

static void release_inputs(Inputs *in) {
    PyBuffer_Release(&in->keys);
    PyBuffer_Release(&in->sketch);
    PyBuffer_Release(&in->tokens);
    PyBuffer_Release(&in->rows);
}

static int check_inputs(Index *x, Inputs *in, Py_ssize_t n, long long upload) {
    if (in->keys.len != n * x->bands * 4 || in->sketch.len != n * x->sk || in->tokens.len != n * 2 ||
        in->rows.len != n * 4) {
        PyErr_SetString(PyExc_ValueError, "buffers do not match the row count, bands and sketch size");
        return -1;
    }
    if (upload < 0 || upload >= x->nup) {
        PyErr_SetString(PyExc_IndexError, "no such upload");
        return -1;
    }
    return 0;
}

/* add(keys, sketch, tokens, rows, n, upload): index rows as they are (loaded runs) */
static PyObject *Index_add(Index *x, PyObject *args) {
    Inputs in = {0};
    Py_ssize_t n;
    long long upload;
    if (!PyArg_ParseTuple(args, "y*y*y*y*nL", &in.keys, &in.sketch, &in.tokens, &in.rows, &n, &upload))
        return NULL;
    PyObject *result = NULL;
    if (check_inputs(x, &in, n, upload) < 0)
        goto done;
    const uint32_t *keys = (const uint32_t *)in.keys.buf;
    const uint8_t *sketch = (const uint8_t *)in.sketch.buf;
    const uint16_t *tokens = (const uint16_t *)in.tokens.buf;
    const uint32_t *rows = (const uint32_t *)in.rows.buf;
    int fail = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n && !fail; i++) {
        if (i + PREFETCH < n)
            prefetch_row(x, keys + (size_t)(i + PREFETCH) * x->bands);
        fail = add_row(x, keys + (size_t)i * x->bands, sketch + (size_t)i * x->sk, tokens[i], rows[i],
                       (uint32_t)upload) < 0;
    }
    Py_END_ALLOW_THREADS
    if (fail) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    release_inputs(&in);
    return result;
}

/* detect(keys, sketch, tokens, rows, n, upload, kept, match_upload, match_row, sim) */
static PyObject *Index_detect(Index *x, PyObject *args) {
    Inputs in = {0};
    Py_buffer kept = {0}, mu = {0}, mr = {0}, ms = {0};
    Py_ssize_t n;
    long long upload;
    if (!PyArg_ParseTuple(args, "y*y*y*y*nLw*w*w*w*", &in.keys, &in.sketch, &in.tokens, &in.rows, &n, &upload,
                          &kept, &mu, &mr, &ms))
        return NULL;
    PyObject *result = NULL;
    if (check_inputs(x, &in, n, upload) < 0)
        goto done;
    if (kept.len != n || mu.len != n * 8 || mr.len != n * 8 || ms.len != n * 4) {
        PyErr_SetString(PyExc_ValueError, "output buffers do not match the row count");
        goto done;
    }
    const uint32_t *keys = (const uint32_t *)in.keys.buf;
    const uint8_t *sketch = (const uint8_t *)in.sketch.buf;
    const uint16_t *tokens = (const uint16_t *)in.tokens.buf;
    const uint32_t *rows = (const uint32_t *)in.rows.buf;
    uint8_t *okept = (uint8_t *)kept.buf;
    int64_t *omu = (int64_t *)mu.buf, *omr = (int64_t *)mr.buf;
    float *osim = (float *)ms.buf;
    int fail = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n && !fail; i++) {
        if (i + PREFETCH < n)
            prefetch_row(x, keys + (size_t)(i + PREFETCH) * x->bands);
        if (i + 2 < n)
            prefetch_candidates(x, keys + (size_t)(i + 2) * x->bands);
        const uint32_t *k = keys + (size_t)i * x->bands;
        const uint8_t *s = sketch + (size_t)i * x->sk;
        float sim;
        int64_t g = best_match(x, k, s, tokens[i], &sim);
        if (g >= 0) {
            const Meta *m = x->meta + g;
            okept[i] = 0;
            omu[i] = m->upload;
            omr[i] = m->row;
            osim[i] = sim;
        } else {
            okept[i] = 1;
            omu[i] = -1;
            omr[i] = -1;
            osim[i] = 0;
            fail = add_row(x, k, s, tokens[i], rows[i], (uint32_t)upload) < 0;
        }
    }
    Py_END_ALLOW_THREADS
    if (fail) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    release_inputs(&in);
    PyBuffer_Release(&kept);
    PyBuffer_Release(&mu);
    PyBuffer_Release(&mr);
    PyBuffer_Release(&ms);
    return result;
}

/* export(upload, start, keys, sketch, tokens, rows): copy the ring's rows of `upload`,
 * oldest first from gid `start` on (older ones than the ring holds are skipped), into
 * the buffers until they are full; returns (rows copied, the gid to go on from) */
static PyObject *Index_export(Index *x, PyObject *args) {
    Inputs out = {0};
    long long upload, start;
    if (!PyArg_ParseTuple(args, "LLw*w*w*w*", &upload, &start, &out.keys, &out.sketch, &out.tokens, &out.rows))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t room = out.rows.len / 4;
    if (check_inputs(x, &out, room, upload) < 0)
        goto done;
    uint32_t *keys = (uint32_t *)out.keys.buf;
    uint8_t *sketch = (uint8_t *)out.sketch.buf;
    uint16_t *tokens = (uint16_t *)out.tokens.buf;
    uint32_t *rows = (uint32_t *)out.rows.buf;
    int64_t g = x->head > x->cap ? x->head - x->cap : 0;
    if (start > g)
        g = start;
    Py_ssize_t n = 0;
    for (; g < x->head && n < room; g++) {
        int64_t pos = g % x->cap;
        const Meta *m = x->meta + pos;
        if (m->upload != (uint32_t)upload)
            continue;
        memcpy(keys + (size_t)n * x->bands, x->keys + (size_t)pos * x->bands, (size_t)x->bands * 4);
        memcpy(sketch + (size_t)n * x->sk, x->sketch + (size_t)pos * x->sk, (size_t)x->sk);
        tokens[n] = m->tokens;
        rows[n] = m->row;
        n++;
    }
    result = Py_BuildValue("nL", n, (long long)g);
done:
    release_inputs(&out);
    return result;
}

static PyObject *Index_get_live(Index *x, void *c) { return PyLong_FromLongLong(x->live); }

static PyObject *Index_get_nbytes(Index *x, void *c) {
    int64_t held = x->head < x->cap ? x->head : x->cap;
    int64_t n = held * (x->sk + (int64_t)sizeof(Meta) + (int64_t)x->bands * 4) + (int64_t)x->bands * x->nb * SLOTS * 4 +
                x->nup * 9;
    return PyLong_FromLongLong(n);
}

static PyMethodDef Index_methods[] = {
    {"new_upload", (PyCFunction)Index_new_upload, METH_NOARGS, "Register an upload; returns its index."},
    {"kill", (PyCFunction)Index_kill, METH_O, "Forget an upload's rows (they no longer match)."},
    {"add", (PyCFunction)Index_add, METH_VARARGS, "Index rows as they are."},
    {"detect", (PyCFunction)Index_detect, METH_VARARGS, "Decide rows in order against the index; index the kept ones."},
    {"export", (PyCFunction)Index_export, METH_VARARGS, "Copy an upload's rows out of the ring, oldest first."},
    {NULL, NULL, 0, NULL},
};

static PyObject *Index_get_head(Index *x, void *c) { return PyLong_FromLongLong(x->head); }

static PyGetSetDef Index_getset[] = {
    {"live", (getter)Index_get_live, NULL, "rows held of uploads not forgotten", NULL},
    {"head", (getter)Index_get_head, NULL, "the gid the next indexed row gets (rows indexed so far)", NULL},
    {"nbytes", (getter)Index_get_nbytes, NULL, "bytes allocated", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject IndexType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "data_platform._native.neardup_index.Index",
    .tp_basicsize = sizeof(Index),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Index_init,
    .tp_dealloc = (destructor)Index_dealloc,
    .tp_methods = Index_methods,
    .tp_getset = Index_getset,
    .tp_doc = "Ring of recent rows plus per-band bucketed hash tables (see neardup.py).",
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "neardup_index", NULL, -1, NULL};

PyMODINIT_FUNC PyInit_neardup_index(void) {
    if (PyType_Ready(&IndexType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Index", (PyObject *)&IndexType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
