/* Training-mode BatchNorm (+ PReLU) over NHWC float32 activations, forward and backward.
 *
 * Why this exists: on a CPU, PyTorch's channels_last BatchNorm backward and PReLU
 * backward are far from memory speed for the few-channel activations of ExtremeC3Net
 * (a 3 MB 8-channel map: 57 ms for BN forward+backward, against 4 ms in NCHW), and each op
 * walks the tensor on its own. Here a BN+PReLU pair is one statistics pass and one
 * apply pass forward, and one reduction pass and one gradient pass backward; the PReLU
 * input is recomputed from x instead of being stored.
 *
 * Layout: x is M = N*H*W rows of C contiguous floats (a channels_last tensor). Sums are
 * taken over a few runs of rows in float, then added in double; the variance is taken about
 * the first row's values (a shift), so it does not cancel when the mean is large.
 * alpha == NULL means no PReLU (a BN alone).
 */
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_thread_num(void) { return 0; }
#endif

/* The loops below go over a run of rows, P pixels x C channels (P * C a multiple of 8 floats and
 * at least MIN_RUN_FLOATS: whole vectors for any C), with the per-channel values repeated along
 * it (`repeat_taps`), instead of over the C channels of one row, which for C = 8..27 left most
 * of each vector empty and paid the loop's overhead per pixel. Sums are taken in float over
 * RUNS_PER_FLUSH runs, then per channel in double. The last run of a tensor may be short.
 * (Summing a block of runs in registers was tried: faster in cache, slower from memory, and
 * slower over a whole training step.) */
#define MIN_RUN_FLOATS 128
#define RUNS_PER_FLUSH 16

static long min_long(long a, long b) { return a < b ? a : b; }

typedef struct {
    long width; /* floats per run */
    long total; /* floats in the tensor */
    long runs;  /* runs in the tensor, the last maybe short */
} Runs;

static Runs runs_of(long rows, int channels) {
    long pixels = 1;
    while ((pixels * channels) % 8 || pixels * channels < MIN_RUN_FLOATS) pixels++;
    Runs r = {pixels * channels, rows * channels, 0};
    r.runs = (r.total + r.width - 1) / r.width;
    return r;
}

/* rep[t * width + k] = values[t * channels + k % channels]: `count` per-channel vectors, each
 * repeated along a row of `width` floats, so that the inner loops run over a whole (pixel,
 * channel) run: full vectors for any C. */
static void fill_repeated(float *restrict rep, const float *restrict values, int count, int channels, long width) {
    for (int t = 0; t < count; t++)
        for (long k = 0; k < width; k++) rep[t * width + k] = values[(long)t * channels + k % channels];
}

/* fill_repeated into a new buffer; NULL when out of memory. */
static float *repeat_taps(const float *weight, int taps, int channels, long width) {
    float *rep = malloc(sizeof(float) * taps * width);
    if (rep) fill_repeated(rep, weight, taps, channels, width);
    return rep;
}

/* total[a * channels + c] += the `count` accumulators' (pixel, channel) sums; then zeroes them. */
static void fold_runs(float *restrict acc, double *restrict total, int count, int channels, long width) {
    for (int a = 0; a < count; a++)
        for (long k = 0; k < width; k++) total[(long)a * channels + k % channels] += acc[a * width + k];
    memset(acc, 0, sizeof(float) * count * width);
}

static void free_all(void *a, void *b, void *c, void *d) {
    free(a);
    free(b);
    free(c);
    free(d);
}

/* Biased per-channel mean and variance. Returns -1 when scratch cannot be allocated. */
int bn_stats(const float *restrict x, long rows, int channels, int threads, double *mean, double *var) {
    Runs layout = runs_of(rows, channels);
    long width = layout.width;
    double *partial = calloc((size_t)threads * 2 * channels, sizeof(double));
    float *scratch = calloc((size_t)threads * 2 * width, sizeof(float));
    float *shift = repeat_taps(x, 1, channels, width); /* the first row's values */
    if (!partial || !scratch || !shift) {
        free_all(partial, scratch, shift, NULL);
        return -1;
    }
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num(), pending = 0;
        double *sums = partial + (size_t)t * 2 * channels;
        float *acc = scratch + (size_t)t * 2 * width;
        float *restrict a1 = acc, *restrict a2 = acc + width;
#pragma omp for schedule(static)
        for (long run = 0; run < layout.runs; run++) {
            const float *restrict v = x + run * width;
            long length = min_long(width, layout.total - run * width);
            for (long k = 0; k < length; k++) {
                float d = v[k] - shift[k];
                a1[k] += d;
                a2[k] += d * d;
            }
            if (++pending == RUNS_PER_FLUSH) {
                fold_runs(acc, sums, 2, channels, width);
                pending = 0;
            }
        }
        if (pending) fold_runs(acc, sums, 2, channels, width);
    }
    for (int c = 0; c < channels; c++) {
        double t1 = 0, t2 = 0;
        for (int t = 0; t < threads; t++) {
            t1 += partial[(size_t)t * 2 * channels + c];
            t2 += partial[(size_t)t * 2 * channels + channels + c];
        }
        double m = t1 / rows, v = t2 / rows - m * m;
        mean[c] = shift[c] + m;
        var[c] = v > 0 ? v : 0;
    }
    free_all(partial, scratch, shift, NULL);
    return 0;
}

/* z = prelu(x * scale + offset) per channel (BN's affine with the batch statistics folded in).
 * Returns -1 when scratch cannot be allocated. */
int bn_apply(const float *restrict x, float *restrict z, long rows, int channels, const float *restrict scale,
             const float *restrict offset, const float *restrict alpha, int threads) {
    Runs layout = runs_of(rows, channels);
    long width = layout.width, total = layout.total, runs = layout.runs;
    float *rep_scale = repeat_taps(scale, 1, channels, width), *rep_offset = repeat_taps(offset, 1, channels, width);
    float *rep_alpha = alpha ? repeat_taps(alpha, 1, channels, width) : NULL;
    if (!rep_scale || !rep_offset || (alpha && !rep_alpha)) {
        free_all(rep_scale, rep_offset, rep_alpha, NULL);
        return -1;
    }
    const float *restrict sc = rep_scale, *restrict of = rep_offset, *restrict al = rep_alpha;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long run = 0; run < runs; run++) {
        const float *restrict in = x + run * width;
        float *restrict out = z + run * width;
        long length = min_long(width, total - run * width);
        if (al) {
            for (long k = 0; k < length; k++) {
                float y = in[k] * sc[k] + of[k];
                out[k] = y > 0 ? y : al[k] * y;
            }
        } else {
            for (long k = 0; k < length; k++) out[k] = in[k] * sc[k] + of[k];
        }
    }
    free_all(rep_scale, rep_offset, rep_alpha, NULL);
    return 0;
}

/* Over one run of `length` floats: sums of dy, dy * (x - mean) and (with alpha) the PReLU slope's
 * gradient, where dy is the gradient at the BN output (the PReLU input y = x * scale + offset). */
static void backward_sums(const float *restrict x, const float *restrict dz, long length, const float *restrict sc,
                          const float *restrict of, const float *restrict mu, const float *restrict al,
                          float *restrict s_dy, float *restrict s_dyx, float *restrict s_da) {
    if (al) {
        for (long k = 0; k < length; k++) {
            float y = x[k] * sc[k] + of[k];
            int positive = y > 0;
            float dy = positive ? dz[k] : al[k] * dz[k];
            s_da[k] += positive ? 0.0f : dz[k] * y;
            s_dy[k] += dy;
            s_dyx[k] += dy * (x[k] - mu[k]);
        }
    } else {
        for (long k = 0; k < length; k++) {
            s_dy[k] += dz[k];
            s_dyx[k] += dz[k] * (x[k] - mu[k]);
        }
    }
}

/* Gradients of z = prelu(bn(x)) given dz. Outputs dx (rows x channels) and, per channel,
 * dgamma, dbeta and (with alpha) dalpha. scale/offset are the forward's. */
int bn_backward(const float *restrict x, const float *restrict dz, float *restrict dx, long rows, int channels,
                const float *restrict gamma, const float *restrict mean, const float *restrict invstd,
                const float *restrict scale, const float *restrict offset, const float *restrict alpha, int threads,
                float *restrict dgamma, float *restrict dbeta, float *restrict dalpha) {
    Runs layout = runs_of(rows, channels);
    long width = layout.width, total = layout.total, runs = layout.runs;
    double *partial = calloc((size_t)threads * 3 * channels, sizeof(double));
    float *scratch = calloc((size_t)threads * 3 * width, sizeof(float));
    /* repeated along a run: scale, offset, alpha, mean, then the gradient's k_dy, k_x, k_0 */
    float *per_channel = malloc(sizeof(float) * 7 * channels);
    float *rep = malloc(sizeof(float) * 7 * width);
    if (!partial || !scratch || !per_channel || !rep) {
        free_all(partial, scratch, per_channel, rep);
        return -1;
    }
    for (int c = 0; c < channels; c++) {
        per_channel[c] = scale[c];
        per_channel[channels + c] = offset[c];
        per_channel[2 * channels + c] = alpha ? alpha[c] : 0.0f;
        per_channel[3 * channels + c] = mean[c];
    }
    fill_repeated(rep, per_channel, 4, channels, width);
    const float *restrict sc = rep, *restrict of = rep + width, *restrict al = alpha ? rep + 2 * width : NULL;
    const float *restrict mu = rep + 3 * width;
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num(), pending = 0;
        double *sums = partial + (size_t)t * 3 * channels;
        float *acc = scratch + (size_t)t * 3 * width;
#pragma omp for schedule(static)
        for (long run = 0; run < runs; run++) {
            long start = run * width;
            backward_sums(x + start, dz + start, min_long(width, total - start), sc, of, mu, al, acc, acc + width,
                          acc + 2 * width);
            if (++pending == RUNS_PER_FLUSH) {
                fold_runs(acc, sums, 3, channels, width);
                pending = 0;
            }
        }
        if (pending) fold_runs(acc, sums, 3, channels, width);
    }
    float *k_dy = per_channel + 4 * channels, *k_x = per_channel + 5 * channels, *k_0 = per_channel + 6 * channels;
    for (int c = 0; c < channels; c++) {
        double sum_dy = 0, sum_dyx = 0, sum_da = 0;
        for (int t = 0; t < threads; t++) {
            const double *p = partial + (size_t)t * 3 * channels;
            sum_dy += p[c];
            sum_dyx += p[channels + c];
            sum_da += p[2 * channels + c];
        }
        dbeta[c] = (float)sum_dy;
        dgamma[c] = (float)(sum_dyx * invstd[c]);
        if (alpha) dalpha[c] = (float)sum_da;
        /* dx = gamma*invstd * (dy - mean(dy) - (x - mean) * invstd^2 * mean(dy * (x - mean))) */
        double k = (double)gamma[c] * invstd[c];
        double kx = -k * invstd[c] * invstd[c] * (sum_dyx / rows);
        k_dy[c] = (float)k;
        k_x[c] = (float)kx;
        k_0[c] = (float)(-k * (sum_dy / rows) - kx * mean[c]);
    }
    fill_repeated(rep + 4 * width, per_channel + 4 * channels, 3, channels, width);
    const float *restrict r_dy = rep + 4 * width, *restrict r_x = rep + 5 * width, *restrict r_0 = rep + 6 * width;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long run = 0; run < runs; run++) {
        const float *restrict in = x + run * width, *restrict g = dz + run * width;
        float *restrict out = dx + run * width;
        long length = min_long(width, total - run * width);
        if (al) {
            for (long k = 0; k < length; k++) {
                float y = in[k] * sc[k] + of[k];
                float dy = y > 0 ? g[k] : al[k] * g[k];
                out[k] = r_dy[k] * dy + r_x[k] * in[k] + r_0[k];
            }
        } else {
            for (long k = 0; k < length; k++) out[k] = r_dy[k] * g[k] + r_x[k] * in[k] + r_0[k];
        }
    }
    free_all(partial, scratch, per_channel, rep);
    return 0;
}

/* Depth-wise convolution (one filter per channel, stride 1) over NHWC, backward.
 *
 * Why: oneDNN's depth-wise backward for the few, odd channel counts of ExtremeC3Net (8,
 * 16, 18) runs far from memory speed and was most of the convolutions' backward time.
 * Its forward is fast below dilation 7, so functions.py runs the input gradient as a forward
 * conv there, and the forward on dw_backward_input above. Weights are tap-major: taps = kh*kw
 * rows of C values.
 * Output size: oh = ih + pad_h - i * dil_h for tap row i (stride 1).
 */

/* grad_in[n, ih, iw, c] = sum over taps of w[t, c] * grad_out[n, ih + pad_h - i*dil_h, iw + pad_w - j*dil_w, c].
 * Returns -1 when scratch cannot be allocated. */
int dw_backward_input(const float *restrict grad_out, const float *restrict weight, float *restrict grad_in,
                      int batch, int in_h, int in_w, int out_h, int out_w, int channels, int kernel_h,
                      int kernel_w, int pad_h, int pad_w, int dil_h, int dil_w, int threads) {
    long width = (long)in_w * channels;
    float *rep = repeat_taps(weight, kernel_h * kernel_w, channels, width);
    if (!rep) return -1;
    long rows = (long)batch * in_h;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long row = 0; row < rows; row++) {
        int n = (int)(row / in_h), ih = (int)(row % in_h);
        float *restrict out = grad_in + row * width;
        memset(out, 0, sizeof(float) * width);
        for (int i = 0; i < kernel_h; i++) {
            int oh = ih + pad_h - i * dil_h;
            if (oh < 0 || oh >= out_h) continue;
            const float *restrict g_row = grad_out + ((long)n * out_h + oh) * out_w * channels;
            for (int j = 0; j < kernel_w; j++) {
                int shift = pad_w - j * dil_w; /* ow = iw + shift */
                int iw0 = shift < 0 ? -shift : 0, iw1 = out_w - shift < in_w ? out_w - shift : in_w;
                if (iw1 <= iw0) continue;
                const float *restrict w = rep + (long)(i * kernel_w + j) * width;
                const float *restrict g = g_row + (long)(iw0 + shift) * channels;
                float *restrict o = out + (long)iw0 * channels;
                long run = (long)(iw1 - iw0) * channels;
                for (long k = 0; k < run; k++) o[k] += w[k] * g[k];
            }
        }
    }
    free(rep);
    return 0;
}

#define ROWS_PER_FLUSH 16

/* Adds a thread's per-(tap, pixel, channel) float sums into its per-(tap, channel) doubles. */
static void flush_taps(float *restrict acc, double *restrict total, int taps, int out_w, int channels) {
    long width = (long)out_w * channels;
    for (int t = 0; t < taps; t++)
        for (int ow = 0; ow < out_w; ow++)
            for (int c = 0; c < channels; c++) total[(long)t * channels + c] += acc[t * width + (long)ow * channels + c];
    memset(acc, 0, sizeof(float) * taps * width);
}

/* grad_w[t, c] = sum over n, oh, ow of grad_out[n, oh, ow, c] * x[n, oh - pad_h + i*dil_h, ow - pad_w + j*dil_w, c].
 * Returns -1 when scratch cannot be allocated. */
int dw_backward_weight(const float *restrict grad_out, const float *restrict x, float *restrict grad_weight,
                       int batch, int in_h, int in_w, int out_h, int out_w, int channels, int kernel_h,
                       int kernel_w, int pad_h, int pad_w, int dil_h, int dil_w, int threads) {
    int taps = kernel_h * kernel_w;
    long width = (long)out_w * channels;
    double *partial = calloc((size_t)threads * taps * channels, sizeof(double));
    float *scratch = calloc((size_t)threads * taps * width, sizeof(float));
    if (!partial || !scratch) {
        free(partial);
        free(scratch);
        return -1;
    }
    long rows = (long)batch * out_h;
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num(), pending = 0;
        double *restrict total = partial + (size_t)t * taps * channels;
        float *restrict acc = scratch + (size_t)t * taps * width;
#pragma omp for schedule(static)
        for (long row = 0; row < rows; row++) {
            int n = (int)(row / out_h), oh = (int)(row % out_h);
            const float *restrict g_row = grad_out + row * width;
            for (int i = 0; i < kernel_h; i++) {
                int ih = oh - pad_h + i * dil_h;
                if (ih < 0 || ih >= in_h) continue;
                const float *restrict x_row = x + ((long)n * in_h + ih) * in_w * channels;
                for (int j = 0; j < kernel_w; j++) {
                    int shift = j * dil_w - pad_w; /* iw = ow + shift */
                    int ow0 = shift < 0 ? -shift : 0, ow1 = in_w - shift < out_w ? in_w - shift : out_w;
                    if (ow1 <= ow0) continue;
                    float *restrict a = acc + (long)(i * kernel_w + j) * width + (long)ow0 * channels;
                    const float *restrict g = g_row + (long)ow0 * channels;
                    const float *restrict v = x_row + (long)(ow0 + shift) * channels;
                    long run = (long)(ow1 - ow0) * channels;
                    for (long k = 0; k < run; k++) a[k] += g[k] * v[k];
                }
            }
            if (++pending == ROWS_PER_FLUSH) {
                flush_taps(acc, total, taps, out_w, channels);
                pending = 0;
            }
        }
        if (pending) flush_taps(acc, total, taps, out_w, channels);
    }
    for (int k = 0; k < taps * channels; k++) {
        double sum = 0;
        for (int t = 0; t < threads; t++) sum += partial[(size_t)t * taps * channels + k];
        grad_weight[k] = (float)sum;
    }
    free(partial);
    free(scratch);
    return 0;
}

/* Lovász loss: each row's order by decreasing value (a float32 row of `cols` values), as an LSD radix
 * sort of 11 + 11 + 10 bits, stable (ties keep their column order).
 *
 * Why: the loss sorts every image's pixel errors; torch.sort took 65 ms for 32 rows of 50,176 floats
 * on 2 cores, about a twentieth of a training step. Keys: the float's bits mapped so that unsigned
 * order is decreasing float order (NaN above +inf, as torch.sort puts it first).
 * Returns -1 when scratch cannot be allocated. */
#define RADIX_PASSES 3
static const int radix_shift[RADIX_PASSES] = {0, 11, 22};
static const int radix_bins[RADIX_PASSES] = {2048, 2048, 1024};

static unsigned decreasing_key(float value) {
    unsigned bits;
    memcpy(&bits, &value, sizeof bits);
    if (value != value) return 0u; /* NaN: first */
    unsigned increasing = (bits >> 31) ? ~bits : bits ^ 0x80000000u;
    return ~increasing;
}

int sort_rows_descending(const float *restrict x, long rows, long cols, long long *restrict order, int threads) {
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        unsigned *keys = malloc(sizeof(unsigned) * 2 * cols);
        unsigned *index = malloc(sizeof(unsigned) * 2 * cols);
        long *count = malloc(sizeof(long) * 2048);
        int ready = keys && index && count;
        failed = !ready;
#pragma omp for schedule(static)
        for (long r = 0; r < rows; r++) {
            if (ready) { /* every thread reaches the loop: it is a barrier */
                const float *restrict row = x + r * cols;
                unsigned *k_in = keys, *k_out = keys + cols, *i_in = index, *i_out = index + cols;
                for (long c = 0; c < cols; c++) {
                    k_in[c] = decreasing_key(row[c]);
                    i_in[c] = (unsigned)c;
                }
                for (int p = 0; p < RADIX_PASSES; p++) {
                    int shift = radix_shift[p], bins = radix_bins[p];
                    unsigned mask = (unsigned)bins - 1u;
                    memset(count, 0, sizeof(long) * bins);
                    for (long c = 0; c < cols; c++) count[(k_in[c] >> shift) & mask]++;
                    long start = 0;
                    for (int b = 0; b < bins; b++) {
                        long n = count[b];
                        count[b] = start;
                        start += n;
                    }
                    for (long c = 0; c < cols; c++) {
                        long to = count[(k_in[c] >> shift) & mask]++;
                        k_out[to] = k_in[c];
                        i_out[to] = i_in[c];
                    }
                    unsigned *t = k_in; k_in = k_out; k_out = t;
                    t = i_in; i_in = i_out; i_out = t;
                }
                long long *restrict out = order + r * cols;
                for (long c = 0; c < cols; c++) out[c] = i_in[c];
            }
        }
        free(keys);
        free(index);
        free(count);
    }
    return failed ? -1 : 0;
}
