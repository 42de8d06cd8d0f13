#!/bin/bash
# PID 1 of the armorshim integration guest (after switch_root).
#
# Starts containerd and armorshim, runs the AppArmor scenarios through
# armorshim's socket with crictl and critest, prints one machine-readable line
# per step on the serial console and writes its artefacts (logs, critest JUnit
# reports) as a tar archive onto the second disk. Then powers off.
#
# Kernel command line: armorshim.mode=main (AppArmor on: scenarios 1-4, 6-8,
# the node scenarios and attestation against kernel labels),
# armorshim.mode=noaa (booted with apparmor=0: scenario 5) or
# armorshim.mode=kubelet (a real kubelet in front of armorshim: kubelet.sh) or
# armorshim.mode=cluster (a one-node cluster with its control plane, driven
# with kubectl: cluster.sh) or armorshim.mode=fleet (the same cluster under
# systemd as PID 1, armorshim installed and removed by its DaemonSet:
# fleet.sh).
#
# Console lines (the host parses these; anything else is informational):
#   ARMORSHIM-BEGIN   {"mode":..}
#   ARMORSHIM-RESULT  {"step":..,"ok":true|false,"mode":..,"evidence":[..]}
#   ARMORSHIM-CRITEST {"run":..,"endpoint":..,"rc":..,"summary":..,"seconds":..}
#   ARMORSHIM-PHASE   {"phase":..,"seconds":..}
#   ARMORSHIM-DONE    {"mode":..,"seconds":..}

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LC_ALL=C
RUN=/opt/armorshim-it/run
exec </dev/null >/dev/console 2>&1
T0=$(date +%s)

# the fleet boot's PID 1 is systemd, which mounted /proc and /sys
[ -r /proc/cmdline ] || { mount -t proc proc /proc; mount -t sysfs sysfs /sys; }
MODE=$(sed -n 's/.*armorshim\.mode=\([a-z]*\).*/\1/p' /proc/cmdline)
MODE=${MODE:-main}
# armorshim.full=0 on the command line skips the two full critest runs (development aid)
FULL=$(sed -n 's/.*armorshim\.full=\([01]\).*/\1/p' /proc/cmdline)
FULL=${FULL:-1}
# armorshim.direct=0 skips the full critest run straight against containerd:
# the host holds its result from an earlier run of this very guest
DIRECT=$(sed -n 's/.*armorshim\.direct=\([01]\).*/\1/p' /proc/cmdline)
DIRECT=${DIRECT:-1}
# armorshim.record=1: the kubelet boot records what the kubelet sends
RECORD=$(sed -n 's/.*armorshim\.record=\([01]\).*/\1/p' /proc/cmdline)
RECORD=${RECORD:-0}
# ginkgo nodes for the full critest runs (armorshim.parallel=N)
PARALLEL=$(sed -n 's/.*armorshim\.parallel=\([0-9]*\).*/\1/p' /proc/cmdline)
PARALLEL=${PARALLEL:-4}
# per critest run (armorshim.critest_timeout=SECONDS)
CRITEST_TIMEOUT=$(sed -n 's/.*armorshim\.critest_timeout=\([0-9]*\).*/\1/p' /proc/cmdline)
CRITEST_TIMEOUT=${CRITEST_TIMEOUT:-1200}
if [ "$MODE" = fleet ]; then
	# systemd mounted securityfs, cgroup2, /dev/pts, /dev/shm and /run (its
	# own sockets are there); /var/log keeps its journal
	DIRS="/tmp /var/lib/containerd /var/lib/cni /out"
else
	mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
	mount -t cgroup2 cgroup2 /sys/fs/cgroup
	mkdir -p /dev/pts /dev/shm
	mount -t devpts devpts /dev/pts
	mount -t tmpfs tmpfs /dev/shm
	DIRS="/run /tmp /var/lib/containerd /var/lib/cni /var/log /out"
fi
mount -o remount,rw /
mount --make-rshared /
for d in $DIRS; do
	mkdir -p "$d"
	mount -t tmpfs -o mode=0755 tmpfs "$d"
done
chmod 1777 /tmp
echo 1 >/proc/sys/kernel/sysrq
hostname armorshim-guest
ip link set lo up
for m in overlay bridge veth br_netfilter; do modprobe "$m" 2>/dev/null; done
echo 1 >/proc/sys/net/ipv4/ip_forward

LOG=/out/guest-$MODE.log
SHIM_EP=unix:///run/armorshim/armorshim.sock
CTRD_EP=unix:///run/containerd/containerd.sock
IMG=registry.k8s.io/e2e-test-images/busybox:1.29-2
DENY=k8s-apparmor-example-deny-write
ALLOW=k8s-apparmor-example-allow-write

# ---------------------------------------------------------------- reporting
emit() { # KIND jq-args... : one console line + a copy in /out
	local kind=$1 line
	shift
	line="ARMORSHIM-$kind $(jq -cn "$@")"
	echo "$line"
	echo "$line" >>/out/results.jsonl
}
oneline() { tr '\n\r\t' '   ' | sed 's/  */ /g; s/^ //; s/ $//' | cut -c1-400; }
# result STEP true|false EVIDENCE...
result() {
	local step=$1 ok=$2
	shift 2
	emit RESULT --arg step "$step" --argjson ok "$ok" --arg mode "$MODE" \
		'{step:$step,ok:$ok,mode:$mode,evidence:$ARGS.positional}' --args "$@"
}
PHASE_T=$(date +%s)
phase() { # NAME: closes the phase that started at the previous call
	local now
	now=$(date +%s)
	emit PHASE --arg phase "$1" --argjson seconds $((now - PHASE_T)) --arg mode "$MODE" '{phase:$phase,seconds:$seconds,mode:$mode}'
	PHASE_T=$now
}
# checkpoint: write /out as a tar archive onto the artefact disk (done after
# each long step too, so a guest killed later still hands back its logs)
checkpoint() {
	cp /run/containerd.log /out/containerd-$MODE.log 2>/dev/null
	dmesg >/out/dmesg-$MODE.log 2>/dev/null
	sync
	tar -C /out -cf /dev/vdb . 2>/dev/null || echo "guest: cannot write artefacts to /dev/vdb"
	sync
}
finish() {
	phase "$MODE-teardown"
	checkpoint
	emit DONE --arg mode "$MODE" --argjson seconds $(($(date +%s) - T0)) '{mode:$mode,seconds:$seconds}'
	sleep 1
	echo o >/proc/sysrq-trigger
	sleep 30
}
log() { echo "== $*" >>"$LOG"; }

emit BEGIN --arg mode "$MODE" --arg kernel "$(uname -r)" --arg cmdline "$(cat /proc/cmdline)" \
	'{mode:$mode,kernel:$kernel,cmdline:$cmdline}'

# ---------------------------------------------------------------- setup
aa_enabled=$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null || echo missing)
mkdir -p /etc/containerd /etc/cni/net.d /run/armorshim
cp "$RUN/containerd-config.toml" /etc/containerd/config.toml
cp "$RUN/cni.conflist" /etc/cni/net.d/10-armorshim-it.conflist
# crictl warns on every call without a config file; endpoints are given per call
printf 'timeout: 60\n' >/etc/crictl.yaml
containerd --config /etc/containerd/config.toml >/run/containerd.log 2>&1 &
for _ in $(seq 1 300); do
	ctr version >/dev/null 2>&1 && break
	sleep 0.2
done
if ! ctr version >/dev/null 2>&1; then
	result setup-containerd false "containerd did not come up" "$(tail -n 5 /run/containerd.log | oneline)"
	finish
fi
ctr -n k8s.io images import --all-platforms /opt/armorshim-it/images.tar >>"$LOG" 2>&1
IMAGES=$(crictl --runtime-endpoint $CTRD_EP --image-endpoint $CTRD_EP images -q 2>/dev/null | wc -l)
result setup-containerd true "containerd $(ctr version 2>/dev/null | awk '/Version:/{print $2}' | tail -n 1) up" \
	"apparmor enabled=$aa_enabled" "$IMAGES images in k8s.io" \
	"$(crictl --runtime-endpoint $CTRD_EP --image-endpoint $CTRD_EP images 2>/dev/null | awk 'NR>1{print $1":"$2}' | sort | tr '\n' ' ')"
phase "$MODE-containerd-and-images"

SHIM_OK=false
if [ "$MODE" = fleet ]; then
	: # armorshim comes with its installer (fleet.sh), not from here
elif [ -x "$RUN/armorshim" ]; then
	install -m 0755 "$RUN/armorshim" /usr/local/bin/armorshim
	armorshim serve --config= --listen $SHIM_EP --runtime-endpoint $CTRD_EP -v 4 >/out/armorshim-$MODE.log 2>&1 &
	SHIM_PID=$!
	for _ in $(seq 1 150); do
		[ -S /run/armorshim/armorshim.sock ] &&
			crictl --runtime-endpoint $SHIM_EP --image-endpoint $SHIM_EP --timeout 5s version >/dev/null 2>&1 && SHIM_OK=true && break
		kill -0 $SHIM_PID 2>/dev/null || break
		sleep 0.2
	done
	if $SHIM_OK; then
		result setup-armorshim true "$(armorshim version 2>&1 | head -n 1 | oneline)" \
			"$(crictl --runtime-endpoint $SHIM_EP --timeout 5s version 2>&1 | oneline)"
	else
		result setup-armorshim false "armorshim did not serve on $SHIM_EP" "$(tail -n 5 /out/armorshim-$MODE.log | oneline)"
	fi
else
	result setup-armorshim false "no armorshim binary in the payload (it did not build from the checkout)"
fi
phase "$MODE-armorshim-start"

# ---------------------------------------------------------------- helpers
cs() { timeout 120 crictl --runtime-endpoint $SHIM_EP --image-endpoint $SHIM_EP --timeout 60s "$@"; }
cd_() { timeout 120 crictl --runtime-endpoint $CTRD_EP --image-endpoint $CTRD_EP --timeout 60s "$@"; }

# write_configs NAME SECURITY-CONTEXT-JSON ANNOTATIONS-JSON
# -> /tmp/cfg/NAME-pod.json and /tmp/cfg/NAME-ctr.json, as the kubelet would
#    send them (PID namespace CONTAINER so /proc/1 is the container's process)
write_configs() {
	mkdir -p /tmp/cfg
	jq -n --arg n "$1" --argjson ann "$3" '{
		metadata: {name: $n, namespace: "armorshim-it", uid: ("uid-" + $n), attempt: 0},
		hostname: $n, log_directory: ("/var/log/pods/" + $n), annotations: $ann,
		labels: {"io.kubernetes.pod.name": $n, "io.kubernetes.pod.namespace": "armorshim-it"},
		linux: {security_context: {namespace_options: {pid: 1}}}}' >/tmp/cfg/$1-pod.json
	jq -n --arg n "$1" --arg img "$IMG" --argjson sc "$2" '{
		metadata: {name: "hello", attempt: 0}, image: {image: $img},
		command: ["sh", "-c", "echo Hello AppArmor! && sleep 3600"],
		log_path: "hello.log",
		labels: {"io.kubernetes.pod.name": $n, "io.kubernetes.pod.namespace": "armorshim-it",
			"io.kubernetes.container.name": "hello"},
		linux: {security_context: ({namespace_options: {pid: 1}} + $sc)}}' >/tmp/cfg/$1-ctr.json
}
# run_pod NAME: RunPodSandbox through armorshim -> $POD
run_pod() {
	POD=$(cs runp /tmp/cfg/$1-pod.json 2>>"$LOG")
	log "runp $1 -> $POD"
	[ -n "$POD" ]
}
# create_ctr NAME: CreateContainer through armorshim -> $CTR, $CREATE_OUT, $CREATE_RC
create_ctr() {
	CREATE_OUT=$(cs create "$POD" /tmp/cfg/$1-ctr.json /tmp/cfg/$1-pod.json 2>&1)
	CREATE_RC=$?
	CTR=
	[ $CREATE_RC -eq 0 ] && CTR=$(echo "$CREATE_OUT" | tail -n 1)
	log "create $1 rc=$CREATE_RC: $CREATE_OUT"
	return $CREATE_RC
}
remove_pod() {
	[ -n "${POD:-}" ] || return 0
	cs stopp "$POD" >>"$LOG" 2>&1
	cs rmp "$POD" >>"$LOG" 2>&1
	POD=
}
# start and probe the container: $STATE, $ATTR, $TOUCH_OUT, $TOUCH_RC
probe_ctr() {
	cs start "$CTR" >>"$LOG" 2>&1
	STATE=$(cs inspect -o go-template --template '{{.status.state}}' "$CTR" 2>>"$LOG")
	ATTR=$(cs exec "$CTR" cat /proc/1/attr/current 2>>"$LOG" | tr -d '\0' | oneline)
	TOUCH_OUT=$(cs exec "$CTR" touch /tmp/test 2>&1)
	TOUCH_RC=$?
	TOUCH_OUT=$(echo "$TOUCH_OUT" | grep -v 'level=' | oneline)
	log "probe $CTR: state=$STATE attr=$ATTR touch rc=$TOUCH_RC $TOUCH_OUT"
}
loaded() { grep -q "^$1 (" /sys/kernel/security/apparmor/profiles 2>/dev/null; }
# rpc_error: the gRPC error of the last create, as crictl printed it (unescaped)
rpc_error() { echo "${CREATE_OUT//\\/}" | grep -o 'rpc error: code = .*' | tail -n 1 | sed 's/"$//' | oneline; }
create_err() {
	local e
	e=$(rpc_error)
	if [ -n "$e" ]; then echo "$e"; else echo "$CREATE_OUT" | grep -v 'level=warning' | oneline; fi
}
# refused CODE MESSAGE: the last create failed with that gRPC code and message
refused() {
	local e
	e=$(rpc_error)
	[ $CREATE_RC -ne 0 ] && [[ $e == *"code = $1 "* ]] && [[ $e == *"$2"* ]]
}

# A container created, started and probed; checks attr and the write.
# confined_run STEP NAME SC ANNOTATIONS EXPECT_ATTR WRITE(denied|allowed)
confined_run() {
	local step=$1 name=$2 ok=true want_touch
	write_configs "$name" "$3" "$4"
	if ! run_pod "$name"; then
		result "$step" false "RunPodSandbox through armorshim failed" "$(tail -n 3 "$LOG" | oneline)"
		return 1
	fi
	if ! create_ctr "$name"; then
		result "$step" false "CreateContainer through armorshim failed" "$(create_err)"
		remove_pod
		return 1
	fi
	probe_ctr
	[ "$STATE" = CONTAINER_RUNNING ] || ok=false
	[ "$ATTR" = "$5" ] || ok=false
	if [ "$6" = denied ]; then
		[ "$TOUCH_RC" -ne 0 ] && [[ $TOUCH_OUT == *"Permission denied"* ]] || ok=false
		want_touch="fails"
	else
		[ "$TOUCH_RC" -eq 0 ] || ok=false
		want_touch="succeeds"
	fi
	result "$step" $ok "request: $(jq -c . <<<"$3") annotations: $(jq -c . <<<"$4")" \
		"state: $STATE" "/proc/1/attr/current: $ATTR (want: $5)" \
		"touch /tmp/test: rc=$TOUCH_RC ${TOUCH_OUT:-(no output)} (want: $want_touch)"
}

# issues 4, 6 and 7: scenarios_node, against a second, configured armorshim
. "$RUN/node.sh"
# the Debian package installed, removed and purged: scenarios_package
. "$RUN/package.sh"
# a profile learned from a workload (armorshim.io/learn): scenarios_learn
. "$RUN/learn.sh"

# ---------------------------------------------------------------- scenarios
profile_text() { # NAME DENY(yes|no): the documentation's profile, optionally without the deny rule
	echo '#include <tunables/global>'
	echo
	echo "profile $1 flags=(attach_disconnected) {"
	echo '  #include <abstractions/base>'
	echo
	echo '  file,'
	if [ "$2" = yes ]; then
		echo
		echo '  # Deny all file writes.'
		echo '  deny /** w,'
	fi
	echo '}'
}

scenarios_main() {
	local sc ann ok
	profile_text $DENY yes >/tmp/$DENY.profile
	profile_text $ALLOW no >/tmp/$ALLOW.profile
	apparmor_parser -r -W /tmp/$DENY.profile >>"$LOG" 2>&1
	loaded $DENY || result setup-profile false "$DENY did not load"
	phase main-load-profile

	# 1: the documentation's profile, three ways of asking for it
	confined_run s1-field s1-field "{\"apparmor\":{\"profile_type\":2,\"localhost_ref\":\"$DENY\"}}" '{}' \
		"$DENY (enforce)" denied
	# 8: the OCI spec containerd generated for that container
	if [ -n "$CTR" ]; then
		spec=$(cs inspect "$CTR" 2>>"$LOG" | jq -r '.info.runtimeSpec.process.apparmorProfile // "(none)"')
		ok=false
		[ "$spec" = "$DENY" ] && ok=true
		result s8-oci-spec $ok "crictl inspect $CTR: .info.runtimeSpec.process.apparmorProfile = $spec (want: $DENY)"
	else
		result s8-oci-spec false "no container from s1-field to inspect"
	fi
	remove_pod
	confined_run s1-string s1-string "{\"apparmor_profile\":\"localhost/$DENY\"}" '{}' "$DENY (enforce)" denied
	remove_pod
	confined_run s1-annotation s1-annotation '{}' \
		"{\"container.apparmor.security.beta.kubernetes.io/hello\":\"localhost/$DENY\"}" "$DENY (enforce)" denied
	remove_pod
	phase main-scenario-1-8

	# 2: a profile that is not loaded is refused; once loaded, the same request runs
	loaded $ALLOW && apparmor_parser -R /tmp/$ALLOW.profile >>"$LOG" 2>&1
	sc="{\"apparmor\":{\"profile_type\":2,\"localhost_ref\":\"$ALLOW\"},\"apparmor_profile\":\"localhost/$ALLOW\"}"
	write_configs s2 "$sc" '{}'
	if run_pod s2; then
		before=$(ctr -n k8s.io containers ls -q | wc -l)
		create_ctr s2
		after=$(ctr -n k8s.io containers ls -q | wc -l)
		inpod=$(cd_ ps -a --pod "$POD" -q 2>>"$LOG" | wc -l)
		ok=false
		refused FailedPrecondition "Blocked: Cannot enforce AppArmor: profile \"$ALLOW\" is not loaded" &&
			[ "$before" = "$after" ] && [ "$inpod" = 0 ] && ok=true
		result s2-refused $ok "profile $ALLOW loaded: $(loaded $ALLOW && echo yes || echo no)" \
			"CreateContainer: rc=$CREATE_RC $(rpc_error)" \
			"containerd containers before/after: $before/$after; containers of the pod (direct crictl ps -a): $inpod"
		apparmor_parser -r -W /tmp/$ALLOW.profile >>"$LOG" 2>&1
		ok=false
		if create_ctr s2; then
			probe_ctr
			[ "$STATE" = CONTAINER_RUNNING ] && [ "$ATTR" = "$ALLOW (enforce)" ] && [ "$TOUCH_RC" -eq 0 ] && ok=true
			result s2-after-load $ok "profile $ALLOW loaded: $(loaded $ALLOW && echo yes || echo no)" \
				"same CreateContainer again: created $CTR" "state: $STATE" \
				"/proc/1/attr/current: $ATTR (want: $ALLOW (enforce))" \
				"touch /tmp/test: rc=$TOUCH_RC ${TOUCH_OUT:-(no output)} (want: succeeds)"
		else
			result s2-after-load false "CreateContainer after loading $ALLOW failed: $(create_err)"
		fi
		remove_pod
	else
		result s2-refused false "RunPodSandbox through armorshim failed"
		result s2-after-load false "RunPodSandbox through armorshim failed"
	fi
	phase main-scenario-2

	# 3: runtime/default, 4: unconfined (new field and string, as kubelet >= 1.30 sends them)
	confined_run s3-runtime-default s3 '{"apparmor":{"profile_type":0},"apparmor_profile":"runtime/default"}' '{}' \
		"cri-containerd.apparmor.d (enforce)" allowed
	remove_pod
	confined_run s4-unconfined s4 '{"apparmor":{"profile_type":1},"apparmor_profile":"unconfined"}' '{}' \
		"unconfined" allowed
	remove_pod
	phase main-scenario-3-4

	# 6: an invalid reference
	write_configs s6 '{"apparmor_profile":"foo/bar"}' '{}'
	if run_pod s6; then
		create_ctr s6
		ok=false
		refused InvalidArgument 'invalid AppArmor profile name: "foo/bar"' && ok=true
		result s6-invalid $ok "request: apparmor_profile=foo/bar" "CreateContainer: rc=$CREATE_RC $(rpc_error)"
		remove_pod
	else
		result s6-invalid false "RunPodSandbox through armorshim failed"
	fi
	phase main-scenario-6
}

# ---- attestation against the kernel's own labels (main boot, after
# scenarios_node): a profile with a child profile, a hat and a change_profile
# to a second profile. A container that moves into any of them still runs
# under its profile and is attested; in complain mode, where requireEnforce
# holds, it is stopped at start and refused at create.
ATT=k8s-attest-child
ATT_EXTRA=k8s-attest-extra
ATT_STEPS="n7-attest-child n7-attest-hat n7-attest-stack n7-attest-complain"

attest_profiles() {
	cat <<EOF
#include <tunables/global>

profile $ATT flags=(attach_disconnected) {
  #include <abstractions/base>
  file,
  signal,
  # an exact rule overrides the x permission of file,
  /bin/busybox cx -> sleeper,
  # stacking is allowed by change_profile rules whose target starts with &
  change_profile -> &$ATT_EXTRA,

  ^worker flags=(attach_disconnected) {
    #include <abstractions/base>
    file,
    signal,
  }

  profile sleeper flags=(attach_disconnected) {
    #include <abstractions/base>
    file,
    signal,
  }
}

profile $ATT_EXTRA flags=(attach_disconnected) {
  #include <abstractions/base>
  file,
  signal,
}
EOF
}

# the first process's own label change, written where the kernel takes it
ATT_SELF='f=/proc/self/attr/apparmor/current; [ -e $f ] || f=/proc/self/attr/current'
ATT_CHILD='exec /bin/busybox sleep 3600'
# (not the last command: ash would exec it and leave the hat or stack)
ATT_HAT="$ATT_SELF; echo -n 'changehat 0000000000000001^worker' >\$f; sleep 3600; exit 0"
ATT_STACK="$ATT_SELF; echo -n 'stack $ATT_EXTRA' >\$f; sleep 3600; exit 0"

# attest_ctr NAME SCRIPT: a container config in the n7-attest pod running sh -c SCRIPT
attest_ctr() {
	jq --arg n "$1" --arg s "$2" '.metadata.name = $n | .command = ["sh", "-c", $s] | .log_path = ($n + ".log") |
		.labels["io.kubernetes.container.name"] = $n' /tmp/cfg/n7-attest-ctr.json >/tmp/cfg/$1-ctr.json
}
kernel_label() {
	local a=/proc/$1/attr/apparmor/current
	[ -e "$a" ] || a=/proc/$1/attr/current
	tr -d '\0' <"$a" 2>/dev/null | oneline
}
# attest_try STEP SCRIPT WANT...: starts containers running SCRIPT under
# localhost/$ATT, up to 4, until armorshim attests one already under one of
# the WANT labels, the kernel's label for it. The process changes its label
# right after its start, racing armorshim's read: an attempt attested while
# still under "$ATT (enforce)" is tried again. Anything else (a failed
# start, a mismatch, unverified) fails the step.
attest_try() {
	local step=$1 script=$2 i id out line conf kern state w ok=false
	shift 2
	local ev=()
	for i in 1 2 3 4; do
		attest_ctr "$step-$i" "$script"
		id=$(ns_ create "$POD" /tmp/cfg/$step-$i-ctr.json /tmp/cfg/n7-attest-pod.json 2>>"$LOG" | tail -n 1)
		if [ -z "$id" ]; then
			ev+=("attempt $i: CreateContainer failed: $(tail -n 2 "$LOG" | oneline)")
			break
		fi
		out=$(ns_ start "$id" 2>&1 | grep -o 'rpc error: .*' | oneline)
		line=$(grep -F "containerID=\"$id\"" $NODE_LOG | grep 'Container confinement' | tail -n 1)
		conf=$(sed -n 's/.*"Container confinement attested".* confinement="\([^"]*\)".*/\1/p' <<<"$line")
		state=$(cd_ inspect -o go-template --template '{{.status.state}}' "$id" 2>>"$LOG")
		kern=$(kernel_label "$(cd_ inspect -o go-template --template '{{.info.pid}}' "$id" 2>>"$LOG")")
		ev+=("attempt $i: StartContainer ${out:-ok}, $state; attested: ${conf:-(none: $(echo "${line#*\] }" | oneline | cut -c1-200))}; the kernel's label now: ${kern:-?}; its output: $(cd_ logs "$id" 2>&1 | tail -n 2 | oneline)")
		[ -z "$out" ] && [ "$state" = CONTAINER_RUNNING ] && [ -n "$conf" ] || break
		for w in "$@"; do
			[ "$conf" = "$w" ] && [ "$kern" = "$w" ] && ok=true
		done
		$ok && break
		[ "$conf" = "$ATT (enforce)" ] || break
	done
	result "$step" $ok "want attested: $(printf '%s or ' "$@" | sed 's/ or $//')" "${ev[@]}"
}

scenarios_attest() {
	local s id out state before after ok parser
	attest_profiles >/tmp/$ATT.profile
	parser=$(apparmor_parser -r /tmp/$ATT.profile 2>&1)
	log "apparmor_parser -r /tmp/$ATT.profile: $parser"
	node_config "  requireEnforce: true"
	if ! loaded $ATT || ! loaded $ATT_EXTRA || ! node_start; then
		for s in $ATT_STEPS; do
			result "$s" false "apparmor_parser: ${parser:-(no output)}" \
				"loaded: $(grep "^k8s-attest" /sys/kernel/security/apparmor/profiles | oneline)" \
				"the node armorshim: $(tail -n 3 $NODE_LOG | oneline)"
		done
		return 1
	fi
	write_configs n7-attest "{\"apparmor_profile\":\"localhost/$ATT\"}" '{}'
	POD=$(ns_ runp /tmp/cfg/n7-attest-pod.json 2>>"$LOG")
	if [ -z "$POD" ]; then
		for s in $ATT_STEPS; do result "$s" false "RunPodSandbox through the node armorshim failed"; done
		kill $NODE_PID 2>/dev/null
		wait $NODE_PID 2>/dev/null
		return 1
	fi
	before=$(metric 'armorshim_start_attestations_total{outcome="attested"}')
	attest_try n7-attest-child "$ATT_CHILD" "$ATT//sleeper (enforce)"
	attest_try n7-attest-hat "$ATT_HAT" "$ATT//worker (enforce)"
	attest_try n7-attest-stack "$ATT_STACK" "$ATT//&$ATT_EXTRA (enforce)" "$ATT_EXTRA//&$ATT (enforce)"
	after=$(metric 'armorshim_start_attestations_total{outcome="attested"}')
	log "n7-attest: attested starts $before -> $after; mismatches $(metric 'armorshim_start_attestations_total{outcome="mismatch"}');" \
		"$(grep "^k8s-attest" /sys/kernel/security/apparmor/profiles | oneline)"

	# the same profiles reloaded in complain mode between create and start
	ok=false
	attest_ctr n7-attest-complain "$ATT_CHILD"
	id=$(ns_ create "$POD" /tmp/cfg/n7-attest-complain-ctr.json /tmp/cfg/n7-attest-pod.json 2>>"$LOG" | tail -n 1)
	if [ -n "$id" ]; then
		apparmor_parser -C -r /tmp/$ATT.profile >>"$LOG" 2>&1
		out=$(ns_ start "$id" 2>&1 | grep -o 'rpc error: .*' | oneline)
		state=$(cd_ inspect -o go-template --template '{{.status.state}}' "$id" 2>>"$LOG")
		attest_ctr n7-attest-complain-2 "$ATT_CHILD"
		CREATE_OUT=$(ns_ create "$POD" /tmp/cfg/n7-attest-complain-2-ctr.json /tmp/cfg/n7-attest-pod.json 2>&1)
		CREATE_RC=$?
		[[ $out == *"code = FailedPrecondition desc = Blocked: AppArmor confinement mismatch: expected $ATT (enforce), the container runs $ATT"*" (complain): this node requires enforce mode"* ]] &&
			[ "$state" = CONTAINER_EXITED ] &&
			refused FailedPrecondition "profile \"$ATT\" is loaded in complain mode, but this node requires enforce mode" && ok=true
		result n7-attest-complain $ok "created under $ATT (enforce), then its profiles reloaded in complain mode (requireEnforce)" \
			"StartContainer: ${out:-ok}; state afterwards: $state (want: CONTAINER_EXITED)" \
			"$(grep "^k8s-attest" /sys/kernel/security/apparmor/profiles | oneline)" "CreateContainer now: $(create_err)"
	else
		result n7-attest-complain false "CreateContainer under $ATT (enforce) failed: $(tail -n 2 "$LOG" | oneline)"
	fi
	node_remove
	kill $NODE_PID 2>/dev/null
	wait $NODE_PID 2>/dev/null
	apparmor_parser -R /tmp/$ATT.profile >>"$LOG" 2>&1
	phase main-attest-kernel-labels
}

scenarios_noaa() {
	local ok
	# 5: AppArmor off: a localhost profile is refused, no profile runs
	write_configs s5 "{\"apparmor\":{\"profile_type\":2,\"localhost_ref\":\"$DENY\"},\"apparmor_profile\":\"localhost/$DENY\"}" '{}'
	if run_pod s5; then
		create_ctr s5
		ok=false
		[ "$aa_enabled" != Y ] && refused FailedPrecondition "Blocked: Cannot enforce AppArmor: AppArmor is not enabled on the host" && ok=true
		result s5-refused $ok "/sys/module/apparmor/parameters/enabled: $aa_enabled" \
			"CreateContainer (localhost/$DENY): rc=$CREATE_RC $(rpc_error)"
		remove_pod
	else
		result s5-refused false "RunPodSandbox through armorshim failed"
	fi
	write_configs s5-none '{}' '{}'
	if run_pod s5-none && create_ctr s5-none; then
		cs start "$CTR" >>"$LOG" 2>&1
		STATE=$(cs inspect -o go-template --template '{{.status.state}}' "$CTR" 2>>"$LOG")
		out=$(cs exec "$CTR" echo hello 2>&1 | oneline)
		ok=false
		[ "$STATE" = CONTAINER_RUNNING ] && [ "$out" = hello ] && ok=true
		result s5-no-profile $ok "request: no AppArmor profile" "created $CTR, state: $STATE" "exec echo hello: $out"
	else
		result s5-no-profile false "no-profile container failed: $(echo "${CREATE_OUT:-runp failed}" | oneline)"
	fi
	remove_pod
	phase noaa-scenario-5
}

# critest NAME ENDPOINT EXTRA-ARGS...
critest_run() {
	local name=$1 ep=$2 t rc summary
	shift 2
	t=$(date +%s)
	# own session, so a timeout ends critest, the ginkgo CLI and its nodes together
	setsid critest --runtime-endpoint "$ep" --image-endpoint "$ep" \
		-ginkgo.no-color -ginkgo.junit-report="/out/critest-$name.xml" "$@" >/out/critest-$name.log 2>&1 &
	local pid=$! deadline=$((t + CRITEST_TIMEOUT)) next=$((t + 60))
	while kill -0 $pid 2>/dev/null; do
		if [ "$(date +%s)" -ge $deadline ]; then
			echo "guest: critest $name hit its timeout of ${CRITEST_TIMEOUT}s"
			kill -TERM -- -$pid 2>/dev/null
			sleep 20
			kill -KILL -- -$pid 2>/dev/null
			break
		fi
		if [ "$(date +%s)" -ge $next ]; then
			next=$((next + 60))
			emit PROGRESS --arg run "$name" --argjson seconds $(($(date +%s) - t)) \
				--argjson specs "$(grep -o '•' /out/critest-$name.log | wc -l)" \
				--arg last "$(grep -E '^\[(k8s.io|FAILED|It)\]' /out/critest-$name.log | tail -n 1 | cut -c1-160)" \
				'{run:$run,seconds:$seconds,specs_done:$specs,last:$last}'
		fi
		sleep 5
	done
	wait $pid
	rc=$?
	summary=$(grep -E '(SUCCESS|FAIL)! .*Passed' /out/critest-$name.log | tail -n 1 | oneline)
	ran=$(grep -E '^Ran [0-9]+ of [0-9]+ Specs' /out/critest-$name.log | tail -n 1 | oneline)
	emit CRITEST --arg run "$name" --arg ep "$ep" --argjson rc $rc --arg summary "$summary" --arg ran "$ran" \
		--argjson seconds $(($(date +%s) - t)) \
		'{run:$run,endpoint:$ep,rc:$rc,summary:$summary,ran:$ran,seconds:$seconds}'
	CRITEST_RC=$rc CRITEST_SUMMARY="$ran $summary"
	checkpoint
}

critest_main() {
	local ok
	# 7a: AppArmor tests through armorshim
	critest_run apparmor-shim $SHIM_EP -ginkgo.focus=AppArmor -parallel=$PARALLEL
	ok=false
	[ $CRITEST_RC -eq 0 ] && [[ $CRITEST_SUMMARY == *"SUCCESS!"* ]] && [[ $CRITEST_SUMMARY != *" 0 Passed"* ]] && ok=true
	result s7-critest-apparmor $ok "critest -ginkgo.focus=AppArmor through armorshim: rc=$CRITEST_RC" "$CRITEST_SUMMARY"
	phase main-critest-apparmor
	[ "$FULL" = 1 ] || return 0
	# 7b: the whole suite, straight to containerd and through armorshim
	if [ "$DIRECT" = 1 ]; then
		critest_run full-direct $CTRD_EP -parallel=$PARALLEL
		phase main-critest-full-direct
	fi
	critest_run full-shim $SHIM_EP -parallel=$PARALLEL
	phase main-critest-full-shim
}

# Scenarios 7a/b need a working shim; without it their steps are reported as
# failed (never silently skipped). The direct critest run happens regardless.
case "$MODE" in
main)
	if $SHIM_OK; then
		scenarios_main
		scenarios_node
		scenarios_attest
		scenarios_learn
		critest_main
	else
		for s in s1-field s8-oci-spec s1-string s1-annotation s2-refused s2-after-load s3-runtime-default s4-unconfined s6-invalid s7-critest-apparmor $ATT_STEPS $LEARN_STEPS; do
			result "$s" false "not run: armorshim is not serving"
		done
		critest_run full-direct $CTRD_EP -parallel=$PARALLEL
		phase main-critest-full-direct
	fi
	# The Debian package, last: it stops the suite's armorshim first.
	scenarios_package
	phase main-package
	;;
noaa)
	if $SHIM_OK; then
		scenarios_noaa
	else
		result s5-refused false "not run: armorshim is not serving"
		result s5-no-profile false "not run: armorshim is not serving"
	fi
	;;
kubelet)
	. "$RUN/kubelet.sh"
	scenarios_kubelet
	;;
cluster)
	. "$RUN/cluster.sh"
	scenarios_cluster
	;;
fleet)
	. "$RUN/fleet.sh"
	scenarios_fleet
	;;
*)
	result mode false "unknown armorshim.mode=$MODE"
	;;
esac
[ -n "${SHIM_PID:-}" ] && kill "$SHIM_PID" 2>/dev/null
finish
