/* The C API as a JNI bridge will use it (and a check that mtp_edge_runner.h is plain C):
 *   c_api_example BUNDLE K MAX_NEW_TOKENS TOKEN...
 * K: a number or "auto" (the environment variable MTP_EDGE_COSTS, a cost table as JSON, freezes
 * the policy's costs). Greedy. Prints the new tokens, then the stop reason and how many tokens the
 * callback saw, then the K histogram ("k_histogram D:ROUNDS ...", rounds per draft length). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mtp_edge_runner.h"

static void on_token(int64_t token, void* user_data) {
  (void)token;
  ++*(int*)user_data;
}

int main(int argc, char** argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: c_api_example BUNDLE K|auto MAX_NEW_TOKENS TOKEN...\n");
    return 2;
  }
  char error[1024];
  mtp_runner* runner = mtp_runner_open(argv[1], error, sizeof error);
  if (runner == NULL) {
    fprintf(stderr, "error: %s\n", error);
    return 2;
  }
  const int64_t k = strcmp(argv[2], "auto") == 0 ? MTP_K_AUTO : atoll(argv[2]);
  const int64_t max_new = atoll(argv[3]);
  const size_t prompt_len = (size_t)(argc - 4);
  int64_t* prompt = malloc(sizeof(int64_t) * prompt_len);
  int64_t* out = malloc(sizeof(int64_t) * (size_t)(max_new > 0 ? max_new : 1));
  for (size_t i = 0; i < prompt_len; ++i) prompt[i] = atoll(argv[4 + i]);
  mtp_sampling greedy = {0.0, 0, 1.0, 0, MTP_RULE_REJECTION};
  mtp_draft draft = MTP_DRAFT_DEFAULTS;
  draft.costs_json = getenv("MTP_EDGE_COSTS");
  mtp_stats stats;
  size_t n = 0;
  int streamed = 0;
  int rc = mtp_runner_generate(runner, prompt, prompt_len, k, max_new, &greedy, &draft, out, (size_t)(max_new > 0 ? max_new : 1),
                               &n, &stats, on_token, &streamed, error, sizeof error);
  if (rc != 0) {
    fprintf(stderr, "error: %s\n", error);
  } else {
    for (size_t i = 0; i < n; ++i) printf("%s%lld", i ? " " : "", (long long)out[i]);
    printf("\n%s %d\n", stats.stop_reason, streamed);
    const size_t len = mtp_runner_last_k_histogram(runner, NULL, 0);
    int64_t* counts = malloc(sizeof(int64_t) * (len ? len : 1));
    mtp_runner_last_k_histogram(runner, counts, len);
    printf("k_histogram");
    for (size_t d = 0; d < len; ++d) {
      if (counts[d]) printf(" %zu:%lld", d, (long long)counts[d]);
    }
    printf("\n");
    free(counts);
  }
  free(prompt);
  free(out);
  mtp_runner_close(runner);
  return rc == 0 ? 0 : 2;
}
