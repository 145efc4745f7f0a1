#ifndef WSSS_COPENBLAS_SHIM_H
#define WSSS_COPENBLAS_SHIM_H
#include <cblas.h>

/* The widest vector kernels this CPU and OS can run, for choosing OpenBLAS's core (BLASCorePolicy):
   2 = AVX-512 F/CD/DQ/BW/VL (what OpenBLAS's SkylakeX kernels use), 1 = AVX2 + FMA (Haswell
   kernels), 0 = neither or not x86. "Can run" includes the OS saving the registers (XGETBV), as
   OpenBLAS's own detection checks: a CPU flag alone is not enough. */
#if defined(__x86_64__)
#include <cpuid.h>
static inline int wsss_cpu_vector_tier(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    if (!osxsave || !avx || !fma) return 0;
    unsigned int xcr0, xcr0_high;
    __asm__ volatile("xgetbv" : "=a"(xcr0), "=d"(xcr0_high) : "c"(0));
    if ((xcr0 & 0x6) != 0x6) return 0; /* XMM and YMM state */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    if (!((b >> 5) & 1)) return 0; /* AVX2 */
    const unsigned int avx512 = (1u << 16) | (1u << 17) | (1u << 28) | (1u << 30) | (1u << 31);
    if ((b & avx512) == avx512 && (xcr0 & 0xE0) == 0xE0) return 2; /* + opmask, ZMM state */
    return 1;
}
#else
static inline int wsss_cpu_vector_tier(void) { return 0; }
#endif

#endif
