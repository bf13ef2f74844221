// Helpers for the GPU kernel tests: device skip, RAII device buffers, host bf16 rounding,
// seeded random inputs and an element-wise tolerance check that reports the worst element.
#ifndef TANDEM_TESTS_GPU_GPU_TEST_UTIL_H_
#define TANDEM_TESTS_GPU_GPU_TEST_UTIL_H_

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/cuda_kernels.h"

namespace tandem::cuda::testing {

inline bool HaveGpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define SKIP_WITHOUT_GPU() \
  if (!::tandem::cuda::testing::HaveGpu()) GTEST_SKIP() << "no CUDA device visible"

#define ASSERT_CUDA_OK(expr)                                                        \
  do {                                                                              \
    const cudaError_t tandem_err_ = (expr);                                         \
    ASSERT_EQ(tandem_err_, cudaSuccess) << #expr << ": " << cudaGetErrorString(tandem_err_); \
  } while (0)

// A fresh seed per test (random_device) unless TANDEM_TEST_SEED is set; printed so that a
// failure can be replayed.
inline uint32_t TestSeed() {
  uint32_t seed;
  if (const char* env = std::getenv("TANDEM_TEST_SEED")) {
    seed = static_cast<uint32_t>(std::strtoul(env, nullptr, 10));
  } else {
    seed = std::random_device{}();
  }
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::cout << "[ seed     ] " << (info ? info->name() : "?") << " TANDEM_TEST_SEED=" << seed
            << std::endl;
  ::testing::Test::RecordProperty("seed", std::to_string(seed));
  return seed;
}

// Host bf16: round-to-nearest-even, as __float2bfloat16 on the device.
inline uint16_t F32ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float Bf16BitsToF32(uint16_t h) {
  const uint32_t u = uint32_t{h} << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float RoundBf16(float f) { return Bf16BitsToF32(F32ToBf16(f)); }

// Random bf16 values uniform in [lo, hi): `bits` to upload, `values` their exact floats.
struct Bf16Data {
  std::vector<uint16_t> bits;
  std::vector<float> values;
};
inline Bf16Data RandomBf16(size_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  Bf16Data d;
  d.bits.resize(n);
  d.values.resize(n);
  for (size_t i = 0; i < n; ++i) {
    d.bits[i] = F32ToBf16(dist(rng));
    d.values[i] = Bf16BitsToF32(d.bits[i]);
  }
  return d;
}
inline std::vector<float> ToFloats(const std::vector<uint16_t>& bits) {
  std::vector<float> f(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) f[i] = Bf16BitsToF32(bits[i]);
  return f;
}

// Owns `n` elements of T on the device.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) {
    void* raw = nullptr;
    const cudaError_t err = cudaMalloc(&raw, std::max<size_t>(n, 1) * sizeof(T));
    ptr_ = static_cast<T*>(raw);
    if (err != cudaSuccess) {
      ADD_FAILURE() << "cudaMalloc(" << n * sizeof(T) << "): " << cudaGetErrorString(err);
      ptr_ = nullptr;
    }
  }
  template <typename U>
  explicit DeviceBuffer(const std::vector<U>& host) : DeviceBuffer(host.size()) {
    static_assert(sizeof(U) == sizeof(T));
    Upload(host);
  }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  template <typename U>
  void Upload(const std::vector<U>& host) {
    static_assert(sizeof(U) == sizeof(T));
    ASSERT_LE(host.size(), n_);
    const cudaError_t err =
        cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
    ASSERT_EQ(err, cudaSuccess) << cudaGetErrorString(err);
  }
  template <typename U = T>
  std::vector<U> Download() const {
    static_assert(sizeof(U) == sizeof(T));
    std::vector<U> host(n_);
    const cudaError_t err = cudaMemcpy(host.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost);
    EXPECT_EQ(err, cudaSuccess) << cudaGetErrorString(err);
    return host;
  }
  T* get() const { return ptr_; }
  size_t size() const { return n_; }

 private:
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

// Downloads a bf16 device buffer as floats.
inline std::vector<float> DownloadBf16(const DeviceBuffer<bf16>& buf) {
  return ToFloats(buf.Download<uint16_t>());
}

// Synchronizes and fails the test on any pending kernel error.
#define SYNC_OR_FAIL() ASSERT_CUDA_OK(cudaDeviceSynchronize())

// Element i passes when |got[i] - ref[i]| <= atol[i] + rtol * |ref[i]| (atol scalar or per
// element). Reports the count of failures, the worst element and the relative L2 error.
struct CloseResult {
  size_t failures = 0;
  size_t worst = 0;
  double worst_excess = -1.0;  // max of |d| - tol
  double max_abs_err = 0.0;
  double rel_l2 = 0.0;
  std::string Describe(const std::vector<float>& got, const std::vector<double>& ref) const {
    std::string s = "failures=" + std::to_string(failures) + "/" + std::to_string(ref.size()) +
                    " max_abs_err=" + std::to_string(max_abs_err) +
                    " rel_l2=" + std::to_string(rel_l2);
    if (!ref.empty()) {
      s += " worst[" + std::to_string(worst) + "]: got " + std::to_string(got[worst]) +
           " want " + std::to_string(ref[worst]);
    }
    return s;
  }
};
inline CloseResult CheckClose(const std::vector<float>& got, const std::vector<double>& ref,
                              double rtol, const std::vector<double>& atol) {
  CloseResult r;
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = std::abs(static_cast<double>(got[i]) - ref[i]);
    const double tol = (atol.size() == 1 ? atol[0] : atol[i]) + rtol * std::abs(ref[i]);
    const double excess = std::isnan(got[i]) ? 1e30 : d - tol;
    if (excess > 0) ++r.failures;
    if (excess > r.worst_excess) {
      r.worst_excess = excess;
      r.worst = i;
    }
    r.max_abs_err = std::max(r.max_abs_err, d);
    num += d * d;
    den += ref[i] * ref[i];
  }
  r.rel_l2 = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  return r;
}

#define EXPECT_ALL_CLOSE(got, ref, rtol, atol)                                            \
  do {                                                                                    \
    const auto tandem_close_ = ::tandem::cuda::testing::CheckClose(got, ref, rtol, atol); \
    EXPECT_EQ(tandem_close_.failures, 0u) << tandem_close_.Describe(got, ref);            \
  } while (0)

}  // namespace tandem::cuda::testing

#endif  // TANDEM_TESTS_GPU_GPU_TEST_UTIL_H_
