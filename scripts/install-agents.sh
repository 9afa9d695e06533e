#!/usr/bin/env bash
# Installs the agent CLIs that `make agents-e2e` drives (tests/test_agents_e2e.py) from the npm
# registry into a project-local prefix (.agents/npm, git-ignored; never global). Idempotent: a
# stamp naming the versions makes a second run a no-op, and npm's own cache (~/.npm) makes a
# reinstall quick. Versions are pinned to the ones verified against the gateway.
#
# Claude Code must be named with its version (or @latest): a bare `npm i @anthropic-ai/claude-code`
# picks an old release whose `engines` accepts node 20. Newer ones ask for node>=22 (an EBADENGINE
# warning only): the CLI is a native binary from @anthropic-ai/claude-code-linux-x64 and does not
# run on node. npm 11 skips its postinstall (not allow-listed); the binary works without it.
set -euo pipefail
cd "$(dirname "$0")/.."

CLAUDE_CODE_VERSION=${CLAUDE_CODE_VERSION:-2.1.332}
CODEX_VERSION=${CODEX_VERSION:-0.171.0}
PREFIX=${AGENTS_PREFIX:-.agents/npm}
STAMP=$PREFIX/.installed
WANT="@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION @openai/codex@$CODEX_VERSION"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
  && [ -x "$PREFIX/node_modules/.bin/claude" ] && [ -x "$PREFIX/node_modules/.bin/codex" ]; then
  echo "agents: $WANT already in $PREFIX"
  exit 0
fi
command -v npm >/dev/null || { echo "agents: npm is missing (Debian: apt-get install npm)" >&2; exit 1; }
started=$(date +%s)
mkdir -p "$PREFIX"
# shellcheck disable=SC2086 # WANT is a list of package specs
npm install --prefix "$PREFIX" --save-exact --no-audit --no-fund --loglevel=error $WANT
echo "$WANT" > "$STAMP"
echo "agents: installed $WANT into $PREFIX in $(( $(date +%s) - started )) s"
