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
 *   - depth-wise convolutions of any kernel shape and dilation run a channel plane at a
 *     time over a zero-padded copy, every tap one contiguous shifted run (dw_item);
 *   - bilinear upsampling (align_corners=True), 2x2 average pooling (ceil mode) and
 *     per-channel affine+PReLU copies complete the set.
 *
 * Portable C with GCC vector extensions: the build uses -march=native, and the vector
 * width (VL) and register tiles follow what it enables: 16 lanes with AVX-512, 8 with AVX2,
 * 4 with SSE.
 * Every arena tensor has 64 floats of slack after it (the Python side allocates it):
 * kernels read whole vectors or GEMM tiles (at most 64 floats) and drop the lanes past the end.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h> /* masked stores for row tails; the SSE path copies instead */
#endif

/* Vector width and GEMM register tile per instruction set: the tile (6 output channels x
 * TILE_V vectors of accumulators) must fit the register file (32 with AVX-512, 16 below). */
#if defined(__AVX512F__)
#define VL 16
#define TILE_V 4
#elif defined(__AVX__)
#define VL 8
#define TILE_V 2
#else
#define VL 4
#define TILE_V 2
#endif
#define TILE_N (VL * TILE_V) /* output pixels per GEMM tile; the builder's 64-float slack covers it */

typedef float vf __attribute__((vector_size(VL * 4)));
typedef int32_t iv __attribute__((vector_size(VL * 4)));
typedef int32_t alias_i32 __attribute__((may_alias)); /* int32 tables stored in the float weight blob */

static inline vf loadv(const float *p) { vf r; memcpy(&r, p, sizeof r); return r; }
static inline void storev(float *p, vf v) { memcpy(p, &v, sizeof v); }

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

static inline vf preluv(vf v, float slope)
{
    const vf zero = {0};
    const iv positive = v > zero;
    const vf scaled = slope * v;
    return (vf)((positive & (iv)v) | (~positive & (iv)scaled)); /* GCC vectors have no ?: in C */
}

/* Store the first n (<= VL) lanes of v. */
static inline void putv(float *dst, vf v, int n)
{
    if (n == VL) { storev(dst, v); return; }
#if defined(__AVX512F__)
    _mm512_mask_storeu_ps(dst, (__mmask16)((1u << n) - 1u), (__m512)v);
#elif defined(__AVX__)
    const iv lane = {0, 1, 2, 3, 4, 5, 6, 7};
    const iv count = {n, n, n, n, n, n, n, n};
    _mm256_maskstore_ps(dst, (__m256i)(lane < count), (__m256)v);
#else
    float tmp[VL];
    storev(tmp, v);
    memcpy(dst, tmp, (size_t)n * sizeof(float));
#endif
}

/* Epilogue of VL lanes of local channel c, then store the first n lanes. With dst2, dst gets
 * the value before the second affine/PReLU and dst2 the value after it. */
static inline void finishv(vf v, int c, const epilogue_t *e, const float *res, float *dst, float *dst2, int n)
{
    if (e->bias) v += e->bias[c];
    if (res) v += loadv(res);
    if (e->aff1) v = v * e->aff1[c] + e->aff1[e->channels + c];
    if (e->prelu1) v = preluv(v, e->prelu1[c]);
    if (dst2) putv(dst, v, n);
    if (e->aff2) v = v * e->aff2[c] + e->aff2[e->channels + c];
    if (e->prelu2) v = preluv(v, e->prelu2[c]);
    putv(dst2 ? dst2 : dst, v, n);
}

/* A row of n values of channel c through finishv, VL lanes at a time. */
static inline void finish_row(const float *row, int n, int c, const epilogue_t *e, const float *res, float *dst,
                              float *dst2)
{
    for (int x = 0; x < n; x += VL) {
        const int lanes = n - x < VL ? n - x : VL;
        finishv(loadv(row + x), c, e, res ? res + x : NULL, dst + x, dst2 ? dst2 + x : NULL, lanes);
    }
}

/* acc[j][q] = sum_k a[TC*k + j] * B_k[VL*q .. VL*q + VL) for j < TC output channels, q <
 * TILE_V; B_k = rows[k] + offset, or base + k * stride + offset when rows is NULL. The
 * TC * TILE_V accumulators stay in registers. */
#define DEFINE_GEMM_TILE(NAME, TC)                                                                        \
    static inline void NAME(int K, const float *restrict a, const float *const *restrict rows,           \
                            const float *base, int64_t stride, int64_t offset, vf acc[][TILE_V])          \
    {                                                                                                     \
        vf c[TC][TILE_V];                                                                                 \
        _Pragma("GCC unroll 8") for (int j = 0; j < TC; j++)                                             \
            _Pragma("GCC unroll 4") for (int q = 0; q < TILE_V; q++) c[j][q] = (vf){0};                  \
        for (int k = 0; k < K; k++) {                                                                     \
            const float *b = (rows ? rows[k] : base + k * stride) + offset;                               \
            vf bv[TILE_V];                                                                                \
            _Pragma("GCC unroll 4") for (int q = 0; q < TILE_V; q++) bv[q] = loadv(b + VL * q);         \
            _Pragma("GCC unroll 8") for (int j = 0; j < TC; j++) {                                        \
                const float aj = a[TC * k + j];                                                           \
                _Pragma("GCC unroll 4") for (int q = 0; q < TILE_V; q++) c[j][q] += aj * bv[q];          \
            }                                                                                             \
        }                                                                                                 \
        _Pragma("GCC unroll 8") for (int j = 0; j < TC; j++)                                             \
            _Pragma("GCC unroll 4") for (int q = 0; q < TILE_V; q++) acc[j][q] = c[j][q];                \
    }
DEFINE_GEMM_TILE(gemm_tile4, 4)
DEFINE_GEMM_TILE(gemm_tile6, 6)

/* All output channels of one tile of up to TILE_N output pixels starting at plane position pos. */
static void conv_tile(const op_t *op, const float *const *rows, const float *base, int64_t stride,
                      int64_t b_offset, int64_t pos, int valid)
{
    const int K = op->cin * op->kh * op->kw;
    const int64_t plane = (int64_t)op->ho * op->wo;
    const int tc = op->tile_c;
    vf acc[6][TILE_V];
    for (int c0 = 0; c0 < op->cout; c0 += tc) {
        if (tc == 6) gemm_tile6(K, op->weight + (int64_t)c0 * K, rows, base, stride, b_offset, acc);
        else gemm_tile4(K, op->weight + (int64_t)c0 * K, rows, base, stride, b_offset, acc);
        const int nc = op->cout - c0 < tc ? op->cout - c0 : tc;
        for (int j = 0; j < nc; j++) {
            const int c = c0 + j;
            const int64_t at = c * plane + pos;
            for (int q = 0; q < TILE_V && VL * q < valid; q++) {
                const int lanes = valid - VL * q < VL ? valid - VL * q : VL;
                finishv(acc[j][q], c, &op->e, op->res ? op->res + at + VL * q : NULL, op->out + at + VL * q,
                        op->out2 ? op->out2 + at + VL * q : NULL, lanes);
            }
        }
    }
}

/* dst[j] = src[2j] for j < n, VL at a time from the even lanes of two vectors; the last VL
 * come from the odd lanes of a window starting one float earlier, so nothing past
 * src[2n - 2] is read. */
static void gather_even(float *restrict dst, const float *restrict src, int n)
{
#if VL == 16
    const iv even = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
#elif VL == 8
    const iv even = {0, 2, 4, 6, 8, 10, 12, 14};
#else
    const iv even = {0, 2, 4, 6};
#endif
    const iv odd = even + 1;
    if (n < VL + 1) { for (int j = 0; j < n; j++) dst[j] = src[2 * j]; return; }
    for (int j = 0; j + VL + 1 <= n; j += VL)
        storev(dst + j, __builtin_shuffle(loadv(src + 2 * j), loadv(src + 2 * j + VL), even));
    const float *tail = src + 2 * (n - VL) - 1;
    storev(dst + n - VL, __builtin_shuffle(loadv(tail), loadv(tail + VL), odd));
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

/* Convolution item. 1x1 stride 1: a TILE_N-pixel tile of the flattened plane, read in place.
 * Otherwise one output row, TILE_N columns at a time: the kh input rows it needs are split
 * into `s` column phases in a small per-thread buffer (phase p, column j holds input
 * column s*j + p - pw), so every (ci, ky, kx) tap is a contiguous run of TILE_N values. */
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

/* Depth-wise convolution of one channel plane, flattened. The plane is copied once into a
 * zero-padded buffer whose rows are W + pw apart (the zeros between two rows serve as the
 * right padding of one and the left padding of the next, ph zero rows above and below), so
 * every tap (ky, kx) is the same contiguous run shifted by ky*dh*stride + kx*dw - pw: the
 * whole plane is one loop of 8-vector blocks with all taps summed in registers, no per-row
 * work. The (stride - W) padding columns computed along the way are dropped when storing.
 * With a second stage (a C3 block's 1 x k2 conv after its k x 1 one) the first stage's
 * rows go through its epilogue into a second padded plane and the row conv runs on that,
 * so the intermediate tensor is never stored. */
#define FLAT_BLOCK (8 * VL) /* floats per block of taps_flat: eight accumulators */

static size_t padded_plane_floats(int h, int w, int ph, int pw)
{
    const size_t stride = (size_t)w + pw;
    return (size_t)pw + (h + 2 * ph) * stride + 2 * FLAT_BLOCK + pw + 16 + VL; /* + room for whole-block reads */
}

static size_t dw_scratch_floats(const op_t *op)
{
    const size_t plane = (size_t)op->h * (op->w + op->pw) + FLAT_BLOCK;
    size_t need = padded_plane_floats(op->h, op->w, op->ph, op->pw) + plane;
    if (op->weight2) need += padded_plane_floats(op->h, op->w, 0, op->p2) + (size_t)op->h * (op->w + op->p2) + FLAT_BLOCK;
    return need + 64;
}

/* Zero-padded copy of a plane: padded row r is source row r - ph (rows src_stride apart), or
 * zeros; pw zeros follow each row. Rows are written in order with whole vectors, each
 * spilling into the next row's start before that row is written (the source may be
 * over-read the same way: arena tensors have slack). Returns padded row 0, column 0. */
static float *pad_plane(float *dst, const float *src, int h, int w, int src_stride, int ph, int pw)
{
    const int stride = w + pw, rows = h + 2 * ph;
    const vf zero = {0};
    for (int x = 0; x < pw; x += VL) storev(dst + x, zero);
    float *base = dst + pw;
    for (int r = 0; r < rows; r++) {
        float *row = base + (int64_t)r * stride;
        const int y = r - ph;
        if (y < 0 || y >= h) {
            for (int x = 0; x < stride; x += VL) storev(row + x, zero);
            continue;
        }
        const float *from = src + (int64_t)y * src_stride;
        for (int x = 0; x < w; x += VL) storev(row + x, loadv(from + x));
        for (int x = w; x < stride; x += VL) storev(row + x, zero);
    }
    for (int x = 0; x < 2 * FLAT_BLOCK + 16; x += VL) storev(base + (int64_t)rows * stride + x, zero);
    return base;
}

/* acc[q] = sum_t weight[t] * base[q + offset[t]] for q < n (rounded up to FLAT_BLOCK): eight
 * independent accumulators, enough to keep both FMA units busy despite their latency. */
static void taps_flat(const float *base, int n, const float *weight, const int *offset, int taps, float *acc)
{
    const vf zero = {0};
    for (int q = 0; q < n; q += FLAT_BLOCK) {
        vf a0 = zero, a1 = zero, a2 = zero, a3 = zero, a4 = zero, a5 = zero, a6 = zero, a7 = zero;
        for (int t = 0; t < taps; t++) {
            const float wv = weight[t];
            const float *p = base + q + offset[t];
            a0 += wv * loadv(p); a1 += wv * loadv(p + VL); a2 += wv * loadv(p + 2 * VL); a3 += wv * loadv(p + 3 * VL);
            a4 += wv * loadv(p + 4 * VL); a5 += wv * loadv(p + 5 * VL); a6 += wv * loadv(p + 6 * VL);
            a7 += wv * loadv(p + 7 * VL);
        }
        storev(acc + q, a0); storev(acc + q + VL, a1); storev(acc + q + 2 * VL, a2); storev(acc + q + 3 * VL, a3);
        storev(acc + q + 4 * VL, a4); storev(acc + q + 5 * VL, a5); storev(acc + q + 6 * VL, a6);
        storev(acc + q + 7 * VL, a7);
    }
}

static void dw_item(const op_t *op, int64_t item, float *scratch)
{
    const int c = (int)item, h = op->h, w = op->w, kh = op->kh, kw = op->kw;
    const int stride = w + op->pw;
    const int64_t plane = (int64_t)h * w;
    float *padded = scratch;
    float *acc = padded + padded_plane_floats(h, w, op->ph, op->pw);
    const float *base = pad_plane(padded, op->in + c * plane, h, w, w, op->ph, op->pw);
    int offset[kh * kw];
    for (int ky = 0, t = 0; ky < kh; ky++)
        for (int kx = 0; kx < kw; kx++, t++) offset[t] = ky * op->dh * stride + kx * op->dw - op->pw;
    taps_flat(base, h * stride, op->weight + (int64_t)c * kh * kw, offset, kh * kw, acc);
    float *out = op->out + c * plane, *out2 = op->out2 ? op->out2 + c * plane : NULL;
    if (!op->weight2) {
        for (int y = 0; y < h; y++)
            finish_row(acc + (int64_t)y * stride, w, c, &op->e, NULL, out + (int64_t)y * w,
                       out2 ? out2 + (int64_t)y * w : NULL);
        return;
    }
    /* second stage: first-stage epilogue into a padded plane (rows w + p2 apart), then 1 x k2 */
    const int stride2 = w + op->p2;
    float *padded2 = acc + (int64_t)h * stride + FLAT_BLOCK;
    float *acc2 = padded2 + padded_plane_floats(h, w, 0, op->p2);
    const vf zero = {0};
    for (int x = 0; x < op->p2; x += VL) storev(padded2 + x, zero);
    float *base2 = padded2 + op->p2;
    for (int y = 0; y < h; y++) { /* in order: each row's zeros spill into the next row's start */
        float *row = base2 + (int64_t)y * stride2;
        finish_row(acc + (int64_t)y * stride, w, c, &op->e1, NULL, row, NULL);
        for (int x = w; x < stride2; x += VL) storev(row + x, zero);
    }
    for (int x = 0; x < 2 * FLAT_BLOCK + 16; x += VL) storev(base2 + (int64_t)h * stride2 + x, zero);
    int offset2[op->k2];
    for (int kx = 0; kx < op->k2; kx++) offset2[kx] = kx - op->p2;
    taps_flat(base2, h * stride2, op->weight2 + (int64_t)c * op->k2, offset2, op->k2, acc2);
    for (int y = 0; y < h; y++)
        finish_row(acc2 + (int64_t)y * stride2, w, c, &op->e, NULL, out + (int64_t)y * w,
                   out2 ? out2 + (int64_t)y * w : NULL);
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
    /* column table from the weights, per block of 16 output columns: the block's first source
     * column, each lane's source column relative to it, each lane's weight (upsample_columns) */
    const int blocks = (wo + 15) / 16;
    const alias_i32 *first = (const alias_i32 *)op->weight;
    const float *lane_index = op->weight + blocks, *lane_weight = op->weight + blocks + 16 * blocks;
    float blend[w + 64], row[wo + 16];
    for (int x = 0; x < w; x++) blend[x] = r0[x] + fy * (r1[x] - r0[x]);
    for (int x = w; x < w + 64; x++) blend[x] = blend[w - 1]; /* right neighbours of the last column */
    for (int k = 0; k < blocks; k++)
        for (int sub = 0; sub < 16; sub += VL) { /* VL lanes of the table's 16-column block */
            iv idx;
            memcpy(&idx, lane_index + 16 * k + sub, sizeof idx);
            const vf f = loadv(lane_weight + 16 * k + sub);
            const float *src = blend + first[k] + idx[0];
            idx -= idx[0];
            if (idx[VL - 1] < 2 * VL - 1) { /* upsampling: VL outputs within 2 VL inputs, two shuffles */
                const vf a = loadv(src), b = loadv(src + VL);
                const vf lo = __builtin_shuffle(a, b, idx), hi = __builtin_shuffle(a, b, idx + 1);
                storev(row + 16 * k + sub, lo + f * (hi - lo));
            } else {
                for (int i = 0; i < VL; i++)
                    row[16 * k + sub + i] = src[idx[i]] + f[i] * (src[idx[i] + 1] - src[idx[i]]);
            }
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
    case OP_DWCONV: op.items = op.cin; break;
    case OP_AFFINE: op.items = (int64_t)op.cin * op.h; break;
    case OP_UPSAMPLE: case OP_AVGPOOL2: op.items = (int64_t)op.cin * op.ho; break;
    default: op.items = -1;
    }
    return op;
}

static void run_item(const op_t *op, int64_t item, float *scratch)
{
    switch (op->kind) {
    case OP_CONV: conv_item(op, item); break;
    case OP_DWCONV: dw_item(op, item, scratch); break;
    case OP_UPSAMPLE: upsample_item(op, item); break;
    case OP_AVGPOOL2: avgpool_item(op, item); break;
    case OP_AFFINE: affine_item(op, item); break;
    }
}

/* Run `count` op records (F_RECORD int64 each). bases: 0 weights, 1 arena, 2 input, 3 output.
 * If `seconds` is not NULL, seconds[i] receives the wall time at the end of record i.
 * Returns 0; the 1-based index of the first record with an unknown op code; or -1 when a
 * thread's scratch (the largest depth-wise plane buffers) cannot be allocated. */
int c3_run(const int64_t *program, int count, const float *weights, float *arena, const float *input,
           float *output, int threads, double *seconds)
{
    float *bases[4] = {(float *)weights, arena, (float *)input, output};
    size_t scratch_floats = 16; /* per thread: the largest depth-wise plane buffers */
    for (int i = 0; i < count; i++) {
        const int64_t *r = program + (int64_t)i * F_RECORD;
        if (r[F_OP] < OP_CONV || r[F_OP] > OP_AFFINE) return i + 1; /* checked before any thread starts */
        if (r[F_OP] == OP_DWCONV) {
            const op_t op = decode(r, bases);
            const size_t need = dw_scratch_floats(&op);
            if (need > scratch_floats) scratch_floats = need;
        }
    }
    int failed = 0;
    #pragma omp parallel num_threads(threads)
    {
        void *scratch = NULL;
        if (posix_memalign(&scratch, 64, scratch_floats * sizeof(float)) != 0) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp barrier
        for (int i = 0; i < count && !failed; i++) {
            const op_t op = decode(program + (int64_t)i * F_RECORD, bases);
            /* static: a thread keeps the same channels/rows from op to op, so they stay in its cache */
            #pragma omp for schedule(static)
            for (int64_t item = 0; item < op.items; item++) run_item(&op, item, scratch);
#ifdef _OPENMP
            if (seconds) {
                #pragma omp master
                seconds[i] = omp_get_wtime();
            }
#endif
        }
        free(scratch);
    }
    return failed ? -1 : 0;
}

int c3_record_size(void) { return F_RECORD; }
