/*
 * Dense linear assignment by shortest augmenting paths (Jonker-Volgenant family), with a
 * warm start from a previous assignment and its column duals.
 *
 * Weight matching solves a sequence of assignment problems that change little from one
 * sweep to the next. Keeping the column duals v of the last solve, setting each row dual
 * to u_i = min_j (c_ij - v_j) keeps the duals feasible for the new costs; every row whose
 * previous column is still tight keeps it, and only the other rows are augmented. The
 * result is an exact optimum (complementary slackness holds at the end), usually after a
 * handful of short augmentations instead of n.
 *
 * Every O(n) scan (a row's minimum, its two smallest for the row reduction, one step of a
 * shortest-path search) runs in lanes, each with its own minimum and first index, merged at
 * the end; ties go to the smallest column index, as in a plain left-to-right scan. The body
 * (_lap_impl.h) is compiled three times: with 8 lanes of AVX-512 and 4 of AVX2 (GCC / Clang
 * vector extensions, x86-64 only), and as plain scalar code; ws_lap picks the best build the
 * CPU runs. Scanned columns are marked NaN in the path search, so no flag array is read
 * (which is why this file must not be built with -ffast-math: it relies on NaN comparing false).
 *
 * Loaded with ctypes (no Python API), built as an optional extension by setup.py; without
 * a C compiler the package falls back to SciPy's solver.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define WS_VECTOR 1
#endif
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi" /* vectors only cross always-inlined calls */
#endif
#if defined(__GNUC__) || defined(__clang__)
#define WS_INLINE static inline __attribute__((always_inline))
#else
#define WS_INLINE static inline
#endif

/* Augmenting row reduction: passes over the free rows, and steps per pass in units of n, for
 * a cold start and for a warm one. Warm, the free rows sit near ties, where a long reduction
 * only trades tiny dual decrements between them; shortest paths finish them sooner. */
#define ARR_PASSES 2
#define ARR_LIMIT 8
#define ARR_PASSES_WARM 1
#define ARR_LIMIT_WARM 2

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)

#if defined(WS_VECTOR)
#define LANES 8
#define IOTA {0, 1, 2, 3, 4, 5, 6, 7}
#define NAME(x) CAT(x, avx512)
#define TARGET __attribute__((target("avx512f")))
#include "_lap_impl.h"
#undef LANES
#undef IOTA
#undef NAME
#undef TARGET

#define LANES 4
#define IOTA {0, 1, 2, 3}
#define NAME(x) CAT(x, avx2)
#define TARGET __attribute__((target("avx2")))
#include "_lap_impl.h"
#undef LANES
#undef IOTA
#undef NAME
#undef TARGET
#endif

#define LANES 1
#define NAME(x) CAT(x, scalar)
#define TARGET
#include "_lap_impl.h"
#undef LANES
#undef NAME
#undef TARGET

/* Which build ws_lap runs: 0 the best the CPU has, 1 scalar, 2 AVX2, 3 AVX-512 (for tests). */
int ws_lap_force = 0;

/* Minimise sum_i sign * cost[i * n + col4row[i]] (sign = -1 maximises).
 *   cost    n x n, row-major, finite.
 *   col4row in: previous assignment if warm (entries may be -1), out: the optimum.
 *   u, v    row and column duals; v is read when warm, both are written.
 *   slack   0 for an exact optimum. When > 0, a warm row keeps its previous column if that
 *           column is within slack of its best reduced cost: reduced costs may then be as
 *           low as -slack and the result is within n * slack of optimal (used to finish
 *           the near-optimal assignment an auction with epsilon = slack left).
 * Returns the number of rows augmented (>= 0), or -1 (infeasible / non-finite), -2 (memory).
 */
int64_t ws_lap(int64_t n, const double *cost, int64_t *col4row, double *u, double *v, int warm,
               double slack, double sign)
{
#ifdef WS_VECTOR
    __builtin_cpu_init();
    int f = ws_lap_force;
    if ((f == 0 || f == 3) && __builtin_cpu_supports("avx512f"))
        return lap_avx512(n, cost, col4row, u, v, warm, slack, sign);
    if ((f == 0 || f == 2) && __builtin_cpu_supports("avx2"))
        return lap_avx2(n, cost, col4row, u, v, warm, slack, sign);
#endif
    return lap_scalar(n, cost, col4row, u, v, warm, slack, sign);
}
