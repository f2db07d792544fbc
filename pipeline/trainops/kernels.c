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
 * taken per block of rows in float, then added in double; the variance is taken about
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

#define ROWS_PER_BLOCK 64

static long min_long(long a, long b) { return a < b ? a : b; }

/* Biased per-channel mean and variance. Returns -1 when scratch cannot be allocated. */
int bn_stats(const float *restrict x, long rows, int channels, int threads, double *mean, double *var) {
    double *partial = calloc((size_t)threads * 2 * channels, sizeof(double));
    float *scratch = malloc(sizeof(float) * threads * 2 * channels);
    if (!partial || !scratch) {
        free(partial);
        free(scratch);
        return -1;
    }
    const float *shift = x;
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num();
        double *s1 = partial + (size_t)t * 2 * channels, *s2 = s1 + channels;
        float *restrict f1 = scratch + (size_t)t * 2 * channels, *restrict f2 = f1 + channels;
#pragma omp for schedule(static)
        for (long block = 0; block < rows; block += ROWS_PER_BLOCK) {
            memset(f1, 0, sizeof(float) * 2 * channels);
            long end = min_long(block + ROWS_PER_BLOCK, rows);
            for (long r = block; r < end; r++) {
                const float *row = x + r * channels;
                for (int c = 0; c < channels; c++) {
                    float d = row[c] - shift[c];
                    f1[c] += d;
                    f2[c] += d * d;
                }
            }
            for (int c = 0; c < channels; c++) {
                s1[c] += f1[c];
                s2[c] += f2[c];
            }
        }
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
    free(partial);
    free(scratch);
    return 0;
}

/* z = prelu(x * scale + offset) per channel (BN's affine with the batch statistics folded in). */
void bn_apply(const float *restrict x, float *restrict z, long rows, int channels, const float *restrict scale,
              const float *restrict offset, const float *restrict alpha, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < rows; r++) {
        const float *in = x + r * channels;
        float *out = z + r * channels;
        if (alpha) {
            for (int c = 0; c < channels; c++) {
                float y = in[c] * scale[c] + offset[c];
                out[c] = y > 0 ? y : alpha[c] * y;
            }
        } else {
            for (int c = 0; c < channels; c++) out[c] = in[c] * scale[c] + offset[c];
        }
    }
}

/* Over `rows` rows: sums of dy, dy * (x - mean) and (with alpha) the PReLU slope's gradient,
 * where dy is the gradient at the BN output (the PReLU input y = x * scale + offset). */
static void backward_sums(const float *restrict x, const float *restrict dz, long rows, int channels,
                          const float *restrict scale, const float *restrict offset, const float *restrict mean,
                          const float *restrict alpha, float *restrict s_dy, float *restrict s_dyx,
                          float *restrict s_da) {
    for (long r = 0; r < rows; r++) {
        const float *restrict in = x + r * channels, *restrict g = dz + r * channels;
        if (alpha) {
            for (int c = 0; c < channels; c++) {
                float y = in[c] * scale[c] + offset[c];
                int positive = y > 0;
                float dy = positive ? g[c] : alpha[c] * g[c];
                s_da[c] += positive ? 0.0f : g[c] * y;
                s_dy[c] += dy;
                s_dyx[c] += dy * (in[c] - mean[c]);
            }
        } else {
            for (int c = 0; c < channels; c++) {
                s_dy[c] += g[c];
                s_dyx[c] += g[c] * (in[c] - mean[c]);
            }
        }
    }
}

/* Gradients of z = prelu(bn(x)) given dz. Outputs dx (rows x channels) and, per channel,
 * dgamma, dbeta and (with alpha) dalpha. scale/offset are the forward's. */
int bn_backward(const float *restrict x, const float *restrict dz, float *restrict dx, long rows, int channels,
                const float *restrict gamma, const float *restrict mean, const float *restrict invstd,
                const float *restrict scale, const float *restrict offset, const float *restrict alpha, int threads,
                float *restrict dgamma, float *restrict dbeta, float *restrict dalpha) {
    double *partial = calloc((size_t)threads * 3 * channels, sizeof(double));
    float *scratch = malloc(sizeof(float) * threads * 3 * channels);
    float *coef = malloc(sizeof(float) * 3 * channels);
    if (!partial || !scratch || !coef) {
        free(partial);
        free(scratch);
        free(coef);
        return -1;
    }
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num();
        double *s_dy = partial + (size_t)t * 3 * channels;
        float *f = scratch + (size_t)t * 3 * channels;
        float *restrict f_dy = f, *restrict f_dyx = f + channels, *restrict f_da = f + 2 * channels;
#pragma omp for schedule(static)
        for (long block = 0; block < rows; block += ROWS_PER_BLOCK) {
            memset(f, 0, sizeof(float) * 3 * channels);
            long end = min_long(block + ROWS_PER_BLOCK, rows);
            backward_sums(x + block * channels, dz + block * channels, end - block, channels, scale, offset, mean,
                          alpha, f_dy, f_dyx, f_da);
            for (int c = 0; c < 3 * channels; c++) s_dy[c] += f[c];
        }
    }
    float *restrict k_dy = coef, *restrict k_x = coef + channels, *restrict k_0 = coef + 2 * channels;
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
    free(partial);
    free(scratch);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < rows; r++) {
        const float *in = x + r * channels, *g = dz + r * channels;
        float *out = dx + r * channels;
        if (alpha) {
            for (int c = 0; c < channels; c++) {
                float y = in[c] * scale[c] + offset[c];
                float dy = y > 0 ? g[c] : alpha[c] * g[c];
                out[c] = k_dy[c] * dy + k_x[c] * in[c] + k_0[c];
            }
        } else {
            for (int c = 0; c < channels; c++) out[c] = k_dy[c] * g[c] + k_x[c] * in[c] + k_0[c];
        }
    }
    free(coef);
    return 0;
}

/* Depth-wise convolution (one filter per channel, stride 1) over NHWC, backward.
 *
 * Why: oneDNN's depth-wise backward for the few, odd channel counts of ExtremeC3Net (8,
 * 16, 18) runs far from memory speed and was most of the convolutions' backward time.
 * The forward stays PyTorch's. Weights are tap-major: taps = kh*kw rows of C values.
 * Output size: oh = ih + pad_h - i * dil_h for tap row i (stride 1).
 */

/* Per-channel tap weights repeated along a row (`width` floats per tap), so that the inner
 * loops below run over a whole row's (pixel, channel) run: full vectors for any C. */
static float *repeat_taps(const float *weight, int taps, int channels, long width) {
    float *rep = malloc(sizeof(float) * taps * width);
    if (rep)
        for (int t = 0; t < taps; t++)
            for (long k = 0; k < width; k++) rep[t * width + k] = weight[(long)t * channels + k % channels];
    return rep;
}

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
