#include "base/dtype.h"

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

namespace shardlm {
namespace {

float FromBits(uint32_t bits) { return std::bit_cast<float>(bits); }
uint32_t ToBits(float f) { return std::bit_cast<uint32_t>(f); }

TEST(DTypeTest, SizesNamesAndParsing) {
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
  EXPECT_EQ(DTypeSize(DType::kF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16}) {
    auto parsed = ParseDType(DTypeName(d));
    ASSERT_TRUE(parsed.ok()) << DTypeName(d);
    EXPECT_EQ(*parsed, d);
  }
  EXPECT_FALSE(ParseDType("F64").ok());
  EXPECT_FALSE(ParseDType("bf16").ok());
}

TEST(DTypeTest, Bf16RoundTripsEveryValue) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float f = Bf16ToF32(static_cast<uint16_t>(h));
    EXPECT_EQ(ToBits(f), h << 16);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(f)))) << std::hex << h;
    } else {
      ASSERT_EQ(F32ToBf16(f), h) << std::hex << h;
    }
  }
}

TEST(DTypeTest, Bf16RoundsToNearestEven) {
  // Every gap between consecutive finite non-negative bf16 values (h, h + 1): the midpoint goes
  // to the even one, one f32 ulp either side goes to the nearer one. Covers subnormals and the
  // overflow to inf past the largest finite value.
  for (uint32_t h = 0; h < 0x7f80; ++h) {
    const uint32_t mid = (h << 16) | 0x8000u;
    const uint16_t even = static_cast<uint16_t>((h & 1u) ? h + 1 : h);
    ASSERT_EQ(F32ToBf16(FromBits(mid)), even) << std::hex << h;
    ASSERT_EQ(F32ToBf16(FromBits(mid - 1)), h) << std::hex << h;
    ASSERT_EQ(F32ToBf16(FromBits(mid + 1)), h + 1) << std::hex << h;
    // Negative values round the magnitude the same way.
    ASSERT_EQ(F32ToBf16(-FromBits(mid + 1)), (h + 1) | 0x8000u) << std::hex << h;
  }
  EXPECT_EQ(F32ToBf16(1.0f), 0x3f80);
  EXPECT_EQ(F32ToBf16(FromBits(0x3f808000u)), 0x3f80);              // tie, even below
  EXPECT_EQ(F32ToBf16(FromBits(0x3f818000u)), 0x3f82);              // tie, even above
  EXPECT_EQ(F32ToBf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds up to inf
}

TEST(DTypeTest, Bf16SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(F32ToBf16(inf), 0x7f80);
  EXPECT_EQ(F32ToBf16(-inf), 0xff80);
  EXPECT_EQ(F32ToBf16(0.0f), 0x0000);
  EXPECT_EQ(F32ToBf16(-0.0f), 0x8000);
  EXPECT_EQ(F32ToBf16(FromBits(0x00010000u)), 0x0001);  // smallest subnormal
  EXPECT_TRUE(std::isinf(Bf16ToF32(0x7f80)));
  // NaNs stay NaN, including one whose payload sits only in the bits rounding would drop.
  for (uint32_t bits : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu}) {
    EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(FromBits(bits))))) << std::hex << bits;
  }
}

TEST(DTypeTest, F16DecodesKnownValues) {
  EXPECT_EQ(F16ToF32(0x3c00), 1.0f);
  EXPECT_EQ(F16ToF32(0xc000), -2.0f);
  EXPECT_EQ(F16ToF32(0x7bff), 65504.0f);
  EXPECT_EQ(F16ToF32(0x0400), std::ldexp(1.0f, -14));     // smallest normal
  EXPECT_EQ(F16ToF32(0x0001), std::ldexp(1.0f, -24));     // smallest subnormal
  EXPECT_EQ(F16ToF32(0x03ff), std::ldexp(1023.0f, -24));  // largest subnormal
  EXPECT_EQ(F16ToF32(0x8001), -std::ldexp(1.0f, -24));
  EXPECT_EQ(ToBits(F16ToF32(0x8000)), 0x80000000u);  // -0
  EXPECT_EQ(F16ToF32(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(F16ToF32(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(F16ToF32(0x7e00)));
  EXPECT_TRUE(std::isnan(F16ToF32(0x7c01)));
}

TEST(DTypeTest, F16RoundTripsEveryValue) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float f = F16ToF32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(F16ToF32(F32ToF16(f)))) << std::hex << h;
    } else {
      ASSERT_EQ(F32ToF16(f), h) << std::hex << h;
    }
  }
}

TEST(DTypeTest, F16RoundsToNearestEven) {
  // As for bf16, over every gap between consecutive finite non-negative f16 values; the gap
  // above 65504 ends at 65536, which is past the range and so becomes inf.
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const double lo = F16ToF32(static_cast<uint16_t>(h));
    const double hi = h + 1 == 0x7c00 ? 65536.0 : F16ToF32(static_cast<uint16_t>(h + 1));
    const float mid = static_cast<float>((lo + hi) / 2);  // exact: needs 12 significant bits
    ASSERT_EQ(static_cast<double>(mid), (lo + hi) / 2);
    const uint16_t even = static_cast<uint16_t>((h & 1u) ? h + 1 : h);
    ASSERT_EQ(F32ToF16(mid), even) << std::hex << h;
    ASSERT_EQ(F32ToF16(std::nextafter(mid, 0.0f)), h) << std::hex << h;
    ASSERT_EQ(F32ToF16(std::nextafter(mid, 1e30f)), h + 1) << std::hex << h;
    ASSERT_EQ(F32ToF16(-std::nextafter(mid, 1e30f)), (h + 1) | 0x8000u) << std::hex << h;
  }
}

TEST(DTypeTest, F16RangeEdgesAndSpecials) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(F32ToF16(65504.0f), 0x7bff);
  EXPECT_EQ(F32ToF16(65519.996f), 0x7bff);  // just under the midpoint to 65536
  EXPECT_EQ(F32ToF16(65520.0f), 0x7c00);    // the midpoint: ties to even, 65536, i.e. inf
  EXPECT_EQ(F32ToF16(-65520.0f), 0xfc00);
  EXPECT_EQ(F32ToF16(1e10f), 0x7c00);
  EXPECT_EQ(F32ToF16(inf), 0x7c00);
  EXPECT_EQ(F32ToF16(-inf), 0xfc00);
  EXPECT_TRUE(std::isnan(F16ToF32(F32ToF16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(F16ToF32(F32ToF16(FromBits(0x7f800001u)))));
  EXPECT_EQ(F32ToF16(1.0f), 0x3c00);
  EXPECT_EQ(F32ToF16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie, even below
  EXPECT_EQ(F32ToF16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie, even above
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -14)), 0x0400);             // smallest normal
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -24)), 0x0001);             // smallest subnormal
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -25)), 0x0000);             // tie with 0: even
  EXPECT_EQ(F32ToF16(std::ldexp(3.0f, -25)), 0x0002);             // tie 1|2: even
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -30)), 0x0000);             // underflow to zero
  EXPECT_EQ(F32ToF16(-std::ldexp(1.0f, -30)), 0x8000);            // keeps the sign
  EXPECT_EQ(F32ToF16(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(F32ToF16(-0.0f), 0x8000);
}

TEST(DTypeTest, ConvertToF32AllTypes) {
  const std::vector<float> f32 = {0.0f, -1.5f, 3.25f, 65504.0f, -0.0078125f};
  std::vector<uint16_t> f16;
  std::vector<uint16_t> bf16;
  for (float f : f32) {
    f16.push_back(F32ToF16(f));
    bf16.push_back(F32ToBf16(f));
  }
  std::vector<float> out(f32.size());
  ConvertToF32(DType::kF32, f32.data(), out.data(), f32.size());
  EXPECT_EQ(out, f32);
  ConvertToF32(DType::kF16, f16.data(), out.data(), f16.size());
  EXPECT_EQ(out, f32);  // all exactly representable in f16
  ConvertToF32(DType::kBF16, bf16.data(), out.data(), bf16.size());
  for (size_t i = 0; i < f32.size(); ++i) EXPECT_EQ(out[i], Bf16ToF32(bf16[i])) << i;
  EXPECT_EQ(out[1], -1.5f);
  EXPECT_EQ(out[3], 65536.0f);  // 65504 needs 11 significant bits; bf16 keeps 8
}

}  // namespace
}  // namespace shardlm
