#include "runner.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include "errors.h"

namespace mtp_edge {

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::extension::TensorPtr;
using executorch::extension::from_blob;
using executorch::runtime::Error;
using executorch::runtime::EValue;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

const char* kMethods[] = {"prefill", "verify", "decode", "draft"};

}  // namespace

// Input buffers are allocated once at their static shapes and wrapped as tensors once; a call
// only rewrites their values. Outputs are copied out right away: with shared memory arenas the
// next method call may reuse the memory an output tensor points into.
struct Runner::Impl {
  Manifest m;
  std::unique_ptr<Module> module;

  std::vector<int64_t> prefill_tokens, verify_tokens, one_token, start_pos, logits_at, position, validated_length;
  std::vector<float> draft_hidden_in;
  TensorPtr prefill_tokens_t, verify_tokens_t, decode_token_t, draft_token_t, start_pos_t, logits_at_t, position_t,
      validated_length_t, draft_hidden_t;

  // Outputs of the last target call: logits [n x vocab] and hidden [n x hidden], row-major.
  std::vector<float> logits, hidden;
  // Outputs of the last draft call.
  std::vector<int64_t> candidate_ids;
  std::vector<float> candidate_logits, draft_hidden_out;
  int64_t draft_argmax = 0;

  double methods_s = 0.0;  // running total of time inside Module::execute

  std::vector<EValue> run(const char* name, std::vector<EValue> inputs) {
    const auto start = Clock::now();
    auto result = module->execute(name, inputs);
    methods_s += seconds_since(start);
    if (!result.ok()) {
      throw RunnerError(std::string("ExecuTorch method ") + name + " failed (" + executorch::runtime::to_string(result.error()) +
                        ") on " + m.program_path + "; re-export the bundle with this version of mtp-edge.");
    }
    return std::move(*result);
  }

  template <typename T>
  static void copy_out(const EValue& value, std::vector<T>& into, int64_t count, const char* what) {
    const auto& tensor = value.toTensor();
    if (tensor.numel() < count) {
      throw RunnerError(std::string("output ") + what + " has " + std::to_string(tensor.numel()) + " values, expected " +
                        std::to_string(count) + "; the manifest does not match the program, re-export the bundle.");
    }
    into.assign(tensor.const_data_ptr<T>(), tensor.const_data_ptr<T>() + count);
  }

  // The prompt from position 0, prefill_chunk tokens per call, the last chunk padded; logits
  // and hidden of the last prompt token land in logits / hidden.
  void prefill(const std::vector<int64_t>& prompt) {
    const int64_t total = static_cast<int64_t>(prompt.size()), chunk = m.prefill_chunk;
    std::vector<EValue> outputs;
    for (int64_t start = 0; start < total; start += chunk) {
      const int64_t n = std::min(chunk, total - start);
      std::copy(prompt.begin() + start, prompt.begin() + start + n, prefill_tokens.begin());
      std::fill(prefill_tokens.begin() + n, prefill_tokens.end(), m.pad_token);
      start_pos[0] = start;
      logits_at[0] = n - 1;
      outputs = run("prefill", {*prefill_tokens_t, *start_pos_t, *logits_at_t});
    }
    copy_out(outputs[0], logits, m.vocab_size, "prefill logits");
    copy_out(outputs[1], hidden, m.hidden_size, "prefill hidden");
  }

  // Tokens [n <= K + 1] at positions start..start+n-1: one token goes through decode, more are
  // padded to K + 1 for verify; the padded slots' K/V land where later passes mask them.
  void verify(const std::vector<int64_t>& tokens, int64_t start) {
    const int64_t n = static_cast<int64_t>(tokens.size());
    start_pos[0] = start;
    std::vector<EValue> outputs;
    if (n == 1) {
      one_token[0] = tokens[0];
      outputs = run("decode", {*decode_token_t, *start_pos_t});
    } else {
      std::copy(tokens.begin(), tokens.end(), verify_tokens.begin());
      std::fill(verify_tokens.begin() + n, verify_tokens.end(), m.pad_token);
      outputs = run("verify", {*verify_tokens_t, *start_pos_t});
    }
    copy_out(outputs[0], logits, n * m.vocab_size, "verify logits");
    copy_out(outputs[1], hidden, n * m.hidden_size, "verify hidden");
  }

  // One drafter step from `token` at the constant `position`, reading K/V of positions < validated.
  void draft(int64_t token, const float* hidden_in, int64_t pos, int64_t validated) {
    one_token[0] = token;
    std::memcpy(draft_hidden_in.data(), hidden_in, sizeof(float) * m.hidden_size);
    position[0] = pos;
    validated_length[0] = validated;
    auto outputs = run("draft", {*draft_token_t, *draft_hidden_t, *position_t, *validated_length_t});
    copy_out(outputs[0], candidate_ids, m.draft_candidates, "draft candidate_ids");
    copy_out(outputs[1], candidate_logits, m.draft_candidates, "draft candidate_logits");
    copy_out(outputs[2], draft_hidden_out, m.hidden_size, "draft hidden");
    draft_argmax = outputs[3].toTensor().const_data_ptr<int64_t>()[0];
  }
};

Runner::Runner(const std::string& bundle_dir, bool verify_hash) : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  s.m = read_manifest(bundle_dir, verify_hash);
  const Manifest& m = s.m;

  // share_memory_arenas = true: the methods were exported with share_mutable_buffers, so the KV
  // cache lives in one planned arena that every method must address. Without it each method
  // gets its own arenas and the drafter / verify would read an empty cache.
  s.module = std::make_unique<Module>(m.program_path, Module::LoadMode::Mmap, nullptr, nullptr, nullptr,
                                      /*share_memory_arenas=*/true);
  if (Error e = s.module->load(); e != Error::Ok) {
    throw RunnerError(m.program_path + ": ExecuTorch could not load the program (" + executorch::runtime::to_string(e) +
                      "); re-export the bundle.");
  }
  auto names = s.module->method_names();
  for (const char* name : kMethods) {
    if (std::string(name) == "draft" && !m.has_drafter) continue;
    if (!names.ok() || names->count(name) == 0) {
      throw RunnerError(m.program_path + ": the program lacks method " + name + " listed in manifest.json; re-export the bundle.");
    }
    if (Error e = s.module->load_method(name); e != Error::Ok) {
      throw RunnerError(m.program_path + ": ExecuTorch could not load method " + name + " (" + executorch::runtime::to_string(e) +
                        "); a quantized bundle needs the runner linked with executorch::kernels_quantized.");
    }
  }
  // The manifest is not hashed: check that its K and chunk match the program's static shapes.
  auto check_tokens = [&](const char* name, int64_t want) {
    auto meta = s.module->method_meta(name);
    if (!meta.ok()) return;
    auto info = meta->input_tensor_meta(0);
    if (!info.ok()) return;
    const auto sizes = info->sizes();
    if (sizes.size() != 2 || sizes[1] != want) {
      throw RunnerError(m.manifest_path + ": method " + name + " takes " + std::to_string(sizes.size() ? sizes[sizes.size() - 1] : 0) +
                        " tokens per call in the program but the manifest implies " + std::to_string(want) +
                        "; the manifest was edited, export the bundle again.");
    }
  };
  check_tokens("prefill", m.prefill_chunk);
  check_tokens("verify", m.k + 1);

  s.prefill_tokens.assign(m.prefill_chunk, m.pad_token);
  s.verify_tokens.assign(m.k + 1, m.pad_token);
  s.one_token.assign(1, 0);
  s.start_pos.assign(1, 0);
  s.logits_at.assign(1, 0);
  s.position.assign(1, 0);
  s.validated_length.assign(1, 1);
  s.draft_hidden_in.assign(m.hidden_size, 0.0f);
  using Sizes = std::vector<executorch::aten::SizesType>;
  const auto C = static_cast<executorch::aten::SizesType>(m.prefill_chunk);
  const auto K1 = static_cast<executorch::aten::SizesType>(m.k + 1);
  const auto H = static_cast<executorch::aten::SizesType>(m.hidden_size);
  s.prefill_tokens_t = from_blob(s.prefill_tokens.data(), Sizes{1, C}, ScalarType::Long);
  s.verify_tokens_t = from_blob(s.verify_tokens.data(), Sizes{1, K1}, ScalarType::Long);
  s.decode_token_t = from_blob(s.one_token.data(), Sizes{1, 1}, ScalarType::Long);
  s.draft_token_t = from_blob(s.one_token.data(), Sizes{1}, ScalarType::Long);
  s.start_pos_t = from_blob(s.start_pos.data(), Sizes{1}, ScalarType::Long);
  s.logits_at_t = from_blob(s.logits_at.data(), Sizes{1}, ScalarType::Long);
  s.position_t = from_blob(s.position.data(), Sizes{1}, ScalarType::Long);
  s.validated_length_t = from_blob(s.validated_length.data(), Sizes{1}, ScalarType::Long);
  s.draft_hidden_t = from_blob(s.draft_hidden_in.data(), Sizes{H}, ScalarType::Float);
}

Runner::~Runner() = default;

const Manifest& Runner::manifest() const { return impl_->m; }

void Runner::check_request(const std::vector<int64_t>& prompt, int64_t k, int64_t max_new_tokens,
                           const SamplingConfig& sampling) const {
  const Manifest& m = impl_->m;
  sampling.validate();
  if (prompt.empty()) throw RunnerError("the prompt is empty: give at least one token (for example the BOS id).");
  for (int64_t t : prompt) {
    if (t < 0 || t >= m.vocab_size) {
      throw RunnerError("prompt token id " + std::to_string(t) + " is outside the vocabulary [0, " + std::to_string(m.vocab_size) + ").");
    }
  }
  if (static_cast<int64_t>(prompt.size()) >= m.max_seq_len) {
    throw RunnerError("the prompt has " + std::to_string(prompt.size()) + " tokens but the cache holds " + std::to_string(m.max_seq_len) +
                      " positions: re-export the bundle with a larger --max-seq-len or shorten the prompt.");
  }
  if (k < 0) throw RunnerError("K (draft tokens per round) must be >= 0, got " + std::to_string(k) + ".");
  if (k > (m.has_drafter ? m.k : 0)) {
    const std::string reason = m.has_drafter ? "it was built for K <= " + std::to_string(m.k) : "it has no drafter";
    throw RunnerError("K=" + std::to_string(k) + " is not available on this bundle: " + reason + ".");
  }
  if (max_new_tokens < 1) throw RunnerError("max_new_tokens must be >= 1, got " + std::to_string(max_new_tokens) + ".");
}

Generation Runner::generate(const std::vector<int64_t>& prompt, int64_t k, int64_t max_new_tokens,
                            const SamplingConfig& sampling, const std::function<void(int64_t)>& on_token) {
  check_request(prompt, k, max_new_tokens, sampling);
  Impl& s = *impl_;
  const Manifest& m = s.m;
  const int64_t V = m.vocab_size, H = m.hidden_size;
  SplitMix64 rng(sampling.seed);
  Generation result;
  GenerationStats& stats = result.stats;
  std::vector<int64_t>& out = result.tokens;
  stats.prompt_tokens = static_cast<int64_t>(prompt.size());

  // Streams tokens out; true when an EOS ended the generation (it is emitted, as transformers does).
  auto emit = [&](const std::vector<int64_t>& fresh) {
    for (int64_t token : fresh) {
      out.push_back(token);
      if (on_token) on_token(token);
      if (std::find(m.eos_token_ids.begin(), m.eos_token_ids.end(), token) != m.eos_token_ids.end()) {
        stats.stop_reason = "eos";
        return true;
      }
    }
    return false;
  };

  auto started = Clock::now();
  s.prefill(prompt);
  const int64_t first = choose(s.logits.data(), V, sampling, rng);
  stats.prefill_s = seconds_since(started);
  // Invariants, as in speculative.py: `position` is the position of out.back(), whose K/V are not
  // cached yet; `hidden` is the target's final hidden state that produced it.
  int64_t position = stats.prompt_tokens;
  std::vector<float> hidden(s.hidden.begin(), s.hidden.begin() + H);
  bool stopped = emit({first});

  started = Clock::now();
  const double methods_before = s.methods_s;
  std::vector<int64_t> drafts, round_tokens, fresh;
  std::vector<SparseProbs> draft_probs;
  std::vector<float> draft_hidden;
  while (!stopped) {
    const int64_t remaining = max_new_tokens - static_cast<int64_t>(out.size());
    if (remaining == 0) {
      stats.stop_reason = "max_new_tokens";
      break;
    }
    if (position >= m.max_seq_len) {
      stats.stop_reason = "cache_full";
      break;
    }
    // A round emits at most k_round + 1 tokens and writes positions position..position + k_round:
    // shrink K so that neither the token budget nor the cache can overflow.
    const int64_t k_round = std::min({k, remaining - 1, m.max_seq_len - 1 - position});

    // Draft k_round tokens at the constant position, each step fed the drafter's own projected hidden.
    drafts.clear();
    draft_probs.clear();
    int64_t token = out.back();
    const float* step_hidden = hidden.data();
    for (int64_t j = 0; j < k_round; ++j) {
      s.draft(token, step_hidden, position, position);
      auto picked = draft_token(s.candidate_ids.data(), s.candidate_logits.data(), m.draft_candidates, s.draft_argmax, sampling, rng);
      token = picked.first;
      drafts.push_back(token);
      draft_probs.push_back(std::move(picked.second));
      draft_hidden = s.draft_hidden_out;
      step_hidden = draft_hidden.data();
    }

    // Verify [last, d1..dk] in one target pass, keep the accepted prefix plus the target's next token.
    round_tokens.assign(1, out.back());
    round_tokens.insert(round_tokens.end(), drafts.begin(), drafts.end());
    s.verify(round_tokens, position);
    const Acceptance verdict = accept_drafts(drafts, draft_probs, s.logits.data(), V, sampling, rng);
    fresh.assign(drafts.begin(), drafts.begin() + verdict.accepted);
    fresh.push_back(verdict.next_token);
    hidden.assign(s.hidden.begin() + verdict.accepted * H, s.hidden.begin() + (verdict.accepted + 1) * H);

    stats.rounds += 1;
    stats.drafted += k_round;
    stats.accepted += verdict.accepted;
    // Validated now: the old last token and the accepted drafts. Rollback is only this length
    // change: later passes mask positions >= their own, the drafter those >= validated_length.
    position += verdict.accepted + 1;
    stopped = emit(fresh);
  }
  stats.decode_s = seconds_since(started);
  stats.decode_methods_s = s.methods_s - methods_before;
  stats.new_tokens = static_cast<int64_t>(out.size());
  if (stats.stop_reason.empty()) stats.stop_reason = "max_new_tokens";
  return result;
}

}  // namespace mtp_edge
