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

/* k = MTP_K_AUTO: a draft policy picks each round's draft length (the default of the CLI and of
 * the Java API): the one with the most expected tokens per second from a cost table of this
 * device's call times and the acceptance so far, 0 (plain decoding) where drafting does not pay. */
#define MTP_K_AUTO (-1)

/* How speculative sampling stays exact (greedy ignores it). Rejection: accept a draft with
 * probability min(1, p/q); a seeded run's tokens depend on the draft lengths. Coupled: Gumbel-max
 * noise per (seed, position, token); a seeded run gives plain seeded sampling's tokens for any K. */
#define MTP_RULE_REJECTION 0
#define MTP_RULE_COUPLED 1

typedef struct {
  double temperature; /* 0 = greedy */
  int64_t top_k;      /* 0 = off */
  double top_p;       /* 1 = off */
  uint64_t seed;
  int32_t rule;       /* MTP_RULE_REJECTION (0) or MTP_RULE_COUPLED */
} mtp_sampling;

/* Drafting options; a NULL mtp_draft* means MTP_DRAFT_DEFAULTS. */
typedef struct {
  int64_t max_k;          /* k = MTP_K_AUTO: the longest draft of a round; -1: the bundle's K */
  double draft_p_min;     /* stop a draft before a step whose top probability is below it; < 0: none
                             (with k = MTP_K_AUTO the cost table then decides) */
  const char* costs_json; /* k = MTP_K_AUTO: a cost table to decide from, frozen, as JSON
                             {"decode": s, "draft_step": s, "verify": {"2": s, ...}} (Python's
                             CostTable.to_json()); NULL: timed on this device (warm-up calls, then
                             every call), or the fixed default table for seeded rejection sampling */
} mtp_draft;

#define MTP_DRAFT_DEFAULTS {-1, -1.0, NULL}

typedef struct {
  int64_t prompt_tokens, new_tokens, rounds, drafted, accepted;
  double prefill_s, decode_s;
  double decode_methods_s; /* of decode_s, time inside ExecuTorch methods */
  char stop_reason[16];    /* "eos", "max_new_tokens" or "cache_full" */
  int64_t early_stops;     /* drafts cut short by draft_p_min */
  int64_t plain_rounds;    /* rounds that drafted nothing */
  int64_t max_drafted;     /* the longest draft of a round (the K histogram has max_drafted + 1 entries) */
  /* k = MTP_K_AUTO on a bundle with a drafter (auto_k = 1); zeros otherwise: */
  int32_t auto_k;
  int32_t costs_frozen;    /* 1 when timings did not change the cost table */
  int64_t probe_rounds;    /* rounds drafted although plain decoding looked faster */
  char cost_source[16];    /* "given" (costs_json), "measured" or "default"; "" without a policy */
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
 * sets *out_len and *stats. k: draft tokens per round (0 = the target alone) or MTP_K_AUTO.
 * sampling NULL: greedy; draft NULL: MTP_DRAFT_DEFAULTS; on_token may be NULL. */
int mtp_runner_generate(mtp_runner* runner, const int64_t* prompt, size_t prompt_len, int64_t k, int64_t max_new_tokens,
                        const mtp_sampling* sampling, const mtp_draft* draft, int64_t* out_tokens, size_t out_capacity,
                        size_t* out_len, mtp_stats* stats, mtp_token_callback on_token, void* user_data, char* error,
                        size_t error_size);

/* Text, through the bundle's tokenizer.json (tokenizers::HFTokenizer), loaded on first use: a bundle
 * without one, or with a modified or malformed one, fails these calls with the reason in `error`
 * (token ids keep working). */

/* The ids of `text` (UTF-8, NUL-terminated) with the tokenizer's special tokens (BOS), as the Python
 * runtime encodes a prompt. Copies at most `capacity` ids (out_ids may be NULL with capacity 0);
 * *out_len = how many there are (call again with more room when it exceeds capacity). */
int mtp_runner_encode(mtp_runner* runner, const char* text, int64_t* out_ids, size_t capacity, size_t* out_len,
                      char* error, size_t error_size);

/* The text of `ids` (UTF-8; invalid bytes as U+FFFD, as the Python `tokenizers` decode). Writes at
 * most size - 1 bytes and a NUL into `buffer` (may be NULL with size 0); *out_len = the full length. */
int mtp_runner_decode(mtp_runner* runner, const int64_t* ids, size_t ids_len, char* buffer, size_t size,
                      size_t* out_len, char* error, size_t error_size);

/* Called with every new token and the text it completes: `length` bytes of UTF-8, not NUL-terminated,
 * often 0 (a character that spans several tokens arrives with its last one). After the last token, a
 * call with token -1 carries what could not be completed (as U+FFFD), only when there is some. */
typedef void (*mtp_text_callback)(int64_t token, const char* text, size_t length, void* user_data);

/* mtp_runner_generate with a text prompt (encoded as mtp_runner_encode does) and streamed text;
 * the new token ids still go to out_tokens, and their whole text to mtp_runner_last_text(). */
int mtp_runner_generate_text(mtp_runner* runner, const char* prompt_text, int64_t k, int64_t max_new_tokens,
                             const mtp_sampling* sampling, const mtp_draft* draft, int64_t* out_tokens,
                             size_t out_capacity, size_t* out_len, mtp_stats* stats, mtp_text_callback on_text,
                             void* user_data, char* error, size_t error_size);

/* Chat, through the bundle's chat template (its tokenizer_config.json or chat_template.jinja, as
 * transformers' apply_chat_template finds it; rendered with add_generation_prompt on). A bundle
 * without one fails these calls with the reason in `error`.
 * messages_json: a JSON array of messages, e.g. [{"role": "user", "content": "Hi"}].
 * mtp_runner_chat_text: the rendered chat; writes at most size - 1 bytes and a NUL into `buffer` (may
 * be NULL with size 0), *out_len = the full length. mtp_runner_encode_chat: its ids (encoded without
 * the tokenizer's own special tokens: the template writes BOS), for mtp_runner_generate; copies at
 * most `capacity`, *out_len = how many there are. */
int mtp_runner_chat_text(mtp_runner* runner, const char* messages_json, char* buffer, size_t size, size_t* out_len,
                         char* error, size_t error_size);
int mtp_runner_encode_chat(mtp_runner* runner, const char* messages_json, int64_t* out_ids, size_t capacity,
                           size_t* out_len, char* error, size_t error_size);
/* 1 when the bundle lists a chat template (the calls above may still refuse a modified one), else 0. */
int mtp_runner_has_chat_template(const mtp_runner* runner);
/* mtp_runner_generate_text with a chat for prompt: its ids as mtp_runner_encode_chat gives them. */
int mtp_runner_generate_chat(mtp_runner* runner, const char* messages_json, int64_t k, int64_t max_new_tokens,
                             const mtp_sampling* sampling, const mtp_draft* draft, int64_t* out_tokens,
                             size_t out_capacity, size_t* out_len, mtp_stats* stats, mtp_text_callback on_text,
                             void* user_data, char* error, size_t error_size);

/* The text of the last mtp_runner_generate_text; returns its length in bytes, writes at most
 * size - 1 of them and a NUL (buffer may be NULL with size 0); 0 after mtp_runner_generate. */
size_t mtp_runner_last_text(const mtp_runner* runner, char* buffer, size_t size);

/* The last successful generation's details. Each copies at most `capacity` values (the pointer may
 * be NULL with capacity 0 to ask for the length) and returns how many there are; 0 before any
 * generation, and for the policy's values when the last one had no policy (k fixed, no drafter). */

/* counts[d] = rounds that drafted d tokens (d = 0: plain rounds); returns max_drafted + 1. */
size_t mtp_runner_last_k_histogram(const mtp_runner* runner, int64_t* counts, size_t capacity);
/* k = auto: counts[k] = rounds the policy planned k drafts for (probes included); returns its max_k + 1. */
size_t mtp_runner_last_planned_histogram(const mtp_runner* runner, int64_t* counts, size_t capacity);
/* k = auto: the cost table the policy ended with: *decode and *draft_step seconds (either may be
 * NULL), verify[i] = seconds of one target call on i + 2 tokens; returns the table's K. */
size_t mtp_runner_last_costs(const mtp_runner* runner, double* decode, double* draft_step, double* verify, size_t capacity);
/* k = auto: the acceptance estimate a_1..a_max_k the policy ended with. */
size_t mtp_runner_last_acceptance(const mtp_runner* runner, double* rates, size_t capacity);
/* The last generation's statistics as the CLI writes them (one JSON object); returns its length,
 * writes at most size - 1 characters and a NUL (buffer may be NULL with size 0). */
size_t mtp_runner_last_stats_json(const mtp_runner* runner, char* buffer, size_t size);

#ifdef __cplusplus
}
#endif

#endif /* MTP_EDGE_RUNNER_H */
