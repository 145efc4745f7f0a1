import Foundation
import XCTest

/// A test case with a fresh folder per test, removed afterwards.
open class TemporaryFolderTestCase: XCTestCase {
    public var folder: URL!

    override open func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("\(type(of: self))-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override open func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: folder)
    }

    public func path(_ name: String) -> String { folder.appendingPathComponent(name).path }
}
