// A GGUF v3 (and v2) reader: memory-mapped, every metadata value type (nested arrays included),
// `general.alignment`, and every count, length and offset checked against the file size.
// A truncated or hostile file is an error, never a crash or an out-of-bounds read.
#ifndef TANDEM_ENGINE_GGUF_FILE_H_
#define TANDEM_ENGINE_GGUF_FILE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/ggml_types.h"

namespace tandem {

enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

std::string_view GgufValueTypeName(GgufValueType type);

// One metadata value, viewed inside the file's bytes (valid while its GgufFile lives). Scalars
// and strings decode on demand; an array keeps its element type, count and byte range, so a
// 49,152-entry vocabulary costs no per-element objects. The parser validated the bytes, so
// every accessor here is bounds-safe.
class GgufValue {
 public:
  GgufValueType type() const { return type_; }

  // Scalars. AsInt takes any integer type that holds the value without loss; AsFloat takes
  // float32 or float64. INVALID_ARGUMENT on any other type.
  absl::StatusOr<int64_t> AsInt() const;
  absl::StatusOr<double> AsFloat() const;
  absl::StatusOr<bool> AsBool() const;
  absl::StatusOr<std::string_view> AsString() const;

  // Arrays (element_type and size are meaningless for other types).
  GgufValueType element_type() const { return element_type_; }
  uint64_t size() const { return count_; }
  // The elements, in order (arrays of arrays nest). Empty for non-arrays. One small object per
  // element: for large arrays prefer GgufFile's typed array getters.
  std::vector<GgufValue> Elements() const;

  // A short rendering: `"llama"`, `30`, `[string x 49152: "<unk>", "<|im_start|>", ...]`.
  std::string Describe(int max_elements = 6) const;

 private:
  friend class GgufFile;
  friend class GgufParser;
  GgufValueType type_ = GgufValueType::kUint8;
  GgufValueType element_type_ = GgufValueType::kUint8;
  uint64_t count_ = 0;             // array elements
  const uint8_t* data_ = nullptr;  // scalar bytes, string bytes, or the array's elements
  uint64_t size_ = 0;              // bytes at data_
};

struct GgufTensorInfo {
  std::string name;
  GgmlType type;
  std::vector<int64_t> dims;  // GGUF order: dims[0] is the fastest-varying (the row length)
  uint64_t offset = 0;        // from the start of the tensor data section
  int64_t num_elements = 0;
  int64_t num_bytes = 0;
  const uint8_t* data = nullptr;  // inside the mapping; valid while the GgufFile lives
};

// Immutable once parsed: const methods may be called from any thread.
class GgufFile {
 public:
  // Maps `path` read-only and parses it.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // Parses a copy of `bytes` (tests, fuzzing).
  static absl::StatusOr<std::unique_ptr<GgufFile>> FromBytes(std::string_view bytes);

  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const;
  uint64_t alignment() const;
  int64_t file_size() const;
  // Byte offset of the tensor data section (tensor offsets count from here).
  uint64_t data_offset() const;

  bool Has(std::string_view key) const;
  // The value's type; NOT_FOUND when absent.
  absl::StatusOr<GgufValueType> TypeOf(std::string_view key) const;
  // Getters fail with NOT_FOUND (absent) or INVALID_ARGUMENT (wrong type), naming the key.
  absl::StatusOr<std::string_view> GetString(std::string_view key) const;
  // Any integer type that holds the value without loss.
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;
  // Float32 or float64.
  absl::StatusOr<double> GetFloat(std::string_view key) const;
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  // String views point into the mapping.
  absl::StatusOr<std::vector<std::string_view>> GetStringArray(std::string_view key) const;
  // Arrays of any integer type.
  absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;
  absl::StatusOr<std::vector<double>> GetFloatArray(std::string_view key) const;
  // Any value, for generic walks and nested arrays. NOT_FOUND when absent.
  absl::StatusOr<GgufValue> GetValue(std::string_view key) const;
  // All metadata keys, in file order.
  std::vector<std::string_view> Keys() const;
  // A short rendering of a value for `tandem model info` and messages.
  std::string DescribeValue(std::string_view key) const;

  const std::vector<GgufTensorInfo>& tensors() const;
  // nullptr when absent.
  const GgufTensorInfo* FindTensor(std::string_view name) const;

 private:
  friend class GgufParser;
  struct Impl;
  explicit GgufFile(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tandem

#endif  // TANDEM_ENGINE_GGUF_FILE_H_
