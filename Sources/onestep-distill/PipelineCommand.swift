import Foundation
import OnestepCore
import OnestepTrain

let pipelineCommand = Command(name: "pipeline", summary: "(in progress)", flags: [])
func runPipeline(_ flags: Flags) throws { throw UsageError("pipeline: not built yet") }
