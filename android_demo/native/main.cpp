// mtp_edge_runner: the native runner's command line, for desktop validation against Python.
//
//   mtp_edge_runner BUNDLE [REQUESTS]      REQUESTS: a file of JSON lines (default or '-': stdin)
//   mtp_edge_runner BUNDLE --info          one JSON line: the bundle's K, context, sizes, load time
//
// One request per line, every field but "prompt" optional:
//   {"prompt": [2, 17, 9], "k": 4, "max_new_tokens": 64, "temperature": 0.7, "top_k": 0, "top_p": 1.0, "seed": 1}
// (k defaults to the bundle's K; sampling defaults to greedy). One result line per request, flushed
// as soon as it is done: {"tokens": [...], "stats": {...}} with the Python GenerationStats fields
// plus decode_methods_s / runner_s / runner_per_round_s (the runner's own time, methods excluded).
// Any error: one line "error: ..." on stderr and exit code 2, after the results already written.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <set>
#include <string>

#include <executorch/runtime/platform/platform.h>

#include "errors.h"
#include "json.h"
#include "runner.h"

namespace {

using mtp_edge::RunnerError;
using mtp_edge::json::Value;

constexpr const char* kUsage =
    "usage: mtp_edge_runner BUNDLE [REQUESTS | --info]\n"
    "  BUNDLE    a bundle folder written by `mtp-edge export` (its model.pte)\n"
    "  REQUESTS  a file of JSON lines, one request each (default, or '-': stdin), e.g.\n"
    "            {\"prompt\": [2, 17, 9], \"k\": 4, \"max_new_tokens\": 64, \"temperature\": 0.7, \"top_k\": 0, \"top_p\": 1.0, \"seed\": 1}\n"
    "  --info    print the bundle's K, context and sizes as one JSON line, and exit\n";

struct Request {
  std::vector<int64_t> prompt;
  int64_t k = 0;
  int64_t max_new_tokens = 64;
  mtp_edge::SamplingConfig sampling;
};

Request parse_request(const std::string& line, const mtp_edge::Manifest& m) {
  Value doc;
  try {
    doc = Value::parse(line);
  } catch (const mtp_edge::json::ParseError& e) {
    throw RunnerError(std::string("not valid JSON (") + e.what() + "); write one JSON object per line.");
  }
  static const std::set<std::string> known = {"prompt", "k", "max_new_tokens", "temperature", "top_k", "top_p", "seed"};
  Request r;
  r.k = m.has_drafter ? m.k : 0;
  try {
    for (const auto& member : doc.as_object("a request")) {
      if (known.count(member.first) == 0) {
        throw RunnerError("unknown field \"" + member.first + "\"; a request takes prompt, k, max_new_tokens, temperature, top_k, top_p, seed.");
      }
    }
    const Value* prompt = doc.find("prompt");
    if (prompt == nullptr) throw RunnerError("no \"prompt\": give the prompt's token ids, e.g. {\"prompt\": [2, 17, 9]}.");
    for (const Value& id : prompt->as_array("prompt")) r.prompt.push_back(id.as_int("a prompt token id"));
    if (const Value* v = doc.find("k")) r.k = v->as_int("k");
    if (const Value* v = doc.find("max_new_tokens")) r.max_new_tokens = v->as_int("max_new_tokens");
    if (const Value* v = doc.find("temperature")) r.sampling.temperature = v->as_double("temperature");
    if (const Value* v = doc.find("top_k")) r.sampling.top_k = v->as_int("top_k");
    if (const Value* v = doc.find("top_p")) r.sampling.top_p = v->as_double("top_p");
    if (const Value* v = doc.find("seed")) r.sampling.seed = v->as_u64_wrapping("seed");
  } catch (const mtp_edge::json::TypeError& e) {
    throw RunnerError(std::string(e.what()) + ".");
  }
  return r;
}

std::string result_line(const mtp_edge::Generation& g) {
  using mtp_edge::json::number;
  const auto& s = g.stats;
  std::string out = "{\"tokens\": [";
  for (size_t i = 0; i < g.tokens.size(); ++i) out += (i ? ", " : "") + std::to_string(g.tokens[i]);
  out += "], \"stats\": {";
  out += "\"prompt_tokens\": " + std::to_string(s.prompt_tokens);
  out += ", \"new_tokens\": " + std::to_string(s.new_tokens);
  out += ", \"rounds\": " + std::to_string(s.rounds);
  out += ", \"drafted\": " + std::to_string(s.drafted);
  out += ", \"accepted\": " + std::to_string(s.accepted);
  out += ", \"prefill_s\": " + number(s.prefill_s);
  out += ", \"decode_s\": " + number(s.decode_s);
  out += ", \"stop_reason\": " + mtp_edge::json::quote(s.stop_reason);
  out += ", \"acceptance_rate\": " + number(s.acceptance_rate());
  out += ", \"tokens_per_target_call\": " + number(s.tokens_per_target_call());
  out += ", \"prefill_tokens_per_s\": " + number(s.prefill_tokens_per_s());
  out += ", \"decode_tokens_per_s\": " + number(s.decode_tokens_per_s());
  out += ", \"decode_methods_s\": " + number(s.decode_methods_s);
  out += ", \"runner_s\": " + number(s.runner_s());
  out += ", \"runner_per_round_s\": " + number(s.runner_per_round_s());
  return out + "}}";
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

int run(int argc, char** argv) {
  if (argc >= 2 && (std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (argc < 2 || argc > 3) {
    std::fputs(kUsage, stderr);
    return fail("expected a bundle folder and at most one requests file.");
  }
  const char* log = std::getenv("MTP_EDGE_RUNNER_LOG");
  g_log_all = log != nullptr && std::string(log) == "all";
  executorch::runtime::register_pal(executorch::runtime::PalImpl::create(log_sink, __FILE__));
  const std::string bundle = argv[1];
  const std::string source = argc == 3 ? argv[2] : "-";

  const auto started = std::chrono::steady_clock::now();
  mtp_edge::Runner runner(bundle);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  const auto& m = runner.manifest();
  if (source == "--info") {
    std::printf("{\"k\": %lld, \"has_drafter\": %s, \"max_seq_len\": %lld, \"prefill_chunk\": %lld, \"vocab_size\": %lld, "
                "\"hidden_size\": %lld, \"draft_candidates\": %lld, \"load_s\": %s}\n",
                (long long)m.k, m.has_drafter ? "true" : "false", (long long)m.max_seq_len, (long long)m.prefill_chunk,
                (long long)m.vocab_size, (long long)m.hidden_size, (long long)m.draft_candidates,
                mtp_edge::json::number(load_s).c_str());
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
      const Request r = parse_request(line, m);
      const auto generation = runner.generate(r.prompt, r.k, r.max_new_tokens, r.sampling);
      std::printf("%s\n", result_line(generation).c_str());
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
