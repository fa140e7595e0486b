"""The cut-out stage: plan shards, cut each with Montage into the Zarr store, gather, channel
statistics.

One module per job: ``settings`` (which config keys count where), ``plan`` (rule plan_shards),
``store`` (the Zarr store's layout, writer and reader), ``cut`` (one cut-out job), ``gather``,
``stats``, ``digests`` (which code edits rerun or re-cut what); ``montage`` and ``frame_files``
make one object's cut-out, ``pictures`` its colour picture. This file imports none of them: it is
in the code digest of everything that imports any of them.
"""
