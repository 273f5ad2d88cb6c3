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

    /// A JSON integer (no fraction, not a boolean).
    public static func integer(_ v: Any) -> Int? {
        guard let n = number(v) else { return nil }
        let d = n.doubleValue
        guard d.isFinite, d == d.rounded(), abs(d) < 9.0e15 else { return nil }
        return Int(d)
    }

    public static func bool(_ v: Any) -> Bool? {
        guard isBool(v), let n = v as? NSNumber else { return nil }
        return n.boolValue
    }
}
