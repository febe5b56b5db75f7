# shellcheck shell=bash
# Sourced by scripts/run and scripts/test: installs what is missing, idempotently.
#   system: fuse3, libfuse3-dev, libmagic1, pkg-config, a C compiler, python3-venv,
#           tmux (the test of seldonfs top's terminal view)
#   python: a virtualenv at $SELDONFS_VENV (default: .venv in the checkout)
#           with seldonfs and its test dependencies
#   mount(8) helper links /sbin/mount.fuse.seldonfs and /sbin/mount.seldonfs
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${SELDONFS_VENV:-$REPO/.venv}

need_apt=()
for pkg in fuse3 libfuse3-dev libmagic1 pkg-config gcc python3-dev python3-venv attr rsync tmux; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
	if [[ $(id -u) -ne 0 ]]; then
		echo "setup: missing Debian packages ${need_apt[*]}; run as root or install them" >&2
		exit 1
	fi
	echo "setup: apt-get install ${need_apt[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

stamp=$VENV/.seldonfs-installed
if [[ ! -x $VENV/bin/python || ! -f $stamp || $REPO/pyproject.toml -nt $stamp ]]; then
	echo "setup: virtualenv $VENV" >&2
	python3 -m venv "$VENV"
	"$VENV/bin/pip" install -q --upgrade pip >/dev/null
	"$VENV/bin/pip" install -q -e "$REPO[test]"
	touch "$stamp"
fi

if [[ $(id -u) -eq 0 ]]; then
	for name in mount.fuse.seldonfs mount.seldonfs; do
		[[ $(readlink "/sbin/$name" 2>/dev/null) == "$VENV/bin/mount.seldonfs" ]] ||
			ln -sfn "$VENV/bin/mount.seldonfs" "/sbin/$name"
	done
fi
