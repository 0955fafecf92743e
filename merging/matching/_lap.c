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
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* only for the empty module below: importing the library works */
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

/* Phases both solvers share (the dense one in _lap_impl.h, the sparse one below). */

/* Every row still unassigned takes its cheapest column `cheapest[i]` if that is free, else
 * joins free_rows; returns how many did. */
WS_INLINE int64_t ws_take_cheapest(int64_t n, int64_t *col4row, int64_t *row4col, const int64_t *cheapest,
                                   int64_t *free_rows)
{
    int64_t nfree = 0;
    for (int64_t i = 0; i < n; i++) {
        if (col4row[i] >= 0) continue;
        if (row4col[cheapest[i]] == -1) {
            col4row[i] = cheapest[i];
            row4col[cheapest[i]] = i;
        } else {
            free_rows[nfree++] = i;
        }
    }
    return nfree;
}

/* One step of the augmenting row reduction for free row i, whose best and second-best
 * reduced costs are u1 at column j1 and u2 at j2 (j2 = -1: it has one column): it takes j1,
 * lowering v[j1] to the gap (or j2 on a tie), and evicts j1's owner, who is retried at once
 * while `retry` (a strict gap, within the step limit) or left for later. Returns the column
 * taken, or -1 when the row's only column is taken (the row is left for the paths). */
WS_INLINE int64_t ws_arr_step(int64_t i, double u1, int64_t j1, double u2, int64_t j2, int64_t *row4col,
                              int64_t *col4row, double *v, int64_t *free_rows, int64_t *kk, int64_t *nfree,
                              int within_limit)
{
    int64_t i0 = row4col[j1];
    int strict = j2 < 0 || u1 < u2;
    if (j2 < 0) {
        if (i0 >= 0) { free_rows[(*nfree)++] = i; return -1; }
    } else if (strict) {
        v[j1] -= u2 - u1;
    } else if (i0 >= 0) {
        j1 = j2;
        i0 = row4col[j1];
    }
    if (i0 >= 0) {
        col4row[i0] = -1;
        if (strict && within_limit) free_rows[--(*kk)] = i0;
        else free_rows[(*nfree)++] = i0;
    }
    row4col[j1] = i;
    col4row[i] = j1;
    return j1;
}

/* After a shortest-path search from free row cur reached the free column sink at distance
 * min_val: the dual updates (visited row q > 0 was reached through scanned column q - 1, its
 * own), then the assignment flipped along the path. */
WS_INLINE void ws_augment(int64_t cur, int64_t sink, double min_val, int64_t nvis, const int64_t *visited,
                          int64_t nscan, const int64_t *scanned, const double *dist, double *u, double *v,
                          const int64_t *path, int64_t *row4col, int64_t *col4row)
{
    u[cur] += min_val;
    for (int64_t q = 1; q < nvis; q++)
        u[visited[q]] += min_val - dist[q - 1];
    for (int64_t q = 0; q < nscan; q++)
        v[scanned[q]] -= min_val - dist[q];
    for (int64_t j = sink;;) {
        int64_t i = path[j];
        row4col[j] = i;
        int64_t tmp = col4row[i];
        col4row[i] = j;
        j = tmp;
        if (i == cur) break;
    }
}

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


/* ------------------------------------------------------------------------------------------
 * Sparse assignment: the same warm-started shortest-augmenting-path method on a bipartite
 * graph of n rows with `width` candidate columns each (row-major, fixed width; a column may
 * repeat within a row). Used with the best few columns of every row of a dense matrix, plus
 * the previous assignment's: the caller checks the returned column duals against the whole
 * matrix (on the GPU where it lives) and adds the columns that price out, so the answer is
 * the dense optimum while this side reads O(n * width) entries instead of O(n^2) per pass.
 * The path search is Dijkstra with a binary heap over the columns it reaches.
 * ---------------------------------------------------------------------------------------- */

typedef struct { double key; int64_t col; } ws_item;

static int ws_less(ws_item a, ws_item b) { return a.key < b.key || (a.key == b.key && a.col < b.col); }

static void ws_push(ws_item *h, int64_t *len, ws_item it)
{
    int64_t k = (*len)++;
    while (k > 0) {
        int64_t p = (k - 1) / 2;
        if (!ws_less(it, h[p])) break;
        h[k] = h[p];
        k = p;
    }
    h[k] = it;
}

static ws_item ws_pop(ws_item *h, int64_t *len)
{
    ws_item top = h[0], last = h[--(*len)];
    int64_t k = 0, n = *len;
    for (;;) {
        int64_t c = 2 * k + 1;
        if (c >= n) break;
        if (c + 1 < n && ws_less(h[c + 1], h[c])) c++;
        if (!ws_less(h[c], last)) break;
        h[k] = h[c];
        k = c;
    }
    if (n > 0) h[k] = last;
    return top;
}

/* The best and second-best reduced cost of row i over distinct columns. */
static void sp_top2(const int64_t *cols, const double *vals, int64_t width, const double *v, double sign,
                    double *u1, int64_t *j1, double *u2, int64_t *j2)
{
    double a = INFINITY, b = INFINITY;
    int64_t ja = -1, jb = -1;
    for (int64_t e = 0; e < width; e++) {
        int64_t j = cols[e];
        double r = sign * vals[e] - v[j];
        if (j == ja) continue;
        if (r < a || (r == a && j < ja)) {
            b = a; jb = ja; a = r; ja = j;
        } else if (j != jb && (r < b || (r == b && j < jb))) {
            b = r; jb = j;
        }
    }
    *u1 = a; *j1 = ja; *u2 = b; *j2 = jb;
}

/* Minimise sum_i sign * value(i, col4row[i]) over the perfect matchings of the graph.
 *   cols, vals  n x width, row-major: row i's candidate columns and their values.
 *   col4row, u, v, warm, sign: as for ws_lap (slack 0).
 * Returns the number of rows augmented (>= 0), -1 (non-finite value), -2 (memory),
 * -3 (the graph has no perfect matching: add columns), -4 (a column index out of range). */
int64_t ws_lap_sparse(int64_t n, int64_t width, const int64_t *cols, const double *vals, int64_t *col4row,
                      double *u, double *v, int warm, double sign)
{
    int64_t i, j, k, e, result = 0, nfree = 0;
    int64_t *row4col = malloc(n * sizeof(int64_t));
    int64_t *path = malloc(n * sizeof(int64_t));
    int64_t *free_rows = malloc(n * sizeof(int64_t));
    int64_t *visited = malloc(n * sizeof(int64_t));
    int64_t *scanned = malloc(n * sizeof(int64_t));
    int64_t *touched = malloc(n * sizeof(int64_t));
    char *state = calloc(n, 1); /* 0 unreached, 1 reached, 2 scanned (in the current search) */
    double *shortest = malloc(n * sizeof(double));
    double *dist = malloc(n * sizeof(double));
    int64_t cap = n * width + 1;
    ws_item *heap = malloc(cap * sizeof(ws_item));

    if (!row4col || !path || !free_rows || !visited || !scanned || !touched || !state || !shortest || !dist
        || !heap) {
        result = -2;
        goto done;
    }
    for (e = 0; e < n * width; e++) {
        if (cols[e] < 0 || cols[e] >= n) { result = -4; goto done; }
        if (!isfinite(vals[e])) { result = -1; goto done; }
    }
    if (!warm)
        for (j = 0; j < n; j++) v[j] = 0.0;
    for (j = 0; j < n; j++) { row4col[j] = -1; shortest[j] = INFINITY; }

    /* row duals from the column duals; keep the tight previous edges, then cheapest columns */
    for (i = 0; i < n; i++) {
        const int64_t *ci = cols + i * width;
        const double *xi = vals + i * width;
        double m = INFINITY, prev = INFINITY;
        int64_t arg = -1, j0 = warm ? col4row[i] : -1;
        for (e = 0; e < width; e++) {
            double r = sign * xi[e] - v[ci[e]];
            if (r < m || (r == m && ci[e] < arg)) { m = r; arg = ci[e]; }
            if (ci[e] == j0 && r < prev) prev = r;
        }
        u[i] = m;
        scanned[i] = arg;
        if (j0 >= 0 && j0 < n && row4col[j0] == -1 && prev - m <= 0.0) {
            row4col[j0] = i;
            u[i] = prev;
        } else {
            col4row[i] = -1;
        }
    }
    nfree = ws_take_cheapest(n, col4row, row4col, scanned, free_rows);

    /* augmenting row reduction, as in ws_lap */
    int passes = warm ? ARR_PASSES_WARM : ARR_PASSES;
    for (int pass = 0; pass < passes && nfree > 0 && n > 1; pass++) {
        int64_t kk = 0, prv = nfree, steps = 0, limit = (warm ? ARR_LIMIT_WARM : ARR_LIMIT) * n;
        nfree = 0;
        while (kk < prv) {
            i = free_rows[kk++];
            int64_t j1, j2;
            double u1, u2;
            sp_top2(cols + i * width, vals + i * width, width, v, sign, &u1, &j1, &u2, &j2);
            if (j1 < 0) { result = -3; goto done; }
            j1 = ws_arr_step(i, u1, j1, u2, j2, row4col, col4row, v, free_rows, &kk, &nfree, steps < limit);
            if (j1 < 0) continue;
            for (e = 0; e < width; e++)
                if (cols[i * width + e] == j1) { u[i] = sign * vals[i * width + e] - v[j1]; break; }
            steps++;
        }
    }

    /* one shortest augmenting path per free row: Dijkstra on reduced costs, binary heap */
    for (k = 0; k < nfree; k++) {
        int64_t cur = free_rows[k], sink = -1, nvis = 0, nscan = 0, ntouch = 0, hlen = 0;
        double min_val = 0.0, bound = INFINITY; /* bound: the nearest free column reached */
        i = cur;
        while (sink == -1) {
            visited[nvis++] = i;
            const int64_t *ci = cols + i * width;
            const double *xi = vals + i * width;
            for (e = 0; e < width; e++) {
                j = ci[e];
                if (state[j] == 2) continue;
                double r = min_val + sign * xi[e] - u[i] - v[j];
                /* a column no nearer than a free one already reached cannot be scanned
                 * before the search ends there: no need to record it (it is recorded if a
                 * later row reaches it nearer) */
                if (r < shortest[j] && r < bound) {
                    if (row4col[j] == -1) bound = r;
                    if (state[j] == 0) { state[j] = 1; touched[ntouch++] = j; }
                    shortest[j] = r;
                    path[j] = i;
                    if (hlen >= cap) {
                        ws_item *h2 = realloc(heap, 2 * cap * sizeof(ws_item));
                        if (!h2) { result = -2; goto done; }
                        heap = h2;
                        cap *= 2;
                    }
                    ws_push(heap, &hlen, (ws_item){r, j});
                }
            }
            /* the nearest reached column not yet scanned (stale heap entries are skipped) */
            j = -1;
            while (hlen > 0) {
                ws_item it = ws_pop(heap, &hlen);
                if (state[it.col] == 1 && it.key == shortest[it.col]) { j = it.col; break; }
            }
            if (j < 0) { result = -3; goto done; }
            min_val = shortest[j];
            state[j] = 2;
            dist[nscan] = min_val;
            scanned[nscan++] = j;
            if (row4col[j] == -1) sink = j; else i = row4col[j];
        }
        for (int64_t q = 0; q < ntouch; q++) { state[touched[q]] = 0; shortest[touched[q]] = INFINITY; }
        ws_augment(cur, sink, min_val, nvis, visited, nscan, scanned, dist, u, v, path, row4col, col4row);
        result++;
    }
done:
    free(row4col); free(path); free(free_rows); free(visited); free(scanned);
    free(touched); free(state); free(shortest); free(dist); free(heap);
    return result;
}


/* The library is loaded with ctypes; as a Python module it is empty, so that importing it (as
 * pkgutil.walk_packages does) succeeds instead of failing for want of an init function. */
static struct PyModuleDef ws_module = {PyModuleDef_HEAD_INIT, "_lap", "the assignment solvers in C, called through ctypes (merging/_native.py)", -1, NULL};

PyMODINIT_FUNC PyInit__lap(void) { return PyModule_Create(&ws_module); }
