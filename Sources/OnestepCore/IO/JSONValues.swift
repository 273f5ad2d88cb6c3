// Reading typed values out of JSONSerialization results. On Linux, JSON true/false and the numbers 0/1 all
// arrive as NSNumber and all cast to Bool, so booleans must be told apart by their stored type ("c").
import Foundation

public enum JSONValues {
    public static func isBool(_ v: Any) -> Bool {
        guard let n = v as? NSNumber else { return false }
        return String(cString: n.objCType) == "c"
    }

    /// A JSON number that is not a boolean.
    public static func number(_ v: Any) -> NSNumber? {
        guard let n = v as? NSNumber, !isBool(n) else { return nil }
        return n
    }

    /// Largest magnitude read as an exact integer: 2^53 - 1, the last integer every JSON parser keeps exact
    /// (the request seed's documented maximum; a bound of 9.0e15 refused it).
    public static let maxExactInteger = (1 << 53) - 1

    /// A JSON integer (no fraction, not a boolean), at most 2^53 - 1 in magnitude.
    public static func integer(_ v: Any) -> Int? {
        guard let n = number(v) else { return nil }
        let d = n.doubleValue
        guard d.isFinite, d == d.rounded(), abs(d) <= Double(maxExactInteger) else { return nil }
        // Foundation keeps integer literals as Int64: read those exactly (2^53 + 1 parses to a Double equal to 2^53).
        if let i = Int(exactly: n.int64Value), Double(i) == d { return abs(i) <= maxExactInteger ? i : nil }
        return Int(d)
    }

    public static func bool(_ v: Any) -> Bool? {
        guard isBool(v), let n = v as? NSNumber else { return nil }
        return n.boolValue
    }
}
