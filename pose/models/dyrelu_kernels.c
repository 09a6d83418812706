/* One DY-ReLU layer, forward and backward, on the CPU: the native path of
 * pose/models/dyrelu_native.py (which builds this file and documents the arguments).
 *
 * Compiled once per scalar type: -DREAL=float or -DREAL=double.
 *
 * Everything DY-ReLU computes depends on one sample at a time: the pooled context, the
 * hyper function, the spatial softmax and all their gradients. So each thread takes whole
 * samples and makes every pass over one sample before the next. A sample (C*H*W values;
 * 295 KB at 96x32x24 in fp32) stays in the core's cache between the passes, and only the
 * first pass over x pays for memory. Run pass by pass over the whole batch, as a compiler
 * fuses it, each pass reads x from memory again.
 *
 * x, y and the gradients are contiguous (N, C, H*W); the weights are contiguous as
 * nn.Linear and the 1x1 conv hold them. Piece ties go to the later piece, as in
 * dyrelu_function._winner_masks.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifndef REAL
#error "compile with -DREAL=float or -DREAL=double"
#endif

/* exp in REAL's precision (a float argument would otherwise take double's slower exp): a
 * layer computes one per hyper-function output and, for variant C, one per position. With
 * POSE_VECTOR_MATH (dyrelu_native.py sets it where glibc's libmvec links), exp has vector
 * versions, so the loops of exps vectorise: for variant C with few channels, the softmax's
 * scalar exps took about as long as a pass over x. */
#define EXP(v) (sizeof(REAL) == sizeof(float) ? (REAL)expf((float)(v)) : (REAL)exp(v))
#ifdef POSE_VECTOR_MATH
#pragma omp declare simd notinbranch
float expf(float);
#pragma omp declare simd notinbranch
double exp(double);
#endif

enum { MODE_PLAIN = 0, MODE_COEFFICIENT = 1, MODE_RESIDUAL = 2 };

typedef struct {
    long n, c, hw, hidden, groups, k;
    const REAL *fc1_weight, *fc1_bias; /* (hidden, C), (hidden) */
    const REAL *fc2_weight, *fc2_bias; /* (groups * 2 * K, hidden), (groups * 2 * K) */
    const REAL *spatial_weight;        /* (C) or NULL: variant C's 1x1 conv */
    const REAL *spatial_bias;          /* (1) or NULL */
    const REAL *alpha, *beta;          /* (K) */
    double lambda_a, lambda_b, tau, gamma;
    int mode, threads;
} Layer;

/* Per-thread work space for one sample. */
typedef struct {
    REAL *hidden, *sig, *a, *b, *logits, *pi, *grad_pi, *grad_context, *grad_hidden, *discard;
} Scratch;

/* One malloc'd block, carved into arrays of the given sizes (*slots[0] is the block, for
 * free); NULL where it cannot be had. */
static REAL *alloc_arrays(REAL **slots[], const long sizes[], int count) {
    long total = 0;
    for (int i = 0; i < count; i++) total += sizes[i];
    REAL *block = malloc(sizeof(REAL) * (size_t)(total > 0 ? total : 1));
    for (int i = 0; block && i < count; i++) *slots[i] = i ? *slots[i - 1] + sizes[i - 1] : block;
    return block;
}

static int scratch_alloc(const Layer *l, Scratch *s) {
    long m = l->groups * 2 * l->k, gk = l->groups * l->k;
    long sizes[10] = {l->hidden, m, gk, gk, l->hw, l->hw, l->hw, l->c, l->hidden, l->hw};
    REAL **slots[10] = {&s->hidden, &s->sig, &s->a, &s->b, &s->logits, &s->pi, &s->grad_pi,
                        &s->grad_context, &s->grad_hidden, &s->discard};
    return alloc_arrays(slots, sizes, 10) != NULL;
}

static void scratch_free(Scratch *s) { free(s->hidden); }

/* Sums in LANES independent partial sums, so that the loops vectorise: gcc left the same
 * loops written with "omp simd reduction" scalar, one dependent add per element. */
enum { LANES = 16 };

/* The sum of LANES partial sums, halving: vector adds, where a running total would be LANES
 * dependent scalar adds (per row, they cost as much as the row's own loop). */
static inline REAL lanes_total(REAL *restrict lane) {
    for (long width = LANES / 2; width >= 1; width /= 2)
        for (long j = 0; j < width; j++) lane[j] += lane[j + width];
    return lane[0];
}

/* sum_i u[i] * v[i], or sum_i u[i] where v is NULL. */
static inline REAL dot(const REAL *restrict u, const REAL *restrict v, long n) {
    REAL total = 0;
    long i = 0;
    if (n >= LANES) { /* short vectors (a hidden width of 7) skip the partial sums */
        REAL lane[LANES] = {0};
        /* Two loops: with the test for v inside, gcc left the loop scalar. */
        if (v)
            for (; i + LANES <= n; i += LANES)
                for (long j = 0; j < LANES; j++) lane[j] += u[i + j] * v[i + j];
        else
            for (; i + LANES <= n; i += LANES)
                for (long j = 0; j < LANES; j++) lane[j] += u[i + j];
        total += lanes_total(lane);
    }
    for (; i < n; i++) total += v ? u[i] * v[i] : u[i];
    return total;
}

/* sum_i row[i], and logits[i] += w * row[i] in the same loop (variant C's 1x1 conv). */
static inline REAL sum_and_project(const REAL *restrict row, REAL w, REAL *restrict logits,
                                   long n) {
    REAL lane[LANES] = {0}, total = 0;
    long i = 0;
    for (; i + LANES <= n; i += LANES)
        for (long j = 0; j < LANES; j++) {
            lane[j] += row[i + j];
            logits[i + j] += w * row[i + j];
        }
    for (; i < n; i++) {
        total += row[i];
        logits[i] += w * row[i];
    }
    total += lanes_total(lane);
    return total;
}

/* The hyper function for one sample: context (C) -> hidden (ReLU), sig (sigmoid), and the
 * coefficients a, b (groups, K) as the passes use them: with alpha, beta added except in
 * mode "residual", which adds them per position. */
static void hyper_forward(const Layer *l, const REAL *context, Scratch *s) {
    long m = l->groups * 2 * l->k;
    for (long j = 0; j < l->hidden; j++) {
        const REAL *w = l->fc1_weight + j * l->c;
        REAL acc = dot(w, context, l->c) + l->fc1_bias[j];
        s->hidden[j] = acc > 0 ? acc : 0;
    }
    REAL *restrict sig = s->sig;
    for (long i = 0; i < m; i++)
        sig[i] = dot(l->fc2_weight + i * l->hidden, s->hidden, l->hidden) + l->fc2_bias[i];
#pragma omp simd
    for (long i = 0; i < m; i++) sig[i] = (REAL)1 / ((REAL)1 + EXP(-sig[i]));
    int add_static = l->mode != MODE_RESIDUAL;
    for (long g = 0; g < l->groups; g++) {
        for (long kk = 0; kk < l->k; kk++) {
            REAL da = (2 * s->sig[g * 2 * l->k + kk] - 1) * (REAL)l->lambda_a;
            REAL db = (2 * s->sig[g * 2 * l->k + l->k + kk] - 1) * (REAL)l->lambda_b;
            s->a[g * l->k + kk] = add_static ? l->alpha[kk] + da : da;
            s->b[g * l->k + kk] = add_static ? l->beta[kk] + db : db;
        }
    }
}

/* pi = min(gamma * HW * softmax((logits + bias) / tau), 1) over one sample's positions. */
static void attention_forward(const Layer *l, const REAL *logits, REAL *restrict softmax,
                              REAL *restrict pi) {
    long hw = l->hw;
    REAL bias = l->spatial_bias[0], inv_tau = (REAL)(1.0 / l->tau), top = -INFINITY;
    for (long p = 0; p < hw; p++) {
        REAL z = (logits[p] + bias) * inv_tau;
        softmax[p] = z;
        top = z > top ? z : top;
    }
#pragma omp simd
    for (long p = 0; p < hw; p++) softmax[p] = EXP(softmax[p] - top);
    REAL total = dot(softmax, NULL, hw);
    REAL scale = (REAL)(l->gamma * (double)hw);
    for (long p = 0; p < hw; p++) {
        softmax[p] /= total;
        REAL v = softmax[p] * scale;
        pi[p] = v < 1 ? v : 1;
    }
}

/* The loops over a row of positions are written once, for any K and mode, and inlined where
 * K and the mode are constants (WITH_CONSTANTS), so that the compiler unrolls the pieces and
 * vectorises over positions; a general version serves other K. */
#define INLINE static inline __attribute__((always_inline))
#define WITH(k, mode, ...)                                                                   \
    if (k__ == (k) && m__ == (mode)) {                                                       \
        const long K = (k);                                                                  \
        const int MODE = (mode);                                                             \
        __VA_ARGS__;                                                                         \
    } else
#define WITH_CONSTANTS(k_, mode_, ...)                                                       \
    do {                                                                                     \
        long k__ = (k_);                                                                     \
        int m__ = (mode_);                                                                   \
        WITH(2, MODE_PLAIN, __VA_ARGS__)                                                     \
        WITH(2, MODE_COEFFICIENT, __VA_ARGS__)                                               \
        WITH(2, MODE_RESIDUAL, __VA_ARGS__)                                                  \
        WITH(3, MODE_PLAIN, __VA_ARGS__)                                                     \
        WITH(3, MODE_COEFFICIENT, __VA_ARGS__)                                               \
        WITH(3, MODE_RESIDUAL, __VA_ARGS__) {                                                \
            const long K = k__;                                                              \
            const int MODE = m__;                                                            \
            __VA_ARGS__;                                                                     \
        }                                                                                    \
    } while (0)

/* The slope and intercept of piece kk at a position with attention pw (mode "residual":
 * alpha + pw * a). */
#define SLOPE(kk) (MODE == MODE_RESIDUAL ? alpha[kk] + pw * a[kk] : a[kk])
#define INTERCEPT(kk) (MODE == MODE_RESIDUAL ? beta[kk] + pw * b[kk] : b[kk])

typedef struct {
    const REAL *a, *b, *alpha, *beta, *pi; /* pieces of this row's group; pi NULL in "plain" */
} Pieces;

INLINE void forward_row(const long K, const int MODE, Pieces c, const REAL *restrict row,
                        REAL *restrict out, long hw) {
    const REAL *a = c.a, *b = c.b, *alpha = c.alpha, *beta = c.beta, *pi = c.pi;
#pragma omp simd
    for (long p = 0; p < hw; p++) {
        REAL pw = MODE == MODE_PLAIN ? 1 : pi[p], v = row[p];
        REAL best = SLOPE(0) * v + INTERCEPT(0);
#pragma GCC unroll 4
        for (long kk = 1; kk < K; kk++) {
            REAL piece = SLOPE(kk) * v + INTERCEPT(kk);
            best = piece >= best ? piece : best;
        }
        out[p] = MODE == MODE_COEFFICIENT ? best * pw : best;
    }
}

/* At one position: the winning piece (as REAL), the output gradient as the coefficients see
 * it (times pi in the attention modes: pi scales the output or the pieces), the gradient
 * reaching pi (grad times the winning value in mode "coefficient", times the winning piece's
 * residual part a x + b in mode "residual"), and the gradient reaching x through the maximum:
 * grad times the winning slope (alpha + pi * a in mode "residual"), times pi in mode
 * "coefficient". */
typedef struct {
    REAL win, grad, grad_pi, grad_x;
} Winner;

INLINE Winner winner_at(const long K, const int MODE, Pieces c, REAL v, REAL g, REAL pw) {
    const REAL *a = c.a, *b = c.b, *alpha = c.alpha, *beta = c.beta;
    REAL best = SLOPE(0) * v + INTERCEPT(0), win = 0, slope = SLOPE(0);
    REAL part = a[0] * v + b[0];
#pragma GCC unroll 4
    for (long kk = 1; kk < K; kk++) {
        REAL piece = SLOPE(kk) * v + INTERCEPT(kk);
        int wins = piece >= best;
        win = wins ? (REAL)kk : win;
        slope = wins ? SLOPE(kk) : slope;
        if (MODE == MODE_RESIDUAL) part = wins ? a[kk] * v + b[kk] : part;
        best = wins ? piece : best;
    }
    Winner w = {win, MODE == MODE_PLAIN ? g : g * pw,
                MODE == MODE_COEFFICIENT ? g * best : MODE == MODE_RESIDUAL ? g * part : 0,
                (MODE == MODE_COEFFICIENT ? g * pw : g) * slope};
    return w;
}

/* Pass 1 over one row, in one loop: sum_a[kk] += the sum of grad' * x where piece kk wins,
 * sum_b[kk] += that of grad' (grad' as in winner_at), grad_pi += the attention's gradient,
 * and out = the gradient through the maximum (as in winner_at): the input gradient less what
 * reaches x through the pooling and the 1x1 conv, which input_grad_row adds once the whole
 * sample's pass 1 is done. Written here, while the row is in the core's first-level cache,
 * rather than in pass 2, which then reads out instead of x, the gradient and the attention:
 * side by side, a layer took 5-15% less time (C's 1x1 conv at 192 channels: the same). */
INLINE void coefficient_grad_row(const long K, const int MODE, Pieces c,
                                 const REAL *restrict row, const REAL *restrict grow,
                                 REAL *restrict grad_pi, REAL *sum_a, REAL *sum_b,
                                 REAL *restrict out, long hw) {
    REAL lane_a[K][LANES], lane_b[K][LANES];
    memset(lane_a, 0, sizeof lane_a);
    memset(lane_b, 0, sizeof lane_b);
    long p = 0;
    for (; p + LANES <= hw; p += LANES)
        for (long j = 0; j < LANES; j++) {
            REAL v = row[p + j], pw = MODE == MODE_PLAIN ? 1 : c.pi[p + j];
            Winner w = winner_at(K, MODE, c, v, grow[p + j], pw);
            if (MODE != MODE_PLAIN) grad_pi[p + j] += w.grad_pi;
            out[p + j] = w.grad_x;
#pragma GCC unroll 4
            for (long kk = 0; kk < K; kk++) {
                REAL masked = w.grad * (REAL)(w.win == (REAL)kk); /* a multiply, not a branch */
                lane_a[kk][j] += masked * v;
                lane_b[kk][j] += masked;
            }
        }
    for (; p < hw; p++) {
        REAL v = row[p], pw = MODE == MODE_PLAIN ? 1 : c.pi[p];
        Winner w = winner_at(K, MODE, c, v, grow[p], pw);
        if (MODE != MODE_PLAIN) grad_pi[p] += w.grad_pi;
        out[p] = w.grad_x;
        for (long kk = 0; kk < K; kk++) {
            REAL masked = w.grad * (REAL)(w.win == (REAL)kk);
            sum_a[kk] += masked * v;
            sum_b[kk] += masked;
        }
    }
    for (long kk = 0; kk < K; kk++) {
        sum_a[kk] += lanes_total(lane_a[kk]);
        sum_b[kk] += lanes_total(lane_b[kk]);
    }
}

/* Pass 2 over one row of the input gradient: adds what reaches x through the pooling
 * (pooled) and, with an attention, through the 1x1 conv (grad_logits * w); then also returns
 * sum_p grad_logits * x, this row's part of that conv's weight gradient, from the same loop. */
static inline REAL input_grad_row(const REAL *restrict row, const REAL *restrict grad_logits,
                                  REAL pooled, REAL w, REAL *restrict out, long hw) {
    if (!grad_logits) {
#pragma omp simd
        for (long p = 0; p < hw; p++) out[p] += pooled;
        return 0;
    }
    REAL lane[LANES] = {0}, total = 0;
    long p = 0;
    for (; p + LANES <= hw; p += LANES)
        for (long j = 0; j < LANES; j++) {
            REAL gl = grad_logits[p + j];
            out[p + j] += pooled + gl * w;
            lane[j] += gl * row[p + j];
        }
    for (; p < hw; p++) {
        out[p] += pooled + grad_logits[p] * w;
        total += grad_logits[p] * row[p];
    }
    return total + lanes_total(lane);
}

/* The threads for a loop over `work` values: one below the size at which torch's own
 * element-wise loops start to share their work (waking a thread costs more than it saves),
 * never more than the layer's thread count. */
static int threads_for(const Layer *l, long work) {
    return work < 32768 ? 1 : l->threads;
}

/* Runs body for every sample: each thread takes whole samples (all of one sample's passes
 * run on one core, while the sample is in its cache) with its own work space. */
typedef void (*SampleFn)(const Layer *l, Scratch *s, long n, const void *args);

static void for_each_sample(const Layer *l, SampleFn body, const void *args, int *failed) {
#pragma omp parallel num_threads(threads_for(l, l->n * l->c * l->hw))
    {
        Scratch s;
        int ok = scratch_alloc(l, &s);
        if (!ok) {
#pragma omp atomic write
            *failed = 1;
        }
#pragma omp for schedule(static)
        for (long n = 0; n < l->n; n++)
            if (ok) body(l, &s, n, args);
        if (ok) scratch_free(&s);
    }
}

typedef struct {
    const REAL *x;
    REAL *y, *context, *softmax;
} ForwardArgs;

static void forward_sample(const Layer *l, Scratch *sp, long n, const void *args) {
    const ForwardArgs *f = args;
    Scratch s = *sp;
    long C = l->c, hw = l->hw;
    int spatial = l->spatial_weight != NULL;
    const REAL *xn = f->x + n * C * hw;
    REAL *ctx = f->context + n * C;
    if (spatial) memset(s.logits, 0, sizeof(REAL) * (size_t)hw);
    for (long ch = 0; ch < C; ch++) {
        const REAL *row = xn + ch * hw;
        REAL total = spatial ? sum_and_project(row, l->spatial_weight[ch], s.logits, hw)
                             : dot(row, NULL, hw);
        ctx[ch] = total / (REAL)hw;
    }
    hyper_forward(l, ctx, &s);
    if (spatial) attention_forward(l, s.logits, f->softmax + n * hw, s.pi);
    WITH_CONSTANTS(l->k, l->mode, {
        for (long ch = 0; ch < C; ch++) {
            long g = l->groups == 1 ? 0 : ch;
            Pieces pieces = {s.a + g * K, s.b + g * K, l->alpha, l->beta, s.pi};
            forward_row(K, MODE, pieces, xn + ch * hw, f->y + (n * C + ch) * hw, hw);
        }
    });
}

/* Forward: y, and per sample the pooled context (C) and, for variant C, the softmax
 * (H*W) that backward needs. Returns 0, or 1 where the work space could not be had. */
int dyrelu_forward(const Layer *l, const REAL *x, REAL *y, REAL *context, REAL *softmax) {
    ForwardArgs args = {x, y, context, softmax};
    int failed = 0;
    for_each_sample(l, forward_sample, &args, &failed);
    return failed;
}

/* What backward keeps per sample, for the sums over the batch: the gradients at the two FCs'
 * outputs (pre-activation), the first FC's activations, and for variant C the gradient of
 * the bias-free 1x1 conv's output and that sample's part of the conv's weight gradient. */
typedef struct {
    REAL *grad_fc2_out, *grad_fc1_out, *hidden, *grad_logits, *grad_spatial;
} PerSample;

typedef struct {
    const REAL *grad, *x, *context, *softmax;
    REAL *grad_x;
    PerSample keep;
} BackwardArgs;

static void backward_sample(const Layer *l, Scratch *sp, long n, const void *args) {
    const BackwardArgs *b = args;
    Scratch s = *sp;
    long C = l->c, hw = l->hw, K = l->k, m = l->groups * 2 * K;
    int spatial = l->spatial_weight != NULL;
    REAL scale = (REAL)(l->gamma * (double)hw);
    const REAL *xn = b->x + n * C * hw, *gn = b->grad + n * C * hw, *ctx = b->context + n * C;
    const REAL *sm = spatial ? b->softmax + n * hw : NULL;
    REAL *gf2 = b->keep.grad_fc2_out + n * m, *gf1 = b->keep.grad_fc1_out + n * l->hidden;
    hyper_forward(l, ctx, &s);
    if (spatial) {
        for (long p = 0; p < hw; p++) {
            REAL v = sm[p] * scale;
            s.pi[p] = v < 1 ? v : 1;
        }
        memset(s.grad_pi, 0, sizeof(REAL) * (size_t)hw);
    }
    /* Pass 1: the coefficients' gradients (sums over positions, and channels when
     * they are shared) and the attention's (sums over channels). */
    memset(gf2, 0, sizeof(REAL) * (size_t)m);
    WITH_CONSTANTS(l->k, l->mode, {
        for (long ch = 0; ch < C; ch++) {
            long g = l->groups == 1 ? 0 : ch;
            const REAL *row = xn + ch * hw, *grow = gn + ch * hw;
            Pieces pieces = {s.a + g * K, s.b + g * K, l->alpha, l->beta, s.pi};
            /* theta's layout per group: K slopes, then K intercepts. */
            /* Without grad_x, the row's input-gradient part goes to a scratch row: one
             * loop for both cases, and only layers whose input needs no gradient pay. */
            REAL *out = b->grad_x ? b->grad_x + (n * C + ch) * hw : s.discard;
            coefficient_grad_row(K, MODE, pieces, row, grow, s.grad_pi, gf2 + g * 2 * K,
                                 gf2 + g * 2 * K + K, out, hw);
        }
    });
    /* Through 2 * sigmoid - 1 and the lambdas (per group, K slopes then K
     * intercepts), then fc2, the ReLU and fc1. */
    for (long g = 0; g < l->groups; g++)
        for (long kk = 0; kk < 2 * K; kk++) {
            long i = g * 2 * K + kk;
            REAL lambda = kk < K ? (REAL)l->lambda_a : (REAL)l->lambda_b;
            gf2[i] *= lambda * 2 * s.sig[i] * (1 - s.sig[i]);
        }
    /* fc2's transpose, row by row (its rows are contiguous), into a buffer that
     * aliases nothing, so the sums stay in registers. */
    REAL *restrict grad_hidden = s.grad_hidden;
    memset(grad_hidden, 0, sizeof(REAL) * (size_t)l->hidden);
    for (long i = 0; i < m; i++) {
        const REAL *restrict w = l->fc2_weight + i * l->hidden;
        REAL gi = gf2[i];
#pragma omp simd
        for (long j = 0; j < l->hidden; j++) grad_hidden[j] += w[j] * gi;
    }
    for (long j = 0; j < l->hidden; j++) {
        gf1[j] = s.hidden[j] > 0 ? grad_hidden[j] : 0;
        b->keep.hidden[n * l->hidden + j] = s.hidden[j];
    }
    memset(s.grad_context, 0, sizeof(REAL) * (size_t)C);
    for (long j = 0; j < l->hidden; j++) {
        const REAL *w = l->fc1_weight + j * C;
        REAL gj = gf1[j];
#pragma omp simd
        for (long i = 0; i < C; i++) s.grad_context[i] += w[i] * gj;
    }
    REAL *glog = spatial ? b->keep.grad_logits + n * hw : NULL;
    REAL *gsp = spatial ? b->keep.grad_spatial + n * C : NULL;
    if (spatial) {
        /* Through clamp(max=1) (gradient where its input is at most 1), the scale,
         * the softmax and 1 / tau. */
        REAL mean = 0; /* of the softmax's output gradient, under the softmax */
        for (long p = 0; p < hw; p++) {
            REAL gs = sm[p] * scale <= 1 ? s.grad_pi[p] * scale : 0;
            s.grad_pi[p] = gs;
            mean += gs * sm[p];
        }
        REAL inv_tau = (REAL)(1.0 / l->tau);
        for (long p = 0; p < hw; p++) glog[p] = sm[p] * (s.grad_pi[p] - mean) * inv_tau;
    }
    /* Pass 2: what reaches x through the pooling and the 1x1 conv, added to pass 1's part
     * of the input gradient; and that conv's weight gradient. */
    for (long ch = 0; ch < C; ch++) {
        const REAL *row = xn + ch * hw;
        if (!b->grad_x) { /* the conv's weight gradient alone */
            if (spatial) gsp[ch] = dot(glog, row, hw);
            continue;
        }
        REAL projected = input_grad_row(row, glog, s.grad_context[ch] / (REAL)hw,
                                        spatial ? l->spatial_weight[ch] : 0,
                                        b->grad_x + (n * C + ch) * hw, hw);
        if (spatial) gsp[ch] = projected;
    }
}

/* One row of a weight gradient, row = sum_n g[n * g_stride] * v[n, :] (v is (N, width)), and
 * returns the bias gradient, sum_n g[n * g_stride]. */
static REAL batch_row_sums(long n_samples, const REAL *g, long g_stride, const REAL *v,
                           long width, REAL *restrict row) {
    REAL bias = 0;
    memset(row, 0, sizeof(REAL) * (size_t)width);
    for (long n = 0; n < n_samples; n++) {
        REAL gn = g[n * g_stride];
        const REAL *restrict vn = v + n * width;
        bias += gn;
#pragma omp simd
        for (long i = 0; i < width; i++) row[i] += gn * vn[i];
    }
    return bias;
}

typedef struct {
    REAL *fc1_weight, *fc1_bias, *fc2_weight, *fc2_bias, *spatial_weight, *spatial_bias;
} ParameterGrads;

/* The parameters' gradients: the per-sample parts summed over the batch, a weight row per
 * loop iteration (fc1's rows, then fc2's, then the 1x1 conv's weights). */
static void parameter_grads(const Layer *l, const REAL *context, const PerSample *keep,
                            const ParameterGrads *out) {
    long hidden = l->hidden, m = l->groups * 2 * l->k, rows = hidden + m;
    int spatial = l->spatial_weight != NULL;
    long work = l->n * (hidden * l->c + m * hidden + (spatial ? l->c + l->hw : 0));
#pragma omp parallel for num_threads(threads_for(l, work)) schedule(static)
    for (long r = 0; r < rows + (spatial ? 1 : 0); r++) {
        if (r < hidden)
            out->fc1_bias[r] = batch_row_sums(l->n, keep->grad_fc1_out + r, hidden, context,
                                              l->c, out->fc1_weight + r * l->c);
        else if (r < rows)
            out->fc2_bias[r - hidden] = batch_row_sums(
                l->n, keep->grad_fc2_out + r - hidden, m, keep->hidden, hidden,
                out->fc2_weight + (r - hidden) * hidden);
        else { /* the conv: sum_n of the per-sample weight parts, and of every logit's */
            for (long ch = 0; ch < l->c; ch++) out->spatial_weight[ch] = 0;
            for (long n = 0; n < l->n; n++)
                for (long ch = 0; ch < l->c; ch++)
                    out->spatial_weight[ch] += keep->grad_spatial[n * l->c + ch];
            out->spatial_bias[0] = dot(keep->grad_logits, NULL, l->n * l->hw);
        }
    }
}

/* Backward: grad_x (may be NULL) and the gradients of fc1's and fc2's weights and biases and,
 * for variant C, of the 1x1 conv's weight and bias (the conv's bias only enters the softmax,
 * whose saved output backward uses instead). Returns 0, or 1 where the work space could not
 * be had. */
int dyrelu_backward(const Layer *l, const REAL *grad, const REAL *x, const REAL *context,
                    const REAL *softmax, REAL *grad_x, const ParameterGrads *out) {
    long n = l->n, m = l->groups * 2 * l->k, spatial = l->spatial_weight != NULL;
    long sizes[5] = {n * m, n * l->hidden, n * l->hidden, spatial ? n * l->hw : 0,
                     spatial ? n * l->c : 0};
    PerSample keep;
    REAL **slots[5] = {&keep.grad_fc2_out, &keep.grad_fc1_out, &keep.hidden,
                       &keep.grad_logits, &keep.grad_spatial};
    REAL *block = alloc_arrays(slots, sizes, 5);
    if (!block) return 1;
    BackwardArgs args = {grad, x, context, softmax, grad_x, keep};
    int failed = 0;
    for_each_sample(l, backward_sample, &args, &failed);
    if (!failed) parameter_grads(l, context, &keep, out);
    free(block);
    return failed;
}
