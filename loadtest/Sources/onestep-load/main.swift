// onestep-load: open-loop, coordinated-omission-correct HTTP load tester. See loadtest/README.md.
import Foundation
import OnestepLoad

exit(LoadTool.main(arguments: Array(CommandLine.arguments.dropFirst())))
