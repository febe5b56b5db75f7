# SeldonFS in a container: mounts a store inside it (SPEC §6).
#
#   docker build -t seldonfs .
#   docker run -d --name seldonfs --device /dev/fuse --cap-add SYS_ADMIN \
#       -v seldonfs-data:/var/lib/seldonfs seldonfs
#
# The mount is at /mnt/seldonfs inside the container; docs/deploy.md says how
# to reach it and how to pass the key or passphrase.

# --- build: wheels for seldonfs and its dependencies (pyfuse3 compiles
# against libfuse3; the compiler and headers stay in this stage). The
# dependencies are requirements.lock's versions, each checked against its
# hashes (scripts/lock makes the file, for this image's Python 3.11).
FROM python:3.11-slim-bookworm AS build
# Debian's versions in a stable release only get security fixes: pinning
# them would break the build at the next point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        gcc libc6-dev libfuse3-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --require-hashes --wheel-dir /wheels -r requirements.lock \
    && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- run: fusermount3, libfuse3 and libmagic, no compiler
FROM python:3.11-slim-bookworm
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        fuse3 libmagic1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
# every wheel of the build stage, and nothing from an index
RUN pip install --no-cache-dir --no-index /wheels/*.whl \
    && rm -rf /wheels \
    && mkdir -p /var/lib/seldonfs /mnt/seldonfs
COPY contrib/docker/entrypoint /usr/local/bin/seldonfs-entrypoint
ENV SELDONFS_STORE=/var/lib/seldonfs/store \
    SELDONFS_MOUNT=/mnt/seldonfs
VOLUME ["/var/lib/seldonfs"]
# seldonfs mount -f unmounts cleanly on SIGTERM (docker stop)
STOPSIGNAL SIGTERM
# healthy while the mount answers on its control socket (root is let in by
# its credentials): exit 10 when nothing is mounted, 1 when the daemon does
# not answer. A critical alert ("degraded") still answers: docker inspect
# and `seldonfs ctl MNT health` show it.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD seldonfs ctl "$SELDONFS_MOUNT" health > /dev/null || exit 1
ENTRYPOINT ["seldonfs-entrypoint"]
