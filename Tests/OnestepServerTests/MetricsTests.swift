// The Prometheus text the server renders: label escaping, cumulative histogram buckets, gauges read at scrape.

import XCTest
@testable import OnestepServer

final class MetricsTests: XCTestCase {
    func testLabelsAreEscapedAsTheExpositionFormatRequires() {
        XCTAssertEqual(Metrics.labelString([]), "")
        XCTAssertEqual(Metrics.labelString([("route", "/healthz"), ("status", "200")]), #"{route="/healthz",status="200"}"#)
        XCTAssertEqual(Metrics.labelString([("m", "a\"b\\c\nd")]), #"{m="a\"b\\c\nd"}"#)
        XCTAssertEqual(Metrics.labelString([("m", "naïve ✓")]), #"{m="naïve ✓"}"#)
    }

    func testRenderCountersHistogramsAndGauges() {
        let m = Metrics()
        m.describe("t_total", help: "things", type: "counter")
        m.increment("t_total", [("k", "v")])
        m.increment("t_total", [("k", "v")], by: 2)
        m.describe("t_seconds", help: "durations", type: "histogram", bounds: [0.1, 1])
        for v in [0.05, 0.5, 0.5, 5] { m.observe("t_seconds", [("route", "/x")], v) }
        m.gauge("t_depth", help: "depth") { 7 }
        let text = m.render()
        let values = parseMetrics(text)
        XCTAssertEqual(values[#"t_total{k="v"}"#], 3)
        XCTAssertEqual(values[#"t_seconds_bucket{route="/x",le="0.1"}"#], 1)
        XCTAssertEqual(values[#"t_seconds_bucket{route="/x",le="1"}"#], 3)
        XCTAssertEqual(values[#"t_seconds_bucket{route="/x",le="+Inf"}"#], 4)
        XCTAssertEqual(values[#"t_seconds_count{route="/x"}"#], 4)
        XCTAssertEqual(values[#"t_seconds_sum{route="/x"}"#], 6.05)
        XCTAssertEqual(values["t_depth"], 7)
        XCTAssertTrue(text.contains("# TYPE t_seconds histogram\n"), text)
        XCTAssertTrue(text.contains("# HELP t_total things\n# TYPE t_total counter\n"), text)
        XCTAssertEqual(m.histogramCounts("t_seconds").count, 4)
    }
}
