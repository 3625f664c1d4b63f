#!/usr/bin/env bash
# tests/load/soak.sh: the soak test (issue 9) for a chosen duration.
#
#   tests/load/soak.sh GPTD_BINARY MODEL_DIR [SECONDS]     (default 1800: the 30-minute run)
#
# Mixed traffic against one `gptd serve` on loopback: normal streams, 10% random disconnects,
# 5% bad requests from the catalogue; at the end zero unexpected statuses, RSS within +2% (or
# +16 MiB) of its value after warm-up, fds and threads back to baseline, the KV pool full again,
# and started == completed + cancelled + rejected + failed in /metrics. The work is done by
# tests/load/loadtool.py's soak scenario, which `meson test --suite load` runs for 2 minutes.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '4p' "$0" | sed 's/^# *//'; exit 2; }
exec python3 "$(dirname "$0")/loadtool.py" "$1" "$2" soak --seconds "${3:-1800}"
