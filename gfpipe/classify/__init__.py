"""The classify job's parts (the driver is `gfpipe.pipeline`): output layout and part files,
the read/decode stage, the model actor, the budget ledger, shard state and the run summary.

Only `replica` and the driver touch Ray, and only inside functions; importing this package does
not import Ray.
"""
