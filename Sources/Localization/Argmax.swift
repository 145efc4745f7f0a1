/// The one argmax of the project: class ids from scores, in the two layouts maps come in.
public enum Argmax {
    /// Planar scores [K, pixels] of `classes` (ids) against a background: `.constant(t)` (the
    /// threshold sweep's background score) or `.firstPlane` (scores are [1 + K, pixels] with the
    /// background's plane first). Ties keep the earlier candidate, background first.
    public enum Background { case constant(Float), firstPlane }

    public static func planar(_ scores: [Float], classes: [Int], pixels: Int, background: Background) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: pixels)
        scores.withUnsafeBufferPointer { s in
            let first: Int
            switch background {
            case .constant: first = 0
            case .firstPlane: first = 1
            }
            for p in 0..<pixels {
                var best: Float
                switch background {
                case .constant(let t): best = t
                case .firstPlane: best = s[p]
                }
                for (k, c) in classes.enumerated() where s[(k + first) * pixels + p] > best {
                    best = s[(k + first) * pixels + p]
                    out[p] = UInt8(c)
                }
            }
        }
        return out
    }

    /// Channels-last scores [pixels, channels]: the index of each pixel's highest channel.
    public static func channelsLast(_ scores: UnsafePointer<Float>, pixels: Int, channels K: Int) -> [UInt8] {
        (0..<pixels).map { i -> UInt8 in
            var best = 0
            for k in 1..<K where scores[i * K + k] > scores[i * K + best] { best = k }
            return UInt8(best)
        }
    }
}
