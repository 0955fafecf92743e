/*
 * The body of the assignment solver (_lap.c), included once per build: LANES (8, 4 or 1:
 * vector width in doubles, 1 for plain scalar code), NAME(x) (x with the build's suffix) and
 * TARGET (the build's target attribute) are defined by the includer.
 */
#if LANES > 1
typedef double NAME(vd) __attribute__((vector_size(LANES * sizeof(double))));
typedef int64_t NAME(vl) __attribute__((vector_size(LANES * sizeof(int64_t))));
#define vd NAME(vd)
#define vl NAME(vl)
#define VSEL(m, a, b) ((vd)(((m) & (vl)(a)) | (~(m) & (vl)(b))))
#define LSEL(m, a, b) (((m) & (a)) | (~(m) & (b)))
WS_INLINE vd NAME(vload)(const double *p) { vd x; memcpy(&x, p, sizeof x); return x; }
WS_INLINE vl NAME(lload)(const int64_t *p) { vl x; memcpy(&x, p, sizeof x); return x; }
WS_INLINE void NAME(vstore)(double *p, vd x) { memcpy(p, &x, sizeof x); }
WS_INLINE void NAME(lstore)(int64_t *p, vl x) { memcpy(p, &x, sizeof x); }
WS_INLINE vd NAME(vsplat)(double a) { return (vd){0} + a; }
WS_INLINE vl NAME(lsplat)(int64_t a) { return (vl){0} + a; }
#define vload NAME(vload)
#define lload NAME(lload)
#define vstore NAME(vstore)
#define lstore NAME(lstore)
#define vsplat NAME(vsplat)
#define lsplat NAME(lsplat)
#endif

/* The smallest of the lanes' minima, ties to the smallest index. */
WS_INLINE int NAME(best_lane)(const double *m, const int64_t *a, int skip)
{
    int best = -1;
    for (int l = 0; l < LANES; l++) {
        if (l == skip || a[l] < 0) continue;
        if (best < 0 || m[l] < m[best] || (m[l] == m[best] && a[l] < a[best])) best = l;
    }
    return best;
}

/* The lanes' overall minimum and its index in *arg (+inf and -1 when no lane holds one). */
WS_INLINE double NAME(lanes_min)(const double *lm, const int64_t *la, int64_t *arg)
{
    int b = NAME(best_lane)(lm, la, -1);
    *arg = b < 0 ? -1 : la[b];
    return b < 0 ? INFINITY : lm[b];
}

/* min_j sign * c[j] - v[j] and the first j attaining it (-1 when every value is +inf / NaN). */
WS_INLINE double NAME(row_argmin)(const double *c, const double *v, int64_t n, double sign, int64_t *arg)
{
    double lm[LANES];
    int64_t la[LANES], j0 = 0;
    for (int l = 0; l < LANES; l++) { lm[l] = INFINITY; la[l] = -1; }
#if LANES > 1
    {
        vd vm = vsplat(INFINITY), vs = vsplat(sign);
        vl va = lsplat(-1), idx = IOTA, step = lsplat(LANES);
        for (; j0 + LANES <= n; j0 += LANES) {
            vd r = vs * vload(c + j0) - vload(v + j0);
            vl lt = r < vm;
            vm = VSEL(lt, r, vm);
            va = LSEL(lt, idx, va);
            idx += step;
        }
        vstore(lm, vm);
        lstore(la, va);
    }
#endif
    for (int64_t j = j0; j < n; j++) {
        int l = (int)((j - j0) & (LANES - 1));
        double r = sign * c[j] - v[j];
        if (r < lm[l]) { lm[l] = r; la[l] = j; }
    }
    return NAME(lanes_min)(lm, la, arg);
}

/* The two smallest of sign * c[j] - v[j] in one pass: u1 at the first index j1 attaining it,
 * u2 the smallest over j != j1 at the first index j2 attaining it. Each lane keeps its two
 * smallest (first occurrences); the merge takes the best lane's first, then the best of that
 * lane's second and the other lanes' first. */
WS_INLINE void NAME(row_top2)(const double *c, const double *v, int64_t n, double sign, double *u1,
                        int64_t *j1, double *u2, int64_t *j2)
{
    double m1[LANES], m2[LANES];
    int64_t a1[LANES], a2[LANES], j0 = 0;
    for (int l = 0; l < LANES; l++) { m1[l] = m2[l] = INFINITY; a1[l] = a2[l] = -1; }
#if LANES > 1
    {
        vd vm1 = vsplat(INFINITY), vm2 = vsplat(INFINITY), vs = vsplat(sign);
        vl va1 = lsplat(-1), va2 = lsplat(-1), idx = IOTA, step = lsplat(LANES);
        for (; j0 + LANES <= n; j0 += LANES) {
            vd r = vs * vload(c + j0) - vload(v + j0);
            vl lt1 = r < vm1, lt2 = r < vm2;
            vm2 = VSEL(lt1, vm1, VSEL(lt2, r, vm2));
            va2 = LSEL(lt1, va1, LSEL(lt2, idx, va2));
            vm1 = VSEL(lt1, r, vm1);
            va1 = LSEL(lt1, idx, va1);
            idx += step;
        }
        vstore(m1, vm1); vstore(m2, vm2);
        lstore(a1, va1); lstore(a2, va2);
    }
#endif
    for (int64_t j = j0; j < n; j++) {
        int l = (int)((j - j0) & (LANES - 1));
        double r = sign * c[j] - v[j];
        if (r < m1[l]) { m2[l] = m1[l]; a2[l] = a1[l]; m1[l] = r; a1[l] = j; }
        else if (r < m2[l]) { m2[l] = r; a2[l] = j; }
    }
    int b = NAME(best_lane)(m1, a1, -1);
    if (b < 0) { *u1 = *u2 = INFINITY; *j1 = *j2 = -1; return; }
    *u1 = m1[b];
    *j1 = a1[b];
    int o = NAME(best_lane)(m1, a1, b);
    if (a2[b] >= 0 && (o < 0 || m2[b] < m1[o] || (m2[b] == m1[o] && a2[b] < a1[o]))) {
        *u2 = m2[b];
        *j2 = a2[b];
    } else if (o >= 0) {
        *u2 = m1[o];
        *j2 = a1[o];
    } else {
        *u2 = INFINITY;
        *j2 = -1;
    }
}

/* One step of the shortest-path search from row i: relax every unscanned column through row i,
 * then return the smallest tentative distance among unscanned columns and its first index.
 * Scanned columns hold NaN in shortest[]: NaN compares false both ways, so they are neither
 * relaxed nor chosen, with no separate flag to load. */
WS_INLINE double NAME(relax_argmin)(const double *ci, const double *v, double *shortest, int64_t *path, int64_t n,
                              double sign, double min_val, double ui, int64_t i, int64_t *arg)
{
    double lm[LANES];
    int64_t la[LANES], j0 = 0;
    for (int l = 0; l < LANES; l++) { lm[l] = INFINITY; la[l] = -1; }
#if LANES > 1
    {
        vd vm = vsplat(INFINITY), vs = vsplat(sign), mv = vsplat(min_val), vu = vsplat(ui);
        vl va = lsplat(-1), idx = IOTA, step = lsplat(LANES), vi = lsplat(i);
        for (; j0 + LANES <= n; j0 += LANES) {
            vd r = mv + vs * vload(ci + j0) - vu - vload(v + j0);
            vd s = vload(shortest + j0);
            vl upd = r < s;
            s = VSEL(upd, r, s);
            vstore(shortest + j0, s);
            lstore(path + j0, LSEL(upd, vi, lload(path + j0)));
            vl lt = s < vm;
            vm = VSEL(lt, s, vm);
            va = LSEL(lt, idx, va);
            idx += step;
        }
        vstore(lm, vm);
        lstore(la, va);
    }
#endif
    for (int64_t j = j0; j < n; j++) {
        int l = (int)((j - j0) & (LANES - 1));
        double r = min_val + sign * ci[j] - ui - v[j];
        if (r < shortest[j]) { shortest[j] = r; path[j] = i; }
        if (shortest[j] < lm[l]) { lm[l] = shortest[j]; la[l] = j; }
    }
    return NAME(lanes_min)(lm, la, arg);
}

/* The solver. */
TARGET static int64_t NAME(lap)(int64_t n, const double *cost, int64_t *col4row, double *u, double *v, int warm,
                                double slack, double sign)
{
    int64_t i, j, k;
    int64_t *row4col = malloc(n * sizeof(int64_t));
    int64_t *path = malloc(n * sizeof(int64_t));
    int64_t *free_rows = malloc(n * sizeof(int64_t));
    int64_t *visited = malloc(n * sizeof(int64_t));
    int64_t *scanned = malloc(n * sizeof(int64_t));
    double *shortest = malloc(n * sizeof(double));
    double *dist = malloc(n * sizeof(double));
    int64_t nfree = 0, result = 0;

    if (!row4col || !path || !free_rows || !visited || !scanned || !shortest || !dist) {
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
        int64_t arg;
        double m = NAME(row_argmin)(ci, v, n, sign, &arg);
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
    nfree = ws_take_cheapest(n, col4row, row4col, scanned, free_rows);

    /* augmenting row reduction (Jonker & Volgenant 1987): each free row takes its cheapest
     * column and lowers that column's dual to the gap to its second cheapest, evicting the
     * previous owner; O(n) per step, where an augmenting path costs O(n * rows visited).
     * Duals stay feasible and every assigned row stays tight, which the paths below need. */
    int passes = warm ? ARR_PASSES_WARM : ARR_PASSES;
    for (int pass = 0; pass < passes && nfree > 0 && n > 1; pass++) {
        int64_t kk = 0, prv = nfree, steps = 0, limit = (warm ? ARR_LIMIT_WARM : ARR_LIMIT) * n;
        nfree = 0;
        while (kk < prv) {
            i = free_rows[kk++];
            const double *ci = cost + i * n;
            int64_t j1, j2;
            double u1, u2;
            NAME(row_top2)(ci, v, n, sign, &u1, &j1, &u2, &j2);
            if (j1 < 0 || j2 < 0 || !isfinite(u1) || !isfinite(u2)) { result = -1; goto done; }
            j1 = ws_arr_step(i, u1, j1, u2, j2, row4col, col4row, v, free_rows, &kk, &nfree, steps < limit);
            u[i] = sign * ci[j1] - v[j1];
            steps++;
        }
    }

    /* one shortest augmenting path (Dijkstra on reduced costs) per row still free */
    for (k = 0; k < nfree; k++) {
        int64_t cur = free_rows[k], sink = -1, nvis = 0, nscan = 0;
        double min_val = 0.0;
        for (j = 0; j < n; j++) shortest[j] = INFINITY;
        i = cur;
        while (sink == -1) {
            int64_t index;
            visited[nvis++] = i;
            min_val = NAME(relax_argmin)(cost + i * n, v, shortest, path, n, sign, min_val, u[i], i, &index);
            if (index < 0 || !isfinite(min_val)) { result = -1; goto done; }
            j = index;
            dist[nscan] = shortest[j];
            shortest[j] = NAN;
            scanned[nscan++] = j;
            if (row4col[j] == -1) sink = j; else i = row4col[j];
        }
        ws_augment(cur, sink, min_val, nvis, visited, nscan, scanned, dist, u, v, path, row4col, col4row);
        result++;
    }
done:
    free(row4col); free(path); free(free_rows); free(visited);
    free(scanned); free(shortest); free(dist);
    return result;
}


#undef vd
#undef vl
#undef VSEL
#undef LSEL
#undef vload
#undef lload
#undef vstore
#undef lstore
#undef vsplat
#undef lsplat
