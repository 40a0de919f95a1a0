/* Record statistics of a contiguous float32 array (the CPU fast path).
 *
 * Bin lookup: the top 12 bits of an IEEE float32 (sign, exponent, 3 mantissa bits) name a
 * bucket spanning at most 1/8 of an octave, so a bucket holds at most one boundary of the
 * extended symlog bins (the default's are 10**(1/4) apart; native.py checks the binning).
 * Two 4096-entry tables give the bucket's first bin and its boundary:
 * bin = first[key] + (x > bound[key]); NaN goes to its own bin. A second, vectorised pass
 * takes the moments.
 *
 * Moments are accumulated in double over the finite elements, shifted by the first finite
 * element so that the variance does not suffer from cancellation. They are reported in
 * the row convention of device_stats.StatKernel: statistics of c = x with non-finite
 * elements replaced by 0, over all n elements: {mean_c, std_c, sum |c|, min, max}.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define LANES 4
#define BLOCK 512
#define KEY_SHIFT 20 /* 4096 buckets (sign, exponent, 3 mantissa bits): tables fit in L1 */

/* Extended bin of every element of x[0..n) (n <= BLOCK): a gather-friendly loop. */
static void bins_of(const float *x, int64_t n, const float *bound, const int32_t *first, int32_t nan_bin, int32_t *out) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        uint32_t bits;
        memcpy(&bits, &v, 4);
        uint32_t key = bits >> KEY_SHIFT;
        int32_t bin = first[key] + (v > bound[key]);
        out[i] = v == v ? bin : nan_bin; /* NaN compares false everywhere */
    }
}

static void histogram(const float *x, int64_t n, const float *bound, const int32_t *first, int32_t nan_bin, int64_t hist[LANES][256]) {
    int32_t bins[BLOCK];
    for (int64_t start = 0; start < n; start += BLOCK) {
        int64_t m = n - start < BLOCK ? n - start : BLOCK;
        bins_of(x + start, m, bound, first, nan_bin, bins);
        int64_t i = 0;
        for (; i + LANES <= m; i += LANES) {
            hist[0][bins[i]]++;
            hist[1][bins[i + 1]]++;
            hist[2][bins[i + 2]]++;
            hist[3][bins[i + 3]]++;
        }
        for (; i < m; i++) hist[0][bins[i]]++;
    }
}

void tracefmt_stats_f32(const float *x, int64_t n, const float *bound, const int32_t *first, int32_t nbins, int32_t nan_bin,
                        int32_t nonfinite_bins, const int32_t *nonfinite, double *counts, double *moments) {
    static __thread int64_t hist[LANES][256];
    memset(hist, 0, sizeof(hist));
    histogram(x, n, bound, first, nan_bin, hist);
    int64_t k = 0;
    for (int b = 0; b < nbins; b++) {
        int64_t c = 0;
        for (int l = 0; l < LANES; l++) c += hist[l][b];
        counts[b] = (double)c;
    }
    for (int j = 0; j < nonfinite_bins; j++) k += (int64_t)counts[nonfinite[j]];

    double shift = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (isfinite(x[i])) { shift = (double)x[i]; break; }
    }
    double s1 = 0.0, s2 = 0.0, sa = 0.0;
    float mn = INFINITY, mx = -INFINITY;
    if (k == 0) {
        /* The common case: every element is finite; a vectorised pass. */
#pragma omp simd reduction(+ : s1, s2, sa) reduction(min : mn) reduction(max : mx)
        for (int64_t i = 0; i < n; i++) {
            float v = x[i];
            double d = (double)v - shift;
            s1 += d;
            s2 += d * d;
            sa += fabs((double)v);
            mn = v < mn ? v : mn;
            mx = v > mx ? v : mx;
        }
    } else {
        for (int64_t i = 0; i < n; i++) {
            float v = x[i];
            if (!isfinite(v)) continue;
            double d = (double)v - shift;
            s1 += d;
            s2 += d * d;
            sa += fabs((double)v);
            mn = v < mn ? v : mn;
            mx = v > mx ? v : mx;
        }
    }
    double big_n = (double)n, nf = big_n - (double)k, mean_c = 0.0, var_c = 0.0;
    if (nf > 0) {
        double m = s1 / nf;                   /* mean of (v - shift) */
        double m2 = s2 - m * s1;              /* sum of squared deviations */
        if (m2 < 0.0) m2 = 0.0;
        double mean_f = shift + m;
        mean_c = mean_f * nf / big_n;         /* c holds k zeros in place of the non-finite */
        var_c = (m2 + mean_f * mean_f * nf * (double)k / big_n) / big_n;
    }
    moments[0] = mean_c;
    moments[1] = sqrt(var_c);
    moments[2] = sa;
    moments[3] = (double)mn;
    moments[4] = (double)mx;
}
