#include "manifest.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "errors.h"
#include "json.h"
#include "sha256.h"

namespace mtp_edge {

namespace fs = std::filesystem;
using json::Json;

namespace {

const char* kManifest = "manifest.json";

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;
};

std::vector<TensorSpec> tensor_specs(const Json& list, const std::string& what) {
  std::vector<TensorSpec> specs;
  for (const Json& entry : json::as_array(list, what)) {
    TensorSpec spec;
    spec.name = json::as_string(json::at(entry, "name", what), what + " name");
    for (const Json& d : json::as_array(json::at(entry, "shape", what), what + " shape")) spec.shape.push_back(json::as_int(d, what + " shape"));
    spec.dtype = json::as_string(json::at(entry, "dtype", what), what + " dtype");
    specs.push_back(std::move(spec));
  }
  return specs;
}

// Checks one method's signature against what the runner feeds and reads; `expected` lists
// (shape, dtype) per input then per output in the order export.pte.METHOD_IO gives them.
void check_signature(const Json& methods, const std::string& name, const std::string& path,
                     const std::vector<std::pair<std::vector<int64_t>, std::string>>& inputs,
                     const std::vector<std::pair<std::vector<int64_t>, std::string>>& outputs) {
  const Json& method = json::at(methods, name, "methods");
  const std::string what = "methods." + name;
  auto check = [&](const std::vector<TensorSpec>& got, const std::vector<std::pair<std::vector<int64_t>, std::string>>& want,
                   const char* side) {
    if (got.size() != want.size()) {
      throw RunnerError(path + ": method " + name + " has " + std::to_string(got.size()) + " " + side + ", this runner expects " +
                        std::to_string(want.size()) + "; the bundle was written by another mtp-edge version, re-export it.");
    }
    for (size_t i = 0; i < got.size(); ++i) {
      if (got[i].shape != want[i].first || got[i].dtype != want[i].second) {
        // A dtype mismatch is a bundle this runner cannot read (it reads float32 outputs); a shape
        // mismatch is a manifest whose k / prefill_chunk / sizes disagree with its own methods.
        const std::string hint = got[i].dtype != want[i].second ? " (this runner reads float32 logits and hidden states)"
                                                                 : " (k, prefill_chunk or the model sizes in the manifest disagree with its methods)";
        throw RunnerError(path + ": method " + name + " " + side + " " + got[i].name + " is " + got[i].dtype + shape_text(got[i].shape) +
                          ", this runner expects " + want[i].second + shape_text(want[i].first) + hint +
                          "; re-export the bundle with this version of mtp-edge.");
      }
    }
  };
  check(tensor_specs(json::at(method, "inputs", what), what + ".inputs"), inputs, "inputs");
  check(tensor_specs(json::at(method, "outputs", what), what + ".outputs"), outputs, "outputs");
}

}  // namespace

std::string draft_chain_name(int64_t k) { return "draft_chain_" + std::to_string(k); }

bool Manifest::has_draft_chain(int64_t n) const {
  return std::find(draft_chains.begin(), draft_chains.end(), n) != draft_chains.end();
}

Manifest read_manifest(const std::string& bundle_dir, bool verify_hash) {
  Manifest m;
  m.bundle_dir = bundle_dir;
  std::error_code ec;
  if (!fs::is_directory(bundle_dir, ec)) {
    throw RunnerError(bundle_dir + ": not a folder. Pass a bundle folder written by `mtp-edge export`.");
  }
  const fs::path manifest_path = fs::path(bundle_dir) / kManifest;
  m.manifest_path = manifest_path.string();
  const std::string& path = m.manifest_path;
  if (!fs::is_regular_file(manifest_path, ec)) {
    throw RunnerError(bundle_dir + ": no " + kManifest + "; not a bundle, or its export was interrupted. Export it again.");
  }
  std::ifstream in(manifest_path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  if (!in) throw RunnerError(path + ": cannot read it.");

  Json doc;
  try {
    doc = json::parse(text.str());
  } catch (const json::ParseError& e) {
    throw RunnerError(path + ": not valid JSON (" + e.what() + "); the manifest is damaged, export the bundle again.");
  }
  if (!doc.is_object()) throw RunnerError(path + ": not a bundle manifest (expected a JSON object).");

  // The version first: a newer manifest may have moved every other field.
  const Json* version = json::find(doc, "schema_version");
  std::string version_text = version == nullptr ? "None" : version->is_number() ? std::to_string(static_cast<long long>(json::as_double(*version, "schema_version"))) : "(not a number)";
  if (version == nullptr || !version->is_number() || json::as_double(*version, "schema_version") != double(kSchemaVersion)) {
    const std::string why = version_text == "1"   ? " (schema 1 bundles verify at one padded length)"
                            : version_text == "2" ? " (schema 2 programs carry no runtime metadata (get_k, get_max_seq_len, ...))"
                            : version_text == "3" ? " (schema 3 programs prefill through a separate method)"
                                                  : "";
    throw RunnerError(path + ": bundle schema_version " + version_text + " is not supported" + why + "; this runner reads schema_version " +
                      std::to_string(kSchemaVersion) + ". Re-export the bundle with this version of mtp-edge (or rebuild the runner from the matching sources).");
  }

  try {
    bool has_pte = true;  // a manifest without `formats` is a pte bundle
    std::string formats_text;
    if (const Json* formats = json::find(doc, "formats")) {
      has_pte = false;
      for (const Json& f : json::as_array(*formats, "formats")) {
        const std::string& name = json::as_string(f, "formats");
        formats_text += (formats_text.empty() ? "" : ",") + name;
        has_pte |= name == "pte";
      }
    }
    if (!has_pte) {
      throw RunnerError(bundle_dir + ": this bundle holds " + formats_text + " only, not pte; re-export with --format pte," + formats_text + ".");
    }

    const Json* artifacts = json::find(doc, "artifacts");
    const Json* program = artifacts ? json::find(*artifacts, "program") : nullptr;
    if (program == nullptr) {
      throw RunnerError(path + ": lists no program artifact; the manifest is damaged, export the bundle again.");
    }
    const std::string& file = json::as_string(json::at(*program, "file", "artifacts.program"), "artifacts.program.file");
    m.program_path = (fs::path(bundle_dir) / file).string();
    m.program_bytes = json::as_int(json::at(*program, "bytes", "artifacts.program"), "artifacts.program.bytes");
    m.program_sha256 = json::as_string(json::at(*program, "sha256", "artifacts.program"), "artifacts.program.sha256");
    if (!fs::is_regular_file(m.program_path, ec)) {
      throw RunnerError(bundle_dir + ": missing artifact " + file + " (program) listed in " + kManifest + "; export the bundle again.");
    }
    const auto size = fs::file_size(m.program_path, ec);
    if (ec || static_cast<int64_t>(size) != m.program_bytes || (verify_hash && sha256_file(m.program_path) != m.program_sha256)) {
      throw RunnerError(m.program_path + ": artifact " + file + " was modified after export (sha256 does not match " + kManifest +
                        "); export the bundle again.");
    }

    if (const Json* tokenizer = json::find(*artifacts, "tokenizer")) {
      m.tokenizer_path = (fs::path(bundle_dir) / json::as_string(json::at(*tokenizer, "file", "artifacts.tokenizer"), "artifacts.tokenizer.file")).string();
      m.tokenizer_bytes = json::as_int(json::at(*tokenizer, "bytes", "artifacts.tokenizer"), "artifacts.tokenizer.bytes");
      m.tokenizer_sha256 = json::as_string(json::at(*tokenizer, "sha256", "artifacts.tokenizer"), "artifacts.tokenizer.sha256");
    }
    for (auto [role, into] : {std::pair{"chat_template", &m.chat_template}, std::pair{"tokenizer_config", &m.tokenizer_config}}) {
      if (const Json* entry = json::find(*artifacts, role)) {
        const std::string what = std::string("artifacts.") + role;
        into->path = (fs::path(bundle_dir) / json::as_string(json::at(*entry, "file", what), what + ".file")).string();
        into->bytes = json::as_int(json::at(*entry, "bytes", what), what + ".bytes");
        into->sha256 = json::as_string(json::at(*entry, "sha256", what), what + ".sha256");
      }
    }

    m.k = json::as_int(json::at(doc, "k", "manifest"), "manifest k");
    m.prefill_chunk = json::as_int(json::at(doc, "prefill_chunk", "manifest"), "manifest prefill_chunk");
    const Json& cache = json::at(doc, "cache", "manifest");
    m.max_seq_len = json::as_int(json::at(cache, "max_seq_len", "manifest cache"), "manifest cache.max_seq_len");
    m.buffer_length = json::as_int(json::at(cache, "buffer_length", "manifest cache"), "manifest cache.buffer_length");
    const Json& target = json::at(doc, "target_config", "manifest");
    m.vocab_size = json::as_int(json::at(target, "vocab_size", "manifest target_config"), "manifest target_config.vocab_size");
    m.hidden_size = json::as_int(json::at(target, "hidden_size", "manifest target_config"), "manifest target_config.hidden_size");
    for (const Json& id : json::as_array(json::at(doc, "eos_token_ids", "manifest"), "manifest eos_token_ids")) {
      m.eos_token_ids.push_back(json::as_int(id, "manifest eos_token_ids"));
    }
    if (const Json* rt = json::find(doc, "runtime")) {
      if (const Json* pad = json::find(*rt, "pad_token_for_padding")) m.pad_token = json::as_int(*pad, "manifest runtime.pad_token_for_padding");
    }
    if (m.k < 1 || m.prefill_chunk < 1 || m.max_seq_len < 2 || m.vocab_size < 1 || m.hidden_size < 1) {
      throw RunnerError(path + ": k, prefill_chunk, cache.max_seq_len, vocab_size or hidden_size out of range; the manifest is damaged, export the bundle again.");
    }

    const Json& methods = json::at(doc, "methods", "manifest");
    const int64_t V = m.vocab_size, H = m.hidden_size, K = m.k, C = m.prefill_chunk;
    const std::string i64 = "int64", f32 = "float32";
    // One verify, the target's only method, for a prompt chunk or a round: every token count
    // 1..max(C, K+1) (dynamic; methods.verify.lengths gives its range, the signature its largest
    // shapes), logits at up to max(K+1, 3) of them (export.pte.logits_rows).
    const int64_t longest = std::max(C, K + 1), rows = std::max<int64_t>(K + 1, 3);
    const Json* lengths = json::find(json::at(methods, "verify", "methods"), "lengths");
    const auto* range = lengths == nullptr ? nullptr : &json::as_array(*lengths, "methods.verify.lengths");
    if (range == nullptr || range->size() != 2 || json::as_int((*range)[0], "methods.verify.lengths") > 1 ||
        json::as_int((*range)[1], "methods.verify.lengths") < longest) {
      throw RunnerError(path + ": method verify does not take every token count 1.." + std::to_string(longest) +
                        " (methods.verify.lengths); re-export the bundle with this version of mtp-edge.");
    }
    m.verify_capacity = json::as_int((*range)[1], "methods.verify.lengths");
    const int64_t verify_max = m.verify_capacity;
    check_signature(methods, "verify", path, {{{1, verify_max}, i64}, {{1}, i64}, {{rows}, i64}},
                    {{{rows, V}, f32}, {{rows, H}, f32}});
    m.has_drafter = json::find(methods, "draft") != nullptr;
    if (m.has_drafter) {
      const Json& outs = json::at(json::at(methods, "draft", "methods"), "outputs", "methods.draft");
      const auto specs = tensor_specs(outs, "methods.draft.outputs");
      m.draft_candidates = !specs.empty() && specs[0].shape.size() == 1 ? specs[0].shape[0] : 0;
      const int64_t N = m.draft_candidates;
      check_signature(methods, "draft", path, {{{1}, i64}, {{H}, f32}, {{1}, i64}, {{1}, i64}},
                      {{{N}, i64}, {{N}, f32}, {{H}, f32}, {{1}, i64}});
      // One-call greedy drafts (export.pte.draft_chain_lengths: 2..K; one token is a draft step), each
      // taking the draft step's inputs. Only the lengths listed are used: an older bundle has none.
      for (int64_t n = 2; n <= K; ++n) {
        const std::string name = draft_chain_name(n);
        if (json::find(methods, name) == nullptr) continue;
        check_signature(methods, name, path, {{{1}, i64}, {{H}, f32}, {{1}, i64}, {{1}, i64}}, {{{n}, i64}, {{n}, f32}});
        m.draft_chains.push_back(n);
      }
    }
  } catch (const json::TypeError& e) {
    throw RunnerError(path + ": " + e.what() + "; the manifest is damaged or from another mtp-edge version, export the bundle again.");
  }
  return m;
}

}  // namespace mtp_edge
