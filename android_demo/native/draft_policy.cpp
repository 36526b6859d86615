// See draft_policy.h. Every floating-point line mirrors a line of runtime/draft_policy.py, in the
// same order of operations; change both together.
#include "draft_policy.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "errors.h"

// clang (the NDK's compiler) contracts a*b+c into an FMA by default; the CMake flag covers the
// runner, this covers a build that forgets it. GCC ignores the pragma and needs the flag.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

namespace mtp_edge {

namespace {

std::string number(double value) {
  std::ostringstream out;
  out.precision(17);
  out << value;
  return out.str();
}

void check_seconds(const std::string& name, double value, bool positive) {
  // Costs divide the expected tokens: a zero target call would make every rate infinite.
  if (!std::isfinite(value) || value < 0.0 || (positive && value == 0.0)) {
    throw RunnerError("cost table: " + name + " is " + number(value) + " seconds; it must be a finite number " +
                      (positive ? "> 0." : ">= 0."));
  }
}

}  // namespace

const char* draft_mode_name(DraftMode mode) {
  switch (mode) {
    case DraftMode::kSteps:
      return "steps";
    case DraftMode::kCall:
      return "call";
    default:
      return "none";
  }
}

void CostTable::validate() const {
  check_seconds("decode", decode, true);
  check_seconds("draft_step", draft_step, false);
  int expect = 2;
  for (const auto& [n, seconds] : verify) {
    if (n < 2) throw RunnerError("cost table: verify[" + std::to_string(n) + "] is out of range; lengths are >= 2.");
    check_seconds("verify[" + std::to_string(n) + "]", seconds, true);
    if (n != expect) {
      std::string missing;
      for (int m = expect; m < n; ++m) missing += (missing.empty() ? "" : ", ") + std::to_string(m);
      throw RunnerError("cost table: verify is missing length(s) " + missing + ": give seconds for every length 2.." +
                        std::to_string(verify.rbegin()->first) + ".");
    }
    ++expect;
  }
  for (const auto& [k, seconds] : draft_call) {
    if (k < 1 || k > max_k()) {
      throw RunnerError("cost table: draft_call[" + std::to_string(k) + "] is out of range; lengths are 1.." +
                        std::to_string(max_k()) + ".");
    }
    check_seconds("draft_call[" + std::to_string(k) + "]", seconds, false);
  }
}

double CostTable::round_seconds(int k, DraftMode* mode) const {
  if (k == 0) {
    *mode = DraftMode::kNone;
    return decode;
  }
  const double steps = static_cast<double>(k) * draft_step;
  const auto call = draft_call.find(k);
  // A tie keeps the steps: that is what the loop does without a fused graph.
  if (call != draft_call.end() && call->second < steps) {
    *mode = DraftMode::kCall;
    return call->second + verify.at(k + 1);
  }
  *mode = DraftMode::kSteps;
  return steps + verify.at(k + 1);
}

CostTable CostTable::measured(const std::string& method, int n_tokens, double seconds, double weight) const {
  if (!(seconds >= 0.0 && std::isfinite(seconds))) {
    throw RunnerError("a measured " + method + " call took " + number(seconds) +
                      " seconds; expected a finite number >= 0.");
  }
  if (!(weight > 0.0 && weight <= 1.0)) {
    throw RunnerError("the timing weight must be in (0, 1], got " + number(weight) + ".");
  }
  if (n_tokens < 1) throw RunnerError("n_tokens must be a whole number >= 1, got " + std::to_string(n_tokens) + ".");
  // A stall counts as at most kMaxTimingJump times the entry (runtime/draft_policy.py: CostTable.measured).
  auto ema = [weight](double old_value, double new_value) {
    if (old_value > 0.0 && new_value > kMaxTimingJump * old_value) new_value = kMaxTimingJump * old_value;
    return old_value + weight * (new_value - old_value);
  };

  CostTable out = *this;
  const std::string kind = (method == "verify" && n_tokens == 1) ? "decode" : method;
  if (kind == "decode") {
    if (n_tokens != 1) {
      throw RunnerError("a decode call runs 1 token, got n_tokens=" + std::to_string(n_tokens) +
                        "; time it as 'verify'.");
    }
    out.decode = ema(decode, seconds);
  } else if (kind == "verify") {
    const auto it = verify.find(n_tokens);
    if (it == verify.end()) {
      throw RunnerError("no verify[" + std::to_string(n_tokens) + "] in the cost table: it covers 2.." +
                        std::to_string(max_k() + 1) + " tokens.");
    }
    out.verify[n_tokens] = ema(it->second, seconds);
  } else if (kind == "draft_step") {
    out.draft_step = ema(draft_step, seconds / static_cast<double>(n_tokens));
  } else if (kind == "draft_call") {
    if (n_tokens > max_k()) {
      throw RunnerError("draft_call[" + std::to_string(n_tokens) + "] is beyond the cost table's K = " +
                        std::to_string(max_k()) + ".");
    }
    // The first timing of a call length seeds its entry.
    const auto it = draft_call.find(n_tokens);
    out.draft_call[n_tokens] = ema(it == draft_call.end() ? seconds : it->second, seconds);
  } else {
    throw RunnerError("unknown call '" + method + "': expected one of decode, verify, draft_step, draft_call.");
  }
  return out;
}

AcceptanceEstimate::AcceptanceEstimate(int max_k_, double prior_accept_, double prior_reject_, double decay_)
    : max_k(max_k_),
      prior_accept(prior_accept_),
      prior_reject(prior_reject_),
      decay(decay_),
      accepted(max_k_ > 0 ? max_k_ : 0, 0.0),
      rejected(max_k_ > 0 ? max_k_ : 0, 0.0) {
  if (max_k < 0) throw RunnerError("max_k must be a whole number >= 0, got " + std::to_string(max_k) + ".");
  if (!(prior_accept > 0.0 && std::isfinite(prior_accept))) {
    throw RunnerError("prior_accept must be a pseudo-count > 0, got " + number(prior_accept) + ".");
  }
  if (!(prior_reject > 0.0 && std::isfinite(prior_reject))) {
    throw RunnerError("prior_reject must be a pseudo-count > 0, got " + number(prior_reject) + ".");
  }
  if (!(decay > 0.0 && decay <= 1.0)) throw RunnerError("decay must be in (0, 1], got " + number(decay) + ".");
}

std::vector<double> AcceptanceEstimate::rates() const {
  // A later position's prior mean is the rate of the one before (draft_policy.py: AcceptanceEstimate).
  std::vector<double> out(accepted.size());
  const double weight = prior_accept + prior_reject;
  for (size_t i = 0; i < accepted.size(); ++i) {
    if (i == 0) {
      out[i] = (prior_accept + accepted[i]) / (prior_accept + prior_reject + accepted[i] + rejected[i]);
    } else {
      out[i] = (weight * out[i - 1] + accepted[i]) / (weight + accepted[i] + rejected[i]);
    }
  }
  return out;
}

AcceptanceEstimate AcceptanceEstimate::observed(int drafted, int n_accepted) const {
  if (!(0 <= n_accepted && n_accepted <= drafted && drafted <= max_k)) {
    throw RunnerError("a round reports " + std::to_string(n_accepted) + " accepted of " + std::to_string(drafted) +
                      " drafted; need 0 <= accepted <= drafted <= " + std::to_string(max_k) + ".");
  }
  // A round with no drafts tells nothing about the drafter: a plain stretch does not age the estimate.
  if (drafted == 0) return *this;
  AcceptanceEstimate out = *this;
  for (int i = 0; i < max_k; ++i) {
    out.accepted[i] = accepted[i] * decay;
    out.rejected[i] = rejected[i] * decay;
  }
  for (int i = 0; i < n_accepted; ++i) out.accepted[i] += 1.0;
  if (n_accepted < drafted) out.rejected[n_accepted] += 1.0;
  return out;
}

double expected_tokens(const std::vector<double>& acceptance, int k) {
  double tokens = 1.0, survive = 1.0;
  for (int i = 0; i < k && i < static_cast<int>(acceptance.size()); ++i) {
    survive = survive * acceptance[i];
    tokens = tokens + survive;
  }
  return tokens;
}

Plan best_plan(const CostTable& costs, const std::vector<double>& acceptance, int max_k, double margin) {
  if (max_k < 0 || max_k > costs.max_k() || max_k > static_cast<int>(acceptance.size())) {
    throw RunnerError("max_k = " + std::to_string(max_k) + " but the cost table covers K <= " +
                      std::to_string(costs.max_k()) + " and the acceptance " + std::to_string(acceptance.size()) +
                      " positions.");
  }
  for (int i = 0; i < max_k; ++i) {
    if (!(acceptance[i] >= 0.0 && acceptance[i] <= 1.0)) {
      throw RunnerError("acceptance[" + std::to_string(i + 1) + "] = " + number(acceptance[i]) +
                        " is not a probability in [0, 1].");
    }
  }
  if (!(margin >= 0.0 && margin < std::numeric_limits<double>::infinity())) {
    throw RunnerError("margin must be a finite number >= 0, got " + number(margin) + ".");
  }
  Plan best;
  best.seconds = costs.decode;
  double best_rate = (1.0 / costs.decode) * (1.0 + margin);
  double tokens = 1.0, survive = 1.0;
  for (int k = 1; k <= max_k; ++k) {
    survive = survive * acceptance[k - 1];
    tokens = tokens + survive;
    DraftMode mode;
    const double seconds = costs.round_seconds(k, &mode);
    const double rate = tokens / seconds;
    if (rate > best_rate) {
      best = Plan{k, mode, tokens, seconds, false};
      best_rate = rate;
    }
  }
  return best;
}

int choose_k(const CostTable& costs, const std::vector<double>& acceptance, int max_k, double margin) {
  return best_plan(costs, acceptance, max_k, margin).k;
}

DraftPolicy::DraftPolicy(const CostTable& costs, const DraftPolicyOptions& options)
    : costs_(costs),
      max_k_(options.max_k < 0 ? costs.max_k() : options.max_k),
      probe_every_(options.probe_every),
      probe_interval_(options.probe_every),
      probe_k_(options.probe_k),
      timing_weight_(options.timing_weight),
      frozen_(options.frozen),
      margin_(options.margin),
      stickiness_(options.stickiness) {
  costs_.validate();
  if (max_k_ > costs_.max_k()) {
    throw RunnerError("max_k = " + std::to_string(max_k_) + " but the cost table covers K <= " +
                      std::to_string(costs_.max_k()) + ".");
  }
  if (probe_every_ < 0 || probe_k_ < 1) {
    throw RunnerError("probe_every must be >= 0 (0 = never) and probe_k >= 1; got " + std::to_string(probe_every_) +
                      ", " + std::to_string(probe_k_) + ".");
  }
  if (!(margin_ >= 0.0 && margin_ < std::numeric_limits<double>::infinity())) {
    throw RunnerError("margin must be a finite number >= 0, got " + number(margin_) + ".");
  }
  if (!(stickiness_ >= 0.0 && stickiness_ < std::numeric_limits<double>::infinity())) {
    throw RunnerError("stickiness must be a finite number >= 0, got " + number(stickiness_) + ".");
  }
  if (!(timing_weight_ > 0.0 && timing_weight_ <= 1.0)) {
    throw RunnerError("timing_weight must be in (0, 1], got " + number(timing_weight_) + ".");
  }
  if (options.acceptance && options.acceptance->max_k >= max_k_) {
    acceptance_ = *options.acceptance;
  } else {
    acceptance_ = AcceptanceEstimate(max_k_, options.prior_accept, options.prior_reject, options.decay);
  }
  if (options.probing) {
    const auto [interval, streak] = *options.probing;
    if (interval < 0 || streak < 0) {
      throw RunnerError("probing must be (plain rounds between probes, plain rounds so far) >= 0, got (" +
                        std::to_string(interval) + ", " + std::to_string(streak) + ").");
    }
    probe_interval_ = std::min(std::max(interval, probe_every_), kMaxProbeBackoff * probe_every_);
    plain_streak_ = streak;
  }
  if (probe_k_ > max_k_) probe_k_ = max_k_;
  histogram_.assign(max_k_ + 1, 0);
}

Plan DraftPolicy::next_plan() {
  const std::vector<double> rates = acceptance_.rates();
  Plan plan = best_plan(costs_, rates, max_k_, margin_);
  if (plan.k > 0 && last_k_ > 0 && last_k_ <= max_k_ && plan.k != last_k_) {
    const Plan kept = plan_for(last_k_, rates);
    if (plan.tokens / plan.seconds <= (kept.tokens / kept.seconds) * (1.0 + stickiness_)) plan = kept;
  } else if (plan.k == 0 && last_k_ > 0 && last_k_ <= max_k_ && !last_probe_) {
    // Hysteresis: a length chosen on merit (not a probe) goes on while it still predicts plain's rate.
    const Plan kept = plan_for(last_k_, rates);
    if (kept.tokens / kept.seconds >= plan.tokens / plan.seconds) plan = kept;
  }
  if (plan.k == 0 && probe_k_ > 0 && probe_every_ > 0) {
    if (plain_streak_ >= probe_interval_) {
      plain_streak_ = 0;
      probe_interval_ = std::min(2 * probe_interval_, kMaxProbeBackoff * probe_every_);
      ++probe_rounds_;
      plan = plan_for(probe_k_, rates);
      plan.probe = true;
    } else {
      ++plain_streak_;
    }
  } else if (plan.k > 0) {
    plain_streak_ = 0;
    probe_interval_ = probe_every_;
  }
  ++histogram_[plan.k];
  last_k_ = plan.k;
  last_probe_ = plan.probe;
  return plan;
}

Plan DraftPolicy::plan_for(int k, const std::vector<double>& rates) const {
  Plan plan;
  plan.k = k;
  plan.seconds = costs_.round_seconds(k, &plan.mode);
  plan.tokens = expected_tokens(rates, k);
  plan.probe = false;
  return plan;
}

void DraftPolicy::observe_call(const std::string& method, int n_tokens, double seconds) {
  if (!frozen_) costs_ = costs_.measured(method, n_tokens, seconds, timing_weight_);
}

}  // namespace mtp_edge
