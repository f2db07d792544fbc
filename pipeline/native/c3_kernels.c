/* Fused CPU kernels for ExtremeC3Net inference at batch 1 (see pipeline/native/__init__.py).
 *
 * Why this exists: ExtremeC3Net is ~240 tiny operators. In PyTorch, ONNX Runtime or
 * OpenVINO each one pays dispatch, allocation and layout-conversion costs far larger than
 * its arithmetic, so the network runs at 6-10% of its FLOP bound. Here the whole forward
 * pass is one call that walks a "program" (a flat int64 array of op records built in
 * Python, pipeline/native/program.py) over one pre-allocated arena, inside a single
 * OpenMP parallel region:
 *
 *   - activations are planar NCHW (batch 1), so a channel concatenation is an offset;
 *   - convolutions with groups=1 are small GEMMs (4 or 6 output channels x 64 pixels per
 *     register tile) whose epilogue applies bias, residual, per-channel affine (a BN that
 *     cannot be folded) and PReLU while the tile is in registers; a second output can
 *     receive the result through a further affine+PReLU (a BN over a concatenation that
 *     also needs the raw tensor);
 *   - depth-wise convolutions of any kernel shape and dilation run row by row, 16 lanes
 *     at a time over zero-padded rows;
 *   - bilinear upsampling (align_corners=True), 2x2 average pooling (ceil mode) and
 *     per-channel affine+PReLU copies complete the set.
 *
 * Portable C with GCC vector extensions: the build uses -march=native, so the 16-lane
 * vectors become AVX-512 here and pairs of AVX2 / quads of SSE registers elsewhere.
 * Every arena tensor has 64 floats of slack after it (the Python side allocates it):
 * kernels read whole 16- or 64-lane runs and discard the lanes past the end.
 */
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __AVX512F__
#include <immintrin.h> /* masked stores for row tails; the portable path copies instead */
#endif

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t i16v __attribute__((vector_size(64)));
typedef int32_t alias_i32 __attribute__((may_alias)); /* int32 tables stored in the float weight blob */

static inline v16 load16(const float *p) { v16 r; memcpy(&r, p, sizeof r); return r; }
static inline void store16(float *p, v16 v) { memcpy(p, &v, sizeof v); }

enum { OP_CONV = 1, OP_DWCONV = 2, OP_UPSAMPLE = 3, OP_AVGPOOL2 = 4, OP_AFFINE = 5 };

/* Field indices of one op record; keep in step with FIELDS in pipeline/native/program.py. */
enum {
    F_OP, F_IN_BUF, F_IN_OFF, F_IN_C, F_IN_H, F_IN_W,
    F_OUT_BUF, F_OUT_OFF, F_OUT_C, F_OUT_H, F_OUT_W,
    F_KH, F_KW, F_STRIDE, F_PH, F_PW, F_DH, F_DW,
    F_WEIGHT, F_BIAS, F_RES_BUF, F_RES_OFF, F_AFF1, F_PRELU1, F_AFF2, F_PRELU2,
    F_TILE_C, F_IN2_BUF, F_IN2_OFF, F_OUT2_BUF, F_OUT2_OFF,
    F_WEIGHT2, F_BIAS2, F_K2, F_P2,
    F_RECORD = 40
};

#define TILE_N 64

typedef struct {
    const float *bias, *aff1, *prelu1, *aff2, *prelu2; /* per local channel; aff = scale[C] then shift[C] */
    int channels;
} epilogue_t;

/* One decoded record. `items` independent work items make up its parallel loop. */
typedef struct {
    int kind;
    const float *in, *in2, *res, *weight, *weight2;
    float *out, *out2;
    int cin, h, w, cout, ho, wo, kh, kw, s, ph, pw, dh, dw;
    int k2, p2;      /* depth-wise: an optional second, 1 x k2 stage (padding p2) on each output row */
    int pointwise, tile_c; /* conv: output channels per register tile (4 or 6) */
    epilogue_t e;    /* the output's epilogue */
    epilogue_t e1;   /* depth-wise with a second stage: the first stage's (bias, PReLU) */
    int64_t items;
} op_t;

static inline v16 prelu16(v16 v, float slope)
{
    const v16 zero = {0};
    const i16v positive = v > zero;
    const v16 scaled = slope * v;
    return (v16)((positive & (i16v)v) | (~positive & (i16v)scaled)); /* GCC vectors have no ?: in C */
}

static inline void put16(float *dst, v16 v, int n)
{
    if (n == 16) { store16(dst, v); return; }
#ifdef __AVX512F__
    _mm512_mask_storeu_ps(dst, (__mmask16)((1u << n) - 1u), (__m512)v);
    return;
#endif
    float tmp[16];
    store16(tmp, v);
    memcpy(dst, tmp, (size_t)n * sizeof(float));
}

/* Epilogue of 16 lanes of local channel c, then store the first n lanes. With dst2, dst gets
 * the value before the second affine/PReLU and dst2 the value after it. */
static inline void finish16(v16 v, int c, const epilogue_t *e, const float *res, float *dst, float *dst2, int n)
{
    if (e->bias) v += e->bias[c];
    if (res) v += load16(res);
    if (e->aff1) v = v * e->aff1[c] + e->aff1[e->channels + c];
    if (e->prelu1) v = prelu16(v, e->prelu1[c]);
    if (dst2) put16(dst, v, n);
    if (e->aff2) v = v * e->aff2[c] + e->aff2[e->channels + c];
    if (e->prelu2) v = prelu16(v, e->prelu2[c]);
    put16(dst2 ? dst2 : dst, v, n);
}

/* A row of n values of channel c through finish16, 16 lanes at a time. */
static inline void finish_row(const float *row, int n, int c, const epilogue_t *e, const float *res, float *dst,
                              float *dst2)
{
    for (int x = 0; x < n; x += 16) {
        const int lanes = n - x < 16 ? n - x : 16;
        finish16(load16(row + x), c, e, res ? res + x : NULL, dst + x, dst2 ? dst2 + x : NULL, lanes);
    }
}

/* acc[j][q] = sum_k a[TC*k + j] * B_k[16q .. 16q + 16) for j < TC output channels;
 * B_k = rows[k] + offset, or base + k * stride + offset when rows is NULL. TC * 4
 * accumulators stay in registers (24 of the 32 AVX-512 registers for TC = 6). */
#define DEFINE_GEMM_TILE(NAME, TC)                                                                        \
    static inline void NAME(int K, const float *restrict a, const float *const *restrict rows,           \
                            const float *base, int64_t stride, int64_t offset, v16 acc[][4])              \
    {                                                                                                     \
        v16 c[TC][4];                                                                                     \
        _Pragma("GCC unroll 8") for (int j = 0; j < TC; j++) c[j][0] = c[j][1] = c[j][2] = c[j][3] = (v16){0}; \
        for (int k = 0; k < K; k++) {                                                                     \
            const float *b = (rows ? rows[k] : base + k * stride) + offset;                               \
            const v16 b0 = load16(b), b1 = load16(b + 16), b2 = load16(b + 32), b3 = load16(b + 48);     \
            _Pragma("GCC unroll 8") for (int j = 0; j < TC; j++) {                                        \
                const float aj = a[TC * k + j];                                                           \
                c[j][0] += aj * b0; c[j][1] += aj * b1; c[j][2] += aj * b2; c[j][3] += aj * b3;           \
            }                                                                                             \
        }                                                                                                 \
        _Pragma("GCC unroll 8") for (int j = 0; j < TC; j++)                                             \
            acc[j][0] = c[j][0], acc[j][1] = c[j][1], acc[j][2] = c[j][2], acc[j][3] = c[j][3];           \
    }
DEFINE_GEMM_TILE(gemm_tile4, 4)
DEFINE_GEMM_TILE(gemm_tile6, 6)

/* All output channels of one tile of up to 64 output pixels starting at plane position pos. */
static void conv_tile(const op_t *op, const float *const *rows, const float *base, int64_t stride,
                      int64_t b_offset, int64_t pos, int valid)
{
    const int K = op->cin * op->kh * op->kw;
    const int64_t plane = (int64_t)op->ho * op->wo;
    const int tc = op->tile_c;
    v16 acc[6][4];
    for (int c0 = 0; c0 < op->cout; c0 += tc) {
        if (tc == 6) gemm_tile6(K, op->weight + (int64_t)c0 * K, rows, base, stride, b_offset, acc);
        else gemm_tile4(K, op->weight + (int64_t)c0 * K, rows, base, stride, b_offset, acc);
        const int nc = op->cout - c0 < tc ? op->cout - c0 : tc;
        for (int j = 0; j < nc; j++) {
            const int c = c0 + j;
            const int64_t at = c * plane + pos;
            for (int q = 0; q < 4 && 16 * q < valid; q++) {
                const int lanes = valid - 16 * q < 16 ? valid - 16 * q : 16;
                finish16(acc[j][q], c, &op->e, op->res ? op->res + at + 16 * q : NULL, op->out + at + 16 * q,
                         op->out2 ? op->out2 + at + 16 * q : NULL, lanes);
            }
        }
    }
}

/* dst[j] = src[2j] for j < n, 16 at a time from the even lanes of two vectors; the last 16
 * come from the odd lanes of a window starting one float earlier, so nothing past
 * src[2n - 2] is read. */
static void gather_even(float *restrict dst, const float *restrict src, int n)
{
    const i16v even = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
    const i16v odd = even + 1;
    if (n < 17) { for (int j = 0; j < n; j++) dst[j] = src[2 * j]; return; }
    for (int j = 0; j + 17 <= n; j += 16)
        store16(dst + j, __builtin_shuffle(load16(src + 2 * j), load16(src + 2 * j + 16), even));
    const float *tail = src + 2 * (n - 16) - 1;
    store16(dst + n - 16, __builtin_shuffle(load16(tail), load16(tail + 16), odd));
}

/* dst[j] = row[s*j + first] for j < n; zero where that column is outside [0, w), or
 * everywhere when row is NULL (a padding row). */
static void fill_phase_row(float *restrict dst, const float *row, int w, int s, int first, int n)
{
    if (!row) { memset(dst, 0, (size_t)n * sizeof(float)); return; }
    int lo = 0, hi = n;
    while (lo < hi && s * lo + first < 0) dst[lo++] = 0.f;
    while (hi > lo && s * (hi - 1) + first >= w) dst[--hi] = 0.f;
    if (lo >= hi) return;
    const float *src = row + s * lo + first;
    if (s == 2) gather_even(dst + lo, src, hi - lo);
    else if (s == 1) memcpy(dst + lo, src, (size_t)(hi - lo) * sizeof(float));
    else for (int j = 0; j < hi - lo; j++) dst[lo + j] = src[s * j];
}

/* Convolution item. 1x1 stride 1: a 64-pixel tile of the flattened plane, read in place.
 * Otherwise one output row, 64 columns at a time: the kh input rows it needs are split
 * into `s` column phases in a small per-thread buffer (phase p, column j holds input
 * column s*j + p - pw), so every (ci, ky, kx) tap is a contiguous run of 64 values. */
static void conv_item(const op_t *op, int64_t item)
{
    if (op->pointwise) {
        const int64_t plane = (int64_t)op->ho * op->wo, pos = item * TILE_N;
        const int valid = (int)(plane - pos < TILE_N ? plane - pos : TILE_N);
        conv_tile(op, NULL, op->in, (int64_t)op->h * op->w, pos, pos, valid);
        return;
    }
    const int K = op->cin * op->kh * op->kw, s = op->s, kh = op->kh;
    const int width = TILE_N + (op->kw - 1) / s, stride = (width + 15) / 16 * 16;
    const int oy = (int)item;
    float local[op->cin * s * kh * stride] __attribute__((aligned(64)));
    const float *rows[K];
    for (int ci = 0, k = 0; ci < op->cin; ci++)
        for (int ky = 0; ky < kh; ky++)
            for (int kx = 0, phase = 0, column = 0; kx < op->kw; kx++, k++) { /* no division per tap */
                rows[k] = local + (((int64_t)ci * s + phase) * kh + ky) * stride + column;
                if (++phase == s) { phase = 0; column++; }
            }
    for (int x0 = 0; x0 < op->wo; x0 += TILE_N) {
        for (int ci = 0; ci < op->cin; ci++)
            for (int p = 0; p < s; p++)
                for (int ky = 0; ky < kh; ky++) {
                    const int iy = oy * s - op->ph + ky;
                    const float *row = iy >= 0 && iy < op->h ? op->in + ((int64_t)ci * op->h + iy) * op->w : NULL;
                    fill_phase_row(local + (((int64_t)ci * s + p) * kh + ky) * stride, row, op->w, s,
                                   s * x0 + p - op->pw, width);
                }
        const int valid = op->wo - x0 < TILE_N ? op->wo - x0 : TILE_N;
        conv_tile(op, rows, NULL, 0, 0, (int64_t)oy * op->wo + x0, valid);
    }
}

#define DW_ROWS 8 /* output rows per depth-wise work item */

/* Depth-wise conv item: DW_ROWS output rows of one channel, two rows at a time, 64 pixels
 * at a time: eight independent accumulators hide the FMA latency of the tap chain. With a
 * second stage (a C3 block's 1 x (2d-1) conv after its (2d-1) x 1 one), each finished row
 * goes through it before it is stored, so the intermediate tensor never exists. When
 * pw > 0 every input row the block reads is first copied once, zero-padded left and right,
 * into a local buffer, so every tap is a plain 16-lane load; copying them all before any
 * tap reads them also keeps loads from waiting on the stores that just wrote them. */
static void dw_item(const op_t *op, int64_t item)
{
    const int blocks = (op->h + DW_ROWS - 1) / DW_ROWS;
    const int c = (int)(item / blocks), first = (int)(item % blocks) * DW_ROWS;
    const int last = first + DW_ROWS < op->h ? first + DW_ROWS : op->h;
    const int w = op->w, kw = op->kw, dw = op->dw, kh = op->kh, pw = op->pw;
    const int chunks = (w + 15) / 16, span = (chunks + 3) / 4 * 64; /* lanes computed, >= w */
    const int padded = pw > 0 ? (span + 2 * pw + 15) / 16 * 16 : 16;
    const float *wc = op->weight + (int64_t)c * kh * kw;
    const float *plane = op->in + (int64_t)c * op->h * w;
    /* input rows [top, bottom) feed this block */
    int top = first - op->ph, bottom = last - 1 - op->ph + (kh - 1) * op->dh + 1;
    if (top < 0) top = 0;
    if (bottom > op->h) bottom = op->h;
    float local[pw > 0 && bottom > top ? bottom - top : 1][padded] __attribute__((aligned(64)));
    const v16 zero = {0};
    if (pw > 0)
        for (int iy = top; iy < bottom; iy++) {
            float *p = local[iy - top];
            const float *src = plane + (int64_t)iy * w;
            for (int x = 0; x < pw; x += 16) store16(p + x, zero);
            for (int x = 0; x < w; x += 16) store16(p + pw + x, load16(src + x)); /* over-reads stay in the arena */
            for (int x = pw + w; x < padded; x += 16) store16(p + x, zero);
        }
    const float *rows[2][kh];
    /* second stage: each finished first-stage row, zero-padded by p2 on both sides */
    const int staged = op->weight2 ? (span + 2 * op->p2 + 15) / 16 * 16 + 16 : 16;
    float stage[2][staged] __attribute__((aligned(64)));
    if (op->weight2)
        for (int r = 0; r < 2; r++)
            for (int x = 0; x < staged; x += 16) store16(stage[r] + x, zero);
    for (int oy = first; oy < last; oy += 2) {
        const int two = oy + 1 < last;
        int lo[2], hi[2];
        for (int r = 0; r <= two; r++) {
            int a = 0, b = kh;
            while (a < b && oy + r - op->ph + a * op->dh < 0) a++;
            while (b > a && oy + r - op->ph + (b - 1) * op->dh >= op->h) b--;
            lo[r] = a; hi[r] = b;
            for (int ky = a; ky < b; ky++) {
                const int iy = oy + r - op->ph + ky * op->dh;
                rows[r][ky] = pw > 0 ? local[iy - top] : plane + (int64_t)iy * w;
            }
        }
        /* the two rows share the tap loop when both have the same taps (away from the border) */
        const int paired = two && lo[0] == lo[1] && hi[0] == hi[1];
        const int64_t at = ((int64_t)c * op->h + oy) * w;
        for (int x0 = 0; x0 < w; x0 += 64) {
            v16 a0 = zero, a1 = zero, a2 = zero, a3 = zero, b0 = zero, b1 = zero, b2 = zero, b3 = zero;
            if (paired) {
                for (int ky = lo[0]; ky < hi[0]; ky++)
                    for (int kx = 0; kx < kw; kx++) {
                        const float wv = wc[ky * kw + kx];
                        const float *p = rows[0][ky] + x0 + kx * dw, *q = rows[1][ky] + x0 + kx * dw;
                        a0 += wv * load16(p); a1 += wv * load16(p + 16); a2 += wv * load16(p + 32); a3 += wv * load16(p + 48);
                        b0 += wv * load16(q); b1 += wv * load16(q + 16); b2 += wv * load16(q + 32); b3 += wv * load16(q + 48);
                    }
            } else {
                for (int ky = lo[0]; ky < hi[0]; ky++)
                    for (int kx = 0; kx < kw; kx++) {
                        const float wv = wc[ky * kw + kx];
                        const float *p = rows[0][ky] + x0 + kx * dw;
                        a0 += wv * load16(p); a1 += wv * load16(p + 16); a2 += wv * load16(p + 32); a3 += wv * load16(p + 48);
                    }
                for (int ky = lo[1]; two && ky < hi[1]; ky++)
                    for (int kx = 0; kx < kw; kx++) {
                        const float wv = wc[ky * kw + kx];
                        const float *q = rows[1][ky] + x0 + kx * dw;
                        b0 += wv * load16(q); b1 += wv * load16(q + 16); b2 += wv * load16(q + 32); b3 += wv * load16(q + 48);
                    }
            }
            const v16 sums[2][4] = {{a0, a1, a2, a3}, {b0, b1, b2, b3}};
            for (int r = 0; r <= two; r++)
                for (int q = 0; q < 4 && x0 + 16 * q < w; q++) {
                    const int x = x0 + 16 * q, lanes = w - x < 16 ? w - x : 16;
                    const int64_t o = at + (int64_t)r * w + x;
                    if (op->weight2) /* into the second stage's zero-padded row */
                        finish16(sums[r][q], c, &op->e1, NULL, stage[r] + op->p2 + x, NULL, lanes);
                    else
                        finish16(sums[r][q], c, &op->e, NULL, op->out + o, op->out2 ? op->out2 + o : NULL, lanes);
                }
        }
        for (int r = 0; op->weight2 && r <= two; r++) {
            const float *w2 = op->weight2 + (int64_t)c * op->k2;
            for (int x0 = 0; x0 < w; x0 += 64) {
                v16 a0 = zero, a1 = zero, a2 = zero, a3 = zero;
                for (int kx = 0; kx < op->k2; kx++) {
                    const float wv = w2[kx];
                    const float *p = stage[r] + x0 + kx;
                    a0 += wv * load16(p); a1 += wv * load16(p + 16); a2 += wv * load16(p + 32); a3 += wv * load16(p + 48);
                }
                const v16 sums[4] = {a0, a1, a2, a3};
                for (int q = 0; q < 4 && x0 + 16 * q < w; q++) {
                    const int x = x0 + 16 * q, lanes = w - x < 16 ? w - x : 16;
                    const int64_t o = at + (int64_t)r * w + x;
                    finish16(sums[q], c, &op->e, NULL, op->out + o, op->out2 ? op->out2 + o : NULL, lanes);
                }
            }
        }
    }
}

/* Bilinear upsampling item (align_corners=True): one output row of one channel, + in2, epilogue.
 * Source rows are blended first, then columns through a table the builder computed. */
static void upsample_item(const op_t *op, int64_t item)
{
    const int c = (int)(item / op->ho), oy = (int)(item % op->ho);
    const int h = op->h, w = op->w, wo = op->wo;
    const float sy = op->ho > 1 ? (float)(h - 1) / (float)(op->ho - 1) : 0.f;
    const float src_y = sy * (float)oy;
    int y0 = (int)src_y;
    if (y0 > h - 1) y0 = h - 1;
    const int y1 = y0 + 1 < h ? y0 + 1 : h - 1;
    const float fy = src_y - (float)y0;
    const float *r0 = op->in + ((int64_t)c * h + y0) * w, *r1 = op->in + ((int64_t)c * h + y1) * w;
    /* column table from the weights: left source column (int32 bits) then weight, per output column */
    const alias_i32 *left = (const alias_i32 *)op->weight;
    const float *frac = op->weight + wo;
    float blend[w + 1], row[wo + 16];
    for (int x = 0; x < w; x++) blend[x] = r0[x] + fy * (r1[x] - r0[x]);
    blend[w] = blend[w - 1]; /* the last column's right neighbour (its weight is 0) */
    for (int x = 0; x < wo; x++) {
        const float a = blend[left[x]], b = blend[left[x] + 1];
        row[x] = a + frac[x] * (b - a);
    }
    const int64_t at = ((int64_t)c * op->ho + oy) * wo;
    finish_row(row, wo, c, &op->e, op->in2 ? op->in2 + at : NULL, op->out + at, op->out2 ? op->out2 + at : NULL);
}

/* 2x2 average pooling item, stride 2, ceil mode: a border window averages the pixels it has. */
static void avgpool_item(const op_t *op, int64_t item)
{
    const int c = (int)(item / op->ho), oy = (int)(item % op->ho);
    const int h = op->h, w = op->w;
    const float *ra = op->in + ((int64_t)c * h + 2 * oy) * w;
    const float *rb = 2 * oy + 1 < h ? ra + w : NULL;
    float *dst = op->out + ((int64_t)c * op->ho + oy) * op->wo;
    for (int x = 0; x < op->wo; x++) {
        const int xa = 2 * x, xb = 2 * x + 1;
        float sum = ra[xa];
        int count = 1;
        if (xb < w) { sum += ra[xb]; count++; }
        if (rb) { sum += rb[xa]; count++; if (xb < w) { sum += rb[xb]; count++; } }
        dst[x] = sum / (float)count;
    }
}

/* Affine + PReLU copy item: one row of one channel. */
static void affine_item(const op_t *op, int64_t item)
{
    const int c = (int)(item / op->h);
    const int64_t at = item * op->w;
    float row[op->w + 16];
    memcpy(row, op->in + at, (size_t)op->w * sizeof(float));
    finish_row(row, op->w, c, &op->e, NULL, op->out + at, op->out2 ? op->out2 + at : NULL);
}

static const float *at_offset(float *const *bases, int64_t buf, int64_t off) { return off < 0 ? NULL : bases[buf] + off; }

static op_t decode(const int64_t *r, float *const *bases)
{
    const float *w = bases[0];
    op_t op = {0};
    op.kind = (int)r[F_OP];
    op.in = bases[r[F_IN_BUF]] + r[F_IN_OFF];
    op.out = bases[r[F_OUT_BUF]] + r[F_OUT_OFF];
    op.in2 = at_offset(bases, r[F_IN2_BUF], r[F_IN2_OFF]);
    op.out2 = (float *)at_offset(bases, r[F_OUT2_BUF], r[F_OUT2_OFF]);
    op.res = at_offset(bases, r[F_RES_BUF], r[F_RES_OFF]);
    op.weight = at_offset(bases, 0, r[F_WEIGHT]);
    op.cin = (int)r[F_IN_C]; op.h = (int)r[F_IN_H]; op.w = (int)r[F_IN_W];
    op.cout = (int)r[F_OUT_C]; op.ho = (int)r[F_OUT_H]; op.wo = (int)r[F_OUT_W];
    op.kh = (int)r[F_KH]; op.kw = (int)r[F_KW]; op.s = (int)r[F_STRIDE];
    op.ph = (int)r[F_PH]; op.pw = (int)r[F_PW]; op.dh = (int)r[F_DH]; op.dw = (int)r[F_DW];
    op.e = (epilogue_t){at_offset(bases, 0, r[F_BIAS]), at_offset(bases, 0, r[F_AFF1]),
                        at_offset(bases, 0, r[F_PRELU1]), at_offset(bases, 0, r[F_AFF2]),
                        at_offset(bases, 0, r[F_PRELU2]), op.kind == OP_CONV ? op.cout : op.cin};
    op.weight2 = at_offset(bases, 0, r[F_WEIGHT2]);
    if (op.kind == OP_DWCONV && op.weight2) {
        /* first stage: bias + aff1 + prelu1; output: bias2 then aff2 + prelu2 */
        op.e1 = (epilogue_t){op.e.bias, op.e.aff1, op.e.prelu1, NULL, NULL, op.cin};
        op.e = (epilogue_t){at_offset(bases, 0, r[F_BIAS2]), NULL, NULL, op.e.aff2, op.e.prelu2, op.cin};
        op.k2 = (int)r[F_K2];
        op.p2 = (int)r[F_P2];
    }
    (void)w;
    switch (op.kind) {
    case OP_CONV:
        op.tile_c = r[F_TILE_C] == 6 ? 6 : 4;
        op.pointwise = op.kh == 1 && op.kw == 1 && op.s == 1 && op.ph == 0 && op.pw == 0;
        op.items = op.pointwise ? ((int64_t)op.ho * op.wo + TILE_N - 1) / TILE_N : op.ho;
        break;
    case OP_DWCONV: op.items = (int64_t)op.cin * ((op.h + DW_ROWS - 1) / DW_ROWS); break;
    case OP_AFFINE: op.items = (int64_t)op.cin * op.h; break;
    case OP_UPSAMPLE: case OP_AVGPOOL2: op.items = (int64_t)op.cin * op.ho; break;
    default: op.items = -1;
    }
    return op;
}

static void run_item(const op_t *op, int64_t item)
{
    switch (op->kind) {
    case OP_CONV: conv_item(op, item); break;
    case OP_DWCONV: dw_item(op, item); break;
    case OP_UPSAMPLE: upsample_item(op, item); break;
    case OP_AVGPOOL2: avgpool_item(op, item); break;
    case OP_AFFINE: affine_item(op, item); break;
    }
}

/* Run `count` op records (F_RECORD int64 each). bases: 0 weights, 1 arena, 2 input, 3 output.
 * If `seconds` is not NULL, seconds[i] receives the wall time at the end of record i.
 * Returns 0, or the 1-based index of the first record with an unknown op code. */
int c3_run(const int64_t *program, int count, const float *weights, float *arena, const float *input,
           float *output, int threads, double *seconds)
{
    float *bases[4] = {(float *)weights, arena, (float *)input, output};
    for (int i = 0; i < count; i++) {
        const int64_t op = program[(int64_t)i * F_RECORD + F_OP];
        if (op < OP_CONV || op > OP_AFFINE) return i + 1; /* checked before any thread starts */
    }
    #pragma omp parallel num_threads(threads)
    {
        for (int i = 0; i < count; i++) {
            const op_t op = decode(program + (int64_t)i * F_RECORD, bases);
            /* static: a thread keeps the same channels/rows from op to op, so they stay in its cache */
            #pragma omp for schedule(static)
            for (int64_t item = 0; item < op.items; item++) run_item(&op, item);
#ifdef _OPENMP
            if (seconds) {
                #pragma omp master
                seconds[i] = omp_get_wtime();
            }
#endif
        }
    }
    return 0;
}

int c3_record_size(void) { return F_RECORD; }
