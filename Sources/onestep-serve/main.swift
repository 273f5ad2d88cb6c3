print("onestep-serve: not built yet")
