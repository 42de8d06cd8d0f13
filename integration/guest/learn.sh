# Sourced by guest.sh in the main boot (AppArmor on), after node.sh: a
# profile learned from a running workload (armorshim.io/learn), generated,
# enforced, and what the workload never did denied. Uses node.sh's node
# armorshim helpers (node_config, node_start, ns_, metric).

LEARN_NS=armorshim-learn
LEARN_NAME=k8s-learned-app
LEARN_DIR=/var/lib/armorshim/learning
LEARN_APP=/tmp/learn-app
LEARN_STEPS="l1-learn-refused l2-learned l3-generated l4-enforced l5-undone-denied"

# The workload: reads its configuration, writes into its own directory,
# opens TCP sockets (a listener and a client on loopback) and runs a helper
# binary; then it stays up.
LEARN_SCRIPT='cat /etc/app/app.conf >/dev/null
mkdir -p /work
echo done >/work/out.txt
nc -l -p 8080 >/work/received &
listener=$!
sleep 0.5
echo hello | nc -w 2 127.0.0.1 8080 || true
kill $listener 2>/dev/null
/bin/date >/work/date.txt
echo WORKLOAD-DONE
exec sleep 3600'

# learn_configs NAME NAMESPACE ANNOTATIONS SC: pod and container configs of
# the workload
learn_configs() {
	mkdir -p /tmp/cfg
	jq -n --arg n "$1" --arg ns "$2" --argjson ann "$3" '{
		metadata: {name: $n, namespace: $ns, uid: ("uid-" + $n), attempt: 0},
		hostname: $n, log_directory: ("/var/log/pods/" + $n), annotations: $ann,
		labels: {"io.kubernetes.pod.name": $n, "io.kubernetes.pod.namespace": $ns}}' >/tmp/cfg/$1-pod.json
	jq -n --arg n "$1" --arg ns "$2" --arg img "$IMG" --arg script "$LEARN_SCRIPT" --arg conf "$LEARN_APP/app.conf" --argjson sc "$4" '{
		metadata: {name: "app", attempt: 0}, image: {image: $img},
		command: ["sh", "-c", $script],
		mounts: [{container_path: "/etc/app/app.conf", host_path: $conf, readonly: true}],
		log_path: "app.log",
		labels: {"io.kubernetes.pod.name": $n, "io.kubernetes.pod.namespace": $ns, "io.kubernetes.container.name": "app"},
		linux: {security_context: $sc}}' >/tmp/cfg/$1-ctr.json
}

# learn_run NAME NAMESPACE ANNOTATIONS SC: create and start through the node
# armorshim -> $POD $CTR $CREATE_OUT $CREATE_RC; then wait for the workload
learn_run() {
	learn_configs "$@"
	POD=$(ns_ runp /tmp/cfg/$1-pod.json 2>>"$LOG")
	CTR=
	CREATE_RC=1
	[ -n "$POD" ] || { CREATE_OUT="RunPodSandbox failed"; return 1; }
	CREATE_OUT=$(ns_ create "$POD" /tmp/cfg/$1-ctr.json /tmp/cfg/$1-pod.json 2>&1)
	CREATE_RC=$?
	log "learn create $1 rc=$CREATE_RC: $CREATE_OUT"
	[ $CREATE_RC -eq 0 ] || return 1
	CTR=$(echo "$CREATE_OUT" | tail -n 1)
	ns_ start "$CTR" >>"$LOG" 2>&1 || return 1
	for _ in $(seq 1 50); do
		ns_ logs "$CTR" 2>/dev/null | grep -q WORKLOAD-DONE && return 0
		sleep 0.2
	done
	return 1
}

# pod_denials POD: AppArmor denials armorshim attributed to a pod
pod_denials() {
	exec 3<>/dev/tcp/${NODE_METRICS%:*}/${NODE_METRICS#*:} && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && cat <&3 |
		grep '^armorshim_apparmor_denials_total{' | grep "pod=\"$1\"" | awk '{s+=$2} END {print s+0}'
}

scenarios_learn() {
	local ok out attr records gen state n before learning denied
	mkdir -p $LEARN_APP $PROFILES_D
	echo "greeting=hello" >$LEARN_APP/app.conf
	node_config "" "denials:
  auditNetlink: true
  auditBacklogLimit: 8192
learning:
  namespaces: [$LEARN_NS]
  directory: $LEARN_DIR"
	if ! node_start; then
		for s in $LEARN_STEPS; do result "$s" false "the node armorshim did not start with learning on" "$(tail -n 3 $NODE_LOG | oneline)"; done
		return 1
	fi

	# ---- a namespace the node does not list: Forbidden
	learn_run l1-refused armorshim-it "{\"armorshim.io/learn\":\"$LEARN_NAME\"}" '{}'
	ok=false
	refused PermissionDenied "Forbidden: armorshim.io/learn: learning a profile is not allowed in namespace \"armorshim-it\" on this node" && ok=true
	result l1-learn-refused $ok "learning.namespaces: [$LEARN_NS]; a pod of armorshim-it annotated armorshim.io/learn: $LEARN_NAME" "$(create_err)"
	node_remove

	# ---- learning: the workload runs under its own learning profile
	ok=false
	learning="armorshim-learn.$LEARN_NAME.uid-l2-learn.app.0"
	if learn_run l2-learn $LEARN_NS "{\"armorshim.io/learn\":\"$LEARN_NAME\"}" '{}'; then
		# read from the host: an exec into the container would be learned too
		attr=$(cat /proc/$(cd_ inspect -o go-template --template '{{.info.pid}}' "$CTR" 2>>"$LOG")/attr/current 2>/dev/null | tr -d '\0' | oneline)
		sleep 2 # the kernel log read
		records=$(wc -l <$LEARN_DIR/$LEARN_NAME/accesses.jsonl 2>/dev/null || echo 0)
		[ "$attr" = "$learning (complain)" ] && [ "$records" -gt 5 ] && ok=true
		result l2-learned $ok "pod $LEARN_NS/l2-learn annotated armorshim.io/learn: $LEARN_NAME; /proc/1/attr/current: $attr (want $learning (complain))" \
			"distinct accesses recorded: $records (want > 5)" "$(grep -m1 'Container learning a profile' $NODE_LOG | oneline)" \
			"$(ns_ logs "$CTR" 2>&1 | tail -n 1)"
	else
		result l2-learned false "the learning workload did not run" "$(create_err)" "$(ns_ logs "$CTR" 2>&1 | tail -n 3 | oneline)"
	fi
	node_remove
	sleep 1
	loaded "$learning" && log "learning profile still loaded after its pod was removed"

	# ---- the profile generated, accepted by apparmor_parser
	ok=false
	gen=$(armorshim profile generate $LEARN_NAME --config $NODE_CFG 2>/tmp/generate.err)
	rc=$?
	cp $LEARN_DIR/$LEARN_NAME/$LEARN_NAME /out/learned-$LEARN_NAME.profile 2>/dev/null
	[ $rc -eq 0 ] && [ -f $LEARN_DIR/$LEARN_NAME/$LEARN_NAME ] && ! [ -e $PROFILES_D/$LEARN_NAME ] &&
		! loaded "$learning" && apparmor_parser -QT $LEARN_DIR/$LEARN_NAME/$LEARN_NAME >>"$LOG" 2>&1 && ok=true
	# the profile itself goes into the results (/out/learned-*.profile)
	result l3-generated $ok "armorshim profile generate $LEARN_NAME: rc=$rc; $(oneline </tmp/generate.err)" \
		"the learning profile removed with its pod: $(loaded "$learning" && echo no || echo yes); nothing written into $PROFILES_D: $([ -e $PROFILES_D/$LEARN_NAME ] && echo no || echo yes)" \
		"$(echo "$gen" | grep -c ',$') rules; apparmor_parser -QT: $(apparmor_parser -QT $LEARN_DIR/$LEARN_NAME/$LEARN_NAME 2>&1 | oneline || true)"

	# ---- enforced: the same workload runs under it with no denial
	ok=false
	install -m 0644 -o root -g root $LEARN_DIR/$LEARN_NAME/$LEARN_NAME $PROFILES_D/$LEARN_NAME
	for _ in $(seq 1 50); do loaded $LEARN_NAME && break; sleep 0.2; done
	if learn_run l4-enforce $LEARN_NS '{}' "{\"apparmor\":{\"profile_type\":2,\"localhost_ref\":\"$LEARN_NAME\"}}"; then
		sleep 2
		attr=$(cat /proc/$(cd_ inspect -o go-template --template '{{.info.pid}}' "$CTR" 2>>"$LOG")/attr/current 2>/dev/null | tr -d '\0' | oneline)
		n=$(pod_denials l4-enforce)
		state=$(cd_ inspect -o go-template --template '{{.status.state}}' "$CTR" 2>>"$LOG")
		[ "$attr" = "$LEARN_NAME (enforce)" ] && [ "$n" = 0 ] && [ "$state" = CONTAINER_RUNNING ] && ok=true
		result l4-enforced $ok "$PROFILES_D/$LEARN_NAME loaded: $(grep "^$LEARN_NAME " /sys/kernel/security/apparmor/profiles)" \
			"the workload under localhost/$LEARN_NAME: $(ns_ logs "$CTR" 2>&1 | tail -n 1); state $state; its process: $attr" \
			"denials attributed to pod $LEARN_NS/l4-enforce: $n (want 0)" \
			"$(grep 'AppArmor denial' $NODE_LOG | grep 'l4-enforce' | head -n 3 | oneline)"

		# ---- what it never did: denied and attributed
		ok=false
		before=$n
		out=$(ns_ exec "$CTR" touch /tmp/test 2>&1 | grep -v level= | oneline)
		denied=$(ns_ exec "$CTR" sh -c 'echo x >/etc/evil' 2>&1 | grep -v level= | oneline)
		sleep 2
		n=$(pod_denials l4-enforce)
		[[ $out == *"Permission denied"* ]] && [[ $denied == *"denied"* || $denied == *"Permission"* ]] && [ "$n" -gt "$before" ] && ok=true
		result l5-undone-denied $ok "touch /tmp/test: $out (want Permission denied)" "echo x >/etc/evil: ${denied:-(no error)}" \
			"denials attributed to pod $LEARN_NAME/l4-enforce: $before -> $n" \
			"$(grep 'AppArmor denial' $NODE_LOG | grep 'pod="'$LEARN_NS'/l4-enforce"' | tail -n 2 | oneline)"
	else
		result l4-enforced false "the workload under localhost/$LEARN_NAME did not run" "$(create_err)" "$(ns_ logs "$CTR" 2>&1 | tail -n 3 | oneline)" \
			"$(grep 'AppArmor denial' $NODE_LOG | tail -n 5 | oneline)"
		result l5-undone-denied false "no container"
	fi
	node_remove
	rm -f $PROFILES_D/$LEARN_NAME
	kill $NODE_PID 2>/dev/null
	wait $NODE_PID 2>/dev/null
	phase main-learn
}
