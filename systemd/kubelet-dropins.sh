#!/bin/sh
# kubelet-dropins.sh install|uninstall: puts armorshim in front of the kubelet
# or takes it away, extending what the node has rather than replacing it.
#
# install writes two drop-ins:
#  - the kubelet configuration drop-in (containerRuntimeEndpoint) into the
#    kubelet's --config-dir if its KUBELET_CONFIG_ARGS already names one,
#    otherwise into /etc/kubernetes/kubelet.conf.d;
#  - kubelet.service.d/90-armorshim.conf: the kubelet starts after armorshim
#    and, when no --config-dir was there, KUBELET_CONFIG_ARGS becomes the
#    node's own value (kubeadm's 10-kubeadm.conf) plus --config-dir.
# The paths written are kept in /etc/armorshim/installed-dropins for
# uninstall, which removes exactly those.
#
# Environment: DESTDIR (staging root), SRC (the repository's systemd/
# directory), SYSTEMCTL (default systemctl).
set -eu

DESTDIR=${DESTDIR:-}
SRC=${SRC:-$(dirname "$0")}
SYSTEMCTL=${SYSTEMCTL:-systemctl}
UNIT_DROPIN=/etc/systemd/system/kubelet.service.d/90-armorshim.conf
DEFAULT_CONF_DIR=/etc/kubernetes/kubelet.conf.d
RECORD=/etc/armorshim/installed-dropins

# current_config_args prints KUBELET_CONFIG_ARGS as the kubelet unit sets it,
# our own drop-in left out; nothing if the unit or the variable is absent.
current_config_args() {
	# A staged install (DESTDIR) does not ask the build machine's systemd.
	[ -z "$DESTDIR" ] || [ "$SYSTEMCTL" != systemctl ] || return 0
	command -v "$SYSTEMCTL" >/dev/null 2>&1 || return 0
	"$SYSTEMCTL" cat kubelet.service 2>/dev/null | awk -v ours="$UNIT_DROPIN" '
		/^# \// { file = substr($0, 3); next }
		file == ours { next }
		/^[ \t]*Environment=/ {
			line = $0
			sub(/^[ \t]*Environment=/, "", line)
			gsub(/"/, "", line)
			if (line ~ /^KUBELET_CONFIG_ARGS=/) { sub(/^KUBELET_CONFIG_ARGS=/, "", line); value = line; found = 1 }
		}
		END { if (found) print value }'
}

install_dropins() {
	args=$(current_config_args)
	confdir=""
	for a in $args; do
		case $a in
		--config-dir=*) confdir=${a#--config-dir=} ;;
		esac
	done
	env_line=""
	if [ -z "$confdir" ]; then
		confdir=$DEFAULT_CONF_DIR
		[ -n "$args" ] || args="--config=/var/lib/kubelet/config.yaml"
		env_line="Environment=\"KUBELET_CONFIG_ARGS=$args --config-dir=$confdir\""
	fi
	install -D -m 0644 "$SRC/kubelet.conf.d/90-armorshim.conf" "$DESTDIR$confdir/90-armorshim.conf"
	mkdir -p "$DESTDIR$(dirname "$UNIT_DROPIN")"
	{
		sed '/^Environment="KUBELET_CONFIG_ARGS=/d' "$SRC/kubelet.service.d/90-armorshim.conf"
		[ -z "$env_line" ] || echo "$env_line"
	} >"$DESTDIR$UNIT_DROPIN.tmp"
	chmod 0644 "$DESTDIR$UNIT_DROPIN.tmp"
	mv "$DESTDIR$UNIT_DROPIN.tmp" "$DESTDIR$UNIT_DROPIN"
	mkdir -p "$DESTDIR$(dirname "$RECORD")"
	printf '%s\n' "$UNIT_DROPIN" "$confdir/90-armorshim.conf" >"$DESTDIR$RECORD"
	echo "kubelet drop-ins: $UNIT_DROPIN, $confdir/90-armorshim.conf"
	[ -z "$env_line" ] || echo "KUBELET_CONFIG_ARGS extended: $args --config-dir=$confdir"
}

uninstall_dropins() {
	if [ -f "$DESTDIR$RECORD" ]; then
		while IFS= read -r f; do
			[ -n "$f" ] && rm -f "$DESTDIR$f" && echo "removed $f"
		done <"$DESTDIR$RECORD"
		rm -f "$DESTDIR$RECORD"
	else
		rm -f "$DESTDIR$UNIT_DROPIN" "$DESTDIR$DEFAULT_CONF_DIR/90-armorshim.conf"
		echo "removed $UNIT_DROPIN $DEFAULT_CONF_DIR/90-armorshim.conf"
	fi
}

case ${1:-} in
install) install_dropins ;;
uninstall) uninstall_dropins ;;
*)
	echo "usage: $0 install|uninstall" >&2
	exit 2
	;;
esac
