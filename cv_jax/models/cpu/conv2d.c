/* 2-D convolution kernels for the CPU, called from XLA through its FFI
   (cv_jax/models/cpu_kernels.py). float32, row-major NHWC activations and HWIO kernels
   (flax's layouts); input positions outside the image count as zeros (the padding).

   Forward:          y[n, oh, ow, co] = sum over kh, kw, ci of x[n, ih, iw, ci] * w[kh, kw, ci, co]
   Weight gradient: dW[kh, kw, ci, co] = sum over n, oh, ow of x[n, ih, iw, ci] * dy[n, oh, ow, co]
   where ih = oh * stride_h + kh - pad_h and iw = ow * stride_w + kw - pad_w. (The input gradient
   of a stride-1 convolution is the forward convolution of dy with the flipped, transposed
   kernel, so the caller uses the forward kernel for that too.)

   Both keep a register tile of accumulators (GCC vector extensions, compiled with
   -march=native: 16-float vectors where the CPU has AVX-512, else 8) and run it over output
   pixels; each row of pixels (or of input channels) is cut into the fewest tiles that fit the
   register file, of near-equal widths, and each width has its own unrolled function. The
   batch is split into chunks that XLA's own intra-op threads work through. XLA:CPU instead hands its convolutions to Eigen, which packs
   its operands into fresh buffers on every call, and for the weight gradient first transposes
   both operands so that the batch becomes the contracted dimension. The output channel count
   CO must be a multiple of 8 (the caller checks). Partial weight gradients are added in chunk
   order, so results do not depend on the number of threads or on scheduling. */

#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "xla/ffi/api/c_api.h"

/* The vector type of the register tiles: 16 floats where the CPU has AVX-512 (32 vector
   registers, so tiles of up to 24 accumulators), else 8 (AVX2: 16 registers, 12). Output
   channels left over after the full vectors (8 of them, on AVX-512) use 8-float vectors. */
#ifdef __AVX512F__
typedef float vec __attribute__((vector_size(64)));
#define LANES 16
#define MAX_ACC 24
#else
typedef float vec __attribute__((vector_size(32)));
#define LANES 8
#define MAX_ACC 12
#endif
typedef float v8 __attribute__((vector_size(32)));

#define LOAD(T, p) ({ T v_; memcpy(&v_, (p), sizeof v_); v_; })
#define STORE(p, v) do { __typeof__(v) v_ = (v); memcpy((p), &v_, sizeof v_); } while (0)
static inline v8 splat_v8(float f) { return (v8){f, f, f, f, f, f, f, f}; }
#if LANES == 16
static inline vec splat_vec(float f) {
  return (vec){f, f, f, f, f, f, f, f, f, f, f, f, f, f, f, f};
}
#else
#define splat_vec splat_v8
#endif

typedef struct {
  const float *x, *other; /* other: w (forward) or dy (weight gradient) */
  float *out;             /* y, or this thread's partial dW */
  int64_t n0, n1;         /* this chunk's images */
  int64_t H, W, C, OH, OW, CO, KH, KW, sh, sw, ph, pw;
} Work;

/* First and one-past-last output index o whose input index o * s + k - p lies in [0, size). */
static void valid_range(int64_t size, int64_t out_size, int64_t s, int64_t k, int64_t p,
                        int64_t *lo, int64_t *hi) {
  int64_t first = p - k > 0 ? (p - k + s - 1) / s : 0;
  int64_t last = size - 1 + p - k >= 0 ? (size - 1 + p - k) / s + 1 : 0;
  *lo = first;
  *hi = last < out_size ? last : out_size;
}

/* Tiles are instantiated for every width 1 .. MAX_ACC / (vectors per tile). */
#define UPTO3(M, ...) M(1, __VA_ARGS__) M(2, __VA_ARGS__) M(3, __VA_ARGS__)
#define UPTO6(M, ...) UPTO3(M, __VA_ARGS__) M(4, __VA_ARGS__) M(5, __VA_ARGS__) M(6, __VA_ARGS__)
#define UPTO12(M, ...) UPTO6(M, __VA_ARGS__) M(7, __VA_ARGS__) M(8, __VA_ARGS__) \
  M(9, __VA_ARGS__) M(10, __VA_ARGS__) M(11, __VA_ARGS__) M(12, __VA_ARGS__)
#define UPTO24(M, ...) UPTO12(M, __VA_ARGS__) M(13, __VA_ARGS__) M(14, __VA_ARGS__) \
  M(15, __VA_ARGS__) M(16, __VA_ARGS__) M(17, __VA_ARGS__) M(18, __VA_ARGS__)       \
  M(19, __VA_ARGS__) M(20, __VA_ARGS__) M(21, __VA_ARGS__) M(22, __VA_ARGS__)       \
  M(23, __VA_ARGS__) M(24, __VA_ARGS__)
#if MAX_ACC == 24
#define WIDTHS_1 UPTO24
#define WIDTHS_2 UPTO12
#define WIDTHS_4 UPTO6
#else
#define WIDTHS_1 UPTO12
#define WIDTHS_2 UPTO6
#define WIDTHS_4 UPTO3
#endif
#define WIDTHS_8LANE UPTO12 /* the 8 channels left over on AVX-512 */
/* 3-tap weight-gradient tiles: 3 accumulators per input channel */
#define UPTO4(M, ...) UPTO3(M, __VA_ARGS__) M(4, __VA_ARGS__)
#define UPTO8(M, ...) UPTO6(M, __VA_ARGS__) M(7, __VA_ARGS__) M(8, __VA_ARGS__)
#if MAX_ACC == 24
#define WIDTHS_FOLD UPTO8
#else
#define WIDTHS_FOLD UPTO4
#endif

/* A family of tiles: functions for widths 1 .. max, each covering `channels` output channels. */
typedef struct {
  const void *const *fns;
  int64_t max, channels;
} Tiles;

/* The family for the output channels from co on: the widest of 4, 2 or 1 vectors that fits,
   else (on AVX-512, 8 channels left) one 8-float vector. */
static const Tiles *tiles_for(const Tiles families[4], int64_t remaining) {
  if (remaining >= 4 * LANES) return &families[0];
  if (remaining >= 2 * LANES) return &families[1];
  return remaining >= LANES ? &families[2] : &families[3];
}

/* Splits `total` pixels or channels into the fewest tiles of at most `max`, of near-equal
   widths: the width of tile starting at `done`. */
static int64_t tile_width(int64_t total, int64_t done, int64_t max) {
  int64_t parts = (total + max - 1) / max, base = total / parts, wide = total % parts;
  return done < wide * (base + 1) ? base + 1 : base;
}

/* The tile functions of a pass for 4, 2 and 1 vectors and for 8 leftover channels (8-float
   vectors; never used where the vectors are 8 floats already), and their table NAME_tiles
   in the order tiles_for expects. */
#define ENTRY(N, NAME) NAME##_##N,
#define FAMILY(NAME, VECTORS, LANES_)                                                        \
  { NAME##_fns, (int64_t)(sizeof NAME##_fns / sizeof NAME##_fns[0]), (VECTORS) * (LANES_) }
#define FAMILIES(TILE, NAME)                                                                 \
  WIDTHS_4(TILE, 4, vec, NAME##_4)                                                           \
  WIDTHS_2(TILE, 2, vec, NAME##_2)                                                           \
  WIDTHS_1(TILE, 1, vec, NAME##_1)                                                           \
  WIDTHS_8LANE(TILE, 1, v8, NAME##_8lane)                                                    \
  static const void *const NAME##_4_fns[] = {WIDTHS_4(ENTRY, NAME##_4)};                     \
  static const void *const NAME##_2_fns[] = {WIDTHS_2(ENTRY, NAME##_2)};                     \
  static const void *const NAME##_1_fns[] = {WIDTHS_1(ENTRY, NAME##_1)};                     \
  static const void *const NAME##_8lane_fns[] = {WIDTHS_8LANE(ENTRY, NAME##_8lane)};         \
  static const Tiles NAME##_tiles[4] = {FAMILY(NAME##_4, 4, LANES), FAMILY(NAME##_2, 2, LANES), \
                                        FAMILY(NAME##_1, 1, LANES), FAMILY(NAME##_8lane, 1, 8)};

/* ---- forward ---- */

/* The forward pass reads each image from a copy whose rows carry the padding columns as zeros,
   so every output pixel's taps are in range along the width (rows out of range are skipped
   as a whole). */
typedef struct {
  const float *x; /* the padded copy of one image: H rows of WP pixels of C channels */
  int64_t WP, shift; /* padded row width; buffer column of ow * sw + kw is that + shift */
} Padded;

typedef void (*forward_tile)(const Work *, const Padded *, const float *, float *, int64_t,
                             int64_t);

/* y[oh, ow0 .. ow0 + NPIX) x [co0 .. co0 + NV vectors of T) of one image (w and y point at
   column co0 of the kernel and of the image's output). */
#define FORWARD_TILE(NPIX, NV, T, NAME)                                                      \
  static void NAME##_##NPIX(const Work *k, const Padded *in, const float *w, float *y,       \
                            int64_t oh, int64_t ow0) {                                       \
    enum { L = sizeof(T) / sizeof(float) };                                                  \
    T a[NPIX][NV];                                                                           \
    for (int p = 0; p < NPIX; ++p)                                                           \
      for (int v = 0; v < NV; ++v) a[p][v] = (T){0};                                         \
    for (int64_t kh = 0; kh < k->KH; ++kh) {                                                 \
      int64_t ih = oh * k->sh + kh - k->ph;                                                  \
      if (ih < 0 || ih >= k->H) continue;                                                    \
      for (int64_t kw = 0; kw < k->KW; ++kw) {                                               \
        const float *xp = in->x + (ih * in->WP + ow0 * k->sw + kw + in->shift) * k->C;       \
        const float *wp = w + (kh * k->KW + kw) * k->C * k->CO;                              \
        for (int64_t ci = 0; ci < k->C; ++ci) {                                              \
          T g[NV];                                                                           \
          for (int v = 0; v < NV; ++v) g[v] = LOAD(T, wp + ci * k->CO + L * v);             \
          for (int p = 0; p < NPIX; ++p) {                                                   \
            T b = splat_##T(xp[p * k->sw * k->C + ci]);                                       \
            for (int v = 0; v < NV; ++v) a[p][v] += b * g[v];                                \
          }                                                                                  \
        }                                                                                    \
      }                                                                                      \
    }                                                                                        \
    for (int p = 0; p < NPIX; ++p)                                                           \
      for (int v = 0; v < NV; ++v) STORE(y + (oh * k->OW + ow0 + p) * k->CO + L * v, a[p][v]); \
  }

FAMILIES(FORWARD_TILE, forward)

/* The one-vector tile of a stride-1 convolution 3 taps wide (16 output channels, on AVX-512):
   each input pixel is broadcast once per input channel and used by all three taps, for the
   accumulators of the output pixels it reaches, instead of once per tap (one broadcast per
   FMA). 2.7 -> 2.2 ms at 32x32x16 -> 16, batch 128, on the Intel machine. */
#define FOLD3_TILE(NPIX, NAME)                                                               \
  static void NAME##_##NPIX(const Work *k, const Padded *in, const float *w, float *y,       \
                            int64_t oh, int64_t ow0) {                                       \
    vec a[NPIX];                                                                             \
    for (int p = 0; p < NPIX; ++p) a[p] = (vec){0};                                          \
    for (int64_t kh = 0; kh < k->KH; ++kh) {                                                 \
      int64_t ih = oh * k->sh + kh - k->ph;                                                  \
      if (ih < 0 || ih >= k->H) continue;                                                    \
      const float *xp = in->x + (ih * in->WP + ow0 + in->shift) * k->C;                      \
      const float *wp = w + kh * 3 * k->C * k->CO;                                           \
      for (int64_t ci = 0; ci < k->C; ++ci) {                                                \
        vec g0 = LOAD(vec, wp + ci * k->CO), g1 = LOAD(vec, wp + (k->C + ci) * k->CO),       \
            g2 = LOAD(vec, wp + (2 * k->C + ci) * k->CO);                                    \
        _Pragma("GCC unroll 32")                                                             \
        for (int q = 0; q < NPIX + 2; ++q) {                                                 \
          vec b = splat_vec(xp[q * k->C + ci]);                                              \
          if (q < NPIX) a[q] += b * g0;                                                      \
          if (q >= 1 && q <= NPIX) a[q - 1] += b * g1;                                       \
          if (q >= 2) a[q - 2] += b * g2;                                                    \
        }                                                                                    \
      }                                                                                      \
    }                                                                                        \
    for (int p = 0; p < NPIX; ++p) STORE(y + (oh * k->OW + ow0 + p) * k->CO, a[p]);          \
  }
#define FOLD3(N, NAME) FOLD3_TILE(N, NAME)
WIDTHS_1(FOLD3, fold3)
static const void *const fold3_fns[] = {WIDTHS_1(ENTRY, fold3)};
static const Tiles fold3_tiles = FAMILY(fold3, 1, LANES);

/* Width of a padded input row: `left` zero columns, the image's W, and as many on the right as
   the last output column's taps reach past the image. */
static int64_t padded_width(const Work *k, int64_t *left) {
  int64_t right = (k->OW - 1) * k->sw + k->KW - k->pw - k->W;
  *left = k->pw > 0 ? k->pw : 0;
  return *left + k->W + (right > 0 ? right : 0);
}

/* buffer: room for one padded image, zeros in the padding columns (they are never written). */
static void forward(const Work *k, float *buffer) {
  int64_t left;
  int64_t width = padded_width(k, &left);
  Padded in = {buffer, width, left - k->pw};
  for (int64_t n = k->n0; n < k->n1; ++n) {
    const float *x = k->x + n * k->H * k->W * k->C;
    for (int64_t ih = 0; ih < k->H; ++ih)
      memcpy(buffer + (ih * in.WP + left) * k->C, x + ih * k->W * k->C,
             (size_t)(k->W * k->C) * sizeof(float));
    float *y = k->out + n * k->OH * k->OW * k->CO;
    for (int64_t oh = 0; oh < k->OH; ++oh) {
      for (int64_t co = 0; co < k->CO;) {
        const Tiles *tiles = tiles_for(forward_tiles, k->CO - co);
        if (tiles == &forward_tiles[2] && k->KW == 3 && k->sw == 1) tiles = &fold3_tiles;
        for (int64_t ow = 0; ow < k->OW;) {
          int64_t pixels = tile_width(k->OW, ow, tiles->max);
          ((forward_tile)tiles->fns[pixels - 1])(k, &in, k->other + co, y + co, oh, ow);
          ow += pixels;
        }
        co += tiles->channels;
      }
    }
  }
}

/* ---- weight gradient ---- */

typedef void (*weight_tile)(float *, const Work *, const float *, const float *, int64_t,
                            int64_t, int64_t, int64_t, int64_t, int64_t);

/* One register tile, dW[ci0 .. ci0 + NCI) x [co0 .. co0 + NV vectors of T) of one kernel tap,
   summed over output rows [oh_lo, oh_hi) and columns [lo, hi) of one image (those whose input
   pixel oh * sh + dh, ow * sw + dw lies inside it); x and dy point at the image's channel
   ci0 / co0. */
#define WEIGHT_TILE(NCI, NV, T, NAME)                                                          \
  static void NAME##_##NCI(float *acc, const Work *k, const float *x, const float *dy,        \
                           int64_t oh_lo, int64_t oh_hi, int64_t dh, int64_t lo, int64_t hi,  \
                           int64_t dw) {                                                      \
    enum { L = sizeof(T) / sizeof(float) };                                                   \
    T a[NCI][NV];                                                                             \
    for (int j = 0; j < NCI; ++j)                                                             \
      for (int v = 0; v < NV; ++v) a[j][v] = LOAD(T, acc + j * k->CO + L * v);                \
    for (int64_t oh = oh_lo; oh < oh_hi; ++oh) {                                              \
      const float *xrow = x + (oh * k->sh + dh) * k->W * k->C;                                \
      const float *gyrow = dy + oh * k->OW * k->CO;                                           \
      for (int64_t ow = lo; ow < hi; ++ow) {                                                  \
        const float *xp = xrow + (ow * k->sw + dw) * k->C;                                    \
        T g[NV];                                                                              \
        for (int v = 0; v < NV; ++v) g[v] = LOAD(T, gyrow + ow * k->CO + L * v);              \
        for (int j = 0; j < NCI; ++j) {                                                       \
          T b = splat_##T(xp[j]);                                                              \
          for (int v = 0; v < NV; ++v) a[j][v] += b * g[v];                                   \
        }                                                                                     \
      }                                                                                       \
    }                                                                                         \
    for (int j = 0; j < NCI; ++j)                                                             \
      for (int v = 0; v < NV; ++v) STORE(acc + j * k->CO + L * v, a[j][v]);                   \
  }

FAMILIES(WEIGHT_TILE, weight)

/* The weight gradient of a stride-1 convolution 3 taps wide, for one vector of output
   channels: the taps (kh, 0..2) together, dW[kh, kw, ci0 .. ci0 + NCI) summed over output rows
   [oh_lo, oh_hi) of one image, each input pixel broadcast once for the three taps (as
   FOLD3_TILE does). dy is read from a copy with zero columns (Padded), so every input column
   iw meets output columns iw + pw - kw in range; acc points at dW[kh, 0, ci0, co0], x at the
   image's channel ci0 and dyp at the copy's column co0. */
#define WEIGHT_FOLD3_TILE(NCI, NAME)                                                         \
  static void NAME##_##NCI(float *acc, const Work *k, const float *x, const Padded *dyp,     \
                           int64_t oh_lo, int64_t oh_hi, int64_t dh) {                       \
    vec a[3][NCI];                                                                           \
    for (int t = 0; t < 3; ++t)                                                              \
      for (int j = 0; j < NCI; ++j) a[t][j] = LOAD(vec, acc + (t * k->C + j) * k->CO);       \
    for (int64_t oh = oh_lo; oh < oh_hi; ++oh) {                                             \
      const float *xrow = x + (oh * k->sh + dh) * k->W * k->C;                               \
      const float *grow = dyp->x + (oh * dyp->WP + k->pw + dyp->shift) * k->CO;              \
      for (int64_t iw = 0; iw < k->W; ++iw) {                                                \
        vec g0 = LOAD(vec, grow + iw * k->CO), g1 = LOAD(vec, grow + (iw - 1) * k->CO),      \
            g2 = LOAD(vec, grow + (iw - 2) * k->CO);                                         \
        _Pragma("GCC unroll 8")                                                              \
        for (int j = 0; j < NCI; ++j) {                                                      \
          vec b = splat_vec(xrow[iw * k->C + j]);                                            \
          a[0][j] += b * g0;                                                                 \
          a[1][j] += b * g1;                                                                 \
          a[2][j] += b * g2;                                                                 \
        }                                                                                    \
      }                                                                                      \
    }                                                                                        \
    for (int t = 0; t < 3; ++t)                                                              \
      for (int j = 0; j < NCI; ++j) STORE(acc + (t * k->C + j) * k->CO, a[t][j]);            \
  }
#define WEIGHT_FOLD3(N, NAME) WEIGHT_FOLD3_TILE(N, NAME)
WIDTHS_FOLD(WEIGHT_FOLD3, weight_fold3)
static const void *const weight_fold3_fns[] = {WIDTHS_FOLD(ENTRY, weight_fold3)};
typedef void (*weight_fold3_tile)(float *, const Work *, const float *, const Padded *,
                                  int64_t, int64_t, int64_t);

static int uses_weight_fold3(const Work *k) { return k->KW == 3 && k->sw == 1; }

/* The zero columns of the dy copy the 3-tap tiles read: output columns from pw - 2 to
   W - 1 + pw. */
static int64_t padded_dy_width(const Work *k, int64_t *left) {
  int64_t right = k->W + k->pw - k->OW;
  *left = k->pw < 2 ? 2 - k->pw : 0;
  return *left + k->OW + (right > 0 ? right : 0);
}

/* scratch: room for one image's dy copy, zeros in the padding columns, where the 3-tap tiles
   apply (uses_weight_fold3). */
static void weight_grad(const Work *k, float *scratch) {
  int64_t left = 0;
  Padded dyp = {scratch, uses_weight_fold3(k) ? padded_dy_width(k, &left) : 0, 0};
  dyp.shift = left;
  for (int64_t n = k->n0; n < k->n1; ++n) {
    const float *x = k->x + n * k->H * k->W * k->C;
    const float *dy = k->other + n * k->OH * k->OW * k->CO;
    if (uses_weight_fold3(k))
      for (int64_t oh = 0; oh < k->OH; ++oh)
        memcpy(scratch + (oh * dyp.WP + left) * k->CO, dy + oh * k->OW * k->CO,
               (size_t)(k->OW * k->CO) * sizeof(float));
    for (int64_t kh = 0; kh < k->KH; ++kh) {
      int64_t oh_lo, oh_hi, lo, hi;
      valid_range(k->H, k->OH, k->sh, kh, k->ph, &oh_lo, &oh_hi);
      if (oh_lo >= oh_hi) continue;
      int64_t dh = kh - k->ph;
      for (int64_t co = 0; co < k->CO;) {
        const Tiles *tiles = tiles_for(weight_tiles, k->CO - co);
        if (tiles == &weight_tiles[2] && uses_weight_fold3(k)) {
          int64_t max = sizeof weight_fold3_fns / sizeof weight_fold3_fns[0];
          Padded at = {dyp.x + co, dyp.WP, dyp.shift};
          for (int64_t ci = 0; ci < k->C;) {
            int64_t channels = tile_width(k->C, ci, max);
            ((weight_fold3_tile)weight_fold3_fns[channels - 1])(
                k->out + (kh * 3 * k->C + ci) * k->CO + co, k, x + ci, &at, oh_lo, oh_hi, dh);
            ci += channels;
          }
          co += tiles->channels;
          continue;
        }
        for (int64_t kw = 0; kw < k->KW; ++kw) {
          valid_range(k->W, k->OW, k->sw, kw, k->pw, &lo, &hi);
          if (lo >= hi) continue;
          float *tap = k->out + (kh * k->KW + kw) * k->C * k->CO;
          for (int64_t ci = 0; ci < k->C;) {
            int64_t channels = tile_width(k->C, ci, tiles->max);
            ((weight_tile)tiles->fns[channels - 1])(tap + ci * k->CO + co, k, x + ci, dy + co,
                                                    oh_lo, oh_hi, dh, lo, hi, kw - k->pw);
            ci += channels;
          }
        }
        co += tiles->channels;
      }
    }
  }
}

/* ---- parallel runs on XLA's thread pool ---- */

/* The batch is cut into a fixed number of chunks (so results do not depend on the number of
   threads). The calling thread and up to (pool threads - 1) tasks scheduled on XLA's intra-op
   pool claim chunks from a shared counter; the caller then waits only for chunks that running
   tasks have claimed, so it never waits on a task still queued behind it (which could
   deadlock a busy pool). Tasks that start after every chunk is taken return at once; the job
   is freed by whoever releases it last. Each chunk writes its own part of the output: its
   images of y, or its own partial dW. */
enum { MAX_CHUNKS = 16 };

typedef struct {
  void (*fn)(const Work *, float *scratch);
  Work work[MAX_CHUNKS];
  int64_t chunks;
  size_t scratch_floats; /* per thread (the forward pass's padded image) */
  atomic_llong next, done, failed;
  atomic_int refs;
} Job;

static int64_t chunk_count(int64_t N) { return N < MAX_CHUNKS ? (N > 0 ? N : 1) : MAX_CHUNKS; }

static void release(Job *job) {
  if (atomic_fetch_sub(&job->refs, 1) == 1) free(job);
}

static void run_chunks(Job *job) {
  float *scratch = NULL;
  if (job->scratch_floats > 0) scratch = calloc(job->scratch_floats, sizeof(float));
  for (;;) {
    long long chunk = atomic_fetch_add(&job->next, 1);
    if (chunk >= job->chunks) break;
    if (job->scratch_floats > 0 && scratch == NULL) atomic_store(&job->failed, 1);
    else job->fn(&job->work[chunk], scratch);
    atomic_fetch_add(&job->done, 1);
  }
  free(scratch);
}

static void task(void *data) {
  run_chunks((Job *)data);
  release((Job *)data);
}

static int64_t pool_threads(const XLA_FFI_Api *api, XLA_FFI_ExecutionContext *ctx) {
  int64_t threads = 1;
  if (api == NULL) return 1;
  XLA_FFI_ThreadPool_NumThreads_Args args;
  memset(&args, 0, sizeof args);
  args.struct_size = XLA_FFI_ThreadPool_NumThreads_Args_STRUCT_SIZE;
  args.ctx = ctx;
  args.num_threads = &threads;
  XLA_FFI_Error *err = api->XLA_FFI_ThreadPool_NumThreads(&args);
  if (err != NULL) {
    XLA_FFI_Error_Destroy_Args destroy = {XLA_FFI_Error_Destroy_Args_STRUCT_SIZE, NULL, err};
    api->XLA_FFI_Error_Destroy(&destroy);
    return 1;
  }
  return threads > 0 ? threads : 1;
}

/* Runs fn over the chunks of shape's batch; chunk c writes to out + c * out_stride.
   0, or -1 if memory ran out. */
static int run_parallel(const XLA_FFI_Api *api, XLA_FFI_ExecutionContext *ctx,
                        void (*fn)(const Work *, float *), Work shape, float *out,
                        size_t out_stride, size_t scratch_floats) {
  Job *job = calloc(1, sizeof(Job));
  if (job == NULL) return -1;
  int64_t N = shape.n1;
  job->fn = fn;
  job->chunks = chunk_count(N);
  job->scratch_floats = scratch_floats;
  for (int64_t c = 0; c < job->chunks; ++c) {
    job->work[c] = shape;
    job->work[c].n0 = N * c / job->chunks;
    job->work[c].n1 = N * (c + 1) / job->chunks;
    job->work[c].out = out + c * out_stride;
  }
  atomic_init(&job->next, 0);
  atomic_init(&job->done, 0);
  atomic_init(&job->failed, 0);
  int64_t helpers = pool_threads(api, ctx) - 1;
  if (helpers > job->chunks - 1) helpers = job->chunks - 1;
  atomic_init(&job->refs, 1);
  for (int64_t h = 0; h < helpers; ++h) {
    atomic_fetch_add(&job->refs, 1);
    XLA_FFI_ThreadPool_Schedule_Args args;
    memset(&args, 0, sizeof args);
    args.struct_size = XLA_FFI_ThreadPool_Schedule_Args_STRUCT_SIZE;
    args.ctx = ctx;
    args.task = task;
    args.data = job;
    XLA_FFI_Error *err = api->XLA_FFI_ThreadPool_Schedule(&args);
    if (err != NULL) { /* no pool: the caller does the work */
      XLA_FFI_Error_Destroy_Args destroy = {XLA_FFI_Error_Destroy_Args_STRUCT_SIZE, NULL, err};
      api->XLA_FFI_Error_Destroy(&destroy);
      release(job);
      break;
    }
  }
  run_chunks(job);
  while (atomic_load(&job->done) < job->chunks) sched_yield();
  int failed = (int)atomic_load(&job->failed);
  release(job);
  return failed ? -1 : 0;
}

static size_t padded_image_floats(const Work *k) {
  int64_t left;
  return (size_t)(k->H * padded_width(k, &left) * k->C);
}

/* ---- XLA FFI handlers: two float32 rank-4 arguments, one result, int64 attributes pad_h,
   pad_w, stride_h, stride_w. Forward: (x, w) -> y. Weight gradient: (x, dy) -> dW. ---- */

static XLA_FFI_Error *error(const XLA_FFI_Api *api, XLA_FFI_Error_Code code,
                            const char *message) {
  XLA_FFI_Error_Create_Args args;
  memset(&args, 0, sizeof args);
  args.struct_size = XLA_FFI_Error_Create_Args_STRUCT_SIZE;
  args.message = message;
  args.errc = code;
  return api->XLA_FFI_Error_Create(&args);
}

static int int_attr(const XLA_FFI_Attrs *attrs, const char *name, int64_t *out) {
  for (int64_t i = 0; i < attrs->size; ++i) {
    const XLA_FFI_ByteSpan *key = attrs->names[i];
    if (key->len != strlen(name) || memcmp(key->ptr, name, key->len) != 0) continue;
    if (attrs->types[i] != XLA_FFI_AttrType_SCALAR) return 0;
    const XLA_FFI_Scalar *scalar = (const XLA_FFI_Scalar *)attrs->attrs[i];
    if (scalar->dtype == XLA_FFI_DataType_S64) *out = *(const int64_t *)scalar->value;
    else if (scalar->dtype == XLA_FFI_DataType_S32) *out = *(const int32_t *)scalar->value;
    else return 0;
    return 1;
  }
  return 0;
}

/* Answers XLA's metadata query (the FFI version these headers define); 1 if it was one. */
static int metadata_query(XLA_FFI_CallFrame *frame) {
  if (frame->extension_start == NULL || frame->extension_start->type != XLA_FFI_Extension_Metadata)
    return 0;
  XLA_FFI_Metadata *metadata = ((XLA_FFI_Metadata_Extension *)frame->extension_start)->metadata;
  metadata->api_version.struct_size = XLA_FFI_Api_Version_STRUCT_SIZE;
  metadata->api_version.extension_start = NULL;
  metadata->api_version.major_version = XLA_FFI_API_MAJOR;
  metadata->api_version.minor_version = XLA_FFI_API_MINOR;
  metadata->traits = 0;
  return 1;
}

static int conv_forward(const XLA_FFI_Api *api, XLA_FFI_ExecutionContext *ctx, Work shape) {
  return run_parallel(api, ctx, forward, shape, shape.out, 0, padded_image_floats(&shape));
}

/* Each chunk sums into its own partial dW; the partials are then added in chunk order. */
static int conv_weight_grad(const XLA_FFI_Api *api, XLA_FFI_ExecutionContext *ctx, Work shape) {
  size_t size = (size_t)(shape.KH * shape.KW * shape.C * shape.CO);
  int64_t chunks = chunk_count(shape.n1);
  float *partial = calloc((size_t)chunks * size, sizeof(float));
  if (partial == NULL) return -1;
  float *dw = shape.out;
  int64_t left;
  size_t scratch = uses_weight_fold3(&shape)
                       ? (size_t)(shape.OH * padded_dy_width(&shape, &left) * shape.CO) : 0;
  if (run_parallel(api, ctx, weight_grad, shape, partial, size, scratch) != 0) {
    free(partial);
    return -1;
  }
  memcpy(dw, partial, size * sizeof(float));
  for (int64_t c = 1; c < chunks; ++c)
    for (size_t i = 0; i < size; ++i) dw[i] += partial[c * size + i];
  free(partial);
  return 0;
}

/* x (N, H, W, C) is the first argument of both; (OH, OW, CO) and (KH, KW) come from whichever
   of the other argument and the result is the output or the kernel. */
static XLA_FFI_Error *call(XLA_FFI_CallFrame *frame, int forward_kernel) {
  if (metadata_query(frame)) return NULL;
  const XLA_FFI_Api *api = frame->api;
  if (frame->stage != XLA_FFI_ExecutionStage_EXECUTE) return NULL;
  if (frame->args.size != 2 || frame->rets.size != 1)
    return error(api, XLA_FFI_Error_Code_INVALID_ARGUMENT, "cv_jax conv: 2 arguments, 1 result");
  const XLA_FFI_Buffer *x = (const XLA_FFI_Buffer *)frame->args.args[0];
  const XLA_FFI_Buffer *other = (const XLA_FFI_Buffer *)frame->args.args[1];
  const XLA_FFI_Buffer *out = (const XLA_FFI_Buffer *)frame->rets.rets[0];
  if (x->rank != 4 || other->rank != 4 || out->rank != 4 || x->dtype != XLA_FFI_DataType_F32 ||
      other->dtype != XLA_FFI_DataType_F32 || out->dtype != XLA_FFI_DataType_F32)
    return error(api, XLA_FFI_Error_Code_INVALID_ARGUMENT, "cv_jax conv: rank-4 float32 only");
  int64_t ph, pw, sh, sw;
  if (!int_attr(&frame->attrs, "pad_h", &ph) || !int_attr(&frame->attrs, "pad_w", &pw) ||
      !int_attr(&frame->attrs, "stride_h", &sh) || !int_attr(&frame->attrs, "stride_w", &sw))
    return error(api, XLA_FFI_Error_Code_INVALID_ARGUMENT,
                 "cv_jax conv: int attributes pad_h, pad_w, stride_h, stride_w");
  const int64_t *xd = x->dims;
  const int64_t *kd = forward_kernel ? other->dims : out->dims; /* KH, KW, C, CO */
  const int64_t *yd = forward_kernel ? out->dims : other->dims; /* N, OH, OW, CO */
  if (xd[0] != yd[0] || kd[2] != xd[3] || kd[3] != yd[3] || yd[3] % 8 != 0 || sh < 1 || sw < 1)
    return error(api, XLA_FFI_Error_Code_INVALID_ARGUMENT,
                 "cv_jax conv: shapes must be x (N,H,W,C), kernel (KH,KW,C,CO), output "
                 "(N,OH,OW,CO) with CO a multiple of 8");
  Work shape = {(const float *)x->data, (const float *)other->data, (float *)out->data, 0, xd[0],
                xd[1], xd[2], xd[3], yd[1], yd[2], yd[3], kd[0], kd[1], sh, sw, ph, pw};
  int status = forward_kernel ? conv_forward(api, frame->ctx, shape)
                              : conv_weight_grad(api, frame->ctx, shape);
  if (status != 0)
    return error(api, XLA_FFI_Error_Code_RESOURCE_EXHAUSTED, "cv_jax conv: out of memory");
  return NULL;
}

XLA_FFI_Error *cv_jax_conv_forward_ffi(XLA_FFI_CallFrame *frame) {
  return call(frame, 1);
}

XLA_FFI_Error *cv_jax_conv_weight_grad_ffi(XLA_FFI_CallFrame *frame) {
  return call(frame, 0);
}
