// The speculative decoding runner: a bundle's .pte driven through ExecuTorch's C++ Module.
//
// A port of mtp_edge/runtime/speculative.py over the pte backend (runtime/backends/pte.py): the
// same loop (prefill, then rounds of draft -> verify -> accept -> rollback), the same stop rules
// and statistics, so that a prompt, K and sampling seed give the very tokens the Python runtime
// gives. K is fixed, or "auto" (kAutoK): a DraftPolicy (draft_policy.h) picks each round's draft
// length from a cost table and the acceptance so far, as speculative.generate(k="auto") does. A
// greedy round of k >= 2 tokens drafts them in one draft_chain_k call where the bundle has one (a
// fixed K unless draft_p_min is given; k = auto where the plan's draft mode is "call"); older
// bundles, sampling and k = 1 draft step by step. ExecuTorch types stay out of this header (the
// state lives behind Impl), so a JNI bridge or the C API in mtp_edge_runner.h can include it
// without the ExecuTorch include paths.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "chat_template.h"
#include "draft_policy.h"
#include "json.h"
#include "manifest.h"
#include "sampling.h"
#include "text_codec.h"

namespace mtp_edge {

// k = kAutoK: the draft length is chosen before every round by a DraftPolicy (Python's k="auto").
constexpr int64_t kAutoK = -1;

struct GenerateOptions {
  // Draft tokens per round (0 = the target alone), or kAutoK.
  int64_t k = kAutoK;
  int64_t max_new_tokens = 64;
  SamplingConfig sampling;
  // k = auto: the longest draft a round may make; -1: the bundle's K.
  int64_t max_k = -1;
  // Stop a draft before a step whose top probability (the drafter's processed distribution over its
  // candidates) is below it. None: no draft stops early.
  std::optional<double> draft_p_min;
  // k = auto: the cost table to decide from, frozen (timings never change it), so the decisions
  // depend on the tokens alone: a Python run given the same table makes the same ones. None: seeded
  // rejection-rule sampling uses the fixed default table (its tokens must not depend on timing);
  // otherwise the runner times warm-up calls once (kept across generations) and keeps the table
  // current from every call the loop makes. (tuning.json is not read: pass its table here.)
  std::optional<CostTable> costs;
  // With `costs`: the policy's settings (DraftPolicyOptions' defaults where unset) and the
  // (drafted, accepted) rounds its acceptance estimate starts from, as Python's
  // DraftPolicy(probe_every=, probe_k=, margin=, acceptance=) takes them: `mtp-edge fuzz` replays
  // its random policies here.
  std::optional<int> probe_every;
  std::optional<int> probe_k;
  std::optional<double> margin;
  std::vector<std::pair<int, int>> history;
  // The tokens that end a generation instead of the bundle's EOS ids (the fuzzer places them where
  // drafts will hit them).
  std::optional<std::vector<int64_t>> eos_ids;
};

// What the draft policy of a k = auto generation did (Python's DraftPolicy.stats() + cost_source).
struct PolicyStats {
  int64_t rounds = 0;
  std::vector<int64_t> k_histogram;  // rounds per planned k (index k = 0..max_k), probes included
  int64_t plain_rounds = 0;          // rounds it planned k = 0
  int64_t probe_rounds = 0;          // rounds it drafted although plain decoding looked faster
  std::vector<double> acceptance;    // the final estimate a_1..a_max_k
  CostTable costs;                   // the table it ended with (the given one when frozen)
  bool frozen = false;
  std::string cost_source;           // "given" (GenerateOptions::costs), "measured" or "default"
};

struct GenerationStats {
  int64_t prompt_tokens = 0;
  int64_t new_tokens = 0;
  int64_t rounds = 0;  // target verify calls (one per round)
  int64_t drafted = 0;
  int64_t accepted = 0;
  double prefill_s = 0.0;
  double decode_s = 0.0;
  std::string stop_reason;  // "eos", "max_new_tokens" or "cache_full"
  // Of decode_s, the time spent inside ExecuTorch method calls; the rest is the runner's own
  // work (sampling, the accept rule, copies, bookkeeping).
  double decode_methods_s = 0.0;
  int64_t early_stops = 0;            // drafts cut short by draft_p_min
  int64_t draft_calls = 0;            // rounds drafted by one draft_chain_k call instead of k steps
  std::vector<int64_t> k_histogram;   // rounds per draft length actually drafted (index = drafted)
  std::optional<PolicyStats> policy;  // k = auto only

  int64_t plain_rounds() const { return k_histogram.empty() ? 0 : k_histogram[0]; }

  double runner_s() const { return decode_s - decode_methods_s; }
  double runner_per_round_s() const { return rounds ? runner_s() / double(rounds) : 0.0; }
  double acceptance_rate() const { return drafted ? double(accepted) / double(drafted) : 0.0; }
  // Tokens emitted per verify pass (the first token comes from prefill and is not counted).
  double tokens_per_target_call() const { return rounds ? double(new_tokens - 1) / double(rounds) : 0.0; }
  double prefill_tokens_per_s() const { return prefill_s > 0 ? double(prompt_tokens) / prefill_s : 0.0; }
  double decode_tokens_per_s() const { return decode_s > 0 ? double(new_tokens - 1) / decode_s : 0.0; }
};

struct Generation {
  std::vector<int64_t> tokens;  // the new tokens only, EOS included when generation stopped on it
  GenerationStats stats;
};

class Runner {
 public:
  // Reads and checks the manifest (schema version, program sha256), loads the program with
  // share_memory_arenas = true (the methods share the KV cache) and loads every method.
  // Throws RunnerError naming the problem and the fix.
  explicit Runner(const std::string& bundle_dir, bool verify_hash = true);
  ~Runner();
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  const Manifest& manifest() const;

  // The bundle's tokenizer (artifacts.tokenizer, size and sha256 checked; else a tokenizer.json
  // beside manifest.json), loaded on first use so that a caller of token ids pays nothing for it.
  // Throws RunnerError naming the problem and the fix (no tokenizer.json, a modified or malformed one).
  const TextCodec& text();

  // The bundle's chat template (artifacts chat_template / tokenizer_config, size and sha256 checked),
  // loaded on first use. Throws RunnerError naming the problem and the fix (none in the bundle, a
  // modified file, a template that does not parse).
  const ChatTemplate& chat();
  // Whether the bundle lists a chat template (chat() may still refuse a modified or malformed one).
  bool has_chat_template() const;
  // A chat (a JSON array of {"role", "content"} messages) as prompt ids: rendered with the template
  // (add_generation_prompt on) and encoded without the tokenizer's own special tokens, as
  // transformers' apply_chat_template(messages, add_generation_prompt=True) gives them. `rendered`
  // (optional) receives the text.
  std::vector<int64_t> encode_chat(const std::string& messages_json, std::string* rendered = nullptr);

  // The checks the Python runtime's check_request makes, with its wording (k may be kAutoK).
  void check_request(const std::vector<int64_t>& prompt, int64_t k, int64_t max_new_tokens,
                     const SamplingConfig& sampling) const;

  // Generates up to max_new_tokens after the prompt; k = 0 decodes with the target alone.
  // on_token (optional) sees every new token as soon as it is accepted.
  Generation generate(const std::vector<int64_t>& prompt, const GenerateOptions& options,
                      const std::function<void(int64_t)>& on_token = nullptr);
  Generation generate(const std::vector<int64_t>& prompt, int64_t k, int64_t max_new_tokens,
                      const SamplingConfig& sampling, const std::function<void(int64_t)>& on_token = nullptr);

  // The target's argmax after each of `tokens` (row i predicts token i + 1), teacher-forced through
  // verify calls of up to K + 1 tokens from position 0: what `validate --arch arm64` compares between
  // ARM and x86 kernels (native/validate.teacher_forced_argmax is the Python side). Overwrites the
  // cache; the next generate prefills again.
  std::vector<int64_t> score(const std::vector<int64_t>& tokens);

  // Like runtime/tuning.py's measure_costs (which now times inside rounds): times decode, verify of 2..max_k + 1 tokens, one draft
  // step and each one-call draft (draft_chain_k, k = 2..max_k, where the bundle has it: draft_call)
  // from position 0 (one untimed call each, then `repeats` rounds calling every method in turn;
  // medians); a prefill overwrites those positions afterwards.
  CostTable measure_costs(int64_t max_k, int repeats = 3);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// runtime/tuning.py's DEFAULT_COSTS: a decode costs 1, each extra verify token a quarter of one, a
// draft step a tenth (K <= 32). Seeded rejection-rule runs without a given table use it.
const CostTable& default_costs();

// CostTable.from_json / to_json: {"decode": s, "draft_step": s, "verify": {"2": s, ...},
// "draft_call": {"1": s, ...}} (draft_call optional). Throws RunnerError naming the field.
CostTable cost_table_from_json(const json::Json& value);
std::string cost_table_json(const CostTable& costs);

// The stats object of a result line, as GenerationStats.as_dict() (plus draft_calls, decode_methods_s,
// runner_s and runner_per_round_s): k_histogram {"drafted": rounds}, plain_rounds, early_stops,
// and policy (null unless k = auto) {rounds, k_histogram, plain_rounds, probe_rounds, acceptance,
// costs, frozen, cost_source}.
std::string stats_json(const GenerationStats& stats);

}  // namespace mtp_edge
