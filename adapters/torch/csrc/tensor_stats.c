/* One-pass record statistics of a contiguous float32 array (the CPU fast path).
 *
 * Bin lookup: the top 16 bits of an IEEE float32 (sign, exponent, 7 mantissa bits) name a
 * bucket spanning at most 1/128 of an octave, so a bucket holds at most one boundary of
 * the extended symlog bins (they are 10**(1/4) apart; see binning_tables.py). Two
 * 65536-entry tables give the bucket's first bin and its boundary:
 * bin = first[key] + (x > bound[key]). NaN is tested first: it has its own bin.
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

#define STEP(v, lane)                                                   \
    do {                                                                \
        uint32_t bits_;                                                 \
        memcpy(&bits_, &(v), 4);                                        \
        if ((v) != (v)) { hist[lane][nan_bin]++; break; }               \
        uint32_t key_ = bits_ >> 16;                                    \
        hist[lane][first[key_] + ((v) > bound[key_])]++;                \
        if (isinf(v)) break;                                            \
        double d_ = (double)(v) - shift;                                \
        s1 += d_; s2 += d_ * d_; sa += fabs((double)(v)); nf++;         \
        mn = (v) < mn ? (v) : mn; mx = (v) > mx ? (v) : mx;             \
    } while (0)

void tracefmt_stats_f32(const float *x, int64_t n, const uint8_t *first, const float *bound,
                        int32_t nbins, int32_t nan_bin, double *counts, double *moments) {
    static __thread int64_t hist[LANES][256];
    memset(hist, 0, sizeof(hist));
    double shift = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (isfinite(x[i])) { shift = (double)x[i]; break; }
    }
    double s1 = 0.0, s2 = 0.0, sa = 0.0;
    int64_t nf = 0;
    float mn = INFINITY, mx = -INFINITY;
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        float v0 = x[i], v1 = x[i + 1], v2 = x[i + 2], v3 = x[i + 3];
        STEP(v0, 0); STEP(v1, 1); STEP(v2, 2); STEP(v3, 3);
    }
    for (; i < n; i++) {
        float v = x[i];
        STEP(v, 0);
    }
    for (int b = 0; b < nbins; b++) {
        int64_t c = 0;
        for (int l = 0; l < LANES; l++) c += hist[l][b];
        counts[b] = (double)c;
    }
    double big_n = (double)n, mean_c = 0.0, var_c = 0.0;
    if (nf > 0) {
        double m = s1 / (double)nf;                    /* mean of (v - shift) */
        double m2 = s2 - m * s1;                       /* sum of squared deviations */
        if (m2 < 0.0) m2 = 0.0;
        double mean_f = shift + m;
        double k = big_n - (double)nf;                 /* non-finite elements, 0 in c */
        mean_c = mean_f * (double)nf / big_n;
        var_c = (m2 + mean_f * mean_f * (double)nf * k / big_n) / big_n;
    }
    moments[0] = mean_c;
    moments[1] = sqrt(var_c);
    moments[2] = sa;
    moments[3] = (double)mn;
    moments[4] = (double)mx;
}
