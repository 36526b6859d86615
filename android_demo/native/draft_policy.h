// The draft-length policy: a port of mtp_edge/runtime/draft_policy.py that makes the same choices.
//
// Each round it picks the k in 0..max_k with the most expected tokens per second,
//   E(k) = 1 + a_1 + a_1 a_2 + ... + a_1 ... a_k       (a_i: draft i accepted given 1..i-1 were)
//   cost(0) = decode,  cost(k) = min(k * draft_step, draft_call[k]) + verify[k + 1],
// ties to the smaller k, k > 0 only when it beats plain decoding by `margin` (once drafting on merit,
// it goes on while it predicts plain's rate; between lengths it is sticky), and drafts probe_k tokens
// anyway after probe_every plain rounds in a row (a wait that doubles while probes keep losing).
// The derivation is in the Python module's docstring.
//
// Same decisions as Python from the same inputs: only double +, -, *, / and comparisons, in the
// Python order, no library math. Build with -ffp-contract=off (mtp_edge_runner_core does): a fused
// multiply-add rounds once where Python rounds twice, and that can flip a near tie.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mtp_edge {

enum class DraftMode { kNone, kSteps, kCall };  // k = 0; k drafter steps; one draft_call[k]

const char* draft_mode_name(DraftMode mode);  // "none", "steps", "call" as in Python

// Seconds per call. verify: tokens n (2..K+1, no gaps) -> seconds; sets K. draft_call: optional
// drafts k (1..K) -> seconds for one call drafting k tokens.
struct CostTable {
  double decode = 0.0;
  double draft_step = 0.0;
  std::map<int, double> verify;
  std::map<int, double> draft_call;

  int max_k() const { return static_cast<int>(verify.size()); }
  void validate() const;  // throws RunnerError naming the field, in the Python wording
  double round_seconds(int k, DraftMode* mode) const;
  // This table with one timed call folded in by an exponential moving average (weight in (0, 1]).
  // method: "decode", "verify" (n = 1 counts as decode), "draft_step" (n steps), "draft_call".
  CostTable measured(const std::string& method, int n_tokens, double seconds, double weight) const;
};

// Conditional acceptance per draft position from decayed counts over a Beta prior.
struct AcceptanceEstimate {
  int max_k = 0;
  double prior_accept = 1.0;
  double prior_reject = 1.0;
  double decay = 0.95;
  std::vector<double> accepted;  // positions 1..max_k at [0..max_k-1]
  std::vector<double> rejected;

  AcceptanceEstimate() = default;
  AcceptanceEstimate(int max_k, double prior_accept = 1.0, double prior_reject = 1.0, double decay = 0.95);
  std::vector<double> rates() const;
  AcceptanceEstimate observed(int drafted, int accepted) const;
};

double expected_tokens(const std::vector<double>& acceptance, int k);

struct Plan {
  int k = 0;
  DraftMode mode = DraftMode::kNone;
  double tokens = 1.0;
  double seconds = 0.0;
  bool probe = false;
};

// A k > 0 must beat plain decoding's rate by the factor 1 + margin.
Plan best_plan(const CostTable& costs, const std::vector<double>& acceptance, int max_k, double margin = 0.0);
int choose_k(const CostTable& costs, const std::vector<double>& acceptance, int max_k, double margin = 0.0);

// While probes keep losing to plain decoding, the wait between them doubles up to this many times probe_every.
constexpr int kMaxProbeBackoff = 16;
// A live timing counts as at most this many times the entry it updates (CostTable::measured).
constexpr double kMaxTimingJump = 2.0;

struct DraftPolicyOptions {
  int max_k = -1;  // -1: the cost table's K
  double prior_accept = 1.0;
  double prior_reject = 1.0;
  double decay = 0.95;
  int probe_every = 16;  // 0 = never probe
  int probe_k = 2;
  double timing_weight = 0.1;
  bool frozen = false;  // timings never change the costs
  double margin = 0.05;  // drafting must beat plain decoding by this fraction
  // A k > 0 keeps being drafted while no other k > 0 beats it by this fraction (switching costs:
  // runtime/draft_policy.py).
  double stickiness = 0.05;
  // Where the estimate starts (the runner's last live generation), instead of the prior; used
  // when it covers max_k positions, as DraftPolicy(acceptance=...) in Python.
  std::optional<AcceptanceEstimate> acceptance;
  // Where probing starts (probe_interval, plain_streak), where the runner's last live generation left
  // it, as DraftPolicy(probing=...) in Python: while drafting does not pay, the wait between probes
  // keeps growing across generations instead of restarting in each reply.
  std::optional<std::pair<int, int>> probing;
};

class DraftPolicy {
 public:
  DraftPolicy(const CostTable& costs, const DraftPolicyOptions& options = {});

  // Once before each round; then observe() what the round did and observe_call() its timings.
  Plan next_plan();
  int next_k() { return next_plan().k; }
  void observe(int drafted, int accepted) { acceptance_ = acceptance_.observed(drafted, accepted); }
  void observe_call(const std::string& method, int n_tokens, double seconds);

  const CostTable& costs() const { return costs_; }
  const AcceptanceEstimate& acceptance() const { return acceptance_; }
  const std::vector<long long>& histogram() const { return histogram_; }  // rounds per k, probes included
  long long plain_rounds() const { return histogram_[0]; }
  long long probe_rounds() const { return probe_rounds_; }
  int max_k() const { return max_k_; }
  bool frozen() const { return frozen_; }
  // (plain rounds between probes now, plain rounds since the last probe): DraftPolicy.probing.
  std::pair<int, int> probing() const { return {probe_interval_, plain_streak_}; }

 private:
  Plan plan_for(int k, const std::vector<double>& rates) const;

  CostTable costs_;
  AcceptanceEstimate acceptance_;
  int max_k_;
  int probe_every_;
  int probe_interval_;  // plain rounds until the next probe; doubles while probes lose
  int probe_k_;
  double timing_weight_;
  bool frozen_;
  double margin_;
  double stickiness_;
  int last_k_ = 0;  // the previous round's draft length
  bool last_probe_ = false;  // whether the previous round was a probe
  int plain_streak_ = 0;
  std::vector<long long> histogram_;
  long long probe_rounds_ = 0;
};

}  // namespace mtp_edge
