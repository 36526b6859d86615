// What the runner needs from a bundle's manifest.json (written by mtp_edge.export.bundle).
//
// Same checks as the Python `read_manifest`, for the files this runner reads: the schema
// version, the program artifact present and unmodified (size + sha256), the methods' signatures
// (verify, draft, draft_chain_2..K when present; verify's token counts 1..max(prefill_chunk, K+1)). The ONNX artifacts a bundle may also hold are
// not hashed: the runner never reads them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "chat_template.h"

namespace mtp_edge {

// 2: the program's verify takes any token count 1..K+1 (methods.verify.lengths; no decode method)
// where schema 1 had a verify of exactly K + 1 tokens; other versions are refused (re-export the bundle).
constexpr int64_t kSchemaVersion = 4;
// Schema 3's program carries the runtime metadata as constant methods (export/manifest.py
// PROGRAM_METADATA); the runner reads them before anything else and checks them against the manifest.
constexpr const char* kProgramMetadata[] = {"get_schema_version", "get_k",         "get_max_seq_len", "get_vocab_size",
                                            "get_prefill_chunk",  "get_pad_token", "get_eos_ids"};

struct Manifest {
  std::string bundle_dir;
  std::string manifest_path;
  std::string program_path;  // bundle_dir / artifacts.program.file
  std::string program_sha256;
  int64_t program_bytes = 0;

  int64_t k = 0;               // largest K: verify takes n = 1..K + 1 tokens
  // The most tokens the program's verify takes (methods.verify.lengths[1]): max(prefill_chunk, K + 1),
  // or more where the export needed it (3 at least: export.pte.dynamic_lengths). A prompt chunk is
  // a verify of up to prefill_chunk tokens; a round never verifies more than K + 1.
  int64_t verify_capacity = 0;
  int64_t prefill_chunk = 0;   // most prompt tokens per verify call
  int64_t max_seq_len = 0;     // usable cache positions; the buffers carry slack past it
  int64_t buffer_length = 0;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t draft_candidates = 0;  // tokens the drafter's clustered head scores per step
  int64_t pad_token = 0;       // what unused token slots hold (nothing is padded since schema 4)
  std::vector<int64_t> eos_token_ids;
  // artifacts.tokenizer (the target's tokenizer.json), empty when the bundle has none; checked
  // (size + sha256) when the runner first needs text, not at load: token ids work without it.
  std::string tokenizer_path;
  std::string tokenizer_sha256;
  int64_t tokenizer_bytes = -1;
  // artifacts.chat_template (chat_template.jinja) and artifacts.tokenizer_config
  // (tokenizer_config.json: special tokens, maybe the template), copied from the target checkpoint
  // when it had them; empty paths when not. Checked when the runner first needs the chat template.
  ChatTemplateFile chat_template;
  ChatTemplateFile tokenizer_config;
  bool has_drafter = false;
  // Lengths k in 2..K with a draft_chain_k method (k greedy drafter steps in one call), ascending.
  // Bundles exported before these methods have none: the runner then drafts step by step.
  std::vector<int64_t> draft_chains;

  bool has_draft_chain(int64_t n) const;
};

// The method that drafts k greedy tokens in one call (export.pte.draft_chain_name).
std::string draft_chain_name(int64_t k);

// Reads and checks <bundle_dir>/manifest.json; throws RunnerError naming the problem and the fix.
// verify_hash = false skips the sha256 (the size is still checked).
Manifest read_manifest(const std::string& bundle_dir, bool verify_hash = true);

}  // namespace mtp_edge
