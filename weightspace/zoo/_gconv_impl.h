/* Body of the grouped-convolution kernels, included once per build by _gconv.c with NAME
 * (a suffix for each function) and TARGET (the instruction set) defined.
 *
 * Layout, model-major and channels-last: x[m, b, h, w, ci] (model stride p->xms, 0 when all
 * models read the same input), out and g[m, b, oh, ow, co], weights per model. A block of NB
 * consecutive positions (b, oh, ow flattened) is computed at once, one Co-vector accumulator
 * each; a tap that falls in the padding reads a row of zeros instead of branching. */

/* a 16-float vector from memory and back, in this build's instructions */
static inline __attribute__((always_inline)) TARGET v16 NAME(ld)(const float *p) { v16 v; memcpy(&v, p, 64); return v; }
static inline __attribute__((always_inline)) TARGET void NAME(st)(float *p, v16 v) { memcpy(p, &v, 64); }
#define ld NAME(ld)
#define st NAME(st)

/* x[m] (B, H, W, Ci) into xp (B, Hp, Wp, Ci) with the zero padding around it: the kernels
 * below then read every tap without a bounds check */
TARGET static void NAME(pad_model)(const ws_conv *p, const float *xm, float *xp, int64_t Hp, int64_t Wp)
{
    const int64_t H = p->H, W = p->W, Ci = p->Ci;
    /* the rows and columns no tap reaches (a stride that skips the last ones) are left out */
    const int64_t rows = H < Hp - p->pt ? H : Hp - p->pt, cols = W < Wp - p->pl ? W : Wp - p->pl;
    memset(xp, 0, (size_t)(p->B * Hp * Wp * Ci) * sizeof(float));
    if (rows <= 0 || cols <= 0) return;
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t h = 0; h < rows; h++)
            memcpy(xp + ((b * Hp + h + p->pt) * Wp + p->pl) * Ci, xm + (b * H + h) * W * Ci,
                   (size_t)(cols * Ci) * sizeof(float));
}

/* out[m, p, co] = bias[m, co] + sum_{tap, ci} x[m, in(p, tap), ci] * wt[m, tap, ci, co] */
TARGET static int NAME(fwd)(const ws_conv *p, const float *x, const float *wt, const float *bias, float *out,
                            int64_t m0, int64_t m1)
{
    const int64_t K = p->K, S = p->S, Ci = p->Ci, Co = p->Co, Ho = p->Ho, Wo = p->Wo;
    const int64_t Hp = (Ho - 1) * S + K, Wp = (Wo - 1) * S + K, P = p->B * Ho * Wo, oms = P * Co;
    float *xpad = malloc((size_t)(p->B * Hp * Wp * Ci) * sizeof(float));
    int64_t *toff = malloc((size_t)(K * K) * sizeof(int64_t));
    if (!xpad || !toff) { free(xpad); free(toff); return -2; }
    for (int64_t kh = 0; kh < K; kh++)
        for (int64_t kw = 0; kw < K; kw++) toff[kh * K + kw] = (kh * Wp + kw) * Ci;
    for (int64_t m = m0; m < m1; m++) {
        if (m == m0 || p->xms) NAME(pad_model)(p, x + m * p->xms, xpad, Hp, Wp);
        for (int64_t c0 = 0; c0 < Co; c0 += 16) {
            const float *wm = wt + m * K * K * Ci * Co + c0;
            v16 bv = bias ? ld(bias + m * Co + c0) : (v16){0};
            for (int64_t q0 = 0; q0 < P; q0 += NB) {
                int nb = P - q0 < NB ? (int)(P - q0) : NB;
                const float *base[NB];
                for (int j = 0; j < NB; j++) {
                    int64_t q = q0 + (j < nb ? j : 0);
                    int64_t ow = q % Wo, oh = q / Wo % Ho, b = q / (Wo * Ho);
                    base[j] = xpad + ((b * Hp + oh * S) * Wp + ow * S) * Ci;
                }
                v16 acc[NB];
                for (int j = 0; j < NB; j++) acc[j] = bv;
                for (int64_t t = 0; t < K * K; t++) {
                    const int64_t off = toff[t];
                    const float *wp = wm + t * Ci * Co;
                    for (int64_t ci = 0; ci < Ci; ci++) {
                        v16 w = ld(wp + ci * Co);
                        for (int j = 0; j < NB; j++) acc[j] += base[j][off + ci] * w;
                    }
                }
                float *op = out + m * oms + q0 * Co + c0;
                for (int j = 0; j < nb; j++) st(op + j * Co, acc[j]);
            }
        }
    }
    free(xpad);
    free(toff);
    return 0;
}

/* gx[m, r, ci] = sum over the (position, tap) pairs that read input position r of
 * sum_co g[m, position, co] * wT[m, tap, co, ci]: gathered, so each is written once. The
 * input positions go by residue class modulo the stride, (ih % S, iw % S): within a class
 * the same taps apply, so no multiply is spent on a tap that does not reach the position. */
TARGET static void NAME(bwd_data)(const ws_conv *p, const float *g, const float *wT, float *gx, int64_t m0, int64_t m1)
{
    const int64_t B = p->B, H = p->H, W = p->W, K = p->K, S = p->S, Ci = p->Ci, Co = p->Co, Ho = p->Ho, Wo = p->Wo;
    const int64_t oms = B * Ho * Wo * Co, xms = B * H * W * Ci;
    for (int64_t m = m0; m < m1; m++)
        for (int64_t c0 = 0; c0 < Ci; c0 += 16) {
            const float *gm = g + m * oms, *wm = wT + m * K * K * Co * Ci + c0;
            float *xm = gx + m * xms + c0;
            for (int64_t ph = 0; ph < S && ph < H; ph++)
                for (int64_t pw = 0; pw < S && pw < W; pw++) {
                    const int64_t na = (H - ph + S - 1) / S, nc = (W - pw + S - 1) / S, R = B * na * nc;
                    const int64_t kh0 = ((ph + p->pt) % S), kw0 = ((pw + p->pl) % S);
                    for (int64_t r0 = 0; r0 < R; r0 += NB) {
                        int nb = R - r0 < NB ? (int)(R - r0) : NB;
                        int64_t bb[NB], hh[NB], ww[NB];
                        for (int j = 0; j < NB; j++) {
                            int64_t r = r0 + (j < nb ? j : 0);
                            ww[j] = pw + r % nc * S;
                            hh[j] = ph + r / nc % na * S;
                            bb[j] = r / (nc * na);
                        }
                        v16 acc[NB];
                        for (int j = 0; j < NB; j++) acc[j] = (v16){0};
                        for (int64_t kh = kh0; kh < K; kh += S)
                            for (int64_t kw = kw0; kw < K; kw += S) {
                                const float *gp[NB];
                                int any = 0;
                                for (int j = 0; j < NB; j++) {
                                    int64_t t = hh[j] + p->pt - kh, u = ww[j] + p->pl - kw;
                                    int ok = t >= 0 && u >= 0 && t / S < Ho && u / S < Wo;
                                    gp[j] = ok ? gm + ((bb[j] * Ho + t / S) * Wo + u / S) * Co : ws_zeros;
                                    any |= ok;
                                }
                                if (!any) continue;
                                const float *wp = wm + (kh * K + kw) * Co * Ci;
                                for (int64_t co = 0; co < Co; co++) {
                                    v16 w = ld(wp + co * Ci);
                                    for (int j = 0; j < NB; j++) acc[j] += gp[j][co] * w;
                                }
                            }
                        for (int j = 0; j < nb; j++) st(xm + ((bb[j] * H + hh[j]) * W + ww[j]) * Ci, acc[j]);
                    }
                }
        }
}

/* gw[m, tap, ci, co] = sum_p x[m, in(p, tap), ci] * g[m, p, co], gb[m, co] = sum_p g[m, p, co]:
 * NB input channels' accumulators in registers per tap, streaming the positions in order
 * over the model's padded input */
TARGET static int NAME(bwd_weight)(const ws_conv *p, const float *x, const float *g, float *gw, float *gb,
                                   int64_t m0, int64_t m1)
{
    const int64_t B = p->B, K = p->K, S = p->S, Ci = p->Ci, Co = p->Co, Ho = p->Ho, Wo = p->Wo;
    const int64_t Hp = (Ho - 1) * S + K, Wp = (Wo - 1) * S + K, oms = B * Ho * Wo * Co;
    float *xpad = malloc((size_t)(B * Hp * Wp * Ci) * sizeof(float));
    if (!xpad) return -2;
    for (int64_t m = m0; m < m1; m++) {
        if (m == m0 || p->xms) NAME(pad_model)(p, x + m * p->xms, xpad, Hp, Wp);
        for (int64_t c0 = 0; c0 < Co; c0 += 16) {
            const float *gm = g + m * oms + c0;
            if (gb) {
                v16 s = (v16){0};
                for (int64_t q = 0; q < B * Ho * Wo; q++) s += ld(gm + q * Co);
                st(gb + m * Co + c0, s);
            }
            for (int64_t kh = 0; kh < K; kh++)
                for (int64_t kw = 0; kw < K; kw++)
                    for (int64_t ci0 = 0; ci0 < Ci; ci0 += NB) {
                        int nc = Ci - ci0 < NB ? (int)(Ci - ci0) : NB;
                        v16 acc[NB];
                        for (int j = 0; j < NB; j++) acc[j] = (v16){0};
                        for (int64_t b = 0; b < B; b++)
                            for (int64_t oh = 0; oh < Ho; oh++) {
                                const float *xr = xpad + ((b * Hp + oh * S + kh) * Wp + kw) * Ci + ci0;
                                const float *gr = gm + ((b * Ho + oh) * Wo) * Co;
                                if (nc == NB) {
                                    for (int64_t ow = 0; ow < Wo; ow++) {
                                        v16 gv = ld(gr + ow * Co);
                                        const float *xq = xr + ow * S * Ci;
                                        for (int j = 0; j < NB; j++) acc[j] += xq[j] * gv;
                                    }
                                } else {
                                    for (int64_t ow = 0; ow < Wo; ow++) {
                                        v16 gv = ld(gr + ow * Co);
                                        const float *xq = xr + ow * S * Ci;
                                        for (int j = 0; j < nc; j++) acc[j] += xq[j] * gv;
                                    }
                                }
                            }
                        float *wp = gw + m * K * K * Ci * Co + ((kh * K + kw) * Ci + ci0) * Co + c0;
                        for (int j = 0; j < nc; j++) st(wp + j * Co, acc[j]);
                    }
        }
    }
    free(xpad);
    return 0;
}

#undef ld
#undef st
