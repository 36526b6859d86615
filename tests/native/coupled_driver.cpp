// Runs Gumbel-max coupling cases from stdin through android_demo/native/sampling.cpp and prints the
// results; tests/test_coupled_sampling.py runs the same cases through runtime/sampling.py and compares
// the two outputs exactly. Build:
//   g++ -std=c++17 -O2 -ffp-contract=off -I android_demo/native
//       -isystem android_demo/native/third_party/nlohmann_json/include tests/native/coupled_driver.cpp
//       android_demo/native/sampling.cpp android_demo/native/json.cpp -o coupled_driver
//
// One command a line; floats are C hex floats (0x1.8p-1) so both sides read the same bits, seeds
// are decimal uint64, a config is "<temperature> <top_k> <top_p>":
//   log <x>                                    prints portable_log(x) (%a)
//   noise <seed> <position> <n> <id_1> ... <id_n>   prints one line per id: "<bits hex> <g %a>"
//   choose <seed> <position> <config> <n> <logit_1> ... <logit_n>   prints the token
//   draft <seed> <position> <config> <argmax_id> <n> <id_1> ... <id_n> <logit_1> ... <logit_n>
//   accept <seed> <first_position> <config> <vocab> <k> <draft_1> ... <draft_k> <(k + 1) * vocab logits>
//                                              prints "<accepted> <next_token>"
// A failure prints "error <message>".
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "sampling.h"

using namespace mtp_edge;

static std::string word(std::istringstream& in) {
  std::string token;
  if (!(in >> token)) throw std::runtime_error("a field is missing");
  return token;
}

static double read_double(std::istringstream& in) {
  const std::string token = word(in);
  char* end = nullptr;
  const double value = std::strtod(token.c_str(), &end);  // reads hex floats exactly
  if (end == token.c_str() || *end != '\0') throw std::runtime_error("not a number: " + token);
  return value;
}

static int64_t read_int(std::istringstream& in) {
  const std::string token = word(in);
  char* end = nullptr;
  const long long value = std::strtoll(token.c_str(), &end, 10);
  if (end == token.c_str() || *end != '\0') throw std::runtime_error("not an integer: " + token);
  return value;
}

static uint64_t read_u64(std::istringstream& in) {
  const std::string token = word(in);
  char* end = nullptr;
  const unsigned long long value = std::strtoull(token.c_str(), &end, 10);
  if (end == token.c_str() || *end != '\0') throw std::runtime_error("not a uint64: " + token);
  return value;
}

static SamplingConfig read_config(std::istringstream& in) {
  SamplingConfig cfg;
  cfg.temperature = read_double(in);
  cfg.top_k = read_int(in);
  cfg.top_p = read_double(in);
  cfg.validate();
  return cfg;
}

static std::vector<float> read_floats(std::istringstream& in, int64_t n) {
  std::vector<float> values(n);
  for (auto& v : values) v = static_cast<float>(read_double(in));  // float32 values, exact
  return values;
}

static std::vector<int64_t> read_ints(std::istringstream& in, int64_t n) {
  std::vector<int64_t> values(n);
  for (auto& v : values) v = read_int(in);
  return values;
}

int main() {
  std::ios::sync_with_stdio(false);
  std::string line;
  std::string out;
  char buffer[96];
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    try {
      const std::string command = word(in);
      if (command == "log") {
        std::snprintf(buffer, sizeof buffer, "%a\n", portable_log(read_double(in)));
        out += buffer;
      } else if (command == "noise") {
        const uint64_t seed = read_u64(in);
        const int64_t position = read_int(in);
        const std::vector<int64_t> ids = read_ints(in, read_int(in));
        const uint64_t key = noise_row_key(seed, position);
        for (int64_t id : ids) {
          const double g = gumbel_noise(seed, position, id);
          std::snprintf(buffer, sizeof buffer, "%016" PRIx64 " %a\n", noise_bits(key, id), g);
          out += buffer;
        }
      } else if (command == "choose") {
        const uint64_t seed = read_u64(in);
        const int64_t position = read_int(in);
        const SamplingConfig cfg = read_config(in);
        const std::vector<float> logits = read_floats(in, read_int(in));
        out += std::to_string(coupled_choose(logits.data(), static_cast<int64_t>(logits.size()), cfg, seed, position)) + "\n";
      } else if (command == "draft") {
        const uint64_t seed = read_u64(in);
        const int64_t position = read_int(in);
        const SamplingConfig cfg = read_config(in);
        const int64_t argmax_id = read_int(in);
        const int64_t n = read_int(in);
        const std::vector<int64_t> ids = read_ints(in, n);
        const std::vector<float> logits = read_floats(in, n);
        out += std::to_string(coupled_draft(ids.data(), logits.data(), n, argmax_id, cfg, seed, position)) + "\n";
      } else if (command == "accept") {
        const uint64_t seed = read_u64(in);
        const int64_t first_position = read_int(in);
        const SamplingConfig cfg = read_config(in);
        const int64_t vocab = read_int(in);
        const std::vector<int64_t> drafts = read_ints(in, read_int(in));
        const std::vector<float> logits = read_floats(in, (static_cast<int64_t>(drafts.size()) + 1) * vocab);
        const Acceptance a = coupled_accept(drafts, logits.data(), vocab, cfg, seed, first_position);
        out += std::to_string(a.accepted) + " " + std::to_string(a.next_token) + "\n";
      } else {
        throw std::runtime_error("unknown command: " + command);
      }
    } catch (const std::exception& e) {
      out += std::string("error ") + e.what() + "\n";
    }
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}
