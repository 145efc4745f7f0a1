import COpenBLAS
import Foundation

public struct RefinementError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ message: String) { description = message }
}

public enum LayerSelection {
    /// Resolves requested layer indices against `count` layers: negative indices count from the
    /// end (-1 is the last layer), an empty request means every layer. Order is kept.
    public static func resolve(_ requested: [Int], layers count: Int, parameter: String = "layers") throws -> [Int] {
        if requested.isEmpty { return Array(0..<count) }
        var resolved: [Int] = []
        for index in requested {
            let layer = index < 0 ? count + index : index
            guard layer >= 0 && layer < count else {
                throw RefinementError("\(parameter): layer \(index) does not exist (the attention has \(count) layers: 0...\(count - 1), or -\(count)...-1 from the end)")
            }
            guard !resolved.contains(layer) else {
                throw RefinementError("\(parameter): layer \(layer) is selected twice (\(requested))")
            }
            resolved.append(layer)
        }
        return resolved
    }
}

extension AffinityRefinement {
    /// Weighted sum of some layers of a stacked [L, n, n] attention tensor, weights normalised to
    /// sum to 1 (rows stay distributions).
    public static func combine(stacked: [Float], tokens: Int, layers: [Int], weights: [Float]) -> [Float] {
        precondition(layers.count == weights.count && !layers.isEmpty)
        let total = weights.reduce(0, +)
        precondition(total > 0, "layer weights must have a positive sum")
        let size = tokens * tokens
        var out = [Float](repeating: 0, count: size)
        stacked.withUnsafeBufferPointer { source in
            for (layer, weight) in zip(layers, weights) where weight != 0 {
                precondition((layer + 1) * size <= source.count, "layer \(layer) outside the stacked attention")
                cblas_saxpy(Int32(size), weight / total, source.baseAddress! + layer * size, 1, &out, 1)
            }
        }
        return out
    }

    /// `refinedEntropy` of one layer of a stacked [L, n, n] tensor, divided by log n (its maximum).
    public static func normalisedRefinedEntropy(maps: [Float], count: Int, tokens: Int, stacked: [Float], layer: Int) -> Double {
        let size = tokens * tokens
        let affinity = Array(stacked[layer * size..<(layer + 1) * size])
        return refinedEntropy(maps: maps, count: count, tokens: tokens, affinity: affinity) / log(Double(tokens))
    }

    /// Mean Hellinger distance between the rows of each layer of a stacked [L, n, n] tensor.
    public static func meanHellinger(stacked: [Float], tokens: Int, layers: Int) -> [Double] {
        let size = tokens * tokens
        return (0..<layers).map { l in meanHellinger(affinity: Array(stacked[l * size..<(l + 1) * size]), tokens: tokens) }
    }
}

