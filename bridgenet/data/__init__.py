"""Data in, in the order it flows: files on disk -> samples -> visible depth -> the cache -> batches.

``samples`` (records and file readers), ``mvtec`` and ``eyecandies`` (the two layouts),
``readers`` (a data set's categories, its index, one sample's arrays), ``depth`` (visible
depth from a point cloud), ``cache`` (the preprocessing cache and the :class:`CachedSplit`
every stage after preprocessing reads), ``batch`` (the network's input :class:`Batch`).
``synth/`` renders the embedded synthetic data set and is needed by nothing else;
``families`` holds its defect types' families (read by evaluation, without the renderer).
"""
