/* Record statistics of a contiguous float32 array: the CPU fast path of the torch adapter.
 *
 * One pass over memory, in blocks that stay in L1: each block is binned, counted, and its
 * moments taken, by several threads (pthreads, joined) for large arrays.
 *
 * Bin lookup: the top 12 bits of an IEEE float32 (sign, exponent, 3 mantissa bits) name a
 * bucket spanning at most 1/8 of an octave, so a bucket holds at most one boundary of the
 * extended symlog bins (the default's are 10**(1/4) apart; native.py checks the binning).
 * Two 4096-entry tables give the bucket's first bin and its boundary:
 * bin = first[key] + (x > bound[key]); NaN goes to its own bin.
 *
 * Moments are accumulated in double over the finite elements, shifted by the first finite
 * element so that the variance does not suffer from cancellation. They are reported in
 * the row convention of device_stats.StatKernel: statistics of c = x with non-finite
 * elements replaced by 0, over all n elements: {mean_c, std_c, sum |c|, min, max}.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define LANES 4
#define BLOCK 1024
#define KEY_SHIFT 20 /* 4096 buckets: the tables fit in L1 */
#define MAX_BINS 256

typedef struct {
    int64_t hist[LANES][MAX_BINS];
    double s1, s2, sa;
    float mn, mx;
} partial_t;

/* Bins of one block; returns non-zero if the block holds a NaN or an Inf. */
static int bins_of(const float *restrict x, int64_t n, const float *restrict bound, const int32_t *restrict first, int32_t nan_bin,
                   int32_t *restrict out) {
    const uint32_t *restrict xb = (const uint32_t *)x; /* compiled with -fno-strict-aliasing */
    uint32_t special = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits = xb[i];
        float v = x[i];
        uint32_t key = bits >> KEY_SHIFT;
        int32_t bin = first[key] + (v > bound[key] ? 1 : 0);
        out[i] = v == v ? bin : nan_bin; /* NaN compares false everywhere */
        special |= (bits & 0x7F800000u) == 0x7F800000u ? 1u : 0u;
    }
    return special != 0;
}

static void block(const float *x, int64_t m, const float *bound, const int32_t *first, int32_t nan_bin, double shift, partial_t *p) {
    int32_t bins[BLOCK];
    int special = bins_of(x, m, bound, first, nan_bin, bins);
    int64_t i = 0;
    for (; i + LANES <= m; i += LANES) {
        p->hist[0][bins[i]]++;
        p->hist[1][bins[i + 1]]++;
        p->hist[2][bins[i + 2]]++;
        p->hist[3][bins[i + 3]]++;
    }
    for (; i < m; i++) p->hist[0][bins[i]]++;
    double s1 = 0.0, s2 = 0.0, sa = 0.0;
    float mn = p->mn, mx = p->mx;
    if (!special) {
#pragma omp simd reduction(+ : s1, s2, sa) reduction(min : mn) reduction(max : mx)
        for (int64_t j = 0; j < m; j++) {
            float v = x[j];
            double d = (double)v - shift;
            s1 += d;
            s2 += d * d;
            sa += fabs((double)v);
            mn = v < mn ? v : mn;
            mx = v > mx ? v : mx;
        }
    } else {
        for (int64_t j = 0; j < m; j++) {
            float v = x[j];
            if (!isfinite(v)) continue;
            double d = (double)v - shift;
            s1 += d;
            s2 += d * d;
            sa += fabs((double)v);
            mn = v < mn ? v : mn;
            mx = v > mx ? v : mx;
        }
    }
    p->s1 += s1;
    p->s2 += s2;
    p->sa += sa;
    p->mn = mn;
    p->mx = mx;
}

static void reset(partial_t *p) {
    memset(p->hist, 0, sizeof(p->hist));
    p->s1 = p->s2 = p->sa = 0.0;
    p->mn = INFINITY;
    p->mx = -INFINITY;
}

typedef struct {
    const float *x;
    int64_t n, first_block, last_block;
    const float *bound;
    const int32_t *first;
    int32_t nan_bin;
    double shift;
    partial_t p;
} job_t;

static void *run_job(void *arg) {
    job_t *j = (job_t *)arg;
    reset(&j->p);
    for (int64_t b = j->first_block; b < j->last_block; b++) {
        int64_t start = b * BLOCK;
        int64_t m = j->n - start < BLOCK ? j->n - start : BLOCK;
        block(j->x + start, m, j->bound, j->first, j->nan_bin, j->shift, &j->p);
    }
    return NULL;
}

#define MAX_THREADS 16

void tracefmt_stats_f32(const float *x, int64_t n, const float *bound, const int32_t *first, int32_t nbins, int32_t nan_bin,
                        int32_t nonfinite_bins, const int32_t *nonfinite, int32_t threads, double *counts, double *moments) {
    double shift = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (isfinite(x[i])) { shift = (double)x[i]; break; }
    }
    int64_t nblocks = (n + BLOCK - 1) / BLOCK;
    /* Extra threads only for large arrays (a thread start costs ~10-20 us); they are
       joined, never spinning, so a busy machine costs at most the single-thread time. */
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads < 1 || nblocks < 256) threads = 1;
    job_t jobs[MAX_THREADS];
    pthread_t tids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int t = 0; t < threads; t++) {
        jobs[t] = (job_t){x, n, nblocks * t / threads, nblocks * (t + 1) / threads, bound, first, nan_bin, shift};
    }
    for (int t = 1; t < threads; t++) started[t] = pthread_create(&tids[t], NULL, run_job, &jobs[t]) == 0;
    run_job(&jobs[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t]) pthread_join(tids[t], NULL);
        else run_job(&jobs[t]); /* could not start a thread: do its share here */
    }
    partial_t *total = &jobs[0].p;
    for (int t = 1; t < threads; t++) {
        partial_t *p = &jobs[t].p;
        for (int l = 0; l < LANES; l++)
            for (int k = 0; k < nbins; k++) total->hist[l][k] += p->hist[l][k];
        total->s1 += p->s1;
        total->s2 += p->s2;
        total->sa += p->sa;
        total->mn = p->mn < total->mn ? p->mn : total->mn;
        total->mx = p->mx > total->mx ? p->mx : total->mx;
    }
    for (int k = 0; k < nbins; k++) {
        int64_t c = 0;
        for (int l = 0; l < LANES; l++) c += total->hist[l][k];
        counts[k] = (double)c;
    }
    int64_t nonfin = 0;
    for (int j = 0; j < nonfinite_bins; j++) nonfin += (int64_t)counts[nonfinite[j]];
    double big_n = (double)n, nf = big_n - (double)nonfin, mean_c = 0.0, var_c = 0.0;
    if (nf > 0) {
        double m = total->s1 / nf;              /* mean of (v - shift) */
        double m2 = total->s2 - m * total->s1;  /* sum of squared deviations */
        if (m2 < 0.0) m2 = 0.0;
        double mean_f = shift + m;
        mean_c = mean_f * nf / big_n;           /* c holds the non-finite elements as zeros */
        var_c = (m2 + mean_f * mean_f * nf * (double)nonfin / big_n) / big_n;
    }
    moments[0] = mean_c;
    moments[1] = sqrt(var_c);
    moments[2] = total->sa;
    moments[3] = (double)total->mn;
    moments[4] = (double)total->mx;
}
