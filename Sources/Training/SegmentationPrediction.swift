import Engine
import Foundation
import Imaging
import Localization

/// Label maps of images at their own resolution from a segmentation network: each image resized
/// to the training size times every scale, optionally mirrored, class probabilities averaged.
public struct SegmentationPredictor {
    public let network: SegNetwork
    public let trainSize: Int
    public let scales: [Double]
    public let flip: Bool
    public let normalization: Normalization

    public init(network: SegNetwork, trainSize: Int, scales: [Double], flip: Bool, normalization: Normalization) {
        self.network = network
        self.trainSize = trainSize
        self.scales = scales
        self.flip = flip
        self.normalization = normalization
    }

    /// Label maps (argmax) of images, each at its own resolution.
    public func predict(_ images: [RGBImage]) -> [[UInt8]] {
        let K = network.numClasses, B = images.count
        var probs = images.map { [Float](repeating: 0, count: $0.width * $0.height * K) }
        let p = network.backbone.config.patchSize
        for scale in scales {
            let size = max(p, Int((Double(trainSize) * scale / Double(p)).rounded()) * p)
            let input = Tensor(shape: [B, size, size, 3])
            for (b, image) in images.enumerated() {
                image.pixels.withUnsafeBufferPointer {
                    ImageAugmenter.resize($0.baseAddress!, width: image.width, height: image.height,
                                          into: input.data + b * size * size * 3, size: size, normalization: normalization)
                }
            }
            for flipped in flip ? [false, true] : [false] {
                if flipped { Self.flipHorizontally(input) }
                let logits = network.forward(images: input, training: false).logits
                if flipped { Self.flipHorizontally(logits); Self.flipHorizontally(input) }
                Self.softmaxRows(logits.data, rows: logits.count / K, classes: K)
                for (b, image) in images.enumerated() {
                    let resized = Tensor(shape: [1, image.height, image.width, K])
                    Kernels.bilinearResizeForward(out: resized.data, inp: logits.data + b * size * size * K, batch: 1,
                                                  inHeight: size, inWidth: size, outHeight: image.height, outWidth: image.width, channels: K)
                    probs[b].withUnsafeMutableBufferPointer { dst in
                        for i in 0..<resized.count { dst[i] += resized.data[i] }
                    }
                }
            }
        }
        return probs.map { values in
            values.withUnsafeBufferPointer { Argmax.channelsLast($0.baseAddress!, pixels: $0.count / K, channels: K) }
        }
    }

    static func flipHorizontally(_ t: Tensor) {
        let B = t.shape[0], H = t.shape[1], W = t.shape[2], C = t.shape[3]
        let tmp = UnsafeMutablePointer<Float>.allocate(capacity: C)
        defer { tmp.deallocate() }
        for row in 0..<(B * H) {
            let r = t.data + row * W * C
            for x in 0..<(W / 2) {
                let a = r + x * C, b = r + (W - 1 - x) * C
                tmp.update(from: a, count: C)
                a.update(from: b, count: C)
                b.update(from: tmp, count: C)
            }
        }
    }

    static func softmaxRows(_ p: UnsafeMutablePointer<Float>, rows: Int, classes K: Int) {
        for r in 0..<rows {
            let z = p + r * K
            var m = z[0]
            for k in 1..<K { m = max(m, z[k]) }
            var s: Float = 0
            for k in 0..<K { z[k] = expf(z[k] - m); s += z[k] }
            for k in 0..<K { z[k] /= s }
        }
    }
}
