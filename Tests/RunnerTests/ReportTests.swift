import ArtifactStore
import Foundation
import TestSupport
import XCTest
@testable import Runner

/// `wsss report` on Pipelines/ci.yaml, opened in headless Chromium (Debian's `chromium`, which
/// `make deps` installs): every image loads and every table cell says something. The page itself
/// has no script; the check runs in a copy of it with one inline script added that, on `load`,
/// writes what it found into the DOM, which `chromium --dump-dom` prints. A screenshot of the
/// page is kept as .build/test-outputs/report-ci.png.
final class ReportTests: XCTestCase {
    var workspace: TestWorkspace?

    override func tearDown() {
        workspace?.remove()
    }

    static func chromium() throws -> String {
        for path in ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"] where FileManager.default.isExecutableFile(atPath: path) {
            return path
        }
        throw RunnerError("no chromium: `make deps` installs Debian's chromium package, which the report test opens the page in")
    }

    /// What the browser found on a page.
    struct PageCheck: Decodable {
        var images: Int
        var broken: [String]
        var cells: Int
        /// Cells with neither text nor a picture ("table#id row r column c").
        var empty: [String]
        /// Cells marked "not run yet" and "— not in this pipeline" (or another split, ...).
        var missing: Int
        var na: Int
        var height: Int
    }

    static let checkScript = """
    <script>
    window.addEventListener('load', function () {
      var images = Array.from(document.images);
      var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).map(function (i) { return i.getAttribute('src'); });
      var cells = Array.from(document.querySelectorAll('td, th'));
      var empty = cells.filter(function (c) { return c.textContent.trim() === '' && !c.querySelector('img'); })
        .map(function (c) { return 'table#' + c.closest('table').id + ' row ' + c.parentElement.rowIndex + ' column ' + c.cellIndex; });
      var result = {images: images.length, broken: broken, cells: cells.length, empty: empty,
        missing: document.querySelectorAll('td.missing').length, na: document.querySelectorAll('td.na').length,
        height: document.documentElement.scrollHeight};
      var pre = document.createElement('pre');
      pre.id = 'page-check';
      pre.textContent = JSON.stringify(result);
      document.body.appendChild(pre);
    });
    </script>
    """

    /// Opens a copy of `folder/index.html` with the check script (beside it, so that relative
    /// image paths resolve) and returns what the script found.
    func check(_ folder: String) throws -> PageCheck {
        let page = try String(contentsOfFile: folder + "/index.html", encoding: .utf8)
        let harness = folder + "/.check.html"
        try page.replacingOccurrences(of: "</body>", with: Self.checkScript + "</body>").write(toFile: harness, atomically: true, encoding: .utf8)
        defer { unlink(harness) }
        let result = try ProcessRunner.run(URL(fileURLWithPath: try Self.chromium()), [
            "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000", "--dump-dom", "file://" + harness,
        ])
        XCTAssertEqual(result.status, 0, result.stderr)
        guard let start = result.stdout.range(of: #"<pre id="page-check">"#),
              let end = result.stdout.range(of: "</pre>", range: start.upperBound..<result.stdout.endIndex) else {
            throw RunnerError("the check script wrote nothing into the page (chromium: \(result.stderr.suffix(2000)))")
        }
        let json = String(result.stdout[start.upperBound..<end.lowerBound])
            .replacingOccurrences(of: "&quot;", with: "\"").replacingOccurrences(of: "&lt;", with: "<")
            .replacingOccurrences(of: "&gt;", with: ">").replacingOccurrences(of: "&amp;", with: "&")
        return try JSONDecoder().decode(PageCheck.self, from: Data(json.utf8))
    }

    func testCIReportLoadsInChromium() throws {
        let chromium = try Self.chromium()
        let workspace = try TestWorkspace()
        self.workspace = workspace
        let ci = try String(contentsOf: Repository.root.appendingPathComponent("Pipelines/ci.yaml"), encoding: .utf8)
        try workspace.write(ci, to: "Pipelines/ci.yaml")
        // The random-weight stem fixture stands in for the downloaded ImageNet stem.
        try FileManager.default.createDirectory(atPath: workspace.path("Artifacts/pretrained"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: StemFixture.path, toPath: workspace.path("Artifacts/pretrained/efficientnet-lite0-stem.h5"))
        let run = try workspace.wsss(["run", "Pipelines/ci.yaml", "-j", "2"])
        XCTAssertEqual(run.0, 0, run.1 + run.2)

        let report = try workspace.wsss(["report", "Pipelines/ci.yaml", "--out", "Artifacts/report"])
        XCTAssertEqual(report.0, 0, report.1 + report.2)
        XCTAssertTrue(report.1.hasPrefix("Artifacts/report/index.html: "), report.1)
        let folder = workspace.path("Artifacts/report")
        let html = try String(contentsOfFile: folder + "/index.html", encoding: .utf8)
        XCTAssertFalse(html.contains("<script"), "the page has no script")
        XCTAssertTrue(html.contains("Every stage of every pipeline is up to date"))
        // Provenance: the seeds' metrics file with its content hash.
        let seedsMetrics = try ContentHash.ofFile(workspace.path("Artifacts/ci/eval-seeds.json"))
        XCTAssertTrue(html.contains(seedsMetrics), "provenance lists eval-seeds.json's hash")

        let page = try check(folder)
        XCTAssertEqual(page.broken, [], "images that did not load")
        XCTAssertEqual(page.empty, [], "cells without a value")
        XCTAssertEqual(page.missing, 0, "ci.yaml has run: no cell may say 'not run yet'")
        // 4 train + 4 val images, each in 7 columns; charts for 5 evaluated stages, 2 confusions, ...
        XCTAssertGreaterThan(page.images, 60)
        XCTAssertGreaterThan(page.na, 0, "val images have no seeds: those cells say so")

        // The screenshot, kept as a test output.
        let outputs = Repository.root.appendingPathComponent(".build/test-outputs")
        try FileManager.default.createDirectory(at: outputs, withIntermediateDirectories: true)
        let screenshot = outputs.appendingPathComponent("report-ci.png").path
        try? FileManager.default.removeItem(atPath: screenshot)
        let shot = try ProcessRunner.run(URL(fileURLWithPath: chromium), [
            "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--screenshot=" + screenshot,
            "--window-size=1400,\(min(max(page.height, 800), 16000))", "file://" + folder + "/index.html",
        ])
        XCTAssertEqual(shot.status, 0, shot.stderr)
        XCTAssertTrue(FileManager.default.fileExists(atPath: screenshot), "no screenshot at \(screenshot)")
        print("report: \(report.1.trimmingCharacters(in: .whitespacesAndNewlines)); \(page.images) images, \(page.cells) cells, page height \(page.height) px; screenshot \(screenshot)")

        // With a pipeline that has not run, the page still renders, says so at the top and marks
        // its cells "not run yet" (told apart from "— not in this pipeline").
        try workspace.write(ci.replacingOccurrences(of: "name: ci\n", with: "name: ci-other\n")
            .replacingOccurrences(of: "  seed: 0\n", with: "  seed: 1\n"), to: "Pipelines/ci-other.yaml")
        let both = try workspace.wsss(["report", "Pipelines/ci.yaml", "Pipelines/ci-other.yaml", "--out", "Artifacts/report-both", "--images", "2"])
        XCTAssertEqual(both.0, 0, both.1 + both.2)
        XCTAssertTrue(both.2.contains("note: ci-other: not run (wsss run Pipelines/ci-other.yaml)"), both.2)
        let bothHTML = try String(contentsOfFile: workspace.path("Artifacts/report-both/index.html"), encoding: .utf8)
        XCTAssertTrue(bothHTML.contains("<b>ci-other</b> has not run"), "the banner names the pipeline that has not run")
        let bothPage = try check(workspace.path("Artifacts/report-both"))
        XCTAssertEqual(bothPage.broken, [])
        XCTAssertEqual(bothPage.empty, [])
        XCTAssertGreaterThan(bothPage.missing, 10, "ci-other's cells say 'not run yet'")
    }
}
