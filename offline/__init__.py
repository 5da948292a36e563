"""MOReL and the model-free offline baseline suite, on Minari datasets (`envs.load_dataset`)."""
