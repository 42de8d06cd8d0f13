# Sourced by guest.sh in the cluster boot: a one-node Kubernetes cluster in
# the guest (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# all of the kubelet's version), the kubelet registered with the API server
# and talking to armorshim, which talks to containerd. The documentation's
# tutorials are run as a user runs them, with kubectl; each step's kubectl
# output is kept in the step's evidence and in /out/cluster-transcript.txt.
# Outcomes come from kubectl (the API server) and containerd, never from
# armorshim; armorshim's own log is read only where its words are compared
# with the API server's.
#
# The control plane runs in the guest (under TCG) so that the API server
# reaches the kubelet (kubectl exec, logs) on the guest's own address, with
# no network outside the guest: a dummy interface carries 10.99.0.1.

. "$RUN/kubelet.sh"
. "$RUN/nfd.sh"

NODE_IP=10.99.0.1
C_KUBECONFIG=/etc/kubernetes/admin.conf
C_PKI=/etc/kubernetes/pki
C_LOGS=/out/cluster
C_TRANSCRIPT=/out/cluster-transcript.txt
C_SHIM_LOG=/out/armorshim-cluster.log
C_CFG=/etc/armorshim/cluster.yaml
C_AUDIT=/out/pod-security-audit-cluster.log
C_FEATURES=/etc/kubernetes/node-feature-discovery/features.d
C_PSS=/etc/kubernetes/pss/cluster-level-pss.yaml
C_METRICS=127.0.0.1:9754
export KUBECONFIG=$C_KUBECONFIG

# kc ARGS...: kubectl with a bounded run time
kc() { timeout 120 kubectl --request-timeout=60s "$@"; }
# ktx COMMAND...: run a user's kubectl command line, keep "$ cmd" and its
# output (stdout and stderr as a terminal shows them) in the transcript;
# the output -> $KOUT, the exit status -> $KRC
ktx() {
	KOUT=$(timeout 120 "$@" 2>&1)
	KRC=$?
	{
		echo "\$ $(shell_words "$@")"
		printf '%s\n' "$KOUT"
		[ $KRC -eq 0 ] || echo "(exit status $KRC)"
		echo
	} >>$C_TRANSCRIPT
	return $KRC
}
# shell_words ARGS...: the command line as a user would type it
shell_words() {
	local a out=()
	for a in "$@"; do
		if [[ $a == *$'\n'* ]]; then
			out+=("$(printf '%q' "$a")")
		elif [[ $a =~ ^[A-Za-z0-9_./=:,@+-]+$ ]]; then
			out+=("$a")
		else
			out+=("'${a//\'/\'\\\'\'}'")
		fi
	done
	echo "${out[*]}"
}
# shim_log_tx NS/POD: armorshim's warning for a pod, into the transcript
# as an operator reads it from the journal
shim_log_tx() {
	{
		echo "# armorshim's log (journalctl -u armorshim), its Pod Security warning for $1:"
		grep 'Pod Security warning' $C_SHIM_LOG | grep -F "pod=\"$1\"" | tail -n 1 | sed 's/^[IWE][0-9]* [0-9:.]* *[0-9]* [a-z_]*\.go:[0-9]*\] //' | grep . || echo "(none)"
		echo
	} >>$C_TRANSCRIPT
}
# section TITLE: a heading in the transcript
section() { printf '## %s\n\n' "$1" >>$C_TRANSCRIPT; }

# wait_for SECONDS COMMAND...: poll every 2 s until COMMAND succeeds
wait_for() {
	local end=$(($(date +%s) + $1))
	shift
	while [ "$(date +%s)" -lt $end ]; do
		"$@" >/dev/null 2>&1 && return 0
		sleep 2
	done
	return 1
}
pod_phase() { kc get pod -n "$1" "$2" -o jsonpath='{.status.phase}' 2>/dev/null; }
pod_running() { [ "$(kc get pod -n "$1" "$2" -o jsonpath='{.status.containerStatuses[0].state.running.startedAt}' 2>/dev/null)" != "" ]; }
waiting_for() { [ "$(pod_waiting_reason "$2" "$3")" = "$1" ]; }
pod_waiting_reason() { kc get pod -n "$1" "$2" -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}' 2>/dev/null; }
# c_metric SERIES: a value of armorshim's metrics (0 when absent)
c_metric() {
	(exec 3<>/dev/tcp/${C_METRICS%:*}/${C_METRICS#*:} && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && cat <&3) 2>/dev/null |
		grep -F "$1 " | awk '{print $2; f=1} END {if (!f) print 0}' | head -n 1
}
# reloads: how many times armorshim reloaded its configuration
reloads() { grep -c 'Configuration reloaded' $C_SHIM_LOG; }
# heartbeat: the time of the Node's Ready condition's last heartbeat
heartbeat() { kc get node $NODE_NAME -o jsonpath='{.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}' 2>/dev/null; }
reloaded_after() { [ "$(reloads)" -gt "$1" ]; }
beat_after() { local hb; hb=$(heartbeat) && [ -n "$hb" ] && [ "$hb" != "$1" ]; }
# shim_warning NS/POD: the last Pod Security warning armorshim logged for a pod
shim_warning() {
	grep 'Pod Security warning' $C_SHIM_LOG | grep -F "pod=\"$1\"" | tail -n 1 |
		sed 's/.*warning="//; s/"$//; s/\\"/"/g'
}

# ---------------------------------------------------------------- setup
cluster_pki() {
	mkdir -p $C_PKI /etc/kubernetes/pss
	openssl genrsa -out $C_PKI/sa.key 2048 2>>"$LOG" &&
		openssl rsa -in $C_PKI/sa.key -pubout -out $C_PKI/sa.pub 2>>"$LOG" || return 1
	# one static token, in system:masters, for every component and the user
	C_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
	echo "$C_TOKEN,armorshim-it-admin,armorshim-it-admin,\"system:masters\"" >$C_PKI/tokens.csv
	chmod 0600 $C_PKI/tokens.csv $C_PKI/sa.key
	cat >$C_KUBECONFIG <<CFG
apiVersion: v1
kind: Config
clusters:
- name: armorshim-it
  cluster:
    server: https://$NODE_IP:6443
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: $C_TOKEN
contexts:
- name: armorshim-it
  context:
    cluster: armorshim-it
    user: admin
current-context: armorshim-it
CFG
	chmod 0600 $C_KUBECONFIG
}

# start_apiserver [EXTRA-FLAGS...]: start kube-apiserver, wait for /readyz;
# under TCG a start starved of CPU can fail a post-start hook and exit, so
# a start that died is tried once more
start_apiserver() {
	local try
	for try in 1 2; do
		start_apiserver_once "$@" && return 0
		kill -0 $APISERVER_PID 2>/dev/null && return 1
		echo "== kube-apiserver exited during start (try $try)" >>$C_LOGS/kube-apiserver.log
	done
	return 1
}
start_apiserver_once() {
	kube-apiserver --etcd-servers=http://127.0.0.1:2379 \
		--advertise-address=$NODE_IP --bind-address=$NODE_IP --secure-port=6443 \
		--cert-dir=$C_PKI/apiserver --token-auth-file=$C_PKI/tokens.csv \
		--authorization-mode=Node,RBAC --allow-privileged=true \
		--service-cluster-ip-range=10.96.0.0/24 \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file=$C_PKI/sa.pub --service-account-signing-key-file=$C_PKI/sa.key \
		--kubelet-preferred-address-types=InternalIP \
		--profiling=false --v=1 "$@" >>$C_LOGS/kube-apiserver.log 2>&1 &
	APISERVER_PID=$!
	local t0
	t0=$(date +%s)
	local end=$(($(date +%s) + 400))
	while [ "$(date +%s)" -lt $end ]; do
		kc get --raw /readyz >/dev/null 2>&1 && APISERVER_READY_S=$(($(date +%s) - t0)) && return 0
		kill -0 $APISERVER_PID 2>/dev/null || return 1
		sleep 2
	done
	return 1
}
# stop_pid PID: stop a process of ours and wait for it
stop_pid() { [ -n "$1" ] && kill "$1" 2>/dev/null && wait "$1" 2>/dev/null; return 0; }
start_controllers() {
	kube-controller-manager --kubeconfig=$C_KUBECONFIG --leader-elect=false \
		--service-account-private-key-file=$C_PKI/sa.key --root-ca-file=$C_PKI/apiserver/apiserver.crt \
		--use-service-account-credentials=false --profiling=false --v=1 >>$C_LOGS/kube-controller-manager.log 2>&1 &
	CM_PID=$!
	kube-scheduler --kubeconfig=$C_KUBECONFIG --leader-elect=false --profiling=false --v=1 >>$C_LOGS/kube-scheduler.log 2>&1 &
	SCHED_PID=$!
}
start_kubelet() {
	kubelet --config /etc/kubernetes/kubelet-cluster.yaml --kubeconfig $C_KUBECONFIG \
		--hostname-override $NODE_NAME --node-ip $NODE_IP --v 2 >>$KLOG 2>&1 &
	KUBELET_PID=$!
}
node_ready() {
	[ "$(kc get node $NODE_NAME -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

cluster_setup() {
	local ok=false t0 nodes
	t0=$(date +%s)
	mkdir -p $C_LOGS /etc/armorshim $K_PROFILES_D $MANIFESTS $C_FEATURES /var/lib/kubelet /run/etcd /etc/kubernetes/pss $C_PKI/apiserver
	# the AppArmor tutorial's image, busybox:1.28, is not pulled (no
	# registry): the suite's busybox goes by that name too
	ctr -n k8s.io images tag registry.k8s.io/e2e-test-images/busybox:1.29-2 docker.io/library/busybox:1.28 >>"$LOG" 2>&1
	# the node's address: a dummy interface (nothing leaves the guest)
	modprobe dummy 2>>"$LOG"
	ip link add armorshim0 type dummy 2>>"$LOG"
	ip addr add $NODE_IP/24 dev armorshim0 2>>"$LOG"
	ip link set armorshim0 up
	ip route add default dev armorshim0 2>>"$LOG"
	# guest.sh's armorshim (no configuration) is not needed here: the
	# cluster's is started below
	[ -n "${SHIM_PID:-}" ] && kill $SHIM_PID 2>/dev/null && wait $SHIM_PID 2>/dev/null
	SHIM_PID=
	if ! cluster_pki; then
		result c-setup false "cannot make the cluster's keys" "$(tail -n 3 "$LOG" | oneline)"
		return 1
	fi
	# armorshim as the namespace-level tutorial's cluster needs it: the
	# labels of namespace "example" (set with kubectl below), no defaults
	c_armorshim_config ""
	armorshim serve --config $C_CFG -v 2 >>$C_SHIM_LOG 2>&1 &
	C_SHIM_PID=$!
	wait_for 60 crictl --runtime-endpoint unix://$K_SOCK --timeout 5s version
	etcd --name armorshim-it --data-dir /run/etcd/data --unsafe-no-fsync \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster armorshim-it=http://127.0.0.1:2380 >>$C_LOGS/etcd.log 2>&1 &
	ETCD_PID=$!
	if ! start_apiserver; then
		result c-setup false "kube-apiserver not ready in 400 s" "$(tail -n 5 $C_LOGS/kube-apiserver.log | oneline)" "$(tail -n 3 $C_LOGS/etcd.log | oneline)"
		return 1
	fi
	start_controllers
	# no cluster DNS runs; naming one keeps the kubelet from warning
	kubelet_config unix://$K_SOCK $NODE_IP "clusterDomain: cluster.local" "clusterDNS: [10.96.0.10]" >/etc/kubernetes/kubelet-cluster.yaml
	start_kubelet
	wait_for 300 node_ready && ok=true
	# namespaces get their default service account from the controller manager
	$ok && wait_for 120 kc get serviceaccount default -n default || ok=false
	section "The cluster"
	ktx kubectl get nodes -o wide
	nodes=$(oneline <<<"$KOUT")
	ktx kubectl get nodes -o=jsonpath=$'{range .items[*]}{@.metadata.name}: {@.status.nodeInfo.kubeletVersion}\n{end}'
	ktx kubectl get nodes -o=jsonpath=$'{range .items[*]}{@.metadata.name}: {.status.conditions[?(@.reason=="KubeletReady")].message}\n{end}'
	if $ok; then
		result c-setup true "kube-apiserver $(kube-apiserver --version 2>&1 | oneline), etcd $(etcd --version 2>/dev/null | head -n 1 | oneline); ready in ${APISERVER_READY_S} s; node Ready $(($(date +%s) - t0)) s after start" \
			"$nodes" "the kubelet's runtime endpoint: unix://$K_SOCK (armorshim -> containerd)"
	else
		result c-setup false "the node did not become Ready" "$nodes" "$(jq -rc 'select(.err != null) | .msg + ": " + .err' $KLOG | tail -n 3 | oneline)" \
			"$(tail -n 3 $C_LOGS/kube-controller-manager.log | oneline)"
	fi
	$ok
}

# c_armorshim_config CONFIGFILE: armorshim's configuration in the cluster
# boot; CONFIGFILE is the cluster-level tutorial's AdmissionConfiguration
# (or empty). Namespaces mirror the labels the tutorials give with kubectl.
c_armorshim_config() {
	cat >$C_CFG <<CFG
apiVersion: armorshim.io/v1alpha1
kind: ArmorshimConfiguration
listen: unix://$K_SOCK
runtimeEndpoint: $CTRD_EP
metricsAddress: $C_METRICS
profiles:
  directory: $K_PROFILES_D
  syncInterval: 1s
nodeFeatures:
  directory: $C_FEATURES
podSecurity:
$([ -n "$1" ] && echo "  configFile: $1")
  namespaces:
    example:
      pod-security.kubernetes.io/enforce: baseline
      pod-security.kubernetes.io/enforce-version: latest
      pod-security.kubernetes.io/warn: restricted
      pod-security.kubernetes.io/warn-version: latest
      pod-security.kubernetes.io/audit: restricted
      pod-security.kubernetes.io/audit-version: latest
    # the labels of namespace "pinned" (a version pinned, nothing enforced)
    pinned:
      pod-security.kubernetes.io/enforce: privileged
      pod-security.kubernetes.io/enforce-version: v1.30
  auditLog:
    path: $C_AUDIT
CFG
}

# ---------------------------------------------------------------- AppArmor tutorial
tutorial_pod() { # NAME PROFILE: the AppArmor tutorial's pod, as written
	cat <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $1
  annotations:
    container.apparmor.security.beta.kubernetes.io/hello: localhost/$2
spec:
  containers:
  - name: hello
    image: busybox:1.28
    command: [ "sh", "-c", "echo 'Hello AppArmor!' && sleep 1h" ]
YAML
}

cluster_apparmor() {
	local ok attr touch logs events t0 t1 get describe ds
	section "The AppArmor tutorial"
	# the tutorial loads its profile on the node by hand
	profile_text $DENY yes >/tmp/$DENY.profile
	apparmor_parser -r -W /tmp/$DENY.profile >>"$LOG" 2>&1
	if loaded $ALLOW; then
		profile_text $ALLOW no >/tmp/$ALLOW.profile
		apparmor_parser -R /tmp/$ALLOW.profile >>"$LOG" 2>&1
	fi
	tutorial_pod hello-apparmor $DENY >./hello-apparmor.yaml
	ktx kubectl create -f ./hello-apparmor.yaml
	wait_for 240 pod_running default hello-apparmor
	ktx kubectl get events --field-selector involvedObject.name=hello-apparmor
	events=$(grep -E 'Created|Started' <<<"$KOUT" | oneline)
	ktx kubectl exec hello-apparmor -- cat /proc/1/attr/current
	attr=$(tr -d '\0' <<<"$KOUT" | oneline)
	ktx kubectl exec hello-apparmor -- touch /tmp/test
	touch=$(oneline <<<"$KOUT")
	ktx kubectl logs hello-apparmor
	logs=$(oneline <<<"$KOUT")
	ok=false
	[ "$attr" = "$DENY (enforce)" ] && [[ $touch == *"touch: /tmp/test: Permission denied"* ]] &&
		[[ $touch == *"command terminated with exit code 1"* ]] && [ "$logs" = "Hello AppArmor!" ] && ok=true
	result c-apparmor-deny-write $ok "\$ kubectl exec hello-apparmor -- cat /proc/1/attr/current: $attr (want: $DENY (enforce))" \
		"\$ kubectl exec hello-apparmor -- touch /tmp/test: $touch (want: Permission denied, exit code 1)" \
		"\$ kubectl logs hello-apparmor: $logs" "events: $events"

	# hello-apparmor-2: its profile is not loaded on the node
	tutorial_pod hello-apparmor-2 $ALLOW >./hello-apparmor-2.yaml
	ktx kubectl create -f ./hello-apparmor-2.yaml
	wait_for 240 waiting_for CreateContainerError default hello-apparmor-2
	ktx kubectl get pod hello-apparmor-2
	get=$KOUT
	ktx kubectl describe pod hello-apparmor-2
	describe=$(grep -E 'Status:|Reason:|Blocked' <<<"$KOUT" | oneline)
	ktx kubectl get events --field-selector involvedObject.name=hello-apparmor-2
	events=$(grep -F 'Blocked' <<<"$KOUT" | head -n 1 | oneline)
	ok=false
	[[ $get == *CreateContainerError* ]] &&
		[[ $describe == *"Blocked: Cannot enforce AppArmor: profile \"$ALLOW\" is not loaded"* ]] &&
		[[ $events == *"Blocked: Cannot enforce AppArmor: profile \"$ALLOW\" is not loaded"* ]] &&
		ids=$(cd_ ps -a -q --label io.kubernetes.pod.name=hello-apparmor-2 2>>"$LOG") && [ -z "$ids" ] && ok=true
	result c-apparmor-blocked $ok "\$ kubectl get pod hello-apparmor-2: $(oneline <<<"$get")" \
		"\$ kubectl describe pod hello-apparmor-2: $describe" "\$ kubectl get events: $events" \
		"containerd (direct): containers of the pod: $(cd_ ps -a -q --label io.kubernetes.pod.name=hello-apparmor-2 2>/dev/null | wc -l)"

	# the profiles delivered by the DaemonSet of deploy/profiles-daemonset.yaml
	t0=$(date +%s)
	mkdir -p deploy
	cp "$RUN/profiles-daemonset.yaml" deploy/ 2>>"$LOG"
	ktx kubectl apply -f deploy/profiles-daemonset.yaml
	ds=$(oneline <<<"$KOUT")
	wait_for 300 pod_running default hello-apparmor-2
	t1=$(date +%s)
	ktx kubectl get pods -n kube-system -l app.kubernetes.io/name=armorshim-profiles -o wide
	ktx kubectl get pod hello-apparmor-2
	get=$KOUT
	ktx kubectl exec hello-apparmor-2 -- cat /proc/1/attr/current
	attr=$(tr -d '\0' <<<"$KOUT" | oneline)
	ktx kubectl exec hello-apparmor-2 -- touch /tmp/test
	touch=$KRC
	ok=false
	[[ $get == *Running* ]] && [ "$attr" = "$ALLOW (enforce)" ] && [ "$touch" = 0 ] && [ -f $K_PROFILES_D/$ALLOW ] && ok=true
	result c-apparmor-daemonset $ok "\$ kubectl apply -f deploy/profiles-daemonset.yaml: $ds" \
		"hello-apparmor-2 Running $((t1 - t0)) s later, on the kubelet's retry; nothing done on the node" \
		"\$ kubectl get pod hello-apparmor-2: $(oneline <<<"$get")" \
		"\$ kubectl exec hello-apparmor-2 -- cat /proc/1/attr/current: $attr (want: $ALLOW (enforce)); touch /tmp/test: exit $touch (want 0)" \
		"the node's profile directory: $(ls $K_PROFILES_D | oneline)"
}

# Node labels from armorshim's feature file through node-feature-discovery
# (nfd-worker's local source, nfd-master; nfd.sh), and the README's
# nodeSelector.
cluster_labels() {
	local labels ok sel pending nfd=false nfd_err
	section "Scheduling by profile"
	wait_for 30 grep -q "$ALLOW=enforce" $C_FEATURES/armorshim-apparmor
	labels=$(grep -v '^#' $C_FEATURES/armorshim-apparmor | grep .)
	{
		echo "\$ cat $C_FEATURES/armorshim-apparmor"
		cat $C_FEATURES/armorshim-apparmor
		echo
	} >>$C_TRANSCRIPT
	if nfd_start 2>/tmp/nfd-start.err && nfd_labels_wait 180 "apparmor.armorshim.io/$DENY=enforce" 2>>/tmp/nfd-start.err; then
		nfd=true
	fi
	nfd_err=$(oneline </tmp/nfd-start.err)
	ktx kubectl get node $NODE_NAME -L apparmor.armorshim.io/enabled -L apparmor.armorshim.io/$DENY -L apparmor.armorshim.io/$ALLOW
	cat >./selected.yaml <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: hello-apparmor-selected
  annotations:
    container.apparmor.security.beta.kubernetes.io/hello: localhost/$DENY
spec:
  nodeSelector:
    apparmor.armorshim.io/$DENY: enforce
  containers:
  - name: hello
    image: busybox:1.28
    command: [ "sh", "-c", "echo 'Hello AppArmor!' && sleep 1h" ]
YAML
	sed "s/hello-apparmor-selected/hello-apparmor-elsewhere/; s#apparmor.armorshim.io/$DENY#apparmor.armorshim.io/k8s-not-on-this-node#" ./selected.yaml >./elsewhere.yaml
	ktx kubectl apply -f ./selected.yaml -f ./elsewhere.yaml
	wait_for 180 pod_running default hello-apparmor-selected
	ktx kubectl get pods hello-apparmor-selected hello-apparmor-elsewhere -o wide
	sel=$(oneline <<<"$KOUT")
	ktx kubectl get events --field-selector involvedObject.name=hello-apparmor-elsewhere
	pending=$(grep -F FailedScheduling <<<"$KOUT" | head -n 1 | oneline)
	ok=false
	$nfd && pod_running default hello-apparmor-selected && [ "$(pod_phase default hello-apparmor-elsewhere)" = Pending ] &&
		[ -n "$pending" ] && [ "$(sort <<<"$labels")" = "$(grep '^apparmor\.' <<<"$NFD_LABELS" | sort)" ] && ok=true
	result c-node-labels $ok "feature file: $(oneline <<<"$labels")" \
		"the Node's labels from node-feature-discovery $(nfd-master -version 2>&1 | oneline) ($( $nfd && echo "after ${NFD_LABELS_S} s" || echo "not set: $nfd_err")): $(grep '^apparmor\.' <<<"$NFD_LABELS" | oneline)" \
		"\$ kubectl get pods -o wide: $sel" "hello-apparmor-elsewhere (a profile on no node): $pending"
	# not needed by the steps after this one (and it would only load the guest)
	nfd_stop
	kc delete pod hello-apparmor-selected hello-apparmor-elsewhere --grace-period=1 --wait=true --timeout=90s >>"$LOG" 2>&1
}

# ---------------------------------------------------------------- Pod Security
nginx_tutorial_pod() {
	# the tutorial's pod; image: nginx would be pulled from a registry,
	# the suite has the e2e nginx image (same Pod Security verdict)
	cat <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: nginx
spec:
  containers:
    - image: registry.k8s.io/e2e-test-images/nginx:1.14-2
      name: nginx
      ports:
        - containerPort: 80
YAML
}

# warning_of OUTPUT: the API server's "Warning: would violate ..." line,
# without "Warning: "
warning_of() { grep -m1 '^Warning: would violate' <<<"$1" | sed 's/^Warning: //'; }

# apply_nginx NS [KUBECTL-ARGS...]: the tutorial's kubectl apply of the
# nginx pod; its output -> $out, the API server's warning -> $api, and
# armorshim's warning for the pod once it runs -> $shim
apply_nginx() {
	local ns=$1
	shift
	ktx kubectl apply "$@" -f /tmp/pss/nginx-pod.yaml
	out=$KOUT
	api=$(warning_of "$out")
	wait_for 240 pod_running "$ns" nginx
	sleep 1
	shim=$(shim_warning "$ns/nginx")
	shim_log_tx "$ns/nginx"
}

cluster_namespace_level() {
	local ok api shim audit out
	section "Pod Security Standards at the namespace level"
	mkdir -p /tmp/pss
	nginx_tutorial_pod >/tmp/pss/nginx-pod.yaml
	ktx kubectl create ns example
	wait_for 120 kc get serviceaccount default -n example
	ktx kubectl label --overwrite ns example \
		pod-security.kubernetes.io/warn=baseline \
		pod-security.kubernetes.io/warn-version=latest
	ktx kubectl label --overwrite ns example \
		pod-security.kubernetes.io/enforce=baseline \
		pod-security.kubernetes.io/enforce-version=latest \
		pod-security.kubernetes.io/warn=restricted \
		pod-security.kubernetes.io/warn-version=latest \
		pod-security.kubernetes.io/audit=restricted \
		pod-security.kubernetes.io/audit-version=latest
	apply_nginx example -n example
	audit=$(grep '"namespace":"example"' $C_AUDIT 2>/dev/null | grep '"pod":"nginx"' | tail -n 1)
	ok=false
	[ -n "$api" ] && [ "$api" = "$shim" ] && [ -n "$audit" ] && [[ $out == *"pod/nginx created"* ]] && pod_running example nginx && ok=true
	result c-ns-example $ok "\$ kubectl apply -n example -f /tmp/pss/nginx-pod.yaml: $(oneline <<<"$out")" \
		"armorshim's warning for example/nginx: ${shim:-(none)}" "identical to the API server's: $([ -n "$api" ] && [ "$api" = "$shim" ] && echo yes || echo no)" \
		"armorshim's audit record: $(cut -c1-240 <<<"$audit")"
	apply_nginx default -n default
	ok=false
	[ "$(oneline <<<"$out")" = "pod/nginx created" ] && [ -z "$shim" ] && pod_running default nginx && ok=true
	result c-ns-default $ok "\$ kubectl apply -n default -f /tmp/pss/nginx-pod.yaml: $(oneline <<<"$out")" \
		"armorshim's warning for default/nginx: ${shim:-(none, as the API server)}"
}

# kubectl label --dry-run=server ns --all enforce=LEVEL against armorshim
# pss check --level LEVEL, for the pods on the node (this cluster's only node)
cluster_dry_run() {
	local level ok=true api shim evidence=()
	section "What a level would refuse: the API server and the node"
	# a namespace with its enforce version pinned and nothing enforced,
	# holding a host-network pod: enforce=L alone is then judged at v1.30
	ktx kubectl create ns pinned
	ktx kubectl label --overwrite ns pinned pod-security.kubernetes.io/enforce=privileged pod-security.kubernetes.io/enforce-version=v1.30
	wait_for 120 kc get serviceaccount default -n pinned
	hostnet_pod hostnet-pinned pinned >./hostnet-pinned.yaml
	ktx kubectl apply -f ./hostnet-pinned.yaml
	wait_for 240 pod_running pinned hostnet-pinned
	for level in baseline restricted; do
		ktx kubectl label --dry-run=server --overwrite ns --all pod-security.kubernetes.io/enforce=$level
		api=$(grep '^Warning:' <<<"$KOUT")
		{
			echo "\$ armorshim pss check --level $level --config $C_CFG --runtime-endpoint $CTRD_EP"
			shim=$(timeout 120 armorshim pss check --level $level --config $C_CFG --runtime-endpoint $CTRD_EP 2>&1)
			echo "$shim"
			echo
		} >>$C_TRANSCRIPT
		shim=$(grep '^Warning:' <<<"$shim")
		[ -n "$api" ] && [ "$api" = "$shim" ] || ok=false
		evidence+=("$level: kubectl label --dry-run=server: $(oneline <<<"$api")")
		evidence+=("$level: armorshim pss check: $( [ "$api" = "$shim" ] && echo identical || oneline <<<"$shim")")
	done
	# the pinned namespace was judged at its own version
	grep -q '"pinned" violate the new PodSecurity enforce level "baseline:v1.30"' $C_TRANSCRIPT || ok=false
	result c-dry-run $ok "${evidence[@]}"
}

cluster_cluster_level() {
	local ok api shim out out2 mirror sb
	section "Pod Security Standards at the cluster level"
	# the API server and armorshim both read the tutorial's file
	cp "$RUN/cluster-level-pss.yaml" $C_PSS
	kc delete pod nginx -n default --grace-period=1 --wait=true --timeout=90s >>"$LOG" 2>&1
	c_armorshim_config $C_PSS
	local reloaded=false n0 hb0
	n0=$(reloads)
	kill -HUP $C_SHIM_PID
	wait_for 60 reloaded_after "$n0" && reloaded=true
	hb0=$(heartbeat)
	# the API server restarted with the file, as the tutorial's cluster is
	# created with it; its clients are stopped meanwhile (under TCG they
	# would starve its start) and the kubelet's pods keep running
	stop_pid $KUBELET_PID
	stop_pid $SCHED_PID
	stop_pid $CM_PID
	stop_pid $APISERVER_PID
	if ! start_apiserver --admission-control-config-file=$C_PSS; then
		for s in c-cluster-nginx c-cluster-exempt c-static-pod; do
			result $s false "kube-apiserver did not restart with --admission-control-config-file" "$(grep -E '^[EF][0-9]' $C_LOGS/kube-apiserver.log | tail -n 2 | oneline)"
		done
		return
	fi
	start_controllers
	start_kubelet
	# the restarted kubelet's first heartbeat, not the Ready of before
	wait_for 300 beat_after "$hb0"
	wait_for 120 node_ready
	apply_nginx default
	ok=false
	$reloaded && [ -n "$api" ] && [ "$api" = "$shim" ] && [[ $out == *"pod/nginx created"* ]] && ok=true
	result c-cluster-nginx $ok "\$ kubectl apply -f /tmp/pss/nginx-pod.yaml: $(oneline <<<"$out")" \
		"armorshim's warning for default/nginx: ${shim:-(none)}" "identical to the API server's: $([ -n "$api" ] && [ "$api" = "$shim" ] && echo yes || echo no)"

	# the defaults refuse a host-network pod; kube-system is exempt on both
	hostnet_pod hostnet default >./hostnet-default.yaml
	hostnet_pod hostnet kube-system >./hostnet-system.yaml
	local ex0 ex1
	ex0=$(c_metric 'armorshim_pod_security_exemptions_total{reason="namespace"}')
	ktx kubectl apply -f ./hostnet-default.yaml
	out=$KOUT
	ktx kubectl apply -f ./hostnet-system.yaml
	out2=$KOUT
	wait_for 240 pod_running kube-system hostnet
	ex1=$(c_metric 'armorshim_pod_security_exemptions_total{reason="namespace"}')
	ok=false
	# armorshim exempts kube-system (its sandbox and container counted as
	# exempt), which it knows only from the file
	$reloaded && [[ $out == *'forbidden: violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true)'* ]] &&
		[[ $out2 == *"pod/hostnet created"* ]] && pod_running kube-system hostnet &&
		[ "${ex1%.*}" -gt "${ex0%.*}" ] && ok=true
	result c-cluster-exempt $ok "\$ kubectl apply -f hostnet-default.yaml: $(oneline <<<"$out")" \
		"\$ kubectl apply -f hostnet-system.yaml: $(oneline <<<"$out2"); running: $(pod_running kube-system hostnet && echo yes || echo no)" \
		"armorshim reloaded with the file: $reloaded; armorshim_pod_security_exemptions_total{reason=\"namespace\"}: $ex0 -> $ex1"
	kc delete pod hostnet -n kube-system --grace-period=1 --wait=false >>"$LOG" 2>&1

	# what only the node can stop: a static pod violating its namespace's
	# level. The API server refuses its mirror pod; the kubelet goes on to
	# run it, and armorshim refuses it.
	section "A static pod only the node can stop"
	hostnet_pod hostnet-static default >$MANIFESTS/hostnet-static.yaml
	{
		echo "\$ cat $MANIFESTS/hostnet-static.yaml"
		cat $MANIFESTS/hostnet-static.yaml
		echo
	} >>$C_TRANSCRIPT
	wait_for 180 sh -c "grep -q 'hostnet-static' $KLOG && jq -rc 'select(.msg==\"CreatePodSandbox for pod failed\") | .pod.name' $KLOG | grep -q hostnet-static"
	mirror=$(jq -rc 'select((.msg // "" | test("mirror pod"; "i")) and (.err // "" | tostring | test("hostnet-static"))) | .err' $KLOG | head -n 1)
	sb=$(jq -rc 'select(.msg=="CreatePodSandbox for pod failed" and .pod.name=="hostnet-static-'$NODE_NAME'") | .err' $KLOG | head -n 1)
	ktx kubectl get pod -n default hostnet-static-$NODE_NAME
	out=$KOUT
	ok=false
	[[ $mirror == *'violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true)'* ]] &&
		[[ $sb == *'Forbidden: violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true)'* ]] &&
		[[ $out == *NotFound* ]] &&
		ids=$(cd_ pods -q --label io.kubernetes.pod.name=hostnet-static-$NODE_NAME 2>>"$LOG") && [ -z "$ids" ] && ok=true
	{
		echo "# the kubelet's log: the mirror pod"
		echo "$mirror"
		echo "# the kubelet's log: the sandbox"
		echo "$sb"
		echo
	} >>$C_TRANSCRIPT
	result c-static-pod $ok "the API server, to the kubelet's mirror pod: ${mirror:-(no refusal logged)}" \
		"armorshim, to the kubelet's RunPodSandbox: ${sb:-(no refusal logged)}" \
		"\$ kubectl get pod hostnet-static-$NODE_NAME: $(oneline <<<"$out")" \
		"containerd (direct): sandboxes of the pod: $(cd_ pods -q --label io.kubernetes.pod.name=hostnet-static-$NODE_NAME 2>/dev/null | wc -l)"
	rm -f $MANIFESTS/hostnet-static.yaml
}

C_STEPS="c-apparmor-deny-write c-apparmor-blocked c-apparmor-daemonset c-node-labels c-ns-example c-ns-default c-dry-run c-cluster-nginx c-cluster-exempt c-static-pod"

scenarios_cluster() {
	# the user's working directory: the tutorials' files, by relative path
	mkdir -p /root/tutorials && cd /root/tutorials || return
	if ! cluster_setup; then
		for s in $C_STEPS; do result $s false "not run: the cluster did not come up"; done
		return
	fi
	phase cluster-setup
	checkpoint
	cluster_apparmor
	phase cluster-apparmor
	cluster_labels
	phase cluster-labels
	checkpoint
	cluster_namespace_level
	cluster_dry_run
	phase cluster-namespace-level
	checkpoint
	cluster_cluster_level
	phase cluster-cluster-level
	kill $KUBELET_PID $SCHED_PID $CM_PID $APISERVER_PID $C_SHIM_PID 2>/dev/null
	wait $KUBELET_PID 2>/dev/null
	kill $ETCD_PID 2>/dev/null
}
