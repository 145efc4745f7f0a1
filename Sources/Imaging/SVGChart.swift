import Foundation

/// Small self-contained SVG charts (line and bar) for stage reports: plain text, no fonts or
/// scripts to fetch, readable in any browser.
public enum SVGChart {
    public struct Series {
        public var name: String
        public var color: String
        /// Points with a non-finite y are left out (a gap in the line).
        public var points: [(x: Double, y: Double)]
        public init(name: String, color: String, points: [(x: Double, y: Double)]) {
            self.name = name
            self.color = color
            self.points = points
        }
    }

    /// A horizontal reference line across the whole plot.
    public struct Level {
        public var name: String
        public var value: Double
        public var color: String
        public init(name: String, value: Double, color: String) {
            self.name = name
            self.value = value
            self.color = color
        }
    }

    static let width = 720.0, height = 420.0
    static let left = 64.0, right = 200.0, top = 44.0, bottom = 56.0
    static var plotWidth: Double { width - left - right }
    static var plotHeight: Double { height - top - bottom }

    /// Lines with point markers over `xTicks` (value, label), y over `yRange`, plus dashed levels.
    public static func lines(title: String, xLabel: String, yLabel: String, xTicks: [(value: Double, label: String)],
                             yRange: ClosedRange<Double>, series: [Series], levels: [Level] = []) -> String {
        let xs = xTicks.map(\.value) + series.flatMap { $0.points.map(\.x) }
        let xLow = xs.min() ?? 0, xHigh = max(xs.max() ?? 1, xLow + 1)
        // Half a step of padding so the first and last points are not on the axes.
        let pad = xTicks.count > 1 ? (xHigh - xLow) / Double(xTicks.count - 1) / 2 : 0.5
        func px(_ x: Double) -> Double { left + (x - xLow + pad) / (xHigh - xLow + 2 * pad) * plotWidth }
        func py(_ y: Double) -> Double {
            let t = (min(max(y, yRange.lowerBound), yRange.upperBound) - yRange.lowerBound) / (yRange.upperBound - yRange.lowerBound)
            return top + (1 - t) * plotHeight
        }
        var body = frame(title: title, xLabel: xLabel, yLabel: yLabel, yRange: yRange)
        for tick in xTicks {
            body += text(tick.label, x: px(tick.value), y: top + plotHeight + 18, anchor: "middle", size: 11)
            body += #"<line x1="\#(f(px(tick.value)))" y1="\#(f(top + plotHeight))" x2="\#(f(px(tick.value)))" y2="\#(f(top + plotHeight + 4))" stroke="rgb(51,51,51)"/>"# + "\n"
        }
        var legend: [(name: String, color: String, dashed: Bool)] = []
        for level in levels where level.value.isFinite {
            body += #"<line class="level" x1="\#(f(left))" y1="\#(f(py(level.value)))" x2="\#(f(left + plotWidth))" y2="\#(f(py(level.value)))" stroke="\#(level.color)" stroke-width="1.5" stroke-dasharray="6,4"/>"# + "\n"
            legend.append((level.name + " " + String(format: "%.3f", level.value), level.color, true))
        }
        for s in series {
            var segments: [[String]] = [[]]
            for point in s.points {
                if point.y.isFinite { segments[segments.count - 1].append("\(f(px(point.x))),\(f(py(point.y)))") } else { segments.append([]) }
            }
            for segment in segments where segment.count > 1 {
                body += #"<polyline fill="none" stroke="\#(s.color)" stroke-width="2" points="\#(segment.joined(separator: " "))"/>"# + "\n"
            }
            for point in s.points where point.y.isFinite {
                body += #"<circle class="point" cx="\#(f(px(point.x)))" cy="\#(f(py(point.y)))" r="3.5" fill="\#(s.color)"><title>\#(escape(s.name)) \#(String(format: "%g: %.4f", point.x, point.y))</title></circle>"# + "\n"
            }
            legend.append((s.name, s.color, false))
        }
        body += legendBlock(legend)
        return document(body)
    }

    /// Vertical bars, one per label, y from 0 to the largest value (at least 1e-9).
    public static func bars(title: String, yLabel: String, labels: [String], values: [Double], color: String = "#4472c4", note: String? = nil) -> String {
        precondition(labels.count == values.count)
        let high = max(values.filter(\.isFinite).max() ?? 0, 1e-9)
        let yRange = 0...high
        var body = frame(title: title, xLabel: "", yLabel: yLabel, yRange: yRange)
        let slot = plotWidth / Double(max(labels.count, 1))
        for (i, (label, value)) in zip(labels, values).enumerated() {
            let v = value.isFinite ? max(value, 0) : 0
            let h = v / high * plotHeight
            let x = left + Double(i) * slot + slot * 0.15
            body += #"<rect class="bar" x="\#(f(x))" y="\#(f(top + plotHeight - h))" width="\#(f(slot * 0.7))" height="\#(f(h))" fill="\#(color)"><title>\#(escape(label)): \#(String(format: "%.4f", value))</title></rect>"# + "\n"
            body += text(String(format: "%.3f", value), x: x + slot * 0.35, y: top + plotHeight - h - 4, anchor: "middle", size: 10)
            body += text(label, x: x + slot * 0.35, y: top + plotHeight + 18, anchor: "middle", size: 11)
        }
        if let note { body += text(note, x: left + plotWidth / 2, y: top + plotHeight / 2, anchor: "middle", size: 13) }
        return document(body)
    }

    static func frame(title: String, xLabel: String, yLabel: String, yRange: ClosedRange<Double>) -> String {
        var s = #"<rect x="0" y="0" width="\#(f(width))" height="\#(f(height))" fill="white"/>"# + "\n"
        s += text(title, x: 12, y: 24, anchor: "start", size: 14, weight: "bold")
        for i in 0...5 {
            let value = yRange.lowerBound + Double(i) / 5 * (yRange.upperBound - yRange.lowerBound)
            let y = top + (1 - Double(i) / 5) * plotHeight
            s += #"<line x1="\#(f(left))" y1="\#(f(y))" x2="\#(f(left + plotWidth))" y2="\#(f(y))" stroke="rgb(221,221,221)"/>"# + "\n"
            s += text(String(format: "%.2f", value), x: left - 6, y: y + 4, anchor: "end", size: 11)
        }
        s += #"<rect x="\#(f(left))" y="\#(f(top))" width="\#(f(plotWidth))" height="\#(f(plotHeight))" fill="none" stroke="rgb(51,51,51)"/>"# + "\n"
        if !xLabel.isEmpty { s += text(xLabel, x: left + plotWidth / 2, y: height - 14, anchor: "middle", size: 12) }
        s += #"<text x="16" y="\#(f(top + plotHeight / 2))" text-anchor="middle" font-size="12" transform="rotate(-90 16 \#(f(top + plotHeight / 2)))">\#(escape(yLabel))</text>"# + "\n"
        return s
    }

    static func legendBlock(_ entries: [(name: String, color: String, dashed: Bool)]) -> String {
        var s = ""
        for (i, entry) in entries.enumerated() {
            let x = left + plotWidth + 14, y = top + 10 + Double(i) * 20
            let dash = entry.dashed ? #" stroke-dasharray="6,4""# : ""
            s += #"<line x1="\#(f(x))" y1="\#(f(y))" x2="\#(f(x + 24))" y2="\#(f(y))" stroke="\#(entry.color)" stroke-width="2"\#(dash)/>"# + "\n"
            s += text(entry.name, x: x + 30, y: y + 4, anchor: "start", size: 11)
        }
        return s
    }

    static func text(_ content: String, x: Double, y: Double, anchor: String, size: Int, weight: String = "normal") -> String {
        #"<text x="\#(f(x))" y="\#(f(y))" text-anchor="\#(anchor)" font-size="\#(size)" font-weight="\#(weight)">\#(escape(content))</text>"# + "\n"
    }

    static func document(_ body: String, width: Double = width, height: Double = height) -> String {
        #"<?xml version="1.0" encoding="UTF-8"?>"# + "\n" +
            #"<svg xmlns="http://www.w3.org/2000/svg" width="\#(f(width))" height="\#(f(height))" viewBox="0 0 \#(f(width)) \#(f(height))" font-family="sans-serif">"# + "\n" +
            body + "</svg>\n"
    }

    /// A square matrix as a heatmap with the value printed in every cell: `values[row][column]`
    /// in [0, 1] (NaN: a grey cell without a number), rows and columns both named by `labels`.
    /// Cells shade from white (0) to dark blue (1); numbers are percentages.
    public static func matrix(title: String, rowAxis: String, columnAxis: String, labels: [String],
                              values: [[Double]], notes: [String] = []) -> String {
        let n = labels.count
        precondition(values.count == n && values.allSatisfy { $0.count == n }, "matrix must be \(n) x \(n)")
        let cell = 44.0, labelWidth = 130.0, top = 70.0 + 16 * Double(notes.count), columnLabels = 110.0
        let width = labelWidth + 30 + Double(n) * cell + 20, height = top + columnLabels + Double(n) * cell + 40
        let gridLeft = labelWidth + 30, gridTop = top + columnLabels
        var body = #"<rect x="0" y="0" width="\#(f(width))" height="\#(f(height))" fill="white"/>"# + "\n"
        body += text(title, x: 12, y: 24, anchor: "start", size: 14, weight: "bold")
        for (i, note) in notes.enumerated() { body += text(note, x: 12, y: 46 + 16 * Double(i), anchor: "start", size: 12) }
        body += text(columnAxis, x: gridLeft + Double(n) * cell / 2, y: top - 6, anchor: "middle", size: 12, weight: "bold")
        let rowAxisY = gridTop + Double(n) * cell / 2
        body += #"<text x="16" y="\#(f(rowAxisY))" text-anchor="middle" font-size="12" font-weight="bold" transform="rotate(-90 16 \#(f(rowAxisY)))">\#(escape(rowAxis))</text>"# + "\n"
        for (i, label) in labels.enumerated() {
            let x = gridLeft + (Double(i) + 0.5) * cell
            body += #"<text x="\#(f(x))" y="\#(f(gridTop - 6))" text-anchor="start" font-size="11" transform="rotate(-60 \#(f(x)) \#(f(gridTop - 6)))">\#(escape(label))</text>"# + "\n"
            body += text(label, x: gridLeft - 6, y: gridTop + (Double(i) + 0.5) * cell + 4, anchor: "end", size: 11)
        }
        for r in 0..<n {
            for c in 0..<n {
                let v = values[r][c], x = gridLeft + Double(c) * cell, y = gridTop + Double(r) * cell
                let fill: String, ink: String
                if v.isFinite {
                    let t = min(max(v, 0), 1)
                    // White -> rgb(8, 48, 107) (the dark end of a blue ramp).
                    fill = "rgb(\(Int((255 - 247 * t).rounded())),\(Int((255 - 207 * t).rounded())),\(Int((255 - 148 * t).rounded())))"
                    ink = t > 0.5 ? "white" : "rgb(34,34,34)"
                } else {
                    (fill, ink) = ("rgb(230,230,230)", "rgb(34,34,34)")
                }
                let stroke = r == c ? #" stroke="rgb(51,51,51)" stroke-width="1.5""# : #" stroke="white""#
                body += #"<rect x="\#(f(x))" y="\#(f(y))" width="\#(f(cell))" height="\#(f(cell))" fill="\#(fill)"\#(stroke)><title>\#(escape(labels[r])) -> \#(escape(labels[c])): \#(v.isFinite ? String(format: "%.4f", v) : "none")</title></rect>"# + "\n"
                if v.isFinite {
                    body += #"<text x="\#(f(x + cell / 2))" y="\#(f(y + cell / 2 + 4))" text-anchor="middle" font-size="11" fill="\#(ink)">\#(String(format: "%.0f", v * 100))</text>"# + "\n"
                }
            }
        }
        return document(body, width: width, height: height)
    }

    static func f(_ v: Double) -> String { String(format: "%.1f", v) }

    public static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
}
