"""The engine: online steps and the inner loop (inner), meta-training (meta), the fast
meta-gradient (lowrank, adjoint, input_layer) and the population split (parallel,
workers). It writes no files; experiments put its records into stores."""
