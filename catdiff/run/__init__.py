"""The run machinery: the Engine and what it drives (config, training loop, batches, evaluation,
checkpoints, exports, the run directory, DDP). Plugins use a few helpers of it (atomic writes,
the training log); the interfaces they implement are in catdiff.api."""
