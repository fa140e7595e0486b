"""The cut-out stage: plan shards, cut each with Montage into the Zarr store, gather, channel
statistics."""
