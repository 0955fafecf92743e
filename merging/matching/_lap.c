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
int64_t ws_lap(int64_t n, const double *cost_in, int64_t *col4row, double *u, double *v, int warm,
               double slack, double sign)
{
    const double *cost = cost_in;
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

    /* row duals from the column duals; first keep every tight previous edge, then give the
     * other rows their cheapest column if still free (two passes, so that a row's cheapest
     * column never displaces a later row's tight previous one) */
    for (i = 0; i < n; i++) {
        const double *ci = cost + i * n;
        double m = INFINITY;
        int64_t arg = -1;
        for (j = 0; j < n; j++) {
            double r = sign * ci[j] - v[j];
            if (r < m) { m = r; arg = j; }
        }
        if (arg < 0 || !isfinite(m)) { result = -1; goto done; }
        u[i] = m;
        scanned[i] = arg;
        j = warm ? col4row[i] : -1;
        if (j >= 0 && j < n && row4col[j] == -1 && sign * ci[j] - v[j] - m <= slack) {
            row4col[j] = i;
            u[i] = sign * ci[j] - v[j];
        } else {
            col4row[i] = -1;
        }
    }
    for (i = 0; i < n; i++) {
        if (col4row[i] >= 0) continue;
        int64_t arg = scanned[i];
        if (row4col[arg] == -1) {
            col4row[i] = arg;
            row4col[arg] = i;
        } else {
            free_rows[nfree++] = i;
        }
    }

    /* augmenting row reduction (Jonker & Volgenant 1987): each free row takes its cheapest
     * column and lowers that column's dual to the gap to its second cheapest, evicting the
     * previous owner; O(n) per step, where an augmenting path costs O(n * rows visited).
     * Duals stay feasible and every assigned row stays tight, which the paths below need. */
    for (int pass = 0; pass < 2 && nfree > 0 && n > 1; pass++) {
        int64_t kk = 0, prv = nfree, steps = 0, limit = 8 * n;
        nfree = 0;
        while (kk < prv) {
            i = free_rows[kk++];
            const double *ci = cost + i * n;
            double u1 = INFINITY, u2 = INFINITY;
            int64_t j1 = -1, j2 = -1;
            for (j = 0; j < n; j++) {
                double r = sign * ci[j] - v[j];
                if (r < u2) {
                    if (r < u1) { u2 = u1; j2 = j1; u1 = r; j1 = j; }
                    else { u2 = r; j2 = j; }
                }
            }
            if (j1 < 0 || j2 < 0 || !isfinite(u1) || !isfinite(u2)) { result = -1; goto done; }
            int64_t i0 = row4col[j1];
            int strict = u1 < u2;
            if (strict)
                v[j1] -= u2 - u1;
            else if (i0 >= 0) {
                j1 = j2;
                i0 = row4col[j1];
            }
            if (i0 >= 0) {
                col4row[i0] = -1;
                if (strict && steps < limit) free_rows[--kk] = i0;
                else free_rows[nfree++] = i0;
            }
            row4col[j1] = i;
            col4row[i] = j1;
            u[i] = sign * ci[j1] - v[j1];
            steps++;
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
                double r = min_val + sign * ci[j] - ui - v[j];
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
