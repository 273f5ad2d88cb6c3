// The machine's arithmetic peaks, measured (see include/onestep_kernels.h, "Peaks"): the figures every kernel's
// GOP/s is divided by in `onestep-serve bench --peak`.
//
// Each peak is a loop of independent accumulator chains with no loads or stores: enough chains that the
// issue ports, not the instruction's latency, bound the loop (Zen 5: vpdpbusd, vfmadd231ps and vdpbf16ps on zmm
// each issue 2 per cycle; latencies 3-6 cycles, so 12-16 chains cover them). The frequency comes from a chain
// of dependent integer adds (1 cycle each on every out-of-order x86 and aarch64 core), so ops/cycle is the
// peak divided by it: the figure that does not move with turbo or with a neighbour stealing the core.
#include "onestep_kernels.h"

#include "onestep_isa.h"

int64_t osk_add_chain_cycles(int64_t iterations) {
    uint64_t x = (uint64_t)iterations;
    for (int64_t i = 0; i < iterations; i++) {
        // The empty asm makes every add a separate instruction depending on the previous one (no folding).
#define ADD1 x += 1; __asm__ volatile("" : "+r"(x));
        ADD1 ADD1 ADD1 ADD1 ADD1 ADD1 ADD1 ADD1
#undef ADD1
    }
    __asm__ volatile("" : : "r"(x));
    return 8 * iterations;
}

int osk_bf16_supported(void) {
#if OSK_X86
    __builtin_cpu_init();
    return osk_level_supported(OSK_AVX512) && __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

#if OSK_X86
// Every accumulator passes through an empty asm each iteration, so the compiler can neither fold the constant
// products (it turned fma(1, 1e-7, c) into an add and dropped the chains where it changed nothing) nor drop a chain.
#define OPAQUE16 __asm__ volatile("" : "+v"(c0), "+v"(c1), "+v"(c2), "+v"(c3), "+v"(c4), "+v"(c5), "+v"(c6), "+v"(c7), \
                                       "+v"(c8), "+v"(c9), "+v"(c10), "+v"(c11), "+v"(c12), "+v"(c13), "+v"(c14), "+v"(c15));
#define CHAINS16(op) op(0) op(1) op(2) op(3) op(4) op(5) op(6) op(7) op(8) op(9) op(10) op(11) op(12) op(13) op(14) op(15)

OSK_AVX512_TARGET static double fma_chains(int64_t iterations) {
    __m512 a = _mm512_set1_ps(1.0f), b = _mm512_set1_ps(1e-7f);
    __asm__("" : "+v"(a), "+v"(b));  // opaque: no product folded at compile time
#define DECL(i) __m512 c##i = _mm512_set1_ps((float)i);
    CHAINS16(DECL)
#undef DECL
    for (int64_t it = 0; it < iterations; it++) {
#define STEP(i) c##i = _mm512_fmadd_ps(a, b, c##i);
        CHAINS16(STEP)
#undef STEP
        OPAQUE16
    }
    __m512 s = _mm512_setzero_ps();
#define SUM(i) s = _mm512_add_ps(s, c##i);
    CHAINS16(SUM)
#undef SUM
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) static double bf16_chains(int64_t iterations) {
    __m512i ai = _mm512_set1_epi32(0x3f803f80), bi = _mm512_set1_epi32(0x33d633d6);  // bf16 pairs (1, 1), (1e-7, 1e-7)
    __asm__("" : "+v"(ai), "+v"(bi));
    const __m512bh a = (__m512bh)ai, b = (__m512bh)bi;
#define DECL(i) __m512 c##i = _mm512_set1_ps((float)i);
    CHAINS16(DECL)
#undef DECL
    for (int64_t it = 0; it < iterations; it++) {
#define STEP(i) c##i = _mm512_dpbf16_ps(c##i, a, b);
        CHAINS16(STEP)
#undef STEP
        OPAQUE16
    }
    __m512 s = _mm512_setzero_ps();
#define SUM(i) s = _mm512_add_ps(s, c##i);
    CHAINS16(SUM)
#undef SUM
    return _mm512_reduce_add_ps(s);
}

// The avx2 level's peaks (Zen 3: no AVX-512). 12 chains of 256-bit operations, 2 operand registers and an
// empty asm per iteration so nothing is hoisted: 15 of the 16 ymm registers, no spill. The int8 figure is the
// pair the AVX2 int8 kernels issue per 16 multiply-adds, vpmaddwd (int16 pairs summed into int32) + vpaddd into
// the accumulator: on Zen 3 the pair issues about 1.6 per cycle although vpmaddwd alone issues 2.
#define OPAQUE12 __asm__ volatile("" : "+x"(c0), "+x"(c1), "+x"(c2), "+x"(c3), "+x"(c4), "+x"(c5), "+x"(c6), "+x"(c7), \
                                       "+x"(c8), "+x"(c9), "+x"(c10), "+x"(c11));
#define CHAINS12(op) op(0) op(1) op(2) op(3) op(4) op(5) op(6) op(7) op(8) op(9) op(10) op(11)

OSK_AVX2_TARGET static double fma_chains_avx2(int64_t iterations) {
    __m256 a = _mm256_set1_ps(1.0f), b = _mm256_set1_ps(1e-7f);
#define DECL(i) __m256 c##i = _mm256_set1_ps((float)i);
    CHAINS12(DECL)
#undef DECL
    for (int64_t it = 0; it < iterations; it++) {
        __asm__ volatile("" : "+x"(a), "+x"(b));
#define STEP(i) c##i = _mm256_fmadd_ps(a, b, c##i);
        CHAINS12(STEP)
#undef STEP
        OPAQUE12
    }
    __m256 s = _mm256_setzero_ps();
#define SUM(i) s = _mm256_add_ps(s, c##i);
    CHAINS12(SUM)
#undef SUM
    float f[8];
    _mm256_storeu_ps(f, s);
    return f[0] + f[1] + f[2] + f[3] + f[4] + f[5] + f[6] + f[7];
}

OSK_AVX2_TARGET static int64_t madd_chains_avx2(int64_t iterations) {
    __m256i b = _mm256_set1_epi32(0x00ff00ff);
#define DECL(i) __m256i c##i = _mm256_set1_epi32(i);
    CHAINS12(DECL)
#undef DECL
    for (int64_t it = 0; it < iterations; it++) {
        // Each chain multiplies its own value (c + c * b): twelve different products, none hoisted or shared
        // (one product shared by the chains measured the adds alone, 3.3 pairs per cycle). The chain's latency
        // (vpmaddwd 3 + vpaddd 1 cycles) over 12 chains allows 3 pairs per cycle, above the issue limit.
        __asm__ volatile("" : "+x"(b));
#define STEP(i) c##i = _mm256_add_epi32(c##i, _mm256_madd_epi16(c##i, b));
        CHAINS12(STEP)
#undef STEP
        OPAQUE12
    }
    __m256i s = _mm256_setzero_si256();
#define SUM(i) s = _mm256_add_epi32(s, c##i);
    CHAINS12(SUM)
#undef SUM
    int32_t v[8];
    _mm256_storeu_si256((__m256i *)v, s);
    return (int64_t)v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
}
#endif

int64_t osk_madd_peak_ops(int64_t iterations, int64_t *checksum) {
    *checksum = 0;
#if OSK_X86
    if (!osk_level_supported(OSK_AVX2)) return 0;
    *checksum = madd_chains_avx2(iterations);
    return iterations * 12 * 16 * 2;  // 12 vpmaddwd x 16 multiply-adds x 2 ops
#else
    (void)iterations;
    return 0;
#endif
}

int64_t osk_fma_peak_ops(int64_t iterations, double *checksum) {
    *checksum = 0;
#if OSK_X86
    if (!osk_level_supported(OSK_AVX512)) {
        if (!osk_level_supported(OSK_AVX2)) return 0;
        *checksum = fma_chains_avx2(iterations);
        return iterations * 12 * 8 * 2;  // 12 vfmadd231ps x 8 lanes x 2 flops
    }
    *checksum = fma_chains(iterations);
    return iterations * 16 * 16 * 2;  // 16 vfmadd231ps x 16 lanes x 2 flops
#else
    (void)iterations;
    return 0;
#endif
}

int64_t osk_bf16_peak_ops(int64_t iterations, double *checksum) {
    *checksum = 0;
#if OSK_X86
    if (!osk_bf16_supported()) return 0;
    *checksum = bf16_chains(iterations);
    return iterations * 16 * 16 * 2 * 2;  // 16 vdpbf16ps x 16 lanes x 2 products x 2 flops
#else
    (void)iterations;
    return 0;
#endif
}
