# Sourced by guest.sh in the fleet boot: systemd is PID 1, containerd runs,
# and the kubelet is a systemd unit talking to containerd directly, in the
# one-node cluster of cluster.sh. armorshim is then installed, reconfigured,
# upgraded and removed with deploy/installer.yaml and kubectl only, as an
# operator rolls it out to a fleet. Each step is checked from kubectl and
# from the node (systemctl, the files, the kubelet's /configz); every
# command and its output goes to /out/fleet-transcript.txt.

. "$RUN/cluster.sh"

C_TRANSCRIPT=/out/fleet-transcript.txt
C_LOGS=/out/fleet
KLOG=/out/kubelet-fleet.log
F_UNIT=/etc/systemd/system/kubelet.service
F_KUBEADM=/etc/systemd/system/kubelet.service.d/10-kubeadm.conf
F_DS=armorshim-installer
F_NS=kube-system
F_SHIM_SOCK=unix:///run/armorshim/armorshim.sock
# the two installer images prepare.sh built (an upgrade from the first to the second)
read -r F_V1 F_V2 <"$RUN/installer-versions" 2>/dev/null
F_IMAGE=localhost/armorshim/installer

F_STEPS="f1-setup f2-blocked f3-install f4-decided f5-profiles f6-config f7-upgrade f8-uninstall"

# fleet_kubelet_unit explicit|kubeadm: the kubelet's unit. explicit passes
# its flags on ExecStart (a layout the installer does not know); kubeadm is
# kubeadm's unit and 10-kubeadm.conf drop-in.
fleet_kubelet_unit() {
	local args="--hostname-override=$NODE_NAME --node-ip=$NODE_IP --v=2"
	mkdir -p "$(dirname $F_KUBEADM)"
	if [ "$1" = explicit ]; then
		rm -f $F_KUBEADM
		cat >$F_UNIT <<UNIT
[Unit]
Description=kubelet: The Kubernetes Node Agent
[Service]
ExecStart=/usr/local/bin/kubelet --config=/var/lib/kubelet/config.yaml --kubeconfig=$C_KUBECONFIG $args
Restart=always
RestartSec=1
StandardOutput=append:$KLOG
StandardError=append:$KLOG
[Install]
WantedBy=multi-user.target
UNIT
	else
		cat >$F_UNIT <<UNIT
[Unit]
Description=kubelet: The Kubernetes Node Agent
[Service]
ExecStart=/usr/local/bin/kubelet
Restart=always
RestartSec=1
StandardOutput=append:$KLOG
StandardError=append:$KLOG
[Install]
WantedBy=multi-user.target
UNIT
		cat >$F_KUBEADM <<UNIT
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--kubeconfig=$C_KUBECONFIG"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
Environment="KUBELET_EXTRA_ARGS=$args"
ExecStart=
ExecStart=/usr/local/bin/kubelet \$KUBELET_KUBECONFIG_ARGS \$KUBELET_CONFIG_ARGS \$KUBELET_EXTRA_ARGS
UNIT
	fi
	systemctl daemon-reload
}

# node-side facts
unit_pid() { systemctl show -p MainPID --value "$1" 2>/dev/null; }
unit_state() { systemctl is-active "$1" 2>/dev/null; }
# configz_endpoint: the kubelet's runtime endpoint, as the kubelet reports it
configz_endpoint() { kc get --raw "/api/v1/nodes/$NODE_NAME/proxy/configz" 2>/dev/null | jq -r .kubeletconfig.containerRuntimeEndpoint; }
# node_label NAME: the node's label armorshim.io/NAME; fails when kubectl does
node_label() { kc get node $NODE_NAME -o jsonpath="{.metadata.labels.armorshim\.io/$1}" 2>/dev/null; }
label_is() { local v; v=$(node_label "$1") && [ "$v" = "$2" ]; }
# pods_state: every default-namespace pod's containers' IDs and restart
# counts, one line each
pods_state() {
	kc get pods -n default -o json | jq -r '.items[] | select(.status.phase=="Running") | .metadata.name + " " +
		([.status.containerStatuses[] | .containerID + " restarts=" + (.restartCount|tostring)] | join(" "))' | sort
}
# node_files: what the installer may place, as the node has it
node_files() {
	ls -l /usr/local/bin/armorshim /usr/local/libexec/armorshim /usr/local/share/armorshim /etc/systemd/system/armorshim.service \
		/etc/systemd/system/kubelet.service.d /etc/kubernetes/kubelet.conf.d /etc/armorshim 2>&1 | sed 's/ [A-Z][a-z][a-z] [ 0-9]* [0-9:]* / /'
}
# node_tx COMMAND...: a command run on the node, with its output, into the transcript
node_tx() {
	NOUT=$("$@" 2>&1)
	{
		echo "node# $(shell_words "$@")"
		printf '%s\n' "$NOUT"
		echo
	} >>$C_TRANSCRIPT
}
installer_pods() { kc get pods -n $F_NS -l app.kubernetes.io/name=$F_DS -o name 2>/dev/null; }
installer_pod() { kc get pods -n $F_NS -l app.kubernetes.io/name=$F_DS -o jsonpath='{.items[0].metadata.name}' 2>/dev/null; }
installer_log() { local p; p=$(installer_pod) && [ -n "$p" ] && kc logs -n $F_NS "$p" 2>/dev/null; }
installer_logged() { installer_log | grep -qF "$1"; }
no_installer_pod() { local p; p=$(installer_pods) && [ -z "$p" ]; }

fleet_setup() {
	local ok=false t0
	t0=$(date +%s)
	mkdir -p $C_LOGS $MANIFESTS /var/lib/kubelet /run/etcd $C_PKI/apiserver /root/tutorials/deploy
	ctr -n k8s.io images tag registry.k8s.io/e2e-test-images/busybox:1.29-2 docker.io/library/busybox:1.28 >>"$LOG" 2>&1
	local v
	for v in $F_V1 $F_V2; do
		ctr -n k8s.io images import "$RUN/installer-$v.oci.tar" >>"$LOG" 2>&1 || echo "== cannot import installer-$v" >>"$LOG"
	done
	modprobe dummy 2>>"$LOG"
	ip link add armorshim0 type dummy 2>>"$LOG"
	ip addr add $NODE_IP/24 dev armorshim0 2>>"$LOG"
	ip link set armorshim0 up
	ip route add default dev armorshim0 2>>"$LOG"
	cluster_pki || { result f1-setup false "cannot make the cluster's keys"; return 1; }
	etcd --name armorshim-it --data-dir /run/etcd/data --unsafe-no-fsync \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster armorshim-it=http://127.0.0.1:2380 >>$C_LOGS/etcd.log 2>&1 &
	ETCD_PID=$!
	if ! start_apiserver; then
		result f1-setup false "kube-apiserver not ready in 400 s" "$(tail -n 5 $C_LOGS/kube-apiserver.log | oneline)"
		return 1
	fi
	start_controllers
	# the kubelet talks to containerd: armorshim is not on this node yet
	kubelet_config $CTRD_EP $NODE_IP "clusterDomain: cluster.local" "clusterDNS: [10.96.0.10]" "syncFrequency: 10s" >/var/lib/kubelet/config.yaml
	fleet_kubelet_unit explicit
	systemctl start kubelet.service
	wait_for 300 node_ready && ok=true
	$ok && wait_for 120 kc get serviceaccount default -n default || ok=false
	section "The cluster, before armorshim"
	ktx kubectl get nodes -o wide
	node_tx systemctl status --no-pager --lines=0 kubelet.service
	# the AppArmor tutorial's first pod, on containerd alone
	profile_text $DENY yes >/tmp/$DENY.profile
	apparmor_parser -r -W /tmp/$DENY.profile >>"$LOG" 2>&1
	tutorial_pod hello-apparmor $DENY >/root/tutorials/hello-apparmor.yaml
	ktx kubectl create -f /root/tutorials/hello-apparmor.yaml
	$ok && wait_for 240 pod_running default hello-apparmor || ok=false
	ktx kubectl exec hello-apparmor -- cat /proc/1/attr/current
	local attr
	attr=$(tr -d '\0' <<<"$KOUT" | oneline)
	[ "$attr" = "$DENY (enforce)" ] || ok=false
	F_PODS0=$(pods_state)
	result f1-setup $ok "systemd $(systemctl --version | head -n 1 | oneline) is PID 1; kubelet.service $(unit_state kubelet.service) on $(configz_endpoint)" \
		"node Ready $(($(date +%s) - t0)) s after start" "hello-apparmor: $attr" "pods: $(oneline <<<"$F_PODS0")"
	$ok
}

# The installer on a node whose kubelet unit it does not know: blocked,
# labelled, nothing changed.
fleet_blocked() {
	local before after ok=false reason log
	section "Installing armorshim with its DaemonSet"
	before=$(node_files; systemctl cat kubelet.service 2>&1)
	# README: the image, set to the one built (make installer-image) and imported
	sed "s#image: $F_IMAGE:dev#image: $F_IMAGE:$F_V1#" "$RUN/installer.yaml" >/root/tutorials/deploy/installer.yaml
	cd /root/tutorials || return
	ktx kubectl apply -f deploy/installer.yaml
	# No kube-proxy runs in the guest: the API server's service address does
	# not route, so the installer is given the API server's own.
	ktx kubectl set env -n $F_NS daemonset/$F_DS KUBERNETES_SERVICE_HOST=$NODE_IP KUBERNETES_SERVICE_PORT=6443
	wait_for 240 label_is install-blocked unknown-kubelet-layout
	reason=$(node_label install-blocked)
	ktx kubectl get node $NODE_NAME -L armorshim.io/install-blocked -L armorshim.io/installed
	ktx kubectl logs -n $F_NS -l app.kubernetes.io/name=$F_DS --tail=5
	log=$(oneline <<<"$KOUT")
	after=$(node_files; systemctl cat kubelet.service 2>&1)
	[ "$reason" = unknown-kubelet-layout ] && [ "$before" = "$after" ] && [ "$(configz_endpoint)" = $CTRD_EP ] &&
		[[ $log == *"left untouched"* ]] && [ "$(unit_state armorshim.service)" != active ] && ok=true
	result f2-blocked $ok "kubelet unit with its flags on ExecStart: armorshim.io/install-blocked=${reason:-(none)}" \
		"installer log: $log" "node files and kubelet unit unchanged: $([ "$before" = "$after" ] && echo yes || echo "no: $(diff <(echo "$before") <(echo "$after") | oneline)")" \
		"kubelet endpoint: $(configz_endpoint)"
}

fleet_install() {
	local ok=false kpid0 t0 t1 ep v pods
	section "The kubelet unit in kubeadm's layout: installed"
	fleet_kubelet_unit kubeadm
	local hb
	hb=$(heartbeat)
	node_tx systemctl restart kubelet.service
	wait_for 120 beat_after "$hb"
	F_PODS0=$(pods_state)
	kpid0=$(unit_pid kubelet.service)
	t0=$(date +%s)
	# a new pod checks the node again
	ktx kubectl delete pod -n $F_NS -l app.kubernetes.io/name=$F_DS --wait=true --timeout=120s
	wait_for 300 label_is installed "$F_V1"
	t1=$(date +%s)
	# the installer saw the restarted kubelet run 10 s
	wait_for 120 node_ready
	ktx kubectl get node $NODE_NAME -L armorshim.io/installed -L armorshim.io/install-blocked
	ktx kubectl logs -n $F_NS -l app.kubernetes.io/name=$F_DS --tail=20
	node_tx systemctl status --no-pager --lines=0 armorshim.service
	node_tx armorshim version
	v=$NOUT
	node_tx cat /etc/kubernetes/kubelet.conf.d/90-armorshim.conf
	ep=$(configz_endpoint)
	wait_for 60 pod_running default hello-apparmor
	pods=$(pods_state)
	ktx kubectl get pods -o wide
	# the installer's own token (bound to its pod, hence its node) may set
	# armorshim.io/ labels only
	local tok deny
	tok=$(kc create token -n $F_NS $F_DS --bound-object-kind Pod --bound-object-name "$(installer_pod)" 2>>"$LOG")
	ktx kubectl --token="$tok" label node $NODE_NAME example.com/not-armorshims=1
	deny=$(oneline <<<"$KOUT")
	[ "$(node_label installed)" = "$F_V1" ] && [ -z "$(node_label install-blocked)" ] && [ "$(unit_state armorshim.service)" = active ] &&
		[ "$ep" = $F_SHIM_SOCK ] && [[ $v == *"$F_V1"* ]] && [ "$pods" = "$F_PODS0" ] && [ "$(unit_pid kubelet.service)" != "$kpid0" ] &&
		[[ $deny == *"armorshim-installer may change only armorshim.io/ labels"* ]] && ok=true
	result f3-install $ok "armorshim.io/installed=$(node_label installed) $((t1 - t0)) s after the installer's pod started" \
		"node: armorshim.service $(unit_state armorshim.service), $(oneline <<<"$v"); the kubelet (restarted: pid $kpid0 -> $(unit_pid kubelet.service)) on $ep" \
		"running pods before: $(oneline <<<"$F_PODS0")" "after: $(oneline <<<"$pods")" \
		"the installer's token, another label: $deny"
}

# A new pod is decided by armorshim: its words, not containerd's.
fleet_decided() {
	local ok=false events
	section "New pods go through armorshim"
	if loaded $ALLOW; then
		profile_text $ALLOW no >/tmp/$ALLOW.profile
		apparmor_parser -R /tmp/$ALLOW.profile >>"$LOG" 2>&1
	fi
	tutorial_pod hello-apparmor-2 $ALLOW >/root/tutorials/hello-apparmor-2.yaml
	ktx kubectl create -f /root/tutorials/hello-apparmor-2.yaml
	wait_for 240 waiting_for CreateContainerError default hello-apparmor-2
	ktx kubectl get events --field-selector involvedObject.name=hello-apparmor-2
	events=$(grep -F Blocked <<<"$KOUT" | head -n 1 | oneline)
	[[ $events == *"Blocked: Cannot enforce AppArmor: profile \"$ALLOW\" is not loaded"* ]] && ok=true
	result f4-decided $ok "hello-apparmor-2 (profile not loaded): $events"
}

# Profiles from a ConfigMap: the profiles DaemonSet fills the directory the
# installed armorshim loads; no restart.
fleet_profiles() {
	local ok=false pid0 check
	section "Profiles from a ConfigMap"
	pid0=$(unit_pid armorshim.service)
	cp "$RUN/profiles-daemonset.yaml" /root/tutorials/deploy/
	ktx kubectl apply -f deploy/profiles-daemonset.yaml
	wait_for 300 pod_running default hello-apparmor-2
	ktx kubectl get pod hello-apparmor-2
	ktx kubectl exec hello-apparmor-2 -- cat /proc/1/attr/current
	local attr
	attr=$(tr -d '\0' <<<"$KOUT" | oneline)
	node_tx armorshim check --config /etc/armorshim/config.yaml
	check=$(grep -F "$ALLOW" <<<"$NOUT" | oneline)
	[ "$attr" = "$ALLOW (enforce)" ] && [[ $check == *"$ALLOW (enforce)"* ]] && [ "$(unit_pid armorshim.service)" = "$pid0" ] && ok=true
	result f5-profiles $ok "hello-apparmor-2: $attr" "armorshim check on the node: $check" \
		"armorshim.service pid $pid0 -> $(unit_pid armorshim.service) (no restart)"
}

# The policy from the ConfigMap: changed, reloaded on the node, no restart.
fleet_config() {
	local ok=false pid0 out log t0 t1
	section "Policy from the ConfigMap"
	pid0=$(unit_pid armorshim.service)
	t0=$(date +%s)
	# the namespace-level tutorial's labels, for namespace default, on the node
	kc get configmap -n $F_NS armorshim-config -o jsonpath='{.data.config\.yaml}' >/tmp/config.yaml
	cat >>/tmp/config.yaml <<CFG
podSecurity:
  namespaces:
    default:
      pod-security.kubernetes.io/enforce: baseline
CFG
	kc create configmap -n $F_NS armorshim-config --from-file=config.yaml=/tmp/config.yaml --dry-run=client -o yaml >deploy/armorshim-config.yaml
	{
		echo "\$ cat deploy/armorshim-config.yaml"
		cat deploy/armorshim-config.yaml
		echo
	} >>$C_TRANSCRIPT
	ktx kubectl apply -f deploy/armorshim-config.yaml
	wait_for 240 installer_logged "armorshim reloaded"
	t1=$(date +%s)
	ktx kubectl logs -n $F_NS -l app.kubernetes.io/name=$F_DS --tail=3
	log=$(grep -F reloaded <<<"$KOUT" | oneline)
	node_tx journalctl -u armorshim.service --no-pager -o cat --grep 'Configuration reloaded'
	# a host-network pod in default: baseline refuses it
	hostnet_pod hostnet-fleet default >/root/tutorials/hostnet-fleet.yaml
	ktx kubectl create -f /root/tutorials/hostnet-fleet.yaml
	wait_for 180 sh -c "kubectl get events --field-selector involvedObject.name=hostnet-fleet 2>/dev/null | grep -q 'violates PodSecurity'"
	ktx kubectl get events --field-selector involvedObject.name=hostnet-fleet
	out=$(grep -F 'violates PodSecurity' <<<"$KOUT" | head -n 1 | oneline)
	[ -n "$log" ] && [[ $out == *'violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true)'* ]] &&
		[ "$(unit_pid armorshim.service)" = "$pid0" ] && ok=true
	result f6-config $ok "ConfigMap changed; $((t1 - t0)) s later the installer: $log" \
		"hostnet-fleet in default: $out" "armorshim.service pid $pid0 -> $(unit_pid armorshim.service) (no restart)"
	kc delete pod hostnet-fleet --grace-period=1 --wait=false >>"$LOG" 2>&1
}

# A new image: the binary replaced, armorshim restarted, the kubelet not.
fleet_upgrade() {
	local ok=false kpid0 spid0 v pods t0 t1
	section "Upgrading armorshim: a new installer image"
	kpid0=$(unit_pid kubelet.service)
	spid0=$(unit_pid armorshim.service)
	F_PODS0=$(pods_state)
	t0=$(date +%s)
	ktx kubectl set image -n $F_NS daemonset/$F_DS installer=$F_IMAGE:$F_V2
	ktx kubectl rollout status -n $F_NS daemonset/$F_DS --timeout=110s
	wait_for 300 label_is installed "$F_V2"
	t1=$(date +%s)
	ktx kubectl get node $NODE_NAME -L armorshim.io/installed
	ktx kubectl logs -n $F_NS -l app.kubernetes.io/name=$F_DS --tail=5
	node_tx armorshim version
	v=$NOUT
	# how long the kubelet had no armorshim: from the old one stopping to
	# the new one serving
	node_tx journalctl -u armorshim.service --no-pager -o short-precise --since "@$t0" --grep 'Stopping|Stopped|Started'
	pods=$(pods_state)
	[ "$(node_label installed)" = "$F_V2" ] && [[ $v == *"$F_V2"* ]] && [ "$(unit_pid kubelet.service)" = "$kpid0" ] &&
		[ "$(unit_pid armorshim.service)" != "$spid0" ] && [ "$(unit_state armorshim.service)" = active ] && node_ready &&
		[ "$pods" = "$F_PODS0" ] && ok=true
	result f7-upgrade $ok "armorshim.io/installed=$(node_label installed) $((t1 - t0)) s after kubectl set image; node: $(oneline <<<"$v")" \
		"armorshim.service pid $spid0 -> $(unit_pid armorshim.service); kubelet.service pid $kpid0 -> $(unit_pid kubelet.service) (not restarted); node Ready: $(node_ready && echo yes || echo no)" \
		"running pods before: $(oneline <<<"$F_PODS0")" "after: $(oneline <<<"$pods")"
}

# Deleting the DaemonSet: the kubelet back on containerd, armorshim gone,
# pods still running.
fleet_uninstall() {
	local ok=false pods ep files t0 t1
	section "Removing armorshim: deleting the DaemonSet"
	F_PODS0=$(pods_state)
	t0=$(date +%s)
	ktx kubectl delete daemonset -n $F_NS $F_DS --wait=true --timeout=110s
	wait_for 300 no_installer_pod
	wait_for 120 label_is installed ""
	t1=$(date +%s)
	wait_for 120 node_ready
	ktx kubectl get node $NODE_NAME -L armorshim.io/installed
	ep=$(configz_endpoint)
	node_tx journalctl --no-pager -o cat -u 'armorshim-installer-*' --since "@$t0"
	node_tx systemctl status --no-pager --lines=0 armorshim.service
	node_tx systemctl cat kubelet.service
	files=$(ls /usr/local/bin/armorshim /etc/systemd/system/armorshim.service /etc/kubernetes/kubelet.conf.d/90-armorshim.conf \
		/etc/systemd/system/kubelet.service.d/90-armorshim.conf 2>/dev/null | oneline)
	pods=$(pods_state)
	ktx kubectl get pods -o wide
	# and a new pod still starts, on containerd
	ktx kubectl run after-armorshim --image=busybox:1.28 --image-pull-policy=Never -- sleep 3600
	wait_for 180 pod_running default after-armorshim
	label_is installed "" && [ "$ep" = $CTRD_EP ] && [ -z "$files" ] && [ "$(unit_state armorshim.service)" != active ] &&
		[ "$pods" = "$F_PODS0" ] && pod_running default after-armorshim && ok=true
	result f8-uninstall $ok "label gone $((t1 - t0)) s after kubectl delete daemonset; the kubelet on $ep" \
		"armorshim.service: $(unit_state armorshim.service); files left: ${files:-none}" \
		"running pods before: $(oneline <<<"$F_PODS0")" "after: $(oneline <<<"$pods")" \
		"a new pod after: $(pod_running default after-armorshim && echo Running || echo "$(pod_phase default after-armorshim)")"
}

scenarios_fleet() {
	mkdir -p /root/tutorials && cd /root/tutorials || return
	if ! fleet_setup; then
		for s in $F_STEPS; do [ $s = f1-setup ] || result $s false "not run: the cluster did not come up"; done
		return
	fi
	phase fleet-setup
	checkpoint
	fleet_blocked
	fleet_install
	phase fleet-install
	checkpoint
	fleet_decided
	fleet_profiles
	fleet_config
	phase fleet-config
	checkpoint
	fleet_upgrade
	fleet_uninstall
	phase fleet-uninstall
	journalctl --no-pager -o short-precise -u armorshim.service -u kubelet.service -u 'armorshim-installer-*' >/out/journal-fleet.log 2>&1
	kill $SCHED_PID $CM_PID $APISERVER_PID 2>/dev/null
	systemctl stop kubelet.service
	kill $ETCD_PID 2>/dev/null
}
