import Foundation

/// The project's seeded generator (SplitMix64, Steele et al.): the same numbers on every platform
/// and toolchain, because the standard library's `random(in:using:)` algorithms are not promised
/// to stay fixed. Model initialisation, augmentation, shuffling and masking draw from it; training
/// derives one generator per (seed, stream, index) -- e.g. (seed, epoch, image) -- so batches are
/// identical whatever the batching or thread count. The scene composer draws from `Xoshiro256`
/// below, seeded through this one.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    /// A generator for one item of a stream: mixes the parts so nearby indices are unrelated.
    public init(seed: UInt64, stream: UInt64, index: UInt64) {
        var mixer = SplitMix64(seed: seed ^ 0x9E37_79B9_7F4A_7C15)
        var second = SplitMix64(seed: mixer.next() ^ (stream &* 0xD1B5_4A32_D192_ED03))
        state = second.next() ^ (index &* 0x8CB9_2BA7_2F3D_8DD7)
        _ = next()
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// One well-mixed value from several inputs, for deriving independent per-item streams.
    public static func mix(_ values: UInt64...) -> UInt64 {
        var generator = SplitMix64(seed: 0x5EED_0F_DA7A)
        var result: UInt64 = 0
        for value in values {
            generator.state ^= value
            result = generator.next()
        }
        return result
    }

    /// Uniform in [0, 1) with 53 random bits.
    public mutating func uniform() -> Double { Double(next() >> 11) * 0x1p-53 }

    public mutating func uniform(_ low: Double, _ high: Double) -> Double { low + (high - low) * uniform() }

    /// Uniform integer in the closed range (modulo bias below 2^-40 for the small ranges used).
    public mutating func int(in range: ClosedRange<Int>) -> Int {
        range.lowerBound + Int(next() % UInt64(range.upperBound - range.lowerBound + 1))
    }

    public mutating func bool() -> Bool { next() >> 63 == 1 }

    /// Standard normal (Box-Muller). uniform() is a multiple of 2^-53, so the clamp only replaces 0.
    public mutating func normal() -> Double {
        let u1 = max(uniform(), 1e-300), u2 = uniform()
        return (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2)
    }

    /// Normal(0, std) restricted to [lo, hi] by resampling. The bounds are absolute values as in
    /// timm's `trunc_normal_(t, std, a=-2, b=2)` that DeiT uses (at std 0.02 they never bind).
    public mutating func truncatedNormal(std: Double, lo: Double = -2, hi: Double = 2) -> Double {
        while true {
            let z = normal() * std
            if z >= lo && z <= hi { return z }
        }
    }
}

/// xoshiro256** (Blackman & Vigna), seeded through SplitMix64.
public struct Xoshiro256: RandomNumberGenerator {
    private var s0, s1, s2, s3: UInt64

    public init(seed: UInt64) {
        var seeder = SplitMix64(seed: seed)
        s0 = seeder.next(); s1 = seeder.next(); s2 = seeder.next(); s3 = seeder.next()
    }

    /// Starts from a raw state (not all zero), for checking against the reference implementation.
    public init(state: (UInt64, UInt64, UInt64, UInt64)) {
        (s0, s1, s2, s3) = state
    }

    public mutating func next() -> UInt64 {
        let result = ((s1 &* 5) << 7 | (s1 &* 5) >> 57) &* 9
        let t = s1 << 17
        s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3
        s2 ^= t
        s3 = s3 << 45 | s3 >> 19
        return result
    }

    /// Uniform in [0, 1) with 53 random bits.
    public mutating func uniform() -> Double { Double(next() >> 11) * 0x1.0p-53 }

    /// Uniform in [0, 1) with 24 random bits.
    public mutating func uniformFloat() -> Float { Float(next() >> 40) * 0x1.0p-24 }

    /// Uniform integer in 0..<bound, without modulo bias (Lemire's multiply-and-reject).
    public mutating func below(_ bound: Int) -> Int {
        precondition(bound > 0, "below(\(bound))")
        let n = UInt64(bound)
        var product = next().multipliedFullWidth(by: n)
        if product.low < n {
            let threshold = (0 &- n) % n
            while product.low < threshold { product = next().multipliedFullWidth(by: n) }
        }
        return Int(product.high)
    }

    public mutating func int(in range: ClosedRange<Int>) -> Int {
        range.lowerBound + below(range.upperBound - range.lowerBound + 1)
    }

    public mutating func float(in range: ClosedRange<Float>) -> Float {
        range.lowerBound + (range.upperBound - range.lowerBound) * uniformFloat()
    }

    public mutating func chance(_ probability: Double) -> Bool { uniform() < probability }
}
