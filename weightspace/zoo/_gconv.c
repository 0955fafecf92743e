/*
 * Grouped 2-D convolutions for training many small CNNs at once (weightspace.zoo): M models,
 * each with its own Ci -> Co channel weights, on activations laid out model-major and
 * channels-last, x[m, b, h, w, ci]. Forward, input gradient and weight / bias gradient, any
 * kernel size, stride and (asymmetric, TensorFlow "SAME") zero padding, Co a multiple of 16
 * (and Ci too for the input gradient).
 *
 * Why not oneDNN: at the Small CNN Zoo's sizes (16 channels per model, 8x8 to 28x28 images)
 * its grouped kernels run at 5-40 GFLOPS on one core and need a padded copy of the input.
 * Here a model's 16 output channels are one 16-float vector, eight positions (or eight input
 * channels, for the weight gradient) are accumulated in registers at once, a tap in the
 * padding reads zeros, and the weights of one model stay in L1 while its activations, one
 * contiguous block per model, stream through. Each call handles the models [m0, m1) (a
 * caller may split them over threads: ctypes releases the GIL).
 *
 * Loaded with ctypes (no Python API); built as an optional extension by setup.py. Without a
 * C compiler the zoo uses torch's grouped convolutions.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* only for the empty module below: importing the library works */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t B, H, W, M, Ci, Co, K, S, pt, pl, Ho, Wo, xms;
} ws_conv;

/* what a tap in the padding reads: a row of zeros (channels <= WS_MAX_CH) */
#define WS_MAX_CH 4096
static const float ws_zeros[WS_MAX_CH];

typedef float v16 __attribute__((vector_size(64)));
#define NB 8

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi" /* vectors only cross always-inlined calls */
#endif
#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define WS_X86 1
#define NAME(x) CAT(x, avx512)
#define TARGET __attribute__((target("avx512f,fma")))
#include "_gconv_impl.h"
#undef NAME
#undef TARGET

#define NAME(x) CAT(x, avx2)
#define TARGET __attribute__((target("avx2,fma")))
#include "_gconv_impl.h"
#undef NAME
#undef TARGET
#endif

#define NAME(x) CAT(x, generic)
#define TARGET
#include "_gconv_impl.h"
#undef NAME
#undef TARGET

/* Which build runs: 0 the best the CPU has, 1 generic, 2 AVX2, 3 AVX-512 (for tests). */
int ws_gconv_force = 0;

static int pick(void)
{
#ifdef WS_X86
    __builtin_cpu_init();
    int f = ws_gconv_force;
    if ((f == 0 || f == 3) && __builtin_cpu_supports("avx512f")) return 3;
    if ((f == 0 || f == 2) && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 2;
#endif
    return 1;
}

static int valid(const ws_conv *p, int need_ci16)
{
    return p->Co > 0 && p->Co % 16 == 0 && (!need_ci16 || p->Ci % 16 == 0) && p->K > 0 && p->S > 0
        && p->Ci <= WS_MAX_CH && p->Co <= WS_MAX_CH;
}

/* Each returns 0, -1 when the sizes are not supported (Co, or Ci for the input gradient, not
 * a multiple of 16), or -2 when out of memory. */
int ws_gconv_fwd(const ws_conv *p, const float *x, const float *wt, const float *bias, float *out,
                 int64_t m0, int64_t m1)
{
    if (!valid(p, 0)) return -1;
    switch (pick()) {
#ifdef WS_X86
    case 3: return fwd_avx512(p, x, wt, bias, out, m0, m1);
    case 2: return fwd_avx2(p, x, wt, bias, out, m0, m1);
#endif
    default: return fwd_generic(p, x, wt, bias, out, m0, m1);
    }
}

int ws_gconv_bwd_data(const ws_conv *p, const float *g, const float *wT, float *gx, int64_t m0, int64_t m1)
{
    if (!valid(p, 1)) return -1;
    switch (pick()) {
#ifdef WS_X86
    case 3: bwd_data_avx512(p, g, wT, gx, m0, m1); return 0;
    case 2: bwd_data_avx2(p, g, wT, gx, m0, m1); return 0;
#endif
    default: bwd_data_generic(p, g, wT, gx, m0, m1); return 0;
    }
}

int ws_gconv_bwd_weight(const ws_conv *p, const float *x, const float *g, float *gw, float *gb, int64_t m0, int64_t m1)
{
    if (!valid(p, 0)) return -1;
    switch (pick()) {
#ifdef WS_X86
    case 3: return bwd_weight_avx512(p, x, g, gw, gb, m0, m1);
    case 2: return bwd_weight_avx2(p, x, g, gw, gb, m0, m1);
#endif
    default: return bwd_weight_generic(p, x, g, gw, gb, m0, m1);
    }
}


/* The library is loaded with ctypes; as a Python module it is empty, so that importing it (as
 * pkgutil.walk_packages does) succeeds instead of failing for want of an init function. */
static struct PyModuleDef ws_module = {PyModuleDef_HEAD_INIT, "_gconv", "grouped convolutions in C, called through ctypes (merging/_native.py)", -1, NULL};

PyMODINIT_FUNC PyInit__gconv(void) { return PyModule_Create(&ws_module); }
