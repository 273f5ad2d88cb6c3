import OnestepCore
enum ServeCommand {
    static func run(_ args: [String]) throws {
        throw FlagError("the HTTP server is not built yet")
    }
}
