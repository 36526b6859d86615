// SHA-256 of a file, to check a bundle's program against the sha256 its manifest records.
//
// Written out here because the runner must build where OpenSSL is not available (the Android
// NDK ships none), and the algorithm is short (FIPS 180-4).
#pragma once

#include <cstdint>
#include <string>

namespace mtp_edge {

class Sha256 {
 public:
  Sha256();
  void update(const uint8_t* data, size_t size);
  std::string hex_digest();  // finalizes; call once

 private:
  void block(const uint8_t* chunk);
  uint32_t h_[8];
  uint8_t buffer_[64];
  size_t buffered_ = 0;
  uint64_t length_ = 0;  // bytes hashed so far
};

// Lower-case hex digest of the file's bytes; throws std::runtime_error naming the path if unreadable.
std::string sha256_file(const std::string& path);

}  // namespace mtp_edge
