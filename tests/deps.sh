#!/bin/sh
# Installs every Debian package named in the list ($1) that is missing or older
# than its minimum version.  A package is also taken as there when a command
# of its name reports a version at least that high (npm comes with
# NodeSource's nodejs, not as a Debian package, on some machines).  Quiet
# when nothing is missing.
set -eu
list=${1:-vendor/packages}
missing=
while read -r pkg min _; do
	case $pkg in ''|\#*) continue ;; esac
	have=$(dpkg-query -W -f='${Status} ${Version}' "$pkg" 2>/dev/null || true)
	case $have in
	"install ok installed "*)
		dpkg --compare-versions "${have##* }" ge "$min" && continue ;;
	*)
		ver=$("$pkg" --version 2>/dev/null | grep -o '[0-9][0-9.]*' | head -1)
		[ -n "$ver" ] && dpkg --compare-versions "$ver" ge "${min#*:}" && continue ;;
	esac
	missing="$missing $pkg"
done < "$list"
[ -z "$missing" ] && exit 0
echo "deps: installing:$missing"
sudo=
[ "$(id -u)" -eq 0 ] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# shellcheck disable=SC2086
$sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
