// libFuzzer target: GgufFile must turn any byte string into either a parsed file whose every
// getter is memory-safe, or an error. When it parses, the model config reader runs too.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/gguf_file.h"
#include "engine/model_config.h"

namespace {

// Walks a value as a consumer would, nested arrays included.
size_t Walk(const tandem::GgufValue& v, int depth) {
  size_t n = v.Describe().size();
  if (v.type() != tandem::GgufValueType::kArray) {
    n += v.AsInt().ok() + v.AsFloat().ok() + v.AsBool().ok();
    if (auto s = v.AsString(); s.ok()) n += s->size();
    return n;
  }
  if (depth > 16) return n;
  for (const tandem::GgufValue& e : v.Elements()) n += Walk(e, depth + 1);
  return n;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file =
      tandem::GgufFile::FromBytes(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!file.ok()) return 0;
  const tandem::GgufFile& f = **file;
  volatile size_t sink = f.version() + f.alignment() + f.file_size() + f.data_offset();
  for (std::string_view key : f.Keys()) {
    sink = sink + f.Has(key) + f.TypeOf(key).ok() + f.DescribeValue(key).size();
    sink = sink + f.GetInt(key).ok() + f.GetFloat(key).ok() + f.GetBool(key).ok();
    if (auto s = f.GetString(key); s.ok()) sink = sink + s->size();
    if (auto a = f.GetStringArray(key); a.ok()) {
      for (std::string_view s : *a) sink = sink + s.size();
    }
    if (auto a = f.GetIntArray(key); a.ok()) sink = sink + a->size();
    if (auto a = f.GetFloatArray(key); a.ok()) sink = sink + a->size();
    if (auto v = f.GetValue(key); v.ok()) sink = sink + Walk(*v, 0);
  }
  for (const tandem::GgufTensorInfo& t : f.tensors()) {
    if (f.FindTensor(t.name) != &t) __builtin_trap();
    if (t.num_bytes > 0) sink = sink + t.data[0] + t.data[t.num_bytes - 1];  // ASan checks
  }
  if (auto config = tandem::ModelConfigFromGguf(f); config.ok()) {
    sink = sink + config->Fingerprint().size() + config->ToString().size();
  }
  (void)sink;
  return 0;
}
