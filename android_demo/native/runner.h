// The speculative decoding runner: a bundle's .pte driven through ExecuTorch's C++ Module.
//
// A port of mtp_edge/runtime/speculative.py over the pte backend (runtime/backends/pte.py): the
// same loop (prefill, then rounds of draft -> verify -> accept -> rollback), the same stop rules
// and statistics, so that a prompt, K and sampling seed give the very tokens the Python runtime
// gives. ExecuTorch types stay out of this header (the state lives behind Impl), so a JNI bridge
// or the C API in mtp_edge_runner.h can include it without the ExecuTorch include paths.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "manifest.h"
#include "sampling.h"

namespace mtp_edge {

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

  // The checks the Python runtime's check_request makes, with its wording.
  void check_request(const std::vector<int64_t>& prompt, int64_t k, int64_t max_new_tokens,
                     const SamplingConfig& sampling) const;

  // Generates up to max_new_tokens after the prompt; k = 0 decodes with the target alone.
  // on_token (optional) sees every new token as soon as it is accepted.
  Generation generate(const std::vector<int64_t>& prompt, int64_t k, int64_t max_new_tokens,
                      const SamplingConfig& sampling, const std::function<void(int64_t)>& on_token = nullptr);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mtp_edge
