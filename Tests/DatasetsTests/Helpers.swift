import Foundation
import XCTest
@testable import Datasets
import Imaging
import TestSupport

enum Synthetic {
    /// Small objects (12 rows x 10 cols) of three classes with distinct shapes; `family` changes
    /// every pixel value so two sources never share an object image.
    static func objectSource(family: Int, perClass: Int = 4, name: String) -> ObjectSource {
        let rows = 12, cols = 10, classes = 3
        var pixels: [UInt8] = []
        var labels: [UInt8] = []
        for j in 0..<perClass {
            for c in 0..<classes {
                for y in 0..<rows {
                    for x in 0..<cols {
                        let (dx, dy) = (abs(2 * x + 1 - cols), abs(2 * y + 1 - rows))
                        let inside: Bool
                        switch c {
                        case 0: inside = dx <= 6 && dy <= 8            // box
                        case 1: inside = dx + dy <= 10                 // diamond
                        default: inside = dx * dx + dy * dy <= 100 && dx * dx + dy * dy >= 30  // ring
                        }
                        pixels.append(inside ? UInt8(20 + 60 * family + 9 * j + (x + y) % 7) : 0)
                    }
                }
                labels.append(UInt8(c))
            }
        }
        var byClass = [[Int]](repeating: [], count: classes)
        for (index, label) in labels.enumerated() { byClass[Int(label)].append(index) }
        return ObjectSource(imagesPath: name + "-images", labelsPath: name + "-labels", classNames: ["box", "diamond", "ring"],
                            rows: rows, cols: cols, pixels: pixels, labels: labels, indicesByClass: byClass)
    }

    static func config(size: Int = 40) -> SceneConfig {
        var config = SceneConfig()
        config.width = size
        config.height = size
        config.minVisiblePixels = 6
        return config
    }
}
