// Whether the per-ISA kernel builds are compiled: GCC on x86-64, where `#pragma GCC target` switches
// the instruction set of a whole translation unit. Elsewhere only the baseline build exists.
// Macros only: this header is included before the target pragma.
#pragma once
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(CBAM_FUSED_NO_ISA_DISPATCH)
#define CBAM_FUSED_PER_ISA_BUILD 1
#else
#define CBAM_FUSED_PER_ISA_BUILD 0
#endif
