#include "kernels/cpu/ggml_types.h"

#include <string>

#include "common/logging.h"

namespace tandem {
namespace {

struct Entry {
  uint32_t id;
  GgmlTypeTraits traits;
};

constexpr Entry kSupported[] = {
    {0, {"F32", 1, 4}},      {1, {"F16", 1, 2}},     {2, {"Q4_0", 32, 18}},
    {3, {"Q4_1", 32, 20}},   {8, {"Q8_0", 32, 34}},  {14, {"Q6_K", 256, 210}},
    {30, {"BF16", 1, 2}},
};

// Names of GGML types tandem does not read, for clear errors.
constexpr std::string_view kOtherNames[] = {
    "F32",  "F16",  "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0",    "Q5_1",    "Q8_0",    "Q8_1",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS",  "IQ3_XXS", "IQ1_S",
    "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
};

}  // namespace

const GgmlTypeTraits* FindGgmlType(uint32_t raw_type) {
  for (const Entry& e : kSupported) {
    if (e.id == raw_type) return &e.traits;
  }
  return nullptr;
}

std::string GgmlTypeName(uint32_t raw_type) {
  if (raw_type < std::size(kOtherNames)) return std::string(kOtherNames[raw_type]);
  return "type " + std::to_string(raw_type);
}

const GgmlTypeTraits& Traits(GgmlType type) {
  const GgmlTypeTraits* traits = FindGgmlType(static_cast<uint32_t>(type));
  CHECK(traits != nullptr) << "unsupported ggml type " << static_cast<uint32_t>(type);
  return *traits;
}

int64_t RowBytes(GgmlType type, int64_t n) {
  const GgmlTypeTraits& t = Traits(type);
  CHECK_EQ(n % t.block_size, 0) << "row of " << n << " elements in " << t.name;
  return n / t.block_size * t.type_size;
}

}  // namespace tandem
