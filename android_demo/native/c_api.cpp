// mtp_edge_runner.h over the C++ Runner: exceptions become return codes plus a message.
#include <algorithm>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "errors.h"
#include "json.h"
#include "mtp_edge_runner.h"
#include "runner.h"

struct mtp_runner {
  std::unique_ptr<mtp_edge::Runner> runner;
  std::optional<mtp_edge::GenerationStats> last;  // the last successful generation's
  std::string last_text;                          // its text (mtp_runner_generate_text only)
};

namespace {

void set_error(char* error, size_t size, const char* message) {
  if (error == nullptr || size == 0) return;
  std::strncpy(error, message, size - 1);
  error[size - 1] = '\0';
}

void set_text(char* into, size_t size, const std::string& text) {
  std::memset(into, 0, size);
  std::strncpy(into, text.c_str(), size - 1);
}

template <typename T, typename U>
size_t copy_values(const std::vector<U>& values, T* into, size_t capacity) {
  if (into != nullptr) {
    const size_t n = std::min(capacity, values.size());
    for (size_t i = 0; i < n; ++i) into[i] = static_cast<T>(values[i]);
  }
  return values.size();
}

// Copies `text` into a caller's buffer of `size` bytes (NUL-terminated, cut if it must be); returns
// the full length.
size_t copy_text(const std::string& text, char* buffer, size_t size) {
  if (buffer != nullptr && size > 0) {
    const size_t n = std::min(size - 1, text.size());
    std::memcpy(buffer, text.data(), n);
    buffer[n] = '\0';
  }
  return text.size();
}

const mtp_edge::PolicyStats* last_policy(const mtp_runner* runner) {
  if (runner == nullptr || !runner->last || !runner->last->policy) return nullptr;
  return &*runner->last->policy;
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

}  // extern "C"

namespace {

// mtp_runner_generate's work for an already-encoded prompt; throws RunnerError.
void generate(mtp_runner* runner, const std::vector<int64_t>& prompt, int64_t k, int64_t max_new_tokens,
              const mtp_sampling* sampling, const mtp_draft* draft, int64_t* out_tokens, size_t* out_len, mtp_stats* stats,
              const std::function<void(int64_t)>& callback) {
  mtp_edge::GenerateOptions options;
  options.k = k;
  options.max_new_tokens = max_new_tokens;
  if (sampling != nullptr) {
    options.sampling.temperature = sampling->temperature;
    options.sampling.top_k = sampling->top_k;
    options.sampling.top_p = sampling->top_p;
    options.sampling.seed = sampling->seed;
    if (sampling->rule != MTP_RULE_REJECTION && sampling->rule != MTP_RULE_COUPLED) {
      throw mtp_edge::RunnerError("sampling rule " + std::to_string(sampling->rule) +
                                  " is unknown; choose MTP_RULE_REJECTION (0) or MTP_RULE_COUPLED (1).");
    }
    options.sampling.rule = sampling->rule == MTP_RULE_COUPLED ? mtp_edge::SamplingRule::kCoupled
                                                               : mtp_edge::SamplingRule::kRejection;
  }
  if (draft != nullptr) {
    if (draft->max_k < -1) throw mtp_edge::RunnerError("max_k must be >= 0 (or -1: the bundle's K), got " + std::to_string(draft->max_k) + ".");
    options.max_k = draft->max_k;
    if (draft->draft_p_min >= 0.0) {
      options.draft_p_min = draft->draft_p_min;
    } else if (draft->draft_p_min != draft->draft_p_min) {  // NaN
      throw mtp_edge::RunnerError("draft_p_min must be a probability in [0, 1] (or < 0: none), got NaN.");
    }
    if (draft->costs_json != nullptr) {
      mtp_edge::json::Json doc;
      try {
        doc = mtp_edge::json::parse(draft->costs_json);
      } catch (const mtp_edge::json::ParseError& e) {
        throw mtp_edge::RunnerError(std::string("cost table: not valid JSON (") + e.what() + ").");
      }
      options.costs = mtp_edge::cost_table_from_json(doc);
    }
  }
  auto result = runner->runner->generate(prompt, options, callback);
  std::copy(result.tokens.begin(), result.tokens.end(), out_tokens);
  if (out_len != nullptr) *out_len = result.tokens.size();
  const auto& s = result.stats;
  if (stats != nullptr) {
    std::memset(stats, 0, sizeof *stats);
    stats->prompt_tokens = s.prompt_tokens;
    stats->new_tokens = s.new_tokens;
    stats->rounds = s.rounds;
    stats->drafted = s.drafted;
    stats->accepted = s.accepted;
    stats->prefill_s = s.prefill_s;
    stats->decode_s = s.decode_s;
    stats->decode_methods_s = s.decode_methods_s;
    set_text(stats->stop_reason, sizeof stats->stop_reason, s.stop_reason);
    stats->early_stops = s.early_stops;
    stats->plain_rounds = s.plain_rounds();
    stats->max_drafted = s.k_histogram.empty() ? 0 : static_cast<int64_t>(s.k_histogram.size()) - 1;
    if (s.policy) {
      stats->auto_k = 1;
      stats->costs_frozen = s.policy->frozen ? 1 : 0;
      stats->probe_rounds = s.policy->probe_rounds;
      set_text(stats->cost_source, sizeof stats->cost_source, s.policy->cost_source);
    }
  }
  runner->last = s;
}

// Null arguments and a too-small out_tokens, checked before any work; a message or nullptr.
const char* bad_arguments(const char* call, mtp_runner* runner, bool prompt_ok, int64_t* out_tokens, size_t out_capacity,
                          int64_t max_new_tokens, std::string& message) {
  if (runner == nullptr || !prompt_ok || out_tokens == nullptr) {
    message = std::string(call) + ": runner, prompt and out_tokens must not be NULL";
  } else if (max_new_tokens > 0 && out_capacity < static_cast<size_t>(max_new_tokens)) {
    message = std::string(call) + ": out_capacity is smaller than max_new_tokens";
  } else {
    return nullptr;
  }
  return message.c_str();
}

}  // namespace

extern "C" {

int mtp_runner_generate(mtp_runner* runner, const int64_t* prompt, size_t prompt_len, int64_t k, int64_t max_new_tokens,
                        const mtp_sampling* sampling, const mtp_draft* draft, int64_t* out_tokens, size_t out_capacity,
                        size_t* out_len, mtp_stats* stats, mtp_token_callback on_token, void* user_data, char* error,
                        size_t error_size) {
  try {
    std::string message;
    if (bad_arguments("mtp_runner_generate", runner, prompt != nullptr || prompt_len == 0, out_tokens, out_capacity,
                      max_new_tokens, message)) {
      set_error(error, error_size, message.c_str());
      return 1;
    }
    std::function<void(int64_t)> callback;
    if (on_token != nullptr) callback = [&](int64_t token) { on_token(token, user_data); };
    runner->last_text.clear();
    generate(runner, std::vector<int64_t>(prompt, prompt + prompt_len), k, max_new_tokens, sampling, draft, out_tokens,
             out_len, stats, callback);
    return 0;
  } catch (const std::exception& e) {
    set_error(error, error_size, e.what());
  } catch (...) {
    set_error(error, error_size, "unknown error during generation");
  }
  return 1;
}

// A text or chat prompt (`chat`: a JSON array of messages) generated with its new text streamed.
static int generate_streamed(const char* function, mtp_runner* runner, const char* prompt_text, bool chat, int64_t k,
                             int64_t max_new_tokens, const mtp_sampling* sampling, const mtp_draft* draft,
                             int64_t* out_tokens, size_t out_capacity, size_t* out_len, mtp_stats* stats,
                             mtp_text_callback on_text, void* user_data, char* error, size_t error_size) {
  try {
    std::string message;
    if (bad_arguments(function, runner, prompt_text != nullptr, out_tokens, out_capacity, max_new_tokens, message)) {
      set_error(error, error_size, message.c_str());
      return 1;
    }
    const mtp_edge::TextCodec& codec = runner->runner->text();
    const std::vector<int64_t> prompt = chat ? runner->runner->encode_chat(prompt_text) : codec.encode(prompt_text);
    mtp_edge::TextStream stream(codec);
    std::string text;
    const auto callback = [&](int64_t token) {
      const std::string piece = stream.push(token);
      text += piece;
      if (on_text != nullptr) on_text(token, piece.data(), piece.size(), user_data);
    };
    runner->last_text.clear();
    generate(runner, prompt, k, max_new_tokens, sampling, draft, out_tokens, out_len, stats, callback);
    const std::string rest = stream.finish();
    text += rest;
    if (on_text != nullptr && !rest.empty()) on_text(-1, rest.data(), rest.size(), user_data);
    runner->last_text = text;
    return 0;
  } catch (const std::exception& e) {
    set_error(error, error_size, e.what());
  } catch (...) {
    set_error(error, error_size, "unknown error during generation");
  }
  return 1;
}

int mtp_runner_generate_text(mtp_runner* runner, const char* prompt_text, int64_t k, int64_t max_new_tokens,
                             const mtp_sampling* sampling, const mtp_draft* draft, int64_t* out_tokens,
                             size_t out_capacity, size_t* out_len, mtp_stats* stats, mtp_text_callback on_text,
                             void* user_data, char* error, size_t error_size) {
  return generate_streamed("mtp_runner_generate_text", runner, prompt_text, false, k, max_new_tokens, sampling, draft,
                           out_tokens, out_capacity, out_len, stats, on_text, user_data, error, error_size);
}

int mtp_runner_generate_chat(mtp_runner* runner, const char* messages_json, int64_t k, int64_t max_new_tokens,
                             const mtp_sampling* sampling, const mtp_draft* draft, int64_t* out_tokens,
                             size_t out_capacity, size_t* out_len, mtp_stats* stats, mtp_text_callback on_text,
                             void* user_data, char* error, size_t error_size) {
  return generate_streamed("mtp_runner_generate_chat", runner, messages_json, true, k, max_new_tokens, sampling, draft,
                           out_tokens, out_capacity, out_len, stats, on_text, user_data, error, error_size);
}

int mtp_runner_has_chat_template(const mtp_runner* runner) {
  try {
    return runner != nullptr && runner->runner->has_chat_template() ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

int mtp_runner_encode(mtp_runner* runner, const char* text, int64_t* out_ids, size_t capacity, size_t* out_len,
                      char* error, size_t error_size) {
  try {
    if (runner == nullptr || text == nullptr) {
      set_error(error, error_size, "mtp_runner_encode: runner and text must not be NULL");
      return 1;
    }
    const size_t n = copy_values(runner->runner->text().encode(text), out_ids, capacity);
    if (out_len != nullptr) *out_len = n;
    return 0;
  } catch (const std::exception& e) {
    set_error(error, error_size, e.what());
  }
  return 1;
}

int mtp_runner_chat_text(mtp_runner* runner, const char* messages_json, char* buffer, size_t size, size_t* out_len,
                         char* error, size_t error_size) {
  try {
    if (runner == nullptr || messages_json == nullptr) {
      set_error(error, error_size, "mtp_runner_chat_text: runner and messages_json must not be NULL");
      return 1;
    }
    const size_t n = copy_text(runner->runner->chat().render(messages_json), buffer, size);
    if (out_len != nullptr) *out_len = n;
    return 0;
  } catch (const std::exception& e) {
    set_error(error, error_size, e.what());
  }
  return 1;
}

int mtp_runner_encode_chat(mtp_runner* runner, const char* messages_json, int64_t* out_ids, size_t capacity,
                           size_t* out_len, char* error, size_t error_size) {
  try {
    if (runner == nullptr || messages_json == nullptr) {
      set_error(error, error_size, "mtp_runner_encode_chat: runner and messages_json must not be NULL");
      return 1;
    }
    const size_t n = copy_values(runner->runner->encode_chat(messages_json), out_ids, capacity);
    if (out_len != nullptr) *out_len = n;
    return 0;
  } catch (const std::exception& e) {
    set_error(error, error_size, e.what());
  }
  return 1;
}

int mtp_runner_decode(mtp_runner* runner, const int64_t* ids, size_t ids_len, char* buffer, size_t size,
                      size_t* out_len, char* error, size_t error_size) {
  try {
    if (runner == nullptr || (ids == nullptr && ids_len > 0)) {
      set_error(error, error_size, "mtp_runner_decode: runner and ids must not be NULL");
      return 1;
    }
    const size_t n = copy_text(runner->runner->text().decode(std::vector<int64_t>(ids, ids + ids_len)), buffer, size);
    if (out_len != nullptr) *out_len = n;
    return 0;
  } catch (const std::exception& e) {
    set_error(error, error_size, e.what());
  }
  return 1;
}

size_t mtp_runner_last_text(const mtp_runner* runner, char* buffer, size_t size) {
  return copy_text(runner == nullptr ? std::string() : runner->last_text, buffer, size);
}

size_t mtp_runner_last_k_histogram(const mtp_runner* runner, int64_t* counts, size_t capacity) {
  if (runner == nullptr || !runner->last) return 0;
  return copy_values(runner->last->k_histogram, counts, capacity);
}

size_t mtp_runner_last_planned_histogram(const mtp_runner* runner, int64_t* counts, size_t capacity) {
  const auto* policy = last_policy(runner);
  return policy == nullptr ? 0 : copy_values(policy->k_histogram, counts, capacity);
}

size_t mtp_runner_last_costs(const mtp_runner* runner, double* decode, double* draft_step, double* verify, size_t capacity) {
  const auto* policy = last_policy(runner);
  if (policy == nullptr) return 0;
  if (decode != nullptr) *decode = policy->costs.decode;
  if (draft_step != nullptr) *draft_step = policy->costs.draft_step;
  std::vector<double> seconds;
  for (const auto& entry : policy->costs.verify) seconds.push_back(entry.second);  // lengths 2..K+1, no gaps
  return copy_values(seconds, verify, capacity);
}

size_t mtp_runner_last_acceptance(const mtp_runner* runner, double* rates, size_t capacity) {
  const auto* policy = last_policy(runner);
  return policy == nullptr ? 0 : copy_values(policy->acceptance, rates, capacity);
}

size_t mtp_runner_last_stats_json(const mtp_runner* runner, char* buffer, size_t size) {
  if (runner == nullptr || !runner->last) {
    if (buffer != nullptr && size > 0) buffer[0] = '\0';
    return 0;
  }
  return copy_text(mtp_edge::stats_json(*runner->last), buffer, size);
}

}  // extern "C"
