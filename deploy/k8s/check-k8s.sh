#!/usr/bin/env bash
# make check-k8s: the Kubernetes manifests of deploy/k8s, checked offline.
#
# Renders them with `kubectl kustomize` (parses every manifest and the
# kustomization; Debian's kubernetes-client, installed here when no kubectl
# exists) and checks what committee relies on: every teacher Service is
# headless (DNS answers one address per ready pod, which the trainer follows),
# selects its Deployment's pods and names the ports the pods open; every
# teacher has /readyz and /healthz probes and Prometheus scrape annotations;
# the trainer Job's --teacher endpoints name those Services; then kubectl's
# client-side dry run decodes every object offline (`kubectl label --local
# --dry-run=client`).  Where a cluster answers, `kubectl apply --dry-run=client`
# runs as well (apply needs an API server's discovery even for a client dry
# run); these manifests have not been run on a live cluster.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
fail() { echo "FAIL check-k8s: $*"; exit 1; }

if ! command -v kubectl >/dev/null; then
    [ "$(id -u)" -eq 0 ] || fail "kubectl is missing (apt-get install kubernetes-client as root)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q kubernetes-client >/dev/null ||
        { apt-get update -q >/dev/null && apt-get install -y -q kubernetes-client >/dev/null; } ||
        fail "cannot install kubernetes-client"
fi
rendered=$(mktemp "${TMPDIR:-/tmp}/committee-k8s.XXXXXX")
trap 'rm -f "$rendered"' EXIT
kubectl kustomize "$here" >"$rendered" || fail "kubectl kustomize $here failed"
echo "ok   check-k8s: kubectl kustomize renders $(grep -c '^kind:' "$rendered") objects"

# The objects, one paragraph each, for the checks below.
objects() { awk -v RS='\n---\n' -v kind="$1" -v name="$2" \
    '$0 ~ "\nkind: " kind "\n" && $0 ~ "\n  name: " name "\n"' "$rendered"; }
for teacher in fm comp; do
    service=$(objects Service "$teacher")
    deployment=$(objects Deployment "$teacher")
    [ -n "$service" ] || fail "no Service $teacher"
    [ -n "$deployment" ] || fail "no Deployment $teacher"
    grep -q 'clusterIP: None' <<<"$service" || fail "Service $teacher is not headless"
    grep -q "app.kubernetes.io/component: $teacher" <<<"$service" || fail "Service $teacher selects no $teacher pods"
    for port in zmq http; do
        grep -q "targetPort: $port" <<<"$service" || fail "Service $teacher does not name port $port"
        grep -q "name: $port" <<<"$deployment" || fail "Deployment $teacher opens no port $port"
    done
    grep -q 'path: /readyz' <<<"$deployment" || fail "Deployment $teacher has no /readyz probe"
    grep -q 'path: /healthz' <<<"$deployment" || fail "Deployment $teacher has no /healthz probe"
    grep -q 'prometheus.io/scrape: "true"' <<<"$deployment" || fail "Deployment $teacher is not scraped"
    grep -q -- "- tcp://0.0.0.0:5555" <<<"$deployment" || fail "teacher $teacher does not bind port 5555"
    grep -q "$teacher=tcp://$teacher:5555" <<<"$(objects Job trainer)" ||
        fail "the trainer Job does not find $teacher through its Service"
done
echo "ok   check-k8s: headless Services, probes, scrape annotations, trainer endpoints"

# kubectl's own client-side dry run, offline: `label --local` decodes every rendered object
# without asking a server; each must come out as kind/name, and all of them.
names=$(kubectl label --local --dry-run=client -f "$rendered" checked=yes -o name) ||
    fail "kubectl label --local --dry-run=client refused the rendered manifests"
expected="deployment.apps/comp deployment.apps/fm job.batch/trainer namespace/committee
persistentvolumeclaim/committee-models persistentvolumeclaim/committee-runs service/comp
service/fm"
[ "$(echo "$names" | sort | xargs)" = "$(echo "$expected" | xargs)" ] ||
    fail "kubectl --dry-run=client decoded [$(echo "$names" | xargs)], expected [$(echo "$expected" | xargs)]"
echo "ok   check-k8s: kubectl --dry-run=client (offline, --local) decodes all $(echo "$names" | wc -l) objects"
if timeout 10 kubectl version >/dev/null 2>&1; then
    kubectl apply --dry-run=client -k "$here" || fail "kubectl apply --dry-run=client failed"
    echo "ok   check-k8s: kubectl apply --dry-run=client"
else
    echo "SKIP check-k8s: kubectl apply --dry-run=client (no cluster answers; it needs one for discovery)"
fi
echo "PASS check-k8s"
