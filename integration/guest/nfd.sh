# Sourced by cluster.sh: node-feature-discovery (nfd-master and nfd-worker,
# the version prepare.sh's nfd stage builds) run as plain processes in the
# guest, as its DaemonSet and Deployment would run them, so that armorshim's
# feature file reaches the Node's labels through NFD itself:
#   armorshim writes $NFD_FEATURES_D/armorshim-apparmor
#   -> nfd-worker (local source) puts its lines in the NodeFeature object
#      $NFD_NAMESPACE/$NFD_NODE
#   -> nfd-master turns the NodeFeature object into the Node's labels.
#
# What a pod would give them, and what stands in for it here (read from
# NFD v0.17.3's source):
#   * -kubeconfig: both build their client with utils.GetKubeconfig, which
#     falls back to the in-cluster config (not $KUBECONFIG) when it is empty.
#   * NODE_NAME (utils.NodeName): the worker names its NodeFeature object
#     after it; the master reads its own Node at start (updateMasterNode)
#     and exits if that fails.
#   * KUBERNETES_NAMESPACE (utils.GetKubernetesNamespace, used when the
#     service account's namespace file is absent): the worker's NodeFeature
#     object is namespaced; with no namespace it cannot be created.
#   * POD_NAME/POD_UID: only for the NodeFeature object's owner references;
#     -no-owner-refs says there is no pod to own it.
#   * -metrics=0 -grpc-health=0: both default to ports 8081 and 8082, and a
#     second process on the same ports fails (the health server's listen
#     error is fatal); a pod has its own network namespace, these do not.
#   * leader election is off unless -enable-leader-election; no feature gate
#     is needed (NodeFeatureAPI is GA and locked on).
#   * apparmor.armorshim.io needs no -extra-label-ns: nfd-master denies only
#     kubernetes.io and *.kubernetes.io by default (validate.Label).
#   * a crashed pod is restarted by the kubelet: nfd_supervise restarts a
#     process that exits (the worker exits on any API error, e.g. while the
#     API server restarts).

NFD_KUBECONFIG=${C_KUBECONFIG:-/etc/kubernetes/admin.conf}
NFD_NODE=${NODE_NAME:-armorshim-guest}
NFD_NAMESPACE=node-feature-discovery
NFD_CRDS=/opt/armorshim-it/nfd-api-crds.yaml
NFD_CRD_NAMES="nodefeatures.nfd.k8s-sigs.io nodefeaturerules.nfd.k8s-sigs.io nodefeaturegroups.nfd.k8s-sigs.io"
NFD_LOGS=${C_LOGS:-/out/cluster}
NFD_CONF_DIR=/etc/kubernetes/node-feature-discovery
# the local source's directory is fixed in NFD (source/local: featureFilesDir)
NFD_FEATURES_D=$NFD_CONF_DIR/features.d
NFD_WORKER_CONF=$NFD_CONF_DIR/nfd-worker.conf
# how often the worker reads the feature files again (NFD's default: 60s)
NFD_SLEEP_INTERVAL=${NFD_SLEEP_INTERVAL:-5s}
# how long nfd_start waits for each step (the guest runs under TCG)
NFD_TIMEOUT=${NFD_TIMEOUT:-180}
NFD_MASTER_PID=
NFD_WORKER_PID=

# nfd_kc ARGS...: kubectl against the cluster, bounded
nfd_kc() { timeout 150 kubectl --kubeconfig "$NFD_KUBECONFIG" --request-timeout=60s "$@"; }

# nfd_supervise COMMAND...: run COMMAND, start it again 5 s after it exits
# (as the kubelet restarts a pod's container); TERM stops both. Each exit
# is logged as "nfd_supervise: ... exited with status N".
nfd_supervise() {
	local child="" n=0 rc
	trap '[ -n "$child" ] && kill "$child" 2>/dev/null && wait "$child"; exit 0' TERM
	while :; do
		"$@" &
		child=$!
		wait "$child"
		rc=$?
		child=
		n=$((n + 1))
		echo "nfd_supervise: $* exited with status $rc at $(date -u +%FT%TZ); start $((n + 1)) in 5 s"
		sleep 5 &
		wait $!
	done
}

# nfd_fail MESSAGE...: say why nfd_start failed (stderr), stop what it started
nfd_fail() {
	echo "nfd_start: $*" >&2
	nfd_stop
	return 1
}

# nfd_exited LOG: whether the process supervised into LOG has exited
nfd_exited() { grep -q '^nfd_supervise: .* exited with status' "$1" 2>/dev/null; }

# nfd_start: install NFD's CRDs, start nfd-master then nfd-worker; returns 0
# once the master runs its event loop and the worker has written the node's
# NodeFeature object, 1 (the reason on stderr, nothing left running) if a
# step fails. Call it once the Node is registered: nfd-master reads its
# own Node (NODE_NAME) at start and exits if it is not there. Sets
# NFD_MASTER_PID and NFD_WORKER_PID (their supervisors: kill them, or call
# nfd_stop).
nfd_start() {
	local b crd end out rc
	for b in nfd-master nfd-worker kubectl; do
		command -v $b >/dev/null 2>&1 ||
			{ echo "nfd_start: $b is not installed (prepare.sh's nfd stage puts nfd-master and nfd-worker in /usr/local/bin)" >&2; return 1; }
	done
	[ -f $NFD_CRDS ] || { echo "nfd_start: no $NFD_CRDS (prepare.sh's rootfs stage copies NFD's CRDs there)" >&2; return 1; }
	nfd_stop
	mkdir -p "$NFD_LOGS" $NFD_FEATURES_D
	{
		echo "\$ nfd-master -version; nfd-worker -version"
		nfd-master -version 2>&1
		nfd-worker -version 2>&1
	} >"$NFD_LOGS/nfd-setup.log"

	# NFD's API: without it the master's informers never sync
	out=$(nfd_kc apply -f $NFD_CRDS 2>&1)
	rc=$?
	printf '$ kubectl apply -f %s\n%s\n' $NFD_CRDS "$out" >>"$NFD_LOGS/nfd-setup.log"
	[ $rc -eq 0 ] || nfd_fail "kubectl apply -f $NFD_CRDS: exit status $rc: $out" || return 1
	for crd in $NFD_CRD_NAMES; do
		out=$(timeout $((NFD_TIMEOUT + 30)) kubectl --kubeconfig "$NFD_KUBECONFIG" wait --for=condition=Established \
			"crd/$crd" --timeout="${NFD_TIMEOUT}s" 2>&1) || nfd_fail "CRD $crd not Established in $NFD_TIMEOUT s: $out" || return 1
		echo "$out" >>"$NFD_LOGS/nfd-setup.log"
	done
	# the namespace the worker's NodeFeature object lives in
	if ! nfd_kc get namespace $NFD_NAMESPACE >/dev/null 2>&1; then
		out=$(nfd_kc create namespace $NFD_NAMESPACE 2>&1) || nfd_fail "kubectl create namespace $NFD_NAMESPACE: $out" || return 1
		echo "$out" >>"$NFD_LOGS/nfd-setup.log"
	fi

	# only the local source (armorshim's feature file); the others would
	# label the node with what qemu emulates
	cat >$NFD_WORKER_CONF <<CFG
core:
  sleepInterval: $NFD_SLEEP_INTERVAL
  featureSources: [local]
  labelSources: [local]
CFG

	nfd_supervise env NODE_NAME="$NFD_NODE" KUBERNETES_NAMESPACE=$NFD_NAMESPACE KUBECONFIG="$NFD_KUBECONFIG" \
		nfd-master -kubeconfig="$NFD_KUBECONFIG" -metrics=0 -grpc-health=0 -v=2 \
		>"$NFD_LOGS/nfd-master.log" 2>&1 &
	NFD_MASTER_PID=$!
	end=$(($(date +%s) + NFD_TIMEOUT))
	# "will process all nodes" is logged on the first round of its event
	# loop: after its informers synced and it read its own Node
	until grep -q 'will process all nodes in the cluster' "$NFD_LOGS/nfd-master.log" 2>/dev/null; do
		nfd_exited "$NFD_LOGS/nfd-master.log" &&
			{ nfd_fail "nfd-master exited: $(tail -n 5 "$NFD_LOGS/nfd-master.log" | tr '\n' ' ')"; return 1; }
		[ "$(date +%s)" -lt $end ] ||
			{ nfd_fail "nfd-master not ready in $NFD_TIMEOUT s: $(tail -n 5 "$NFD_LOGS/nfd-master.log" | tr '\n' ' ')"; return 1; }
		sleep 2
	done

	nfd_supervise env NODE_NAME="$NFD_NODE" KUBERNETES_NAMESPACE=$NFD_NAMESPACE KUBECONFIG="$NFD_KUBECONFIG" \
		nfd-worker -kubeconfig="$NFD_KUBECONFIG" -config=$NFD_WORKER_CONF -no-owner-refs -metrics=0 -grpc-health=0 -v=1 \
		>"$NFD_LOGS/nfd-worker.log" 2>&1 &
	NFD_WORKER_PID=$!
	end=$(($(date +%s) + NFD_TIMEOUT))
	until nfd_kc get nodefeatures.nfd.k8s-sigs.io -n $NFD_NAMESPACE "$NFD_NODE" >/dev/null 2>&1; do
		nfd_exited "$NFD_LOGS/nfd-worker.log" &&
			{ nfd_fail "nfd-worker exited: $(tail -n 5 "$NFD_LOGS/nfd-worker.log" | tr '\n' ' ')"; return 1; }
		[ "$(date +%s)" -lt $end ] ||
			{ nfd_fail "nfd-worker wrote no NodeFeature $NFD_NAMESPACE/$NFD_NODE in $NFD_TIMEOUT s: $(tail -n 5 "$NFD_LOGS/nfd-worker.log" | tr '\n' ' ')"; return 1; }
		sleep 2
	done
	return 0
}

# nfd_stop: stop nfd-worker and nfd-master (and their supervisors)
nfd_stop() {
	local p
	for p in $NFD_WORKER_PID $NFD_MASTER_PID; do
		kill "$p" 2>/dev/null
		wait "$p" 2>/dev/null
	done
	NFD_WORKER_PID=
	NFD_MASTER_PID=
	return 0
}

# nfd_node_labels: the Node's labels, one key=value a line
nfd_node_labels() {
	nfd_kc get node "$NFD_NODE" -o jsonpath='{.metadata.labels}' 2>/dev/null |
		jq -r 'to_entries[] | "\(.key)=\(.value)"' 2>/dev/null
}

# nfd_labels_wait SECONDS LABEL: poll the Node's labels every 2 s until
# LABEL (key=value) is among them. 0 when it is (NFD_LABELS_S: seconds it
# took), 1 after SECONDS (the labels seen last on stderr). NFD_LABELS holds
# the labels seen last, one key=value a line.
nfd_labels_wait() {
	local t0 end
	t0=$(date +%s)
	end=$((t0 + $1))
	while :; do
		NFD_LABELS=$(nfd_node_labels)
		if grep -qxF -- "$2" <<<"$NFD_LABELS"; then
			NFD_LABELS_S=$(($(date +%s) - t0))
			return 0
		fi
		[ "$(date +%s)" -lt $end ] || break
		sleep 2
	done
	NFD_LABELS_S=$(($(date +%s) - t0))
	echo "nfd_labels_wait: no label $2 on node $NFD_NODE after $1 s; its labels: $(tr '\n' ' ' <<<"$NFD_LABELS")" >&2
	return 1
}
