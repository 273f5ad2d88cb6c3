print("onestep-load: not built yet")
