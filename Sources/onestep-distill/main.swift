print("onestep-distill: not built yet")
