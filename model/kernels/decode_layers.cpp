// The transformer blocks of one decoding pass (FrozenStep.extend) in one call.
//
// At batch 1 a pass is about 150 small tensor ops, and each costs far more in dispatch,
// allocation and Python than in arithmetic: the four matrix products per layer are under a
// fifth of the time. Here the products stay library calls (FBGEMM fp16 or BLAS fp32) and
// everything between them (layer norms, attention over the cache, GELU, residual adds,
// cache writes) is plain loops over preallocated buffers. The arithmetic is the same as
// model/transformer.py's FrozenStep.extend; tests/test_fused_kernel.py holds the two equal.

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/extension.h>

#include <cmath>
#include <vector>

namespace {

using torch::Tensor;

// Tensors per layer in `weights`, in this order (FusedLayers in model/fused.py builds it).
enum Slot {
  LN1_W, LN1_B, LN2_W, LN2_B,
  QKV_HALF, QKV_T, QKV_B,      // packed fp16 weight, fp32 weight transposed [in, out], bias
  PROJ_HALF, PROJ_T, PROJ_B,
  FC_HALF, FC_T, FC_B,
  FCP_HALF, FCP_T, FCP_B,
  SLOTS
};

using Vec = at::vec::Vectorized<float>;

void layer_norm(const float* x, const float* w, const float* b, float* out, int64_t rows, int64_t C) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * C;
    float* o = out + r * C;
    float mean = 0.f, var = 0.f;
#pragma omp simd reduction(+ : mean)
    for (int64_t c = 0; c < C; ++c) mean += xr[c];
    mean /= C;
#pragma omp simd reduction(+ : var)
    for (int64_t c = 0; c < C; ++c) var += (xr[c] - mean) * (xr[c] - mean);
    const float inv = 1.f / std::sqrt(var / C + 1e-5f);
    for (int64_t c = 0; c < C; ++c) o[c] = (xr[c] - mean) * inv * w[c] + b[c];
  }
}

// ATen's own exact GELU, x * 0.5 * (1 + erf(x / sqrt 2)), with its vectorised erf.
void gelu(float* x, int64_t size) {
  const Vec half(0.5f), one(1.f), alpha(static_cast<float>(M_SQRT1_2));
  int64_t i = 0;
  for (; i + Vec::size() <= size; i += Vec::size()) {
    Vec v = Vec::loadu(x + i);
    (v * half * (one + (v * alpha).erf())).store(x + i);
  }
  if (i < size) {
    Vec v = Vec::loadu(x + i, size - i);
    (v * half * (one + (v * alpha).erf())).store(x + i, size - i);
  }
}

float dot(const float* a, const float* b, int64_t size) {
  Vec acc(0.f);
  int64_t d = 0;
  for (; d + Vec::size() <= size; d += Vec::size()) acc = at::vec::fmadd(Vec::loadu(a + d), Vec::loadu(b + d), acc);
  float lanes[Vec::size()];
  acc.store(lanes);
  float s = 0.f;
  for (int64_t j = 0; j < Vec::size(); ++j) s += lanes[j];
  for (; d < size; ++d) s += a[d] * b[d];
  return s;
}

// out += p * v
void axpy(float p, const float* v, float* out, int64_t size) {
  int64_t d = 0;
  for (; d + Vec::size() <= size; d += Vec::size())
    at::vec::fmadd(Vec(p), Vec::loadu(v + d), Vec::loadu(out + d)).store(out + d);
  for (; d < size; ++d) out[d] += p * v[d];
}

// x [M, in] -> out [M, out]. FBGEMM's fp16 kernel wins at a few rows, BLAS at many; with
// half weights both hold the same fp16-rounded numbers, so the choice moves scores by
// rounding noise only. half_max_rows 0: fp32 weights only (the half slots are empty).
void linear(const Tensor& x, const Tensor* w, int slot_half, int64_t half_max_rows, Tensor& out) {
  const Tensor& bias = w[slot_half + 2];
  if (x.size(0) <= half_max_rows) {
    out = at::fbgemm_linear_fp16_weight(x, w[slot_half], bias);
  } else {
    out = at::addmm(bias, x, w[slot_half + 1]);
  }
}

// One head's attention for one new token over cache columns [0, columns): scores, softmax
// over the visible ones, weighted sum of values. scores: scratch of `columns` floats.
void attend(const float* q, const float* keys, const float* values, int64_t key_stride,
            const bool* visible, int64_t columns, int64_t hd, float scale, float* scores, float* out) {
  float top = -INFINITY;
  for (int64_t j = 0; j < columns; ++j) {
    scores[j] = visible[j] ? dot(q, keys + j * key_stride, hd) * scale : -INFINITY;
    top = std::max(top, scores[j]);
  }
  for (int64_t d = 0; d < hd; ++d) out[d] = 0.f;
  if (top == -INFINITY) return;  // a padding query that sees nothing: its output is never read
  int64_t j = 0;
  for (; j + Vec::size() <= columns; j += Vec::size()) (Vec::loadu(scores + j) - Vec(top)).exp().store(scores + j);
  if (j < columns) (Vec::loadu(scores + j, columns - j) - Vec(top)).exp().store(scores + j, columns - j);
  float total = 0.f;
  for (j = 0; j < columns; ++j) total += scores[j];
  for (j = 0; j < columns; ++j)
    if (scores[j] != 0.f) axpy(scores[j] / total, values + j * key_stride, out, hd);
}

// x [B, T, C] (fp32, contiguous): the embedded new tokens, updated in place through all
// layers. k_bufs / v_bufs [B, H, capacity, hd] per layer: columns n .. n+T-1 are written.
// visible [B, >= n+T] bool: which cache columns each row may see (padding, rejected guesses);
// new token t also sees only columns <= n + t.
Tensor decode_layers(Tensor x, const std::vector<Tensor>& weights, const std::vector<Tensor>& k_bufs,
                     const std::vector<Tensor>& v_bufs, const Tensor& visible, int64_t n, int64_t n_head,
                     int64_t half_max_rows) {
  pybind11::gil_scoped_release no_gil;  // the event loop runs while a pass computes
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous() && x.scalar_type() == at::kFloat, "x must be [B, T, C] fp32");
  TORCH_CHECK(visible.scalar_type() == at::kBool && visible.stride(1) == 1, "visible must be bool [B, S]");
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), M = B * T;
  const int64_t H = n_head, hd = C / H, L = k_bufs.size();
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == L * SLOTS, "expected ", SLOTS, " weights per layer");
  TORCH_CHECK(visible.size(0) == B && visible.size(1) >= n + T, "visible must cover the new columns");
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
  float* xp = x.data_ptr<float>();
  Tensor h = at::empty({M, C}, x.options());
  Tensor y = at::empty({M, C}, x.options());
  Tensor out;
  const bool* vis = visible.data_ptr<bool>();
  const int64_t vis_stride = visible.stride(0);

  for (int64_t l = 0; l < L; ++l) {
    const Tensor* w = &weights[l * SLOTS];
    Tensor& kb = const_cast<Tensor&>(k_bufs[l]);
    Tensor& vb = const_cast<Tensor&>(v_bufs[l]);
    // The loops below write and read raw pointers: check every bound they rely on.
    TORCH_CHECK(kb.scalar_type() == at::kFloat && kb.sizes() == vb.sizes() && kb.strides() == vb.strides() &&
                    kb.size(0) == B && kb.size(1) == H && kb.size(2) >= n + T && kb.size(3) == hd &&
                    kb.stride(3) == 1,
                "cache buffers must be fp32 [B, n_head, >= n+T, head_dim] with contiguous heads");
    const int64_t sb = kb.stride(0), sh = kb.stride(1), ss = kb.stride(2);
    float* kp = kb.data_ptr<float>();
    float* vp = vb.data_ptr<float>();

    // attention: h = ln_1(x); qkv = h W; write k, v into the cache; y = attend(q)
    layer_norm(xp, w[LN1_W].data_ptr<float>(), w[LN1_B].data_ptr<float>(), h.data_ptr<float>(), M, C);
    linear(h, w, QKV_HALF, half_max_rows, out);  // [M, 3C]: q | k | v, heads contiguous
    const float* qkv = out.data_ptr<float>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) {
        const float* row = qkv + (b * T + t) * 3 * C;
        for (int64_t hh = 0; hh < H; ++hh) {
          float* kd = kp + b * sb + hh * sh + (n + t) * ss;
          float* vd = vp + b * sb + hh * sh + (n + t) * ss;
          for (int64_t d = 0; d < hd; ++d) {
            kd[d] = row[C + hh * hd + d];
            vd[d] = row[2 * C + hh * hd + d];
          }
        }
      }
    float* yp = y.data_ptr<float>();
    at::parallel_for(0, B * H, 16, [&](int64_t begin, int64_t end) {
      std::vector<float> scores(n + T);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / H, hh = i % H;
        for (int64_t t = 0; t < T; ++t) {
          const float* q = qkv + (b * T + t) * 3 * C + hh * hd;
          attend(q, kp + b * sb + hh * sh, vp + b * sb + hh * sh, ss, vis + b * vis_stride, n + t + 1, hd,
                 scale, scores.data(), yp + (b * T + t) * C + hh * hd);
        }
      }
    });
    linear(y, w, PROJ_HALF, half_max_rows, out);
    const float* a = out.data_ptr<float>();
    for (int64_t i = 0; i < M * C; ++i) xp[i] += a[i];

    // MLP: x += gelu(ln_2(x) W_fc) W_proj
    layer_norm(xp, w[LN2_W].data_ptr<float>(), w[LN2_B].data_ptr<float>(), h.data_ptr<float>(), M, C);
    linear(h, w, FC_HALF, half_max_rows, out);  // [M, 4C]
    float* f = out.data_ptr<float>();
    gelu(f, out.numel());
    Tensor hidden = out;
    linear(hidden, w, FCP_HALF, half_max_rows, out);
    const float* m = out.data_ptr<float>();
    for (int64_t i = 0; i < M * C; ++i) xp[i] += m[i];
  }
  return x;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_layers", &decode_layers, "the transformer blocks of one decoding pass");
}
