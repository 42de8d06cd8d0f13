# Sourced by guest.sh in the main boot (AppArmor on): the node-level
# scenarios of issues 4 (policy, profile directory, node labels), 6 (Pod
# Security on the node) and 7 (start attestation, denial attribution). They
# run against a second armorshim, configured for them, on its own socket in
# front of the same containerd; the main armorshim stays as it is for critest.

NODE_SOCK=/run/armorshim/node.sock
NODE_EP=unix://$NODE_SOCK
NODE_CFG=/etc/armorshim/node.yaml
NODE_LOG=/out/armorshim-node.log
NODE_METRICS=127.0.0.1:9753
PROFILES_D=/etc/armorshim/profiles.d
FEATURES_D=/run/features.d
AUDIT_LOG=/out/pod-security-audit.log
NODE_STATUS=/run/armorshim/node-profiles.json
DROPPED=k8s-apparmor-example-dropped
COMPLAIN=k8s-apparmor-example-complain
NOBODY=k8s-apparmor-example-nobody
SYMLINKED=k8s-apparmor-example-symlinked

ns_() { timeout 120 crictl --runtime-endpoint $NODE_EP --image-endpoint $NODE_EP --timeout 60s "$@"; }

# node_config POLICY-YAML [EXTRA-YAML]: the node armorshim's configuration
node_config() {
	cat >$NODE_CFG <<CFG
apiVersion: armorshim.io/v1alpha1
kind: ArmorshimConfiguration
listen: $NODE_EP
runtimeEndpoint: $CTRD_EP
metricsAddress: $NODE_METRICS
profiles:
  directory: $PROFILES_D
  syncInterval: 1s
  statusFile: $NODE_STATUS
nodeFeatures:
  directory: $FEATURES_D
policy:
$1
$2
CFG
}

node_start() {
	armorshim serve --config $NODE_CFG -v 2 >>$NODE_LOG 2>&1 &
	NODE_PID=$!
	for _ in $(seq 1 150); do
		ns_ version >/dev/null 2>&1 && return 0
		kill -0 $NODE_PID 2>/dev/null || break
		sleep 0.2
	done
	return 1
}

# node_reload: SIGHUP, then wait for the log line that says it took.
node_reload() {
	local before
	before=$(grep -c 'Configuration reloaded' $NODE_LOG)
	kill -HUP $NODE_PID
	for _ in $(seq 1 50); do
		[ "$(grep -c 'Configuration reloaded' $NODE_LOG)" -gt "$before" ] && return 0
		sleep 0.2
	done
	return 1
}

# metric NAME-AND-LABELS: its value from the node armorshim's /metrics (0 if absent)
metric() {
	local body
	body=$(exec 3<>/dev/tcp/${NODE_METRICS%:*}/${NODE_METRICS#*:} &&
		printf 'GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3 && cat <&3)
	echo "$body" | grep -v '^#' | grep -F "$1 " | awk '{print $2}' | head -n 1 | grep . || echo 0
}

# node_create NAME SC ANNOTATIONS [POD-SC]: RunPodSandbox + CreateContainer
# through the node armorshim -> $POD $CTR $CREATE_OUT $CREATE_RC
node_create() {
	write_configs "$1" "$2" "$3"
	if [ -n "${4:-}" ]; then
		jq --argjson sc "$4" '.linux.security_context += $sc' /tmp/cfg/$1-pod.json >/tmp/cfg/$1-pod.json.new &&
			mv /tmp/cfg/$1-pod.json.new /tmp/cfg/$1-pod.json
	fi
	POD=$(ns_ runp /tmp/cfg/$1-pod.json 2>>"$LOG")
	CTR=
	if [ -z "$POD" ]; then
		CREATE_OUT="RunPodSandbox failed"
		CREATE_RC=1
		return 1
	fi
	CREATE_OUT=$(ns_ create "$POD" /tmp/cfg/$1-ctr.json /tmp/cfg/$1-pod.json 2>&1)
	CREATE_RC=$?
	[ $CREATE_RC -eq 0 ] && CTR=$(echo "$CREATE_OUT" | tail -n 1)
	log "node create $1 rc=$CREATE_RC: $CREATE_OUT"
	return $CREATE_RC
}
node_remove() {
	[ -n "${POD:-}" ] || return 0
	ns_ stopp "$POD" >>"$LOG" 2>&1
	ns_ rmp "$POD" >>"$LOG" 2>&1
	POD=
}
node_attr() { ns_ exec "$CTR" cat /proc/1/attr/current 2>>"$LOG" | tr -d '\0' | oneline; }

scenarios_node() {
	local ok out attr before after n features rc state total warning audit want t0 ms by
	mkdir -p /etc/armorshim $PROFILES_D $FEATURES_D
	: >$NODE_LOG

	# ---- default profile, with an allowed list that holds it
	node_config "  defaultProfile: localhost/$DENY
  allowedProfiles: runtime/default,localhost/$DENY,localhost/$DROPPED"
	if ! node_start; then
		result n4-default-profile false "the node armorshim did not serve" "$(tail -n 5 $NODE_LOG | oneline)"
		return 1
	fi
	ok=false
	if node_create n4-default '{}' '{}'; then
		ns_ start "$CTR" >>"$LOG" 2>&1
		attr=$(node_attr)
		# The documentation's rule is an explicit deny, which AppArmor does not log
		# unless its audit mode says so.
		echo -n noquiet >/sys/module/apparmor/parameters/audit
		out=$(ns_ exec "$CTR" touch /tmp/test 2>&1 | grep -v level= | oneline)
		[ "$attr" = "$DENY (enforce)" ] && [[ $out == *"Permission denied"* ]] && ok=true
		result n4-default-profile $ok "policy.defaultProfile: localhost/$DENY; the container asks for no profile" \
			"/proc/1/attr/current: $attr (want: $DENY (enforce))" "touch /tmp/test: $out (want: Permission denied)"
		# ---- that container's start was attested, and its denial attributed
		n=$(metric 'armorshim_start_attestations_total{outcome="attested"}')
		ok=false
		[ "${n%.*}" -ge 1 ] && ok=true
		result n7-attested $ok "armorshim_start_attestations_total{outcome=\"attested\"} = $n (want >= 1)" \
			"$(grep -m1 'Container confinement attested' $NODE_LOG | oneline)"
		# ---- and its pid came from containerd's task start event, not
		# from a ContainerStatus
		ev=$(metric 'armorshim_start_attestation_pids_total{source="event"}')
		aw=$(metric 'armorshim_start_attestation_pids_total{source="awaited-event"}')
		st=$(metric 'armorshim_start_attestation_pids_total{source="status"}')
		ok=false
		[ $((${ev%.*} + ${aw%.*})) -ge 1 ] && [ "${st%.*}" = 0 ] && ok=true
		result n7-attest-event-pid $ok "pids of attested starts: from the task start event $ev (there at the answer) + $aw (awaited), from ContainerStatus $st (want >= 1 from events, 0 from ContainerStatus)" \
			"armorshim_runtime_task_events_up = $(metric armorshim_runtime_task_events_up)" \
			"$(grep -m1 "Following containerd's task start events" $NODE_LOG | oneline)"
		sleep 2
		out=$(metric "armorshim_apparmor_denials_total{container=\"hello\",namespace=\"armorshim-it\",operation=\"mknod\",pod=\"n4-default\",profile=\"$DENY\"}")
		total=$(exec 3<>/dev/tcp/${NODE_METRICS%:*}/${NODE_METRICS#*:} && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && cat <&3 |
			grep '^armorshim_apparmor_denials_total{' | grep 'pod="n4-default"' | awk '{s+=$2} END {print s+0}')
		ok=false
		[ "$total" = 1 ] && ok=true
		result n7-denial-attributed $ok "touch /tmp/test in pod armorshim-it/n4-default" \
			"denials attributed to pod armorshim-it/n4-default: $total (want exactly 1); {container=hello,operation=mknod,profile=$DENY} = $out" \
			"$(grep -m1 'AppArmor denial' $NODE_LOG | oneline)"
		echo -n normal >/sys/module/apparmor/parameters/audit
	else
		result n4-default-profile false "CreateContainer refused" "$(create_err)"
		result n7-attested false "no container to attest"
		result n7-denial-attributed false "no container to deny"
	fi
	node_remove

	# ---- a profile outside the allowed list
	node_create n4-allowed '{"apparmor_profile":"unconfined"}' '{}'
	ok=false
	refused PermissionDenied "Forbidden: AppArmor profile \"unconfined\" is not allowed on this node" && ok=true
	result n4-allowed-refused $ok "allowedProfiles: runtime/default,localhost/$DENY,localhost/$DROPPED; request: unconfined" "$(create_err)"
	node_remove

	# ---- a profile dropped into the directory becomes usable without a restart
	node_create n4-dropped-before "{\"apparmor_profile\":\"localhost/$DROPPED\"}" '{}'
	ok=false
	refused FailedPrecondition "profile \"$DROPPED\" is not loaded" && ok=true
	before=$(create_err)
	node_remove
	profile_text $DROPPED yes >$PROFILES_D/$DROPPED
	for _ in $(seq 1 50); do loaded $DROPPED && break; sleep 0.2; done
	if node_create n4-dropped-after "{\"apparmor_profile\":\"localhost/$DROPPED\"}" '{}'; then
		ns_ start "$CTR" >>"$LOG" 2>&1
		attr=$(node_attr)
		[ "$attr" = "$DROPPED (enforce)" ] || ok=false
	else
		ok=false
		attr="$(create_err)"
	fi
	result n4-profile-directory $ok "before the file: $before" \
		"after writing $PROFILES_D/$DROPPED (no restart): /proc/1/attr/current: $attr (want: $DROPPED (enforce))" \
		"$(grep -m1 "Loaded AppArmor profile file" $NODE_LOG | oneline)"
	node_remove

	# ---- node labels for node-feature-discovery
	for _ in $(seq 1 25); do grep -q "/$DROPPED=enforce" $FEATURES_D/armorshim-apparmor 2>/dev/null && break; sleep 0.2; done
	features=$(cat $FEATURES_D/armorshim-apparmor 2>/dev/null)
	ok=false
	grep -q '^# +expiry-time=' <<<"$features" && grep -q '^apparmor.armorshim.io/enabled=true$' <<<"$features" &&
		grep -q "^apparmor.armorshim.io/$DENY=enforce$" <<<"$features" && grep -q "^apparmor.armorshim.io/$DROPPED=enforce$" <<<"$features" &&
		[ -z "$(ls -A $FEATURES_D | grep '^\.')" ] && ok=true
	result n4-nfd-labels $ok "$FEATURES_D/armorshim-apparmor:" \
		"$(grep -E "^#|enabled=|$DENY=|$DROPPED=" <<<"$features" | oneline)"

	# ---- check --output json sees the policy, the directory and the profiles
	out=$(armorshim check --config $NODE_CFG --profile $DENY --output json 2>&1)
	ok=false
	[ "$(jq -r .ok <<<"$out")" = true ] && [ "$(jq -r '.profileDirectory.files[0].profiles[0]' <<<"$out")" = "$DROPPED" ] && ok=true
	result n4-check $ok "armorshim check --profile $DENY --output json: ok=$(jq -r .ok <<<"$out") missing=$(jq -c .missing <<<"$out")" \
		"profile directory: $(jq -c .profileDirectory <<<"$out" | cut -c1-200)" "policy: $(jq -c .policy <<<"$out")"

	# ---- a file of the directory owned by nobody, mode 0666, is refused
	# made beside the directory and moved in whole: a root file the loader
	# saw before the chown would be loaded (and stay loaded)
	profile_text $NOBODY yes >$PROFILES_D/../.$NOBODY
	chown 65534:65534 $PROFILES_D/../.$NOBODY
	chmod 0666 $PROFILES_D/../.$NOBODY
	mv $PROFILES_D/../.$NOBODY $PROFILES_D/$NOBODY
	for _ in $(seq 1 25); do [ "$(metric 'armorshim_profile_files{state="refused"}')" = 1 ] && break; sleep 0.2; done
	n=$(metric 'armorshim_profile_files{state="refused"}')
	out=$(armorshim check --config $NODE_CFG --output json 2>&1)
	state=$(jq -r --arg f $NOBODY '.profileDirectory.files[] | select(.file == $f) | .refused' <<<"$out" 2>&1)
	ok=false
	! loaded $NOBODY && [ "$state" = "owned by uid 65534" ] && [ "$n" = 1 ] && [ "$(jq -r .ok <<<"$out")" = false ] && ok=true
	result n13-refused-owner $ok "$(stat -c '%n: uid %u, mode %a' $PROFILES_D/$NOBODY); $NOBODY loaded: $(loaded $NOBODY && echo yes || echo no) (want no)" \
		"check: refused: $state (want: owned by uid 65534); ok=$(jq -r .ok <<<"$out") (want false)" \
		"armorshim_profile_files{state=\"refused\"} = $n (want 1)" \
		"$(grep -m1 "Refusing an untrusted AppArmor profile file.*$NOBODY" $NODE_LOG | oneline)"

	# ---- a symlink to a root file in /tmp (world-writable) is refused
	profile_text $SYMLINKED no >/tmp/$SYMLINKED.profile
	chmod 0644 /tmp/$SYMLINKED.profile
	ln -sfn /tmp/$SYMLINKED.profile $PROFILES_D/$SYMLINKED
	for _ in $(seq 1 25); do [ "$(metric 'armorshim_profile_files{state="refused"}')" = 2 ] && break; sleep 0.2; done
	n=$(metric 'armorshim_profile_files{state="refused"}')
	out=$(armorshim check --config $NODE_CFG --output json 2>&1)
	state=$(jq -r --arg f $SYMLINKED '.profileDirectory.files[] | select(.file == $f) | .refused' <<<"$out" 2>&1)
	want="symlink to /tmp/$SYMLINKED.profile: directory /tmp is writable by others"
	ok=false
	! loaded $SYMLINKED && [ "$state" = "$want" ] && [ "$n" = 2 ] && ok=true
	result n13-refused-symlink $ok "$PROFILES_D/$SYMLINKED -> $(stat -c '%n: uid %u, mode %a' /tmp/$SYMLINKED.profile) in $(stat -c '%n: mode %a' /tmp); $SYMLINKED loaded: $(loaded $SYMLINKED && echo yes || echo no) (want no)" \
		"check: refused: $state (want: $want)" "armorshim_profile_files{state=\"refused\"} = $n (want 2)" \
		"$(armorshim check --config $NODE_CFG 2>&1 | grep -E "^  ($NOBODY|$SYMLINKED): " | oneline)"
	rm -f $PROFILES_D/$NOBODY $PROFILES_D/$SYMLINKED /tmp/$SYMLINKED.profile

	# ---- a directory profile removed from the kernel is loaded again
	# (the main armorshim watches the same directory every 2s: either may do it)
	ok=false
	before=$(metric armorshim_profile_reloads_total)
	if loaded $DROPPED; then
		t0=$(date +%s%N)
		apparmor_parser -R $PROFILES_D/$DROPPED >>"$LOG" 2>&1
		state=present
		loaded $DROPPED || state=removed
		for _ in $(seq 1 100); do loaded $DROPPED && break; sleep 0.05; done
		ms=$((($(date +%s%N) - t0) / 1000000))
		sleep 0.5
		after=$(metric armorshim_profile_reloads_total)
		by=$( (grep -l "no longer loaded; loading it again.*$DROPPED" $NODE_LOG /out/armorshim-$MODE.log 2>/dev/null || echo none) | tr '\n' ' ')
		# loaded again within the sync interval (1s) plus a parser run
		[ $state = removed ] && loaded $DROPPED && [ $ms -le 3000 ] && [ "$by" != "none " ] && ok=true
		result n13-reloaded $ok "apparmor_parser -R $PROFILES_D/$DROPPED: $DROPPED $state; back in the kernel after $ms ms (want <= 3000): $(grep "^$DROPPED " /sys/kernel/security/apparmor/profiles)" \
			"reloaded by: $by; node armorshim_profile_reloads_total: $before -> $after" \
			"$(cat $NODE_LOG /out/armorshim-$MODE.log | grep -m1 "no longer loaded; loading it again" | oneline)"
	else
		result n13-reloaded false "$DROPPED is not loaded before the test"
	fi

	# ---- complain mode refused where enforce is required
	profile_text $COMPLAIN yes >/tmp/$COMPLAIN.profile
	apparmor_parser -C -r /tmp/$COMPLAIN.profile >>"$LOG" 2>&1
	node_config "  requireEnforce: true"
	node_reload
	node_create n4-complain "{\"apparmor_profile\":\"localhost/$COMPLAIN\"}" '{}'
	ok=false
	refused FailedPrecondition "profile \"$COMPLAIN\" is loaded in complain mode, but this node requires enforce mode" && ok=true
	result n4-complain-refused $ok "$(grep "^$COMPLAIN " /sys/kernel/security/apparmor/profiles)" "$(create_err)"
	node_remove

	# ---- a profile swapped under a created container is caught at start
	ok=false
	if node_create n7-swap "{\"apparmor_profile\":\"localhost/$DENY\"}" '{}'; then
		apparmor_parser -C -r /tmp/$DENY.profile >>"$LOG" 2>&1
		out=$(ns_ start "$CTR" 2>&1 | grep -o 'rpc error: .*' | oneline)
		state=$(cd_ inspect -o go-template --template '{{.status.state}}' "$CTR" 2>>"$LOG")
		apparmor_parser -r /tmp/$DENY.profile >>"$LOG" 2>&1
		[[ $out == *"code = FailedPrecondition desc = Blocked: AppArmor confinement mismatch: expected $DENY (enforce), the container runs $DENY (complain)"* ]] &&
			[ "$state" = CONTAINER_EXITED ] && ok=true
		result n7-swap-detected $ok "created with localhost/$DENY (enforce), then reloaded in complain mode before StartContainer" \
			"StartContainer: $out" "container state afterwards: $state (want: CONTAINER_EXITED)"
	else
		result n7-swap-detected false "CreateContainer refused" "$(create_err)"
	fi
	node_remove

	# ---- a container armorshim did not create (one made before it
	# started) is attested from containerd's copy of its config
	ok=false
	write_configs n7-from-config "{\"apparmor_profile\":\"localhost/$DENY\"}" '{}'
	POD=$(cd_ runp /tmp/cfg/n7-from-config-pod.json 2>>"$LOG")
	CTR=
	[ -n "$POD" ] && CTR=$(cd_ create "$POD" /tmp/cfg/n7-from-config-ctr.json /tmp/cfg/n7-from-config-pod.json 2>>"$LOG" | tail -n 1)
	if [ -n "$CTR" ]; then
		before=$(metric 'armorshim_start_attestations_total{outcome="attested"}')
		out=$(ns_ start "$CTR" 2>&1 | grep -o 'rpc error: .*' | oneline)
		after=$(metric 'armorshim_start_attestations_total{outcome="attested"}')
		attr=$(node_attr)
		[ -z "$out" ] && [ "${after%.*}" -eq $((${before%.*} + 1)) ] && [ "$attr" = "$DENY (enforce)" ] && ok=true
		result n7-attested-from-config $ok "created directly on containerd with localhost/$DENY, then started through armorshim" \
			"attested starts: $before -> $after (want one more); StartContainer: ${out:-ok}; /proc/1/attr/current: $attr" \
			"$(grep -m1 "Container confinement attested\" containerID=\"$CTR\"" $NODE_LOG | oneline)"
	else
		result n7-attested-from-config false "could not create the container directly on containerd" "$(tail -n 3 "$LOG" | oneline)"
	fi
	node_remove

	# ---- AppArmor switched off on the node
	node_config "  enabled: false"
	node_reload
	node_create n4-disabled "{\"apparmor_profile\":\"localhost/$DENY\"}" '{}'
	ok=false
	refused PermissionDenied "Forbidden: AppArmor is disabled on this node" && ok=true
	out=$(create_err)
	node_remove
	node_create n4-disabled-none '{}' '{}' || ok=false
	result n4-disabled $ok "policy.enabled: false; localhost/$DENY: $out" "no profile asked: created ${CTR:-(refused: $(create_err))}"
	node_remove

	# ---- Pod Security on the node, with the documentation's cluster-level-pss.yaml
	mkdir -p /etc/kubernetes/pss
	cp "$RUN/cluster-level-pss.yaml" /etc/kubernetes/pss/cluster-level-pss.yaml
	node_config "  enabled: true" "podSecurity:
  configFile: /etc/kubernetes/pss/cluster-level-pss.yaml
  auditLog:
    path: $AUDIT_LOG"
	kill $NODE_PID
	wait $NODE_PID 2>/dev/null
	node_start || result n6-start false "the node armorshim did not restart with podSecurity" "$(tail -n 3 $NODE_LOG | oneline)"

	# a host-network pod (what the kubelet sends for hostNetwork: true) is refused at RunPodSandbox
	write_configs n6-hostnet '{}' '{}'
	# (the kubelet sets no hostname for a host-network pod: runc refuses one without a UTS namespace)
	jq '.linux.security_context.namespace_options.network = 2 | del(.hostname)' /tmp/cfg/n6-hostnet-pod.json >/tmp/cfg/x && mv /tmp/cfg/x /tmp/cfg/n6-hostnet-pod.json
	out=$(ns_ runp /tmp/cfg/n6-hostnet-pod.json 2>&1)
	out=$(echo "${out//\\/}" | grep -o 'rpc error: .*' | tail -n 1 | sed 's/"$//' | oneline)
	ok=false
	[[ $out == *'code = PermissionDenied desc = Forbidden: violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true)'* ]] && ok=true
	result n6-hostnetwork-refused $ok "enforce=baseline (the cluster-level tutorial's defaults); RunPodSandbox with network NODE" "$out"

	# a privileged container is refused at CreateContainer
	node_create n6-privileged '{"privileged":true}' '{}'
	ok=false
	refused PermissionDenied 'Forbidden: violates PodSecurity "baseline:latest": privileged (container "hello" must not set securityContext.privileged=true)' && ok=true
	result n6-privileged-refused $ok "CreateContainer with privileged=true" "$(create_err)"
	node_remove

	# the same host-network pod in kube-system (exempt in the documentation's config) runs
	jq '.metadata.namespace = "kube-system"' /tmp/cfg/n6-hostnet-pod.json >/tmp/cfg/x && mv /tmp/cfg/x /tmp/cfg/n6-exempt-pod.json
	out=$(ns_ runp /tmp/cfg/n6-exempt-pod.json 2>&1)
	rc=$?
	POD=
	[ $rc -eq 0 ] && POD=$(echo "$out" | tail -n 1)
	ok=false
	[ -n "$POD" ] && ok=true
	result n6-exempt-namespace $ok "the same host-network pod in namespace kube-system: sandbox ${POD:-(refused: $(echo "${out//\\/}" | grep -v level=warning | oneline))}"
	node_remove

	# the documentation's nginx pod: admitted, with the restricted warning logged and audited
	write_configs n6-nginx '{}' '{}'
	jq '.metadata.name = "nginx" | .metadata.namespace = "example" | .port_mappings = [{container_port: 80}]' /tmp/cfg/n6-nginx-pod.json >/tmp/cfg/x && mv /tmp/cfg/x /tmp/cfg/n6-nginx-pod.json
	# the masked and read-only /proc paths the kubelet sends for procMount: Default
	jq '.metadata.name = "nginx" | .labels["io.kubernetes.container.name"] = "nginx" |
		.linux.security_context.masked_paths = ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
			"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"] |
		.linux.security_context.readonly_paths = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]' \
		/tmp/cfg/n6-nginx-ctr.json >/tmp/cfg/x && mv /tmp/cfg/x /tmp/cfg/n6-nginx-ctr.json
	POD=$(ns_ runp /tmp/cfg/n6-nginx-pod.json 2>>"$LOG")
	CREATE_OUT=$(ns_ create "$POD" /tmp/cfg/n6-nginx-ctr.json /tmp/cfg/n6-nginx-pod.json 2>&1)
	CREATE_RC=$?
	log "nginx: pod=$POD create rc=$CREATE_RC: $CREATE_OUT"
	sleep 1
	warning=$(grep 'Pod Security warning' $NODE_LOG | grep 'pod="example/nginx"' | tail -n 1 | sed 's/.*warning="//; s/"$//; s/\\"/"/g')
	audit=$(grep '"pod":"nginx"' $AUDIT_LOG 2>/dev/null | tail -n 1)
	ok=false
	# the documentation's warning, word for word
	want='would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "nginx" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "nginx" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "nginx" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "nginx" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")'
	[ $CREATE_RC -eq 0 ] && [ "$warning" = "$want" ] && [ -n "$audit" ] && ok=true
	result n6-nginx-warned $ok "CreateContainer nginx in namespace example: rc=$CREATE_RC $( [ $CREATE_RC -eq 0 ] || create_err)" "log: $warning" "audit: $(echo "$audit" | cut -c1-300)"
	node_remove

	kill $NODE_PID 2>/dev/null
	wait $NODE_PID 2>/dev/null
	phase main-node-scenarios
}
