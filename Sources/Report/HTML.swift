import Foundation

/// The few HTML pieces the report page is written with: escaping and table cells. A cell always
/// says something: a value (with a link to where it came from), or one of two explicit markers
/// that a reader (and the browser test) can tell from a missing value:
/// - `na`: the pipeline has no such stage, metric or split ("— not in this pipeline");
/// - `missing`: the pipeline has the stage but it has not run yet ("not run yet").
enum HTML {
    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    /// A value cell whose content is already HTML.
    static func cell(_ html: String, numeric: Bool = false) -> String {
        numeric ? #"<td class="num">\#(html)</td>"# : "<td>\(html)</td>"
    }

    static func notApplicable(_ why: String = "not in this pipeline") -> String {
        #"<td class="na">— \#(escape(why))</td>"#
    }

    static func notRun(_ why: String = "not run yet") -> String {
        #"<td class="missing">\#(escape(why))</td>"#
    }

    static func header(_ cells: [String]) -> String {
        "<tr>" + cells.map { "<th>\(escape($0))</th>" }.joined() + "</tr>"
    }

    static func table(id: String, header: [String], rows: [[String]], caption: String? = nil) -> String {
        var out = #"<table id="\#(id)">"#
        if let caption { out += "<caption>\(caption)</caption>" }
        out += "<thead>" + self.header(header) + "</thead><tbody>\n"
        for row in rows { out += "<tr>" + row.joined() + "</tr>\n" }
        return out + "</tbody></table>\n"
    }

    /// A link to a provenance row.
    static func source(_ number: Int) -> String {
        ##"<a class="src" href="#src-\##(number)" title="source \##(number): see Provenance">[\##(number)]</a>"##
    }

    static func number(_ value: Double, digits: Int = 4) -> String {
        value.isFinite ? String(format: "%.\(digits)f", value) : "n/a"
    }

    static func seconds(_ value: Double) -> String {
        let whole = Int(value.rounded())
        return value < 60 ? String(format: "%.1f s", value) : String(format: "%d:%02d", whole / 60, whole % 60)
    }

    static let style = """
    body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1800px; }
    h1 { font-size: 1.5em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; } h3 { margin-bottom: .3em; }
    table { border-collapse: collapse; margin: .4em 0 1em; font-size: 13px; }
    caption { text-align: left; font-weight: bold; padding: .2em 0; }
    th, td { border: 1px solid #ccc; padding: 3px 6px; vertical-align: top; }
    th { background: #f2f2f2; text-align: left; }
    td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
    td.na { color: #888; font-style: italic; }
    td.missing { background: #fde8e8; color: #a00; font-weight: bold; }
    a.src { font-size: 10px; color: #46c; text-decoration: none; margin-left: 2px; vertical-align: super; }
    .banner { background: #fff4d6; border: 1px solid #e0b84c; padding: .6em 1em; margin: 1em 0; }
    .banner.ok { background: #eaf6ea; border-color: #8bc28b; }
    img.px { image-rendering: pixelated; width: 96px; height: 96px; display: block; }
    img.chart { width: 340px; height: auto; display: block; }
    img.wide { width: 640px; height: auto; display: block; }
    img.swatch { width: 16px; height: 16px; vertical-align: middle; border: 1px solid #999; margin-right: 4px; }
    figure { display: inline-block; margin: 0 6px 4px 0; } figcaption { font-size: 11px; color: #555; }
    .legend span { display: inline-block; margin-right: 14px; font-size: 13px; }
    code, .hash { font-family: monospace; font-size: 12px; }
    small { color: #555; }
    """
}
