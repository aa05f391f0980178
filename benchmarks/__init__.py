"""catdiff's benchmarks, each run from the repository root as ``python -m benchmarks.NAME [--quick]``;
``python -m benchmarks`` lists them. They share one harness, :mod:`benchmarks.harness`."""
