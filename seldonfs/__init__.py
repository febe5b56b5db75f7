"""SeldonFS: a policy-enforcing FUSE filesystem over a plain backing directory."""

__version__ = "0.1.0"

#: Version of the on-disk store layout (store.json, data/, catalog.sqlite).
#: A store written with another version is refused with exit code 14.
FORMAT_VERSION = 1
