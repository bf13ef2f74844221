#include "engine/gguf_writer.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/strings.h"

namespace tandem {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF"
constexpr uint32_t kVersion = 3;

template <typename T>
void Put(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}

void PutString(std::string& out, std::string_view s) {
  Put<uint64_t>(out, s.size());
  out.append(s);
}

template <typename T>
std::string Encode(T v) {
  std::string out;
  Put<T>(out, v);
  return out;
}

uint64_t AlignUp(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

}  // namespace

using Value = GgufWriter::Value;

Value Value::Uint8(uint8_t v) { return Value(GgufValueType::kUint8, Encode(v)); }
Value Value::Int8(int8_t v) { return Value(GgufValueType::kInt8, Encode(v)); }
Value Value::Uint16(uint16_t v) { return Value(GgufValueType::kUint16, Encode(v)); }
Value Value::Int16(int16_t v) { return Value(GgufValueType::kInt16, Encode(v)); }
Value Value::Uint32(uint32_t v) { return Value(GgufValueType::kUint32, Encode(v)); }
Value Value::Int32(int32_t v) { return Value(GgufValueType::kInt32, Encode(v)); }
Value Value::Uint64(uint64_t v) { return Value(GgufValueType::kUint64, Encode(v)); }
Value Value::Int64(int64_t v) { return Value(GgufValueType::kInt64, Encode(v)); }
Value Value::Float32(float v) { return Value(GgufValueType::kFloat32, Encode(v)); }
Value Value::Float64(double v) { return Value(GgufValueType::kFloat64, Encode(v)); }
Value Value::Bool(bool v) { return Value(GgufValueType::kBool, Encode<uint8_t>(v ? 1 : 0)); }

Value Value::String(std::string_view v) {
  std::string out;
  PutString(out, v);
  return Value(GgufValueType::kString, std::move(out));
}

Value Value::Array(GgufValueType element_type, const std::vector<Value>& elements) {
  std::string out;
  Put<uint32_t>(out, static_cast<uint32_t>(element_type));
  Put<uint64_t>(out, elements.size());
  for (const Value& e : elements) {
    CHECK(e.type_ == element_type) << "array of " << GgufValueTypeName(element_type) << " given a "
                                   << GgufValueTypeName(e.type_);
    out += e.bytes_;
  }
  return Value(GgufValueType::kArray, std::move(out));
}

Value Value::StringArray(const std::vector<std::string>& v) {
  std::string out;
  Put<uint32_t>(out, static_cast<uint32_t>(GgufValueType::kString));
  Put<uint64_t>(out, v.size());
  for (const std::string& s : v) PutString(out, s);
  return Value(GgufValueType::kArray, std::move(out));
}

Value Value::Int32Array(const std::vector<int32_t>& v) {
  std::string out;
  Put<uint32_t>(out, static_cast<uint32_t>(GgufValueType::kInt32));
  Put<uint64_t>(out, v.size());
  for (int32_t x : v) Put(out, x);
  return Value(GgufValueType::kArray, std::move(out));
}

Value Value::Float32Array(const std::vector<float>& v) {
  std::string out;
  Put<uint32_t>(out, static_cast<uint32_t>(GgufValueType::kFloat32));
  Put<uint64_t>(out, v.size());
  for (float x : v) Put(out, x);
  return Value(GgufValueType::kArray, std::move(out));
}

GgufWriter::GgufWriter(uint64_t alignment) : alignment_(alignment) {
  CHECK(alignment > 0 && (alignment & (alignment - 1)) == 0) << "alignment " << alignment;
}

void GgufWriter::Set(std::string_view key, Value value) {
  for (auto& [k, v] : metadata_) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  metadata_.emplace_back(std::string(key), std::move(value));
}

absl::Status GgufWriter::Add(std::string_view name, GgmlType type, const std::vector<int64_t>& dims,
                             const void* data, int64_t num_bytes, bool copy) {
  const GgmlTypeTraits* traits = FindGgmlType(static_cast<uint32_t>(type));
  if (traits == nullptr) {
    return absl::InvalidArgumentError(
        Cat("tensor '", name, "': unsupported type ", GgmlTypeName(type)));
  }
  if (dims.empty() || dims.size() > 4) {
    return absl::InvalidArgumentError(Cat("tensor '", name, "': ", dims.size(), " dims"));
  }
  int64_t elements = 1;
  for (int64_t d : dims) {
    if (d < 0) return absl::InvalidArgumentError(Cat("tensor '", name, "': dim ", d));
    elements *= d;
  }
  if (dims[0] % traits->block_size != 0) {
    return absl::InvalidArgumentError(Cat("tensor '", name, "': row length ", dims[0],
                                          " not a multiple of ", traits->block_size));
  }
  const int64_t expected = elements / traits->block_size * traits->type_size;
  if (num_bytes != expected) {
    return absl::InvalidArgumentError(
        Cat("tensor '", name, "': ", num_bytes, " bytes given, ", expected, " expected"));
  }
  for (const Tensor& t : tensors_) {
    if (t.name == name) {
      return absl::AlreadyExistsError(Cat("tensor '", name, "' added twice"));
    }
  }
  Tensor t;
  t.name = std::string(name);
  t.type = type;
  t.dims = dims;
  t.num_bytes = num_bytes;
  if (copy) {
    t.owned.assign(static_cast<const char*>(data), num_bytes);
  } else {
    t.data = data;
  }
  t.offset = data_size_;
  data_size_ = AlignUp(data_size_ + num_bytes, alignment_);
  tensors_.push_back(std::move(t));
  return absl::OkStatus();
}

absl::Status GgufWriter::AddTensor(std::string_view name, GgmlType type,
                                   const std::vector<int64_t>& dims, std::string_view bytes) {
  return Add(name, type, dims, bytes.data(), static_cast<int64_t>(bytes.size()), /*copy=*/true);
}

absl::Status GgufWriter::AddTensorView(std::string_view name, GgmlType type,
                                       const std::vector<int64_t>& dims, const void* data) {
  const GgmlTypeTraits* traits = FindGgmlType(static_cast<uint32_t>(type));
  int64_t elements = 1;
  for (int64_t d : dims) elements *= d;
  const int64_t bytes = traits == nullptr ? 0 : elements / traits->block_size * traits->type_size;
  return Add(name, type, dims, data, bytes, /*copy=*/false);
}

std::string GgufWriter::Header() const {
  bool write_alignment = alignment_ != 32;
  for (const auto& kv : metadata_) {
    if (kv.first == "general.alignment") write_alignment = false;
  }
  std::string out;
  Put<uint32_t>(out, kMagic);
  Put<uint32_t>(out, kVersion);
  Put<uint64_t>(out, tensors_.size());
  Put<uint64_t>(out, metadata_.size() + (write_alignment ? 1 : 0));
  if (write_alignment) {
    PutString(out, "general.alignment");
    Put<uint32_t>(out, static_cast<uint32_t>(GgufValueType::kUint32));
    Put<uint32_t>(out, static_cast<uint32_t>(alignment_));
  }
  for (const auto& [key, value] : metadata_) {
    PutString(out, key);
    Put<uint32_t>(out, static_cast<uint32_t>(value.type()));
    out += value.encoded();
  }
  for (const Tensor& t : tensors_) {
    PutString(out, t.name);
    Put<uint32_t>(out, static_cast<uint32_t>(t.dims.size()));
    for (int64_t d : t.dims) Put<uint64_t>(out, static_cast<uint64_t>(d));
    Put<uint32_t>(out, static_cast<uint32_t>(t.type));
    Put<uint64_t>(out, t.offset);
  }
  if (!tensors_.empty()) out.resize(AlignUp(out.size(), alignment_), '\0');
  return out;
}

std::string GgufWriter::Serialize() const {
  std::string out = Header();
  const size_t data_start = out.size();
  for (const Tensor& t : tensors_) {
    out.resize(data_start + t.offset, '\0');
    if (t.data != nullptr) {
      out.append(static_cast<const char*>(t.data), t.num_bytes);
    } else {
      out += t.owned;
    }
  }
  if (!tensors_.empty()) out.resize(data_start + data_size_, '\0');
  return out;
}

absl::Status GgufWriter::WriteFile(const std::string& path) const {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) return absl::UnavailableError(Cat("cannot create ", tmp));
    const std::string header = Header();
    f.write(header.data(), header.size());
    uint64_t pos = 0;
    const std::string zeros(alignment_, '\0');
    for (const Tensor& t : tensors_) {
      f.write(zeros.data(), t.offset - pos);  // padding < alignment
      const char* src = t.data != nullptr ? static_cast<const char*>(t.data) : t.owned.data();
      f.write(src, t.num_bytes);
      pos = t.offset + t.num_bytes;
    }
    if (!tensors_.empty()) f.write(zeros.data(), data_size_ - pos);
    f.flush();
    if (!f) return absl::UnavailableError(Cat("write to ", tmp, " failed"));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return absl::UnavailableError(Cat("cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

}  // namespace tandem
