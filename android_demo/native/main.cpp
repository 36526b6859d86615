// mtp_edge_runner: the native runner's command line, for desktop validation against Python.
//
//   mtp_edge_runner BUNDLE [REQUESTS]      REQUESTS: a file of JSON lines (default or '-': stdin)
//   mtp_edge_runner BUNDLE --info          one JSON line: the bundle's K, context, sizes, load time
//   mtp_edge_runner BUNDLE --prompt TEXT [--k auto|N] [--max-new-tokens N] [--temperature T] [--top-k N]
//                   [--top-p P] [--seed S] [--rule rejection|coupled] [--chat] [--json]
//                                          the text generated after TEXT, streamed to stdout as whole
//                                          UTF-8 characters arrive (--prompt-ids 2,17,9 instead of a
//                                          text); --json: one line {"prompt_tokens", "tokens", "text", "stats"};
//                                          --chat: TEXT as one user turn of the bundle's chat template
//
// One request per line, every field but "prompt" optional:
//   {"prompt": [2, 17, 9], "k": "auto", "max_new_tokens": 64, "temperature": 0.7, "top_k": 0, "top_p": 1.0, "seed": 1,
//    "rule": "rejection", "max_k": 4, "draft_p_min": 0.2, "costs": {"decode": 0.01, "draft_step": 0.002, "verify": {"2": 0.012}},
//    "probe_every": 16, "probe_k": 2, "margin": 0.05, "history": [[2, 1]], "eos_ids": [1]}
// k: draft tokens per round, or "auto" (the default): a draft policy picks each round's K, at most
// max_k (default the bundle's K), from the cost table `costs` (frozen: the same decisions as a
// Python run given that table) or, without one, from warm-up timings kept current by the calls
// (seeded rejection-rule sampling: the fixed default table). draft_p_min: stop a draft before a
// step whose top probability is below it (without it no draft stops early). rule:
// "rejection" or "coupled" (sampling only). With "costs", probe_every, probe_k, margin and
// history ([drafted, accepted] rounds the acceptance estimate starts from) set the policy as
// Python's DraftPolicy takes them. eos_ids: the tokens that end the generation (default the bundle's). Sampling defaults to greedy. One result line per
// request, flushed as soon as it is done: {"tokens": [...], "stats": {...}} with the Python
// GenerationStats.as_dict() fields (k_histogram, plain_rounds, early_stops, policy) plus
// draft_calls (rounds drafted by one draft_chain_k call) and decode_methods_s / runner_s /
// runner_per_round_s (the runner's own time, methods excluded).
// "prompt" may also be a string: the text, encoded with the bundle's tokenizer.json (BOS as the Python
// runtime adds it); the result then also carries "prompt_tokens" and "text" (the new tokens decoded),
// as does an ids prompt with "decode": true. "chat": true takes a text prompt as one user turn of the
// bundle's chat template, and "messages": [{"role": "user", "content": "..."}, ...] (instead of
// "prompt") a whole chat: rendered as transformers' apply_chat_template(add_generation_prompt=True)
// renders it and encoded without the tokenizer's own special tokens; the result adds "prompt_text".
// {"score": [ids]} instead asks for the target's argmax after each id, teacher-forced (Runner::score):
// answered {"argmax": [...]}; validate --arch arm64 compares ARM's with x86's.
// Any error: one line "error: ..." on stderr and exit code 2, after the results already written.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <optional>
#include <set>
#include <string>

#include <executorch/runtime/platform/platform.h>

#include "errors.h"
#include "json.h"
#include "runner.h"

namespace {

using mtp_edge::RunnerError;
namespace json = mtp_edge::json;
using json::Json;

struct Request {
  std::vector<int64_t> prompt;
  std::optional<std::string> prompt_text;  // a text prompt, encoded by the caller
  std::optional<std::string> chat;         // a chat (JSON array of messages), rendered and encoded by the caller
  bool decode = false;                     // answer with the text of the new tokens too
  std::optional<std::vector<int64_t>> score;  // a score request: teacher-forced argmax, no generation
  mtp_edge::GenerateOptions options;  // k: auto by default
};

constexpr const char* kUsage =
    "usage: mtp_edge_runner BUNDLE [REQUESTS | --info]\n"
    "  BUNDLE    a bundle folder written by `mtp-edge export` (its model.pte)\n"
    "  REQUESTS  a file of JSON lines, one request each (default, or '-': stdin), e.g.\n"
    "            {\"prompt\": [2, 17, 9], \"k\": \"auto\", \"max_new_tokens\": 64, \"temperature\": 0.7, \"top_k\": 0, \"top_p\": 1.0, \"seed\": 1}\n"
    "            more fields: \"rule\" (rejection | coupled), \"max_k\", \"draft_p_min\", \"costs\" (a frozen cost table)\n"
    "            \"prompt\" may be a string (text, through the bundle's tokenizer.json): the result adds \"text\"\n"
    "            \"chat\": true (a text prompt as one user turn) or \"messages\": [{\"role\": \"user\", \"content\": \"...\"}]:\n"
    "            through the bundle's chat template; the result adds \"prompt_text\", the rendered chat\n"
    "  --info    print the bundle's K, context and sizes as one JSON line, and exit\n"
    "   or: mtp_edge_runner BUNDLE --prompt TEXT [--k auto|N] [--max-new-tokens N] [--temperature T] [--top-k N]\n"
    "                      [--top-p P] [--seed S] [--rule rejection|coupled] [--chat] [--json]\n"
    "            the generated text streamed to stdout (--prompt-ids 2,17,9: a prompt of token ids);\n"
    "            --json: one line {\"prompt_tokens\", \"tokens\", \"text\", \"stats\"}; --chat: the prompt as one user\n"
    "            turn of the bundle's chat template (its tokenizer_config.json or chat_template.jinja)\n";

Request parse_request(const std::string& line) {
  Json doc;
  try {
    doc = json::parse(line);
  } catch (const json::ParseError& e) {
    throw RunnerError(std::string("not valid JSON (") + e.what() + "); write one JSON object per line.");
  }
  static const std::set<std::string> known = {"prompt", "k", "max_new_tokens", "temperature", "top_k", "top_p", "seed",
                                              "rule", "max_k", "draft_p_min", "costs", "score", "decode",
                                              "probe_every", "probe_k", "margin", "history", "eos_ids", "chat",
                                              "messages"};
  Request r;  // k: auto unless given
  try {
    for (const auto& member : json::as_object(doc, "a request").items()) {
      if (known.count(member.key()) == 0) {
        throw RunnerError("unknown field \"" + member.key() + "\"; a request takes prompt, k, max_new_tokens, temperature, top_k, "
                          "top_p, seed, rule, max_k, draft_p_min, costs, probe_every, probe_k, margin, history, eos_ids, decode, "
                          "chat (or messages instead of prompt; or score alone).");
      }
    }
    if (const Json* score = json::find(doc, "score")) {
      if (json::as_object(doc, "a request").size() != 1) throw RunnerError("a score request takes \"score\" alone: {\"score\": [2, 17, 9]}.");
      r.score.emplace();
      for (const Json& id : json::as_array(*score, "score")) r.score->push_back(json::as_int(id, "a score token id"));
      return r;
    }
    const Json* prompt = json::find(doc, "prompt");
    const Json* chat = json::find(doc, "chat");
    if (const Json* messages = json::find(doc, "messages")) {
      if (prompt != nullptr) throw RunnerError("give \"prompt\" or \"messages\", not both.");
      if (chat != nullptr) throw RunnerError("\"messages\" is a chat already: drop \"chat\".");
      json::as_array(*messages, "messages");
      r.chat = messages->dump();
      r.decode = true;
    } else if (prompt == nullptr) {
      throw RunnerError("no \"prompt\": give the prompt's token ids or its text, e.g. {\"prompt\": [2, 17, 9]} or {\"prompt\": \"Hello\"}.");
    } else if (chat != nullptr && json::as_bool(*chat, "chat")) {
      if (!prompt->is_string()) throw RunnerError("\"chat\": true takes a text prompt (a string), the user's turn.");
      r.chat = Json::array({Json{{"role", "user"}, {"content", *prompt}}}).dump();
      r.decode = true;
    } else if (prompt->is_string()) {
      r.prompt_text = json::as_string(*prompt, "prompt");
      r.decode = true;
    } else {
      for (const Json& id : json::as_array(*prompt, "prompt")) r.prompt.push_back(json::as_int(id, "a prompt token id"));
    }
    if (const Json* v = json::find(doc, "decode")) r.decode = r.decode || json::as_bool(*v, "decode");
    mtp_edge::GenerateOptions& o = r.options;
    if (const Json* v = json::find(doc, "k")) {
      if (v->is_string() && json::as_string(*v, "k") == "auto") {
        o.k = mtp_edge::kAutoK;
      } else if (v->is_number()) {
        o.k = json::as_int(*v, "k");
        if (o.k < 0) throw RunnerError("K (draft tokens per round) must be >= 0, got " + std::to_string(o.k) + ".");
      } else {
        throw RunnerError("K (draft tokens per round) must be a whole number or 'auto'.");
      }
    }
    if (const Json* v = json::find(doc, "max_new_tokens")) o.max_new_tokens = json::as_int(*v, "max_new_tokens");
    if (const Json* v = json::find(doc, "temperature")) o.sampling.temperature = json::as_double(*v, "temperature");
    if (const Json* v = json::find(doc, "top_k")) o.sampling.top_k = json::as_int(*v, "top_k");
    if (const Json* v = json::find(doc, "top_p")) o.sampling.top_p = json::as_double(*v, "top_p");
    if (const Json* v = json::find(doc, "seed")) o.sampling.seed = json::as_u64_wrapping(*v, "seed");
    if (const Json* v = json::find(doc, "rule")) o.sampling.rule = mtp_edge::parse_sampling_rule(json::as_string(*v, "rule"));
    if (const Json* v = json::find(doc, "max_k"); v != nullptr && !v->is_null()) {
      o.max_k = json::as_int(*v, "max_k");
      if (o.max_k < 0) throw RunnerError("max_k must be >= 0, got " + std::to_string(o.max_k) + ".");
    }
    if (const Json* v = json::find(doc, "draft_p_min"); v != nullptr && !v->is_null()) o.draft_p_min = json::as_double(*v, "draft_p_min");
    if (const Json* v = json::find(doc, "costs"); v != nullptr && !v->is_null()) o.costs = mtp_edge::cost_table_from_json(*v);
    const bool policy_settings = json::find(doc, "probe_every") || json::find(doc, "probe_k") || json::find(doc, "margin") || json::find(doc, "history");
    if (policy_settings && !o.costs) {
      throw RunnerError("probe_every, probe_k, margin and history set a frozen policy: give its \"costs\" too.");
    }
    if (const Json* v = json::find(doc, "probe_every")) o.probe_every = static_cast<int>(json::as_int(*v, "probe_every"));
    if (const Json* v = json::find(doc, "probe_k")) o.probe_k = static_cast<int>(json::as_int(*v, "probe_k"));
    if (const Json* v = json::find(doc, "margin")) o.margin = json::as_double(*v, "margin");
    if (const Json* v = json::find(doc, "history")) {
      for (const Json& round : json::as_array(*v, "history")) {
        const auto& pair = json::as_array(round, "a history round ([drafted, accepted])");
        const int64_t drafted = pair.size() == 2 ? json::as_int(pair[0], "drafted") : -1;
        const int64_t accepted = pair.size() == 2 ? json::as_int(pair[1], "accepted") : -1;
        if (drafted < 0 || accepted < 0 || accepted > drafted) {
          throw RunnerError("a history round is [drafted, accepted] with 0 <= accepted <= drafted.");
        }
        o.history.emplace_back(static_cast<int>(drafted), static_cast<int>(accepted));
      }
    }
    if (const Json* v = json::find(doc, "eos_ids")) {
      o.eos_ids.emplace();
      for (const Json& id : json::as_array(*v, "eos_ids")) o.eos_ids->push_back(json::as_int(id, "an EOS token id"));
    }
  } catch (const json::TypeError& e) {
    throw RunnerError(std::string(e.what()) + ".");
  }
  return r;
}

std::string ids_json(const std::vector<int64_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) out += (i ? ", " : "") + std::to_string(ids[i]);
  return out + "]";
}

// text: the new tokens decoded (with the prompt's ids), or none for an ids-only request.
// prompt_text: the rendered chat of a chat request.
std::string result_line(const mtp_edge::Generation& g, const std::vector<int64_t>* prompt = nullptr,
                        const std::string* text = nullptr, const std::string* prompt_text = nullptr) {
  std::string out = "{";
  if (prompt_text != nullptr) out += "\"prompt_text\": " + json::quote(*prompt_text) + ", ";
  if (prompt != nullptr) out += "\"prompt_tokens\": " + ids_json(*prompt) + ", ";
  out += "\"tokens\": " + ids_json(g.tokens);
  if (text != nullptr) out += ", \"text\": " + json::quote(*text);
  return out + ", \"stats\": " + mtp_edge::stats_json(g.stats) + "}";
}

// ExecuTorch logs at Info level to stderr (thread pool sizing, CPU probing); the contract here is
// that stderr carries at most the runner's one `error:` line, so only ExecuTorch's errors pass,
// prefixed, unless MTP_EDGE_RUNNER_LOG=all asks for everything.
bool g_log_all = false;

void log_sink(et_timestamp_t, et_pal_log_level_t level, const char* filename, const char*, size_t line,
              const char* message, size_t length) {
  if (!g_log_all && level != kError && level != kFatal) return;
  std::fprintf(stderr, "executorch %c %s:%zu] %.*s\n", static_cast<char>(level), filename, line, static_cast<int>(length), message);
}

int fail(const std::string& message) {
  std::fflush(stdout);
  std::fprintf(stderr, "error: %s\n", message.c_str());
  return 2;
}

// --prompt TEXT | --prompt-ids 2,17,9 and the sampling flags: one generation, its text streamed.
struct TextRequest {
  std::optional<std::string> text;
  std::vector<int64_t> ids;
  mtp_edge::GenerateOptions options;
  bool json = false;
  bool chat = false;  // the text as one user turn of the chat template
};

int64_t int_flag(const std::string& flag, const std::string& value) {
  try {
    size_t used = 0;
    const long long v = std::stoll(value, &used);
    if (used == value.size()) return v;
  } catch (const std::exception&) {
  }
  throw RunnerError(flag + " takes a whole number, got '" + value + "'.");
}

double real_flag(const std::string& flag, const std::string& value) {
  try {
    size_t used = 0;
    const double v = std::stod(value, &used);
    if (used == value.size()) return v;
  } catch (const std::exception&) {
  }
  throw RunnerError(flag + " takes a number, got '" + value + "'.");
}

TextRequest parse_flags(int argc, char** argv) {
  TextRequest r;
  bool has_prompt = false;
  for (int i = 2; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--json" || flag == "--chat") {
      (flag == "--json" ? r.json : r.chat) = true;
      continue;
    }
    if (i + 1 >= argc) throw RunnerError(flag + " needs a value (or is not an option; see --help).");
    const std::string value = argv[++i];
    mtp_edge::GenerateOptions& o = r.options;
    if (flag == "--prompt") {
      r.text = value;
      has_prompt = true;
    } else if (flag == "--prompt-ids") {
      size_t start = 0;
      while (start <= value.size()) {
        const size_t comma = std::min(value.find(',', start), value.size());
        if (comma > start) r.ids.push_back(int_flag("--prompt-ids", value.substr(start, comma - start)));
        start = comma + 1;
      }
      has_prompt = true;
    } else if (flag == "--k") {
      o.k = value == "auto" ? mtp_edge::kAutoK : int_flag(flag, value);
      if (o.k < 0 && value != "auto") throw RunnerError("--k takes a number >= 0 or 'auto', got " + value + ".");
    } else if (flag == "--max-new-tokens") {
      o.max_new_tokens = int_flag(flag, value);
    } else if (flag == "--temperature") {
      o.sampling.temperature = real_flag(flag, value);
    } else if (flag == "--top-k") {
      o.sampling.top_k = int_flag(flag, value);
    } else if (flag == "--top-p") {
      o.sampling.top_p = real_flag(flag, value);
    } else if (flag == "--seed") {
      o.sampling.seed = static_cast<uint64_t>(int_flag(flag, value));
    } else if (flag == "--rule") {
      o.sampling.rule = mtp_edge::parse_sampling_rule(value);
    } else {
      throw RunnerError("unknown option " + flag + "; see mtp_edge_runner --help.");
    }
  }
  if (!has_prompt) throw RunnerError("give --prompt TEXT (or --prompt-ids 2,17,9).");
  if (r.chat && !r.text) throw RunnerError("--chat takes --prompt TEXT (the user's turn), not --prompt-ids.");
  return r;
}

int generate_text(mtp_edge::Runner& runner, const TextRequest& r) {
  const mtp_edge::TextCodec& codec = runner.text();
  std::string rendered;
  const std::vector<int64_t> prompt =
      r.chat ? runner.encode_chat(Json::array({Json{{"role", "user"}, {"content", *r.text}}}).dump(), &rendered)
             : r.text ? codec.encode(*r.text) : r.ids;
  mtp_edge::TextStream stream(codec);
  std::string text;
  const auto on_token = [&](int64_t token) {
    const std::string piece = stream.push(token);
    text += piece;
    if (!r.json && !piece.empty()) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }
  };
  const mtp_edge::Generation g = runner.generate(prompt, r.options, on_token);
  const std::string rest = stream.finish();
  text += rest;
  if (r.json) {
    std::printf("%s\n", result_line(g, &prompt, &text, r.chat ? &rendered : nullptr).c_str());
  } else {
    std::printf("%s\n", rest.c_str());
  }
  return 0;
}

int run(int argc, char** argv) {
  if (argc >= 2 && (std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  const bool flags = argc >= 3 && std::string(argv[2]).rfind("--", 0) == 0 && std::string(argv[2]) != "--info";
  if (argc < 2 || (argc > 3 && !flags)) {
    std::fputs(kUsage, stderr);
    return fail("expected a bundle folder and at most one requests file (or --prompt TEXT and options).");
  }
  const char* log = std::getenv("MTP_EDGE_RUNNER_LOG");
  g_log_all = log != nullptr && std::string(log) == "all";
  executorch::runtime::register_pal(executorch::runtime::PalImpl::create(log_sink, __FILE__));
  const std::string bundle = argv[1];
  const std::string source = argc == 3 ? argv[2] : "-";
  std::optional<TextRequest> text_request;
  if (flags) text_request = parse_flags(argc, argv);  // before loading: a typo fails fast

  const auto started = std::chrono::steady_clock::now();
  mtp_edge::Runner runner(bundle);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  const auto& m = runner.manifest();
  if (text_request) return generate_text(runner, *text_request);
  if (source == "--info") {
    std::printf("{\"k\": %lld, \"has_drafter\": %s, \"max_seq_len\": %lld, \"prefill_chunk\": %lld, \"vocab_size\": %lld, "
                "\"hidden_size\": %lld, \"draft_candidates\": %lld, \"load_s\": %s}\n",
                (long long)m.k, m.has_drafter ? "true" : "false", (long long)m.max_seq_len, (long long)m.prefill_chunk,
                (long long)m.vocab_size, (long long)m.hidden_size, (long long)m.draft_candidates,
                json::number(load_s).c_str());
    return 0;
  }

  std::ifstream file;
  if (source != "-") {
    file.open(source);
    if (!file) return fail(source + ": cannot open the requests file.");
  }
  std::istream& in = source == "-" ? std::cin : file;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank lines separate nothing
    try {
      const Request r = parse_request(line);
      if (r.score) {
        const std::vector<int64_t> best = runner.score(*r.score);
        std::string out = "{\"argmax\": [";
        for (size_t i = 0; i < best.size(); ++i) out += (i ? ", " : "") + std::to_string(best[i]);
        std::printf("%s]}\n", out.c_str());
      } else if (r.decode) {
        std::string rendered;
        const std::vector<int64_t> prompt = r.chat          ? runner.encode_chat(*r.chat, &rendered)
                                            : r.prompt_text ? runner.text().encode(*r.prompt_text)
                                                            : r.prompt;
        const mtp_edge::Generation g = runner.generate(prompt, r.options);
        const std::string text = runner.text().decode(g.tokens);
        std::printf("%s\n", result_line(g, &prompt, &text, r.chat ? &rendered : nullptr).c_str());
      } else {
        std::printf("%s\n", result_line(runner.generate(r.prompt, r.options)).c_str());
      }
      std::fflush(stdout);
    } catch (const RunnerError& e) {
      return fail("request line " + std::to_string(number) + ": " + e.what());
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {  // a bundle that cannot be opened, or anything unforeseen
    return fail(e.what());
  }
}
