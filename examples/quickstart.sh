#!/usr/bin/env bash
# Install Enigma into .venv and run the main job on the embedded default (local storage,
# SQLite manifest): init a repository, back up DIR (default: this repository's examples/),
# list, verify, restore and compare bit for bit. Usage: bash examples/quickstart.sh [DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
source_dir="$(cd "${1:-$here/examples}" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/enigma-quickstart.XXXXXX")"

if [ ! -x "$here/.venv/bin/enigma" ]; then
  echo "== installing enigma into $here/.venv"
  python3 -m venv "$here/.venv"
  "$here/.venv/bin/python" -m pip install --quiet -e "$here"
fi
enigma() { echo "\$ enigma $*" >&2; "$here/.venv/bin/enigma" --config-dir "$work/config" "$@"; }
export ENIGMA_PASSPHRASE="${ENIGMA_PASSPHRASE:-quickstart-demo-passphrase}"

echo "== repository in $work/config, backing up $source_dir"
enigma init
id="$(enigma backup "$source_dir")"
enigma list
enigma status
enigma verify "$id"
enigma restore "$id" "$work/restored"
diff -r --no-dereference "$source_dir" "$work/restored${source_dir}"
echo "== restored tree is identical to $source_dir (diff -r found no difference)"
echo "== try more: ENIGMA_PASSPHRASE=... $here/.venv/bin/enigma --config-dir $work/config --help"
