// mtp_edge_runner.h over the C++ Runner: exceptions become return codes plus a message.
#include <algorithm>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mtp_edge_runner.h"
#include "runner.h"

struct mtp_runner {
  std::unique_ptr<mtp_edge::Runner> runner;
};

namespace {

void set_error(char* error, size_t size, const char* message) {
  if (error == nullptr || size == 0) return;
  std::strncpy(error, message, size - 1);
  error[size - 1] = '\0';
}

}  // namespace

extern "C" {

mtp_runner* mtp_runner_open(const char* bundle_dir, char* error, size_t error_size) {
  try {
    auto handle = std::make_unique<mtp_runner>();
    handle->runner = std::make_unique<mtp_edge::Runner>(bundle_dir ? bundle_dir : "");
    return handle.release();
  } catch (const std::exception& e) {
    set_error(error, error_size, e.what());
  } catch (...) {
    set_error(error, error_size, "unknown error while opening the bundle");
  }
  return nullptr;
}

void mtp_runner_close(mtp_runner* runner) { delete runner; }

int64_t mtp_runner_max_draft(const mtp_runner* runner) {
  const auto& m = runner->runner->manifest();
  return m.has_drafter ? m.k : 0;
}

int64_t mtp_runner_max_seq_len(const mtp_runner* runner) { return runner->runner->manifest().max_seq_len; }

int64_t mtp_runner_vocab_size(const mtp_runner* runner) { return runner->runner->manifest().vocab_size; }

int mtp_runner_generate(mtp_runner* runner, const int64_t* prompt, size_t prompt_len, int64_t k, int64_t max_new_tokens,
                        const mtp_sampling* sampling, int64_t* out_tokens, size_t out_capacity, size_t* out_len,
                        mtp_stats* stats, mtp_token_callback on_token, void* user_data, char* error, size_t error_size) {
  try {
    if (runner == nullptr || (prompt == nullptr && prompt_len > 0) || out_tokens == nullptr) {
      set_error(error, error_size, "mtp_runner_generate: runner, prompt and out_tokens must not be NULL");
      return 1;
    }
    if (max_new_tokens > 0 && out_capacity < static_cast<size_t>(max_new_tokens)) {
      set_error(error, error_size, "mtp_runner_generate: out_capacity is smaller than max_new_tokens");
      return 1;
    }
    mtp_edge::SamplingConfig cfg;
    if (sampling != nullptr) {
      cfg.temperature = sampling->temperature;
      cfg.top_k = sampling->top_k;
      cfg.top_p = sampling->top_p;
      cfg.seed = sampling->seed;
    }
    std::function<void(int64_t)> callback;
    if (on_token != nullptr) callback = [&](int64_t token) { on_token(token, user_data); };
    auto result = runner->runner->generate(std::vector<int64_t>(prompt, prompt + prompt_len), k, max_new_tokens, cfg, callback);
    std::copy(result.tokens.begin(), result.tokens.end(), out_tokens);
    if (out_len != nullptr) *out_len = result.tokens.size();
    if (stats != nullptr) {
      const auto& s = result.stats;
      *stats = mtp_stats{s.prompt_tokens, s.new_tokens, s.rounds, s.drafted, s.accepted,
                         s.prefill_s, s.decode_s, s.decode_methods_s, {0}};
      std::strncpy(stats->stop_reason, s.stop_reason.c_str(), sizeof(stats->stop_reason) - 1);
    }
    return 0;
  } catch (const std::exception& e) {
    set_error(error, error_size, e.what());
  } catch (...) {
    set_error(error, error_size, "unknown error during generation");
  }
  return 1;
}

}  // extern "C"
