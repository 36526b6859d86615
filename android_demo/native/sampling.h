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
#include <string>
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

// How speculative sampling stays exact (greedy ignores it), as SamplingConfig.rule in Python.
// kRejection: accept a draft with probability min(1, p/q), else resample the residual; a seeded
// run's tokens depend on the draft lengths. kCoupled: Gumbel-max noise keyed by (seed, position,
// token); a seeded run gives plain seeded sampling's tokens whatever the draft lengths.
enum class SamplingRule { kRejection, kCoupled };

const char* sampling_rule_name(SamplingRule rule);  // "rejection", "coupled"
// "rejection" / "coupled"; throws RunnerError with the Python wording for anything else.
SamplingRule parse_sampling_rule(const std::string& name);

struct SamplingConfig {
  double temperature = 0.0;  // 0 = greedy
  int64_t top_k = 0;         // 0 = off
  double top_p = 1.0;
  uint64_t seed = 0;
  SamplingRule rule = SamplingRule::kRejection;

  bool greedy() const { return temperature == 0.0; }
  bool coupled() const { return rule == SamplingRule::kCoupled && !greedy(); }
  // Seeded output that changes with the draft lengths: a draft policy must then ignore live timings.
  bool depends_on_draft_lengths() const { return !greedy() && rule == SamplingRule::kRejection; }
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

// --- Drafter-invariant sampling: Gumbel-max coupling (runtime/sampling.py, same bits) -------------
//
// Every (seed, absolute position, token id) has its own Gumbel noise; the target's token at a
// position is argmax over tokens of (logit / temperature, -inf where top-k / top-p removed it) +
// noise, ties to the lowest id, and the drafter drafts with the same noise over its candidates. A
// draft stands iff it equals the target's token there, so a seeded run's tokens do not depend on
// K, the draft policy or the drafter. `position` is the index in prompt + generated tokens of the
// token being chosen: with `last` at P, draft i and verify row i are at P + 1 + i, and the token
// after `a` accepted drafts at P + 1 + a. Greedy (temperature 0) is plain argmax, as above.
//
// Bits: row_key = mix(mix(seed + GAMMA) ^ position); token t's bits = mix(row_key + (t + 1) GAMMA),
// draw t of SplitMix64(row_key); u = (2 (bits >> 12) + 1) 2^-53 in (0, 1); g = -log(-log(u)) with
// portable_log (fdlibm's algorithm from + - * / only: libm logs differ in last bits). Build with
// -ffp-contract=off (the runner's CMake target does; clang also gets a pragma in sampling.cpp).

// SplitMix64's output function.
inline uint64_t splitmix64_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// The counter-stream key of one (seed, position) row; position >= 0.
uint64_t noise_row_key(uint64_t seed, int64_t position);

// The hash of token `token` (>= 0) in the row `row_key`.
inline uint64_t noise_bits(uint64_t row_key, int64_t token) {
  return splitmix64_mix(row_key + (static_cast<uint64_t>(token) + 1) * 0x9E3779B97F4A7C15ULL);
}

// (2 * (bits >> 12) + 1) * 2^-53: exact, strictly inside (0, 1).
inline double bits_to_uniform(uint64_t bits) { return static_cast<double>(((bits >> 12) << 1) | 1) * 0x1p-53; }

// Natural log of a positive normal double; the same bits as portable_log in runtime/sampling.py.
double portable_log(double x);

// Gumbel(0, 1) noise of one (seed, position, token).
double gumbel_noise(uint64_t seed, int64_t position, int64_t token);

// logits / temperature over n logits, -inf where top-k or top-p removes the token.
std::vector<double> coupled_scores(const float* logits, int64_t n, const SamplingConfig& cfg);

// argmax over i of scores[i] + gumbel_noise(seed, position, ids[i]), ties to the lowest id.
int64_t gumbel_argmax(const std::vector<double>& scores, const int64_t* ids, uint64_t seed, int64_t position);

// The target's token at `position` from logits [vocab].
int64_t coupled_choose(const float* logits, int64_t vocab, const SamplingConfig& cfg, uint64_t seed, int64_t position);

// The drafter's token at `position` from its candidates (argmax_id when greedy).
int64_t coupled_draft(const int64_t* candidate_ids, const float* candidate_logits, int64_t candidates, int64_t argmax_id,
                      const SamplingConfig& cfg, uint64_t seed, int64_t position);

// accept_drafts for the coupled rule: drafts[i] is at first_position + i; verify logits
// [(drafts + 1) x vocab] row-major. next_token is the target's token at first_position + accepted.
Acceptance coupled_accept(const std::vector<int64_t>& drafts, const float* target_logits, int64_t vocab,
                          const SamplingConfig& cfg, uint64_t seed, int64_t first_position);

}  // namespace mtp_edge
