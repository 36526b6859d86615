#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>

#include "errors.h"
#include "json.h"

// portable_log and the coupled totals must round as Python's separate float64 operations do: clang
// (the NDK's compiler) contracts a*b+c into an FMA by default. GCC ignores the pragma and needs
// -ffp-contract=off, which the runner's CMake target passes.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

namespace mtp_edge {

namespace {

// Sum as torch's vectorized CPU reductions do on an AVX-512 host (8 double lanes, each summing
// every 8th value in order, the tail into the first lanes, then the lanes in order): softmax's
// sum then matches torch's bit for bit there, and it is more accurate than one running sum on
// a 262k vocabulary anyway. (torch's sum() cascades further; that sum can differ in an ulp.)
double lane_sum(const std::vector<double>& v) {
  constexpr size_t kLanes = 8;
  const size_t n = v.size();
  if (n < kLanes) {
    double total = 0.0;
    for (double x : v) total += x;
    return total;
  }
  double acc[kLanes];
  for (size_t l = 0; l < kLanes; ++l) acc[l] = v[l];
  size_t d = kLanes;
  for (; d + kLanes <= n; d += kLanes) {
    for (size_t l = 0; l < kLanes; ++l) acc[l] += v[d + l];
  }
  for (size_t l = 0; d + l < n; ++l) acc[l] += v[d + l];
  double total = acc[0];
  for (size_t l = 1; l < kLanes; ++l) total += acc[l];
  return total;
}

}  // namespace

const char* sampling_rule_name(SamplingRule rule) {
  return rule == SamplingRule::kCoupled ? "coupled" : "rejection";
}

SamplingRule parse_sampling_rule(const std::string& name) {
  if (name == "rejection") return SamplingRule::kRejection;
  if (name == "coupled") return SamplingRule::kCoupled;
  throw RunnerError("sampling rule '" + name + "' is unknown; choose from rejection, coupled.");
}

void SamplingConfig::validate() const {
  if (!(temperature >= 0.0)) {
    throw RunnerError("temperature must be >= 0 (0 = greedy), got " + json::number(temperature) + ".");
  }
  if (!(top_p > 0.0 && top_p <= 1.0)) throw RunnerError("top_p must be in (0, 1], got " + json::number(top_p) + ".");
  if (top_k < 0) throw RunnerError("top_k must be >= 0 (0 = off), got " + std::to_string(top_k) + ".");
}

std::vector<double> probabilities(const float* logits, int64_t n, const SamplingConfig& cfg) {
  // logits.double() / temperature: exact conversion, one correctly rounded division each.
  std::vector<double> p(n);
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<double>(logits[i]) / cfg.temperature;

  // top-k: keep values >= the k-th largest (ties at the k-th all stay, as `scaled < kth` does).
  if (cfg.top_k > 0 && cfg.top_k < n) {
    std::vector<double> sorted(p);
    std::nth_element(sorted.begin(), sorted.begin() + (cfg.top_k - 1), sorted.end(), std::greater<double>());
    const double kth = sorted[cfg.top_k - 1];
    for (double& v : p) {
      if (v < kth) v = -std::numeric_limits<double>::infinity();
    }
  }

  // softmax as torch's CPU kernel does it: subtract the max, exp, then multiply by 1 / sum.
  double max_value = -std::numeric_limits<double>::infinity();
  for (double v : p) max_value = std::max(max_value, v);
  for (double& v : p) v = std::exp(v - max_value);
  const double inv = 1.0 / lane_sum(p);
  for (double& v : p) v *= inv;

  // top-p: walk the tokens by descending probability (ties in index order, as torch's stable sort
  // leaves them) and drop every token whose mass strictly ahead of it already reaches top_p; the
  // crossing one stays. Only the head of that order is ever needed, so it is sorted a chunk at a
  // time (nth_element + sort) instead of sorting the whole vocabulary: a 262k vocabulary would
  // otherwise cost a full sort per call.
  if (cfg.top_p < 1.0) {
    auto ahead_of = [&](int64_t a, int64_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); };
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::vector<int64_t> drop;
    int64_t sorted_end = 0, chunk = 64, j = 0;
    double cumsum = 0.0;
    for (; j < n; ++j) {
      if (j == sorted_end) {  // extend the sorted head by the next best `chunk` tokens
        const int64_t end = std::min(n, sorted_end + chunk);
        if (end < n) std::nth_element(order.begin() + sorted_end, order.begin() + end, order.end(), ahead_of);
        std::sort(order.begin() + sorted_end, order.begin() + end, ahead_of);
        sorted_end = end;
        chunk *= 4;
      }
      const int64_t idx = order[j];
      cumsum += p[idx];
      if (cumsum - p[idx] >= cfg.top_p) drop.push_back(idx);  // torch: cumsum(sorted) - sorted
      // Past this point the mass ahead of every later token is >= cumsum up to a rounding of one
      // ulp: once cumsum clears top_p by more than that, all the rest are dropped without sorting.
      if (cumsum - cfg.top_p > 4.0 * std::numeric_limits<double>::epsilon() * cumsum) {
        ++j;
        break;
      }
    }
    for (; j < n; ++j) drop.push_back(order[j]);
    for (int64_t idx : drop) p[idx] = 0.0;
    const double total = lane_sum(p);
    for (double& v : p) v /= total;
  }
  return p;
}

int64_t sample(const std::vector<double>& probs, SplitMix64& rng) {
  // torch.cumsum on CPU accumulates sequentially in double: the same sums here.
  const int64_t n = static_cast<int64_t>(probs.size());
  std::vector<double> cdf(n);
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    acc += probs[i];
    cdf[i] = acc;
  }
  const double u = rng.uniform() * cdf[n - 1];
  // searchsorted(right=True): the number of cdf entries <= u.
  const int64_t index = std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin();
  return std::min(index, n - 1);
}

int64_t argmax(const float* values, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(values[i])) return i;
    if (values[i] > values[best]) best = i;
  }
  return best;
}

int64_t choose(const float* logits, int64_t vocab, const SamplingConfig& cfg, SplitMix64& rng) {
  if (cfg.greedy()) return argmax(logits, vocab);
  return sample(probabilities(logits, vocab, cfg), rng);
}

Acceptance accept_drafts(const std::vector<int64_t>& drafts, const std::vector<SparseProbs>& draft_probs,
                         const float* target_logits, int64_t vocab, const SamplingConfig& cfg, SplitMix64& rng) {
  const int64_t n = static_cast<int64_t>(drafts.size());
  for (int64_t i = 0; i < n; ++i) {
    const float* row = target_logits + i * vocab;
    const int64_t token = drafts[i];
    if (cfg.greedy()) {
      const int64_t best = argmax(row, vocab);
      if (best != token) return {i, best};
      continue;
    }
    std::vector<double> p = probabilities(row, vocab, cfg);
    // q(token): zero outside the candidates, a repeated candidate id summed in order (the Python
    // side builds q with index_put_(accumulate=True) onto zeros).
    double q_token = 0.0;
    for (const auto& [id, value] : draft_probs[i]) {
      if (id == token) q_token += value;
    }
    if (rng.uniform() * q_token < p[token]) continue;
    // Rejected: draw from the residual max(p - q, 0), or from p if nothing is left of it.
    std::vector<double> q(vocab, 0.0);
    for (const auto& [id, value] : draft_probs[i]) q[id] += value;
    bool any = false;
    std::vector<double> residual(vocab);
    for (int64_t j = 0; j < vocab; ++j) {
      residual[j] = std::max(p[j] - q[j], 0.0);
      any |= residual[j] > 0.0;
    }
    return {i, sample(any ? residual : p, rng)};
  }
  return {n, choose(target_logits + n * vocab, vocab, cfg, rng)};
}

std::pair<int64_t, SparseProbs> draft_token(const int64_t* candidate_ids, const float* candidate_logits, int64_t candidates,
                                            int64_t argmax_id, const SamplingConfig& cfg, SplitMix64& rng) {
  if (cfg.greedy()) return {argmax_id, {}};  // the graph's own pick among the candidates
  std::vector<double> q = probabilities(candidate_logits, candidates, cfg);
  const int64_t token = candidate_ids[sample(q, rng)];
  SparseProbs sparse(candidates);
  for (int64_t i = 0; i < candidates; ++i) sparse[i] = {candidate_ids[i], q[i]};
  return {token, std::move(sparse)};
}

// --- Gumbel-max coupling ---------------------------------------------------------------------

namespace {

// fdlibm e_log.c constants (the same hex floats as runtime/sampling.py).
constexpr double kLn2Hi = 0x1.62e42feep-1;
constexpr double kLn2Lo = 0x1.a39ef35793c76p-33;
constexpr double kLg1 = 0x1.5555555555593p-1;
constexpr double kLg2 = 0x1.999999997fa04p-2;
constexpr double kLg3 = 0x1.2492494229359p-2;
constexpr double kLg4 = 0x1.c71c51d8e78afp-3;
constexpr double kLg5 = 0x1.7466496cb03dep-3;
constexpr double kLg6 = 0x1.39a09d078c69fp-3;
constexpr double kLg7 = 0x1.2f112df3e5244p-3;

// Every g lies in [-3.7, 36.8]; see GUMBEL_SPAN and _FILTER_TOL in runtime/sampling.py.
constexpr double kGumbelSpan = 36.8 - -3.7;
constexpr double kFilterTol = 1e-9;

double gumbel_from_bits(uint64_t bits) { return -portable_log(-portable_log(bits_to_uniform(bits))); }

}  // namespace

uint64_t noise_row_key(uint64_t seed, int64_t position) {
  if (position < 0) throw RunnerError("position must be >= 0, got " + std::to_string(position) + ".");
  return splitmix64_mix(splitmix64_mix(seed + 0x9E3779B97F4A7C15ULL) ^ static_cast<uint64_t>(position));
}

double portable_log(double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const uint64_t hx = (bits >> 32) & 0x000FFFFFULL;
  const uint64_t i = (hx + 0x95F64ULL) & 0x100000ULL;  // set iff the mantissa is >= sqrt(2)
  const int64_t k = static_cast<int64_t>(bits >> 52) - 1023 + static_cast<int64_t>(i >> 20);
  const uint64_t m = ((hx | (i ^ 0x3FF00000ULL)) << 32) | (bits & 0xFFFFFFFFULL);
  double mantissa;
  std::memcpy(&mantissa, &m, sizeof mantissa);
  const double f = mantissa - 1.0;
  const double s = f / (2.0 + f);
  const double z = s * s;
  const double w = z * z;
  const double t1 = w * (kLg2 + w * (kLg4 + w * kLg6));
  const double t2 = z * (kLg1 + w * (kLg3 + w * (kLg5 + w * kLg7)));
  const double r = t2 + t1;
  const double dk = static_cast<double>(k);
  return dk * kLn2Hi - ((s * (f - r) - dk * kLn2Lo) - f);
}

double gumbel_noise(uint64_t seed, int64_t position, int64_t token) {
  return gumbel_from_bits(noise_bits(noise_row_key(seed, position), token));
}

std::vector<double> coupled_scores(const float* logits, int64_t n, const SamplingConfig& cfg) {
  std::vector<double> s(n);
  for (int64_t i = 0; i < n; ++i) s[i] = static_cast<double>(logits[i]) / cfg.temperature;
  constexpr double kMinusInf = -std::numeric_limits<double>::infinity();
  if (cfg.top_p < 1.0) {  // the kept set of probabilities(): top-k, then top-p
    const std::vector<double> p = probabilities(logits, n, cfg);
    for (int64_t i = 0; i < n; ++i) {
      if (p[i] == 0.0) s[i] = kMinusInf;
    }
  } else if (cfg.top_k > 0 && cfg.top_k < n) {
    std::vector<double> sorted(s);
    std::nth_element(sorted.begin(), sorted.begin() + (cfg.top_k - 1), sorted.end(), std::greater<double>());
    const double kth = sorted[cfg.top_k - 1];
    for (double& v : s) {
      if (v < kth) v = kMinusInf;
    }
  }
  return s;
}

int64_t gumbel_argmax(const std::vector<double>& scores, const int64_t* ids, uint64_t seed, int64_t position) {
  // As runtime/sampling.py: prune by the noise's range, rank by a libm Gumbel, then decide among the
  // near-best by the exact portable one. Each step keeps every token that can win the exact argmax.
  const int64_t n = static_cast<int64_t>(scores.size());
  const uint64_t row_key = noise_row_key(seed, position);
  double top = -std::numeric_limits<double>::infinity();
  for (double v : scores) top = std::max(top, v);
  const double lowest = top - (kGumbelSpan + 1e-6 * (1.0 + std::fabs(top)));
  std::vector<int64_t> kept;
  std::vector<double> fast;
  double best_fast = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n; ++i) {
    if (!(scores[i] >= lowest)) continue;
    const double u = bits_to_uniform(noise_bits(row_key, ids[i]));
    const double total = scores[i] - std::log(-std::log(u));
    kept.push_back(i);
    fast.push_back(total);
    best_fast = std::max(best_fast, total);
  }
  if (kept.empty()) throw RunnerError("no token to sample: the logits are empty or NaN.");
  const double cut = best_fast - kFilterTol * (1.0 + std::fabs(best_fast));
  int64_t winner = -1;
  double best = 0.0;
  for (size_t j = 0; j < kept.size(); ++j) {
    if (!(fast[j] >= cut)) continue;
    const int64_t i = kept[j];
    const double total = scores[i] + gumbel_from_bits(noise_bits(row_key, ids[i]));
    if (winner < 0 || total > best || (total == best && ids[i] < winner)) {
      winner = ids[i];
      best = total;
    }
  }
  return winner;
}

int64_t coupled_choose(const float* logits, int64_t vocab, const SamplingConfig& cfg, uint64_t seed, int64_t position) {
  if (cfg.greedy()) return argmax(logits, vocab);
  std::vector<int64_t> ids(vocab);
  std::iota(ids.begin(), ids.end(), 0);
  return gumbel_argmax(coupled_scores(logits, vocab, cfg), ids.data(), seed, position);
}

int64_t coupled_draft(const int64_t* candidate_ids, const float* candidate_logits, int64_t candidates, int64_t argmax_id,
                      const SamplingConfig& cfg, uint64_t seed, int64_t position) {
  if (cfg.greedy()) return argmax_id;  // the graph's own pick among the candidates
  return gumbel_argmax(coupled_scores(candidate_logits, candidates, cfg), candidate_ids, seed, position);
}

Acceptance coupled_accept(const std::vector<int64_t>& drafts, const float* target_logits, int64_t vocab,
                          const SamplingConfig& cfg, uint64_t seed, int64_t first_position) {
  const int64_t n = static_cast<int64_t>(drafts.size());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t best = coupled_choose(target_logits + i * vocab, vocab, cfg, seed, first_position + i);
    if (best != drafts[i]) return {i, best};
  }
  return {n, coupled_choose(target_logits + n * vocab, vocab, cfg, seed, first_position + n)};
}

}  // namespace mtp_edge
