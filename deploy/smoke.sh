#!/usr/bin/env bash
# A smoke test of samserve on a real cluster: apply an overlay to the current kubectl context,
# wait until every part is ready, then run one SDK embed and segment through port-forwards
# and print what came back.
#
#   deploy/smoke.sh                          # the dev overlay, namespace samserve
#   deploy/smoke.sh -k deploy/overlays/prod-gke --timeout 1200s
#   deploy/smoke.sh --no-apply               # only check what is already deployed
#
# Needs kubectl (a context with access to the namespace) and a Python with the SDK
# (pip install ./clients/python; PYTHON=... to choose it). Exit status: 0 all checks passed,
# 1 a check failed (the output says which, with the pods' state and logs), 2 bad usage or a
# missing tool.
#
# Its logic is tested against kubectl output written in kubectl's formats, with a fake
# kubectl that forwards to a local samserve (tests/deploy/test_smoke.py); it has not been run
# against a real cluster from this repository.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
namespace=samserve
overlay="$here/overlays/dev"
timeout=600s
apply=1
python=${PYTHON:-python3}
workloads=(statefulset/samserve-redis deployment/samserve-triton
           deployment/samserve-embedding deployment/samserve-decoder)

usage() {
  sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

say() { printf 'smoke: %s\n' "$*"; }
fail() { printf 'smoke: FAILED: %s\n' "$*"; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    -n | --namespace) namespace=${2:?}; shift 2 ;;
    -k | --overlay) overlay=${2:?}; shift 2 ;;
    --timeout) timeout=${2:?}; shift 2 ;;
    --no-apply) apply=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

command -v kubectl > /dev/null || { echo "smoke: kubectl not found" >&2; exit 2; }
command -v "$python" > /dev/null || { echo "smoke: $python not found (PYTHON=...)" >&2; exit 2; }
"$python" -c "import samserve_client" 2> /dev/null \
  || { echo "smoke: $python cannot import samserve_client (pip install ./clients/python)" >&2; exit 2; }

k() { kubectl -n "$namespace" "$@"; }

workdir=$(mktemp -d)
forwarders=()
cleanup() {
  for pid in "${forwarders[@]}"; do
    kill "$pid" 2> /dev/null || true
    wait "$pid" 2> /dev/null || true
  done
  rm -rf "$workdir"
}
trap cleanup EXIT

# Pods that are not ready, with why and the end of their logs: what to look at first.
diagnose() {
  say "pods in $namespace:"
  k get pods -o wide | sed 's/^/  /'
  local pod phase ready
  while IFS=$'\t' read -r pod phase ready; do
    [ -n "$pod" ] || continue
    case "$ready" in *false* | "") ;; *) continue ;; esac
    say "pod $pod is $phase, containers ready: ${ready%,}"
    k get pod "$pod" -o jsonpath='{range .status.initContainerStatuses[*]}{.name}{": "}{.state}{"\n"}{end}{range .status.containerStatuses[*]}{.name}{": "}{.state}{"\n"}{end}' \
      | sed 's/^/    /'
    k logs "$pod" --all-containers --tail=20 2>&1 | sed 's/^/    log: /' || true
  done < <(k get pods -o jsonpath='{range .items[*]}{.metadata.name}{"\t"}{.status.phase}{"\t"}{range .status.containerStatuses[*]}{.ready}{","}{end}{"\n"}{end}')
  say "recent events:"
  k get events --sort-by=.lastTimestamp 2>&1 | tail -n 15 | sed 's/^/  /'
}

say "context $(kubectl config current-context), namespace $namespace"

if [ "$apply" = 1 ]; then
  say "applying $overlay"
  kubectl apply -k "$overlay" | sed 's/^/  /'
fi

for w in "${workloads[@]}"; do
  if ! k rollout status "$w" --timeout="$timeout" > "$workdir/rollout" 2>&1; then
    sed 's/^/  /' "$workdir/rollout"
    diagnose
    fail "$w is not ready after $timeout"
  fi
  say "$w ready"
done

for svc in samserve-embedding samserve-decoder; do
  ready=$(k get endpointslices -l "kubernetes.io/service-name=$svc" \
    -o jsonpath='{range .items[*].endpoints[*]}{.conditions.ready}{"\n"}{end}' | grep -c '^true$' || true)
  [ "$ready" -ge 1 ] || { diagnose; fail "service $svc has no ready endpoint"; }
  say "service $svc: $ready ready endpoint(s)"
done

# kubectl picks a free local port (":PORT") and says which: "Forwarding from 127.0.0.1:N -> P".
# Sets the variable named by $3 to that port.
forward() {
  local svc=$1 port=$2 log="$workdir/forward-$1" found="" i
  : > "$log"
  # kubectl itself in the background (not through k): $! must be its pid, to stop it.
  kubectl -n "$namespace" port-forward "svc/$svc" ":$port" > "$log" 2>&1 &
  forwarders+=($!)
  for ((i = 0; i < 150; i++)); do
    found=$(sed -n 's/^Forwarding from 127\.0\.0\.1:\([0-9]*\) -> .*/\1/p' "$log" | head -n 1)
    [ -n "$found" ] && break
    kill -0 "${forwarders[-1]}" 2> /dev/null || break
    sleep 0.2
  done
  [ -n "$found" ] || { sed 's/^/  /' "$log"; fail "port-forward to $svc did not start"; }
  printf -v "$3" '%s' "$found"
}

embedding_port="" decoder_port=""
forward samserve-embedding 50051 embedding_port
forward samserve-decoder 50052 decoder_port
say "port-forwards: embedding 127.0.0.1:$embedding_port, decoder 127.0.0.1:$decoder_port"

# One image the tiny model knows (a bright square on a dark ground), embedded twice (the
# second must come from the cache) and segmented with a click inside the square.
if ! "$python" - "127.0.0.1:$embedding_port" "127.0.0.1:$decoder_port" > "$workdir/sdk" 2>&1 <<'PY'
import sys
import time

import numpy as np
from samserve_client import SamClient

embedding, decoder = sys.argv[1], sys.argv[2]
image = np.full((240, 320, 3), 20, np.uint8)
image[60:180, 100:220] = (230, 200, 40)
# A pixel that differs per run, so the first embed really encodes.
image[0, 0] = (int(time.time()) % 256, 0, 0)
with SamClient(embedding_address=embedding, decoder_address=decoder) as client:
    first = client.embed(image)
    again = client.embed(image)
    result = client.segment(first, points=[[160, 120]], labels=[1])
best = int(np.argmax(result.scores))
mask = result.masks[best]
inside = int(mask[60:180, 100:220].sum())
print(f"embed: image_id {first.image_id[:16]}... cached {first.cached}, again cached {again.cached}")
print(f"segment: {len(result.scores)} masks of {mask.shape[1]}x{mask.shape[0]}, "
      f"best score {float(result.scores[best]):.3f}, {int(mask.sum())} px, {inside} inside the square")
problems = []
if not again.cached:
    problems.append("the second embed of the same image was not cached")
if mask.shape != image.shape[:2]:
    problems.append(f"mask shape {mask.shape} is not the image's {image.shape[:2]}")
if not mask.any():
    problems.append("the best mask is empty")
for p in problems:
    print(f"problem: {p}")
sys.exit(1 if problems else 0)
PY
then
  sed 's/^/  /' "$workdir/sdk"
  fail "the SDK calls did not give the expected answers"
fi
sed 's/^/  /' "$workdir/sdk"
say "OK"
