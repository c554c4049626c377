// The small ops between a llama-family layer's matmuls, for the CPU: RMSNorm (with the residual add
// before it), SiLU(gate) * up, and RoPE from a cos/sin table (with Qwen3's per-head q/k norms before
// it). torch runs each as a chain of 3-8 ops whose dispatch, at a decode step's few rows, costs far
// more than the arithmetic; here each is one call. Values round to the tensors' dtype where
// transformers' torch code rounds them (float32 or bfloat16; arithmetic in float32).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <cmath>
#include <cstdint>

namespace {

// Rows are shared out between threads only from this many on: at a decode step's 1-4 rows,
// waking threads costs more than the rows take.
constexpr int64_t kMinRowsPerThread = 16;

// `value` rounded to scalar_t, as a torch op with a scalar_t output would store it.
template <typename scalar_t>
inline float round_to(float value) {
  return static_cast<float>(static_cast<scalar_t>(value));
}

template <typename scalar_t>
inline float inverse_rms(const scalar_t* __restrict row, int64_t size, float eps) {
  float sum_of_squares = 0.f;
#pragma omp simd reduction(+ : sum_of_squares)
  for (int64_t i = 0; i < size; ++i) {
    const float value = static_cast<float>(row[i]);
    sum_of_squares += value * value;
  }
  return 1.f / std::sqrt(sum_of_squares / static_cast<float>(size) + eps);
}

// out = weight * (row * inverse_rms rounded to scalar_t): transformers' Llama RMSNorm. `out` may be `row`.
template <typename scalar_t>
inline void normalise_row(const scalar_t* row, const scalar_t* __restrict weight, float eps, int64_t size,
                          scalar_t* out) {
  const float scale = inverse_rms(row, size, eps);
#pragma omp simd
  for (int64_t i = 0; i < size; ++i) {
    out[i] = static_cast<scalar_t>(static_cast<float>(weight[i]) * round_to<scalar_t>(static_cast<float>(row[i]) * scale));
  }
}

template <typename Function>
void for_each_row(int64_t num_rows, const Function& function) {
  at::parallel_for(0, num_rows, kMinRowsPerThread, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) function(row);
  });
}

// Calls function(scalar_t{}) with the C++ type of `dtype`, float32 or bfloat16.
template <typename Function>
void with_scalar_type(at::ScalarType dtype, const char* op, const Function& function) {
  if (dtype == at::kFloat) {
    function(float{});
  } else if (dtype == at::kBFloat16) {
    function(c10::BFloat16{});
  } else {
    TORCH_CHECK(false, op, ": float32 or bfloat16 only, got ", dtype);
  }
}

void check_rows(const torch::Tensor& rows, const char* op, const char* name) {
  TORCH_CHECK(rows.device().is_cpu() && rows.dim() == 2 && rows.stride(1) == 1, op, ": ", name,
              " must be a CPU [rows, columns] tensor with contiguous rows");
}

void check_weight(const torch::Tensor& weight, const torch::Tensor& like, int64_t size, const char* op) {
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == size && weight.is_contiguous(), op, ": weight must be [", size,
              "], contiguous");
  TORCH_CHECK(weight.scalar_type() == like.scalar_type(), op, ": weight must have the input's dtype");
}

// One token's heads [num_heads, 2 * half] at `heads` (head i at heads + i * head_stride), in place:
// RMS-normalised by `norm_weight` first where it is given, then rotated (rotate-half layout).
template <typename scalar_t>
void rotate_heads(scalar_t* heads, int64_t num_heads, int64_t head_stride, int64_t half,
                  const scalar_t* __restrict cos, const scalar_t* __restrict sin, const scalar_t* norm_weight,
                  float eps) {
  for (int64_t head = 0; head < num_heads; ++head) {
    scalar_t* const values = heads + head * head_stride;
    if (norm_weight != nullptr) normalise_row(values, norm_weight, eps, 2 * half, values);
    scalar_t* __restrict first = values;
    scalar_t* __restrict second = values + half;
#pragma omp simd
    for (int64_t i = 0; i < half; ++i) {
      const float x_first = static_cast<float>(first[i]), x_second = static_cast<float>(second[i]);
      // x * cos + rotate_half(x) * sin, where rotate_half(x) = (-x_second, x_first).
      first[i] = static_cast<scalar_t>(x_first * static_cast<float>(cos[i]) - x_second * static_cast<float>(sin[i]));
      second[i] = static_cast<scalar_t>(x_second * static_cast<float>(cos[half + i]) +
                                        x_first * static_cast<float>(sin[half + i]));
    }
  }
}

}  // namespace

// RMSNorm of hidden [rows, size] (any leading shape) by weight [size]: a new contiguous tensor.
torch::Tensor rms_norm(const torch::Tensor& hidden, const torch::Tensor& weight, double eps) {
  const int64_t size = hidden.size(-1);
  torch::Tensor rows = hidden.reshape({-1, size});
  if (rows.stride(1) != 1) rows = rows.contiguous();
  check_rows(rows, "rms_norm", "hidden");
  check_weight(weight, rows, size, "rms_norm");
  torch::Tensor out = torch::empty(rows.sizes(), rows.options());
  with_scalar_type(rows.scalar_type(), "rms_norm", [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* const input = rows.data_ptr<scalar_t>();
    const scalar_t* const weights = weight.data_ptr<scalar_t>();
    scalar_t* const output = out.data_ptr<scalar_t>();
    const int64_t row_stride = rows.stride(0);
    for_each_row(rows.size(0), [&](int64_t row) {
      normalise_row(input + row * row_stride, weights, static_cast<float>(eps), size, output + row * size);
    });
  });
  return out.view(hidden.sizes());
}

// In place, both [rows, size]: residual += hidden (rounded to the dtype), then hidden = RMSNorm of
// the sum by weight [size].
void add_rms_norm(const torch::Tensor& hidden, const torch::Tensor& residual, const torch::Tensor& weight, double eps) {
  check_rows(hidden, "add_rms_norm", "hidden");
  check_rows(residual, "add_rms_norm", "residual");
  TORCH_CHECK(hidden.sizes() == residual.sizes() && hidden.scalar_type() == residual.scalar_type(),
              "add_rms_norm: hidden and residual must have one shape and dtype");
  const int64_t size = hidden.size(1);
  check_weight(weight, hidden, size, "add_rms_norm");
  with_scalar_type(hidden.scalar_type(), "add_rms_norm", [&](auto tag) {
    using scalar_t = decltype(tag);
    scalar_t* const hidden_data = hidden.data_ptr<scalar_t>();
    scalar_t* const residual_data = residual.data_ptr<scalar_t>();
    const scalar_t* const weights = weight.data_ptr<scalar_t>();
    const int64_t hidden_stride = hidden.stride(0), residual_stride = residual.stride(0);
    for_each_row(hidden.size(0), [&](int64_t row) {
      scalar_t* __restrict const summed = residual_data + row * residual_stride;
      scalar_t* __restrict const normed = hidden_data + row * hidden_stride;
#pragma omp simd
      for (int64_t i = 0; i < size; ++i) {
        summed[i] = static_cast<scalar_t>(static_cast<float>(summed[i]) + static_cast<float>(normed[i]));
      }
      normalise_row(summed, weights, static_cast<float>(eps), size, normed);
    });
  });
}

// SiLU(gate) * up of gate_up [rows, 2 * intermediate] (gate the first half): [rows, intermediate].
torch::Tensor silu_and_mul(const torch::Tensor& gate_up) {
  check_rows(gate_up, "silu_and_mul", "gate_up");
  TORCH_CHECK(gate_up.size(1) % 2 == 0, "silu_and_mul: gate_up must be [rows, 2 * intermediate]");
  const int64_t intermediate = gate_up.size(1) / 2;
  torch::Tensor out = torch::empty({gate_up.size(0), intermediate}, gate_up.options());
  with_scalar_type(gate_up.scalar_type(), "silu_and_mul", [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* const input = gate_up.data_ptr<scalar_t>();
    scalar_t* const output = out.data_ptr<scalar_t>();
    const int64_t row_stride = gate_up.stride(0);
    for_each_row(gate_up.size(0), [&](int64_t row) {
      const scalar_t* __restrict const gate = input + row * row_stride;
      const scalar_t* __restrict const up = gate + intermediate;
      scalar_t* __restrict const product = output + row * intermediate;
#pragma omp simd
      for (int64_t i = 0; i < intermediate; ++i) {
        const float x = static_cast<float>(gate[i]);
        const float activated = round_to<scalar_t>(x / (1.f + std::exp(-x)));
        product[i] = static_cast<scalar_t>(activated * static_cast<float>(up[i]));
      }
    });
  });
  return out;
}

// In place: RoPE of queries [tokens, heads, head_dim] and keys [tokens, kv_heads, head_dim] (views
// into the fused QKV output: only head_dim needs unit stride) at positions [tokens] (int64), rows
// of cos_table/sin_table [max_positions, head_dim]. With norm weights [head_dim], each query and key
// head is RMS-normalised first (Qwen3).
void rotary_embedding(const torch::Tensor& queries, const torch::Tensor& keys, const torch::Tensor& positions,
                      const torch::Tensor& cos_table, const torch::Tensor& sin_table,
                      const c10::optional<torch::Tensor>& query_norm, double query_eps,
                      const c10::optional<torch::Tensor>& key_norm, double key_eps) {
  TORCH_CHECK(queries.dim() == 3 && keys.dim() == 3 && queries.size(0) == keys.size(0) &&
                  queries.size(2) == keys.size(2) && queries.size(2) % 2 == 0,
              "rotary_embedding: queries and keys must be [tokens, heads, head_dim] with one even head_dim");
  TORCH_CHECK(queries.stride(2) == 1 && keys.stride(2) == 1, "rotary_embedding: head_dim must be contiguous");
  TORCH_CHECK(queries.scalar_type() == keys.scalar_type() && cos_table.scalar_type() == queries.scalar_type() &&
                  sin_table.scalar_type() == queries.scalar_type(),
              "rotary_embedding: queries, keys and the tables must share a dtype");
  const int64_t num_tokens = queries.size(0), head_dim = queries.size(2);
  TORCH_CHECK(cos_table.dim() == 2 && cos_table.size(1) == head_dim && cos_table.sizes() == sin_table.sizes() &&
                  cos_table.is_contiguous() && sin_table.is_contiguous(),
              "rotary_embedding: cos/sin tables must both be contiguous [max_positions, ", head_dim, "]");
  TORCH_CHECK(positions.scalar_type() == at::kLong && positions.dim() == 1 && positions.size(0) == num_tokens,
              "rotary_embedding: positions must be int64 [tokens]");
  TORCH_CHECK(query_norm.has_value() == key_norm.has_value(), "rotary_embedding: both head norms or neither");
  if (query_norm.has_value()) {
    check_weight(*query_norm, queries, head_dim, "rotary_embedding");
    check_weight(*key_norm, queries, head_dim, "rotary_embedding");
  }
  const torch::Tensor token_positions = positions.contiguous();
  const int64_t* const position_data = token_positions.data_ptr<int64_t>();
  const int64_t max_positions = cos_table.size(0);
  for (int64_t token = 0; token < num_tokens; ++token) {
    TORCH_CHECK(position_data[token] >= 0 && position_data[token] < max_positions, "rotary_embedding: position ",
                position_data[token], " is past the table's ", max_positions);
  }
  with_scalar_type(queries.scalar_type(), "rotary_embedding", [&](auto tag) {
    using scalar_t = decltype(tag);
    scalar_t* const query_data = queries.data_ptr<scalar_t>();
    scalar_t* const key_data = keys.data_ptr<scalar_t>();
    const scalar_t* const cos_data = cos_table.data_ptr<scalar_t>();
    const scalar_t* const sin_data = sin_table.data_ptr<scalar_t>();
    const scalar_t* const query_weight = query_norm.has_value() ? query_norm->data_ptr<scalar_t>() : nullptr;
    const scalar_t* const key_weight = key_norm.has_value() ? key_norm->data_ptr<scalar_t>() : nullptr;
    const int64_t half = head_dim / 2;
    for_each_row(num_tokens, [&](int64_t token) {
      const int64_t table_row = position_data[token] * head_dim;
      rotate_heads(query_data + token * queries.stride(0), queries.size(1), queries.stride(1), half,
                   cos_data + table_row, sin_data + table_row, query_weight, static_cast<float>(query_eps));
      rotate_heads(key_data + token * keys.stride(0), keys.size(1), keys.stride(1), half, cos_data + table_row,
                   sin_data + table_row, key_weight, static_cast<float>(key_eps));
    });
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("rms_norm", &rms_norm, "RMSNorm over the last dimension, a new tensor");
  module.def("add_rms_norm", &add_rms_norm, "residual += hidden, hidden = RMSNorm(residual), in place");
  module.def("silu_and_mul", &silu_and_mul, "SiLU(gate) * up of a fused [rows, 2 * intermediate] gate/up");
  module.def("rotary_embedding", &rotary_embedding,
             "RoPE of queries and keys in place from cos/sin tables, with optional per-head norms first");
}
