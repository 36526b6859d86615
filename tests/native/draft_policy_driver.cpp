// Runs draft-policy scenarios from stdin through android_demo/native/draft_policy.cpp and prints
// every plan; tests/test_draft_policy.py runs the same scenarios through runtime/draft_policy.py
// and compares the two outputs bit for bit. Build:
//   g++ -std=c++17 -O2 -ffp-contract=off -I android_demo/native
//       tests/native/draft_policy_driver.cpp android_demo/native/draft_policy.cpp -o draft_policy_driver
//
// One command a line; numbers are C hex floats (0x1.8p-1) so both sides read the same bits:
//   costs <decode> <draft_step> <verify_2> ... <verify_K+1>    a new cost table
//   call <k> <seconds>                                         add draft_call[k] to it
//   policy <max_k> <prior_accept> <prior_reject> <decay> <probe_every> <probe_k> <timing_weight> <frozen 0|1> <margin> <stickiness>
//          [<probe_interval> <plain_streak>]                 (optional: probing to start from)
//   next                      prints "<k> <mode> <probe 0|1> <tokens> <seconds>" (hex floats)
//   plan <max_k> <a_1> ... <a_n>   best_plan on the cost table and these rates; prints as next does
//   observe <drafted> <accepted>
//   time <method> <n_tokens> <seconds>
// A failure prints "error <message>" and drops the policy until the next "policy" line.
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "draft_policy.h"

using namespace mtp_edge;

static double read_double(std::istringstream& in) {
  std::string token;
  if (!(in >> token)) throw std::runtime_error("a number is missing");
  char* end = nullptr;
  const double value = std::strtod(token.c_str(), &end);  // reads hex floats exactly
  if (end == token.c_str() || *end != '\0') throw std::runtime_error("not a number: " + token);
  return value;
}

static int read_int(std::istringstream& in) {
  int value;
  if (!(in >> value)) throw std::runtime_error("an integer is missing");
  return value;
}

static void print(const Plan& plan) {
  std::printf("%d %s %d %a %a\n", plan.k, draft_mode_name(plan.mode), plan.probe ? 1 : 0, plan.tokens, plan.seconds);
}

int main() {
  CostTable costs;
  std::unique_ptr<DraftPolicy> policy;
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string command;
    if (!(in >> command)) continue;
    try {
      if (command == "costs") {
        costs = CostTable{};
        costs.decode = read_double(in);
        costs.draft_step = read_double(in);
        for (int n = 2; in >> std::ws && !in.eof(); ++n) costs.verify[n] = read_double(in);
      } else if (command == "call") {
        const int k = read_int(in);
        costs.draft_call[k] = read_double(in);
      } else if (command == "policy") {
        policy.reset();
        DraftPolicyOptions options;
        options.max_k = read_int(in);
        options.prior_accept = read_double(in);
        options.prior_reject = read_double(in);
        options.decay = read_double(in);
        options.probe_every = read_int(in);
        options.probe_k = read_int(in);
        options.timing_weight = read_double(in);
        options.frozen = read_int(in) != 0;
        options.margin = read_double(in);
        options.stickiness = read_double(in);
        if (in >> std::ws && !in.eof()) {
          const int interval = read_int(in);
          options.probing = std::make_pair(interval, read_int(in));
        }
        policy = std::make_unique<DraftPolicy>(costs, options);
      } else if (command == "plan") {
        const int max_k = read_int(in);
        std::vector<double> rates;
        while (in >> std::ws && !in.eof()) rates.push_back(read_double(in));
        costs.validate();
        print(best_plan(costs, rates, max_k));
      } else if (!policy) {
        throw std::runtime_error("no policy for '" + command + "'");
      } else if (command == "next") {
        print(policy->next_plan());
      } else if (command == "observe") {
        const int drafted = read_int(in);
        policy->observe(drafted, read_int(in));
      } else if (command == "time") {
        std::string method;
        in >> method;
        const int n_tokens = read_int(in);
        policy->observe_call(method, n_tokens, read_double(in));
      } else {
        throw std::runtime_error("unknown command '" + command + "'");
      }
    } catch (const std::exception& e) {
      policy.reset();
      std::printf("error %s\n", e.what());
    }
  }
  return 0;
}
