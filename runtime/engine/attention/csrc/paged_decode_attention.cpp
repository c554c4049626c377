// Paged decode attention for the CPU: one query token per sequence, K/V read in place
// from the paged cache (no gather copy), every query head served by one pass over K/V.
// float32 only; the torch backend covers every other case.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

inline void axpy(float w, const float* __restrict x, float* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += w * x[i];
}

// In place: row <- softmax(row). Compiled with -ffast-math so exp vectorises (libmvec).
inline void softmax(float* __restrict row, int64_t n) {
  float peak = row[0];
  for (int64_t i = 1; i < n; ++i) peak = std::max(peak, row[i]);
  float total = 0.f;
#pragma omp simd reduction(+ : total)
  for (int64_t i = 0; i < n; ++i) {
    row[i] = std::exp(row[i] - peak);
    total += row[i];
  }
  const float inverse = 1.f / total;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) row[i] *= inverse;
}

}  // namespace

// query [S, H, D]; key_cache/value_cache [NB, BS, KVH, D]; block_tables [S, MB] int64;
// context_lens [S] int64 (tokens attended, the query's own included); window <= 0: none.
torch::Tensor paged_decode_attention(torch::Tensor query, torch::Tensor key_cache, torch::Tensor value_cache,
                                     torch::Tensor block_tables, torch::Tensor context_lens, double scale,
                                     int64_t sliding_window) {
  TORCH_CHECK(query.scalar_type() == torch::kFloat32 && key_cache.scalar_type() == torch::kFloat32 &&
                  value_cache.scalar_type() == torch::kFloat32,
              "paged_decode_attention: float32 only");
  TORCH_CHECK(block_tables.scalar_type() == torch::kInt64 && context_lens.scalar_type() == torch::kInt64,
              "paged_decode_attention: block_tables and context_lens must be int64");
  TORCH_CHECK(key_cache.is_contiguous() && value_cache.is_contiguous(), "caches must be contiguous");
  query = query.contiguous();
  block_tables = block_tables.contiguous();
  context_lens = context_lens.contiguous();
  const int64_t num_seqs = query.size(0), num_heads = query.size(1), head_dim = query.size(2);
  const int64_t block_size = key_cache.size(1), num_kv_heads = key_cache.size(2);
  const int64_t max_blocks = block_tables.size(1);
  TORCH_CHECK(key_cache.size(3) == head_dim && num_heads % num_kv_heads == 0, "shape mismatch");
  const int64_t group = num_heads / num_kv_heads;  // query heads per KV head (GQA)

  auto output = torch::empty_like(query);
  const float* q_data = query.data_ptr<float>();
  const float* k_data = key_cache.data_ptr<float>();
  const float* v_data = value_cache.data_ptr<float>();
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  const int64_t* lens = context_lens.data_ptr<int64_t>();
  float* out_data = output.data_ptr<float>();
  const float scale_f = static_cast<float>(scale);
  const int64_t token_stride = num_kv_heads * head_dim;  // between positions inside a block

  // One task per sequence: each cached position is one contiguous row of all KV heads,
  // read once for every query head.
  at::parallel_for(0, num_seqs, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<float> accum(num_heads * head_dim);
    for (int64_t seq = begin; seq < end; ++seq) {
      const int64_t length = lens[seq];
      const int64_t first = sliding_window > 0 ? std::max<int64_t>(0, length - sliding_window) : 0;
      const int64_t span = length - first;
      const float* q = q_data + seq * num_heads * head_dim;
      float* out = out_data + seq * num_heads * head_dim;
      if (span <= 0 || (length - 1) / block_size >= max_blocks) {
        std::fill(out, out + num_heads * head_dim, 0.f);
        continue;
      }
      scores.resize(num_heads * span);
      for (int64_t pos = first; pos < length; ++pos) {
        const int64_t block = tables[seq * max_blocks + pos / block_size];
        const float* k_row = k_data + (block * block_size + pos % block_size) * token_stride;
        for (int64_t head = 0; head < num_heads; ++head) {
          const float* k = k_row + (head / group) * head_dim;
          scores[head * span + pos - first] = dot(q + head * head_dim, k, head_dim) * scale_f;
        }
      }
      for (int64_t head = 0; head < num_heads; ++head) softmax(scores.data() + head * span, span);
      std::fill(accum.begin(), accum.end(), 0.f);
      for (int64_t pos = first; pos < length; ++pos) {
        const int64_t block = tables[seq * max_blocks + pos / block_size];
        const float* v_row = v_data + (block * block_size + pos % block_size) * token_stride;
        for (int64_t head = 0; head < num_heads; ++head) {
          axpy(scores[head * span + pos - first], v_row + (head / group) * head_dim, accum.data() + head * head_dim,
               head_dim);
        }
      }
      std::copy(accum.begin(), accum.end(), out);
    }
  });
  return output;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("paged_decode_attention", &paged_decode_attention,
             "Paged decode attention over the KV cache, float32, CPU");
}
