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
 * Loaded with ctypes (no Python API), built as an optional extension by setup.py; without
 * a C compiler the package falls back to SciPy's solver.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* Minimise sum_i cost[i * n + col4row[i]].
 *   cost    n x n, row-major, finite.
 *   col4row in: previous assignment if warm (entries may be -1), out: the optimum.
 *   u, v    row and column duals; v is read when warm, both are written.
 * Returns the number of rows augmented (>= 0), or -1 (infeasible / non-finite), -2 (memory).
 */
int64_t ws_lap(int64_t n, const double *cost, int64_t *col4row, double *u, double *v, int warm)
{
    int64_t i, j, k;
    int64_t *row4col = malloc(n * sizeof(int64_t));
    int64_t *path = malloc(n * sizeof(int64_t));
    int64_t *remaining = malloc(n * sizeof(int64_t));
    int64_t *free_rows = malloc(n * sizeof(int64_t));
    int64_t *visited = malloc(n * sizeof(int64_t));
    int64_t *scanned = malloc(n * sizeof(int64_t));
    double *shortest = malloc(n * sizeof(double));
    int64_t nfree = 0, result = 0;

    if (!row4col || !path || !remaining || !free_rows || !visited || !scanned || !shortest) {
        result = -2;
        goto done;
    }
    if (!warm)
        for (j = 0; j < n; j++) v[j] = 0.0;
    for (j = 0; j < n; j++) row4col[j] = -1;

    /* row duals from the column duals; keep tight previous edges, else a free tight one */
    for (i = 0; i < n; i++) {
        const double *ci = cost + i * n;
        double m = INFINITY;
        int64_t arg = -1;
        for (j = 0; j < n; j++) {
            double r = ci[j] - v[j];
            if (r < m) { m = r; arg = j; }
        }
        if (arg < 0 || !isfinite(m)) { result = -1; goto done; }
        u[i] = m;
        j = warm ? col4row[i] : -1;
        if (j >= 0 && j < n && row4col[j] == -1 && ci[j] - v[j] - m == 0.0) {
            row4col[j] = i;
        } else if (row4col[arg] == -1) {
            col4row[i] = arg;
            row4col[arg] = i;
        } else {
            col4row[i] = -1;
            free_rows[nfree++] = i;
        }
    }

    for (k = 0; k < nfree; k++) {
        int64_t cur = free_rows[k], sink = -1, nrem = n, nvis = 0, nscan = 0;
        double min_val = 0.0;
        for (j = 0; j < n; j++) {
            remaining[j] = n - 1 - j;
            shortest[j] = INFINITY;
        }
        i = cur;
        while (sink == -1) {
            const double *ci = cost + i * n;
            double ui = u[i], lowest = INFINITY;
            int64_t index = -1;
            visited[nvis++] = i;
            for (int64_t q = 0; q < nrem; q++) {
                j = remaining[q];
                double r = min_val + ci[j] - ui - v[j];
                if (r < shortest[j]) { path[j] = i; shortest[j] = r; }
                if (shortest[j] < lowest || (shortest[j] == lowest && row4col[j] == -1)) {
                    lowest = shortest[j];
                    index = q;
                }
            }
            min_val = lowest;
            if (index < 0 || !isfinite(min_val)) { result = -1; goto done; }
            j = remaining[index];
            scanned[nscan++] = j;
            if (row4col[j] == -1) sink = j; else i = row4col[j];
            remaining[index] = remaining[--nrem];
        }
        u[cur] += min_val;
        for (int64_t q = 1; q < nvis; q++) {
            i = visited[q];
            u[i] += min_val - shortest[col4row[i]];
        }
        for (int64_t q = 0; q < nscan; q++) {
            j = scanned[q];
            v[j] -= min_val - shortest[j];
        }
        j = sink;
        for (;;) {
            i = path[j];
            row4col[j] = i;
            int64_t tmp = col4row[i];
            col4row[i] = j;
            j = tmp;
            if (i == cur) break;
        }
        result++;
    }
done:
    free(row4col); free(path); free(remaining); free(free_rows);
    free(visited); free(scanned); free(shortest);
    return result;
}
