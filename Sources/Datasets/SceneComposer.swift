import ArtifactStore
import Foundation
import Primitives
import Imaging

/// A parameter combination that cannot work, reported as one line.
public struct InvalidParameter: Error, CustomStringConvertible {
    public let description: String
    public init(_ message: String) { description = message }
}

/// How "fashion-scenes" pictures are composed.
public struct SceneConfig: Equatable, Sendable {
    public var width = 64
    public var height = 64
    public var objectsMin = 1
    public var objectsMax = 3
    public var classesMin = 1
    public var classesMax = 3
    /// Object size (its longer side) as a fraction of the canvas's shorter side: 20...40 px at 64.
    public var objectMinFraction = 0.3125
    public var objectMaxFraction = 0.625
    /// A class is present (labelled) only if at least this many of its pixels stay visible; the
    /// visible pixels of a class below it become ignore (255), so labels and mask always agree.
    public var minVisiblePixels = 20
    /// An object pixel of intensity v shows `tint * (floor + (1 - floor) * v / 255)`: no object
    /// pixel is black, so the object's outline is where its pasted pixels are.
    public var objectShadeFloor: Float = 0.25
    /// Amplitude of uniform per-sample noise over the whole picture (0...255 scale), objects included.
    public var backgroundNoise: Float = 6
    /// Distractor ellipses per background: 0...maxBlobs.
    public var maxBlobs = 4

    public init() {}

    public var minObjectSize: Int { max(1, Int((objectMinFraction * Double(min(width, height))).rounded())) }
    public var maxObjectSize: Int { max(minObjectSize, Int((objectMaxFraction * Double(min(width, height))).rounded())) }

    public func validate(classCount: Int) throws {
        guard width >= 8, height >= 8, width <= 4096, height <= 4096 else {
            throw InvalidParameter("image size \(width)x\(height) must be within 8...4096")
        }
        guard objectsMin >= 1, objectsMin <= objectsMax else {
            throw InvalidParameter("objects per image \(objectsMin)...\(objectsMax) must satisfy 1 <= min <= max")
        }
        guard classesMin >= 1, classesMin <= classesMax else {
            throw InvalidParameter("classes per image \(classesMin)...\(classesMax) must satisfy 1 <= min <= max")
        }
        guard classesMax <= classCount else {
            throw InvalidParameter("classes per image max \(classesMax) exceeds the \(classCount) classes available")
        }
        guard classesMin <= objectsMax else {
            throw InvalidParameter("classes per image min \(classesMin) exceeds objects per image max \(objectsMax)")
        }
        guard objectMinFraction > 0, objectMinFraction <= objectMaxFraction, objectMaxFraction <= 1 else {
            throw InvalidParameter("object size fractions \(objectMinFraction)...\(objectMaxFraction) must satisfy 0 < min <= max <= 1")
        }
        guard minVisiblePixels >= 1 else { throw InvalidParameter("min visible pixels must be at least 1") }
        guard objectShadeFloor >= 0, objectShadeFloor <= 1 else { throw InvalidParameter("object shade floor must be in 0...1") }
        guard backgroundNoise >= 0, maxBlobs >= 0 else { throw InvalidParameter("background noise and blob count must be >= 0") }
    }
}

/// One object as placed in a scene, in paste order (later objects cover earlier ones).
public struct PlacedObject: Equatable, Sendable {
    /// 1-based class id (the mask value).
    public var classID: Int
    /// Index of the object in the source file it was taken from.
    public var sourceIndex: Int
    public var x: Int
    public var y: Int
    public var width: Int
    public var height: Int
    public var tint: RGB
    /// Pixels the object covered when pasted, and those still showing after later objects.
    public var pastedPixels: Int
    public var visiblePixels: Int
}

/// A composed picture with its exact mask and image-level labels.
public struct Scene: Equatable, Sendable {
    public var image: RGBImage
    public var mask: LabelMap
    /// Multi-hot over the C foreground classes (index k-1 for class id k).
    public var labels: [UInt8]
    public var objects: [PlacedObject]
}

/// Composes scenes from one object source. Scene `i` depends only on (seed, stream, i), so scenes
/// can be made in any order and in parallel, and changing a split's count keeps its first scenes.
public struct SceneComposer: Sendable {
    public let source: ObjectSource
    public let config: SceneConfig
    public let seed: UInt64
    public let streamKey: UInt64

    /// `stream` separates splits built from the same seed ("train", "val").
    public init(source: ObjectSource, config: SceneConfig, seed: UInt64, stream: String) throws {
        try config.validate(classCount: source.classNames.count)
        for (label, indices) in source.indicesByClass.enumerated() where indices.isEmpty {
            throw StoreError(path: source.labelsPath, "class \(label) ('\(source.classNames[label])') has no objects to compose scenes from")
        }
        self.source = source
        self.config = config
        self.seed = seed
        streamKey = Self.fnv1a(stream)
    }

    /// FNV-1a: a string hash that, unlike `Hasher`, is the same in every process.
    static func fnv1a(_ text: String) -> UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in text.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01B3 }
        return hash
    }

    public var classCount: Int { source.classNames.count }

    /// Scene `index`. Layouts that leave no class visible are redrawn from the next sub-stream.
    public func scene(_ index: Int) -> Scene {
        var scene = compose(index: index, attempt: 0)
        var attempt = 1
        while !scene.labels.contains(1) && attempt < 16 {
            scene = compose(index: index, attempt: attempt)
            attempt += 1
        }
        return scene
    }

    /// An object's grey pixels resized (bilinear, rounded) to `width` x `height`: exactly what is
    /// pasted; its nonzero pixels are the object's mask.
    public func resizedObject(_ sourceIndex: Int, width: Int, height: Int) -> [UInt8] {
        Resize.bilinear(Array(source.object(sourceIndex)), width: source.cols, height: source.rows, channels: 1,
                        toWidth: width, toHeight: height)
    }

    func compose(index: Int, attempt: Int) -> Scene {
        var rng = Xoshiro256(seed: SplitMix64.mix(seed, streamKey, UInt64(index), UInt64(attempt)))
        let (width, height) = (config.width, config.height)
        var canvas = Background.draw(width: width, height: height, config: config, rng: &rng)
        var mask = [UInt8](repeating: 0, count: width * height)
        var owner = [Int8](repeating: -1, count: width * height)

        // Classes first (distinct), then objects: each chosen class gets one, the rest are random
        // among the chosen; the paste order is shuffled so any class may end up on top.
        let classes = Self.sample(distinct: rng.int(in: config.classesMin...min(config.classesMax, config.objectsMax)),
                                  from: classCount, rng: &rng)
        let objectCount = rng.int(in: max(classes.count, config.objectsMin)...config.objectsMax)
        var objectClasses = classes
        while objectClasses.count < objectCount { objectClasses.append(classes[rng.below(classes.count)]) }
        for i in stride(from: objectClasses.count - 1, to: 0, by: -1) { objectClasses.swapAt(i, rng.below(i + 1)) }

        var objects: [PlacedObject] = []
        for (order, label) in objectClasses.enumerated() {
            let candidates = source.indicesByClass[label]
            let sourceIndex = candidates[rng.below(candidates.count)]
            let size = rng.int(in: config.minObjectSize...config.maxObjectSize)
            let scale = Double(size) / Double(max(source.rows, source.cols))
            let objectWidth = min(width, max(1, Int((Double(source.cols) * scale).rounded())))
            let objectHeight = min(height, max(1, Int((Double(source.rows) * scale).rounded())))
            let x = rng.int(in: 0...(width - objectWidth))
            let y = rng.int(in: 0...(height - objectHeight))
            let tint = Self.vividColor(&rng)
            let grey = resizedObject(sourceIndex, width: objectWidth, height: objectHeight)
            let floor = config.objectShadeFloor
            let tintValues = [Float(tint.r), Float(tint.g), Float(tint.b)]
            var pasted = 0
            canvas.withUnsafeMutableBufferPointer { out in
                for oy in 0..<objectHeight {
                    for ox in 0..<objectWidth {
                        let v = grey[oy * objectWidth + ox]
                        if v == 0 { continue }
                        let p = (y + oy) * width + (x + ox)
                        let shade = floor + (1 - floor) * Float(v) / 255
                        out[3 * p] = tintValues[0] * shade
                        out[3 * p + 1] = tintValues[1] * shade
                        out[3 * p + 2] = tintValues[2] * shade
                        mask[p] = UInt8(label + 1)
                        owner[p] = Int8(order)
                        pasted += 1
                    }
                }
            }
            objects.append(PlacedObject(classID: label + 1, sourceIndex: sourceIndex, x: x, y: y,
                                        width: objectWidth, height: objectHeight, tint: tint,
                                        pastedPixels: pasted, visiblePixels: 0))
        }

        var visibleByClass = [Int](repeating: 0, count: classCount + 1)
        for p in 0..<(width * height) where owner[p] >= 0 {
            objects[Int(owner[p])].visiblePixels += 1
            visibleByClass[Int(mask[p])] += 1
        }
        var labels = [UInt8](repeating: 0, count: classCount)
        for label in 1...classCount where visibleByClass[label] >= config.minVisiblePixels { labels[label - 1] = 1 }
        for p in 0..<(width * height) where mask[p] != 0 && labels[Int(mask[p]) - 1] == 0 { mask[p] = LabelMap.ignore }
        // Noise goes over objects and background alike, so "noise-free" cannot give objects away.
        let image = Background.quantize(canvas, width: width, height: height, noise: config.backgroundNoise, rng: &rng)
        return Scene(image: image, mask: LabelMap(width: width, height: height, labels: mask), labels: labels, objects: objects)
    }

    static func sample(distinct count: Int, from total: Int, rng: inout Xoshiro256) -> [Int] {
        var pool = Array(0..<total)
        for i in 0..<count { pool.swapAt(i, i + rng.below(total - i)) }
        return Array(pool.prefix(count))
    }

    /// A saturated, fairly bright colour (HSV with s in 0.5...1, v in 0.75...1).
    static func vividColor(_ rng: inout Xoshiro256) -> RGB {
        hsv(hue: rng.uniformFloat(), saturation: rng.float(in: 0.5...1), value: rng.float(in: 0.75...1))
    }

    static func hsv(hue: Float, saturation: Float, value: Float) -> RGB {
        let h = hue * 6
        let sector = min(Int(h), 5)
        let f = h - Float(sector)
        let p = value * (1 - saturation), q = value * (1 - saturation * f), t = value * (1 - saturation * (1 - f))
        let (r, g, b): (Float, Float, Float)
        switch sector {
        case 0: (r, g, b) = (value, t, p)
        case 1: (r, g, b) = (q, value, p)
        case 2: (r, g, b) = (p, value, t)
        case 3: (r, g, b) = (p, q, value)
        case 4: (r, g, b) = (t, p, value)
        default: (r, g, b) = (value, p, q)
        }
        return RGB(UInt8(r * 255 + 0.5), UInt8(g * 255 + 0.5), UInt8(b * 255 + 0.5))
    }
}

/// Trigonometry runs in Double and is rounded to Float, so last-bit differences between maths
/// libraries practically never reach the 8-bit pixels: a seed draws the same scenes everywhere.
///
/// Cluttered backgrounds: smooth colour fields, stripes, or stripes whose two colours are
/// themselves smooth fields, plus distractor ellipses (pixel noise comes after the objects). They span the whole
/// brightness and colour range, so "not background-coloured" or "brighter than a threshold"
/// does not find the objects.
enum Background {
    /// The background as floats in 0...255, row-major HWC.
    static func draw(width: Int, height: Int, config: SceneConfig, rng: inout Xoshiro256) -> [Float] {
        let n = width * height
        var canvas: [Float]
        switch rng.below(3) {
        case 0:
            canvas = smoothField(width: width, height: height, rng: &rng)
        case 1:
            let a = randomColor(&rng), b = randomColor(&rng)
            let f = stripes(width: width, height: height, rng: &rng)
            canvas = [Float](repeating: 0, count: 3 * n)
            for p in 0..<n {
                for k in 0..<3 { canvas[3 * p + k] = a[k] * (1 - f[p]) + b[k] * f[p] }
            }
        default:
            let a = smoothField(width: width, height: height, rng: &rng)
            let b = smoothField(width: width, height: height, rng: &rng)
            let f = stripes(width: width, height: height, rng: &rng)
            canvas = [Float](repeating: 0, count: 3 * n)
            for p in 0..<n {
                for k in 0..<3 { canvas[3 * p + k] = a[3 * p + k] * (1 - f[p]) + b[3 * p + k] * f[p] }
            }
        }
        let blobs = rng.int(in: 0...config.maxBlobs)
        let side = Float(min(width, height))
        for _ in 0..<blobs {
            let color = randomColor(&rng)
            let cx = rng.float(in: 0...Float(width)), cy = rng.float(in: 0...Float(height))
            let rx = rng.float(in: 0.04...0.2) * side, ry = rng.float(in: 0.04...0.2) * side
            let angle = rng.float(in: 0...Float.pi)
            let opacity = rng.float(in: 0.5...1)
            let (c, s) = (Float(cos(Double(angle))), Float(sin(Double(angle))))
            let reach = max(rx, ry)
            let x0 = max(0, Int(cx - reach)), x1 = min(width - 1, Int(cx + reach))
            let y0 = max(0, Int(cy - reach)), y1 = min(height - 1, Int(cy + reach))
            guard x0 <= x1, y0 <= y1 else { continue }
            for y in y0...y1 {
                for x in x0...x1 {
                    let dx = Float(x) + 0.5 - cx, dy = Float(y) + 0.5 - cy
                    let u = (c * dx + s * dy) / rx, v = (-s * dx + c * dy) / ry
                    if u * u + v * v > 1 { continue }
                    let p = 3 * (y * width + x)
                    for k in 0..<3 { canvas[p + k] = (1 - opacity) * canvas[p + k] + opacity * color[k] }
                }
            }
        }
        return canvas
    }

    /// Adds uniform noise in [-noise, noise] to every sample and rounds to bytes.
    static func quantize(_ canvas: [Float], width: Int, height: Int, noise: Float, rng: inout Xoshiro256) -> RGBImage {
        var pixels = [UInt8](repeating: 0, count: canvas.count)
        for i in 0..<canvas.count {
            let value = noise > 0 ? canvas[i] + noise * (2 * rng.uniformFloat() - 1) : canvas[i]
            pixels[i] = UInt8(min(max(value, 0), 255) + 0.5)
        }
        return RGBImage(width: width, height: height, pixels: pixels)
    }

    static func randomColor(_ rng: inout Xoshiro256) -> [Float] {
        [rng.float(in: 0...255), rng.float(in: 0...255), rng.float(in: 0...255)]
    }

    /// A coarse grid (2...5 cells a side) of random colours, bilinearly upsampled.
    static func smoothField(width: Int, height: Int, rng: inout Xoshiro256) -> [Float] {
        let gw = rng.int(in: 2...5), gh = rng.int(in: 2...5)
        var grid = [Float](repeating: 0, count: gw * gh * 3)
        for i in grid.indices { grid[i] = rng.float(in: 0...255) }
        return Resize.bilinear(grid, width: gw, height: gh, channels: 3, toWidth: width, toHeight: height)
    }

    /// Stripe weights in [0, 1]: random angle, period 3...14 px, sine or hard-edged profile.
    static func stripes(width: Int, height: Int, rng: inout Xoshiro256) -> [Float] {
        let angle = rng.float(in: 0...Float.pi)
        let period = rng.float(in: 3...14)
        let phase = rng.uniformFloat()
        let hard = rng.chance(0.5)
        let duty = rng.float(in: 0.3...0.7)
        let (c, s) = (Float(cos(Double(angle))) / period, Float(sin(Double(angle))) / period)
        var f = [Float](repeating: 0, count: width * height)
        for y in 0..<height {
            for x in 0..<width {
                let t = Float(x) * c + Float(y) * s + phase
                let fraction = t - t.rounded(.down)
                f[y * width + x] = hard ? (fraction < duty ? 1 : 0) : 0.5 + 0.5 * Float(sin(2 * Double.pi * Double(fraction)))
            }
        }
        return f
    }
}
