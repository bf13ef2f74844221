// Builds GGUF v3 files: metadata of every value type (arrays nest) and tensors. Used by tests
// (tiny synthetic models, hostile files made by patching valid ones) and by synthetic-model
// tooling. The output reads back with GgufFile.
#ifndef TANDEM_ENGINE_GGUF_WRITER_H_
#define TANDEM_ENGINE_GGUF_WRITER_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "engine/gguf_file.h"
#include "kernels/cpu/ggml_types.h"

namespace tandem {

class GgufWriter {
 public:
  // One metadata value, kept encoded (GGUF payload bytes without the type tag).
  class Value {
   public:
    static Value Uint8(uint8_t v);
    static Value Int8(int8_t v);
    static Value Uint16(uint16_t v);
    static Value Int16(int16_t v);
    static Value Uint32(uint32_t v);
    static Value Int32(int32_t v);
    static Value Uint64(uint64_t v);
    static Value Int64(int64_t v);
    static Value Float32(float v);
    static Value Float64(double v);
    static Value Bool(bool v);
    static Value String(std::string_view v);
    // Every element must have type `element_type` (CHECKed); arrays of arrays nest.
    static Value Array(GgufValueType element_type, const std::vector<Value>& elements);
    static Value StringArray(const std::vector<std::string>& v);
    static Value Int32Array(const std::vector<int32_t>& v);
    static Value Float32Array(const std::vector<float>& v);

    GgufValueType type() const { return type_; }
    const std::string& encoded() const { return bytes_; }

   private:
    Value(GgufValueType type, std::string bytes) : type_(type), bytes_(std::move(bytes)) {}
    GgufValueType type_;
    std::string bytes_;
  };

  // `alignment` pads the tensor data; a value other than 32 is also written as
  // general.alignment (uint32) unless Set() gave that key explicitly.
  explicit GgufWriter(uint64_t alignment = 32);

  // Sets `key` (replacing an earlier value, keeping its position).
  void Set(std::string_view key, Value value);
  void SetString(std::string_view key, std::string_view v) { Set(key, Value::String(v)); }
  void SetUint32(std::string_view key, uint32_t v) { Set(key, Value::Uint32(v)); }
  void SetFloat32(std::string_view key, float v) { Set(key, Value::Float32(v)); }
  void SetBool(std::string_view key, bool v) { Set(key, Value::Bool(v)); }

  // Adds a tensor (GGUF dims order: dims[0] is the row length). `bytes` must hold exactly the
  // tensor's encoded size. AddTensor copies; AddTensorView borrows `data`, which must outlive
  // Serialize/WriteFile (for multi-GB synthetic models).
  absl::Status AddTensor(std::string_view name, GgmlType type, const std::vector<int64_t>& dims,
                         std::string_view bytes);
  absl::Status AddTensorView(std::string_view name, GgmlType type, const std::vector<int64_t>& dims,
                             const void* data);

  // The whole file in memory.
  std::string Serialize() const;
  // Writes to `path` through a temporary file and rename, so readers never see a partial file.
  absl::Status WriteFile(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    GgmlType type;
    std::vector<int64_t> dims;
    std::string owned;
    const void* data = nullptr;
    int64_t num_bytes = 0;
    uint64_t offset = 0;
  };
  // Everything before the tensor data, padded to the alignment.
  std::string Header() const;
  absl::Status Add(std::string_view name, GgmlType type, const std::vector<int64_t>& dims,
                   const void* data, int64_t num_bytes, bool copy);

  uint64_t alignment_;
  std::vector<std::pair<std::string, Value>> metadata_;
  std::vector<Tensor> tensors_;
  uint64_t data_size_ = 0;  // of the data section so far (tensors padded to the alignment)
};

}  // namespace tandem

#endif  // TANDEM_ENGINE_GGUF_WRITER_H_
