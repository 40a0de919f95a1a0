/* The native reduction behind tracefmt's reference statistics (tracefmt/reduction.py).
 *
 * One call reduces a contiguous float32 or float64 array to the quantities the record
 * statistics are made of: counts (NaN, +-Inf, exact zeros, positives), min and max of the
 * finite elements, the histogram of a binning, and lane sums of the finite elements
 * scaled by an exact power of two (sum, sum of |g|, sum of g^2 and, when cancellation
 * calls for it, the sum of squared deviations from the mean).
 *
 * Every floating sum is taken in a fixed order that numpy can reproduce exactly: LANES
 * independent float64 accumulators, element i going to lane i % LANES in index order, the
 * lanes then added in lane order. The pure-numpy fallback in reduction.py performs the
 * same operations in the same order, so both give bit-identical results. This file must
 * be compiled without value-changing optimisations (no -ffast-math, -ffp-contract=off:
 * a fused multiply-add would round differently from numpy).
 *
 * Symlog histograms use a lookup table keyed by the top 15 bits of |x| as a float64
 * (exponent and 3 mantissa bits): a key spans 1/8 of an octave, so it holds at most one
 * bin edge (reduction.py checks this for the binning), and the bin is
 * first[key] + (|x| >= bound[key]).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 8
#define BLOCK 1024
#define HLANES 4

enum { HIST_NONE = 0, HIST_SYMLOG = 1, HIST_LINEAR = 2, HIST_ABS_LINEAR = 3 };
enum { C_NAN, C_INF, C_ZERO, C_POS, C_NEG_INF, NCOUNTS };
enum { M_EXP, M_S1, M_SA, M_S2, M_M2, M_MIN, M_MAX, M_TWO_PASS, NMOMENTS };

typedef struct {
    int mode;
    const int32_t *first; /* symlog: magnitude bin of each key's first value (0 = below lo) */
    const double *bound;  /* symlog: the edge inside each key, +inf when none */
    int64_t kmin, kmax;   /* symlog: keys are clamped into [kmin, kmax] */
    int64_t center;       /* symlog: index of the zero bin */
    double lo, hi;        /* linear: the range */
    int64_t nbins;
    int64_t *hist;        /* HLANES x (nbins + 1): the last column takes what is not counted */
    const int32_t *first32; /* symlog, float32 input: the same tables keyed by the top 12 bits of |x| as a float32 */
    const float *bound32;
} hist_t;

static inline uint64_t bits_of(double v) {
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    return u;
}

static inline int64_t symlog_bin(double v, const hist_t *h) {
    uint64_t u = bits_of(v);
    uint64_t mag = u & 0x7FFFFFFFFFFFFFFFull;
    if (mag >= 0x7FF0000000000000ull) return h->nbins; /* NaN and +-Inf are not binned */
    int64_t key = (int64_t)(mag >> 49);
    key = key < h->kmin ? h->kmin : (key > h->kmax ? h->kmax : key);
    key -= h->kmin;
    double a = fabs(v);
    int64_t j = h->first[key] + (a >= h->bound[key] ? 1 : 0);
    int64_t neg = -(int64_t)(u >> 63);
    return h->center + ((j ^ neg) - neg);
}

/* LANES float64 accumulators as LANES/2 two-element vectors: lane l is r.v[l / 2][l % 2].
 * Element-wise vector arithmetic keeps each lane's order of operations. */
typedef double v2d __attribute__((vector_size(16)));
typedef int64_t v2i __attribute__((vector_size(16)));
typedef struct {
    v2d v[LANES / 2];
} lanes_t;

static inline v2d finite_scaled(v2d d, double s1, double s2, v2i *fin) {
    const v2i absmask = {0x7FFFFFFFFFFFFFFFll, 0x7FFFFFFFFFFFFFFFll};
    const v2d big = {DBL_MAX, DBL_MAX};
    const v2d vs1 = {s1, s1}, vs2 = {s2, s2};
    v2d a = (v2d)((v2i)d & absmask);
    *fin = a <= big; /* all ones where finite; NaN compares false */
    return (d * vs1) * vs2;
}

static inline void sums1(lanes_t x, double s1, double s2, lanes_t *a1, lanes_t *aa, lanes_t *a2) {
    const v2i absmask = {0x7FFFFFFFFFFFFFFFll, 0x7FFFFFFFFFFFFFFFll};
    for (int k = 0; k < LANES / 2; k++) {
        v2i fin;
        v2d g = finite_scaled(x.v[k], s1, s2, &fin);
        g = (v2d)((v2i)g & fin); /* +0.0 where not finite */
        a1->v[k] += g;
        aa->v[k] += (v2d)((v2i)g & absmask);
        a2->v[k] += g * g;
    }
}

static inline void sums2(lanes_t x, double s1, double s2, double mg, lanes_t *a) {
    const v2d vm = {mg, mg};
    for (int k = 0; k < LANES / 2; k++) {
        v2i fin;
        v2d d = finite_scaled(x.v[k], s1, s2, &fin) - vm;
        d = (v2d)((v2i)d & fin);
        a->v[k] += d * d;
    }
}

static inline double combine(const lanes_t *a) {
    double r = a->v[0][0];
    for (int l = 1; l < LANES; l++) r += a->v[l / 2][l % 2];
    return r;
}

static inline lanes_t load_buf(const double *p) {
    lanes_t r;
    for (int k = 0; k < LANES / 2; k++) r.v[k] = (v2d){p[2 * k], p[2 * k + 1]};
    return r;
}

/* float32: the top 12 bits of x (sign, exponent, 3 mantissa bits) name a key spanning 1/8
 * of an octave; first32[key] is the bin of the key's smallest value and bound32[key] the
 * largest float32 of that bin (+inf when the key holds one bin). NaN and +-Inf keys hold
 * first32 = nbins (not counted) and bound32 = +inf. reduction.py builds and checks them. */
static inline int64_t symlog_bin32(const float *p, const hist_t *h) {
    uint32_t u;
    memcpy(&u, p, sizeof u);
    uint32_t key = u >> 20;
    return h->first32[key] + (*p > h->bound32[key] ? 1 : 0);
}

/* The generic parts, instantiated for float and double. */
#define DEFINE_REDUCE(T, SUFFIX, TMAX)                                                                                           \
    static inline int64_t linear_bin_##SUFFIX(T v, int absolute, int64_t nbins, T lo, T hi, T nb, T width) {                  \
        T a = absolute && v < 0 ? -v : v;                                                                                        \
        int in = (a >= lo) & (a <= hi); /* false for NaN, Inf and out of range: not counted */                                  \
        T t = in ? (a - lo) * nb / width : (T)0; /* >= 0, so truncation is floor */                                            \
        int64_t b = (int64_t)t;                                                                                                  \
        b = b >= nbins ? nbins - 1 : b;                                                                                          \
        return in ? b : nbins;                                                                                                   \
    }                                                                                                                            \
                                                                                                                                 \
    static void hist_block_##SUFFIX(const T *x, int64_t m, hist_t *h) {                                                          \
        int64_t idx[BLOCK];                                                                                                      \
        const int64_t w = h->nbins + 1;                                                                                          \
        if (h->mode == HIST_SYMLOG && sizeof(T) == 4 && h->first32) {                                                           \
            for (int64_t i = 0; i < m; i++) idx[i] = symlog_bin32((const float *)x + i, h);                                      \
        } else if (h->mode == HIST_SYMLOG) {                                                                                     \
            for (int64_t i = 0; i < m; i++) idx[i] = symlog_bin((double)x[i], h);                                               \
        } else {                                                                                                                 \
            T lo = (T)h->lo, hi = (T)h->hi, nb = (T)h->nbins, width = hi - lo;                                                   \
            int absolute = h->mode == HIST_ABS_LINEAR;                                                                           \
            for (int64_t i = 0; i < m; i++) idx[i] = linear_bin_##SUFFIX(x[i], absolute, h->nbins, lo, hi, nb, width);           \
        }                                                                                                                        \
        int64_t i = 0;                                                                                                           \
        for (; i + HLANES <= m; i += HLANES) {                                                                                   \
            h->hist[idx[i]]++;                                                                                                   \
            h->hist[w + idx[i + 1]]++;                                                                                           \
            h->hist[2 * w + idx[i + 2]]++;                                                                                       \
            h->hist[3 * w + idx[i + 3]]++;                                                                                       \
        }                                                                                                                        \
        for (; i < m; i++) h->hist[idx[i]]++;                                                                                    \
    }                                                                                                                            \
                                                                                                                                 \
    static inline lanes_t load_##SUFFIX(const T *p) {                                                                            \
        lanes_t r;                                                                                                               \
        for (int k = 0; k < LANES / 2; k++) r.v[k] = (v2d){(double)p[2 * k], (double)p[2 * k + 1]};                            \
        return r;                                                                                                                \
    }                                                                                                                            \
                                                                                                                                 \
    /* The array's last, partial group: the missing lanes hold NaN, which adds +0.0 to every sum. */                             \
    static inline lanes_t tail_##SUFFIX(const T *p, int64_t m) {                                                                 \
        double buf[LANES];                                                                                                       \
        for (int k = 0; k < LANES; k++) buf[k] = k < m ? (double)p[k] : NAN;                                                     \
        return load_buf(buf);                                                                                                    \
    }                                                                                                                            \
                                                                                                                                 \
    /* Pass 0: counts, min, max and the largest finite magnitude. */                                                             \
    static void pass0_##SUFFIX(const T *x, int64_t n, int64_t *counts, double *mn_out, double *mx_out, double *peak_out) {       \
        int64_t cn[LANES] = {0}, ci[LANES] = {0}, cz[LANES] = {0}, cp[LANES] = {0}, cni[LANES] = {0};                                             \
        T mn[LANES], mx[LANES], pk[LANES];                                                                                       \
        for (int l = 0; l < LANES; l++) {                                                                                        \
            mn[l] = (T)INFINITY;                                                                                                 \
            mx[l] = (T)-INFINITY;                                                                                                \
            pk[l] = 0;                                                                                                           \
        }                                                                                                                        \
        int64_t i = 0;                                                                                                           \
        for (; i + LANES <= n; i += LANES) {                                                                                     \
            for (int l = 0; l < LANES; l++) {                                                                                    \
                T v = x[i + l];                                                                                                  \
                T a = v < 0 ? -v : v;                                                                                            \
                int fin = a <= TMAX;                                                                                             \
                cn[l] += v != v;                                                                                                 \
                ci[l] += a > TMAX;                                                                                               \
                cni[l] += v < -TMAX;                                                                                             \
                cz[l] += v == 0;                                                                                                 \
                cp[l] += v > 0;                                                                                                  \
                T lo_v = fin ? v : (T)INFINITY, hi_v = fin ? v : (T)-INFINITY, pk_v = fin ? a : 0;                             \
                mn[l] = lo_v < mn[l] ? lo_v : mn[l];                                                                             \
                mx[l] = hi_v > mx[l] ? hi_v : mx[l];                                                                             \
                pk[l] = pk_v > pk[l] ? pk_v : pk[l];                                                                             \
            }                                                                                                                    \
        }                                                                                                                        \
        for (; i < n; i++) {                                                                                                     \
            T v = x[i];                                                                                                          \
            T a = v < 0 ? -v : v;                                                                                                \
            int fin = a <= TMAX;                                                                                                 \
            cn[0] += v != v;                                                                                                     \
            ci[0] += a > TMAX;                                                                                                   \
            cni[0] += v < -TMAX;                                                                                                 \
            cz[0] += v == 0;                                                                                                     \
            cp[0] += v > 0;                                                                                                      \
            if (fin) {                                                                                                           \
                mn[0] = v < mn[0] ? v : mn[0];                                                                                   \
                mx[0] = v > mx[0] ? v : mx[0];                                                                                   \
                pk[0] = a > pk[0] ? a : pk[0];                                                                                   \
            }                                                                                                                    \
        }                                                                                                                        \
        T fmn = mn[0], fmx = mx[0], fpk = pk[0];                                                                                 \
        for (int l = 0; l < LANES; l++) {                                                                                        \
            counts[C_NAN] += cn[l];                                                                                              \
            counts[C_INF] += ci[l];                                                                                              \
            counts[C_ZERO] += cz[l];                                                                                             \
            counts[C_POS] += cp[l];                                                                                              \
            counts[C_NEG_INF] += cni[l];                                                                                         \
            fmn = mn[l] < fmn ? mn[l] : fmn;                                                                                     \
            fmx = mx[l] > fmx ? mx[l] : fmx;                                                                                     \
            fpk = pk[l] > fpk ? pk[l] : fpk;                                                                                     \
        }                                                                                                                        \
        *mn_out = (double)fmn;                                                                                                   \
        *mx_out = (double)fmx;                                                                                                   \
        *peak_out = (double)fpk;                                                                                                 \
    }                                                                                                                            \
                                                                                                                                 \
    /* Pass 1: lane sums of g, |g| and g^2 (g = x * s1 * s2, +0.0 for non-finite x); histogram per block. */                  \
    static void pass1_##SUFFIX(const T *x, int64_t n, double s1, double s2, double *S1, double *SA, double *S2, hist_t *h) {    \
        lanes_t a1 = {{{0}}}, aa = {{{0}}}, a2 = {{{0}}};                                                                              \
        for (int64_t start = 0; start < n; start += BLOCK) {                                                                     \
            int64_t m = n - start < BLOCK ? n - start : BLOCK;                                                                   \
            const T *b = x + start;                                                                                              \
            int64_t full = m - m % LANES;                                                                                        \
            for (int64_t i = 0; i < full; i += LANES) sums1(load_##SUFFIX(b + i), s1, s2, &a1, &aa, &a2);                      \
            if (full < m) sums1(tail_##SUFFIX(b + full, m - full), s1, s2, &a1, &aa, &a2);                                     \
            if (h->mode != HIST_NONE) hist_block_##SUFFIX(b, m, h);                                                              \
        }                                                                                                                        \
        *S1 = combine(&a1);                                                                                                      \
        *SA = combine(&aa);                                                                                                      \
        *S2 = combine(&a2);                                                                                                      \
    }                                                                                                                            \
                                                                                                                                 \
    /* Pass 2: lane sums of (g - mean_g)^2 over the finite elements (+0.0 for the others). */                                    \
    static double pass2_##SUFFIX(const T *x, int64_t n, double s1, double s2, double mg) {                                      \
        lanes_t a = {{{0}}};                                                                                                       \
        int64_t full = n - n % LANES;                                                                                            \
        for (int64_t i = 0; i < full; i += LANES) sums2(load_##SUFFIX(x + i), s1, s2, mg, &a);                                 \
        if (full < n) sums2(tail_##SUFFIX(x + full, n - full), s1, s2, mg, &a);                                                \
        return combine(&a);                                                                                                      \
    }                                                                                                                            \
                                                                                                                                 \
    static void reduce_##SUFFIX(const T *x, int64_t n, int64_t *counts, double *mom, hist_t *h) {                               \
        double mn, mx, peak;                                                                                                     \
        pass0_##SUFFIX(x, n, counts, &mn, &mx, &peak);                                                                           \
        int e = 0;                                                                                                               \
        if (peak > 0) {                                                                                                          \
            frexp(peak, &e);                                                                                                     \
            e -= 1; /* peak / 2**e in [1, 2) */                                                                                  \
        }                                                                                                                        \
        /* g = x * 2**-e as two exact multiplications when 2**-e is not a float64 */                                           \
        double s1 = e >= -1000 ? ldexp(1.0, -e) : ldexp(1.0, 1000), s2 = e >= -1000 ? 1.0 : ldexp(1.0, -e - 1000);            \
        double S1, SA, S2, M2 = 0.0, two_pass = 0.0;                                                                             \
        pass1_##SUFFIX(x, n, s1, s2, &S1, &SA, &S2, h);                                                                          \
        int64_t fin = n - counts[C_NAN] - counts[C_INF];                                                                         \
        if (fin > 0) {                                                                                                           \
            double nf = (double)fin;                                                                                             \
            M2 = S2 - S1 * S1 / nf;                                                                                              \
            if (!(M2 >= S2 * 0x1p-10)) { /* cancellation: sum the squared deviations */                                        \
                M2 = pass2_##SUFFIX(x, n, s1, s2, S1 / nf);                                                                      \
                two_pass = 1.0;                                                                                                  \
            }                                                                                                                    \
        }                                                                                                                        \
        mom[M_EXP] = (double)e;                                                                                                  \
        mom[M_S1] = S1;                                                                                                          \
        mom[M_SA] = SA;                                                                                                          \
        mom[M_S2] = S2;                                                                                                          \
        mom[M_M2] = M2;                                                                                                          \
        mom[M_MIN] = mn;                                                                                                         \
        mom[M_MAX] = mx;                                                                                                         \
        mom[M_TWO_PASS] = two_pass;                                                                                              \
    }

DEFINE_REDUCE(float, f32, FLT_MAX)
DEFINE_REDUCE(double, f64, DBL_MAX)

static int get_buffer(PyObject *obj, Py_buffer *view, int writable, const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) != 0) return -1;
    (void)what;
    return 0;
}

static int is_int64(const Py_buffer *v) {
    const char *f = v->format ? v->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    return v->itemsize == 8 && (f[0] == 'q' || f[0] == 'l') && f[1] == '\0';
}

static char format_of(const Py_buffer *v) {
    const char *f = v->format ? v->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    return f[1] == '\0' ? f[0] : '?';
}

PyDoc_STRVAR(reduce_doc,
             "reduce(x, counts, moments, hist, mode, first, bound, first32, bound32, kmin, kmax, center, lo, hi)\n\n"
             "Reduce the contiguous float32/float64 buffer x. Writes counts (int64[5]: nan, inf,\n"
             "zero, pos, -inf), moments (float64[8]: exponent, S1, SA, S2, M2, min, max, two_pass) and,\n"
             "unless mode is 0, hist (int64[bins]). See tracefmt/reduction.py.");

static PyObject *py_reduce(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ox, *oc, *om, *oh, *of, *ob, *of32, *ob32;
    int mode;
    long long kmin, kmax, center;
    double lo, hi;
    if (!PyArg_ParseTuple(args, "OOOOiOOOOLLLdd", &ox, &oc, &om, &oh, &mode, &of, &ob, &of32, &ob32, &kmin, &kmax, &center, &lo, &hi))
        return NULL;
    Py_buffer x, c, m, hb, fb, bb, fb32, bb32;
    if (get_buffer(ox, &x, 0, "x")) return NULL;
    if (get_buffer(oc, &c, 1, "counts")) goto fail_x;
    if (get_buffer(om, &m, 1, "moments")) goto fail_c;
    if (get_buffer(oh, &hb, 1, "hist")) goto fail_m;
    if (get_buffer(of, &fb, 0, "first")) goto fail_h;
    if (get_buffer(ob, &bb, 0, "bound")) goto fail_f;
    if (get_buffer(of32, &fb32, 0, "first32")) goto fail_b0;
    if (get_buffer(ob32, &bb32, 0, "bound32")) goto fail_f32;
    char fx = format_of(&x);
    int64_t nbins = hb.len / 8;
    int64_t span = kmax - kmin + 1;
    const char *bad = NULL;
    if (fx != 'f' && fx != 'd') bad = "x must hold float32 or float64";
    else if (c.len != 8 * NCOUNTS || !is_int64(&c)) bad = "counts must be int64[5]";
    else if (m.len != 8 * NMOMENTS || format_of(&m) != 'd') bad = "moments must be float64[8]";
    else if (!is_int64(&hb)) bad = "hist must be int64";
    else if (mode < HIST_NONE || mode > HIST_ABS_LINEAR || (mode != HIST_NONE && nbins < 1)) bad = "bad histogram mode or bins";
    else if (mode == HIST_SYMLOG && (span < 1 || fb.len != 4 * span || fb.itemsize != 4 || bb.len != 8 * span || center < 0 || 2 * center + 1 != nbins))
        bad = "symlog tables do not match";
    else if (mode == HIST_SYMLOG && fb32.len && (fb32.len != 4 * 4096 || fb32.itemsize != 4 || bb32.len != 4 * 4096 || format_of(&bb32) != 'f'))
        bad = "float32 symlog tables do not match";
    if (bad) {
        PyErr_SetString(PyExc_ValueError, bad);
        goto fail_b;
    }
    int64_t *hist = NULL;
    if (mode != HIST_NONE) {
        hist = calloc((size_t)(HLANES * (nbins + 1)), sizeof(int64_t));
        if (!hist) {
            PyErr_NoMemory();
            goto fail_b;
        }
    }
    hist_t h = {mode, (const int32_t *)fb.buf, (const double *)bb.buf, kmin, kmax, center, lo, hi, nbins, hist,
                fb32.len ? (const int32_t *)fb32.buf : NULL, (const float *)bb32.buf};
    int64_t *counts = (int64_t *)c.buf;
    double *mom = (double *)m.buf;
    memset(counts, 0, sizeof(int64_t) * NCOUNTS);
    Py_BEGIN_ALLOW_THREADS;
    if (fx == 'f') reduce_f32((const float *)x.buf, x.len / 4, counts, mom, &h);
    else reduce_f64((const double *)x.buf, x.len / 8, counts, mom, &h);
    if (hist) {
        int64_t *out = (int64_t *)hb.buf;
        for (int64_t k = 0; k < nbins; k++) {
            int64_t s = 0;
            for (int l = 0; l < HLANES; l++) s += hist[l * (nbins + 1) + k];
            out[k] = s;
        }
    }
    Py_END_ALLOW_THREADS;
    free(hist);
    PyBuffer_Release(&bb32);
    PyBuffer_Release(&fb32);
    PyBuffer_Release(&bb);
    PyBuffer_Release(&fb);
    PyBuffer_Release(&hb);
    PyBuffer_Release(&m);
    PyBuffer_Release(&c);
    PyBuffer_Release(&x);
    Py_RETURN_NONE;
fail_b:
    PyBuffer_Release(&bb32);
fail_f32:
    PyBuffer_Release(&fb32);
fail_b0:
    PyBuffer_Release(&bb);
fail_f:
    PyBuffer_Release(&fb);
fail_h:
    PyBuffer_Release(&hb);
fail_m:
    PyBuffer_Release(&m);
fail_c:
    PyBuffer_Release(&c);
fail_x:
    PyBuffer_Release(&x);
    return NULL;
}

/* Per-channel sums of an array viewed as (outer, channels, inner): for each channel, the
 * elements in (outer, inner) order, element j of the channel to lane j % LANES, non-finite
 * elements adding +0.0, the lanes then added in order; counts of finite and positive
 * elements. */
#define DEFINE_CHANNELS(T, SUFFIX, TMAX)                                                                                         \
    static void channels_##SUFFIX(const T *x, int64_t outer, int64_t nch, int64_t inner, double *sum, int64_t *fin, int64_t *pos, \
                                  double *acc) {                                                                                 \
        memset(acc, 0, sizeof(double) * (size_t)(nch * LANES));                                                                  \
        memset(fin, 0, sizeof(int64_t) * (size_t)nch);                                                                           \
        memset(pos, 0, sizeof(int64_t) * (size_t)nch);                                                                           \
        for (int64_t o = 0; o < outer; o++) {                                                                                    \
            int64_t j0 = o * inner; /* position of this run within its channel */                                                \
            for (int64_t c = 0; c < nch; c++) {                                                                                  \
                const T *p = x + (o * nch + c) * inner;                                                                          \
                double *a = acc + c * LANES;                                                                                     \
                int64_t f = 0, q = 0, i = 0;                                                                                     \
                for (; i < inner && ((j0 + i) & (LANES - 1)); i++) { /* up to the next lane-0 element */                          \
                    T v = p[i];                                                                                                  \
                    a[(j0 + i) & (LANES - 1)] += (v < 0 ? -v : v) <= TMAX ? (double)v : 0.0;                                     \
                }                                                                                                                \
                if (i + LANES <= inner) {                                                                                        \
                    lanes_t s = load_buf(a);                                                                                     \
                    for (; i + LANES <= inner; i += LANES) {                                                                     \
                        lanes_t v = load_##SUFFIX(p + i);                                                                        \
                        for (int k = 0; k < LANES / 2; k++) {                                                                    \
                            v2i ok;                                                                                              \
                            v2d g = finite_scaled(v.v[k], 1.0, 1.0, &ok);                                                        \
                            s.v[k] += (v2d)((v2i)g & ok);                                                                        \
                        }                                                                                                        \
                    }                                                                                                            \
                    for (int l = 0; l < LANES; l++) a[l] = s.v[l / 2][l % 2];                                                    \
                }                                                                                                                \
                for (; i < inner; i++) {                                                                                         \
                    T v = p[i];                                                                                                  \
                    a[(j0 + i) & (LANES - 1)] += (v < 0 ? -v : v) <= TMAX ? (double)v : 0.0;                                     \
                }                                                                                                                \
                for (int64_t t = 0; t < inner; t++) {                                                                            \
                    T v = p[t];                                                                                                  \
                    f += (v < 0 ? -v : v) <= TMAX;                                                                               \
                    q += v > 0;                                                                                                  \
                }                                                                                                                \
                fin[c] += f;                                                                                                     \
                pos[c] += q;                                                                                                     \
            }                                                                                                                    \
        }                                                                                                                        \
        for (int64_t c = 0; c < nch; c++) {                                                                                      \
            double r = acc[c * LANES];                                                                                           \
            for (int l = 1; l < LANES; l++) r += acc[c * LANES + l];                                                             \
            sum[c] = r;                                                                                                          \
        }                                                                                                                        \
    }

DEFINE_CHANNELS(float, f32, FLT_MAX)
DEFINE_CHANNELS(double, f64, DBL_MAX)

PyDoc_STRVAR(channels_doc, "channels(x, outer, inner, sums, finite, positive)\n\n"
                           "Per-channel lane sums of the finite elements and counts of finite and positive\n"
                           "elements of the contiguous float32/float64 buffer x seen as (outer, C, inner).");

static PyObject *py_channels(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ox, *os, *of, *op;
    long long outer, inner;
    if (!PyArg_ParseTuple(args, "OLLOOO", &ox, &outer, &inner, &os, &of, &op)) return NULL;
    Py_buffer x, sb, fb, pb;
    if (get_buffer(ox, &x, 0, "x")) return NULL;
    if (get_buffer(os, &sb, 1, "sums")) goto fail_x;
    if (get_buffer(of, &fb, 1, "finite")) goto fail_s;
    if (get_buffer(op, &pb, 1, "positive")) goto fail_f;
    char fx = format_of(&x);
    int64_t nch = sb.len / 8;
    const char *bad = NULL;
    if (fx != 'f' && fx != 'd') bad = "x must hold float32 or float64";
    else if (format_of(&sb) != 'd' || !is_int64(&fb) || !is_int64(&pb) || fb.len != sb.len || pb.len != sb.len) bad = "bad output buffers";
    else if (outer < 0 || inner < 0 || outer * nch * inner * (fx == 'f' ? 4 : 8) != x.len) bad = "shape does not match x";
    if (bad) {
        PyErr_SetString(PyExc_ValueError, bad);
        goto fail_p;
    }
    double *acc = malloc(sizeof(double) * (size_t)(nch * LANES + 1));
    if (!acc) {
        PyErr_NoMemory();
        goto fail_p;
    }
    Py_BEGIN_ALLOW_THREADS;
    if (fx == 'f') channels_f32((const float *)x.buf, outer, nch, inner, (double *)sb.buf, (int64_t *)fb.buf, (int64_t *)pb.buf, acc);
    else channels_f64((const double *)x.buf, outer, nch, inner, (double *)sb.buf, (int64_t *)fb.buf, (int64_t *)pb.buf, acc);
    Py_END_ALLOW_THREADS;
    free(acc);
    PyBuffer_Release(&pb);
    PyBuffer_Release(&fb);
    PyBuffer_Release(&sb);
    PyBuffer_Release(&x);
    Py_RETURN_NONE;
fail_p:
    PyBuffer_Release(&pb);
fail_f:
    PyBuffer_Release(&fb);
fail_s:
    PyBuffer_Release(&sb);
fail_x:
    PyBuffer_Release(&x);
    return NULL;
}

static PyMethodDef methods[] = {
    {"reduce", py_reduce, METH_VARARGS, reduce_doc},
    {"channels", py_channels, METH_VARARGS, channels_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_stats", "Native reduction of tracefmt's reference statistics.", -1, methods};

PyMODINIT_FUNC PyInit__stats(void) { return PyModule_Create(&module); }
