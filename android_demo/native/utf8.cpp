#include "utf8.h"

namespace mtp_edge {

namespace {

const char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD

// Well-formed sequences (Unicode Table 3-7): the lead byte fixes the length and the range of the
// second byte (E0, ED, F0, F4 restrict it to exclude overlongs, surrogates and > U+10FFFF).
int sequence_length(unsigned char lead, unsigned char* low, unsigned char* high) {
  *low = 0x80;
  *high = 0xBF;
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) {
    if (lead == 0xE0) *low = 0xA0;
    if (lead == 0xED) *high = 0x9F;
    return 3;
  }
  if (lead >= 0xF0 && lead <= 0xF4) {
    if (lead == 0xF0) *low = 0x90;
    if (lead == 0xF4) *high = 0x8F;
    return 4;
  }
  return 0;  // 80..C1, F5..FF never start a character
}

// Converts `bytes` from the start; stops before a valid but unfinished sequence at the end unless
// `final`. Returns the bytes consumed.
size_t convert(const std::string& bytes, bool final, std::string& out) {
  size_t i = 0;
  const size_t n = bytes.size();
  while (i < n) {
    unsigned char low, high;
    const int length = sequence_length(static_cast<unsigned char>(bytes[i]), &low, &high);
    if (length == 0) {
      out += kReplacement;
      ++i;
      continue;
    }
    size_t j = i + 1;
    bool broken = false;
    for (int k = 1; k < length; ++k, ++j) {
      if (j == n) break;
      const unsigned char c = static_cast<unsigned char>(bytes[j]);
      const unsigned char lo = k == 1 ? low : 0x80, hi = k == 1 ? high : 0xBF;
      if (c < lo || c > hi) {
        broken = true;
        break;
      }
    }
    if (!broken && j - i == static_cast<size_t>(length)) {
      out.append(bytes, i, length);
    } else if (!broken && !final) {
      return i;  // the rest may still complete this character
    } else {
      out += kReplacement;  // the maximal subpart bytes[i, j) as one U+FFFD
    }
    i = j;
  }
  return i;
}

}  // namespace

std::string Utf8Stream::push(const std::string& bytes) {
  pending_ += bytes;
  std::string out;
  pending_.erase(0, convert(pending_, false, out));
  return out;
}

std::string Utf8Stream::finish() {
  std::string out;
  convert(pending_, true, out);
  pending_.clear();
  return out;
}

std::string utf8_lossy(const std::string& bytes) {
  std::string out;
  convert(bytes, true, out);
  return out;
}

}  // namespace mtp_edge
