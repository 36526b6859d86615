// Token choice: a port of mtp_edge/runtime/sampling.py that a seed makes give the same tokens.
//
// Same generator (SplitMix64, 53-bit uniforms), same float64 pipeline in the same order:
// logits -> double -> / temperature -> top-k mask -> softmax -> top-p cut -> renormalize, an
// inverse-CDF draw over a sequential cumsum with searchsorted(right=True), and the lossless
// speculative accept rule. torch computes exp with its own vector math library and sums with
// vectorized, thread-split reductions, so the last bits of a probability can differ (measured on
// random logits up to 262k entries: CDFs within 2.2e-15 of torch's); a draw changes only if its
// uniform lands in such a sliver at a CDF boundary, and `mtp-edge validate` checks the tokens.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace mtp_edge {

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next_u64() {
    state_ += 0x9E3779B97F4A7C15ULL;
    uint64_t z = state_;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  // [0, 1) with 53 random bits, exactly as Python's (next_u64() >> 11) * 2^-53.
  double uniform() { return static_cast<double>(next_u64() >> 11) * (1.0 / 9007199254740992.0); }

 private:
  uint64_t state_;
};

struct SamplingConfig {
  double temperature = 0.0;  // 0 = greedy
  int64_t top_k = 0;         // 0 = off
  double top_p = 1.0;
  uint64_t seed = 0;

  bool greedy() const { return temperature == 0.0; }
  void validate() const;  // throws RunnerError with the Python wording
};

// The drafter's distribution for one step, sparse: q is zero outside the candidates (the
// clustered head never scores the rest). Entries in candidate order; a repeated id sums.
using SparseProbs = std::vector<std::pair<int64_t, double>>;

// The processed distribution over n logits (float64).
std::vector<double> probabilities(const float* logits, int64_t n, const SamplingConfig& cfg);

// Inverse-CDF draw in index order.
int64_t sample(const std::vector<double>& probs, SplitMix64& rng);

// torch.argmax: the first maximal index (a NaN counts as the maximum, as in torch).
int64_t argmax(const float* values, int64_t n);

// The target's own next token from logits [vocab].
int64_t choose(const float* logits, int64_t vocab, const SamplingConfig& cfg, SplitMix64& rng);

struct Acceptance {
  int64_t accepted;    // longest accepted prefix of the drafts
  int64_t next_token;  // the target's correction after it, or its bonus token after a full accept
};

// Checks drafts against the verify logits [(drafts + 1) x vocab], row-major.
// draft_probs[i] is empty when greedy.
Acceptance accept_drafts(const std::vector<int64_t>& drafts, const std::vector<SparseProbs>& draft_probs,
                         const float* target_logits, int64_t vocab, const SamplingConfig& cfg, SplitMix64& rng);

// One draft pick from the drafter's outputs; returns (token, q) with q empty when greedy.
std::pair<int64_t, SparseProbs> draft_token(const int64_t* candidate_ids, const float* candidate_logits, int64_t candidates,
                                            int64_t argmax_id, const SamplingConfig& cfg, SplitMix64& rng);

}  // namespace mtp_edge
