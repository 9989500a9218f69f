/* Weight gradient of a 2-D convolution on the CPU, for XLA's FFI (cv_jax/models/cpu_kernels.py).

   dW[kh, kw, ci, co] = sum over n, oh, ow of
       x[n, oh * stride_h + kh - pad_h, ow * stride_w + kw - pad_w, ci] * dy[n, oh, ow, co]
   with x (N, H, W, C), dy (N, OH, OW, CO) and dW (KH, KW, C, CO), all float32 and row-major
   (flax's NHWC / HWIO), out-of-range input positions counting as zeros (the padding).

   XLA:CPU computes this as an Eigen convolution over the transposed batch: both operands are
   first transposed so that the batch is the contracted dimension, and the contraction has a
   huge inner dimension and a tiny output. Here each thread instead walks its share of the
   batch in the arrays' own layout and accumulates, per kernel tap and block of 4 input x 16
   (or 8) output channels, a register tile of outer products over a row of output pixels.
   Thread-local sums are added in a fixed order, so results do not depend on scheduling.
   CO must be a multiple of 8 (the caller checks). */

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "xla/ffi/api/c_api.h"

typedef float v8 __attribute__((vector_size(32)));

static inline v8 load8(const float *p) {
  v8 v;
  memcpy(&v, p, sizeof v);
  return v;
}

static inline void store8(float *p, v8 v) { memcpy(p, &v, sizeof v); }

typedef struct {
  const float *x, *dy;
  float *acc; /* KH * KW * C * CO, this thread's partial sum */
  int64_t n0, n1, H, W, C, OH, OW, CO, KH, KW, sh, sw, ph, pw;
} Work;

/* First and one-past-last output index o whose input index o * s + k - p lies in [0, W). */
static void valid_columns(int64_t W, int64_t OW, int64_t s, int64_t k, int64_t p, int64_t *lo,
                          int64_t *hi) {
  int64_t first = p - k > 0 ? (p - k + s - 1) / s : 0;
  int64_t last = W - 1 + p - k >= 0 ? (W - 1 + p - k) / s + 1 : 0;
  *lo = first;
  *hi = last < OW ? last : OW;
}

/* One register tile, acc[ci0 .. ci0 + NCI) x [co0 .. co0 + 8 * NV) of one kernel tap, summed
   over every output pixel of one image: x and dy point at that image's (ih, iw, ci0) = (0, 0)
   and (oh, ow, co0) = (0, 0) elements; rows [oh_lo, oh_hi) and columns [lo, hi) are the ones
   whose input pixel oh * sh + dh, ow * sw + dw lies inside the image. */
#define TILE(NCI, NV)                                                                        \
  static void tile_##NCI##_##NV(float *acc, const Work *w, const float *x, const float *dy,   \
                                int64_t oh_lo, int64_t oh_hi, int64_t dh, int64_t lo,         \
                                int64_t hi, int64_t dw) {                                     \
    v8 a[NCI][NV];                                                                            \
    for (int j = 0; j < NCI; ++j)                                                             \
      for (int v = 0; v < NV; ++v) a[j][v] = load8(acc + j * w->CO + 8 * v);                  \
    for (int64_t oh = oh_lo; oh < oh_hi; ++oh) {                                              \
      const float *xrow = x + (oh * w->sh + dh) * w->W * w->C;                                \
      const float *gyrow = dy + oh * w->OW * w->CO;                                           \
      for (int64_t ow = lo; ow < hi; ++ow) {                                                  \
        const float *xp = xrow + (ow * w->sw + dw) * w->C;                                    \
        const float *gp = gyrow + ow * w->CO;                                                 \
        v8 g[NV];                                                                             \
        for (int v = 0; v < NV; ++v) g[v] = load8(gp + 8 * v);                                \
        for (int j = 0; j < NCI; ++j) {                                                       \
          v8 b = {xp[j], xp[j], xp[j], xp[j], xp[j], xp[j], xp[j], xp[j]};                    \
          for (int v = 0; v < NV; ++v) a[j][v] += b * g[v];                                   \
        }                                                                                     \
      }                                                                                       \
    }                                                                                         \
    for (int j = 0; j < NCI; ++j)                                                             \
      for (int v = 0; v < NV; ++v) store8(acc + j * w->CO + 8 * v, a[j][v]);                  \
  }

TILE(4, 2)
TILE(1, 2)
TILE(4, 1)
TILE(1, 1)

/* Output rows per block: the block's dy rows and the x rows they read fit in L1 (~24 KB). */
static int64_t rows_per_block(const Work *w) {
  int64_t bytes_per_row = (w->OW * w->CO + w->sh * w->W * w->C) * (int64_t)sizeof(float);
  int64_t rows = 24 * 1024 / (bytes_per_row > 0 ? bytes_per_row : 1);
  return rows < 1 ? 1 : rows;
}

static void *accumulate(void *arg) {
  const Work *w = (const Work *)arg;
  int64_t block = rows_per_block(w);
  for (int64_t n = w->n0; n < w->n1; ++n) {
    const float *x = w->x + n * w->H * w->W * w->C;
    const float *dy = w->dy + n * w->OH * w->OW * w->CO;
    for (int64_t row = 0; row < w->OH; row += block) {
      for (int64_t kh = 0; kh < w->KH; ++kh) {
        int64_t oh_lo, oh_hi, lo, hi;
        valid_columns(w->H, w->OH, w->sh, kh, w->ph, &oh_lo, &oh_hi);
        if (oh_lo < row) oh_lo = row;
        if (oh_hi > row + block) oh_hi = row + block;
        for (int64_t kw = 0; kw < w->KW; ++kw) {
          valid_columns(w->W, w->OW, w->sw, kw, w->pw, &lo, &hi);
          if (oh_lo >= oh_hi || lo >= hi) continue;
          float *tap = w->acc + (kh * w->KW + kw) * w->C * w->CO;
          int64_t dh = kh - w->ph, dw = kw - w->pw;
          for (int64_t co = 0; co < w->CO;) {
            int wide = w->CO - co >= 16;
            int64_t ci = 0;
            for (; ci + 4 <= w->C; ci += 4) {
              float *a = tap + ci * w->CO + co;
              if (wide) tile_4_2(a, w, x + ci, dy + co, oh_lo, oh_hi, dh, lo, hi, dw);
              else tile_4_1(a, w, x + ci, dy + co, oh_lo, oh_hi, dh, lo, hi, dw);
            }
            for (; ci < w->C; ++ci) {
              float *a = tap + ci * w->CO + co;
              if (wide) tile_1_2(a, w, x + ci, dy + co, oh_lo, oh_hi, dh, lo, hi, dw);
              else tile_1_1(a, w, x + ci, dy + co, oh_lo, oh_hi, dh, lo, hi, dw);
            }
            co += wide ? 16 : 8;
          }
        }
      }
    }
  }
  return NULL;
}

static int64_t available_cpus(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
  return 1;
}

/* Plain C entry point (also used by the FFI handler). Returns 0, or -1 if memory ran out. */
int cv_jax_conv_weight_grad(const float *x, const float *dy, float *dw, int64_t N, int64_t H,
                            int64_t W, int64_t C, int64_t OH, int64_t OW, int64_t CO,
                            int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t ph,
                            int64_t pw, int64_t threads) {
  if (threads <= 0) threads = available_cpus();
  if (threads > N) threads = N > 0 ? N : 1;
  if (threads > 64) threads = 64;
  size_t size = (size_t)(KH * KW * C * CO);
  Work work[64];
  pthread_t ids[64];
  float *partial = calloc((size_t)threads * size, sizeof(float));
  if (partial == NULL) return -1;
  for (int64_t t = 0; t < threads; ++t) {
    Work w = {x, dy, partial + t * size, N * t / threads, N * (t + 1) / threads,
              H, W, C, OH, OW, CO, KH, KW, sh, sw, ph, pw};
    work[t] = w;
  }
  int64_t started = 0;
  for (int64_t t = 1; t < threads; ++t, ++started)
    if (pthread_create(&ids[t], NULL, accumulate, &work[t]) != 0) break;
  accumulate(&work[0]);
  for (int64_t t = 1; t <= started; ++t) pthread_join(ids[t], NULL);
  for (int64_t t = started + 1; t < threads; ++t) accumulate(&work[t]); /* threads not started */
  memcpy(dw, partial, size * sizeof(float));
  for (int64_t t = 1; t < threads; ++t)
    for (size_t i = 0; i < size; ++i) dw[i] += partial[t * size + i];
  free(partial);
  return 0;
}

/* ---- XLA FFI handler: args (x, dy), result dW, int64 attributes pad_h, pad_w, stride_h,
   stride_w. ---- */

static XLA_FFI_Error *error(const XLA_FFI_Api *api, const char *message) {
  XLA_FFI_Error_Create_Args args;
  memset(&args, 0, sizeof args);
  args.struct_size = XLA_FFI_Error_Create_Args_STRUCT_SIZE;
  args.message = message;
  args.errc = XLA_FFI_Error_Code_INVALID_ARGUMENT;
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

XLA_FFI_Error *cv_jax_conv_weight_grad_ffi(XLA_FFI_CallFrame *frame) {
  if (frame->extension_start != NULL &&
      frame->extension_start->type == XLA_FFI_Extension_Metadata) {
    XLA_FFI_Metadata_Extension *ext = (XLA_FFI_Metadata_Extension *)frame->extension_start;
    ext->metadata->api_version.struct_size = XLA_FFI_Api_Version_STRUCT_SIZE;
    ext->metadata->api_version.extension_start = NULL;
    ext->metadata->api_version.major_version = XLA_FFI_API_MAJOR;
    ext->metadata->api_version.minor_version = XLA_FFI_API_MINOR;
    ext->metadata->traits = 0;
    return NULL;
  }
  const XLA_FFI_Api *api = frame->api;
  if (frame->stage != XLA_FFI_ExecutionStage_EXECUTE) return NULL;
  if (frame->args.size != 2 || frame->rets.size != 1)
    return error(api, "conv_weight_grad: expected arguments (x, dy) and one result");
  const XLA_FFI_Buffer *x = (const XLA_FFI_Buffer *)frame->args.args[0];
  const XLA_FFI_Buffer *dy = (const XLA_FFI_Buffer *)frame->args.args[1];
  const XLA_FFI_Buffer *dw = (const XLA_FFI_Buffer *)frame->rets.rets[0];
  if (x->rank != 4 || dy->rank != 4 || dw->rank != 4 || x->dtype != XLA_FFI_DataType_F32 ||
      dy->dtype != XLA_FFI_DataType_F32 || dw->dtype != XLA_FFI_DataType_F32)
    return error(api, "conv_weight_grad: x, dy and dW must be rank-4 float32");
  int64_t ph, pw, sh, sw;
  if (!int_attr(&frame->attrs, "pad_h", &ph) || !int_attr(&frame->attrs, "pad_w", &pw) ||
      !int_attr(&frame->attrs, "stride_h", &sh) || !int_attr(&frame->attrs, "stride_w", &sw))
    return error(api, "conv_weight_grad: integer attributes pad_h, pad_w, stride_h, stride_w");
  const int64_t *xd = x->dims, *gd = dy->dims, *wd = dw->dims;
  if (xd[0] != gd[0] || wd[2] != xd[3] || wd[3] != gd[3] || gd[3] % 8 != 0 || sh < 1 || sw < 1)
    return error(api, "conv_weight_grad: shapes do not match (N,H,W,C) (N,OH,OW,CO) "
                      "(KH,KW,C,CO) with CO a multiple of 8");
  if (cv_jax_conv_weight_grad((const float *)x->data, (const float *)dy->data,
                              (float *)dw->data, xd[0], xd[1], xd[2], xd[3], gd[1], gd[2],
                              gd[3], wd[0], wd[1], sh, sw, ph, pw, 0) != 0)
    return error(api, "conv_weight_grad: out of memory for the per-thread sums");
  return NULL;
}
