import TestSupport
import XCTest
@testable import Engine
