// libFuzzer target: SafetensorsFile must turn any byte string into either a parsed file whose
// every tensor lies inside the buffer (ASan checks each one's first and last byte here), or an
// error.
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = tandem::SafetensorsFile::FromBytes(
      std::string(reinterpret_cast<const char*>(data), size), "fuzz");
  if (!file.ok()) return 0;
  volatile uint8_t sink = 0;
  for (const tandem::SafetensorsTensor& t : (*file)->tensors()) {
    if (t.num_bytes > 0) sink = sink ^ t.data[0] ^ t.data[t.num_bytes - 1];
    (void)(*file)->Find(t.name);
  }
  return 0;
}
