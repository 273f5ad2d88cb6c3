// Instruction-set macros for the kernel files, in one place (internal: not part of the public header).
//
//   OSK_X86            1 when compiling for x86-64 (or i386): the AVX-512 and AVX2 code paths exist.
//                      0 elsewhere (aarch64, ...): only the scalar paths are compiled, and
//                      osk_level_supported() reports OSK_AVX2 and OSK_AVX512 as unsupported, so every
//                      dispatcher picks the scalar code at run time.
//   OSK_AVX512_TARGET  function attribute compiling one function for AVX-512 (F, BW, VL, VNNI) + FMA, so the rest
//   OSK_AVX2_TARGET    of the file stays baseline x86-64 and the level is chosen at run time (__builtin_cpu_supports).
//
// Every use of an intrinsic, an __m512/__m256 type or one of the target attributes must sit inside `#if OSK_X86`;
// scripts/check-aarch64 compiles every .c file here for aarch64 to keep it so.
#ifndef ONESTEP_ISA_H
#define ONESTEP_ISA_H

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define OSK_X86 1
#define OSK_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma")))
#define OSK_AVX2_TARGET __attribute__((target("avx2,fma")))
#else
#define OSK_X86 0
#endif

#endif
