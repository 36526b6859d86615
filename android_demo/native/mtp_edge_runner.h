/* The runner behind a C interface, for a JNI bridge (or any FFI) to wrap.
 *
 * No C++ type and no exception crosses it: every call that can fail returns 0 on success or
 * nonzero on failure, with the reason (the same one-line message the CLI prints) copied into
 * the caller's `error` buffer. One mtp_runner serves one thread at a time.
 */
#ifndef MTP_EDGE_RUNNER_H
#define MTP_EDGE_RUNNER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mtp_runner mtp_runner;

typedef struct {
  double temperature; /* 0 = greedy */
  int64_t top_k;      /* 0 = off */
  double top_p;       /* 1 = off */
  uint64_t seed;
} mtp_sampling;

typedef struct {
  int64_t prompt_tokens, new_tokens, rounds, drafted, accepted;
  double prefill_s, decode_s;
  double decode_methods_s; /* of decode_s, time inside ExecuTorch methods */
  char stop_reason[16];    /* "eos", "max_new_tokens" or "cache_full" */
} mtp_stats;

/* Called with every new token as soon as it is accepted. */
typedef void (*mtp_token_callback)(int64_t token, void* user_data);

/* Opens a bundle folder (checks the manifest and the program's sha256, loads every method).
 * Returns NULL on failure, with the reason in `error`. */
mtp_runner* mtp_runner_open(const char* bundle_dir, char* error, size_t error_size);

void mtp_runner_close(mtp_runner* runner);

/* The bundle's largest K (0 without a drafter), usable context, vocabulary size. */
int64_t mtp_runner_max_draft(const mtp_runner* runner);
int64_t mtp_runner_max_seq_len(const mtp_runner* runner);
int64_t mtp_runner_vocab_size(const mtp_runner* runner);

/* Generates up to max_new_tokens after the prompt into out_tokens (capacity >= max_new_tokens),
 * sets *out_len and *stats. on_token may be NULL. */
int mtp_runner_generate(mtp_runner* runner, const int64_t* prompt, size_t prompt_len, int64_t k, int64_t max_new_tokens,
                        const mtp_sampling* sampling, int64_t* out_tokens, size_t out_capacity, size_t* out_len,
                        mtp_stats* stats, mtp_token_callback on_token, void* user_data, char* error, size_t error_size);

#ifdef __cplusplus
}
#endif

#endif /* MTP_EDGE_RUNNER_H */
