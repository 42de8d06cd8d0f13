# Sourced by guest.sh in the kubelet boot: a real kubelet (standalone, static
# pods) in front of armorshim, which is in front of containerd. The kubelet's
# socket is crirecord's, which relays every call to armorshim unchanged and
# keeps the RunPodSandbox, CreateContainer and ImageStatus calls it saw
# (/out/kubelet-requests). Outcomes are read from the kubelet (its JSON log
# and its /pods endpoint) and from containerd directly, never from armorshim.
#
# Console lines besides RESULT:
#   ARMORSHIM-PSA {"fixture":..,"pod":..,"outcome":..,"request":..,"container":..,"message":..,...}
#     one per Pod Security Admission fixture run through the kubelet.

K_SOCK=/run/armorshim/kubelet.sock
K_CFG=/etc/armorshim/kubelet-tier.yaml
K_SHIM_LOG=/out/armorshim-kubelet.log
REC_SOCK=/run/crirecord.sock
REC_DIR=/out/kubelet-requests
KLOG=/out/kubelet.log
MANIFESTS=/etc/kubernetes/manifests
NODE_NAME=armorshim-guest
K_PROFILES_D=/etc/armorshim/profiles.d
K_AUDIT=/out/pod-security-audit-kubelet.log

# kpods: the kubelet's pods with their status (read-only port)
kpods() {
	(exec 3<>/dev/tcp/127.0.0.1/10255 && printf 'GET /pods HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3 && sed '1,/^\r$/d' <&3) 2>/dev/null
}
# kstatus NS NAME: the status of one static pod (its name gets the node's)
kstatus() { kpods | jq -c --arg ns "$1" --arg n "$2-$NODE_NAME" '.items[]? | select(.metadata.namespace==$ns and .metadata.name==$n) | .status'; }
# kctr NS NAME CONTAINER: the container's id in containerd (direct), running or not
kctr() {
	cd_ ps -a -q --label "io.kubernetes.pod.namespace=$1" --label "io.kubernetes.pod.name=$2-$NODE_NAME" \
		--label "io.kubernetes.container.name=$3" 2>>"$LOG" | head -n 1
}

# Outcomes, read from the kubelet once per round for every pod:
# refused: armorshim's Pod Security refusal as the kubelet reports it;
# kubelet-refused: the kubelet's own refusal (its admission, or its
# runAsNonRoot check before CreateContainer);
# error: another error of the sandbox or a container; admitted: every init
# container exited 0 and every container runs.
#
# kubelet_round: reads the kubelet's pods ($KPODS) and the sandbox errors
# its log gained since the last round ($SB_ERRORS: "ns/pod message" lines).
SB_ERRORS=/tmp/sandbox-errors
KLOG_SEEN=0
kubelet_round() {
	local size
	kpods >"$KPODS"
	size=$(stat -c %s $KLOG)
	if [ "$size" -gt "$KLOG_SEEN" ]; then
		tail -c +$((KLOG_SEEN + 1)) $KLOG | head -c $((size - KLOG_SEEN)) |
			jq -rc 'if .msg=="CreatePodSandbox for pod failed" then "S " + ((.pod.namespace // "") + "/" + (.pod.name // "")) + " " + (.err | tostring)
				elif .msg=="Could not process manifest file" then "M " + (.path // "") + " " + (.err | tostring)
				elif .pod.name != null and (.err // "" | tostring | test("volume|not registered"; "i")) then "V " + ((.pod.namespace // "") + "/" + .pod.name) + " " + (.err | tostring)
				else empty end' 2>/dev/null >>$SB_ERRORS
		KLOG_SEEN=$size
	fi
	# one line per pod: "ns/name JSON", the JSON an outcome or, for a pod
	# whose init containers all exited 0, {admitted_if: running containers}.
	# A start that timed out in the runtime (TCG under load) is left to the
	# kubelet's retry.
	jq -rc '
		def waiting: [(.initContainerStatuses // [])[], (.containerStatuses // [])[] | select(.state.waiting.reason != null and .state.waiting.reason != "ContainerCreating" and .state.waiting.reason != "PodInitializing")];
		.items[]? | (.metadata.namespace + "/" + .metadata.name) + " " + (.status |
		if (.phase == "Failed") then {outcome:"kubelet-refused",request:"",container:"",message:((.reason // "") + ": " + (.message // ""))}
		elif (waiting | length) > 0 and (waiting[0].state.waiting.reason == "RunContainerError" and (waiting[0].state.waiting.message // "" | test("deadline exceeded"))) then {pending: true}
		elif (waiting | length) > 0 then (waiting[0] |
			if .state.waiting.reason == "CreateContainerError" then
				if (.state.waiting.message | startswith("Forbidden: violates PodSecurity")) then {outcome:"refused",request:"CreateContainer",container:.name,message:.state.waiting.message}
				else {outcome:"error",request:"CreateContainer",container:.name,message:.state.waiting.message} end
			elif .state.waiting.reason == "CreateContainerConfigError" then {outcome:"kubelet-refused",request:"",container:.name,message:(.state.waiting.reason + ": " + (.state.waiting.message // ""))}
			else {outcome:"error",request:"",container:.name,message:(.state.waiting.reason + ": " + (.state.waiting.message // ""))} end)
		elif ([(.initContainerStatuses // [])[] | select(.state.terminated.exitCode == 0)] | length) == ((.initContainerStatuses // []) | length)
		then {admitted_if: ([(.containerStatuses // [])[] | select(.state.running != null)] | length)}
		else {pending: true} end | tojson)' "$KPODS" 2>/dev/null | grep -v '"pending":true' >$OUTCOMES
}
OUTCOMES=/tmp/outcomes
# pod_outcome NS NAME CONTAINERS: one JSON object once the pod has settled
# (as of the last kubelet_round), nothing before.
pod_outcome() {
	local ns=$1 full="$2-$NODE_NAME" sb
	# the kubelet rejected the manifest itself (the API server's validation)
	sb=$(grep -m1 -F "M $MANIFESTS/${4:-none} " $SB_ERRORS 2>/dev/null)
	if [ -n "$sb" ]; then
		jq -cn --arg m "${sb#M * }" '{outcome:"kubelet-refused",request:"",container:"",message:$m}'
		return
	fi
	sb=$(grep -m1 -F "S $ns/$full " $SB_ERRORS 2>/dev/null)
	if [ -n "$sb" ]; then
		sb=${sb#S * }
		sb=${sb#*desc = }
		if [[ $sb == "Forbidden: violates PodSecurity"* ]]; then
			jq -cn --arg m "$sb" '{outcome:"refused",request:"RunPodSandbox",container:"",message:$m}'
		else
			jq -cn --arg m "$sb" '{outcome:"error",request:"RunPodSandbox",container:"",message:$m}'
		fi
		return
	fi
	sb=$(grep -m1 -F "$ns/$full " $OUTCOMES | cut -d' ' -f2-)
	case "$sb" in
	"") ;;
	'{"admitted_if":'*)
		[ "$sb" = "{\"admitted_if\":$3}" ] && [ "$3" -gt 0 ] && echo '{"outcome":"admitted","request":"","container":"","message":""}' ;;
	*) echo "$sb" ;;
	esac
}

k_profile() { # NAME: a profile that allows everything but writes, like the tutorial's
	profile_text "$1" yes >/tmp/$1.profile
	apparmor_parser -r -W /tmp/$1.profile >>"$LOG" 2>&1
}

# kubelet_config ENDPOINT ADDRESS [YAML...]: the suite's KubeletConfiguration
# (static pods from $MANIFESTS, anonymous read access for the read-only
# port and the API server, no image garbage collection or eviction), with
# YAML lines appended
kubelet_config() {
	cat <<CFG
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: $MANIFESTS
fileCheckFrequency: 1s
containerRuntimeEndpoint: $1
imageServiceEndpoint: $1
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
address: $2
readOnlyPort: 10255
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
resolvConf: /etc/resolv.conf
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 1Mi
  nodefs.available: 1%
  imagefs.available: 1%
logging:
  format: json
CFG
	shift 2
	[ $# -eq 0 ] || printf '%s\n' "$@"
}

kubelet_setup() {
	mkdir -p /etc/armorshim $K_PROFILES_D $MANIFESTS /var/lib/kubelet/seccomp $REC_DIR /run/features.d /etc/kubernetes/pss
	cp "$RUN/cluster-level-pss.yaml" /etc/kubernetes/pss/cluster-level-pss.yaml
	# what the fixtures and scenarios refer to: AppArmor "foo", seccomp "testing"
	k_profile foo
	printf '{"defaultAction":"SCMP_ACT_ALLOW"}\n' >/var/lib/kubelet/seccomp/testing
	profile_text $DENY yes >/tmp/$DENY.profile
	apparmor_parser -r -W /tmp/$DENY.profile >>"$LOG" 2>&1
	cat >$K_CFG <<CFG
apiVersion: armorshim.io/v1alpha1
kind: ArmorshimConfiguration
listen: unix://$K_SOCK
runtimeEndpoint: $CTRD_EP
profiles:
  directory: $K_PROFILES_D
  syncInterval: 1s
nodeFeatures:
  directory: /run/features.d
podSecurity:
  # the cluster-level tutorial's configuration: enforce baseline, warn and
  # audit restricted, kube-system exempt
  configFile: /etc/kubernetes/pss/cluster-level-pss.yaml
  namespaces:
    # the namespace-level tutorial's "example" namespace
    example:
      pod-security.kubernetes.io/enforce: baseline
      pod-security.kubernetes.io/warn: restricted
      pod-security.kubernetes.io/audit: restricted
    example-restricted:
      pod-security.kubernetes.io/enforce: restricted
    psa-baseline:
      pod-security.kubernetes.io/enforce: baseline
    psa-restricted:
      pod-security.kubernetes.io/enforce: restricted
  auditLog:
    path: $K_AUDIT
CFG
	armorshim serve --config $K_CFG -v 2 >>$K_SHIM_LOG 2>&1 &
	K_SHIM_PID=$!
	for _ in $(seq 1 150); do
		timeout 10 crictl --runtime-endpoint unix://$K_SOCK --timeout 5s version >/dev/null 2>&1 && break
		sleep 0.2
	done
	# the kubelet talks to armorshim; when recording, through crirecord
	KUBELET_EP=unix://$K_SOCK
	if [ "$RECORD" = 1 ]; then
		"$RUN/crirecord" --listen $REC_SOCK --upstream $K_SOCK --dir $REC_DIR >/out/crirecord.log 2>&1 &
		REC_PID=$!
		for _ in $(seq 1 150); do [ -S $REC_SOCK ] && break; sleep 0.2; done
		KUBELET_EP=unix://$REC_SOCK
	fi
	kubelet_config $KUBELET_EP 127.0.0.1 >/etc/kubernetes/kubelet.yaml
	kubelet --config /etc/kubernetes/kubelet.yaml --hostname-override $NODE_NAME --v 2 >$KLOG 2>&1 &
	KUBELET_PID=$!
	local ok=false
	for _ in $(seq 1 300); do
		kpods | jq -e .items >/dev/null 2>&1 && ok=true && break
		kill -0 $KUBELET_PID 2>/dev/null || break
		sleep 1
	done
	if $ok; then
		result k-setup true "kubelet $(kubelet --version 2>&1) serving; its runtime endpoint: $KUBELET_EP ($([ "$RECORD" = 1 ] && echo "crirecord -> ")armorshim -> containerd)" \
			"$(jq -rc 'select(.msg | test("Container runtime initialized|Starting kubelet main sync loop")) | .msg' $KLOG | head -n 2 | oneline)"
	else
		result k-setup false "the kubelet did not serve" "$(tail -n 5 $KLOG | oneline)"
	fi
	$ok
}

# k_apply NAME YAML: place a static pod manifest
k_apply() { printf '%s\n' "$2" >$MANIFESTS/$1.yaml; }
k_delete() { rm -f $MANIFESTS/$1.yaml; }
# k_wait NS NAME CONTAINERS SECONDS: wait for the pod to settle -> $OUTCOME (JSON)
k_wait() {
	local end=$(($(date +%s) + $4))
	OUTCOME=
	while [ "$(date +%s)" -lt $end ]; do
		kubelet_round
		OUTCOME=$(pod_outcome "$1" "$2" "$3")
		[ -n "$OUTCOME" ] && return 0
		sleep 2
	done
	return 1
}
KPODS=/tmp/kpods.json

hello_pod() { # NAME NAMESPACE PROFILE-BLOCK ANNOTATIONS-BLOCK
	cat <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: $2
  annotations:
    armorshim.io/scenario: "$1"
$4
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: hello
    image: registry.k8s.io/e2e-test-images/busybox:1.29-2
    imagePullPolicy: Never
    command: [ "sh", "-c", "echo 'Hello AppArmor!' && sleep 1h" ]
$3
YAML
}

# k_confined STEP NAME PROFILE-BLOCK ANNOTATIONS-BLOCK: runs, confined by the tutorial's profile
k_confined() {
	local step=$1 name=$2 ok=false ctr attr touch
	k_apply "$name" "$(hello_pod "$name" default "$3" "$4")"
	k_wait default "$name" 1 120
	ctr=$(kctr default "$name" hello)
	if [ -n "$ctr" ]; then
		attr=$(cd_ exec "$ctr" cat /proc/1/attr/current 2>>"$LOG" | tr -d '\0' | oneline)
		touch=$(cd_ exec "$ctr" touch /tmp/test 2>&1 | grep -v level= | oneline)
	fi
	[ "$(jq -r .outcome <<<"$OUTCOME")" = admitted ] && [ "$attr" = "$DENY (enforce)" ] && [[ $touch == *"Permission denied"* ]] && ok=true
	result "$step" $ok "kubelet: ${OUTCOME:-(not settled in 120 s)}" "containerd (direct): container ${ctr:-(none)}" \
		"crictl exec cat /proc/1/attr/current: $attr (want: $DENY (enforce))" "touch /tmp/test: $touch (want: Permission denied)"
	k_delete "$name"
}

kubelet_apparmor() {
	local ok out t0 t1 ctr attr
	# the tutorial's hello-apparmor, as written (beta annotation only)
	k_confined k-apparmor-annotation hello-apparmor "" \
		"    container.apparmor.security.beta.kubernetes.io/hello: localhost/$DENY"
	# the same through the field (Kubernetes >= 1.30)
	k_confined k-apparmor-field hello-apparmor-field "    securityContext:
      appArmorProfile:
        type: Localhost
        localhostProfile: $DENY" ""

	# the tutorial's hello-apparmor-2: its profile is not loaded
	loaded $ALLOW && apparmor_parser -R /tmp/$ALLOW.profile >>"$LOG" 2>&1
	k_apply hello-apparmor-2 "$(hello_pod hello-apparmor-2 default "" \
		"    container.apparmor.security.beta.kubernetes.io/hello: localhost/$ALLOW")"
	k_wait default hello-apparmor-2 1 120
	out=$OUTCOME
	ok=false
	[ "$(jq -r .outcome <<<"$out")" = error ] &&
		[ "$(jq -r .message <<<"$out")" = "Blocked: Cannot enforce AppArmor: profile \"$ALLOW\" is not loaded" ] &&
		[ -z "$(kctr default hello-apparmor-2 hello)" ] && ok=true
	result k-apparmor-blocked $ok "kubelet pod status: $(kstatus default hello-apparmor-2 | jq -c '.containerStatuses[0].state' 2>/dev/null)" \
		"containerd (direct): containers of the pod: $(cd_ ps -a -q --label io.kubernetes.pod.name=hello-apparmor-2-$NODE_NAME 2>/dev/null | wc -l)"
	# delivered by dropping the file into armorshim's profile directory; the
	# kubelet's own retry then starts it
	t0=$(date +%s)
	profile_text $ALLOW no >$K_PROFILES_D/$ALLOW
	ok=false
	for _ in $(seq 1 60); do
		ctr=$(kctr default hello-apparmor-2 hello)
		[ -n "$ctr" ] && [ "$(cd_ inspect -o go-template --template '{{.status.state}}' "$ctr" 2>/dev/null)" = CONTAINER_RUNNING ] && break
		ctr=
		sleep 2
	done
	t1=$(date +%s)
	if [ -n "$ctr" ]; then
		attr=$(cd_ exec "$ctr" cat /proc/1/attr/current 2>>"$LOG" | tr -d '\0' | oneline)
		[ "$attr" = "$ALLOW (enforce)" ] && ok=true
	fi
	result k-apparmor-loaded-then-running $ok "profile file written to $K_PROFILES_D; running after $((t1 - t0)) s (the kubelet's retry)" \
		"kubelet pod status: $(kstatus default hello-apparmor-2 | jq -c '.containerStatuses[0].state' 2>/dev/null)" \
		"crictl exec cat /proc/1/attr/current: ${attr:-(no container)} (want: $ALLOW (enforce))"
	k_delete hello-apparmor-2
}

nginx_pod() { # NAMESPACE: the namespace-level tutorial's pod
	cat <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: nginx
  namespace: $1
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - image: registry.k8s.io/e2e-test-images/nginx:1.14-2
      imagePullPolicy: Never
      name: nginx
      ports:
        - containerPort: 80
YAML
}
NGINX_FOUR='allowPrivilegeEscalation != false (container "nginx" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "nginx" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "nginx" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "nginx" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")'

kubelet_nginx() {
	local ok warning want audit
	# warn (and audit): namespace "example" of the tutorial
	k_apply nginx-example "$(nginx_pod example)"
	k_wait example nginx 1 120
	sleep 1
	warning=$(grep 'Pod Security warning' $K_SHIM_LOG | grep 'pod="example/nginx-' | tail -n 1 | sed 's/.*warning="//; s/"$//; s/\\"/"/g')
	want="would violate PodSecurity \"restricted:latest\": $NGINX_FOUR"
	ok=false
	[ "$(jq -r .outcome <<<"$OUTCOME")" = admitted ] && [ "$warning" = "$want" ] && ok=true
	audit=$(grep '"pod":"nginx-' $K_AUDIT 2>/dev/null | grep '"namespace":"example"' | tail -n 1)
	[ -n "$audit" ] || ok=false
	result k-nginx-warn $ok "kubelet: ${OUTCOME:-(not settled)}" "armorshim's warning: $warning" \
		"the tutorial's: $want" "audit: $(echo "$audit" | cut -c1-300)"
	k_delete nginx-example
	# enforce restricted: refused with the same four
	k_apply nginx-restricted "$(nginx_pod example-restricted)"
	k_wait example-restricted nginx 1 120
	want="Forbidden: violates PodSecurity \"restricted:latest\": $NGINX_FOUR"
	ok=false
	[ "$(jq -r .outcome <<<"$OUTCOME")" = refused ] && [ "$(jq -r .message <<<"$OUTCOME")" = "$want" ] &&
		[ -z "$(kctr example-restricted nginx nginx)" ] && ok=true
	result k-nginx-enforce $ok "kubelet pod status: $(kstatus example-restricted nginx | jq -c '.containerStatuses[0].state' 2>/dev/null)" \
		"want: $want"
	k_delete nginx-restricted
}

hostnet_pod() { # NAME NAMESPACE: a host-network pod (what kube-proxy and CNI pods are)
	cat <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: $2
spec:
  terminationGracePeriodSeconds: 1
  hostNetwork: true
  containers:
  - name: agent
    image: registry.k8s.io/e2e-test-images/busybox:1.29-2
    imagePullPolicy: Never
    command: [ "sleep", "3600" ]
YAML
}

# The cluster-level tutorial's defaults (enforce baseline) and its exempt
# namespace, kube-system.
kubelet_exempt() {
	local ok out1 out2
	k_apply hostnet-default "$(hostnet_pod hostnet default)"
	k_wait default hostnet 1 120
	out1=$OUTCOME
	k_delete hostnet-default
	k_apply hostnet-system "$(hostnet_pod hostnet kube-system)"
	k_wait kube-system hostnet 1 120
	out2=$OUTCOME
	k_delete hostnet-system
	ok=false
	[ "$(jq -r .outcome <<<"$out1")" = refused ] &&
		[ "$(jq -r .message <<<"$out1")" = 'Forbidden: violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true)' ] &&
		[ "$(jq -r .outcome <<<"$out2")" = admitted ] && ok=true
	result k-exempt-namespace $ok "namespace default (the defaults, enforce baseline): ${out1:-(not settled)}" \
		"namespace kube-system (exempt): ${out2:-(not settled)}"
}

# The Pod Security Admission fixtures, WINDOW pods at a time: each pod is
# placed, watched until it settles (or for PSA_TIMEOUT seconds: under TCG a
# pod of the window takes minutes) and removed.
PSA_WINDOW=${PSA_WINDOW:-16}
PSA_TIMEOUT=${PSA_TIMEOUT:-480}
kubelet_psa() {
	local queue=() f ns name ctrs fixture inflight=() now o n settled=0 t0 sb last s0
	declare -A started meta exclusive
	t0=$(date +%s)
	[ -f "$RUN/psa-pods/list" ] || { result k-psa false "no fixtures in the payload"; return; }
	# list: FILE NAMESPACE NAME CONTAINERS HOSTPORTS FIXTURE
	while read -r f ns name ctrs hostports fixture; do
		queue+=("$f")
		meta[$f]="$ns $name $ctrs $fixture"
		exclusive[$f]=$hostports
	done <"$RUN/psa-pods/list"
	n=${#queue[@]}
	local next_checkpoint=$((t0 + 120))
	while [ ${#queue[@]} -gt 0 ] || [ ${#inflight[@]} -gt 0 ]; do
		if [ "$(date +%s)" -ge $next_checkpoint ]; then
			top -b -n 1 | head -n 40 >/out/top-$(date +%s).txt
			checkpoint
			next_checkpoint=$(($(date +%s) + 120))
		fi
		# pods asking for host ports run one at a time: two at once would be
		# refused by the kubelet for the port, not for Pod Security
		local deferred=() ports_busy=0
		for f in "${inflight[@]}"; do [ "${exclusive[$f]}" = 1 ] && ports_busy=1; done
		while [ ${#inflight[@]} -lt $PSA_WINDOW ] && [ ${#queue[@]} -gt 0 ]; do
			f=${queue[0]}
			queue=("${queue[@]:1}")
			if [ "${exclusive[$f]}" = 1 ]; then
				if [ $ports_busy = 1 ]; then
					deferred+=("$f")
					continue
				fi
				ports_busy=1
			fi
			cp "$RUN/psa-pods/$f" $MANIFESTS/psa-$f
			inflight+=("$f")
			started[$f]=$(date +%s)
		done
		queue=("${deferred[@]}" "${queue[@]}")
		sleep 5
		kubelet_round
		now=$(date +%s)
		local keep=()
		for f in "${inflight[@]}"; do
			read -r ns name ctrs fixture <<<"${meta[$f]}"
			o=$(pod_outcome "$ns" "$name" "$ctrs" "psa-$f")
			s0=${started[$f]}
			# a pod the kubelet cannot set up volumes for never reaches the
			# CRI: settled once the kubelet said so and sent nothing for it
			if [ -z "$o" ] && [ $((now - s0)) -ge 45 ] && grep -q -F "V $ns/$name-$NODE_NAME " $SB_ERRORS &&
				[ -z "$(cd_ pods -q --label io.kubernetes.pod.namespace=$ns --label io.kubernetes.pod.name=$name-$NODE_NAME 2>/dev/null)" ]; then
				s0=$((now - PSA_TIMEOUT))
			fi
			if [ -z "$o" ] && [ $((now - s0)) -ge $PSA_TIMEOUT ]; then
				# never settled: did the kubelet send any CRI request for it?
				sb=no
				[ -n "$(cd_ pods -q --label io.kubernetes.pod.namespace=$ns --label io.kubernetes.pod.name=$name-$NODE_NAME 2>/dev/null)" ] && sb=yes
				last=$(jq -rc --arg p "$ns/$name-$NODE_NAME" 'select(((.pod.namespace // "")+"/"+(.pod.name // ""))==$p and .err != null) | .msg + ": " + .err' $KLOG 2>/dev/null | tail -n 1 | cut -c1-300)
				o=$(jq -cn --arg sb "$sb" --arg last "$last" '{outcome:"unsettled",request:"",container:"",message:$last,sandbox_requested:$sb}')
			fi
			if [ -n "$o" ]; then
				o=$(jq -c --arg fx "$fixture" --arg pod "$ns/$name" --argjson s $((now - s0)) \
					--argjson n "$(cd_ ps -a -q --label io.kubernetes.pod.namespace=$ns --label io.kubernetes.pod.name=$name-$NODE_NAME 2>/dev/null | wc -l)" \
					'{fixture:$fx,pod:$pod} + . + {containerd_containers:$n,seconds:$s}' <<<"$o")
				echo "ARMORSHIM-PSA $o"
				echo "ARMORSHIM-PSA $o" >>/out/results.jsonl
				rm -f $MANIFESTS/psa-$f
				settled=$((settled + 1))
			else
				keep+=("$f")
			fi
		done
		inflight=("${keep[@]}")
	done
	result k-psa true "$settled of $n fixtures run through the kubelet in $(($(date +%s) - t0)) s (verdicts compared on the host)"
}

scenarios_kubelet() {
	if ! kubelet_setup; then
		for s in k-apparmor-annotation k-apparmor-field k-apparmor-blocked k-apparmor-loaded-then-running k-nginx-warn k-nginx-enforce k-exempt-namespace k-psa; do
			result $s false "not run: the kubelet did not start"
		done
		return
	fi
	phase kubelet-setup
	kubelet_apparmor
	phase kubelet-apparmor
	checkpoint
	kubelet_nginx
	kubelet_exempt
	phase kubelet-pod-security
	checkpoint
	kubelet_psa
	phase kubelet-psa
	kill $KUBELET_PID $REC_PID $K_SHIM_PID 2>/dev/null
	wait $KUBELET_PID 2>/dev/null
}
