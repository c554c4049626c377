// Grammar token masks onto float32 CPU logits, in place: -inf at every token whose bit is clear.
// A bitmask row holds 32 tokens per int32 word, lowest bit first. JSON masks are mostly long runs,
// so a word of all ones is skipped and one of all zeros is a fill; a mixed word gets -inf at its
// clear bits (two masked stores with AVX-512, else one store per clear bit).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kBitsPerWord = 32;
constexpr float kForbidden = -std::numeric_limits<float>::infinity();

// Tokens [0, count) of `out`, covered by `word`; count <= 32.
inline void apply_word(float* __restrict out, uint32_t word, int64_t count) {
  if (count < kBitsPerWord) word |= ~0u << count;  // bits past the vocabulary: nothing to forbid
  if (word == ~0u) return;
  if (word == 0u) {
    std::fill_n(out, count, kForbidden);
    return;
  }
#ifdef __AVX512F__
  // Lanes whose bit is set are left alone (not even read), those past the vocabulary included.
  const __m512 forbidden = _mm512_set1_ps(kForbidden);
  _mm512_mask_storeu_ps(out, static_cast<__mmask16>(~word), forbidden);
  _mm512_mask_storeu_ps(out + 16, static_cast<__mmask16>(~word >> 16), forbidden);
#else
  for (uint32_t clear = ~word; clear != 0u; clear &= clear - 1u) out[__builtin_ctz(clear)] = kForbidden;
#endif
}

}  // namespace

// logits [n, vocab] float32; bitmask [len(rows), words] int32, words * 32 >= vocab; bitmask row i
// applies to logits row rows[i].
void apply_token_bitmask(torch::Tensor logits, torch::Tensor bitmask, std::vector<int64_t> rows) {
  TORCH_CHECK(logits.device().is_cpu() && bitmask.device().is_cpu(), "apply_token_bitmask: CPU tensors only");
  TORCH_CHECK(logits.scalar_type() == torch::kFloat32 && logits.dim() == 2 && logits.is_contiguous(),
              "apply_token_bitmask: logits must be contiguous float32 [rows, vocab]");
  TORCH_CHECK(bitmask.scalar_type() == torch::kInt32 && bitmask.dim() == 2 && bitmask.is_contiguous(),
              "apply_token_bitmask: bitmask must be contiguous int32 [rows, words]");
  const int64_t num_rows = logits.size(0), vocab = logits.size(1), num_words = bitmask.size(1);
  TORCH_CHECK(bitmask.size(0) == static_cast<int64_t>(rows.size()), "apply_token_bitmask: one bitmask row per row");
  TORCH_CHECK(num_words * kBitsPerWord >= vocab, "apply_token_bitmask: bitmask narrower than the vocabulary");
  for (const int64_t row : rows) TORCH_CHECK(row >= 0 && row < num_rows, "apply_token_bitmask: row out of range");
  float* const logits_data = logits.data_ptr<float>();
  const auto* const words = reinterpret_cast<const uint32_t*>(bitmask.data_ptr<int32_t>());
  const int64_t used_words = (vocab + kBitsPerWord - 1) / kBitsPerWord;
  at::parallel_for(0, static_cast<int64_t>(rows.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* const row = logits_data + rows[i] * vocab;
      const uint32_t* const mask = words + i * num_words;
      for (int64_t w = 0; w < used_words; ++w) {
        const int64_t first = w * kBitsPerWord;
        apply_word(row + first, mask[w], std::min(kBitsPerWord, vocab - first));
      }
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("apply_token_bitmask", &apply_token_bitmask,
             "-inf at the tokens each bitmask row forbids in its logits row, float32, CPU, in place");
}
