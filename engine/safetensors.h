// A reader of Hugging Face safetensors files: an 8-byte little-endian header length, a JSON
// header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the
// tensors' bytes (offsets relative to the end of the header). Memory-mapped; every length,
// shape and offset is checked against the file (a truncated or hostile file is an error,
// never an out-of-bounds read). Fuzzed: tests/fuzz/safetensors_fuzzer.cc.
#ifndef TANDEM_ENGINE_SAFETENSORS_H_
#define TANDEM_ENGINE_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace tandem {

enum class SafetensorsDtype { kF32, kF16, kBF16, kOther };

struct SafetensorsTensor {
  std::string name;
  SafetensorsDtype dtype = SafetensorsDtype::kOther;
  std::string dtype_name;     // as written ("BF16", "I64", ...)
  std::vector<int64_t> shape;  // outermost first (PyTorch order)
  const uint8_t* data = nullptr;
  int64_t num_bytes = 0;
  int64_t num_elements = 0;
};

class SafetensorsFile {
 public:
  // INVALID_ARGUMENT naming the file and the problem; NOT_FOUND when it cannot be opened.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // Parses `bytes` (kept by the object): tests and the fuzzer.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> FromBytes(std::string bytes,
                                                                    std::string name = "buffer");
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // nullptr when absent.
  const SafetensorsTensor* Find(std::string_view name) const;
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  // "__metadata__" string values.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Largest header accepted (the format's own reader allows 100 MB).
  static constexpr int64_t kMaxHeaderBytes = 100 << 20;

 private:
  SafetensorsFile() = default;
  absl::Status Parse(const uint8_t* bytes, int64_t size);

  std::string path_;
  std::string owned_;  // FromBytes
  void* map_ = nullptr;
  int64_t map_size_ = 0;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

// Element size of the dtypes the engine reads (F32 4, F16 2, BF16 2); 0 for the rest.
int SafetensorsDtypeBytes(SafetensorsDtype dtype);

}  // namespace tandem

#endif  // TANDEM_ENGINE_SAFETENSORS_H_
