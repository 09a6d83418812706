// The native CPU backend of a DY-ReLU layer, forward and backward, registered as the
// operators dyrelu_pose_native::forward and dyrelu_pose_native::backward (native.py builds
// this file with torch.utils.cpp_extension; ops.py states the contract of every backend).
//
// Everything DY-ReLU computes depends on one sample at a time: the pooled context, the hyper
// function, the spatial softmax and all their gradients. So each thread takes whole samples
// and makes every pass over one sample before the next: the sample stays in the core's cache
// between the passes, and only the first pass over x reads memory. Backward also sums the
// parameters' gradients over the batch, so no torch operation follows it.
//
// The loops take x, y and the gradients as contiguous (N, C, H*W) in float or double, and the
// weights as nn.Linear and the 1x1 conv hold them; the operators take any layout and return y
// and the input gradient in x's (a channels_last x is copied to and from contiguous memory).
// alpha = (1, 0, ...), beta = 0. Piece ties go to the later piece, so with ReLU's
// coefficients the gradient at 0 is 0.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#define RESTRICT __restrict__

// exp with vector versions, where glibc's libmvec links (native.py defines POSE_VECTOR_MATH
// there): loops of exps then vectorise. For variant C with few channels, the softmax's
// scalar exps took about as long as a pass over x.
#ifdef POSE_VECTOR_MATH
extern "C" {
#pragma omp declare simd notinbranch
float expf(float) noexcept;
#pragma omp declare simd notinbranch
double exp(double) noexcept;
}
#endif
static inline float exp_of(float v) { return expf(v); }
static inline double exp_of(double v) { return exp(v); }

namespace {

// The settings record (settings.py's DyReLUSettings) arrives as a list of floats in field
// order (a list crosses the dispatcher several times faster than a dict), and each field is
// read by name where it is used: native.py binds the record's field names to their
// positions once, when it loads this file. A field that this file does not use needs nothing.
using Settings = c10::ArrayRef<double>;

std::unordered_map<std::string, long> &field_positions() {
    static std::unordered_map<std::string, long> positions;
    return positions;
}

void bind_fields(const c10::List<std::string> &names) {
    auto &positions = field_positions();
    positions.clear();
    for (size_t i = 0; i < names.size(); ++i) {
        positions[names.get(i)] = long(i);
    }
}

// The record's scalar fields that the loops read, each declared and read once from this list;
// a new scalar option is added here and where the loops use it (l.<name>).
#define DYRELU_SCALAR_SETTINGS(X) X(lambda_a) X(lambda_b) X(tau) X(gamma)

double setting(Settings settings, const char *name) {
    auto &positions = field_positions();
    auto found = positions.find(name);
    TORCH_CHECK(found != positions.end(), "dyrelu_pose_native: the settings have no '", name,
                "' (settings.py and kernels.cpp disagree)");
    TORCH_CHECK(found->second < long(settings.size()), "dyrelu_pose_native: the settings hold ",
                settings.size(), " values, '", name, "' is field ", found->second);
    return settings[found->second];
}

enum { MODE_PLAIN = 0, MODE_COEFFICIENT = 1, MODE_RESIDUAL = 2 };
constexpr long LANES = 16;  // partial sums per loop, so that sums vectorise
constexpr long GRAIN = 32768;  // values below which a loop stays on one thread, as torch's

template <typename real>
struct Layer {
    long n, c, hw, hidden, groups, k;
    const real *fc1_weight, *fc1_bias;  // (hidden, C), (hidden)
    const real *fc2_weight, *fc2_bias;  // (groups * 2 * K, hidden), (groups * 2 * K)
    const real *spatial_weight;         // (C) or null: variant C's 1x1 conv
    const real *spatial_bias;           // (1) or null
#define DECLARE_SETTING(name) real name;
    DYRELU_SCALAR_SETTINGS(DECLARE_SETTING)
#undef DECLARE_SETTING
    int mode;
};

// Sizes one block of memory for N arrays and points each slot at its part.
template <typename real, int N>
void carve(std::vector<real> &block, real **const (&slots)[N], const long (&sizes)[N]) {
    long total = 0;
    for (long size : sizes) total += size;
    block.resize(total);
    real *p = block.data();
    for (int i = 0; i < N; i++) {
        *slots[i] = p;
        p += sizes[i];
    }
}

// Per-thread work space for one sample.
template <typename real>
struct Scratch {
    std::vector<real> block;
    real *hidden, *sig, *a, *b, *logits, *pi, *grad_pi, *grad_context, *grad_hidden, *discard;
    explicit Scratch(const Layer<real> &l) {
        long m = l.groups * 2 * l.k, gk = l.groups * l.k;
        const long sizes[10] = {l.hidden, m, gk, gk, l.hw, l.hw, l.hw, l.c, l.hidden, l.hw};
        real **const slots[10] = {&hidden, &sig, &a, &b, &logits, &pi, &grad_pi, &grad_context,
                            &grad_hidden, &discard};
        carve(block, slots, sizes);
    }
};

// The sum of LANES partial sums, halving: vector adds, not LANES dependent scalar adds.
template <typename real>
inline real lanes_total(real *RESTRICT lane) {
    for (long width = LANES / 2; width >= 1; width /= 2)
        for (long j = 0; j < width; j++) lane[j] += lane[j + width];
    return lane[0];
}

// sum_i u[i] * v[i], or sum_i u[i] where v is null.
template <typename real>
inline real dot(const real *RESTRICT u, const real *RESTRICT v, long n) {
    real total = 0;
    long i = 0;
    if (n >= LANES) {  // short vectors (a hidden width of 7) skip the partial sums
        real lane[LANES] = {0};
        if (v)  // two loops: with the test inside, gcc leaves the loop scalar
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

// sum_i row[i], and logits[i] += w * row[i] in the same loop (variant C's 1x1 conv).
template <typename real>
inline real sum_and_project(const real *RESTRICT row, real w, real *RESTRICT logits, long n) {
    real lane[LANES] = {0}, total = 0;
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
    return total + lanes_total(lane);
}

// The hyper function for one sample: context (C) -> hidden (ReLU), sig (sigmoid), and the
// coefficients a, b (groups, K): with alpha, beta added except in mode "residual", which adds
// them per position.
template <typename real>
void hyper_forward(const Layer<real> &l, const real *context, Scratch<real> &s) {
    long m = l.groups * 2 * l.k, K = l.k;
    for (long j = 0; j < l.hidden; j++) {
        real acc = dot(l.fc1_weight + j * l.c, context, l.c) + l.fc1_bias[j];
        s.hidden[j] = acc > 0 ? acc : 0;
    }
    real *RESTRICT sig = s.sig;
    for (long i = 0; i < m; i++)
        sig[i] = dot(l.fc2_weight + i * l.hidden, s.hidden, l.hidden) + l.fc2_bias[i];
#pragma omp simd
    for (long i = 0; i < m; i++) sig[i] = real(1) / (real(1) + exp_of(-sig[i]));
    bool add_static = l.mode != MODE_RESIDUAL;
    for (long g = 0; g < l.groups; g++)
        for (long kk = 0; kk < K; kk++) {
            real da = (2 * sig[g * 2 * K + kk] - 1) * l.lambda_a;
            real db = (2 * sig[g * 2 * K + K + kk] - 1) * l.lambda_b;
            s.a[g * K + kk] = add_static && kk == 0 ? 1 + da : da;
            s.b[g * K + kk] = db;
        }
}

// pi = min(gamma * HW * softmax((logits + bias) / tau), 1) over one sample's positions.
template <typename real>
void attention_forward(const Layer<real> &l, const real *logits, real *RESTRICT softmax,
                       real *RESTRICT pi) {
    long hw = l.hw;
    real bias = l.spatial_bias[0], inv_tau = real(1) / l.tau, top = -INFINITY;
    for (long p = 0; p < hw; p++) {
        real z = (logits[p] + bias) * inv_tau;
        softmax[p] = z;
        top = z > top ? z : top;
    }
#pragma omp simd
    for (long p = 0; p < hw; p++) softmax[p] = exp_of(softmax[p] - top);
    real total = dot<real>(softmax, nullptr, hw);
    real scale = l.gamma * real(hw);
    for (long p = 0; p < hw; p++) {
        softmax[p] /= total;
        real v = softmax[p] * scale;
        pi[p] = v < 1 ? v : 1;
    }
}

// The loops over a row of positions are templates on K and the mode (KT = 0, MT = -1: taken
// at run time), instantiated for K = 2, 3 and each mode, so that the compiler unrolls the
// pieces and vectorises over positions; a general version serves other K.
// Calls f(kk) for kk = first .. K - 1: unrolled at compile time where K is a constant (KT > 0),
// so that loops over positions hold no inner loop and vectorise; a loop otherwise.
template <int KT, int first, typename F, int... I>
inline void unrolled(F &&f, std::integer_sequence<int, I...>) {
    (f(long(first + I)), ...);
}

template <int KT, int first, typename F>
inline void for_pieces(long k, F &&f) {
    if constexpr (KT > 0) {
        unrolled<KT, first>(f, std::make_integer_sequence<int, KT - first>());
    } else {
        for (long kk = first; kk < k; kk++) f(kk);
    }
}

// One row's pieces: its group's coefficients a, b (K each) and the attention pi (null in mode
// "plain"). With K a constant they are copied into the struct, so that the compiler knows
// that no store to the output touches them and keeps them in registers.
template <typename real, int KT>
struct Pieces {
    real a[KT], b[KT];
    const real *pi;
    Pieces(const real *a_, const real *b_, const real *pi_) : pi(pi_) {
        for (int kk = 0; kk < KT; kk++) {
            a[kk] = a_[kk];
            b[kk] = b_[kk];
        }
    }
};

template <typename real>
struct Pieces<real, 0> {
    const real *a, *b, *pi;
    Pieces(const real *a_, const real *b_, const real *pi_) : a(a_), b(b_), pi(pi_) {}
};

// The slope and intercept of piece kk at a position with attention pw (mode "residual":
// alpha + pw * a, beta + pw * b).
#define SLOPE(kk) (MODE == MODE_RESIDUAL ? (kk == 0 ? real(1) : real(0)) + pw * a[kk] : a[kk])
#define INTERCEPT(kk) (MODE == MODE_RESIDUAL ? pw * b[kk] : b[kk])

template <typename real, int KT, int MT>
inline void forward_row(long k, int mode, const Pieces<real, KT> &c, const real *RESTRICT row,
                        real *RESTRICT out, long hw) {
    const long K = KT > 0 ? KT : k;
    const int MODE = MT >= 0 ? MT : mode;
    const real *a = c.a, *b = c.b, *pi = c.pi;
#pragma omp simd
    for (long p = 0; p < hw; p++) {
        real pw = MODE == MODE_PLAIN ? real(1) : pi[p], v = row[p];
        real best = SLOPE(0) * v + INTERCEPT(0);
        for_pieces<KT, 1>(K, [&](long kk) {
            real piece = SLOPE(kk) * v + INTERCEPT(kk);
            best = piece >= best ? piece : best;
        });
        out[p] = MODE == MODE_COEFFICIENT ? best * pw : best;
    }
}

// At one position: the winning piece (as real), the output gradient as the coefficients see
// it (times pi in the attention modes), the gradient reaching pi (grad times the winning
// value in mode "coefficient", times the winning piece's residual part a x + b in mode
// "residual"), and the gradient reaching x through the maximum.
template <typename real>
struct Winner {
    real win, grad, grad_pi, grad_x;
};

template <typename real, int KT, int MT>
inline Winner<real> winner_at(long k, int mode, const Pieces<real, KT> &c, real v, real g, real pw) {
    const long K = KT > 0 ? KT : k;
    const int MODE = MT >= 0 ? MT : mode;
    const real *a = c.a, *b = c.b;
    real best = SLOPE(0) * v + INTERCEPT(0), win = 0, slope = SLOPE(0);
    real part = a[0] * v + b[0];
    for_pieces<KT, 1>(K, [&](long kk) {
        real piece = SLOPE(kk) * v + INTERCEPT(kk);
        bool wins = piece >= best;
        win = wins ? real(kk) : win;
        slope = wins ? SLOPE(kk) : slope;
        if (MODE == MODE_RESIDUAL) part = wins ? a[kk] * v + b[kk] : part;
        best = wins ? piece : best;
    });
    return {win, MODE == MODE_PLAIN ? g : g * pw,
            MODE == MODE_COEFFICIENT ? g * best : MODE == MODE_RESIDUAL ? g * part : real(0),
            (MODE == MODE_COEFFICIENT ? g * pw : g) * slope};
}

// Pass 1 over one row, in one loop: sum_a[kk] += the sum of grad' * x where piece kk wins,
// sum_b[kk] += that of grad' (grad' as in winner_at), grad_pi += the attention's gradient,
// and out = the gradient through the maximum; input_grad_row adds what reaches x through the
// pooling and the 1x1 conv once the sample's pass 1 is done. Written here, while the row is
// in the first-level cache, so that pass 2 reads out instead of x, the gradient and pi.
template <typename real, int KT, int MT>
inline void coefficient_grad_row(long k, int mode, const Pieces<real, KT> &c, const real *RESTRICT row,
                                 const real *RESTRICT grow, real *RESTRICT grad_pi,
                                 real *sum_a, real *sum_b, real *RESTRICT out, long hw) {
    const long K = KT > 0 ? KT : k;
    const int MODE = MT >= 0 ? MT : mode;
    auto at = [&](long p) {
        real pw = MODE == MODE_PLAIN ? real(1) : c.pi[p];
        Winner<real> w = winner_at<real, KT, MT>(K, MODE, c, row[p], grow[p], pw);
        if (MODE != MODE_PLAIN) grad_pi[p] += w.grad_pi;
        out[p] = w.grad_x;
        return w;
    };
    long p = 0;
    if constexpr (KT > 0) {  // partial sums in registers where K is a constant
        real lane_a[KT][LANES] = {}, lane_b[KT][LANES] = {};
        for (; p + LANES <= hw; p += LANES)
            for (long j = 0; j < LANES; j++) {
                Winner<real> w = at(p + j);
                for_pieces<KT, 0>(K, [&](long kk) {
                    real masked = w.grad * real(w.win == real(kk));  // a multiply, not a branch
                    lane_a[kk][j] += masked * row[p + j];
                    lane_b[kk][j] += masked;
                });
            }
        for (long kk = 0; kk < KT; kk++) {
            sum_a[kk] += lanes_total(lane_a[kk]);
            sum_b[kk] += lanes_total(lane_b[kk]);
        }
    }
    for (; p < hw; p++) {
        Winner<real> w = at(p);
        long kk = long(w.win);
        sum_a[kk] += w.grad * row[p];
        sum_b[kk] += w.grad;
    }
}

#undef SLOPE
#undef INTERCEPT

// Calls body(Const<KT>, Const<MT>) with K and the mode as constants where K is 2 or 3, else
// with KT = 0 and MT = -1 (both taken at run time).
template <int V>
using Const = std::integral_constant<int, V>;

template <typename Body>
inline void with_constants(long k, int mode, Body &&body) {
    if (k == 2 && mode == MODE_PLAIN) body(Const<2>(), Const<MODE_PLAIN>());
    else if (k == 2 && mode == MODE_COEFFICIENT) body(Const<2>(), Const<MODE_COEFFICIENT>());
    else if (k == 2 && mode == MODE_RESIDUAL) body(Const<2>(), Const<MODE_RESIDUAL>());
    else if (k == 3 && mode == MODE_PLAIN) body(Const<3>(), Const<MODE_PLAIN>());
    else if (k == 3 && mode == MODE_COEFFICIENT) body(Const<3>(), Const<MODE_COEFFICIENT>());
    else if (k == 3 && mode == MODE_RESIDUAL) body(Const<3>(), Const<MODE_RESIDUAL>());
    else body(Const<0>(), Const<-1>());
}

// Pass 2 over one row of the input gradient: adds what reaches x through the pooling
// (pooled) and, with an attention, through the 1x1 conv (grad_logits * w); returns
// sum_p grad_logits * x, this row's part of that conv's weight gradient.
template <typename real>
inline real input_grad_row(const real *RESTRICT row, const real *RESTRICT grad_logits,
                           real pooled, real w, real *RESTRICT out, long hw) {
    if (!grad_logits) {
#pragma omp simd
        for (long p = 0; p < hw; p++) out[p] += pooled;
        return 0;
    }
    real lane[LANES] = {0}, total = 0;
    long p = 0;
    for (; p + LANES <= hw; p += LANES)
        for (long j = 0; j < LANES; j++) {
            real gl = grad_logits[p + j];
            out[p + j] += pooled + gl * w;
            lane[j] += gl * row[p + j];
        }
    for (; p < hw; p++) {
        out[p] += pooled + grad_logits[p] * w;
        total += grad_logits[p] * row[p];
    }
    return total + lanes_total(lane);
}

// Runs body(scratch, n) for every sample: each thread takes whole samples, with its own
// work space.
template <typename real, typename Body>
void for_each_sample(const Layer<real> &l, Body &&body) {
    long per_sample = l.c * l.hw;
    long grain = per_sample >= GRAIN ? 1 : GRAIN / per_sample;
    at::parallel_for(0, l.n, grain, [&](int64_t begin, int64_t end) {
        Scratch<real> s(l);
        for (long n = begin; n < end; n++) body(s, n);
    });
}

template <typename real>
void forward_sample(const Layer<real> &l, Scratch<real> &s, long n, const real *x, real *y,
                    real *context, real *softmax) {
    long C = l.c, hw = l.hw;
    bool spatial = l.spatial_weight != nullptr;
    const real *xn = x + n * C * hw;
    real *ctx = context + n * C;
    if (spatial) std::memset(s.logits, 0, sizeof(real) * hw);
    for (long ch = 0; ch < C; ch++) {
        const real *row = xn + ch * hw;
        real total = spatial ? sum_and_project(row, l.spatial_weight[ch], s.logits, hw)
                             : dot<real>(row, nullptr, hw);
        ctx[ch] = total / real(hw);
    }
    hyper_forward(l, ctx, s);
    if (spatial) attention_forward(l, s.logits, softmax + n * hw, s.pi);
    with_constants(l.k, l.mode, [&](auto kt, auto mt) {
        constexpr int KT = decltype(kt)::value, MT = decltype(mt)::value;
        for (long ch = 0; ch < C; ch++) {
            long g = l.groups == 1 ? 0 : ch;
            Pieces<real, KT> pieces(s.a + g * l.k, s.b + g * l.k, s.pi);
            forward_row<real, KT, MT>(l.k, l.mode, pieces, xn + ch * hw, y + (n * C + ch) * hw,
                                      hw);
        }
    });
}

// What backward keeps per sample, for the sums over the batch: the gradients at the two FCs'
// outputs (pre-activation), the first FC's activations, and for variant C the gradient of the
// bias-free 1x1 conv's output and the sample's part of the conv's weight gradient.
template <typename real>
struct PerSample {
    std::vector<real> block;
    real *grad_fc2_out, *grad_fc1_out, *hidden, *grad_logits, *grad_spatial;
    explicit PerSample(const Layer<real> &l) {
        bool spatial = l.spatial_weight != nullptr;
        long n = l.n, m = l.groups * 2 * l.k;
        const long sizes[5] = {n * m, n * l.hidden, n * l.hidden, spatial ? n * l.hw : 0,
                         spatial ? n * l.c : 0};
        real **const slots[5] = {&grad_fc2_out, &grad_fc1_out, &hidden, &grad_logits, &grad_spatial};
        carve(block, slots, sizes);
    }
};

template <typename real>
void backward_sample(const Layer<real> &l, Scratch<real> &s, long n, const real *grad,
                     const real *x, const real *context, const real *softmax, real *grad_x,
                     PerSample<real> &keep) {
    long C = l.c, hw = l.hw, K = l.k, m = l.groups * 2 * K;
    bool spatial = l.spatial_weight != nullptr;
    real scale = l.gamma * real(hw);
    const real *xn = x + n * C * hw, *gn = grad + n * C * hw, *ctx = context + n * C;
    const real *sm = spatial ? softmax + n * hw : nullptr;
    real *gf2 = keep.grad_fc2_out + n * m, *gf1 = keep.grad_fc1_out + n * l.hidden;
    hyper_forward(l, ctx, s);
    if (spatial) {
        for (long p = 0; p < hw; p++) {
            real v = sm[p] * scale;
            s.pi[p] = v < 1 ? v : 1;
        }
        std::memset(s.grad_pi, 0, sizeof(real) * hw);
    }
    // Pass 1: the coefficients' gradients (sums over positions, and channels when they are
    // shared), the attention's (sums over channels) and the input gradient's main part.
    std::memset(gf2, 0, sizeof(real) * m);
    with_constants(K, l.mode, [&](auto kt, auto mt) {
        constexpr int KT = decltype(kt)::value, MT = decltype(mt)::value;
        for (long ch = 0; ch < C; ch++) {
            long g = l.groups == 1 ? 0 : ch;
            Pieces<real, KT> pieces(s.a + g * K, s.b + g * K, s.pi);
            // theta's layout per group: K slopes, then K intercepts. Without grad_x, the
            // input-gradient part goes to a scratch row: one loop serves both cases.
            real *out = grad_x ? grad_x + (n * C + ch) * hw : s.discard;
            coefficient_grad_row<real, KT, MT>(K, l.mode, pieces, xn + ch * hw, gn + ch * hw,
                                               s.grad_pi, gf2 + g * 2 * K, gf2 + g * 2 * K + K,
                                               out, hw);
        }
    });
    // Through 2 * sigmoid - 1 and the lambdas, then fc2, the ReLU and fc1.
    for (long g = 0; g < l.groups; g++)
        for (long kk = 0; kk < 2 * K; kk++) {
            long i = g * 2 * K + kk;
            real lambda = kk < K ? l.lambda_a : l.lambda_b;
            gf2[i] *= lambda * 2 * s.sig[i] * (1 - s.sig[i]);
        }
    real *RESTRICT grad_hidden = s.grad_hidden;  // aliases nothing: the sums stay in registers
    std::memset(grad_hidden, 0, sizeof(real) * l.hidden);
    for (long i = 0; i < m; i++) {
        const real *RESTRICT w = l.fc2_weight + i * l.hidden;
        real gi = gf2[i];
#pragma omp simd
        for (long j = 0; j < l.hidden; j++) grad_hidden[j] += w[j] * gi;
    }
    for (long j = 0; j < l.hidden; j++) {
        gf1[j] = s.hidden[j] > 0 ? grad_hidden[j] : 0;
        keep.hidden[n * l.hidden + j] = s.hidden[j];
    }
    std::memset(s.grad_context, 0, sizeof(real) * C);
    for (long j = 0; j < l.hidden; j++) {
        const real *w = l.fc1_weight + j * C;
        real gj = gf1[j];
#pragma omp simd
        for (long i = 0; i < C; i++) s.grad_context[i] += w[i] * gj;
    }
    real *glog = spatial ? keep.grad_logits + n * hw : nullptr;
    real *gsp = spatial ? keep.grad_spatial + n * C : nullptr;
    if (spatial) {
        // Through clamp(max=1) (gradient where its input is at most 1), the scale, the
        // softmax and 1 / tau.
        real mean = 0;  // of the softmax's output gradient, under the softmax
        for (long p = 0; p < hw; p++) {
            real gs = sm[p] * scale <= 1 ? s.grad_pi[p] * scale : 0;
            s.grad_pi[p] = gs;
            mean += gs * sm[p];
        }
        real inv_tau = real(1) / l.tau;
        for (long p = 0; p < hw; p++) glog[p] = sm[p] * (s.grad_pi[p] - mean) * inv_tau;
    }
    // Pass 2: what reaches x through the pooling and the 1x1 conv, and that conv's weight
    // gradient.
    for (long ch = 0; ch < C; ch++) {
        const real *row = xn + ch * hw;
        if (!grad_x) {
            if (spatial) gsp[ch] = dot(glog, row, hw);
            continue;
        }
        real projected = input_grad_row(row, glog, s.grad_context[ch] / real(hw),
                                        spatial ? l.spatial_weight[ch] : real(0),
                                        grad_x + (n * C + ch) * hw, hw);
        if (spatial) gsp[ch] = projected;
    }
}

// One row of a weight gradient, row = sum_n g[n * g_stride] * v[n, :] (v is (N, width));
// returns the bias gradient, sum_n g[n * g_stride].
template <typename real>
real batch_row_sums(long n_samples, const real *g, long g_stride, const real *v, long width,
                    real *RESTRICT row) {
    real bias = 0;
    std::memset(row, 0, sizeof(real) * width);
    for (long n = 0; n < n_samples; n++) {
        real gn = g[n * g_stride];
        const real *RESTRICT vn = v + n * width;
        bias += gn;
#pragma omp simd
        for (long i = 0; i < width; i++) row[i] += gn * vn[i];
    }
    return bias;
}

// The parameters' gradients: the per-sample parts summed over the batch, one weight row per
// iteration (fc1's rows, then fc2's, then the 1x1 conv's weights).
template <typename real>
void parameter_grads(const Layer<real> &l, const real *context, const PerSample<real> &keep,
                     real *fc1_weight, real *fc1_bias, real *fc2_weight, real *fc2_bias,
                     real *spatial_weight, real *spatial_bias) {
    long hidden = l.hidden, m = l.groups * 2 * l.k, rows = hidden + m;
    bool spatial = l.spatial_weight != nullptr;
    long per_row = l.n * (l.c > hidden ? l.c : hidden);
    long grain = per_row >= GRAIN ? 1 : GRAIN / per_row;
    at::parallel_for(0, rows + (spatial ? 1 : 0), grain, [&](int64_t begin, int64_t end) {
        for (long r = begin; r < end; r++) {
            if (r < hidden) {
                fc1_bias[r] = batch_row_sums(l.n, keep.grad_fc1_out + r, hidden, context, l.c,
                                             fc1_weight + r * l.c);
            } else if (r < rows) {
                fc2_bias[r - hidden] = batch_row_sums(l.n, keep.grad_fc2_out + r - hidden, m,
                                                      keep.hidden, hidden,
                                                      fc2_weight + (r - hidden) * hidden);
            } else {  // the conv: sums over the batch of the per-sample parts and logits
                for (long ch = 0; ch < l.c; ch++) spatial_weight[ch] = 0;
                for (long n = 0; n < l.n; n++)
                    for (long ch = 0; ch < l.c; ch++)
                        spatial_weight[ch] += keep.grad_spatial[n * l.c + ch];
                spatial_bias[0] = dot<real>(keep.grad_logits, nullptr, l.n * l.hw);
            }
        }
    });
}

void check_inputs(const at::Tensor &x, std::initializer_list<const at::Tensor *> others) {
    TORCH_CHECK(x.device().is_cpu() && x.dim() == 4,
                "dyrelu_pose_native: x must be an (N, C, H, W) CPU tensor");
    TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                "dyrelu_pose_native: float32 or float64 only, got ", x.scalar_type());
    for (const at::Tensor *t : others)
        TORCH_CHECK(!t->defined() || (t->scalar_type() == x.scalar_type() &&
                                      t->device().is_cpu()),
                    "dyrelu_pose_native: every tensor must be on the CPU, in ", x.scalar_type());
}

// The tensor, or a contiguous copy of it; an undefined one stays undefined.
at::Tensor dense(const at::Tensor &t) { return t.defined() ? t.contiguous() : t; }

// A contiguous tensor the loops write, handed back in x's layout, as at::empty_like(x) lays
// it out (what the operators promise to torch.compile).
struct OutputLike {
    at::Tensor out, work;
    explicit OutputLike(const at::Tensor &x) : out(at::empty_like(x)) {
        work = out.is_contiguous() ? out : at::empty(x.sizes(), x.options());
    }
    at::Tensor result() { return work.is_same(out) ? out : out.copy_(work); }
};

template <typename real>
Layer<real> make_layer(const at::Tensor &x, const at::Tensor &fc1_weight,
                       const at::Tensor &fc1_bias, const at::Tensor &fc2_weight,
                       const at::Tensor &fc2_bias, const at::Tensor &spatial_weight,
                       const at::Tensor &spatial_bias, Settings s) {
    auto ptr = [](const at::Tensor &t) { return t.defined() ? t.data_ptr<real>() : nullptr; };
    Layer<real> l;
    l.n = x.size(0);
    l.c = x.size(1);
    l.hw = x.size(2) * x.size(3);
    l.hidden = fc1_weight.size(0);
    l.groups = setting(s, "channelwise") != 0 ? l.c : 1;
    l.k = long(setting(s, "k"));
    TORCH_CHECK(fc2_weight.size(0) == l.groups * 2 * l.k,
                "dyrelu_pose_native: fc2 has ", fc2_weight.size(0), " outputs, expected ",
                l.groups * 2 * l.k);
    l.fc1_weight = ptr(fc1_weight);
    l.fc1_bias = ptr(fc1_bias);
    l.fc2_weight = ptr(fc2_weight);
    l.fc2_bias = ptr(fc2_bias);
    l.spatial_weight = ptr(spatial_weight);
    l.spatial_bias = ptr(spatial_bias);
#define READ_SETTING(name) l.name = real(setting(s, #name));
    DYRELU_SCALAR_SETTINGS(READ_SETTING)
#undef READ_SETTING
    l.mode = int(setting(s, "spatial"));
    TORCH_CHECK((l.mode == MODE_PLAIN) == (l.spatial_weight == nullptr),
                "dyrelu_pose_native: the spatial conv is given exactly in the attention modes");
    return l;
}

// Forward: y (laid out as x), the pooled context (N, C) and, for variant C, the softmax
// (N, H*W) that backward needs (else an empty (0) tensor).
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(
    const at::Tensor &x_in, const at::Tensor &fc1_weight_in, const at::Tensor &fc1_bias,
    const at::Tensor &fc2_weight_in, const at::Tensor &fc2_bias,
    const std::optional<at::Tensor> &spatial_weight, const std::optional<at::Tensor> &spatial_bias,
    Settings s) {
    at::Tensor x = x_in.contiguous(), fc1_weight = fc1_weight_in.contiguous();
    at::Tensor fc2_weight = fc2_weight_in.contiguous();
    at::Tensor sw = dense(spatial_weight.value_or(at::Tensor()));
    at::Tensor sb = spatial_bias.value_or(at::Tensor());
    check_inputs(x, {&fc1_weight, &fc1_bias, &fc2_weight, &fc2_bias, &sw, &sb});
    long n = x.size(0), hw = x.size(2) * x.size(3);
    OutputLike y(x_in);
    at::Tensor context = at::empty({n, x.size(1)}, x.options());
    at::Tensor softmax = sw.defined() ? at::empty({n, hw}, x.options())
                                      : at::empty({0}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dyrelu_pose_native::forward", [&] {
        Layer<scalar_t> l = make_layer<scalar_t>(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                                                 sw, sb, s);
        const scalar_t *xp = x.data_ptr<scalar_t>();
        scalar_t *yp = y.work.data_ptr<scalar_t>(), *cp = context.data_ptr<scalar_t>();
        scalar_t *sp = sw.defined() ? softmax.data_ptr<scalar_t>() : nullptr;
        for_each_sample(l, [&](Scratch<scalar_t> &scratch, long i) {
            forward_sample(l, scratch, i, xp, yp, cp, sp);
        });
    });
    return {y.result(), context, softmax};
}

// Backward: the gradients of x (laid out as x; empty unless input_grad), fc1 and fc2 (weight,
// bias) and, for variant C, the 1x1 conv's weight and bias, shaped as they are (else empty).
// The conv's bias only enters the softmax, whose saved output backward uses instead.
std::vector<at::Tensor> backward(const at::Tensor &grad_y, const at::Tensor &x_in,
                                 const at::Tensor &fc1_weight_in, const at::Tensor &fc1_bias,
                                 const at::Tensor &fc2_weight_in, const at::Tensor &fc2_bias,
                                 const std::optional<at::Tensor> &spatial_weight,
                                 const at::Tensor &context, const at::Tensor &softmax,
                                 Settings s, bool input_grad) {
    at::Tensor x = x_in.contiguous(), grad = grad_y.contiguous();
    at::Tensor fc1_weight = fc1_weight_in.contiguous(), fc2_weight = fc2_weight_in.contiguous();
    at::Tensor sw = dense(spatial_weight.value_or(at::Tensor()));
    check_inputs(x, {&grad, &fc1_weight, &fc1_bias, &fc2_weight, &fc2_bias, &sw, &context,
                     &softmax});
    bool spatial = sw.defined();
    OutputLike grad_x(input_grad ? x_in : at::empty({0}, x.options()));
    std::vector<at::Tensor> grads = {at::Tensor(),
                                     at::empty_like(fc1_weight),
                                     at::empty_like(fc1_bias),
                                     at::empty_like(fc2_weight),
                                     at::empty_like(fc2_bias),
                                     spatial ? at::empty_like(sw) : at::empty({0}, x.options()),
                                     at::empty({spatial ? 1 : 0}, x.options())};
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dyrelu_pose_native::backward", [&] {
        Layer<scalar_t> l = make_layer<scalar_t>(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                                                 sw, at::Tensor(), s);
        auto ptr = [](const at::Tensor &t) {
            return t.numel() ? t.data_ptr<scalar_t>() : nullptr;
        };
        const scalar_t *gp = grad.data_ptr<scalar_t>(), *xp = x.data_ptr<scalar_t>();
        const scalar_t *cp = context.data_ptr<scalar_t>(), *sp = ptr(softmax);
        scalar_t *gxp = input_grad ? grad_x.work.data_ptr<scalar_t>() : nullptr;
        PerSample<scalar_t> keep(l);
        for_each_sample(l, [&](Scratch<scalar_t> &scratch, long i) {
            backward_sample(l, scratch, i, gp, xp, cp, sp, gxp, keep);
        });
        parameter_grads(l, cp, keep, ptr(grads[1]), ptr(grads[2]), ptr(grads[3]),
                        ptr(grads[4]), ptr(grads[5]), ptr(grads[6]));
    });
    grads[0] = grad_x.result();
    return grads;
}

}  // namespace

TORCH_LIBRARY(dyrelu_pose_native, m) {
    m.def("forward(Tensor x, Tensor fc1_weight, Tensor fc1_bias, Tensor fc2_weight, "
          "Tensor fc2_bias, Tensor? spatial_weight, Tensor? spatial_bias, "
          "float[] settings) "
          "-> (Tensor, Tensor, Tensor)");
    m.def("backward(Tensor grad, Tensor x, Tensor fc1_weight, Tensor fc1_bias, "
          "Tensor fc2_weight, Tensor fc2_bias, Tensor? spatial_weight, Tensor context, "
          "Tensor softmax, float[] settings, bool input_grad) -> Tensor[]");
    m.def("bind_fields(str[] names) -> ()", &bind_fields);
}

TORCH_LIBRARY_IMPL(dyrelu_pose_native, CPU, m) {
    m.impl("forward", &forward);
    m.impl("backward", &backward);
}
