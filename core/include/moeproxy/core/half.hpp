#pragma once
// IEEE 754 binary16 storage with exact round-to-nearest-even conversion from float, in plain
// integer arithmetic so that host and device round every value identically. Kokkos 3.4's
// half_t is no help on the host: there it may be a float in disguise (KOKKOS_HALF_T_IS_FLOAT),
// which would make CPU runs skip the rounding that GPU runs do.

#include <Kokkos_Core.hpp>

#include <cstdint>
#include <cstring>

namespace moeproxy {

// The bits of one binary16 value. Layout-compatible with CUDA's __half (cuBLAS reads it).
struct Half {
  std::uint16_t bits = 0;
};
static_assert(sizeof(Half) == 2 && alignof(Half) == 2, "Half must be two bytes like __half");

KOKKOS_INLINE_FUNCTION Half to_half(float value) {
  std::uint32_t x;
  memcpy(&x, &value, sizeof x);
  const std::uint16_t sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u)  // inf stays inf; NaN stays a (quiet) NaN
    return Half{static_cast<std::uint16_t>(sign | 0x7c00u | (ax > 0x7f800000u ? 0x0200u : 0u))};
  // 65520 is halfway between the largest finite binary16 (65504) and 2^16; the tie goes to
  // the even neighbour, 2^16, which is inf.
  if (ax >= 0x477ff000u) return Half{static_cast<std::uint16_t>(sign | 0x7c00u)};
  if (ax >= 0x38800000u) {  // normal binary16 (>= 2^-14): drop 13 mantissa bits, ties to even
    const std::uint32_t rounded = ax + 0x0fffu + ((ax >> 13) & 1u);
    return Half{static_cast<std::uint16_t>(sign | ((rounded - 0x38000000u) >> 13))};
  }
  // Subnormal binary16: the value in units of 2^-24 is mant >> shift, rounded to even.
  const int exponent = static_cast<int>(ax >> 23);
  const int shift = 126 - exponent;
  if (shift > 24) return Half{sign};  // below 2^-25: rounds to zero
  const std::uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
  std::uint32_t q = mant >> shift;
  const std::uint32_t rest = mant & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
  if (rest > halfway || (rest == halfway && (q & 1u))) ++q;  // 0x400 is the smallest normal
  return Half{static_cast<std::uint16_t>(sign | q)};
}

KOKKOS_INLINE_FUNCTION float to_float(Half h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h.bits & 0x8000u) << 16;
  const std::uint32_t exponent = (h.bits >> 10) & 0x1fu, mant = h.bits & 0x3ffu;
  std::uint32_t x;
  if (exponent == 0x1fu) {
    x = sign | 0x7f800000u | (mant << 13);
  } else if (exponent == 0) {  // zero or subnormal: mant * 2^-24, exact in float
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  } else {
    x = sign | ((exponent + 112u) << 23) | (mant << 13);
  }
  float value;
  memcpy(&value, &x, sizeof value);
  return value;
}

KOKKOS_INLINE_FUNCTION float to_float(float value) { return value; }

// The float nearest to `value` that binary16 can represent: what storing it does.
KOKKOS_INLINE_FUNCTION float round_to_half(float value) { return to_float(to_half(value)); }

// Stores a float into a cache or weight element of either storage type.
KOKKOS_INLINE_FUNCTION void store_as(float& dst, float value) { dst = value; }
KOKKOS_INLINE_FUNCTION void store_as(Half& dst, float value) { dst = to_half(value); }

}  // namespace moeproxy
