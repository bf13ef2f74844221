#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <utility>

#include "common/status_macros.h"
#include "common/strings.h"
#include "nlohmann/json.hpp"

namespace tandem {
namespace {

using json = nlohmann::json;

// Every dtype of the format with its element size, so that any valid file parses (the
// engine then refuses what it cannot use, naming it).
struct DtypeInfo {
  const char* name;
  int bytes;
  SafetensorsDtype dtype;
};
constexpr DtypeInfo kDtypes[] = {
    {"F64", 8, SafetensorsDtype::kOther},   {"F32", 4, SafetensorsDtype::kF32},
    {"F16", 2, SafetensorsDtype::kF16},     {"BF16", 2, SafetensorsDtype::kBF16},
    {"I64", 8, SafetensorsDtype::kOther},   {"U64", 8, SafetensorsDtype::kOther},
    {"I32", 4, SafetensorsDtype::kOther},   {"U32", 4, SafetensorsDtype::kOther},
    {"I16", 2, SafetensorsDtype::kOther},   {"U16", 2, SafetensorsDtype::kOther},
    {"I8", 1, SafetensorsDtype::kOther},    {"U8", 1, SafetensorsDtype::kOther},
    {"BOOL", 1, SafetensorsDtype::kOther},  {"F8_E4M3", 1, SafetensorsDtype::kOther},
    {"F8_E5M2", 1, SafetensorsDtype::kOther},
};

const DtypeInfo* FindDtype(const std::string& name) {
  for (const DtypeInfo& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

}  // namespace

int SafetensorsDtypeBytes(SafetensorsDtype dtype) {
  switch (dtype) {
    case SafetensorsDtype::kF32: return 4;
    case SafetensorsDtype::kF16:
    case SafetensorsDtype::kBF16: return 2;
    case SafetensorsDtype::kOther: return 0;
  }
  return 0;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) munmap(map_, static_cast<size_t>(map_size_));
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(Cat("cannot open ", path, ": ", std::strerror(errno)));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::InternalError(Cat("stat ", path, ": ", std::strerror(err)));
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->map_size_ = static_cast<int64_t>(st.st_size);
  if (file->map_size_ > 0) {
    void* map = mmap(nullptr, static_cast<size_t>(file->map_size_), PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return absl::InternalError(Cat("mmap ", path, ": ", std::strerror(err)));
    }
    file->map_ = map;
  }
  ::close(fd);
  RETURN_IF_ERROR(file->Parse(static_cast<const uint8_t*>(file->map_), file->map_size_));
  return file;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::FromBytes(std::string bytes,
                                                                             std::string name) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = std::move(name);
  file->owned_ = std::move(bytes);
  RETURN_IF_ERROR(file->Parse(reinterpret_cast<const uint8_t*>(file->owned_.data()),
                              static_cast<int64_t>(file->owned_.size())));
  return file;
}

absl::Status SafetensorsFile::Parse(const uint8_t* bytes, int64_t size) {
  auto bad = [&](const auto&... what) {
    return absl::InvalidArgumentError(Cat(path_, ": not a valid safetensors file: ", what...));
  };
  if (size < 8) return bad("shorter than the 8-byte header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len < 2 || header_len > static_cast<uint64_t>(kMaxHeaderBytes)) {
    return bad("header length ", header_len, " outside [2, ", kMaxHeaderBytes, "]");
  }
  if (header_len > static_cast<uint64_t>(size - 8)) {
    return bad("header length ", header_len, " beyond the file's ", size, " bytes");
  }
  const char* header = reinterpret_cast<const char*>(bytes + 8);
  const json h = json::parse(header, header + header_len, nullptr, /*allow_exceptions=*/false);
  if (h.is_discarded()) return bad("the header is not JSON");
  if (!h.is_object()) return bad("the header is not a JSON object");
  const uint8_t* data = bytes + 8 + header_len;
  const int64_t data_size = size - 8 - static_cast<int64_t>(header_len);

  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (const auto& [name, entry] : h.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) return bad("__metadata__ is not an object");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) return bad("__metadata__ '", key, "' is not a string");
        metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    if (!entry.is_object()) return bad("tensor '", name, "' is not an object");
    const auto dtype = entry.find("dtype");
    const auto shape = entry.find("shape");
    const auto offsets = entry.find("data_offsets");
    if (dtype == entry.end() || !dtype->is_string()) return bad("tensor '", name, "' has no dtype");
    if (shape == entry.end() || !shape->is_array()) return bad("tensor '", name, "' has no shape");
    if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2 ||
        !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned()) {
      return bad("tensor '", name, "' has no [begin, end] data_offsets");
    }
    SafetensorsTensor t;
    t.name = name;
    t.dtype_name = dtype->get<std::string>();
    const DtypeInfo* info = FindDtype(t.dtype_name);
    if (info == nullptr) return bad("tensor '", name, "' has unknown dtype '", t.dtype_name, "'");
    t.dtype = info->dtype;
    if (shape->size() > 8) return bad("tensor '", name, "' has ", shape->size(), " dimensions");
    int64_t elements = 1;
    for (const json& d : *shape) {
      if (!d.is_number_unsigned()) return bad("tensor '", name, "' has a bad dimension");
      const uint64_t v = d.get<uint64_t>();
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max() / 8) ||
          (v != 0 && static_cast<uint64_t>(elements) >
                         static_cast<uint64_t>(std::numeric_limits<int64_t>::max() / 8) / v)) {
        return bad("tensor '", name, "' is too large");
      }
      t.shape.push_back(static_cast<int64_t>(v));
      elements *= static_cast<int64_t>(v);
    }
    t.num_elements = elements;
    const uint64_t begin = (*offsets)[0].get<uint64_t>();
    const uint64_t end = (*offsets)[1].get<uint64_t>();
    if (begin > end || end > static_cast<uint64_t>(data_size)) {
      return bad("tensor '", name, "' data_offsets [", begin, ", ", end, "] outside the ",
                 data_size, " data bytes");
    }
    t.num_bytes = static_cast<int64_t>(end - begin);
    if (t.num_bytes != elements * info->bytes) {
      return bad("tensor '", name, "' holds ", t.num_bytes, " bytes; its shape and ", t.dtype_name,
                 " need ", elements * info->bytes);
    }
    t.data = data + begin;
    ranges.emplace_back(static_cast<int64_t>(begin), static_cast<int64_t>(end));
    index_[t.name] = tensors_.size();
    tensors_.push_back(std::move(t));
  }
  // Tensors must not overlap (the format's own rule; a hostile file could alias them).
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) return bad("two tensors' data overlap");
  }
  return absl::OkStatus();
}

const SafetensorsTensor* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace tandem
