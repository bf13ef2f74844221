#include "engine/gguf_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "common/strings.h"

namespace tandem {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian uint32
constexpr uint64_t kDefaultAlignment = 32;
constexpr int kMaxArrayDepth = 8;  // bounds the parser's recursion on nested arrays
constexpr uint32_t kMaxDims = 4;   // GGML_MAX_DIMS
// Smallest encodings, used to bound counts by the bytes left before anything is allocated.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;  // key length, type, 1-byte value
constexpr uint64_t kMinTensorInfoBytes =
    8 + 4 + 8 + 4 + 8;  // name length, n_dims, 1 dim, type, offset
constexpr uint64_t kMinStringBytes = 8;
constexpr uint64_t kMinArrayBytes = 4 + 8;

// Bytes of a fixed-size value; 0 for strings and arrays.
uint64_t ScalarSize(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32:
      return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64:
      return 8;
    case GgufValueType::kString:
    case GgufValueType::kArray:
      return 0;
  }
  return 0;
}

bool IsIntegerType(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
      return true;
    default:
      return false;
  }
}

template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Decodes an integer scalar at p; false when a uint64 does not fit in int64.
bool DecodeInt(GgufValueType type, const uint8_t* p, int64_t* out) {
  switch (type) {
    case GgufValueType::kUint8:
      *out = Load<uint8_t>(p);
      return true;
    case GgufValueType::kInt8:
      *out = Load<int8_t>(p);
      return true;
    case GgufValueType::kUint16:
      *out = Load<uint16_t>(p);
      return true;
    case GgufValueType::kInt16:
      *out = Load<int16_t>(p);
      return true;
    case GgufValueType::kUint32:
      *out = Load<uint32_t>(p);
      return true;
    case GgufValueType::kInt32:
      *out = Load<int32_t>(p);
      return true;
    case GgufValueType::kInt64:
      *out = Load<int64_t>(p);
      return true;
    case GgufValueType::kUint64: {
      const uint64_t v = Load<uint64_t>(p);
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
      *out = static_cast<int64_t>(v);
      return true;
    }
    default:
      return false;
  }
}

// Size of the already-validated encoded element at p (a string or an array).
uint64_t EncodedSize(GgufValueType type, const uint8_t* p) {
  if (type == GgufValueType::kString) return 8 + Load<uint64_t>(p);
  if (type != GgufValueType::kArray) return ScalarSize(type);
  const auto elem = static_cast<GgufValueType>(Load<uint32_t>(p));
  const uint64_t count = Load<uint64_t>(p + 4);
  uint64_t size = kMinArrayBytes;
  if (ScalarSize(elem) != 0) return size + count * ScalarSize(elem);
  for (uint64_t i = 0; i < count; ++i) size += EncodedSize(elem, p + size);
  return size;
}

std::string Quote(std::string_view s, size_t max_chars = 40) {
  std::string out = "\"";
  for (size_t i = 0; i < s.size() && i < max_chars; ++i) {
    const unsigned char c = s[i];
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      out += absl::StrFormat("\\x%02x", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > max_chars) out += "...";
  return out + "\"";
}

struct AlignedFree {
  void operator()(uint8_t* p) const { std::free(p); }
};

}  // namespace

std::string_view GgufValueTypeName(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8:
      return "uint8";
    case GgufValueType::kInt8:
      return "int8";
    case GgufValueType::kUint16:
      return "uint16";
    case GgufValueType::kInt16:
      return "int16";
    case GgufValueType::kUint32:
      return "uint32";
    case GgufValueType::kInt32:
      return "int32";
    case GgufValueType::kFloat32:
      return "float32";
    case GgufValueType::kBool:
      return "bool";
    case GgufValueType::kString:
      return "string";
    case GgufValueType::kArray:
      return "array";
    case GgufValueType::kUint64:
      return "uint64";
    case GgufValueType::kInt64:
      return "int64";
    case GgufValueType::kFloat64:
      return "float64";
  }
  return "unknown";
}

// ---------------------------------------------------------------------------------------------
// GgufValue

absl::StatusOr<int64_t> GgufValue::AsInt() const {
  int64_t v = 0;
  if (!IsIntegerType(type_)) {
    return absl::InvalidArgumentError(Cat("expected an integer, found ", GgufValueTypeName(type_)));
  }
  if (!DecodeInt(type_, data_, &v)) {
    return absl::InvalidArgumentError(
        Cat("uint64 value ", Load<uint64_t>(data_), " does not fit in int64"));
  }
  return v;
}

absl::StatusOr<double> GgufValue::AsFloat() const {
  if (type_ == GgufValueType::kFloat32) return static_cast<double>(Load<float>(data_));
  if (type_ == GgufValueType::kFloat64) return Load<double>(data_);
  return absl::InvalidArgumentError(
      Cat("expected float32 or float64, found ", GgufValueTypeName(type_)));
}

absl::StatusOr<bool> GgufValue::AsBool() const {
  if (type_ != GgufValueType::kBool) {
    return absl::InvalidArgumentError(Cat("expected bool, found ", GgufValueTypeName(type_)));
  }
  return data_[0] != 0;
}

absl::StatusOr<std::string_view> GgufValue::AsString() const {
  if (type_ != GgufValueType::kString) {
    return absl::InvalidArgumentError(Cat("expected string, found ", GgufValueTypeName(type_)));
  }
  return std::string_view(reinterpret_cast<const char*>(data_), size_);
}

std::vector<GgufValue> GgufValue::Elements() const {
  std::vector<GgufValue> out;
  if (type_ != GgufValueType::kArray) return out;
  out.reserve(count_);
  const uint64_t fixed = ScalarSize(element_type_);
  const uint8_t* p = data_;
  for (uint64_t i = 0; i < count_; ++i) {
    GgufValue v;
    v.type_ = element_type_;
    if (fixed != 0) {
      v.data_ = p;
      v.size_ = fixed;
      p += fixed;
    } else if (element_type_ == GgufValueType::kString) {
      v.size_ = Load<uint64_t>(p);
      v.data_ = p + 8;
      p += 8 + v.size_;
    } else {
      const uint64_t size = EncodedSize(GgufValueType::kArray, p);
      v.element_type_ = static_cast<GgufValueType>(Load<uint32_t>(p));
      v.count_ = Load<uint64_t>(p + 4);
      v.data_ = p + kMinArrayBytes;
      v.size_ = size - kMinArrayBytes;
      p += size;
    }
    out.push_back(v);
  }
  return out;
}

std::string GgufValue::Describe(int max_elements) const {
  switch (type_) {
    case GgufValueType::kString:
      return Quote(std::string_view(reinterpret_cast<const char*>(data_), size_));
    case GgufValueType::kBool:
      return data_[0] != 0 ? "true" : "false";
    case GgufValueType::kFloat32:
    case GgufValueType::kFloat64:
      return absl::StrFormat("%g", *AsFloat());
    case GgufValueType::kUint64:
      return Cat(Load<uint64_t>(data_));
    case GgufValueType::kArray: {
      std::string out = Cat("[", GgufValueTypeName(element_type_), " x ", count_);
      // Walk only the elements shown: a vocabulary has ~50k of them.
      GgufValue head = *this;
      head.count_ = std::min<uint64_t>(count_, static_cast<uint64_t>(std::max(0, max_elements)));
      const std::vector<GgufValue> shown = head.Elements();
      for (size_t i = 0; i < shown.size(); ++i) {
        out += Cat(i == 0 ? ": " : ", ", shown[i].Describe(max_elements));
      }
      if (shown.size() < count_) out += ", ...";
      return out + "]";
    }
    default: {
      int64_t v = 0;
      DecodeInt(type_, data_, &v);
      return Cat(v);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// GgufFile

struct GgufFile::Impl {
  ~Impl() {
    if (map != nullptr) munmap(map, map_size);
  }

  // The bytes: a read-only mapping, or an owned copy (FromBytes).
  void* map = nullptr;
  size_t map_size = 0;
  std::unique_ptr<uint8_t, AlignedFree> copy;
  const uint8_t* data = nullptr;
  uint64_t size = 0;

  uint32_t version = 0;
  uint64_t alignment = kDefaultAlignment;
  uint64_t data_offset = 0;
  std::vector<std::string_view> keys;  // file order; views into the bytes
  std::vector<GgufValue> values;       // parallel to keys
  absl::flat_hash_map<std::string_view, size_t> key_index;
  std::vector<GgufTensorInfo> tensors;
  absl::flat_hash_map<std::string_view, size_t> tensor_index;  // views into the bytes
};

// Parses the bytes of an Impl. Every read is checked against the bytes left first.
class GgufParser {
 public:
  explicit GgufParser(GgufFile::Impl& impl) : f_(impl), size_(impl.size) {}

  absl::Status Parse() {
    if (size_ < 4 || Load<uint32_t>(f_.data) != kMagic) {
      std::string got = size_ < 4
                            ? "a file of " + std::to_string(size_) + " bytes"
                            : Quote(std::string_view(reinterpret_cast<const char*>(f_.data), 4));
      return absl::InvalidArgumentError(
          Cat("not a GGUF file: expected magic \"GGUF\" at byte offset 0, found ", got));
    }
    pos_ = 4;
    ASSIGN_OR_RETURN(f_.version, U32("version"));
    if (f_.version == 1) {
      return absl::InvalidArgumentError(
          "GGUF version 1 is not supported (it predates 64-bit counts); tandem reads versions "
          "2 and 3: convert the model again with a current llama.cpp");
    }
    if (f_.version != 2 && f_.version != 3) {
      return absl::InvalidArgumentError(
          Cat("unsupported GGUF version ", f_.version, " at byte offset 4; tandem reads 2 and 3"));
    }
    ASSIGN_OR_RETURN(const uint64_t n_tensors, U64("tensor count"));
    ASSIGN_OR_RETURN(const uint64_t n_kv, U64("metadata key/value count"));
    if (n_kv > Remaining() / kMinKvBytes) {
      return Error(
          Cat("metadata key/value count ", n_kv, " cannot fit in the ", Remaining(), " bytes left"),
          16);
    }
    if (n_tensors > Remaining() / kMinTensorInfoBytes) {
      return Error(
          Cat("tensor count ", n_tensors, " cannot fit in the ", Remaining(), " bytes left"), 8);
    }

    f_.keys.reserve(n_kv);
    f_.values.reserve(n_kv);
    for (uint64_t i = 0; i < n_kv; ++i) RETURN_IF_ERROR(ParseKeyValue(i));
    RETURN_IF_ERROR(ReadAlignment());

    if (n_tensors > Remaining() / kMinTensorInfoBytes) {
      return Error(
          Cat("tensor count ", n_tensors, " cannot fit in the ", Remaining(), " bytes left"), 8);
    }
    f_.tensors.reserve(n_tensors);
    for (uint64_t i = 0; i < n_tensors; ++i) RETURN_IF_ERROR(ParseTensorInfo(i));
    return PlaceTensorData();
  }

 private:
  uint64_t Remaining() const { return size_ - pos_; }

  absl::Status Error(std::string_view what, uint64_t offset) const {
    return absl::InvalidArgumentError(Cat("GGUF: ", what, " (at byte offset ", offset, ")"));
  }

  absl::Status Need(uint64_t n, std::string_view what) const {
    if (n <= Remaining()) return absl::OkStatus();
    return Error(
        Cat("truncated file: ", what, " needs ", n, " bytes but only ", Remaining(), " remain"),
        pos_);
  }

  absl::StatusOr<uint32_t> U32(std::string_view what) {
    RETURN_IF_ERROR(Need(4, what));
    const uint32_t v = Load<uint32_t>(f_.data + pos_);
    pos_ += 4;
    return v;
  }

  absl::StatusOr<uint64_t> U64(std::string_view what) {
    RETURN_IF_ERROR(Need(8, what));
    const uint64_t v = Load<uint64_t>(f_.data + pos_);
    pos_ += 8;
    return v;
  }

  absl::StatusOr<std::string_view> String(std::string_view what) {
    const uint64_t at = pos_;
    ASSIGN_OR_RETURN(const uint64_t len, U64(what));
    if (len > Remaining()) {
      return Error(Cat(what, ": string length ", len, " exceeds the ", Remaining(), " bytes left"),
                   at);
    }
    std::string_view s(reinterpret_cast<const char*>(f_.data + pos_), len);
    pos_ += len;
    return s;
  }

  absl::StatusOr<GgufValueType> ValueType(std::string_view what) {
    const uint64_t at = pos_;
    ASSIGN_OR_RETURN(const uint32_t raw, U32(what));
    if (raw > static_cast<uint32_t>(GgufValueType::kFloat64)) {
      return Error(Cat(what, ": unknown value type ", raw), at);
    }
    return static_cast<GgufValueType>(raw);
  }

  // Validates one value of `type` at pos_ and describes it; `what` names it for errors.
  absl::StatusOr<GgufValue> ParseValue(GgufValueType type, int depth, const std::string& what) {
    GgufValue v;
    v.type_ = type;
    const uint64_t at = pos_;
    if (const uint64_t fixed = ScalarSize(type); fixed != 0) {
      RETURN_IF_ERROR(Need(fixed, what));
      v.data_ = f_.data + pos_;
      v.size_ = fixed;
      pos_ += fixed;
      return v;
    }
    if (type == GgufValueType::kString) {
      ASSIGN_OR_RETURN(const std::string_view s, String(what));
      v.data_ = reinterpret_cast<const uint8_t*>(s.data());
      v.size_ = s.size();
      return v;
    }
    // An array: element type, count, elements.
    if (depth >= kMaxArrayDepth) {
      return Error(Cat(what, ": arrays nested deeper than ", kMaxArrayDepth), at);
    }
    ASSIGN_OR_RETURN(v.element_type_, ValueType(Cat(what, ": array element type")));
    ASSIGN_OR_RETURN(v.count_, U64(Cat(what, ": array length")));
    const uint64_t begin = pos_;
    const uint64_t fixed = ScalarSize(v.element_type_);
    const uint64_t min_elem = fixed != 0                                  ? fixed
                              : v.element_type_ == GgufValueType::kString ? kMinStringBytes
                                                                          : kMinArrayBytes;
    if (v.count_ > Remaining() / min_elem) {
      return Error(Cat(what, ": array of ", v.count_, " ", GgufValueTypeName(v.element_type_),
                       " values cannot fit in the ", Remaining(), " bytes left"),
                   at);
    }
    if (fixed != 0) {
      pos_ += v.count_ * fixed;  // fits: checked just above
    } else if (v.element_type_ == GgufValueType::kString) {
      for (uint64_t i = 0; i < v.count_; ++i) {
        if (Remaining() < 8 || Load<uint64_t>(f_.data + pos_) > Remaining() - 8) {
          RETURN_IF_ERROR(String(Cat(what, "[", i, "]")).status());
        }
        pos_ += 8 + Load<uint64_t>(f_.data + pos_);
      }
    } else {
      for (uint64_t i = 0; i < v.count_; ++i) {
        ASSIGN_OR_RETURN(GgufValue elem,
                         ParseValue(v.element_type_, depth + 1, Cat(what, "[", i, "]")));
        (void)elem;
      }
    }
    v.data_ = f_.data + begin;
    v.size_ = pos_ - begin;
    return v;
  }

  absl::Status ParseKeyValue(uint64_t index) {
    const uint64_t at = pos_;
    ASSIGN_OR_RETURN(const std::string_view key, String(Cat("key of metadata entry ", index)));
    const std::string what = Cat("value of key '", key, "'");
    ASSIGN_OR_RETURN(const GgufValueType type, ValueType(what));
    ASSIGN_OR_RETURN(const GgufValue value, ParseValue(type, 0, what));
    if (!f_.key_index.emplace(key, f_.keys.size()).second) {
      return Error(Cat("duplicate metadata key '", key, "'"), at);
    }
    f_.keys.push_back(key);
    f_.values.push_back(value);
    return absl::OkStatus();
  }

  absl::Status ReadAlignment() {
    auto it = f_.key_index.find("general.alignment");
    if (it == f_.key_index.end()) return absl::OkStatus();
    const GgufValue& v = f_.values[it->second];
    absl::StatusOr<int64_t> a = v.AsInt();
    const uint64_t at = static_cast<uint64_t>(v.data_ - f_.data);
    if (!a.ok()) return Error(Cat("general.alignment: ", a.status().message()), at);
    if (*a <= 0 || (*a & (*a - 1)) != 0) {
      return Error(Cat("general.alignment must be a non-zero power of two, found ", *a), at);
    }
    f_.alignment = static_cast<uint64_t>(*a);
    return absl::OkStatus();
  }

  absl::Status ParseTensorInfo(uint64_t index) {
    const uint64_t at = pos_;
    ASSIGN_OR_RETURN(const std::string_view name, String(Cat("name of tensor ", index)));
    const std::string what = Cat("tensor '", name, "'");
    ASSIGN_OR_RETURN(const uint32_t n_dims, U32(Cat(what, ": n_dims")));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return Error(Cat(what, " has ", n_dims, " dimensions; expected 1 to ", kMaxDims), pos_ - 4);
    }
    GgufTensorInfo info;
    info.name = std::string(name);
    int64_t elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      ASSIGN_OR_RETURN(const uint64_t dim, U64(Cat(what, ": dimension ", d)));
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          __builtin_mul_overflow(elements, static_cast<int64_t>(dim), &elements)) {
        return Error(Cat(what, ": element count overflows at dimension ", d, " (", dim, ")"),
                     pos_ - 8);
      }
      info.dims.push_back(static_cast<int64_t>(dim));
    }
    const uint64_t type_at = pos_;
    ASSIGN_OR_RETURN(const uint32_t raw_type, U32(Cat(what, ": type")));
    const GgmlTypeTraits* traits = FindGgmlType(raw_type);
    if (traits == nullptr) {
      return absl::InvalidArgumentError(
          Cat("GGUF: ", what, " has type ", GgmlTypeName(raw_type), " (", raw_type,
              "), which tandem does not support (supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0, "
              "Q6_K) (at byte offset ",
              type_at, ")"));
    }
    info.type = static_cast<GgmlType>(raw_type);
    ASSIGN_OR_RETURN(info.offset, U64(Cat(what, ": data offset")));
    if (info.dims[0] % traits->block_size != 0) {
      return Error(Cat(what, ": row length ", info.dims[0], " is not a multiple of the ",
                       traits->name, " block size ", traits->block_size),
                   at);
    }
    info.num_elements = elements;
    // elements / block_size * type_size: elements is a multiple of block_size (dims[0] is).
    if (__builtin_mul_overflow(elements / traits->block_size, traits->type_size, &info.num_bytes)) {
      return Error(Cat(what, ": byte size overflows"), at);
    }
    if (!f_.tensor_index.emplace(name, f_.tensors.size()).second) {
      return Error(Cat("duplicate tensor name '", name, "'"), at);
    }
    f_.tensors.push_back(std::move(info));
    return absl::OkStatus();
  }

  absl::Status PlaceTensorData() {
    const uint64_t align = f_.alignment;
    // pos_ <= size_ < 2^63 and align <= 2^62, so the sum cannot wrap.
    f_.data_offset = (pos_ + align - 1) / align * align;
    if (f_.tensors.empty()) return absl::OkStatus();  // the data section may be absent
    if (f_.data_offset > size_) {
      return Error(Cat("tensor data section starts at byte ", f_.data_offset,
                       ", past the end of the ", size_, "-byte file"),
                   pos_);
    }
    const uint64_t data_size = size_ - f_.data_offset;
    for (GgufTensorInfo& t : f_.tensors) {
      const std::string what = Cat("tensor '", t.name, "'");
      if (t.offset % align != 0) {
        return Error(
            Cat(what, ": data offset ", t.offset, " is not a multiple of the alignment ", align),
            f_.data_offset);
      }
      if (t.offset > data_size || static_cast<uint64_t>(t.num_bytes) > data_size - t.offset) {
        return Error(Cat(what, ": data [", t.offset, ", +", t.num_bytes, ") lies outside the ",
                         data_size, "-byte data section"),
                     f_.data_offset);
      }
      t.data = f_.data + f_.data_offset + t.offset;
    }
    return absl::OkStatus();
  }

  GgufFile::Impl& f_;
  const uint64_t size_;
  uint64_t pos_ = 0;
};

GgufFile::GgufFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GgufFile::~GgufFile() = default;

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    std::string msg = Cat("cannot open GGUF file ", path, ": ", std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(msg);
    if (err == EACCES) return absl::PermissionDeniedError(msg);
    return absl::UnavailableError(msg);
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(Cat(path, " is not a regular file"));
  }
  auto impl = std::make_unique<Impl>();
  impl->size = static_cast<uint64_t>(st.st_size);
  if (impl->size > 0) {
    void* map = mmap(nullptr, impl->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return absl::UnavailableError(Cat("cannot map ", path, ": ", std::strerror(err)));
    }
    impl->map = map;
    impl->map_size = impl->size;
    impl->data = static_cast<const uint8_t*>(map);
  }
  ::close(fd);  // the mapping keeps the file
  absl::Status s = GgufParser(*impl).Parse();
  if (!s.ok()) return absl::Status(s.code(), Cat(path, ": ", s.message()));
  return std::unique_ptr<GgufFile>(new GgufFile(std::move(impl)));
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::FromBytes(std::string_view bytes) {
  auto impl = std::make_unique<Impl>();
  // 64-byte aligned so tensor data keeps its in-file alignment in memory.
  const size_t alloc = (bytes.size() + 63) / 64 * 64 + 64;
  impl->copy.reset(static_cast<uint8_t*>(std::aligned_alloc(64, alloc)));
  if (impl->copy == nullptr) return absl::ResourceExhaustedError("cannot allocate GGUF copy");
  if (!bytes.empty()) std::memcpy(impl->copy.get(), bytes.data(), bytes.size());
  impl->data = impl->copy.get();
  impl->size = bytes.size();
  RETURN_IF_ERROR(GgufParser(*impl).Parse());
  return std::unique_ptr<GgufFile>(new GgufFile(std::move(impl)));
}

uint32_t GgufFile::version() const { return impl_->version; }
uint64_t GgufFile::alignment() const { return impl_->alignment; }
int64_t GgufFile::file_size() const { return static_cast<int64_t>(impl_->size); }
uint64_t GgufFile::data_offset() const { return impl_->data_offset; }

bool GgufFile::Has(std::string_view key) const { return impl_->key_index.contains(key); }

absl::StatusOr<GgufValue> GgufFile::GetValue(std::string_view key) const {
  auto it = impl_->key_index.find(key);
  if (it == impl_->key_index.end()) {
    return absl::NotFoundError(Cat("GGUF metadata key '", key, "' is missing"));
  }
  return impl_->values[it->second];
}

absl::StatusOr<GgufValueType> GgufFile::TypeOf(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue v, GetValue(key));
  return v.type();
}

namespace {

// Prefixes a getter's error with the key.
template <typename T>
absl::StatusOr<T> NameKey(std::string_view key, absl::StatusOr<T> result) {
  if (result.ok()) return result;
  return absl::Status(result.status().code(),
                      Cat("GGUF metadata key '", key, "': ", result.status().message()));
}

absl::Status ExpectArrayOf(std::string_view key, const GgufValue& v, std::string_view wanted,
                           bool (*ok)(GgufValueType)) {
  if (v.type() == GgufValueType::kArray && ok(v.element_type())) return absl::OkStatus();
  std::string found(GgufValueTypeName(v.type()));
  if (v.type() == GgufValueType::kArray) {
    found = Cat("array of ", GgufValueTypeName(v.element_type()));
  }
  return absl::InvalidArgumentError(
      Cat("GGUF metadata key '", key, "': expected an array of ", wanted, ", found ", found));
}

}  // namespace

absl::StatusOr<std::string_view> GgufFile::GetString(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue v, GetValue(key));
  return NameKey(key, v.AsString());
}

absl::StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue v, GetValue(key));
  return NameKey(key, v.AsInt());
}

absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue v, GetValue(key));
  return NameKey(key, v.AsFloat());
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue v, GetValue(key));
  return NameKey(key, v.AsBool());
}

absl::StatusOr<std::vector<std::string_view>> GgufFile::GetStringArray(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue v, GetValue(key));
  RETURN_IF_ERROR(ExpectArrayOf(key, v, "strings",
                                [](GgufValueType t) { return t == GgufValueType::kString; }));
  // Walk the validated bytes directly: a vocabulary has ~50k entries.
  std::vector<std::string_view> out;
  out.reserve(v.size());
  const uint8_t* p = v.data_;
  for (uint64_t i = 0; i < v.size(); ++i) {
    const uint64_t len = Load<uint64_t>(p);
    out.emplace_back(reinterpret_cast<const char*>(p + 8), len);
    p += 8 + len;
  }
  return out;
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue v, GetValue(key));
  RETURN_IF_ERROR(ExpectArrayOf(key, v, "integers", IsIntegerType));
  std::vector<int64_t> out(v.size());
  const uint64_t elem_size = ScalarSize(v.element_type());
  for (uint64_t i = 0; i < v.size(); ++i) {
    if (!DecodeInt(v.element_type(), v.data_ + i * elem_size, &out[i])) {
      return absl::InvalidArgumentError(
          Cat("GGUF metadata key '", key, "': element ", i, " does not fit in int64"));
    }
  }
  return out;
}

absl::StatusOr<std::vector<double>> GgufFile::GetFloatArray(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue v, GetValue(key));
  RETURN_IF_ERROR(ExpectArrayOf(key, v, "floats", [](GgufValueType t) {
    return t == GgufValueType::kFloat32 || t == GgufValueType::kFloat64;
  }));
  std::vector<double> out(v.size());
  const bool f32 = v.element_type() == GgufValueType::kFloat32;
  for (uint64_t i = 0; i < v.size(); ++i) {
    out[i] = f32 ? Load<float>(v.data_ + 4 * i) : Load<double>(v.data_ + 8 * i);
  }
  return out;
}

std::vector<std::string_view> GgufFile::Keys() const { return impl_->keys; }

std::string GgufFile::DescribeValue(std::string_view key) const {
  absl::StatusOr<GgufValue> v = GetValue(key);
  if (!v.ok()) return "<missing>";
  return v->Describe();
}

const std::vector<GgufTensorInfo>& GgufFile::tensors() const { return impl_->tensors; }

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = impl_->tensor_index.find(name);
  return it == impl_->tensor_index.end() ? nullptr : &impl_->tensors[it->second];
}

}  // namespace tandem
