// x @ weight.T + bias for a decode step's few rows of x, float32, the weight [out, in] read in
// place, row-major as the model stores it. A few rows' product is bound by reading the weights:
// each block of output rows' weights is loaded once into registers and multiplied with every
// row of x at once (rows x outputs accumulators), several weight rows in flight, the next
// block's rows prefetched.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include <algorithm>

namespace {

// Rows of x multiplied per pass over a block of weight rows (more are done in passes of this many).
constexpr int kRowsPerPass = 8;
// Output rows per chunk, the unit of parallel work, whose weights stay in cache while every pass
// of rows reads them (48 rows of 1376 floats are 264 KiB); a multiple of every block's outputs.
constexpr int64_t kOutputsPerChunk = 48;

#ifdef __AVX512F__
constexpr bool kVectorised = true;

// out[r][j + u] = x[r] . w[j + u] (+ bias) for r < R, u < U. `w` points at weight row j.
template <int R, int U>
inline void dot_block(const float* x, int64_t x_stride, const float* w, int64_t k, const float* bias,
                      float* out, int64_t out_stride, int64_t j, int64_t prefetch_rows) {
  __m512 acc[R][U];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) acc[r][u] = _mm512_setzero_ps();
  const float* next = w + U * k;
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    __m512 wv[U];
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
      wv[u] = _mm512_loadu_ps(w + u * k + i);
      if (u < prefetch_rows) _mm_prefetch(reinterpret_cast<const char*>(next + u * k + i), _MM_HINT_T0);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_loadu_ps(x + r * x_stride + i);
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) acc[r][u] = _mm512_fmadd_ps(xv, wv[u], acc[r][u]);
    }
  }
  if (i < k) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (k - i)) - 1);
    __m512 wv[U];
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) wv[u] = _mm512_maskz_loadu_ps(mask, w + u * k + i);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + r * x_stride + i);
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) acc[r][u] = _mm512_fmadd_ps(xv, wv[u], acc[r][u]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u)
      out[r * out_stride + j + u] = _mm512_reduce_add_ps(acc[r][u]) + (bias ? bias[j + u] : 0.0f);
}
#else
constexpr bool kVectorised = false;

// The portable build: the same blocking, the inner products left to the compiler.
template <int R, int U>
inline void dot_block(const float* x, int64_t x_stride, const float* w, int64_t k, const float* bias,
                      float* out, int64_t out_stride, int64_t j, int64_t /*prefetch_rows*/) {
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < U; ++u) {
      const float* row = w + u * k;
      const float* xr = x + r * x_stride;
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < k; ++i) sum += xr[i] * row[i];
      out[r * out_stride + j + u] = sum + (bias ? bias[j + u] : 0.0f);
    }
}
#endif

// Weight rows [begin, end) against R rows of x, U weight rows at a time.
template <int R, int U>
void product_range(const float* x, int64_t x_stride, const float* weight, int64_t k, const float* bias, float* out,
                   int64_t out_stride, int64_t begin, int64_t end) {
  int64_t j = begin;
  for (; j + U <= end; j += U) {
    const int64_t prefetch_rows = std::min<int64_t>(U, end - j - U);
    dot_block<R, U>(x, x_stride, weight + j * k, k, bias, out, out_stride, j, prefetch_rows);
  }
  for (; j < end; ++j) dot_block<R, 1>(x, x_stride, weight + j * k, k, bias, out, out_stride, j, 0);
}

// Weight rows in flight per block: R * U accumulators and U weight vectors within the 32 registers.
template <int R>
constexpr int outputs_per_block() {
  return R <= 3 ? 8 : R == 4 ? 6 : R <= 6 ? 4 : 3;
}

template <int R>
void product_range_of(const float* x, int64_t x_stride, const float* weight, int64_t k, const float* bias,
                      float* out, int64_t out_stride, int64_t begin, int64_t end) {
  product_range<R, outputs_per_block<R>()>(x, x_stride, weight, k, bias, out, out_stride, begin, end);
}

using RangeProduct = void (*)(const float*, int64_t, const float*, int64_t, const float*, float*, int64_t, int64_t,
                              int64_t);
constexpr RangeProduct kProductOfRows[kRowsPerPass] = {
    product_range_of<1>, product_range_of<2>, product_range_of<3>, product_range_of<4>,
    product_range_of<5>, product_range_of<6>, product_range_of<7>, product_range_of<8>};

}  // namespace

// input [rows, in] float32 (rows contiguous), weight [out, in] contiguous, bias [out] or None.
// Returns [rows, out]. Rows past kRowsPerPass are done in passes over each task's weight rows
// while they are still in cache.
torch::Tensor few_rows_linear(const torch::Tensor& input, const torch::Tensor& weight,
                              const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(input.dim() == 2 && weight.dim() == 2 && input.size(1) == weight.size(1), "shape mismatch");
  TORCH_CHECK(input.scalar_type() == torch::kFloat32 && weight.scalar_type() == torch::kFloat32,
              "float32 only");
  TORCH_CHECK(input.stride(1) == 1 && weight.is_contiguous(), "rows of input and weight must be contiguous");
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    TORCH_CHECK(bias->scalar_type() == torch::kFloat32 && bias->is_contiguous() && bias->numel() == weight.size(0),
                "bias must be float32 [out], contiguous");
  }
  const int64_t rows = input.size(0), k = input.size(1), n = weight.size(0);
  auto output = torch::empty({rows, n}, input.options());
  const float* x = input.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  const float* b = has_bias ? bias->data_ptr<float>() : nullptr;
  float* out = output.data_ptr<float>();
  const int64_t x_stride = input.stride(0);
  const int64_t num_chunks = (n + kOutputsPerChunk - 1) / kOutputsPerChunk;
  at::parallel_for(0, num_chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t start = chunk * kOutputsPerChunk, stop = std::min(start + kOutputsPerChunk, n);
      for (int64_t first = 0; first < rows; first += kRowsPerPass) {
        const int64_t pass_rows = std::min<int64_t>(kRowsPerPass, rows - first);
        kProductOfRows[pass_rows - 1](x + first * x_stride, x_stride, w, k, b, out + first * n, n, start, stop);
      }
    }
  });
  return output;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  // Without the GIL, as torch's own products: the server's event loop runs while a step multiplies.
  module.def("few_rows_linear", &few_rows_linear, "input @ weight.T + bias for few rows, float32",
             py::call_guard<py::gil_scoped_release>());
  module.attr("vectorised") = kVectorised;
}
