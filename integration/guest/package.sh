# Sourced by guest.sh at the end of the main boot: the Debian package that
# `make deb` builds (prepare.sh builds it into the payload from the same
# binary) installed with dpkg -i, run as its unit would run it, removed with
# dpkg -r after an operator switched the kubelet to it, and purged.
#
# The guest runs no systemd. A stand-in systemctl, first on PATH, records
# every call, and /run/systemd/system tells the maintainer scripts that
# systemd runs, so what they ask of systemd is seen, in order. A kubeadm
# kubelet unit and drop-in in /etc/systemd/system (inert here) give
# kubelet-dropins.sh a node to switch and the checks a kubelet to watch.

PKG_LOG=/out/package.log
PKG_CALLS=/run/armorshim-it-systemctl.log
PKG_RESTARTS=/run/armorshim-it-kubelet-restarts.log
PKG_STEPS="deb-install deb-kubelet-untouched deb-serves deb-remove deb-purge"
KUBELET_UNIT_DROPIN=/etc/systemd/system/kubelet.service.d/90-armorshim.conf
KUBELET_CONFIG_DROPIN=/etc/kubernetes/kubelet.conf.d/90-armorshim.conf
NFD_FILE=/etc/kubernetes/node-feature-discovery/features.d/armorshim-apparmor

pkg_fake_systemd() {
	mkdir -p /run/systemd/system /etc/systemd/system/kubelet.service.d
	cat >/etc/systemd/system/kubelet.service <<'UNIT'
[Unit]
Description=kubelet (a stand-in: this guest runs no systemd)

[Service]
ExecStart=/usr/local/bin/kubelet

[Install]
WantedBy=multi-user.target
UNIT
	cat >/etc/systemd/system/kubelet.service.d/10-kubeadm.conf <<'UNIT'
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
ExecStart=
ExecStart=/usr/local/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS
UNIT
	cat >/usr/local/sbin/systemctl <<'STUB'
#!/bin/sh
# systemctl stand-in of the package scenario: records each call, and for a
# restart of the kubelet whether armorshim's drop-in was still there; cat
# prints the kubelet's unit and drop-ins as systemctl cat does; only the
# kubelet is active.
echo "$*" >>/run/armorshim-it-systemctl.log
case " $* " in
*" try-restart kubelet.service "* | *" restart kubelet.service "*)
	if [ -e /etc/systemd/system/kubelet.service.d/90-armorshim.conf ]; then d=present; else d=absent; fi
	echo "kubelet restarted, armorshim's drop-in $d" >>/run/armorshim-it-kubelet-restarts.log
	;;
esac
args=
for a in "$@"; do
	case $a in
	--system | --quiet | --) ;;
	*) args="$args $a" ;;
	esac
done
set -- $args
case $1 in
cat)
	[ "$2" = kubelet.service ] || exit 1
	for f in /etc/systemd/system/kubelet.service /etc/systemd/system/kubelet.service.d/*.conf; do
		[ -f "$f" ] || continue
		echo "# $f"
		cat "$f"
		echo
	done
	;;
is-active) [ "$2" = kubelet.service ] ;;
is-enabled)
	echo disabled
	exit 1
	;;
esac
exit 0
STUB
	chmod 0755 /usr/local/sbin/systemctl
	pkg_calls_reset
}

pkg_unfake_systemd() {
	rm -rf /run/systemd/system /usr/local/sbin/systemctl $PKG_CALLS $PKG_RESTARTS /etc/systemd/system/kubelet.service \
		/etc/systemd/system/kubelet.service.d/10-kubeadm.conf
	rmdir /etc/systemd/system/kubelet.service.d /run/systemd 2>/dev/null
}

# pkg_node_state: the files and links under /etc/systemd/system and
# /etc/kubernetes with a hash of each, what switching the kubelet changes.
pkg_node_state() {
	find /etc/systemd/system /etc/kubernetes \( -type f -o -type l \) 2>/dev/null | sort | while read -r f; do
		if [ -L "$f" ]; then echo "$f -> $(readlink "$f")"; else echo "$f $(sha256sum <"$f" | cut -c1-16)"; fi
	done
}

# pkg_calls: the systemctl calls since the last pkg_calls_reset, on one line.
pkg_calls() { paste -sd ';' $PKG_CALLS | sed 's/;/; /g'; }
pkg_calls_reset() { : >$PKG_CALLS; : >$PKG_RESTARTS; }
# pkg_call_line PATTERN: the line number of the first call matching the
# extended regular expression (anchored), 0 if none.
pkg_call_line() { grep -n -x -E "$1" $PKG_CALLS | head -n 1 | cut -d: -f1 | grep . || echo 0; }

# pkg_left: which of the named paths exist.
pkg_left() {
	local p left=
	for p in "$@"; do
		[ -e "$p" ] || [ -L "$p" ] && left="$left $p"
	done
	echo "${left# }"
}

pkg_status() { dpkg-query -W -f='${db:Status-Abbrev}' armorshim 2>/dev/null | tr -d ' '; }

scenarios_package() {
	local deb rc out ok status missing left node_before calls n_reload n_restart n_stop version pid conffiles s
	local files switched install_out restarts
	deb=$(ls "$RUN"/armorshim_*.deb 2>/dev/null | head -n 1)
	if [ -z "$deb" ]; then
		for s in $PKG_STEPS; do
			result "$s" false "no Debian package in the payload: it did not build (prepare.sh's output says why)"
		done
		return
	fi
	# The suite's own armorshim is done with: stopped, and the node
	# scenarios' /etc/armorshim and its /run/armorshim deleted, so that
	# what is there after the purge is the package's doing. Its binary
	# stays in /usr/local/bin, out of the package's way.
	if [ -n "${SHIM_PID:-}" ]; then
		kill "$SHIM_PID" 2>/dev/null
		wait "$SHIM_PID" 2>/dev/null
		SHIM_PID=
	fi
	rm -rf /etc/armorshim /run/armorshim
	pkg_fake_systemd
	node_before=$(pkg_node_state)

	# 1. dpkg -i: the files in place, a conffile, systemd reloaded.
	out=$(dpkg -i "$deb" 2>&1)
	rc=$?
	{ echo "== dpkg -i $deb (rc=$rc)"; echo "$out"; echo "== systemctl calls"; cat $PKG_CALLS; } >>$PKG_LOG
	status=$(pkg_status)
	calls=$(pkg_calls)
	# the package's own paths, for the purge
	files=$(grep armorshim /var/lib/dpkg/info/armorshim.list 2>/dev/null)
	missing=
	for s in /usr/bin/armorshim /usr/lib/systemd/system/armorshim.service /usr/lib/systemd/system/armorshim.socket \
		/etc/armorshim/config.yaml /usr/share/armorshim/kubelet-dropins.sh \
		/usr/share/armorshim/kubelet.service.d/90-armorshim.conf /usr/share/armorshim/kubelet.conf.d/90-armorshim.conf \
		/usr/share/man/man8/armorshim.8.gz /usr/share/doc/armorshim/copyright; do
		[ -f "$s" ] || missing="$missing $s"
	done
	[ -d /etc/armorshim/profiles.d ] || missing="$missing /etc/armorshim/profiles.d/"
	conffiles=$(dpkg-query -W -f='${Conffiles}' armorshim 2>/dev/null | awk 'NF {print $1}' | paste -sd ' ')
	version=$(/usr/bin/armorshim version 2>&1 | head -n 1 | oneline)
	ok=false
	[ $rc -eq 0 ] && [ "$status" = ii ] && [ -z "$missing" ] && [ "$conffiles" = /etc/armorshim/config.yaml ] &&
		grep -qx 'ExecStart=/usr/bin/armorshim serve --config=/etc/armorshim/config.yaml' /usr/lib/systemd/system/armorshim.service &&
		/usr/bin/armorshim version >/dev/null 2>&1 &&
		[ "$(pkg_call_line '(--system )?daemon-reload')" != 0 ] &&
		! grep -qvx -E '(--system )?daemon-reload' $PKG_CALLS && ok=true
	result deb-install $ok "dpkg -i ${deb##*/}: rc=$rc, status ${status:-none}" \
		"files missing: ${missing:-none}; conffiles: ${conffiles:-none}" \
		"/usr/bin/armorshim version: $version" \
		"ExecStart: $(sed -n 's/^ExecStart=//p' /usr/lib/systemd/system/armorshim.service 2>/dev/null | oneline)" \
		"systemctl calls (want daemon-reload only): ${calls:-none}" \
		"dpkg said: $(echo "$out" | grep -v '^(Reading database' | oneline)"

	# 2. The kubelet not switched, armorshim not enabled.
	left=$(pkg_left $KUBELET_UNIT_DROPIN $KUBELET_CONFIG_DROPIN /etc/armorshim/installed-dropins \
		/etc/systemd/system/multi-user.target.wants/armorshim.service /etc/systemd/system/kubelet.service.wants/armorshim.service)
	ok=false
	[ "$(pkg_node_state)" = "$node_before" ] && [ -z "$left" ] && ! grep -q kubelet $PKG_CALLS &&
		[[ $out == *"sh /usr/share/armorshim/kubelet-dropins.sh install"* ]] && ok=true
	result deb-kubelet-untouched $ok \
		"/etc/systemd/system and /etc/kubernetes as before dpkg -i: $([ "$(pkg_node_state)" = "$node_before" ] && echo yes || echo no)" \
		"drop-ins or enablement links: ${left:-none}" \
		"systemctl calls naming the kubelet: $(grep -c kubelet $PKG_CALLS)" \
		"postinst tells the next step: $(echo "$out" | grep -m1 'kubelet-dropins.sh install' | oneline)"

	# 3. The unit's command, with the packaged configuration, serves CRI on
	# the kubelet's socket in front of containerd.
	rm -f /run/armorshim/armorshim.sock
	$(sed -n 's/^ExecStart=//p' /usr/lib/systemd/system/armorshim.service) >/out/armorshim-package.log 2>&1 &
	pid=$!
	out=
	for _ in $(seq 1 150); do
		out=$(crictl --runtime-endpoint $SHIM_EP --image-endpoint $SHIM_EP --timeout 5s version 2>&1) && break
		out=
		kill -0 $pid 2>/dev/null || break
		sleep 0.2
	done
	ok=false
	[[ $out == *"RuntimeName:"*containerd* ]] && ok=true
	kill -TERM $pid 2>/dev/null
	for _ in $(seq 1 200); do
		kill -0 $pid 2>/dev/null || break
		sleep 0.2
	done
	kill -KILL $pid 2>/dev/null
	wait $pid 2>/dev/null
	result deb-serves $ok "$(sed -n 's/^ExecStart=//p' /usr/lib/systemd/system/armorshim.service | oneline)" \
		"crictl version through $SHIM_EP: $(echo "${out:-no answer}" | oneline)" \
		"log: $(tail -n 3 /out/armorshim-package.log | oneline)"

	# 4. The operator switches the kubelet and enables armorshim (the
	# links systemctl enable makes, from the unit's WantedBy=); dpkg -r puts
	# the kubelet back on containerd before it stops armorshim, disables
	# it and keeps the configuration.
	install_out=$(sh /usr/share/armorshim/kubelet-dropins.sh install 2>&1)
	for s in multi-user.target kubelet.service; do
		mkdir -p /etc/systemd/system/$s.wants
		ln -sf /usr/lib/systemd/system/armorshim.service /etc/systemd/system/$s.wants/armorshim.service
	done
	{ echo "== kubelet-dropins.sh install"; echo "$install_out"; cat $KUBELET_UNIT_DROPIN; } >>$PKG_LOG 2>&1
	switched=false
	grep -qx 'Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml --config-dir=/etc/kubernetes/kubelet.conf.d"' \
		$KUBELET_UNIT_DROPIN 2>/dev/null && [ -f $KUBELET_CONFIG_DROPIN ] &&
		[ -L /etc/systemd/system/multi-user.target.wants/armorshim.service ] &&
		[ -L /etc/systemd/system/kubelet.service.wants/armorshim.service ] && switched=true
	pkg_calls_reset
	out=$(dpkg -r armorshim 2>&1)
	rc=$?
	{ echo "== dpkg -r armorshim (rc=$rc)"; echo "$out"; echo "== systemctl calls"; cat $PKG_CALLS; } >>$PKG_LOG
	status=$(pkg_status)
	calls=$(pkg_calls)
	restarts=$(paste -sd ';' $PKG_RESTARTS)
	n_reload=$(pkg_call_line '(--system )?daemon-reload')
	n_restart=$(pkg_call_line 'try-restart kubelet.service')
	n_stop=$(pkg_call_line 'stop armorshim.socket armorshim.service')
	left=$(pkg_left $KUBELET_UNIT_DROPIN $KUBELET_CONFIG_DROPIN /etc/armorshim/installed-dropins \
		/etc/systemd/system/multi-user.target.wants/armorshim.service /etc/systemd/system/kubelet.service.wants/armorshim.service \
		/usr/bin/armorshim /usr/lib/systemd/system/armorshim.service /usr/lib/systemd/system/armorshim.socket /usr/share/armorshim)
	ok=false
	$switched && [ $rc -eq 0 ] && [ "$status" = rc ] && [ -z "$left" ] && [ -f /etc/armorshim/config.yaml ] &&
		[ "$n_reload" -gt 0 ] && [ "$n_reload" -lt "$n_restart" ] && [ "$n_restart" -lt "$n_stop" ] &&
		[ "$restarts" = "kubelet restarted, armorshim's drop-in absent" ] &&
		! grep -qE '(^| )(start|enable|restart) ' $PKG_CALLS && ok=true
	result deb-remove $ok "switched and enabled before: $switched (kubelet-dropins.sh install: $(echo "$install_out" | oneline))" \
		"dpkg -r: rc=$rc, status ${status:-none}; left: ${left:-nothing}; /etc/armorshim/config.yaml kept: $([ -f /etc/armorshim/config.yaml ] && echo yes || echo no)" \
		"systemctl calls (want daemon-reload, then try-restart kubelet.service, then stop armorshim): $calls" \
		"${restarts:-the kubelet was not restarted}" \
		"dpkg said: $(echo "$out" | grep -v '^(Reading database' | oneline)"

	# 5. dpkg -P: nothing of the package, its configuration or its run
	# time left; the kubelet's units as they were.
	pkg_calls_reset
	out=$(dpkg -P armorshim 2>&1)
	rc=$?
	{ echo "== dpkg -P armorshim (rc=$rc)"; echo "$out"; echo "== systemctl calls"; cat $PKG_CALLS; } >>$PKG_LOG
	status=$(pkg_status)
	left=$(pkg_left $files /etc/armorshim /run/armorshim /var/log/armorshim $NFD_FILE $KUBELET_CONFIG_DROPIN \
		$KUBELET_UNIT_DROPIN /var/lib/dpkg/info/armorshim.list \
		$(find /etc/systemd/system /var/lib/systemd -name '*armorshim*' 2>/dev/null))
	ok=false
	[ $rc -eq 0 ] && { [ -z "$status" ] || [ "$status" = un ]; } && [ -z "$left" ] && [ -n "$files" ] &&
		[ "$(pkg_node_state)" = "$node_before" ] && ok=true
	result deb-purge $ok "dpkg -P: rc=$rc, status ${status:-not installed}" \
		"left of the package's $(echo "$files" | grep -c .) paths, its configuration and run-time files: ${left:-nothing}" \
		"/etc/systemd/system and /etc/kubernetes as before dpkg -i: $([ "$(pkg_node_state)" = "$node_before" ] && echo yes || echo no)" \
		"systemctl calls: $(pkg_calls)"
	pkg_unfake_systemd
}
