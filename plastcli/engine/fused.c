/* The fused inner loop of the fast meta-gradient: one call runs a group's whole episode
 * (the online steps, the query loss, the reverse pass) with no per-operation dispatch.
 *
 * The same algebra as plastcli/engine/adjoint.py, written as loops over rows so that one
 * pass over a weight matrix does everything that step needs from it:
 *   forward, per step and layer: z = W p; back = M^T e (M = B or W) fused with
 *   v = W^T y_post; W q if a term reads y_post^T W e_pre; the update
 *   W <- kappa W + sum_a a R_a^T, R_a = sum over the layer's groups of K b;
 *   query: mean cross-entropy of the final weights and G = dCE/dW;
 *   reverse, per step: G^T a and G R_a (one pass over G); W_t rebuilt from W_{t+1} by
 *   undoing the update, fused with W vbar and W dd (sym feedback); then W^T zbar fused
 *   with G_t = kappa G_{t+1} + zbar p^T + y_post r^T and decay's G . W_t.
 * The terms come in as data (the layer plans of plastcli/core/terms.py, encoded by
 * plastcli/engine/fused.py), so every term of the grammar runs here.
 *
 * Compiled once per machine and element type (-DREAL=float or double) by fused.py.
 * Members are independent: they are shared among `threads` POSIX threads.
 * Shapes (per member): W_l [n_l, n_{l-1}] row-major, x [T, n_0], coef [L, R].
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef REAL
#define REAL double
#endif
#ifdef REAL_IS_FLOAT
#define exp expf
#define log logf
#define log1p log1pf
#define fabs fabsf
#endif

enum { A_E = 0, A_Y = 1, A_ONES = 2 };
enum { B_Y = 0, B_E = 1, B_ONES = 2, B_OJA = 3 };
enum { S_ONE = 0, S_SUM = 1, S_YME = 2, S_EMY = 3 };
#define MAXL 16
#define MAXG 32
#define MAXM 8

typedef struct {
    int a, b, sign, nm;
    int r[MAXM], s[MAXM];
} Group;

typedef struct {
    int ng, decay, needs_v, needs_yme;
    int has_a[3];
    Group g[MAXG];
} Plan;

typedef struct {
    int P, L, T, Q, R, need_e0, sym, threads;
    const int *dims;
    REAL beta, min_rebuild;
    REAL **W;              /* [L] -> [P, n_l, n_{l-1}], in: W_0; out: undefined */
    REAL **W_final;        /* [L] -> [P, n_l, n_{l-1}], out: W_T */
    REAL *const *B;        /* [L] -> fixed feedback, or NULL (sym: B = W by value) */
    const REAL *x;         /* [P, T, n_0] */
    const int64_t *y;      /* [P, T] */
    const REAL *xq;        /* [P, Q, n_0] */
    const int64_t *yq;     /* [P, Q] */
    const REAL *coef;      /* [P, L, R] */
    REAL *ce;              /* [P] out */
    REAL *grad;            /* [P, L, R] out (zeroed here) */
    Plan plan[MAXL];
    int status;
} Job;

/* ------------------------------------------------------------------ small helpers */

/* Sums run in LANES independent partial sums (one accumulator would make each row's
 * product wait on the adder's latency at every vector), added up at the end by hsum in a
 * fixed tree, so a sum's rounding depends only on its length. */
#define LANES 8
/* The tree (k, k+4), then (k, k+2), then (0, 1), written out: as a loop gcc kept it a loop
 * through memory, 15% of the kernel's time outside its row passes. */
static inline REAL hsum(const REAL *acc) {
    REAL a0 = acc[0] + acc[4], a1 = acc[1] + acc[5], a2 = acc[2] + acc[6], a3 = acc[3] + acc[7];
    return (a0 + a2) + (a1 + a3);
}

static inline REAL dot(const REAL *restrict a, const REAL *restrict b, int n) {
    REAL acc[LANES] = {0};
    int j = 0;
    for (; j + LANES <= n; j += LANES) {
#pragma omp simd
        for (int k = 0; k < LANES; k++) acc[k] += a[j + k] * b[j + k];
    }
    for (int k = 0; j < n; j++, k++) acc[k] += a[j] * b[j];
    return hsum(acc);
}

/* out[k * stride] = row . Y_k for the four rows Y_k = Y + k m (query samples). */
static inline void dot4(const REAL *restrict row, const REAL *restrict Y, int m,
                        REAL *out, long stride) {
    REAL a0[LANES] = {0}, a1[LANES] = {0}, a2[LANES] = {0}, a3[LANES] = {0};
    const REAL *restrict y0 = Y, *restrict y1 = Y + m, *restrict y2 = Y + 2L * m,
               *restrict y3 = Y + 3L * m;
    int j = 0;
    for (; j + LANES <= m; j += LANES) {
#pragma omp simd
        for (int k = 0; k < LANES; k++) {
            REAL w = row[j + k];
            a0[k] += w * y0[j + k]; a1[k] += w * y1[j + k];
            a2[k] += w * y2[j + k]; a3[k] += w * y3[j + k];
        }
    }
    for (int k = 0; j < m; j++, k++) {
        a0[k] += row[j] * y0[j]; a1[k] += row[j] * y1[j];
        a2[k] += row[j] * y2[j]; a3[k] += row[j] * y3[j];
    }
    out[0] = hsum(a0); out[stride] = hsum(a1); out[2 * stride] = hsum(a2);
    out[3 * stride] = hsum(a3);
}

/* out[i] = A_i . v for the r rows A_i = A + i m: each row's sum exactly as dot's (the same
 * partial sums and tree, so the same bits), four rows at a time: one row's sum is a single
 * chain of dependent adds that waits on the adder's latency at every vector; four rows give
 * four chains, and each load of v serves all four. out [r], A [r, m], v [m]. */
static void dot_rows(REAL *out, const REAL *restrict A, const REAL *restrict v, int r, int m) {
    int i = 0;
    for (; i + 4 <= r; i += 4) {
        REAL a0[LANES] = {0}, a1[LANES] = {0}, a2[LANES] = {0}, a3[LANES] = {0};
        const REAL *restrict r0 = A + (long)i * m, *restrict r1 = r0 + m, *restrict r2 = r1 + m,
                   *restrict r3 = r2 + m;
        int j = 0;
        for (; j + LANES <= m; j += LANES) {
#pragma omp simd
            for (int k = 0; k < LANES; k++) {
                REAL x = v[j + k];
                a0[k] += r0[j + k] * x; a1[k] += r1[j + k] * x;
                a2[k] += r2[j + k] * x; a3[k] += r3[j + k] * x;
            }
        }
        for (int k = 0; j < m; j++, k++) {
            a0[k] += r0[j] * v[j]; a1[k] += r1[j] * v[j];
            a2[k] += r2[j] * v[j]; a3[k] += r3[j] * v[j];
        }
        out[i] = hsum(a0); out[i + 1] = hsum(a1); out[i + 2] = hsum(a2); out[i + 3] = hsum(a3);
    }
    for (; i < r; i++) out[i] = dot(A + (long)i * m, v, m);
}

static inline void axpy(REAL *restrict out, REAL c, const REAL *restrict a, int n) {
#pragma omp simd
    for (int j = 0; j < n; j++) out[j] += c * a[j];
}

/* out += sum_i c[i] A_i over the r rows A_i = A + i m, in the order of i: each element gets
 * the same sums, in the same order, as r calls of axpy (so the same bits: the kernel is built
 * without multiply-add contraction), but out is loaded and stored once per four rows instead
 * of once per row. out [m], c [r], A [r, m]. */
static void axpy_rows(REAL *restrict out, const REAL *c, const REAL *restrict A, int r, int m) {
    int i = 0;
    for (; i + 4 <= r; i += 4) {
        const REAL *restrict a0 = A + (long)i * m, *restrict a1 = a0 + m, *restrict a2 = a1 + m,
                   *restrict a3 = a2 + m;
        const REAL c0 = c[i], c1 = c[i + 1], c2 = c[i + 2], c3 = c[i + 3];
#pragma omp simd
        for (int j = 0; j < m; j++) {
            REAL o = out[j];
            o += c0 * a0[j];
            o += c1 * a1[j];
            o += c2 * a2[j];
            o += c3 * a3[j];
            out[j] = o;
        }
    }
    for (; i < r; i++) axpy(out, c[i], A + (long)i * m, m);
}

/* For the tests: dot_rows and dot over the same r rows, out_rows [r] and out_one [r]; and
 * axpy_rows and r axpy calls into two copies of one start, acc_rows [m] and acc_one [m]. */
void plast_sums(const REAL *A, const REAL *v, int r, int m, REAL *out_rows, REAL *out_one,
                REAL *acc_rows, REAL *acc_one) {
    dot_rows(out_rows, A, v, r, m);
    for (int i = 0; i < r; i++) out_one[i] = dot(A + (long)i * m, v, m);
    axpy_rows(acc_rows, out_rows, A, r, m);
    for (int i = 0; i < r; i++) axpy(acc_one, out_rows[i], A + (long)i * m, m);
}

/* ------------------------------------------------------------------ one pass over a row */

/* Everything a pass does with one row of a matrix, in one loop over it, so that each new
 * element is used from a register (a separate loop that re-reads just-written elements
 * ran 1.4-3.4x slower in a microbenchmark here, depending on code placement):
 *   w = kap row + sum_k c[k] V[k]   (written back; kap = 1 is exact)
 *   dots[q] += w . X[q]   for q < nx
 *   Y[r] += s[r] w        for r < ny
 */
typedef struct {
    REAL kap, c[3], s[3];
    const REAL *V[3], *X[2];
    REAL *Y[3];
    int nv, nx, ny;
} RowOp;

/* Element J of a one-row pass (lane K of the partial sums), after w = kap row[J]. */
#define ROWOP_ELEMENT(NV, NX, NY, J, K)                                                 \
    if (NV > 0) w += c0 * V0[J];                                                        \
    if (NV > 1) w += c1 * V1[J];                                                        \
    if (NV > 2) w += c2 * V2[J];                                                        \
    row[J] = w;                                                                         \
    if (NX > 0) a0[K] += w * X0[J];                                                     \
    if (NX > 1) a1[K] += w * X1[J];                                                     \
    if (NY > 0) Y0[J] += s0 * w;                                                        \
    if (NY > 1) Y1[J] += s1 * w;                                                        \
    if (NY > 2) Y2[J] += s2 * w;

#define ROWOP_BODY(NV, NX, NY)                                                          \
    static void rowop_##NV##_##NX##_##NY(const RowOp *op, REAL *restrict row, int m,    \
                                          REAL *dots) {                                 \
        REAL a0[LANES] = {0}, a1[LANES] = {0};                                          \
        const REAL kap = op->kap;                                                       \
        const REAL *restrict V0 = op->V[0], *restrict V1 = op->V[1], *restrict V2 = op->V[2]; \
        const REAL *restrict X0 = op->X[0], *restrict X1 = op->X[1];                    \
        REAL *restrict Y0 = op->Y[0], *restrict Y1 = op->Y[1], *restrict Y2 = op->Y[2]; \
        const REAL c0 = op->c[0], c1 = op->c[1], c2 = op->c[2];                         \
        const REAL s0 = op->s[0], s1 = op->s[1], s2 = op->s[2];                         \
        int j = 0;                                                                      \
        if (kap == 1) /* the common case (no decay): one multiply fewer per element */  \
            for (; j + LANES <= m; j += LANES) {                                        \
                _Pragma("omp simd") for (int k = 0; k < LANES; k++) {                   \
                    REAL w = row[j + k];                                                \
                    ROWOP_ELEMENT(NV, NX, NY, j + k, k)                                 \
                }                                                                       \
            }                                                                           \
        for (; j + LANES <= m; j += LANES) {                                            \
            _Pragma("omp simd") for (int k = 0; k < LANES; k++) {                       \
                REAL w = kap * row[j + k];                                              \
                ROWOP_ELEMENT(NV, NX, NY, j + k, k)                                     \
            }                                                                           \
        }                                                                               \
        for (int k = 0; j < m; j++, k++) {                                              \
            REAL w = kap * row[j];                                                      \
            ROWOP_ELEMENT(NV, NX, NY, j, k)                                             \
        }                                                                               \
        if (NX > 0) dots[0] += hsum(a0);                                                \
        if (NX > 1) dots[1] += hsum(a1);                                                \
    }
#define ROWOP_NY(NV, NX) ROWOP_BODY(NV, NX, 0) ROWOP_BODY(NV, NX, 1) ROWOP_BODY(NV, NX, 2) \
    ROWOP_BODY(NV, NX, 3)
#define ROWOP_NX(NV) ROWOP_NY(NV, 0) ROWOP_NY(NV, 1) ROWOP_NY(NV, 2)
ROWOP_NX(0) ROWOP_NX(1) ROWOP_NX(2) ROWOP_NX(3)

typedef void (*RowFn)(const RowOp *, REAL *restrict, int, REAL *);
#define RF(NV, NX) rowop_##NV##_##NX##_0, rowop_##NV##_##NX##_1, rowop_##NV##_##NX##_2, \
    rowop_##NV##_##NX##_3
#define RFV(NV) RF(NV, 0), RF(NV, 1), RF(NV, 2)
static const RowFn ROWOPS[4 * 3 * 4] = {RFV(0), RFV(1), RFV(2), RFV(3)};

static inline RowFn rowop_fn(const RowOp *op) { return ROWOPS[(op->nv * 3 + op->nx) * 4 + op->ny]; }

/* Element J of a two-row pass (lane K), after w = ka ra[J] and u = kb rb[J]. */
#define ROWOP2_ELEMENT(NV, NX, NY, J, K)                                                \
    if (NV > 0) { w += ca0 * V0[J]; u += cb0 * V0[J]; }                                 \
    if (NV > 1) { w += ca1 * V1[J]; u += cb1 * V1[J]; }                                 \
    if (NV > 2) { w += ca2 * V2[J]; u += cb2 * V2[J]; }                                 \
    ra[J] = w;                                                                          \
    rb[J] = u;                                                                          \
    if (NX > 0) { a0[K] += w * X0[J]; b0[K] += u * X0[J]; }                             \
    if (NX > 1) { a1[K] += w * X1[J]; b1[K] += u * X1[J]; }                             \
    if (NY > 0) { REAL y = Y0[J] + sa0 * w; Y0[J] = y + sb0 * u; }                      \
    if (NY > 1) { REAL y = Y1[J] + sa1 * w; Y1[J] = y + sb1 * u; }                      \
    if (NY > 2) { REAL y = Y2[J] + sa2 * w; Y2[J] = y + sb2 * u; }

/* The same pass over two rows at once, ra with oa's coefficients and rb with ob's (the
 * vectors V, X, Y are shared): each row's sums are exactly one-row's (the same partial sums
 * in the same order, and Y takes ra's share before rb's, as row by row), but the two rows'
 * dot products are two independent chains of adds instead of one. */
#define ROWOP2_BODY(NV, NX, NY)                                                         \
    static void rowop2_##NV##_##NX##_##NY(const RowOp *oa, const RowOp *ob,             \
                                           REAL *restrict ra, REAL *restrict rb, int m,  \
                                           REAL *da, REAL *db) {                         \
        REAL a0[LANES] = {0}, a1[LANES] = {0}, b0[LANES] = {0}, b1[LANES] = {0};         \
        const REAL ka = oa->kap, kb = ob->kap;                                          \
        const REAL *restrict V0 = oa->V[0], *restrict V1 = oa->V[1], *restrict V2 = oa->V[2]; \
        const REAL *restrict X0 = oa->X[0], *restrict X1 = oa->X[1];                    \
        REAL *restrict Y0 = oa->Y[0], *restrict Y1 = oa->Y[1], *restrict Y2 = oa->Y[2]; \
        const REAL ca0 = oa->c[0], ca1 = oa->c[1], ca2 = oa->c[2];                      \
        const REAL cb0 = ob->c[0], cb1 = ob->c[1], cb2 = ob->c[2];                      \
        const REAL sa0 = oa->s[0], sa1 = oa->s[1], sa2 = oa->s[2];                      \
        const REAL sb0 = ob->s[0], sb1 = ob->s[1], sb2 = ob->s[2];                      \
        int j = 0;                                                                      \
        if (ka == 1 && kb == 1) /* the common case (no decay): a multiply fewer */      \
            for (; j + LANES <= m; j += LANES) {                                        \
                _Pragma("omp simd") for (int k = 0; k < LANES; k++) {                   \
                    REAL w = ra[j + k], u = rb[j + k];                                  \
                    ROWOP2_ELEMENT(NV, NX, NY, j + k, k)                                \
                }                                                                       \
            }                                                                           \
        for (; j + LANES <= m; j += LANES) {                                            \
            _Pragma("omp simd") for (int k = 0; k < LANES; k++) {                       \
                REAL w = ka * ra[j + k], u = kb * rb[j + k];                            \
                ROWOP2_ELEMENT(NV, NX, NY, j + k, k)                                    \
            }                                                                           \
        }                                                                               \
        for (int k = 0; j < m; j++, k++) {                                              \
            REAL w = ka * ra[j], u = kb * rb[j];                                        \
            ROWOP2_ELEMENT(NV, NX, NY, j, k)                                            \
        }                                                                               \
        if (NX > 0) { da[0] += hsum(a0); db[0] += hsum(b0); }                           \
        if (NX > 1) { da[1] += hsum(a1); db[1] += hsum(b1); }                           \
    }
#define ROWOP2_NY(NV, NX) ROWOP2_BODY(NV, NX, 0) ROWOP2_BODY(NV, NX, 1) ROWOP2_BODY(NV, NX, 2) \
    ROWOP2_BODY(NV, NX, 3)
#define ROWOP2_NX(NV) ROWOP2_NY(NV, 0) ROWOP2_NY(NV, 1) ROWOP2_NY(NV, 2)
ROWOP2_NX(0) ROWOP2_NX(1) ROWOP2_NX(2) ROWOP2_NX(3)

typedef void (*RowFn2)(const RowOp *, const RowOp *, REAL *restrict, REAL *restrict, int,
                       REAL *, REAL *);
#define RF2(NV, NX) rowop2_##NV##_##NX##_0, rowop2_##NV##_##NX##_1, rowop2_##NV##_##NX##_2, \
    rowop2_##NV##_##NX##_3
#define RFV2(NV) RF2(NV, 0), RF2(NV, 1), RF2(NV, 2)
static const RowFn2 ROWOPS2[4 * 3 * 4] = {RFV2(0), RFV2(1), RFV2(2), RFV2(3)};

static inline RowFn2 rowop2_fn(const RowOp *op) {
    return ROWOPS2[(op->nv * 3 + op->nx) * 4 + op->ny];
}

/* The pass over rows row and row + m (r = 2, oa's and ob's coefficients) or over row alone
 * (r = 1); dots[q] gets row q's products. */
static inline void pass_rows(RowFn fn, RowFn2 fn2, const RowOp *oa, const RowOp *ob,
                             REAL *row, int r, int m, REAL dots[2][2]) {
    if (r == 2) fn2(oa, ob, row, row + m, m, dots[0], dots[1]);
    else fn(oa, row, m, dots[0]);
}

/* ------------------------------------------------------------------ activations */

#ifdef REAL_IS_FLOAT
/* exp and log1p of the activations in plain arithmetic, so that loops over them vectorise
 * (libm's calls do not): Cephes' float polynomials after a Cody-Waite reduction. softplus
 * and its slope come within 2 ulp of the exact value here (torch's float softplus: 1.3;
 * tests/test_fused.py checks 4 against float64). The float64 kernel keeps libm. */
typedef union { int32_t i; float f; } Bits; /* C's way to read a float's bits */
static inline float as_float(int32_t i) { Bits u = {.i = i}; return u.f; }
static inline int32_t as_int(float f) { Bits u = {.f = f}; return u.i; }

/* exp(x); 0 below -87.33 (where float's exp falls below its smallest normal, 2^-126) and
 * inf above 88 */
static inline float exp_a(float x) {
    float xin = x;
    x = x < -87.33f ? -87.33f : x > 88.0f ? 88.0f : x;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    p *= as_float(((int32_t)n + 127) << 23);
    return xin < -87.33f ? 0.0f : xin > 88.0f ? INFINITY : p;
}

/* log(u) for a normal u > 0 */
static inline float log_a(float u) {
    int32_t bits = as_int(u);
    float e = (float)((bits >> 23) - 127);
    float m = as_float((bits & 0x007fffff) | 0x3f800000); /* [1, 2) */
    int big = m > 1.41421356f;
    m = big ? 0.5f * m : m;
    e = big ? e + 1.0f : e;
    float f = m - 1.0f, z = f * f;
    float y = 7.0376836292e-2f;
    y = y * f - 1.1514610310e-1f;
    y = y * f + 1.1676998740e-1f;
    y = y * f - 1.2420140846e-1f;
    y = y * f + 1.4249322787e-1f;
    y = y * f - 1.6668057665e-1f;
    y = y * f + 2.0000714765e-1f;
    y = y * f - 2.4999993993e-1f;
    y = y * f + 3.3333331174e-1f;
    y = y * f * z - 2.12194440e-4f * e - 0.5f * z;
    return (f + y) + 0.693359375f * e;
}

/* log(1 + e) for e >= 0: log(u) e / (u - 1) with u = 1 + e corrects u's rounding. Both
 * sides of the choice are computed (a select, not a branch: the loop vectorises). */
static inline float log1p_a(float e) {
    float u = 1.0f + e, du = u - 1.0f;
    float r = log_a(u) * (e / (du == 0.0f ? 1.0f : du));
    return du == 0.0f ? e : r;
}
#else
#define exp_a exp
#define log1p_a log1p
#endif

static inline REAL sigmoid(REAL z) { return (REAL)1 / ((REAL)1 + exp_a(-z)); }

static inline REAL softplus(REAL z, REAL beta) {
    REAL bz = beta * z;
    return bz > 20 ? z : log1p_a(exp_a(bz)) / beta;
}

/* y = softplus_beta(z) and its slope d = sigmoid(beta z), sharing one exp. */
static inline void activate(REAL z, REAL beta, REAL *y, REAL *d) {
    REAL bz = beta * z;
    int big = bz > 20;
    REAL e = exp_a(big ? -bz : bz); /* one exp either way, and selects: the loop vectorises */
    REAL lp = log1p_a(e) / beta, one_e = (REAL)1 + e;
    *y = big ? z : lp;
    *d = (big ? (REAL)1 : e) / one_e;
}

/* activate over n values: z [n] -> y [n], d [n] */
static void activate_n(const REAL *restrict z, REAL beta, REAL *restrict y, REAL *restrict d,
                       int n) {
#pragma omp simd
    for (int i = 0; i < n; i++) activate(z[i], beta, y + i, d + i);
}

/* softplus and its slope at n samples, for the tests: z [n] -> y [n], d [n] */
void plast_activate(const REAL *z, REAL beta, REAL *y, REAL *d, int n) { activate_n(z, beta, y, d, n); }

static void softmax(const REAL *z, REAL *y, int n) {
    REAL mx = z[0], s = 0;
    for (int i = 1; i < n; i++) mx = z[i] > mx ? z[i] : mx;
    for (int i = 0; i < n; i++) { y[i] = exp(z[i] - mx); s += y[i]; }
    for (int i = 0; i < n; i++) y[i] /= s;
}

/* ------------------------------------------------------------------ the tape */

/* Offsets of one step's vectors in the tape (one block of `stride` REALs per step). */
typedef struct {
    long y[MAXL + 1], z[MAXL + 1], e[MAXL + 1], back[MAXL + 1], v[MAXL + 1], wq[MAXL + 1];
    long d[MAXL + 1]; /* sigmoid(beta z_l), l = 1..L-1; d_0 = 1 - exp(-beta x) if e_0 is needed */
    long sc[MAXL + 1]; /* 3 scalars per layer: 1^T y, y^T W q, e^T z */
    long stride;
} Layout;

static void layout(const Job *J, Layout *o) {
    long k = 0;
    const int *n = J->dims;
    for (int l = 0; l <= J->L; l++) {
        o->y[l] = o->z[l] = o->e[l] = o->back[l] = o->v[l] = o->wq[l] = o->sc[l] = o->d[l] = -1;
        if ((l >= 1 && l < J->L) || (l == 0 && J->need_e0)) { o->d[l] = k; k += n[l]; }
        if (l >= 1) { o->y[l] = k; k += n[l]; o->z[l] = k; k += n[l]; }
        if (l >= 1 || J->need_e0) { o->e[l] = k; k += n[l]; }
        if (l >= 1) {
            const Plan *pl = &J->plan[l - 1];
            if (l >= 2) { o->back[l] = k; k += n[l - 1]; } /* B_l^T e_l, for e_{l-1}'s reverse */
            if (pl->needs_v) { o->v[l] = k; k += n[l - 1]; }
            if (pl->needs_yme) { o->wq[l] = k; k += n[l]; }
            o->sc[l] = k; k += 3;
        }
    }
    o->stride = k;
}

/* The vectors of one step of one member, resolved from the tape. */
typedef struct {
    const REAL *y[MAXL + 1], *z[MAXL + 1], *e[MAXL + 1], *back[MAXL + 1], *v[MAXL + 1],
        *wq[MAXL + 1], *sc[MAXL + 1], *d[MAXL + 1];
} Step;

static void step_at(const Layout *o, REAL *tape, const REAL *x_t, int L, Step *s) {
#define AT(f, l) (o->f[l] < 0 ? NULL : tape + o->f[l])
    for (int l = 0; l <= L; l++) {
        s->y[l] = l == 0 ? x_t : AT(y, l);
        s->z[l] = AT(z, l); s->e[l] = AT(e, l); s->back[l] = AT(back, l);
        s->v[l] = AT(v, l); s->wq[l] = AT(wq, l); s->sc[l] = AT(sc, l); s->d[l] = AT(d, l);
    }
#undef AT
}

/* The right-hand vector b of a group at layer l (ones -> NULL). */
static const REAL *right_of(int b, const Step *s, int l) {
    return b == B_Y || b == B_OJA ? s->y[l - 1] : b == B_E ? s->e[l - 1] : NULL;
}

/* K of every group (sign included) and the right factors R_a [3][m] of one layer. */
static void factors(const Plan *pl, const REAL *c, const Step *s, int l, int m, REAL *K,
                    REAL *R) {
    const REAL *sc = s->sc[l];
    for (int a = 0; a < 3; a++)
        if (pl->has_a[a]) memset(R + a * m, 0, sizeof(REAL) * m);
    for (int gi = 0; gi < pl->ng; gi++) {
        const Group *g = &pl->g[gi];
        REAL k = 0;
        for (int i = 0; i < g->nm; i++) k += c[g->r[i]] * (g->s[i] == S_ONE ? 1 : sc[g->s[i] - 1]);
        k = g->sign < 0 ? -k : k;
        K[gi] = k;
        REAL *Ra = R + g->a * m;
        const REAL *b = right_of(g->b, s, l);
        if (g->b == B_ONES) {
            for (int j = 0; j < m; j++) Ra[j] += k;
        } else if (g->b == B_OJA) {
            const REAL *v = s->v[l];
            for (int j = 0; j < m; j++) Ra[j] += k * (b[j] - v[j]);
        } else {
            axpy(Ra, k, b, m);
        }
    }
}

/* ------------------------------------------------------------------ one member */

/* The G products the reverse pass needs at one step, for every left factor a of a layer:
 * xbar_a = G^T a ``[m]`` and G R_a ``[n]`` (a != ones), taken from each row of G as a pass
 * writes it. Sets op's X (R_a) and Y (xbar_a) and returns, in xa/ya, the factor of each. */
typedef struct { int nx, ny, xa[2], ya[3]; const REAL *lv[3]; } Products;

static void product_targets(const Plan *pl, RowOp *op, Products *pr, const REAL *const lv[3],
                            const REAL *Rv, int m, REAL *xbar, int maxn) {
    pr->nx = pr->ny = 0;
    for (int a = 0; a < 3; a++) {
        pr->lv[a] = lv[a];
        if (!pl->has_a[a]) continue;
        op->Y[pr->ny] = xbar + a * maxn;
        pr->ya[pr->ny++] = a;
        if (lv[a]) { op->X[pr->nx] = Rv + a * m; pr->xa[pr->nx++] = a; }
    }
    op->nx = pr->nx;
    op->ny = pr->ny;
}

/* Row i's coefficients of the products (op->s) before the pass over the row. */
static inline void product_row(const Products *pr, RowOp *op, int i) {
    for (int r = 0; r < pr->ny; r++) {
        const REAL *v = pr->lv[pr->ya[r]];
        op->s[r] = v ? v[i] : 1;
    }
}

/* Row i's G R_a from the pass's dots. */
static inline void product_store(const Products *pr, const REAL *dots, REAL *GR, int maxn, int i) {
    for (int q = 0; q < pr->nx; q++) GR[pr->xa[q] * maxn + i] = dots[q];
}

static void clear_products(const Plan *pl, int m, int maxn, REAL *xbar) {
    for (int a = 0; a < 3; a++)
        if (pl->has_a[a]) memset(xbar + a * maxn, 0, sizeof(REAL) * m);
}

/* A bump allocator over one malloc'd block. */
typedef struct { REAL *next; } Arena;
static REAL *take(Arena *ar, long n) { REAL *p = ar->next; ar->next += n; return p; }

static int run_member(const Job *J, int p) {
    const int L = J->L, T = J->T, Q = J->Q, R = J->R, *n = J->dims;
    const REAL beta = J->beta;
    const REAL *x = J->x + (long)p * T * n[0];
    const int64_t *lab = J->y + (long)p * T;
    const REAL *coef = J->coef + (long)p * L * R;
    REAL *grad = J->grad + (long)p * L * R;
    REAL *W[MAXL], *Wf[MAXL], *Bm[MAXL], *G[MAXL], *copies[MAXL];
    REAL kappa[MAXL];
    int keep[MAXL];
    int maxn = 0;
    long wsize[MAXL], total_w = 0, keep_w = 0, sum_n = 0;
    for (int l = 0; l <= L; l++) { maxn = n[l] > maxn ? n[l] : maxn; sum_n += n[l]; }
    for (int l = 0; l < L; l++) {
        wsize[l] = (long)n[l + 1] * n[l];
        total_w += wsize[l];
        W[l] = J->W[l] + p * wsize[l];
        Wf[l] = J->W_final[l] + p * wsize[l];
        Bm[l] = J->B ? J->B[l] + p * wsize[l] : NULL;
        const Plan *pl = &J->plan[l];
        kappa[l] = pl->decay >= 0 ? 1 - coef[l * R + pl->decay] : 1;
        keep[l] = pl->decay >= 0 && fabs(kappa[l]) < J->min_rebuild;
        keep_w += keep[l] ? wsize[l] * T : 0;
    }
    memset(grad, 0, sizeof(REAL) * L * R);
    Layout o;
    layout(J, &o);
    /* tape, G, kept copies, query activations; per layer: factors R and K of two steps,
     * the G products xbar and GR, vbar, r; per layer adjoints ybar, ebar, zbar; work */
    long per_layer = 2 * (3L * maxn + MAXG) + 6L * maxn + 2L * maxn;
    long total = o.stride * T + total_w + keep_w + 2L * Q * sum_n + (long)Q * maxn +
                 L * per_layer + 3L * (L + 1) * maxn + 2L * maxn;
    REAL *block = malloc(sizeof(REAL) * total);
    if (!block) return 1;
    Arena ar = {block};
    REAL *tape = take(&ar, o.stride * T);
    for (int l = 0; l < L; l++) {
        G[l] = take(&ar, wsize[l]);
        copies[l] = keep[l] ? take(&ar, wsize[l] * T) : NULL;
    }
    REAL *qz = take(&ar, Q * sum_n), *qy = take(&ar, Q * sum_n), *qb = take(&ar, Q * maxn);
    REAL *Rf[2][MAXL], *Kf[2][MAXL], *xbar[MAXL], *GR[MAXL], *vbar[MAXL], *rvec[MAXL];
    for (int l = 0; l < L; l++) {
        for (int b = 0; b < 2; b++) { Rf[b][l] = take(&ar, 3 * maxn); Kf[b][l] = take(&ar, MAXG); }
        xbar[l] = take(&ar, 3 * maxn); GR[l] = take(&ar, 3 * maxn);
        vbar[l] = take(&ar, maxn); rvec[l] = take(&ar, maxn);
    }
    REAL *ybar[MAXL + 1], *ebar[MAXL + 1], *zbar[MAXL + 1];
    for (int l = 0; l <= L; l++) {
        ybar[l] = take(&ar, maxn); ebar[l] = take(&ar, maxn); zbar[l] = take(&ar, maxn);
    }
    REAL *dd = take(&ar, maxn), *tmp = take(&ar, maxn);
    REAL *K = Kf[0][0], *Rw = Rf[0][0]; /* forward: factors of the current step */

    /* ---------------------------------------------------------------- forward */
    Step s, sp;
    int z1_ready = 0; /* layer 1's z, y, v of this step came with the last step's update */
    for (int t = 0; t < T; t++) {
        const REAL *xt = x + (long)t * n[0];
        REAL *tp = tape + o.stride * t;
        step_at(&o, tp, xt, L, &s);
        for (int l = 1; l <= L; l++) { /* z = W p; below the top also v = W^T y_l, same pass */
            int nn = n[l], m = n[l - 1];
            if (l == 1 && z1_ready) continue;
            REAL *z = (REAL *)s.z[l], *yy = (REAL *)s.y[l], *v = (REAL *)s.v[l];
            const REAL *pv = s.y[l - 1], *Wl = W[l - 1];
            if (l < L) {
                if (v) memset(v, 0, sizeof(REAL) * m);
                REAL *dl = (REAL *)s.d[l];
                /* with v: y of four rows at once, then v takes them while they are in L1 */
                for (int i = 0; i < nn; i += 4) {
                    int r = nn - i < 4 ? nn - i : 4;
                    dot_rows(z + i, Wl + (long)i * m, pv, r, m);
                    if (v) {
                        activate_n(z + i, beta, yy + i, dl + i, r);
                        axpy_rows(v, yy + i, Wl + (long)i * m, r, m);
                    }
                }
                if (!v) activate_n(z, beta, yy, dl, nn);
            } else {
                dot_rows(z, Wl, pv, nn, m);
                softmax(z, yy, nn);
            }
        }
        REAL *eL = (REAL *)s.e[L];
        for (int i = 0; i < n[L]; i++) eL[i] = s.y[L][i] - (lab[t] == i ? 1 : 0);
        /* errors top-down: back = M^T e_l (M = B, or W by value); at the top also v */
        for (int l = L; l >= 1; l--) {
            int nn = n[l], m = n[l - 1];
            int want_e = l > 1 || J->need_e0;
            REAL *back = l >= 2 ? (REAL *)s.back[l] : tmp;
            REAL *v = l == L ? (REAL *)s.v[l] : NULL;
            const REAL *el = s.e[l], *yl = s.y[l], *Wl = W[l - 1];
            const REAL *M = J->sym ? Wl : Bm[l - 1];
            if (want_e) memset(back, 0, sizeof(REAL) * m);
            if (v) memset(v, 0, sizeof(REAL) * m);
            if (want_e) axpy_rows(back, el, M, nn, m);
            if (v) axpy_rows(v, yl, Wl, nn, m);
            if (want_e) {
                REAL *eprev = (REAL *)s.e[l - 1];
                REAL *dp = (REAL *)s.d[l - 1];
                if (l == 1) {
#pragma omp simd
                    for (int j = 0; j < m; j++) dp[j] = 1 - exp_a(-beta * xt[j]);
                }
                for (int j = 0; j < m; j++) eprev[j] = back[j] * dp[j];
            }
        }
        /* the updates: W <- kappa W + sum_a a R_a^T */
        for (int l = 1; l <= L; l++) {
            int nn = n[l], m = n[l - 1];
            const Plan *pl = &J->plan[l - 1];
            REAL *Wl = W[l - 1], *sc = (REAL *)s.sc[l];
            const REAL *u = s.y[l], *g = s.e[l], *z = s.z[l];
            sc[0] = sc[1] = sc[2] = 0;
            for (int i = 0; i < nn; i++) sc[0] += u[i];
            if (pl->needs_yme) {
                REAL *wq = (REAL *)s.wq[l];
                dot_rows(wq, Wl, s.e[l - 1], nn, m);
                sc[1] = dot(u, wq, nn);
            }
            sc[2] = dot(g, z, nn);
            if (!pl->ng && pl->decay < 0) continue;
            factors(pl, coef + (l - 1) * R, &s, l, m, K, Rw);
            if (keep[l - 1]) memcpy(copies[l - 1] + wsize[l - 1] * t, Wl, sizeof(REAL) * wsize[l - 1]);
            const REAL *lv[3] = {g, u, NULL};
            REAL kap = kappa[l - 1];
            /* the inputs are known in advance: layer 1's next z = W x_{t+1} (and y, v) come
             * from the rows just updated, saving a pass over the largest matrix */
            int ahead = l == 1 && L > 1 && t + 1 < T;
            REAL *zn = NULL, *yn = NULL, *vn = NULL, *dn = NULL;
            const REAL *xn = x + (long)(t + 1) * n[0];
            if (ahead) {
                step_at(&o, tape + o.stride * (t + 1), xn, L, &sp);
                zn = (REAL *)sp.z[1]; yn = (REAL *)sp.y[1]; vn = (REAL *)sp.v[1];
                dn = (REAL *)sp.d[1];
                if (vn) memset(vn, 0, sizeof(REAL) * m);
            }
            RowOp op = {.kap = kap, .nx = ahead, .X = {xn, NULL}};
            int va[3];
            for (int a = 0; a < 3; a++)
                if (pl->has_a[a]) { va[op.nv] = a; op.V[op.nv++] = Rw + a * m; }
            RowFn fn = rowop_fn(&op);
            RowFn2 fn2 = rowop2_fn(&op);
            int vdone = 0; /* rows of W already in v */
            for (int i = 0; i < nn; i += 2) { /* two rows a pass: two chains of dot sums */
                int r = i + 1 < nn ? 2 : 1;
                REAL dots[2][2] = {{0, 0}, {0, 0}};
                RowOp ob = op;
                for (int k = 0; k < op.nv; k++) {
                    op.c[k] = lv[va[k]] ? lv[va[k]][i] : 1;
                    if (r == 2) ob.c[k] = lv[va[k]] ? lv[va[k]][i + 1] : 1;
                }
                pass_rows(fn, fn2, &op, &ob, Wl + (long)i * m, r, m, dots);
                if (ahead) {
                    for (int q = 0; q < r; q++) zn[i + q] = dots[q][0];
                    /* y and v += y_k row_k four rows at a time, once the pass has moved on
                     * past them: re-reading a row just written stalls */
                    if (vn && i - vdone == 4) {
                        activate_n(zn + vdone, beta, yn + vdone, dn + vdone, 4);
                        axpy_rows(vn, yn + vdone, Wl + (long)vdone * m, 4, m);
                        vdone += 4;
                    }
                }
            }
            if (ahead && vn) {
                activate_n(zn + vdone, beta, yn + vdone, dn + vdone, nn - vdone);
                axpy_rows(vn, yn + vdone, Wl + (long)vdone * m, nn - vdone, m);
            }
            if (ahead && !vn) activate_n(zn, beta, yn, dn, nn);
            if (l == 1) z1_ready = ahead;
        }
        if (J->plan[0].ng == 0 && J->plan[0].decay < 0) z1_ready = 0;
    }
    for (int l = 0; l < L; l++) memcpy(Wf[l], W[l], sizeof(REAL) * wsize[l]);

    /* ---------------------------------------------------------------- query */
    /* Layer by layer over all Q samples, row-outer: each row of W (and G) is read once per
     * layer while the Q sample vectors stay in cache. qy/qz hold [Q, n_l] per layer. */
    {
        const REAL *xq = J->xq + (long)p * Q * n[0];
        const int64_t *lq = J->yq + (long)p * Q;
        long off[MAXL + 1];
        off[0] = 0;
        for (int l = 1; l <= L; l++) off[l] = off[l - 1] + (long)Q * n[l - 1];
        memcpy(qy, xq, sizeof(REAL) * Q * n[0]);
        for (int l = 1; l <= L; l++) {
            int nn = n[l], m = n[l - 1];
            const REAL *yp = qy + off[l - 1];
            REAL *zo = qz + off[l], *yo = qy + off[l];
            for (int i = 0; i < nn; i++) {
                const REAL *row = W[l - 1] + (long)i * m;
                int q = 0;
                for (; q + 4 <= Q; q += 4) /* four samples at once: four independent sums */
                    dot4(row, yp + (long)q * m, m, zo + (long)q * nn + i, nn);
                for (; q < Q; q++) zo[(long)q * nn + i] = dot(row, yp + (long)q * m, m);
            }
            if (l < L) {
#pragma omp simd
                for (long k = 0; k < (long)Q * nn; k++) yo[k] = softplus(zo[k], beta);
            } else {
                memcpy(yo, zo, sizeof(REAL) * Q * nn);
            }
        }
        REAL ce = 0;
        for (int q = 0; q < Q; q++) {
            const REAL *zl = qz + off[L] + (long)q * n[L];
            REAL mx = zl[0], se = 0;
            for (int i = 1; i < n[L]; i++) mx = zl[i] > mx ? zl[i] : mx;
            for (int i = 0; i < n[L]; i++) se += exp(zl[i] - mx);
            ce += mx + log(se) - zl[lq[q]];
        }
        ce /= Q;
        J->ce[p] = ce;
        if (!isfinite(ce)) {
            free(block);
            return 0; /* a zero gradient: the caller discards the member */
        }
        /* zbar of the top layer [Q, n_L] into qz's top block, then down */
        for (int q = 0; q < Q; q++) {
            REAL *zb = qz + off[L] + (long)q * n[L];
            softmax(zb, tmp, n[L]);
            for (int i = 0; i < n[L]; i++) zb[i] = (tmp[i] - (lq[q] == i ? 1 : 0)) / Q;
        }
        for (int l = L; l >= 1; l--) {
            int nn = n[l], m = n[l - 1];
            const REAL *zb = qz + off[l], *yp = qy + off[l - 1];
            REAL *yb = qb; /* [Q, m] */
            if (l > 1) memset(yb, 0, sizeof(REAL) * Q * m);
            for (int i = 0; i < nn; i++) {
                const REAL *row = W[l - 1] + (long)i * m;
                REAL *grow = G[l - 1] + (long)i * m;
                memset(grow, 0, sizeof(REAL) * m);
                for (int q = 0; q < Q; q++) {
                    REAL c = zb[(long)q * nn + i];
                    if (l > 1) axpy(yb + (long)q * m, c, row, m);
                    axpy(grow, c, yp + (long)q * m, m);
                }
            }
            if (l > 1) { /* zbar_{l-1} = ybar * softplus'(z), written over z_{l-1} */
                REAL *zp = qz + off[l - 1];
#pragma omp simd
                for (long k = 0; k < (long)Q * m; k++)
                    zp[k] = yb[k] * (beta * zp[k] > 20 ? 1 : sigmoid(beta * zp[k]));
            }
        }
    }

    /* ---------------------------------------------------------------- reverse */
    /* The G products of step t (xbar, GR) are taken in step t+1's pass C, while it writes
     * G_{t+1} row by row (one pass over G a step); the last step's come from the query's G. */
    step_at(&o, tape + o.stride * (T - 1), x + (long)(T - 1) * n[0], L, &s);
    for (int l = 1; l <= L; l++) {
        const Plan *pl = &J->plan[l - 1];
        int nn = n[l], m = n[l - 1], b = (T - 1) & 1;
        if (!pl->ng) continue;
        factors(pl, coef + (l - 1) * R, &s, l, m, Kf[b][l - 1], Rf[b][l - 1]);
        const REAL *lv[3] = {s.e[l], s.y[l], NULL};
        clear_products(pl, m, maxn, xbar[l - 1]);
        RowOp op = {.kap = 1};
        Products pr;
        product_targets(pl, &op, &pr, lv, Rf[b][l - 1], m, xbar[l - 1], maxn);
        RowFn fn = rowop_fn(&op);
        for (int i = 0; i < nn; i++) {
            REAL dots[2] = {0, 0};
            product_row(&pr, &op, i);
            fn(&op, G[l - 1] + (long)i * m, m, dots);
            product_store(&pr, dots, GR[l - 1], maxn, i);
        }
    }
    for (int t = T - 1; t >= 0; t--) {
        const REAL *xt = x + (long)t * n[0];
        const int cur = t & 1, nxt = cur ^ 1;
        step_at(&o, tape + o.stride * t, xt, L, &s);
        if (t > 0) step_at(&o, tape + o.stride * (t - 1), x + (long)(t - 1) * n[0], L, &sp);
        for (int l = 0; l <= L; l++) {
            memset(ybar[l], 0, sizeof(REAL) * n[l]);
            memset(ebar[l], 0, sizeof(REAL) * n[l]);
            memset(zbar[l], 0, sizeof(REAL) * n[l]);
        }
        /* A: the updates' adjoints, from the products with G = dLoss/dW_{t+1} */
        for (int l = 1; l <= L; l++) {
            int nn = n[l], m = n[l - 1];
            const Plan *pl = &J->plan[l - 1];
            const REAL *c = coef + (l - 1) * R, *Kc = Kf[cur][l - 1];
            REAL *gr = grad + (l - 1) * R, *xb_l = xbar[l - 1], *gr_l = GR[l - 1];
            memset(vbar[l - 1], 0, sizeof(REAL) * m);
            memset(rvec[l - 1], 0, sizeof(REAL) * m);
            if (!pl->ng) continue;
            if (pl->has_a[A_E]) axpy(ebar[l], 1, gr_l + A_E * maxn, nn);
            if (pl->has_a[A_Y]) axpy(ybar[l], 1, gr_l + A_Y * maxn, nn);
            REAL sbar[4] = {0, 0, 0, 0};
            const REAL *sc = s.sc[l];
            for (int gi = 0; gi < pl->ng; gi++) {
                const Group *g = &pl->g[gi];
                const REAL *xb = xb_l + g->a * maxn, *b = right_of(g->b, &s, l);
                REAL kb;
                if (g->b == B_ONES) {
                    kb = 0;
                    for (int j = 0; j < m; j++) kb += xb[j];
                } else if (g->b == B_OJA) {
                    kb = dot(xb, b, m) - dot(xb, s.v[l], m);
                } else {
                    kb = dot(xb, b, m);
                }
                kb = g->sign < 0 ? -kb : kb;
                for (int i = 0; i < g->nm; i++) {
                    int r = g->r[i], sk = g->s[i];
                    gr[r] += kb * (sk == S_ONE ? 1 : sc[sk - 1]);
                    if (sk != S_ONE) sbar[sk] += kb * c[r];
                }
                REAL k = Kc[gi];
                if (g->b == B_Y) axpy(ybar[l - 1], k, xb, m);
                else if (g->b == B_E) axpy(ebar[l - 1], k, xb, m);
                else if (g->b == B_OJA) { axpy(ybar[l - 1], k, xb, m); axpy(vbar[l - 1], -k, xb, m); }
            }
            if (sbar[S_SUM] != 0)
                for (int i = 0; i < nn; i++) ybar[l][i] += sbar[S_SUM];
            if (sbar[S_EMY] != 0) {
                axpy(ebar[l], sbar[S_EMY], s.z[l], nn);
                axpy(zbar[l], sbar[S_EMY], s.e[l], nn);
            }
            memcpy(rvec[l - 1], vbar[l - 1], sizeof(REAL) * m);
            if (pl->needs_yme && sbar[S_YME] != 0) {
                axpy(ybar[l], sbar[S_YME], s.wq[l], nn);
                axpy(ebar[l - 1], sbar[S_YME], s.v[l], m);
                axpy(rvec[l - 1], sbar[S_YME], s.e[l - 1], m);
            }
        }
        /* B: W_t rebuilt from W_{t+1}, bottom-up with the error chain (W vbar, M dd) */
        for (int l = 1; l <= L; l++) {
            int nn = n[l], m = n[l - 1];
            const Plan *pl = &J->plan[l - 1];
            int has_e = s.e[l - 1] != NULL;
            if (has_e) {
                const REAL *dp = s.d[l - 1];
                for (int j = 0; j < m; j++) dd[j] = ebar[l - 1][j] * dp[j];
            }
            /* nothing reads W_1 going back unless v, the sym chain or decay does: skip its
             * rebuild then (W_1 is left at W_T) */
            int reads_w = l > 1 || pl->needs_v || (has_e && J->sym) || pl->decay >= 0;
            int restore = (pl->ng || pl->decay >= 0) && reads_w;
            const REAL *Rc = Rf[cur][l - 1];
            if (restore && keep[l - 1])
                memcpy(W[l - 1], copies[l - 1] + wsize[l - 1] * t, sizeof(REAL) * wsize[l - 1]);
            const REAL *lv[3] = {s.e[l], s.y[l], NULL};
            REAL ik = 1 / kappa[l - 1];
            int use_vbar = pl->needs_v, sym_e = has_e && J->sym;
            /* W_t = W_{t+1} / kappa - sum_a (a / kappa) R_a^T, with W vbar and W dd */
            RowOp op = {.kap = restore && !keep[l - 1] ? ik : 1};
            int va[3];
            if (restore && !keep[l - 1])
                for (int a = 0; a < 3; a++)
                    if (pl->has_a[a]) { va[op.nv] = a; op.V[op.nv++] = Rc + a * m; }
            if (use_vbar) op.X[op.nx++] = vbar[l - 1];
            if (sym_e) op.X[op.nx++] = dd;
            RowFn fn = rowop_fn(&op);
            RowFn2 fn2 = rowop2_fn(&op);
            for (int i = 0; i < nn && (op.nv || op.nx || op.kap != 1); i += 2) {
                REAL *row = W[l - 1] + (long)i * m, dots[2][2] = {{0, 0}, {0, 0}};
                int r = i + 1 < nn ? 2 : 1;
                RowOp ob = op;
                for (int k = 0; k < op.nv; k++) {
                    op.c[k] = -(lv[va[k]] ? lv[va[k]][i] : 1) * ik;
                    if (r == 2) ob.c[k] = -(lv[va[k]] ? lv[va[k]][i + 1] : 1) * ik;
                }
                pass_rows(fn, fn2, &op, &ob, row, r, m, dots);
                for (int q = 0; q < r; q++) {
                    if (use_vbar) ybar[l][i + q] += dots[q][0];
                    if (sym_e) ebar[l][i + q] += dots[q][use_vbar];
                }
            }
            if (has_e && !J->sym) {
                dot_rows(tmp, Bm[l - 1], dd, nn, m);
                for (int i = 0; i < nn; i++) ebar[l][i] += tmp[i];
            }
            if (has_e && l > 1) {
                const REAL *dp = s.d[l - 1], *bk = s.back[l];
                for (int j = 0; j < m; j++) {
                    REAL d = dp[j];
                    zbar[l - 1][j] += beta * ebar[l - 1][j] * bk[j] * d * (1 - d);
                }
            }
        }
        axpy(ybar[L], 1, ebar[L], n[L]);
        /* C: top-down: zbar; ybar_{l-1} += W_t^T zbar; G_t = kappa G + zbar p^T + u r^T,
         * and from each new row of G the products step t-1 will need */
        for (int l = L; l >= 1; l--) {
            int nn = n[l], m = n[l - 1];
            const Plan *pl = &J->plan[l - 1];
            const REAL *yl = s.y[l], *pv = s.y[l - 1];
            if (l == L) {
                REAL sy = dot(ybar[L], yl, nn);
                for (int i = 0; i < nn; i++) zbar[L][i] += yl[i] * (ybar[L][i] - sy);
            } else {
                const REAL *dl = s.d[l];
                for (int i = 0; i < nn; i++) zbar[l][i] += ybar[l][i] * dl[i];
            }
            int prod = t > 0 && pl->ng;
            REAL kap = kappa[l - 1], dk = 0;
            int has_r = pl->needs_v;
            RowOp op = {.kap = kap, .nv = 1 + has_r, .V = {pv, rvec[l - 1], NULL}};
            Products pr = {0};
            if (prod) {
                const REAL *lvp[3] = {sp.e[l], sp.y[l], NULL};
                factors(pl, coef + (l - 1) * R, &sp, l, m, Kf[nxt][l - 1], Rf[nxt][l - 1]);
                clear_products(pl, m, maxn, xbar[l - 1]);
                product_targets(pl, &op, &pr, lvp, Rf[nxt][l - 1], m, xbar[l - 1], maxn);
            }
            RowFn fn = rowop_fn(&op);
            RowFn2 fn2 = rowop2_fn(&op);
            if (l > 1) axpy_rows(ybar[l - 1], zbar[l], W[l - 1], nn, m);
            for (int i = 0; i < nn; i += 2) { /* two rows a pass, as in the forward */
                int r = i + 1 < nn ? 2 : 1;
                REAL *grow = G[l - 1] + (long)i * m, dots[2][2] = {{0, 0}, {0, 0}};
                RowOp ob = op;
                RowOp *ops[2] = {&op, &ob};
                for (int q = 0; q < r; q++) {
                    if (pl->decay >= 0)
                        dk += dot(grow + (long)q * m, W[l - 1] + (long)(i + q) * m, m);
                    ops[q]->c[0] = zbar[l][i + q];
                    ops[q]->c[1] = yl[i + q];
                    if (prod) product_row(&pr, ops[q], i + q);
                }
                pass_rows(fn, fn2, &op, &ob, grow, r, m, dots);
                if (prod)
                    for (int q = 0; q < r; q++) product_store(&pr, dots[q], GR[l - 1], maxn, i + q);
            }
            if (pl->decay >= 0) grad[(l - 1) * R + pl->decay] -= dk;
        }
    }
    free(block);
    return 0;
}

/* ------------------------------------------------------------------ threads */

typedef struct {
    Job *J;
    int first, step, status; /* status: each thread its own, ORed after the joins */
} Slice;

static void *run_slice(void *arg) {
    Slice *sl = arg;
    for (int p = sl->first; p < sl->J->P; p += sl->step)
        if (run_member(sl->J, p)) sl->status = 1;
    return NULL;
}

/* plan: per layer [ng, decay, then per group a, b, sign, nm, (r, s) x nm].
 * Returns 0, or 1 (out of memory), 2 (beyond the fixed limits, or no steps or queries). */
int plast_fused_episode(int P, int L, int T, int Q, int R, const int *dims, const int *plan,
                        REAL beta, REAL min_rebuild, int need_e0, int sym, int threads,
                        REAL **W, REAL **W_final, REAL *const *B, const REAL *x,
                        const int64_t *y, const REAL *xq, const int64_t *yq, const REAL *coef,
                        REAL *ce, REAL *grad) {
    if (L > MAXL || L < 1 || T < 1 || Q < 1) return 2;
    Job *J = calloc(1, sizeof(Job));
    if (!J) return 1;
    *J = (Job){P, L, T, Q, R, need_e0, sym, threads, dims, beta, min_rebuild, W, W_final,
               sym ? NULL : B, x, y, xq, yq, coef, ce, grad, {{0}}, 0};
    const int *pp = plan;
    for (int l = 0; l < L; l++) {
        Plan *pl = &J->plan[l];
        pl->ng = *pp++;
        pl->decay = *pp++;
        if (pl->ng > MAXG) { free(J); return 2; }
        for (int gi = 0; gi < pl->ng; gi++) {
            Group *g = &pl->g[gi];
            g->a = *pp++; g->b = *pp++; g->sign = *pp++; g->nm = *pp++;
            if (g->nm > MAXM) { free(J); return 2; }
            for (int i = 0; i < g->nm; i++) {
                g->r[i] = *pp++;
                g->s[i] = *pp++;
                if (g->s[i] == S_YME) pl->needs_yme = 1;
            }
            pl->has_a[g->a] = 1;
            if (g->b == B_OJA) pl->needs_v = 1;
        }
        if (pl->needs_yme) pl->needs_v = 1;
    }
    int nt = threads > P ? P : threads;
    nt = nt < 1 ? 1 : nt;
    if (nt == 1) {
        Slice sl = {J, 0, 1, 0};
        run_slice(&sl);
        J->status = sl.status;
    } else {
        pthread_t th[64];
        Slice sl[64];
        nt = nt > 64 ? 64 : nt;
        for (int k = 0; k < nt; k++) {
            sl[k] = (Slice){J, k, nt, 0};
            if (k && pthread_create(&th[k], NULL, run_slice, &sl[k])) sl[k].step = 0;
        }
        run_slice(&sl[0]);
        for (int k = 1; k < nt; k++) {
            if (sl[k].step) pthread_join(th[k], NULL);
            else { sl[k].step = nt; run_slice(&sl[k]); }
        }
        for (int k = 0; k < nt; k++) J->status |= sl[k].status;
    }
    int st = J->status;
    free(J);
    return st;
}
