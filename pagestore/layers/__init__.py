"""Layer files: the immutable, checksummed on-disk form of a timeline's (key, LSN) values.

``names`` builds and parses Neon-style file names, ``format`` holds the shared header,
block and index layout, ``delta`` and ``image`` are the two kinds of layer.
"""
