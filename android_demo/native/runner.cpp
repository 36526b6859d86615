#include "runner.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>
#include <atomic>
#include <filesystem>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_set>

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

const char* kMethods[] = {"verify", "draft"};

// --draft-p-min (speculative.EarlyStop): a draft stops before a step whose drafter top probability
// p is below p_min, judged before anything is drawn from it. k = auto does not stop drafts on its own
// (a cost-based rule stopped drafts that paid: see the Python docstring).
struct EarlyStop {
  double p_min = 0.0;
  bool stops(double p) const { return p < p_min; }
};

// speculative._top_probability: the largest entry of the drafter's processed distribution over
// its candidates. Greedy: torch.softmax(logits.double()), which is probabilities() at temperature
// 1 (x / 1.0 is exact) without top-k / top-p. Sampling: probabilities(logits, cfg).max().
double top_probability(const float* candidate_logits, int64_t n, const SamplingConfig& cfg) {
  SamplingConfig softmax;
  softmax.temperature = 1.0;
  const std::vector<double> p = probabilities(candidate_logits, n, cfg.greedy() ? softmax : cfg);
  return *std::max_element(p.begin(), p.end());
}

std::string histogram_json(const std::vector<int64_t>& counts) {
  std::string out = "{";
  for (size_t k = 0; k < counts.size(); ++k) {
    if (counts[k] == 0) continue;
    out += (out.size() > 1 ? ", \"" : "\"") + std::to_string(k) + "\": " + std::to_string(counts[k]);
  }
  return out + "}";
}

}  // namespace

const CostTable& default_costs() {
  static const CostTable table = [] {
    CostTable t;
    t.decode = 1.0;
    t.draft_step = 0.1;
    for (int n = 2; n < 34; ++n) t.verify[n] = 1.0 + 0.25 * static_cast<double>(n - 1);
    return t;
  }();
  return table;
}

CostTable cost_table_from_json(const json::Json& data) {
  if (!data.is_object()) throw RunnerError("cost table: expected a JSON object.");
  static const std::set<std::string> known = {"decode", "draft_step", "verify", "draft_call"};
  std::string unknown, missing;
  for (const auto& member : data.items()) {
    if (known.count(member.key()) == 0) unknown += (unknown.empty() ? "'" : ", '") + member.key() + "'";
  }
  if (!unknown.empty()) {
    throw RunnerError("cost table: unknown field(s) " + unknown + "; expected ['decode', 'draft_call', 'draft_step', 'verify'].");
  }
  for (const char* name : {"decode", "draft_step", "verify"}) {
    if (json::find(data, name) == nullptr) missing += (missing.empty() ? "" : ", ") + std::string(name);
  }
  if (!missing.empty()) throw RunnerError("cost table: missing field(s) " + missing + ".");
  auto seconds = [](const json::Json& v, const std::string& name) {
    if (!v.is_number()) throw RunnerError("cost table: " + name + " must be a number of seconds.");
    return v.get<double>();
  };
  auto lengths = [&](const char* name, std::map<int, double>& into) {
    const json::Json* table = json::find(data, name);
    if (table == nullptr) return;
    if (!table->is_object()) throw RunnerError(std::string("cost table: ") + name + " must be an object of length -> seconds.");
    for (const auto& member : table->items()) {
      const std::string& key = member.key();
      const json::Json& value = member.value();
      size_t used = 0;
      long long n = 0;
      try {
        n = std::stoll(key, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != key.size() || n < std::numeric_limits<int>::min() || n > std::numeric_limits<int>::max()) {
        throw RunnerError(std::string("cost table: ") + name + " has the key '" + key + "'; lengths are whole numbers.");
      }
      into[static_cast<int>(n)] = seconds(value, std::string(name) + "[" + key + "]");
    }
  };
  CostTable costs;
  costs.decode = seconds(*json::find(data, "decode"), "decode");
  costs.draft_step = seconds(*json::find(data, "draft_step"), "draft_step");
  lengths("verify", costs.verify);
  lengths("draft_call", costs.draft_call);
  costs.validate();
  return costs;
}

std::string cost_table_json(const CostTable& costs) {
  using json::number;
  std::string out = "{\"decode\": " + number(costs.decode) + ", \"draft_step\": " + number(costs.draft_step) + ", \"verify\": {";
  bool first = true;
  for (const auto& [n, seconds] : costs.verify) {
    out += (first ? "\"" : ", \"") + std::to_string(n) + "\": " + number(seconds);
    first = false;
  }
  out += "}, \"draft_call\": {";
  first = true;
  for (const auto& [k, seconds] : costs.draft_call) {
    out += (first ? "\"" : ", \"") + std::to_string(k) + "\": " + number(seconds);
    first = false;
  }
  return out + "}}";
}

std::string stats_json(const GenerationStats& s) {
  using json::number;
  std::string out = "{";
  out += "\"prompt_tokens\": " + std::to_string(s.prompt_tokens);
  out += ", \"new_tokens\": " + std::to_string(s.new_tokens);
  out += ", \"rounds\": " + std::to_string(s.rounds);
  out += ", \"drafted\": " + std::to_string(s.drafted);
  out += ", \"accepted\": " + std::to_string(s.accepted);
  out += ", \"prefill_s\": " + number(s.prefill_s);
  out += ", \"decode_s\": " + number(s.decode_s);
  out += ", \"stop_reason\": " + json::quote(s.stop_reason);
  out += ", \"early_stops\": " + std::to_string(s.early_stops);
  out += ", \"draft_calls\": " + std::to_string(s.draft_calls);
  out += ", \"acceptance_rate\": " + number(s.acceptance_rate());
  out += ", \"tokens_per_target_call\": " + number(s.tokens_per_target_call());
  out += ", \"prefill_tokens_per_s\": " + number(s.prefill_tokens_per_s());
  out += ", \"decode_tokens_per_s\": " + number(s.decode_tokens_per_s());
  out += ", \"k_histogram\": " + histogram_json(s.k_histogram);
  out += ", \"plain_rounds\": " + std::to_string(s.plain_rounds());
  out += ", \"policy\": ";
  if (s.policy) {
    const PolicyStats& p = *s.policy;
    out += "{\"rounds\": " + std::to_string(p.rounds) + ", \"k_histogram\": " + histogram_json(p.k_histogram) +
           ", \"plain_rounds\": " + std::to_string(p.plain_rounds) + ", \"probe_rounds\": " + std::to_string(p.probe_rounds) +
           ", \"acceptance\": [";
    for (size_t i = 0; i < p.acceptance.size(); ++i) out += (i ? ", " : "") + number(p.acceptance[i]);
    out += "], \"costs\": " + cost_table_json(p.costs) + ", \"frozen\": " + (p.frozen ? "true" : "false") +
           ", \"cost_source\": " + json::quote(p.cost_source) + "}";
  } else {
    out += "null";
  }
  out += ", \"decode_methods_s\": " + number(s.decode_methods_s);
  out += ", \"runner_s\": " + number(s.runner_s());
  out += ", \"runner_per_round_s\": " + number(s.runner_per_round_s());
  return out + "}";
}

// Input buffers are allocated once at their static shapes and wrapped as tensors once; a call
// only rewrites their values. Outputs are copied out right away: with shared memory arenas the
// next method call may reuse the memory an output tensor points into.
struct Runner::Impl {
  Manifest m;
  std::unique_ptr<Module> module;
  std::unique_ptr<TextCodec> text;
  std::unique_ptr<ChatTemplate> chat;
  std::mutex text_loading;

  // The cache holds one sequence: calls from several threads run one after the other, never
  // interleaved (speculative.one_generation_per_backend). A generation started from inside one on
  // the same runner (an on_token callback) would deadlock, and is refused; measure_costs, which
  // generate calls itself, runs inside the caller's turn.
  std::mutex busy;
  std::atomic<std::thread::id> owner{};
  struct Turn {
    Impl& s;
    bool locked = false;
    Turn(Impl& impl, bool nested_ok) : s(impl) {
      if (s.owner.load() == std::this_thread::get_id()) {
        if (nested_ok) return;
        throw RunnerError("generate was called on a runner from inside a generation on that same runner (an on_token callback?); "
                          "open a second runner, or generate after this one returns.");
      }
      s.busy.lock();
      locked = true;
      s.owner.store(std::this_thread::get_id());
    }
    ~Turn() {
      if (!locked) return;
      s.owner.store(std::thread::id());
      s.busy.unlock();
    }
  };

  std::vector<int64_t> verify_tokens, rows, one_token, start_pos, logits_at, position, validated_length;
  std::vector<float> draft_hidden_in;
  TensorPtr draft_token_t, start_pos_t, logits_at_t, position_t, validated_length_t, draft_hidden_t;
  // verify's tokens [1, n], n = 1..max(prefill_chunk, K + 1) (views of verify_tokens), at index n;
  // its logits_at for a round of n tokens, 0..n-1 (views of rows), at index n.
  std::vector<TensorPtr> verify_tokens_t, rows_t;

  // Outputs of the last target call: logits [n x vocab] and hidden [n x hidden], row-major.
  std::vector<float> logits, hidden;
  // Outputs of the last draft call.
  std::vector<int64_t> candidate_ids;
  std::vector<float> candidate_logits, draft_hidden_out;
  int64_t draft_argmax = 0;
  // Outputs of the last draft_chain call: the draft ids and each step's top candidate probability.
  std::vector<int64_t> chain_ids;
  std::vector<float> chain_top_probs;

  double methods_s = 0.0;  // running total of time inside Module::execute
  // The cost table measured on this runner (warm-up once, then kept current by every generation
  // whose policy follows live timings), as tuning.py keeps one per backend.
  std::optional<CostTable> measured;
  std::optional<AcceptanceEstimate> last_acceptance;  // where the last live generation's estimate ended
  std::optional<std::pair<int, int>> last_probing;    // and where its probing stood (DraftPolicy::probing)

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

  // The prompt from position 0 through verify, prefill_chunk tokens per call (the last chunk as
  // long as what is left), logits at each chunk's last token; logits and hidden of the last prompt
  // token land in logits / hidden.
  void prefill(const std::vector<int64_t>& prompt) {
    const int64_t total = static_cast<int64_t>(prompt.size()), chunk = m.prefill_chunk;
    std::vector<EValue> outputs;
    for (int64_t start = 0; start < total; start += chunk) {
      const int64_t n = std::min(chunk, total - start);
      std::copy(prompt.begin() + start, prompt.begin() + start + n, verify_tokens.begin());
      start_pos[0] = start;
      logits_at[0] = n - 1;
      outputs = run("verify", {*verify_tokens_t[n], *start_pos_t, *logits_at_t});
    }
    copy_out(outputs[0], logits, m.vocab_size, "prefill logits");
    copy_out(outputs[1], hidden, m.hidden_size, "prefill hidden");
  }

  // Tokens [n <= K + 1] at positions start..start+n-1, through verify as they are: its token
  // count is dynamic (1..K + 1), nothing is padded.
  void verify(const std::vector<int64_t>& tokens, int64_t start) {
    const int64_t n = static_cast<int64_t>(tokens.size());
    if (n < 1 || n > m.k + 1) {
      throw RunnerError("verify takes 1.." + std::to_string(m.k + 1) + " tokens on this bundle (exported with K=" +
                        std::to_string(m.k) + "), got " + std::to_string(n) + ".");
    }
    start_pos[0] = start;
    std::copy(tokens.begin(), tokens.end(), verify_tokens.begin());
    const std::vector<EValue> outputs = run("verify", {*verify_tokens_t[n], *start_pos_t, *rows_t[n]});
    copy_out(outputs[0], logits, n * m.vocab_size, "verify logits");
    copy_out(outputs[1], hidden, n * m.hidden_size, "verify hidden");
  }

  // The inputs of draft and draft_chain_k: the last token, its hidden, the constant position of the
  // round and the validated length.
  std::vector<EValue> draft_inputs(int64_t token, const float* hidden_in, int64_t pos, int64_t validated) {
    one_token[0] = token;
    std::memcpy(draft_hidden_in.data(), hidden_in, sizeof(float) * m.hidden_size);
    position[0] = pos;
    validated_length[0] = validated;
    return {*draft_token_t, *draft_hidden_t, *position_t, *validated_length_t};
  }

  // One drafter step from `token` at the constant `position`, reading K/V of positions < validated.
  void draft(int64_t token, const float* hidden_in, int64_t pos, int64_t validated) {
    auto outputs = run("draft", draft_inputs(token, hidden_in, pos, validated));
    copy_out(outputs[0], candidate_ids, m.draft_candidates, "draft candidate_ids");
    copy_out(outputs[1], candidate_logits, m.draft_candidates, "draft candidate_logits");
    copy_out(outputs[2], draft_hidden_out, m.hidden_size, "draft hidden");
    draft_argmax = outputs[3].toTensor().const_data_ptr<int64_t>()[0];
  }

  // n greedy drafter steps in one call (draft_chain_n, n in m.draft_chains), each step's argmax the
  // next step's token: the same drafts as n greedy draft() steps, without a runtime round trip each.
  void draft_chain(int64_t token, const float* hidden_in, int64_t pos, int64_t validated, int64_t n) {
    if (!m.has_draft_chain(n)) {
      throw RunnerError("this bundle has no one-call draft of " + std::to_string(n) + " tokens; draft step by step.");
    }
    const std::string name = draft_chain_name(n);
    auto outputs = run(name.c_str(), draft_inputs(token, hidden_in, pos, validated));
    copy_out(outputs[0], chain_ids, n, "draft_chain draft_ids");
    copy_out(outputs[1], chain_top_probs, n, "draft_chain top_probs");
  }

  // k greedy drafts from one draft_chain_k call into `drafts` (speculative.draft_in_one_call). The
  // call cannot stop early, but an early stop still cuts the drafts before the first step it would
  // have stopped at (each step's top probability comes out of the call), so the verify pays for the
  // rest only.
  void draft_in_one_call(int64_t token, const float* hidden_in, int64_t pos, int64_t k, const std::optional<EarlyStop>& early_stop,
                         std::vector<int64_t>& drafts) {
    draft_chain(token, hidden_in, pos, pos, k);
    int64_t kept = k;
    for (int64_t j = 0; early_stop && j < k; ++j) {
      if (early_stop->stops(static_cast<double>(chain_top_probs[j]))) {
        kept = j;
        break;
      }
    }
    drafts.assign(chain_ids.begin(), chain_ids.begin() + kept);
  }
};

// The program's constant methods (kProgramMetadata) against the manifest, as PteBackend._check_metadata:
// a schema 2 program has none, and a manifest edited to lie about K, context or vocabulary is caught here,
// before any method runs.
static void check_program_metadata(Module& module, const Manifest& m, const std::unordered_set<std::string>* names) {
  std::string absent;
  for (const char* name : kProgramMetadata) {
    if (names == nullptr || names->count(name) == 0) absent += (absent.empty() ? "" : ", ") + std::string(name);
  }
  if (!absent.empty()) {
    throw RunnerError(m.program_path + ": the program has no runtime metadata (constant method(s) " + absent +
                      "); it was exported before bundle schema 3 (which added it). Re-export the bundle with this version of mtp-edge.");
  }
  const std::vector<std::pair<const char*, std::vector<int64_t>>> expected = {
      {"get_schema_version", {kSchemaVersion}}, {"get_k", {m.k}}, {"get_max_seq_len", {m.max_seq_len}},
      {"get_vocab_size", {m.vocab_size}}, {"get_prefill_chunk", {m.prefill_chunk}}, {"get_pad_token", {m.pad_token}},
      {"get_eos_ids", m.eos_token_ids}};
  for (const auto& [name, want] : expected) {
    auto values = module.execute(name);
    std::vector<int64_t> got;
    if (values.ok()) {
      for (const EValue& v : *values) {
        if (v.isInt()) got.push_back(v.toInt());
      }
    }
    if (!values.ok() || got != want) {
      auto list = [](const std::vector<int64_t>& xs, bool bracket) {
        std::string out;
        for (size_t i = 0; i < xs.size(); ++i) out += (i ? ", " : "") + std::to_string(xs[i]);
        return bracket ? "[" + out + "]" : out;
      };
      const bool is_list = std::string(name) == "get_eos_ids";
      throw RunnerError(m.program_path + ": manifest.json says " + std::string(name).substr(4) + " = " + list(want, is_list) +
                        ", but the program was exported with " + (values.ok() ? list(got, is_list) : "an unreadable value") +
                        "; the manifest was edited or belongs to another export. Export the bundle again.");
    }
  }
}

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
  check_program_metadata(*s.module, m, names.ok() ? &*names : nullptr);
  std::vector<std::string> wanted(std::begin(kMethods), std::end(kMethods));
  for (int64_t n : m.draft_chains) wanted.push_back(draft_chain_name(n));  // only those the manifest lists
  for (const std::string& name : wanted) {
    if (name == "draft" && !m.has_drafter) continue;
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
  check_tokens("verify", m.verify_capacity);  // its largest token count

  s.verify_tokens.assign(m.verify_capacity, m.pad_token);
  s.rows.resize(m.k + 1);
  for (int64_t i = 0; i <= m.k; ++i) s.rows[i] = i;
  s.one_token.assign(1, 0);
  s.start_pos.assign(1, 0);
  s.logits_at.assign(1, 0);
  s.position.assign(1, 0);
  s.validated_length.assign(1, 1);
  s.draft_hidden_in.assign(m.hidden_size, 0.0f);
  using Sizes = std::vector<executorch::aten::SizesType>;
  const auto H = static_cast<executorch::aten::SizesType>(m.hidden_size);
  s.verify_tokens_t.resize(1);
  for (int64_t n = 1; n <= m.verify_capacity; ++n) {
    s.verify_tokens_t.push_back(from_blob(s.verify_tokens.data(), Sizes{1, static_cast<executorch::aten::SizesType>(n)}, ScalarType::Long));
  }
  s.rows_t.resize(1);
  for (int64_t n = 1; n <= m.k + 1; ++n) {
    s.rows_t.push_back(from_blob(s.rows.data(), Sizes{static_cast<executorch::aten::SizesType>(n)}, ScalarType::Long));
  }
  s.draft_token_t = from_blob(s.one_token.data(), Sizes{1}, ScalarType::Long);
  s.start_pos_t = from_blob(s.start_pos.data(), Sizes{1}, ScalarType::Long);
  s.logits_at_t = from_blob(s.logits_at.data(), Sizes{1}, ScalarType::Long);
  s.position_t = from_blob(s.position.data(), Sizes{1}, ScalarType::Long);
  s.validated_length_t = from_blob(s.validated_length.data(), Sizes{1}, ScalarType::Long);
  s.draft_hidden_t = from_blob(s.draft_hidden_in.data(), Sizes{H}, ScalarType::Float);
}

Runner::~Runner() = default;

const Manifest& Runner::manifest() const { return impl_->m; }

const TextCodec& Runner::text() {
  Impl& s = *impl_;
  std::lock_guard<std::mutex> lock(s.text_loading);
  if (!s.text) {
    if (s.m.tokenizer_path.empty()) {
      s.text = std::make_unique<TextCodec>((std::filesystem::path(s.m.bundle_dir) / "tokenizer.json").string());
    } else {
      s.text = std::make_unique<TextCodec>(s.m.tokenizer_path, s.m.tokenizer_sha256, s.m.tokenizer_bytes);
    }
  }
  return *s.text;
}

const ChatTemplate& Runner::chat() {
  Impl& s = *impl_;
  {
    std::lock_guard<std::mutex> lock(s.text_loading);
    if (!s.chat) {
      if (!ChatTemplate::present(s.m.chat_template, s.m.tokenizer_config)) {
        throw RunnerError(s.m.bundle_dir + ": no chat template (neither chat_template.jinja nor a \"chat_template\" in "
                          "tokenizer_config.json): its target checkpoint had none; send the prompt as plain text "
                          "(without --chat), or export from a checkpoint folder that has a chat template.");
      }
      s.chat = std::make_unique<ChatTemplate>(s.m.chat_template, s.m.tokenizer_config);
    }
  }
  return *s.chat;
}

bool Runner::has_chat_template() const {
  return ChatTemplate::present(impl_->m.chat_template, impl_->m.tokenizer_config);
}

std::vector<int64_t> Runner::encode_chat(const std::string& messages_json, std::string* rendered) {
  const std::string text = chat().render(messages_json, /*add_generation_prompt=*/true);
  if (rendered != nullptr) *rendered = text;
  return this->text().encode(text, /*add_special_tokens=*/false);
}

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
  if (k != kAutoK) {  // auto: K = the bundle's K (0 without a drafter), always available
    if (k < 0) throw RunnerError("K (draft tokens per round) must be >= 0 or auto, got " + std::to_string(k) + ".");
    if (k > (m.has_drafter ? m.k : 0)) {
      const std::string reason = m.has_drafter ? "it was built for K <= " + std::to_string(m.k) : "it has no drafter";
      throw RunnerError("K=" + std::to_string(k) + " is not available on this bundle: " + reason + ".");
    }
  }
  if (max_new_tokens < 1) throw RunnerError("max_new_tokens must be >= 1, got " + std::to_string(max_new_tokens) + ".");
}

std::vector<int64_t> Runner::score(const std::vector<int64_t>& tokens) {
  Impl& s = *impl_;
  const Impl::Turn turn(s, /*nested_ok=*/false);
  const Manifest& m = s.m;
  const int64_t total = static_cast<int64_t>(tokens.size());
  if (total < 1 || total > m.max_seq_len) {
    throw RunnerError("score takes 1.." + std::to_string(m.max_seq_len) + " tokens on this bundle, got " + std::to_string(total) + ".");
  }
  for (int64_t t : tokens) {
    if (t < 0 || t >= m.vocab_size) {
      throw RunnerError("token id " + std::to_string(t) + " is outside the vocabulary [0, " + std::to_string(m.vocab_size) + ").");
    }
  }
  std::vector<int64_t> out;
  for (int64_t start = 0; start < total; start += m.k + 1) {
    const int64_t n = std::min(m.k + 1, total - start);
    s.verify(std::vector<int64_t>(tokens.begin() + start, tokens.begin() + start + n), start);
    for (int64_t i = 0; i < n; ++i) out.push_back(argmax(s.logits.data() + i * m.vocab_size, m.vocab_size));
  }
  return out;
}

CostTable Runner::measure_costs(int64_t max_k, int repeats) {
  Impl& s = *impl_;
  const Impl::Turn turn(s, /*nested_ok=*/true);
  const Manifest& m = s.m;
  if (max_k < 0 || max_k > (m.has_drafter ? m.k : 0) || max_k + 1 > m.max_seq_len) {
    throw RunnerError("measure_costs: max_k = " + std::to_string(max_k) + " is outside 0.." + std::to_string(m.has_drafter ? m.k : 0) +
                      " on this bundle.");
  }
  // One untimed call of each method, then `repeats` rounds calling every method once, in turn (a
  // loop never repeats one method, and switching costs are part of a round); each entry is its
  // median. runtime/tuning.py's measure_costs times inside rounds since session 12 (each round kind
  // repeated); this one was kept: in turn, every call pays a verify re-plan, which leaves the table
  // pessimistic about drafting, and on the shipped pair's .pte, where drafting barely pays, the
  // runner's greedy auto measured 1.00x, 1.02x, 1.01x, 0.84x and 0.99x plain with it (bench
  // adaptive, five runs of session 12).
  const std::vector<int64_t> zeros(static_cast<size_t>(max_k + 1), 0);
  std::vector<std::vector<int64_t>> verify_tokens;
  for (int64_t n = 1; n <= max_k + 1; ++n) verify_tokens.emplace_back(zeros.begin(), zeros.begin() + n);
  struct Timed {
    std::string kind;
    int n;
    std::function<void()> call;
    std::vector<double> samples;
  };
  std::vector<Timed> calls;
  for (const auto& tokens : verify_tokens) {
    calls.push_back({"verify", static_cast<int>(tokens.size()), [&s, &tokens] { s.verify(tokens, 0); }, {}});
  }
  std::vector<float> hidden;
  if (max_k > 0 && m.has_drafter) {
    s.verify(verify_tokens[1], 0);
    hidden.assign(s.hidden.begin() + m.hidden_size, s.hidden.begin() + 2 * m.hidden_size);  // hidden[-1]
    calls.push_back({"draft_step", 1, [&s, &hidden] { s.draft(0, hidden.data(), 2, 2); }, {}});
    // Each one-call draft the loop may use, from the draft step's inputs.
    for (int64_t n : m.draft_chains) {
      if (n > max_k) break;
      calls.push_back({"draft_call", static_cast<int>(n), [&s, &hidden, n] { s.draft_chain(0, hidden.data(), 2, 2, n); }, {}});
    }
  }
  for (auto& c : calls) c.call();
  for (int r = 0; r < repeats; ++r) {
    for (auto& c : calls) {
      const auto start = Clock::now();
      c.call();
      c.samples.push_back(seconds_since(start));
    }
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t h = v.size() / 2;
    return v.size() % 2 ? v[h] : (v[h - 1] + v[h]) / 2.0;
  };
  CostTable costs;
  costs.draft_step = 0.0;
  for (const auto& c : calls) {
    const double t = median(c.samples);
    if (c.kind == "verify" && c.n == 1) {
      costs.decode = t;
    } else if (c.kind == "verify") {
      costs.verify[c.n] = t;
    } else if (c.kind == "draft_step") {
      costs.draft_step = t;
    } else {
      costs.draft_call[c.n] = t;
    }
  }
  // A time can round to 0 on a coarse clock; the table needs target calls > 0.
  const double tick = 1e-9;
  costs.decode = std::max(costs.decode, tick);
  for (auto& entry : costs.verify) entry.second = std::max(entry.second, tick);
  return costs;
}

Generation Runner::generate(const std::vector<int64_t>& prompt, int64_t k, int64_t max_new_tokens,
                            const SamplingConfig& sampling, const std::function<void(int64_t)>& on_token) {
  GenerateOptions options;
  options.k = k;
  options.max_new_tokens = max_new_tokens;
  options.sampling = sampling;
  return generate(prompt, options, on_token);
}

Generation Runner::generate(const std::vector<int64_t>& prompt, const GenerateOptions& options,
                            const std::function<void(int64_t)>& on_token) {
  const Impl::Turn turn(*impl_, /*nested_ok=*/false);
  const SamplingConfig& sampling = options.sampling;
  const int64_t max_new_tokens = options.max_new_tokens;
  check_request(prompt, options.k, max_new_tokens, sampling);
  Impl& s = *impl_;
  const Manifest& m = s.m;
  const int64_t V = m.vocab_size, H = m.hidden_size, C = m.draft_candidates;
  const int64_t max_draft = m.has_drafter ? m.k : 0;
  if (options.draft_p_min && !(*options.draft_p_min >= 0.0 && *options.draft_p_min <= 1.0)) {
    throw RunnerError("draft_p_min must be a probability in [0, 1], got " + json::number(*options.draft_p_min) + ".");
  }

  // k = auto: a policy picks each round's K (at most max_k); on a bundle without a drafter, K = 0.
  int64_t k = options.k;
  std::optional<DraftPolicy> policy;
  std::string cost_source;
  if (k == kAutoK && max_draft > 0) {
    int64_t bound = options.max_k == -1 ? max_draft : options.max_k;
    if (bound < 0 || bound > max_draft) {
      throw RunnerError("max_k must be in 0.." + std::to_string(max_draft) + " on this bundle, got " + std::to_string(bound) + ".");
    }
    bound = std::min(bound, m.max_seq_len - 2);  // a verify of bound + 1 tokens must fit the cache
    DraftPolicyOptions policy_options;
    if (options.costs) {
      policy_options.frozen = true;
      policy_options.max_k = static_cast<int>(std::min<int64_t>(bound, options.costs->max_k()));
      options.costs->validate();
      if (options.probe_every) policy_options.probe_every = *options.probe_every;
      if (options.probe_k) policy_options.probe_k = *options.probe_k;
      if (options.margin) policy_options.margin = *options.margin;
      if (!options.history.empty()) {
        AcceptanceEstimate start(options.costs->max_k());
        for (const auto& [drafted, accepted] : options.history) start = start.observed(drafted, accepted);
        policy_options.acceptance = start;
      }
      policy.emplace(*options.costs, policy_options);
      cost_source = "given";
    } else if (sampling.depends_on_draft_lengths()) {
      // A seeded run under the rejection rule draws different tokens for different draft lengths:
      // its policy must not follow live timings, or the run would not repeat.
      policy_options.frozen = true;
      policy_options.max_k = static_cast<int>(std::min<int64_t>(bound, default_costs().max_k()));
      policy.emplace(default_costs(), policy_options);
      cost_source = "default";
    } else {
      // Warm-up calls before the prompt is prefilled (which overwrites the positions they wrote).
      if (!s.measured || s.measured->max_k() < bound) s.measured = measure_costs(bound);
      CostTable costs = *s.measured;
      // Sampling drafts step by step (its accept rule needs each step's distribution), so its policy
      // weighs no one-call draft (tuning.make_policy(greedy=False)).
      if (!sampling.greedy()) costs.draft_call.clear();
      policy_options.max_k = static_cast<int>(std::min<int64_t>(bound, costs.max_k()));
      policy_options.acceptance = s.last_acceptance;  // as tuning.starting_acceptance
      policy_options.probing = s.last_probing;        // as tuning.make_policy
      policy.emplace(costs, policy_options);
      cost_source = "measured";
    }
  } else if (k == kAutoK) {
    k = 0;
  }
  // Every call the loop times goes to the policy (a frozen one ignores it).
  auto timer = [&](const char* method, int64_t n_tokens, Clock::time_point start) {
    if (policy) policy->observe_call(method, static_cast<int>(n_tokens), seconds_since(start));
  };

  SplitMix64 rng(sampling.seed);
  Generation result;
  GenerationStats& stats = result.stats;
  std::vector<int64_t>& out = result.tokens;
  stats.prompt_tokens = static_cast<int64_t>(prompt.size());

  const std::vector<int64_t>& eos_ids = options.eos_ids ? *options.eos_ids : m.eos_token_ids;
  // Streams tokens out; true when an EOS ended the generation (it is emitted, as transformers does).
  auto emit = [&](const std::vector<int64_t>& fresh) {
    for (int64_t token : fresh) {
      out.push_back(token);
      if (on_token) on_token(token);
      if (std::find(eos_ids.begin(), eos_ids.end(), token) != eos_ids.end()) {
        stats.stop_reason = "eos";
        return true;
      }
    }
    return false;
  };

  auto started = Clock::now();
  s.prefill(prompt);
  const int64_t first = sampling.coupled() ? coupled_choose(s.logits.data(), V, sampling, sampling.seed, stats.prompt_tokens)
                                           : choose(s.logits.data(), V, sampling, rng);
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
    std::optional<EarlyStop> early_stop;
    if (options.draft_p_min) {
      early_stop.emplace();
      early_stop->p_min = *options.draft_p_min;
    }
    int64_t k_wanted = k;
    bool one_call = !options.draft_p_min;  // a fixed K drafts in one call where it can, unless asked to stop drafts early
    if (policy) {
      const Plan plan = policy->next_plan();
      k_wanted = plan.k;
      one_call = plan.mode == DraftMode::kCall;
    }
    // A round emits at most k_round + 1 tokens and writes positions position..position + k_round:
    // shrink K so that neither the token budget nor the cache can overflow.
    const int64_t k_round = std::min({k_wanted, remaining - 1, m.max_seq_len - 1 - position});
    // One-call drafts are greedy: sampling needs each step's distribution on the runner's side. A
    // shrunk round uses the chain of its own length, if the bundle has one.
    one_call = one_call && sampling.greedy() && m.has_draft_chain(k_round);

    drafts.clear();
    draft_probs.clear();
    if (one_call) {
      const auto call = Clock::now();
      s.draft_in_one_call(out.back(), hidden.data(), position, k_round, early_stop, drafts);
      draft_probs.resize(drafts.size());  // greedy acceptance reads no draft distribution
      timer("draft_call", k_round, call);
      stats.draft_calls += 1;
    } else {
      // Draft up to k_round tokens at the constant position, each step fed the drafter's own projected
      // hidden; a step may stop the draft, judged from its distribution before anything is drawn.
      int64_t token = out.back();
      const float* step_hidden = hidden.data();
      for (int64_t j = 0; j < k_round; ++j) {
        // A step is timed with the work around its call (the stop test, drawing the token), as in speculative.draft.
        const auto call = Clock::now();
        s.draft(token, step_hidden, position, position);
        if (early_stop && early_stop->stops(top_probability(s.candidate_logits.data(), C, sampling))) {
          timer("draft_step", 1, call);
          break;
        }
        if (sampling.coupled()) {  // the noise of the position this draft would take
          token = coupled_draft(s.candidate_ids.data(), s.candidate_logits.data(), C, s.draft_argmax, sampling, sampling.seed,
                                position + 1 + j);
          draft_probs.emplace_back();
        } else {
          auto picked = draft_token(s.candidate_ids.data(), s.candidate_logits.data(), C, s.draft_argmax, sampling, rng);
          token = picked.first;
          draft_probs.push_back(std::move(picked.second));
        }
        drafts.push_back(token);
        draft_hidden = s.draft_hidden_out;
        step_hidden = draft_hidden.data();
        timer("draft_step", 1, call);
      }
    }
    const int64_t drafted = static_cast<int64_t>(drafts.size());

    // Verify [last, d1..dn] in one target pass, keep the accepted prefix plus the target's next token.
    round_tokens.assign(1, out.back());
    round_tokens.insert(round_tokens.end(), drafts.begin(), drafts.end());
    const auto call = Clock::now();
    s.verify(round_tokens, position);
    // Coupled: verify row j chooses the token at position + 1 + j.
    const Acceptance verdict = sampling.coupled() ? coupled_accept(drafts, s.logits.data(), V, sampling, sampling.seed, position + 1)
                                                  : accept_drafts(drafts, draft_probs, s.logits.data(), V, sampling, rng);
    timer("verify", drafted + 1, call);  // with the accept rule, as speculative_decode times it
    fresh.assign(drafts.begin(), drafts.begin() + verdict.accepted);
    fresh.push_back(verdict.next_token);
    hidden.assign(s.hidden.begin() + verdict.accepted * H, s.hidden.begin() + (verdict.accepted + 1) * H);
    if (policy) policy->observe(static_cast<int>(drafted), static_cast<int>(verdict.accepted));

    stats.rounds += 1;
    stats.drafted += drafted;
    stats.accepted += verdict.accepted;
    stats.early_stops += drafted < k_round ? 1 : 0;
    if (static_cast<int64_t>(stats.k_histogram.size()) <= drafted) stats.k_histogram.resize(drafted + 1, 0);
    stats.k_histogram[drafted] += 1;
    // Validated now: the old last token and the accepted drafts. Rollback is only this length
    // change: later passes mask positions >= their own, the drafter those >= validated_length.
    position += verdict.accepted + 1;
    stopped = emit(fresh);
  }
  stats.decode_s = seconds_since(started);
  stats.decode_methods_s = s.methods_s - methods_before;
  stats.new_tokens = static_cast<int64_t>(out.size());
  if (stats.stop_reason.empty()) stats.stop_reason = "max_new_tokens";
  if (policy) {
    PolicyStats p;
    const auto& histogram = policy->histogram();
    for (long long n : histogram) p.rounds += n;
    p.k_histogram.assign(histogram.begin(), histogram.end());
    p.plain_rounds = policy->plain_rounds();
    p.probe_rounds = policy->probe_rounds();
    p.acceptance = policy->acceptance().rates();
    p.costs = policy->costs();
    p.frozen = policy->frozen();
    p.cost_source = cost_source;
    stats.policy = std::move(p);
    // Keep a live-updated table and acceptance for the next generation, as tuning.remember does.
    if (!policy->frozen()) {
      CostTable costs = policy->costs();
      // A sampling run weighed no one-call draft: keep the measured ones for the next greedy run.
      if (costs.draft_call.empty() && s.measured) {
        for (const auto& [n, seconds] : s.measured->draft_call) {
          if (n <= costs.max_k()) costs.draft_call[n] = seconds;
        }
      }
      s.measured = costs;
      s.last_acceptance = policy->acceptance();
      s.last_probing = policy->probing();
    }
  }
  return result;
}

}  // namespace mtp_edge
